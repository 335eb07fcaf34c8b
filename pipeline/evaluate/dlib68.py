"""The 68-point dlib landmarks (iBUG 300-W layout) used by the talking-head papers' mouth LMD.

The predictor ``shape_predictor_68_face_landmarks.dat`` ships inside the ``face-recognition-models``
wheel (``site-packages/face_recognition_models/models/``); the ``dlib`` module comes from the prebuilt
``dlib-bin`` wheel (no compile). The file is found through ``importlib`` without importing that package
(its ``__init__`` needs ``pkg_resources``) and checked against the sha256 recorded here; a config path
(``evaluate.dlib_model_path``) overrides it, unchecked, as for the mediapipe models.

Faces are found with dlib's HOG frontal-face detector (largest face; upsampled once when none is found
at the native size). Where it finds none, a box is borrowed (and counted) in this order: the box of the
same frame in the reference video (for a render: the ground truth, same camera and replayed pose), the
last box found in the same video, a box derived from the reference mediapipe mesh of that frame.
Mouth LMD uses points 48-67 (outer and inner lip contours), each frame's mouth centroid removed
(:func:`pipeline.core.metrics.mouth_lmd`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import file_sha256
from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline.evaluate.dlib68")

WHEEL = "face_recognition_models"
WHEEL_PIN = "face-recognition-models==0.3.0"
PREDICTOR = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
MOUTH_68 = np.arange(48, 68)
# mediapipe mesh points spanning dlib's box: brow line (top), face sides (cheeks), chin (bottom)
_MESH_TOP, _MESH_LEFT, _MESH_RIGHT, _MESH_CHIN = (105, 334), 234, 454, 152


class DlibError(PipelineError):
    """dlib or its predictor file is missing or not the one the pipeline was validated with."""


@lru_cache(maxsize=None)
def _checked(path: Path, mtime_ns: int) -> None:
    got = file_sha256(path)
    if got != PREDICTOR_SHA256:
        raise DlibError(path, f"sha256 {got} does not match the expected {PREDICTOR_SHA256} "
                              f"(reinstall {WHEEL_PIN} or set evaluate.dlib_model_path)")


def predictor_path(override: str | Path = "") -> Path:
    """The 68-point predictor: ``override`` if given (no sha256 check), else the wheel's verified copy."""
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DlibError(path, f"dlib predictor named in the config does not exist (expected {PREDICTOR})")
        return path
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise DlibError(PREDICTOR, f"not found: install {WHEEL_PIN} (it ships the file) or set evaluate.dlib_model_path")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR
    if not path.is_file():
        raise DlibError(path, f"missing from the installed wheel (reinstall {WHEEL_PIN})")
    _checked(path, path.stat().st_mtime_ns)
    return path


def mesh_box(mesh: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-style square box (left, top, right, bottom) from one frame's mediapipe mesh [478, >=2] (px)."""
    top = float(np.mean(mesh[list(_MESH_TOP), 1]))
    left, right, bottom = float(mesh[_MESH_LEFT, 0]), float(mesh[_MESH_RIGHT, 0]), float(mesh[_MESH_CHIN, 1])
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = max(right - left, bottom - top) / 2
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


@dataclass
class Tracker:
    """Per-video state: the last box found and how many frames needed a borrowed box."""

    last: tuple[int, int, int, int] | None = None
    detected: int = 0
    borrowed: int = 0


class Dlib68:
    """HOG face detector + 68-point shape predictor on RGB uint8 frames."""

    def __init__(self, model_path: str | Path = "", upsample: int = 1, detect_size: int = 0):
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - the pinned dlib-bin wheel provides it
            raise DlibError("dlib", "not importable: install dlib-bin (requirements/base.txt)") from exc
        self._dlib = dlib
        self.path = predictor_path(model_path)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(self.path))
        self.upsample = upsample
        self.detect_size = detect_size

    def detect(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """Largest face box (left, top, right, bottom), trying upsampling 0..``upsample``; None if none."""
        img = np.ascontiguousarray(frame)
        scale = 1.0
        if 0 < self.detect_size < max(img.shape[:2]):  # detect on a smaller copy (speed), box scaled back
            import cv2

            scale = max(img.shape[:2]) / self.detect_size
            img = cv2.resize(img, (round(img.shape[1] / scale), round(img.shape[0] / scale)),
                             interpolation=cv2.INTER_AREA)
        for up in range(self.upsample + 1):
            rects = self.detector(img, up)
            if len(rects):
                r = max(rects, key=lambda r: r.width() * r.height())
                return tuple(int(round(v * scale)) for v in (r.left(), r.top(), r.right(), r.bottom()))
        return None

    def shape(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """68 points [68, 2] (px) inside ``box``."""
        s = self.predictor(np.ascontiguousarray(frame), self._dlib.rectangle(*box))
        return np.array([(p.x, p.y) for p in s.parts()], np.float64)

    def frame(self, frame: np.ndarray, state: Tracker, fallback: tuple[int, int, int, int] | None) -> tuple[
            np.ndarray, tuple[int, int, int, int]]:
        """Points of one frame of a video tracked by ``state``; ``fallback``: the borrowed box if none is found."""
        box = self.detect(frame)
        if box is not None:
            state.detected += 1
        else:
            box = fallback or state.last
            state.borrowed += 1
            if box is None:
                raise DlibError("dlib", "no face found and no box to borrow")
        state.last = box
        return self.shape(frame, box), box


def pair_landmarks(dl: Dlib68, gt: np.ndarray, render: np.ndarray, gt_mesh: np.ndarray,
                   gt_state: Tracker, render_state: Tracker) -> tuple[np.ndarray, np.ndarray]:
    """68 points of a chunk of ground-truth and rendered frames ([k, H, W, 3] each) -> two [k, 68, 2]."""
    pg, pr = np.zeros((len(gt), 68, 2)), np.zeros((len(gt), 68, 2))
    for i in range(len(gt)):
        mesh_fb = mesh_box(gt_mesh[i]) if np.isfinite(gt_mesh[i]).all() else None
        pg[i], box = dl.frame(gt[i], gt_state, gt_state.last or mesh_fb)
        pr[i], _ = dl.frame(render[i], render_state, box)
    return pg, pr
