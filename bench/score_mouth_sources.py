"""A trained head on the test split with two mouths: stage 1's (audio-driven) and the tracked one (teacher-forced).

    PYTHONPATH=. python bench/score_mouth_sources.py --subject-dir S [--truth T] [--device cpu] [--out OUT.json]

S holds a trained head (``stage2/head.json`` + ``head.pt``, NeRF or Gaussians) and what training reads, the frame
cache at the head's size included; T (default S) the subject whose ``tracking/canonical.npz`` and
``stage1/pred/self.parquet`` give the tracked and the predicted mouth. Every test frame is rendered through the
renderer's head call (``pipeline.render.head``) with the frame's own camera, audio and AU45 and each mouth (the
other landmarks at their train-split mean, ``stage2.landmark_motion: mouth``), laid over the true frame and scored
on the parsing labels: head (3-7), face (3), lips (5), mouth interior (6) PSNR over all pixels of the split, the
per-frame mean head PSNR, and the lips' sharpness (gradient energy of the render over the truth's, lips pixels).
For comparing heads trained with ``stage2.train_mouth: tracked`` and ``stage1`` on the CPU at small sizes
(BENCHMARKS.md, session 15); the GPU scorer of full-size renders is ``bench/gpu_eval_render.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import (AUDIO_FEATURES, CANONICAL_LANDMARKS, INGEST_META, LABEL_FACE, LABEL_LIPS,
                                     LABEL_MOUTH, STAGE2_FRAMES, STAGE2_LABELS, STAGE2_METRICS)
from pipeline.core.layout import SELF_AUDIO, SubjectLayout
from pipeline.core.metrics import MOUTH_REGION
from pipeline.render.head import load_head
from pipeline.render.video import load_scene, read_landmarks
from pipeline.stage2.data import HEAD_MIN_LABEL, conditioning_landmarks, load_au45


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, H - 1, W - 1]``: squared forward differences summed over colour."""
    gx, gy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    return (gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).sum(1)


@torch.no_grad()
def score(head, scene, landmarks: np.ndarray, audio, au45, frames, labels, ids: np.ndarray, batch: int = 8) -> dict:
    regions = {"head": lambda lab: lab >= HEAD_MIN_LABEL, "face": lambda lab: lab == LABEL_FACE,
               "lips": lambda lab: lab == LABEL_LIPS, "mouth": lambda lab: lab == LABEL_MOUTH}
    sse, count, energy, per_frame = dict.fromkeys(regions, 0.0), dict.fromkeys(regions, 0.0), [0.0, 0.0], []
    for s in range(0, len(ids), batch):
        f = ids[s:s + batch]
        pre, alpha = head.render(scene.c2w[f], landmarks[f], audio[f] if audio is not None else None, au45[f],
                                 scene.focal, scene.cx, scene.cy, scene.crop_size, frames.shape[1])
        gt = torch.as_tensor(np.asarray(frames[f]), device=pre.device).permute(0, 3, 1, 2) / 255.0
        lab = torch.as_tensor(np.asarray(labels[f]), device=pre.device)
        img = pre + (1 - alpha) * gt
        err = ((img - gt) ** 2).mean(1)
        for name, region in regions.items():
            m = region(lab)
            sse[name] += float((err * m).sum())
            count[name] += float(m.sum())
        lips = (lab == LABEL_LIPS)[:, :-1, :-1]
        energy[0] += float((gradient_energy(img) * lips).sum())
        energy[1] += float((gradient_energy(gt) * lips).sum())
        head_px = regions["head"](lab).float()
        mse = (err * head_px).sum((1, 2)) / head_px.sum((1, 2)).clamp_min(1)
        per_frame += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
    out = {k: round(float(-10 * np.log10(sse[k] / max(count[k], 1.0))), 3) for k in regions}
    out["head_per_frame_mean"] = round(float(np.mean(per_frame)), 3)
    out["lips_sharpness"] = round(energy[0] / max(energy[1], 1e-12), 3)
    return out


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
    audio_driven[:, MOUTH_REGION] = read_landmarks(truth.stage1.pred(SELF_AUDIO))[:n, MOUTH_REGION]
    audio = AUDIO_FEATURES.read(files.audio.features())["features"][:n] if head.uses_audio else None
    au45 = load_au45(files, n)[0]
    frames, labels = STAGE2_FRAMES.read(files.stage2.frames), STAGE2_LABELS.read(files.stage2.labels)
    ids = np.arange(t0, t1)
    m = STAGE2_METRICS.read(files.stage2.metrics)
    result = {"subject_dir": str(args.subject_dir), "train_mouth": head.model_config.train_mouth,
              "steps": m["steps"],
              "audio_driven": score(head, scene, audio_driven, audio, au45, frames, labels, ids),
              "teacher_forced": score(head, scene, cond, audio, au45, frames, labels, ids)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
