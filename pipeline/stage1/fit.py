"""The stage-1 training loop on arrays (no I/O): used by the rule module train.py and by tests.

Determinism: seeded numpy/torch generators, deterministic torch algorithms and a fixed thread
count make the same seed on the same CPU give identical weights and predictions.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.core.config import Stage1Config
from pipeline.core.progress import progress
from pipeline.stage1.data import LandmarkBasis, gather, random_sequences, ridge_fit, sliding_predict, target_weights
from pipeline.stage1.model import Audio2Landmarks

log = logging.getLogger("pipeline.stage1")


@dataclass
class FitResult:
    model: Audio2Landmarks
    basis: LandmarkBasis
    curve: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_val: float = float("inf")


def _val_loss(model, feats, coeffs, ranges, seq_len) -> float:
    model.eval()
    errs = [np.mean((sliding_predict(model, feats[a:b], seq_len) - coeffs[a:b]) ** 2) for a, b in ranges]
    model.train()
    return float(np.mean(errs))


def split_validation(ranges: list[tuple[int, int]], cfg: Stage1Config) -> tuple[list, list]:
    """Cut the last ``val_fraction`` of each train range off for early stopping (if long enough)."""
    fit_ranges, val_ranges = [], []
    for lo, hi in ranges:
        n_val = max(cfg.seq_len, int((hi - lo) * cfg.val_fraction))
        if hi - lo > 3 * n_val:
            fit_ranges.append((lo, hi - n_val))
            val_ranges.append((hi - n_val, hi))
        else:
            fit_ranges.append((lo, hi))
    return fit_ranges, val_ranges


def fit(feats: np.ndarray, landmarks: np.ndarray, train_ranges: list[tuple[int, int]], cfg: Stage1Config,
        init: Audio2Landmarks | None = None, basis: LandmarkBasis | None = None, steps: int | None = None) -> FitResult:
    """Train on frames in ``train_ranges`` of ``feats`` [N, W, D] -> ``landmarks`` [N, P, 3] (canonical).

    Several ranges (one per subject when pre-training) never mix within a sequence.
    ``init``/``basis`` continue from a pre-trained model (fine-tuning) with its target basis.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(cfg.seed)
    steps = steps or cfg.steps
    fit_ranges, val_ranges = split_validation(train_ranges, cfg)
    if basis is None:
        basis = LandmarkBasis.fit(np.concatenate([landmarks[a:b] for a, b in fit_ranges]), cfg.max_components,
                                  weight=target_weights(landmarks.shape[1], cfg.jaw_weight))
    coeffs = basis.encode(landmarks).astype(np.float32)
    model = copy.deepcopy(init) if init is not None else Audio2Landmarks(
        feats.shape[-1], basis.k, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.dropout, feats.shape[1])
    rows = np.concatenate([np.arange(a, b) for a, b in fit_ranges])
    xm, w, ym = ridge_fit(feats[rows].reshape(len(rows), -1).astype(np.float64), coeffs[rows].astype(np.float64))
    model.set_linear(*(torch.from_numpy(np.asarray(v, np.float32)) for v in (xm, w, ym)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    result = FitResult(model, basis)
    best_state, bad = copy.deepcopy(model.state_dict()), 0
    if val_ranges:  # step 0 = the linear path alone: training must validate better to be kept
        result.best_val = _val_loss(model, feats, coeffs, val_ranges, cfg.seq_len)
        result.curve.append({"step": 0, "train_loss": float("nan"), "val_loss": result.best_val})
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = np.array([b - a for a, b in fit_ranges], np.float64)
    for step in progress(range(1, steps + 1), desc="stage1", mininterval=2.0):
        which = rng.choice(len(fit_ranges), size=cfg.batch, p=weights / weights.sum())
        starts = np.concatenate([random_sequences(fit_ranges[r], cfg.seq_len, 1, rng) for r in which])
        x = gather(feats, starts, cfg.seq_len).float()
        x = x + cfg.feature_noise * torch.randn(x.shape, generator=gen)
        y = gather(coeffs, starts, cfg.seq_len).float()
        loss = torch.mean((model(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == steps:
            val = _val_loss(model, feats, coeffs, val_ranges, cfg.seq_len) if val_ranges else loss.item()
            result.curve.append({"step": step, "train_loss": loss.item(), "val_loss": val})
            if val < result.best_val:
                result.best_val, result.best_step, bad = val, step, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    log.info("early stop at step %d (best %d, val %.4f)", step, result.best_step, result.best_val)
                    break
    model.load_state_dict(best_state)
    model.eval()
    return result
