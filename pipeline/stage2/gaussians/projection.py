"""Projection of 3D Gaussians to 2D image-plane Gaussians (EWA splatting), gsplat 1.5.3's conventions.

Everything here is plain torch and differentiable through autograd, except the integer radii and the culling
mask, which (as in gsplat) are computed without gradients.

Conventions (docs/gaussians.md lists each with the test that checks it):

* ``quats`` are ``(w, x, y, z)`` and need not be unit length (normalised here); a Gaussian's world covariance
  is ``Sigma = R S S^T R^T`` with ``R`` the quaternion's rotation and ``S = diag(scales)``;
* ``viewmats`` are world-to-camera 4x4 matrices in the OpenCV convention: camera x right, y down, z forward
  (depth = camera z); ``Ks`` are pinhole intrinsics (``fx = K[0, 0]``, ``fy = K[1, 1]``, ``cx = K[0, 2]``,
  ``cy = K[1, 2]``; skew ignored), pixel ``(col, row)`` covering ``[col, col + 1) x [row, row + 1)``;
* the 2D covariance is ``J Sigma_cam J^T`` with the Jacobian ``J`` of the perspective map at the Gaussian's
  centre; for ``J`` (only) the centre's ``x / z`` and ``y / z`` are clamped to the field of view widened by
  0.3 of its half-width on each side, so Gaussians far outside the image do not get huge footprints;
* ``eps2d`` (0.3 px^2) is added to the 2D covariance's diagonal (a low-pass filter the size of a pixel); in
  ``antialiased`` mode the opacity is multiplied by ``sqrt(det(cov2d) / det(cov2d + eps2d I))`` so the
  filter preserves a Gaussian's total weight instead of growing it (Mip-Splatting);
* culling: a Gaussian gets radii ``(0, 0)`` and draws nothing when its depth is outside
  ``[near_plane, far_plane]``, its (effective) opacity is below ``1/255``, or its bounding box misses the
  image. The box is opacity-aware: half-widths ``ceil(k sqrt(cov2d_xx))`` and ``ceil(k sqrt(cov2d_yy))`` with
  ``k = min(3.33, sqrt(2 ln(255 opacity)))``, the extent of the ellipse where ``alpha >= 1/255``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_THRESHOLD = 1.0 / 255.0   # alphas below this are skipped; also gsplat's opacity cull
MAX_EXTEND = 3.33               # the box never reaches beyond 3.33 sigma along an axis
FOV_MARGIN = 0.3                # J is evaluated at most 0.3 x the half field of view outside the image


@dataclass
class Projected:
    """Per camera and Gaussian (``[C, N, ...]``), the 2D Gaussians the rasteriser draws.

    ``radii`` is int32 ``[C, N, 2]`` (x and y half-widths of the box in pixels, ``0`` = culled); the float
    fields are differentiable. Entries of culled Gaussians are computed all the same but never drawn (gsplat
    leaves them undefined)."""

    means2d: torch.Tensor        # [C, N, 2] pixel coordinates of the centre
    conics: torch.Tensor         # [C, N, 3] inverse 2D covariance (a, b, c): [[a, b], [b, c]]
    depths: torch.Tensor         # [C, N] camera z of the centre
    opacities: torch.Tensor      # [C, N] opacity used for alpha (times the compensation in antialiased mode)
    compensations: torch.Tensor | None  # [C, N] sqrt(det / det_blurred), antialiased mode only
    radii: torch.Tensor          # [C, N, 2] int32


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` quaternions ``(w, x, y, z)``, any non-zero length -> ``[..., 3, 3]`` rotation matrices."""
    w, x, y, z = torch.unbind(quats / quats.norm(dim=-1, keepdim=True), dim=-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances ``R S S^T R^T`` ``[N, 3, 3]`` from quaternions ``[N, 4]`` and scales ``[N, 3]``."""
    m = quat_to_rotmat(quats) * scales[..., None, :]      # R S: column j of R scaled by s_j
    return m @ m.transpose(-1, -2)


def _perspective(means_c: torch.Tensor, covars_c: torch.Tensor, K: torch.Tensor, width: int,
                 height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space centres ``[N, 3]`` and covariances ``[N, 3, 3]`` -> pixel centres ``[N, 2]`` and 2D
    covariances ``[N, 2, 2]`` (first-order EWA: ``J Sigma J^T``) for one pinhole camera ``K``."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x, y, z = torch.unbind(means_c, dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    # The Jacobian of (fx x / z + cx, fy y / z + cy) at the centre, with x / z and y / z clamped to the
    # field of view widened by 30 % of its half-angle on each side.
    tan_half_x, tan_half_y = 0.5 * width / fx, 0.5 * height / fy
    margin = FOV_MARGIN
    tx = z * torch.clamp(x / z, min=-(cx / fx + margin * tan_half_x),
                         max=(width - cx) / fx + margin * tan_half_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + margin * tan_half_y),
                         max=(height - cy) / fy + margin * tan_half_y)
    zeros = torch.zeros_like(z)
    J = torch.stack([
        torch.stack([fx / z, zeros, -fx * tx / (z * z)], dim=-1),
        torch.stack([zeros, fy / z, -fy * ty / (z * z)], dim=-1),
    ], dim=-2)                                                                  # [N, 2, 3]
    return means2d, J @ covars_c @ J.transpose(-1, -2)


def _det2(m: torch.Tensor) -> torch.Tensor:
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]


def project_gaussians(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                      viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                      near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
                      eps2d: float = 0.3, antialiased: bool = False) -> Projected:
    """Project ``N`` Gaussians into ``C`` cameras (gsplat's ``fully_fused_projection``, non-packed, with the
    opacities passed in as ``rasterization`` does). Shapes: ``means [N, 3]``, ``quats [N, 4]``,
    ``scales [N, 3]``, ``opacities [N]``, ``viewmats [C, 4, 4]``, ``Ks [C, 3, 3]``."""
    covars = covariance_3d(quats, scales)
    per_camera = []
    for V, K in zip(viewmats, Ks):
        R, t = V[:3, :3], V[:3, 3]
        means_c = means @ R.T + t                          # world -> camera
        covars_c = R @ covars @ R.T
        depths = means_c[:, 2]
        in_depth = (depths >= near_plane) & (depths <= far_plane)
        # Gaussians outside the depth range are culled; project them as if at (0, 0, 1) so their unused
        # projection stays finite (z = 0 would make it inf and turn their zero gradients into NaN)
        unit_z = means_c.new_tensor([0.0, 0.0, 1.0])
        means2d, cov2d = _perspective(torch.where(in_depth[:, None], means_c, unit_z), covars_c, K, width,
                                      height)
        det_orig = _det2(cov2d)
        cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
        det = _det2(cov2d)
        safe_det = torch.where(det > 0, det, torch.ones_like(det))   # det <= 0 (eps2d = 0 only): culled
        # conic = inverse of the blurred 2D covariance, stored as its (xx, xy, yy) entries
        conics = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], dim=-1) / safe_det[:, None]
        comp = torch.sqrt(torch.clamp(det_orig / safe_det, min=0.0)) if antialiased else None
        opac = opacities * comp if antialiased else opacities
        radii = _radii(means2d, cov2d, in_depth & (det > 0), opac, width, height, radius_clip)
        per_camera.append((means2d, conics, depths, opac, comp, radii))
    if not per_camera:
        raise ValueError("no camera: viewmats must be [C, 4, 4] with C >= 1")
    fields = list(zip(*per_camera))
    comps = None if fields[4][0] is None else torch.stack(fields[4])
    return Projected(means2d=torch.stack(fields[0]), conics=torch.stack(fields[1]),
                     depths=torch.stack(fields[2]), opacities=torch.stack(fields[3]),
                     compensations=comps, radii=torch.stack(fields[5]))


@torch.no_grad()
def _radii(means2d: torch.Tensor, cov2d: torch.Tensor, valid: torch.Tensor, opac: torch.Tensor, width: int,
           height: int, radius_clip: float) -> torch.Tensor:
    """Integer box half-widths ``[N, 2]``, zero for culled Gaussians (see the module docstring); ``valid``
    says which passed the depth-range and determinant tests."""
    opac = opac.to(cov2d.dtype)
    # sqrt(2 ln(opacity / (1/255))): where alpha = opacity exp(-d^2/2) drops to 1/255
    extend = torch.sqrt(2.0 * torch.log(torch.clamp(opac / ALPHA_THRESHOLD, min=1.0)))
    extend = torch.clamp(extend, max=MAX_EXTEND)
    rx = torch.ceil(extend * torch.sqrt(torch.clamp(cov2d[:, 0, 0], min=0.0)))
    ry = torch.ceil(extend * torch.sqrt(torch.clamp(cov2d[:, 1, 1], min=0.0)))
    keep = valid & (opac >= ALPHA_THRESHOLD) & torch.isfinite(rx) & torch.isfinite(ry)
    keep &= (rx > radius_clip) | (ry > radius_clip)
    u, v = means2d[:, 0], means2d[:, 1]
    keep &= (u + rx > 0) & (u - rx < width) & (v + ry > 0) & (v - ry < height)
    radii = torch.where(keep[:, None], torch.stack([rx, ry], dim=-1), torch.zeros_like(means2d))
    return radii.to(torch.int32)
