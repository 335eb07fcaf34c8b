"""Face regions of the 478-point mediapipe mesh, and the Gaussian windows that confine a conditioning input to one.

Both heads use them (``pipeline.stage2.nerf.field``, ``pipeline.stage2.gaussians.model``): AU45 acts around the
eyes (``stage2.eye_region``) and, with ``stage2.audio_region > 0``, the audio code around the mouth. A region is,
per frame, a centre (the mean of its contour landmarks) and a sigma (a factor x the distance of two corner
landmarks), from the frame's full landmarks in head space; its window at a point is ``exp(-|x - c|^2 / 2 sigma^2)``.
Importable with torch alone.
"""

from __future__ import annotations

import torch

# mediapipe FaceMesh indices (478-point topology)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
BROWS = (70, 63, 105, 66, 107, 300, 293, 334, 296, 336)
JAW = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454)
NOSE = (168, 6, 197, 195, 5, 4, 1, 2, 98, 327)
# the face outline above the jaw (temples and hairline); with JAW it is mediapipe's FACEMESH_FACE_OVAL
UPPER_OUTLINE = (127, 162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389, 356)
# the mesh points inside the face outline, irises (468-477) left out: the points whose depth a camera ray aimed at
# them meets first on a near-frontal view (stage2.landmark_depth_weight)
SURFACE_POINTS = tuple(sorted(set(range(468)) - set(JAW + UPPER_OUTLINE)))
LANDMARK_SUBSETS: dict[str, tuple[int, ...]] = {
    "lips_eyes_jaw_nose": LIPS + RIGHT_EYE + LEFT_EYE + BROWS + JAW + NOSE,
    "lips_eyes": LIPS + RIGHT_EYE + LEFT_EYE,
    "lips": LIPS,
}
EYE_CORNERS = ((33, 133), (263, 362))   # outer and inner corner of each eye
MOUTH_CORNERS = (61, 291)               # the lip corners


def eye_regions(landmarks: torch.Tensor, width_factor: float) -> torch.Tensor:
    """``[B, 8]``: per frame, each eye's centre (mean of its contour, ``RIGHT_EYE`` / ``LEFT_EYE``) and a Gaussian
    sigma of ``width_factor`` x its corner-to-corner width, from full landmarks ``[B, 478, 3]``."""
    out = []
    for ids, (a, b) in zip((RIGHT_EYE, LEFT_EYE), EYE_CORNERS):
        centre = landmarks[:, list(ids)].mean(1)
        width = (landmarks[:, a] - landmarks[:, b]).norm(dim=-1, keepdim=True)
        out += [centre, width_factor * width]
    return torch.cat(out, dim=-1)


def eye_window(x: torch.Tensor, eyes: torch.Tensor) -> torch.Tensor:
    """``[..., 1]``: the larger of the two eyes' Gaussian windows at points ``x [..., 3]``; ``eyes [..., 2, 4]``
    (centre, sigma) as :func:`eye_regions`, broadcast against ``x``."""
    d2 = ((x[..., None, :] - eyes[..., :3]) ** 2).sum(-1) / (eyes[..., 3] ** 2)
    return torch.exp(-0.5 * d2).amax(-1, keepdim=True)


def mouth_region(landmarks: torch.Tensor, width_factor: float) -> torch.Tensor:
    """``[B, 4]``: per frame, the mouth's centre (mean of the ``LIPS`` contour) and a Gaussian sigma of
    ``width_factor`` x the lip corners' distance, from full landmarks ``[B, 478, 3]``."""
    a, b = MOUTH_CORNERS
    width = (landmarks[:, a] - landmarks[:, b]).norm(dim=-1, keepdim=True)
    return torch.cat([landmarks[:, list(LIPS)].mean(1), width_factor * width], dim=-1)


def mouth_window(x: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """``[..., 1]``: the mouth's Gaussian window at points ``x [..., 3]``; ``mouth [..., 4]`` (centre, sigma) as
    :func:`mouth_region`, broadcast against ``x``."""
    d2 = ((x - mouth[..., :3]) ** 2).sum(-1, keepdim=True) / (mouth[..., 3:] ** 2)
    return torch.exp(-0.5 * d2)
