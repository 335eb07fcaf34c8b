"""When the landmark encoding's kNN runs as a Triton kernel, and the fallback to the torch reference.

``GaussianLandmarkEncoding.knn`` (``pipeline.stage2.nerf.field``) asks :func:`fast_knn` first when its points are on
a CUDA device and the field's backend is ``auto`` or ``triton``. It returns the k nearest landmarks from the
kernel of ``landmark_triton_kernels`` (0.39 ms against 157 ms for the reference's ``cdist`` + ``topk`` on 1M
points on an H200, BENCHMARKS.md), or ``None`` where the kernel cannot run and the caller computes the reference instead: no
CUDA or no importable ``triton`` (:func:`~pipeline.stage2.nerf.kernels.hash_grid_triton.module_status`), CPU tensors, or a
kernel that failed to compile or run in a probe on 256 points the first time a geometry (``k`` and the
number of landmarks) meets a device. On a GPU a reason is warned about once per process; a CUDA
out-of-memory error is raised, not hidden. The rest of the encoding stays in torch: a fused Triton forward
was no faster than this kernel plus torch (13.9 vs ~14 ms on 1M points) and took 16 s to compile.
"""

from __future__ import annotations

import importlib

import torch

from pipeline.stage2.nerf.kernels.hash_grid_triton import module_status, run_probe, warn_once

KERNELS_MODULE = "pipeline.stage2.nerf.kernels.landmark_triton_kernels"
_PROBED: dict[tuple, str | None] = {}


def _kernels():
    return importlib.import_module(KERNELS_MODULE)


def probe(k: int, n_landmarks: int, device: torch.device, kernels=None) -> str | None:
    """Run the kernel once on 256 points of two frames: ``None`` when it works, else why not (cached per
    ``(k, n_landmarks, device)``)."""
    key = (k, n_landmarks, str(device))
    if key not in _PROBED:
        kern = kernels or _kernels()
        x = torch.rand(256, 3, device=device)
        lm = torch.rand(2, n_landmarks, 3, device=device)
        _PROBED[key] = run_probe(lambda: kern.knn(x, torch.arange(256, device=device) % 2, lm, k), device)
    return _PROBED[key]


def fast_knn(k: int, x: torch.Tensor, frame: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor | None:
    """``[N, k]`` nearest-landmark indices (unordered) by the kernel, or ``None`` (use the reference)."""
    if not x.is_cuda:
        return None                      # CPU tensors: the reference is the plan, not a fallback to warn about
    ok, why = module_status(KERNELS_MODULE)
    if ok:
        why = probe(k, landmarks.shape[1], x.device)
    if why is not None:
        warn_once(why, "triton landmark kNN", "the torch reference")
        return None
    return _kernels().knn(x, frame, landmarks, k)
