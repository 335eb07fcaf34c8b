"""Fast backends of the head NeRF, each beside the pure-torch reference it is tested against.

* ``hash_grid_triton`` (+ ``hash_grid_triton_kernels``): the hash grid as Triton kernels (reference:
  ``pipeline.stage2.nerf.hash_grid.TorchHashGrid``);
* ``hash_grid_tcnn``: tiny-cuda-nn's hash grid, where it imports;
* ``landmark_triton`` (+ ``landmark_triton_kernels``): the landmark encoding's kNN (reference:
  ``GaussianLandmarkEncoding.knn_reference`` in ``pipeline.stage2.nerf.field``).

The ``*_kernels`` modules import ``triton`` at the top and are imported lazily, only on CUDA machines. Which
hash-grid backend runs is decided by the explicit table of :mod:`pipeline.stage2.nerf.encoding`.
"""
