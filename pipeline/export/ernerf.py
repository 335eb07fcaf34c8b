"""Rule ``export_ernerf``: a processed subject -> the ER-NeRF / TalkingGaussian dataset folder.

ER-NeRF (``data_utils/process.py`` + ``nerf_triplane/provider.py``) and TalkingGaussian, which reuses
its layout, train from ``<id>/`` holding, for every frame ``i`` (0-based, the crop video's frame i):
``ori_imgs/<i>.jpg`` and ``ori_imgs/<i>.lms`` (68 iBUG points, ``x y`` per line), ``parsing/<i>.png``,
``gt_imgs/<i>.jpg``, ``torso_imgs/<i>.png`` (RGBA), plus ``bc.jpg``, ``transforms_{train,val}.json``,
``au.csv`` (OpenFace), ``aud.wav`` and an audio-feature array. Their preparation needs BFM, OpenFace
and DeepSpeech/HuBERT by hand; this module writes the same folder from our artifacts:

* landmarks: :data:`MP_TO_IBUG68` picks the 68 iBUG points from mediapipe's 478 (table in
  docs/export.md); frames without landmarks take the nearest frame's; points clipped into the image;
* parsing: our labels -> their colour code, given (as they read it) in OpenCV's B, G, R order:
  head (labels 3-7: face, hair, lips, mouth, eyes) (255, 0, 0), neck (0, 255, 0), torso (0, 0, 255),
  background (255, 255, 255) - exactly the triplets ``process.py`` tests with ``cv2.imread``;
* gt_imgs = frame with background pixels replaced by ``bc.jpg``; torso_imgs = frame RGB + our soft
  torso+neck matte (head removed), RGB zeroed where alpha is 0;
* transforms: our per-frame camera-to-head matrices (OpenGL camera, head space in cm) are already
  their convention (camera-to-world, OpenGL, x right / y up / z towards the camera); the world is
  shifted to the centroid of the subject's face mesh (their BFM mean is centred) and scaled to metres
  (their ``trans / 10`` of a BFM in decimetres), split train = first ``int(N * 10 / 11)`` frames;
* audio: ``aud_hu.npy`` [N, 2, 1024] where audio/self.npz holds a HuBERT-large encoder; our windowed
  features [N, 16, D] always as ``aud_ours.npy`` (not a format ER-NeRF knows: see docs/export.md);
* au.csv: OpenFace's FeatureExtraction header and number format for the AUs of aus/aus.parquet, plus
  AU05/AU06/AU07 (which TalkingGaussian reads) from blendshapes, normalised like the aus stage.

Frames are streamed (decode, label and matte rows in chunks; writing in a thread pool); the folder is
built under a temporary name and renamed into place. ``export/ernerf.json`` (beside the folder - ER-NeRF
globs ``*.json`` inside it) records counts, scale and timing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict
from itertools import zip_longest
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import (AUDIO_FEATURES, AUS, AUS_STATS, EXPORT_ERNERF_STATS, FACE_MODEL, INGEST_META,
                                     LANDMARKS, N_BLENDSHAPES, N_LANDMARKS, PARSING_LABELS, PARSING_TORSO, TRANSFORMS,
                                     Provenance, config_hash, fixed_list_column, npz_iter_rows, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import ExportConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import SubjectLayout
from pipeline.core.progress import progress

log = logging.getLogger("pipeline.export.ernerf")


class ExportError(PipelineError):
    pass


# mediapipe FaceMesh index of each iBUG-68 point (subject's right = image left comes first, as in iBUG).
MP_TO_IBUG68 = np.array([
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # 0-16 face contour
    70, 63, 105, 66, 107,                 # 17-21 right brow (image left), outer -> inner, upper edge
    336, 296, 334, 293, 300,              # 22-26 left brow, inner -> outer
    168, 197, 5, 4,                       # 27-30 nose bridge, top -> tip
    98, 97, 2, 326, 327,                  # 31-35 nose base, image left -> right
    33, 160, 158, 133, 153, 144,          # 36-41 right eye: outer corner, upper lid x2, inner corner, lower x2
    362, 385, 387, 263, 373, 380,         # 42-47 left eye: inner corner, upper lid x2, outer corner, lower x2
    61, 40, 37, 0, 267, 270, 291,         # 48-54 outer lips: corner, upper lip, corner
    321, 314, 17, 84, 91,                 # 55-59 outer lower lip, image right -> left
    78, 81, 13, 311, 308,                 # 60-64 inner lips: corner, upper, corner
    402, 14, 178,                         # 65-67 inner lower lip, image right -> left
], dtype=np.int32)
assert len(MP_TO_IBUG68) == 68

# Our label value (pipeline.core.artifacts LABEL_*) -> ER-NeRF parsing colour as a cv2 (B, G, R) triplet.
ERNERF_HEAD, ERNERF_NECK, ERNERF_TORSO, ERNERF_BACKGROUND = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
LABEL_TO_ERNERF_BGR = np.array([ERNERF_BACKGROUND, ERNERF_TORSO, ERNERF_NECK] + [ERNERF_HEAD] * 5, np.uint8)

AU_NAMES = ("au01_r", "au02_r", "au04_r", "au12_r", "au15_r", "au20_r", "au25_r", "au26_r", "au45_r")
EXTRA_AUS = {"au05_r": ("eyeWideLeft", "eyeWideRight"), "au06_r": ("cheekSquintLeft", "cheekSquintRight"),
             "au07_r": ("eyeSquintLeft", "eyeSquintRight")}
FRAME_DIRS = ("ori_imgs", "gt_imgs", "parsing", "torso_imgs")


# ----------------------------------------------------------------------------- per-frame tables

def read_landmarks(path: Path, n: int):
    table = LANDMARKS.read(path)
    if len(table) < n:
        raise ExportError(path, f"{len(table)} rows, the export needs {n}")
    return table.slice(0, n)


def ibug68(table, path: Path, w: int, h: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """68-point landmarks [n, 68, 2] (crop px, inside the image), detected [n], filled frames, clipped points."""
    pts = fixed_list_column(table, "landmarks", (N_LANDMARKS, 3))[:, MP_TO_IBUG68, :2].astype(np.float64)
    detected = table.column("detected").to_numpy(zero_copy_only=False).astype(bool)
    ok = np.isfinite(pts).all(axis=(1, 2))
    if not ok.any():
        raise ExportError(path, "no frame has landmarks")
    filled = int((~ok).sum())
    if filled:  # nearest frame with landmarks (long gaps the landmark stage left as NaN)
        good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
        j = np.searchsorted(good, bad)
        before, after = good[np.clip(j - 1, 0, len(good) - 1)], good[np.clip(j, 0, len(good) - 1)]
        pts[bad] = pts[np.where(np.abs(bad - before) <= np.abs(after - bad), before, after)]
    lo, hi = np.zeros(2), np.array([w - 1, h - 1], float)
    clipped = int(((pts < lo) | (pts > hi)).any(-1).sum())
    return np.clip(pts, lo, hi), detected, filled, clipped


def ernerf_poses(c2h: np.ndarray, centre_cm: np.ndarray, scale: float) -> np.ndarray:
    """Camera-to-head (OpenGL, cm) -> ER-NeRF camera-to-world: world = (head - centre) * scale."""
    out = np.array(c2h, np.float64, copy=True)
    out[:, :3, 3] = (out[:, :3, 3] - centre_cm) * scale
    return out


def train_stop(n: int) -> int:
    """ER-NeRF's split (process.py): the first int(n * 10 / 11) frames train, the rest validate."""
    return int(n * 10 / 11)


