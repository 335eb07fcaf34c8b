"""Rule ``parse_faces``: per-frame label maps, a background plate and torso mattes, without BiSeNet.

Inputs: ``crop/video.mp4`` (square face crop, 25 fps) and ``landmarks/landmarks.parquet``
(:data:`pipeline.core.artifacts.LANDMARKS`, x/y in crop px). Outputs in ``parsing/``:

* ``labels.npz`` (:data:`~pipeline.core.artifacts.PARSING_LABELS`): uint8 [N, H, W]; 0 background,
  1 torso, 2 neck, 3 face skin, 4 hair/other head, 5 lips, 6 mouth interior, 7 eyes. Built from
  mediapipe's selfie segmenter (ImageSegmenter, person confidence), the face-mesh polygons and the
  jaw-line geometry of :mod:`pipeline.preprocess.parsing.geometry`; streamed into the npz chunk by chunk.
* ``torso.npz`` (:data:`~pipeline.core.artifacts.PARSING_TORSO`): uint8 alpha [N, H, W] of torso+neck
  with the head removed. The RGB of the torso image is the crop frame itself, so only the alpha is
  stored (an RGBA copy would be 4x the size: 1.9 GB raw for a 71 s clip at 512^2).
* ``background.png``: temporal median of background pixels, holes inpainted (:mod:`pipeline.preprocess.parsing.background`).
* ``contact_sheet.png``: colour-coded label overlays on evenly spaced frames.
* ``stats.json`` (:data:`~pipeline.core.artifacts.PARSING_STATS`): label areas, flicker, plate error, speed.

Temporal stability: the person confidence is smoothed over time by a centred Gaussian (``matte_sigma``, a few
frames of look-ahead) and cut with narrow hysteresis thresholds; the mesh polygons are smoothed over time
(Gaussian), the shoulder line more strongly. Every filter is centred, so the labels keep time with the video:
a causal EMA (before 2026-12-03) made the outline trail the head by about a frame, and the head trained on
it trailed too (BENCHMARKS.md, session 10).
Memory is bounded by the chunk size plus the plate samples, whatever the clip length.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import (LABEL_NECK, LABEL_TORSO, LANDMARKS, N_LANDMARKS, PARSING_LABEL_NAMES,
                                     PARSING_LABELS, PARSING_STATS, PARSING_TORSO, Provenance, atomic_output,
                                     config_hash, file_sha256, fixed_list_column, npz_stream, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import ParsingConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import ParsingFiles
from pipeline.core.progress import progress
from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.preprocess.parsing.background import PlateAccumulator
from pipeline.preprocess.parsing.geometry import (HysteresisMatte, centred_smoothing, label_frame, shoulder_lines,
                                                  smooth_landmarks)

log = logging.getLogger("pipeline.preprocess.parsing.parse")

# Overlay colours (RGB) of the contact sheet, one per label value.
PALETTE = np.array([[0, 0, 0], [60, 120, 255], [255, 170, 0], [255, 220, 180], [140, 70, 20],
                    [230, 30, 60], [120, 0, 160], [0, 230, 120]], np.uint8)


class ParsingError(PipelineError):
    pass


class PersonSegmenter:
    """mediapipe ImageSegmenter (Tasks API, VIDEO mode): person confidence [H, W] in [0, 1] per frame."""

    def __init__(self, model: Path):
        from mediapipe.tasks.python import BaseOptions, vision

        opts = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model)), running_mode=vision.RunningMode.VIDEO,
            output_confidence_masks=True, output_category_mask=False)
        self._seg = vision.ImageSegmenter.create_from_options(opts)

    def __call__(self, frame: np.ndarray, t_ms: int) -> np.ndarray:
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        masks = self._seg.segment_for_video(image, t_ms).confidence_masks
        conf = np.array(masks[-1].numpy_view(), np.float32, copy=True)  # last (only) class: person
        return conf.reshape(frame.shape[:2])

    def close(self) -> None:
        self._seg.close()

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_landmarks(path: Path | str, n_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, 478, 3] from landmarks.parquet and bool [N]: rows that had no landmarks (NaN).

    frame_idx must be 0..N-1 (and N = ``n_frames`` if given). Rows left NaN by the landmark stage
    (gaps longer than its ``max_gap``) take the nearest valid row, so every frame gets a label map.
    """
    table = LANDMARKS.read(path)
    idx = table.column("frame_idx").to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        bad = int(np.argmax(idx != np.arange(len(idx)))) if len(idx) else 0
        raise ParsingError(path, f"frame_idx is not 0..N-1 (row {bad} has frame_idx {idx[bad] if len(idx) else '-'})")
    if n_frames is not None and len(idx) != n_frames:
        raise ParsingError(path, f"{len(idx)} landmark rows for {n_frames} video frames")
    pts = fixed_list_column(table, "landmarks", (N_LANDMARKS, 3)).astype(np.float32)
    missing = ~np.isfinite(pts).all(axis=(1, 2))
    if missing.all():
        raise ParsingError(path, "no frame has landmarks")
    if missing.any():
        valid = np.flatnonzero(~missing)
        nearest = valid[np.clip(np.searchsorted(valid, np.arange(len(pts))), 0, len(valid) - 1)]
        before = valid[np.clip(np.searchsorted(valid, np.arange(len(pts))) - 1, 0, len(valid) - 1)]
        rows = np.arange(len(pts))
        nearest = np.where(np.abs(before - rows) < np.abs(nearest - rows), before, nearest)
        pts = pts[nearest]
    return pts, missing


