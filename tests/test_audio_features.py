"""Audio features on the real clips and driving wavs: counts, windows, formants, encoders, the rule."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import features as audio_features
from pipeline.core.artifacts import AUDIO_FEATURES, AUDIO_FRAMES
from pipeline.core.config import AudioConfig
from pipeline.core.errors import PipelineError

from conftest import CLIPS, REPO, SPEECH, speech_path

FORMANT_FRACTIONS: dict[str, tuple[float, float]] = {}


def _extract(src, out, name, cfg=AudioConfig()):
    audio_features.run(src, out / f"{name}.npz", out / f"{name}.parquet", cfg)
    return AUDIO_FEATURES.read(out / f"{name}.npz"), AUDIO_FRAMES.read_pandas(out / f"{name}.parquet")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Every driving wav through run(); musetalk (3 s of quiet lead-in) with the speech_embedding encoder."""
    out = tmp_path_factory.mktemp("audio")
    res = {}
    for name in SPEECH:
        cfg = AudioConfig(encoder="speech_embedding") if name == "speech_musetalk_eng_en" else AudioConfig()
        res[name] = _extract(speech_path(name), out, name, cfg)
    return res


def _check_contract(z, df, n):
    feats = z["features"]
    assert feats.shape == (n, 16, len(z["columns"])) and feats.dtype == np.float32
    assert list(z["columns"][:2]) == ["mel_00", "mel_01"] and "f1_hz" in z["columns"] and len(z["columns"]) == 89
    assert np.isfinite(feats).all(), "model features must be finite"
    assert np.array_equal(z["frame_idx"], np.arange(n)) and np.array_equal(df["frame_idx"].to_numpy(), np.arange(n))
    # zero padding only at the clip's ends, and recorded
    assert int(z["pad_start"]) == 8 and 0 <= int(z["pad_end"]) <= 8
    assert not z["valid"][0, :8].any() and z["valid"][0, 8:].all()
    assert z["valid"][4:-4].all()
    assert (feats[~z["valid"]] == 0).all()
    assert int((~z["valid"][-1]).sum()) == int(z["pad_end"])
    # window i is the grid shifted by two feature frames per video frame (AD-NeRF convention)
    assert np.array_equal(feats[:-1, 2:], feats[1:, :-2])
    # parquet: formants/f0 NaN exactly where unvoiced, present on most voiced frames
    voiced = df["voiced"].to_numpy()
    assert df.loc[~voiced, ["f0_hz", "f1_hz", "f2_hz", "b1_hz"]].isna().all().all()
    assert df.loc[voiced, "f0_hz"].notna().all() and df.loc[voiced, "f1_hz"].notna().mean() > 0.95
    assert 0.2 < voiced.mean() < 0.9, voiced.mean()


