"""Stage-1 test LMD of one subject with and without the lip-audio correction of rule measure_av_sync.

Needs a subject folder with ingest/, tracking/ and sync/ (e.g. after ``snakemake results/<s>/sync/sync.json
results/<s>/tracking/canonical.npz``). Audio features are extracted from ``ingest/audio.wav`` (uncorrected) and from
``sync/audio.wav`` (corrected) into a scratch folder, stage 1 is trained on each with the config.yaml defaults
(one run per seed), and the test-split metrics are printed as JSON::

    python bench/sync_stage1_lmd.py --subject-dir results/katiehill --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.audio import features
from pipeline.core.artifacts import SYNC_OFFSET
from pipeline.core.config import Stage1Config
from pipeline.core.layout import SubjectLayout
from pipeline.stage1 import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    s = SubjectLayout(args.subject_dir)
    doc = SYNC_OFFSET.read(s.sync.offset)
    out = {"subject": s.root.name, "shift_frames": doc["shift_frames"], "decision": doc["decision"], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, wav in (("uncorrected", s.ingest.audio), ("corrected", s.sync.audio)):
            npz = Path(tmp) / name / "self.npz"
            features.run(wav, npz, npz.with_suffix(".parquet"))
            runs = []
            for seed in args.seeds:
                m = train.run(npz, s.tracking.canonical, s.tracking.transforms, Path(tmp) / name / f"stage1_{seed}",
                              replace(Stage1Config(), seed=seed))
                runs.append({k: m[k] for k in ("lmd_px", "lmd_px_mean_shape", "lmd_px_linear", "mouth_corr",
                                               "test_frames")})
            out["runs"][name] = {"per_seed": runs, "lmd_px_mean": round(float(np.mean([r["lmd_px"] for r in runs])), 4),
                                 "mouth_corr_mean": round(float(np.mean([r["mouth_corr"] for r in runs])), 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
