"""The lip-audio offset detector of rule ``measure_av_sync`` and of evaluate (numpy only; importable on GPU nodes).

:func:`sync_offset`: Pearson r per lag between the mouth's dark interior (:func:`pipeline.core.metrics.sync_visual`)
and the speech bands' log energy (:func:`sync_audio`), a chance level for the peak of that search from pairings
of the same two signals that cannot be related (displacements far from 0, all at once by FFT), and a check that
the windows informative on their own agree. :mod:`pipeline.core.metrics` re-exports all of it.
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


def sync_audio(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int, lo_hz: float = 300.0,
               hi_hz: float = 3000.0) -> np.ndarray:
    """The audio side of :func:`sync_offset`: :func:`band_energies` in the :data:`SYNC_BANDS_HZ` bands between
    ``lo_hz`` and ``hi_hz`` (300-700-1200-2000-3000 Hz: the formant regions of speech), [n_frames, bands]; the
    detector averages them standardised, so each formant region counts as much as the loudest."""
    edges = tuple(f for f in SYNC_BANDS_HZ if lo_hz <= f <= hi_hz)
    if len(edges) < 2:
        raise ValueError(f"sync_audio: no band of {SYNC_BANDS_HZ} Hz lies within {lo_hz:g}-{hi_hz:g} Hz")
    return band_energies(samples, sample_rate, fps, n_frames, edges)


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


def _as_columns(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v[:, None] if v.ndim == 1 else v


def _lag_sums(a: np.ndarray, b: np.ndarray, lags: np.ndarray, circular: np.ndarray) -> np.ndarray:
    """sum_t a[..., t] * b[..., t + d] for each d in ``lags`` (FFT): over 0 <= t + d < n, or round the clip
    (t + d mod n, 0 < d < n) where ``circular``."""
    n = a.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * n)))  # no wrap inside nfft: the linear sums, both signs of d
    c = np.fft.irfft(np.conj(np.fft.rfft(a, nfft)) * np.fft.rfft(b, nfft), nfft)  # c[d mod nfft]
    return c[..., lags % nfft] + np.where(circular, c[..., (lags - n) % nfft], 0.0)  # the pairs that wrap


def _correlations(x: np.ndarray, seen: np.ndarray, y: np.ndarray, heard: np.ndarray, lags: np.ndarray,
                  circular: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pearson r of x[t] and y[t + d] over the frames t of each row of ``masks`` [S, n] where the mouth is seen
    and the audio at t + d heard, for each displacement in ``lags`` (:func:`_lag_sums`): [S, D]; 0 where fewer
    than 4 pairs or a side is flat."""
    out = np.zeros((len(masks), len(lags)))
    heard_y = np.stack([heard, heard * y, heard * y * y])
    for lo in range(0, len(masks), 32):  # bounded memory on long clips
        m = masks[lo:lo + 32, None] * (seen * np.stack([np.ones_like(x), x, x * x]))[None]  # [s, 3, n]
        cnt, sx, sxx = (_lag_sums(m[:, p], heard_y[0], lags, circular) for p in range(3))
        sy, syy = (_lag_sums(m[:, 0], heard_y[q], lags, circular) for q in (1, 2))
        sxy = _lag_sums(m[:, 1], heard_y[1], lags, circular)
        vx, vy = cnt * sxx - sx * sx, cnt * syy - sy * sy
        good = (cnt > 3.5) & (vx > 1e-9 * cnt * cnt) & (vy > 1e-9 * cnt * cnt)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + 32] = np.where(good, np.clip((cnt * sxy - sx * sy) / np.sqrt(vx * vy), -1.0, 1.0), 0.0)
    return out


