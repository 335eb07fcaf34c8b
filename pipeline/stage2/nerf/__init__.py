"""The head NeRF: landmark-conditioned hash-grid field, occupancy grid, packed volume rendering.

* ``hash_grid``: ``HashGridSpec`` and the pure-torch reference ``TorchHashGrid``;
* ``encoding``: ``HashGridEncoding`` / ``TriPlaneHashEncoding`` and the explicit backend table (torch, triton, tcnn);
* ``field``: ``LandmarkField`` (hash grid + Gaussian landmark encoding + audio attention + AU45);
* ``occupancy``: ``OccupancyGrid`` (EMA density grid for empty-space skipping);
* ``renderer``: rays, packed ray marching and volume compositing (``VolumeRenderer``);
* ``kernels/``: the Triton kernels (hash grid, landmark kNN) and the tiny-cuda-nn backend, each with the torch
  reference it is tested against.
"""

from pipeline.stage2.nerf.encoding import HashGridEncoding, HashGridSpec, TriPlaneHashEncoding, available_backends
from pipeline.stage2.nerf.field import FieldContext, LandmarkField
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import RenderOutput, VolumeRenderer, camera_rays, pixel_centers

__all__ = [
    "HashGridEncoding", "HashGridSpec", "TriPlaneHashEncoding", "available_backends",
    "FieldContext", "LandmarkField", "OccupancyGrid",
    "RenderOutput", "VolumeRenderer", "camera_rays", "pixel_centers",
]
