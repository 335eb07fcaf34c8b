"""Benchmark of parse_faces on the real clips: label areas, lips-opening correlation, flicker, plate error, speed.

    .venv/bin/python bench/parsing_clips.py --root /tmp/bench_parsing [--size 128] [--clips a b ...]

``--root/<clip>/{crop/video.mp4, landmarks/landmarks.parquet}`` are used when present, otherwise built
from ../shared/data with the pipeline's own ingest, crop (``crop.size = --size``) and landmarks stages.
Prints one Markdown table row per clip (the figures recorded in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core import media  # noqa: E402
from pipeline.core.artifacts import LABEL_FACE, LABEL_LIPS, LABEL_MOUTH, PARSING_LABELS  # noqa: E402
from pipeline.core.config import CropConfig, ParsingConfig, from_mapping  # noqa: E402
from pipeline.core.layout import ParsingFiles, SubjectLayout  # noqa: E402
from pipeline.preprocess.parsing import parse as parsing  # noqa: E402
from pipeline.preprocess.parsing.geometry import inner_lip_distance  # noqa: E402

CLIPS = ["talk_dfrf_cnn_en", "talk_dfrf_macron_fr", "talk_mimictalk_german_de", "talk_mimictalk_trump_en",
         "talk_sadtalker_katiehill_en", "talk_videoretalking_4_en"]
SHARED = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


def inputs(root: Path, clip: str, size: int) -> tuple[Path, Path]:
    d = SubjectLayout(root / clip)
    video, lmk = d.crop.video, d.landmarks.table
    if not (video.exists() and lmk.exists()):
        from pipeline.preprocess import crop, ingest, landmarks

        ingest.run(SHARED / f"{clip}.mp4", d.ingest.path)
        crop.run(d.ingest.video, d.ingest.meta, d.crop.path, CropConfig(size=size))
        landmarks.run(video, d.crop.meta, d.ingest.meta, d.landmarks.path)
    return video, lmk


def measure(root: Path, clip: str, size: int, cfg: ParsingConfig) -> str:
    video, lmk = inputs(root, clip, size)
    out = ParsingFiles(root / clip / "parsing")
    t0 = time.perf_counter()
    stats = parsing.run(video, lmk, out.path, cfg)
    total = time.perf_counter() - t0
    labels = PARSING_LABELS.read(out.labels)["labels"]
    n, s = labels.shape[:2]
    pts, _ = parsing.load_landmarks(lmk)
    face = (labels == LABEL_FACE).reshape(n, -1).mean(1)
    mouth = np.isin(labels, (LABEL_LIPS, LABEL_MOUTH)).reshape(n, -1).mean(1)
    rho = spearmanr(mouth, inner_lip_distance(pts)).statistic
    flicker = (labels[1:] != labels[:-1]).reshape(n - 1, -1).mean(1)
    plate = parsing.read_background(out.background).astype(np.int16)
    err, cnt, i = 0.0, 0, 0
    for chunk in media.iter_frames(video, s, s):
        chunk = chunk[: n - i]
        m = labels[i:i + len(chunk)] == 0
        err += float(np.abs(chunk.astype(np.int16) - plate).mean(-1)[m].sum())
        cnt += int(m.sum())
        i += len(chunk)
    missing = {k: v for k, v in stats["label_missing_frames"].items() if v}
    return (f"| {clip} | {n} | {s} | {face.min():.3f}-{face.max():.3f} | {rho:.2f} | {flicker.mean() * 100:.2f} / "
            f"{np.percentile(flicker, 95) * 100:.2f} / {flicker.max() * 100:.2f} | {err / cnt:.2f} | "
            f"{missing or '-'} | {stats['frames_per_sec']:.1f} | {stats['frames_per_cpu_sec']:.1f} | {total:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--size", type=int, default=128, help="crop.size when the crop has to be built")
    p.add_argument("--clips", nargs="*", default=CLIPS)
    p.add_argument("--config", default="{}", help="parsing config overrides as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = from_mapping(ParsingConfig, args.config, "parsing")
    print("| clip | frames | px | face area min-max | rho(lips+mouth, inner-lip dist) | flicker % mean / p95 / max "
          "| plate MAE /255 | frames missing a label | frames/s wall | frames/CPU-s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for clip in args.clips:
        print(measure(args.root, clip, args.size, cfg), flush=True)


if __name__ == "__main__":
    main()
