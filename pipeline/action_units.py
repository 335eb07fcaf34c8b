"""Rule ``extract_aus``: facial action units on OpenFace's 0-5 intensity scale, without OpenFace.

Inputs: ``landmarks/landmarks.parquet`` (mediapipe's 52 blendshapes and 478 3D points per frame) and
``tracking/canonical.npz`` (the tracking's pose-free fitted shapes). Outputs: ``aus/aus.parquet``
(:data:`~pipeline.core.artifacts.AUS`) and ``aus/aus.json`` (:data:`~pipeline.core.artifacts.AUS_STATS`).

Mappings (blendshape names are mediapipe's / ARKit's; "L/R" = mean of the Left and Right scores;
point numbers are mediapipe face-mesh ids):

====  ==================  ====================================  =========================================
AU    FACS name           blendshape signal                     geometric cross-check (pose-free points)
====  ==================  ====================================  =========================================
01    inner brow raiser   browInnerUp                           -
02    outer brow raiser   browOuterUp L/R                       -
04    brow lowerer        browDown L/R                          -
12    lip corner puller   mouthSmile L/R                        -
15    lip corner depr.    mouthFrown L/R                        -
20    lip stretcher       mouthStretch L/R                      -
25    lips part           max(jawOpen - mouthClose, 0): in      ``lip_gap`` = |p13 - p14| (inner lips) in
                          ARKit's rig mouthClose closes the     face heights (below)
                          lips against an open jaw
26    jaw drop            jawOpen                               ``jaw_drop`` = |p1 - p152| (nose tip - chin)
                                                                in face heights
45    blink               eyeBlink L/R                          ``ear``, eye aspect ratio, mean of both eyes:
                                                                mean lid distance (159-145, 158-153, 160-144;
                                                                386-374, 385-380, 387-373) / corner distance
                                                                (33-133; 362-263)
====  ==================  ====================================  =========================================

Geometry is pose-free because it only uses ratios of 3D distances, which a similarity transform of
the frame's points (head rotation, translation, distance to the camera) leaves unchanged; lengths
are measured in units of the outer-eye-corner distance 33-263 (rigid) and expressed in the subject's
median face height (10-152). ``geometry_source`` picks the points: ``landmarks`` (default) =
mediapipe's 3D points, ``canonical`` = tracking/canonical.npz. The default is the raw points because
the tracking's fit (low-rank expression basis, temporal smoothness) flattens blinks: measured on the
Macron and German clips (256² crops, tracking defaults) the canonical EAR dips only 8-30 % at blinks
where mediapipe's points dip 55-95 %, and correlates with eyeBlink at -0.68/-0.56 against -0.93/-0.92.
aus.json's ``canonical_ear_r`` keeps track of that agreement.

Combination (AU25, AU26, AU45): the geometric signal ``g`` is mapped into blendshape units by a
per-subject robust affine fit ``b ~ slope * g + intercept`` (Huber IRLS; EAR gets a negative slope),
and the AU signal is ``(1 - w) * b + w * (slope * g + intercept)`` with ``w = lip_gap_weight`` (0.8)
for AU25 (lip separation is what AU25 is; the blendshape is the proxy) and ``geometry_weight`` (0.5)
for AU26 and AU45 (both signals measure them directly).
The geometry is a cross-check too: where its correlation with the blendshape has the wrong sign or
is weaker than ``min_geometry_r`` the AU falls back to the blendshape alone (recorded, logged).

AU45 measures closure relative to the current open-eye level: its centred running median over
``blink_baseline_sec`` (2 s) is subtracted, so slow lid changes (looking down at notes, head pitch)
do not read as blinks; blinks (3-6 frames) and closures up to ~1 s are kept.

Normalisation per subject, per AU (robust; OpenFace intensities sit near 0 at rest and reach 2-4
at clear activations): the signal's ``low_percentile`` (5) maps to 0 and its ``high_percentile``
(99) to ``high_value`` (4), linearly, clipped to [0, 5]. The span is floored at ``min_span``
blendshape units, so an AU the subject never shows stays near 0 instead of amplifying noise to full
scale. Optional centred Gaussian smoothing over time, ``smooth_sigma`` frames (1.0; AU45:
``blink_smooth_sigma``, 0), is applied before the normalisation.

Blinks: the AU45 peak of each excursion above ``blink_threshold`` (1.5); excursions less than
``blink_min_gap_sec`` (0.25 s) apart are one; an excursion longer than ``blink_max_sec`` (1 s), or
one the eye does not reopen from (AU45 back under half the peak's value within the gap, both sides),
is a lid that lowered and stayed lower, not a blink.

Missing frames (landmark rows neither detected nor interpolated: NaN blendshapes and points) are
filled by linear interpolation in time between the nearest valid frames (held constant at the clip
ends) and flagged ``filled`` in aus.parquet, so every AU is finite on every frame.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import (AUS, AUS_STATS, BLENDSHAPE_NAMES, CANONICAL_LANDMARKS, INGEST_META, LANDMARKS,
                                N_BLENDSHAPES, N_LANDMARKS, Provenance, atomic_output, config_hash,
                                fixed_list_column, read_provenance)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import ActionUnitsConfig, IngestConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import smooth_frames as smooth  # centred Gaussian over frames, edges held

log = logging.getLogger("pipeline.action_units")

AU_COLUMNS = ("au01_r", "au02_r", "au04_r", "au12_r", "au15_r", "au20_r", "au25_r", "au26_r", "au45_r")
GEOMETRY_COLUMNS = ("ear", "lip_gap", "jaw_drop")

# eye aspect ratio: (corner a, corner b, lid pairs) per eye, mediapipe mesh ids
EYES = ((33, 133, ((159, 145), (158, 153), (160, 144))),
        (362, 263, ((386, 374), (385, 380), (387, 373))))
UPPER_INNER_LIP, LOWER_INNER_LIP, NOSE_TIP, FOREHEAD, CHIN = 13, 14, 1, 10, 152
EYE_CORNERS = (33, 263)  # outer corners: a rigid per-frame length


@dataclass(frozen=True)
class Mapping:
    au: str                          # output column
    blendshapes: tuple[str, ...]     # averaged
    minus: tuple[str, ...] = ()      # averaged and subtracted (then clipped at 0)
    geometry: str | None = None      # a GEOMETRY_COLUMNS signal cross-checked and mixed in
    geometry_sign: int = 1           # expected sign of its correlation with the blendshape signal


MAPPINGS = (
    Mapping("au01_r", ("browInnerUp",)),
    Mapping("au02_r", ("browOuterUpLeft", "browOuterUpRight")),
    Mapping("au04_r", ("browDownLeft", "browDownRight")),
    Mapping("au12_r", ("mouthSmileLeft", "mouthSmileRight")),
    Mapping("au15_r", ("mouthFrownLeft", "mouthFrownRight")),
    Mapping("au20_r", ("mouthStretchLeft", "mouthStretchRight")),
    Mapping("au25_r", ("jawOpen",), minus=("mouthClose",), geometry="lip_gap"),
    Mapping("au26_r", ("jawOpen",), geometry="jaw_drop"),
    Mapping("au45_r", ("eyeBlinkLeft", "eyeBlinkRight"), geometry="ear", geometry_sign=-1),
)
assert tuple(m.au for m in MAPPINGS) == AU_COLUMNS


class ActionUnitsError(PipelineError):
    pass


# ----------------------------------------------------------------------------- signals

def fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames (axis 0) of rows with any non-finite value; ends held."""
    x = np.array(x, np.float64)
    flat = x.reshape(len(x), -1)
    ok = np.isfinite(flat).all(1)
    bad = np.flatnonzero(~ok)
    if len(bad):
        good = np.flatnonzero(ok)
        for j in range(flat.shape[1]):
            flat[bad, j] = np.interp(bad, good, flat[good, j])
    return flat.reshape(x.shape)


