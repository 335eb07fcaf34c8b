"""Time of the lip-audio detector of rule measure_av_sync on one subject (the whole clip, as the rule runs it).

Needs a subject folder with ingest/, crop/ and landmarks/ (e.g. one that ``bench/sync_false_positives.py --work``
built, or ``results/<s>`` after ``snakemake results/<s>/landmarks/landmarks.parquet``). The mouth signal is read
from the crop video once (timed apart); then :func:`pipeline.audio.sync.measure` (audio bands + detector, config.yaml
``sync:`` defaults) runs ``--repeat`` times. Prints JSON: frames, the decode time, each run's seconds, the
median, and the detector's finding::

    python bench/bench_sync.py --subject-dir /tmp/sync_fp/talk_dfrf_cnn_en_256 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.audio import sync
from pipeline.core.artifacts import CROP_META, INGEST_META
from pipeline.core.config import SyncConfig
from pipeline.core.layout import SubjectLayout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    s = SubjectLayout(args.subject_dir)
    meta = INGEST_META.read(s.ingest.meta)
    fps, n = int(meta["fps"]), int(meta["n_frames"])
    t = time.perf_counter()
    visual = sync.visual_signals(s.crop.video, int(CROP_META.read(s.crop.meta)["size"]), s.landmarks.table, n, fps)
    decode = time.perf_counter() - t
    pcm = sync.read_pcm(s.ingest.audio)
    runs = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        found = sync.measure(visual, pcm, fps, SyncConfig())
        runs.append(round(time.perf_counter() - t, 3))
    print(json.dumps({"subject_dir": str(s.root), "frames": n, "mouth_signal_seconds": round(decode, 3),
                      "detector_seconds": runs, "detector_median_seconds": float(np.median(runs)),
                      "finding": {k: found.get(k) for k in sync.SUMMARY}}, indent=1))


if __name__ == "__main__":
    main()
