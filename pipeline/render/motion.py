"""Head motion and blinks for driven videos (``drive_video``): pose replay and AU45 sampling.

* ``mirror_loop(a, b, n)``: frame indices that walk the train range forward, then backward, then forward …
  (``a, a+1, …, b-1, b-2, …, a, a+1, …``), so a replayed track never jumps back to its start.
* ``smooth_c2w(c2w, sigma)``: centred Gaussian over time on camera-to-head transforms: translations
  averaged linearly, rotations as the weighted mean of the rotation matrices projected back onto SO(3)
  (SVD), which is exact for the small rotations of a talking head; ``smooth_rows`` does the same for
  plain per-frame vectors (the torso's pose columns).
* ``BlinkModel.from_aus(au45, blink_frames, fps)``: the subject's blink rate, the open-eye AU45 level
  (median outside blinks) and the mean AU45 profile of a blink (±``half`` frames around each peak,
  baseline removed); ``sample(n, rng)`` draws blink onsets as a renewal process whose gaps are the
  subject's mean gap x Uniform(0.5, 1.5) (at least ``min_gap`` frames), each blink the mean profile
  scaled by the peak of a randomly chosen real blink. A subject that never blinked gets a constant AU45.
Importable with numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mirror_loop(start: int, stop: int, n: int) -> np.ndarray:
    """``n`` frame indices ping-ponging over ``[start, stop)``."""
    length = stop - start
    if length < 1:
        raise ValueError(f"empty frame range [{start}, {stop})")
    if length == 1:
        return np.full(n, start, dtype=np.int64)
    period = 2 * (length - 1)
    k = np.arange(n) % period
    return (start + np.where(k < length, k, period - k)).astype(np.int64)


def gaussian_weights(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return w / w.sum()


def smooth_rows(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian over axis 0 (edge-padded) of ``[N, ...]``; identity for sigma <= 0."""
    x = np.asarray(x, np.float64)
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    w = gaussian_weights(sigma)
    r = len(w) // 2
    pad = np.concatenate([np.repeat(x[:1], r, 0), x, np.repeat(x[-1:], r, 0)])
    return sum(w[j] * pad[j:j + len(x)] for j in range(len(w)))


def smooth_c2w(c2w: np.ndarray, sigma: float) -> np.ndarray:
    """Temporal Gaussian on ``[N, 4, 4]`` rigid transforms (rotations projected back onto SO(3))."""
    out = np.array(c2w, np.float64)
    if sigma <= 0 or len(out) < 2:
        return out
    out[:, :3, 3] = smooth_rows(out[:, :3, 3], sigma)
    m = smooth_rows(out[:, :3, :3], sigma)
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= d[:, None]
    out[:, :3, :3] = u @ vt
    return out


@dataclass(frozen=True)
class BlinkModel:
    rate_per_frame: float     # blinks per frame
    baseline: float           # open-eye AU45 level
    profile: np.ndarray       # [2 half + 1] mean blink shape above the baseline, peak-normalised to 1
    peaks: np.ndarray         # [K] peak heights above the baseline of the subject's blinks
    min_gap: int              # frames

    @classmethod
    def from_aus(cls, au45: np.ndarray, blink_frames: np.ndarray | list[int], half: int = 4,
                 min_gap: int = 6) -> "BlinkModel":
        au45 = np.asarray(au45, np.float64)
        peaks_idx = np.asarray(blink_frames, np.int64)
        peaks_idx = peaks_idx[(peaks_idx >= 0) & (peaks_idx < len(au45))]
        mask = np.ones(len(au45), bool)
        for p in peaks_idx:
            mask[max(0, p - half):p + half + 1] = False
        baseline = float(np.median(au45[mask])) if mask.any() else float(np.median(au45))
        profiles, heights = [], []
        for p in peaks_idx:
            win = au45[np.clip(np.arange(p - half, p + half + 1), 0, len(au45) - 1)] - baseline
            if win[half] > 0:
                profiles.append(np.clip(win, 0, None) / win[half])
                heights.append(win[half])
        profile = np.mean(profiles, 0) if profiles else np.zeros(2 * half + 1)
        return cls(len(profiles) / max(1, len(au45)), baseline, profile, np.array(heights), min_gap)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """AU45 intensities ``[n]`` (0-5) with blinks at the subject's rate and shape."""
        out = np.full(n, self.baseline)
        if self.rate_per_frame <= 0 or not len(self.peaks):
            return np.clip(out, 0, 5)
        gap = 1.0 / self.rate_per_frame
        half = len(self.profile) // 2
        t = rng.uniform(0.2, 1.0) * gap
        while t < n:
            c = int(round(t))
            height = self.peaks[rng.integers(len(self.peaks))]
            for j, v in enumerate(self.profile):
                k = c - half + j
                if 0 <= k < n:
                    out[k] = max(out[k], self.baseline + height * v)
            t += max(self.min_gap, gap * rng.uniform(0.5, 1.5))
        return np.clip(out, 0, 5)
