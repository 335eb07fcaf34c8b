"""Does the tracked head pose move with the jaw, and how clean are the pose-free mouth targets, per gauge?

    PYTHONPATH=. python bench/pose_gauge.py --subject-dir results/talk_dfrf_cnn_en [--out OUT.json]
                                            [--modes all,rigid]

S is a preprocessed subject (``landmarks/``, ``crop/crop.json``, ``ingest/meta.json``, ``aus/aus.parquet``). For
each ``tracking.pose_points`` setting the clip is tracked again (``track_face``'s ``run`` into a temporary folder,
the config's other keys at their defaults) and reported:

* ``reproj_mean_px``, ``reproj_p95_px``, ``jitter_rot_deg``: the tracking's own metrics;
* ``highpass_r_with_jaw``: per pose parameter, the correlation of its high-passed series (minus a 12-frame
  Gaussian) with the high-passed ``jaw_drop`` of ``aus.parquet``: a pose that follows the skull has none;
* ``jaw_from_pose_test_r``: a linear read-out of the high-passed jaw drop from the six high-passed pose
  parameters, fitted on the train split and scored on the test split: how much of the true mouth an
  "audio-driven" test render receives through its tracked poses;
* ``mouth_hf_mm``: mean |second difference| of the pose-free mouth and jaw points (``MOUTH_REGION``), the
  frame-to-frame noise of stage 1's targets; ``mouth_test_drift_mm``: how far the test split's mean mouth shape
  sits from the train split's;
* ``non_mouth_turn_mrad``: the sd of the rotation (x, y, z) of one similarity fitted per frame to the pose-free
  non-mouth points: how much of the head's motion is left in the shape.

BENCHMARKS.md, "Session 12", has the figures for talk_dfrf_cnn_en.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from pipeline.core.artifacts import AUS, CANONICAL_LANDMARKS, INGEST_META, TRACKS
from pipeline.core.config import TrackingConfig
from pipeline.core.layout import SubjectLayout
from pipeline.core.metrics import MOUTH_REGION
from pipeline.preprocess.tracking.fit import N_MESH, umeyama
from pipeline.preprocess.tracking.track import run as track

POSE = ("yaw_rad", "pitch_rad", "roll_rad", "tx", "ty", "tz")


def highpass(x: np.ndarray, sigma: float = 12.0) -> np.ndarray:
    return x - gaussian_filter1d(x, sigma, axis=0)


def measure(tracks, canonical: np.ndarray, jaw: np.ndarray, split: dict) -> dict:
    (a, b), (t0, t1) = split["train"], split["test"]
    pose = tracks[list(POSE)].to_numpy(np.float64)
    ph, jh = highpass(pose), highpass(jaw)
    out = {"highpass_r_with_jaw": {k: round(float(np.corrcoef(ph[:, i], jh)[0, 1]), 3) for i, k in enumerate(POSE)}}
    if t1 > t0:
        A = np.c_[ph, np.ones(len(ph))]
        coef = np.linalg.lstsq(A[a:b], jh[a:b], rcond=None)[0]
        out["jaw_from_pose_test_r"] = round(float(np.corrcoef(A[t0:t1] @ coef, jh[t0:t1])[0, 1]), 3)
    mouth = canonical[:, MOUTH_REGION] * 10.0                                  # mm
    out["mouth_hf_mm"] = round(float(np.abs(np.diff(mouth, 2, axis=0)).mean()), 4)
    if t1 > t0:
        out["mouth_test_drift_mm"] = round(float(np.linalg.norm(mouth[t0:t1].mean(0) - mouth[a:b].mean(0), axis=1).mean()), 3)
    rest = np.setdiff1d(np.arange(N_MESH), MOUTH_REGION)
    shape = canonical[:, rest]
    _, R, _ = umeyama(shape.mean(0), shape, np.ones(len(rest)))
    out["non_mouth_turn_mrad"] = np.round(1000 * Rotation.from_matrix(R).as_rotvec().std(0), 2).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subject-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--modes", default="all,rigid")
    args = ap.parse_args()
    s = SubjectLayout(args.subject_dir)
    split = INGEST_META.read(s.ingest.meta)["split"]
    jaw = AUS.read_pandas(s.aus.table)["jaw_drop"].to_numpy(np.float64)
    report = {"subject": str(args.subject_dir), "modes": {}}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            m = track(s.landmarks.table, tmp, TrackingConfig(pose_points=mode, device="cpu"), crop_meta=s.crop.meta,
                      meta=s.ingest.meta, threads=2)
            tracks = TRACKS.read_pandas(Path(tmp) / "tracks.parquet")
            canonical = np.asarray(CANONICAL_LANDMARKS.read(Path(tmp) / "canonical.npz")["landmarks"], np.float64)
        row = {k: round(float(m[k]), 4) for k in ("reproj_mean_px", "reproj_p95_px", "jitter_rot_deg", "focal_px")}
        row.update(measure(tracks, canonical[:, :N_MESH], jaw[:len(tracks)], split))
        report["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
