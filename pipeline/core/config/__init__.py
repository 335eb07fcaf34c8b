"""Typed stage configs, filled from config.yaml (one dataclass per stage; no argparse sprawl).

Snakemake validates config.yaml against workflow/schemas/config.schema.yaml on every run and
passes each rule its own section as JSON (``--config '{...}'``); the section is a rule ``param``,
so changing a value re-runs exactly that rule and its descendants. ``from_mapping`` rejects
unknown keys, so a typo in config.yaml is an error rather than a silently ignored setting.

The mechanism is in ``base.py``, the stage configs in ``preprocess.py`` (ingest to stage 1) and ``models.py``
(stage 2, torso, render, evaluate, export), mirroring :mod:`pipeline.core.artifacts`.
"""

from pipeline.core.config.base import ConfigError, from_mapping
from pipeline.core.config.models import (EvaluateConfig, ExportConfig, GaussianConfig, RenderConfig,
                                         Stage2ModelConfig, Stage2TrainConfig, TorsoConfig, stage2_configs)
from pipeline.core.config.preprocess import (X264_PRESETS, ActionUnitsConfig, AudioConfig, CropConfig, IngestConfig,
                                             LandmarksConfig, ParsingConfig, Stage1Config, SyncConfig,
                                             TrackingConfig)

__all__ = ["ConfigError", "from_mapping", "EvaluateConfig", "ExportConfig", "GaussianConfig", "RenderConfig",
           "Stage2ModelConfig", "Stage2TrainConfig", "TorsoConfig", "stage2_configs", "X264_PRESETS", "ActionUnitsConfig", "AudioConfig",
           "CropConfig", "IngestConfig", "LandmarksConfig", "ParsingConfig", "Stage1Config", "SyncConfig",
           "TrackingConfig"]
