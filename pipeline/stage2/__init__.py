"""Stage 2: the landmark-conditioned hash-grid head NeRF (see docs/stage2.md).

Importable with torch, numpy, pandas, pyarrow and opencv alone (the GPU machines have nothing else).

* ``encoding``: ``HashGridEncoding`` / ``TriPlaneHashEncoding`` (backends: torch reference, tcnn if present);
* ``field``: ``LandmarkField`` (hash grid + Gaussian landmark encoding + audio attention + AU45);
* ``occupancy``: ``OccupancyGrid`` (EMA density grid for empty-space skipping);
* ``renderer``: rays, packed ray marching and volume compositing (``VolumeRenderer``).
"""

from .encoding import HashGridEncoding, HashGridSpec, TriPlaneHashEncoding, available_backends
from .field import FieldContext, LandmarkField
from .occupancy import OccupancyGrid
from .renderer import RenderOutput, VolumeRenderer, camera_rays, pixel_centers

__all__ = [
    "HashGridEncoding", "HashGridSpec", "TriPlaneHashEncoding", "available_backends",
    "FieldContext", "LandmarkField", "OccupancyGrid",
    "RenderOutput", "VolumeRenderer", "camera_rays", "pixel_centers",
]
