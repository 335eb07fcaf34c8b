"""Rule ``cache_frames``: decode the crop video and the label maps once into memory-mappable uint8 caches.

``results/<s>/stage2/{frames.npy, labels.npy, cache.json}`` at ``stage2.image_size`` (0 = the crop size):
frames ``[N, S, S, 3]`` RGB (area resize), labels ``[N, S, S]`` (nearest resize). Training memory-maps both
(``np.load(mmap_mode='r')``), so host RAM stays bounded for any clip length (a 5-minute clip at 512² is a
5.9 GB file on disk, a few MB resident). This runs on the CPU side (ffmpeg through ``pipeline.core.media``); the GPU
job (``pipeline.stage2.train``) then needs torch, numpy, pandas, pyarrow and opencv only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.artifacts import (PARSING_LABEL_NAMES, STAGE2_CACHE, STAGE2_FRAMES, STAGE2_LABELS, ArtifactError,
                                     Provenance, config_hash, file_sha256, npz_iter_rows)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import Stage2TrainConfig, stage2_configs
from pipeline.core.layout import Stage2Files
from pipeline.core.progress import progress

log = logging.getLogger("pipeline.stage2.cache")


def _labels_shape(path: Path) -> tuple[int, int, int]:
    import zipfile

    with zipfile.ZipFile(path) as zf, zf.open("labels.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return tuple(shape)  # type: ignore[return-value]


def _video_size(video: Path) -> tuple[int, int]:
    """(width, height) of the first video stream: PyAV where installed, else OpenCV (GPU machines)."""
    try:
        from pipeline.core import media

        info = media.probe(video).video
        return (info.width, info.height) if info else (0, 0)
    except ImportError:
        cap = cv2.VideoCapture(str(video))
        try:
            if not cap.isOpened():
                raise ArtifactError(video, "OpenCV cannot open the video")
            return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()


def _iter_video(video: Path, w: int, h: int, chunk: int):
    """RGB frames in chunks: ffmpeg (imageio-ffmpeg) where installed, else OpenCV's own decoder."""
    try:
        import imageio_ffmpeg  # noqa: F401

        from pipeline.core import media
    except ImportError:
        cap = cv2.VideoCapture(str(video))
        try:
            while True:
                block = []
                for _ in range(chunk):
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    block.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not block:
                    return
                yield np.stack(block)
        finally:
            cap.release()
    yield from media.iter_frames(video, w, h, chunk=chunk)


def resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def run(video: Path | str, labels: Path | str, outdir: Path | str, cfg: Stage2TrainConfig = Stage2TrainConfig(),
        chunk: int = 32) -> dict:
    """Write ``frames.npy``, ``labels.npy`` and ``cache.json`` under ``outdir``; return cache.json's dict."""
    video, labels, outdir = Path(video), Path(labels), Path(outdir)
    files = Stage2Files(outdir)
    try:
        n, h, w = _labels_shape(labels)
    except (KeyError, OSError, ValueError) as exc:
        raise ArtifactError(labels, f"cannot read the label map header ({exc})") from exc
    if h != w:
        raise ArtifactError(labels, f"label maps are {w}x{h}; the crop must be square")
    size = cfg.image_size or h
    width, height = _video_size(video)
    if (width, height) != (w, h):
        raise ArtifactError(video, f"crop video is {width}x{height}, labels are {w}x{h}")
    prov = Provenance(file_sha256(video), config_hash({"image_size": size}))
    with STAGE2_FRAMES.create(files.frames, (n, size, size, 3)) as frames:
        i = 0
        for block in progress(_iter_video(video, w, h, chunk), desc="cache frames", unit="chunk"):
            if i + len(block) > n:
                raise ArtifactError(video, f"more frames than the {n} label maps of {labels}")
            for img in block:
                frames[i] = resize(img, size)
                i += 1
        if i != n:
            raise ArtifactError(video, f"decoded {i} frames, {labels} has {n} label maps")
    with STAGE2_LABELS.create(files.labels, (n, size, size)) as out:
        i = 0
        for block in npz_iter_rows(labels, "labels", chunk):
            for lab in block:
                out[i] = resize(lab, size, nearest=True)
                i += 1
    doc = {"n_frames": int(n), "size": int(size), "crop_size": int(h), "video_sha256": prov.source_sha256,
           "labels_sha256": file_sha256(labels), "label_names": list(PARSING_LABEL_NAMES)}
    STAGE2_CACHE.write(files.cache, doc, prov)
    log.info("cached %d frames at %d px (crop %d px) -> %s", n, size, h, outdir)
    return doc


def main(argv: list[str] | None = None) -> None:
    p = parser("Decode the crop video and label maps into uint8 .npy caches for stage 2.", ["video", "labels", "outdir"])
    args = p.parse_args(argv)
    _, cfg = stage2_configs(args.config)
    guarded(lambda: run(args.video, args.labels, args.outdir, cfg))


if __name__ == "__main__":
    main()
