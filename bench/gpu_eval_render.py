"""Score a rendered test split against the ground truth, time the head alone, and pack the frames to take home.

    PYTHONPATH=. python bench/gpu_eval_render.py --subject-dir S --frames S/video.npz --out OUT [--fps-frames 25]

Run on the GPU machine after ``python -m pipeline.render video --subject-dir S --out S/video.npz`` (frames
as :data:`pipeline.core.artifacts.RENDER_FRAMES`; that machine has no ffmpeg). S holds the subject's files and the
frame cache ``stage2/{frames,labels}.npy`` at the crop size (``pipeline.stage2.cache``). Writes to OUT:

* ``render_eval.json``: per test frame and averaged, PSNR / SSIM of the whole frame (head + torso + plate,
  what ``video.mp4`` shows), PSNR over the head labels (3-7) and over torso + neck (1-2), all on the
  uncompressed render; head-only rendering speed at the crop size (``--fps-frames`` frames, CUDA-synchronised,
  the render defaults: ``batch_frames`` frames a call), and the head + torso speed recorded by the render (``video.json``);
* ``error_map.png``: the mean absolute error over the test frames (0 black .. 0.15 yellow), and in
  ``render_eval.json`` ``regions``: the error and the sharpness (gradient energy, render over truth) per parsing
  class and in the head's outline band (:func:`score`);
* ``frames.tar``: the rendered frames as JPEG (quality 95) to rebuild the mp4 and run ``pipeline.evaluate.subject``
  on the CPU machine (``frames_to_npz`` below).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import (INGEST_META, PARSING_LABEL_NAMES, RENDER_FRAMES, RENDER_STATS, STAGE2_FRAMES,
                                     STAGE2_LABELS, Provenance)
from pipeline.core.config import RenderConfig
from pipeline.core.layout import SubjectLayout, render_stats
from pipeline.core.metrics import psnr, ssim
from pipeline.render.head import load_head
from pipeline.render.video import load_scene, test_drive

EDGE_PX = 6   # width of the band along the head outline whose error is reported apart


def score(render: np.ndarray, gt: np.ndarray, labels: np.ndarray) -> dict:
    """Per frame and averaged PSNR/SSIM, plus where the head error is: the squared error summed over the
    test frames per parsing class and in a band of ``EDGE_PX`` pixels along the head's outline (hair and
    ears against the plate, the neck seam) versus the head's interior, each as a PSNR over the pooled pixels
    and as its share of the head's total squared error; and the mean absolute error image (``error_map``)."""
    rows = []
    sse = np.zeros(len(PARSING_LABEL_NAMES) + 2)   # classes, then head edge band, head interior
    count = np.zeros_like(sse)
    grad = np.zeros((2, len(sse)))                 # gradient energy of the render / of the truth per region
    err_sum = np.zeros(render.shape[1:3])
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_PX + 1, 2 * EDGE_PX + 1))
    for img, ref, lab in zip(render, gt, labels):
        head, torso = lab >= 3, (lab == 1) | (lab == 2)
        rows.append({"psnr": psnr(img, ref), "ssim": ssim(img, ref),
                     "psnr_head": psnr(img, ref, head) if head.any() else None,
                     "psnr_torso": psnr(img, ref, torso) if torso.any() else None})
        diff = img.astype(np.float64) / 255.0 - ref.astype(np.float64) / 255.0
        se = (diff ** 2).mean(-1)
        err_sum += np.abs(diff).mean(-1)
        sse[:len(PARSING_LABEL_NAMES)] += np.bincount(lab.ravel(), se.ravel(), len(PARSING_LABEL_NAMES))
        count[:len(PARSING_LABEL_NAMES)] += np.bincount(lab.ravel(), minlength=len(PARSING_LABEL_NAMES))
        h8 = head.astype(np.uint8)
        edge = head & ~cv2.erode(h8, ring).astype(bool)
        for j, m in ((-2, edge), (-1, head & ~edge)):
            sse[j] += se[m].sum()
            count[j] += m.sum()
        for k, im in enumerate((img, ref)):
            g = gradient_energy(im)
            grad[k, :len(PARSING_LABEL_NAMES)] += np.bincount(lab.ravel(), g.ravel(), len(PARSING_LABEL_NAMES))
            grad[k, -2:] += (g[edge].sum(), g[head & ~edge].sum())
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in rows[0]}
    head_sse = sse[3:len(PARSING_LABEL_NAMES)].sum()
    names = [*PARSING_LABEL_NAMES, f"head_edge_{EDGE_PX}px", "head_interior"]
    regions = {n: {"pixels_per_frame": round(float(c / len(render)), 1),
                   "psnr": round(float(-10 * np.log10(e / c)), 3) if c and e > 0 else None,
                   "share_of_head_sse": round(float(e / head_sse), 4) if n not in ("background", "torso", "neck")
                   else None,
                   "sharpness": round(float(g_r / g_t), 3) if g_t > 0 else None}
               for n, e, c, g_r, g_t in zip(names, sse, count, grad[0], grad[1])}
    return {"mean": mean, "regions": regions, "per_frame": rows, "error_map": err_sum / len(render)}


