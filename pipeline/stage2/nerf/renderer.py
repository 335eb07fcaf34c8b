"""Rays, ray marching and volume rendering (the renderer owns marching; fields answer density/colour).

Camera convention (DESIGN.md section 3, ``tracking/transforms.json``): pinhole camera with ``focal`` (px) and
principal point ``cx, cy`` in continuous pixel coordinates (pixel ``(col, row)`` covers ``[col, col+1) x
[row, row+1)``, so its centre is ``(col + 0.5, row + 0.5)`` and ``cx = w / 2`` is the image centre);
camera-to-head 4x4 in the OpenGL/NeRF convention: the camera looks down its -z axis, y up, x right.

Field protocol (``RadianceField``), all tensors on one device:

* ``field.density(x [N, 3], frame [N] int64, ctx) -> sigma [N]`` (>= 0);
* ``field(x [N, 3], d [N, 3] unit, frame [N] int64, ctx) -> (sigma [N], rgb [N, 3] in [0, 1])``.

``frame`` indexes the per-frame conditioning held by ``ctx`` (opaque to the renderer; see
``field.LandmarkField.prepare``), so one batch may mix rays of several frames.

``VolumeRenderer.render(field, ctx, origins, directions, frame, background)`` per batch of R rays:

1. near/far from the ray-box intersection with ``aabb`` (rays that miss get no samples);
2. ``num_samples`` bins tile ``[near, far]``; one sample per bin, at the bin centre or, with
   ``stratified=True``, at one random fraction per ray shared by all its bins (jittered marching, as
   Instant-NGP: R random numbers a batch instead of R x S; ``delta`` = bin length, so the bins add up to
   ``far - near``);
3. samples in cells that the ``OccupancyGrid`` marks empty are dropped; the rest are *packed*
   (``ray_indices`` sorted by ray, then depth);
4. optional early stop (``early_stop_eps > 0``). With gradients on (training), a no-grad density pass drops
   samples whose transmittance is below the threshold before the full pass (as nerfacc's
   ``OccGridEstimator``). Without gradients (rendering) the rays are *marched*: the field is evaluated
   ``march_window`` samples of every live ray at a time, front to back, compositing as it goes, and a ray
   stops once its transmittance falls below the threshold, so samples behind a surface are never evaluated
   and no separate density pass is needed (Instant-NGP's renderer; the image equals the dense one within
   ``early_stop_eps``). The packed outputs then come in evaluation order;
5. compositing (``composite``): ``alpha = 1 - exp(-sigma delta)``, transmittance ``T_i = exp(-sum_{j<i}
   sigma_j delta_j)`` by a float64 segmented cumsum, ``w_i = T_i alpha_i``; ``rgb = sum w c +
   (1 - opacity) background``, ``opacity = sum w``, ``depth = sum w t`` (expected depth, not divided by
   opacity) via ``index_add_``.

``RenderOutput`` also carries the packed samples (``ray_indices``, ``t``, ``delta``, ``weights``) for losses.
No per-ray Python loops anywhere; field queries are chunked (``chunk`` samples per call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.stage2.nerf.marching import composite_dense, first_occupied
from pipeline.stage2.nerf.occupancy import OccupancyGrid, uniform


class RadianceField(Protocol):
    def density(self, x: torch.Tensor, frame: torch.Tensor, ctx: Any) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, d: torch.Tensor, frame: torch.Tensor,
                 ctx: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


def pixel_centers(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Continuous coordinates ``(u, v)`` of every pixel centre, row-major, ``[h * w, 2]``."""
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1) + 0.5


