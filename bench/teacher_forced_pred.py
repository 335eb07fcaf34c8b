"""Teacher-forced "predictions": stage 1's output file with the mouth taken from tracking instead of the audio.

The render reads the mouth of the test split from ``stage1/pred/self.parquet``. To split the head's mouth error
into what stage 1's landmarks cost and what the head itself cannot draw, render the same split once with that
file and once with this one, in which the mouth and jaw points (``metrics.MOUTH_REGION``, what stage 1 predicts)
are the tracked pose-free landmarks of ``tracking/canonical.npz`` and every other point is stage 1's (the
train-split mean, as in training with ``stage2.landmark_motion: mouth``).

    PYTHONPATH=. python bench/teacher_forced_pred.py --subject-dir S --out S/stage1/pred/self_tracked.parquet

(``bench/gpu_head_eval.sh`` with ``TEACHER_FORCED=1`` renders and scores the split both ways.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.artifacts import CANONICAL_LANDMARKS, Provenance, read_stage1_landmarks
from pipeline.core.layout import SELF_AUDIO, SubjectLayout
from pipeline.core.metrics import MOUTH_REGION
from pipeline.render.video import FPS
from pipeline.stage1.io import write_predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject-dir", type=Path, required=True)
    ap.add_argument("--pred", type=Path, help="stage 1's predictions (default: the subject's stage1/pred/self.parquet)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    files = SubjectLayout(args.subject_dir)
    pred = read_stage1_landmarks(args.pred or files.stage1.pred(SELF_AUDIO))     # as the render reads them
    tracked = CANONICAL_LANDMARKS.read(files.tracking.canonical)["landmarks"]
    if len(tracked) != len(pred):
        raise SystemExit(f"{files.tracking.canonical}: {len(tracked)} frames, the predictions have {len(pred)}")
    pred[:, MOUTH_REGION] = tracked[:, MOUTH_REGION]
    write_predictions(args.out, pred, FPS, Provenance("teacher-forced", "tracking"))
    print(f"{args.out}: {len(pred)} frames, mouth region from {files.tracking.canonical}")


if __name__ == "__main__":
    main()
