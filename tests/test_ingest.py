"""Ingest on every real clip, and every refusal on a bad file the test builds itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipeline.core import media
from pipeline.core.artifacts import INGEST_META
from pipeline.preprocess.ingest import align_audio, split_ranges

from conftest import CLIPS, clip_path


@pytest.mark.parametrize("clip", CLIPS)
def test_ingest_real_clip(processed, clip):
    meta = processed.ingest(clip)
    out = processed.dir(clip) / "ingest"
    src = media.probe(clip_path(clip))
    info = media.probe(out / "video.mp4")
    assert info.video.fps == pytest.approx(25.0)
    expected = round(src.video.duration_sec * 25)
    assert abs(info.video.n_frames - expected) <= 1, (info.video.n_frames, expected)
    assert meta["n_frames"] == info.video.n_frames
    # audio: 16 kHz mono s16, same length as the video within 40 ms
    wav = sf.info(str(out / "audio.wav"))
    assert (wav.samplerate, wav.channels, wav.subtype) == (16000, 1, "PCM_16")
    assert abs(wav.duration - info.video.n_frames / 25) <= 0.040
    samples, _ = sf.read(str(out / "audio.wav"))
    assert np.sqrt(np.mean(samples**2)) > 1e-3, "audio is silent"
    # meta.json round-trips through its declared contract; split is the last 1/11
    meta2 = INGEST_META.read(out / "meta.json")
    test0, test1 = meta2["split"]["test"]
    assert test1 == meta["n_frames"] and abs((test1 - test0) - meta["n_frames"] / 11) <= 1
    assert meta2["source_sha256"] and len(meta2["source_sha256"]) == 64


def test_macron_offset_is_applied(processed):
    meta = processed.ingest("talk_dfrf_macron_fr")
    assert meta["audio_offset_applied_sec"] == pytest.approx(0.08, abs=1e-3)
    assert meta["source_fps"] == pytest.approx(30.0)


def test_align_audio_shifts_and_pads():
    x = np.arange(10, dtype=np.float32) + 1
    y, pad = align_audio(x, 2 / 10, 10, 10)  # video starts 0.2 s after audio -> drop 2 samples
    assert y[0] == 3 and pad == pytest.approx(0.2) and len(y) == 10
    y, pad = align_audio(x, -3 / 10, 10, 10)  # audio starts later -> 3 samples of silence first
    assert list(y[:4]) == [0, 0, 0, 1] and pad == 0


def test_split_ranges():
    assert split_ranges(110, 1 / 11) == {"train": [0, 100], "test": [100, 110]}


# ----------------------------------------------------------------------------- refusals

def _ffmpeg(*args):
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _make_clip(path, seconds, audio=True, faststart=False):
    args = ["-f", "lavfi", "-i", f"testsrc2=size=128x128:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    _ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", *(["-movflags", "+faststart"] if faststart else []), str(path))


def _bad_no_audio(tmp):
    p = tmp / "noaudio.mp4"
    _make_clip(p, 4, audio=False)
    return p, "no audio stream"


def _bad_short(tmp):
    p = tmp / "short.mp4"
    _make_clip(p, 1)
    return p, "too short"


def _bad_truncated(tmp):
    good = tmp / "good.mp4"
    _make_clip(good, 6)
    p = tmp / "truncated.mp4"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return p, ""


def _bad_truncated_faststart(tmp):
    """Header intact (moov first), media data cut: opens fine, decodes a third of the frames."""
    good = tmp / "good_fs.mp4"
    _make_clip(good, 6, faststart=True)
    p = tmp / "truncated_fs.mp4"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return p, "truncated"


def _bad_text(tmp):
    p = tmp / "notes.mp4"
    p.write_text("this is not a video\n")
    return p, "not a readable media file"


def _bad_missing(tmp):
    return tmp / "missing.mp4", "file not found"


@pytest.mark.parametrize("make", [_bad_no_audio, _bad_short, _bad_truncated, _bad_truncated_faststart,
                                  _bad_text, _bad_missing],
                         ids=["no-audio", "1s", "truncated", "truncated-faststart", "text-file", "missing"])
def test_ingest_refuses_bad_input(tmp_path, make):
    src, reason = make(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess.ingest", "--video", str(src), "--outdir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(src) in last and reason in last, last
    assert "Traceback" not in proc.stderr
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert leftovers == [], f"half-written output left: {leftovers}"
