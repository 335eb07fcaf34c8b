"""Config mechanism: :class:`ConfigError` and :func:`from_mapping` (a dataclass from a mapping or JSON).

``from_mapping`` rejects unknown keys, so a typo in config.yaml is an error rather than a silently ignored
setting. The stage configs themselves are in :mod:`pipeline.core.config.preprocess` and
:mod:`pipeline.core.config.models`; import everything from :mod:`pipeline.core.config`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def from_mapping(cls: type[T], data: Mapping[str, Any] | str | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping (or a JSON string); unknown keys are an error."""
    if data is None:
        data = {}
    if isinstance(data, str):
        data = json.loads(data) if data.strip() else {}
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown config keys {unknown}; known: {sorted(known)}")
    return cls(**data)  # type: ignore[call-arg]
