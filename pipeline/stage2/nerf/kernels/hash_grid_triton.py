"""Triton backend of the hash-grid encoding: fused forward and atomic-add backward on CUDA GPUs.

``TritonHashGrid`` subclasses ``TorchHashGrid``: the same ``table`` parameter, buffers and state dict, so
checkpoints move freely between the ``torch`` and ``triton`` backends. Its forward runs the Triton
kernels of ``hash_grid_triton_kernels`` (all levels' d-linear interpolation in one launch; the backward
scatters ``w * grad`` into an fp32 gradient table with atomic adds) when it can, and otherwise the
torch reference, with one warning per reason and process:

* CUDA or an importable ``triton`` is missing (``triton_status()`` says which);
* the inputs or the table are not on a CUDA device, or the table is not float32;
* the inputs require grad (the kernels give the gradient w.r.t. the table only; the reference gives
  both) or the table is too large for the kernels' int32 offsets;
* the kernels fail to compile or run on this GPU: before the first use of a grid geometry on a device,
  :func:`probe_kernels` runs its forward and backward on 256 points, and any error there (Triton's JIT, ptxas,
  an unsupported GPU) makes that geometry use the reference for the rest of the process. A CUDA
  out-of-memory error is raised, not hidden.

Triton is imported lazily (first use on a CUDA machine); nothing is built by hand: Triton compiles
the kernels just in time and caches them. :mod:`pipeline.stage2.nerf.encoding` lists this backend as
``"triton"`` in its explicit ``BACKENDS`` table, first in the ``"auto"`` order where it is available; selecting
it where it is not falls back to ``"torch"`` (``Backend.fallback``) with one warning.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from pipeline.stage2.nerf.hash_grid import HashGridSpec, TorchHashGrid

LOG = logging.getLogger("pipeline.stage2.nerf.kernels.hash_grid_triton")
KERNELS_MODULE = "pipeline.stage2.nerf.kernels.hash_grid_triton_kernels"

_WARNED: set[tuple[str, str]] = set()


def warn_once(reason: str, what: str = "triton hash-grid backend",
              instead: str = "the torch reference (same table layout)") -> None:
    """Warn (and log) that the torch reference runs instead of the kernels, once per reason and process."""
    if (what, reason) in _WARNED:
        return
    _WARNED.add((what, reason))
    msg = f"{what}: {reason}; using {instead}"
    LOG.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def module_status(module: str) -> tuple[bool, str]:
    """``(True, "")`` when the Triton kernels of ``module`` can run here, else ``(False, why not)``."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken/incompatible Triton is "unavailable", never a crash
        return False, f"triton failed to import ({type(exc).__name__}: {exc})"
    return True, ""


def triton_status() -> tuple[bool, str]:
    """``module_status`` of the hash-grid kernels."""
    return module_status(KERNELS_MODULE)


def run_probe(launch: Callable[[], object], device: torch.device | str) -> str | None:
    """Call ``launch`` (kernels on a few points) and wait for the device: ``None`` when it worked, else why
    not, in one line. A CUDA out-of-memory error is raised, never turned into a fallback."""
    try:
        launch()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return None
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the JIT or the driver raise: use the reference
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"the kernels failed to compile or run here ({type(exc).__name__}: {first})"


def triton_available() -> bool:
    return triton_status()[0]


def _kernels():
    return importlib.import_module(KERNELS_MODULE)


_PROBED: dict[tuple, str | None] = {}   # (spec, device) -> None (kernels work) or why not


def probe_kernels(spec: HashGridSpec, table: torch.Tensor, meta: torch.Tensor, kernels=None) -> str | None:
    """Compile and run the forward and backward kernels once for this grid geometry on ``table``'s device
    (256 points): ``None`` when they work, else why not (cached per geometry and device for the process)."""
    key = (spec, str(table.device))
    if key not in _PROBED:
        k = kernels or _kernels()

        def launch() -> None:
            x = torch.rand(256, spec.n_dims, device=table.device)
            out = k.forward(x, table.detach(), meta, spec.log2_hashmap_size)
            k.backward(x, torch.ones_like(out), meta, table.shape[0], spec.log2_hashmap_size)

        _PROBED[key] = run_probe(launch, table.device)
    return _PROBED[key]


class _HashGridFunction(torch.autograd.Function):
    """``(x [N, d] fp32, table [rows, F] fp32) -> [N, L F]``; differentiable w.r.t. the table only."""

    @staticmethod
    def forward(ctx, x, table, meta, log2_hashmap_size):
        out = _kernels().forward(x, table, meta, log2_hashmap_size)
        ctx.save_for_backward(x, meta)
        ctx.n_rows = table.shape[0]
        ctx.log2_hashmap_size = log2_hashmap_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        x, meta = ctx.saved_tensors
        grad_out = grad_out.to(torch.float32)          # strided grads (expand, slices) are read in place
        gtable = _kernels().backward(x, grad_out, meta, ctx.n_rows, ctx.log2_hashmap_size)
        return None, gtable, None, None


class TritonHashGrid(TorchHashGrid):
    """``TorchHashGrid`` whose forward/backward run as Triton kernels on CUDA (reference elsewhere)."""

    def __init__(self, spec: HashGridSpec):
        super().__init__(spec)
        # non-persistent: the state dict stays exactly TorchHashGrid's
        meta = torch.tensor([[r, o, int(d), r + 1] for r, o, d in zip(self.resolutions, self.offsets, self.dense)],
                            dtype=torch.int32)
        self.register_buffer("meta", meta, persistent=False)

    def kernel_blocker(self, x: torch.Tensor) -> str | None:
        """Why this call cannot use the kernels (``None`` when it can)."""
        ok, why = triton_status()
        if not ok:
            return why
        if not (x.is_cuda and self.table.is_cuda):
            return "inputs or table are not on a CUDA device"
        if self.table.dtype != torch.float32:
            return f"the table is {self.table.dtype}, the kernels need float32"
        if x.requires_grad and torch.is_grad_enabled():
            return "the inputs require grad (the kernels differentiate w.r.t. the table only)"
        if self.table.numel() >= 2**31 or self.spec.output_dim > 2**20:
            return "the table is too large for the kernels' int32 offsets"
        return probe_kernels(self.spec, self.table, self.meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.spec.n_dims:
            raise ValueError(f"hash grid expects [N, {self.spec.n_dims}] inputs, got {tuple(x.shape)}")
        blocker = self.kernel_blocker(x)
        if blocker is not None:
            warn_once(blocker)
            return super().forward(x)
        if x.shape[0] == 0:
            return x.new_zeros(0, self.spec.output_dim, dtype=torch.float32)
        x = x.to(torch.float32).contiguous()
        return _HashGridFunction.apply(x, self.table.contiguous(), self.meta, self.spec.log2_hashmap_size)

