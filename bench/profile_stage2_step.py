"""Where a stage-2 training step spends its time, for one or more configurations (GPU or CPU), either head.

    PYTHONPATH=. python bench/profile_stage2_step.py --subject-dir S [--steps 60] [--warmup 20] \
        [--config '{"amp": true}' ...] [--out profile.json] [--ops-table ops.txt]

S holds what ``train_head`` reads (docs/stage2.md, "Files a training run needs"; stage2/ made by cache_frames).
For each ``--config`` (stage-2 keys over config.yaml's defaults; one run without it = the defaults) a fresh
:class:`pipeline.stage2.train.Trainer` (or, with ``{"head": "gaussians"}``, a
:class:`pipeline.stage2.gaussians.trainer.GaussianTrainer`) runs ``--warmup`` steps (kernel compilation,
occupancy-grid warm-up), then ``--steps`` timed steps, each part synchronised on CUDA so the split is real:
sampling rays (on the training device) or picking frames, forward (conditioning, marching, field, compositing,
or deformation and rasterisation, losses), backward, optimiser, error map; the Gaussian head's density control
is left out (it runs every ``densify_every`` steps and changes the number of Gaussians);
then as many steps again without timers (``steps_per_sec_untimed``: the training rate, nothing synchronised
inside a step). Reports ms per part, steps/s, rays/s (pixels/s of whole frames for the Gaussian head),
samples per ray (NeRF) and peak GPU memory. Writes nothing under S.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.core.config import stage2_configs
from pipeline.core.device import resolve_device
from pipeline.stage2.data import SubjectData
from pipeline.stage2.gaussians.trainer import GaussianTrainer
from pipeline.stage2.train import Trainer, setup_torch

REPO = Path(__file__).resolve().parents[1]


def profile(subject_dir: Path, overrides: dict, steps: int, warmup: int, ops_table: Path | None = None,
            prepare=None) -> dict:
    """One configuration's timed steps (module docstring); ``prepare(trainer)``, when given, runs on the fresh
    trainer before its first step (e.g. bench/nerf_speed_probe.py compiles its field there)."""
    section = dict(yaml.safe_load((REPO / "config.yaml").read_text())["stage2"])
    section.update(overrides)
    mcfg, tcfg = stage2_configs(section)
    device = resolve_device(tcfg.device, "stage2.device")
    setup_torch(tcfg, device)
    data = SubjectData(subject_dir, tcfg.head_radius, mcfg.bound, device, mcfg.landmark_motion)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def timer(name: str):
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        times[name].append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        gaussians = mcfg.head == "gaussians"
        trainer = (GaussianTrainer if gaussians else Trainer)(data, mcfg, tcfg, Path(tmp), device)
        if prepare is not None:
            prepare(trainer)
        rays = tcfg.frames_per_batch * data.size ** 2 if gaussians else tcfg.rays_per_batch

        def occupancy(timed: bool) -> None:
            if gaussians or trainer.step % tcfg.occupancy_every:
                return
            with timer("occupancy update") if timed else contextlib.nullcontext():
                trainer.update_occupancy()

        spr = []
        for i in range(warmup + steps):
            if i == warmup:
                times.clear()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t_start = time.perf_counter()
            _, mse, s = trainer.train_step("main", timer if i >= warmup else None)
            trainer.step += 1
            occupancy(i >= warmup)
            if i >= warmup and "samples_per_ray" in s:
                spr.append(float(s["samples_per_ray"]))
        sync()
        total = time.perf_counter() - t_start
        # the same number of steps again without the per-part timers: what training runs at (no synchronisation
        # inside a step; the occupancy update every occupancy_every steps included)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step("main")
            trainer.step += 1
            occupancy(False)
        sync()
        untimed = time.perf_counter() - t0
        grid = trainer.occupancy_grid() if gaussians else trainer.occ
        occ = float(grid.binary.float().mean())
        if ops_table is not None:  # torch.profiler over 10 more steps: the top operators by device time
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                             if device.type == "cuda" else [])
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(10):
                    trainer.train_step("main")
                sync()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            with ops_table.open("a") as fh:
                fh.write(f"== {json.dumps(overrides)}\n{prof.key_averages().table(sort_by=key, row_limit=30)}\n")
    return {"overrides": overrides, "device": str(device), "head": mcfg.head, "steps": steps, "rays_per_batch": rays,
            "steps_per_sec": round(steps / total, 3), "rays_per_sec": round(steps * rays / total),
            "steps_per_sec_untimed": round(steps / untimed, 3), "rays_per_sec_untimed": round(steps * rays / untimed),
            "ms_per_step": {k: round(1000 * float(np.sum(v)) / steps, 3) for k, v in times.items()},
            "samples_per_ray": round(float(np.mean(spr)), 2) if spr else None,
            "occupied_fraction": round(float(occ), 4),
            "last_psnr": round(float(-10 * np.log10(max(float(mse), 1e-12))), 2),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--config", action="append", default=None, help="stage-2 overrides as JSON (repeatable)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--ops-table", type=Path, default=None, help="append torch.profiler's top operators here")
    args = p.parse_args()
    results = []
    for text in args.config or ["{}"]:
        r = profile(args.subject_dir, json.loads(text), args.steps, args.warmup, args.ops_table)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
