"""Stage 1 on real clips: beats both baselines, tracks the mouth, is deterministic, drives any wav."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipeline.core.artifacts import STAGE1_PRED, fixed_list_column
from pipeline.core.config import Stage1Config
from pipeline.core.metrics import LIP_IDS, MOUTH_REGION, best_lag, mouth_opening, rms_envelope
from pipeline.stage1 import predict
from pipeline.stage1.data import LandmarkBasis, sliding_predict, target_weights
from pipeline.stage1.fit import fit
from pipeline.stage1.io import load_features, load_targets

from conftest import speech_path

LONG_CLIPS = ["talk_dfrf_cnn_en", "talk_dfrf_macron_fr", "talk_mimictalk_german_de"]  # >= 20 s


def test_weighted_target_space_round_trip():
    """The jaw outline's weight changes what the PCA attends to, not what the landmarks decode to: motion inside
    the basis' span comes back exactly, the outline unweighted; points outside the mouth region keep the mean."""
    rng = np.random.default_rng(0)
    n, p = 200, 478
    modes = np.zeros((3, p, 3))
    modes[:, MOUTH_REGION] = rng.normal(0, 0.1, (3, len(MOUTH_REGION), 3))
    lms = (rng.normal(0, 1, (n, 3)) @ modes.reshape(3, -1)).reshape(n, p, 3) + rng.normal(0, 1, (1, p, 3))
    w = target_weights(p, 0.3)
    assert np.all(w[LIP_IDS] == 1) and np.all(w[np.setdiff1d(MOUTH_REGION, LIP_IDS)] == np.float32(0.3))
    basis = LandmarkBasis.fit(lms.astype(np.float32), 16, weight=w)
    assert basis.k == 3
    back = basis.decode(basis.encode(lms.astype(np.float32)))
    np.testing.assert_allclose(back, lms, atol=2e-4)
    outside = np.setdiff1d(np.arange(p), MOUTH_REGION)
    np.testing.assert_allclose(back[:, outside], np.broadcast_to(basis.mean[outside], back[:, outside].shape), atol=1e-6)
    # the same motion with a noisy outline: at weight 0.3 the first component is the lips' motion, at 1 the noise's
    noisy = lms.copy()
    outline = np.setdiff1d(MOUTH_REGION, LIP_IDS)
    noisy[:, outline] += rng.normal(0, 0.3, (n, len(outline), 3))
    lip_share = {}
    for weight in (1.0, 0.3):
        b = LandmarkBasis.fit(noisy.astype(np.float32), 16, weight=target_weights(p, weight))
        first = b.components[0].reshape(p, 3)
        lip_share[weight] = float((first[LIP_IDS] ** 2).sum() / (first ** 2).sum())
    print(f"\nlips share of the first component: {lip_share}")
    assert lip_share[0.3] > 0.8 and lip_share[1.0] < 0.6, lip_share     # measured 0.92 and 0.45


@pytest.mark.parametrize("clip", LONG_CLIPS)
def test_beats_both_baselines(processed, clip):
    m = processed.stage1(clip)
    print(f"{clip}: LMD {m['lmd_px']:.2f} px | mean shape {m['lmd_px_mean_shape']:.2f} | "
          f"linear {m['lmd_px_linear']:.2f} | mouth r {m['mouth_corr']:.2f} | best step {m['best_step']}")
    # margins measured by bench/test_margins.py (seeds 0-2 x threads 1, 2; BENCHMARKS.md "Test margins"):
    # mean shape - LMD 0.31-0.40 (cnn), 0.59-0.70 (macron), 0.47-0.67 (german) px
    assert m["lmd_px_mean_shape"] - m["lmd_px"] > 0.15
    # the model starts as the ridge regression (its linear path) and early stopping keeps only what validates
    # better, so per clip it is never much worse (linear - LMD: 0.04-0.13, -0.004-0.11, 0.30-0.50 px);
    # that training does improve on it is asserted over the three clips below
    assert m["lmd_px"] < m["lmd_px_linear"] + 0.05
    assert m["smoothing_lag_frames"] == 0
    pred = STAGE1_PRED.read(processed.dir(clip) / "stage1" / "pred" / "self.parquet")
    assert len(pred) == processed.ingest(clip)["n_frames"]


