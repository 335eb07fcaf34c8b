"""Videos as people record them (issue #24): phone rotation, variable frame rate, 4K/60, 10-bit and HDR, two audio
streams, a path with spaces and non-ASCII characters.

Every case is made here, with the bundled ffmpeg, from one 4-s excerpt of a shared clip cut to a 384x512 portrait
frame (:func:`portrait`: nothing made is committed), then run through ingest -> crop -> landmarks at 128 px and
either handled (:func:`assert_handled`: upright portrait frames, frame count = source duration x 25 +- 1, audio
length = video length +- 1 frame, landmarks on >= 98 % of frames) and compared with the plain excerpt's run, or
refused with one line naming the file, nothing written. The 10-minute clip and a longer 4K/60 clip are
benchmarks (bench/bench_inputs.py, BENCHMARKS.md), not tests.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.core import media
from pipeline.core.artifacts import CROP_META, INGEST_META, LANDMARKS
from pipeline.core.config import CropConfig, IngestConfig, LandmarksConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess import crop, ingest, landmarks

from conftest import REPO, clip_path

SOURCE = "talk_mimictalk_trump_en"   # 10 s, 25 fps, 512², one frontal face
SECONDS = 4                          # the excerpt (ingest refuses < 3 s)
PORTRAIT = (384, 512)                # width, height of the excerpt: a portrait frame, as phones record
SIZE = 128                           # crop side (tiny profile)


def ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def frames(video: Path) -> np.ndarray:
    """All frames of ``video`` as float32 [N, H, W, 3] (4-s clips: small)."""
    w, h = media.probe(video).video.display_size
    return np.concatenate(list(media.iter_frames(video, w, h))).astype(np.float32)


def through(src: Path, root: Path, cfg: IngestConfig = IngestConfig()) -> SubjectLayout:
    """ingest -> crop (128 px) -> landmarks of ``src`` into the subject folder ``root``."""
    s = SubjectLayout(root)
    ingest.run(src, s.ingest.path, cfg)
    crop.run(s.ingest.video, s.ingest.meta, s.crop.path, CropConfig(size=SIZE))
    landmarks.run(s.crop.video, s.crop.meta, s.ingest.meta, s.landmarks.path, LandmarksConfig(workers=1))
    return s


def assert_handled(src: Path, s: SubjectLayout, size: tuple[int, int] = PORTRAIT) -> dict:
    """The properties every handled case must have; returns ingest's meta."""
    meta = INGEST_META.read(s.ingest.meta)
    out = media.probe(s.ingest.video).video
    assert out.fps == pytest.approx(25) and out.rotation == 0 and meta["n_frames"] == out.n_frames
    assert (out.width, out.height) == size, "not upright, or not the expected size"
    expected = media.probe(src).video.duration_sec * 25
    assert abs(out.n_frames - expected) <= 1, (out.n_frames, expected)
    wav = sf.info(str(s.ingest.audio))
    assert (wav.samplerate, wav.channels) == (16000, 1) and abs(wav.duration - out.n_frames / 25) <= 1 / 25
    detected = LANDMARKS.read(s.landmarks.table).column("detected").to_numpy(zero_copy_only=False)
    assert len(detected) == out.n_frames and detected.mean() >= 0.98, f"landmarks on {detected.mean():.1%} of frames"
    return meta


def refusal(src: Path, out: Path, cfg: dict | None = None) -> str:
    """Run the ingest CLI on ``src``: it must fail with one clear line, writing nothing. Returns the line."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess.ingest", "--video", str(src), "--outdir", str(out),
                           "--config", json.dumps(cfg or {})], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(src) in last, last
    assert not out.exists() or list(out.rglob("*")) == [], "half-written output left"
    return last


# ----------------------------------------------------------------------------- the plain excerpt

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def portrait(work) -> Path:
    """4 s of the clip, cut to 384x512 (upright, 8-bit, 25 fps, one audio stream): what every case is made from."""
    clip_path(SOURCE)  # skips without the shared data
    path = work / "portrait.mp4"
    ffmpeg("-t", str(SECONDS), "-i", str(clip_path(SOURCE)), "-vf", f"crop={PORTRAIT[0]}:{PORTRAIT[1]}",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "aac", "-b:a", "192k", str(path))
    return path


@pytest.fixture(scope="module")
def base(portrait, work) -> SubjectLayout:
    """The plain excerpt's run: the reference for orientation, crop window, colours and timing."""
    s = through(portrait, work / "base")
    assert_handled(portrait, s)
    return s


