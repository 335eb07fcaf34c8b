"""Rule ``detect_landmarks``: mediapipe FaceLandmarker on every frame of the crop -> landmarks.parquet.

The FaceLandmarker (Tasks API; ``running_mode`` image: each frame on its own, without the temporal filter
of mediapipe's video mode, which makes landmarks trail a moving head) gives per frame 478 points, 52
blendshape scores and the 4x4 facial transformation matrix. The model file comes from
:mod:`pipeline.preprocess.mediapipe_models`.

Contract (:data:`pipeline.core.artifacts.LANDMARKS`, one row per frame of ``crop/video.mp4``):
x, y in crop pixels, z = mediapipe's z (same normalised scale as x) times the crop width.
Missing frames are handled so every later stage can rely on the table:

* runs of up to ``max_gap`` missing frames are filled (linear between the neighbours; held at the
  clip ends) and flagged ``interpolated``;
* longer runs stay ``detected = interpolated = false`` with NaN values;
* more than ``max_missing_fraction`` of frames without a detection -> refused (LandmarksError
  naming the frame ranges), nothing written.

Work is split into contiguous chunks, one process each (``workers``; each runs
:func:`~pipeline.preprocess.face_landmarker.landmark_chunk` with its own landmarker; in video mode its
timestamps increase within its chunk); frames are streamed with ``media.iter_frames``, so
memory stays bounded whatever the clip length. ``landmarks/contact_sheet.png`` shows every n-th
frame with the mesh drawn, for a look by eye.
"""

from __future__ import annotations

import logging
import multiprocessing as mp_
import os
import queue as queue_
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import CROP_META, INGEST_META, LANDMARKS, Provenance, atomic_output, config_hash
from pipeline.core.cli import guarded, parser
from pipeline.core.config import LandmarksConfig, from_mapping
from pipeline.core.errors import format_ranges
from pipeline.core.layout import LandmarksFiles
from pipeline.core.progress import progress
from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.preprocess.face_landmarker import LandmarksError, init_worker, landmark_chunk

log = logging.getLogger("pipeline.preprocess.landmarks")


