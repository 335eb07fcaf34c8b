"""Metric functions shared by training, evaluation and tests (numpy only; importable on GPU nodes).

* :func:`psnr`, :func:`ssim` — image fidelity (uint8 or float in [0, 1]); optional mask.
* :func:`mouth_lmd` — landmark distance of lip points after removing each frame's mean (px).
* :func:`mouth_opening` — inner-lip distance over face height, per frame (mediapipe mesh ids).
* :func:`best_lag` — the lag (frames) maximising the Pearson correlation of two signals.
* :func:`rms_envelope` — per-video-frame RMS of an audio signal.
* Lip-audio offset: :func:`sync_offset` (held-out canonical correlation per lag, shifted-audio chance level,
  window agreement) between the visual signals :func:`sync_visual` (:func:`mouth_darkness` of each frame,
  :func:`jaw_drop`) and the audio's :func:`band_energies`, over the speech frames of :func:`band_envelope`.
"""

from __future__ import annotations

import numpy as np

# mediapipe face-mesh ids
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263
# the lip-sync detector's signals (recorded in eval/metrics.json): visual per frame, audio per frame
SYNC_VISUAL = ("mouth_darkness", "jaw_drop")
SYNC_BANDS_HZ = (80.0, 300.0, 700.0, 1200.0, 2000.0, 3000.0, 5000.0, 8000.0)
# lips (outer + inner contours) of the 468-point mesh, the usual mouth LMD set
LIP_IDS = np.array(sorted({
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
}))
# lips, the lower face oval (jaw line) and the chin / lower-cheek points: the landmarks audio drives. Stage 1
# predicts only these (the rest stay at the subject's mean shape) and the head NeRF's conditioning moves only
# these by default (stage2.landmark_motion: mouth), so training sees what rendering from audio gives it
JAW_IDS = (58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 132, 361,
           175, 199, 200, 18, 83, 313, 201, 421, 208, 428, 32, 262, 194, 418, 204, 424, 106, 335, 182, 406)
MOUTH_REGION = np.array(sorted(set(LIP_IDS.tolist()) | set(JAW_IDS)))


