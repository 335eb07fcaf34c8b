"""Torso model, compositing (soft vs hard neck seam), test-split and driven rendering on a real clip.

One real clip (talk_sadtalker_katiehill_en through the session's ``processed`` cache, crop 256 px); the
torso trains at 48 px for a few hundred steps; stage 1 trains for a few steps (its own tests judge its
quality). The head here is an *untrained* tiny stage-2 field (random weights): these tests check the
render path (lengths, audio, compositing), not the head's look; the trained head is rendered by the
workflow (``make demo`` -> results/demo/video.mp4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import speech_path

CLIP = "talk_sadtalker_katiehill_en"
WAVS = ["speech_genefacepp_macron_fr", "speech_sadtalker_chinese_news_zh", "speech_dreamtalk_german1_de"]
TORSO_CFG = dict(image_size=48, base_channels=12, depth=2, style_dim=32, steps=150, batch=6, lr=3e-3, threads=1)
SIZE = 32  # rendered video size in these tests
# the untrained head is semi-transparent: early stop would only add a density pass
FAST = dict(size=SIZE, threads=1, early_stop_eps=0.0)


@pytest.fixture(scope="module")
def subject(processed, tmp_path_factory) -> Path:
    """A results/<s>-like folder: preprocessing (shared cache), audio features, tiny stage 1, torso."""
    from pipeline.audio import features as audio_features
    from pipeline.torso import train as torso
    from pipeline.core.config import Stage1Config, TorsoConfig
    from pipeline.stage1 import predict, train

    processed.parsing(CLIP)
    processed.aus(CLIP)  # also tracking
    processed.sync(CLIP)
    src = processed.dir(CLIP)
    root = tmp_path_factory.mktemp("render") / CLIP
    for part in ("ingest", "crop", "tracking", "parsing", "aus", "sync"):
        shutil.copytree(src / part, root / part)
    audio_features.run(root / "sync/audio.wav", root / "audio/self.npz", root / "audio/self.parquet")
    train.run(root / "audio/self.npz", root / "tracking/canonical.npz", root / "tracking/transforms.json",
              root / "stage1", Stage1Config(steps=20, d_model=32, eval_every=10, threads=1))
    for w in WAVS:
        audio_features.run(speech_path(w), root / f"audio/{w}.npz", root / f"audio/{w}.parquet")
        predict.run(root / f"audio/{w}.npz", root / "stage1", root / f"stage1/pred/{w}.parquet")
    torso.run(root / "crop/video.mp4", root / "parsing/torso.npz", root / "parsing/labels.npz",
              root / "parsing/background.png", root / "tracking/tracks.parquet", root / "tracking/transforms.json",
              root / "crop/crop.json", root / "torso", TorsoConfig(**TORSO_CFG))
    return root


@pytest.fixture(scope="module")
def head(subject):
    from pipeline.core.artifacts import AUDIO_FEATURES, CANONICAL_LANDMARKS
    from pipeline.core.config import Stage2ModelConfig
    from pipeline.render.head import untrained_head

    lms = CANONICAL_LANDMARKS.read(subject / "tracking/canonical.npz")["landmarks"]
    dim = AUDIO_FEATURES.read(subject / "audio/self.npz")["features"].shape[-1]
    cfg = Stage2ModelConfig(levels=4, log2_hashmap_size=12, finest_resolution=64, hidden_dim=16, num_layers=2,
                            hidden_dim_color=16, landmark_k=4, landmark_feat_dim=8, audio_dim=8, num_samples=8,
                            occupancy_resolution=16)
    return untrained_head(cfg, lms, dim)


def test_torso_beats_mean_torso(subject):
    from pipeline.torso import model as torso

    m = json.loads((subject / "torso/metrics.json").read_text())
    print(f"torso test PSNR torso {m['psnr_torso_db']:.2f} / neck {m['psnr_neck_db']:.2f} dB vs mean torso "
          f"{m['psnr_torso_mean_db']:.2f} / {m['psnr_neck_mean_db']:.2f} dB; "
          f"alpha IoU {m['alpha_iou']:.3f} vs {m['alpha_iou_mean']:.3f} ({m['train_seconds']} s)")
    assert m["test_frames"] > 0
    assert m["psnr_torso_neck_db"] > m["psnr_torso_neck_mean_db"] + 0.5   # margin: bench/test_margins.py
    assert m["alpha_iou"] >= m["alpha_iou_mean"] - 0.01
    model = torso.load(subject / "torso")
    poses = torso.read_poses(subject / "tracking/tracks.parquet")
    rgb, alpha = model.predict(poses[:3], 64)
    assert rgb.shape == (3, 3, 64, 64) and alpha.shape == (3, 1, 64, 64)
    assert 0 <= float(alpha.min()) and float(alpha.max()) <= 1
    assert float(alpha.mean()) > 0.05                            # there is a torso
    assert not torch.allclose(rgb[0], rgb[-1]) or not torch.allclose(alpha[0], alpha[-1])  # pose matters


def test_soft_compositing_hides_the_neck_seam(subject):
    """Head layer = the real frame's head pixels, torso = the model, over the plate: soft < hard seam jump."""
    from pipeline.render import compositing
    from pipeline.torso import model as torso
    from pipeline.core.artifacts import LABEL_FACE, PARSING_LABELS
    from pipeline.core.media import iter_frames
    from pipeline.render.video import load_scene

    scene = load_scene(subject)
    t0, t1 = scene.split["test"]
    frames_idx = np.arange(t0, t1, 4)
    crop = scene.crop_size
    frames = np.concatenate(list(iter_frames(subject / "crop/video.mp4", crop, crop)))[frames_idx]
    labels = PARSING_LABELS.read(subject / "parsing/labels.npz")["labels"][frames_idx]
    img = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    head_a = compositing.gaussian_blur(torch.from_numpy(labels >= LABEL_FACE).float()[:, None], 1.0)
    head_pre = img * head_a
    t_rgb, t_a = torso.load(subject / "torso").predict(scene.poses[frames_idx], crop)
    bg = torch.from_numpy(scene.background).permute(2, 0, 1)[None].float() / 255.0
    feather = 0.015 * crop
    soft = compositing.composite_soft(bg, t_rgb, t_a, head_pre, head_a, feather)
    hard = compositing.composite_hard(bg, t_rgb, t_a, head_pre, head_a)
    band = compositing.seam_band(head_a, t_a, int(round(feather)))
    j_soft, j_hard = compositing.seam_jump(soft, band), compositing.seam_jump(hard, band)
    print(f"neck seam jump (mean |colour step| over {int(band.sum())} band px): soft {j_soft:.4f}, hard {j_hard:.4f}")
    assert j_soft is not None and j_hard is not None
    assert j_soft < j_hard
    # away from the seam the soft composite keeps the head: inside the head it is the frame itself
    inner = (head_a > 0.999) & ~compositing.seam_band(head_a, t_a, 3 * int(round(feather)) + 2)
    assert float((soft - img).abs()[inner.expand_as(img)].mean()) < 0.02
    # the seam metric is an honest colour step: a constant image has none
    assert compositing.seam_jump(torch.full_like(soft, 0.5), band) == 0.0


