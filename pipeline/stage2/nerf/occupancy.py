"""Occupancy (density) grid for empty-space skipping, as in Instant-NGP.

``OccupancyGrid(aabb, resolution)`` covers the field's bounding box with ``resolution**3`` cells. It keeps an
EMA-style density per cell (``density`` buffer, float32) and a boolean ``binary`` mask that the renderer
uses to drop samples in empty cells. Before the first ``update`` every cell counts as occupied, so a
fresh grid never hides anything.

``update(density_fn)`` (call it from the training loop every few steps, as Instant-NGP does every 16):

1. every stored density decays: ``density *= decay``;
2. one jittered point per chosen cell is evaluated with ``density_fn(points [N, 3]) -> sigma [N]``
   (head space; no grad needed) and ``density[cell] = max(density[cell], sigma)``. All cells are chosen
   during the first ``warmup_updates`` updates, or always when ``n_cells`` is None; afterwards
   ``n_cells / 2`` uniformly random cells plus ``n_cells / 2`` random occupied ones;
3. ``binary = density > min(mean(density), threshold)`` (``threshold`` in density units, i.e. 1 / length).

For a conditioned field (the head moves its lips) pass a ``density_fn`` that takes the maximum density over
a few frames, e.g. ``LandmarkField.density_fn(ctx, frames)``, so a cell stays occupied when any frame
needs it. The grid is an ``nn.Module`` whose buffers go into the checkpoint with the model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

DensityFn = Callable[[torch.Tensor], torch.Tensor]


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers on ``device``, drawn on the generator's device (a CPU generator: moved over)."""
    if generator is not None and generator.device.type != torch.device(device).type:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    return torch.rand(shape, generator=generator, device=device)


class OccupancyGrid(nn.Module):
    def __init__(self, aabb: torch.Tensor, resolution: int = 64, decay: float = 0.95,
                 threshold: float = 0.01, warmup_updates: int = 16):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if not bool((aabb[1] > aabb[0]).all()):
            raise ValueError(f"occupancy grid aabb must have min < max, got {aabb.tolist()}")
        if resolution < 1:
            raise ValueError("occupancy grid resolution must be >= 1")
        self.resolution = int(resolution)
        self.decay = float(decay)
        self.threshold = float(threshold)
        self.warmup_updates = int(warmup_updates)
        n = self.resolution**3
        self.register_buffer("aabb", aabb)
        self.register_buffer("density", torch.zeros(n))
        self.register_buffer("binary", torch.ones(n, dtype=torch.bool))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))

    @property
    def n_cells(self) -> int:
        return self.resolution**3

    def cell_index(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index ``[N]`` (x fastest) of head-space points ``[N, 3]``, and whether they are inside."""
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(-1)
        ijk = (u * self.resolution).floor().clamp(0, self.resolution - 1).to(torch.int64)
        r = self.resolution
        return ijk[:, 0] + r * (ijk[:, 1] + r * ijk[:, 2]), inside

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the point lies inside the box in an occupied cell."""
        idx, inside = self.cell_index(x)
        return self.binary[idx] & inside

    def cell_points(self, cells: torch.Tensor, jitter: bool = True,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """One point per cell (random inside it when ``jitter``, else the centre), head space ``[N, 3]``."""
        r = self.resolution
        ijk = torch.stack([cells % r, (cells // r) % r, cells // (r * r)], dim=-1).to(self.aabb.dtype)
        if jitter:
            off = uniform(ijk.shape, generator, ijk.device)
        else:
            off = torch.full_like(ijk, 0.5)
        return self.aabb[0] + (ijk + off) / r * (self.aabb[1] - self.aabb[0])

    def mark_all(self) -> None:
        """Forget what was learnt: every cell occupied again (e.g. after loading other weights)."""
        self.density.zero_()
        self.binary.fill_(True)
        self.n_updates.zero_()

    @torch.no_grad()
    def update(self, density_fn: DensityFn, n_cells: int | None = None, chunk: int = 1 << 18,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One EMA update (see the module docstring); returns the occupied fraction (a 0-d tensor on the grid's
        device: reading it is the caller's choice, nothing here waits for the GPU)."""
        dev = self.density.device
        if n_cells is None or n_cells >= self.n_cells or int(self.n_updates) < self.warmup_updates:
            cells = torch.arange(self.n_cells, device=dev)
        else:
            half = max(n_cells // 2, 1)
            anywhere = (uniform((half,), generator, dev) * self.n_cells).long().clamp_max(self.n_cells - 1)
            # occupied cells without a host sync: the k-th occupied cell for uniform k, via the cumulative count
            counts = torch.cumsum(self.binary.to(torch.int64), 0)
            k = (uniform((half,), generator, dev) * counts[-1]).long()
            picked = torch.searchsorted(counts, k, right=True).clamp_max(self.n_cells - 1)
            cells = torch.cat([anywhere, torch.where(counts[-1] > 0, picked, anywhere)])
        self.density.mul_(self.decay)
        for start in range(0, cells.numel(), chunk):
            c = cells[start:start + chunk]
            sigma = density_fn(self.cell_points(c, generator=generator)).reshape(-1).to(self.density.dtype)
            self.density.scatter_reduce_(0, c, sigma.clamp_min(0), reduce="amax")
        thresh = self.density.mean().clamp_max(self.threshold)
        self.binary.copy_(self.density > thresh)
        self.n_updates += 1
        return self.binary.float().mean()
