"""Is the tracked head depth's fast part real motion or the landmark mesh changing shape? And what would a render
gain if its depth were smoothed (``tracking.depth_sigma``)?

    PYTHONPATH=. python bench/depth_steadiness.py --subject-dir S [--frames FRAMES --cache DIR] [--out OUT.json]

S is a preprocessed subject (``landmarks/``, ``crop/crop.json``, ``ingest/meta.json``, ``aus/aus.parquet``). The
clip is tracked again with ``depth_sigma: 0`` (the raw fit, into a temporary folder) and reported:

* ``blendshapes_predict_pose_r``: per pose parameter, how well a linear read-out of mediapipe's 52 blendshapes
  (high-passed, fitted on the train split) predicts the high-passed parameter on the test split. A head does not
  move away when it blinks; a pose whose fast part the expressions predict is the mesh changing shape.
* ``blink_triggered``: averages around the AU45 peaks (> 1.5) from 6 frames before to 6 after: the depth (%),
  the head's width at the eye row in the parsing labels (%, an image measure), and mediapipe's forehead (10) and
  chin (152) heights over the nose bridge (168), px.
* with ``--frames`` (the test-split render of a head trained on the raw poses: a RENDER_FRAMES npz or
  ``bench/gpu_eval_render.py``'s frames.tar) and ``--cache`` (a folder with ``stage2/{frames,labels}.npy`` at the
  render size): ``rescaled_render``, the per-frame mean PSNR of the head regions when each rendered frame is scaled
  about the head's image origin by raw depth / smoothed depth, for several sigmas: what smoothing the test poses
  alone would change, without training again.

BENCHMARKS.md, "Session 13", has the figures of talk_dfrf_cnn_en and talk_dfrf_macron_fr.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from bench import alignment_bound
from bench.pose_gauge import POSE, highpass
from pipeline.core.artifacts import (AUS, FACE_MODEL, INGEST_META, LANDMARKS, N_LANDMARKS, PARSING_LABELS,
                                     STAGE2_FRAMES, STAGE2_LABELS, TRACKS, fixed_list_column)
from pipeline.core.config import TrackingConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess.tracking.track import run as track

REGIONS = {**alignment_bound.REGIONS, "lips": lambda lab: lab == 5, "eyes": lambda lab: lab == 7}


def blendshape_readout(tracks, blend: np.ndarray, split: dict) -> dict:
    (a, b), (t0, t1) = split["train"], split["test"]
    A = np.c_[highpass(blend), np.ones(len(blend))]
    out = {}
    for k in POSE:
        y = highpass(np.log(tracks[k].to_numpy()) if k == "tz" else tracks[k].to_numpy())
        coef = np.linalg.lstsq(A[a:b], y[a:b], rcond=None)[0]
        out[k] = round(float(np.corrcoef(A[t0:t1] @ coef, y[t0:t1])[0, 1]), 3)
    return out


def blink_triggered(tracks, aus, lm: np.ndarray, labels: np.ndarray, lags=range(-6, 7, 2)) -> dict:
    n = min(len(tracks), len(aus), len(lm), len(labels))
    peaks, _ = find_peaks(aus["au45_r"].to_numpy()[:n], height=1.5, distance=8)
    peaks = peaks[(peaks >= max(-min(lags), 1)) & (peaks < n - max(lags))]
    width = []
    for i in range(n):                            # the head's width at the eye row (labels 3-7), px
        cols = np.flatnonzero(labels[i, int(round(lm[i, 168, 1]))] >= 3)
        width.append(cols[-1] - cols[0] if len(cols) else np.nan)
    signals = {"depth_pct": 100 * highpass(np.log(tracks["tz"].to_numpy()[:n])),
               "head_width_pct": 100 * highpass(np.log(np.asarray(width, float))),
               "forehead_over_bridge_px": highpass(lm[:n, 168, 1] - lm[:n, 10, 1]),
               "chin_below_bridge_px": highpass(lm[:n, 152, 1] - lm[:n, 168, 1])}
    out = {"blinks": len(peaks), "lags": list(lags)}
    for k, v in signals.items():
        out[k] = [round(float(np.nanmean(v[peaks + g])), 3) for g in lags]
    return out


def rescaled_render(render: np.ndarray, gt: np.ndarray, labels: np.ndarray, tracks, camera: dict, t0: int,
                    sigmas=(0, 3, 6, 9, 12)) -> dict:
    tz = tracks["tz"].to_numpy()
    f, cx, cy = camera["focal"], camera["cx"], camera["cy"]
    u0, v0 = f * tracks["tx"].to_numpy() / tz + cx, f * tracks["ty"].to_numpy() / tz + cy    # the head's origin
    out = {}
    for sigma in sigmas:
        smooth = np.exp(gaussian_filter1d(np.log(tz), sigma, mode="nearest")) if sigma else tz
        err = {k: [] for k in REGIONS}
        for i, img in enumerate(render):
            j = t0 + i
            k = tz[j] / smooth[j]                                  # new image scale over the rendered one
            M = np.float32([[k, 0, (1 - k) * u0[j]], [0, k, (1 - k) * v0[j]]])
            moved = cv2.warpAffine(img, M, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            d = (((moved.astype(np.float32) - gt[i].astype(np.float32)) / 255.0) ** 2).mean(-1)
            for name, region in REGIONS.items():
                m = region(labels[i])
                if m.any():
                    err[name].append(d[m].mean())
        out[str(sigma)] = {k: round(float(-10 * np.log10(np.mean(v))), 3) for k, v in err.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subject-dir", type=Path, required=True)
    ap.add_argument("--frames", type=Path)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.frames and not args.frames.is_file():
        raise SystemExit(f"{args.frames}: no such render")
    s = SubjectLayout(args.subject_dir)
    split = INGEST_META.read(s.ingest.meta)["split"]
    with tempfile.TemporaryDirectory() as tmp:
        m = track(s.landmarks.table, tmp, TrackingConfig(depth_sigma=0.0, device="cpu"), crop_meta=s.crop.meta,
                  meta=s.ingest.meta, threads=2)
        tracks = TRACKS.read_pandas(Path(tmp) / "tracks.parquet")
        model = FACE_MODEL.read(Path(tmp) / "face_model.npz")
    table = LANDMARKS.read(s.landmarks.table)
    lm = fixed_list_column(table, "landmarks", (N_LANDMARKS, 3))[..., :2]
    blend = fixed_list_column(table, "blendshapes", (52,)).astype(np.float64)
    aus = AUS.read_pandas(s.aus.table)
    labels = PARSING_LABELS.read(s.parsing.labels)["labels"]
    report = {"subject": str(args.subject_dir), "raw_reproj_mean_px": round(float(m["reproj_mean_px"]), 4),
              "blendshapes_predict_pose_r": blendshape_readout(tracks, blend[:len(tracks)], split),
              "blink_triggered": blink_triggered(tracks, aus, lm, labels)}
    print(json.dumps(report, indent=1), flush=True)
    if args.frames:
        t0, t1 = split["test"]
        cache = SubjectLayout(args.cache or args.subject_dir).stage2
        gt, lab = STAGE2_FRAMES.read(cache.frames), STAGE2_LABELS.read(cache.labels)
        camera = {"focal": float(model["focal_px"]), "cx": float(model["cx"]), "cy": float(model["cy"])}
        report["rescaled_render"] = rescaled_render(alignment_bound.read_frames(args.frames), np.asarray(gt[t0:t1]),
                                                    np.asarray(lab[t0:t1]), tracks, camera, t0)
        print(json.dumps(report["rescaled_render"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
