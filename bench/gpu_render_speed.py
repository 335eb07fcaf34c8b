"""Head rendering speed on a GPU against the marching settings, and where a frame's time goes.

    PYTHONPATH=. python bench/gpu_render_speed.py --subject-dir S --out OUT [--frames 24] [--size 512]

S is a subject directory with a trained head (``stage2/head.pt``, ``head.json``, ``occupancy.npz``) and what
``pipeline.render.video.test_drive`` reads. For each setting (frames per call, rays per renderer call, samples a
marching round, samples per field call) it renders the first ``--frames`` test frames head-only (the
render default: the head's samples per ray, early stop 1e-3), CUDA-synchronised, and reports frames/s and
the largest colour / opacity difference to the first setting (the settings change only the batching, so
the images must agree to float rounding). Then one ``torch.profiler`` pass over 4 frames with the fastest
setting lists the CUDA kernels and CPU operators by total time. Where S has a trained torso (``torso/``),
the whole synthesis (``pipeline.render.video.synthesize``: head, torso, soft compositing, the seam measure, uint8
frames on the host) is timed over the same frames, and split into those parts with a CUDA synchronisation
after each, and profiled kernel by kernel. Writes ``OUT/render_speed.json`` and ``OUT/render_profile.txt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.core.config import RenderConfig
from pipeline.core.layout import SubjectLayout
from pipeline.render import compositing
from pipeline.render.head import Head, load_head
from pipeline.render.video import Drive, Scene, background_tensor, load_scene, synthesize, test_drive
from pipeline.torso.model import Torso
from pipeline.torso.model import load as load_torso

# (frames per call, rays per renderer call, samples per ray a marching round, samples per field call)
SETTINGS = [(1, 1 << 14, 8, 1 << 18),    # the render default before this benchmark: 16 chunks per frame
            (1, 1 << 18, 8, 1 << 18),    # one chunk per frame (gpu_eval_render's head-only timing)
            (4, 1 << 20, 8, 1 << 18),    # four frames a chunk
            (4, 1 << 20, 8, 1 << 20),
            (4, 1 << 20, 16, 1 << 20),
            (8, 1 << 21, 8, 1 << 20),
            (8, 1 << 21, 16, 1 << 21)]


def render_all(head: Head, scene: Scene, drive: Drive, n: int, size: int, batch: int,
               ray_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    pres, alphas = [], []
    for s in range(0, n, batch):
        sl = slice(s, min(s + batch, n))
        pre, a = head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], scene.focal,
                             scene.cx, scene.cy, scene.crop_size, size, ray_chunk)
        pres.append(pre)
        alphas.append(a)
    return torch.cat(pres), torch.cat(alphas)


def synthesis_parts(head: Head, torso: Torso, scene: Scene, drive: Drive, n: int, cfg: RenderConfig,
                    sync) -> dict:
    """Milliseconds per frame of each step of ``synthesize`` (same calls, a synchronisation after each)."""
    size = cfg.size or scene.crop_size
    bg = background_tensor(scene, size, head.device)
    feather = cfg.feather * size
    parts = dict.fromkeys(("head", "torso", "composite", "seam", "to_host"), 0.0)
    for s in range(0, n, cfg.batch_frames):
        sl = slice(s, min(s + cfg.batch_frames, n))
        t = time.perf_counter()
        pre, h_a = head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], scene.focal,
                               scene.cx, scene.cy, scene.crop_size, size, cfg.ray_chunk)
        sync()
        parts["head"] += time.perf_counter() - t
        t = time.perf_counter()
        t_rgb, t_a = torso.predict(drive.poses[sl], size, h_a)
        sync()
        parts["torso"] += time.perf_counter() - t
        t = time.perf_counter()
        img = compositing.composite_soft(bg, t_rgb, t_a, pre, h_a, feather)
        sync()
        parts["composite"] += time.perf_counter() - t
        t = time.perf_counter()
        compositing.seam_jump(img, compositing.seam_band(h_a, t_a, max(1, int(round(feather)))))
        sync()
        parts["seam"] += time.perf_counter() - t
        t = time.perf_counter()
        (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        parts["to_host"] += time.perf_counter() - t
    return {k: round(v / n * 1000, 2) for k, v in parts.items()} | {"unit": "ms per frame"}



def set_march(head, window: int, chunk: int) -> None:
    """The NeRF's marching settings (the Gaussian head has none: its rows then differ only in batch size)."""
    if hasattr(head, "renderer"):
        head.renderer.march_window, head.renderer.chunk = window, chunk


