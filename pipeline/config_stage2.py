"""Stage-2 configs: the head field (``Stage2ModelConfig``) and its training (``Stage2TrainConfig``).

Both are filled from config.yaml's one ``stage2:`` section by :func:`stage2_configs`; re-exported by
:mod:`pipeline.config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from pipeline.config import ConfigError, from_mapping


@dataclass(frozen=True)
class Stage2ModelConfig:
    """stage2: the landmark-conditioned head field and its renderer (pipeline/stage2, docs/stage2.md)."""

    # hash grid
    grid: str = "3d"                # "3d" (one 3D hash grid) | "triplane" (three 2D grids, ER-NeRF)
    triplane_reduce: str = "concat" # tri-plane features: "concat" | "sum"
    backend: str = "auto"           # "auto" | "torch" | "triton" (CUDA) | "tcnn" (tcnn only where tinycudann imports)
    levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048   # over the whole box [-bound, bound]
    bound: float = 1.0              # normalised head space is the cube [-bound, bound]^3
    # MLPs
    hidden_dim: int = 64
    num_layers: int = 3
    geo_feat_dim: int = 15
    hidden_dim_color: int = 64
    num_layers_color: int = 2
    view_dependent: bool = False    # append SH (degree 2) of the view direction to the colour input
    density_activation: str = "trunc_exp"  # "trunc_exp" | "softplus"
    # conditioning
    use_landmarks: bool = True
    landmark_subset: str = "lips_eyes_jaw_nose"  # a key of pipeline.stage2.field.LANDMARK_SUBSETS
    landmark_k: int = 8             # nearest landmarks per sample
    landmark_sigma: float = 0.1     # Gaussian sigma, head-space units
    landmark_freqs: int = 2         # sinusoidal frequencies of the weighted offsets
    landmark_embed_dim: int = 8     # learned landmark-identity embedding
    landmark_feat_dim: int = 32
    audio_dim: int = 32             # audio code after window attention (0 = no audio input)
    audio_window: int = 16          # audio feature steps per frame given to the attention
    use_au45: bool = True           # blink scalar gated into the eye region
    # ray marching
    num_samples: int = 128          # samples per ray before occupancy skipping
    occupancy_resolution: int = 64
    occupancy_decay: float = 0.95
    occupancy_threshold: float = 5.0   # density units (1/length); effective min(this, grid mean)
    early_stop_eps: float = 0.0     # drop samples behind transmittance < eps (0 = off)

    def __post_init__(self) -> None:
        choices = {"grid": ("3d", "triplane"), "triplane_reduce": ("concat", "sum"),
                   "backend": ("auto", "torch", "triton", "tcnn"), "density_activation": ("trunc_exp", "softplus"),
                   "landmark_subset": ("lips_eyes_jaw_nose", "lips_eyes", "lips")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"stage2.{key}: {getattr(self, key)!r} is not one of {list(allowed)}")
        positive = ("levels", "features_per_level", "base_resolution", "hidden_dim", "num_layers",
                    "hidden_dim_color", "num_layers_color", "landmark_k", "num_samples", "occupancy_resolution")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"stage2.{key} must be >= 1, got {getattr(self, key)}")
        if self.finest_resolution < self.base_resolution:
            raise ConfigError("stage2.finest_resolution must be >= base_resolution")
        if self.bound <= 0 or self.landmark_sigma <= 0:
            raise ConfigError("stage2.bound and stage2.landmark_sigma must be > 0")
        if self.audio_dim < 0 or self.audio_window < 1:
            raise ConfigError("stage2.audio_dim must be >= 0 and audio_window >= 1")


@dataclass(frozen=True)
class Stage2TrainConfig:
    """cache_frames / train_head (pipeline/stage2/cache.py, train.py): the training half of the ``stage2`` section.

    The ``stage2`` section of config.yaml holds the keys of both :class:`Stage2ModelConfig` and this class;
    :func:`stage2_configs` splits it (unknown keys are an error)."""

    image_size: int = 0             # frames/labels cached and trained at this size (px); 0 = the crop size
    device: str = "auto"            # "auto" | "cpu" | "cuda"
    threads: int = 2                # torch CPU threads
    amp: bool = False               # bf16 autocast of the field on CUDA (ignored on CPU)
    deterministic: bool = False     # torch deterministic algorithms (a resumed run then equals an uninterrupted one)
    seed: int = 0
    steps: int = 30000              # optimisation steps (upper bound when max_minutes > 0)
    max_minutes: float = 0.0        # wall-clock budget of the training loop (0 = none); phases follow max(step, time)
    lr: float = 1e-2                # hash-grid tables (Adam)
    lr_net: float = 1e-3            # MLPs, landmark / audio encoders
    lr_final_factor: float = 0.1    # exponential decay to lr * factor at the end
    rays_per_batch: int = 4096
    frames_per_batch: int = 4       # frames whose rays make up one batch
    head_margin: float = 0.05       # background band around the head mask sampled too (x image size)
    error_map_size: int = 64        # per-frame error map resolution (cells per side)
    error_map_mix: float = 0.5      # share of rays drawn by the error map (rest uniform over the region)
    error_map_ema: float = 0.1      # weight of a new loss value in a cell's EMA
    loss: str = "l2"                # colour loss: "l1" | "l2" | "smooth_l1"
    opacity_weight: float = 0.01    # BCE of head opacity vs the head mask (labels 3-7)
    eyes_fraction: float = 0.1      # eyes fine-tuning phase (patches around the eyes) before the lips phase
    lips_fraction: float = 0.1      # last fraction of training: lips fine-tuning phase (patches around the lips)
    patch_size: int = 32            # fine-tuning patch side (px at 512, scaled with image_size)
    patch_share: float = 0.5        # share of the batch's rays given to patches during the phases
    ssim_weight: float = 0.1        # patch loss weights (1 - SSIM, image-gradient L1)
    grad_weight: float = 0.1
    occupancy_every: int = 16       # occupancy-grid update period (steps)
    occupancy_frames: int = 4       # frames whose max density the grid keeps at each update
    checkpoint_every: int = 1000
    log_every: int = 50             # train-curve points (step, loss, PSNR, seconds)
    eval_every: int = 0             # test-split PSNR/SSIM every k steps (0 = only at the end)
    eval_max_frames: int = 50       # test frames evaluated (evenly spaced; 0 = all)
    strip_frames: int = 3           # test frames in stage2/test_strip.png
    head_radius: float = 1.6        # head sphere radius, x half the largest extent of the mean landmark shape

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"stage2.device: {self.device!r} is not one of auto, cpu, cuda")
        if self.loss not in ("l1", "l2", "smooth_l1"):
            raise ConfigError(f"stage2.loss: {self.loss!r} is not one of l1, l2, smooth_l1")
        for key in ("threads", "steps", "rays_per_batch", "frames_per_batch", "error_map_size", "patch_size",
                    "occupancy_every", "occupancy_frames", "checkpoint_every", "log_every", "strip_frames"):
            if getattr(self, key) < 1:
                raise ConfigError(f"stage2.{key} must be >= 1, got {getattr(self, key)}")
        if self.image_size < 0 or self.image_size % 2 or 0 < self.image_size < 16:
            raise ConfigError(f"stage2.image_size must be 0 or even and >= 16, got {self.image_size}")
        if min(self.lr, self.lr_net, self.lr_final_factor, self.head_radius) <= 0:
            raise ConfigError("stage2: lr, lr_net, lr_final_factor and head_radius must be > 0")
        if not (0 <= self.eyes_fraction and 0 <= self.lips_fraction and self.eyes_fraction + self.lips_fraction < 1):
            raise ConfigError("stage2: eyes_fraction, lips_fraction >= 0 with a sum < 1")
        if not (0 <= self.error_map_mix <= 1 and 0 < self.error_map_ema <= 1 and 0 < self.patch_share < 1):
            raise ConfigError("stage2: error_map_mix in [0, 1], error_map_ema in (0, 1], patch_share in (0, 1)")
        if min(self.max_minutes, self.head_margin, self.opacity_weight, self.ssim_weight, self.grad_weight,
               self.eval_every, self.eval_max_frames) < 0:
            raise ConfigError("stage2: max_minutes, head_margin, loss weights, eval_every, eval_max_frames >= 0")


def stage2_configs(data: Mapping[str, Any] | str | None) -> tuple[Stage2ModelConfig, Stage2TrainConfig]:
    """Split the ``stage2`` section into its model and training halves; unknown keys are an error."""
    if isinstance(data, str):
        data = json.loads(data) if data.strip() else {}
    data = dict(data or {})
    model_keys = {f.name for f in fields(Stage2ModelConfig)}
    train_keys = {f.name for f in fields(Stage2TrainConfig)}
    unknown = sorted(set(data) - model_keys - train_keys)
    if unknown:
        raise ConfigError(f"stage2: unknown config keys {unknown}; known: {sorted(model_keys | train_keys)}")
    model = from_mapping(Stage2ModelConfig, {k: v for k, v in data.items() if k in model_keys}, "stage2")
    train = from_mapping(Stage2TrainConfig, {k: v for k, v in data.items() if k in train_keys}, "stage2")
    return model, train