def _as_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (peak 1.0); ``inf`` for identical images."""
    a, b = _as_float(a), _as_float(b)
    err = (a - b) ** 2
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, bool)[..., None] if mask.ndim == a.ndim - 1 else mask, a.shape)
        err = err[m]
    mse = float(err.mean()) if err.size else 0.0
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def _gaussian_filter(x: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (11, 11), sigma, borderType=cv2.BORDER_REFLECT)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Structural similarity (Wang et al. 2004; 11x11 Gaussian, sigma 1.5), mean over channels."""
    a, b = _as_float(a), _as_float(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        mx, my = _gaussian_filter(x), _gaussian_filter(y)
        sxx = _gaussian_filter(x * x) - mx * mx
        syy = _gaussian_filter(y * y) - my * my
        sxy = _gaussian_filter(x * y) - mx * my
        smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(smap[np.asarray(mask, bool)] if mask is not None else smap)
    return float(np.mean(np.concatenate([v.ravel() for v in vals])))


def mouth_lmd(pred: np.ndarray, true: np.ndarray, ids: np.ndarray = LIP_IDS) -> float:
    """Mean Euclidean distance of lip landmarks after removing each frame's lip centroid.

    ``pred``/``true``: [N, P, >=2] landmarks in pixels (only x, y are used).
    """
    p = np.asarray(pred, np.float64)[:, ids, :2]
    t = np.asarray(true, np.float64)[:, ids, :2]
    p = p - p.mean(1, keepdims=True)
    t = t - t.mean(1, keepdims=True)
    return float(np.linalg.norm(p - t, axis=-1).mean())


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip distance over face height (forehead 10 to chin 152), per frame: [N, 478, >=2] -> [N]."""
    lm = np.asarray(landmarks, np.float64)
    gap = np.linalg.norm(lm[:, UPPER_INNER_LIP, :2] - lm[:, LOWER_INNER_LIP, :2], axis=-1)
    face = np.linalg.norm(lm[:, FOREHEAD, :2] - lm[:, CHIN, :2], axis=-1)
    return gap / np.maximum(face, 1e-6)


def jaw_drop(landmarks: np.ndarray) -> np.ndarray:
    """Nose tip (1) to chin (152) over the outer eye corners' distance (33, 263), per frame: [N, 478, >=2] -> [N].

    The jaw's opening: unlike the lip gap, a smile with parted lips barely moves it."""
    lm = np.asarray(landmarks, np.float64)
    jaw = np.linalg.norm(lm[:, NOSE_TIP, :2] - lm[:, CHIN, :2], axis=-1)
    eyes = np.linalg.norm(lm[:, EYE_OUTER_RIGHT, :2] - lm[:, EYE_OUTER_LEFT, :2], axis=-1)
    return jaw / np.maximum(eyes, 1e-6)


def mouth_darkness(frame: np.ndarray, landmarks: np.ndarray) -> float:
    """Share of dark pixels in the mouth box of one frame: the open mouth's shadowed interior.

    ``frame``: [H, W, 3] (RGB) or [H, W]; ``landmarks``: [478, >=2] in that frame's pixels. The box spans the lip
    corners (61, 291) across and +-0.35 mouth widths about the inner-lip midpoint (13, 14) down; a pixel is dark
    below half the median luma of a reference box twice as wide and tall around it (skin, lips), so lighting and
    skin tone cancel. Teeth and lips are bright: a closed-lip smile or bared teeth add little, an open jaw a lot.
    NaN when the landmarks are not finite or the box leaves the frame."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    if not np.isfinite(lm[[MOUTH_LEFT, MOUTH_RIGHT, UPPER_INNER_LIP, LOWER_INNER_LIP]]).all():
        return float("nan")
    img = np.asarray(frame)
    luma = img.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) if img.ndim == 3 else img.astype(np.float32)
    x0, x1 = sorted(lm[[MOUTH_LEFT, MOUTH_RIGHT], 0])
    yc = lm[[UPPER_INNER_LIP, LOWER_INNER_LIP], 1].mean()
    w = max(x1 - x0, 4.0)
    h_, w_ = luma.shape

    def box(ya, yb, xa, xb):
        return luma[max(0, int(ya)):max(0, min(h_, int(yb))), max(0, int(xa)):max(0, min(w_, int(xb)))]

    mouth, ref = box(yc - 0.35 * w, yc + 0.35 * w, x0, x1), box(yc - w, yc + w, x0 - w / 2, x1 + w / 2)
    if mouth.size == 0 or ref.size == 0:
        return float("nan")
    return float((mouth < 0.5 * np.median(ref)).mean())


def sync_visual(darkness: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The visual side of :func:`sync_offset`, [N, 2]: :func:`mouth_darkness` per frame and :func:`jaw_drop`
    (columns in :data:`SYNC_VISUAL` order); a frame with non-finite landmarks is NaN in both."""
    jaw = jaw_drop(landmarks)
    dark = np.asarray(darkness, np.float64)
    return np.stack([np.where(np.isfinite(jaw), dark, np.nan), jaw], 1)


def rms_envelope(samples: np.ndarray, sample_rate: int, fps: int, n_frames: int | None = None) -> np.ndarray:
    """RMS of ``samples`` in each video frame's window (frame i covers [i/fps, (i+1)/fps))."""
    spf = sample_rate / fps
    n = n_frames if n_frames is not None else int(len(samples) // spf)
    out = np.zeros(n)
    for i in range(n):
        seg = samples[int(round(i * spf)): int(round((i + 1) * spf))]
        out[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    return out


def lagged_correlation(x: np.ndarray, y: np.ndarray, lag: int) -> float:
    """Pearson correlation of x[t] with y[t + lag] over the overlapping part."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if lag >= 0:
        a, b = x[: len(x) - lag], y[lag:]
    else:
        a, b = x[-lag:], y[: len(y) + lag]
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    if n < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag in [-max_lag, max_lag] maximising corr(x[t], y[t + lag]) and that correlation.

    With x = mouth opening and y = audio energy, a positive lag means the audio comes later
    than the mouth (video leads); 0 is in sync.
    """
    lags = range(-max_lag, max_lag + 1)
    corrs = [lagged_correlation(x, y, k) for k in lags]
    i = int(np.argmax(corrs))
    return list(lags)[i], corrs[i]


# ----------------------------------------------------------------------------- lip-audio sync offset

def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (as :func:`ssim`), averaged over channels: [H, W]. ``ssim(a, b) == ssim_map(a, b).mean()``."""
    a, b = _as_float(a), _as_float(b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _gaussian_filter(a), _gaussian_filter(b)
    sxx = _gaussian_filter(a * a) - mx * mx
    syy = _gaussian_filter(b * b) - my * my
    sxy = _gaussian_filter(a * b) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.reshape(*a.shape[:2], -1).mean(-1)


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


def sync_offset(mouth: np.ndarray, audio: np.ndarray, max_lag: int = 12, *, speech: np.ndarray | None = None,
                highpass: int = 13, sigma: float = 0.0, window: int = 100, min_frames: int = 100,
                min_r: float = 0.15, min_agreement: float = 0.5, folds: int = 5, ridge: float = 1.0) -> dict:
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

    Reliable when all hold: at least ``min_frames`` speech frames; peak r >= ``min_r``; the peak above chance,
    the 95th percentile of the peaks found the same way (weights refitted) with the audio circularly shifted by
    >= 1 s (25 frames; 40 shifts); and, where there are at least 3 half-overlapping windows of ``window``
    frames, the peaks of the held-out variates inside at least ``min_agreement`` of them within 1 frame of the
    global one. ``offset_frames`` is None with ``reason`` when it is not measurable.
    """
    x, y = _as_columns(mouth), _as_columns(audio)
    if speech is None and y.shape[1] != 1:
        raise ValueError("sync_offset: pass speech= (the speech-band envelope) with multi-band audio")
    e = np.asarray(y[:, 0] if speech is None else speech, np.float64)
    if not len(x) == len(y) == len(e):
        raise ValueError(f"mouth has {len(x)} frames, audio {len(y)}, speech {len(e)}")
    res: dict = {"offset_frames": None, "peak_r": None, "r_at_zero": None, "best_lag": None, "max_lag": max_lag,
                 "n_frames": int(len(x)), "speech_frames": 0, "windows": 0, "agreement": None,
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
    peaks = []
    for s in range(0, len(x) - window + 1, max(1, window // 2)):  # half-overlapping windows
        c = np.array([_pearson(u[(t >= s) & (t < s + window)], v[(t >= s) & (t < s + window)]) for t, u, v in parts])
        if c.any():
            peaks.append(int(np.argmax(c)) - max_lag)
    res["windows"] = len(peaks)
    res["window_offsets"] = peaks
    if peaks:
        res["agreement"] = round(float(np.mean([abs(p - lag) <= 1 for p in peaks])), 4)
    problems = []
    if gate.sum() < min_frames:
        problems.append(f"{int(gate.sum())} speech frames < {min_frames}")
    if curve[best] < min_r:
        problems.append(f"peak r {curve[best]:.3f} < {min_r}")
    null = []  # chance level: peaks found with the audio circularly shifted by >= 1 s (25 frames)
    for shift in np.linspace(25, len(x) - 25, 40).round().astype(int) if len(x) > 75 else []:
        shifted = lag_variates(xs, np.roll(ys, shift, 0), max_lag, np.roll(gate, shift), folds, ridge)
        null.append(max(_pearson(u, v) for _, u, v in shifted))
    res["null_r95"] = round(float(np.percentile(null, 95)), 4) if null else None
    if res["null_r95"] is None or curve[best] <= res["null_r95"]:
        problems.append(f"peak r {curve[best]:.3f} not above chance (95th percentile of shifted-audio peaks "
                        f"{res['null_r95']})")
    if len(peaks) >= 3 and res["agreement"] < min_agreement:
        problems.append(f"only {res['agreement']:.0%} of {len(peaks)} windows peak within 1 frame of {lag:+d}")
    res["reliable"] = not problems
    res["reason"] = "; ".join(problems)
    if res["reliable"]:
        res["offset_frames"] = lag
    return res
