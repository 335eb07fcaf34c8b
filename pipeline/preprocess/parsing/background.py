"""The background plate: per-pixel temporal median over frames where the pixel is background.

Frames are sampled evenly (at most ``samples`` of them, chosen before decoding, so memory is
bounded by ``samples x H x W x 5`` bytes: 200 frames of 512^2 are 260 MB, of 128^2 16 MB). The median
is taken in row strips (the sort buffer stays small) over the samples where the pixel was background,
away from the person edge by ``margin_px``; pixels background in fewer than ``min_count`` samples
(always behind the person) are filled by ``cv2.inpaint`` (Telea) from their surroundings.
"""

from __future__ import annotations

import cv2
import numpy as np


def sample_indices(n_frames: int, samples: int) -> np.ndarray:
    """At most ``samples`` frame indices spread evenly over ``[0, n_frames)`` (sorted, unique)."""
    if n_frames <= samples:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, samples)).astype(np.int64))


def background_support(labels: np.ndarray, margin_px: int) -> np.ndarray:
    """bool [H, W]: background pixels at least ``margin_px`` away from any non-background label."""
    bg = (labels == 0).astype(np.uint8)
    if margin_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
        bg = cv2.erode(bg, k, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return bg.astype(bool)


class PlateAccumulator:
    """Collects the sampled frames and their background masks; :meth:`finish` makes the plate."""

    def __init__(self, n_frames: int, height: int, width: int, samples: int = 200,
                 min_count: int = 3, margin_px: int = 1, strip_rows: int = 32):
        self.indices = sample_indices(n_frames, samples)
        self._slot = {int(i): k for k, i in enumerate(self.indices)}
        k = len(self.indices)
        self.frames = np.zeros((k, height, width, 3), np.uint8)
        self.labels = np.zeros((k, height, width), np.uint8)
        self.filled = np.zeros(k, bool)
        self.min_count, self.margin_px, self.strip_rows = min_count, margin_px, strip_rows

    def wants(self, frame_idx: int) -> bool:
        return int(frame_idx) in self._slot

    def add(self, frame_idx: int, frame: np.ndarray, labels: np.ndarray) -> None:
        k = self._slot[int(frame_idx)]
        self.frames[k], self.labels[k], self.filled[k] = frame, labels, True

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (plate uint8 [H, W, 3], count int32 [H, W]: samples that saw each pixel as background)."""
        slots = np.flatnonzero(self.filled)
        _, h, w, _ = self.frames.shape
        masks = np.zeros((len(slots), h, w), bool)
        for j, k in enumerate(slots):
            masks[j] = background_support(self.labels[k], self.margin_px)
        plate = np.zeros((h, w, 3), np.uint8)
        count = masks.sum(0).astype(np.int32)
        sentinel = np.uint16(1024)  # sorts after every 8-bit value
        for r0 in range(0, h, self.strip_rows):
            r1 = min(h, r0 + self.strip_rows)
            vals = self.frames[slots, r0:r1].astype(np.uint16)   # [K, rows, W, 3]: one strip at a time
            vals[~masks[:, r0:r1]] = sentinel
            vals.sort(axis=0)
            mid = np.clip((count[r0:r1] - 1) // 2, 0, max(len(slots) - 1, 0))   # lower median of valid samples
            med = np.take_along_axis(vals, mid[None, :, :, None].repeat(3, axis=3), axis=0)[0]
            plate[r0:r1] = np.where(med == sentinel, 0, med).astype(np.uint8)
        holes = (count < self.min_count).astype(np.uint8)
        if holes.all():
            plate[:] = 0
        elif holes.any():
            radius = max(3, round(0.02 * max(h, w)))
            plate = cv2.inpaint(plate, holes, radius, cv2.INPAINT_TELEA)
        return plate, count

    def sample_error(self, plate: np.ndarray) -> float:
        """Mean abs difference (0-255 scale) between the plate and the sampled frames' background (label 0) pixels."""
        total, n = 0.0, 0
        ref = plate.astype(np.int16)
        for k in np.flatnonzero(self.filled):
            m = self.labels[k] == 0
            total += float(np.abs(self.frames[k][m].astype(np.int16) - ref[m]).sum()) / 3.0
            n += int(m.sum())
        return total / n if n else float("nan")
