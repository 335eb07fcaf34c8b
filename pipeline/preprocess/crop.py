"""Rule ``crop_faces``: one fixed square face crop per clip, 25 fps, resized to ``crop.size``.

The NeRF assumes a static camera, so the crop window never moves. It is chosen from face boxes
found by mediapipe's face detector (BlazeFace short range, the ``face_detector.tflite`` member of
``face_landmarker.task``; offline, see :mod:`pipeline.preprocess.mediapipe_models`) on every ``detect_every``-th
frame, streamed from ``ingest/video.mp4``:

* side = median face box width / ``face_fraction`` (the face is about half the crop wide, so the
  head, some hair and the shoulders are in view);
* horizontally centred on the median face centre; vertically the face centre sits at
  ``face_center_y`` of the crop (a bit above the middle);
* where the window leaves the image the border is replicated (ffmpeg ``fillborders=smear``) and
  the padding recorded, in source px (``padding``) and as the valid region in output px.

Writes ``crop/video.mp4`` (one ffmpeg pass: crop, pad, smear, lanczos scale; x264 CRF <= 14 or
lossless), ``crop/boxes.parquet`` (:data:`~pipeline.core.artifacts.CROP_BOXES`) and ``crop/crop.json``
(:data:`~pipeline.core.artifacts.CROP_META`). Refused, naming the frames, with nothing written: no face
(faces on fewer than ``min_face_fraction`` of the sampled frames), a second face on more than
``max_second_face_fraction`` of them, the face box crossing the image border (face leaving the image).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import CROP_BOXES, CROP_META, INGEST_META, Provenance, atomic_output, config_hash
from pipeline.core.cli import guarded, parser
from pipeline.core.config import CropConfig, from_mapping
from pipeline.core.errors import PipelineError, format_ranges
from pipeline.core.layout import CropFiles
from pipeline.core.progress import progress
from pipeline.preprocess import mediapipe_models as mp_models

log = logging.getLogger("pipeline.preprocess.crop")


class CropError(PipelineError):
    pass


@dataclass(frozen=True)
class Detections:
    """Face detections on the sampled frames (best face per frame)."""

    frame_idx: np.ndarray   # int32 [M]
    n_faces: np.ndarray     # int32 [M]
    score: np.ndarray       # float32 [M], 0 where no face
    box: np.ndarray         # float32 [M, 4] x0, y0, w, h in source px; NaN where no face


def detect_faces(video: Path, width: int, height: int, n_frames: int, cfg: CropConfig, fps: int = 25) -> Detections:
    """Run the face detector on every ``cfg.detect_every``-th frame (streamed, never all in RAM)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    task = mp_models.locate(mp_models.FACE_LANDMARKER, cfg.model_path)
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_buffer=mp_models.task_member(task, "face_detector.tflite")),
        min_detection_confidence=cfg.min_detection_confidence)
    k = cfg.detect_every
    expected = (n_frames + k - 1) // k
    n_faces, scores, boxes = [], [], []
    # select keeps frames 0, k, 2k ...; setpts renumbers them so ffmpeg neither drops nor duplicates any
    vf = f"select=not(mod(n\\,{k})),setpts=N/({fps}*TB)"
    with vision.FaceDetector.create_from_options(options) as detector, \
            progress(total=expected, desc="detect faces", unit="frame", leave=False) as bar:
        for chunk in media.iter_frames(video, width, height, vf=vf):
            for frame in chunk:
                dets = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
                found = sorted(dets.detections, key=lambda d: -d.categories[0].score)
                n_faces.append(len(found))
                if found:
                    b = found[0].bounding_box
                    scores.append(found[0].categories[0].score)
                    boxes.append((b.origin_x, b.origin_y, b.width, b.height))
                else:
                    scores.append(0.0)
                    boxes.append((np.nan,) * 4)
            bar.update(len(chunk))
    if abs(len(n_faces) - expected) > 1:
        raise CropError(video, f"decoded {len(n_faces)} sampled frames, expected {expected}")
    m = len(n_faces)
    return Detections(np.arange(m, dtype=np.int32) * k, np.asarray(n_faces, np.int32),
                      np.asarray(scores, np.float32), np.asarray(boxes, np.float32).reshape(m, 4))


def check_faces(det: Detections, width: int, height: int, cfg: CropConfig, video: Path) -> None:
    """Refuse clips that cannot be one person in front of a static camera; name the frames."""
    m, k = len(det.n_faces), cfg.detect_every
    has = det.n_faces > 0
    if not has.any():
        raise CropError(video, f"no face found on any of the {m} sampled frames (every {k}th)")
    if has.mean() < cfg.min_face_fraction:
        raise CropError(video, f"no face on {int((~has).sum())} of {m} sampled frames "
                               f"(frames {format_ranges(det.frame_idx[~has], k)})")
    two = det.n_faces >= 2
    if two.mean() > cfg.max_second_face_fraction:
        raise CropError(video, f"a second face on {int(two.sum())} of {m} sampled frames ({100 * two.mean():.0f} % > "
                               f"{100 * cfg.max_second_face_fraction:.0f} %): frames {format_ranges(det.frame_idx[two], k)}")
    x0, y0, w, h = (det.box[has, i] for i in range(4))
    tol_x, tol_y = cfg.edge_tolerance * w, cfg.edge_tolerance * h
    out = (x0 < -tol_x) | (y0 < -tol_y) | (x0 + w > width + tol_x) | (y0 + h > height + tol_y)
    if out.any():
        raise CropError(video, f"the face leaves the image (box outside the {width}x{height} frame) on "
                               f"{int(out.sum())} sampled frames: frames {format_ranges(det.frame_idx[has][out], k)}")


