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
   meet an occupied cell; and the samples a ray by the true frame's parsing region (face, hair, ...).
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
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.profile_stage2_step import profile
from pipeline.core.artifacts import STAGE2_LABELS
from pipeline.core.artifacts.preprocess import PARSING_LABEL_NAMES
from pipeline.core.config import RenderConfig
from pipeline.core.layout import SubjectLayout
from pipeline.render.head import Head, load_head
from pipeline.render.video import Drive, Scene, load_scene, test_drive
from pipeline.stage2.nerf.field import LandmarkField

# (early_stop_eps, march_window, samples_per_ray) of the marching sweep, after the default settings
SWEEP = [(1e-3, 16, 0), (3e-3, 8, 0), (1e-2, 8, 0), (1e-3, 0, 32), (1e-3, 0, 24), (1e-3, 0, 16), (1e-3, 0, 12)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Clip:
    """The subject's trained head and the first ``n`` test frames it renders at ``size``²."""

    subject_dir: Path
    scene: Scene
    drive: Drive
    n: int
    size: int
    device: str
    first: int = 0          # the first rendered frame's index in the clip (the test split's start)

    def head(self) -> Head:
        """A fresh copy of the trained head at the render defaults (the variants change it)."""
        cfg = RenderConfig()
        head = load_head(SubjectLayout(self.subject_dir).stage2.path, self.device)
        return head.with_samples(cfg.num_samples, cfg.early_stop_eps)

    def render(self, head: Head, n: int | None = None, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-only colour and opacity of the first ``n`` (default all) frames, ``batch`` a call; synchronised."""
        d, sc, pres, alphas = self.drive, self.scene, [], []
        n = self.n if n is None else n
        for s in range(0, n, batch):
            sl = slice(s, min(s + batch, n))
            pre, a = head.render(d.c2w[sl], d.landmarks[sl], d.audio[sl], d.au45[sl], sc.focal, sc.cx, sc.cy,
                                 sc.crop_size, self.size)
            pres.append(pre)
            alphas.append(a)
        sync()
        return torch.cat(pres), torch.cat(alphas)


@contextlib.contextmanager
def patched(obj, **wrappers):
    """``obj``'s methods ``name`` replaced by ``wrappers[name](original)`` inside the block, restored after it."""
    orig = {name: getattr(obj, name) for name in wrappers}
    for name, wrap in wrappers.items():
        setattr(obj, name, wrap(orig[name]))
    try:
        yield
    finally:
        for name, fn in orig.items():
            setattr(obj, name, fn)


@contextlib.contextmanager
def instrumented(head: Head, timed: bool):
    """Wrap the head's renderer so that it counts the field samples it evaluates and the rays that meet an occupied
    cell, and with ``timed`` adds the synchronised seconds of its candidates and field queries; yields the totals."""
    stats: dict[str, float] = defaultdict(float)

    def wrap(name):
        def outer(fn):
            def wrapper(*a, **k):
                if timed:
                    sync()
                t = time.perf_counter()
                out = fn(*a, **k)
                if timed:
                    sync()
                    stats[f"s_{name}"] += time.perf_counter() - t
                if name == "_query":                 # (field, ctx, pos, ...)
                    stats["field_samples"] += int(a[2].shape[0])
                else:                                # (t, delta, keep [R, S], far)
                    stats["rays_meeting_the_head"] += int(out[2].any(1).sum())
                return out
            return wrapper
        return outer

    with patched(head.renderer, candidates=wrap("candidates"), _query=wrap("_query")):
        yield stats


def split_render(clip: Clip, head: Head) -> dict:
    """Milliseconds per frame of the renderer's parts, field samples and rays meeting the head per frame."""
    with instrumented(head, timed=True) as stats:
        t0 = time.perf_counter()
        clip.render(head)
        total = time.perf_counter() - t0
    ms = {"candidates": stats["s_candidates"], "_query": stats["s__query"]}
    ms = {k: round(1000 * v / clip.n, 2) for k, v in ms.items()}
    ms["total"] = round(1000 * total / clip.n, 2)
    ms["rest"] = round(ms["total"] - ms["candidates"] - ms["_query"], 2)
    return {"ms_per_frame": ms, "field_samples_per_frame": int(stats["field_samples"]) // clip.n,
            "rays_with_an_occupied_sample_per_frame": int(stats["rays_meeting_the_head"]) // clip.n}


def samples_by_region(clip: Clip, head: Head) -> dict:
    """Field samples a ray by the true frame's parsing region (``PARSING_LABEL_NAMES``; labels from the frame cache,
    nearest pixel at the render size): ``{region: [samples a ray, share of the pixels, share of the samples]}``."""
    counts = []

    def counting(render):
        def wrapper(field, ctx, origins, *a, **k):
            out = render(field, ctx, origins, *a, **k)
            counts.append(torch.bincount(out.ray_indices, minlength=origins.shape[0]).cpu())
            return out
        return wrapper

    with patched(head.renderer, render=counting):
        clip.render(head)
    c = torch.cat(counts).reshape(clip.n, clip.size, clip.size).numpy()
    labels = STAGE2_LABELS.read(SubjectLayout(clip.subject_dir).stage2.labels)
    step = labels.shape[1] / clip.size
    pick = (np.arange(clip.size) * step + step / 2).astype(int)
    lab = np.asarray(labels[clip.first:clip.first + clip.n])[:, pick][:, :, pick]
    return {name: [round(float(c[lab == i].mean()), 1), round(float((lab == i).mean()), 3),
                   round(float(c[lab == i].sum() / max(c.sum(), 1)), 3)]
            for i, name in enumerate(PARSING_LABEL_NAMES) if (lab == i).any()}


def compile_field(field: LandmarkField) -> None:
    """The field's pure-torch parts compiled (the hash grid and kNN kernels stay outside the graph)."""
    field._sigma_geo_from = torch.compile(field._sigma_geo_from, dynamic=True)
    field.color_net = torch.compile(field.color_net, dynamic=True)


def differences(pre: torch.Tensor, alpha: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> dict:
    d = (pre.float() - ref[0]).abs()
    return {"max_abs_rgb": float(d.max()), "mean_abs_rgb": float(d.mean()),
            "pixels_over_2_of_255": float((d.amax(1) > 2 / 255).float().mean()),
            "max_abs_alpha": float((alpha.float() - ref[1]).abs().max())}


def render_variants(clip: Clip, names: list[str]) -> list[dict]:
    rows, ref = [], None
    for name in names:
        head = clip.head()
        if "compile" in name:
            compile_field(head.field)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name.split("+")[-1])
        amp = torch.autocast(clip.device, half) if half is not None else contextlib.nullcontext()
        try:
            with amp:
                t = time.perf_counter()
                clip.render(head, 4)
                warm = time.perf_counter() - t
                t = time.perf_counter()
                pre, alpha = clip.render(head)
                sec = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 (a probe: report and go on)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        ref = ref or (pre.float(), alpha.float())
        rows.append({"variant": name, "warmup_s": round(warm, 1), "frames_per_sec": round(clip.n / sec, 2),
                     **differences(pre, alpha, ref)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def marching_sweep(clip: Clip, settings: list[tuple[float, int, int]]) -> list[dict]:
    """The compiled head rendered with other marching settings ``(early_stop_eps, march_window, samples_per_ray)``
    (``samples_per_ray > 0``: only the first k occupied candidates of a ray, the renderer's dense path); frames/s,
    field samples a frame and the difference to the default settings (the first row)."""
    head = clip.head()
    compile_field(head.field)
    r = head.renderer
    rows, ref = [], None
    for eps, window, k in [(r.early_stop_eps, r.march_window, 0)] + settings:
        r.early_stop_eps, r.march_window, r.samples_per_ray = eps, window, k
        clip.render(head, 4)      # warm-up: shapes the compiled graph has not seen
        with instrumented(head, timed=False) as stats:
            t = time.perf_counter()
            pre, alpha = clip.render(head)
            sec = time.perf_counter() - t
        ref = ref or (pre, alpha)
        rows.append({"early_stop_eps": eps, "march_window": window, "samples_per_ray": k,
                     "frames_per_sec": round(clip.n / sec, 2),
                     "field_samples_per_frame": int(stats["field_samples"]) // clip.n, **differences(pre, alpha, ref)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def train_variants(subject_dir: Path, steps: int, warmup: int, overrides: dict) -> list[dict]:
    rows = []
    for name, prepare in (("eager", None), ("compile", lambda trainer: compile_field(trainer.field))):
        try:
            r = profile(subject_dir, overrides, steps, warmup, prepare=prepare)
            rows.append({"variant": name} | {k: r[k] for k in ("steps_per_sec_untimed", "rays_per_sec_untimed",
                                                               "samples_per_ray", "ms_per_step", "peak_gpu_mib")})
        except Exception as exc:  # noqa: BLE001 (a probe: report and go on)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
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
    scene = load_scene(args.subject_dir)
    drive, t0, _ = test_drive(args.subject_dir, scene)
    clip = Clip(args.subject_dir, scene, drive, min(args.frames, len(drive)), args.size or scene.crop_size,
                args.device, t0)
    head = clip.head()
    clip.render(head, 4)     # warm-up
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    out = {"device": name, "torch": torch.__version__, "frames": clip.n, "size": clip.size,
           "render_split": split_render(clip, head), "samples_by_region": samples_by_region(clip, head)}
    print(json.dumps(out), flush=True)
    out["render_variants"] = render_variants(clip, args.variants.split(","))
    args.out.write_text(json.dumps(out, indent=1))
    if args.sweep:
        out["marching_sweep"] = marching_sweep(clip, SWEEP)
        args.out.write_text(json.dumps(out, indent=1))
    if args.train_steps:
        out["train_variants"] = train_variants(args.subject_dir, args.train_steps, args.train_warmup,
                                              json.loads(args.train_config))
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
