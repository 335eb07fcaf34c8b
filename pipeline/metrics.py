"""Metric functions shared by training, evaluation and tests (numpy only; importable on GPU nodes).

* :func:`psnr`, :func:`ssim` — image fidelity (uint8 or float in [0, 1]); optional mask.
* :func:`mouth_lmd` — landmark distance of lip points after removing each frame's mean (px).
* :func:`mouth_opening` — inner-lip distance over face height, per frame (mediapipe mesh ids).
* :func:`best_lag` — the lag (frames) maximising the Pearson correlation of two signals;
  used for lip–audio offset (mouth opening vs audio energy; 0 is in sync).
* :func:`rms_envelope` — per-video-frame RMS of an audio signal.
"""

from __future__ import annotations

import numpy as np

# mediapipe face-mesh ids
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
FOREHEAD, CHIN = 10, 152
# lips (outer + inner contours) of the 468-point mesh, the usual mouth LMD set
LIP_IDS = np.array(sorted({
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
}))


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


def band_envelope(samples: np.ndarray, sample_rate: int, fps: int, n_frames: int, lo_hz: float = 300.0,
                  hi_hz: float = 3000.0, window_sec: float = 0.064, floor_db: float = 50.0) -> np.ndarray:
    """Speech-band log energy (dB) per video frame: a Hann window of ``window_sec`` centred on the middle of
    frame i (``(i + 0.5) / fps``), power summed over [lo_hz, hi_hz], floored at ``floor_db`` under the peak."""
    x = np.asarray(samples, np.float64)
    win = max(16, int(round(window_sec * sample_rate)))
    centres = np.round((np.arange(n_frames) + 0.5) * sample_rate / fps).astype(np.int64)
    padded = np.pad(x, (win, win + max(0, int(centres[-1]) + win - len(x)) if n_frames else win))
    out = np.empty(n_frames)
    freqs = np.fft.rfftfreq(win, 1.0 / sample_rate)
    band = (freqs >= lo_hz) & (freqs <= hi_hz)
    hann = np.hanning(win)
    for s in range(0, n_frames, 512):  # bounded memory on long clips
        idx = (centres[s:s + 512] + win - win // 2)[:, None] + np.arange(win)[None]
        spec = np.abs(np.fft.rfft(padded[idx] * hann, axis=1)) ** 2
        out[s:s + 512] = spec[:, band].sum(1)
    db = 10.0 * np.log10(out + 1e-12)
    return np.maximum(db, db.max() - floor_db) if n_frames else db


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


def gated_lag_curve(x: np.ndarray, y: np.ndarray, max_lag: int, gate: np.ndarray | None = None) -> np.ndarray:
    """Pearson r of x[t] with y[t + lag] for lag in [-max_lag, max_lag], over the t where ``gate[t + lag]``."""
    n = len(x)
    gate = np.ones(n, bool) if gate is None else np.asarray(gate, bool)
    out = np.zeros(2 * max_lag + 1)
    for j, k in enumerate(range(-max_lag, max_lag + 1)):
        sl_x, sl_y = (slice(0, n - k), slice(k, n)) if k >= 0 else (slice(-k, n), slice(0, n + k))
        m = gate[sl_y]
        a, b = x[sl_x][m], y[sl_y][m]
        if len(a) > 3 and a.std() > 1e-12 and b.std() > 1e-12:
            out[j] = float(np.corrcoef(a, b)[0, 1])
    return out


def speech_frames(envelope: np.ndarray, share: float = 0.4) -> np.ndarray:
    """Frames whose band energy lies above ``share`` of the way from the 10th to the 90th percentile."""
    lo, hi = np.percentile(envelope, [10, 90])
    return envelope > lo + share * (hi - lo)


def sync_offset(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = 12, *, highpass: int = 13,
                sigma: float = 0.0, window: int = 100, min_frames: int = 100, min_r: float = 0.15,
                min_agreement: float = 0.5) -> dict:
    """Lip-audio offset in frames: the lag maximising the correlation of mouth opening with speech energy.

    Both signals are smoothed (``sigma``) and high-passed (``highpass`` frames) so the syllable-rate
    modulation is compared, not slow drift; only frames where the audio is speech
    (:func:`speech_frames`) count, since in pauses the mouth does what it likes (breathing, preparing the
    next phrase: it often opens a few frames before the sound). ``offset_frames`` > 0: the audio comes
    later than the mouth. Reliability: at least ``min_frames`` speech frames, peak r >= ``min_r``, and the
    peaks of independent windows of ``window`` frames agree with the global one (within 1 frame) in at
    least ``min_agreement`` of them (half-overlapping windows, at least 3). ``offset_frames`` is None with ``reason`` when it is not measurable.
    """
    x = np.asarray(mouth, np.float64)
    e = np.asarray(envelope, np.float64)
    if len(x) != len(e):
        raise ValueError(f"mouth has {len(x)} frames, envelope {len(e)}")
    res: dict = {"offset_frames": None, "peak_r": None, "r_at_zero": None, "best_lag": None, "max_lag": max_lag,
                 "n_frames": int(len(x)), "speech_frames": 0, "windows": 0, "agreement": None,
                 "curve": [], "reliable": False, "reason": ""}
    finite = np.isfinite(x) & np.isfinite(e)
    if finite.sum() < 2 * max_lag + 3:
        res["reason"] = f"{int(finite.sum())} usable frames: too short to search +-{max_lag} frames"
        return res
    if not finite.all():
        idx = np.arange(len(x))
        x = np.interp(idx, idx[np.isfinite(x)], x[np.isfinite(x)])
        e = np.interp(idx, idx[np.isfinite(e)], e[np.isfinite(e)])
    gate = speech_frames(e) & finite
    xs, ys = highpass_frames(smooth_frames(x, sigma), highpass), highpass_frames(smooth_frames(e, sigma), highpass)
    curve = gated_lag_curve(xs, ys, max_lag, gate)
    best = int(np.argmax(curve))
    lag = best - max_lag
    res.update(best_lag=lag, peak_r=round(float(curve[best]), 4), r_at_zero=round(float(curve[max_lag]), 4),
               speech_frames=int(gate.sum()), curve=[round(float(c), 4) for c in curve])
    peaks = []
    for s in range(0, len(x) - window + 1, max(1, window // 2)):  # half-overlapping windows
        c = gated_lag_curve(xs[s:s + window], ys[s:s + window], max_lag, gate[s:s + window])
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
        null.append(gated_lag_curve(xs, np.roll(ys, shift), max_lag, np.roll(gate, shift)).max())
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
