"""Typed stage configs, filled from config.yaml (one dataclass per stage; no argparse sprawl).

Snakemake validates config.yaml against workflow/schemas/config.schema.yaml on every run and
passes each rule its own section as JSON (``--config '{...}'``); the section is a rule ``param``,
so changing a value re-runs exactly that rule and its descendants. ``from_mapping`` rejects
unknown keys, so a typo in config.yaml is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
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


@dataclass(frozen=True)
class IngestConfig:
    fps: int = 25                   # output frame rate (constant)
    sample_rate: int = 16000        # output audio rate (mono, s16)
    min_duration_sec: float = 3.0   # shorter clips are refused
    warn_duration_sec: float = 60.0 # shorter clips are accepted with a warning
    test_fraction: float = 1 / 11   # last fraction of frames is the test split
    crf: int = 12                   # x264 quality of ingest/video.mp4 (0 = lossless)
    min_decoded_fraction: float = 0.9  # fewer decoded frames than this share of the header's is "truncated"
