"""GPU benchmark of the Gaussian landmark encoding: Triton kernels vs the torch reference.

    PYTHONPATH=. python bench/bench_landmark_gpu.py --out OUT.json [--n 1048576]

The default field's geometry (113 landmarks of 4 frames, k 8, 2 frequencies, 8-wide embedding, 32 outputs),
``--n`` points in the head box. Times (CUDA-synchronised median of ``--repeats``): the reference forward and
its kNN; the kNN kernel over launch variants (``slots``: sorted per-point registers, else a ``[BLOCK, k]``
tile; block and warps), each with its first-call (compile) time and the number of points whose neighbour set
differs from the reference's (float32 near-ties; the tests check them against float64); the forward with
the kernel's kNN (no grad); and a training step's forward + backward with either kNN.
Prints one line per measurement and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.stage2.nerf.field import GaussianLandmarkEncoding
from pipeline.stage2.nerf.kernels import landmark_triton_kernels as K


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median ms of the next ``repeats`` calls)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return first, sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1 << 20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    dev = "cuda"
    m, k, freqs, emb, c, b = 113, 8, 2, 8, 32, 4
    gen = torch.Generator().manual_seed(0)
    lm = (torch.rand(b, m, 3, generator=gen) * 1.2 - 0.6).to(dev)
    x = (torch.rand(args.n, 3, generator=gen) * 2 - 1).to(dev)
    frame = torch.randint(0, b, (args.n,), generator=gen).to(dev)
    torch.manual_seed(0)
    enc = GaussianLandmarkEncoding(m, k, 0.1, freqs, emb, c, use_kernels=False).to(dev)
    rows: list[dict] = []

    def record(name: str, fn, ref: torch.Tensor | None = None, check=None, **extra) -> None:
        try:
            first, ms = timed(fn, args.repeats)
            out = fn()
            row = {"name": name, "ms": round(ms, 3), "first_call_s": round(first, 2), **extra}
            if ref is not None:
                row["max_abs_diff"] = float((out.float() - ref.float()).abs().max())
            if check is not None:
                row.update(check(out))
        except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
            row = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[-1500:]}", **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps({"n": args.n, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "geometry": {"landmarks": m, "k": k, "freqs": freqs, "embed": emb, "out": c,
                                                     "frames": b}, "rows": rows}, indent=1))

    with torch.no_grad():
        ref = enc(x, frame, lm)
        ref_idx = enc.knn_reference(x, frame, lm).sort(1).values
        record("reference forward (no grad)", lambda: enc(x, frame, lm), ref)
        record("reference kNN", lambda: enc.knn_reference(x, frame, lm))
        for slots, block, warps in ((True, 128, 4), (True, 64, 2), (True, 256, 4), (False, 128, 4)):
            record("kNN kernel", lambda: K.knn(x, frame, lm, k, block, warps, slots), slots=slots, block=block,
                   warps=warps, check=lambda idx: {"points_with_other_neighbours":
                                                   int((idx.sort(1).values != ref_idx).any(1).sum())})
        enc.use_kernels = True
        record("forward with the kNN kernel (no grad)", lambda: enc(x, frame, lm), ref)
        enc.use_kernels = False
    n_train = min(args.n, 262144)
    xt, ft = x[:n_train], frame[:n_train]

    def step() -> torch.Tensor:
        out = enc(xt, ft, lm)
        out.square().sum().backward()
        return out.detach()

    enc.use_kernels = False
    record("training fwd+bwd, reference kNN", step, n=n_train)
    enc.use_kernels = True
    record("training fwd+bwd, kNN kernel", step, n=n_train)


if __name__ == "__main__":
    main()
