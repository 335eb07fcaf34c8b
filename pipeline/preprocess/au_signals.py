"""Action units on OpenFace's 0-5 intensity scale from mediapipe blendshapes and pose-free geometry.

The signals, the per-subject fit and normalisation and the blink detector of rule ``extract_aus``
(:mod:`pipeline.preprocess.action_units`); the evaluation (AU45 of rendered frames on the subject's scale,
:func:`au45_subject_scale`) and the ER-NeRF export (extra AUs) use the same functions.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.core.artifacts import BLENDSHAPE_NAMES
from pipeline.core.config import ActionUnitsConfig
from pipeline.core.metrics import smooth_frames as smooth  # centred Gaussian over frames, edges held

log = logging.getLogger("pipeline.preprocess.au_signals")

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


def au45_subject_scale(blendshapes: np.ndarray, points: np.ndarray, stats: dict, fps: float) -> tuple[
        np.ndarray, np.ndarray]:
    """AU45 (0-5, the subject's fit and normalisation from aus.json) and its blink frames, for [N, 52], [N, 478, 3]."""
    cfg = ActionUnitsConfig(**stats["config"])
    m = next(m for m in MAPPINGS if m.au == "au45_r")
    b = blendshape_signal(fill_gaps(blendshapes), m)
    fit = stats["geometry_fit"]["au45_r"]
    s = b
    if fit["weight"] > 0:
        s = (1.0 - fit["weight"]) * b + fit["weight"] * (fit["slope"] * eye_aspect_ratio(fill_gaps(points))
                                                         + fit["intercept"])
    s = smooth(s, cfg.blink_smooth_sigma)
    window = int(round(cfg.blink_baseline_sec * fps)) | 1
    if cfg.blink_baseline_sec > 0 and window >= 3:
        s = s - rolling_median(s, window)
    n = stats["normalisation"]["au45_r"]
    au45 = np.clip(cfg.high_value * (s - n["low"]) / n["span"], 0.0, 5.0)
    blinks = detect_blinks(au45, cfg.blink_threshold, int(round(cfg.blink_min_gap_sec * fps)),
                           int(round(cfg.blink_max_sec * fps)))
    return au45, blinks