def camera_rays(c2w: torch.Tensor, uv: torch.Tensor, focal: float | tuple[float, float],
                cx: float, cy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through continuous pixel coordinates ``uv [R, 2]``.

    ``c2w``: ``[4, 4]`` (one camera) or ``[R, 4, 4]`` (one per ray). Returns head-space origins ``[R, 3]``
    and unit directions ``[R, 3]``."""
    fx, fy = (focal, focal) if isinstance(focal, (int, float)) else focal
    c2w = c2w.to(uv.dtype)
    d_cam = torch.stack([(uv[:, 0] - cx) / fx, -(uv[:, 1] - cy) / fy, -torch.ones_like(uv[:, 0])], dim=-1)
    if c2w.ndim == 2:
        dirs = d_cam @ c2w[:3, :3].T
        origins = c2w[:3, 3].expand_as(dirs)
    else:
        dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3], d_cam)
        origins = c2w[:, :3, 3]
    return origins.contiguous(), dirs / dirs.norm(dim=-1, keepdim=True)


def intersect_aabb(origins: torch.Tensor, dirs: torch.Tensor,
                   aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test: ``near [R]``, ``far [R]``, ``hit [R]`` (far > near and far > 0)."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[0] - origins) / safe
    t1 = (aabb[1] - origins) / safe
    near = torch.minimum(t0, t1).amax(-1)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, (far > near) & (far > 0)


def intersect_sphere(origins: torch.Tensor, dirs: torch.Tensor, center: torch.Tensor,
                     radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray-sphere ``near [R]``, ``far [R]``, ``hit [R]`` for unit ``dirs``."""
    oc = origins - center
    b = (oc * dirs).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    root = disc.clamp_min(0).sqrt()
    near, far = -b - root, -b + root
    return near, far, (disc > 0) & (far > 0)


def segment_exclusive_cumsum(x: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray exclusive prefix sum of packed ``x`` (sorted by ray); float64 internally."""
    cs = torch.cumsum(x.double(), 0)
    cs0 = torch.cat([cs.new_zeros(1), cs])                        # cs0[i] = sum of x[:i]
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts                      # first packed index of each ray
    # index_select (backward: index_add) rather than cs0[starts][ray_indices], whose sort-based backward was
    # the slowest kernel of a training step on the GPU
    return (cs0[:-1] - cs0.index_select(0, starts).index_select(0, ray_indices)).to(x.dtype)


@dataclass
class Composite:
    weights: torch.Tensor       # [N]
    transmittance: torch.Tensor # [N] before each sample
    rgb: torch.Tensor           # [R, 3] not yet composited over the background
    opacity: torch.Tensor       # [R]
    depth: torch.Tensor         # [R]


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, delta: torch.Tensor,
              ray_indices: torch.Tensor, n_rays: int) -> Composite:
    """Alpha compositing of packed samples (sorted by ray, then depth)."""
    tau = sigma * delta
    alpha = 1.0 - torch.exp(-tau)
    trans = torch.exp(-segment_exclusive_cumsum(tau, ray_indices, n_rays))
    w = trans * alpha
    out_rgb = rgb.new_zeros(n_rays, 3).index_add_(0, ray_indices, w[:, None] * rgb)
    opacity = w.new_zeros(n_rays).index_add_(0, ray_indices, w)
    depth = w.new_zeros(n_rays).index_add_(0, ray_indices, w * t)
    return Composite(w, trans, out_rgb, opacity, depth)


@dataclass
class RenderOutput:
    rgb: torch.Tensor           # [R, 3] composited over the background
    opacity: torch.Tensor       # [R]
    depth: torch.Tensor         # [R] expected depth (sum w t)
    weights: torch.Tensor       # [N] packed
    ray_indices: torch.Tensor   # [N]
    t: torch.Tensor             # [N] sample depth along the ray
    delta: torch.Tensor         # [N] bin length
    n_candidates: int | torch.Tensor  # samples before early stop (dense path: occupied slots, a tensor: no sync)


class VolumeRenderer(nn.Module):
    def __init__(self, aabb: torch.Tensor, num_samples: int = 128, occupancy: OccupancyGrid | None = None,
                 early_stop_eps: float = 0.0, min_near: float = 0.0, chunk: int = 1 << 18, march_window: int = 8,
                 samples_per_ray: int = 0):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        self.num_samples = int(num_samples)
        self.occupancy = occupancy
        self.early_stop_eps = float(early_stop_eps)
        self.min_near = float(min_near)
        self.chunk = int(chunk)
        self.march_window = int(march_window)
        self.samples_per_ray = int(samples_per_ray)   # > 0: the dense near-surface path (module marching)

    def candidates(self, origins: torch.Tensor, dirs: torch.Tensor, stratified: bool = False,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """All ``num_samples`` candidates of every ray before packing: ``t, delta, keep [R, S]`` (``keep``: the
        ray hits the box and the occupancy grid marks the sample's cell occupied) and ``far [R]``."""
        near, far, hit = intersect_aabb(origins, dirs, self.aabb)
        near = near.clamp_min(self.min_near)
        hit = hit & (far > near)
        s = self.num_samples
        edges = torch.linspace(0.0, 1.0, s + 1, device=origins.device, dtype=origins.dtype)
        span = (far - near).clamp_min(0)[:, None]
        t_lo = near[:, None] + span * edges[:-1]
        delta = span * (edges[1:] - edges[:-1])
        if stratified:
            u = uniform((t_lo.shape[0], 1), generator, t_lo.device).to(t_lo.dtype)
        else:
            u = torch.full_like(t_lo, 0.5)
        t = t_lo + u * delta
        keep = hit[:, None].expand_as(t)
        if self.occupancy is not None:
            pos_all = origins[:, None, :] + t[..., None] * dirs[:, None, :]
            keep = keep & self.occupancy.occupied(pos_all.reshape(-1, 3)).reshape(t.shape)
        return t, delta, keep, torch.maximum(far, near)

    def sample(self, origins: torch.Tensor, dirs: torch.Tensor, stratified: bool = False,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Packed candidate samples: ``ray_indices, t, delta, positions``, after occupancy skipping."""
        t, delta, keep, _ = self.candidates(origins, dirs, stratified, generator)
        ray_idx, samp_idx = keep.nonzero(as_tuple=True)
        t_p, d_p = t[ray_idx, samp_idx], delta[ray_idx, samp_idx]
        pos = origins[ray_idx] + t_p[:, None] * dirs[ray_idx]
        return ray_idx, t_p, d_p, pos

    def render(self, field: RadianceField, ctx: Any, origins: torch.Tensor, dirs: torch.Tensor,
               frame: torch.Tensor, background: torch.Tensor, stratified: bool = False,
               generator: torch.Generator | None = None) -> RenderOutput:
        """Render R rays (``origins, dirs [R, 3]``, ``frame [R]`` int64, ``background [R, 3]`` or ``[3]``)."""
        if self.samples_per_ray > 0:
            return self._render_dense(field, ctx, origins, dirs, frame, background, stratified, generator)
        n_rays = origins.shape[0]
        ray_idx, t, delta, pos = self.sample(origins, dirs, stratified, generator)
        n_candidates = int(ray_idx.numel())
        frame_s = frame[ray_idx]
        march = self._march if self.early_stop_eps > 0 and not torch.is_grad_enabled() else self._composite_all
        comp, kept = march(field, ctx, ray_idx, t, delta, pos, dirs, frame_s, n_rays)
        if kept is not None:
            ray_idx, t, delta = ray_idx[kept], t[kept], delta[kept]
        bg = background.to(comp.rgb).expand(n_rays, 3)
        out_rgb = comp.rgb + (1.0 - comp.opacity)[:, None] * bg
        return RenderOutput(out_rgb, comp.opacity, comp.depth, comp.weights, ray_idx, t, delta, n_candidates)

    def _render_dense(self, field: RadianceField, ctx: Any, origins: torch.Tensor, dirs: torch.Tensor,
                      frame: torch.Tensor, background: torch.Tensor, stratified: bool,
                      generator: torch.Generator | None) -> RenderOutput:
        """The first ``samples_per_ray`` occupied candidates of every ray (module ``marching``). With gradients
        (training) every ray is evaluated, so nothing waits for the host; without (rendering) only the rays with
        a sample, found with one synchronisation."""
        k, n_rays = self.samples_per_ray, origins.shape[0]
        t, delta, keep, far = self.candidates(origins, dirs, stratified, generator)
        t_k, d_k, n = first_occupied(t, delta, keep, far, k)
        rows = None if torch.is_grad_enabled() else (n > 0).nonzero().squeeze(1)
        o, d, fr = (origins, dirs, frame) if rows is None else (origins[rows], dirs[rows], frame[rows])
        if rows is not None:
            t_k, d_k = t_k[rows], d_k[rows]
        m = o.shape[0]
        pos = (o[:, None, :] + t_k[..., None] * d[:, None, :]).reshape(-1, 3)
        sigma, rgb = self._query(field, ctx, pos, d[:, None, :].expand(m, k, 3).reshape(-1, 3),
                                 fr[:, None].expand(m, k).reshape(-1))
        comp = composite_dense(sigma.view(m, k), rgb.view(m, k, 3), t_k, d_k)
        ray_idx = torch.arange(m, device=o.device)
        col, opacity, depth = comp.rgb, comp.opacity, comp.depth
        if rows is not None:
            ray_idx = rows
            col = col.new_zeros(n_rays, 3).index_copy_(0, rows, col)
            opacity = opacity.new_zeros(n_rays).index_copy_(0, rows, opacity)
            depth = depth.new_zeros(n_rays).index_copy_(0, rows, depth)
        bg = background.to(col).expand(n_rays, 3)
        return RenderOutput(col + (1.0 - opacity)[:, None] * bg, opacity, depth, comp.weights.reshape(-1),
                            ray_idx.repeat_interleave(k), t_k.reshape(-1), d_k.reshape(-1), n.sum())

    def _query(self, field: RadianceField, ctx: Any, pos: torch.Tensor, d_s: torch.Tensor | None,
               frame_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """The field at packed samples, ``chunk`` at a time: ``(sigma [N], rgb [N, 3])``, or only the density
        ``sigma [N]`` when ``d_s`` is None."""
        if not pos.shape[0]:
            return pos.new_zeros(0) if d_s is None else (pos.new_zeros(0), pos.new_zeros(0, 3))
        spans = [slice(i, i + self.chunk) for i in range(0, pos.shape[0], self.chunk)]
        if d_s is None:
            return torch.cat([field.density(pos[c], frame_s[c], ctx) for c in spans])
        parts = [field(pos[c], d_s[c], frame_s[c], ctx) for c in spans]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _composite_all(self, field: RadianceField, ctx: Any, ray_idx: torch.Tensor, t: torch.Tensor,
                       delta: torch.Tensor, pos: torch.Tensor, dirs: torch.Tensor, frame_s: torch.Tensor,
                       n_rays: int) -> tuple[Composite, torch.Tensor | None]:
        """Every packed sample through the field, or with the two-pass early stop every sample in front of the
        surface; returns the composite and the packed indices kept (None: all)."""
        kept = None
        if self.early_stop_eps > 0 and ray_idx.numel():
            with torch.no_grad():
                sigma0 = self._query(field, ctx, pos, None, frame_s)
                trans = torch.exp(-segment_exclusive_cumsum(sigma0 * delta, ray_idx, n_rays))
                kept = (trans > self.early_stop_eps).nonzero().squeeze(1)
            ray_idx, t, delta, pos, frame_s = (a[kept] for a in (ray_idx, t, delta, pos, frame_s))
        sigma, rgb = self._query(field, ctx, pos, dirs[ray_idx], frame_s)
        return composite(sigma, rgb, t, delta, ray_idx, n_rays), kept

    @torch.no_grad()
    def _march(self, field: RadianceField, ctx: Any, ray_idx: torch.Tensor, t: torch.Tensor, delta: torch.Tensor,
               pos: torch.Tensor, dirs: torch.Tensor, frame_s: torch.Tensor,
               n_rays: int) -> tuple[Composite, torch.Tensor]:
        """Front-to-back marching with early termination (module docstring, step 4), ``march_window`` packed
        samples of each live ray per round. Returns the composite and the packed indices evaluated, in order."""
        counts = torch.bincount(ray_idx, minlength=n_rays)
        rank = torch.arange(ray_idx.numel(), device=ray_idx.device) - (torch.cumsum(counts, 0) - counts)[ray_idx]
        trans_in = torch.ones(n_rays, dtype=torch.float64, device=t.device)   # transmittance before the window
        rgb_acc, opacity, depth = t.new_zeros(n_rays, 3), t.new_zeros(n_rays), t.new_zeros(n_rays)
        weights, transes, order = [], [], []
        w_len = max(1, self.march_window)
        for k0 in range(0, int(counts.max()) if counts.numel() else 0, w_len):
            live = trans_in > self.early_stop_eps
            idx = ((rank >= k0) & (rank < k0 + w_len) & live[ray_idx]).nonzero().squeeze(1)
            if not idx.numel():  # ranks are contiguous per ray: no live ray has samples this deep
                break
            ri = ray_idx[idx]
            sigma, rgb = self._query(field, ctx, pos[idx], dirs[ri], frame_s[idx])
            tau = sigma * delta[idx]
            trans = (trans_in[ri] * torch.exp(-segment_exclusive_cumsum(tau, ri, n_rays).double())).to(tau.dtype)
            w = trans * (1.0 - torch.exp(-tau))
            rgb_acc.index_add_(0, ri, w[:, None] * rgb)
            opacity.index_add_(0, ri, w)
            depth.index_add_(0, ri, w * t[idx])
            trans_in = trans_in * torch.exp(-torch.zeros_like(trans_in).index_add_(0, ri, tau.double()))
            weights.append(w)
            transes.append(trans)
            order.append(idx)
        cat = lambda xs, like: torch.cat(xs) if xs else like[:0]  # noqa: E731
        order_t = cat(order, ray_idx)
        w_all = cat(weights, t)
        return Composite(w_all, cat(transes, t), rgb_acc, opacity, depth), order_t

    @torch.no_grad()
    def render_image(self, field: RadianceField, ctx: Any, c2w: torch.Tensor, h: int, w: int,
                     focal: float | tuple[float, float], cx: float, cy: float, frame: int,
                     background: torch.Tensor, ray_chunk: int = 1 << 14) -> dict[str, torch.Tensor]:
        """Whole image of one frame: ``rgb [h, w, 3]``, ``opacity [h, w]``, ``depth [h, w]``."""
        uv = pixel_centers(h, w, device=self.aabb.device)
        origins, dirs = camera_rays(c2w.to(self.aabb.device), uv, focal, cx, cy)
        bg = background.to(self.aabb.device)
        outs: dict[str, list[torch.Tensor]] = {"rgb": [], "opacity": [], "depth": []}
        for i in range(0, uv.shape[0], ray_chunk):
            o, d = origins[i:i + ray_chunk], dirs[i:i + ray_chunk]
            fr = torch.full((o.shape[0],), frame, dtype=torch.int64, device=o.device)
            b = bg if bg.ndim == 1 else bg.reshape(-1, 3)[i:i + ray_chunk]
            r = self.render(field, ctx, o, d, fr, b)
            outs["rgb"].append(r.rgb)
            outs["opacity"].append(r.opacity)
            outs["depth"].append(r.depth)
        return {"rgb": torch.cat(outs["rgb"]).reshape(h, w, 3),
                "opacity": torch.cat(outs["opacity"]).reshape(h, w),
                "depth": torch.cat(outs["depth"]).reshape(h, w)}
