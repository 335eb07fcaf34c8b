"""Do the landmarks, the tracked pose and the parsing labels keep time with the video? No model involved.

    PYTHONPATH=. python bench/pose_timing.py --subject-dir S [--frames 600] [--out OUT.json]

S is a preprocessed subject with the frame cache ``stage2/frames.npy`` (``python -m pipeline.stage2.cache``; its
labels ``stage2/labels.npy`` are the parsing labels at the cache size), ``landmarks/landmarks.parquet`` and
``tracking/{transforms.json,canonical.npz}``. Over the first ``--frames`` frames:

* **labels**: the image edge strength (Sobel magnitude) along the head outline (labels >= 3) of frame t + d,
  laid on frame t, for d = -2 .. 2. Labels in time with the video peak at d = 0; a matte that trails the
  video fits the next frame's edges better (the causal EMA before 2026-12-03 peaked at d = +1).
* **pose**: the rigid landmarks (nose, eye corners, brow) of the clip's mean canonical shape projected with the
  tracked camera of time t + tau (``pipeline.stage2.data.time_shift_c2w``) against frame t's landmarks, mean
  error in px, for tau = -0.5 .. 0.75. A pose in time with the landmarks is closest at tau = 0.
* **landmarks**: the face's image motion from t to t + 1 (phase correlation around the rigid landmarks)
  against the landmarks' own motion, correlated at lags -1, 0, +1, and the fractional lag of the parabola's
  peak (positive: the landmarks trail). Only for unsmoothed signals: temporal smoothing alone moves this
  estimate (a centred Gaussian of 2 frames reads as +0.4), so it is not applied to the smoothed pose.
  It is also too weak to see a lag of half a frame: mediapipe's video mode trails by ~0.4 frame and read +0.05 /
  +0.13 here. ``bench/landmark_modes.py`` checks the landmarks against per-frame detection instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.artifacts import (CANONICAL_LANDMARKS, LANDMARKS, N_LANDMARKS, STAGE2_FRAMES, STAGE2_LABELS,
                                     TRANSFORMS)
from pipeline.core.artifacts.store import fixed_list_column
from pipeline.core.layout import SubjectLayout
from pipeline.core.metrics import RIGID_IDS
from pipeline.stage2.data import time_shift_c2w

RING = np.ones((3, 3), np.uint8)


def edges(frame: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def label_timing(frames: np.ndarray, labels: np.ndarray, lags=(-2, -1, 0, 1, 2)) -> dict[str, float]:
    """Mean edge strength of frame t along the head outline of labels t + d, per d."""
    r = max(abs(d) for d in lags)
    sums = dict.fromkeys(lags, 0.0)
    for t in range(r, len(frames) - r):
        e = edges(frames[t])
        for d in lags:
            m = (np.asarray(labels[t + d]) >= 3).astype(np.uint8)
            sums[d] += float(e[(cv2.dilate(m, RING) - cv2.erode(m, RING)).astype(bool)].mean())
    return {f"{d:+d}": round(v / (len(frames) - 2 * r), 3) for d, v in sums.items()}


def pose_timing(c2w: np.ndarray, shape: np.ndarray, lms: np.ndarray, focal: float, cx: float, cy: float,
                taus=(-0.5, -0.25, 0.0, 0.25, 0.5, 0.75)) -> dict[str, float]:
    """Mean px error of ``shape [K, 3]`` (head space) projected with the cameras at t + tau against frame t's
    landmarks ``lms [N, K, 2]``."""
    out = {}
    for tau in taus:
        w2c = np.linalg.inv(time_shift_c2w(c2w, tau))
        cam = np.einsum("nij,kj->nki", w2c[:, :3, :3], shape) + w2c[:, None, :3, 3]   # OpenGL: looks down -z
        uv = np.stack([cx + focal * cam[..., 0] / -cam[..., 2], cy - focal * cam[..., 1] / -cam[..., 2]], -1)
        out[f"{tau:+.2f}"] = round(float(np.linalg.norm(uv - lms, axis=-1).mean()), 4)
    return out


def image_motion(frames: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    """``[N - 1, 2]`` (dx, dy) px of the square of ``side`` px around ``centre[t]`` from frame t to t + 1."""
    win = cv2.createHanningWindow((side, side), cv2.CV_32F)
    h, w = frames.shape[1:3]
    out = np.zeros((len(frames) - 1, 2))
    for t in range(len(frames) - 1):
        x0 = int(np.clip(centre[t, 0] - side // 2, 0, w - side))
        y0 = int(np.clip(centre[t, 1] - side * 0.6, 0, h - side))
        a, b = (cv2.cvtColor(np.ascontiguousarray(frames[t + k]), cv2.COLOR_RGB2GRAY)[y0:y0 + side, x0:x0 + side]
                .astype(np.float32) for k in (0, 1))
        out[t] = cv2.phaseCorrelate(a, b, win)[0]
    return out


def landmark_lag(img: np.ndarray, track: np.ndarray) -> list[float]:
    """Per axis, the fractional lag (frames) at which the motion of ``track [N, 2]`` best follows ``img``."""
    m, n = np.diff(track, axis=0), len(img)
    lags = []
    for j in range(2):
        r = [np.corrcoef(img[max(0, -k): n - max(0, k), j], m[max(0, k): n - max(0, -k), j])[0, 1] for k in (-1, 0, 1)]
        lags.append(round(float((r[2] - r[0]) / (2 * (2 * r[1] - r[0] - r[2]))), 3))
    return lags


def timing(subject_dir: Path, n: int) -> dict:
    files = SubjectLayout(subject_dir)
    frames = STAGE2_FRAMES.read(files.stage2.frames)[:n]
    labels = STAGE2_LABELS.read(files.stage2.labels)[:n]
    tr = TRANSFORMS.read(files.tracking.transforms)
    k = frames.shape[1] / tr["w"]
    rigid = list(RIGID_IDS)
    lms = fixed_list_column(LANDMARKS.read(files.landmarks.table), "landmarks", (N_LANDMARKS, 3))[:, rigid, :2]
    c2w = np.array([f["transform_matrix"] for f in tr["frames"]], np.float64)
    shape = CANONICAL_LANDMARKS.read(files.tracking.canonical)["landmarks"][:, rigid].mean(0)
    centre = lms[:len(frames)].mean(1) * k
    return {"frames": int(len(frames)),
            "label_outline_edge_strength_by_lag": label_timing(frames, labels),
            "pose_reprojection_px_by_time_shift": pose_timing(c2w, shape, lms, tr["focal_px"], tr["cx"], tr["cy"]),
            "landmarks_lag_frames_xy": landmark_lag(image_motion(frames, centre, int(round(160 * k / 2)) * 2), centre)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = {"subject": args.subject_dir.name, **timing(args.subject_dir, args.frames)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
