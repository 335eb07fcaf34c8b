"""Time track_face (pipeline.preprocess.tracking.track.run) on one clip's landmarks; results go to BENCHMARKS.md.

    .venv/bin/python bench/bench_tracking.py results/<s>/landmarks/landmarks.parquet --size 512 [--threads 1]

Prints the wall time of the whole run() (fit + writes + figures) and the fit alone (metrics.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from pipeline.core.config import TrackingConfig
from pipeline.preprocess.tracking import track as tracking


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("landmarks")
    p.add_argument("--size", type=int, required=True, help="crop size in px")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = tracking.run(args.landmarks, Path(tmp), TrackingConfig(device=args.device), size=args.size,
                         threads=args.threads)
        wall = time.perf_counter() - t0
    print(json.dumps({"run_seconds": round(wall, 2), **{k: m[k] for k in (
        "n_frames", "fit_seconds", "reproj_mean_px", "reproj_p95_px", "jitter_rot_deg", "jitter_rot_deg_init",
        "jitter_trans_rel", "jitter_trans_rel_init", "focal_px", "device")}}, indent=1))


if __name__ == "__main__":
    main()