# ----------------------------------------------------------------------------- 1. rotation

STORED = {90: "transpose=clock", 180: "hflip,vflip", 270: "transpose=cclock"}  # the tag's rotation undone


@pytest.mark.parametrize("rotation", [90, 270, 180])
def test_phone_rotation_tag_is_applied(base, portrait, work, rotation):
    """Pixels stored sideways (landscape 512x384) or upside down, with a display-matrix tag that turns them upright."""
    stored, src = work / f"stored{rotation}.mp4", work / f"rot{rotation}.mp4"
    ffmpeg("-i", str(portrait), "-vf", STORED[rotation], "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12",
           "-c:a", "copy", str(stored))
    ffmpeg("-display_rotation:v:0", str(rotation), "-i", str(stored), "-c", "copy", str(src))  # re-mux, tag only
    info = media.probe(src).video
    assert info.rotation == rotation and info.display_size == PORTRAIT
    assert (info.width, info.height) == (PORTRAIT if rotation == 180 else PORTRAIT[::-1])

    s = through(src, work / f"rot{rotation}")
    meta = assert_handled(src, s)
    assert meta["source_rotation"] == rotation and meta["size"] == list(PORTRAIT)
    diff = np.abs(frames(s.ingest.video) - frames(base.ingest.video)).mean()
    assert diff < 3, f"frames differ from the upright original by {diff:.1f}/255"
    win, ref = CROP_META.read(s.crop.meta)["window"], CROP_META.read(base.crop.meta)["window"]
    assert np.abs(np.subtract(win, ref)).max() <= 0.02 * ref[2], (win, ref)


def test_rotation_not_a_multiple_of_90_is_refused(portrait, work):
    src = work / "rot45.mp4"
    ffmpeg("-display_rotation:v:0", "45", "-i", str(portrait), "-c", "copy", str(src))
    assert "rotation 45 degrees" in refusal(src, work / "rot45_out")


# ----------------------------------------------------------------------------- 2. variable frame rate

def test_variable_frame_rate_becomes_25_fps_in_sync(base, portrait, work):
    """29.97 fps on average, each timestamp jittered by up to 0.3 frame (deterministic), content where its time is."""
    src = work / "vfr.mp4"
    ffmpeg("-i", str(portrait), "-vf", "fps=30000/1001,settb=1/90000,setpts=(N+0.3*sin(2.39*N))*1001/30000/TB",
           "-fps_mode", "passthrough", "-enc_time_base:v", "1/90000", "-video_track_timescale", "90000",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "copy", str(src))
    import av

    with av.open(str(src)) as c:
        st = c.streams.video[0]
        pts = np.sort([p.pts for p in c.demux(st) if p.pts is not None]) * float(st.time_base)
    step = np.diff(pts)
    assert 29.5 < 1 / step.mean() < 30.1 and step.std() / step.mean() > 0.2, "the source is not variable-rate"

    s = through(src, work / "vfr")
    assert_handled(src, s)
    # each 25 fps frame shows what the plain excerpt shows at that time: best match within +-3 frames
    a, b = (f[:, ::8, ::8].mean(-1) for f in (frames(s.ingest.video), frames(base.ingest.video)))
    lags = []
    for k in range(min(len(a), len(b))):
        cand = [lag for lag in range(-3, 4) if 0 <= k + lag < len(b)]
        lags.append(cand[int(np.argmin([np.abs(a[k] - b[k + lag]).mean() for lag in cand]))])
    lags = np.asarray(lags)
    assert (lags == 0).mean() >= 0.85 and np.abs(lags).max() <= 1, np.bincount(lags + 3)


# ----------------------------------------------------------------------------- 3. 4K at 60 fps

