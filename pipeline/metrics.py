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