def test_fast_seam_blurs_and_band_match_their_references(subject):
    """The render's cheap wide blur (``smooth``: at half resolution) stays within 2 % (mean 0.02 %) of the
    exact separable Gaussian on real face and neck mattes at 512² with the seam's sigmas, and the separable box
    maximum of ``seam_band`` equals ``max_pool2d``'s square window exactly."""
    from torch.nn import functional as F

    from pipeline.core.artifacts import LABEL_FACE, LABEL_NECK, PARSING_LABELS
    from pipeline.render import compositing

    labels = PARSING_LABELS.read(subject / "parsing/labels.npz")["labels"][::40]
    masks = torch.from_numpy(np.stack([labels >= LABEL_FACE, labels == LABEL_NECK], 1)).float()
    masks = F.interpolate(masks, size=(512, 512), mode="nearest")
    for sigma in (2 * 0.015 * 512, 30.0):            # the seam's wide blur at 512², and a wider one
        exact, fast = compositing.gaussian_blur(masks, sigma), compositing.smooth(masks, sigma)
        err = (fast - exact).abs()
        print(f"sigma {sigma:.2f}: |smooth - gaussian_blur| mean {float(err.mean()):.2e}, max {float(err.max()):.4f}")
        assert float(err.max()) < 0.02 and float(err.mean()) < 2e-4
    assert torch.equal(compositing.smooth(masks, 7.0), compositing.gaussian_blur(masks, 7.0))   # below 8: exact
    for r in (1, 8):
        assert torch.equal(compositing._box_max(masks, r), F.max_pool2d(masks, 2 * r + 1, 1, r))


