"""Contracts of the model stages and outputs: stage 2, torso, render, evaluate, export."""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.artifacts.store import ArraySpec, JsonSpec, NpySpec, TableSpec
from pipeline.core.layout import RELATIVE as R  # the artifact's path in a subject folder names its spec

# --- stage 2: head NeRF (pipeline/stage2/cache.py, train.py; docs/stage2.md) ---------------
# cache_frames: the crop video and the label maps at stage2.image_size, decoded once on the CPU side so
# the GPU job needs no ffmpeg; frame i = crop frame i = row i of parsing/labels.npz.
STAGE2_FRAMES = NpySpec(str(R.stage2.frames), "uint8", 4)   # [N, S, S, 3] RGB
STAGE2_LABELS = NpySpec(str(R.stage2.labels), "uint8", 3)   # [N, S, S] LABEL_* values (nearest-neighbour resize)
STAGE2_CACHE = JsonSpec(
    str(R.stage2.cache),
    required={"n_frames": int, "size": int,          # S
              "crop_size": int,                       # crop/video.mp4 side the cache was resized from
              "video_sha256": str, "labels_sha256": str},
)
# stage2/head.pt: torch state dict (weights only, loads with torch.load(weights_only=True)), head-space normalised
# coordinates, of pipeline.stage2.nerf.field.LandmarkField (stage2.head nerf) or of
# pipeline.stage2.gaussians.model.GaussianHead (gaussians; head.json's model_config.head says which).
# stage2/occupancy.npz: the NeRF's occupancy grid, or the summed opacity of the Gaussians' means per cell.
STAGE2_HEAD = JsonSpec(
    str(R.stage2.head_meta),
    required={
        "model_config": dict,            # Stage2ModelConfig fields
        "train_config": dict,            # Stage2TrainConfig fields
        "audio_in_dim": int,             # D of audio/self.npz features (field constructor argument)
        "head_space": dict,              # {"center_cm": [3], "scale_per_cm", "radius_cm", "bound"}: x_n = (x_cm - c) s
        "occupancy": dict,               # {"resolution", "occupied_fraction"}
        "camera": dict,                  # {"focal_px", "cx", "cy", "size"} at the training image size
        "au45_source": str,              # "aus/aus.parquet" | "landmarks blendshapes (fallback)"
        "steps": int,
    },
)
# stage2/checkpoint.pt (torch.load(weights_only=True)): {"step", "model", "optimizer", "scheduler", NeRF only:
# "occupancy", "appearance" [N, appearance_dim] (empty when 0), "error_maps" [N, G, G]; "rng_torch", "rng_cuda",
# "rng_sampler" (the training device's torch.Generator state), "rng_numpy" (PCG64 state as int64 words), "curve" [K, 5]
# (pipeline.stage2.loop), "eval_curve" [K, 4], "wall_seconds", "config_hash"} - written atomically every
# stage2.checkpoint_every steps and on SIGTERM; deleted-never (a re-run resumes from it).
STAGE2_METRICS = JsonSpec(
    str(R.stage2.metrics),
    required={
        "steps": int, "train_seconds": (int, float), "steps_per_sec": (int, float), "device": str,
        "resumed_from": (int, type(None)),   # step of the checkpoint this run resumed from (None: fresh)
        "curve": list,                   # [{"step", "loss", "psnr", "seconds", + "samples_per_ray" (NeRF) or
                                         #   "visible" (Gaussians: share of them in the image)}] train batches
        "eval_curve": list,              # [{"step", "seconds", "psnr_head", "ssim_head"}] test split during training
        "test_frames": int,
        "psnr_head": float, "ssim_head": float,   # test split, over the head mask (labels 3-7), render over the plate
        "psnr_head_baseline": float,     # the background plate alone over the same pixels
        "lpips": (str, float),           # "unavailable: ..." (no backbone weights locally)
    },
    optional={
        "psnr_head_train": float, "ssim_head_train": float,   # the same on as many evenly spaced training frames
        "generalisation_gap_db": float,  # psnr_head_train - psnr_head
        "peak_gpu_mib": (float, type(None)),  # torch.cuda.max_memory_allocated of the training loop (None off CUDA)
        "peak_host_rss_mib": float,      # the process's maximum resident set size (frames are memory-mapped)
        "head": str,                     # stage2.head: "nerf" | "gaussians"
        "gaussians": int,                # the Gaussian head's number of Gaussians
        "rasterizer": str,               # the Gaussian head's rasteriser: "gsplat" | "torch" (the reference)
    },
)

