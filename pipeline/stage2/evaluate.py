"""Test-split evaluation of a stage-2 head: head-mask PSNR/SSIM, the background-plate baseline, a PNG strip.

For each evaluated test frame the head (conditioned on the frame's tracked landmarks, audio and AU45) is
rendered over the background plate on the frame's sampling region (head mask dilated by ``head_margin``); the
rest of the image is the plate (the torso model's part is not this stage's). PSNR and SSIM
(:mod:`pipeline.core.metrics`) are taken over the head mask (labels 3-7) of the ground truth. The baseline is the
plate alone over the same pixels: what the head model has to beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import atomic_output
from pipeline.core.metrics import psnr, ssim
from pipeline.stage2.data import SubjectData


def eval_frames(test_ids: np.ndarray, max_frames: int) -> np.ndarray:
    """Evenly spaced test frames (all when ``max_frames`` is 0 or exceeds the split)."""
    if max_frames <= 0 or max_frames >= len(test_ids):
        return test_ids
    return test_ids[np.linspace(0, len(test_ids) - 1, max_frames).round().astype(int)]


@torch.no_grad()
def render_frame(field, renderer, data: SubjectData, f: int, margin_px: int, ray_chunk: int = 1 << 13) -> np.ndarray:
    """uint8 ``[S, S, 3]``: the head over the plate on the frame's region, the plate elsewhere."""
    _, region = data.region(f, margin_px)
    rows, cols = np.nonzero(region)
    img = data.plate.copy()
    if not len(rows):
        return img
    ctx = field.prepare(*data.conditioning(np.array([f])))
    out = []
    for i in range(0, len(rows), ray_chunk):
        r, c = rows[i:i + ray_chunk], cols[i:i + ray_chunk]
        o, d = data.rays(np.full(len(r), f), r, c)
        bg = data.plate_t[torch.from_numpy(r).to(data.device), torch.from_numpy(c).to(data.device)]
        fr = torch.zeros(len(r), dtype=torch.int64, device=data.device)
        out.append(renderer.render(field, ctx, o, d, fr, bg).rgb.float().clamp(0, 1).cpu())
    img[rows, cols] = (torch.cat(out).numpy() * 255.0 + 0.5).astype(np.uint8)
    return img


def evaluate(render: Callable[[int], np.ndarray], data: SubjectData, frames: np.ndarray,
             keep: int = 0) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Metrics over ``frames`` (per-frame PSNR / SSIM over the head mask, averaged) of ``render(f)`` (uint8
    ``[S, S, 3]``, the head over the plate: :func:`render_frame` for the NeRF, the Gaussian head's own), and up
    to ``keep`` (ground truth, render) pairs, evenly spaced, for the strip."""
    psnrs, base, ssims = [], [], []
    keep_at = set(eval_frames(frames, keep).tolist()) if keep else set()
    pairs = []
    for f in frames.tolist():
        gt = np.asarray(data.frames[f])
        mask = data.head_mask(f)
        img = render(f)
        if mask.any():
            psnrs.append(psnr(img, gt, mask))
            base.append(psnr(data.plate, gt, mask))
            ssims.append(ssim(img, gt, mask))
        if f in keep_at:
            pairs.append((gt, img))
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return {"test_frames": len(frames), "psnr_head": mean(psnrs), "ssim_head": mean(ssims),
            "psnr_head_baseline": mean(base)}, pairs


def write_strip(path: Path | str, pairs: list[tuple[np.ndarray, np.ndarray]], gain: float = 4.0) -> None:
    """PNG: one row per frame, ground truth | render | |error| x gain (colour map)."""
    rows = []
    for gt, img in pairs:
        err = np.abs(img.astype(np.float32) - gt.astype(np.float32)).mean(-1) * gain
        heat = cv2.applyColorMap(np.clip(err, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
        rows.append(np.concatenate([cv2.cvtColor(gt, cv2.COLOR_RGB2BGR), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                    heat], axis=1))
    if not rows:
        return
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), np.concatenate(rows, axis=0)):
            raise OSError(f"cv2 could not write {tmp}")
