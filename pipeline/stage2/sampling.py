"""Ray batches for the head NeRF: head-region pixels, error-map importance sampling, lips/eyes patches.

Per step (:meth:`RaySampler.sample`): ``frames_per_batch`` random train frames; in each, pixels drawn from the
*region* (head labels 3-7 dilated by ``head_margin`` x image size, so a band of background and torso is
included). A share ``error_map_mix`` of the draws follows the frame's error map (a ``G x G`` EMA of the
per-ray loss, AD-NeRF / ER-NeRF style: cells drawn by error x region share, a uniform pixel inside; such a pixel
may lie just outside the region in a cell the region only touches), the rest is uniform over the region. Every ray carries its target
colour, the background-plate colour behind it, a colour-loss weight (0 on torso/neck, labels 1-2: the torso
model's job) and the head-opacity target (1 on labels 3-7).

During the fine-tuning phases a share ``patch_share`` of the rays are square ``P x P`` patches centred on the
lips (labels 5-6) or on one eye (label 7), laid out row-major at the end of the batch for the patch losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipeline.core.config import Stage2TrainConfig
from pipeline.stage2.data import HEAD_MIN_LABEL, SubjectData, color_weight, patch_center


@dataclass
class RayBatch:
    frames: np.ndarray          # [B] global frame ids of the batch (conditioning rows)
    frame: torch.Tensor         # [R] int64 index into ``frames``
    origins: torch.Tensor       # [R, 3]
    dirs: torch.Tensor          # [R, 3]
    rgb: torch.Tensor           # [R, 3] target in [0, 1]
    background: torch.Tensor    # [R, 3] plate colour
    color_w: torch.Tensor       # [R] colour-loss weight
    alpha: torch.Tensor         # [R] head-opacity target
    global_frame: np.ndarray    # [R] frame id of each ray (error-map update)
    rows: np.ndarray            # [R]
    cols: np.ndarray            # [R]
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


class RaySampler:
    def __init__(self, data: SubjectData, cfg: Stage2TrainConfig, rng: np.random.Generator,
                 error_maps: torch.Tensor | None = None):
        self.data, self.cfg, self.rng = data, cfg, rng
        g = cfg.error_map_size
        self.error_maps = error_maps if error_maps is not None else torch.ones(data.n, g, g)
        self.margin = int(round(cfg.head_margin * data.size))
        self.patch = max(8, int(round(cfg.patch_size * data.size / 512)))

    def _cells(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        g, s = self.cfg.error_map_size, self.data.size
        return (rows * g // s) * g + (cols * g // s)

    def _draw(self, f: int, region: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` pixels of frame ``f``: ``error_map_mix`` of them by the error map (a cell with probability
        proportional to its error times its share of region pixels, then a uniform pixel in the cell), the rest
        uniform over the region. Costs O(G² + region) per frame, so it keeps up with a GPU at 512²."""
        s, g = self.data.size, self.cfg.error_map_size
        cand = np.flatnonzero(region)
        if not len(cand):  # no head on this frame: the whole image
            region, cand = np.ones_like(region), np.arange(region.size)
        k_err = int(round(self.cfg.error_map_mix * k))
        pick = cand[self.rng.integers(0, len(cand), size=k - k_err)]
        rows, cols = np.divmod(pick, s)
        if k_err:
            share = cv2.resize(region.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA).reshape(-1)
            w = self.error_maps[f].reshape(-1).numpy().astype(np.float64) * share
            w = w / w.sum() if w.sum() > 0 else share / share.sum()
            cell = self.rng.choice(g * g, size=k_err, p=w)
            edges = (np.arange(g + 1) * s) // g
            ci, cj = np.divmod(cell, g)
            r = edges[ci] + (self.rng.random(k_err) * (edges[ci + 1] - edges[ci])).astype(np.int64)
            c = edges[cj] + (self.rng.random(k_err) * (edges[cj + 1] - edges[cj])).astype(np.int64)
            rows, cols = np.concatenate([r, rows]), np.concatenate([c, cols])
        return rows, cols

    def _patch(self, labels: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray] | None:
        c = patch_center(labels, part, self.rng)
        if c is None:
            return None
        p, s = self.patch, self.data.size
        jitter = self.rng.integers(-p // 4, p // 4 + 1, size=2)
        r0 = int(np.clip(round(c[0]) - p // 2 + jitter[0], 0, s - p))
        c0 = int(np.clip(round(c[1]) - p // 2 + jitter[1], 0, s - p))
        rr, cc = np.meshgrid(np.arange(r0, r0 + p), np.arange(c0, c0 + p), indexing="ij")
        return rr.reshape(-1), cc.reshape(-1)

    def sample(self, phase: str = "main") -> RayBatch:
        cfg, data = self.cfg, self.data
        frames = self.rng.choice(data.train_ids, size=min(cfg.frames_per_batch, len(data.train_ids)), replace=False)
        regions = [data.region(int(f), self.margin) for f in frames]
        patches: list[tuple[int, np.ndarray, np.ndarray]] = []
        if phase != "main":
            n_patch = max(1, int(round(cfg.patch_share * cfg.rays_per_batch / self.patch**2)))
            for j in range(n_patch):
                b = j % len(frames)
                got = self._patch(regions[b][0], phase)
                if got is not None:
                    patches.append((b, *got))
        n_main = max(len(frames), cfg.rays_per_batch - sum(len(p[1]) for p in patches))
        per = np.full(len(frames), n_main // len(frames))
        per[: n_main % len(frames)] += 1
        fb, rows, cols = [], [], []
        for b, (f, (_, region)) in enumerate(zip(frames, regions)):
            r, c = self._draw(int(f), region, int(per[b]))
            fb.append(np.full(len(r), b)), rows.append(r), cols.append(c)
        patch_start = int(sum(per))
        for b, r, c in patches:
            fb.append(np.full(len(r), b)), rows.append(r), cols.append(c)
        fb_a, rows_a, cols_a = np.concatenate(fb), np.concatenate(rows), np.concatenate(cols)
        gf = frames[fb_a]
        lab = np.asarray(data.labels[gf, rows_a, cols_a]) if len(frames) else np.zeros(0, np.uint8)
        rgb = np.asarray(data.frames[gf, rows_a, cols_a], np.float32) / 255.0
        dev = data.device
        origins, dirs = data.rays(gf, rows_a, cols_a)
        return RayBatch(
            frames=frames, frame=torch.from_numpy(fb_a).to(dev), origins=origins, dirs=dirs,
            rgb=torch.from_numpy(rgb).to(dev), background=data.plate_t[torch.from_numpy(rows_a).to(dev),
                                                                       torch.from_numpy(cols_a).to(dev)],
            color_w=torch.from_numpy(color_weight(lab)).to(dev),
            alpha=torch.from_numpy((lab >= HEAD_MIN_LABEL).astype(np.float32)).to(dev),
            global_frame=gf, rows=rows_a, cols=cols_a, patch_start=patch_start, patch_size=self.patch,
            n_patches=len(patches))

    def update_errors(self, batch: RayBatch, per_ray: torch.Tensor) -> None:
        """EMA of the per-ray loss into each ray's error-map cell (several rays of a cell: their mean)."""
        g = self.cfg.error_map_size
        flat = torch.from_numpy(batch.global_frame * g * g + self._cells(batch.rows, batch.cols))
        val = per_ray.detach().float().cpu()
        cells, inv = torch.unique(flat, return_inverse=True)
        mean = torch.zeros(len(cells)).index_add_(0, inv, val) / torch.bincount(inv, minlength=len(cells)).float()
        em = self.error_maps.view(-1)
        a = self.cfg.error_map_ema
        em[cells] = (1 - a) * em[cells] + a * mean
