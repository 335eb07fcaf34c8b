"""The one progress bar of every long step: tqdm where it is installed, a silent stand-in elsewhere.

The GPU machines may lack tqdm (stage-2 training and the render log their progress in lines anyway), so tqdm
is imported on the first call, never when this module is imported.

``progress(iterable, desc=..., unit=..., ...)`` wraps an iterable; ``progress(total=n, desc=...)`` is a bar
updated by hand (``bar.update(k)``), also as a context manager. Keyword arguments are tqdm's
(``total``, ``initial``, ``desc``, ``unit``, ``mininterval``, ``disable``, ``leave``).
"""

from __future__ import annotations

from typing import Any, Iterable


class _Silent:
    """What :func:`progress` returns without tqdm: iterates, updates and closes, silently."""

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``, or a silent stand-in with the same use where tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent(iterable)
    return tqdm(iterable, **kwargs)
