"""The device a step runs on, and the peak memory it used (recorded in the metrics of train_head and render).

``resolve_device(name, key)``: the ``device`` setting of a config section (``auto`` | ``cpu`` | ``cuda``).
``reset_peak(device)`` at the start of the measured work, ``peak_memory(device)`` at its end:
``{"peak_gpu_mib": torch.cuda.max_memory_allocated (None off CUDA), "peak_host_rss_mib": the process's
maximum resident set size so far (Linux ``ru_maxrss``, whole process life)}``.
"""

from __future__ import annotations

import resource
import sys

import torch

from pipeline.core.errors import PipelineError


def resolve_device(name: str, key: str) -> torch.device:
    """``auto``: CUDA where torch sees a GPU, else the CPU. ``cuda`` without a GPU is an error naming the config
    ``key`` (a job that asked for a GPU would otherwise run for hours on the CPU of a node without one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(key, "cuda requested but torch sees no GPU here")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict:
    dev = torch.device(device)
    gpu = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_gpu_mib": gpu, "peak_host_rss_mib": round(rss_mib, 1)}
