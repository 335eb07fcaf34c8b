"""GPU benchmark of the hash-grid encoding: Triton kernels vs the torch reference (eager and torch.compile).

Times forward and forward+backward (gradient w.r.t. the table, and the MLP's weights where present) of
4M points through a 16-level x 2-feature grid with a 2^19 table (base 16, finest 2048), alone and
followed by a 64-wide 3-layer MLP (``field.mlp(32, 64, 16, 3)``), for:

* ``triton``: ``TritonHashGrid`` (pipeline/stage2/nerf/kernels/hash_grid_triton.py) with its default launch configs,
  after a sweep that times the kernels alone under several configs (``--use-best`` times the module
  with the sweep's fastest instead);
* ``eager``: ``TorchHashGrid``, the pure-torch reference;
* ``compile``: ``torch.compile`` of the reference (default mode, static shapes).

Each time is the median over repeats of CUDA-event-timed calls after warm-up (compilation excluded).
Peak memory is ``max_memory_allocated`` during one call, above what was allocated before it.
Also checks the Triton results against the reference on the same 4M points (max abs differences).

    python bench/bench_encoding_gpu.py --out bench.json           # GPU machine (needs CUDA + Triton)
    python bench/bench_encoding_gpu.py --no-sweep --skip compile  # quicker

Prints a Markdown table last and writes everything (also partial results) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stage2.nerf.encoding import HashGridSpec, TorchHashGrid  # noqa: E402
from pipeline.stage2.nerf.field import mlp  # noqa: E402
from pipeline.stage2.nerf.kernels import hash_grid_triton as ET  # noqa: E402


CUDA = True  # False only for a CPU smoke run of this script (--device cpu, kernels under TRITON_INTERPRET=1)


def _once_ms(fn) -> float:
    if not CUDA:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_ms(fn, warmup: int = 2, repeats: int = 10, budget_ms: float = 3000.0) -> float:
    """Median of CUDA-event timings of ``fn`` after ``warmup`` calls (fewer repeats for slow calls)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats and (len(times) < 3 or sum(times) < budget_ms):
        times.append(_once_ms(fn))
    return statistics.median(times)


def peak_mib(fn) -> float:
    if not CUDA:
        return 0.0
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cases(enc: torch.nn.Module, net: torch.nn.Module, full: torch.nn.Module, x: torch.Tensor) -> dict:
    def zero():
        for p in list(enc.parameters()) + list(net.parameters()):
            p.grad = None

    def enc_fwd():
        with torch.no_grad():
            enc(x)

    def enc_fwd_bwd():
        zero()
        enc(x).sum().backward()

    def full_fwd():
        with torch.no_grad():
            full(x)

    def full_fwd_bwd():
        zero()
        full(x).sum().backward()

    return {"encoding fwd": enc_fwd, "encoding fwd+bwd": enc_fwd_bwd,
            "encoding+MLP fwd": full_fwd, "encoding+MLP fwd+bwd": full_fwd_bwd}


# (block, levels per program, warps, vector_levels, hints[, pair_x]); at most 2 points per thread (compile time)
# (a wider sweep on an H200, 2026-11-22, is in BENCHMARKS.md; these are its front runners, and the paired
# axis-0 corner loads of session 3)
FORWARD_SWEEP = [(128, 8, 8, True, True), (256, 8, 8, True, True), (128, 8, 4, True, True),
                 (128, 8, 8, True, False), (64, 8, 4, True, True), (128, 4, 4, True, False), (128, 1, 4, False, False),
                 *[(b, g, w, True, True, True) for b, g, w in ((128, 4, 4), (64, 4, 4), (256, 4, 4), (128, 4, 8),
                                                             (256, 4, 8), (64, 4, 2), (128, 4, 2), (32, 4, 2),
                                                             (128, 2, 4), (64, 2, 2), (64, 8, 4), (128, 8, 8),
                                                             (256, 4, 2), (128, 4, 1), (64, 4, 1), (256, 4, 1),
                                                             (128, 2, 2), (128, 8, 2), (256, 8, 4))],
                 (128, 4, 4, True, False, True)]
BACKWARD_SWEEP = [(256, 4, 8, False, False), (128, 4, 4, False, False), (256, 4, 4, False, False)]


def _label(cfg) -> str:
    return (f"B{cfg.block} G{cfg.levels_per_program} W{cfg.num_warps}" + (" vec" if cfg.vector_levels else "")
            + (" hints" if cfg.hints else "") + (" pair" if cfg.pair_x else ""))


