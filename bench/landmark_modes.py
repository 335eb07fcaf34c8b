"""detect_landmarks in mediapipe's image and video running modes on the same frames: lag, jitter, blinks, time.

    PYTHONPATH=. python bench/landmark_modes.py --video results/<s>/crop/video.mp4 [--frames 0] [--out OUT.json]

Both modes run :func:`pipeline.preprocess.face_landmarker.landmark_chunk` on the first ``--frames`` frames
(0 = all) of a crop video. ``image`` finds the face in every frame on its own and so keeps time with the
video by construction; ``video`` tracks it from frame to frame and smooths the points (mediapipe's causal
One-Euro filter). Reported:

* **lag**: the video-mode points of frame t against the image-mode points interpolated at t - tau, RMS px over
  the rigid points (nose, eye corners, brow) for tau = -1 .. 1; the best tau is how far video mode trails.
  Also the median over the 10 % fastest frames of (video - image) projected on the frame's motion, in
  frames (negative: trails).
* **jitter**: RMS of the second time difference of the rigid points, px.
* **blinks**: the 1st percentile of the eye aspect ratio (``action_units``' lid gap / eye width): how far the
  eyes close.
* **seconds** per mode (one process, decoding included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.config import LandmarksConfig
from pipeline.core.metrics import RIGID_IDS
from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.preprocess.au_signals import eye_aspect_ratio
from pipeline.preprocess.face_landmarker import landmark_chunk

TAUS = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def shifted(x: np.ndarray, tau: float, t: np.ndarray) -> np.ndarray:
    """``x`` (frames first) linearly interpolated at times ``t - tau``."""
    s = t - tau
    lo = np.floor(s).astype(int)
    w = (s - lo).reshape(-1, *([1] * (x.ndim - 1)))
    return (1 - w) * x[lo] + w * x[lo + 1]


def compare(image: np.ndarray, video: np.ndarray) -> dict:
    """Lag, jitter and blink depth of ``video``-mode points against ``image``-mode points ([N, 478, 3] px)."""
    im, vi = image[:, list(RIGID_IDS), :2], video[:, list(RIGID_IDS), :2]
    t = np.arange(2, len(im) - 2)
    rms = {f"{tau:+.2f}": float(np.sqrt(np.nanmean((vi[t] - shifted(im, tau, t)) ** 2))) for tau in TAUS}
    motion = im[1:] - im[:-1]
    speed = np.sqrt(np.nanmean(motion ** 2, axis=(1, 2)))
    fast = np.argsort(np.nan_to_num(speed))[-max(1, len(speed) // 10):] + 1
    along = [np.nansum((vi[f] - im[f]) * motion[f - 1]) / np.nansum(motion[f - 1] ** 2) for f in fast]

    def jitter(x):
        return float(np.sqrt(np.nanmean(np.diff(x, 2, axis=0) ** 2)))

    def closed(x):  # the eye aspect ratio of action_units (lid gap / eye width, both eyes), 1st percentile
        return float(np.nanpercentile(eye_aspect_ratio(x), 1))

    return {"rms_px_video_vs_image_at_t_minus_tau": rms, "best_tau": float(TAUS[int(np.argmin(list(rms.values())))]),
            "fast_frames_offset_along_motion": float(np.nanmedian(along)),
            "jitter_px": {"image": jitter(im), "video": jitter(vi)},
            "eye_aspect_ratio_p1": {"image": closed(image), "video": closed(video)}}


def run(video: Path, frames: int = 0) -> dict:
    """Both running modes on the first ``frames`` frames (0 = all) of ``video``, compared."""
    info = media.probe(video).video
    n = frames or info.n_frames
    task = str(mp_models.locate(mp_models.FACE_LANDMARKER))
    pts, seconds, missing = {}, {}, {}
    for mode in ("image", "video"):
        t0 = time.perf_counter()
        out = landmark_chunk(str(video), info.width, 0, n, 25, task, LandmarksConfig(running_mode=mode))
        seconds[mode] = round(time.perf_counter() - t0, 2)
        pts[mode] = out["landmarks"]
        missing[mode] = int((~out["detected"]).sum())
    return {"video": str(video), "frames": n, "size": info.width, "seconds": seconds, "frames_without_face": missing,
            **compare(pts["image"], pts["video"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", required=True, type=Path)
    p.add_argument("--frames", type=int, default=0, help="frames from the start (0 = all)")
    p.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = p.parse_args()
    res = run(args.video, args.frames)
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
