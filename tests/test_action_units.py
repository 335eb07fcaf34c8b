"""extract_aus: blink detection, pose-free geometry, missing frames (synthetic) and the real clips
(blinks against the eye aspect ratio, blink rate, mouth AUs against the audio energy)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.core import media, metrics
from pipeline.core.artifacts import (AUS, AUS_STATS, CANONICAL_LANDMARKS, LANDMARKS, N_LANDMARKS, Provenance,
                                     fixed_list_column)
from pipeline.core.config import ActionUnitsConfig, ConfigError, from_mapping
from pipeline.preprocess.action_units import ActionUnitsError, run
from pipeline.preprocess.au_signals import AU_COLUMNS, detect_blinks, eye_aspect_ratio, geometry_signals, smooth

from conftest import CLIPS, REPO

LONG_CLIPS = ("talk_dfrf_cnn_en", "talk_dfrf_macron_fr")  # >= 50 s: enough frames for a stable correlation


def test_config_yaml_matches_the_dataclass():
    section = yaml.safe_load((REPO / "config.yaml").read_text())["action_units"]
    assert from_mapping(ActionUnitsConfig, section) == ActionUnitsConfig()
    with pytest.raises(ConfigError):
        from_mapping(ActionUnitsConfig, {"blink_treshold": 1.5})
    with pytest.raises(ConfigError):
        ActionUnitsConfig(geometry_source="openface")


def test_detect_blinks_excursions_gap_and_edges():
    x = np.zeros(200)
    x[0] = 2.0                      # a blink already under way at the first frame
    x[20:23] = [1.0, 3.0, 1.0]
    x[24] = 3.5                     # back above 2 frames later: one wobbling closure, its peak counts
    x[50:52] = [2.5, 2.5]           # a plateau counts once
    x[80] = 1.4                     # below the threshold
    x[100:103] = 2.0
    x[103:140] = 1.2                # the lid lowers and stays lower: not a blink
    x[145:148] = [1.0, 4.0, 1.8]    # a blink, after which the lid stays a little lower (1.8 < 4 / 2)
    x[148:152] = 1.0
    x[160:190] = 2.0                # closed longer than max_frames: not a blink
    assert detect_blinks(x, 1.5, 6, 25).tolist() == [0, 24, 50, 146]
    assert detect_blinks(x, 1.5, 1, 25).tolist() == [0, 21, 24, 50, 146]
    assert detect_blinks(x, 1.5, 6, 40).tolist() == [0, 24, 50, 146, 160]
    assert detect_blinks(np.full(10, 3.0), 1.5, 6, 25).tolist() == [0]  # closed throughout: one event


def test_smooth_is_centred_and_keeps_the_mean():
    x = np.zeros(41)
    x[20] = 1.0
    y = smooth(x, 2.0)
    assert int(np.argmax(y)) == 20 and np.isclose(y.sum(), 1.0) and np.allclose(y, y[::-1])


def test_geometry_is_invariant_to_head_pose():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 5, (N_LANDMARKS, 3))
    n = 20
    open_ = np.linspace(0, 1, n)[:, None, None]
    shapes = base + open_ * rng.normal(0, 0.5, (1, N_LANDMARKS, 3))  # some expression change over time
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(rng.normal(0, 0.4, (n, 3))).as_matrix()
    moved = np.exp(rng.normal(0, 0.3, (n, 1, 1))) * np.einsum("nij,nkj->nki", R, shapes) + rng.normal(0, 50, (n, 1, 3))
    a, b = geometry_signals(shapes), geometry_signals(moved)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, err_msg=k)
    assert np.ptp(a["lip_gap"]) > 0 and np.ptp(eye_aspect_ratio(shapes)) > 0


def _landmarks_with_gap(src, dst, gap: slice) -> np.ndarray:
    """Copy landmarks.parquet with the frames of ``gap`` marked missing (NaN, both flags false)."""
    t = LANDMARKS.read(src)
    n = len(t)
    cols = {"frame_idx": t.column("frame_idx").to_numpy(),
            "detected": t.column("detected").to_numpy(zero_copy_only=False).copy(),
            "interpolated": t.column("interpolated").to_numpy(zero_copy_only=False).copy(),
            "landmarks": fixed_list_column(t, "landmarks", (N_LANDMARKS * 3,)).copy(),
            "blendshapes": fixed_list_column(t, "blendshapes", (52,)).copy(),
            "pose": fixed_list_column(t, "pose", (16,)).copy()}
    for k in ("landmarks", "blendshapes", "pose"):
        cols[k][gap] = np.nan
    cols["detected"][gap] = cols["interpolated"][gap] = False
    LANDMARKS.write(dst, cols, Provenance("0" * 64, "test"))
    return np.arange(n)[gap]


def test_missing_frames_are_filled_and_bad_inputs_refused(processed, tmp_path):
    clip = "talk_mimictalk_trump_en"
    processed.tracking(clip)
    d = processed.dir(clip)
    src, canon = d / "landmarks" / "landmarks.parquet", d / "tracking" / "canonical.npz"
    holed = tmp_path / "landmarks.parquet"
    missing = _landmarks_with_gap(src, holed, slice(100, 112))
    doc = run(holed, canon, tmp_path / "aus")
    df = AUS.read_pandas(tmp_path / "aus" / "aus.parquet")
    assert np.flatnonzero(df["filled"]).tolist() == missing.tolist() and doc["filled_frames"] == len(missing)
    values = df[list(AU_COLUMNS) + ["ear", "lip_gap", "jaw_drop"]].to_numpy()
    assert np.isfinite(values).all() and (df[list(AU_COLUMNS)].to_numpy() >= 0).all()
    ear = df["ear"].to_numpy()  # filled frames stay within the range of the observed ones
    assert ear[missing].min() >= ear[~df["filled"]].min() and ear[missing].max() <= ear[~df["filled"]].max()

    # canonical.npz of another length: refused, nothing written
    c = CANONICAL_LANDMARKS.read(canon)
    short = tmp_path / "short.npz"
    CANONICAL_LANDMARKS.write(short, {"frame_idx": c["frame_idx"][:-5], "landmarks": c["landmarks"][:-5]},
                              Provenance("0" * 64, "test"))
    with pytest.raises(ActionUnitsError, match="does not match"):
        run(src, short, tmp_path / "bad")
    with pytest.raises(ActionUnitsError, match="canonical"):
        run(src, None, tmp_path / "bad", ActionUnitsConfig(geometry_source="canonical"))
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def _audio_rms(processed, clip: str, n: int) -> np.ndarray:
    meta = processed.ingest(clip)
    wav = media.read_audio(processed.dir(clip) / "ingest" / "audio.wav", meta["sample_rate"])
    return metrics.rms_envelope(wav, meta["sample_rate"], meta["fps"], n)


@pytest.mark.parametrize("clip", CLIPS)
def test_real_clip(processed, clip):
    doc = processed.aus(clip)
    d = processed.dir(clip)
    AUS_STATS.read(d / "aus" / "aus.json")
    df = AUS.read_pandas(d / "aus" / "aus.parquet")
    n = len(df)
    assert n == doc["n_frames"] == processed.ingest(clip)["n_frames"]
    aus = df[list(AU_COLUMNS)].to_numpy()
    assert np.isfinite(aus).all() and aus.min() >= 0 and aus.max() <= 5
    assert np.isfinite(df[["ear", "lip_gap", "jaw_drop"]].to_numpy()).all()

    # blinks: plausible rate, and each AU45 peak is an EAR dip (minimum within +-2 frames, clearly low)
    blinks = [int(p) for p in doc["blink_frames"]]
    ear = df["ear"].to_numpy()
    med = np.median(ear)
    offsets, depth = [], []
    for p in blinks:
        lo = max(0, p - 4)
        w = ear[lo:p + 5]
        offsets.append(int(np.argmin(w)) + lo - p)
        depth.append(float(ear[max(0, p - 2):p + 3].min() / med))
    au45 = df["au45_r"].to_numpy()

    # mouth AUs against the audio energy, best lag within +-2 frames; baseline: mediapipe's raw 2D mouth opening
    rms = _audio_rms(processed, clip, n)
    lag25, r25 = metrics.best_lag(df["au25_r"].to_numpy(), rms, 2)
    lag26, r26 = metrics.best_lag(df["au26_r"].to_numpy(), rms, 2)
    raw = fixed_list_column(LANDMARKS.read(d / "landmarks" / "landmarks.parquet"), "landmarks", (N_LANDMARKS, 3))
    ok = np.isfinite(raw).all(axis=(1, 2))
    _, r_base = metrics.best_lag(np.where(ok, metrics.mouth_opening(np.nan_to_num(raw)), 0.0), rms, 2)
    print(f"\n{clip}: {n} frames, {doc['blink_count']} blinks = {doc['blinks_per_minute']:.1f}/min, EAR min/median at "
          f"blinks {np.round(depth, 2).tolist()}, offsets {offsets}; AU45 median {np.median(au45):.2f}; "
          f"r(AU25, rms) {r25:+.3f} lag {lag25}, r(AU26, rms) {r26:+.3f} lag {lag26}, raw mouth opening {r_base:+.3f}; "
          f"geometry r {({k: v['r'] for k, v in doc['geometry_fit'].items()})}, canonical EAR r {doc['canonical_ear_r']}")

    assert 3 <= doc["blinks_per_minute"] <= 60, doc["blinks_per_minute"]
    assert doc["blink_count"] == len(blinks) >= 1
    assert all(abs(o) <= 2 for o in offsets), offsets
    assert max(depth) < 0.85 and np.median(depth) < 0.6, depth      # every blink: EAR >= 15 % below its median
                                                                      # (partial blinks), most closures: >= 40 %
    assert np.median(au45) < 1.0 < doc["blink_threshold"]            # at rest AU45 sits well below a blink
    assert all(v["r"] * (-1 if v["geometry"] == "ear" else 1) > 0.3 for v in doc["geometry_fit"].values())
    # the AUs keep (at least) the audio link the raw mouth opening has; on the long clips it must be clear
    assert max(r25, r26) >= r_base - 0.1, (r25, r26, r_base)
    if clip in LONG_CLIPS:
        assert min(r25, r26) > 0.1, (r25, r26)