def gradient_energy(img: np.ndarray) -> np.ndarray:
    """Squared Sobel gradient magnitude of the grey image (per pixel); the ``sharpness`` of a region in
    :func:`score` is its sum over the render divided by its sum over the truth (1 = as much fine detail, < 1 blur)."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) ** 2


def error_png(err: np.ndarray, path: Path, vmax: float = 0.15) -> None:
    """Mean absolute error (0..``vmax``) as a colour map PNG."""
    img = cv2.applyColorMap(np.clip(err / vmax * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    cv2.imwrite(str(path), img)


def head_fps(subject_dir: Path, n: int, device: str) -> dict:
    root = subject_dir
    scene = load_scene(root)
    drive, _, _ = test_drive(root, scene)
    cfg = RenderConfig()
    head = load_head(SubjectLayout(root).stage2.path, device).with_samples(cfg.num_samples, cfg.early_stop_eps)
    n = min(n, len(drive))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    args = (scene.focal, scene.cx, scene.cy, scene.crop_size, scene.crop_size, cfg.ray_chunk)
    b = cfg.batch_frames
    head.render(drive.c2w[:b], drive.landmarks[:b], drive.audio[:b], drive.au45[:b], *args)  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(0, n, b):
        sl = slice(i, min(i + b, n))
        head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], *args)
    sync()
    sec = time.perf_counter() - t0
    return {"frames": n, "size": scene.crop_size, "seconds": round(sec, 3), "frames_per_sec": round(n / sec, 2),
            "num_samples": head.num_samples,
            "early_stop_eps": head.renderer.early_stop_eps if hasattr(head, "renderer") else None,
            "batch_frames": b, "ray_chunk": cfg.ray_chunk or "auto"}


def frames_to_npz(tar_path: Path | str, like_npz_json: Path | str, out: Path | str) -> int:
    """CPU side: JPEGs of ``frames.tar`` -> a RENDER_FRAMES npz for ``python -m pipeline.render mux``."""
    stats = json.loads(Path(like_npz_json).read_text())
    with tarfile.open(tar_path) as tar:
        names = sorted(m.name for m in tar.getmembers())
        frames = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(tar.extractfile(n).read(), np.uint8),
                                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for n in names])
    RENDER_FRAMES.write(out, {"frames": frames, "fps": np.int32(25),
                              "audio_start_sec": np.float64(stats["audio_start_sec"]),
                              "audio_end_sec": np.float64(stats["audio_end_sec"])},
                       Provenance("unknown", f"frames.tar (JPEG q95) of {Path(tar_path).resolve()}"))
    return len(frames)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--frames", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--fps-frames", type=int, default=25)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    s = args.subject_dir
    frames = RENDER_FRAMES.read(args.frames)["frames"]
    files = SubjectLayout(s)
    t0, t1 = INGEST_META.read(files.ingest.meta)["split"]["test"]
    gt, labels = STAGE2_FRAMES.read(files.stage2.frames), STAGE2_LABELS.read(files.stage2.labels)
    if gt.shape[1] != frames.shape[1] or t1 - t0 != len(frames):
        raise SystemExit(f"{args.frames}: {frames.shape} does not match the test split {t0}-{t1} at {gt.shape[1]} px")
    result = {"test_split": [int(t0), int(t1)], **score(frames, np.asarray(gt[t0:t1]), np.asarray(labels[t0:t1])),
              "head_only": head_fps(s, args.fps_frames, args.device),
              "head_torso": RENDER_STATS.read(render_stats(args.frames))}
    args.out.mkdir(parents=True, exist_ok=True)
    error_png(result.pop("error_map"), args.out / "error_map.png")
    (args.out / "render_eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"mean": result["mean"], "regions": result["regions"], "head_only": result["head_only"],
                      "head_torso_fps": result["head_torso"].get("frames_per_sec")}))
    with tarfile.open(args.out / "frames.tar", "w") as tar:
        for i, img in enumerate(frames):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(buf)
            tar.addfile(info, io.BytesIO(buf.tobytes()))


if __name__ == "__main__":
    main()
