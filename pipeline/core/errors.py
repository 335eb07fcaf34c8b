"""The one exception family the CLIs turn into a single clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class PipelineError(RuntimeError):
    """A problem with a user's input or an artifact; the message names the file (and frame/field)."""

    def __init__(self, path: Path | str, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")
