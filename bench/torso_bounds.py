"""How predictable is a clip's torso on its test split? Reference points for [torso-v2] (CPU, ~2 min at 512²).

    PYTHONPATH=. python bench/torso_bounds.py --subject-dir results/talk_dfrf_cnn_en --out bench/results/torso_bounds_cnn.json

Each row is a way to fill the torso layer of a test frame, composited over ``parsing/background.png`` and scored
like ``bench/gpu_eval_render.py`` (PSNR over the frame's torso (label 1) and neck (label 2) pixels, pooled):

* ``true_torso_at_<s>``: the frame's own torso (crop frame x matte) down- and up-sampled through s²: the
  ceiling of a torso model that works at s² and is upsampled;
* ``frame_minus_<k>``: the torso of the frame k frames earlier (how fast the torso changes);
* ``nearest_pose_train_frame``: the torso of the training frame whose head pose (z-scored) is closest;
* ``last_train_frame_affine_oracle``: the last training frame's torso, registered to the test frame by an affine
  warp fitted *on the test frame itself* (ECC on the torso pixels): what a rigid warp of one good texture
  could reach with perfect motion;
* ``mean_torso``: the train-split mean torso.

Also the neck-seam colour jump of the ground-truth frames themselves (``pipeline.render.compositing.seam_jump`` on
the band that ``seam_band`` draws from the true head labels and matte, the render's feather width): what a seam
as sharp as the real chin/collar edge measures. And the torso matte's horizontal centroid per 100-frame block (a framing change shows as a jump) and the
residual of a linear fit of the centroid from the head pose on the test split (can the pose place the torso?).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import LABEL_FACE, PARSING_LABELS, PARSING_TORSO, TRANSFORMS
from pipeline.core.config import RenderConfig
from pipeline.core.layout import SubjectLayout
from pipeline.core.media import read_frames_cv2
from pipeline.render import compositing
from pipeline.torso.model import read_poses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--every", type=int, default=2, help="score every k-th test frame")
    args = p.parse_args()
    s = SubjectLayout(args.subject_dir)
    doc = TRANSFORMS.read(s.tracking.transforms)
    (a, b), (t0, t1) = doc["split"]["train"], doc["split"]["test"]
    labels = PARSING_LABELS.read(s.parsing.labels)["labels"]
    alpha = PARSING_TORSO.read(s.parsing.torso)["alpha"]
    size = labels.shape[1]
    frames = np.stack(list(read_frames_cv2(s.crop.video, size, len(labels))))
    bg = cv2.cvtColor(cv2.imread(str(s.parsing.background)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    poses = read_poses(s.tracking.tracks)
    train, test = np.arange(a, b), np.arange(t0, t1, args.every)
    z = (poses - poses[train].mean(0)) / np.maximum(poses[train].std(0), 1e-6)

    def torso(j: int) -> tuple[np.ndarray, np.ndarray]:
        return frames[j].astype(np.float32) / 255, alpha[j].astype(np.float32) / 255

    def warp(rgb, a, m):
        flags, border = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE
        return (cv2.warpAffine(rgb, m, (size, size), flags=flags, borderMode=border),
                cv2.warpAffine(a, m, (size, size), flags=flags, borderMode=border))

    num = np.zeros((size, size, 3))
    den = np.zeros((size, size))
    for j in train:
        rgb, al = torso(j)
        num += rgb * al[..., None]
        den += al
    mean = (num / np.maximum(den, 1e-6)[..., None]).astype(np.float32), (den / len(train)).astype(np.float32)
    sums: dict[str, np.ndarray] = {}

    def add(name: str, rgb: np.ndarray, a: np.ndarray, i: int) -> None:
        comp = a[..., None] * rgb + (1 - a[..., None]) * bg
        se = ((comp - frames[i].astype(np.float32) / 255) ** 2).mean(-1)
        acc = sums.setdefault(name, np.zeros((2, 2)))
        for k, label in enumerate((1, 2)):
            m = labels[i] == label
            acc[k] += (se[m].sum(), m.sum())

    seam: list[float] = []
    grey = lambda j: cv2.cvtColor(frames[j], cv2.COLOR_RGB2GRAY).astype(np.float32) / 255  # noqa: E731
    for i in test:
        rgb, al = torso(i)
        for r in (128, 256):
            down = lambda x: cv2.resize(cv2.resize(x, (r, r), interpolation=cv2.INTER_AREA), (size, size))  # noqa: E731
            add(f"true_torso_at_{r}", down(rgb), down(al), i)
        for k in (1, 5, 25):
            add(f"frame_minus_{k}", *torso(i - k), i)
        add("nearest_pose_train_frame", *torso(int(train[np.argmin(((z[train] - z[i]) ** 2).sum(1))])), i)
        m = np.eye(2, 3, dtype=np.float32)
        try:
            _, m = cv2.findTransformECC(grey(i), grey(b - 1), m, cv2.MOTION_AFFINE,
                                        (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5),
                                        (labels[i] == 1).astype(np.uint8), 5)
        except cv2.error:
            pass
        add("last_train_frame_affine_oracle", *warp(*torso(b - 1), m), i)
        add("mean_torso", *mean, i)
        head_a = torch.from_numpy((labels[i] >= LABEL_FACE).astype(np.float32))[None, None]
        band = compositing.seam_band(head_a, torch.from_numpy(alpha[i] / 255.0).float()[None, None],
                                     max(1, int(round(RenderConfig().feather * size))))
        jump = compositing.seam_jump(torch.from_numpy(frames[i]).permute(2, 0, 1)[None].float() / 255, band)
        if jump is not None:
            seam.append(jump)
    rows = {name: {"torso_db": round(float(-10 * np.log10(v[0, 0] / v[0, 1])), 2),
                   "neck_db": round(float(-10 * np.log10(v[1, 0] / v[1, 1])), 2)} for name, v in sums.items()}
    xs = np.arange(size, dtype=np.float64)
    w = alpha.astype(np.float64).sum(1)                               # [N, W] column mass of the matte
    cx = (w * xs).sum(1) / np.maximum(w.sum(1), 1e-6)
    blocks = {f"{k}-{min(k + 100, len(cx))}": round(float(cx[k:k + 100].mean()), 1) for k in range(0, len(cx), 100)}
    x = np.c_[z, np.ones(len(z))]
    coef = np.linalg.lstsq(x[train], cx[train], rcond=None)[0]
    resid = x[np.arange(t0, t1)] @ coef - cx[t0:t1]
    out = {"subject_dir": str(args.subject_dir), "size": int(size), "train": [int(a), int(b)], "test": [int(t0), int(t1)],
           "scored_every": args.every, "rows": rows, "seam_jump_ground_truth": round(float(np.mean(seam)), 4), "torso_centroid_x_by_block": blocks,
           "centroid_x_from_pose_test_rms_px": round(float(np.sqrt((resid ** 2).mean())), 2),
           "centroid_x_test_std_px": round(float(cx[t0:t1].std()), 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