def test_training_improves_on_the_linear_path_across_clips(processed):
    gains = [processed.stage1(c)["lmd_px_linear"] - processed.stage1(c)["lmd_px"] for c in LONG_CLIPS]
    assert np.mean(gains) > 0.05, gains   # measured 0.14-0.21 px (seeds 0-2 x threads 1, 2)


@pytest.mark.parametrize("clip", ["talk_dfrf_cnn_en", "talk_dfrf_macron_fr"])
def test_mouth_opening_follows_tracking(processed, clip):
    assert processed.stage1(clip)["mouth_corr"] >= 0.5   # measured 0.59-0.68 (cnn), 0.64-0.67 (macron)


def test_same_seed_same_predictions(processed):
    clip = "talk_mimictalk_german_de"
    processed.tracking(clip)
    processed.audio(clip)
    d = processed.dir(clip)
    feats = load_features(d / "audio" / "self.npz", True)
    lms = load_targets(d / "tracking" / "canonical.npz", len(feats), d / "audio" / "self.npz")
    cfg = Stage1Config(steps=30, d_model=32, eval_every=15)
    a, b = (fit(feats, lms, [(0, 400)], cfg) for _ in range(2))
    pa, pb = (sliding_predict(r.model, feats[400:], cfg.seq_len) for r in (a, b))
    np.testing.assert_array_equal(pa, pb)
    assert a.curve[1:] == b.curve[1:]  # (step 0 has no train loss: NaN)
    # another seed trains differently (its predictions may still coincide when neither run beats the
    # zero-initialised output of step 0 on validation, which fit then returns)
    c = fit(feats, lms, [(0, 400)], Stage1Config(steps=30, d_model=32, eval_every=15, seed=1))
    assert [p["train_loss"] for p in c.curve[1:]] != [p["train_loss"] for p in a.curve[1:]]


@pytest.mark.parametrize("wav", ["speech_genefacepp_macron_fr", "speech_sadtalker_chinese_news_zh",
                                 "speech_dreamtalk_german1_de"])
def test_drive_with_other_languages(processed, tmp_path, wav):
    from pipeline.audio import features as audio_features

    clip = "talk_dfrf_cnn_en"
    processed.stage1(clip)
    model_dir = processed.dir(clip) / "stage1"
    audio_features.run(speech_path(wav), tmp_path / f"{wav}.npz", tmp_path / f"{wav}.parquet")
    n = predict.run(tmp_path / f"{wav}.npz", model_dir, tmp_path / "pred.parquet")
    info = sf.info(str(speech_path(wav)))
    assert n == round(info.duration * 25)
    table = STAGE1_PRED.read(tmp_path / "pred.parquet")
    lms = fixed_list_column(table, "landmarks", (478, 3))
    mouth = mouth_opening(lms)
    assert np.isfinite(lms).all() and mouth.std() > 0
    samples, sr = sf.read(str(speech_path(wav)), always_2d=True)
    energy = rms_envelope(samples.mean(1), sr, 25, n)
    lag, r = best_lag(mouth, energy, 2)
    print(f"{wav}: mouth-energy r={r:.2f} at lag {lag}")
    # measured 0.23-0.35 (macron wav), 0.33-0.37 (chinese), 0.40-0.45 (german) over seeds 0-2 x threads 1, 2
    assert r > 0.15, f"predicted mouth motion does not follow the {wav} audio (r={r:.2f})"


