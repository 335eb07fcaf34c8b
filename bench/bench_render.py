"""Benchmark frame synthesis of pipeline.render.video (head field + torso net + soft compositing), no encoding.

The head is a stage-2 field with random weights built from ``Stage2ModelConfig`` (every sample is
evaluated: an untrained occupancy grid skips nothing, so this is the slow end for a given sample count);
the torso is an untrained TorsoNet. Inputs are the shapes of a real clip (478 landmarks, audio windows
[16, 89]). Examples:

    .venv/bin/python bench/bench_render.py --size 64 --samples 16 --frames 8 --tiny    # CPU, CI-sized field
    python bench/bench_render.py --device cuda --size 512 --samples 64 --frames 25    # GPU, default field

Prints one Markdown table row and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.config import RenderConfig, Stage2ModelConfig  # noqa: E402
from pipeline.render.head import untrained_head  # noqa: E402
from pipeline.render.video import Drive, Scene, synthesize  # noqa: E402
from pipeline.torso.model import Torso, TorsoNet  # noqa: E402

TINY = dict(levels=4, log2_hashmap_size=12, finest_resolution=64, hidden_dim=16, num_layers=2, hidden_dim_color=16,
            landmark_k=4, landmark_feat_dim=8, audio_dim=8, occupancy_resolution=16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny field instead of the default one")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, crop = args.frames, 512
    lms = rng.normal(scale=[6, 8, 4], size=(n, 478, 3)).astype(np.float32)
    cfg = replace(Stage2ModelConfig(**(TINY if args.tiny else {})), num_samples=args.samples)
    head = untrained_head(cfg, lms, 89).to(args.device)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 2, 3] = 60.0                                  # camera 60 cm in front of the head, looking at it
    scene = Scene(np.zeros((crop, crop, 3), np.uint8), 2.0 * crop, crop / 2, crop / 2, crop, c2w,
                  np.zeros((n, 6)), {"train": [0, n], "test": [0, n]})
    torso = Torso(TorsoNet(torch.rand(4, 64, 64), 6, 12, 3, 32), np.zeros(6), np.ones(6), crop).to(args.device)
    drive = Drive(c2w, np.zeros((n, 6)), lms, rng.normal(size=(n, 16, 89)).astype(np.float32),
                  np.zeros(n, np.float32))
    stats: dict = {}
    t = time.perf_counter()
    for _ in synthesize(head, torso, scene, drive, RenderConfig(size=args.size, threads=args.threads), stats):
        pass
    wall = time.perf_counter() - t
    row = {"device": args.device, "size": args.size, "samples": args.samples, "field": "tiny" if args.tiny else "default",
           "frames": n, "seconds": round(wall, 2), "frames_per_sec": round(n / wall, 3), "host": platform.node()}
    print(f"| {row['field']} field, {args.size}², {args.samples} samples/ray, {args.device} | {n} frames | "
          f"{wall:.2f} s | **{n / wall:.2f} frames/s** |")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
