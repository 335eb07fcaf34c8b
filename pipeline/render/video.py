"""Rules ``render_video`` and ``drive_video``: the talking head as a video, with its audio.

* ``video`` (results/<s>/video.mp4): the test split re-synthesised from its own audio: stage-1 landmarks
  predicted from the audio (``stage1/pred/self.parquet``) condition the stage-2 head, rendered with the
  tracked poses of the test frames; AU45 is the tracked one; the torso model gets the same poses; layers
  composited over the background plate; muxed with the test-split slice of ``sync/audio.wav`` (the subject's
  audio aligned to the video by rule measure_av_sync, the same audio stage 1 and stage 2 learned from).
* ``drive`` (results/<s>/drive/<clip>.mp4): any ``data/audio/<clip>.wav``. Landmarks from
  ``stage1/pred/<clip>.parquet``; poses replayed from the track, mirror-looped over the train frames and
  smoothed (pipeline.render.motion); the recorded torso of the replayed frames over the model's
  (``render.drive_torso: replay``, pipeline.render.replay; ``model``: the model alone); blinks sampled from the
  subject's AU45 statistics; length = the audio's, ``round(duration x 25)`` frames.
* ``mux``: frames rendered into an npz (:data:`~pipeline.core.artifacts.RENDER_FRAMES`, the ``--out *.npz`` form,
  for GPU machines without ffmpeg) -> mp4 with audio, on the CPU side.

Frame synthesis (``synthesize``) needs torch, numpy, pandas, pyarrow and opencv only; the mp4 encoding and
audio muxing import ``pipeline.core.media`` (ffmpeg) inside the functions that do them. Every video gets a
``<video>.json`` (:data:`~pipeline.core.artifacts.RENDER_STATS`): frames, audio span, head used, speed, seam jump.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from pipeline.core.artifacts import (AUDIO_FEATURES, AUS, AUS_STATS, RENDER_FRAMES, RENDER_STATS, TRANSFORMS,
                                     Provenance, config_hash, npz_stream, read_stage1_landmarks)
from pipeline.core.cli import guarded
from pipeline.core.config import RenderConfig, from_mapping
from pipeline.core.device import peak_memory, reset_peak, resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.layout import SELF_AUDIO, SubjectLayout, render_stats
from pipeline.core.progress import progress
from pipeline.render import compositing, motion
from pipeline.render.head import AnyHead, load_head
from pipeline.render.replay import ReplayTorso
from pipeline.stage2.data import time_shift_c2w
from pipeline.torso.model import Torso, read_poses
from pipeline.torso.model import load as load_torso

log = logging.getLogger("pipeline.render.video")
FPS = 25


class RenderError(PipelineError):
    pass


# ----------------------------------------------------------------------------- inputs

@dataclass
class Scene:
    """What every frame of a subject shares: the plate and the camera (crop-size intrinsics)."""

    background: np.ndarray   # uint8 [H, W, 3]
    focal: float
    cx: float
    cy: float
    crop_size: int
    c2w: np.ndarray          # [N, 4, 4] tracked camera-to-head, cm
    poses: np.ndarray        # [N, 6] torso pose columns
    split: dict


@dataclass
class Drive:
    """Per-frame signals of one video."""

    c2w: np.ndarray          # [N, 4, 4] cm
    poses: np.ndarray        # [N, 6]
    landmarks: np.ndarray    # [N, 478, 3] cm, canonical head space
    audio: np.ndarray        # [N, W, D] audio feature windows
    au45: np.ndarray         # [N] 0-5
    source_frames: np.ndarray | None = None   # [N] recorded frame whose pose is replayed (driving clips only)

    def __len__(self) -> int:
        return len(self.c2w)


def load_scene(root: Path | str) -> Scene:
    files = SubjectLayout(root)
    tr = TRANSFORMS.read(files.tracking.transforms)
    c2w = np.array([f["transform_matrix"] for f in tr["frames"]], np.float64)
    poses = read_poses(files.tracking.tracks)
    if len(poses) != len(c2w):
        raise RenderError(files.tracking.tracks, f"{len(poses)} poses, transforms.json has {len(c2w)}")
    bg = cv2.imread(str(files.parsing.background), cv2.IMREAD_COLOR)
    if bg is None:
        raise RenderError(files.parsing.background, "not a readable image")
    return Scene(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB), float(tr["focal_px"]), float(tr["cx"]), float(tr["cy"]),
                 int(tr["w"]), c2w, poses, tr["split"])


def _rows(a: np.ndarray, n: int, path: Path, what: str, slack: int = 2) -> np.ndarray:
    """``a`` cut / edge-padded to ``n`` rows when it is within ``slack`` of it."""
    if abs(len(a) - n) > slack or not len(a):
        raise RenderError(path, f"{what} has {len(a)} frames, expected {n}")
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)]) if len(a) < n else a[:n]


def test_drive(root: Path | str, scene: Scene) -> tuple[Drive, int, int]:
    """Signals of the test split (module docstring) and its frame range."""
    files = SubjectLayout(root)
    t0, t1 = scene.split["test"]
    n = len(scene.c2w)
    if not 0 <= t0 < t1 <= n:
        raise RenderError(files.tracking.transforms, f"empty or invalid test split {scene.split['test']}")
    pred, feats = files.stage1.pred(SELF_AUDIO), files.audio.features(SELF_AUDIO)
    lms = _rows(read_stage1_landmarks(pred), n, pred, "landmarks")
    audio = _rows(AUDIO_FEATURES.read(feats)["features"], n, feats, "features")
    au45 = _rows(AUS.read_pandas(files.aus.table)["au45_r"].to_numpy(np.float32), n, files.aus.table, "au45_r")
    sl = slice(t0, t1)
    return Drive(scene.c2w[sl], scene.poses[sl], lms[sl], audio[sl], au45[sl]), t0, t1


def clip_drive(root: Path | str, scene: Scene, clip: str, cfg: RenderConfig) -> Drive:
    """Signals of a driving clip: its predicted landmarks and audio, replayed poses, sampled blinks."""
    files = SubjectLayout(root)
    lms = read_stage1_landmarks(files.stage1.pred(clip))
    n = len(lms)
    feats = files.audio.features(clip)
    audio = _rows(AUDIO_FEATURES.read(feats)["features"], n, feats, "features", slack=0)
    a, b = scene.split["train"]
    idx = motion.mirror_loop(a, b, n)
    c2w = motion.smooth_c2w(scene.c2w[idx], cfg.pose_smooth_sigma)
    poses = motion.smooth_rows(scene.poses[idx], cfg.pose_smooth_sigma)
    au_all = AUS.read_pandas(files.aus.table)["au45_r"].to_numpy(np.float64)
    stats = AUS_STATS.read(files.aus.stats)
    train_blinks = [f - a for f in stats["blink_frames"] if a <= f < b]
    model = motion.BlinkModel.from_aus(au_all[a:b], train_blinks)
    rng = np.random.default_rng(cfg.seed)
    au45 = model.sample(n, rng) if cfg.blinks else np.full(n, model.baseline)
    log.info("%s: %d frames, poses mirror-looped over train frames [%d, %d), %d blinks/min sampled (subject %.1f)",
             clip, n, a, b, int(round(model.rate_per_frame * FPS * 60)), stats["blinks_per_minute"])
    return Drive(c2w, poses, lms, audio, au45.astype(np.float32), idx)


# ----------------------------------------------------------------------------- synthesis

def background_tensor(scene: Scene, size: int, device: torch.device) -> torch.Tensor:
    """The background plate at ``size``² as ``[1, 3, S, S]`` floats in [0, 1] on ``device``."""
    bg = scene.background
    if bg.shape[0] != size:
        bg = cv2.resize(bg, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(bg).to(device).permute(2, 0, 1)[None].float() / 255.0


def synthesize(head: AnyHead, torso: Torso, scene: Scene, drive: Drive, cfg: RenderConfig,
               stats: dict, replay: ReplayTorso | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 RGB frames ``[b, S, S, 3]``; fills ``stats`` at the end: ``frames_per_sec`` (synthesis alone:
    head, torso and compositing until the frames are on the host; the consumer's time, e.g. the mp4 encode, left
    out; after the warm-up), ``warmup_seconds`` (the first batch drawn once before, untimed in the rate: loading
    the rasteriser's extension, compiling kernels, choosing convolution algorithms),
    ``frames_per_sec_with_output`` (the whole loop from before the warm-up, the consumer included), seam_jump,
    peak_gpu_mib, peak_host_rss_mib. With ``replay``, the recorded torso of ``drive.source_frames`` lies over the
    model's (:mod:`pipeline.render.replay`)."""
    size = cfg.size or scene.crop_size
    dev = head.device
    bg_t = background_tensor(scene, size, dev)
    feather = cfg.feather * size

    def batch(sl: slice) -> tuple[np.ndarray, float | None]:
        pre, h_a = head.render(drive.c2w[sl], drive.landmarks[sl], drive.audio[sl], drive.au45[sl], scene.focal,
                               scene.cx, scene.cy, scene.crop_size, size, cfg.ray_chunk)
        t_rgb, t_a = torso.predict(drive.poses[sl], size, h_a)
        if replay is not None:
            t_rgb, t_a = compositing.over(*replay.layer(drive.source_frames[sl], dev), t_rgb, t_a)
        if cfg.compositing == "soft":
            img = compositing.composite_soft(bg_t, t_rgb, t_a, pre, h_a, feather)
        else:
            img = compositing.composite_hard(bg_t, t_rgb, t_a, pre, h_a)
        jump = compositing.seam_jump(img, compositing.seam_band(h_a, t_a, max(1, int(round(feather)))))
        block = (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)    # 1/4 of the copy as floats
        return block.cpu().numpy(), jump

    jumps: list[float] = []
    reset_peak(dev)
    t_start = time.perf_counter()
    batch(slice(0, cfg.batch_frames))       # warm-up: its frames are drawn again below
    stats["warmup_seconds"] = round(time.perf_counter() - t_start, 4)
    synth = 0.0
    for s in progress(range(0, len(drive), cfg.batch_frames), desc="render", unit="batch", mininterval=5, disable=None):
        t0 = time.perf_counter()
        block, jump = batch(slice(s, s + cfg.batch_frames))
        if jump is not None:
            jumps.append(jump)
        synth += time.perf_counter() - t0      # the frames are on the host: the synthesis of this batch is done
        yield block
    seconds = time.perf_counter() - t_start
    stats["frames_per_sec"] = round(len(drive) / max(synth, 1e-9), 4)
    stats["frames_per_sec_with_output"] = round(len(drive) / max(seconds, 1e-9), 4)
    stats["seam_jump"] = float(np.mean(jumps)) if jumps else None
    stats.update(peak_memory(dev))