@pytest.mark.parametrize("clip", CLIPS)
def test_own_audio_one_window_per_video_frame(processed, clip, tmp_path):
    meta = processed.ingest(clip)
    wav = processed.dir(clip) / "ingest" / "audio.wav"
    z, df = _extract(wav, tmp_path, "self")
    _check_contract(z, df, meta["n_frames"])
    assert np.allclose(df["t_sec"], np.arange(meta["n_frames"]) / 25)
    # the table's energy at frame i is the audio around t = i / 25 s (alignment, not just length)
    y, sr = sf.read(str(wav), dtype="float32")
    i = np.arange(8, meta["n_frames"] - 8, 7)
    ref = np.array([np.sqrt(np.mean(y[k * 640 - 200: k * 640 + 200] ** 2)) for k in i])
    assert np.allclose(df["rms"].to_numpy()[i], ref, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("name", SPEECH)
def test_driving_wav_counts_and_formants(speech, name):
    z, df = speech[name]
    info = sf.info(str(speech_path(name)))  # 16 or 48 kHz, mono or stereo
    n = round(info.frames / info.samplerate * 25)
    _check_contract(z, df, n)
    v = df[df["voiced"]]
    f1 = ((v["f1_hz"] >= 200) & (v["f1_hz"] <= 1000)).mean()
    f2 = ((v["f2_hz"] >= 600) & (v["f2_hz"] <= 3000)).mean()
    FORMANT_FRACTIONS[name] = (f1, f2)
    print(f"{name}: {info.samplerate} Hz x{info.channels}, {n} frames, voiced {len(v) / len(df):.2f}, "
          f"F1 in 200-1000 Hz {f1:.3f}, F2 in 600-3000 Hz {f2:.3f}, median f0 {v['f0_hz'].median():.0f} Hz")
    assert f1 >= 0.8 and f2 >= 0.8, (f1, f2)
    both = v[["f1_hz", "f2_hz", "f3_hz"]].dropna()
    assert (both["f1_hz"] < both["f2_hz"]).all() and (both["f2_hz"] < both["f3_hz"]).all()


def test_speech_embedding_moves_with_speech(speech):
    z, df = speech["speech_musetalk_eng_en"]
    enc = z["encoder"]
    assert str(z["encoder_name"]) == "speech_embedding" and enc.shape == (len(df), 2, 96)
    assert np.isfinite(enc).all()
    seq = enc.reshape(-1, 96)[::4]                      # 80 ms steps: the model's own hop
    step = np.linalg.norm(np.diff(seq, axis=0), axis=1)
    t = np.arange(len(step)) * 0.08
    quiet, talking = step[t < 2.3].mean(), step[t > 4.0].mean()
    print(f"speech_embedding step: lead-in {quiet:.2f}, speech {talking:.2f}")
    assert talking > 2.0 * quiet, (quiet, talking)


def _tiny_hubert(path):
    torch = pytest.importorskip("torch")
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    HubertModel(cfg).eval().save_pretrained(str(path))
    return path


def test_hubert_tiny_checkpoint_shape(tmp_path):
    ckpt = _tiny_hubert(tmp_path / "tiny_hubert")
    cfg = AudioConfig(encoder="hubert", checkpoint=str(ckpt), chunk_sec=4.0, device="cpu")
    z, df = _extract(speech_path("speech_sadtalker_hdtf_radio31_en"), tmp_path, "radio", cfg)
    assert z["encoder"].shape == (200, 2, 32) and str(z["encoder_name"]) == "hubert"
    assert np.isfinite(z["encoder"]).all() and z["encoder"].std() > 0.1
    # a wav2vec2 run on a HuBERT checkpoint is refused, naming the folder
    with pytest.raises(PipelineError, match="tiny_hubert.*'hubert' model"):
        audio_features.run(speech_path("speech_sadtalker_hdtf_radio31_en"), tmp_path / "x.npz", tmp_path / "x.parquet",
                           AudioConfig(encoder="wav2vec2", checkpoint=str(ckpt)))


def test_bad_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "no_such_model"
    with pytest.raises(PipelineError, match="no_such_model"):
        audio_features.run(speech_path("speech_dreamtalk_german1_de"), tmp_path / "a.npz", tmp_path / "a.parquet",
                           AudioConfig(encoder="hubert", checkpoint=str(bad)))
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "a.parquet").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        audio_features.main(["--audio", str(speech_path("speech_dreamtalk_german1_de")), "--npz", str(tmp_path / "b.npz"),
                             "--table", str(tmp_path / "b.parquet"),
                             "--config", f'{{"encoder": "wav2vec2", "checkpoint": "{tmp_path / "empty"}"}}'])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(tmp_path / "empty") in err and "config.json" in err


def test_missing_or_silent_audio(tmp_path):
    with pytest.raises(PipelineError, match="nope.wav"):
        audio_features.run(tmp_path / "nope.wav", tmp_path / "a.npz", tmp_path / "a.parquet")
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(16000 * 2, np.float32), 16000)
    z, df = _extract(silent, tmp_path, "silent")
    assert z["features"].shape == (50, 16, 89) and np.isfinite(z["features"]).all()
    assert not df["voiced"].any() and df["f1_hz"].isna().all()


def test_rule_through_snakemake(tmp_path):
    """A driving wav through the rule (the own-audio chain is checked as a dry run from the demo)."""
    (tmp_path / "data" / "audio").mkdir(parents=True)
    shutil.copy(speech_path("speech_dreamtalk_german1_de"), tmp_path / "data" / "audio" / "german1.wav")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2"]
    tiny = ["--configfile", str(REPO / "configs" / "tiny.yaml")]
    proc = subprocess.run([*cmd, "results/demo/audio/german1.npz", *tiny], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    z = AUDIO_FEATURES.read(tmp_path / "results/demo/audio/german1.npz")
    assert z["features"].shape == (218, 16, 89)
    assert (tmp_path / "results/demo/audio/german1.parquet").is_file()
    assert (tmp_path / "logs/extract_audio_features/demo/german1.log").is_file()
    assert (tmp_path / "benchmarks/extract_audio_features/demo/german1.tsv").is_file()
    proc = subprocess.run([*cmd, "-n", "results/demo/audio/self.npz", *tiny], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    for rule in ("demo_video", "ingest_video", "measure_av_sync", "extract_audio_features"):
        assert rule in out, out[-2000:]
    assert "results/demo/sync/audio.wav" in out    # the subject's own features read the aligned audio
