"""How much of a test-split render's head error is misalignment: the PSNR each frame would have if the render were
shifted by the best whole-pixel offset, per region, and how those offsets move over time.

    PYTHONPATH=. python bench/alignment_bound.py --subject-dir S --frames FRAMES [--radius 3] [--out OUT.json]

S holds the frame cache ``stage2/{frames,labels}.npy`` at the render size (``python -m pipeline.stage2.cache``) and
``ingest/meta.json`` (the test split); FRAMES is the render of the test split, a RENDER_FRAMES npz or the
``frames.tar`` of JPEGs that ``bench/gpu_eval_render.py`` packs. For each frame and each region (head = labels
3-7, face, hair) the mean squared error is computed for every shift of the render within ``--radius`` px;
reported: the mean per-frame PSNR unshifted, at the best shift of that region, and for the hair at the face's
best shift (a rigid head moved as one would shift both alike), plus the best shifts' mean step between
consecutive frames (jitter: large steps; a slow drift of the tracked pose: small steps, large offsets).

The best of 49 shifts is an optimistic bound (it also fits noise), so read it as "at most this much". A render
that is sharp but a few pixels off scores below a blurred one at the same place; this separates the two.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.artifacts import INGEST_META, RENDER_FRAMES, STAGE2_FRAMES, STAGE2_LABELS
from pipeline.core.layout import SubjectLayout

REGIONS = {"head": lambda lab: lab >= 3, "face": lambda lab: lab == 3, "hair": lambda lab: lab == 4}


def read_frames(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        return np.asarray(RENDER_FRAMES.read(path)["frames"])
    with tarfile.open(path) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))
        imgs = [cv2.imdecode(np.frombuffer(tar.extractfile(n).read(), np.uint8), cv2.IMREAD_COLOR) for n in names]
    return np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2RGB) for i in imgs])


def shift_errors(img: np.ndarray, gt: np.ndarray, masks: dict[str, np.ndarray], radius: int) -> dict:
    """``{region: [2r+1, 2r+1]}`` mean squared error of ``img`` moved by (dy, dx) against ``gt`` (floats 0-1)."""
    h, w = gt.shape[:2]
    r = radius
    out = {k: np.full((2 * r + 1, 2 * r + 1), np.nan) for k in masks}
    core = (slice(r, h - r), slice(r, w - r))     # pixels every shift covers
    g = gt[core]
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            d = ((img[r - dy:h - r - dy, r - dx:w - r - dx] - g) ** 2).mean(-1)
            for k, m in masks.items():
                mk = m[core]
                if mk.any():
                    out[k][dy + r, dx + r] = d[mk].mean()
    return out


def bound(render: np.ndarray, gt: np.ndarray, labels: np.ndarray, radius: int = 3) -> dict:
    psnr = lambda mse: float(-10 * np.log10(max(mse, 1e-12)))   # noqa: E731
    rows = []
    for img, ref, lab in zip(render, gt, labels):
        masks = {k: f(lab) for k, f in REGIONS.items()}
        e = shift_errors(img.astype(np.float32) / 255, ref.astype(np.float32) / 255, masks, radius)
        row = {}
        for k, m in e.items():
            if np.isnan(m).all():
                continue
            best = np.unravel_index(np.nanargmin(m), m.shape)
            row[k] = {"psnr": psnr(m[radius, radius]), "psnr_best": psnr(m[best]),
                      "shift": (int(best[0] - radius), int(best[1] - radius))}
        if "face" in e and "hair" in e and "face" in row:
            dy, dx = row["face"]["shift"]
            row["hair_at_face_shift"] = psnr(e["hair"][dy + radius, dx + radius])
        rows.append(row)
    summary = {}
    for k in REGIONS:
        rs = [r[k] for r in rows if k in r]
        shifts = np.array([r["shift"] for r in rs], float)
        summary[k] = {"psnr": round(float(np.mean([r["psnr"] for r in rs])), 2),
                      "psnr_best_shift": round(float(np.mean([r["psnr_best"] for r in rs])), 2),
                      "mean_abs_shift_px": round(float(np.abs(shifts).sum(1).mean()), 2),
                      "mean_step_between_frames_px": round(float(np.abs(np.diff(shifts, axis=0)).sum(1).mean()), 2)}
    hf = [r["hair_at_face_shift"] for r in rows if "hair_at_face_shift" in r]
    summary["hair"]["psnr_at_face_shift"] = round(float(np.mean(hf)), 2)
    return {"frames": len(rows), "radius_px": radius, "regions": summary,
            "shifts": {k: [r[k]["shift"] for r in rows if k in r] for k in ("face", "hair")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject-dir", required=True, type=Path)
    p.add_argument("--frames", required=True, type=Path)
    p.add_argument("--radius", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    files = SubjectLayout(args.subject_dir)
    t0, t1 = INGEST_META.read(files.ingest.meta)["split"]["test"]
    render = read_frames(args.frames)
    gt, labels = STAGE2_FRAMES.read(files.stage2.frames), STAGE2_LABELS.read(files.stage2.labels)
    if render.shape[1:3] != gt.shape[1:3] or len(render) != t1 - t0:
        raise SystemExit(f"{args.frames}: {render.shape} does not match the test split {t0}-{t1} at {gt.shape[1]} px")
    result = bound(render, np.asarray(gt[t0:t1]), np.asarray(labels[t0:t1]), args.radius)
    print(json.dumps(result["regions"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