def test_drive_torso_replays_the_recorded_frames(subject):
    """A driving clip replays training poses; its torso layer is the recorded torso of those frames (frame x matte),
    the same pixels an independent decode gives, and the model's torso fills only where the matte is empty."""
    from pipeline.core.artifacts import PARSING_TORSO
    from pipeline.core.config import RenderConfig
    from pipeline.core.media import iter_frames
    from pipeline.render.compositing import over
    from pipeline.render.replay import ReplayTorso
    from pipeline.render.video import clip_drive, load_scene
    from pipeline.torso import model as torso

    scene = load_scene(subject)
    drive = clip_drive(subject, scene, WAVS[0], RenderConfig(**FAST))
    a, b = scene.split["train"]
    assert len(drive.source_frames) == len(drive) and a <= drive.source_frames.min() <= drive.source_frames.max() < b
    size, frames = 64, drive.source_frames[::25][:6]
    with ReplayTorso(subject / "crop/video.mp4", subject / "parsing/torso.npz", frames, size) as rep:
        r_rgb, r_a = rep.layer(frames, "cpu")
    crop = scene.crop_size
    decoded = np.concatenate(list(iter_frames(subject / "crop/video.mp4", crop, crop)))[frames]
    decoded = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in decoded])
    matte = PARSING_TORSO.read(subject / "parsing/torso.npz")["alpha"][frames]
    matte = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) for m in matte]) / 255.0
    full = torch.from_numpy(matte > 0.99)[:, None]
    diff = (r_rgb - torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255.0).abs()
    print(f"replayed torso vs an independent decode: mean |diff| {float(diff[full.expand_as(diff)].mean()):.4f}")
    assert float(diff[full.expand_as(diff)].mean()) < 0.02
    assert float((r_a[:, 0] - torch.from_numpy(matte).float()).abs().max()) < 1e-6
    m_rgb, m_a = torso.load(subject / "torso").predict(drive.poses[::25][:6], size)
    rgb, alpha = over(r_rgb, r_a, m_rgb, m_a)
    opaque = (r_a == 1).expand_as(rgb)
    assert opaque.any() and torch.allclose(rgb[opaque], r_rgb[opaque], atol=1e-5)
    empty = (r_a == 0)
    assert torch.allclose(alpha[empty], m_a[empty]) and torch.allclose(rgb[empty.expand_as(rgb)], m_rgb[empty.expand_as(m_rgb)])


def test_drive_videos_match_the_audio(subject, head):
    from pipeline.render import video as render
    from pipeline.core import media
    from pipeline.core.config import RenderConfig

    for w in WAVS:
        out = subject / f"drive/{w}.mp4"
        stats = render.run_drive(subject, w, speech_path(w), out, RenderConfig(**FAST), head=head)
        info = media.probe(out)
        dur = media.probe(speech_path(w)).audio.duration_sec
        print(f"{w}: {stats['n_frames']} frames for {dur:.2f} s, {stats['frames_per_sec']:.1f} frames/s "
              f"(untrained head, {SIZE} px, {stats['num_samples']} samples/ray)")
        assert abs(stats["n_frames"] - round(dur * 25)) <= 1
        assert info.video is not None and abs(info.video.n_frames - round(dur * 25)) <= 1
        assert (info.video.width, info.video.height) == (SIZE, SIZE) and info.video.fps == 25
        assert info.audio is not None and abs(info.audio.duration_sec - dur) < 0.1
        assert stats["head"] == "untrained" and stats["torso"] == "replay"
        assert stats["peak_gpu_mib"] is None and stats["peak_host_rss_mib"] > 100   # CPU: no GPU peak, a real RSS


