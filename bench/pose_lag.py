"""Does the trained head sit where the frame's head is, or where it was a fraction of a frame earlier?

    PYTHONPATH=. python bench/pose_lag.py --subject-dir S --out OUT.json [--device cuda] [--train-frames 162]

S holds a trained Gaussian head (``stage2/head.json`` + ``head.pt``) and what training reads (the frame cache at
the head's size). Every test frame f, and ``--train-frames`` training frames before the test split, is rendered
from the camera of time ``f - lag`` (on top of the head's own ``stage2.pose_offset_frames``; rotation and
translation interpolated between frames f - 1 and f, or f and f + 1 for a negative lag) with the frame's own
landmarks, audio and AU45 (teacher-forced, as training sees them); the head is laid over the true frame and scored
on the head labels (3-7), PSNR averaged over frames as ``bench/gpu_eval_render.py`` does. A head that trails the
video (the camera of frame f draws it where the video had it a little earlier) scores best at a negative lag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.render.head import GaussianHeadView, load_head
from pipeline.stage2.data import HEAD_MIN_LABEL, SubjectData
from pipeline.stage2.gaussians.backend import rasterizer
from pipeline.stage2.gaussians.model import intrinsics, viewmats_from_c2w

LAGS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)


def camera_at(c2w: torch.Tensor, ids: torch.Tensor, lag: float) -> torch.Tensor:
    """Camera-to-head ``[B, 4, 4]`` at time ``ids - lag``: linear blend of the neighbouring frames' matrices, the
    rotation part projected back onto the rotations (SVD); exact at whole lags."""
    j = (ids - int(np.sign(lag))).clamp(0, len(c2w) - 1)
    w = abs(lag)
    m = (1 - w) * c2w[ids] + w * c2w[j]
    u, _, vh = torch.linalg.svd(m[:, :3, :3])
    m[:, :3, :3] = u @ vh
    return m


@torch.no_grad()
def score(head, data: SubjectData, ids: np.ndarray, lag: float, rasterize, batch: int = 8) -> float:
    cam = data.camera
    K = intrinsics(cam.focal, cam.cx, cam.cy, data.device)
    psnrs = []
    for s in range(0, len(ids), batch):
        f = torch.as_tensor(ids[s:s + batch], device=data.device)
        gs = head.deform(*data.conditioning(f))
        pre, alpha = head.render(gs, viewmats_from_c2w(camera_at(data.c2w, f, lag)), K, data.size, rasterize)
        gt = torch.as_tensor(np.asarray(data.frames[ids[s:s + batch]]), device=data.device).permute(0, 3, 1, 2) / 255.0
        lab = torch.as_tensor(np.asarray(data.labels[ids[s:s + batch]]), device=data.device)
        img = pre + (1 - alpha) * gt
        mask = (lab >= HEAD_MIN_LABEL).float()
        mse = (((img - gt) ** 2).mean(1) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1)
        psnrs += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
    return float(np.mean(psnrs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-frames", type=int, default=162)
    args = p.parse_args()
    view = load_head(args.subject_dir / "stage2", args.device)
    if not isinstance(view, GaussianHeadView):
        raise SystemExit("pose_lag.py renders the Gaussian head (stage2.head: gaussians)")
    head = view.head
    data = SubjectData(args.subject_dir, 1.6, head.cfg.bound, args.device, head.cfg.landmark_motion,
                       head.cfg.pose_offset_frames)
    splits = {"test": data.test_ids, "train": data.train_ids[-args.train_frames:]}
    rasterize, _ = rasterizer(head.cfg.gaussians.backend, data.device, data.size)
    result = {split: {str(lag): round(score(head, data, ids, lag, rasterize), 3) for lag in LAGS}
              for split, ids in splits.items()}
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
