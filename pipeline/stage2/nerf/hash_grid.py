"""The multiresolution hash grid (Instant-NGP): its geometry (``HashGridSpec``) and the pure-torch reference.

Semantics (shared by every backend that uses the canonical table layout)
-----------------------------------------------------------------------
* Inputs are points in the unit cube ``[0, 1]^d`` (d = 2 or 3), shape ``[N, d]``; values outside are
  clamped. The caller (the field) maps head space to the unit cube with its bounding box.
* ``L`` levels with resolutions ``R_l = floor(base * b**l)``, ``b = exp((ln finest - ln base) / (L - 1))``
  (nerfstudio's ``HashEncoding``). Level ``l`` has vertices ``0..R_l`` per axis, i.e. ``(R_l + 1)**d``.
* Dense indexing when the level fits in the table (``(R_l + 1)**d <= 2**T``): ``i + j (R+1) + k (R+1)**2``
  and the level's table holds exactly ``(R_l + 1)**d`` rows. Otherwise the spatial hash
  ``(i * 1) xor (j * 2654435761) xor (k * 805459861) mod 2**T`` with ``2**T`` rows. (The low ``T`` bits are
  the same as with tcnn's wrapping uint32 arithmetic, so the hash matches Instant-NGP's.)
* d-linear interpolation of the ``2**d`` cell corners, ``F`` features per level; output
  ``[N, L * F]``, level-major (level 0's F features first).
* Parameters: one table ``[sum_l rows_l, F]`` (``level_offsets`` give each level's first row),
  initialised uniform in ``[-1e-4, 1e-4]`` as Instant-NGP.

``TorchHashGrid`` is the reference every fast backend is tested against (``assert_close``); a kernel backend
(``pipeline.stage2.nerf.kernels``) subclasses it, so it has the same ``table`` parameter, buffers and state dict.
Backends are chosen in :mod:`pipeline.stage2.nerf.encoding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridSpec:
    """Geometry of one hash grid (see the module docstring for the exact semantics)."""

    n_dims: int = 3
    levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048

    def __post_init__(self) -> None:
        if self.n_dims not in (2, 3):
            raise ValueError(f"hash grid n_dims must be 2 or 3, got {self.n_dims}")
        if self.levels < 1 or self.features_per_level < 1:
            raise ValueError("hash grid needs levels >= 1 and features_per_level >= 1")
        if not 4 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in [4, 30], got {self.log2_hashmap_size}")
        if not 1 <= self.base_resolution <= self.finest_resolution:
            raise ValueError("need 1 <= base_resolution <= finest_resolution")

    @property
    def output_dim(self) -> int:
        return self.levels * self.features_per_level

    @property
    def growth_factor(self) -> float:
        if self.levels == 1:
            return 1.0
        return math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution)) / (self.levels - 1))

    def resolutions(self) -> list[int]:
        b = self.growth_factor
        # the small epsilon keeps e.g. 16 * 2**1 from flooring to 31 through rounding error
        return [int(math.floor(self.base_resolution * b**lvl + 1e-9)) for lvl in range(self.levels)]

    def level_is_dense(self) -> list[bool]:
        cap = 2**self.log2_hashmap_size
        return [(r + 1) ** self.n_dims <= cap for r in self.resolutions()]

    def level_rows(self) -> list[int]:
        cap = 2**self.log2_hashmap_size
        return [min((r + 1) ** self.n_dims, cap) for r in self.resolutions()]


def level_indices(corners: torch.Tensor, resolution: int, dense: bool, log2_hashmap_size: int) -> torch.Tensor:
    """Row index (within the level's table) of integer vertex coordinates ``corners[..., d]`` (int64)."""
    d = corners.shape[-1]
    if dense:
        stride = 1
        idx = torch.zeros(corners.shape[:-1], dtype=torch.int64, device=corners.device)
        for axis in range(d):
            idx = idx + corners[..., axis] * stride
            stride *= resolution + 1
        return idx
    idx = corners[..., 0] * PRIMES[0]
    for axis in range(1, d):
        idx = torch.bitwise_xor(idx, corners[..., axis] * PRIMES[axis])
    return torch.bitwise_and(idx, (1 << log2_hashmap_size) - 1)


class TorchHashGrid(nn.Module):
    """Pure-torch reference implementation (the canonical table layout)."""

    def __init__(self, spec: HashGridSpec):
        super().__init__()
        self.spec = spec
        rows = spec.level_rows()
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + r)
        self.resolutions = spec.resolutions()
        self.dense = spec.level_is_dense()
        self.offsets = offsets
        self.table = nn.Parameter(torch.empty(offsets[-1], spec.features_per_level).uniform_(-1e-4, 1e-4))
        self.register_buffer("pair", torch.tensor([[0, 1]], dtype=torch.int64), persistent=False)

    def level_features(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Interpolated features of one level, ``[N, F]``; ``x`` in the unit cube, ``[N, d]``.

        Per axis the two vertex coordinates and their weights are ``[N, 2]``; the ``2**d`` corners are their
        broadcast product (axis 0 slowest), so no ``[N, 2**d, d]`` tensor is built."""
        res = self.resolutions[level]
        dense = self.dense[level]
        pos = x * res
        cell = torch.floor(pos).clamp(0, res - 1)                   # zero gradient; frac carries it
        frac = pos - cell                                           # [N, d], in [0, 1]
        cell = cell.to(torch.int64)
        n, d = x.shape
        idx = w = None
        stride = 1
        for axis in range(d):
            c = cell[:, axis:axis + 1] + self.pair                  # [N, 2]
            f = frac[:, axis:axis + 1]
            wa = torch.cat([1 - f, f], dim=1)                       # [N, 2]
            ia = c * stride if dense else c * PRIMES[axis]
            stride *= res + 1
            shape = [n] + [1] * axis + [2]
            if idx is None:
                idx, w = ia.view(shape), wa.view(shape)
            else:
                idx = (idx.unsqueeze(-1) + ia.view(shape)) if dense else torch.bitwise_xor(idx.unsqueeze(-1), ia.view(shape))
                w = w.unsqueeze(-1) * wa.view(shape)
        idx = idx.reshape(n, -1)
        if not dense:
            idx = torch.bitwise_and(idx, (1 << self.spec.log2_hashmap_size) - 1)
        rows = (idx + self.offsets[level]).reshape(-1)
        # index_select is ~3x faster than advanced indexing on CPU (same gradient: index_add)
        feats = self.table.index_select(0, rows).view(n, -1, self.spec.features_per_level)  # [N, 2^d, F]
        return torch.einsum("nc,ncf->nf", w.reshape(n, -1).to(feats.dtype), feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.spec.n_dims:
            raise ValueError(f"hash grid expects [N, {self.spec.n_dims}] inputs, got {tuple(x.shape)}")
        x = x.to(self.table.dtype).clamp(0.0, 1.0)
        return torch.cat([self.level_features(x, lvl) for lvl in range(self.spec.levels)], dim=-1)
