"""Throughput of crop_faces + detect_landmarks (frames/s) on one real clip, default 512 px crop.

    .venv/bin/python bench/bench_preprocess.py [--clip talk_dfrf_cnn_en] [--size 512] [--workers 0]

Ingests the clip into a temporary folder (not timed), then times crop.run and landmarks.run
end to end (process start-up of the landmark workers included) and the landmarker alone on one
core (frames/s of ``landmark_chunk`` on the first 200 cropped frames). Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from pipeline.core.artifacts import CROP_META
from pipeline.core.config import CropConfig, LandmarksConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess import crop, face_landmarker, ingest, landmarks
from pipeline.preprocess import mediapipe_models as mp_models

SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="talk_dfrf_cnn_en")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = SubjectLayout(tmp)
        meta = ingest.run(SHARED / f"{args.clip}.mp4", d.ingest.path)
        n = meta["n_frames"]
        t0 = time.perf_counter()
        crop.run(d.ingest.video, d.ingest.meta, d.crop.path, CropConfig(size=args.size))
        t1 = time.perf_counter()
        cfg = LandmarksConfig(workers=args.workers)
        summary = landmarks.run(d.crop.video, d.crop.meta, d.ingest.meta, d.landmarks.path, cfg)
        t2 = time.perf_counter()
        size = CROP_META.read(d.crop.meta)["size"]
        task = mp_models.locate(mp_models.FACE_LANDMARKER)
        m = min(200, n)
        t3 = time.perf_counter()
        face_landmarker.landmark_chunk(str(d.crop.video), size, 0, m, 25, str(task), cfg)
        t4 = time.perf_counter()
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{args.clip}: {n} frames, crop {args.size} px, landmark workers {summary['workers']}")
    print(f"crop:       {t1 - t0:6.1f} s  {n / (t1 - t0):6.1f} frames/s")
    print(f"landmarks:  {t2 - t1:6.1f} s  {n / (t2 - t1):6.1f} frames/s")
    print(f"crop+lmk:   {t2 - t0:6.1f} s  {n / (t2 - t0):6.1f} frames/s")
    print(f"landmarker alone, 1 process, {m} frames: {1000 * (t4 - t3) / m:.1f} ms/frame (model load included)")


if __name__ == "__main__":
    main()
