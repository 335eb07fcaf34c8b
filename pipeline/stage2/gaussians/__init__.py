"""Gaussian splatting for the head (``stage2.head: gaussians``, issue #25; docs/gaussians.md).

The head: ``model`` (``GaussianHead``: canonical Gaussians skinned to the landmarks and moved by a deformation
network), ``init`` (the visual-hull start), ``trainer`` (whole-image training steps), ``backend`` (gsplat or the
reference). The rasteriser's pure-torch reference:

* ``projection``: 3D Gaussians (means, wxyz quaternions, scales, opacities) -> 2D image-plane Gaussians
  through world-to-camera ``viewmats`` (OpenCV axes) and pinhole ``Ks``, with gsplat 1.5.3's EWA Jacobian,
  ``eps2d`` low-pass, antialiased compensation and culling;
* ``rasterize``: ``rasterization(...)``, the call and output of ``gsplat.rasterization`` (tiles, depth
  sort, front-to-back alpha compositing), dense per tile, differentiable, CPU or GPU.

It is the reference a fast kernel (gsplat) is tested against (``tests/test_gaussians_reference.py``), and the
rasteriser of tiny CPU runs; docs/gaussians.md lists its conventions and limits. Only the reference is
exported here (importing the head pulls in the NeRF's landmark encoding).
"""

from pipeline.stage2.gaussians.projection import Projected, covariance_3d, project_gaussians, quat_to_rotmat
from pipeline.stage2.gaussians.rasterize import composite_tile, rasterization, rasterize_to_pixels

__all__ = ["Projected", "covariance_3d", "project_gaussians", "quat_to_rotmat",
           "composite_tile", "rasterization", "rasterize_to_pixels"]