def _max_chance(null: np.ndarray, width: int, alpha: float, peak: float, normals: np.ndarray) -> dict | None:
    """Chance level of the highest of ``width`` consecutive lags' correlations, from the correlations ``null``
    at consecutive displacements far from 0 (pairings of the same two signals that cannot be related).

    The peak of a search is the maximum of ``width`` correlated values, so it is modelled as such: a Gaussian
    sequence with the null's mean, sd and autocorrelation over ``width`` lags (``normals``: [R, width] standard
    normal draws, coloured here). The mean and sd come from one clip's autocorrelated displacements, so their
    uncertainty is carried into the draws: the sd by a Student-t scaling with the degrees of freedom of the
    sample variance of such a sequence (len / (1 + 2 sum acf^2)), the mean by a normal term. Returns chance (the
    1 - alpha quantile), p (share of draws at or above ``peak``), mean, sd, dof; None when ``null`` is shorter than
    2 ``width`` or flat."""
    mu, sd = (float(null.mean()), float(null.std())) if len(null) else (0.0, 0.0)
    if len(null) < 2 * width or sd <= 1e-9:
        return None
    c = null - mu
    acf = np.array([c[:len(c) - j] @ c[j:] for j in range(width)]) / (len(c) * sd * sd)  # biased: PSD
    cov = acf[np.abs(np.arange(width)[:, None] - np.arange(width)[None])]
    top = (normals @ np.linalg.cholesky(cov + 1e-9 * np.eye(width)).T).max(1)
    dof = len(c) / (1.0 + 2.0 * float(np.sum(acf[1:] ** 2)))
    rng = np.random.default_rng(1)
    mean_err = rng.standard_normal(len(top)) * np.sqrt(max(1.0, 1.0 + 2.0 * float(acf[1:].sum())) / len(c))
    stat = (top - mean_err) / np.sqrt(rng.chisquare(dof, len(top)) / dof)
    return {"chance": mu + sd * float(np.quantile(stat, 1 - alpha)),
            "p": float((1 + np.sum(stat >= (peak - mu) / sd)) / (1 + len(stat))), "mean": mu, "sd": sd, "dof": dof}


