"""Rules ``train_audio2lmk`` (per subject) and ``pretrain_audio2lmk`` (all subjects, optional).

Per subject: fit on the train split (early stopping on its last 10 %), predict every frame with
overlapping windows, smooth with a centred filter, and evaluate on the test split against the
tracked landmarks projected with the tracked poses (px at 512²). Two baselines are computed in
the same run: the subject's mean mouth and a ridge regression from the same audio windows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import STAGE1_METRICS, Provenance, config_hash, file_sha256
from pipeline.core.cli import guarded, parser
from pipeline.core.config import Stage1Config, from_mapping
from pipeline.core.layout import SELF_AUDIO, Stage1Files
from pipeline.core.metrics import best_lag, mouth_lmd, mouth_opening
from pipeline.stage1.data import LandmarkBasis, predict_landmarks, ridge_baseline
from pipeline.stage1.fit import fit, split_validation
from pipeline.stage1.io import Camera, load_features, load_model, load_targets, save_model, write_predictions

log = logging.getLogger("pipeline.stage1.train")


def evaluate(pred: np.ndarray, raw: np.ndarray, true: np.ndarray, feats: np.ndarray, basis: LandmarkBasis,
             camera: Camera, train_ranges: list, cfg: Stage1Config) -> dict:
    """Test-split metrics of the prediction and of the two baselines, LMD in px at 512²."""
    t0, t1 = camera.split["test"]
    frames = np.arange(t0, t1)
    true_px = camera.project(true[t0:t1], frames)
    lmd = mouth_lmd(camera.project(pred[t0:t1], frames), true_px)
    mean_shape = np.repeat(basis.mean[None], t1 - t0, axis=0)
    lmd_mean = mouth_lmd(camera.project(mean_shape, frames), true_px)
    fit_ranges, _ = split_validation(train_ranges, cfg)
    tr = np.concatenate([np.arange(a, b) for a, b in fit_ranges])
    flat = feats.reshape(len(feats), -1)
    lin = ridge_baseline(flat[tr], basis.encode(true[tr]), flat[t0:t1])
    lmd_lin = mouth_lmd(camera.project(basis.decode(lin), frames), true_px)
    mo_pred, mo_true = mouth_opening(pred[t0:t1]), mouth_opening(true[t0:t1])
    corr = float(np.corrcoef(mo_pred, mo_true)[0, 1]) if mo_pred.std() > 0 else 0.0
    lag, _ = best_lag(mouth_opening(raw), mouth_opening(pred), max_lag=5)
    return {"test_frames": int(t1 - t0), "lmd_px": lmd, "lmd_px_mean_shape": lmd_mean, "lmd_px_linear": lmd_lin,
            "mouth_corr": corr, "smoothing_lag_frames": int(lag)}


def mouth_plot(path: Path, pred: np.ndarray, true: np.ndarray, test: tuple[int, int], fps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0, t1 = test
    t = np.arange(t0, t1) / fps
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(t, mouth_opening(true[t0:t1]), label="tracked", lw=1.5)
    ax.plot(t, mouth_opening(pred[t0:t1]), label="stage 1 (from audio)", lw=1.2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mouth opening / face height")
    ax.legend(loc="upper right")
    ax.set_title("Test split: predicted vs tracked mouth opening")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(features: Path | str, canonical: Path | str, transforms: Path | str, outdir: Path | str,
        cfg: Stage1Config = Stage1Config(), pretrained: Path | str | None = None, fps: int = 25) -> dict:
    outdir = Path(outdir)
    feats = load_features(features, cfg.use_encoder)
    lms = load_targets(canonical, len(feats), features)
    camera = Camera(transforms)
    train_ranges = [tuple(camera.split["train"])]
    init, basis = None, None
    if pretrained:
        init, pre_basis, _ = load_model(pretrained)
        a, b = train_ranges[0]
        subject_mean = lms[a:b].mean(0)
        basis = LandmarkBasis(subject_mean + pre_basis.mean, pre_basis.components, pre_basis.scale, pre_basis.weight)
    start = time.time()
    result = fit(feats, lms, train_ranges, cfg, init=init, basis=basis)
    seconds = time.time() - start
    pred, raw = predict_landmarks(result.model, result.basis, feats, cfg)
    metrics = evaluate(pred, raw, lms, feats, result.basis, camera, train_ranges, cfg)
    metrics.update(best_step=result.best_step, curve=result.curve, train_seconds=round(seconds, 2))
    log.info("test LMD %.2f px (mean shape %.2f, linear %.2f), mouth r=%.2f", metrics["lmd_px"],
             metrics["lmd_px_mean_shape"], metrics["lmd_px_linear"], metrics["mouth_corr"])
    prov = Provenance(file_sha256(features), config_hash(cfg))
    save_model(outdir, result.model, result.basis, cfg, prov)
    files = Stage1Files(outdir)
    write_predictions(files.pred(SELF_AUDIO), pred, fps, prov)
    mouth_plot(files.mouth_plot, pred, lms, tuple(camera.split["test"]), fps)
    STAGE1_METRICS.write(files.metrics, metrics, prov)
    return metrics


def pretrain(features: list[str], canonical: list[str], transforms: list[str], outdir: Path | str,
             cfg: Stage1Config = Stage1Config()) -> dict:
    """One model over every subject's train split; targets are offsets from each subject's mean."""
    feats_all, off_all, ranges, start = [], [], [], 0
    for f, c, t in zip(features, canonical, transforms):
        feats = load_features(f, cfg.use_encoder)
        lms = load_targets(c, len(feats), f)
        a, b = Camera(t).split["train"]
        feats_all.append(feats[a:b])
        off_all.append(lms[a:b] - lms[a:b].mean(0))
        ranges.append((start, start + b - a))
        start += b - a
    dims = {x.shape[-1] for x in feats_all}
    if len(dims) != 1:
        raise ValueError(f"subjects have different audio feature sizes {dims}: use one audio config for all")
    result = fit(np.concatenate(feats_all), np.concatenate(off_all), ranges, cfg, steps=cfg.pretrain_steps)
    prov = Provenance(file_sha256(features[0]), config_hash(cfg))
    save_model(Path(outdir), result.model, result.basis, cfg, prov)
    return {"best_step": result.best_step, "best_val": result.best_val, "subjects": len(features)}


def main(argv: list[str] | None = None) -> None:
    p = parser("Train the audio-to-landmark Transformer (stage 1).", ["outdir"])
    p.add_argument("--features", nargs="+", required=True)
    p.add_argument("--canonical", nargs="+", required=True)
    p.add_argument("--transforms", nargs="+", required=True)
    p.add_argument("--pretrained", default=None, help="folder of a pre-trained stage-1 model to fine-tune")
    p.add_argument("--pretrain", action="store_true", help="pre-train on all given subjects")
    args = p.parse_args(argv)

    def body() -> None:
        cfg = from_mapping(Stage1Config, args.config, "stage1")
        if args.pretrain:
            pretrain(args.features, args.canonical, args.transforms, args.outdir, cfg)
        else:
            run(args.features[0], args.canonical[0], args.transforms[0], args.outdir, cfg, args.pretrained)

    guarded(body)


if __name__ == "__main__":
    main()
