"""Rule ``train_head``: train the landmark-conditioned head NeRF of one subject (docs/stage2.md, "Training").

``python -m pipeline.stage2.train --subject-dir results/<s> [--outdir results/<s>/stage2] --config '<stage2 JSON>'``
reads only the files listed in :mod:`pipeline.stage2.data` (no video decoding: the GPU machines have no ffmpeg)
and writes ``stage2/{head.pt, head.json, occupancy.npz, metrics.json, test_strip.png}`` plus ``stage2/checkpoint.pt``
(every ``checkpoint_every`` steps, on SIGTERM, and at the end). Re-running resumes from an unfinished checkpoint
of the same configuration (run-length keys such as ``steps`` or ``max_minutes`` may change); a finished or
foreign one is ignored and training starts afresh.

A step: rays of ``frames_per_batch`` train frames (:mod:`pipeline.stage2.sampling`), ``field.prepare`` of
those frames, packed volume rendering over the background plate, colour loss on non-torso rays + head-opacity
BCE (+ SSIM and gradient losses on lips / eyes patches in the fine-tuning phases), Adam (hash tables at ``lr``,
networks at ``lr_net``, exponential decay to ``lr_final_factor``), error-map EMA update, occupancy-grid update
every ``occupancy_every`` steps. Progress (which drives the phases and the learning rate) is
``max(step / steps, elapsed / max_minutes)``, so a wall-clock budget still ends with the fine-tuning phases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import (STAGE2_HEAD, STAGE2_METRICS, STAGE2_OCCUPANCY, ArtifactError, Provenance,
                                     atomic_output, config_hash)
from pipeline.core.cli import guarded, parser
from pipeline.core.config import Stage2ModelConfig, Stage2TrainConfig, stage2_configs
from pipeline.core.device import peak_memory, reset_peak, resolve_device
from pipeline.core.layout import Stage2Files, SubjectLayout
from pipeline.core.metrics import psnr_from_mse
from pipeline.core.progress import progress
from pipeline.stage2 import checkpoint as ckpt
from pipeline.stage2.data import SubjectData, describe_inputs
from pipeline.stage2.evaluate import eval_frames, evaluate, write_strip
from pipeline.stage2.losses import LPIPS_STATUS, color_loss, gradient_loss, opacity_loss, ssim_loss, to_patches
from pipeline.stage2.nerf.field import LandmarkField
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import VolumeRenderer
from pipeline.stage2.sampling import RaySampler, phase_at

log = logging.getLogger("pipeline.stage2.train")

RUN_LENGTH_KEYS = ("steps", "max_minutes", "checkpoint_every", "log_every", "eval_every", "eval_max_frames",
                   "strip_frames", "device", "threads")


CURVE_KEYS = ("step", "loss", "psnr", "seconds", "samples_per_ray")  # one train-curve point


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
def _no_timer(_name: str):
    yield


class AutocastField:
    """The field under bf16 autocast (CUDA), returning float32 density and colour to the renderer."""

    def __init__(self, field: LandmarkField, device_type: str):
        self.field, self.device_type = field, device_type

    def density(self, x, frame, ctx):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.field.density(x, frame, ctx).float()

    def __call__(self, x, d, frame, ctx):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            sigma, rgb = self.field(x, d, frame, ctx)
        return sigma.float(), rgb.float()


def resume_hash(mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig) -> str:
    train = {k: v for k, v in asdict(tcfg).items() if k not in RUN_LENGTH_KEYS}
    return config_hash({"model": asdict(mcfg), "train": train})


def build(data: SubjectData, mcfg: Stage2ModelConfig, device: torch.device):
    field = LandmarkField(mcfg, audio_in_dim=data.audio_dim).to(device)
    occ = OccupancyGrid(field.aabb, mcfg.occupancy_resolution, mcfg.occupancy_decay, mcfg.occupancy_threshold,
                        warmup_updates=2).to(device)
    # field queries of up to 2^20 samples a call: a training batch's autograd graph holds every chunk anyway
    renderer = VolumeRenderer(field.aabb, mcfg.num_samples, occ, mcfg.early_stop_eps, chunk=1 << 20,
                              samples_per_ray=mcfg.samples_per_ray).to(device)
    return field, occ, renderer


def optimizer(field: LandmarkField, tcfg: Stage2TrainConfig, codes: torch.Tensor | None = None) -> torch.optim.Adam:
    """Adam: hash tables (and the per-frame appearance codes, tables too) at ``lr``, networks at ``lr_net``."""
    grid = list(field.encoding.parameters())
    ids = {id(p) for p in grid}
    rest = [p for p in field.parameters() if id(p) not in ids]
    groups = [{"params": grid, "lr": tcfg.lr}, {"params": rest, "lr": tcfg.lr_net}]
    if codes is not None:
        groups.append({"params": [codes], "lr": tcfg.lr})
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def setup_torch(tcfg: Stage2TrainConfig, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    if tcfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(tcfg.seed)


class Trainer:
    """State of one training run (model, optimiser, sampler, RNGs, curve); :meth:`fit` runs the loop."""

    def __init__(self, data: SubjectData, mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig, outdir: Path,
                 device: torch.device):
        self.data, self.mcfg, self.tcfg, self.outdir, self.device = data, mcfg, tcfg, outdir, device
        self.field, self.occ, self.renderer = build(data, mcfg, device)
        self.render_field = AutocastField(self.field, device.type) if tcfg.amp and device.type == "cuda" else self.field
        # per-frame appearance codes (ER-NeRF's individual codes): the trainer's, not the head's; a batch uses
        # them centred on the train frames' mean, so the zeros a render passes are the mean appearance
        self.codes = (torch.nn.Parameter(torch.zeros(data.n, mcfg.appearance_dim, device=device))
                      if mcfg.appearance_dim else None)
        self.opt = optimizer(self.field, tcfg, self.codes)
        self.progress = 0.0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: tcfg.lr_final_factor ** self.progress)
        self.rng = np.random.default_rng(tcfg.seed)
        # one generator on the training device draws rays, marching jitter and occupancy cells (no host sync)
        self.gen = torch.Generator(device=device).manual_seed(tcfg.seed)
        self.sampler = RaySampler(data, tcfg, self.gen)
        self.step, self.wall_prev, self.curve, self.eval_curve = 0, 0.0, [], []
        self.resumed_from: int | None = None
        self.hash = resume_hash(mcfg, tcfg)
        self.margin = self.sampler.margin

    # ---------------------------------------------------------------- checkpoints
    def state(self, complete: bool) -> dict:
        return {"step": self.step, "complete": complete, "config_hash": self.hash,
                "model": self.field.state_dict(), "optimizer": self.opt.state_dict(),
                "appearance": self.codes.detach() if self.codes is not None else torch.zeros(0),
                "scheduler": self.sched.state_dict(), "occupancy": self.occ.state_dict(),
                "error_maps": self.sampler.error_maps, "wall_seconds": self.wall_prev,
                "curve": torch.tensor([[c[k] for k in CURVE_KEYS] for c in self.curve],
                                      dtype=torch.float64).reshape(-1, len(CURVE_KEYS)),
                "eval_curve": torch.tensor([[c["step"], c["seconds"], c["psnr_head"], c["ssim_head"]]
                                            for c in self.eval_curve], dtype=torch.float64).reshape(-1, 4),
                **ckpt.rng_states(self.gen, self.rng)}

    def try_resume(self, path: Path) -> None:
        if not path.is_file():
            return
        st = ckpt.load(path, self.device)
        if st["config_hash"] != self.hash or bool(st["complete"]):
            why = "finished" if bool(st["complete"]) else "made with another configuration"
            log.warning("%s is %s: starting afresh", path, why)
            return
        self.field.load_state_dict(st["model"])
        if self.codes is not None:
            self.codes.data.copy_(st["appearance"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.occ.load_state_dict(st["occupancy"])
        self.sampler.error_maps = st["error_maps"].to(self.device, torch.float32)
        self.step, self.wall_prev = int(st["step"]), float(st["wall_seconds"])
        self.curve = [dict(zip(CURVE_KEYS, r)) for r in st["curve"].tolist()]
        self.eval_curve = [dict(zip(("step", "seconds", "psnr_head", "ssim_head"), r)) for r in st["eval_curve"].tolist()]
        for c in self.curve + self.eval_curve:
            c["step"] = int(c["step"])
        ckpt.restore_rng(st, self.gen, self.rng)
        self.resumed_from = self.step
        log.info("resumed from %s at step %d (%.1f s trained before)", path, self.step, self.wall_prev)

    # ---------------------------------------------------------------- one step
    def train_step(self, phase: str, timer=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, colour MSE, samples per ray) as 0-d tensors on the device, so
        nothing waits for the GPU unless the caller reads them. ``timer(name)`` (a context manager factory, e.g.
        bench/profile_stage2_step.py's CUDA-synchronised one) times its parts."""
        tcfg = self.tcfg
        timer = timer or _no_timer
        with timer("sample rays"):
            batch = self.sampler.sample(phase)
        with timer("forward"):
            ctx = self.field.prepare(*self.data.conditioning(batch.frames), appearance=self.batch_codes(batch.frames))
            out = self.renderer.render(self.render_field, ctx, batch.origins, batch.dirs, batch.frame,
                                       batch.background, stratified=True, generator=self.gen)
            loss, per_ray = color_loss(out.rgb, batch.rgb, batch.color_w, tcfg.loss)
            if tcfg.opacity_weight > 0:
                loss = loss + tcfg.opacity_weight * opacity_loss(out.opacity, batch.alpha)
            if batch.n_patches:
                args = (batch.patch_start, batch.n_patches, batch.patch_size)
                pred, gt = to_patches(out.rgb, *args), to_patches(batch.rgb, *args)
                loss = loss + tcfg.ssim_weight * ssim_loss(pred, gt) + tcfg.grad_weight * gradient_loss(pred, gt)
        with timer("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimizer"):
            self.opt.step()
            self.sched.step()
        with timer("error map"), torch.no_grad():
            w = batch.color_w
            self.sampler.update_errors(batch, per_ray * w)
            mse = (((out.rgb - batch.rgb) ** 2).mean(-1) * w).sum() / w.sum().clamp_min(1)
        n = out.ray_indices.numel() if isinstance(out.n_candidates, int) else out.n_candidates
        return loss.detach(), mse, torch.as_tensor(n, device=mse.device) / max(out.rgb.shape[0], 1)

    def batch_codes(self, frames: torch.Tensor) -> torch.Tensor | None:
        if self.codes is None:
            return None
        return self.codes.index_select(0, frames) - self.codes.index_select(0, self.sampler.train_ids).mean(0)

    @torch.no_grad()
    def update_occupancy(self) -> torch.Tensor:
        k = min(self.tcfg.occupancy_frames, len(self.data.train_ids))
        pick = torch.randperm(len(self.data.train_ids), generator=self.gen, device=self.device)[:k]
        ctx = self.field.prepare(*self.data.conditioning(self.sampler.train_ids[pick]))
        return self.occ.update(self.field.density_fn(ctx), n_cells=self.occ.n_cells // 4, generator=self.gen)

    def evaluate(self, frames: np.ndarray, keep: int = 0):
        return evaluate(self.field, self.renderer, self.data, frames, self.margin, keep)

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
                loss, mse, spr = self.train_step(phase_at(self.progress, tcfg))
                self.step += 1
                bar.advance(self.step, elapsed())
                if self.step % tcfg.occupancy_every == 0:
                    self.update_occupancy()
                if self.step % tcfg.log_every == 0 or self.step == 1:   # the only reads of GPU values in the loop
                    loss, psnr, spr = float(loss), psnr_from_mse(float(mse)), float(spr)
                    self.curve.append({"step": self.step, "loss": loss, "psnr": psnr,
                                       "seconds": round(elapsed(), 3), "samples_per_ray": round(spr, 2)})
                    log.info("step %d %s loss %.5f psnr %.2f, %.1f samples/ray", self.step,
                             phase_at(self.progress, tcfg), loss, psnr, spr)
                    bar.note(psnr)
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


def run(subject_dir: Path | str, outdir: Path | str | None = None, mcfg: Stage2ModelConfig = Stage2ModelConfig(),
        tcfg: Stage2TrainConfig = Stage2TrainConfig()) -> dict:
    subject_dir = Path(subject_dir)
    subject = SubjectLayout(subject_dir)
    outdir = Path(outdir) if outdir else subject.stage2.path
    files = Stage2Files(outdir)
    device = resolve_device(tcfg.device, "stage2.device")
    setup_torch(tcfg, device)
    data = SubjectData(subject_dir, tcfg.head_radius, mcfg.bound, device, mcfg.landmark_motion)
    if tcfg.image_size and data.size != tcfg.image_size:
        raise ArtifactError(subject.stage2.frames, f"cached at {data.size} px, stage2.image_size is "
                            f"{tcfg.image_size}: re-run cache_frames")
    log.info("%s: %d frames at %d px (train %d, test %d) on %s; AU45 from %s", subject_dir, data.n, data.size,
             len(data.train_ids), len(data.test_ids), device, data.au45_source)
    trainer = Trainer(data, mcfg, tcfg, outdir, device)
    trainer.try_resume(files.checkpoint)
    reset_peak(device)
    fit = trainer.fit()
    memory = peak_memory(device)   # of the training loop (host RSS: whole process, frames are memory-mapped)
    frames = eval_frames(data.test_ids, tcfg.eval_max_frames)
    t0 = time.time()
    final, pairs = trainer.evaluate(frames, keep=tcfg.strip_frames)
    log.info("test head PSNR %.2f dB (plate baseline %.2f dB), SSIM %.3f over %d frames (%.1f s)", final["psnr_head"],
             final["psnr_head_baseline"], final["ssim_head"], len(frames), time.time() - t0)
    # the same measure on as many training frames: a small gap = the model cannot fit even the frames it saw
    # (data or capacity limits it), a large one = it does not generalise to new expressions and poses
    seen, _ = trainer.evaluate(eval_frames(data.train_ids, tcfg.eval_max_frames))
    log.info("train head PSNR %.2f dB, SSIM %.3f (generalisation gap %.2f dB)", seen["psnr_head"], seen["ssim_head"],
             seen["psnr_head"] - final["psnr_head"])
    prov = Provenance(json.loads(subject.stage2.cache.read_text())["video_sha256"],
                      config_hash({"model": asdict(mcfg), "train": asdict(tcfg)}))
    with atomic_output(files.head) as tmp:
        torch.save({k: v.cpu() for k, v in trainer.field.state_dict().items()}, tmp)
    occ_frac = float(trainer.occ.binary.float().mean())
    STAGE2_HEAD.write(files.head_meta, {
        "model_config": asdict(mcfg), "train_config": asdict(tcfg), "audio_in_dim": data.audio_dim,
        "head_space": data.head_space.to_json(), "camera": data.camera.to_json(),
        "occupancy": {"resolution": mcfg.occupancy_resolution, "occupied_fraction": occ_frac},
        "au45_source": data.au45_source, "steps": fit["steps"], "data": data.to_json()}, prov)
    STAGE2_OCCUPANCY.write(files.occupancy, {
        "binary": trainer.occ.binary.cpu().numpy(), "density": trainer.occ.density.float().cpu().numpy(),
        "resolution": np.int32(trainer.occ.resolution)}, prov)
    write_strip(files.strip, pairs)
    metrics = {"steps": fit["steps"], "train_seconds": fit["train_seconds"], "steps_per_sec": fit["steps_per_sec"],
               "train_cpu_seconds": fit["cpu_seconds"],  # process CPU time of this run's loop (all threads)
               "device": str(device), "resumed_from": trainer.resumed_from, "curve": trainer.curve,
               "eval_curve": trainer.eval_curve, **final, "lpips": LPIPS_STATUS,
               "baseline_gain_db": final["psnr_head"] - final["psnr_head_baseline"],
               "psnr_head_train": seen["psnr_head"], "ssim_head_train": seen["ssim_head"],
               "generalisation_gap_db": seen["psnr_head"] - final["psnr_head"],
               "eval_seconds": round(time.time() - t0, 2), "image_size": data.size,
               "occupied_fraction": occ_frac, "au45_source": data.au45_source, **memory}
    STAGE2_METRICS.write(files.metrics, metrics, prov)
    ckpt.save(files.checkpoint, trainer.state(complete=True))
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = parser(f"Train the head NeRF of one subject. Reads, under --subject-dir: {describe_inputs()}.",
               ["subject_dir"])
    p.add_argument("--outdir", default=None, help="default: <subject-dir>/stage2")
    args = p.parse_args(argv)
    mcfg, tcfg = stage2_configs(args.config)

    def body() -> None:
        try:
            run(args.subject_dir, args.outdir, mcfg, tcfg)
        except TrainingInterrupted as exc:
            log.warning("%s", exc)
            sys.exit(ckpt.EXIT_INTERRUPTED)

    guarded(body)


if __name__ == "__main__":
    main()
