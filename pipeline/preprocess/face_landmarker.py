"""mediapipe FaceLandmarker (Tasks API) over a range of frames of a square video.

:func:`landmark_chunk` is the worker of rule ``detect_landmarks`` (one call per process and chunk of the crop,
:mod:`pipeline.preprocess.landmarks`) and what the evaluation runs on the rendered frames
(:mod:`pipeline.evaluate.subject`): 478 points (x, y in px, z on the same scale), 52 blendshape scores and the
4x4 facial transformation matrix per frame, NaN where no face was found. The model file comes from
:mod:`pipeline.preprocess.mediapipe_models`.

``landmarks.running_mode``: ``image`` (the default) finds the face in every frame on its own, so each frame's
landmarks are that frame's. ``video`` is mediapipe's tracking mode: it crops each frame around the previous
frame's face and smooths the landmarks with a causal One-Euro filter, so on a moving head they trail the video
by about 0.4 of a frame (measured against ``image`` on talk_dfrf_cnn_en, BENCHMARKS.md "Session 11:
the landmarks trailed the video"). Everything downstream is fitted to the landmarks; the tracked camera, and with
it the trained head, trailed with them. Jitter from independent frames is taken out by the tracking's
centred smoothness terms.
"""

from __future__ import annotations

import multiprocessing as mp_

import numpy as np

from pipeline.core import media
from pipeline.core.artifacts import BLENDSHAPE_NAMES, N_BLENDSHAPES, N_LANDMARKS
from pipeline.core.config import LandmarksConfig
from pipeline.core.errors import PipelineError

_PROGRESS: "mp_.Queue | None" = None  # set in worker processes: frames done are reported here


class LandmarksError(PipelineError):
    pass


def init_worker(progress) -> None:
    """Pool initializer: frames done in this worker process are put on ``progress``."""
    global _PROGRESS
    _PROGRESS = progress


def landmark_chunk(video: str, size: int, start: int, stop: int, fps: int, task: str, cfg: LandmarksConfig,
                   progress=None, thumb_step: int = 0, thumb_size: int = 256) -> dict[str, np.ndarray]:
    """FaceLandmarker (``cfg.running_mode``) on frames [start, stop) of the crop; one landmarker per call.

    With ``thumb_step`` > 0 it also keeps every frame whose index is a multiple of it, resized to
    ``thumb_size``² (``thumbs``, ``thumb_idx``), so the contact sheet needs no second decoding pass."""
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    progress = progress or (_PROGRESS.put if _PROGRESS is not None else None)
    n = stop - start
    detected = np.zeros(n, bool)
    lms = np.full((n, N_LANDMARKS, 3), np.nan, np.float32)
    bss = np.full((n, N_BLENDSHAPES), np.nan, np.float32)
    poses = np.full((n, 16), np.nan, np.float32)
    video_mode = cfg.running_mode == "video"
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=task),
        running_mode=vision.RunningMode.VIDEO if video_mode else vision.RunningMode.IMAGE, num_faces=1,
        min_face_detection_confidence=cfg.min_detection_confidence,
        min_face_presence_confidence=cfg.min_presence_confidence,
        min_tracking_confidence=cfg.min_tracking_confidence,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    thumbs, thumb_idx, t = [], [], min(thumb_size, size)
    i = 0
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for chunk in media.iter_frames(video, size, size, start_frame=start, n_frames=n, fps=fps):
            for frame in chunk:
                if i >= n:
                    break
                if thumb_step and (start + i) % thumb_step == 0:
                    thumbs.append(cv2.resize(frame, (t, t), interpolation=cv2.INTER_AREA))
                    thumb_idx.append(start + i)
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
                if video_mode:
                    res = landmarker.detect_for_video(image, int(round((start + i) * 1000 / fps)))
                else:
                    res = landmarker.detect(image)
                if res.face_landmarks:
                    lms[i] = [(p.x, p.y, p.z) for p in res.face_landmarks[0]]
                    names = tuple(c.category_name for c in res.face_blendshapes[0])
                    if names != BLENDSHAPE_NAMES:
                        raise LandmarksError(task, f"blendshape names differ from BLENDSHAPE_NAMES: {names[:4]}...")
                    bss[i] = [c.score for c in res.face_blendshapes[0]]
                    poses[i] = np.asarray(res.facial_transformation_matrixes[0], np.float32).reshape(16)
                    detected[i] = True
                i += 1
            if progress:
                progress(len(chunk))
    if i != n:
        raise LandmarksError(video, f"decoded {i} frames in [{start}, {stop}), expected {n}")
    lms *= size  # x, y -> crop px; z -> the same scale (mediapipe's z is normalised like x)
    return {"start": start, "detected": detected, "landmarks": lms, "blendshapes": bss, "pose": poses,
            "thumbs": np.asarray(thumbs, np.uint8).reshape(-1, t, t, 3), "thumb_idx": np.asarray(thumb_idx, np.int64)}
