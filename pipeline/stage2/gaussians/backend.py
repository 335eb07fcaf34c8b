"""Which rasteriser draws the Gaussian head: gsplat's CUDA kernels or the pure-torch reference.

``rasterizer(backend, device, size)`` returns a function with ``gsplat.rasterization``'s call (the subset this
project uses: means, quats, scales, opacities, colors, viewmats, Ks, width, height) and output
``(render_colors [C, H, W, D], render_alphas [C, H, W, 1], meta)``, and a name for logs and metrics.

* ``"gsplat"``: gsplat (``pip install gsplat==1.5.3``; it compiles its CUDA code on first import, ~77 s on an
  H200, with nvcc and ninja); an error says what to install when it cannot be imported or there is no CUDA.
* ``"torch"``: :func:`pipeline.stage2.gaussians.rasterize.rasterization`, the reference; any device, but slow:
  refused above ``REFERENCE_MAX_SIZE`` px (a 512² training run would take days).
* ``"auto"``: gsplat on a CUDA device when it imports; otherwise the reference with one warning, or, above
  ``REFERENCE_MAX_SIZE``, the error naming what to install.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pipeline.core.errors import PipelineError
from pipeline.stage2.gaussians.rasterize import rasterization as reference_rasterization

log = logging.getLogger(__name__)

REFERENCE_MAX_SIZE = 128
INSTALL = ("pip install gsplat==1.5.3 on a machine with an NVIDIA GPU, the CUDA toolkit (nvcc) and ninja; its "
           "first import compiles the CUDA code (~77 s on an H200, once per machine)")


class GaussianBackendError(PipelineError):
    pass


def _gsplat_rasterization(device: torch.device) -> Callable | str:
    """gsplat's ``rasterization``, or why it cannot be used."""
    if device.type != "cuda":
        return f"gsplat needs a CUDA device, this run is on {device}"
    try:
        from gsplat import rasterization
        from gsplat.cuda._backend import _C
    except Exception as exc:  # noqa: BLE001 - ImportError, or a failed JIT build (RuntimeError, OSError, ...)
        return f"gsplat cannot be imported ({type(exc).__name__}: {exc})"
    if _C is None:
        return "gsplat imported but its CUDA extension did not build (no CUDA toolkit found)"
    return rasterization


def rasterizer(backend: str, device: torch.device | str, size: int) -> tuple[Callable, str]:
    """(rasterization function, "gsplat" | "torch") for rendering ``size``² images on ``device``."""
    device = torch.device(device)
    if backend not in ("auto", "gsplat", "torch"):
        raise GaussianBackendError("stage2.gaussians.backend", f"{backend!r} is not one of auto, gsplat, torch")
    if backend in ("auto", "gsplat"):
        fn = _gsplat_rasterization(device)
        if callable(fn):
            return fn, "gsplat"
        if backend == "gsplat" or size > REFERENCE_MAX_SIZE:
            raise GaussianBackendError("stage2.gaussians.backend",
                                       f"{fn}; the torch reference is for images up to {REFERENCE_MAX_SIZE} px "
                                       f"(this run: {size} px). {INSTALL}")
        log.warning("Gaussian head: %s; using the pure-torch reference rasteriser (slow, fine at %d px)", fn, size)
    elif size > REFERENCE_MAX_SIZE:
        raise GaussianBackendError("stage2.gaussians.backend", f"the torch reference rasteriser is for images up to "
                                   f"{REFERENCE_MAX_SIZE} px, this run renders {size} px. {INSTALL}")
    return reference_rasterization, "torch"