def write_transforms(out: Path, poses: np.ndarray, focal: float, cx: float, cy: float, w: int, h: int) -> int:
    stop = train_stop(len(poses))
    for name, ids in (("train", range(0, stop)), ("val", range(stop, len(poses)))):
        doc = {"focal_len": float(focal), "cx": float(cx), "cy": float(cy), "h": int(h), "w": int(w),
               "frames": [{"img_id": i, "aud_id": i, "transform_matrix": np.round(poses[i], 8).tolist()} for i in ids]}
        (out / f"transforms_{name}.json").write_text(json.dumps(doc, indent=2))
    return stop


def extra_aus(table, aus_json: Path) -> dict[str, np.ndarray]:
    """AU05 / AU06 / AU07 (which TalkingGaussian reads) from mediapipe blendshapes, normalised like aus/.

    eyeWide -> AU05 upper lid raiser, cheekSquint -> AU06 cheek raiser, eyeSquint -> AU07 lid tightener
    (both sides averaged); gaps filled, smoothed and mapped to 0-5 with the aus stage's own config.
    """
    from pipeline.core.config import ActionUnitsConfig
    from pipeline.preprocess import au_signals as au

    cfg = ActionUnitsConfig(**AUS_STATS.read(aus_json)["config"])
    bs = au.fill_gaps(fixed_list_column(table, "blendshapes", (N_BLENDSHAPES,)))
    out = {}
    for name, shapes in EXTRA_AUS.items():
        m = au.Mapping(name, shapes)
        out[name] = au.normalise(au.smooth(au.blendshape_signal(bs, m), cfg.smooth_sigma), cfg)[0]
    return out


