"""Render-time early stop: no early stop vs the two-pass density filter vs front-to-back marching (CPU or GPU).

    PYTHONPATH=. python bench/bench_march.py results/<s> [--size 128] [--frames 4] [--device cpu]

Renders the first test frames of a subject with a trained head (``stage2/``) at ``--size`` px (one thread on
CPU), several ways, and prints seconds per frame and the largest colour difference to the render without early
stop. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pipeline.render.head import load_head
from pipeline.render.video import load_scene, test_drive

WAYS = [("no early stop", 0.0, 8, False), ("two-pass 1e-3", 1e-3, 8, True), ("marched, window 32", 1e-3, 32, False),
        ("marched, window 16", 1e-3, 16, False), ("marched, window 8", 1e-3, 8, False)]


def render(root: Path, size: int, frames: int, device: str, eps: float, window: int,
           two_pass: bool) -> tuple[float, torch.Tensor]:
    scene = load_scene(root)
    drive, _, _ = test_drive(root, scene)
    head = load_head(root / "stage2", device).with_samples(0, eps)
    head.renderer.march_window = window
    if two_pass:  # the filter that gradient-enabled rendering uses, forced for the comparison
        head.renderer._march = head.renderer._composite_all
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    outs = []
    for i in range(frames):
        sl = slice(i, i + 1)
        pre, _ = head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], scene.focal,
                             scene.cx, scene.cy, scene.crop_size, size, 1 << 16)
        outs.append(pre)
    sync()
    return (time.perf_counter() - t0) / frames, torch.cat(outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("subject_dir", type=Path)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    ref_sec, ref = None, None
    for name, eps, window, two_pass in WAYS:
        sec, img = render(args.subject_dir, args.size, args.frames, args.device, eps, window, two_pass)
        if ref is None:
            ref_sec, ref = sec, img
            print(f"{args.size} px, {args.frames} frames on {args.device}: {name} {sec:.3f} s/frame")
            continue
        print(f"{name}: {sec:.3f} s/frame ({ref_sec / sec:.2f}x), max |diff| {float((img - ref).abs().max()):.2e}")


if __name__ == "__main__":
    main()