def _audio_slice(audio: Path, start: float, end: float, folder: Path) -> Path:
    from pipeline.core import media

    y = media.read_audio(audio, 16000)
    a, b = int(round(start * 16000)), int(round(end * 16000))
    if a >= len(y):
        raise RenderError(audio, f"audio is {len(y) / 16000:.3f} s, the video starts at {start:.3f} s")
    seg = np.concatenate([y[a:b], np.zeros(max(0, b - len(y)), np.float32)])
    path = folder / "audio.wav"
    media.write_wav(path, seg, 16000)
    return path


def write_video(frames: Iterator[np.ndarray], n: int, size: int, out: Path, audio: Path, start: float,
                end: float, crf: int, prov: Provenance) -> None:
    """mp4 (H.264 + AAC of the audio span) or, for ``out`` ending in .npz, RENDER_FRAMES to mux later."""
    if out.suffix == ".npz":
        small = {"fps": np.int32(FPS), "audio_start_sec": np.float64(start), "audio_end_sec": np.float64(end)}
        with npz_stream(out, RENDER_FRAMES, {"frames": (n, size, size, 3)}, small, prov) as w:
            for block in frames:
                w.append("frames", block)
        return
    from pipeline.core import media

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".render", dir=out.parent) as tmp:
        wav = _audio_slice(audio, start, end, Path(tmp))
        with media.VideoWriter(out, size, size, fps=FPS, crf=crf, audio=wav) as vw:
            for block in frames:
                vw.write(block)
        if vw.n != n:
            raise RenderError(out, f"wrote {vw.n} frames, expected {n}")


