"""Contracts of the preprocessing stages (ingest, crop, parsing, landmarks, tracking, AUs, audio) and stage 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.artifacts.store import ArraySpec, ArtifactError, JsonSpec, NpySpec, TableSpec, fixed_list_column
from pipeline.core.layout import RELATIVE as R  # the artifact's path in a subject folder names its spec

# ============================================================================= the contracts

# --- ingest ------------------------------------------------------------------------------
INGEST_META = JsonSpec(
    str(R.ingest.meta),
    required={
        "source": str,
        "source_sha256": str,
        "source_fps": (int, float),
        "source_frames": int,
        "source_size": list,             # [width, height] of the source video as stored (before its rotation)
        "fps": int,                      # always 25
        "n_frames": int,                 # frames of ingest/video.mp4
        "duration_sec": (int, float),    # n_frames / fps; audio.wav has exactly this length
        "sample_rate": int,              # 16000
        "video_start_sec": (int, float), # container start times of the source streams
        "audio_start_sec": (int, float),
        "audio_offset_applied_sec": (int, float),  # >0: that much leading audio dropped; <0: silence prepended
        "audio_padded_end_sec": (int, float),      # silence appended so audio covers the last frame
        "split": dict,                   # {"train": [start, stop), "test": [start, stop)} frame ranges
    },
    optional={                           # since issue #24 (phone videos)
        "source_rotation": int,          # display rotation of the source, degrees CCW (applied: frames are upright)
        "source_pix_fmt": str,           # e.g. yuv420p10le (converted to 8-bit yuv420p)
        "source_hdr": str,               # "" or the HDR transfer that was tone-mapped to BT.709
        "size": list,                    # [width, height] of ingest/video.mp4 (upright, scaled to ingest.max_side)
        "audio_stream": int,             # the audio stream used (index among the source's audio streams)
        "audio_stream_levels_db": list,  # speech-band level of every audio stream, dBFS (the choice's basis)
    },
)

# --- crop --------------------------------------------------------------------------------
# One row per *sampled* frame (every crop.detect_every-th frame of ingest/video.mp4). The box is
# the best-scoring face (BlazeFace short range) in source pixels; NaN and score 0 when n_faces == 0.
CROP_BOXES = TableSpec(
    str(R.crop.boxes),
    pa.schema([
        ("frame_idx", pa.int32()),
        ("n_faces", pa.int32()),         # faces found on this frame (>= 2: a second person)
        ("score", pa.float32()),         # detection score of the best face, 0 if none
        ("x0_px", pa.float32()),         # face box: left, top, width, height in source pixels
        ("y0_px", pa.float32()),
        ("w_px", pa.float32()),
        ("h_px", pa.float32()),
    ]),
)

CROP_META = JsonSpec(
    str(R.crop.meta),
    required={
        "source_size": list,             # [width, height] of ingest/video.mp4
        "window": list,                  # [x0, y0, side] square crop window in source px (may leave the image)
        "padding": dict,                 # {"left","top","right","bottom"}: source px outside the image, border-replicated
        "valid_box": list,               # [x0, y0, x1, y1) in output px: the part showing real image (not padding)
        "size": int,                     # output width = height (crop.size)
        "scale": (int, float),           # output px per source px (size / side)
        "face_box": list,                # median face box [x0, y0, w, h] in source px
        "face_fraction": (int, float),   # achieved face box width / window side
        "fps": int,
        "n_frames": int,                 # frames of crop/video.mp4 (= ingest n_frames)
        "detect_every": int,
        "n_sampled": int,                # rows of boxes.parquet
    },
)

# --- parsing -----------------------------------------------------------------------------
# Label values of parsing/labels.npz (DESIGN.md §4); PARSING_LABEL_NAMES[i] names value i.
LABEL_BACKGROUND, LABEL_TORSO, LABEL_NECK, LABEL_FACE, LABEL_HAIR, LABEL_LIPS, LABEL_MOUTH, LABEL_EYES = range(8)
PARSING_LABEL_NAMES = ("background", "torso", "neck", "face", "hair", "lips", "mouth", "eyes")
PARSING_LABELS = ArraySpec(
    str(R.parsing.labels),
    keys={"labels": ("uint8", 3),        # [N, H, W] at crop size, values LABEL_*
          "frame_idx": ("int32", 1)},    # [N] = 0..N-1, rows of landmarks.parquet / frames of crop/video.mp4
)
PARSING_TORSO = ArraySpec(
    str(R.parsing.torso),
    keys={"alpha": ("uint8", 3),         # [N, H, W] soft torso+neck matte, head removed (0 on labels 3-7)
          "frame_idx": ("int32", 1)},    # RGBA torso image of frame i = crop frame i (RGB) + alpha[i]
)
# parsing/background.png: RGB uint8 [H, W] at crop size (temporal median of background, holes inpainted).
# parsing/contact_sheet.png: a grid of frames with colour-coded label overlays (for people, not code).
PARSING_STATS = JsonSpec(
    str(R.parsing.stats),
    required={
        "n_frames": int, "size": int,
        "segmenter_model": str, "segmenter_sha256": str,
        "landmark_filled_frames": int,     # frames without landmarks that took the nearest frame's mesh
        "label_fraction_mean": dict,       # label name -> mean fraction of the crop over frames
        "label_missing_frames": dict,      # label name -> frames where the label is absent
        "flicker_mean": (int, float),      # mean fraction of pixels changing label between consecutive frames
        "flicker_max": (int, float),
        "plate_mae_255": (int, float),     # mean |frame - plate| on label-0 pixels of the sampled frames (0-255)
        "plate_unseen_fraction": (int, float),  # plate pixels never background (inpainted)
        "frames_per_sec": (int, float),    # wall clock, decode to last label map (plate and sheet excluded)
        "frames_per_cpu_sec": (int, float),  # the same frames over the process's CPU time (all threads)
    },
)



# --- landmarks ---------------------------------------------------------------------------
N_LANDMARKS = 478       # mediapipe FaceLandmarker mesh (468 + 10 iris points)
N_BLENDSHAPES = 52
# Column order of LANDMARKS.blendshapes: the FaceLandmarker's output order (checked at run time).
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
assert len(BLENDSHAPE_NAMES) == N_BLENDSHAPES
LANDMARKS = TableSpec(
    str(R.landmarks.table),
    pa.schema([
        ("frame_idx", pa.int32()),
        ("detected", pa.bool_()),        # the landmarker found the face on this frame
        ("interpolated", pa.bool_()),    # filled in from neighbours (gap <= max_gap frames)
        # 478 x (x, y, z): x, y in crop pixels; z in the same pixel scale (mediapipe's relative depth)
        ("landmarks", pa.list_(pa.float32(), N_LANDMARKS * 3)),
        ("blendshapes", pa.list_(pa.float32(), N_BLENDSHAPES)),  # scores in [0, 1], mediapipe's order
        ("pose", pa.list_(pa.float32(), 16)),  # 4x4 facial transformation matrix, row-major
    ]),
)

# --- tracking ----------------------------------------------------------------------------
# Head space = the face model's canonical space = mediapipe's canonical face mesh frame: x to the
# image right of a frontal face, y up, z out of the face towards the camera; unit: centimetres.
N_EXPR = 32             # expression coefficients per frame (unit prior variance each)
TRACKS = TableSpec(
    str(R.tracking.tracks),
    pa.schema([
        ("frame_idx", pa.int32()),
        ("rotvec", pa.list_(pa.float32(), 3)),  # head rotation R, axis-angle (rad), head space: X_gl = R X + t_gl
        ("yaw_rad", pa.float32()),       # R = Ry(yaw) Rx(pitch) Rz(roll) (intrinsic Y-X-Z); 0 = facing the camera
        ("pitch_rad", pa.float32()),
        ("roll_rad", pa.float32()),
        ("tx", pa.float32()),            # head origin in OpenCV camera coordinates (x right, y down, z forward), cm
        ("ty", pa.float32()),
        ("tz", pa.float32()),
        ("expression", pa.list_(pa.float32(), N_EXPR)),
        ("reproj_err_px", pa.float32()),  # mean 2D distance fitted vs detected landmarks, crop px
        ("weight", pa.float32()),        # data weight: 1 detected, tracking.interpolated_weight, 0 missing
    ]),
)
FACE_MODEL = ArraySpec(
    str(R.tracking.face_model),
    keys={
        "mean": ("float32", 2),          # [478, 3] cm: canonical mesh (iris points: the clip's mean)
        "identity": ("float32", 2),      # [478, 3] cm: subject offset; neutral-ish shape = mean + identity
        "basis": ("float32", 3),         # [478, 3, N_EXPR] cm per unit coefficient
        "landmark_ids": ("int32", 1),    # [478] mediapipe landmark index of each model point
        "triangles": ("int32", 2),       # [T, 3] canonical mesh triangles (indices < 468)
        "focal_px": ("float32", 0),      # shared focal length, crop px
        "cx": ("float32", 0),            # principal point (crop centre), px
        "cy": ("float32", 0),
        "w": ("int32", 0),               # crop size, px
        "h": ("int32", 0),
    },
)
CANONICAL_LANDMARKS = ArraySpec(
    str(R.tracking.canonical),
    keys={
        "frame_idx": ("int32", 1),       # [N]
        "landmarks": ("float32", 3),     # [N, 478, 3] pose-free fitted shapes mean + identity + basis @ e, cm, head space
    },
)
TRANSFORMS = JsonSpec(
    str(R.tracking.transforms),
    required={
        "focal_px": float, "cx": float, "cy": float, "w": int, "h": int,
        "convention": str,               # "camera_to_head, OpenGL (x right, y up, camera looks down -z), cm"
        "frames": list,                  # [{"frame_idx": i, "transform_matrix": 4x4 camera-to-head}]
        "split": dict,                   # ingest/meta.json split: {"train": [a, b), "test": [b, n)}
    },
)
TRACKING_METRICS = JsonSpec(
    str(R.tracking.metrics),
    required={
        "n_frames": int, "focal_px": float, "reproj_mean_px": float, "reproj_p95_px": float,
        "jitter_rot_deg": float, "jitter_trans_rel": float,            # RMS 2nd difference, fitted track
        "jitter_rot_deg_init": float, "jitter_trans_rel_init": float,  # same for the per-frame closed form
        "fit_seconds": float,
    },
)

# --- action units (pipeline/preprocess/action_units.py; mappings, fit and normalisation: au_signals.py) ------
AUS = TableSpec(
    str(R.aus.table),
    pa.schema([
        ("frame_idx", pa.int32()),
        # OpenFace-style intensities, per-subject normalised to [0, 5], finite on every frame
        ("au01_r", pa.float32()), ("au02_r", pa.float32()), ("au04_r", pa.float32()),
        ("au12_r", pa.float32()), ("au15_r", pa.float32()), ("au20_r", pa.float32()),
        ("au25_r", pa.float32()), ("au26_r", pa.float32()), ("au45_r", pa.float32()),
        # raw pose-free geometric signals (tracking/canonical.npz)
        ("ear", pa.float32()),           # eye aspect ratio, mean of both eyes (lid / corner distance)
        ("lip_gap", pa.float32()),       # inner-lip distance 13-14 / subject's median face height 10-152
        ("jaw_drop", pa.float32()),      # nose tip 1 - chin 152 distance / the same face height
        ("filled", pa.bool_()),          # no landmarks on this frame: blendshapes interpolated in time
    ]),
)
AUS_STATS = JsonSpec(
    str(R.aus.stats),
    required={
        "n_frames": int, "fps": (int, float), "duration_sec": (int, float),
        "filled_frames": int,            # rows of aus.parquet with filled = true
        "geometry_source": str,          # "landmarks" | "canonical": the points the geometric signals come from
        "canonical_ear_r": (float, type(None)),  # corr. of the EAR of canonical.npz vs the landmarks' (None: not given)
        "blink_threshold": (int, float),
        "blink_count": int,              # AU45 excursions above blink_threshold (au_signals.detect_blinks)
        "blinks_per_minute": (int, float),
        "blink_frames": list,            # frame_idx of each blink's AU45 peak
        "normalisation": dict,           # au -> {"low", "high", "span"}: signal values mapped to 0 and high_value
        "geometry_fit": dict,            # au -> {"geometry", "r", "slope", "intercept", "weight"} (AU25, AU26, AU45)
        "config": dict,                  # the action_units config used
    },
)

# --- lip-audio sync (rule measure_av_sync, pipeline/audio/sync.py) ---------------------------------------
# sync/audio.wav: 16 kHz mono PCM s16 of exactly ingest/audio.wav's length; sample s = ingest sample
# s + shift_frames * 640 (zeros where that falls outside the clip). Every later reader of the subject's audio
# (audio features "self", the render's mux, the ER-NeRF export) reads this file.
SYNC_OFFSET = JsonSpec(
    str(R.sync.offset),
    required={
        "audio": str,                    # the ingested audio measured (ingest/audio.wav)
        "fps": int, "n_frames": int,
        "offset_frames": (int, type(None)),  # measured: > 0 audio trails the video (comes late); None: not reliable
        "best_lag": (int, type(None)),   # the detector's peak lag even when not reliable (None: nothing measured)
        "peak_r": (int, float, type(None)),  # Pearson r of the mouth and speech-band signals at the peak
        "chance_r": (int, float, type(None)),  # 95 % chance level of the peak of the search (detector's null_r95)
        "agreement": (int, float, type(None)),  # share of informative windows (own peak above their own chance)
                                                # peaking within 1 frame of the global lag; None: none informative
        "reliable": bool,
        "reason": str,                   # why not reliable ("" when reliable)
        "mode": str,                     # sync.correct: "auto" | "off" | "explicit" (sync.offset_frames set)
        "shift_frames": int,             # correction applied to sync/audio.wav: the audio moved earlier by this
                                         # many frames (= offset_frames when corrected; 0 = none)
        "corrected": bool,               # shift_frames != 0
        "decision": str,                 # the one log line: what was found and what was done
        "detector": dict,                # sync_offset's full result on the ingested audio (curve, windows, ...)
        "after": (dict, type(None)),     # the same detector on sync/audio.wav (None: nothing was measurable)
        "config": dict,
    },
)

# --- audio features (audio/<clip>.npz + audio/<clip>.parquet; <clip> = "self" for the subject's own audio)
AUDIO_FEATURES = ArraySpec(
    str(R.audio.features("<clip>")),
    keys={
        "features": ("float32", 3),     # [N, window=16, D]: feature frames 2i-8 .. 2i+7 of video frame i, finite
        "frame_idx": ("int32", 1),      # [N] video frames 0..N-1 (own audio: N = ingest n_frames)
        "columns": ("str", 1),          # [D] names: mel_00..mel_79, f1_hz..f3_hz, log_b1..log_b3, log_f0, voiced, rms_db
        "valid": ("bool", 2),           # [N, window] False where the window reaches past the clip (zero-padded)
        "pad_start": ("int32", 0),      # zero feature frames before the clip's first feature frame (window/2)
        "pad_end": ("int32", 0),        # zero feature frames after its last one
        "feat_mean": ("float32", 1),    # [D] per-clip normalisation applied: features = (raw - mean) / std
        "feat_std": ("float32", 1),     # [D] (0 and 1 when audio.normalize is "none")
        "fps": ("int32", 0),            # video frame rate the windows are aligned to (25)
    },
    optional={
        "encoder": ("float32", 3),      # [N, 2, H]: learned-encoder frames 2i, 2i+1 (50 Hz) of video frame i
        "encoder_name": ("str", 0),     # "speech_embedding" (H=96) | "hubert" | "wav2vec2" (H = hidden size)
    },
)
AUDIO_FRAMES = TableSpec(
    str(R.audio.frames("<clip>")),
    pa.schema([
        ("frame_idx", pa.int32()),
        ("t_sec", pa.float64()),        # frame_idx / fps: the analysis instant of the frame
        ("rms", pa.float32()),          # RMS amplitude over 25 ms (full scale = 1)
        ("f0_hz", pa.float32()),        # Praat pitch; NaN when unvoiced
        ("voiced", pa.bool_()),
        ("f1_hz", pa.float32()),        # Praat Burg formants / bandwidths: NaN when unvoiced (or none found)
        ("f2_hz", pa.float32()),
        ("f3_hz", pa.float32()),
        ("b1_hz", pa.float32()),
        ("b2_hz", pa.float32()),
        ("b3_hz", pa.float32()),
    ]),
)

# --- stage 1: audio -> landmarks ----------------------------------------------------------
# stage1/model.pt: torch state_dict of pipeline.stage1.model.Audio2Landmarks (weights only);
# stage1/model.json: the constructor arguments and the stage-1 config it was trained with.
STAGE1_BASIS = ArraySpec(
    str(R.stage1.basis),
    keys={
        "mean": ("float32", 2),          # [478, 3] cm: the subject's mean canonical shape (train split)
        "components": ("float32", 2),    # [K, 478*3] orthonormal PCA directions of the offsets
        "scale": ("float32", 1),         # [K] coefficient std (the network predicts whitened coefficients)
        "weight": ("float32", 1),        # [478] each point's weight in the target space (offsets x weight; stage1.jaw_weight)
    },
)
STAGE1_MODEL = JsonSpec(
    str(R.stage1.meta),
    required={"in_dim": int, "out_dim": int, "window": int, "d_model": int, "n_layers": int, "n_heads": int,
              "use_encoder": bool, "config": dict},
)
STAGE1_PRED = TableSpec(
    str(R.stage1.pred("<clip>")),
    pa.schema([
        ("frame_idx", pa.int32()),
        ("t_sec", pa.float64()),
        # predicted pose-free landmarks, head space (cm), 478 x (x, y, z) as tracking/canonical.npz
        ("landmarks", pa.list_(pa.float32(), N_LANDMARKS * 3)),
        ("mouth_open", pa.float32()),    # inner-lip distance / face height of the prediction
    ]),
)


def read_stage1_landmarks(path: Path | str) -> np.ndarray:
    """The ``landmarks`` column of a STAGE1_PRED table as float32 ``[N, 478, 3]``; a non-finite frame is an error
    naming it (the render and the head's training both read predictions through this)."""
    lms = fixed_list_column(STAGE1_PRED.read(path), "landmarks", (N_LANDMARKS, 3)).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(lms).all((1, 2)))
    if len(bad):
        raise ArtifactError(path, f"non-finite landmarks at frame {int(bad[0])}")
    return lms


STAGE1_METRICS = JsonSpec(
    str(R.stage1.metrics),
    required={
        "test_frames": int,
        "lmd_px": float,                 # test-split mouth LMD, px at 512² (lips, per-frame mean removed)
        "lmd_px_mean_shape": float,      # baseline (a): the subject's mean mouth
        "lmd_px_linear": float,          # baseline (b): ridge regression from the same audio windows
        "mouth_corr": float,             # Pearson r of predicted vs tracked mouth opening (test split)
        "smoothing_lag_frames": int,     # lag of the post-smoothing (best cross-correlation), 0 = none
        "best_step": int, "curve": list, "train_seconds": float,
    },
)
