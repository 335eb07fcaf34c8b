"""Near-surface samples at a fixed count per ray: the dense path of the renderer (``samples_per_ray > 0``).

The packed path of :mod:`renderer` keeps every candidate sample the occupancy grid calls occupied, ~60 a ray
on a trained head (most of them inside the head, behind the surface, where the transmittance is ~0), and
packs them with ``nonzero`` (a host synchronisation per batch). Here each ray keeps only its **first**
``k`` occupied candidates, front to back: the surface lies in the first occupied cells that a ray meets, and
with ``num_samples`` candidates over the box, ``k`` of them span ``k / num_samples`` of the chord behind the
first occupied cell (with the defaults 24 / 128: ~0.5 head-space units, ~8 cm, from the forehead to behind
the mouth interior). Every tensor then has the fixed shape ``[R, k]``: no packing, no ``nonzero``, no
host synchronisation, and compositing is a cumulative sum along the last axis.

Rays with fewer than ``k`` occupied candidates fill the remaining slots with ``delta = 0`` at ``t = far``
(inside the box; they add nothing to the image). :func:`first_occupied` is the selection,
:func:`composite_dense` the compositing (the same quadrature as :func:`renderer.composite`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def first_occupied(t: torch.Tensor, delta: torch.Tensor, keep: torch.Tensor, far: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``k`` candidates with ``keep`` of every ray, in depth order.

    ``t, delta, keep``: ``[R, S]`` (sorted by depth along S); ``far``: ``[R]``. Returns ``t_k, delta_k [R, k]``
    (empty slots: ``t = far``, ``delta = 0``) and ``n [R]``, the number of slots used."""
    r = t.shape[0]
    rank = torch.cumsum(keep.to(torch.int32), 1) - 1
    sel = keep & (rank < k)
    slot = torch.where(sel, rank, torch.full_like(rank, k)).to(torch.int64)   # slot k collects the rest
    t_out = far[:, None].to(t.dtype).expand(r, k + 1).contiguous()
    d_out = delta.new_zeros(r, k + 1)
    # scatter_reduce with "amax" keeps the result deterministic where several candidates land in the discard slot
    t_out = t_out.scatter_reduce(1, slot, torch.where(sel, t, far[:, None].to(t.dtype)), reduce="amax",
                                 include_self=False)
    d_out = d_out.scatter_reduce(1, slot, torch.where(sel, delta, torch.zeros_like(delta)), reduce="amax",
                                 include_self=False)
    return t_out[:, :k], d_out[:, :k], sel.sum(1)


@dataclass
class DenseComposite:
    weights: torch.Tensor       # [R, k]
    rgb: torch.Tensor           # [R, 3] not yet composited over the background
    opacity: torch.Tensor       # [R]
    depth: torch.Tensor         # [R] sum w t


def composite_dense(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, delta: torch.Tensor) -> DenseComposite:
    """Alpha compositing of ``[R, k]`` samples (``rgb [R, k, 3]``): ``alpha = 1 - exp(-sigma delta)``,
    ``T_i = exp(-sum_{j<i} sigma_j delta_j)``, ``w = T alpha``."""
    tau = sigma * delta
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-(torch.cumsum(tau, 1) - tau))
    w = trans * alpha
    return DenseComposite(w, (w[..., None] * rgb).sum(1), w.sum(1), (w * t).sum(1))
