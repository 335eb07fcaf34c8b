"""A trained head on the test split with two mouths: stage 1's (audio-driven) and the tracked one (teacher-forced).

    PYTHONPATH=. python bench/score_mouth_sources.py --subject-dir S [--truth T] [--device cpu] [--out OUT.json]

S holds a trained head (``stage2/head.json`` + ``head.pt``, NeRF or Gaussians) and what training reads, the frame
cache at the head's size included; T (default S) the subject whose ``tracking/canonical.npz`` and
``stage1/pred/self.parquet`` give the tracked and the predicted mouth. Every test frame is rendered through the
renderer's head call (``pipeline.render.head``) with the frame's own camera, audio and AU45 and each mouth (the
other landmarks at their train-split mean, ``stage2.landmark_motion: mouth``), laid over the true frame, and scored
by ``bench/gpu_eval_render.py``'s ``score``: the per-frame mean head PSNR and each parsing region's PSNR and
sharpness. For comparing heads trained with ``stage2.train_mouth: tracked`` and ``stage1`` on the CPU at small
sizes (BENCHMARKS.md, session 15).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.gpu_eval_render import score
from pipeline.core.artifacts import (AUDIO_FEATURES, CANONICAL_LANDMARKS, INGEST_META, STAGE2_FRAMES, STAGE2_LABELS,
                                     STAGE2_METRICS, read_stage1_landmarks)
from pipeline.core.layout import SELF_AUDIO, SubjectLayout
from pipeline.core.metrics import MOUTH_REGION
from pipeline.render.head import load_head
from pipeline.render.video import load_scene
from pipeline.stage2.data import conditioning_landmarks, load_au45

REGIONS = ("face", "hair", "lips", "mouth", "eyes")


@torch.no_grad()
def render_over_truth(head, scene, landmarks: np.ndarray, audio, au45, frames, ids: np.ndarray,
                      batch: int = 8) -> np.ndarray:
    """uint8 ``[len(ids), S, S, 3]``: the head of each frame composited over the true frame."""
    out = []
    for s in range(0, len(ids), batch):
        f = ids[s:s + batch]
        pre, alpha = head.render(scene.c2w[f], landmarks[f], audio[f] if audio is not None else None, au45[f],
                                 scene.focal, scene.cx, scene.cy, scene.crop_size, frames.shape[1])
        gt = torch.as_tensor(np.asarray(frames[f]), device=pre.device).permute(0, 3, 1, 2) / 255.0
        img = (pre + (1 - alpha) * gt).clamp(0, 1).permute(0, 2, 3, 1)
        out.append((img.cpu().numpy() * 255.0 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def summary(render: np.ndarray, gt: np.ndarray, labels: np.ndarray) -> dict:
    m = score(render, gt, labels)
    return {"head": round(m["mean"]["psnr_head"], 3),
            **{k: m["regions"][k]["psnr"] for k in REGIONS},
            "sharpness": {k: m["regions"][k]["sharpness"] for k in REGIONS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--truth", type=Path, help="subject with the tracked and predicted mouths (default: S)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    files, truth = SubjectLayout(args.subject_dir), SubjectLayout(args.truth or args.subject_dir)
    head = load_head(files.stage2.path, args.device)
    scene = load_scene(args.subject_dir)
    n = len(scene.c2w)
    split = INGEST_META.read(files.ingest.meta)["split"]
    (a, b), (t0, t1) = split["train"], split["test"]
    tracked = CANONICAL_LANDMARKS.read(truth.tracking.canonical)["landmarks"][:n]
    cond = conditioning_landmarks(tracked, a, b, "mouth").astype(np.float32)
    audio_driven = cond.copy()
    audio_driven[:, MOUTH_REGION] = read_stage1_landmarks(truth.stage1.pred(SELF_AUDIO))[:n, MOUTH_REGION]
    audio = AUDIO_FEATURES.read(files.audio.features())["features"][:n] if head.uses_audio else None
    au45 = load_au45(files, n)[0]
    frames, labels = STAGE2_FRAMES.read(files.stage2.frames), STAGE2_LABELS.read(files.stage2.labels)
    ids = np.arange(t0, t1)
    gt, lab = np.asarray(frames[ids]), np.asarray(labels[ids])
    result = {"subject_dir": str(args.subject_dir), "train_mouth": head.model_config.train_mouth,
              "steps": STAGE2_METRICS.read(files.stage2.metrics)["steps"],
              **{name: summary(render_over_truth(head, scene, lms, audio, au45, frames, ids), gt, lab)
                 for name, lms in (("audio_driven", audio_driven), ("teacher_forced", cond))}}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