def overlay(frame: np.ndarray, labels: np.ndarray, strength: float = 0.55) -> np.ndarray:
    """RGB frame with non-background labels tinted by :data:`PALETTE`."""
    out = frame.astype(np.float32)
    m = labels > 0
    out[m] = (1 - strength) * out[m] + strength * PALETTE[labels[m]]
    return out.astype(np.uint8)


def contact_sheet(frames: list[np.ndarray], labels: list[np.ndarray], idx: list[int], cols: int = 4,
                  cell: int = 256) -> np.ndarray:
    """A grid of overlays (RGB uint8), each cell captioned with its frame index."""
    rows = -(-len(frames) // cols)
    sheet = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    for k, (f, lab, i) in enumerate(zip(frames, labels, idx)):
        img = cv2.resize(overlay(f, lab), (cell, cell), interpolation=cv2.INTER_NEAREST)
        cv2.putText(img, str(i), (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(k, cols)
        sheet[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = img
    return sheet


def write_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise ParsingError(path, "could not encode PNG")


def read_background(path: Path | str) -> np.ndarray:
    """The plate as RGB uint8 [H, W, 3]."""
    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ParsingError(path, "missing or unreadable PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def run(crop_video: Path | str, landmarks: Path | str, outdir: Path | str,
        cfg: ParsingConfig = ParsingConfig()) -> dict:
    """Parse every frame of ``crop_video`` into ``outdir``; return the stats dict (also stats.json)."""
    crop_video, landmarks, outdir = Path(crop_video), Path(landmarks), Path(outdir)
    files = ParsingFiles(outdir)
    info = media.probe(crop_video).video
    if info is None:
        raise ParsingError(crop_video, "no video stream")
    size = info.width
    if info.height != size:
        raise ParsingError(crop_video, f"crop is {info.width}x{info.height}, expected a square")
    pts, no_landmarks = load_landmarks(landmarks)
    n = len(pts)
    if no_landmarks.any():
        log.warning("%s: %d frames without landmarks take their nearest frame's mesh", landmarks, no_landmarks.sum())
    if abs(info.n_frames - n) > 1:
        raise ParsingError(landmarks, f"{n} landmark rows but {crop_video.name} has {info.n_frames} frames")
    if not (np.abs(pts[..., :2]) < 4 * size).all():
        raise ParsingError(landmarks, f"landmarks far outside the {size}px crop: not in crop pixels?")
    model = mp_models.locate(mp_models.SELFIE_SEGMENTER, cfg.model_path)
    try:
        source_sha = read_provenance(landmarks).source_sha256
    except PipelineError:
        source_sha = file_sha256(crop_video)
    prov = Provenance(source_sha, config_hash(cfg))

    smooth = smooth_landmarks(pts, cfg.landmark_sigma)
    shoulder = shoulder_lines(smooth, cfg.neck_length, cfg.shoulder_sigma)
    matte = HysteresisMatte(cfg.matte_lo, cfg.matte_hi)
    plate = PlateAccumulator(n, size, size, cfg.plate_samples, cfg.plate_min_count,
                             max(1, round(cfg.plate_margin * size)))
    sheet_idx = {int(i) for i in np.round(np.linspace(0, n - 1, min(cfg.contact_frames, n))).astype(int)}
    sheet_frames: list[np.ndarray] = []
    sheet_labels: list[np.ndarray] = []
    counts = np.zeros((n, len(PARSING_LABEL_NAMES)), np.int64)
    flicker = np.zeros(max(n - 1, 0))
    frame_idx = np.arange(n, dtype=np.int32)

    def segmented(seg: PersonSegmenter):
        """(frame, person confidence) of the first n frames (one more in the video is tolerated above)."""
        i, conf = 0, None
        for chunk in media.iter_frames(crop_video, size, size, chunk=cfg.chunk):
            for frame in chunk[:max(0, n - i)]:
                if conf is None or i % cfg.segment_stride == 0:
                    conf = seg(frame, i * 40)
                yield frame, conf
                i += 1

    t0, c0 = time.perf_counter(), time.process_time()
    i, prev = 0, None
    labs: list[np.ndarray] = []
    alphas: list[np.ndarray] = []
    shape, small = (n, size, size), {"frame_idx": frame_idx}
    with PersonSegmenter(model) as seg, \
            npz_stream(files.labels, PARSING_LABELS, {"labels": shape}, small, prov) as w_lab, \
            npz_stream(files.torso, PARSING_TORSO, {"alpha": shape}, small, prov) as w_tor, \
            progress(total=n, desc="parsing", unit="frame", disable=None) as bar:
        for frame, c in centred_smoothing(segmented(seg), cfg.matte_sigma):
            person = matte.update(c)
            lab = label_frame(person, smooth[i], float(shoulder[i]), cfg.neck_width)
            body = (lab == LABEL_TORSO) | (lab == LABEL_NECK)
            labs.append(lab)
            alphas.append(np.where(body, np.round(np.clip(c, 0, 1) * 255), 0).astype(np.uint8))
            counts[i] = np.bincount(lab.ravel(), minlength=len(PARSING_LABEL_NAMES))
            if prev is not None:
                flicker[i - 1] = np.count_nonzero(lab != prev) / lab.size
            prev = lab
            if plate.wants(i):
                plate.add(i, frame, lab)
            if i in sheet_idx:
                sheet_frames.append(frame.copy())
                sheet_labels.append(lab)
            i += 1
            if len(labs) == cfg.chunk or i == n:
                w_lab.append("labels", np.stack(labs))
                w_tor.append("alpha", np.stack(alphas))
                bar.update(len(labs))
                labs, alphas = [], []
        if i != n:
            raise ParsingError(crop_video, f"decoded {i} frames but {landmarks.name} has {n} rows")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0

    bg, seen = plate.finish()
    write_png(files.background, bg)
    write_png(files.sheet, contact_sheet(sheet_frames, sheet_labels, sorted(sheet_idx)))
    frac = counts / float(size * size)
    stats = {
        "n_frames": int(n), "size": int(size),
        "segmenter_model": str(model), "segmenter_sha256": file_sha256(model),
        "landmark_filled_frames": int(no_landmarks.sum()),
        "label_fraction_mean": {name: round(float(frac[:, v].mean()), 5) for v, name in enumerate(PARSING_LABEL_NAMES)},
        "label_missing_frames": {name: int((counts[:, v] == 0).sum()) for v, name in enumerate(PARSING_LABEL_NAMES)},
        "flicker_mean": round(float(flicker.mean()) if len(flicker) else 0.0, 6),
        "flicker_max": round(float(flicker.max()) if len(flicker) else 0.0, 6),
        "plate_mae_255": round(plate.sample_error(bg), 4),
        "plate_unseen_fraction": round(float((seen < cfg.plate_min_count).mean()), 5),
        "frames_per_sec": round(n / max(elapsed, 1e-9), 2),
        "frames_per_cpu_sec": round(n / max(cpu, 1e-9), 2),
    }
    PARSING_STATS.write(files.stats, stats, prov)
    log.info("%s: %d frames at %dpx, %.1f frames/s; flicker mean %.4f max %.4f; plate MAE %.2f/255",
             outdir, n, size, stats["frames_per_sec"], stats["flicker_mean"], stats["flicker_max"],
             stats["plate_mae_255"])
    return stats


def main(argv: list[str] | None = None) -> None:
    args = parser("Face parsing: label maps, background plate, torso mattes.",
                  ["crop_video", "landmarks", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.crop_video, args.landmarks, args.outdir,
                        from_mapping(ParsingConfig, args.config, "parsing")))


if __name__ == "__main__":
    main()
