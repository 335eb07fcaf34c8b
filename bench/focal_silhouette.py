"""Which focal length explains how the head's outline moves? (CPU, no model.)

The tracker fits one focal length from the landmarks, which barely constrain it: the face is a few cm deep,
so a nearer camera with a wider lens (or a farther one with a longer lens) fits them almost as well. The hair and
the skull's outline sit 5-15 cm behind the face, so there the two differ: a wrong focal makes a sideways or
vertical move of the head swing the outline by a wrong parallax, which no rigid head can follow.

For each focal (x crop width) this tracks the clip again with that focal fixed (``track.run``, the subject's
defaults otherwise), then takes three outline features per frame from the parsing labels (labels 3-7): the row of
the head's topmost pixel and the columns of its leftmost and rightmost pixels above the mouth. Each is treated as
a fixed point of the head: the point in head space whose projection through the tracked cameras best fits the
train frames (least squares on that one image coordinate), scored by its RMS residual on train and test frames.
The focal whose cameras let a fixed point follow the outline best is the one the rendered hair needs.

    PYTHONPATH=. python bench/focal_silhouette.py --subject-dir results/talk_dfrf_cnn_en \
        --focals 1.5 2 3 4 6 10 --out bench/results/focal_silhouette_cnn.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from pipeline.core.artifacts import INGEST_META, LABEL_FACE, PARSING_LABELS, TRANSFORMS
from pipeline.core.config import TrackingConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess.tracking import track


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


def project(c2w: np.ndarray, x: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """``[N, 2]`` pixels of head-space point ``x`` (cm) through camera-to-head ``c2w [N, 4, 4]`` (OpenGL axes)."""
    r, t = c2w[:, :3, :3], c2w[:, :3, 3]
    p = np.einsum("nji,nj->ni", r, x[None] - t)            # camera axes: x right, y up, z backwards
    return np.stack([cx + focal * p[:, 0] / -p[:, 2], cy - focal * p[:, 1] / -p[:, 2]], 1)


def fixed_point_fit(c2w, obs, axis, focal, cx, cy, train, test, start):
    """The head-space point whose projection's ``axis`` coordinate best fits ``obs`` on ``train``; RMS residuals."""
    ok = np.isfinite(obs)
    tr, te = train & ok, test & ok

    def resid(x, sel):
        return project(c2w[sel], x, focal, cx, cy)[:, axis] - obs[sel]

    if tr.sum() < 10 or te.sum() < 2:
        return None
    sol = least_squares(resid, start, args=(tr,), x_scale=5.0)
    rms = lambda sel: float(np.sqrt(np.mean(resid(sol.x, sel) ** 2)))
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
    split = INGEST_META.read(files.ingest.meta)["split"]
    n = len(labels)
    idx = np.arange(n)
    train = (idx >= split["train"][0]) & (idx < split["train"][1])
    test = (idx >= split["test"][0]) & (idx < split["test"][1])
    report = {"subject": args.subject_dir.name, "frames": n, "features": ["top row", "left column", "right column"],
              "focals": {}}
    feats = None
    for k in args.focals:
        with tempfile.TemporaryDirectory() as tmp:
            m = track.run(files.landmarks.table, tmp, replace(cfg, focal_init=k, fit_focal=False),
                          crop_meta=files.crop.meta, meta=files.ingest.meta, threads=args.threads)
            tr = TRANSFORMS.read(Path(tmp) / "transforms.json")
        c2w = np.array([f["transform_matrix"] for f in tr["frames"]], np.float64)
        f, cx, cy = tr["focal_px"], tr["cx"], tr["cy"]
        if feats is None:   # the mouth's row from the tracked head: 4 cm below the head origin's projection
            mouth_row = project(c2w, np.array([0.0, -4.0, 0.0]), f, cx, cy)[:, 1]
            feats = outline_features(labels, mouth_row)
        row = {"reproj_mean_px": round(m["reproj_mean_px"], 4), "jitter_rot_deg": round(m["jitter_rot_deg"], 4),
               "distance_cm": round(float(np.median(np.linalg.norm(c2w[:, :3, 3], axis=1))), 1)}
        for j, (name, axis, start) in enumerate((("top", 1, [0, 12, -6]), ("left", 0, [-9, 3, -6]),
                                                 ("right", 0, [9, 3, -6]))):
            row[name] = fixed_point_fit(c2w, feats[:, j], axis, f, cx, cy, train, test, np.array(start, float))
        used = [s for s in ("top", "left", "right") if row[s] is not None]
        row["test_rms_mean_px"] = round(float(np.mean([row[s]["test_rms_px"] for s in used])), 4)
        row["train_rms_mean_px"] = round(float(np.mean([row[s]["train_rms_px"] for s in used])), 4)
        report["focals"][f"{k:g}"] = row
        print(f"focal {k:g} x W = {f:.0f} px: reprojection {row['reproj_mean_px']:.3f} px, distance "
              f"{row['distance_cm']} cm, outline RMS train {row['train_rms_mean_px']:.3f} / test "
              f"{row['test_rms_mean_px']:.3f} px", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