def worker_count(cfg: LandmarksConfig, n_frames: int, threads: int | None = None) -> int:
    """Processes to use: config, else the rule's threads, else all available cores; not too few frames each."""
    want = cfg.workers or threads or len(os.sched_getaffinity(0))
    return max(1, min(want, n_frames // cfg.min_frames_per_worker))


def detect_all(video: Path, size: int, n_frames: int, fps: int, task: Path, cfg: LandmarksConfig,
               workers: int, thumb_step: int = 0) -> dict[str, np.ndarray]:
    """Landmarks for all frames: contiguous chunks, one process each, merged in frame order (with the
    contact sheet's thumbnails, every ``thumb_step``-th frame)."""
    bounds = np.linspace(0, n_frames, workers + 1).round().astype(int)
    chunks = [(str(video), size, int(a), int(b), fps, str(task), cfg, None, thumb_step)
              for a, b in zip(bounds[:-1], bounds[1:])]
    with progress(total=n_frames, desc="landmarks", unit="frame") as bar:
        if workers == 1:
            parts = [landmark_chunk(*chunks[0][:7], bar.update, thumb_step)]
        else:
            ctx = mp_.get_context("spawn")  # mediapipe's threads do not survive fork()
            done = ctx.Queue()   # frames finished in the workers
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(done,)) as pool:
                futures = [pool.submit(landmark_chunk, *c) for c in chunks]
                while not all(f.done() for f in futures):
                    try:
                        bar.update(done.get(timeout=0.2))
                    except queue_.Empty:
                        pass
                parts = [f.result() for f in futures]
    parts.sort(key=lambda p: p["start"])
    keys = ("detected", "landmarks", "blendshapes", "pose", "thumbs", "thumb_idx")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def missing_runs(detected: np.ndarray) -> list[tuple[int, int]]:
    """Runs [start, stop) of frames without a detection."""
    d = np.concatenate([[True], detected.astype(bool), [True]])
    edges = np.flatnonzero(np.diff(d.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def fill_gaps(data: dict[str, np.ndarray], max_gap: int) -> np.ndarray:
    """Fill runs of <= ``max_gap`` missing frames in place (linear; held at the ends); return the mask."""
    detected = data["detected"]
    interpolated = np.zeros_like(detected)
    n = len(detected)
    for a, b in missing_runs(detected):
        if b - a > max_gap or (a == 0 and b == n):
            continue
        for key in ("landmarks", "blendshapes", "pose"):
            arr = data[key]
            if a == 0:
                arr[a:b] = arr[b]
            elif b == n:
                arr[a:b] = arr[a - 1]
            else:
                w = (np.arange(a, b) - (a - 1)) / (b - (a - 1))
                w = w.reshape(-1, *([1] * (arr.ndim - 1)))
                arr[a:b] = (1 - w) * arr[a - 1] + w * arr[b]
        interpolated[a:b] = True
    return interpolated


def sheet_step(n_frames: int, tiles: int) -> int:
    """Every how many frames the contact sheet shows one."""
    return max(1, -(-n_frames // tiles))


def contact_sheet(size: int, data: dict[str, np.ndarray], interpolated: np.ndarray) -> np.ndarray:
    """The thumbnails kept by the workers (``data["thumbs"]`` at frames ``data["thumb_idx"]``) with their
    mesh drawn, tiled into one RGB image."""
    import cv2
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    edges = np.array([(c.start, c.end) for c in C.FACE_LANDMARKS_TESSELATION])
    contours = np.array([(c.start, c.end) for c in C.FACE_LANDMARKS_CONTOURS])
    shown, frames = list(data["thumbs"]), data["thumb_idx"].tolist()
    tile = data["thumbs"].shape[1]
    cols = int(np.ceil(np.sqrt(len(frames))))
    rows = -(-len(frames) // cols)
    sheet = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for k, (idx, img) in enumerate(zip(frames, shown)):
        img = np.ascontiguousarray(img)
        pts = data["landmarks"][idx, :, :2] * (tile / size)
        ok = bool(np.isfinite(pts).all())
        if ok:
            colour = (255, 200, 0) if interpolated[idx] else (0, 255, 120)
            p = np.round(pts).astype(np.int32)
            cv2.polylines(img, [p[e] for e in edges], False, colour, 1, cv2.LINE_AA)
            cv2.polylines(img, [p[e] for e in contours], False, (255, 255, 255), 1, cv2.LINE_AA)
        label = f"{idx}" + ("" if ok and not interpolated[idx] else " interp" if ok else " missing")
        cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0) if ok else (255, 0, 0), 1)
        r, c = divmod(k, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img
    return sheet


def run(video: Path | str, crop_meta: Path | str, meta: Path | str, outdir: Path | str,
        cfg: LandmarksConfig = LandmarksConfig(), threads: int | None = None) -> dict:
    """Landmarks for every frame of ``video`` (crop/video.mp4) -> ``outdir``/{landmarks.parquet, contact_sheet.png}."""
    import cv2

    video, outdir = Path(video), Path(outdir)
    ing, crop = INGEST_META.read(meta), CROP_META.read(crop_meta)
    size, n_frames, fps = int(crop["size"]), int(crop["n_frames"]), int(crop["fps"])
    info = media.probe(video).video
    if info is None or (info.width, info.height) != (size, size):
        raise LandmarksError(video, f"expected a {size}x{size} video as crop.json says")
    task = mp_models.locate(mp_models.FACE_LANDMARKER, cfg.model_path)
    workers = worker_count(cfg, n_frames, threads)
    log.info("%s: %d frames, %d px, %d worker(s)", video, n_frames, size, workers)

    data = detect_all(video, size, n_frames, fps, task, cfg, workers, sheet_step(n_frames, cfg.contact_sheet_tiles))
    detected = data["detected"]
    missing = int((~detected).sum())
    if missing > cfg.max_missing_fraction * n_frames:
        runs = ", ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in missing_runs(detected)[:20])
        raise LandmarksError(video, f"no face landmarks on {missing} of {n_frames} frames "
                                    f"({100 * missing / n_frames:.1f} % > {100 * cfg.max_missing_fraction:.0f} %): "
                                    f"frames {runs}")
    interpolated = fill_gaps(data, cfg.max_gap)
    long_gaps = [(a, b) for a, b in missing_runs(detected) if not interpolated[a]]
    if long_gaps:
        log.warning("%s: %d frames left missing (NaN) in gaps longer than %d frames: %s", video,
                    sum(b - a for a, b in long_gaps), cfg.max_gap,
                    format_ranges([f for a, b in long_gaps for f in (a, b - 1)]))

    prov = Provenance(ing["source_sha256"], config_hash(cfg))
    with ExitStack() as stack:
        files = LandmarksFiles(outdir)
        tmp_table = stack.enter_context(atomic_output(files.table))
        tmp_sheet = stack.enter_context(atomic_output(files.sheet))
        LANDMARKS.write(tmp_table, {"frame_idx": np.arange(n_frames, dtype=np.int32), "detected": detected,
                                    "interpolated": interpolated, **{k: data[k] for k in ("landmarks", "blendshapes", "pose")}},
                        prov)
        sheet = contact_sheet(size, data, interpolated)
        if not cv2.imwrite(str(tmp_sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise LandmarksError(tmp_sheet, "could not write the contact sheet")
    summary = {"n_frames": n_frames, "detected": int(detected.sum()), "interpolated": int(interpolated.sum()),
               "missing": int((~detected & ~interpolated).sum()), "workers": workers}
    log.info("%s: %s", video, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = parser("478 face landmarks, blendshapes and head pose on every frame of the crop.",
               ["video", "crop_meta", "meta", "outdir"])
    p.add_argument("--threads", type=int, default=None, help="processes when landmarks.workers is 0")
    args = p.parse_args(argv)
    guarded(lambda: run(args.video, args.crop_meta, args.meta, args.outdir,
                        from_mapping(LandmarksConfig, args.config, "landmarks"), args.threads))


if __name__ == "__main__":
    main()
