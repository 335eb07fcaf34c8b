"""Gaussian splatting for the head (issue #25): for now the pure-torch reference rasteriser.

* ``projection``: 3D Gaussians (means, wxyz quaternions, scales, opacities) -> 2D image-plane Gaussians
  through world-to-camera ``viewmats`` (OpenCV axes) and pinhole ``Ks``, with gsplat 1.5.3's EWA Jacobian,
  ``eps2d`` low-pass, antialiased compensation and culling;
* ``rasterize``: ``rasterization(...)``, the call and output of ``gsplat.rasterization`` (tiles, depth
  sort, front-to-back alpha compositing), dense per tile, differentiable, CPU or GPU.

It is the reference a fast kernel (gsplat) is tested against (``tests/test_gaussians_reference.py``), and the
fallback for tiny CPU runs; docs/gaussians.md lists its conventions and limits. Not wired into the workflow
yet (``stage2.head`` stays the NeRF).
"""

from pipeline.stage2.gaussians.projection import Projected, covariance_3d, project_gaussians, quat_to_rotmat
from pipeline.stage2.gaussians.rasterize import composite_tile, rasterization, rasterize_to_pixels

__all__ = ["Projected", "covariance_3d", "project_gaussians", "quat_to_rotmat",
           "composite_tile", "rasterization", "rasterize_to_pixels"]
