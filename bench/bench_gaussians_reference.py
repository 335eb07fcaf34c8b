"""Time the pure-torch Gaussian-splatting reference (pipeline/stage2/gaussians): forward, and forward+backward.

Random Gaussians fill the view of one camera (f = image width, depths 2.5-3.5, log-uniform scales 0.005-0.05,
random rotations, opacities and colours); the loss is the sum of the image. Defaults: 64^2 and 128^2 with
1,000 and 5,000 Gaussians, float32, best of ``--repeats``:

    PYTHONPATH=. .venv/bin/python bench/bench_gaussians_reference.py
    PYTHONPATH=. .venv/bin/python bench/bench_gaussians_reference.py --threads 1 --sizes 128 --counts 5000
    PYTHONPATH=. .venv/bin/python bench/bench_gaussians_reference.py --threads 1 --sizes 16 --counts 5000 --rss

``--rss`` measures instead the peak resident memory one forward+backward adds (``ru_maxrss``, one
configuration per process; ``--sizes 16`` puts every Gaussian on the one tile).

Prints one Markdown table row per configuration (paste into BENCHMARKS.md) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stage2.gaussians import project_gaussians, rasterization  # noqa: E402
from pipeline.stage2.gaussians.rasterize import tile_ranges  # noqa: E402


def scene(n: int, size: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g) + 2.5
    xy = (torch.rand(n, 2, generator=g) - 0.5) * z[:, None]          # inside the field of view
    means = torch.cat([xy, z[:, None]], dim=-1)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.05), generator=g))
    params = [means, torch.randn(n, 4, generator=g), scales, torch.rand(n, generator=g) * 0.9 + 0.05,
              torch.rand(n, 3, generator=g)]
    K = torch.tensor([[[float(size), 0.0, size / 2], [0.0, float(size), size / 2], [0.0, 0.0, 1.0]]])
    return params, torch.eye(4)[None], K


def best_of(fn, repeats: int) -> float:
    fn()                                                              # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def tile_pairs(params: list[torch.Tensor], V: torch.Tensor, K: torch.Tensor, size: int) -> tuple[int, int]:
    """Visible Gaussians and (Gaussian, 16 px tile) pairs: the work the dense per-tile compositing does."""
    with torch.no_grad():
        p = project_gaussians(params[0], params[1], params[2], params[3], V, K, size, size)
        radii, tiles = p.radii[0], math.ceil(size / 16)
        vis = (radii > 0).all(-1)
        r = tile_ranges(p.means2d[0][vis], radii[vis].float(), 16, tiles, tiles)
        return int(vis.sum()), int(((r[:, 1] - r[:, 0]) * (r[:, 3] - r[:, 2])).sum())


def peak_memory(size: int, n: int) -> int:
    """Print the resident memory one forward+backward adds above a warmed-up process (MB)."""
    params, V, K = scene(n, size)
    warm = [p[:5].clone().requires_grad_(True) for p in params]
    rasterization(*warm, V, K, size, size)[0].sum().backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    leaves = [p.clone().requires_grad_(True) for p in params]
    img, alpha, _ = rasterization(*leaves, V, K, size, size)
    (img.sum() + alpha.sum()).backward()
    extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    visible, pairs = tile_pairs(params, V, K, size)
    print(json.dumps({"bench": "gaussians_reference_rss", "size": size, "gaussians": n, "visible": visible,
                      "tile_pairs": pairs, "extra_peak_mb": round(extra_mb, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--rss", action="store_true", help="peak memory of one forward+backward (one size, count)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss:
        return peak_memory(args.sizes[0], args.counts[0])
    rows = []
    print("| image | Gaussians | visible | Gaussian-tile pairs | forward ms | forward+backward ms | threads |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for n in args.counts:
            params, V, K = scene(n, size)
            leaves = [p.clone().requires_grad_(True) for p in params]

            def forward():
                with torch.no_grad():
                    rasterization(params[0], params[1], params[2], params[3], params[4], V, K, size, size)

            def forward_backward():
                img, alpha, _ = rasterization(*leaves, V, K, size, size)
                (img.sum() + alpha.sum()).backward()

            fwd, both = best_of(forward, args.repeats), best_of(forward_backward, args.repeats)
            visible, pairs = tile_pairs(params, V, K, size)
            row = {"size": size, "gaussians": n, "visible": visible, "tile_pairs": pairs,
                   "forward_ms": round(fwd * 1e3, 1), "forward_backward_ms": round(both * 1e3, 1),
                   "threads": torch.get_num_threads()}
            rows.append(row)
            print(f"| {size}² | {n} | {visible} | {pairs} | {row['forward_ms']} | {row['forward_backward_ms']} "
                  f"| {row['threads']} |", flush=True)
    print(json.dumps({"bench": "gaussians_reference", "torch": torch.__version__, "machine": platform.machine(),
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