def test_drive_video_with_a_trained_gaussian_head(subject, tmp_path):
    """stage2.head: gaussians through the same render call: a driving clip's video from a (briefly) trained
    Gaussian head loaded by load_head, with the clip's length, audio and size (issue #25, must-show 4 on CPU)."""
    from pipeline.core import media
    from pipeline.core.config import RenderConfig, stage2_configs
    from pipeline.render import video as render
    from pipeline.render.head import GaussianHeadView, load_head
    from pipeline.stage2 import cache, train

    cache.run(subject / "crop/video.mp4", subject / "parsing/labels.npz", tmp_path / "stage2", stage2_configs(
        {"image_size": 64})[1])
    shutil.copytree(tmp_path / "stage2", subject / "stage2", dirs_exist_ok=True)
    mcfg, tcfg = stage2_configs({"head": "gaussians", "gaussians": {"count": 800}, "image_size": 64, "steps": 30,
                                 "frames_per_batch": 2, "threads": 1, "eval_max_frames": 2, "strip_frames": 1})
    try:
        train.run(subject, subject / "stage2", mcfg, tcfg)
        head = load_head(subject / "stage2")
        assert isinstance(head, GaussianHeadView)
        w = WAVS[0]
        out = tmp_path / f"{w}.mp4"
        stats = render.run_drive(subject, w, speech_path(w), out, RenderConfig(**FAST), head=head)
    finally:
        shutil.rmtree(subject / "stage2")           # the other tests render the untrained NeRF head
    dur = media.probe(speech_path(w)).audio.duration_sec
    info = media.probe(out)
    print(f"{w}, Gaussian head: {stats['n_frames']} frames, {stats['frames_per_sec']:.1f} frames/s at {SIZE} px")
    assert abs(stats["n_frames"] - round(dur * 25)) <= 1 and abs(info.video.n_frames - round(dur * 25)) <= 1
    assert info.audio is not None and abs(info.audio.duration_sec - dur) < 0.1
    assert stats["head"] == "stage2/head.pt" and stats["num_samples"] == 0 and stats["torso"] == "replay"
    # the synthesis rate leaves the mp4 encode out; the loop with the encoder (and the warm-up batch) is slower
    assert stats["frames_per_sec"] > stats["frames_per_sec_with_output"] > 0
    n = stats["n_frames"]
    assert stats["warmup_seconds"] > 0
    assert n / stats["frames_per_sec_with_output"] >= stats["warmup_seconds"] + n / stats["frames_per_sec"] - 1e-3
    frames = np.concatenate(list(media.iter_frames(out, SIZE, SIZE)))
    assert frames.std(axis=0).mean() > 1.0, "the frames do not change over time"


def test_test_split_video(subject, head):
    from pipeline.render import video as render
    from pipeline.core import media
    from pipeline.core.config import RenderConfig
    from pipeline.render.video import load_scene

    out = subject / "video.mp4"
    stats = render.run_video(subject, out, RenderConfig(**FAST), head=head)
    t0, t1 = load_scene(subject).split["test"]
    info = media.probe(out)
    assert stats["n_frames"] == t1 - t0 == info.video.n_frames
    assert info.audio is not None and abs(info.audio.duration_sec - (t1 - t0) / 25) < 0.05
    frames = np.concatenate(list(media.iter_frames(out, SIZE, SIZE)))
    assert frames.std(axis=0).mean() > 1.0                       # frames are not constant
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["audio_start_sec"] == pytest.approx(t0 / 25) and doc["compositing"] == "soft"
    assert doc["torso"] == "model"                                # the scored split never replays its own torso


def test_frames_npz_then_mux(subject, head, tmp_path):
    """The GPU-machine path: frames to an npz without ffmpeg, muxed afterwards."""
    from pipeline.render import video as render
    from pipeline.core import media
    from pipeline.core.config import RenderConfig

    npz = tmp_path / "video.frames.npz"
    stats = render.run_video(subject, npz, RenderConfig(**FAST, compositing="hard"), head=head)
    n = render.mux(npz, subject / "sync/audio.wav", tmp_path / "video.mp4")
    assert n == stats["n_frames"] == media.probe(tmp_path / "video.mp4").video.n_frames


