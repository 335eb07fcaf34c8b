"""Rule ``extract_aus``: facial action units on OpenFace's 0-5 intensity scale, without OpenFace.

Inputs: ``landmarks/landmarks.parquet`` (mediapipe's 52 blendshapes and 478 3D points per frame) and
``tracking/canonical.npz`` (the tracking's pose-free fitted shapes). Outputs: ``aus/aus.parquet``
(:data:`~pipeline.core.artifacts.AUS`) and ``aus/aus.json`` (:data:`~pipeline.core.artifacts.AUS_STATS`).

The AUs are computed by :func:`pipeline.preprocess.au_signals.compute`; the mappings, the geometry, their
combination, the normalisation and the blink detector are documented in :mod:`pipeline.preprocess.au_signals`.
Missing frames (landmark rows neither detected nor interpolated: NaN blendshapes and points) are
filled by linear interpolation in time between the nearest valid frames (held constant at the clip
ends) and flagged ``filled`` in aus.parquet, so every AU is finite on every frame.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import (AUS, AUS_STATS, CANONICAL_LANDMARKS, INGEST_META, LANDMARKS, N_BLENDSHAPES,
                                     N_LANDMARKS, Provenance, atomic_output, config_hash, fixed_list_column,
                                     read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import ActionUnitsConfig, IngestConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import AusFiles
from pipeline.preprocess.au_signals import AU_COLUMNS, GEOMETRY_COLUMNS, compute, eye_aspect_ratio, fill_gaps

log = logging.getLogger("pipeline.preprocess.action_units")


class ActionUnitsError(PipelineError):
    pass


def _points(values: np.ndarray, usable: np.ndarray, path: Path, what: str) -> np.ndarray:
    """[N, 478, 3] float64 with rows not ``usable`` (or not finite) interpolated in time."""
    pts = np.array(values, np.float64)
    usable = usable & np.isfinite(pts).all(axis=(1, 2))
    if usable.sum() < 2:
        raise ActionUnitsError(path, f"fewer than 2 frames with finite {what}")
    pts[~usable] = np.nan
    return fill_gaps(pts)


def read_inputs(landmarks: Path, canonical: Path | None) -> dict[str, np.ndarray]:
    """frame_idx [N], blendshapes [N, 52], mediapipe points and canonical points [N, 478, 3] (gaps
    filled in time; canonical absent when not given), filled [N] (frames without landmarks)."""
    table = LANDMARKS.read(landmarks)
    frame_idx = table.column("frame_idx").to_numpy().astype(np.int32)
    if len(frame_idx) < 2 or not np.array_equal(frame_idx, np.arange(len(frame_idx))):
        raise ActionUnitsError(landmarks, "frame_idx must be 0..N-1 with N >= 2")
    bs = fixed_list_column(table, "blendshapes", (N_BLENDSHAPES,)).astype(np.float64)
    detected = table.column("detected").to_numpy(zero_copy_only=False)
    interp = table.column("interpolated").to_numpy(zero_copy_only=False)
    valid = (detected | interp) & np.isfinite(bs).all(1)
    if valid.sum() < 2:
        raise ActionUnitsError(landmarks, f"only {int(valid.sum())} frames with blendshapes")
    out_of_range = np.flatnonzero(valid & ((bs < -1e-3) | (bs > 1 + 1e-3)).any(1))
    if len(out_of_range):
        raise ActionUnitsError(landmarks, f"blendshapes outside [0, 1] at frame {int(out_of_range[0])}")
    bs[~valid] = np.nan
    out = {"frame_idx": frame_idx, "blendshapes": fill_gaps(bs), "filled": ~valid,
           "landmarks": _points(fixed_list_column(table, "landmarks", (N_LANDMARKS, 3)), valid, landmarks, "landmarks")}
    if canonical is not None:
        canon = CANONICAL_LANDMARKS.read(canonical)
        if not np.array_equal(canon["frame_idx"], frame_idx):
            raise ActionUnitsError(canonical, f"frame_idx ({len(canon['frame_idx'])} frames) does not match "
                                              f"{landmarks} ({len(frame_idx)} frames)")
        if canon["landmarks"].shape[1:] != (N_LANDMARKS, 3):
            raise ActionUnitsError(canonical, f"landmarks have shape {canon['landmarks'].shape}, "
                                              f"expected [N, {N_LANDMARKS}, 3]")
        out["canonical"] = _points(canon["landmarks"], np.ones(len(frame_idx), bool), canonical, "landmarks")
    return out


def run(landmarks: Path | str, canonical: Path | str | None, outdir: Path | str,
        cfg: ActionUnitsConfig = ActionUnitsConfig(), *, meta: Path | str | None = None) -> dict:
    """Write ``outdir``/aus.parquet and aus.json from the landmarks (and the canonical track); return aus.json.

    ``canonical`` is required with ``geometry_source: canonical``; otherwise, where given, aus.json
    reports how well its eye aspect ratio agrees with the landmarks' (a check of the tracking).
    """
    landmarks, outdir = Path(landmarks), Path(outdir)
    canonical = Path(canonical) if canonical else None
    if cfg.geometry_source == "canonical" and canonical is None:
        raise ActionUnitsError(landmarks, "action_units.geometry_source is 'canonical' but no canonical.npz given")
    fps = float(INGEST_META.read(meta)["fps"]) if meta else float(IngestConfig().fps)
    data = read_inputs(landmarks, canonical)
    frame_idx, filled = data["frame_idx"], data["filled"]
    if filled.any():
        log.warning("%s: %d frames without landmarks interpolated in time: %s", landmarks, int(filled.sum()),
                    np.flatnonzero(filled)[:20].tolist())
    cols, stats = compute(data["blendshapes"], data[cfg.geometry_source], cfg, fps)
    for name in AU_COLUMNS + GEOMETRY_COLUMNS:
        if not np.isfinite(cols[name]).all():
            raise ActionUnitsError(landmarks, f"{name} not finite at frame {int(np.flatnonzero(~np.isfinite(cols[name]))[0])}")
    agreement = None
    if "canonical" in data:
        ears = [eye_aspect_ratio(data[k]) for k in ("landmarks", "canonical")]
        agreement = round(float(np.corrcoef(*ears)[0, 1]), 4) if min(e.std() for e in ears) > 0 else 0.0
    try:
        prov = Provenance(read_provenance(landmarks).source_sha256, config_hash(cfg))
    except PipelineError:
        prov = Provenance("unknown", config_hash(cfg))
    doc = {"n_frames": int(len(frame_idx)), "fps": fps, "duration_sec": len(frame_idx) / fps,
           "filled_frames": int(filled.sum()), "geometry_source": cfg.geometry_source,
           "canonical_ear_r": agreement, "blink_threshold": float(cfg.blink_threshold), **stats,
           "config": asdict(cfg)}
    with ExitStack() as stack:  # both files appear together or not at all
        files = AusFiles(outdir)
        tmp_table = stack.enter_context(atomic_output(files.table))
        tmp_json = stack.enter_context(atomic_output(files.stats))
        AUS.write(tmp_table, {"frame_idx": frame_idx, **cols, "filled": filled}, prov)
        AUS_STATS.write(tmp_json, doc, prov)
    peaks = {k: round(float(np.percentile(cols[k], 99)), 2) for k in AU_COLUMNS}
    log.info("%s: %d frames, %d blinks (%.1f / min), AU p99 %s, geometry r %s, canonical EAR r %s", landmarks,
             len(frame_idx), stats["blink_count"], stats["blinks_per_minute"], peaks,
             {k: v["r"] for k, v in stats["geometry_fit"].items()}, agreement)
    return doc


def main(argv: list[str] | None = None) -> None:
    args = parser("Action units (OpenFace 0-5 scale) from blendshapes and pose-free landmarks.",
                  ["landmarks", "canonical", "meta", "outdir"]).parse_args(argv)
    guarded(lambda: run(args.landmarks, args.canonical, args.outdir,
                        from_mapping(ActionUnitsConfig, args.config, "action_units"), meta=args.meta))


if __name__ == "__main__":
    main()