def test_predict_refuses_mismatched_features(processed, tmp_path):
    from pipeline.core.artifacts import AUDIO_FEATURES
    from pipeline.stage1.io import Stage1Error

    clip = "talk_mimictalk_german_de"
    processed.stage1(clip)
    data = AUDIO_FEATURES.read(processed.dir(clip) / "audio" / "self.npz")
    data["features"] = data["features"][..., :40]
    data["columns"] = data["columns"][:40]
    data["feat_mean"], data["feat_std"] = data["feat_mean"][:40], data["feat_std"][:40]
    from pipeline.core.artifacts import Provenance

    AUDIO_FEATURES.write(tmp_path / "bad.npz", data, Provenance("0" * 64, "x"))
    with pytest.raises(Stage1Error, match="bad.npz.*feature size 40"):
        predict.run(tmp_path / "bad.npz", processed.dir(clip) / "stage1", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_pretrain_then_finetune(processed, tmp_path):
    """Cross-subject pre-training (targets: offsets from each subject's mean), then per-subject fine-tuning."""
    from pipeline.stage1 import train

    clips = ["talk_mimictalk_german_de", "talk_dfrf_cnn_en"]
    for c in clips:
        processed.tracking(c)
        processed.audio(c)
    d = [processed.dir(c) for c in clips]
    cfg = Stage1Config(steps=60, pretrain_steps=60, eval_every=20)
    info = train.pretrain([str(x / "audio" / "self.npz") for x in d], [str(x / "tracking" / "canonical.npz") for x in d],
                          [str(x / "tracking" / "transforms.json") for x in d], tmp_path / "pre", cfg)
    assert info["subjects"] == 2
    m = train.run(d[0] / "audio" / "self.npz", d[0] / "tracking" / "canonical.npz", d[0] / "tracking" / "transforms.json",
                  tmp_path / "fine", cfg, pretrained=tmp_path / "pre")
    assert m["lmd_px"] < m["lmd_px_mean_shape"]


def test_pretrain_is_one_job_feeding_every_subject(tmp_path):
    """With stage1.pretrain on, the DAG has one pretrain job and a fine-tune per subject."""
    import subprocess
    import sys

    from conftest import REPO

    for name in ["alice", "bob"]:
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / f"{name}.mp4").write_bytes(b"dry runs never read this")
    overlay = tmp_path / "pretrain.yaml"
    overlay.write_text("stage1:\n  pretrain: true\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "-n", "results/alice/stage1/model.pt", "results/bob/stage1/model.pt",
                           "--configfile", str(REPO / "config.yaml"), str(overlay)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("pretrain_audio2lmk") == 1 and counts.get("train_audio2lmk") == 2, counts


def test_out_of_fold_mouths_miss_the_train_frames_like_new_audio(processed, tmp_path):
    """stage1/oof.parquet (stage2.train_mouth: stage1): each train frame's mouth comes from a fit that left it out,
    so it misses the tracked mouth by more than the in-sample model does and about as much as on the test split;
    the head's training data takes that mouth on the train frames only."""
    from pipeline.core.artifacts import ArtifactError, CANONICAL_LANDMARKS
    from pipeline.stage1 import oof
    from pipeline.stage1.io import Camera
    from pipeline.stage2.data import with_stage1_mouth

    clip = "talk_mimictalk_german_de"
    processed.stage1(clip)
    d = processed.dir(clip)
    out = tmp_path / "oof.parquet"
    report = oof.run(d / "audio" / "self.npz", d / "tracking" / "canonical.npz", d / "tracking" / "transforms.json",
                     out, Stage1Config(steps=300))
    lms = CANONICAL_LANDMARKS.read(d / "tracking" / "canonical.npz")["landmarks"]
    held = fixed_list_column(STAGE1_PRED.read(out), "landmarks", (478, 3))
    inside = fixed_list_column(STAGE1_PRED.read(d / "stage1" / "pred" / "self.parquet"), "landmarks", (478, 3))
    split = Camera(d / "tracking" / "transforms.json").split
    (a, b), (c, e) = split["train"], split["test"]
    assert len(held) == len(lms) and report[0]["frames"][0] == a and report[-1]["frames"][1] == b

    def err(p, lo, hi):
        return float(np.linalg.norm(p[lo:hi, MOUTH_REGION] - lms[lo:hi, MOUTH_REGION], axis=-1).mean())

    oof_train, in_train, test = err(held, a, b), err(inside, a, b), err(inside, c, e)
    print(f"\nmouth error (cm): out-of-fold train {oof_train:.4f}, in-sample train {in_train:.4f}, test {test:.4f}")
    assert oof_train > in_train                 # measured 0.159 against 0.104 cm (german; cnn 0.153 / 0.131)
    assert 0.5 < oof_train / test < 2.0         # measured 1.10 (test 0.144 cm; cnn 0.97)
    mixed = with_stage1_mouth(lms, out, a, b)
    np.testing.assert_array_equal(mixed[a:b][:, MOUTH_REGION], held[a:b][:, MOUTH_REGION])
    rest = np.setdiff1d(np.arange(478), MOUTH_REGION)
    np.testing.assert_array_equal(mixed[:, rest], lms[:, rest])
    np.testing.assert_array_equal(mixed[b:], lms[b:])
    with pytest.raises(ArtifactError, match="oof_audio2lmk"):
        with_stage1_mouth(lms, tmp_path / "missing.parquet", a, b)
