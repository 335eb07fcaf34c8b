"""Pure-torch reference 3D Gaussian splatting: ``rasterization`` with gsplat 1.5.3's call and conventions.

This is the readable reference that a fast kernel (gsplat on the GPU) is tested against
(``tests/test_gaussians_reference.py``); it runs anywhere torch runs, is differentiable through autograd and
is meant for small images (up to ~128^2) and a few thousand Gaussians. docs/gaussians.md describes the
conventions and limits.

How an image is made, per camera:

1. ``projection.project_gaussians``: world Gaussians -> 2D centres, conics, depths, opacities, radii
   (culled Gaussians get radii 0);
2. the surviving Gaussians are sorted by depth, front to back (stable: equal depths keep input order);
3. the image is cut into ``tile_size`` x ``tile_size`` tiles as gsplat does; a tile sees the Gaussians whose
   box ``centre +- radius``, widened to whole tiles, covers it (gsplat's tile intersection);
4. per tile, densely over its pixels x its Gaussians (pixel centres at ``+0.5``):
   ``alpha = min(0.999, opacity exp(-0.5 d^T conic d))`` with ``d`` = centre - pixel, skipped
   (``alpha = 0``) when below ``1/255``; front-to-back compositing
   ``colour = sum_i c_i alpha_i T_i + T_final background`` with ``T_i = prod_{j<i} (1 - alpha_j)``; a pixel
   stops *before* the Gaussian that would bring its transmittance to ``<= 1e-4`` (that one and all behind
   it are left out); ``render_alpha = 1 - T_final``.

Memory: a tile's compositing works on ``tile_size^2 x M`` tensors (``M`` = Gaussians touching the tile).
With gradients on, a tile with ``tile_size^2 x M >= 2^16`` runs under ``torch.utils.checkpoint`` (backward
recomputes it instead of keeping its intermediates); smaller tiles keep theirs. Measured in float32
(BENCHMARKS.md): the peak is ~190 bytes per (pixel, Gaussian) pair of the busiest tile during its backward
(238 MB for one tile of 256 pixels x 5,000 Gaussians), 148 MB above the baseline for 128^2 with 5,000
Gaussians spread over the image; it does not grow with the number of tiles beyond the small tiles' graphs.
Time grows as (Gaussian, tile) pairs x 256: fine for tests and tiny CPU runs, far too slow for training
at 512^2 (use gsplat there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from pipeline.stage2.gaussians.projection import ALPHA_THRESHOLD, project_gaussians

MAX_ALPHA = 0.999                  # one Gaussian never makes a pixel fully opaque
TRANSMITTANCE_THRESHOLD = 1e-4     # a pixel is done once its transmittance would fall to this
CHECKPOINT_MIN_ELEMENTS = 1 << 16  # tiles with fewer pixels x Gaussians keep their graph (cheap, faster)
POWER_MAX = 60.0                   # exp(-60) ~ 1e-26: far below 1/255, still a normal float32
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def composite_tile(pixels: torch.Tensor, means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                   colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite ``M`` depth-sorted 2D Gaussians over ``P`` pixel centres, densely.

    ``pixels [P, 2]`` (x, y), ``means2d [M, 2]``, ``conics [M, 3]``, ``opacities [M]``, ``colors [M, D]`` ->
    ``(color [P, D]`` without background, ``transmittance [P]`` left after the last drawn Gaussian)."""
    dx = means2d[None, :, 0] - pixels[:, 0, None]                    # [P, M]: centre - pixel
    dy = means2d[None, :, 1] - pixels[:, 1, None]
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy           # 0.5 d^T conic d
    # exp of a power clamped to POWER_MAX: far pixels would give subnormal floats, which are slow on CPUs;
    # they are below 1/255 and skipped anyway (the clamp changes nothing drawn while opacity < e^54)
    alpha = torch.clamp(opacities * torch.exp(-torch.clamp(power, max=POWER_MAX)), max=MAX_ALPHA)
    drawn = (power >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(drawn, alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        # Transmittance after each Gaussian if every one up to it is drawn; the first that reaches the
        # threshold is not drawn, nor any behind it (the products only shrink, so the test is a prefix).
        alive = torch.cumprod(1.0 - alpha, dim=1) > TRANSMITTANCE_THRESHOLD
    alpha = alpha * alive
    t_after = torch.cumprod(1.0 - alpha, dim=1)                        # [P, M]
    t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
    color = (alpha * t_before) @ colors
    return color, t_after[:, -1]


def tile_ranges(means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int,
                tiles_y: int) -> torch.Tensor:
    """Per Gaussian the tiles its box touches, ``[M, 4]`` int ``(x0, x1, y0, y1)``, half-open, clamped to
    the tile grid (gsplat's ``isect_tiles``: ``floor((mean - r) / tile)`` to ``ceil((mean + r) / tile)``)."""
    with torch.no_grad():
        lo = torch.floor((means2d - radii) / tile_size).long()
        hi = torch.ceil((means2d + radii) / tile_size).long()
        x0, x1 = lo[:, 0].clamp(0, tiles_x), hi[:, 0].clamp(0, tiles_x)
        y0, y1 = lo[:, 1].clamp(0, tiles_y), hi[:, 1].clamp(0, tiles_y)
        return torch.stack([x0, x1, y0, y1], dim=-1)


def rasterize_to_pixels(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                        colors: torch.Tensor, depths: torch.Tensor, radii: torch.Tensor, width: int, height: int,
                        tile_size: int = 16, background: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One camera's image from its projected Gaussians (``[N, ...]``; radii 0 = culled).

    Returns ``color [H, W, D]`` (background added) and ``alpha [H, W, 1]``."""
    dtype, device = means2d.dtype, means2d.device
    D = colors.shape[-1]
    visible = torch.nonzero((radii > 0).all(dim=-1)).squeeze(-1)
    order = visible[torch.argsort(depths.detach()[visible], stable=True)]   # front to back
    means2d, conics, opacities, colors = means2d[order], conics[order], opacities[order], colors[order]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ranges = tile_ranges(means2d.detach(), radii[order].to(dtype), tile_size, tiles_x, tiles_y)

    rows = []
    for ty in range(tiles_y):
        y_lo, y_hi = ty * tile_size, min((ty + 1) * tile_size, height)
        row = []
        for tx in range(tiles_x):
            x_lo, x_hi = tx * tile_size, min((tx + 1) * tile_size, width)
            ys, xs = torch.meshgrid(torch.arange(y_lo, y_hi, device=device, dtype=dtype) + 0.5,
                                    torch.arange(x_lo, x_hi, device=device, dtype=dtype) + 0.5, indexing="ij")
            pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
            hits = ((ranges[:, 0] <= tx) & (tx < ranges[:, 1]) & (ranges[:, 2] <= ty) & (ty < ranges[:, 3]))
            idx = torch.nonzero(hits).squeeze(-1)                      # still depth-sorted
            if idx.numel() == 0:
                color = torch.zeros(len(pixels), D, dtype=dtype, device=device)
                trans = torch.ones(len(pixels), dtype=dtype, device=device)
            else:
                args = (pixels, means2d[idx], conics[idx], opacities[idx], colors[idx])
                big = len(pixels) * len(idx) >= CHECKPOINT_MIN_ELEMENTS
                if big and torch.is_grad_enabled() and any(t.requires_grad for t in args):
                    color, trans = checkpoint(composite_tile, *args, use_reentrant=False)
                else:
                    color, trans = composite_tile(*args)
            if background is not None:
                color = color + trans[:, None] * background
            shape = (y_hi - y_lo, x_hi - x_lo)
            row.append((color.reshape(*shape, D), (1.0 - trans).reshape(*shape, 1)))
        rows.append((torch.cat([c for c, _ in row], dim=1), torch.cat([a for _, a in row], dim=1)))
    return torch.cat([c for c, _ in rows], dim=0), torch.cat([a for _, a in rows], dim=0)


def rasterization(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                  colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                  near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
                  eps2d: float = 0.3, packed: bool = True, tile_size: int = 16,
                  backgrounds: torch.Tensor | None = None, render_mode: str = "RGB",
                  rasterize_mode: str = "classic") -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render ``N`` 3D Gaussians into ``C`` cameras, as ``gsplat.rasterization`` (1.5.3) does.

    Inputs: ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z; any length), ``scales [N, 3]``,
    ``opacities [N]``, ``colors [N, D]`` or ``[C, N, D]`` (no spherical harmonics), ``viewmats [C, 4, 4]``
    world-to-camera (OpenCV: x right, y down, z forward), ``Ks [C, 3, 3]``, ``backgrounds [C, D]``. With
    leading batch dimensions ``...`` on every input (gsplat's layout: ``means [..., N, 3]``,
    ``viewmats [..., C, 4, 4]``), each batch entry is its own scene and cameras.
    ``render_mode``: ``RGB``, ``D`` (accumulated depth ``sum w z``), ``ED`` (depth / alpha), ``RGB+D``,
    ``RGB+ED`` (depth as the last channel). ``rasterize_mode``: ``classic`` or ``antialiased``. ``packed``
    only changes gsplat's memory layout, not its output, and is ignored here.

    Returns ``render_colors [..., C, H, W, D']``, ``render_alphas [..., C, H, W, 1]`` and ``meta`` with the
    projection (``means2d``, ``conics``, ``depths``, ``opacities``, ``radii`` int32 ``[..., C, N, 2]``,
    ``compensations``), all ``[..., C, N, ...]`` (gsplat's non-packed layout), plus ``width``, ``height``,
    ``tile_size``, ``n_cameras``."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode {render_mode!r}: the reference supports {RENDER_MODES}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode {rasterize_mode!r}: 'classic' or 'antialiased'")
    del packed
    batch, (C, N) = means.shape[:-2], (viewmats.shape[-3], means.shape[-2])
    flat = lambda t: t.reshape(math.prod(batch), *t.shape[len(batch):])   # noqa: E731  [B, ...], B = prod(...)
    means, quats, scales, opacities, viewmats, Ks = map(flat, (means, quats, scales, opacities, viewmats, Ks))
    projs = [project_gaussians(means[b], quats[b], scales[b], opacities[b], viewmats[b], Ks[b], width, height,
                               near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
                               antialiased=rasterize_mode == "antialiased") for b in range(means.shape[0])]
    # the projection's fields stacked to [..., C, N, ...] *before* rasterising from them, so that a gradient
    # kept on meta["means2d"] (density control) is the one the images send back
    fields = {k: None if getattr(projs[0], k) is None else torch.stack([getattr(p, k) for p in projs])
              .reshape(*batch, *getattr(projs[0], k).shape) for k in ("means2d", "conics", "depths", "opacities",
                                                                      "radii", "compensations")}
    proj = {k: None if v is None else flat(v) for k, v in fields.items()}
    colors = flat(colors)
    if colors.dim() == 3:
        colors = colors[:, None].expand(-1, C, N, colors.shape[-1])
    with_rgb, with_depth = render_mode.startswith("RGB"), "D" in render_mode
    features = torch.cat(([colors] if with_rgb else []) + ([proj["depths"][..., None]] if with_depth else []), -1)
    if backgrounds is not None:
        backgrounds = flat(backgrounds)
        if with_depth:                          # depth channel's background is 0
            zero = torch.zeros_like(backgrounds[..., :1])
            backgrounds = torch.cat([backgrounds, zero], dim=-1) if with_rgb else zero

    images, alphas = [], []
    for b in range(means.shape[0]):
        for cam in range(C):
            image, alpha = rasterize_to_pixels(
                proj["means2d"][b, cam], proj["conics"][b, cam], proj["opacities"][b, cam], features[b, cam],
                proj["depths"][b, cam], proj["radii"][b, cam], width, height, tile_size=tile_size,
                background=None if backgrounds is None else backgrounds[b, cam])
            images.append(image)
            alphas.append(alpha)
    render_colors = torch.stack(images).reshape(*batch, C, height, width, -1)
    render_alphas = torch.stack(alphas).reshape(*batch, C, height, width, 1)
    if render_mode in ("ED", "RGB+ED"):          # expected depth: normalise by the accumulated alpha
        depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], depth], dim=-1)
    meta = {**fields, "width": width, "height": height, "tile_size": tile_size, "n_cameras": C}
    return render_colors, render_alphas, meta