def sync_offset(mouth: np.ndarray, audio: np.ndarray, max_lag: int = 12, *, speech: np.ndarray | None = None,
                highpass: int = 13, sigma: float = 0.0, window: int = 100, min_frames: int = 100,
                min_r: float = 0.15, min_agreement: float = 0.5, alpha: float = 0.05, min_shift: int = 25,
                max_null: int = 2000, draws: int = 20000) -> dict:
    """Lip-audio offset in frames: the lag at which the mouth's signal and the audio's correlate best.

    ``mouth``: [N] or [N, K] (the rule and evaluate: :func:`sync_visual`, the dark share of the mouth box);
    ``audio``: [N] or [N, M] (:func:`sync_audio`: log energy in the 4 speech bands 300-3000 Hz); ``speech``: the
    speech-band energy (:func:`band_envelope`; default ``audio`` when 1-D), which counts the speech frames.
    Each column is gap-filled, smoothed (``sigma``), high-passed (``highpass`` frames: the syllable-rate
    modulation, not slow drift) and standardised, and a side's columns are averaged: fixed equal weights,
    nothing fitted, so a short clip spends none of its frames on estimating weights. The score per lag in
    [-max_lag, max_lag] is Pearson r of mouth[t] and audio[t + lag] over every frame where both exist (in pauses
    the mouth is closed and the audio quiet, which is part of the relation). ``offset_frames`` > 0: the audio
    comes later than the mouth.

    Chance: r at every displacement of the audio round the clip from ``min_shift`` (25 = 1 s) to N - ``min_shift``
    frames (at most ``max_null``) pairs the same signals with their own rhythm but no relation. The peak of the
    search is the highest of 2 ``max_lag`` + 1 correlated values, so its chance level is the 1 - ``alpha``
    quantile of that maximum under the null's mean, sd and autocorrelation across lags, the estimates'
    uncertainty included (:func:`_max_chance`): ``null_r95``; ``p_value`` is the share of such maxima at or above
    the peak. (The 95 % quantile of the peaks of shifted searches does not do this on a short clip: their lag
    ranges overlap, so they are a handful of independent searches and their 95 % quantile is about their
    maximum, which a real search beats 1 in 7 times on 200 frames.) Measured against foreign speech: 5 % of
    pairings reliable (BENCHMARKS.md, bench/sync_false_positives.py).

    Windows: half-overlapping windows of ``window`` frames, each with its own curve, peak and chance level (the
    same model on its own null). A window is informative when its peak is above its own chance; only those vote.
    ``agreement`` is the share of informative windows peaking within 1 frame of the global lag (None when none is
    informative: a short clip, where the global test alone decides).

    Reliable when all hold: at least ``min_frames`` speech frames (:func:`speech_frames` of ``speech``); peak r
    >= ``min_r``; the peak above ``null_r95``; ``agreement`` (where there is one) >= ``min_agreement``.
    ``offset_frames`` is None with ``reason`` when it is not measurable; ``draws`` Monte Carlo draws (seeded: the
    result is deterministic) give the chance level.
    """
    x, y = _as_columns(mouth), _as_columns(audio)
    if speech is None and y.shape[1] != 1:
        raise ValueError("sync_offset: pass speech= (the speech-band envelope) with multi-band audio")
    e = np.asarray(y[:, 0] if speech is None else speech, np.float64)
    if not len(x) == len(y) == len(e):
        raise ValueError(f"mouth has {len(x)} frames, audio {len(y)}, speech {len(e)}")
    n = len(x)
    res: dict = {"offset_frames": None, "peak_r": None, "r_at_zero": None, "best_lag": None, "max_lag": max_lag,
                 "n_frames": int(n), "speech_frames": 0, "windows": 0, "agreement": None, "null_r95": None,
                 "p_value": None, "alpha": alpha, "null_shifts": 0, "null_mean": None, "null_sd": None,
                 "null_dof": None, "method": "pearson" if x.shape[1] == y.shape[1] == 1 else
                 "pearson of the standardised columns' means", "mouth_signals": int(x.shape[1]),
                 "audio_signals": int(y.shape[1]), "curve": [], "reliable": False, "reason": ""}
    seen, heard = np.isfinite(x).all(1), np.isfinite(y).all(1) & np.isfinite(e)
    if (seen & heard).sum() < 2 * max_lag + 3:
        res["reason"] = f"{int((seen & heard).sum())} usable frames: too short to search +-{max_lag} frames"
        return res
    idx = np.arange(n)

    def signal(a: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Each column gap-filled, smoothed, high-passed and standardised; their mean; 0 where not ``ok``."""
        cols = [highpass_frames(smooth_frames(np.interp(idx, idx[ok], c[ok]), sigma), highpass) for c in a.T]
        z = np.mean([(c - c[ok].mean()) / (c[ok].std() + 1e-12) for c in cols], 0)
        return np.where(ok, z, 0.0)

    xs, ys = signal(x, seen), signal(y, heard)
    lags = np.arange(-max_lag, max_lag + 1)
    shifts = np.arange(min_shift, n - min_shift + 1)[:max_null]  # consecutive displacements, all far from 0
    disp, circular = np.concatenate([lags, shifts]), np.arange(len(lags) + len(shifts)) >= len(lags)
    starts = np.arange(0, n - window + 1, max(1, window // 2))  # half-overlapping windows
    masks = np.concatenate([np.ones((1, n)), ((idx >= starts[:, None]) & (idx < starts[:, None] + window))])
    rho = _correlations(xs, seen.astype(np.float64), ys, heard.astype(np.float64), disp, circular, masks)
    curve, null = rho[0, :len(lags)], rho[0, len(lags):]
    best = int(np.argmax(curve))
    lag = best - max_lag
    n_speech = int((speech_frames(np.interp(idx, idx[heard], e[heard])) & heard & seen).sum())
    res.update(best_lag=lag, peak_r=round(float(curve[best]), 4), r_at_zero=round(float(curve[max_lag]), 4),
               speech_frames=n_speech, curve=[round(float(c), 4) for c in curve], null_shifts=len(null))
    normals = np.random.default_rng(0).standard_normal((draws, len(lags)))
    chance = _max_chance(null, len(lags), alpha, float(curve[best]), normals)
    if chance is not None:
        res.update(null_r95=round(chance["chance"], 4), p_value=round(chance["p"], 5),
                   null_mean=round(chance["mean"], 4), null_sd=round(chance["sd"], 4), null_dof=round(chance["dof"], 1))
    wcurves, wnull = rho[1:, :len(lags)], rho[1:, len(lags):]
    used = wcurves.any(1)
    peaks, wpeak = (wcurves.argmax(1) - max_lag)[used], wcurves.max(1)[used]
    wchance = [_max_chance(z, len(lags), alpha, float(p), normals) for z, p in zip(wnull[used], wpeak)]
    informative = wpeak > np.array([np.inf if c is None else c["chance"] for c in wchance])
    res.update(windows=int(used.sum()), window_offsets=[int(p) for p in peaks],
               window_peaks=[round(float(c), 4) for c in wpeak],
               window_chance=[None if c is None else round(c["chance"], 4) for c in wchance],
               informative_windows=int(informative.sum()))
    if informative.any():
        res["agreement"] = round(float(np.mean(np.abs(peaks[informative] - lag) <= 1)), 4)
    problems = []
    if n_speech < min_frames:
        problems.append(f"{n_speech} speech frames < {min_frames}")
    if curve[best] < min_r:
        problems.append(f"peak r {curve[best]:.3f} < {min_r}")
    if res["null_r95"] is None or curve[best] <= res["null_r95"]:
        problems.append(f"peak r {curve[best]:.3f} not above chance ({1 - alpha:.0%} level of the peak of "
                        f"{len(lags)} lags on unrelated pairings: {res['null_r95']}, p {res['p_value']})")
    if res["agreement"] is not None and res["agreement"] < min_agreement:
        problems.append(f"only {res['agreement']:.0%} of {res['informative_windows']} informative windows peak "
                        f"within 1 frame of {lag:+d}")
    res["reliable"] = not problems
    res["reason"] = "; ".join(problems)
    if res["reliable"]:
        res["offset_frames"] = lag
    return res
