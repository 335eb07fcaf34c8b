"""Out-of-fold stage-1 landmarks: every frame predicted by a model that did not train on it (rule oof_audio2lmk).

The head is trained on the tracked mouth but rendered from stage 1's, which misses it by about 1.5 px on a
minute of speech. With ``stage2.train_mouth: stage1`` the head trains on this file's mouth instead, so that it
learns to draw what the frame shows given the kind of mouth it will be given at render time. A model trained on
a frame predicts that frame better than it predicts new audio (on cnn 0.13 against 0.16 cm of mouth error), so
the train split is cut into ``FOLDS`` consecutive folds, and each fold's frames are predicted by the same stage-1
fit (``stage1`` config) trained on the other folds; frames outside the train split by the first fold's model.
Writes ``stage1/oof.parquet`` (the STAGE1_PRED table), with the mouth error of each fold in the log.

    python -m pipeline.stage1.oof --features F --canonical C --transforms T --out stage1/oof.parquet
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.core.artifacts import Provenance, config_hash, file_sha256
from pipeline.core.cli import guarded, parser
from pipeline.core.config import Stage1Config, from_mapping
from pipeline.core.metrics import MOUTH_REGION
from pipeline.stage1.data import predict_landmarks
from pipeline.stage1.fit import fit
from pipeline.stage1.io import Camera, Stage1Error, load_features, load_targets, write_predictions

log = logging.getLogger("pipeline.stage1.oof")
FOLDS = 4


def fold_edges(a: int, b: int, folds: int = FOLDS) -> np.ndarray:
    """Boundaries of ``folds`` consecutive, near-equal folds of the frames ``[a, b)``."""
    return np.linspace(a, b, folds + 1).round().astype(int)


def out_of_fold(feats: np.ndarray, lms: np.ndarray, train: tuple[int, int], cfg: Stage1Config,
                folds: int = FOLDS) -> tuple[np.ndarray, list[dict]]:
    """[N, P, 3] landmarks, each frame from a fit that left it out, and per fold its frames and mouth error (cm)."""
    a, b = train
    edges = fold_edges(a, b, folds)
    if np.diff(edges).min() < 2 * cfg.seq_len:
        raise ValueError(f"{b - a} train frames are too few for {folds} folds of at least {2 * cfg.seq_len}")
    out, report = None, []
    for k in range(folds):
        lo, hi = int(edges[k]), int(edges[k + 1])
        ranges = [r for r in ((a, lo), (hi, b)) if r[1] - r[0] >= 2 * cfg.seq_len]
        pred = _predict(feats, lms, ranges, cfg)
        if out is None:
            out = pred.copy()                   # frames outside the train split: the first fold's model
        out[lo:hi] = pred[lo:hi]
        err = float(np.linalg.norm(pred[lo:hi, MOUTH_REGION] - lms[lo:hi, MOUTH_REGION], axis=-1).mean())
        report.append({"frames": [lo, hi], "mouth_error_cm": round(err, 5)})
        log.info("fold %d: frames %d-%d, mouth error %.4f cm", k, lo, hi, err)
    return out, report


def _predict(feats: np.ndarray, lms: np.ndarray, ranges: list[tuple[int, int]], cfg: Stage1Config) -> np.ndarray:
    result = fit(feats, lms, ranges, cfg)
    return predict_landmarks(result.model, result.basis, feats, cfg)[0]


def run(features: Path | str, canonical: Path | str, transforms: Path | str, out: Path | str,
        cfg: Stage1Config = Stage1Config(), fps: int = 25) -> list[dict]:
    feats = load_features(features, cfg.use_encoder)
    lms = load_targets(canonical, len(feats), features)
    train = tuple(Camera(transforms).split["train"])
    try:
        pred, report = out_of_fold(feats, lms, train, cfg)
    except ValueError as e:
        raise Stage1Error(transforms, str(e)) from None
    write_predictions(Path(out), pred, fps, Provenance(file_sha256(features), config_hash(cfg)))
    return report


def main(argv: list[str] | None = None) -> None:
    p = parser("Out-of-fold stage-1 landmarks of a subject's own audio (stage2.train_mouth: stage1).",
               ["features", "canonical", "transforms", "out"])
    args = p.parse_args(argv)
    guarded(lambda: run(args.features, args.canonical, args.transforms, args.out,
                        from_mapping(Stage1Config, args.config, "stage1")))


if __name__ == "__main__":
    main()
