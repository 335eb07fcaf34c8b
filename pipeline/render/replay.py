"""The recorded torso of the frames whose poses a driving clip replays (``render.drive_torso: replay``).

A driving clip replays the head poses of training frames (:func:`pipeline.render.motion.mirror_loop`). The torso
of those very frames was filmed: crop frame x the parsing matte (``parsing/torso.npz``, head removed) is a sharp,
real torso that belongs to the replayed pose, where the torso model can only give the blurred average of the
torsos seen near that pose (docs/torso.md). The test split (``video.mp4``) never replays: it is scored against
its own frames, so it always uses the model.

Where the replayed matte is empty under the rendered head (the recorded chin hung lower than the rendered one),
the model's torso fills in (:func:`pipeline.render.compositing.over`): the model puts its neck under the chin (it is trained with the head
pixels left out), so no plate shows through between chin and collar.

:class:`ReplayTorso` decodes the frames it needs once, at the render size, into uint8 memmaps in a temporary
folder (one sequential OpenCV pass over ``crop/video.mp4`` up to the last replayed frame); ``layer(frames, device)`` returns the RGBA of those frames.
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
from pipeline.core.media import read_frames_cv2


class ReplayError(PipelineError):
    pass


class ReplayTorso:
    """RGBA torso of recorded frames ``frames`` (crop-video indices) at ``size``²; use as a context manager
    (the memmaps live in a temporary folder that closing removes)."""

    def __init__(self, crop_video: Path | str, torso_npz: Path | str, frames: np.ndarray, size: int):
        need = np.unique(np.asarray(frames, np.int64))
        if not len(need) or need[0] < 0:
            raise ReplayError(torso_npz, "no (or negative) frames to replay")
        last = int(need[-1])
        self._tmp = tempfile.TemporaryDirectory(prefix=".replay_torso")
        folder = Path(self._tmp.name)
        self.row = np.full(last + 1, -1, np.int64)           # crop-video frame -> row of the memmaps (-1: unused)
        self.row[need] = np.arange(len(need))
        self.rgb = np.lib.format.open_memmap(folder / "rgb.npy", "w+", np.uint8, (len(need), size, size, 3))
        self.alpha = np.lib.format.open_memmap(folder / "alpha.npy", "w+", np.uint8, (len(need), size, size))
        for i, frame in enumerate(read_frames_cv2(crop_video, size, stop=last + 1)):
            if self.row[i] >= 0:
                self.rgb[self.row[i]] = frame
        mattes = (a for chunk in npz_iter_rows(torso_npz, "alpha", chunk=32) for a in chunk)
        n = 0
        for i, a in zip(range(last + 1), mattes):
            if self.row[i] >= 0:
                self.alpha[self.row[i]] = a if a.shape[0] == size else cv2.resize(a, (size, size),
                                                                                   interpolation=cv2.INTER_AREA)
            n = i + 1
        if n <= last:
            raise ReplayError(torso_npz, f"{n} matte rows, frame {last} is replayed")

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