def write_au_csv(path: Path, files: SubjectLayout, table, detected: np.ndarray, fps: int) -> list[str]:
    """au.csv as OpenFace's FeatureExtraction writes it: ', '-separated, 1-based frame, fixed decimals."""
    aus = AUS.read(files.aus.table)
    n = len(detected)
    if len(aus) < n:
        raise ExportError(files.aus.table, f"{len(aus)} rows, the export needs {n}")
    cols = {c: aus.column(c).to_numpy()[:n].astype(np.float64) for c in AU_NAMES}
    cols.update(extra_aus(table, files.aus.stats))
    names = sorted(cols)                   # OpenFace sorts its AU names: AU01_r, AU02_r, AU04_r, AU05_r, ...
    vals = np.stack([cols[c] for c in names], 1)
    if not np.isfinite(vals).all():
        raise ExportError(files.aus.table, f"non-finite AU on frame {int(np.flatnonzero(~np.isfinite(vals).all(1))[0])}")
    header = ["frame", "face_id", "timestamp", "confidence", "success"] + [f"AU{c[2:4]}_r" for c in names]
    lines = [", ".join(header)]
    for i in range(n):
        ok = int(detected[i])
        lines.append(", ".join([str(i + 1), "0", f"{i / fps:.3f}", f"{ok:.2f}", str(ok)]
                               + [f"{v:.2f}" for v in vals[i]]))
    path.write_text("\n".join(lines) + "\n")
    return [header[0]] + [" " + c for c in header[1:]]


def write_audio(out: Path, files: SubjectLayout, n: int, fps: int) -> list[str]:
    """aud.wav (16 kHz, trimmed to n frames), aud_ours.npy and the encoder array where there is one."""
    import soundfile as sf

    samples, sr = sf.read(str(files.sync.audio), dtype="float32", always_2d=True)  # aligned to the video
    if sr != 16000:
        raise ExportError(files.sync.audio, f"sample rate {sr}, expected 16000")
    media.write_wav(out / "aud.wav", samples[: int(round(n / fps * sr)), 0], sr)
    feats = AUDIO_FEATURES.read(files.audio.features())
    if len(feats["features"]) < n:
        raise ExportError(files.audio.features(), f"{len(feats['features'])} frames, the export needs {n}")
    written = ["aud.wav", "aud_ours.npy"]
    np.save(out / "aud_ours.npy", np.ascontiguousarray(feats["features"][:n], np.float32))
    if "encoder" in feats:
        enc, name = feats["encoder"][:n], str(feats.get("encoder_name", "encoder"))
        target = "aud_hu.npy" if name == "hubert" and enc.shape[2] == 1024 else f"aud_{name}.npy"
        np.save(out / target, np.ascontiguousarray(enc, np.float32))
        written.append(target)
    return written


# ----------------------------------------------------------------------------- frames

