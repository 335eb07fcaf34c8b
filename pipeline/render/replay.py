"""The recorded torso of the frames whose poses a driving clip replays (``render.drive_torso: replay``).

A driving clip replays the head poses of training frames (:func:`pipeline.render.motion.mirror_loop`). The torso
of those very frames was filmed: crop frame x the parsing matte (``parsing/torso.npz``, head removed) is a sharp,
real torso that belongs to the replayed pose, where the torso model can only give the blurred average of the
torsos seen near that pose (docs/torso.md). The test split (``video.mp4``) never replays: it is scored against
its own frames, so it always uses the model.

Where the replayed matte is empty under the rendered head (the recorded chin hung lower than the rendered one),
the model's torso fills in (:func:`over`): the model puts its neck under the chin (it is trained with the head
pixels left out), so no plate shows through between chin and collar.

:class:`ReplayTorso` decodes the frames it needs once, at the render size, into uint8 memmaps in a temporary
folder (one sequential pass over ``crop/video.mp4``); ``layer(frames, device)`` returns the RGBA of those frames.
Importable with torch, numpy and opencv alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import npz_iter_rows
from pipeline.core.errors import PipelineError


class ReplayError(PipelineError):
    pass


class ReplayTorso:
    """RGBA torso of recorded frames ``frames`` (crop-video indices) at ``size``²; use as a context manager
    (the memmaps live in a temporary folder that closing removes)."""

    def __init__(self, crop_video: Path | str, torso_npz: Path | str, frames: np.ndarray, size: int):
        need = np.unique(np.asarray(frames, np.int64))
        if not len(need) or need[0] < 0:
            raise ReplayError(torso_npz, "no (or negative) frames to replay")
        self._tmp = tempfile.TemporaryDirectory(prefix=".replay_torso")
        folder = Path(self._tmp.name)
        self.row = np.full(int(need[-1]) + 1, -1, np.int64)
        self.row[need] = np.arange(len(need))
        self.rgb = np.lib.format.open_memmap(folder / "rgb.npy", "w+", np.uint8, (len(need), size, size, 3))
        self.alpha = np.lib.format.open_memmap(folder / "alpha.npy", "w+", np.uint8, (len(need), size, size))
        last = int(need[-1])
        cap = cv2.VideoCapture(str(crop_video))
        if not cap.isOpened():
            raise ReplayError(crop_video, "cannot open video")
        try:
            for i in range(last + 1):
                ok, bgr = cap.read()
                if not ok:
                    raise ReplayError(crop_video, f"ends at frame {i}, frame {last} is replayed")
                if self.row[i] >= 0:
                    self.rgb[self.row[i]] = cv2.cvtColor(_resize(bgr, size), cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        i = 0
        for chunk in npz_iter_rows(torso_npz, "alpha", chunk=32):
            for a in chunk:
                if i <= last and self.row[i] >= 0:
                    self.alpha[self.row[i]] = _resize(a, size)
                i += 1
            if i > last:
                break
        if i <= last:
            raise ReplayError(torso_npz, f"{i} matte rows, frame {last} is replayed")

    def layer(self, frames: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``rgb [B, 3, S, S]``, ``alpha [B, 1, S, S]`` in [0, 1] of recorded frames ``frames``."""
        rows = self.row[np.asarray(frames, np.int64)]
        rgb = torch.from_numpy(np.ascontiguousarray(self.rgb[rows])).to(device).permute(0, 3, 1, 2).float() / 255.0
        alpha = torch.from_numpy(np.ascontiguousarray(self.alpha[rows])).to(device)[:, None].float() / 255.0
        return rgb, alpha

    def close(self) -> None:
        del self.rgb, self.alpha
        self._tmp.cleanup()

    def __enter__(self) -> "ReplayTorso":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def over(top_rgb: torch.Tensor, top_a: torch.Tensor, under_rgb: torch.Tensor,
         under_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-alpha RGBA ``top`` over ``under`` -> (rgb, alpha), straight alpha."""
    a = top_a + (1 - top_a) * under_a
    rgb = (top_rgb * top_a + under_rgb * under_a * (1 - top_a)) / a.clamp_min(1e-6)
    return torch.where(a > 1e-6, rgb, under_rgb), a


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
