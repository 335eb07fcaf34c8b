"""Ray batches for the head NeRF, drawn on the training device: head region, error-map importance, patches.

Everything lives on the training device (frames, labels, error maps, per-frame tables) and is drawn with one
``torch.Generator`` on that device, so a step never waits for the host (on a GPU the frame cache is copied
there once: 1.4 GB for 1779 frames at 512²; on a CPU the tensors view the memory-mapped cache).

Per step (:meth:`RaySampler.sample`): ``frames_per_batch`` random train frames, the main rays split evenly
between them. A frame's rays are drawn by cell of a ``G x G`` grid (``G = error_map_size``): a cell with
probability ``(1 - error_map_mix) * share + error_map_mix * error x share`` (each term normalised; ``share`` =
the cell's fraction of *region* pixels, the region being the head labels 3-7 dilated by ``head_margin`` x
image size, so a band of background and torso is included; ``error`` = the frame's error map, an EMA of the
per-ray loss, AD-NeRF / ER-NeRF style), then a uniform pixel inside the cell (such a pixel may lie just outside
the region in a cell the region only touches). Every ray carries its target colour, the background-plate
colour behind it, a colour-loss weight (0 on torso/neck, labels 1-2: the torso model's job) and the
head-opacity target (1 on labels 3-7).

During the fine-tuning phases a fixed number of ``P x P`` patches (a share ``patch_share`` of the rays) are
centred on the lips (labels 5-6) or on one eye (label 7), laid out row-major at the end of the batch for the
patch losses; a frame without that part gets a patch on its head centre instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipeline.core.config import Stage2TrainConfig
from pipeline.stage2.data import HEAD_MIN_LABEL, SubjectData, color_weight, part_centers


@dataclass
class RayBatch:
    frames: torch.Tensor        # [B] global frame ids of the batch (conditioning rows)
    frame: torch.Tensor         # [R] int64 index into ``frames``
    origins: torch.Tensor       # [R, 3]
    dirs: torch.Tensor          # [R, 3]
    rgb: torch.Tensor           # [R, 3] target in [0, 1]
    background: torch.Tensor    # [R, 3] plate colour
    color_w: torch.Tensor       # [R] colour-loss weight
    alpha: torch.Tensor         # [R] head-opacity target
    global_frame: torch.Tensor  # [R] frame id of each ray (error-map update)
    rows: torch.Tensor          # [R]
    cols: torch.Tensor          # [R]
    patch_start: int            # first patch ray (== R when there are no patches)
    patch_size: int             # P
    n_patches: int


def phase_at(progress: float, cfg: Stage2TrainConfig) -> str:
    """"main", then "eyes", then "lips" (the last ``lips_fraction`` of training)."""
    if progress >= 1.0 - cfg.lips_fraction:
        return "lips"
    if progress >= 1.0 - cfg.lips_fraction - cfg.eyes_fraction:
        return "eyes"
    return "main"


def device_view(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A read-only (memory-mapped) array as a tensor: a view on the CPU, one copy on another device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "non-writable array": it is never written
        t = torch.from_numpy(np.asarray(a))
    return t if device.type == "cpu" else t.to(device)


class RaySampler:
    def __init__(self, data: SubjectData, cfg: Stage2TrainConfig, generator: torch.Generator,
                 error_maps: torch.Tensor | None = None):
        self.data, self.cfg, self.gen = data, cfg, generator
        dev, g, s = data.device, cfg.error_map_size, data.size
        self.margin = int(round(cfg.head_margin * s))
        self.patch = max(8, int(round(cfg.patch_size * s / 512)))
        self.frames = device_view(data.frames, dev)
        self.labels = device_view(data.labels, dev)
        self.train_ids = torch.as_tensor(data.train_ids, dtype=torch.int64, device=dev)
        self.error_maps = error_maps if error_maps is not None else torch.ones(data.n, g, g, device=dev)
        share = np.stack([cv2.resize(data.region(f, self.margin)[1].astype(np.float32), (g, g),
                                     interpolation=cv2.INTER_AREA) for f in range(data.n)])
        empty = share.reshape(data.n, -1).sum(1) == 0
        share[empty] = 1.0                           # no head on a frame: the whole image
        self.share = torch.from_numpy(share.reshape(data.n, g * g)).to(dev)
        self.centers, self.has_part = (torch.from_numpy(a).to(dev) for a in part_centers(data.labels))
        self.edges = torch.as_tensor((np.arange(g + 1) * s) // g, dtype=torch.int64, device=dev)
        self._sums = torch.zeros(2, data.n * g * g, device=dev)   # update_errors' scratch: per-cell sums, counts

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, device=self.data.device)

    def _draw(self, frames: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` rays split evenly over ``frames [B]``: (index into frames, rows, cols), each ``[n]``."""
        b, g, mix = frames.shape[0], self.cfg.error_map_size, self.cfg.error_map_mix
        share = self.share.index_select(0, frames)                                  # [B, G²]
        err = self.error_maps.reshape(-1, g * g).index_select(0, frames) * share
        p = (1 - mix) * share / share.sum(1, keepdim=True) + mix * err / err.sum(1, keepdim=True).clamp_min(1e-30)
        per = -(-n // b)
        cell = torch.multinomial(p, per, replacement=True, generator=self.gen).reshape(-1)[:n]
        fb = torch.arange(b, device=frames.device).repeat_interleave(per)[:n]
        ci, cj = cell // g, cell % g
        rows = self.edges[ci] + (self._rand(n) * (self.edges[ci + 1] - self.edges[ci])).long()
        cols = self.edges[cj] + (self._rand(n) * (self.edges[cj + 1] - self.edges[cj])).long()
        return fb, rows, cols

    def _patches(self, frames: torch.Tensor, part: str, count: int) -> tuple[torch.Tensor, ...]:
        """``count`` patches, the j-th on frame ``j mod B``: (index into frames, rows, cols), ``[count P²]``."""
        p, s, dev = self.patch, self.data.size, frames.device
        fb = torch.arange(count, device=dev) % frames.shape[0]
        f = frames[fb]
        which = (torch.zeros(count, dtype=torch.int64, device=dev) if part == "lips"
                 else 1 + (self._rand(count) < 0.5).long())                         # 1, 2: one eye or the other
        ok = self.has_part[f, which]
        center = torch.where(ok[:, None], self.centers[f, which], self.centers[f, 3])   # 3: the head's centre
        jitter = ((self._rand(count, 2) - 0.5) * (p // 2)).round()
        start = (center.round() - p // 2 + jitter).clamp(0, s - p).long()         # [count, 2] (row, col)
        rr, cc = torch.meshgrid(torch.arange(p, device=dev), torch.arange(p, device=dev), indexing="ij")
        rows = (start[:, :1] + rr.reshape(1, -1)).reshape(-1)
        cols = (start[:, 1:] + cc.reshape(1, -1)).reshape(-1)
        return fb.repeat_interleave(p * p), rows, cols

    def landmark_rays(self, frames: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """``n`` rays from the cameras of ``frames [B]``, each aimed at a random tracked face-surface point of its
        frame (``data.surface``): (index into frames, origins, unit directions, the points' distances), ``[n]``
        or ``[n, 3]`` (``stage2.landmark_depth_weight``)."""
        data, dev = self.data, frames.device
        fb = torch.randint(frames.shape[0], (n,), generator=self.gen, device=dev)
        point = torch.randint(data.surface.shape[1], (n,), generator=self.gen, device=dev)
        gf = frames[fb]
        origins = data.c2w[gf, :3, 3]
        v = data.surface[gf, point] - origins
        depth = v.norm(dim=-1)
        return fb, origins, v / depth[:, None], depth

    def sample(self, phase: str = "main") -> RayBatch:
        cfg, data = self.cfg, self.data
        b = min(cfg.frames_per_batch, len(data.train_ids))
        frames = self.train_ids[torch.randperm(len(data.train_ids), generator=self.gen, device=data.device)[:b]]
        n_patch = 0 if phase == "main" else max(1, int(round(cfg.patch_share * cfg.rays_per_batch / self.patch**2)))
        n_main = max(b, cfg.rays_per_batch - n_patch * self.patch**2)
        fb, rows, cols = self._draw(frames, n_main)
        if n_patch:
            parts = self._patches(frames, phase, n_patch)
            fb, rows, cols = (torch.cat([x, y]) for x, y in zip((fb, rows, cols), parts))
        gf = frames[fb]
        lab = self.labels[gf, rows, cols]
        origins, dirs = data.rays(gf, rows, cols)
        return RayBatch(
            frames=frames, frame=fb, origins=origins, dirs=dirs, rgb=self.frames[gf, rows, cols].float() / 255.0,
            background=data.plate_t[rows, cols], color_w=color_weight(lab),
            alpha=(lab >= HEAD_MIN_LABEL).float(), global_frame=gf, rows=rows, cols=cols, patch_start=n_main,
            patch_size=self.patch, n_patches=n_patch)

    def update_errors(self, batch: RayBatch, per_ray: torch.Tensor) -> None:
        """EMA of the per-ray loss into each ray's error-map cell (several rays of a cell: their mean). O(rays):
        per-cell sums go through two scratch buffers that are cleared again at the touched cells only."""
        g, s, a = self.cfg.error_map_size, self.data.size, self.cfg.error_map_ema
        flat = batch.global_frame * (g * g) + (batch.rows * g // s) * g + batch.cols * g // s
        em = self.error_maps.view(-1)
        total, count = self._sums[0], self._sums[1]
        total.index_add_(0, flat, per_ray.detach().float())
        count.index_add_(0, flat, torch.ones_like(per_ray, dtype=torch.float32))
        em[flat] = (1 - a) * em[flat] + a * total[flat] / count[flat]   # duplicates write the same value
        total[flat] = 0.0
        count[flat] = 0.0
