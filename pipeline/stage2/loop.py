"""The training loop every stage-2 head shares (NeRF: ``pipeline.stage2.train``; Gaussians:
``pipeline.stage2.gaussians.trainer``): budget in steps or minutes, progress bar, train curve, periodic test
evaluation, checkpoints with everything a resume needs, SIGTERM -> checkpoint -> :class:`TrainingInterrupted`.

A head's trainer subclasses :class:`HeadTrainer` and implements its abstract methods: ``train_step(phase)``,
``model`` and ``render_frame(f)`` (what ``evaluate`` scores), ``model_state()`` / ``load_model_state(st)`` (its
own part of a checkpoint) and what ``train.run`` writes (``weights()``, ``occupancy_grid()``,
``extra_metrics()``); optionally ``after_step()`` and ``extra_curve_keys``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import config_hash
from pipeline.core.config import Stage2ModelConfig, Stage2TrainConfig
from pipeline.core.layout import Stage2Files
from pipeline.core.metrics import psnr_from_mse
from pipeline.core.progress import progress
from pipeline.stage2 import checkpoint as ckpt
from pipeline.stage2.data import SubjectData
from pipeline.stage2.evaluate import eval_frames, evaluate
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.sampling import phase_at

log = logging.getLogger("pipeline.stage2.train")

RUN_LENGTH_KEYS = ("steps", "max_minutes", "checkpoint_every", "log_every", "eval_every", "eval_max_frames",
                   "strip_frames", "device", "threads")
BASE_CURVE_KEYS = ("step", "loss", "psnr", "seconds")
EVAL_KEYS = ("step", "seconds", "psnr_head", "ssim_head")


def _without_run_length(d: dict) -> dict:
    return {k: _without_run_length(v) if isinstance(v, dict) else v for k, v in d.items() if k not in RUN_LENGTH_KEYS}


def resume_hash(mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig) -> str:
    """What a checkpoint must agree on to be resumed: everything but the run's length, in any section (the
    Gaussian head's own ``gaussians.steps`` too), so a longer run can continue a shorter one."""
    return config_hash({"model": _without_run_length(asdict(mcfg)), "train": _without_run_length(asdict(tcfg))})


class TrainBar:
    """The training progress bar. With a wall-clock budget (``max_minutes``) it counts trained seconds out of
    the budget, ``train_head (7 min budget):  43%|###  | 181/420 s [03:01<03:59] step 6012, 28.1 dB``; otherwise
    steps out of ``steps``."""

    def __init__(self, tcfg: Stage2TrainConfig, step: int, seconds: float):
        self.budget = int(round(tcfg.max_minutes * 60.0))   # seconds; 0 = no budget
        self.shown, self.step = min(int(seconds), self.budget), step
        if self.budget:
            self.bar = progress(total=self.budget, initial=self.shown, unit="s", mininterval=5,
                                desc=f"train_head ({tcfg.max_minutes:g} min budget)")
        else:
            self.bar = progress(total=tcfg.steps, initial=step, desc="train_head", unit="step", mininterval=5)

    def advance(self, step: int, seconds: float) -> None:
        self.step = step
        if not self.budget:
            self.bar.update(1)
        elif min(int(seconds), self.budget) > self.shown:
            new = min(int(seconds), self.budget)
            self.bar.update(new - self.shown)
            self.shown = new

    def note(self, psnr: float) -> None:
        self.bar.set_postfix_str(f"step {self.step}, train {psnr:.1f} dB", refresh=False)

    def close(self) -> None:
        self.bar.close()


class TrainingInterrupted(RuntimeError):
    """SIGTERM during training: a checkpoint was written; re-running resumes."""


@contextlib.contextmanager
def no_timer(_name: str):
    yield


