"""Multiresolution hash-grid encoding (Instant-NGP), 3D and tri-plane, behind pluggable backends.

Backends
--------
``HashGridEncoding(spec, backend=...)`` picks an implementation from ``BACKENDS``, the explicit table below;
:func:`resolve_backend` is the factory (nothing registers itself on import):

* ``"torch"``: the pure-torch reference :class:`~pipeline.stage2.nerf.hash_grid.TorchHashGrid` (autograd;
  differentiable w.r.t. the table and, where they require grad, the inputs). Runs on CPU and CUDA; the
  table layout and the exact semantics are in :mod:`pipeline.stage2.nerf.hash_grid`.
* ``"triton"``: the Triton kernels of :mod:`pipeline.stage2.nerf.kernels.hash_grid_triton` (CUDA; same table and
  state dict as the reference). Selected where it is not available, it falls back to ``"torch"`` with one warning.
* ``"tcnn"``: tiny-cuda-nn's ``HashGrid`` (:mod:`pipeline.stage2.nerf.kernels.hash_grid_tcnn`), available only
  where ``import tinycudann`` succeeds on CUDA; its own parameter layout, so its checkpoints are not
  interchangeable with the torch table.
* ``"auto"``: the first available of ``AUTO_ORDER`` (triton, tcnn, torch).

A backend is ``Backend(name, available, build)``: ``build(spec) -> nn.Module`` mapping ``[N, d]`` unit-cube
points to ``[N, L*F]`` float32 features. A new fast kernel backend goes under ``kernels/``, subclasses
``TorchHashGrid`` (same ``table`` parameter and buffers, hence the same state dict), overrides ``forward``, is
tested against ``TorchHashGrid.forward`` with ``assert_close``, and gets one entry in ``BACKENDS`` and
``AUTO_ORDER`` here.

``TriPlaneHashEncoding``: three 2D hash grids on the (x, y), (y, z) and (x, z) planes as ER-NeRF does, their
features concatenated (``[N, 3 L F]``) or summed (``[N, L F]``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipeline.stage2.nerf.hash_grid import PRIMES, HashGridSpec, TorchHashGrid, level_indices
from pipeline.stage2.nerf.kernels import hash_grid_tcnn, hash_grid_triton

__all__ = ["PRIMES", "HashGridSpec", "TorchHashGrid", "level_indices", "Backend", "BACKENDS", "AUTO_ORDER",
           "available_backends", "resolve_backend", "HashGridEncoding", "TriPlaneHashEncoding", "build_encoding"]


@dataclass(frozen=True)
class Backend:
    name: str
    available: Callable[[], bool]
    build: Callable[[HashGridSpec], nn.Module]
    fallback: str | None = None     # selected where unavailable: warn once and use this backend instead


BACKENDS: dict[str, Backend] = {
    "triton": Backend("triton", hash_grid_triton.triton_available, hash_grid_triton.TritonHashGrid, fallback="torch"),
    "tcnn": Backend("tcnn", hash_grid_tcnn.tcnn_available, hash_grid_tcnn.TcnnHashGrid),
    "torch": Backend("torch", lambda: True, TorchHashGrid),
}
AUTO_ORDER: list[str] = ["triton", "tcnn", "torch"]   # "auto": the first available
_FELL_BACK: set[str] = set()


def available_backends() -> list[str]:
    return [name for name in AUTO_ORDER if BACKENDS[name].available()]


def resolve_backend(name: str) -> str:
    if name == "auto":
        return available_backends()[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown hash-grid backend {name!r}; known: {sorted(BACKENDS)} or 'auto'")
    if not BACKENDS[name].available():
        fallback = BACKENDS[name].fallback
        if fallback is not None:
            if name not in _FELL_BACK:
                _FELL_BACK.add(name)
                warnings.warn(f"hash-grid backend {name!r} is not available here; using {fallback!r} "
                              "(same table layout)", RuntimeWarning, stacklevel=3)
            return resolve_backend(fallback)
        raise ValueError(f"hash-grid backend {name!r} is not available here (available: {available_backends()})")
    return name


class HashGridEncoding(nn.Module):
    """One multiresolution hash grid: ``[N, d]`` unit-cube points -> ``[N, L*F]`` features."""

    def __init__(self, spec: HashGridSpec, backend: str = "torch"):
        super().__init__()
        self.spec = spec
        self.backend = resolve_backend(backend)
        self.impl = BACKENDS[self.backend].build(spec)

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x)


class TriPlaneHashEncoding(nn.Module):
    """Three 2D hash grids on the xy, yz and xz planes (ER-NeRF); ``reduce`` = "concat" | "sum"."""

    PLANES = ((0, 1), (1, 2), (0, 2))

    def __init__(self, spec: HashGridSpec, backend: str = "torch", reduce: str = "concat"):
        super().__init__()
        if reduce not in ("concat", "sum"):
            raise ValueError(f"tri-plane reduce must be 'concat' or 'sum', got {reduce!r}")
        plane_spec = HashGridSpec(2, spec.levels, spec.features_per_level, spec.log2_hashmap_size,
                                  spec.base_resolution, spec.finest_resolution)
        self.spec = plane_spec
        self.reduce = reduce
        self.planes = nn.ModuleList(HashGridEncoding(plane_spec, backend) for _ in self.PLANES)

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim * (3 if self.reduce == "concat" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"tri-plane encoding expects [N, 3] inputs, got {tuple(x.shape)}")
        feats = [enc(x[:, list(axes)]) for enc, axes in zip(self.planes, self.PLANES)]
        return torch.cat(feats, dim=-1) if self.reduce == "concat" else torch.stack(feats).sum(0)


def build_encoding(kind: str, spec: HashGridSpec, backend: str = "torch", reduce: str = "concat") -> nn.Module:
    """``kind`` = "3d" (one 3D grid) | "triplane" (three 2D grids)."""
    if kind == "3d":
        return HashGridEncoding(spec, backend)
    if kind == "triplane":
        return TriPlaneHashEncoding(spec, backend, reduce)
    raise ValueError(f"unknown grid kind {kind!r}; expected '3d' or 'triplane'")
