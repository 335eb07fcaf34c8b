"""The one exception family the CLIs turn into a single clear line and a non-zero exit, and how messages
name frames (:func:`format_ranges`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


class PipelineError(RuntimeError):
    """A problem with a user's input or an artifact; the message names the file (and frame/field)."""

    def __init__(self, path: Path | str, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


def format_ranges(frames: Iterable[int], step: int = 1, limit: int = 12) -> str:
    """Frame indices as compact ranges, e.g. ``0-45, 120, 200-215``; runs advance by ``step``."""
    frames = sorted(int(f) for f in frames)
    runs: list[list[int]] = []
    for f in frames:
        if runs and f - runs[-1][1] <= step:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs) - limit} more ranges)" if len(runs) > limit else "")
