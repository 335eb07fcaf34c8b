"""Score a rendered test split against the ground truth, time the head alone, and pack the frames to take home.

    PYTHONPATH=. python bench/gpu_eval_render.py --subject-dir S --frames S/video.npz --out OUT [--fps-frames 25]

Run on the GPU machine after ``python -m pipeline.render video --subject-dir S --out S/video.npz`` (frames
as :data:`pipeline.artifacts.RENDER_FRAMES`; that machine has no ffmpeg). S holds the subject's files and the
frame cache ``stage2/{frames,labels}.npy`` at the crop size (``pipeline.stage2.cache``). Writes to OUT:

* ``render_eval.json``: per test frame and averaged, PSNR / SSIM of the whole frame (head + torso + plate,
  what ``video.mp4`` shows), PSNR over the head labels (3-7) and over torso + neck (1-2), all on the
  uncompressed render; head-only rendering speed at the crop size (``--fps-frames`` frames, CUDA-synchronised,
  one frame per call), and the head + torso speed recorded by the render (``video.json``);
* ``frames.tar``: the rendered frames as JPEG (quality 95) to rebuild the mp4 and run ``pipeline.evaluate``
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

from pipeline.artifacts import (INGEST_META, RENDER_FRAMES, RENDER_STATS, STAGE2_FRAMES, STAGE2_LABELS,
                                Provenance)
from pipeline.config import RenderConfig
from pipeline.head_render import load_head
from pipeline.metrics import psnr, ssim
from pipeline.render import load_scene, test_drive


def score(render: np.ndarray, gt: np.ndarray, labels: np.ndarray) -> dict:
    rows = []
    for img, ref, lab in zip(render, gt, labels):
        head, torso = lab >= 3, (lab == 1) | (lab == 2)
        rows.append({"psnr": psnr(img, ref), "ssim": ssim(img, ref),
                     "psnr_head": psnr(img, ref, head) if head.any() else None,
                     "psnr_torso": psnr(img, ref, torso) if torso.any() else None})
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in rows[0]}
    return {"mean": mean, "per_frame": rows}


def head_fps(subject_dir: Path, n: int, device: str) -> dict:
    root = subject_dir
    scene = load_scene(root)
    drive, _, _ = test_drive(root, scene)
    cfg = RenderConfig()
    head = load_head(root / "stage2", device).with_samples(cfg.num_samples, cfg.early_stop_eps)
    n = min(n, len(drive))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    args = (scene.focal, scene.cx, scene.cy, scene.crop_size, scene.crop_size, 1 << 18)
    head.render(drive.c2w[:1], drive.landmarks[:1], drive.audio[:1], drive.au45[:1], *args)  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(n):
        sl = slice(i, i + 1)
        head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], *args)
    sync()
    sec = time.perf_counter() - t0
    return {"frames": n, "size": scene.crop_size, "seconds": round(sec, 3), "frames_per_sec": round(n / sec, 2),
            "num_samples": head.renderer.num_samples, "early_stop_eps": head.renderer.early_stop_eps}


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
    t0, t1 = INGEST_META.read(s / "ingest/meta.json")["split"]["test"]
    gt, labels = STAGE2_FRAMES.read(s / "stage2/frames.npy"), STAGE2_LABELS.read(s / "stage2/labels.npy")
    if gt.shape[1] != frames.shape[1] or t1 - t0 != len(frames):
        raise SystemExit(f"{args.frames}: {frames.shape} does not match the test split {t0}-{t1} at {gt.shape[1]} px")
    result = {"test_split": [int(t0), int(t1)], **score(frames, np.asarray(gt[t0:t1]), np.asarray(labels[t0:t1])),
              "head_only": head_fps(s, args.fps_frames, args.device),
              "head_torso": RENDER_STATS.read(args.frames.with_suffix(".json"))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "render_eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"mean": result["mean"], "head_only": result["head_only"],
                      "head_torso_fps": result["head_torso"].get("frames_per_sec")}))
    with tarfile.open(args.out / "frames.tar", "w") as tar:
        for i, img in enumerate(frames):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(buf)
            tar.addfile(info, io.BytesIO(buf.tobytes()))


if __name__ == "__main__":
    main()
