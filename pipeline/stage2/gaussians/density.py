"""Adaptive density control of the Gaussian head (3DGS's clone / split / prune), on the canonical Gaussians.

During training each step's renders keep the gradient of every Gaussian's projected centre (``meta["means2d"]``
of the rasteriser, gsplat's or the reference's, in pixels, scaled to normalised device units by ``size / 2``
as gsplat's default strategy does). Every ``densify_every`` steps while the run's progress is in
``[densify_from, densify_until)``, :meth:`DensityControl.step`:

1. **grows** the Gaussians whose mean gradient (over the renders that saw them) exceeds ``densify_grad``:
   a small one (largest scale <= ``split_scale``) is *cloned* (a copy at the same place; the two then move
   apart), a large one is *split* into two drawn from its own Gaussian, each with its scales / 1.6;
2. **prunes** Gaussians (new ones included) with opacity below ``prune_opacity``;

never beyond ``max_count`` Gaussians (the largest gradients grow first). The optimiser's Adam moments follow
(copied for new Gaussians, dropped for pruned ones), and the accumulators start again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.core.config import GaussianConfig
from pipeline.stage2.gaussians.model import GaussianHead
from pipeline.stage2.gaussians.projection import quat_to_rotmat

PER_GAUSSIAN = ("means", "log_scales", "quats", "opacity_logits", "color_logits", "features")


class DensityControl:
    def __init__(self, cfg: GaussianConfig, n: int, device: torch.device):
        self.cfg = cfg
        self.grad_sum = torch.zeros(n, device=device)
        self.seen = torch.zeros(n, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        return {"density_grad_sum": self.grad_sum, "density_seen": self.seen}

    def load(self, st: dict) -> None:
        self.grad_sum, self.seen = st["density_grad_sum"].clone(), st["density_seen"].clone()

    @torch.no_grad()
    def accumulate(self, metas: list[dict], size: int) -> None:
        """Add the centre gradients of one step's renders (``metas``: rasteriser metas, each with ``means2d``
        whose ``.grad`` backward filled and ``radii``, ``[..., N, 2]``: one row per rendered view)."""
        for meta in metas:
            g = meta["means2d"].grad
            if g is None:
                continue
            n = g.shape[-2]
            visible = (meta["radii"].reshape(-1, n, 2) > 0).all(-1)                # [V, N]
            norm = (g.reshape(-1, n, 2) * (size / 2.0)).norm(dim=-1)
            self.grad_sum += torch.where(visible, norm, torch.zeros_like(norm)).sum(0)
            self.seen += visible.float().sum(0)

    @torch.no_grad()
    def step(self, head: GaussianHead, opt: torch.optim.Adam, gen: torch.Generator) -> dict[str, int]:
        """Grow and prune (module docstring); returns the counts."""
        cfg, n = self.cfg, head.n
        mean_grad = self.grad_sum / self.seen.clamp_min(1.0)
        grow = (mean_grad > cfg.densify_grad) & (self.seen > 0)
        room = max(cfg.max_count - n, 0)
        if int(grow.sum()) > room:
            keep = mean_grad.masked_fill(~grow, -1.0).topk(room).indices
            grow = torch.zeros_like(grow)
            grow[keep] = True
        scales = head.log_scales.exp()
        small = scales.max(-1).values <= cfg.split_scale
        clone, split = grow & small, grow & ~small
        new = {k: [] for k in PER_GAUSSIAN}
        if clone.any():
            for k in PER_GAUSSIAN:
                new[k].append(getattr(head, k)[clone])
        if split.any():
            s = scales[split]
            rot = quat_to_rotmat(head.quats[split])
            offset = torch.einsum("nij,nj->ni", rot, torch.randn(s.shape, generator=gen, device=s.device) * s)
            shrunk = head.log_scales[split] - math.log(1.6)
            for k in PER_GAUSSIAN:
                new[k].append(getattr(head, k)[split])
            new["means"][-1] = head.means[split] + offset        # the copy moves by one draw ...
            new["log_scales"][-1] = shrunk
            head.means[split] -= offset                          # ... and the original by the opposite one
            head.log_scales[split] = shrunk
        added = int(clone.sum() + split.sum())
        extra = {k: torch.cat(v) if v else getattr(head, k)[:0] for k, v in new.items()}
        keep_all = torch.sigmoid(torch.cat([head.opacity_logits, extra["opacity_logits"]])) >= cfg.prune_opacity
        for k in PER_GAUSSIAN:
            old = getattr(head, k)
            _replace(opt, old, nn.Parameter(torch.cat([old.detach(), extra[k]])[keep_all]), keep_all, added, head, k)
        self.grad_sum = torch.zeros(head.n, device=head.means.device)
        self.seen = torch.zeros(head.n, device=head.means.device)
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int((~keep_all).sum()), "n": head.n}


def _replace(opt: torch.optim.Adam, old: nn.Parameter, new: nn.Parameter, keep: torch.Tensor, added: int,
             head: GaussianHead, name: str) -> None:
    """Put ``new`` in ``head`` and in ``old``'s optimiser group; Adam's moments follow (new rows: the copied
    Gaussian's moments are zero, as 3DGS's)."""
    setattr(head, name, new)
    for group in opt.param_groups:
        if group["params"][0] is old:
            group["params"][0] = new
    st = opt.state.pop(old, None)
    if st:
        for key in ("exp_avg", "exp_avg_sq"):
            v = st[key]
            st[key] = torch.cat([v, v.new_zeros((added, *v.shape[1:]))])[keep]
        opt.state[new] = st
