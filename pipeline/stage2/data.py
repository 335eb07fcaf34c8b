"""Training data of the head NeRF: one subject's artifacts, normalised head space, memory-mapped frames.

Files read from a subject folder ``results/<s>/`` (everything the GPU machine needs; no video decoding), named by
:class:`pipeline.core.layout.SubjectLayout` (``REQUIRED_FILES``: the same paths relative to the folder):

* ``stage2/frames.npy``, ``stage2/labels.npy``, ``stage2/cache.json`` (rule ``cache_frames``, uint8 memmaps);
* ``tracking/transforms.json`` (camera-to-head 4x4 per frame, cm; focal_px, cx, cy at the crop size; with
  ``stage2.pose_offset_frames`` taken that many frames later, :func:`time_shift_c2w`);
* ``tracking/canonical.npz`` (pose-free landmarks [N, 478, 3] cm: the field's conditioning);
* ``parsing/background.png`` (the background plate: the colour behind every ray);
* ``audio/self.npz`` (features [N, W, D]);
* ``aus/aus.parquet`` (``au45_r``), or when it is absent ``landmarks/landmarks.parquet``: AU45 = 5 x mean of the
  ``eyeBlinkLeft``/``eyeBlinkRight`` blendshapes (the fallback is recorded as ``au45_source``);
* ``ingest/meta.json`` (the train/test split);
* with ``stage2.train_mouth: stage1`` also ``stage1/oof.parquet``: the train frames' mouth region is stage 1's
  out-of-fold prediction instead of the tracked one (:func:`with_stage1_mouth`; rule oof_audio2lmk).

Head space normalisation (:class:`HeadSpace`): one similarity per subject, ``x_n = (x_cm - c) * s``, applied to
the camera positions and to the landmarks alike (rotations unchanged). ``c`` is the centre of the mean landmark
shape's bounding box moved up by 0.15 and back by 0.25 of its largest extent E (hair above the forehead, the
skull behind the face); the head sphere has radius ``head_radius * E / 2`` and maps onto the sphere inscribed
in the field's cube ``[-bound, bound]^3``. The renderer takes near/far from the cube; the camera faces the head
(about 4 head radii away), so for the rays that matter the cube's chord is the sphere's to within a few percent,
and the occupancy grid drops the empty corners.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import (AUDIO_FEATURES, AUS, BLENDSHAPE_NAMES, CANONICAL_LANDMARKS, INGEST_META, LANDMARKS,
                                     LABEL_EYES, LABEL_FACE, LABEL_LIPS, LABEL_MOUTH, LABEL_NECK, LABEL_TORSO,
                                     STAGE2_CACHE, STAGE2_FRAMES, STAGE2_LABELS, TRANSFORMS, ArtifactError,
                                     fixed_list_column, read_stage1_landmarks)
from pipeline.core.layout import RELATIVE, SubjectLayout
from pipeline.core.metrics import MOUTH_REGION
from pipeline.stage2.nerf.renderer import camera_rays
from pipeline.stage2.regions import SURFACE_POINTS

log = logging.getLogger("pipeline.stage2.data")

HEAD_MIN_LABEL = LABEL_FACE          # labels 3..7: face, hair, lips, mouth, eyes
# what a training run reads, relative to the subject folder (the files to copy to a GPU machine)
REQUIRED_FILES = tuple(str(p) for p in (
    RELATIVE.stage2.frames, RELATIVE.stage2.labels, RELATIVE.stage2.cache, RELATIVE.tracking.transforms,
    RELATIVE.tracking.canonical, RELATIVE.parsing.background, RELATIVE.audio.features(), RELATIVE.ingest.meta))
AU_FILE, AU_FALLBACK = str(RELATIVE.aus.table), str(RELATIVE.landmarks.table)


@dataclass(frozen=True)
class HeadSpace:
    center_cm: tuple[float, float, float]
    scale: float            # normalised units per cm
    radius_cm: float
    bound: float

    @classmethod
    def from_landmarks(cls, mean_shape: np.ndarray, head_radius: float, bound: float) -> "HeadSpace":
        lo, hi = mean_shape.min(0), mean_shape.max(0)
        extent = float((hi - lo).max())
        c = (lo + hi) / 2 + np.array([0.0, 0.15, -0.25]) * extent
        radius = head_radius * extent / 2
        return cls(tuple(float(v) for v in c), bound / radius, radius, bound)

    def points(self, x_cm: np.ndarray) -> np.ndarray:
        return ((np.asarray(x_cm, np.float64) - np.array(self.center_cm)) * self.scale).astype(np.float32)

    def c2w(self, c2w_cm: np.ndarray) -> np.ndarray:
        out = np.array(c2w_cm, np.float64, copy=True)
        out[..., :3, 3] = (out[..., :3, 3] - np.array(self.center_cm)) * self.scale
        return out.astype(np.float32)

    def to_json(self) -> dict:
        return {"center_cm": list(self.center_cm), "scale_per_cm": self.scale, "radius_cm": self.radius_cm,
                "bound": self.bound}


@dataclass(frozen=True)
class Camera:
    focal: float
    cx: float
    cy: float
    size: int

    def to_json(self) -> dict:
        return {"focal_px": self.focal, "cx": self.cx, "cy": self.cy, "size": self.size}


def _fit_length(a: np.ndarray, n: int, path: Path, what: str, slack: int = 2) -> np.ndarray:
    """``a`` with exactly ``n`` rows: edge-padded / cut when it differs by at most ``slack`` frames."""
    if abs(len(a) - n) > slack:
        raise ArtifactError(path, f"{what} has {len(a)} frames, the crop has {n}")
    if len(a) < n:
        a = np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)])
    return a[:n]


def load_au45(files: SubjectLayout, n: int) -> tuple[np.ndarray, str]:
    """AU45 per frame (0-5) and where it came from (aus.parquet, else the blink blendshapes x 5)."""
    if files.aus.table.is_file():
        au = AUS.read_pandas(files.aus.table)["au45_r"].to_numpy(np.float32)
        return _fit_length(au, n, files.aus.table, "au45_r"), AU_FILE
    path = files.landmarks.table
    if not path.is_file():
        raise ArtifactError(files.aus.table, f"not found, and no {AU_FALLBACK} for the blendshape fallback")
    table = LANDMARKS.read(path)
    bs = fixed_list_column(table, "blendshapes", (len(BLENDSHAPE_NAMES),))
    ids = [BLENDSHAPE_NAMES.index("eyeBlinkLeft"), BLENDSHAPE_NAMES.index("eyeBlinkRight")]
    au = np.nan_to_num(bs[:, ids].mean(1) * 5.0).astype(np.float32)
    log.warning("%s missing: AU45 = 5 x mean(eyeBlinkLeft, eyeBlinkRight) from %s", files.aus.table, path)
    return _fit_length(au, n, path, "blendshapes"), "landmarks blendshapes (fallback)"


class SubjectData:
    """Everything a training run reads, with per-frame conditioning as tensors on ``device``."""

    def __init__(self, root: Path | str, head_radius: float = 1.6, bound: float = 1.0,
                 device: torch.device | str = "cpu", landmark_motion: str = "all", pose_offset: float = 0.0,
                 train_mouth: str = "tracked"):
        root = Path(root)
        self.root = root
        files = SubjectLayout(root)
        missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
        if missing:
            raise ArtifactError(root / missing[0], f"missing stage-2 input(s) {missing} under {root}")
        cache = STAGE2_CACHE.read(files.stage2.cache)
        self.frames = STAGE2_FRAMES.read(files.stage2.frames)
        self.labels = STAGE2_LABELS.read(files.stage2.labels)
        n, s = cache["n_frames"], cache["size"]
        if self.frames.shape != (n, s, s, 3) or self.labels.shape != (n, s, s):
            raise ArtifactError(files.stage2.frames, f"cache shapes {self.frames.shape}, {self.labels.shape} "
                                f"disagree with cache.json ({n} frames at {s} px)")
        self.n, self.size = n, s
        tr = TRANSFORMS.read(files.tracking.transforms)
        if len(tr["frames"]) != n or tr["w"] != tr["h"] or tr["w"] != cache["crop_size"]:
            raise ArtifactError(files.tracking.transforms, f"{len(tr['frames'])} frames at {tr['w']}x{tr['h']}, "
                                f"the frame cache has {n} frames from a {cache['crop_size']} px crop")
        k = s / tr["w"]
        self.camera = Camera(tr["focal_px"] * k, tr["cx"] * k, tr["cy"] * k, s)
        c2w = np.array([f["transform_matrix"] for f in tr["frames"]], np.float64)
        meta = INGEST_META.read(files.ingest.meta)
        (a, b), (c, d) = meta["split"]["train"], meta["split"]["test"]
        if not (0 <= a < b <= c < d <= n):
            raise ArtifactError(files.ingest.meta, f"split {meta['split']} does not fit {n} frames")
        self.train_ids, self.test_ids = np.arange(a, b), np.arange(c, d)
        lms = CANONICAL_LANDMARKS.read(files.tracking.canonical)["landmarks"]
        lms = _fit_length(lms, n, files.tracking.canonical, "landmarks", slack=0)
        self.head_space = HeadSpace.from_landmarks(lms[a:b].mean(0), head_radius, bound)
        # every frame's own tracked face surface, the targets of stage2.landmark_depth_weight [N, P, 3]
        self.surface = torch.from_numpy(self.head_space.points(lms[:, list(SURFACE_POINTS)])).to(device)
        if train_mouth == "stage1":
            lms = with_stage1_mouth(lms, files.stage1.oof, a, b)
        audio = AUDIO_FEATURES.read(files.audio.features())["features"]
        audio = _fit_length(audio, n, files.audio.features(), "features")
        au45, self.au45_source = load_au45(files, n)
        plate = cv2.imread(str(files.parsing.background), cv2.IMREAD_COLOR)
        if plate is None:
            raise ArtifactError(files.parsing.background, "not a readable image")
        plate = cv2.cvtColor(plate, cv2.COLOR_BGR2RGB)
        self.plate = cv2.resize(plate, (s, s), interpolation=cv2.INTER_AREA) if plate.shape[0] != s else plate
        self.device = torch.device(device)
        self.c2w = torch.from_numpy(self.head_space.c2w(time_shift_c2w(c2w, pose_offset))).to(self.device)
        self.landmarks = torch.from_numpy(conditioning_landmarks(self.head_space.points(lms), a, b,
                                                                 landmark_motion)).to(self.device)
        self.audio = torch.from_numpy(np.ascontiguousarray(audio, np.float32)).to(self.device)
        self.au45 = torch.from_numpy(np.array(au45, np.float32)).to(self.device)
        self.plate_t = torch.from_numpy(self.plate).to(self.device).float() / 255.0
        self.audio_dim = int(audio.shape[-1])

    def _ids(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(a if torch.is_tensor(a) else np.asarray(a), dtype=torch.int64, device=self.device)

    def conditioning(self, frame_ids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self._ids(frame_ids)
        return self.landmarks[idx], self.audio[idx], self.au45[idx]

    def rays(self, frame_ids: np.ndarray | torch.Tensor, rows: np.ndarray | torch.Tensor,
             cols: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-space origins and unit directions of pixel centres ``(rows, cols)`` of frames ``frame_ids``."""
        uv = torch.stack([self._ids(cols), self._ids(rows)], -1).float() + 0.5
        c2w = self.c2w[self._ids(frame_ids)]
        cam = self.camera
        return camera_rays(c2w, uv, cam.focal, cam.cx, cam.cy)

    def head_mask(self, f: int) -> np.ndarray:
        return np.asarray(self.labels[f]) >= HEAD_MIN_LABEL

    def region(self, f: int, margin_px: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels of frame ``f`` and the sampling region: the head mask dilated by ``margin_px``."""
        lab = np.asarray(self.labels[f])
        head = (lab >= HEAD_MIN_LABEL).astype(np.uint8)
        if margin_px > 0:
            k = 2 * margin_px + 1
            head = cv2.dilate(head, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))  # separable: fast at 512²
        return lab, head.astype(bool)

    def to_json(self) -> dict:
        return {"n_frames": self.n, "size": self.size, "train": [int(self.train_ids[0]), int(self.train_ids[-1]) + 1],
                "test": [int(self.test_ids[0]), int(self.test_ids[-1]) + 1], "au45_source": self.au45_source}


def time_shift_c2w(c2w: np.ndarray, offset: float) -> np.ndarray:
    """``[N, 4, 4]`` camera-to-head transforms taken at time ``f + offset`` (frames, clamped to the clip): blended
    linearly between the two neighbouring frames, the rotation part projected back onto SO(3) (SVD; a talking
    head turns little from one frame to the next). ``offset`` 0 returns a copy."""
    out = np.array(c2w, np.float64)
    if offset == 0 or len(out) < 2:
        return out
    t = np.clip(np.arange(len(out)) + offset, 0, len(out) - 1)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(out) - 1)
    w = (t - i0)[:, None, None]
    m = (1 - w) * out[i0] + w * out[i1]
    u, _, vt = np.linalg.svd(m[:, :3, :3])
    m[:, :3, :3] = np.where(w > 0, u @ vt, m[:, :3, :3])     # whole offsets: the neighbour's transform as it is
    m[:, 3] = (0.0, 0.0, 0.0, 1.0)
    return m


def with_stage1_mouth(lms: np.ndarray, oof: Path, a: int, b: int) -> np.ndarray:
    """``lms`` [N, P, 3] with the mouth region (``metrics.MOUTH_REGION``) of the train frames ``[a, b)`` taken from
    stage 1's out-of-fold predictions (``stage1/oof.parquet``, rule oof_audio2lmk; ``stage2.train_mouth: stage1``)."""
    if not oof.is_file():
        raise ArtifactError(oof, "missing: stage2.train_mouth is stage1, which needs rule oof_audio2lmk's output")
    pred = read_stage1_landmarks(oof)
    if len(pred) < b:
        raise ArtifactError(oof, f"{len(pred)} frames; the train split is frames {a}-{b - 1}")
    out = np.array(lms, copy=True)
    out[a:b, MOUTH_REGION] = pred[a:b, MOUTH_REGION]
    return out


def conditioning_landmarks(lms: np.ndarray, a: int, b: int, motion: str) -> np.ndarray:
    """The landmarks the field is conditioned on (``stage2.landmark_motion``): ``all`` tracked ones, or with
    ``mouth`` the tracked mouth/jaw region (``metrics.MOUTH_REGION``) and every other point at its mean over
    the train frames ``[a, b)``: what stage 1 predicts from audio, so that eyes and brows learnt from tracked
    motion cannot stay still at render time (blinks then have to come from AU45)."""
    if motion == "all":
        return lms
    if motion != "mouth":
        raise ValueError(f"landmark_motion {motion!r} is not one of mouth, all")
    out = np.array(lms, copy=True)
    still = np.setdiff1d(np.arange(lms.shape[1]), MOUTH_REGION)
    out[:, still] = lms[a:b, still].mean(0)
    return out


def color_weight(labels: torch.Tensor) -> torch.Tensor:
    """1 where a pixel counts in the head colour loss, 0 on torso and neck (the torso model's job)."""
    return ((labels != LABEL_TORSO) & (labels != LABEL_NECK)).float()


def part_centers(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame the (row, col) centres of the lips (labels 5-6), of the eye pixels (label 7) left and right of
    their mean column, and of the head (labels 3-7): ``centers [N, 4, 2]`` float32 and ``present [N, 4]`` bool
    (absent parts: the image centre). From row and column sums of each mask, one frame at a time."""
    n, s = labels.shape[:2]
    centers = np.full((n, 4, 2), s / 2, np.float32)
    present = np.zeros((n, 4), bool)
    r = np.arange(s, dtype=np.float64)

    def center(mask: np.ndarray) -> tuple[float, float] | None:
        rows, cols = mask.sum(1), mask.sum(0)
        total = rows.sum()
        return None if total == 0 else (float(rows @ r / total), float(cols @ r / total))

    for f in range(n):
        lab = np.asarray(labels[f])
        eyes = lab == LABEL_EYES
        got = [center((lab == LABEL_LIPS) | (lab == LABEL_MOUTH)), None, None, center(lab >= HEAD_MIN_LABEL)]
        both = center(eyes)
        if both is not None:
            split = int(round(both[1]))
            left, right = eyes.copy(), eyes.copy()
            left[:, split:], right[:, :split] = False, False
            got[1], got[2] = center(left) or both, center(right) or both
        for j, c in enumerate(got):
            if c is not None:
                centers[f, j], present[f, j] = c, True
    return centers, present


def describe_inputs() -> str:
    """The files a training run needs (for the CLI's help and the GPU instructions)."""
    return json.dumps([*REQUIRED_FILES, f"{AU_FILE} (or {AU_FALLBACK})"])