def _rows(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for c in chunks:
        yield from c


def write_frame(out: Path, i: int, rgb: np.ndarray, label: np.ndarray, alpha: np.ndarray, bc_bgr: np.ndarray,
                lms: np.ndarray, quality: int) -> None:
    import cv2

    jpg = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ok = cv2.imwrite(str(out / "ori_imgs" / f"{i}.jpg"), bgr, jpg)
    np.savetxt(out / "ori_imgs" / f"{i}.lms", lms, "%f")
    ok &= cv2.imwrite(str(out / "parsing" / f"{i}.png"), LABEL_TO_ERNERF_BGR[label])
    gt = bgr.copy()
    bg = label == 0
    gt[bg] = bc_bgr[bg]
    ok &= cv2.imwrite(str(out / "gt_imgs" / f"{i}.jpg"), gt, jpg)
    torso = np.dstack([bgr, alpha])
    torso[alpha == 0, :3] = 0
    ok &= cv2.imwrite(str(out / "torso_imgs" / f"{i}.png"), torso)
    if not ok:
        raise ExportError(out, f"frame {i}: OpenCV could not write an image")


def stream_frames(files: SubjectLayout, out: Path, n: int, w: int, h: int, bc_bgr: np.ndarray, lms68: np.ndarray,
                  cfg: ExportConfig) -> None:
    """Decode, label and matte rows in lockstep, written ``cfg.chunk`` frames at a time (bounded memory)."""
    end = object()
    video = media.iter_frames(files.crop.video, w, h, chunk=cfg.chunk)
    labels = npz_iter_rows(files.parsing.labels, "labels", cfg.chunk)
    alphas = npz_iter_rows(files.parsing.torso, "alpha", cfg.chunk)
    with closing(video), closing(labels), closing(alphas), ThreadPoolExecutor(max(1, cfg.workers)) as pool, \
            progress(total=n, desc="export frames", unit="frame") as bar:
        rows = zip_longest(_rows(video), _rows(labels), _rows(alphas), fillvalue=end)
        i = 0
        while i < n:
            batch = []
            while len(batch) < cfg.chunk and i + len(batch) < n:
                k = i + len(batch)
                rgb, lab, a = next(rows, (end, end, end))
                for obj, src in ((rgb, files.crop.video), (lab, files.parsing.labels), (a, files.parsing.torso)):
                    if obj is end:
                        raise ExportError(src, f"ends at frame {k}, the export needs {n}")
                if lab.shape != (h, w) or a.shape != (h, w):
                    raise ExportError(files.parsing.labels, f"frame {k}: maps {lab.shape}/{a.shape}, the video is {(h, w)}")
                batch.append((rgb, lab, a))
            futures = [pool.submit(write_frame, out, i + k, rgb, lab, a, bc_bgr, lms68[i + k], cfg.jpeg_quality)
                       for k, (rgb, lab, a) in enumerate(batch)]
            for f in futures:
                f.result()
            i += len(batch)
            bar.update(len(batch))


# ----------------------------------------------------------------------------- run

def run(subject_dir: Path | str, outdir: Path | str, stats_path: Path | str | None = None,
        cfg: ExportConfig = ExportConfig()) -> dict:
    """Export ``subject_dir`` (results/<s>) into ``outdir`` (…/export/ernerf); returns the stats dict."""
    import cv2

    t0 = time.perf_counter()
    files = SubjectLayout(subject_dir)
    outdir = Path(outdir)
    stats_path = Path(stats_path) if stats_path else outdir.with_suffix(".json")
    meta = INGEST_META.read(files.ingest.meta)
    fps = int(meta["fps"])
    tr = TRANSFORMS.read(files.tracking.transforms)
    w, h = int(tr["w"]), int(tr["h"])
    n_all = len(tr["frames"])
    if n_all != int(meta["n_frames"]):
        raise ExportError(files.tracking.transforms, f"{n_all} frames, ingest/meta.json has {meta['n_frames']}")
    n = n_all if cfg.max_frames == 0 else min(cfg.max_frames, n_all)
    c2h = np.array([f["transform_matrix"] for f in tr["frames"][:n]], np.float64)
    fm = FACE_MODEL.read(files.tracking.face_model)
    centre = (fm["mean"] + fm["identity"])[:468].mean(0).astype(np.float64) if cfg.recenter else np.zeros(3)
    poses = ernerf_poses(c2h, centre, cfg.scale)
    bc_bgr = cv2.imread(str(files.parsing.background), cv2.IMREAD_COLOR)  # BGR already
    if bc_bgr is None or bc_bgr.shape[:2] != (h, w):
        raise ExportError(files.parsing.background, f"unreadable or not {w}x{h}")
    for spec, path in ((PARSING_LABELS, files.parsing.labels), (PARSING_TORSO, files.parsing.torso)):
        _check_rows(spec.name, path, n)
    table = read_landmarks(files.landmarks.table, n)
    lms68, detected, filled, clipped = ibug68(table, files.landmarks.table, w, h)

    tmp = outdir.with_name(f".{outdir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for d in FRAME_DIRS:
            (tmp / d).mkdir(parents=True)
        cv2.imwrite(str(tmp / "bc.jpg"), bc_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)])
        stop = write_transforms(tmp, poses, float(tr["focal_px"]), float(tr["cx"]), float(tr["cy"]), w, h)
        au_cols = write_au_csv(tmp / "au.csv", files, table, detected, fps)
        audio_files = write_audio(tmp, files, n, fps)
        t1 = time.perf_counter()
        stream_frames(files, tmp, n, w, h, bc_bgr, lms68, cfg)
        frame_sec = time.perf_counter() - t1
        if outdir.exists():
            shutil.rmtree(outdir)
        os.replace(tmp, outdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    seconds = time.perf_counter() - t0
    cam = poses[:, :3, 3]
    stats = {
        "n_frames": n, "train_frames": stop, "val_frames": n - stop, "size": [w, h], "fps": fps,
        "focal_len": float(tr["focal_px"]), "scale": cfg.scale, "centre_cm": np.round(centre, 4).tolist(),
        "camera_distance_mean": float(np.linalg.norm(cam, axis=1).mean()),
        "lms_filled_frames": filled, "lms_clipped_points": clipped,
        "frames_not_detected": int((~detected).sum()), "audio_files": audio_files, "au_columns": au_cols,
        "files": {d: len(os.listdir(outdir / d)) for d in FRAME_DIRS},
        "seconds": round(seconds, 2), "frames_per_sec": round(n / max(frame_sec, 1e-9), 1), "config": asdict(cfg),
    }
    try:
        prov = Provenance(read_provenance(files.landmarks.table).source_sha256, config_hash(cfg))
    except PipelineError:
        prov = Provenance(str(meta["source_sha256"]), config_hash(cfg))
    EXPORT_ERNERF_STATS.write(stats_path, stats, prov)
    log.info("%s: %d frames (%d train / %d val) at %dx%d -> %s in %.1f s (%.1f frames/s written)", subject_dir,
             n, stop, n - stop, w, h, outdir, seconds, stats["frames_per_sec"])
    return stats


def _check_rows(name: str, path: Path, n: int) -> None:
    """The npz's frame_idx must cover 0..n-1 (read without the big key)."""
    import zipfile

    if not path.is_file():
        raise ExportError(path, "file not found")
    try:
        with zipfile.ZipFile(path) as zf, zf.open("frame_idx.npy") as f:
            idx = np.lib.format.read_array(f, allow_pickle=False)
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ExportError(path, f"{name}: cannot read frame_idx ({exc})") from exc
    if len(idx) < n or not np.array_equal(idx[:n], np.arange(n)):
        raise ExportError(path, f"{name}: frame_idx must start 0..{n - 1} ({len(idx)} rows)")


def main(argv: list[str] | None = None) -> None:
    p = parser("Export a processed subject as an ER-NeRF / TalkingGaussian dataset folder.",
               ["subject_dir", "outdir", "stats"])
    args = p.parse_args(argv)
    guarded(lambda: run(args.subject_dir, args.outdir, args.stats, from_mapping(ExportConfig, args.config, "export")))


if __name__ == "__main__":
    main()