def mux(frames_npz: Path | str, audio: Path | str, out: Path | str, crf: int = 18) -> int:
    """Encode an npz of rendered frames (RENDER_FRAMES) with its audio span into ``out`` (mp4)."""
    z = RENDER_FRAMES.read(frames_npz)
    f = z["frames"]
    prov = Provenance("unknown", "mux")
    write_video(iter(f[i:i + 64] for i in range(0, len(f), 64)), len(f), f.shape[1], Path(out), Path(audio),
                float(z["audio_start_sec"]), float(z["audio_end_sec"]), crf, prov)
    return len(f)


def _render(root: Path, drive: Drive, scene: Scene, out: Path, audio: Path, start: float, cfg: RenderConfig,
            head: AnyHead | None) -> dict:
    device = resolve_device(cfg.device, "render.device")
    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        files = SubjectLayout(root)
        head = (head or load_head(files.stage2.path, device)).to(device).with_samples(cfg.num_samples,
                                                                                        cfg.early_stop_eps)
        torso = load_torso(files.torso.path, device)
        # the head's cameras at the time shift it was trained with (consecutive drive frames, clamped at the ends)
        drive = replace(drive, c2w=time_shift_c2w(drive.c2w, head.pose_offset_frames))
        size = cfg.size or scene.crop_size
        n = len(drive)
        stats = {"n_frames": n, "fps": FPS, "size": size, "audio": str(audio), "audio_start_sec": start,
                 "audio_end_sec": start + n / FPS, "head": head.source, "compositing": cfg.compositing,
                 "num_samples": head.num_samples, "device": str(device), "config": asdict(cfg)}
        prov = Provenance("unknown", config_hash(cfg))
        replayed = cfg.drive_torso == "replay" and drive.source_frames is not None
        stats["torso"] = "replay" if replayed else "model"
        with (ReplayTorso(files.crop.video, files.parsing.torso, drive.source_frames, size) if replayed
              else nullcontext()) as replay:
            write_video(synthesize(head, torso, scene, drive, cfg, stats, replay), n, size, out, audio, start,
                        start + n / FPS, cfg.crf, prov)
    finally:
        torch.set_num_threads(prev)
    RENDER_STATS.write(render_stats(out), stats, prov)
    log.info("%s: %d frames at %d px, %.3f frames/s (%s head, %s seam jump %s)", out, n, size,
             stats["frames_per_sec"], head.source, cfg.compositing, stats["seam_jump"])
    return stats


