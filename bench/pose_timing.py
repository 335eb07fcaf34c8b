"""Are the landmarks and the tracked head pose in time with the video? Their motion against the image's own.

    PYTHONPATH=. python bench/pose_timing.py --subject-dir S [--out OUT.json]

S is a preprocessed subject with the frame cache ``stage2/frames.npy`` (``python -m pipeline.stage2.cache``),
``landmarks/landmarks.parquet`` and ``tracking/{transforms.json,canonical.npz}``. The image motion of the face
from frame t to t+1 is measured without any model: phase correlation (OpenCV, Hann window) of a square around
the rigid landmarks (nose bridge, eye corners, forehead) of frame t in both frames. It is correlated, per image
axis, with the motion of (a) the mean of those landmarks and (b) the same points of the clip's mean canonical
shape projected with each frame's tracked camera, at whole-frame lags -1, 0, +1; a parabola through the three
correlations gives the fractional lag at which they peak (positive: the signal trails the video by that much).
A trailing pose puts the rendered head where the video had it a moment earlier (``bench/pose_lag.py`` measures
that on a trained head; ``stage2.pose_offset_frames`` takes the cameras later).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.artifacts import CANONICAL_LANDMARKS, LANDMARKS, N_LANDMARKS, STAGE2_FRAMES, TRANSFORMS
from pipeline.core.artifacts.store import fixed_list_column
from pipeline.core.layout import SubjectLayout

RIGID = [1, 4, 5, 6, 8, 9, 10, 33, 133, 151, 168, 195, 197, 263, 362]   # mediapipe mesh: nose, eye corners, brow


def image_motion(frames: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    """``[N - 1, 2]`` (dx, dy) px of the square of ``side`` px around ``centre[t]`` from frame t to t + 1."""
    win = cv2.createHanningWindow((side, side), cv2.CV_32F)
    h, w = frames.shape[1:3]
    out = np.zeros((len(frames) - 1, 2))
    grey = cv2.cvtColor(np.ascontiguousarray(frames[0]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    for t in range(len(frames) - 1):
        nxt = cv2.cvtColor(np.ascontiguousarray(frames[t + 1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
        x0 = int(np.clip(centre[t, 0] - side // 2, 0, w - side))
        y0 = int(np.clip(centre[t, 1] - side * 0.6, 0, h - side))
        out[t] = cv2.phaseCorrelate(grey[y0:y0 + side, x0:x0 + side], nxt[y0:y0 + side, x0:x0 + side], win)[0]
        grey = nxt
    return out


def peak_lag(img: np.ndarray, track: np.ndarray) -> list[float]:
    """Per axis, the fractional lag (frames) at which the motion of ``track [N, 2]`` best follows ``img``."""
    m, n = np.diff(track, axis=0), len(img)
    lags = []
    for j in range(2):
        r = [np.corrcoef(img[max(0, -k): n - max(0, k), j], m[max(0, k): n - max(0, -k), j])[0, 1] for k in (-1, 0, 1)]
        lags.append(round(float((r[2] - r[0]) / (2 * (2 * r[1] - r[0] - r[2]))), 3))
    return lags


def timing(subject_dir: Path) -> dict:
    files = SubjectLayout(subject_dir)
    frames = STAGE2_FRAMES.read(files.stage2.frames)
    tr = TRANSFORMS.read(files.tracking.transforms)
    k = frames.shape[1] / tr["w"]
    lms = fixed_list_column(LANDMARKS.read(files.landmarks.table), "landmarks", (N_LANDMARKS, 3))[..., :2] * k
    centre = lms[:, RIGID].mean(1)
    img = image_motion(frames, centre, int(round(160 * k / 2)) * 2)
    c2w = np.array([f["transform_matrix"] for f in tr["frames"]], np.float64)
    w2c = np.linalg.inv(c2w)
    shape = CANONICAL_LANDMARKS.read(files.tracking.canonical)["landmarks"][:, RIGID].mean(0)
    cam = np.einsum("nij,kj->nki", w2c[:, :3, :3], shape) + w2c[:, None, :3, 3]     # OpenGL: the camera looks down -z
    f, cx, cy = tr["focal_px"], tr["cx"], tr["cy"]
    proj = np.stack([cx + f * cam[..., 0] / -cam[..., 2], cy - f * cam[..., 1] / -cam[..., 2]], -1).mean(1) * k
    return {"frames": int(len(frames)), "landmarks_lag_frames_xy": peak_lag(img, centre),
            "tracked_pose_lag_frames_xy": peak_lag(img, proj)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = {"subject": args.subject_dir.name, **timing(args.subject_dir)}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
