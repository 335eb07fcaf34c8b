"""The lip-audio offset detector of rule ``measure_av_sync`` and of evaluate (numpy only; importable on GPU nodes).

:func:`sync_offset`: held-out canonical correlation per lag between the mouth's signals
(:func:`pipeline.core.metrics.sync_visual`) and the audio's :func:`band_energies`, over the speech frames of
:func:`band_envelope`, against a circular-shift chance level with a stated false-positive rate, and a check
that the informative windows of the clip agree. :mod:`pipeline.core.metrics` re-exports all of it.
"""

from __future__ import annotations

import numpy as np

SYNC_BANDS_HZ = (80.0, 300.0, 700.0, 1200.0, 2000.0, 3000.0, 5000.0, 8000.0)


def _frame_band_power(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int, bands: list[np.ndarray],
                      window_sec: float) -> tuple[np.ndarray, np.ndarray]:
    """Power per video frame in each band (a Hann window of ``window_sec`` centred on ``(i + 0.5) / fps``):
    ``bands`` maps the rfft frequencies to boolean masks; returns ([n_frames, len(bands)], freqs)."""
    x = np.asarray(samples, np.float64)
    win = max(16, int(round(window_sec * sample_rate)))
    freqs = np.fft.rfftfreq(win, 1.0 / sample_rate)
    masks = [np.asarray(b(freqs), bool) for b in bands]
    out = np.empty((n_frames, len(masks)))
    if not n_frames:
        return out, freqs
    centres = np.round((np.arange(n_frames) + 0.5) * sample_rate / fps).astype(np.int64)
    padded = np.pad(x, (win, win + max(0, int(centres[-1]) + win - len(x))))
    hann = np.hanning(win)
    for s in range(0, n_frames, 512):  # bounded memory on long clips
        idx = (centres[s:s + 512] + win - win // 2)[:, None] + np.arange(win)[None]
        spec = np.abs(np.fft.rfft(padded[idx] * hann, axis=1)) ** 2
        out[s:s + 512] = np.stack([spec[:, m].sum(1) for m in masks], 1)
    return out, freqs


def band_envelope(samples: np.ndarray, sample_rate: int, fps: int, n_frames: int, lo_hz: float = 300.0,
                  hi_hz: float = 3000.0, window_sec: float = 0.064, floor_db: float = 50.0) -> np.ndarray:
    """Speech-band log energy (dB) per video frame: a Hann window of ``window_sec`` centred on the middle of
    frame i (``(i + 0.5) / fps``), power summed over [lo_hz, hi_hz], floored at ``floor_db`` under the peak."""
    power, _ = _frame_band_power(samples, sample_rate, fps, n_frames, [lambda f: (f >= lo_hz) & (f <= hi_hz)],
                                 window_sec)
    db = 10.0 * np.log10(power[:, 0] + 1e-12)
    return np.maximum(db, db.max() - floor_db) if n_frames else db


def band_energies(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int,
                  edges_hz: tuple[float, ...] = SYNC_BANDS_HZ, window_sec: float = 0.064,
                  floor_db: float = 50.0) -> np.ndarray:
    """Log energy (dB) per video frame in each band [edges[k], edges[k + 1]) (windows as :func:`band_envelope`),
    each band floored at ``floor_db`` under its own peak: [n_frames, len(edges) - 1]. The audio side of
    :func:`sync_offset`: the spectral shape (which formant region carries the energy) follows the mouth's
    aperture and rounding, not only the loudness."""
    bands = [lambda f, lo=lo, hi=hi: (f >= lo) & (f < hi) for lo, hi in zip(edges_hz[:-1], edges_hz[1:])]
    power, _ = _frame_band_power(samples, sample_rate, fps, n_frames, bands, window_sec)
    db = 10.0 * np.log10(power + 1e-12)
    return np.maximum(db, db.max(0) - floor_db) if n_frames else db


def smooth_frames(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian over frames (edges held); sigma 0 = unchanged."""
    x = np.asarray(x, np.float64)
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(4 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, r, mode="edge"), k / k.sum(), mode="valid")


def highpass_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` minus its centred running mean over ``frames`` (odd; edges held): removes slow drift."""
    x = np.asarray(x, np.float64)
    r = max(1, frames // 2)
    k = np.ones(2 * r + 1) / (2 * r + 1)
    return x - np.convolve(np.pad(x, r, mode="edge"), k, mode="valid")


def speech_frames(envelope: np.ndarray, share: float = 0.4) -> np.ndarray:
    """Frames whose band energy lies above ``share`` of the way from the 10th to the 90th percentile."""
    lo, hi = np.percentile(envelope, [10, 90])
    return envelope > lo + share * (hi - lo)


def _first_canonical_pair(a: np.ndarray, b: np.ndarray, ridge: float) -> list[tuple]:
    """The first canonical pair of a [m, K] and b [m, M] (``ridge`` added to their correlation matrices):
    [(mean_a, sd_a, w_a), (mean_b, sd_b, w_b)], variate = (rows - mean) / sd @ w, unit variance on these rows,
    the two variates positively correlated."""
    std = [(x.mean(0), x.std(0) + 1e-12) for x in (a, b)]
    za, zb = ((x - mu) / sd for x, (mu, sd) in zip((a, b), std))
    m = len(za)
    la = np.linalg.cholesky(za.T @ za / m + ridge * np.eye(za.shape[1]))
    lb = np.linalg.cholesky(zb.T @ zb / m + ridge * np.eye(zb.shape[1]))
    u, _, vt = np.linalg.svd(np.linalg.solve(la, np.linalg.solve(lb, (za.T @ zb / m).T).T))  # La^-1 Cab Lb^-T
    out = []
    for z, (mu, sd), w in zip((za, zb), std, (np.linalg.solve(la.T, u[:, 0]), np.linalg.solve(lb.T, vt[0]))):
        out.append((mu, sd, w / max(float((z @ w).std()), 1e-12)))
    return out


def _held_out_variates(a: np.ndarray, b: np.ndarray, t: np.ndarray, folds: int, guard: int,
                       ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated canonical variates of paired rows a [m, K], b [m, M] taken at the sorted frames ``t``:
    ``folds`` contiguous blocks, each projected with the first canonical pair fitted on the rows more than
    ``guard`` frames away from it (so neither the block nor its autocorrelated neighbours fit the weights).
    One column on both sides: the signals themselves (Pearson r, sign kept). NaN where a block has too few
    training rows."""
    if a.shape[1] == 1 and b.shape[1] == 1:
        return a[:, 0], b[:, 0]
    u, v = np.full(len(t), np.nan), np.full(len(t), np.nan)
    edges = np.linspace(0, len(t), folds + 1).round().astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        train = (t < t[lo] - guard) | (t > t[hi - 1] + guard) if hi > lo else None
        if train is None or train.sum() < 3 * (a.shape[1] + b.shape[1]):
            continue
        (ma, sa, wa), (mb, sb, wb) = _first_canonical_pair(a[train], b[train], ridge)
        u[lo:hi], v[lo:hi] = (a[lo:hi] - ma) / sa @ wa, (b[lo:hi] - mb) / sb @ wb
    return u, v


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 3 and x.std() > 1e-12 and y.std() > 1e-12 else 0.0


def lag_variates(x: np.ndarray, y: np.ndarray, max_lag: int, gate: np.ndarray, folds: int = 5,
                 ridge: float = 1.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each lag in [-max_lag, max_lag]: (t, u, v), the frames t where ``gate[t + lag]`` and the held-out
    canonical variates of x[t] [N, K] and y[t + lag] [N, M] there (:func:`_held_out_variates`, guard = max_lag)."""
    n, out = len(x), []
    for k in range(-max_lag, max_lag + 1):
        t = np.arange(max(0, -k), min(n, n - k))
        t = t[gate[t + k]]
        out.append((t, *_held_out_variates(x[t], y[t + k], t, folds, max_lag, ridge)))
    return out


def _as_columns(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v[:, None] if v.ndim == 1 else v


def _window_pearson(t: np.ndarray, u: np.ndarray, v: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """:func:`_pearson` of u, v over the frames t in [s, s + window) for every s in ``starts`` (t sorted), at once."""
    ok = np.isfinite(u) & np.isfinite(v)
    t, u, v = t[ok], u[ok], v[ok]
    c = [np.concatenate([[0.0], np.cumsum(a)]) for a in (np.ones_like(u), u, v, u * u, v * v, u * v)]
    lo, hi = np.searchsorted(t, starts), np.searchsorted(t, starts + window)
    m, su, sv, suu, svv, suv = (a[hi] - a[lo] for a in c)
    with np.errstate(invalid="ignore", divide="ignore"):
        vu, vv = suu - su * su / np.maximum(m, 1), svv - sv * sv / np.maximum(m, 1)
        r = (suv - su * sv / np.maximum(m, 1)) / np.sqrt(vu * vv)
    good = (m > 3) & (vu > 1e-20 * np.maximum(m, 1)) & (vv > 1e-20 * np.maximum(m, 1))
    return np.where(good, np.clip(np.nan_to_num(r), -1.0, 1.0), 0.0)


def _window_curves(parts: list, starts: np.ndarray, window: int) -> np.ndarray:
    """[windows, lags]: the correlation of each lag's held-out variates inside each window."""
    return np.stack([_window_pearson(t, u, v, starts, window) for t, u, v in parts], 1)


def _null_shifts(n: int, min_shift: int, count: int) -> np.ndarray:
    """Circular shifts of at least ``min_shift`` frames either way round an ``n``-frame clip, thinned evenly to
    at most ``count``."""
    shifts = np.arange(min_shift, n - min_shift + 1)
    if len(shifts) > count:
        shifts = shifts[np.linspace(0, len(shifts) - 1, count).round().astype(int)]
    return shifts


def sync_offset(mouth: np.ndarray, audio: np.ndarray, max_lag: int = 12, *, speech: np.ndarray | None = None,
                highpass: int = 13, sigma: float = 0.0, window: int = 100, min_frames: int = 100,
                min_r: float = 0.15, min_agreement: float = 0.5, folds: int = 5, ridge: float = 1.0,
                alpha: float = 0.05, null_shifts: int = 200, min_shift: int = 25) -> dict:
    """Lip-audio offset in frames: the lag at which the mouth's signals best predict the audio's, held out.

    ``mouth``: [N] or [N, K] visual signals (evaluate: :func:`sync_visual`, the mouth's dark interior and the jaw
    drop); ``audio``: [N] or [N, M] (evaluate: :func:`band_energies`, log energy in 7 bands); ``speech``: the
    speech-band energy (:func:`band_envelope`) that picks the frames compared (default ``audio`` when 1-D).
    Every column is smoothed (``sigma``) and high-passed (``highpass`` frames) so the syllable-rate modulation is
    compared, not slow drift; only frames where the audio is speech (:func:`speech_frames`) count, since in
    pauses the mouth does what it likes (smiles, breathes, prepares the next phrase). Per lag the score is the
    held-out first canonical correlation: blocked ``folds``-fold cross-validation, the weights fitted on frames
    more than ``max_lag`` from the block scored (one column on both sides: plain Pearson r). Several signals
    together measure what one cannot: lip separation alone follows smiles, loudness alone follows stress, while
    aperture and jaw predict the spectral shape. ``offset_frames`` > 0: the audio comes later than the mouth.

    Chance: the whole search (weights refitted, peak over all lags) repeated with the audio circularly shifted
    by every whole number of frames at least ``min_shift`` (25 = 1 s) away from 0 either way round the clip
    (thinned evenly to ``null_shifts``), which keeps both signals' own rhythm and breaks only their pairing.
    ``null_r95`` is the 1 - ``alpha`` quantile of those peaks, ``p_value`` the share of them at or above the
    real peak ((1 + count) / (1 + shifts)): calling a peak above ``null_r95`` related has a false-positive rate
    of ``alpha`` (5 %) against audio that has nothing to do with the mouth.

    Windows: half-overlapping windows of ``window`` frames, each with its own peak over the lags (the held-out
    variates inside it) and its own chance level from the same shifted runs. A window is informative when its
    peak is above its own chance; only informative windows vote, since a window whose peak chance explains says
    nothing about the lag. ``agreement`` is the share of informative windows peaking within 1 frame of the
    global lag (None when none is informative: a short clip, where the global test alone decides).

    Reliable when all hold: at least ``min_frames`` speech frames; peak r >= ``min_r``; the peak above
    ``null_r95``; ``agreement`` (where there is one) >= ``min_agreement``. ``offset_frames`` is None with
    ``reason`` when it is not measurable.
    """
    x, y = _as_columns(mouth), _as_columns(audio)
    if speech is None and y.shape[1] != 1:
        raise ValueError("sync_offset: pass speech= (the speech-band envelope) with multi-band audio")
    e = np.asarray(y[:, 0] if speech is None else speech, np.float64)
    if not len(x) == len(y) == len(e):
        raise ValueError(f"mouth has {len(x)} frames, audio {len(y)}, speech {len(e)}")
    res: dict = {"offset_frames": None, "peak_r": None, "r_at_zero": None, "best_lag": None, "max_lag": max_lag,
                 "n_frames": int(len(x)), "speech_frames": 0, "windows": 0, "agreement": None, "null_r95": None,
                 "p_value": None, "alpha": alpha, "null_shifts": 0,
                 "method": "pearson" if x.shape[1] == y.shape[1] == 1 else "held-out first canonical correlation",
                 "mouth_signals": int(x.shape[1]), "audio_signals": int(y.shape[1]),
                 "curve": [], "reliable": False, "reason": ""}
    finite = np.isfinite(x).all(1) & np.isfinite(y).all(1) & np.isfinite(e)
    if finite.sum() < 2 * max_lag + 3:
        res["reason"] = f"{int(finite.sum())} usable frames: too short to search +-{max_lag} frames"
        return res
    idx = np.arange(len(x))
    fill = lambda v: np.interp(idx, idx[np.isfinite(v)], v[np.isfinite(v)])  # noqa: E731
    prep = lambda m: np.stack([highpass_frames(smooth_frames(fill(c), sigma), highpass) for c in m.T], 1)  # noqa: E731
    e = fill(e)
    gate = speech_frames(e) & finite
    xs, ys = prep(x), prep(y)
    parts = lag_variates(xs, ys, max_lag, gate, folds, ridge)
    curve = np.array([_pearson(u, v) for _, u, v in parts])
    best = int(np.argmax(curve))
    lag = best - max_lag
    res.update(best_lag=lag, peak_r=round(float(curve[best]), 4), r_at_zero=round(float(curve[max_lag]), 4),
               speech_frames=int(gate.sum()), curve=[round(float(c), 4) for c in curve])
    starts = np.arange(0, len(x) - window + 1, max(1, window // 2))  # half-overlapping windows
    wcurves = _window_curves(parts, starts, window) if len(starts) else np.zeros((0, len(curve)))
    null, wnull = [], []  # the search repeated on circularly shifted audio: the global and each window's peak
    for shift in _null_shifts(len(x), min_shift, null_shifts):
        shifted = lag_variates(xs, np.roll(ys, shift, 0), max_lag, np.roll(gate, shift), folds, ridge)
        null.append(max(_pearson(u, v) for _, u, v in shifted))
        if len(starts):
            wnull.append(_window_curves(shifted, starts, window).max(1))
    res["null_shifts"] = len(null)
    if null:
        res["null_r95"] = round(float(np.quantile(null, 1 - alpha)), 4)
        res["p_value"] = round(float((1 + np.sum(np.array(null) >= curve[best])) / (1 + len(null))), 4)
    used = wcurves.any(1)
    peaks = (wcurves.argmax(1) - max_lag)[used]
    res["windows"] = int(used.sum())
    res["window_offsets"] = [int(p) for p in peaks]
    if wnull:
        wchance = np.quantile(np.array(wnull), 1 - alpha, axis=0)[used]
        informative = wcurves.max(1)[used] > wchance
        res["window_chance"] = [round(float(c), 4) for c in wchance]
        res["window_peaks"] = [round(float(c), 4) for c in wcurves.max(1)[used]]
        res["informative_windows"] = int(informative.sum())
        if informative.any():
            res["agreement"] = round(float(np.mean(np.abs(peaks[informative] - lag) <= 1)), 4)
    problems = []
    if gate.sum() < min_frames:
        problems.append(f"{int(gate.sum())} speech frames < {min_frames}")
    if curve[best] < min_r:
        problems.append(f"peak r {curve[best]:.3f} < {min_r}")
    if res["null_r95"] is None or curve[best] <= res["null_r95"]:
        problems.append(f"peak r {curve[best]:.3f} not above chance ({1 - alpha:.0%} quantile of shifted-audio "
                        f"peaks {res['null_r95']}, p {res['p_value']})")
    if res["agreement"] is not None and res["agreement"] < min_agreement:
        problems.append(f"only {res['agreement']:.0%} of {res['informative_windows']} informative windows peak "
                        f"within 1 frame of {lag:+d}")
    res["reliable"] = not problems
    res["reason"] = "; ".join(problems)
    if res["reliable"]:
        res["offset_frames"] = lag
    return res
