"""Benchmark the hash-grid encoding (+ a 64-wide 3-layer MLP): forward and forward+backward.

Defaults are the GPU figure of the issue: 4M samples, 16 levels x 2 features, 2^19 table (base 16,
finest 2048), torch reference backend. On a CPU use a smaller ``--n``, e.g.

    .venv/bin/python bench/bench_encoding.py --device cpu --n 65536 --repeats 3
    python bench/bench_encoding.py --device cuda --backend torch          # GPU machine

Prints one Markdown table row per measurement (paste into BENCHMARKS.md) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stage2.nerf.encoding import HashGridEncoding, HashGridSpec  # noqa: E402
from pipeline.stage2.nerf.field import mlp  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 22, help="samples per call (default 4M)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    ap.add_argument("--backend", default="torch", help="hash-grid backend (torch | tcnn | auto)")
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--log2-hashmap-size", type=int, default=19)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--finest", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    spec = HashGridSpec(3, args.levels, args.features, args.log2_hashmap_size, args.base, args.finest)
    enc = HashGridEncoding(spec, args.backend).to(dev)
    net = mlp(spec.output_dim, 64, 16, 3).to(dev)
    x = torch.rand(args.n, 3, device=dev)

    def enc_fwd():
        with torch.no_grad():
            enc(x)

    def enc_fwd_bwd():
        enc(x).sum().backward()

    def full_fwd():
        with torch.no_grad():
            net(enc(x))

    def full_fwd_bwd():
        net(enc(x)).sum().backward()

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    rows = {}
    for label, fn in (("encoding fwd", enc_fwd), ("encoding fwd+bwd", enc_fwd_bwd),
                      ("encoding+MLP fwd", full_fwd), ("encoding+MLP fwd+bwd", full_fwd_bwd)):
        sec = _time(fn, dev, args.warmup, args.repeats)
        rows[label] = sec
        print(f"| {label} | {args.backend} | {dev.type} ({name}) | {args.n:,} | {spec.levels}x{spec.features_per_level}, "
              f"2^{spec.log2_hashmap_size} | {sec * 1e3:.1f} ms | {args.n / sec:,.0f} samples/s |", flush=True)
    print(json.dumps({"n": args.n, "device": str(dev), "device_name": name, "backend": args.backend,
                      "spec": spec.__dict__, "seconds": rows, "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