def sweep(fast: ET.TritonHashGrid, x: torch.Tensor, repeats: int, use_best: bool) -> dict:
    """Time the kernels alone for several launch configs; ``use_best``: make the fastest the module defaults
    for the rest of the run (otherwise the timings below use ``FORWARD_CONFIG`` / ``BACKWARD_CONFIG``)."""
    K = ET._kernels()
    go = torch.randn(x.shape[0], fast.spec.output_dim, device=x.device)
    meta = fast.meta.to(x.device)
    table = fast.table.detach()
    log2t = fast.spec.log2_hashmap_size
    fwd = lambda cfg: lambda: K.forward(x, table, meta, log2t, cfg)  # noqa: E731
    bwd = lambda cfg: lambda: K.backward(x, go, meta, table.shape[0], log2t, cfg)  # noqa: E731
    rows: dict = {"forward": {}, "backward": {}}
    best = {}
    for name, make, grid in (("forward", fwd, FORWARD_SWEEP), ("backward", bwd, BACKWARD_SWEEP)):
        cfgs = [K.KernelConfig(*c) for c in grid]
        for cfg in cfgs:
            rows[name][_label(cfg)] = time_ms(make(cfg), 2, repeats)
        best[name] = min(cfgs, key=lambda c: rows[name][_label(c)])
        print(f"sweep {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(rows[name].items(), key=lambda kv: kv[1])),
              flush=True)
    if use_best:
        K.FORWARD_CONFIG, K.BACKWARD_CONFIG = best["forward"], best["backward"]
    rows["fastest"] = {k: v.__dict__ for k, v in best.items()}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 22, help="points per call (default 4M)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep of launch configs")
    ap.add_argument("--use-best", action="store_true", help="time the modules with the sweep's fastest configs "
                    "(default: the module defaults FORWARD_CONFIG / BACKWARD_CONFIG)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["eager", "compile"], help="implementations to skip")
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip torch.compile when this much time is spent")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (rewritten after every measurement)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script (tiny --n, "
                    "TRITON_INTERPRET=1: the sweep runs the interpreted kernels, the module falls back)")
    args = ap.parse_args(argv)
    t_start = time.time()
    global CUDA
    dev = torch.device(args.device)
    CUDA = dev.type == "cuda"
    ok, why = ET.triton_status()
    if CUDA and not ok:
        print(f"error: the Triton kernels cannot run here: {why}", file=sys.stderr)
        return 1
    import triton

    spec = HashGridSpec(3, 16, 2, 19, 16, 2048)
    torch.manual_seed(0)
    ref = TorchHashGrid(spec).to(dev)
    fast = ET.TritonHashGrid(spec).to(dev)
    fast.load_state_dict(ref.state_dict())
    net = mlp(spec.output_dim, 64, 16, 3).to(dev)
    x = torch.rand(args.n, 3, device=dev)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "gpu": torch.cuda.get_device_name(dev) if CUDA else f"CPU smoke run ({platform.processor()})",
              "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
              "n": args.n, "spec": spec.__dict__, "table_rows": int(ref.table.shape[0]),
              "mlp": "field.mlp(32, 64, 16, 3)", "times_ms": {}, "peak_mib": {}}

    def save():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))

    # parity on the benchmark's own 4M points (the tests cover more geometries)
    with torch.no_grad():
        ref.table.uniform_(-1, 1)
        fast.table.copy_(ref.table)
    go = torch.randn(args.n, spec.output_dim, device=dev)
    out_f, out_r = fast(x), ref(x)
    out_f.backward(go)
    out_r.backward(go)
    report["parity"] = {"forward_max_abs": float((out_f - out_r).detach().abs().max()),
                        "grad_max_abs": float((fast.table.grad - ref.table.grad).abs().max()),
                        "grad_max_abs_ref": float(ref.table.grad.abs().max())}
    print("parity", report["parity"], flush=True)
    del out_f, out_r, go
    ref.table.grad = fast.table.grad = None
    with torch.no_grad():
        ref.table.uniform_(-1e-4, 1e-4)
        fast.table.copy_(ref.table)
    save()

    if not args.no_sweep:
        report["sweep_ms"] = sweep(fast, x, args.repeats, args.use_best)
        save()
    report["kernel_config"] = {"forward": ET._kernels().FORWARD_CONFIG.__dict__,
                               "backward": ET._kernels().BACKWARD_CONFIG.__dict__}

    impls = [("triton", fast)]
    if "eager" not in args.skip:
        impls.append(("eager", ref))
    if "compile" not in args.skip:
        impls.append(("compile", None))
    for name, enc in impls:
        if name == "compile":
            if time.time() - t_start > args.budget_s:
                report["compile_skipped"] = f"time budget ({args.budget_s} s) spent"
                print("torch.compile skipped:", report["compile_skipped"], flush=True)
                continue
            t0 = time.time()
            enc = torch.compile(ref)
            full = torch.compile(torch.nn.Sequential(ref, net))
        else:
            full = torch.nn.Sequential(enc, net)
        for label, fn in cases(enc, net, full, x).items():
            t0 = time.time()
            ms = time_ms(fn, 2, args.repeats)
            report["times_ms"].setdefault(label, {})[name] = ms
            report["peak_mib"].setdefault(label, {})[name] = peak_mib(fn)
            print(f"{name:8s} {label:22s} {ms:9.3f} ms  peak {report['peak_mib'][label][name]:8.0f} MiB"
                  f"  (measured in {time.time() - t0:.1f} s)", flush=True)
            save()

    print(f"\n{report['gpu']}, torch {report['torch']}, triton {report['triton']}, {args.n:,} points, "
          f"16 levels x 2 features, 2^19 table; median ms (speed-up of triton)")
    print("| measurement | triton | eager | torch.compile | triton peak MiB | eager peak MiB |")
    print("|---|---|---|---|---|---|")
    for label, t in report["times_ms"].items():
        tri = t.get("triton")
        cells = [f"{tri:.2f}" if tri else "-"]
        for other in ("eager", "compile"):
            cells.append(f"{t[other]:.2f} ({t[other] / tri:.1f}x)" if other in t and tri else "-")
        pk = report["peak_mib"][label]
        print(f"| {label} | " + " | ".join(cells) + f" | {pk.get('triton', 0):.0f} | {pk.get('eager', 0):.0f} |")
    report["wall_s"] = time.time() - t_start
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