def run_video(subject_dir: Path | str, out: Path | str, cfg: RenderConfig = RenderConfig(),
              head: AnyHead | None = None) -> dict:
    """Test split re-synthesised from its own audio -> ``out`` (.mp4, or .npz for ``mux``) + ``<out>.json``."""
    root = Path(subject_dir)
    scene = load_scene(root)
    drive, t0, _ = test_drive(root, scene)
    return _render(root, drive, scene, Path(out), SubjectLayout(root).sync.audio, t0 / FPS, cfg, head)


def run_drive(subject_dir: Path | str, clip: str, wav: Path | str, out: Path | str,
              cfg: RenderConfig = RenderConfig(), head: AnyHead | None = None) -> dict:
    """Driving clip ``clip`` (features/predictions already under the subject) -> ``out`` + ``<out>.json``."""
    root = Path(subject_dir)
    scene = load_scene(root)
    return _render(root, clip_drive(root, scene, clip, cfg), scene, Path(out), Path(wav), 0.0, cfg, head)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Render the talking head: test split, driving audio, or mux frames.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("video", "drive"):
        s = sub.add_parser(name)
        s.add_argument("--subject-dir", required=True, help="results/<subject>")
        s.add_argument("--out", required=True, help=".mp4 (or .npz: frames to mux on a machine with ffmpeg)")
        s.add_argument("--config", default="{}", help="the render config section as JSON")
        if name == "drive":
            s.add_argument("--clip", required=True)
            s.add_argument("--wav", required=True)
    s = sub.add_parser("mux")
    s.add_argument("--frames", required=True)
    s.add_argument("--audio", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--crf", type=int, default=18)
    args = p.parse_args(argv)

    def body() -> None:
        if args.cmd == "mux":
            mux(args.frames, args.audio, args.out, args.crf)
            return
        cfg = from_mapping(RenderConfig, json.loads(args.config or "{}"), "render")
        if args.cmd == "video":
            run_video(args.subject_dir, args.out, cfg)
        else:
            run_drive(args.subject_dir, args.clip, args.wav, args.out, cfg)

    guarded(body)


if __name__ == "__main__":
    main()
