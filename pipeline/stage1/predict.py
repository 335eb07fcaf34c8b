"""Rule ``predict_landmarks``: a trained stage-1 model + any clip's audio features -> landmarks per frame."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.artifacts import Provenance, config_hash, file_sha256
from pipeline.core.cli import guarded, parser
from pipeline.core.config import Stage1Config, from_mapping
from pipeline.core.layout import Stage1Files
from pipeline.stage1.data import predict_landmarks
from pipeline.stage1.io import Stage1Error, load_features, load_model, write_predictions


def run(features: Path | str, model_dir: Path | str, out: Path | str, fps: int = 25) -> int:
    """Write ``out`` (STAGE1_PRED) for every frame of ``features``; returns the frame count."""
    model, basis, meta = load_model(model_dir)
    cfg = from_mapping(Stage1Config, meta["config"], str(Stage1Files(model_dir).meta))
    feats = load_features(features, meta["use_encoder"])
    if feats.shape[-1] != model.in_dim:
        raise Stage1Error(features, f"feature size {feats.shape[-1]} != the model's {model.in_dim} "
                                    f"(extract driving audio with the subject's audio config)")
    pred, _ = predict_landmarks(model, basis, feats, cfg)
    write_predictions(Path(out), pred, fps, Provenance(file_sha256(features), config_hash(cfg)))
    return len(pred)


def main(argv: list[str] | None = None) -> None:
    args = parser("Predict per-frame landmarks from audio features (stage 1).", ["features", "model_dir", "out"],
                  config=False).parse_args(argv)
    guarded(lambda: run(args.features, args.model_dir, args.out))


if __name__ == "__main__":
    main()
