"""Peak memory of the running process, recorded in the metrics of the GPU-heavy steps (train_head, render).

``reset_peak(device)`` at the start of the measured work, ``peak_memory(device)`` at its end:
``{"peak_gpu_mib": torch.cuda.max_memory_allocated (None off CUDA), "peak_host_rss_mib": the process's
maximum resident set size so far (Linux ``ru_maxrss``, whole process life)}``.
"""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict:
    dev = torch.device(device)
    gpu = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    return {"peak_gpu_mib": gpu, "peak_host_rss_mib": round(rss_mib, 1)}