def eye_aspect_ratio(pts: np.ndarray) -> np.ndarray:
    """[N, 478, 3] -> [N]: mean over both eyes of mean lid distance / corner distance."""
    ears = []
    for a, b, lids in EYES:
        width = np.linalg.norm(pts[:, a] - pts[:, b], axis=-1)
        height = np.mean([np.linalg.norm(pts[:, u] - pts[:, d], axis=-1) for u, d in lids], axis=0)
        ears.append(height / np.maximum(width, 1e-9))
    return np.mean(ears, axis=0)


def geometry_signals(pts: np.ndarray) -> dict[str, np.ndarray]:
    """Pose-free geometric signals of [N, 478, 3] landmarks (see the module docstring).

    Only ratios of 3D distances are used, so a similarity transform of a frame's points (head
    rotation, translation, distance to the camera) leaves them unchanged.
    """
    dist = lambda i, j: np.linalg.norm(pts[:, i] - pts[:, j], axis=-1)  # noqa: E731
    scale = np.maximum(dist(*EYE_CORNERS), 1e-9)            # rigid per-frame length: outer eye corners
    face = float(np.median(dist(FOREHEAD, CHIN) / scale))   # the subject's face height in those units
    return {"ear": eye_aspect_ratio(pts),
            "lip_gap": dist(UPPER_INNER_LIP, LOWER_INNER_LIP) / scale / face,
            "jaw_drop": dist(NOSE_TIP, CHIN) / scale / face}


def blendshape_signal(bs: np.ndarray, m: Mapping) -> np.ndarray:
    col = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
    s = bs[:, [col[n] for n in m.blendshapes]].mean(1)
    if m.minus:
        s = np.maximum(s - bs[:, [col[n] for n in m.minus]].mean(1), 0.0)
    return s


def robust_affine(g: np.ndarray, b: np.ndarray, iters: int = 20, k: float = 1.345) -> tuple[float, float]:
    """Huber IRLS fit ``b ~ slope * g + intercept``; returns (slope, intercept)."""
    A = np.stack([g, np.ones_like(g)], 1)
    w = np.ones_like(g)
    coef = np.zeros(2)
    for _ in range(iters):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)[0]
        r = b - A @ coef
        scale = 1.4826 * np.median(np.abs(r - np.median(r)))
        if scale <= 1e-12:
            break
        u = np.abs(r) / (k * scale)
        w = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
    return float(coef[0]), float(coef[1])