def test_render_gives_the_head_its_cameras_at_its_time_shift(subject, head, tmp_path, monkeypatch):
    """stage2.pose_offset_frames: the head trained with cameras taken tau frames later renders with the drive's
    cameras taken tau frames later too (neighbouring drive frames blended, the last one clamped)."""
    from dataclasses import replace

    from pipeline.core.config import RenderConfig
    from pipeline.render import video as render
    from pipeline.stage2.data import time_shift_c2w

    seen = []

    def synthesize(head_, torso, scene, drive, cfg, stats, replay=None):     # records what the head is given
        seen.append(drive.c2w.copy())
        stats.update(frames_per_sec=1.0, seam_jump=None)
        return iter(())

    monkeypatch.setattr(render, "synthesize", synthesize)
    monkeypatch.setattr(render, "write_video", lambda frames, *a, **k: list(frames))
    scene = render.load_scene(subject)
    t0, t1 = scene.split["test"]
    for tau in (0.0, 1.0):
        monkeypatch.setattr(head.field, "cfg", replace(head.field.cfg, pose_offset_frames=tau))
        render.run_video(subject, tmp_path / f"v{tau}.npz", RenderConfig(**FAST), head=head)
    assert np.array_equal(seen[0], scene.c2w[t0:t1])
    assert np.allclose(seen[1], time_shift_c2w(scene.c2w[t0:t1], 1.0))
    assert np.allclose(seen[1][:-1], scene.c2w[t0 + 1:t1]) and not np.allclose(seen[1], seen[0])


def test_motion_replay_and_blinks():
    from pipeline.render import motion

    idx = motion.mirror_loop(10, 14, 12)
    assert idx.tolist() == [10, 11, 12, 13, 12, 11, 10, 11, 12, 13, 12, 11]
    ang = np.linspace(0, 0.3, 50)
    c2w = np.tile(np.eye(4), (50, 1, 1))
    c2w[:, 0, 0], c2w[:, 0, 1], c2w[:, 1, 0], c2w[:, 1, 1] = np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)
    c2w[:, :3, 3] = np.random.default_rng(0).normal(size=(50, 3))
    sm = motion.smooth_c2w(c2w, 2.0)
    assert np.allclose(np.einsum("nij,nkj->nik", sm[:, :3, :3], sm[:, :3, :3]), np.eye(3), atol=1e-9)
    assert np.diff(sm[:, :3, 3], 2, axis=0).std() < np.diff(c2w[:, :3, 3], 2, axis=0).std() / 3
    au = np.full(750, 0.2)
    peaks = np.arange(40, 750, 75)  # 20 blinks/min at 25 fps
    for p in peaks:
        au[p - 2:p + 3] = [1.0, 3.0, 4.0, 3.0, 1.0]
    model = motion.BlinkModel.from_aus(au, peaks)
    assert model.baseline == pytest.approx(0.2) and model.profile[len(model.profile) // 2] == pytest.approx(1.0)
    sample = model.sample(1500, np.random.default_rng(1))
    from pipeline.preprocess.au_signals import detect_blinks

    n = len(detect_blinks(sample, 1.5, 6, 25))
    assert 14 <= n <= 26  # 20/min over 60 s
    assert sample.max() == pytest.approx(4.0)


def test_render_rules_plan_the_whole_chain(tmp_path):
    """Dry run: video.mp4 and drive/<clip>.mp4 pull in torso, head, stage 1 and the clip's features."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "data/alice").mkdir(parents=True)
    (tmp_path / "data/alice/alice.mp4").write_bytes(b"dry runs never read this")
    (tmp_path / "data/audio").mkdir()
    (tmp_path / "data/audio/hello_de.wav").write_bytes(b"nor this")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "--cores", "2", "results/alice/video.mp4",
                           "results/alice/drive/hello_de.mp4"], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("measure_av_sync", "train_torso", "train_head", "train_audio2lmk", "predict_landmarks", "render_video",
                 "drive_video"):
        assert rule in out, rule
    assert "results/alice/stage1/pred/hello_de.parquet" in out
