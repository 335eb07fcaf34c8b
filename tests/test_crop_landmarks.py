"""crop_faces + detect_landmarks on every real clip, and the refusals on clips the test builds itself.

Each real clip is cropped (256 px, see conftest.Processed.CROP_SIZE) and landmarked once per session.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipeline.preprocess import crop, ingest, landmarks
from pipeline.preprocess.face_landmarker import landmark_chunk
from pipeline.preprocess import mediapipe_models as mp_models
from pipeline.core import media, metrics
from pipeline.core.artifacts import CROP_BOXES, CROP_META, LANDMARKS, N_LANDMARKS, fixed_list_column
from pipeline.core.config import CropConfig, LandmarksConfig

from conftest import CLIPS, clip_path


def _table(processed, clip):
    processed.landmarks(clip)
    return LANDMARKS.read(processed.dir(clip) / "landmarks" / "landmarks.parquet")


def _points(table):
    return fixed_list_column(table, "landmarks", (N_LANDMARKS, 3))


# ----------------------------------------------------------------------------- real clips

@pytest.mark.parametrize("clip", CLIPS)
def test_landmarks_on_every_frame(processed, clip):
    table = _table(processed, clip)
    meta = processed.ingest(clip)
    cmeta = CROP_META.read(processed.dir(clip) / "crop" / "crop.json")
    size = cmeta["size"]
    assert len(table) == meta["n_frames"] == cmeta["n_frames"]
    assert np.array_equal(table.column("frame_idx").to_numpy(), np.arange(len(table)))
    detected = table.column("detected").to_numpy(zero_copy_only=False)
    assert detected.mean() >= 0.98, f"landmarks on only {detected.mean():.1%} of frames"
    pts = _points(table)[detected]
    assert np.isfinite(pts).all()
    assert (pts[..., :2] >= 0).all() and (pts[..., :2] < size).all(), "landmarks outside the crop"
    # z is in crop pixels too: depth spread of a face is a fraction of its width, not ~1e-2
    assert 0.05 * size < np.ptp(pts[0, :, 2]) < size
    bs = fixed_list_column(table, "blendshapes", (52,))[detected]
    assert ((bs >= 0) & (bs <= 1)).all()
    pose = fixed_list_column(table, "pose", (4, 4))[detected]
    assert np.allclose(pose[:, 3], [0, 0, 0, 1], atol=1e-4)
    # crop video and boxes agree with crop.json
    info = media.probe(processed.dir(clip) / "crop" / "video.mp4").video
    assert (info.width, info.height, info.n_frames) == (size, size, meta["n_frames"]) and info.fps == pytest.approx(25)
    boxes = CROP_BOXES.read_pandas(processed.dir(clip) / "crop" / "boxes.parquet")
    assert len(boxes) == cmeta["n_sampled"] and (boxes.n_faces >= 1).mean() > 0.95
    assert (processed.dir(clip) / "landmarks" / "contact_sheet.png").stat().st_size > 10_000


# (The lip-audio criteria that replaced this one after correction, issue #22: tests/test_sync.py.)
# Best Pearson (lag within +-2 frames) of the inner-lip opening with the raw 25 fps RMS envelope, as
# measured on 2026-11-21 at 256 px: cnn 0.28, macron 0.20, german 0.20, trump 0.15 (each peaking at lag 0/+1).
# Two clips are at chance level with this crude measure, for reasons of the footage:
# katiehill 0.08 and videoretalking_4 -0.04 within +-2 frames (its peak, 0.29, is at -8 frames
# or beyond: mouth wide open in a silent stretch, closed during loud speech 10 frames later).
MIN_MOUTH_AUDIO_R = {"talk_dfrf_cnn_en": 0.2, "talk_dfrf_macron_fr": 0.15, "talk_mimictalk_german_de": 0.15,
                     "talk_mimictalk_trump_en": 0.1}
OFF_SYNC = {"talk_sadtalker_katiehill_en", "talk_videoretalking_4_en"}


@pytest.mark.parametrize("clip", [c if c not in OFF_SYNC else pytest.param(c, marks=pytest.mark.xfail(
    strict=True, reason="footage: mouth opening and audio RMS uncorrelated within +-2 frames")) for c in CLIPS])
def test_mouth_opening_follows_audio(processed, clip):
    pts = _points(_table(processed, clip))
    samples, sr = sf.read(str(processed.dir(clip) / "ingest" / "audio.wav"))
    rms = metrics.rms_envelope(samples, sr, 25, len(pts))
    _, r = metrics.best_lag(metrics.mouth_opening(pts), rms, 2)
    assert r >= MIN_MOUTH_AUDIO_R.get(clip, 0.2), f"mouth opening vs audio RMS: best Pearson {r:.3f} within +-2 frames"


def test_upper_body_clip_face_is_half_the_crop(processed):
    clip = "talk_videoretalking_4_en"
    pts = _points(_table(processed, clip))
    size = processed.crop(clip)["size"]
    width = np.median(np.ptp(pts[:, :468, 0], axis=1)) / size
    assert 0.4 <= width <= 0.6, width
    doc = processed.crop(clip)
    assert doc["face_fraction"] == pytest.approx(0.5, abs=0.01)
    assert doc["padding"] == {"left": 0, "top": 0, "right": 0, "bottom": 0}  # 700² upper body: room all round


def test_tight_clip_is_padded_by_replication(processed):
    doc = processed.crop("talk_sadtalker_katiehill_en")  # tight face crop: the window must leave the image
    assert sum(doc["padding"].values()) > 0
    x0, y0, x1, y1 = doc["valid_box"]
    assert 0 <= x0 < x1 <= doc["size"] and 0 <= y0 < y1 <= doc["size"] and (x1 - x0) * (y1 - y0) < doc["size"] ** 2


def test_each_frames_landmarks_are_that_frames_own(processed):
    """The default running mode has no memory: a frame gives the same landmarks whatever came before it, so
    nothing carries a moving head's past into its present. mediapipe's video mode (tracking + a causal
    One-Euro filter) does carry it: there the same frames differ by up to pixels after a fresh start, and its
    landmarks trail a moving head (BENCHMARKS.md, "Session 11: the landmarks trailed the video")."""
    clip = "talk_dfrf_cnn_en"
    size = processed.crop(clip)["size"]
    video = str(processed.dir(clip) / "crop" / "video.mp4")
    task = str(mp_models.locate(mp_models.FACE_LANDMARKER))
    gap = {}
    for mode in ("image", "video"):
        cfg = LandmarksConfig(running_mode=mode)
        from_100 = landmark_chunk(video, size, 100, 125, 25, task, cfg)["landmarks"][10:]
        from_110 = landmark_chunk(video, size, 110, 125, 25, task, cfg)["landmarks"]
        gap[mode] = float(np.abs(from_100 - from_110)[..., :2].max())
    assert LandmarksConfig().running_mode == "image"
    assert gap["image"] < 1e-3, gap
    assert gap["video"] > 0.1, gap  # the property is a real one: the tracking mode fails it


# ----------------------------------------------------------------------------- built clips

def _ffmpeg(*args):
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def test_two_faces_side_by_side_are_refused(tmp_path):
    src = tmp_path / "two.mp4"
    _ffmpeg("-t", "4", "-i", str(clip_path("talk_mimictalk_trump_en")), "-filter_complex",
            "[0:v]split[a][b];[b]hflip[m];[a][m]hstack[v]", "-map", "[v]", "-map", "0:a",
            "-c:v", "libx264", "-crf", "18", "-c:a", "aac", str(src))
    ingest.run(src, tmp_path / "ingest")
    out = tmp_path / "crop"
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess.crop", "--video", str(tmp_path / "ingest" / "video.mp4"),
                           "--meta", str(tmp_path / "ingest" / "meta.json"), "--outdir", str(out),
                           "--config", '{"size": 128}'], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "second face" in last and "frames 0-" in last, last
    assert "Traceback" not in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_black_frames_refused_or_flagged(tmp_path):
    """2 s of black inserted at 4 s into a 10 s clip: 50 of 300 frames without a face."""
    src = tmp_path / "black.mp4"
    graph = ("[0:v]fps=25,scale=512:512,setsar=1,format=yuv420p,split[v1][v2];"
             "[v1]trim=0:4,setpts=PTS-STARTPTS[a];[v2]trim=4,setpts=PTS-STARTPTS[b];"
             "color=black:s=512x512:r=25:d=2,format=yuv420p[k];"
             "[0:a]aformat=sample_rates=48000:channel_layouts=stereo,asplit[x1][x2];"
             "[x1]atrim=0:4,asetpts=PTS-STARTPTS[aa];[x2]atrim=4,asetpts=PTS-STARTPTS[bb];"
             "anullsrc=r=48000:cl=stereo,atrim=0:2[kk];"
             "[a][aa][k][kk][b][bb]concat=n=3:v=1:a=1[v][au]")
    _ffmpeg("-i", str(clip_path("talk_mimictalk_trump_en")), "-filter_complex", graph, "-map", "[v]", "-map", "[au]",
            "-c:v", "libx264", "-crf", "18", "-c:a", "aac", str(src))
    meta = ingest.run(src, tmp_path / "ingest")
    n = meta["n_frames"]
    assert n == 300
    crop.run(tmp_path / "ingest" / "video.mp4", tmp_path / "ingest" / "meta.json", tmp_path / "crop", CropConfig(size=128))
    args = (tmp_path / "crop" / "video.mp4", tmp_path / "crop" / "crop.json", tmp_path / "ingest" / "meta.json")
    boxes = CROP_BOXES.read_pandas(tmp_path / "crop" / "boxes.parquet")
    assert (boxes.n_faces[(boxes.frame_idx >= 100) & (boxes.frame_idx < 150)] == 0).all()

    # default threshold (2 %): 50 / 300 frames missing -> refused, the black range named, nothing written
    with pytest.raises(landmarks.LandmarksError, match=r"frames 10[01]-1(49|50)"):
        landmarks.run(*args, tmp_path / "lm_default", LandmarksConfig(workers=1))
    assert not (tmp_path / "lm_default" / "landmarks.parquet").exists()

    # a looser threshold: accepted, the black frames flagged (neither detected nor interpolated, NaN)
    summary = landmarks.run(*args, tmp_path / "lm_loose", LandmarksConfig(workers=1, max_missing_fraction=0.25))
    table = LANDMARKS.read(tmp_path / "lm_loose" / "landmarks.parquet")
    detected = table.column("detected").to_numpy(zero_copy_only=False)
    interp = table.column("interpolated").to_numpy(zero_copy_only=False)
    missing = np.flatnonzero(~detected & ~interp)
    assert 48 <= len(missing) <= 52 and missing.min() >= 99 and missing.max() <= 151, missing
    assert summary["missing"] == len(missing)
    assert np.isnan(_points(table)[missing]).all() and np.isfinite(_points(table)[detected]).all()


# ----------------------------------------------------------------------------- units

def test_fill_gaps_interpolates_short_runs_only():
    n = 20
    detected = np.ones(n, bool)
    detected[[0, 5, 6]] = False       # a 1-frame run at the start, a 2-frame run inside
    detected[10:17] = False           # a 7-frame run: longer than max_gap
    lm = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, N_LANDMARKS, 3), np.float32)
    lm[~detected] = np.nan
    data = {"detected": detected, "landmarks": lm, "blendshapes": np.where(detected[:, None], 0.5, np.nan),
            "pose": np.where(detected[:, None], 1.0, np.nan)}
    interp = landmarks.fill_gaps(data, max_gap=5)
    assert list(np.flatnonzero(interp)) == [0, 5, 6]
    assert data["landmarks"][0, 0, 0] == 1 and data["landmarks"][5, 0, 0] == pytest.approx(5)
    assert data["landmarks"][6, 0, 0] == pytest.approx(6)
    assert np.isnan(data["landmarks"][10:17]).all()
    assert landmarks.missing_runs(detected) == [(0, 1), (5, 7), (10, 17)]


def test_format_ranges():
    assert crop.format_ranges([0, 5, 10, 30, 35], step=5) == "0-10, 30-35"
    assert crop.format_ranges([3]) == "3"


def test_model_files_are_located_and_verified(tmp_path):
    path = mp_models.locate(mp_models.FACE_LANDMARKER)
    assert path.name == "face_landmarker.task" and path.is_file()
    assert len(mp_models.task_member(path, "face_detector.tflite")) > 100_000
    assert mp_models.locate(mp_models.SELFIE_SEGMENTER).is_file()
    # a config override is used as given (no sha256 check); a missing one is a clear error
    own = tmp_path / "own.task"
    own.write_bytes(path.read_bytes())
    assert mp_models.locate(mp_models.FACE_LANDMARKER, str(own)) == own
    with pytest.raises(mp_models.ModelError, match="does not exist"):
        mp_models.locate(mp_models.FACE_LANDMARKER, str(tmp_path / "nope.task"))
    # a wheel file that does not match the recorded sha256 is refused
    with pytest.raises(mp_models.ModelError, match="sha256"):
        mp_models._checked(own, "0" * 64, 0)