def _rows(points: list[dict], keys: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([[p[k] for k in keys] for p in points], dtype=torch.float64).reshape(-1, len(keys))


def _points(rows: torch.Tensor, keys: tuple[str, ...]) -> list[dict]:
    points = [dict(zip(keys, r)) for r in rows.tolist()]
    for p in points:
        p["step"] = int(p["step"])
    return points


class HeadTrainer(abc.ABC):
    """State and loop of one training run; subclasses set up ``data, tcfg, outdir, device, gen, rng, hash``
    and their model, and implement the abstract methods (module docstring)."""

    data: SubjectData
    tcfg: Stage2TrainConfig
    outdir: Path
    device: torch.device
    gen: torch.Generator
    rng: np.random.Generator
    hash: str
    extra_curve_keys: tuple[str, ...] = ()
    has_phases = True       # the eyes / lips fine-tuning phases (stage2.eyes_fraction, lips_fraction) apply

    def init_loop(self) -> None:
        self.progress, self.step, self.wall_prev = 0.0, 0, 0.0
        self.curve: list[dict] = []
        self.eval_curve: list[dict] = []
        self.resumed_from: int | None = None

    @property
    def curve_keys(self) -> tuple[str, ...]:
        return BASE_CURVE_KEYS + self.extra_curve_keys

    # ---------------------------------------------------------------- what a head provides
    @abc.abstractmethod
    def train_step(self, phase: str, timer=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, colour MSE, {extra curve key: value}) as 0-d tensors on the device (read only when logged)."""

    @property
    @abc.abstractmethod
    def model(self) -> torch.nn.Module:
        """The head being trained (put in eval mode while evaluating)."""

    @abc.abstractmethod
    def render_frame(self, f: int) -> np.ndarray:
        """uint8 ``[S, S, 3]``: frame ``f``'s head over the plate on its region, the plate elsewhere."""

    def evaluate(self, frames: np.ndarray, keep: int = 0) -> tuple[dict, list]:
        """Test metrics over ``frames`` and up to ``keep`` (truth, render) pairs (:func:`stage2.evaluate.evaluate`),
        the head in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            return evaluate(self.render_frame, self.data, frames, keep)
        finally:
            self.model.train(was_training)

    @abc.abstractmethod
    def model_state(self) -> dict:
        """The head's part of a checkpoint (model, optimiser, scheduler, ...)."""

    @abc.abstractmethod
    def load_model_state(self, st: dict) -> None:
        """Restore what :meth:`model_state` saved."""

    @abc.abstractmethod
    def weights(self) -> dict[str, torch.Tensor]:
        """The head's state dict, written to stage2/head.pt."""

    @abc.abstractmethod
    def occupancy_grid(self) -> OccupancyGrid:
        """The grid written to stage2/occupancy.npz."""

    @abc.abstractmethod
    def extra_metrics(self) -> dict:
        """Head-specific keys of stage2/metrics.json."""

    def after_step(self) -> None:
        """Called after every step (e.g. the NeRF's occupancy-grid update)."""

    # ---------------------------------------------------------------- checkpoints
    def state(self, complete: bool) -> dict:
        return {"step": self.step, "complete": complete, "config_hash": self.hash, "wall_seconds": self.wall_prev,
                "curve": _rows(self.curve, self.curve_keys), "eval_curve": _rows(self.eval_curve, EVAL_KEYS),
                **self.model_state(), **ckpt.rng_states(self.gen, self.rng)}

    def try_resume(self, path: Path) -> None:
        if not path.is_file():
            return
        st = ckpt.load(path, self.device)
        if st["config_hash"] != self.hash or bool(st["complete"]):
            why = "finished" if bool(st["complete"]) else "made with another configuration"
            log.warning("%s is %s: starting afresh", path, why)
            return
        self.load_model_state(st)
        self.step, self.wall_prev = int(st["step"]), float(st["wall_seconds"])
        self.curve = _points(st["curve"], self.curve_keys)
        self.eval_curve = _points(st["eval_curve"], EVAL_KEYS)
        ckpt.restore_rng(st, self.gen, self.rng)
        self.resumed_from = self.step
        log.info("resumed from %s at step %d (%.1f s trained before)", path, self.step, self.wall_prev)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict:
        tcfg = self.tcfg
        path = Stage2Files(self.outdir).checkpoint
        budget = tcfg.max_minutes * 60.0
        start, step0, eval_sec, wall0, cpu0 = time.time(), self.step, 0.0, self.wall_prev, time.process_time()
        elapsed = lambda: self.wall_prev + time.time() - start - eval_sec  # noqa: E731
        bar = TrainBar(tcfg, self.step, elapsed())
        with ckpt.StopFlag() as stop:
            while self.step < tcfg.steps and not (budget and elapsed() >= budget):
                self.progress = max(self.step / tcfg.steps, elapsed() / budget if budget else 0.0)
                phase = phase_at(self.progress, tcfg) if self.has_phases else "main"
                loss, mse, extra = self.train_step(phase)
                self.step += 1
                bar.advance(self.step, elapsed())
                self.after_step()
                if self.step % tcfg.log_every == 0 or self.step == 1:   # the only reads of GPU values in the loop
                    point = {"step": self.step, "loss": float(loss), "psnr": psnr_from_mse(float(mse)),
                             "seconds": round(elapsed(), 3), **{k: round(float(v), 2) for k, v in extra.items()}}
                    self.curve.append(point)
                    log.info("step %d %s loss %.5f psnr %.2f%s", self.step, phase,
                             point["loss"], point["psnr"], "".join(f", {k} {point[k]}" for k in extra))
                    bar.note(point["psnr"])
                if tcfg.eval_every and self.step % tcfg.eval_every == 0:
                    t0 = time.time()
                    m, _ = self.evaluate(eval_frames(self.data.test_ids, tcfg.eval_max_frames))
                    self.eval_curve.append({"step": self.step, "seconds": round(elapsed(), 3),
                                            "psnr_head": m["psnr_head"], "ssim_head": m["ssim_head"]})
                    log.info("step %d test head PSNR %.2f SSIM %.3f", self.step, m["psnr_head"], m["ssim_head"])
                    eval_sec += time.time() - t0
                if self.step % tcfg.checkpoint_every == 0 or stop.stop:
                    self.wall_prev, start, eval_sec = elapsed(), time.time(), 0.0
                    ckpt.save(path, self.state(complete=False))
                    log.info("checkpoint at step %d -> %s", self.step, path)
                if stop.stop:
                    bar.close()
                    raise TrainingInterrupted(f"stopped by SIGTERM at step {self.step}; re-run to resume")
        bar.close()
        self.wall_prev = elapsed()
        ran, this_run = self.step - step0, self.wall_prev - wall0
        return {"steps": self.step, "train_seconds": round(self.wall_prev, 2),
                "steps_per_sec": round(ran / this_run, 3) if ran and this_run > 0 else 0.0,
                "cpu_seconds": round(time.process_time() - cpu0, 2)}