def rolling_median(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running median over ``window`` frames (odd; edges held)."""
    from numpy.lib.stride_tricks import sliding_window_view

    r = max(0, window // 2)
    return np.median(sliding_window_view(np.pad(x, r, mode="edge"), 2 * r + 1), axis=1)


def normalise(x: np.ndarray, cfg: ActionUnitsConfig) -> tuple[np.ndarray, dict]:
    """Subject percentiles -> OpenFace-like 0-5 intensities (see the module docstring)."""
    lo, hi = np.percentile(x, [cfg.low_percentile, cfg.high_percentile])
    span = max(float(hi - lo), cfg.min_span)
    out = np.clip(cfg.high_value * (x - lo) / span, 0.0, 5.0)
    return out, {"low": float(lo), "high": float(hi), "span": span}


def detect_blinks(au45: np.ndarray, threshold: float, min_gap_frames: int, max_frames: int) -> np.ndarray:
    """Frame indices of blinks: the AU45 peak of each excursion above ``threshold``.

    Runs above the threshold closer than ``min_gap_frames`` are one excursion (a closure that
    wobbles); an excursion is a blink when it lasts at most ``max_frames`` and the eye reopens
    around it (AU45 under half the peak's value within ``min_gap_frames`` on both sides, or the
    clip ends there), so a lid that lowers and stays lower (looking down) is not counted.
    """
    x = np.asarray(au45, np.float64)
    above = np.concatenate([[False], x > threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    runs: list[list[int]] = []
    for start, end in zip(edges[::2], edges[1::2]):
        if runs and start - runs[-1][1] < max(1, min_gap_frames):
            runs[-1][1] = end
        else:
            runs.append([int(start), int(end)])
    gap = max(1, min_gap_frames)
    peaks = []
    for start, end in runs:
        peak = start + int(np.argmax(x[start:end]))
        before, after = x[max(0, start - gap):start], x[end:end + gap]
        reopens = all(not len(side) or side.min() < x[peak] / 2 for side in (before, after))
        if end - start <= max_frames and reopens:
            peaks.append(peak)
    return np.array(peaks, dtype=np.int64)


def compute(blendshapes: np.ndarray, points: np.ndarray, cfg: ActionUnitsConfig,
            fps: float) -> tuple[dict[str, np.ndarray], dict]:
    """AU intensities and geometric signals of finite [N, 52] blendshapes and [N, 478, 3] landmarks."""
    geo = geometry_signals(points)
    cols: dict[str, np.ndarray] = {}
    norm, fits = {}, {}
    for m in MAPPINGS:
        b = blendshape_signal(blendshapes, m)
        s = b
        if m.geometry is not None:
            g = geo[m.geometry]
            r = float(np.corrcoef(g, b)[0, 1]) if g.std() > 0 and b.std() > 0 else 0.0
            agrees = m.geometry_sign * r >= cfg.min_geometry_r
            w = cfg.lip_gap_weight if m.geometry == "lip_gap" else cfg.geometry_weight
            slope, intercept = robust_affine(g, b) if r != 0.0 else (0.0, float(np.median(b)))
            if agrees and w > 0:
                s = (1.0 - w) * b + w * (slope * g + intercept)
            elif w > 0:
                log.warning("%s: geometry '%s' disagrees with the blendshapes (r = %.2f, expected sign %+d, "
                            "min %.2f): blendshapes alone", m.au, m.geometry, r, m.geometry_sign, cfg.min_geometry_r)
            fits[m.au] = {"geometry": m.geometry, "r": round(r, 4), "slope": slope, "intercept": intercept,
                          "weight": w if agrees else 0.0}
        if m.au == "au45_r":
            s = smooth(s, cfg.blink_smooth_sigma)
            window = int(round(cfg.blink_baseline_sec * fps)) | 1
            if cfg.blink_baseline_sec > 0 and window >= 3:
                s = s - rolling_median(s, window)   # closure relative to the current open-eye level
        else:
            s = smooth(s, cfg.smooth_sigma)
        cols[m.au], norm[m.au] = normalise(s, cfg)
    blinks = detect_blinks(cols["au45_r"], cfg.blink_threshold, int(round(cfg.blink_min_gap_sec * fps)),
                           int(round(cfg.blink_max_sec * fps)))
    minutes = len(blendshapes) / fps / 60.0
    stats = {"normalisation": norm, "geometry_fit": fits, "blink_count": int(len(blinks)),
             "blinks_per_minute": float(len(blinks) / minutes), "blink_frames": blinks.tolist()}
    cols.update(geo)
    return cols, stats


# ----------------------------------------------------------------------------- stage

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
        tmp_table = stack.enter_context(atomic_output(outdir / "aus.parquet"))
        tmp_json = stack.enter_context(atomic_output(outdir / "aus.json"))
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