# --- torso (pipeline/torso/) ----------------------------------------------------------------
# torso/torso.pt: torch state_dict of pipeline.torso.model.TorsoNet (weights only; the train-split mean torso
# RGBA it refines is a buffer of the net); torso/torso.json: its constructor arguments + pose normalisation.
TORSO_POSE_COLUMNS = ("yaw_rad", "pitch_rad", "roll_rad", "tx", "ty", "tz")  # tracks.parquet columns, in order
TORSO_MODEL = JsonSpec(
    str(R.torso.meta),
    required={
        "image_size": int,               # U-Net resolution (square)
        "output_size": int,              # texture and output resolution (the crop size unless configured)
        "crop_size": int,                # crop/video.mp4 size
        "feature_channels": int, "refine_channels": int,
        "valid_box": list,               # [x0, y0, x1, y1) real-image box in output px (crop.json); the rest is smear
        "base_channels": int, "depth": int, "style_dim": int, "flow_scale": (int, float),
        "pose_columns": list,            # TORSO_POSE_COLUMNS
        "pose_mean": list,               # train-split mean / std of the pose columns (the net sees z-scores)
        "pose_std": list,
        "config": dict,                  # the torso config it was trained with
    },
)
TORSO_METRICS = JsonSpec(
    str(R.torso.metrics),
    required={
        "test_frames": int, "eval_size": int,
        "psnr_torso_db": float,          # test split at eval_size (the output size): the torso composited over
        "psnr_neck_db": float,           # parsing/background.png vs the frame, on the frame's torso (label 1),
        "psnr_torso_neck_db": float,     # neck (label 2) and both
        "psnr_torso_mean_db": float,     # the same three for the baseline: train-split mean torso RGBA (no pose)
        "psnr_neck_mean_db": float,
        "psnr_torso_neck_mean_db": float,
        "alpha_iou": float,              # mean IoU of alpha > 0.5 vs the true matte off the head (test split)
        "alpha_iou_mean": float,         # the same for the mean torso
        "steps": int, "train_seconds": float, "device": str,
    },
)

# --- render (pipeline/render/) -----------------------------------------------------------------
# video.mp4 (test split re-synthesised from its own audio) and drive/<clip>.mp4 (any driving wav):
# H.264 yuv420p, 25 fps, render.size (crop size by default), AAC audio of exactly the rendered span.
# Frames rendered where ffmpeg is absent (GPU machines) go to an npz first, muxed later on the CPU side:
# stage2/occupancy.npz: the trained head's occupancy grid (empty-space skipping when rendering; without it
# every sample is evaluated: the same image, slower). Written by train_head, read by the render rules.
STAGE2_OCCUPANCY = ArraySpec(
    str(R.stage2.occupancy),
    keys={
        "binary": ("bool", 1),           # [R^3] occupied cells, x fastest (pipeline.stage2.nerf.occupancy)
        "density": ("float32", 1),       # [R^3] the EMA densities behind it
        "resolution": ("int32", 0),
    },
)

RENDER_FRAMES = ArraySpec(
    "<video>.frames.npz",
    keys={
        "frames": ("uint8", 4),          # [N, H, W, 3] RGB
        "fps": ("int32", 0),
        "audio_start_sec": ("float64", 0),  # the audio span the frames belong to, in the audio file's time
        "audio_end_sec": ("float64", 0),
    },
)
RENDER_STATS = JsonSpec(
    "<video>.json",
    required={
        "n_frames": int, "fps": int, "size": int, "audio": str,
        "audio_start_sec": (int, float), "audio_end_sec": (int, float),
        "head": str,                     # "stage2/head.pt" or "untrained" (random weights: tests only)
        "compositing": str,              # "soft" | "hard"
        "num_samples": int,              # head samples per ray (0: the Gaussian head)
        "frames_per_sec": (int, float),  # synthesis (head + torso + compositing, frames on the host), wall clock
        "device": str,
        "seam_jump": (float, type(None)),  # mean colour step (0-1) across the neck seam band; None: no seam seen
    },
    optional={
        "peak_gpu_mib": (float, type(None)),  # torch.cuda.max_memory_allocated during synthesis (None off CUDA)
        "peak_host_rss_mib": float,      # the process's maximum resident set size
        "torso": str,                    # "model" | "replay" (driving clips: the recorded torso of the replayed frames)
        "frames_per_sec_with_output": (int, float),  # the render loop with its writer (mp4 encode or npz)
        "warmup_seconds": (int, float),  # the first batch drawn once before the timed loop (one-time start costs)
    },
)