RSS_BOUND_MB = 1500  # a whole-clip decode of this 4-s excerpt would hold 240 x 12.4 MB = 3 GB
MEASURED = """
import json, resource, sys
from pipeline.core.config import CropConfig, LandmarksConfig
from pipeline.core.layout import SubjectLayout
from pipeline.preprocess import crop, ingest, landmarks
s = SubjectLayout(sys.argv[2])
ingest.run(sys.argv[1], s.ingest.path)
crop.run(s.ingest.video, s.ingest.meta, s.crop.path, CropConfig(size=int(sys.argv[3])))
landmarks.run(s.crop.video, s.crop.meta, s.ingest.meta, s.landmarks.path, LandmarksConfig(workers=1))
# VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss across exec, so a child of a large pytest process would report
# pytest's own peak (1.7 GB in the full suite); VmHWM belongs to the address space made at exec
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps([hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def test_4k_60fps_is_scaled_and_streamed(base, portrait, work):
    """The excerpt upscaled to a 2160x3840 portrait at 60 fps: ingest scales it to 1080x1920 (ingest.max_side);
    ingest, crop and landmarks run in bounded memory (peak RSS of the Python process and of any ffmpeg it runs)."""
    src = work / "uhd60.mp4"
    ffmpeg("-i", str(portrait), "-vf", "scale=2160:2880:flags=bicubic,pad=2160:3840:0:480,fps=60",
           "-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-c:a", "copy", str(src))
    assert media.probe(src).video.fps == pytest.approx(60)
    s = SubjectLayout(work / "uhd60")
    proc = subprocess.run([sys.executable, "-c", MEASURED, str(src), str(s.root), str(SIZE)], capture_output=True,
                          text=True, cwd=REPO, check=True)
    python_mb, ffmpeg_mb = (kb / 1024 for kb in json.loads(proc.stdout.strip().splitlines()[-1]))
    assert python_mb < RSS_BOUND_MB and ffmpeg_mb < RSS_BOUND_MB, (python_mb, ffmpeg_mb)
    meta = assert_handled(src, s, size=(1080, 1920))
    assert meta["source_size"] == [2160, 3840] and meta["source_fps"] == pytest.approx(60)
    # the same window as the plain excerpt's, in the scaled frame (x 1080/384, the 480-px top pad now 240 px)
    f, (x, y, side) = 1080 / PORTRAIT[0], CROP_META.read(base.crop.meta)["window"]
    win = CROP_META.read(s.crop.meta)["window"]
    assert np.abs(np.subtract(win, [x * f, y * f + 240, side * f])).max() <= 0.03 * side * f, win


# ----------------------------------------------------------------------------- 4. 10-bit, HDR

def test_10bit_hevc_matches_the_8bit_original(base, portrait, work):
    src = work / "hevc10.mp4"
    ffmpeg("-i", str(portrait), "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-preset", "ultrafast", "-crf", "12",
           "-x265-params", "log-level=error", "-c:a", "copy", str(src))
    assert media.probe(src).video.pix_fmt == "yuv420p10le"
    s = through(src, work / "hevc10")
    meta = assert_handled(src, s)
    assert meta["source_pix_fmt"] == "yuv420p10le" and meta["source_hdr"] == ""
    err = np.abs(frames(s.ingest.video) - frames(base.ingest.video)).mean(axis=(0, 1, 2))
    assert (err < 2).all(), f"mean colour error per channel {err} (/255)"


def test_hlg_hdr_is_tone_mapped_to_sdr(base, portrait, work):
    """The excerpt converted to HLG BT.2020 10-bit (as phones record HDR): tone-mapped back close to the original,
    where ignoring the transfer leaves it ~35/255 off (washed out)."""
    src = work / "hlg.mp4"
    ffmpeg("-i", str(portrait), "-vf", "zscale=tin=bt709:min=bt709:pin=bt709:t=arib-std-b67:m=bt2020nc:p=bt2020:npl=100,"
           "format=yuv420p10le", "-c:v", "libx265", "-preset", "ultrafast", "-crf", "12", "-x265-params", "log-level=error",
           "-color_trc", "arib-std-b67", "-color_primaries", "bt2020", "-colorspace", "bt2020nc", "-c:a", "copy", str(src))
    s = SubjectLayout(work / "hlg")
    meta = ingest.run(src, s.ingest.path)
    assert meta["source_hdr"].startswith("HLG")
    err = np.abs(frames(s.ingest.video) - frames(base.ingest.video)).mean()
    assert err < 6, f"mean colour error {err:.1f}/255 after tone mapping"


# ----------------------------------------------------------------------------- 5. two audio streams

@pytest.fixture(scope="module")
def two_audio(portrait, work) -> Path:
    """A silent commentary track first, the speech second."""
    src = work / "two_audio.mp4"
    ffmpeg("-i", str(portrait), "-f", "lavfi", "-i", f"anullsrc=r=48000:cl=stereo:d={SECONDS}", "-map", "0:v",
           "-map", "1:a", "-map", "0:a", "-c:v", "copy", "-c:a", "aac", "-shortest", str(src))
    assert len(media.probe(src).audio_streams) == 2
    return src


def test_speech_stream_is_chosen_and_logged(base, two_audio, work, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.preprocess.ingest")
    s = through(two_audio, work / "two_audio")
    meta = assert_handled(two_audio, s)
    assert meta["audio_stream"] == 1 and meta["audio_stream_levels_db"][0] < meta["audio_stream_levels_db"][1] - 40
    assert any("using stream 1" in r.getMessage() for r in caplog.records)
    ours, ref = sf.read(str(s.ingest.audio))[0], sf.read(str(base.ingest.audio))[0]
    assert np.corrcoef(ours, ref)[0, 1] > 0.95, "not the speech of the original"


def test_audio_stream_config_picks_or_refuses(two_audio, work):
    assert "audio stream 0 is silent" in refusal(two_audio, work / "pick0", {"audio_stream": 0})
    assert "the file has 2 audio stream(s)" in refusal(two_audio, work / "pick3", {"audio_stream": 3})


# ----------------------------------------------------------------------------- 6. odd paths, sample sheet

def test_path_with_spaces_and_accents_through_the_sample_sheet(portrait, tmp_path):
    """`data/José Ñ/talk clip (1).mp4` in a working directory with a space and an umlaut, named by the sample sheet;
    Snakemake runs ingest and crop on it (tiny profile)."""
    workdir = tmp_path / "wörk dir"
    video = workdir / "data" / "José Ñ" / "talk clip (1).mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(portrait.read_bytes())
    (workdir / "subjects.tsv").write_text("subject\tvideo\tnotes\njose_n\tdata/José Ñ/talk clip (1).mp4\tportrait\n",
                                          encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    target = str(SubjectLayout("results/jose_n").crop.meta)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", "--configfile", str(REPO / "configs" / "tiny.yaml"),
                           "--config", "subjects_tsv=subjects.tsv", "--", target],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = SubjectLayout(workdir / "results" / "jose_n")
    assert INGEST_META.read(s.ingest.meta)["source"] == "data/José Ñ/talk clip (1).mp4"
    doc = CROP_META.read(s.crop.meta)
    assert doc["size"] == 128 and media.probe(s.crop.video).video.n_frames == doc["n_frames"] == SECONDS * 25


@pytest.mark.parametrize("rows, reason", [
    ("subject\tvideo\tnotes\nbad name!\ta.mp4\t\n", "line 2: subject 'bad name!' must match"),
    ("subject\tvideo\tnotes\nann\ta.mp4\t\nann\ta.mp4\tagain\n", "line 3: subject 'ann' appears twice"),
    ("subject\tvideo\tnotes\nann\tnope/b.mp4\t\n", "line 2: video 'nope/b.mp4' of subject 'ann' does not exist"),
    ("subject\tvideo\tnotes\n# a comment\n\nann\t\t\n", "line 4: column 'video' is empty"),
    ("subject,video,notes\nann,a.mp4,\n", "line 1: missing column(s) ['subject', 'video', 'notes']"),
], ids=["bad-name", "repeated", "missing-video", "empty-video", "not-tab-separated"])
def test_sample_sheet_refusals_name_the_line(tmp_path, rows, reason):
    from pipeline.core.samples import SampleSheetError, read_sample_sheet

    (tmp_path / "a.mp4").write_bytes(b"")
    sheet = tmp_path / "subjects.tsv"
    sheet.write_text(rows)
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(sheet, tmp_path)
    assert str(err.value).startswith(f"{sheet}: {reason}"), str(err.value)
    sheet.write_text("subject\tvideo\tnotes\n# the real one\nann\ta.mp4\t\n")
    assert read_sample_sheet(sheet, tmp_path) == {"ann": "a.mp4"}


def test_speech_level_is_the_band_power_in_bounded_memory():
    """A 1 kHz sine of amplitude 0.1 is -23 dBFS (power 0.005); 60 Hz hum is outside the band. Ten minutes of it
    are measured in a few MB (one FFT of the whole track took the ingest process to 1.6 GB)."""
    import tracemalloc

    sr = 16000
    t = np.arange(600 * sr, dtype=np.float32) / sr
    speech = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    hum = (0.5 * np.sin(2 * np.pi * 60 * t)).astype(np.float32)
    tracemalloc.start()
    level = ingest.speech_level_db(speech, sr)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert level == pytest.approx(10 * np.log10(0.005), abs=0.2) and peak_mb < 32, (level, peak_mb)
    assert ingest.speech_level_db(hum, sr) < level - 30
    assert ingest.speech_level_db(np.zeros(sr, np.float32), sr) == -150.0
