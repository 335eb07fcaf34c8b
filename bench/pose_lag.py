"""Does the trained head sit where the frame's head is, or where it was a fraction of a frame earlier?

    PYTHONPATH=. python bench/pose_lag.py --subject-dir S --out OUT.json [--device cuda] [--train-frames 162]
                                          [--every 1] [--lags -1,-0.75,-0.5,-0.25,0,0.25,0.5]

S holds a trained head, NeRF or Gaussians (``stage2/head.json`` + ``head.pt``), and what training reads (the
frame cache at the head's size). Every test frame f, and ``--train-frames`` training frames before the test split,
is rendered through the renderer's own head call (``pipeline.render.head``) from the camera of time ``f - lag``
(on top of the head's own ``stage2.pose_offset_frames``; rotation and translation interpolated between
neighbouring frames, ``pipeline.stage2.data.time_shift_c2w``) with the frame's own landmarks, audio and AU45
(teacher-forced, as training sees them); the head is laid over the true frame and scored on the head labels
(3-7), PSNR averaged over frames as ``bench/gpu_eval_render.py`` does. A head that trails the video (the camera
of frame f draws it where the video had it a little earlier) scores best at a negative lag. ``--every k`` keeps
every k-th frame of both sets (the NeRF head on a CPU renders a 128² frame in about a second).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import AUDIO_FEATURES, CANONICAL_LANDMARKS, INGEST_META, STAGE2_FRAMES, STAGE2_LABELS
from pipeline.core.layout import SubjectLayout
from pipeline.render.head import load_head
from pipeline.render.video import load_scene
from pipeline.stage2.data import HEAD_MIN_LABEL, conditioning_landmarks, load_au45, time_shift_c2w

LAGS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)


@torch.no_grad()
def score(head, scene, c2w: np.ndarray, cond: dict, frames, labels, ids: np.ndarray, batch: int = 8) -> float:
    size = frames.shape[1]
    psnrs = []
    for s in range(0, len(ids), batch):
        f = ids[s:s + batch]
        pre, alpha = head.render(c2w[f], cond["landmarks"][f], cond["audio"][f] if cond["audio"] is not None else None,
                                 cond["au45"][f], scene.focal, scene.cx, scene.cy, scene.crop_size, size)
        gt = torch.as_tensor(np.asarray(frames[f]), device=pre.device).permute(0, 3, 1, 2) / 255.0
        mask = (torch.as_tensor(np.asarray(labels[f]), device=pre.device) >= HEAD_MIN_LABEL).float()
        img = pre + (1 - alpha) * gt
        mse = (((img - gt) ** 2).mean(1) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1)
        psnrs += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
    return float(np.mean(psnrs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-frames", type=int, default=162)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--lags", default=",".join(str(x) for x in LAGS))
    args = p.parse_args()
    lags = [float(x) for x in args.lags.split(",")]
    files = SubjectLayout(args.subject_dir)
    head = load_head(files.stage2.path, args.device)
    cfg = head.model_config
    scene = load_scene(args.subject_dir)
    n = len(scene.c2w)
    split = INGEST_META.read(files.ingest.meta)["split"]
    (a, b), (t0, t1) = split["train"], split["test"]
    lms = CANONICAL_LANDMARKS.read(files.tracking.canonical)["landmarks"][:n]
    cond = {"landmarks": conditioning_landmarks(lms, a, b, cfg.landmark_motion).astype(np.float32),
            "audio": AUDIO_FEATURES.read(files.audio.features())["features"][:n] if head.uses_audio else None,
            "au45": load_au45(files, n)[0]}
    frames, labels = STAGE2_FRAMES.read(files.stage2.frames), STAGE2_LABELS.read(files.stage2.labels)
    splits = {"test": np.arange(t0, t1)[::args.every],
              "train": np.arange(max(a, b - args.train_frames), b)[::args.every]}
    result = {"head": cfg.head, "pose_offset_frames": cfg.pose_offset_frames}
    for split, ids in splits.items():
        result[split] = {str(lag): round(score(head, scene, time_shift_c2w(scene.c2w, cfg.pose_offset_frames - lag),
                                               cond, frames, labels, ids), 3) for lag in lags}
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
