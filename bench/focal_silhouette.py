"""Which focal length explains how the head's outline moves? (CPU, no model.)

The tracker fits one focal length from the landmarks, which barely constrain it: the face is a few cm deep,
so a nearer camera with a wider lens (or a farther one with a longer lens) fits them almost as well. The hair and
the skull's outline sit 5-15 cm behind the face, so there the two differ: a wrong focal makes a sideways or
vertical move of the head swing the outline by a wrong parallax, which no rigid head can follow.

For each focal (x crop width) this tracks the clip again with that focal fixed (``track.run``, the tracking
defaults otherwise), then takes three outline features per frame from the parsing labels (labels 3-7): the row of
the head's topmost pixel (left out where the crop cuts the head, as on cnn) and the columns of its leftmost and
rightmost pixels above the mouth. Each is treated as a fixed point of the head: the point in head space whose
projection through the tracked cameras (``stage1.io.Camera``) best fits the train frames (least squares on that
one image coordinate), scored by its RMS residual on train and test frames.
The focal whose cameras let a fixed point follow the outline best is the one the rendered hair needs.

    PYTHONPATH=. python bench/focal_silhouette.py --subject-dir results/talk_dfrf_cnn_en \
        --focals 1.5 2 4 10 --threads 1 --out bench/results/focal_silhouette_cnn.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from pipeline.core.artifacts import LABEL_FACE, PARSING_LABELS
from pipeline.core.config import TrackingConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess.tracking import track
from pipeline.stage1.io import Camera


def outline_features(labels: np.ndarray, mouth_row: np.ndarray) -> np.ndarray:
    """``[N, 3]``: per frame the topmost head row, and the leftmost / rightmost head columns among the rows above
    ``mouth_row`` (the outline of hair and skull, not the jaw); NaN where the head is missing (the top row also
    where the head reaches the crop's top edge)."""
    out = np.full((len(labels), 3), np.nan)
    for f, lab in enumerate(labels):
        head = np.asarray(lab) >= LABEL_FACE
        rows = np.flatnonzero(head.any(1))
        if not len(rows):
            continue
        if rows[0] > 0:         # a head cut by the crop's top edge has no top outline
            out[f, 0] = rows[0]
        upper = head[: max(int(mouth_row[f]), rows[0] + 1)]
        cols = np.flatnonzero(upper.any(0))
        if len(cols):
            out[f, 1], out[f, 2] = cols[0], cols[-1]
    return out


def fixed_point_fit(cam: Camera, obs, axis, train, test, start):
    """The head-space point whose projection's ``axis`` coordinate best fits ``obs`` on ``train``; RMS residuals."""
    ok = np.isfinite(obs)
    tr, te = np.flatnonzero(train & ok), np.flatnonzero(test & ok)

    def resid(x, frames):
        return cam.project(np.broadcast_to(x, (len(frames), 1, 3)), frames, cam.w)[:, 0, axis] - obs[frames]

    if len(tr) < 10 or len(te) < 2:
        return None
    sol = least_squares(resid, start, args=(tr,), x_scale=5.0)
    rms = lambda frames: float(np.sqrt(np.mean(resid(sol.x, frames) ** 2)))  # noqa: E731
    return {"train_rms_px": rms(tr), "test_rms_px": rms(te), "point_cm": np.round(sol.x, 2).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject-dir", type=Path, required=True)
    ap.add_argument("--focals", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0, 6.0, 10.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    files = SubjectLayout(args.subject_dir)
    cfg = TrackingConfig(device="cpu")     # the defaults (config.yaml's)
    labels = PARSING_LABELS.read(files.parsing.labels)["labels"]
    n = len(labels)
    report = {"subject": args.subject_dir.name, "frames": n, "features": ["top row", "left column", "right column"],
              "focals": {}}
    feats = None
    for k in args.focals:
        with tempfile.TemporaryDirectory() as tmp:
            m = track.run(files.landmarks.table, tmp, replace(cfg, focal_init=k, fit_focal=False),
                          crop_meta=files.crop.meta, meta=files.ingest.meta, threads=args.threads)
            cam = Camera(Path(tmp) / "transforms.json")
        frames = np.arange(n)
        train = (frames >= cam.split["train"][0]) & (frames < cam.split["train"][1])
        test = (frames >= cam.split["test"][0]) & (frames < cam.split["test"][1])
        if feats is None:   # the mouth's row from the tracked head: 4 cm below the head origin's projection
            mouth_row = cam.project(np.tile([[[0.0, -4.0, 0.0]]], (n, 1, 1)), frames, cam.w)[:, 0, 1]
            feats = outline_features(labels, mouth_row)
        row = {"reproj_mean_px": round(m["reproj_mean_px"], 4), "jitter_rot_deg": round(m["jitter_rot_deg"], 4),
               "distance_cm": round(float(np.median(np.linalg.norm(cam.head_to_cam[:, :3, 3], axis=1))), 1)}
        for j, (name, axis, start) in enumerate((("top", 1, [0, 12, -6]), ("left", 0, [-9, 3, -6]),
                                                 ("right", 0, [9, 3, -6]))):
            row[name] = fixed_point_fit(cam, feats[:, j], axis, train, test, np.array(start, float))
        used = [s for s in ("top", "left", "right") if row[s] is not None]
        row["test_rms_mean_px"] = round(float(np.mean([row[s]["test_rms_px"] for s in used])), 4)
        row["train_rms_mean_px"] = round(float(np.mean([row[s]["train_rms_px"] for s in used])), 4)
        report["focals"][f"{k:g}"] = row
        print(f"focal {k:g} x W = {cam.focal:.0f} px: reprojection {row['reproj_mean_px']:.3f} px, distance "
              f"{row['distance_cm']} cm, outline RMS train {row['train_rms_mean_px']:.3f} / test "
              f"{row['test_rms_mean_px']:.3f} px", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
