"""Label maps from a person matte and the face mesh: polygons, jaw line, neck band, shoulder line.

Pure numpy/OpenCV geometry, no model calls (those live in :mod:`pipeline.preprocess.parsing.parse`), so it is cheap
to unit-test. Landmark indices are mediapipe's FaceMesh topology (478 points: 468 + 10 iris); the
loops below are the ordered versions of mediapipe's ``FACEMESH_FACE_OVAL`` / ``LIPS`` /
``LEFT_EYE`` / ``RIGHT_EYE`` connection sets (``FaceLandmarksConnections`` in mediapipe 1.2);
``tests/test_parsing.py`` checks them against mediapipe's own sets.

How a frame is labelled (later steps overwrite earlier ones):

1. person pixels (from the smoothed segmenter matte) *above* the jaw line -> 4 hair/other head;
2. person pixels *below* the jaw line -> 1 torso, except the neck band: within ``neck_width`` face
   widths of the neck centre and above the shoulder line -> 2 neck. The jaw line is the lower face
   oval from one jaw angle through the chin to the other, continued outward and down at 45 degrees;
   the shoulder line lies ``neck_length`` face heights below the chin (temporally smoothed);
3. the face-oval polygon -> 3 face skin (regardless of the matte: the mesh is the better cue);
4. eye polygons -> 7; outer-lip polygon -> 5 lips; inner-lip polygon -> 6 mouth interior.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterable, Iterator

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from pipeline.core.artifacts import (LABEL_EYES, LABEL_FACE, LABEL_HAIR, LABEL_LIPS, LABEL_MOUTH, LABEL_NECK,
                                     LABEL_TORSO)

# Ordered loops (clockwise in the image for a frontal face), from mediapipe's connection sets.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)

FOREHEAD, CHIN = 10, 152
JAW_RIGHT, JAW_LEFT = 234, 454          # widest points of the oval (image left / image right)
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
# Lower face oval from the image-right jaw angle through the chin to the image-left one.
JAW_LINE = FACE_OVAL[FACE_OVAL.index(323):FACE_OVAL.index(93) + 1]

_SHIFT = 4                               # fillPoly sub-pixel bits: vertices at 1/16 px
_SCALE = 1 << _SHIFT


def chain_loop(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Order an undirected edge set into closed vertex loops (each loop listed once, no repeat)."""
    adj: dict[int, list[int]] = {}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    seen: set[int] = set()
    loops = []
    for start in sorted(adj):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = [n for n in adj[cur] if n != prev and (n not in seen or (n == start and len(loop) > 2))]
            if not nxt or nxt[0] == start:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def smooth_landmarks(points: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time of [N, P, D] landmarks (``sigma`` in frames; 0 = none)."""
    if sigma <= 0 or len(points) < 2:
        return points.astype(np.float32, copy=True)
    return gaussian_filter1d(points.astype(np.float32), sigma, axis=0, mode="nearest")


def face_size(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face width (jaw angle to jaw angle) and height (forehead to chin), in px, per frame [N]."""
    p = points[..., :2]
    width = np.linalg.norm(p[:, JAW_LEFT] - p[:, JAW_RIGHT], axis=-1)
    height = np.linalg.norm(p[:, CHIN] - p[:, FOREHEAD], axis=-1)
    return width, height


def shoulder_lines(points: np.ndarray, neck_length: float, sigma: float) -> np.ndarray:
    """Per-frame y of the neck/torso boundary: ``neck_length`` face heights below the chin, smoothed."""
    _, height = face_size(points)
    y = points[:, CHIN, 1] + neck_length * height
    return gaussian_filter1d(y.astype(np.float64), sigma, mode="nearest") if sigma > 0 and len(y) > 1 else y


def inner_lip_distance(points: np.ndarray) -> np.ndarray:
    """Distance between the inner upper and lower lip midpoints, px, per frame [N]."""
    p = points[..., :2]
    return np.linalg.norm(p[:, UPPER_LIP_INNER] - p[:, LOWER_LIP_INNER], axis=-1)


def _poly(mask: np.ndarray, xy: np.ndarray, value: int) -> None:
    pts = np.round(np.asarray(xy, np.float64) * _SCALE).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(mask, pts, int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def below_jaw_mask(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: pixels below the jaw line.

    The line runs along the lower face oval between the jaw angles and continues outward and down
    at 45 degrees, so ears and hair beside the jaw stay head while the shoulders fall below it.
    """
    h, w = shape
    jaw = pts[list(JAW_LINE), :2]
    if jaw[0, 0] < jaw[-1, 0]:
        jaw = jaw[::-1]                  # run from image right to image left
    right, left = jaw[0], jaw[-1]
    big = 4.0 * max(h, w)                # far outside the image: the polygon closes around the bottom
    poly = np.vstack([[[right[0] + big, right[1] + big]], jaw, [[left[0] - big, left[1] + big]]])
    m = np.zeros(shape, np.uint8)
    _poly(m, poly, 1)
    return m.astype(bool)


def neck_band(pts: np.ndarray, shape: tuple[int, int], neck_width: float, shoulder_y: float) -> np.ndarray:
    """bool [H, W]: the band under the chin, ``neck_width`` face widths wide, above ``shoulder_y``."""
    h, w = shape
    p = pts[:, :2]
    jaw_mid = 0.5 * (p[132] + p[361])
    cx = 0.5 * p[CHIN, 0] + 0.5 * jaw_mid[0]
    half = 0.5 * neck_width * float(np.linalg.norm(p[JAW_LEFT] - p[JAW_RIGHT]))
    top = min(p[CHIN, 1], jaw_mid[1]) - 0.5 * h
    m = np.zeros(shape, np.uint8)
    _poly(m, [[cx - half, top], [cx + half, top], [cx + half, shoulder_y], [cx - half, shoulder_y]], 1)
    return m.astype(bool)


def label_frame(person: np.ndarray, pts: np.ndarray, shoulder_y: float, neck_width: float) -> np.ndarray:
    """uint8 [H, W] label map of one frame from the person mask and the frame's (smoothed) landmarks."""
    shape = person.shape
    lab = np.zeros(shape, np.uint8)
    below = below_jaw_mask(pts, shape)
    lab[person & ~below] = LABEL_HAIR
    body = person & below
    lab[body] = LABEL_TORSO
    lab[body & neck_band(pts, shape, neck_width, shoulder_y)] = LABEL_NECK
    xy = pts[:, :2]
    _poly(lab, xy[list(FACE_OVAL)], LABEL_FACE)
    _poly(lab, xy[list(LEFT_EYE)], LABEL_EYES)
    _poly(lab, xy[list(RIGHT_EYE)], LABEL_EYES)
    _poly(lab, xy[list(LIPS_OUTER)], LABEL_LIPS)
    _poly(lab, xy[list(LIPS_INNER)], LABEL_MOUTH)
    return lab


class HysteresisMatte:
    """Person matte: a two-threshold (hysteresis) cut of the (temporally smoothed) segmenter confidence.

    A pixel turns person above ``hi`` and stays person until it drops below ``lo``, so confidence
    noise near 0.5 does not toggle boundary pixels from frame to frame. The band is kept narrow: a wide
    one holds a moving outline back (its leading edge waits for ``hi``, its trailing edge for ``lo``).
    """

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi
        self.mask: np.ndarray | None = None

    def update(self, conf: np.ndarray) -> np.ndarray:
        """Feed one frame's confidence [H, W] in [0, 1]; return its bool mask."""
        if self.mask is None:
            self.mask = conf > 0.5 * (self.lo + self.hi)
        else:
            self.mask = (conf > self.hi) | (self.mask & (conf > self.lo))
        return self.mask


def centred_smoothing(stream: Iterator[tuple[np.ndarray, np.ndarray]],
                      sigma: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(frame, confidence)`` pairs, in order, with each confidence replaced by a centred temporal Gaussian
    (``sigma`` frames) over its neighbours: ``r = ceil(2 sigma)`` frames of look-ahead, the clip's first and last
    confidences repeated beyond its ends. Centred, so the matte does not trail the video as a causal filter
    (an exponential moving average) does; ``sigma`` 0 passes the stream through."""
    if sigma <= 0:
        yield from stream
        return
    r = max(1, math.ceil(2 * sigma))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = (w / w.sum()).astype(np.float32)
    buf: deque = deque()                      # (is a real frame, frame, confidence)
    last = None
    for frame, conf in stream:
        conf = conf.astype(np.float32)
        if not buf:
            buf.extend([(False, None, conf)] * r)
        buf.append((True, frame, conf))
        last = conf
        if len(buf) == 2 * r + 1:
            yield buf[r][1], sum(wj * c for wj, (_, _, c) in zip(w, buf))
            buf.popleft()
    while buf:                                # the last r frames: their future is the last confidence
        buf.append((False, None, last))
        if len(buf) < 2 * r + 1:
            continue
        if not buf[r][0]:
            return
        yield buf[r][1], sum(wj * c for wj, (_, _, c) in zip(w, buf))
        buf.popleft()