def choose_window(det: Detections, width: int, height: int, cfg: CropConfig, video: Path | str = "") -> dict:
    """The fixed square window (source px), its padding and where the face sits in it."""
    has = det.n_faces > 0
    x0, y0, w, h = (np.median(det.box[has, i]) for i in range(4))
    cx, cy = x0 + w / 2, y0 + h / 2
    side = int(round(w / cfg.face_fraction))
    wx0 = int(round(cx - side / 2))
    wy0 = int(round(cy - cfg.face_center_y * side))
    pad = {"left": max(0, -wx0), "top": max(0, -wy0),
           "right": max(0, wx0 + side - width), "bottom": max(0, wy0 + side - height)}
    if pad["left"] + pad["right"] >= side or pad["top"] + pad["bottom"] >= side:
        raise CropError(video, f"crop window {side}px at ({wx0}, {wy0}) does not overlap the {width}x{height} image")
    scale = cfg.size / side
    valid = [pad["left"] * scale, pad["top"] * scale, (side - pad["right"]) * scale, (side - pad["bottom"]) * scale]
    # boxes of the face that leave the window: allowed (the head moves), but worth a line in the log
    bx0, by0, bw, bh = (det.box[has, i] for i in range(4))
    outside = (bx0 < wx0) | (by0 < wy0) | (bx0 + bw > wx0 + side) | (by0 + bh > wy0 + side)
    if outside.any():
        log.warning("face box leaves the crop window on %d sampled frames: %s",
                    int(outside.sum()), format_ranges(det.frame_idx[has][outside], cfg.detect_every))
    return {
        "window": [wx0, wy0, side],
        "padding": pad,
        "valid_box": [round(v, 3) for v in valid],
        "scale": scale,
        "face_box": [float(v) for v in (x0, y0, w, h)],
        "face_fraction": float(w / side),
    }


def crop_filter(window: list[int], padding: dict, size: int, lossless: bool) -> str:
    """ffmpeg filter: crop the in-image part, pad to the square window, replicate the border, scale."""
    wx0, wy0, side = window
    ix0, iy0 = wx0 + padding["left"], wy0 + padding["top"]
    iw, ih = side - padding["left"] - padding["right"], side - padding["top"] - padding["bottom"]
    parts = ["format=yuv444p", f"crop={iw}:{ih}:{ix0}:{iy0}:exact=1"]
    if any(padding.values()):
        parts += [f"pad={side}:{side}:{padding['left']}:{padding['top']}",
                  "fillborders=left={left}:right={right}:top={top}:bottom={bottom}:mode=smear".format(**padding)]
    parts += [f"scale={size}:{size}:flags=lanczos", "setsar=1", f"format={'yuv444p' if lossless else 'yuv420p'}"]
    return ",".join(parts)


def run(video: Path | str, meta: Path | str, outdir: Path | str, cfg: CropConfig = CropConfig()) -> dict:
    """Crop ``video`` (ingest/video.mp4) into ``outdir`` (video.mp4, boxes.parquet, crop.json)."""
    video, outdir = Path(video), Path(outdir)
    ing = INGEST_META.read(meta)
    info = media.probe(video).video
    if info is None:
        raise CropError(video, "no video stream")
    width, height, n_frames, fps = info.width, info.height, int(ing["n_frames"]), int(ing["fps"])

    det = detect_faces(video, width, height, n_frames, cfg, fps)
    check_faces(det, width, height, cfg, video)
    win = choose_window(det, width, height, cfg, video)
    log.info("%s: face %.0f px wide -> window %s (padding %s) -> %d px", video, win["face_box"][2],
             win["window"], win["padding"], cfg.size)

    prov = Provenance(ing["source_sha256"], config_hash(cfg))
    with ExitStack() as stack:  # the three files appear together or not at all
        files = CropFiles(outdir)
        tmp_video = stack.enter_context(atomic_output(files.video))
        tmp_boxes = stack.enter_context(atomic_output(files.boxes))
        tmp_meta = stack.enter_context(atomic_output(files.meta))
        vf = crop_filter(win["window"], win["padding"], cfg.size, cfg.lossless)
        crf = 0 if cfg.lossless else cfg.crf
        media.run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-an", "-vf", vf, "-r", str(fps),
                          "-c:v", "libx264", "-preset", cfg.preset, "-crf", str(crf),
                          "-movflags", "+faststart", str(tmp_video)], video)
        out = media.probe(tmp_video).video
        if out is None or out.n_frames != n_frames:
            raise CropError(video, f"cropped video has {out.n_frames if out else 0} frames, expected {n_frames}")
        CROP_BOXES.write(tmp_boxes, {
            "frame_idx": det.frame_idx, "n_faces": det.n_faces, "score": det.score,
            "x0_px": det.box[:, 0], "y0_px": det.box[:, 1], "w_px": det.box[:, 2], "h_px": det.box[:, 3],
        }, prov)
        doc = {"source_size": [width, height], **win, "size": cfg.size, "fps": fps, "n_frames": n_frames,
               "detect_every": cfg.detect_every, "n_sampled": len(det.frame_idx)}
        CROP_META.write(tmp_meta, doc, prov)
    return doc


def main(argv: list[str] | None = None) -> None:
    args = parser("Fixed square face crop of an ingested clip.", ["video", "meta", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.video, args.meta, args.outdir, from_mapping(CropConfig, args.config, "crop")))


if __name__ == "__main__":
    main()
