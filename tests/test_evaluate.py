"""Evaluation: metrics with known answers, the lip-sync offset detector on every real clip, the evaluate stage on
constructed renders (ground-truth test frames with the mouth warped by a known amount), the benchmark table, and
the Snakemake report over the evaluation.

The constructed renders stand in for ``video.mp4`` (the real one needs a trained head): the test split of the crop
video, the mouth region stretched vertically about the inner lips, the test-split audio muxed, as
pipeline.render.video writes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIPS, REPO, clip_path
from pipeline.core import media
from pipeline.core.artifacts import (EVAL_FRAMES, EVAL_METRICS, INGEST_META, LANDMARKS, N_LANDMARKS, RENDER_STATS,
                                     Provenance, fixed_list_column)
from pipeline.core.config import EvaluateConfig
from pipeline.core.metrics import (band_energies, band_envelope, jaw_drop, mouth_darkness, psnr, ssim, ssim_map,
                                   sync_audio, sync_offset, sync_visual)

CLIP = "talk_sadtalker_katiehill_en"   # 8 s: 18 test frames at 256 px (the shared cache's crop size)
SYNC_CLIP = "talk_dfrf_cnn_en"         # 71 s of studio speech: the clearest lip-audio relation of the set
SR, FPS = 16000, 25
# Clips whose own (ingested, uncorrected) audio is not in sync with their mouth: the offset test is expected to fail
# there (strict xfail). The pipeline corrects such offsets before training (rule measure_av_sync): tests/test_sync.py
# checks the detection, the correction and the mouth-audio criteria after it (issue #22 replaced #3, #6, #12).
# katiehill: every signal that rises above chance there peaks at +3 (this detector, the dark mouth against the speech
# bands: reliable +3, r 0.36 vs chance 0.31 at 256 px, all three 100-frame windows at +3 at 512 px; the earlier
# held-out canonical correlation of mouth and jaw against 7 bands: +3 too, below its corrected chance), and a ridge
# map from the log-mel spectrum to the mouth fitted on the five other clips (not on this one) peaks at +3 in each
# third of the clip (dark mouth: r 0.46 at +3, -0.15 at 0). The container is not the cause (ingest decodes the
# audio as ffmpeg does, edit list honoured). The MANIFEST's 0 came from a cruder proxy with no chance level.
OFF_SYNC = {
    "talk_sadtalker_katiehill_en": "content ~3 frames (120 ms) out of sync: audio late (see OFF_SYNC's comment)",
}
_SYNC_INPUTS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _mouth_and_audio(processed, clip: str) -> tuple[np.ndarray, np.ndarray]:
    """The detector's visual signal (dark mouth share of each crop frame) and the clip's 16 kHz audio."""
    if clip not in _SYNC_INPUTS:
        processed.landmarks(clip)
        d = processed.dir(clip)
        pts = fixed_list_column(LANDMARKS.read(d / "landmarks/landmarks.parquet"), "landmarks", (N_LANDMARKS, 3))
        size = json.loads((d / "crop/crop.json").read_text())["size"]
        frames = (f for chunk in media.iter_frames(d / "crop/video.mp4", size, size) for f in chunk)
        dark = np.array([mouth_darkness(f, p) for f, p in zip(frames, pts)])
        assert len(dark) == len(pts)
        _SYNC_INPUTS[clip] = sync_visual(dark, pts), media.read_audio(d / "ingest/audio.wav", SR)
    return _SYNC_INPUTS[clip]


def _sync(mouth: np.ndarray, audio: np.ndarray) -> dict:
    n = len(mouth)
    return sync_offset(mouth, sync_audio(audio, SR, FPS, n), speech=band_envelope(audio, SR, FPS, n))


# ----------------------------------------------------------------------------- known answers

def test_identical_frames_psnr_inf_ssim_one(processed):
    processed.crop(CLIP)
    frame = next(media.iter_frames(processed.dir(CLIP) / "crop/video.mp4", 256, 256))[0]
    assert psnr(frame, frame) == float("inf")
    assert ssim(frame, frame) == pytest.approx(1.0)
    assert ssim_map(frame, frame).shape == (256, 256)
    noisy = np.clip(frame.astype(int) + np.random.default_rng(0).integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)
    assert ssim_map(frame, noisy).mean() == pytest.approx(ssim(frame, noisy), abs=1e-9) and ssim(frame, noisy) < 0.95
    assert 20 < psnr(frame, noisy) < 30


def test_band_envelope_sees_speech_band_only():
    t = np.arange(SR * 2) / SR
    y = np.zeros_like(t)
    y[(t >= 0.4) & (t < 0.8)] = 0.3 * np.sin(2 * np.pi * 1000 * t[(t >= 0.4) & (t < 0.8)])   # in band
    y[(t >= 1.2) & (t < 1.6)] = 0.3 * np.sin(2 * np.pi * 100 * t[(t >= 1.2) & (t < 1.6)])    # below 300 Hz
    env = band_envelope(y, SR, FPS, 50)
    assert env[12:18].min() > env[32:38].max() + 30      # 1 kHz burst (frames 10-19) >> 100 Hz burst (30-39)
    assert env[12:18].min() > env[:8].max() + 30
    bands = band_energies(y, SR, FPS, 50)   # 80-300-700-1200-2000-3000-5000-8000 Hz
    assert bands.shape == (50, 7) and bands[12:18, 2].min() > bands[12:18, [0, 1, 3, 4, 5, 6]].max() + 20
    assert bands[32:38, 0].min() > bands[32:38, 1:].max() + 20
    speech = sync_audio(y, SR, FPS, 50)   # the detector's bands: 300-700-1200-2000-3000 Hz
    assert speech.shape == (50, 4) and np.allclose(speech, bands[:, 1:5])


def test_mouth_signals_known_answers():
    mesh = np.full((N_LANDMARKS, 3), 50.0)
    mesh[[61, 291], 0], mesh[[13, 14], 1] = (40.0, 60.0), (49.0, 51.0)  # a 20 px mouth centred at (50, 50)
    mesh[1, :2], mesh[152, :2], mesh[33, :2], mesh[263, :2] = (50, 40), (50, 70), (30, 30), (70, 30)
    frame = np.full((100, 100, 3), 180, np.uint8)
    assert mouth_darkness(frame, mesh) == 0.0
    frame[47:53, 40:60] = 20                        # 6 of the box's 14 rows dark
    assert mouth_darkness(frame, mesh) == pytest.approx(6 / 14)
    assert np.isnan(mouth_darkness(frame, np.full((N_LANDMARKS, 3), np.nan)))
    assert jaw_drop(mesh[None]) == pytest.approx([30 / 40])
    v = sync_visual(np.array([0.2, 0.3]), np.stack([mesh, np.full_like(mesh, np.nan)]))
    assert v.shape == (2, 1) and v[0, 0] == 0.2 and np.isnan(v[1]).all()


# ----------------------------------------------------------------------------- lip-audio offset

@pytest.mark.parametrize("clip", [pytest.param(c, marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                                                         reason=OFF_SYNC[c]))
                                  if c in OFF_SYNC else c for c in CLIPS])
def test_sync_offset_of_real_clips_is_zero(processed, clip):
    """The detector measures every shared clip, and finds the in-sync ones at 0 +- 1 frame."""
    mouth, audio = _mouth_and_audio(processed, clip)
    r = _sync(mouth, audio)
    print(f"{clip}: best lag {r['best_lag']:+d} frames, peak r {r['peak_r']:.3f} (r at 0: {r['r_at_zero']:.3f}, "
          f"chance {r['null_r95']}), {r['speech_frames']} speech frames, windows {r['window_offsets']}, "
          f"reliable {r['reliable']} {r['reason']}")
    assert r["reliable"], r["reason"]
    assert abs(r["offset_frames"]) <= 1, r["curve"]


@pytest.mark.parametrize("shift", [3, -3])
def test_shifting_audio_moves_the_offset(processed, shift):
    mouth, audio = _mouth_and_audio(processed, SYNC_CLIP)
    hop = SR // FPS
    base = _sync(mouth, audio)
    moved = np.concatenate([np.zeros(shift * hop, np.float32), audio]) if shift > 0 else audio[-shift * hop:]
    r = _sync(mouth, moved)
    assert base["reliable"] and r["reliable"], (base["reason"], r["reason"])
    assert abs(r["offset_frames"] - base["offset_frames"] - shift) <= 1, (base["offset_frames"], r["offset_frames"])


def test_sync_offset_refuses_noise():
    rng = np.random.default_rng(5)
    r = sync_offset(rng.normal(size=600), rng.normal(size=600))
    assert not r["reliable"] and r["offset_frames"] is None and "chance" in r["reason"]
    r = sync_offset(rng.normal(size=20), rng.normal(size=20))
    assert r["offset_frames"] is None and "too short" in r["reason"]
    r = sync_offset(rng.normal(size=(600, 2)), rng.normal(size=(600, 7)), speech=rng.normal(size=600))
    assert not r["reliable"] and "chance" in r["reason"] and (r["mouth_signals"], r["audio_signals"]) == (2, 7)
    with pytest.raises(ValueError, match="speech"):
        sync_offset(rng.normal(size=(600, 2)), rng.normal(size=(600, 7)))


# ----------------------------------------------------------------------------- the stage on constructed renders

def warp_mouth(frame: np.ndarray, mesh: np.ndarray, amount: float) -> np.ndarray:
    """Stretch the mouth region vertically about the inner-lip centre by up to 1 + ``amount`` (opens the mouth)."""
    import cv2

    cx, cy = mesh[[13, 14], :2].mean(0)
    width = np.linalg.norm(mesh[291, :2] - mesh[61, :2])
    yy, xx = np.mgrid[0:frame.shape[0], 0:frame.shape[1]].astype(np.float32)
    w = np.exp(-((xx - cx) / (0.9 * width)) ** 2 - ((yy - cy) / (0.7 * width)) ** 2)
    src_y = cy + (yy - cy) / (1.0 + amount * w)
    return cv2.remap(frame, xx, src_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_render(root: Path, out: Path, amount: float) -> None:
    """A stand-in for video.mp4 + video.json: test-split crop frames, mouth warped, test-split audio muxed."""
    meta = INGEST_META.read(root / "ingest/meta.json")
    t0, t1 = meta["split"]["test"]
    size = json.loads((root / "crop/crop.json").read_text())["size"]
    mesh = fixed_list_column(LANDMARKS.read(root / "landmarks/landmarks.parquet"), "landmarks", (N_LANDMARKS, 3))
    wav = out.with_suffix(".wav")
    media.write_wav(wav, media.read_audio(root / "ingest/audio.wav", SR)[t0 * SR // FPS: t1 * SR // FPS], SR)
    start = time.perf_counter()
    frames = media.iter_frames(root / "crop/video.mp4", size, size, vf=f"trim=start_frame={t0}:end_frame={t1}")
    with media.VideoWriter(out, size, size, fps=FPS, crf=12, audio=wav) as vw:
        for k, f in enumerate(f for chunk in frames for f in chunk):
            vw.write(warp_mouth(f, mesh[t0 + k], amount) if amount else f)
    wav.unlink()
    RENDER_STATS.write(out.with_suffix(".json"), {
        "n_frames": t1 - t0, "fps": FPS, "size": size, "audio": str(root / "ingest/audio.wav"),
        "audio_start_sec": t0 / FPS, "audio_end_sec": t1 / FPS, "head": f"none: ground truth, mouth warped {amount}",
        "compositing": "none", "num_samples": 0, "frames_per_sec": round((t1 - t0) / (time.perf_counter() - start), 4),
        "device": "cpu", "seam_jump": None}, Provenance("test", "test"))


@pytest.fixture(scope="module")
def workdir(processed, tmp_path_factory) -> Path:
    """A Snakemake working directory holding one subject's preprocessed results (shared cache) and renders."""
    processed.parsing(CLIP)
    processed.aus(CLIP)   # also tracking
    work = tmp_path_factory.mktemp("evaluate")
    root = work / "results" / CLIP
    for part in ("ingest", "crop", "landmarks", "tracking", "parsing", "aus"):
        shutil.copytree(processed.dir(CLIP) / part, root / part)
    for part, seconds in (("stage1", 11.5), ("stage2", 100.0), ("torso", 20.25)):  # train times: known answers
        (root / part).mkdir()
        (root / part / "metrics.json").write_text(json.dumps({"train_seconds": seconds}))
    (work / "data" / CLIP).mkdir(parents=True)
    (work / "data" / CLIP / f"{CLIP}.mp4").symlink_to(clip_path(CLIP))
    make_render(root, root / "video.mp4", 0.12)
    return work


