"""Does AU45 reach the eyes, and only the eyes? Train a head briefly, render one test frame with the eyes open and
closed, and measure where the image changes (CPU or GPU).

    PYTHONPATH=. python bench/bench_blink_au45.py --subject-dir S --steps 1500 [--config '{"landmark_motion": "all"}']

S holds what ``train_head`` reads with its frame cache (docs/stage2.md). The stage-2 section is configs/tiny.yaml's
over config.yaml's plus ``--config``. After ``--steps`` steps the middle test frame is rendered with AU45 0 and at
the clip's 99.5th percentile; printed: the mean absolute change (/255) over the eye labels (dilated 2 px) and over
the rest of the head (labels 3-7 outside a 7-px band around the eyes). Writes nothing under S.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from pipeline.core.artifacts import LABEL_EYES
from pipeline.core.config import stage2_configs
from pipeline.core.device import resolve_device
from pipeline.stage2.data import SubjectData
from pipeline.stage2.evaluate import render_frame
from pipeline.stage2.sampling import phase_at
from pipeline.stage2.train import Trainer, setup_torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--config", default="{}", help="stage-2 overrides as JSON")
    args = p.parse_args()
    section = dict(yaml.safe_load((REPO / "config.yaml").read_text())["stage2"])
    section.update(yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["stage2"])
    section.update(json.loads(args.config))
    mcfg, tcfg = stage2_configs(section)
    device = resolve_device(tcfg.device, "stage2.device")
    setup_torch(tcfg, device)
    data = SubjectData(args.subject_dir, tcfg.head_radius, mcfg.bound, device, mcfg.landmark_motion)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(data, mcfg, tcfg, Path(tmp), device)
        t0 = time.time()
        for i in range(args.steps):
            tr.progress = i / args.steps
            tr.train_step(phase_at(tr.progress, tcfg))
            tr.step += 1
            if tr.step % tcfg.occupancy_every == 0:
                tr.update_occupancy()
        seconds = time.time() - t0
        f = int(data.test_ids[len(data.test_ids) // 2])
        lab = np.asarray(data.labels[f])
        eyes = cv2.dilate((lab == LABEL_EYES).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        rest = (lab >= 3) & ~cv2.dilate(eyes.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        closed = float(np.percentile(data.au45.cpu().numpy(), 99.5))
        imgs = []
        for au in (0.0, closed):
            data.au45[f] = au
            imgs.append(render_frame(tr.field, tr.renderer, data, f, tr.margin).astype(np.float64))
    change = np.abs(imgs[1] - imgs[0]).mean(-1)
    print(json.dumps({"subject": str(args.subject_dir), "overrides": json.loads(args.config), "steps": args.steps,
                      "train_seconds": round(seconds, 1), "frame": f, "au45_closed": round(closed, 3),
                      "eye_pixels": int(eyes.sum()), "change_eyes": round(float(change[eyes].mean()), 3),
                      "change_rest_of_head": round(float(change[rest].mean()), 3)}))


if __name__ == "__main__":
    main()
