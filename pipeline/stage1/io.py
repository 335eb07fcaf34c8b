"""Stage-1 inputs and outputs: audio windows, tracked canonical landmarks, camera projection, model files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import (AUDIO_FEATURES, CANONICAL_LANDMARKS, STAGE1_BASIS, STAGE1_MODEL, STAGE1_PRED,
                                     TRANSFORMS, Provenance, atomic_output)
from pipeline.core.config import Stage1Config
from pipeline.core.errors import PipelineError
from pipeline.core.layout import Stage1Files
from pipeline.core.metrics import mouth_opening
from pipeline.stage1.data import LandmarkBasis
from pipeline.stage1.model import Audio2Landmarks


class Stage1Error(PipelineError):
    pass


def load_features(path: Path | str, use_encoder: bool) -> np.ndarray:
    """Audio windows [N, W, D]; learned-encoder frames [N, 2, H] are appended to every window row."""
    data = AUDIO_FEATURES.read(path)
    feats = data["features"].astype(np.float32)
    if use_encoder and "encoder" in data:
        enc = data["encoder"].astype(np.float32)
        enc = (enc - enc.mean((0, 1))) / (enc.std((0, 1)) + 1e-6)
        tiled = np.repeat(enc.reshape(len(enc), 1, -1), feats.shape[1], axis=1)
        feats = np.concatenate([feats, tiled], axis=-1)
    if not np.isfinite(feats).all():
        raise Stage1Error(path, "audio features contain NaN/inf")
    return feats


def load_targets(canonical: Path | str, n_frames: int, features_path: Path | str) -> np.ndarray:
    lms = CANONICAL_LANDMARKS.read(canonical)["landmarks"].astype(np.float32)
    if len(lms) != n_frames:
        raise Stage1Error(canonical, f"{len(lms)} frames of landmarks but {n_frames} of audio features in {features_path}")
    return lms


class Camera:
    """Projects head-space points of each frame with the tracked pose (tracking/transforms.json)."""

    def __init__(self, transforms: Path | str):
        doc = TRANSFORMS.read(transforms)
        self.focal, self.cx, self.cy, self.w = doc["focal_px"], doc["cx"], doc["cy"], doc["w"]
        self.split = doc["split"]
        c2h = np.array([f["transform_matrix"] for f in doc["frames"]], np.float64)
        self.head_to_cam = np.linalg.inv(c2h)

    def project(self, points: np.ndarray, frames: np.ndarray, size: int = 512) -> np.ndarray:
        """[N, P, 3] head-space points of ``frames`` -> [N, P, 2] pixels, rescaled to a ``size``² crop."""
        m = self.head_to_cam[frames]
        cam = np.einsum("nij,npj->npi", m[:, :3, :3], points.astype(np.float64)) + m[:, None, :3, 3]
        depth = -cam[..., 2]  # OpenGL: the camera looks down -z
        u = self.cx + self.focal * cam[..., 0] / depth
        v = self.cy - self.focal * cam[..., 1] / depth
        return np.stack([u, v], -1) * (size / self.w)


def save_model(outdir: Path, model: Audio2Landmarks, basis: LandmarkBasis, cfg: Stage1Config, prov: Provenance) -> None:
    files = Stage1Files(outdir)
    with atomic_output(files.model) as tmp:
        torch.save(model.state_dict(), tmp)
    STAGE1_BASIS.write(files.basis, basis.arrays(), prov)
    STAGE1_MODEL.write(files.meta, {
        "in_dim": model.in_dim, "out_dim": model.out_dim, "window": model.window_len,
        "d_model": cfg.d_model, "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads, "use_encoder": cfg.use_encoder, "config": asdict(cfg)}, prov)


def write_predictions(path: Path, lms: np.ndarray, fps: int, prov: Provenance) -> None:
    n = len(lms)
    STAGE1_PRED.write(path, {"frame_idx": np.arange(n, dtype=np.int32), "t_sec": np.arange(n) / fps,
                             "landmarks": lms.reshape(n, -1), "mouth_open": mouth_opening(lms)}, prov)


def load_model(model_dir: Path | str) -> tuple[Audio2Landmarks, LandmarkBasis, dict]:
    files = Stage1Files(model_dir)
    meta = STAGE1_MODEL.read(files.meta)
    model = Audio2Landmarks(meta["in_dim"], meta["out_dim"], meta["d_model"], meta["n_layers"], meta["n_heads"], 0.0,
                            meta["window"])
    try:
        state = torch.load(files.model, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError) as exc:
        raise Stage1Error(files.model, f"cannot load weights ({exc})") from exc
    model.eval()
    b = STAGE1_BASIS.read(files.basis)
    return model, LandmarkBasis(b["mean"], b["components"], b["scale"], b["weight"]), meta


def config_json(cfg: Stage1Config) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)