@pytest.fixture(scope="module")
def evaluated(workdir) -> dict[float, dict]:
    """evaluate.run on renders with no, a small and a large mouth warp."""
    from pipeline.evaluate import subject as evaluate

    root = workdir / "results" / CLIP
    out = {}
    for amount in (0.0, 0.12, 0.4):
        video = workdir / f"render_{amount}" / "video.mp4"
        make_render(root, video, amount)
        out[amount] = evaluate.run(root, video, video.parent / "eval", EvaluateConfig(), subject=CLIP)
    return out


def test_evaluate_outputs_and_honest_nulls(workdir, evaluated):
    m = evaluated[0.12]
    d = workdir / "render_0.12" / "eval"
    assert EVAL_METRICS.read(d / "metrics.json")["subject"] == CLIP
    frames = EVAL_FRAMES.read_pandas(d / "frames.parquet")
    t0, t1 = INGEST_META.read(workdir / "results" / CLIP / "ingest/meta.json")["split"]["test"]
    assert m["test_frames"] == t1 - t0 == len(frames) and frames.frame_idx.tolist() == list(range(t0, t1))
    for name in ("psnr", "mouth", "pose", "strip"):
        assert (d / "plots" / f"{name}.png").stat().st_size > 10_000, name
    assert m["lpips"] is None and m["lpips_note"].startswith("unavailable")     # no backbone weights here
    assert m["sync_offset_frames"] is None and m["sync"]["render"]["reason"]   # 18 frames: not measurable
    stats = RENDER_STATS.read(workdir / "render_0.12" / "video.json")
    assert m["render_fps"] == pytest.approx(stats["frames_per_sec"])
    assert m["train_seconds"] == pytest.approx(131.75)
    assert m["render_face_frames"] == m["test_frames"] and m["dlib"]["render_detected"] >= m["test_frames"] - 2
    assert 0 < m["ssim_head"] < m["ssim"] < 1 and m["psnr_head_db"] < m["psnr_db"]  # the change is in the head