# --- evaluate (pipeline/evaluate/subject.py) ---------------------------------------------------------
# eval/frames.parquet: one row per test-split frame of the render vs the ground truth (render size).
EVAL_FRAMES = TableSpec(
    str(R.eval.frames),
    pa.schema([
        ("frame_idx", pa.int32()),       # frame of the clip (test split: meta.json split.test)
        ("psnr_db", pa.float64()),       # full frame; inf for identical frames
        ("psnr_head_db", pa.float64()),  # ground-truth head region (labels 3-7); NaN if the frame has none
        ("ssim", pa.float64()),
        ("ssim_head", pa.float64()),
        ("lpips", pa.float64()),         # NaN when LPIPS is unavailable (metrics.json says why)
        ("lmd_mesh_px", pa.float64()),   # mediapipe lip points, centroid removed; NaN: no face found in the render
        ("lmd_dlib_px", pa.float64()),   # dlib 68-point mouth (48-67), centroid removed
        ("mouth_open_gt", pa.float64()), # inner-lip gap / face height (pipeline.core.metrics.mouth_opening)
        ("mouth_open_render", pa.float64()),
        ("au45_gt", pa.float64()),       # AU45 on the subject's scale (aus.json fit), both from mediapipe
        ("au45_render", pa.float64()),
        ("speech_db", pa.float64()),     # 300-3000 Hz energy of the render's audio (pipeline.core.metrics.band_envelope)
        ("render_face", pa.bool_()),     # mediapipe found the face in the rendered frame
    ]),
)
# eval/metrics.json: null (None) marks a metric that is not available, with the reason alongside.
EVAL_METRICS = JsonSpec(
    str(R.eval.metrics),
    required={
        "subject": str, "video": str, "test_frames": int, "test_range": list, "size": int, "crop_size": int,
        "psnr_db": (float, type(None)),        # mean of per-frame PSNR over frames that differ (None: all identical)
        "psnr_head_db": (float, type(None)),
        "identical_frames": int,               # frames with PSNR inf (left out of the means)
        "ssim": (float, type(None)), "ssim_head": (float, type(None)),
        "lpips": (float, type(None)), "lpips_note": str,   # None + why when backbone weights are not local
        "lmd_mesh_px": (float, type(None)),    # px at the render size; None: mediapipe found no face in the render
        "lmd_mesh_frames": int, "render_face_frames": int,
        "lmd_dlib_px": (float, type(None)),
        "dlib": dict,                          # {gt_detected, render_detected, gt_borrowed_boxes, render_borrowed_boxes, predictor}
        "blink": dict,                         # {gt_count, render_count, count_error, au45_mae, au45_r, gt_frames, render_frames}
        "sync_offset_frames": (int, type(None)),      # render vs its audio (> 0: audio late); None: not measurable
        "sync_offset_gt_frames": (int, type(None)),   # the ground truth vs the same audio
        "sync_offset_vs_gt_frames": (int, type(None)),
        "sync": dict,                          # {"render", "gt"}: pipeline.core.metrics.sync_offset; "signals": inputs
        "render_fps": (float, type(None)),     # video.json frames_per_sec (None: no video.json)
        "render_device": (str, type(None)),
        "train_seconds": (float, type(None)),  # stage 1 + stage 2 + torso (None: one is missing)
        "train_seconds_parts": dict,
        "config": dict,
    },
)

# --- export (pipeline/export/ernerf.py, docs/export.md) --------------------------------------------
# export/ernerf/: the ER-NeRF / TalkingGaussian dataset folder (their format, documented in docs/export.md:
# ori_imgs/<i>.{jpg,lms}, gt_imgs/<i>.jpg, parsing/<i>.png, torso_imgs/<i>.png, bc.jpg,
# transforms_{train,val}.json, au.csv, aud.wav, aud_ours.npy [+ aud_hu.npy]). Its stats sit beside it
# (ER-NeRF globs *.json inside the folder):
EXPORT_ERNERF_STATS = JsonSpec(
    str(R.export.ernerf_stats),
    required={
        "n_frames": int, "train_frames": int, "val_frames": int,   # val = the last n - int(n * 10 / 11)
        "size": list, "fps": int, "focal_len": float,
        "scale": float,                  # exported units per head-space cm (0.01: metres)
        "centre_cm": list,               # head-space point that became the world origin
        "camera_distance_mean": float,   # mean |camera position| in exported units
        "lms_filled_frames": int,        # frames without landmarks (nearest frame's copied)
        "lms_clipped_points": int,       # 68-pt points moved inside the image
        "frames_not_detected": int,      # au.csv rows with success 0
        "audio_files": list, "au_columns": list,
        "files": dict,                   # folder -> number of files
        "seconds": float, "frames_per_sec": float, "config": dict,
    },
)
