"""Stage-1 targets and batches.

Targets are the subject's pose-free (canonical) landmarks, expressed as offsets from the
subject's mean train-split shape, the jaw outline's weighted down (``target_weights``), and compressed by PCA
(``LandmarkBasis``): the network predicts
K coefficients per frame, decoded linearly to all landmarks. Only the mouth and jaw region
(``MOUTH_REGION``) moves: audio does not determine blinks or brows (the NeRF takes AU45 for the
eyes), and fitting them from audio only adds noise targets to overfit. The coefficients share
one scale, so the loss is the landmark-space squared error. Sequences of T consecutive frames
are drawn from the train split; prediction slides T-frame windows with overlap and blends them
with triangular weights; ``smooth_zero_lag`` is a centred (symmetric) Gaussian filter, so it
cannot shift the mouth in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.config import Stage1Config
from pipeline.core.metrics import LIP_IDS, MOUTH_REGION, smooth_frames



@dataclass
class LandmarkBasis:
    mean: np.ndarray         # [P, 3] mean canonical shape of the train split
    components: np.ndarray   # [K, P*3] orthonormal PCA directions of the weighted offsets
    scale: np.ndarray        # [K] one shared value: RMS coefficient std on the train split
    weight: np.ndarray       # [P] each point's weight in the target space (``stage1.jaw_weight``)

    @classmethod
    def fit(cls, landmarks: np.ndarray, max_components: int, variance: float = 0.99,
            region: np.ndarray | None = MOUTH_REGION, weight: np.ndarray | None = None) -> "LandmarkBasis":
        """PCA of the offsets from the mean, each point's offset times its ``weight`` [P] (default 1); points
        outside ``region`` keep the mean shape."""
        mean = landmarks.mean(0)
        w = np.ones(landmarks.shape[1], np.float32) if weight is None else np.asarray(weight, np.float32)
        off = (landmarks - mean) * w[None, :, None]
        if region is not None:
            keep = np.zeros(off.shape[1], bool)
            keep[region] = True
            off = off * keep[None, :, None]
        x = off.reshape(len(off), -1).astype(np.float64)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        ratio = np.cumsum(s**2) / max(np.sum(s**2), 1e-12)
        k = int(min(max_components, np.searchsorted(ratio, variance) + 1, len(s)))
        rms = np.sqrt(np.mean(s[:k] ** 2) / max(len(x) - 1, 1))
        return cls(mean.astype(np.float32), vt[:k].astype(np.float32), np.full(k, max(rms, 1e-8), np.float32), w)

    @property
    def k(self) -> int:
        return len(self.components)

    def encode(self, landmarks: np.ndarray) -> np.ndarray:
        x = (landmarks - self.mean) * self.weight[None, :, None]
        return (x.reshape(len(landmarks), -1) @ self.components.T) / self.scale

    def decode(self, coeffs: np.ndarray) -> np.ndarray:
        x = ((coeffs * self.scale) @ self.components).reshape(len(coeffs), -1, 3) / self.weight[None, :, None]
        return (x + self.mean).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "scale": self.scale, "weight": self.weight}


def target_weights(n_points: int, jaw_weight: float) -> np.ndarray:
    """[P] weights of stage 1's target space: 1, and ``jaw_weight`` on the jaw outline (``MOUTH_REGION`` without the
    lips). Those points follow the face's silhouette, whose slide with the head's turn and tracking noise is not
    in the audio; at full weight that variance dominates the loss and the early stopping, and the lips, which LMD
    and the head's mouth need, are learnt less (BENCHMARKS.md, "Session 12")."""
    w = np.ones(n_points, np.float32)
    w[np.setdiff1d(MOUTH_REGION, LIP_IDS)] = jaw_weight
    return w


def random_sequences(n_frames_range: tuple[int, int], seq_len: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Start indices of ``batch`` sequences of ``seq_len`` frames inside [lo, hi)."""
    lo, hi = n_frames_range
    return rng.integers(lo, max(lo + 1, hi - seq_len + 1), size=batch)


def gather(x: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    idx = starts[:, None] + np.arange(seq_len)[None]
    return torch.from_numpy(np.ascontiguousarray(x[idx]))


@torch.no_grad()
def sliding_predict(model: torch.nn.Module, feats: np.ndarray, seq_len: int, batch: int = 16) -> np.ndarray:
    """Predict every frame of a clip: windows of ``seq_len`` with 50 % overlap, triangular blending."""
    n = len(feats)
    if n <= seq_len:
        return model(torch.from_numpy(feats[None]).float())[0].numpy()
    hop = max(1, seq_len // 2)
    starts = list(range(0, n - seq_len + 1, hop))
    if starts[-1] != n - seq_len:
        starts.append(n - seq_len)
    w = np.minimum(np.arange(1, seq_len + 1), np.arange(seq_len, 0, -1)).astype(np.float64)
    acc, norm = None, np.zeros(n)
    for i in range(0, len(starts), batch):
        s = np.array(starts[i:i + batch])
        out = model(gather(feats, s, seq_len).float()).numpy()
        if acc is None:
            acc = np.zeros((n, out.shape[-1]))
        for j, st in enumerate(s):
            acc[st:st + seq_len] += out[j] * w[:, None]
            norm[st:st + seq_len] += w
    return (acc / norm[:, None]).astype(np.float32)


def smooth_zero_lag(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian smoothing of each column along time (edges held): symmetric, so no lag."""
    if sigma <= 0:
        return x
    return np.stack([smooth_frames(x[:, j], sigma) for j in range(x.shape[1])], 1).astype(x.dtype)


def predict_landmarks(model, basis: LandmarkBasis, feats: np.ndarray, cfg: Stage1Config) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed, raw) canonical landmarks [N, P, 3] for every frame of ``feats``."""
    raw = sliding_predict(model, feats, cfg.seq_len)
    return basis.decode(smooth_zero_lag(raw, cfg.smooth_sigma)), basis.decode(raw)


def ridge_fit(train_x: np.ndarray, train_y: np.ndarray, alpha: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ridge regression: returns (x mean, weight, bias) with y = (x - mean) @ weight + bias."""
    xm, ym = train_x.mean(0), train_y.mean(0)
    a, b = train_x - xm, train_y - ym
    w = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(a.shape[1]), a.T @ b)
    return xm, w, ym


def ridge_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Linear regression baseline from the same (flattened) audio windows, closed-form ridge."""
    xm, w, ym = ridge_fit(train_x, train_y, alpha)
    return (test_x - xm) @ w + ym