def test_lmd_flavours_agree_on_the_ranking(evaluated):
    none, small, large = (evaluated[a] for a in (0.0, 0.12, 0.4))
    for key in ("lmd_mesh_px", "lmd_dlib_px"):
        print(f"{key}: no warp {none[key]:.3f}, small {small[key]:.3f}, large {large[key]:.3f} px")
        assert none[key] < small[key] < large[key], key
    assert none["psnr_db"] > 35 and none["psnr_db"] > small["psnr_db"] > large["psnr_db"]
    assert np.mean(EVAL_FRAMES.read_pandas(Path(small["video"]).parent / "eval/frames.parquet").mouth_open_render) > \
        np.mean(EVAL_FRAMES.read_pandas(Path(none["video"]).parent / "eval/frames.parquet").mouth_open_render)
    # blinks: the eyes are untouched, so the render's AU45 follows the ground truth's
    assert large["blink"]["count_error"] == 0 and large["blink"]["au45_mae"] < 0.3


def test_benchmark_table_any_subjects(evaluated, tmp_path):
    from pipeline.evaluate import table

    paths = []
    for amount, name in ((0.0, "clean"), (0.4, "warped")):
        doc = dict(evaluated[amount], subject=name, train_seconds=None,
                   train_seconds_parts={"stage1": 1.0, "stage2": None, "torso": 2.0})
        p = tmp_path / name / "metrics.json"
        EVAL_METRICS.write(p, {k: v for k, v in doc.items() if k != "provenance"})
        paths.append(p)
    rows = table.run(paths, tmp_path / "b.md", tmp_path / "b.csv")
    assert [r["subject"] for r in rows] == ["clean", "warped"]
    md = (tmp_path / "b.md").read_text()
    assert "LMD dlib-68" in md and "| clean |" in md and "no metrics.json of stage2" in md and "LPIPS unavailable" in md
    import pandas as pd

    table = pd.read_csv(tmp_path / "b.csv")
    assert list(table.subject) == ["clean", "warped"] and table.lpips.isna().all()
    assert table.lmd_dlib_px[0] < table.lmd_dlib_px[1]


def test_snakemake_evaluate_and_report(workdir):
    """The rules through Snakemake, then `snakemake --report` shows every evaluation plot and the table.

    Only evaluate and benchmark_table may run (``--allowed-rules``): the upstream files are the shared cache's
    and the constructed render, which Snakemake did not make and would otherwise rebuild (stage 2 included)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(REPO / "configs" / "tiny.yaml"),
           "--config", f"benchmark_subjects=[{CLIP}]", "--allowed-rules", "evaluate", "benchmark_table",
           "--", "results/benchmark.md"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule evaluate" in proc.stdout + proc.stderr and "rule render_video" not in proc.stdout + proc.stderr
    assert (workdir / "results" / CLIP / "eval/metrics.json").is_file()
    assert f"| {CLIP} |" in (workdir / "results/benchmark.md").read_text()
    report = workdir / "report.html"
    proc = subprocess.run([*cmd[:-2], "--report", str(report), "--", "results/benchmark.md"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = report.read_text(errors="replace")
    for name in ("psnr.png", "mouth.png", "pose.png", "strip.png", "benchmark.csv", "metrics.json"):
        assert name in html, name
    assert "Evaluation" in html and "never trained on" in html   # the workflow description