def march_eps(head) -> float | None:
    return head.renderer.early_stop_eps if hasattr(head, "renderer") else None

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=0, help="output size (0: the crop size)")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    root, dev = args.subject_dir, args.device
    scene = load_scene(root)
    drive, _, _ = test_drive(root, scene)
    size = args.size or scene.crop_size
    n = min(args.frames, len(drive))
    cfg = RenderConfig()
    head = load_head(SubjectLayout(root).stage2.path, dev).with_samples(cfg.num_samples, cfg.early_stop_eps)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows, ref = [], None
    for batch, ray_chunk, window, chunk in SETTINGS:
        set_march(head, window, chunk)
        render_all(head, scene, drive, min(batch, n), size, batch, ray_chunk)   # warm-up (kernels, allocator)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        pre, alpha = render_all(head, scene, drive, n, size, batch, ray_chunk)
        sync()
        sec = time.perf_counter() - t0
        if ref is None:
            ref = (pre, alpha)
        row = {"batch_frames": batch, "ray_chunk": ray_chunk, "march_window": window, "field_chunk": chunk,
               "frames": n, "seconds": round(sec, 3), "frames_per_sec": round(n / sec, 2),
               "max_abs_rgb_vs_first": float((pre - ref[0]).abs().max()),
               "max_abs_alpha_vs_first": float((alpha - ref[1]).abs().max()),
               "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev == "cuda" else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["frames_per_sec"])
    set_march(head, best["march_window"], best["field_chunk"])
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        render_all(head, scene, drive, min(4, n), size, best["batch_frames"], best["ray_chunk"])
        sync()
    sort = "cuda_time_total" if dev == "cuda" else "cpu_time_total"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "render_profile.txt").write_text(
        f"best setting {best}\n\n" + prof.key_averages().table(sort_by=sort, row_limit=40)
        + "\n\nby CPU time\n" + prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    result = {"size": size, "num_samples": head.num_samples, "early_stop_eps": march_eps(head),
              "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
              "settings": rows, "best": best}
    if SubjectLayout(root).torso.meta.is_file():
        set_march(head, 8, 1 << 18)     # the render defaults again
        torso = load_torso(SubjectLayout(root).torso.path, dev)
        rcfg = RenderConfig(size=size, device=dev)
        sub = Drive(drive.c2w[:n], drive.poses[:n], drive.landmarks[:n], drive.audio[:n], drive.au45[:n])
        synthesis_parts(head, torso, scene, sub, rcfg.batch_frames, rcfg, sync)          # warm-up
        stats: dict = {}
        sync()
        t0 = time.perf_counter()
        for _ in synthesize(head, torso, scene, sub, rcfg, stats):
            pass
        sync()
        result["synthesis"] = {"frames": n, "frames_per_sec": round(n / (time.perf_counter() - t0), 2),
                               "parts": synthesis_parts(head, torso, scene, sub, n, rcfg, sync)}
        print(json.dumps(result["synthesis"]))
        with torch.profiler.profile(activities=acts) as prof:      # the whole synthesis, kernel by kernel
            for _ in synthesize(head, torso, scene, sub, rcfg, {}):
                pass
            sync()
        with open(args.out / "render_profile.txt", "a") as f:
            f.write(f"\n\nsynthesis of {n} frames ({rcfg.batch_frames} a batch)\n"
                    + prof.key_averages().table(sort_by=sort, row_limit=40))
    (args.out / "render_speed.json").write_text(json.dumps(result, indent=1))
    print(f"best: {best['frames_per_sec']} frames/s at {size}² ({best})")


if __name__ == "__main__":
    main()
