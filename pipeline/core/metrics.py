"""Metric functions shared by training, evaluation and tests (numpy only; importable on GPU nodes).

* :func:`psnr`, :func:`ssim` — image fidelity (uint8 or float in [0, 1]); optional mask.
* :func:`mouth_lmd` — landmark distance of lip points after removing each frame's mean (px).
* :func:`mouth_opening` — inner-lip distance over face height, per frame (mediapipe mesh ids).
* :func:`best_lag` — the lag (frames) maximising the Pearson correlation of two signals.
* :func:`rms_envelope` — per-video-frame RMS of an audio signal.
* Lip-audio offset: :func:`sync_offset` (Pearson r per lag, a chance level for the peak of the search from
  unrelated pairings of the same signals, agreement of the informative windows) between the visual signal
  :func:`sync_visual` (:func:`mouth_darkness` of each frame) and the audio's :func:`sync_audio` (log energy in the
  speech bands); the detector lives in :mod:`pipeline.core.sync_detector` and is re-exported here.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.sync_detector import (SYNC_BANDS_HZ, band_energies, band_envelope, highpass_frames,  # noqa: F401
                                         smooth_frames, speech_frames, sync_audio, sync_offset)

# mediapipe face-mesh ids
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263
# the lip-sync detector's visual signal (recorded in eval/metrics.json); the audio's: sync_audio
SYNC_VISUAL = ("mouth_darkness",)
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
# points that move with the skull, not with expressions (nose bridge and tip, inner and outer eye corners, glabella):
# where the head is, for timing checks of landmarks and poses (bench/pose_timing.py, bench/landmark_modes.py)
RIGID_IDS = (1, 4, 5, 6, 8, 9, 10, 33, 133, 151, 168, 195, 197, 263, 362)


def _as_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB (peak 1.0) of a mean squared error; ``inf`` for 0."""
    return float("inf") if mse <= 0 else float(-10.0 * np.log10(mse))


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB (peak 1.0); ``inf`` for identical images."""
    a, b = _as_float(a), _as_float(b)
    err = (a - b) ** 2
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask, bool)[..., None] if mask.ndim == a.ndim - 1 else mask, a.shape)
        err = err[m]
    return psnr_from_mse(float(err.mean()) if err.size else 0.0)


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
    """The visual side of :func:`sync_offset`, [N, 1] (:data:`SYNC_VISUAL`): :func:`mouth_darkness` per frame,
    NaN where the face's landmarks are not finite (no face: the frame takes no part).

    The dark interior alone: the jaw drop (:func:`jaw_drop`) was the second signal of a fitted combination; with
    fixed weights it adds smiles (katiehill's peak: +4 and 2.7 null sd above the null mean with it, +3 and 3.5
    without; BENCHMARKS.md, measure_av_sync)."""
    seen = np.isfinite(np.asarray(landmarks, np.float64)[..., :2]).all(axis=(1, 2))
    return np.where(seen, np.asarray(darkness, np.float64), np.nan)[:, None]


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
