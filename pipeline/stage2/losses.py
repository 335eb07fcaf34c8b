"""Losses of the head NeRF (torch; every function works on CPU and CUDA).

* :func:`color_loss`: per-ray L1 | L2 | SmoothL1 of colours (``stage2.loss``), weighted mean (torso/neck rays
  weigh 0); also returns the per-ray values that feed the error maps;
* :func:`opacity_loss`: binary cross-entropy of the rendered head opacity against the head mask (labels 3-7),
  so the head is opaque on the head and transparent on background, torso and neck;
* :func:`distortion_loss`: Mip-NeRF 360's distortion loss of a ray's sample weights (``stage2.distortion_weight``):
  small when a ray's weight sits in one short stretch, the surface, so a ray saturates within a few samples;
  :func:`distortion_loss_reference` is its O(n^2)-per-ray definition, for the parity test;
* :func:`landmark_depth_loss`: the squared distance of a ray's sample weights to a target depth
  (``stage2.landmark_depth_weight``; rays aimed at the tracked face-mesh points, whose depth is known);
* :func:`ssim_loss`, :func:`gradient_loss`: patch losses of the lips / eyes fine-tuning phases (``1 - SSIM``
  with an 11x11 Gaussian window, sigma 1.5, as :func:`pipeline.core.metrics.ssim`; L1 of horizontal and vertical
  image differences). LPIPS (ER-NeRF's lips loss) needs backbone weights that are not available offline, so it
  is not used; ``stage2/metrics.json`` says so.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pipeline.stage2.nerf.renderer import segment_exclusive_cumsum

LPIPS_STATUS = "unavailable: no LPIPS backbone weights on this machine (never downloaded); SSIM + gradient patch losses used"


def per_ray_error(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """``[R, 3] x [R, 3] -> [R]`` mean over channels of the chosen error."""
    if kind == "l1":
        e = (pred - target).abs()
    elif kind == "l2":
        e = (pred - target) ** 2
    elif kind == "smooth_l1":
        e = F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
    else:
        raise ValueError(f"unknown colour loss {kind!r}")
    return e.mean(-1)


def color_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
               kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean colour loss and the per-ray errors ``[R]`` (unweighted)."""
    e = per_ray_error(pred, target, kind)
    return (e * weight).sum() / weight.sum().clamp_min(1.0), e


def opacity_loss(opacity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of opacity ``[R]`` in [0, 1] vs the head mask ``[R]``."""
    return F.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), target)


def distortion_loss(weights: torch.Tensor, t: torch.Tensor, delta: torch.Tensor, ray_indices: torch.Tensor,
                    n_rays: int) -> torch.Tensor:
    """Mean over ``n_rays`` rays of ``sum_ij w_i w_j |t_i - t_j| + sum_i w_i^2 delta_i / 3`` (Mip-NeRF 360, Barron
    et al. 2022, eq. 15, with each sample standing for its bin) over packed samples ``[N]`` sorted by ray, then
    depth (the renderer's order). In O(N): for samples sorted by depth the double sum is
    ``2 sum_i w_i (t_i W_i - S_i)`` with ``W_i, S_i`` the sums of ``w`` and ``w t`` over the ray's earlier samples."""
    if not weights.numel():
        return weights.sum()
    w_before = segment_exclusive_cumsum(weights, ray_indices, n_rays)
    wt_before = segment_exclusive_cumsum(weights * t, ray_indices, n_rays)
    inter = 2.0 * weights * (t * w_before - wt_before)
    intra = weights * weights * delta / 3.0
    return (inter + intra).sum() / max(n_rays, 1)


def distortion_loss_reference(weights: torch.Tensor, t: torch.Tensor, delta: torch.Tensor,
                              ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """:func:`distortion_loss` by its definition, one ray at a time (tests only)."""
    total = weights.new_zeros(())
    for r in range(n_rays):
        m = ray_indices == r
        w, tr, d = weights[m], t[m], delta[m]
        total = total + (w[:, None] * w[None, :] * (tr[:, None] - tr[None, :]).abs()).sum() + (w * w * d).sum() / 3
    return total / max(n_rays, 1)


def landmark_depth_loss(weights: torch.Tensor, t: torch.Tensor, ray_indices: torch.Tensor,
                        depth: torch.Tensor, first: int) -> torch.Tensor:
    """Mean over rays ``first .. first + len(depth)`` of ``sum_i w_i (t_i - depth)^2``: zero only when a ray's
    whole weight sits at the depth of the landmark it was aimed at (``stage2.landmark_depth_weight``). Per ray it is
    ``(E_w[t] - depth)^2 + Var_w(t)`` times the ray's opacity, so it moves the surface onto the tracked mesh and
    makes it thin. Samples of other rays (``ray_indices < first``) do not count."""
    k = ray_indices - first
    keep = k >= 0
    k = k[keep]
    err = weights[keep] * (t[keep] - depth[k]) ** 2
    return torch.zeros_like(depth).index_add(0, k, err).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """SSIM map of images ``[K, C, H, W]`` in [0, 1] (valid convolution, reflect-free)."""
    c = a.shape[1]
    size = min(window, a.shape[-1], a.shape[-2])
    size -= 1 - size % 2  # odd
    w = _gaussian_window(size, 1.5, a.device, a.dtype).expand(c, 1, -1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mx, my = blur(a), blur(b)
    sxx, syy, sxy = blur(a * a) - mx * mx, blur(b * b) - my * my, blur(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - mean SSIM`` of patches ``[K, 3, P, P]``."""
    return 1.0 - ssim_map(pred, target).mean()


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of patches ``[K, 3, P, P]``."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


def to_patches(x: torch.Tensor, start: int, n: int, p: int) -> torch.Tensor:
    """Rays ``x[start : start + n p^2]`` (row-major patches) -> ``[n, C, p, p]``."""
    return x[start:start + n * p * p].reshape(n, p, p, -1).permute(0, 3, 1, 2)
