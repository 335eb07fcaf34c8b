"""Where the NeRF head's render and training time goes, and what torch.compile, half precision and other marching
settings buy ([head-v2] must-shows 4 and 5).

    PYTHONPATH=. python bench/nerf_speed_probe.py --subject-dir S --out OUT.json [--frames 24] [--train-steps 60] \
        [--variants eager,compile] [--sweep] [--device cpu --size 128]

S: a subject directory with a trained NeRF head (``stage2/head.pt``, ``head.json``, ``occupancy.npz``), its frame
cache and what ``pipeline.render.video.test_drive`` reads (a ``bench/gpu_train_head.sh`` output). On a GPU (or the
CPU, ``--device cpu``, at a small ``--size``):

1. The head-only render of the first ``--frames`` test frames at the render defaults (4 frames a call), split by
   synchronised timers into the renderer's candidate samples (ray-box, bins, occupancy lookups), its field queries
   and the rest (marching bookkeeping, compositing), with the field samples a frame and the rays a frame that
   meet an occupied cell.
2. The same render in the ``--variants`` (each after a warm-up batch, which compiles): ``eager`` float32 (the
   default), ``bf16`` or ``fp16`` autocast, ``compile`` (``torch.compile(dynamic=True)`` of the field's pure-torch
   part, ``_sigma_geo_from`` and the colour network; the hash grid and kNN kernels stay eager), ``compile+fp16``.
   Frames/s, and the largest and mean colour / opacity differences to the first variant.
3. ``--sweep``: the compiled head with other marching settings (``SWEEP``: early stop, marching window, or only
   the first k occupied candidates of a ray): frames/s, field samples a frame, and the difference to the defaults.
4. ``--train-steps`` training steps after ``--train-warmup`` (``bench/profile_stage2_step.profile``, stage-2 keys
   ``--train-config``, default ``{"amp": true}``), eager and with the compiled field: steps/s and rays/s untimed.

Writes OUT.json; prints each row as it is measured. BENCHMARKS.md, session 16, has the H200's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.core.config import RenderConfig  # noqa: E402
from pipeline.core.layout import SubjectLayout  # noqa: E402
from pipeline.render.head import load_head  # noqa: E402
from pipeline.render.video import load_scene, test_drive  # noqa: E402
from pipeline.stage2.nerf.field import LandmarkField  # noqa: E402


# (early_stop_eps, march_window, samples_per_ray) of the marching sweep, after the default settings
SWEEP = [(1e-3, 16, 0), (3e-3, 8, 0), (1e-2, 8, 0), (1e-3, 0, 32), (1e-3, 0, 24), (1e-3, 0, 16), (1e-3, 0, 12)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


SIZE = 0   # render size (0: the crop size), set by --size


def render_frames(head, scene, drive, n: int, batch: int = 4):
    pres, alphas = [], []
    for s in range(0, n, batch):
        sl = slice(s, min(s + batch, n))
        pre, a = head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], scene.focal,
                             scene.cx, scene.cy, scene.crop_size, SIZE or scene.crop_size)
        pres.append(pre)
        alphas.append(a)
    return torch.cat(pres), torch.cat(alphas)


def split_render(head, scene, drive, n: int) -> dict:
    """Milliseconds per frame of the renderer's parts (synchronised wrappers around its methods)."""
    r = head.renderer
    times: dict[str, float] = defaultdict(float)
    counts = {"field_samples": 0, "rays_hit_box": 0}
    orig = {"candidates": r.candidates, "_query": r._query}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            times[name] += time.perf_counter() - t
            if name == "_query":
                counts["field_samples"] += int(a[2].shape[0])
            if name == "candidates":
                counts["rays_hit_box"] += int(a[0].shape[0] - (~out[2].any(1)).sum())
            return out
        return wrapper

    r.candidates = timed("candidates", orig["candidates"])
    r._query = timed("_query", orig["_query"])
    try:
        sync()
        t0 = time.perf_counter()
        render_frames(head, scene, drive, n)
        sync()
        total = time.perf_counter() - t0
    finally:
        r.candidates, r._query = orig["candidates"], orig["_query"]
    ms = {k: round(1000 * v / n, 2) for k, v in times.items()}
    ms["total"] = round(1000 * total / n, 2)
    ms["rest"] = round(ms["total"] - sum(v for k, v in ms.items() if k != "total"), 2)
    return {"ms_per_frame": ms, "field_samples_per_frame": counts["field_samples"] // n,
            "rays_with_an_occupied_sample_per_frame": counts["rays_hit_box"] // n}


def compile_field(field: LandmarkField) -> None:
    """The field's pure-torch parts compiled (the hash grid and kNN kernels stay outside the graph)."""
    field._sigma_geo_from = torch.compile(field._sigma_geo_from, dynamic=True)
    field.color_net = torch.compile(field.color_net, dynamic=True)


def render_variants(sub: Path, scene, drive, n: int, dev: str, names: list[str]) -> list[dict]:
    cfg = RenderConfig()
    rows, ref = [], None
    for name in names:
        head = load_head(SubjectLayout(sub).stage2.path, dev).with_samples(cfg.num_samples, cfg.early_stop_eps)
        if "compile" in name:
            compile_field(head.field)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name.split("+")[-1])
        amp = torch.autocast(dev, half) if half is not None else contextlib.nullcontext()
        try:
            with amp:
                t = time.perf_counter()
                render_frames(head, scene, drive, 4)
                sync()
                warm = time.perf_counter() - t
                t = time.perf_counter()
                pre, alpha = render_frames(head, scene, drive, n)
                sync()
                sec = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 (a probe: report and go on)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        if ref is None:
            ref = (pre.float(), alpha.float())
        rows.append({"variant": name, "warmup_s": round(warm, 1), "frames_per_sec": round(n / sec, 2),
                     "max_abs_rgb_vs_eager": float((pre.float() - ref[0]).abs().max()),
                     "mean_abs_rgb_vs_eager": float((pre.float() - ref[0]).abs().mean()),
                     "max_abs_alpha_vs_eager": float((alpha.float() - ref[1]).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def count_samples(head) -> dict:
    """Wrap the renderer's field queries to count the samples they evaluate (``counts["n"]``)."""
    r, counts = head.renderer, {"n": 0}
    query = type(r)._query

    def counted(*a, **k):
        counts["n"] += int(a[2].shape[0])
        return query(r, *a, **k)
    r._query = counted
    return counts


def marching_sweep(sub: Path, scene, drive, n: int, dev: str, settings: list[tuple[float, int, int]]) -> list[dict]:
    """The compiled head rendered with other marching settings ``(early_stop_eps, march_window, samples_per_ray)``
    (``samples_per_ray > 0``: only the first k occupied candidates of a ray, the renderer's dense path); frames/s,
    field samples a frame and the difference to the default settings (the first row)."""
    cfg = RenderConfig()
    head = load_head(SubjectLayout(sub).stage2.path, dev).with_samples(cfg.num_samples, cfg.early_stop_eps)
    compile_field(head.field)
    counts = count_samples(head)
    rows, ref = [], None
    for eps, window, k in [(cfg.early_stop_eps, head.renderer.march_window, 0)] + settings:
        r = head.renderer
        r.early_stop_eps, r.march_window, r.samples_per_ray = eps, window, k
        render_frames(head, scene, drive, 4)      # warm-up: shapes the compiled graph has not seen
        sync()
        counts["n"] = 0
        t = time.perf_counter()
        pre, alpha = render_frames(head, scene, drive, n)
        sync()
        sec = time.perf_counter() - t
        if ref is None:
            ref = (pre, alpha)
        d = (pre - ref[0]).abs()
        rows.append({"early_stop_eps": eps, "march_window": window, "samples_per_ray": k,
                     "frames_per_sec": round(n / sec, 2), "field_samples_per_frame": counts["n"] // n,
                     "max_abs_rgb": float(d.max()), "mean_abs_rgb": float(d.mean()),
                     "pixels_over_2_of_255": float((d.amax(1) > 2 / 255).float().mean()),
                     "max_abs_alpha": float((alpha - ref[1]).abs().max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def train_variants(sub: Path, steps: int, warmup: int, overrides: dict) -> list[dict]:
    from profile_stage2_step import profile
    rows = []
    for name in ("eager", "compile"):
        patched = None
        if name == "compile":
            patched = LandmarkField.__init__

            def init(self, *a, **k):
                patched(self, *a, **k)
                compile_field(self)
            LandmarkField.__init__ = init
        try:
            r = profile(sub, overrides, steps, warmup)
            rows.append({"variant": name} | {k: r[k] for k in ("steps_per_sec_untimed", "rays_per_sec_untimed",
                                                               "samples_per_ray", "ms_per_step", "peak_gpu_mib")})
        except Exception as exc:  # noqa: BLE001
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
        finally:
            if patched is not None:
                LandmarkField.__init__ = patched
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--train-warmup", type=int, default=100)
    p.add_argument("--train-config", default='{"amp": true}', help="stage-2 overrides of the training rows")
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default="eager,bf16,fp16,compile,compile+fp16", help="render variants (step 2)")
    p.add_argument("--sweep", action="store_true", help="also the marching sweep of the compiled head")
    p.add_argument("--size", type=int, default=0, help="render size (0: the crop size)")
    args = p.parse_args()
    global SIZE
    SIZE = args.size
    scene = load_scene(args.subject_dir)
    drive, _, _ = test_drive(args.subject_dir, scene)
    n = min(args.frames, len(drive))
    cfg = RenderConfig()
    head = load_head(SubjectLayout(args.subject_dir).stage2.path, args.device).with_samples(cfg.num_samples,
                                                                                            cfg.early_stop_eps)
    render_frames(head, scene, drive, 4)     # warm-up
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    out = {"device": name, "torch": torch.__version__, "frames": n, "size": SIZE or scene.crop_size,
           "render_split": split_render(head, scene, drive, n)}
    print(json.dumps(out), flush=True)
    out["render_variants"] = render_variants(args.subject_dir, scene, drive, n, args.device,
                                            args.variants.split(","))
    args.out.write_text(json.dumps(out, indent=1))
    if args.sweep:
        out["marching_sweep"] = marching_sweep(args.subject_dir, scene, drive, n, args.device, SWEEP)
        args.out.write_text(json.dumps(out, indent=1))
    if args.train_steps:
        out["train_variants"] = train_variants(args.subject_dir, args.train_steps, args.train_warmup,
                                              json.loads(args.train_config))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
