"""Rule ``train_head``: train the landmark-conditioned head of one subject (docs/stage2.md, "Training"): the NeRF
(:class:`Trainer`, below) or, with ``stage2.head: gaussians``, the Gaussian head
(:class:`pipeline.stage2.gaussians.trainer.GaussianTrainer`, docs/gaussians.md); both run the loop of
:mod:`pipeline.stage2.loop` and write the same files.

``python -m pipeline.stage2.train --subject-dir results/<s> [--outdir results/<s>/stage2] --config '<stage2 JSON>'``
reads only the files listed in :mod:`pipeline.stage2.data` (no video decoding: the GPU machines have no ffmpeg)
and writes ``stage2/{head.pt, head.json, occupancy.npz, metrics.json, test_strip.png}`` plus ``stage2/checkpoint.pt``
(every ``checkpoint_every`` steps, on SIGTERM, and at the end). Re-running resumes from an unfinished checkpoint
of the same configuration (run-length keys such as ``steps`` or ``max_minutes`` may change); a finished or
foreign one is ignored and training starts afresh.

A NeRF step: rays of ``frames_per_batch`` train frames (:mod:`pipeline.stage2.sampling`), ``field.prepare`` of
those frames, packed volume rendering over the background plate, colour loss on non-torso rays + head-opacity
BCE (+ SSIM and gradient losses on lips / eyes patches in the fine-tuning phases), Adam (hash tables at ``lr``,
networks at ``lr_net``, exponential decay to ``lr_final_factor``), error-map EMA update, occupancy-grid update
every ``occupancy_every`` steps. Progress (which drives the phases and the learning rate) is
``max(step / steps, elapsed / max_minutes)``, so a wall-clock budget still ends with the fine-tuning phases.
"""

from __future__ import annotations

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
from pipeline.stage2 import checkpoint as ckpt
from pipeline.stage2.data import SubjectData, describe_inputs
from pipeline.stage2.evaluate import eval_frames, render_frame, write_strip
from pipeline.stage2.losses import (LPIPS_STATUS, color_loss, distortion_loss, gradient_loss, landmark_depth_loss,
                                    opacity_loss, ssim_loss, to_patches)
from pipeline.stage2.nerf.field import LandmarkField
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import VolumeRenderer
from pipeline.stage2.gaussians.trainer import GaussianTrainer
from pipeline.stage2.loop import HeadTrainer, TrainingInterrupted, no_timer, resume_hash
from pipeline.stage2.sampling import RaySampler

log = logging.getLogger("pipeline.stage2.train")

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


class Trainer(HeadTrainer):
    """The NeRF head's training run (model, optimiser, sampler, RNGs); :meth:`fit` (HeadTrainer) runs the loop."""

    extra_curve_keys = ("samples_per_ray",)

    def __init__(self, data: SubjectData, mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig, outdir: Path,
                 device: torch.device):
        self.data, self.mcfg, self.tcfg, self.outdir, self.device = data, mcfg, tcfg, outdir, device
        self.init_loop()
        self.field, self.occ, self.renderer = build(data, mcfg, device)
        self.render_field = AutocastField(self.field, device.type) if tcfg.amp and device.type == "cuda" else self.field
        # per-frame appearance codes (ER-NeRF's individual codes): the trainer's, not the head's; a batch uses
        # them centred on the train frames' mean, so the zeros a render passes are the mean appearance
        self.codes = (torch.nn.Parameter(torch.zeros(data.n, mcfg.appearance_dim, device=device))
                      if mcfg.appearance_dim else None)
        self.opt = optimizer(self.field, tcfg, self.codes)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: tcfg.lr_final_factor ** self.progress)
        self.rng = np.random.default_rng(tcfg.seed)
        # one generator on the training device draws rays, marching jitter and occupancy cells (no host sync)
        self.gen = torch.Generator(device=device).manual_seed(tcfg.seed)
        self.sampler = RaySampler(data, tcfg, self.gen)
        self.hash = resume_hash(mcfg, tcfg)
        self.margin = self.sampler.margin

    # ---------------------------------------------------------------- checkpoints
    def model_state(self) -> dict:
        return {"model": self.field.state_dict(), "optimizer": self.opt.state_dict(),
                "appearance": self.codes.detach() if self.codes is not None else torch.zeros(0),
                "scheduler": self.sched.state_dict(), "occupancy": self.occ.state_dict(),
                "error_maps": self.sampler.error_maps}

    def load_model_state(self, st: dict) -> None:
        self.field.load_state_dict(st["model"])
        if self.codes is not None:
            self.codes.data.copy_(st["appearance"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.occ.load_state_dict(st["occupancy"])
        self.sampler.error_maps = st["error_maps"].to(self.device, torch.float32)

    # ---------------------------------------------------------------- one step
    def train_step(self, phase: str, timer=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One optimisation step; returns (loss, colour MSE, {"samples_per_ray"}) as 0-d tensors on the device, so
        nothing waits for the GPU unless the caller reads them. ``timer(name)`` (a context manager factory, e.g.
        bench/profile_stage2_step.py's CUDA-synchronised one) times its parts."""
        tcfg = self.tcfg
        timer = timer or no_timer
        with timer("sample rays"):
            batch = self.sampler.sample(phase)
        with timer("forward"):
            ctx = self.field.prepare(*self.data.conditioning(batch.frames), appearance=self.batch_codes(batch.frames))
            rays = (batch.origins, batch.dirs, batch.frame, batch.background)
            n_main = batch.origins.shape[0]
            if tcfg.landmark_depth_weight > 0:   # rays aimed at the tracked face mesh, marched with the batch's
                fb, o, d, depth = self.sampler.landmark_rays(batch.frames, tcfg.landmark_depth_rays)
                rays = tuple(torch.cat([x, y]) for x, y in zip(rays, (o, d, fb, torch.zeros_like(o))))  # no colour
            out = self.renderer.render(self.render_field, ctx, *rays, stratified=True, generator=self.gen)
            loss, per_ray = color_loss(out.rgb[:n_main], batch.rgb, batch.color_w, tcfg.loss)
            if tcfg.opacity_weight > 0:
                loss = loss + tcfg.opacity_weight * opacity_loss(out.opacity[:n_main], batch.alpha)
            if tcfg.landmark_depth_weight > 0:
                loss = loss + tcfg.landmark_depth_weight * landmark_depth_loss(out.weights, out.t, out.ray_indices,
                                                                               depth, n_main)
            if tcfg.distortion_weight > 0:
                loss = loss + tcfg.distortion_weight * distortion_loss(out.weights, out.t, out.delta, out.ray_indices,
                                                                       out.rgb.shape[0])
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
            mse = (((out.rgb[:n_main] - batch.rgb) ** 2).mean(-1) * w).sum() / w.sum().clamp_min(1)
        n = out.ray_indices.numel() if isinstance(out.n_candidates, int) else out.n_candidates
        return loss.detach(), mse, {"samples_per_ray": torch.as_tensor(n, device=mse.device) / max(out.rgb.shape[0], 1)}

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

    @property
    def model(self) -> LandmarkField:
        return self.field

    def render_frame(self, f: int) -> np.ndarray:
        return render_frame(self.field, self.renderer, self.data, f, self.margin)

    def after_step(self) -> None:
        if self.step % self.tcfg.occupancy_every == 0:
            self.update_occupancy()

    def weights(self) -> dict[str, torch.Tensor]:
        return self.field.state_dict()

    def occupancy_grid(self) -> OccupancyGrid:
        return self.occ

    def extra_metrics(self) -> dict:
        return {}


def run(subject_dir: Path | str, outdir: Path | str | None = None, mcfg: Stage2ModelConfig = Stage2ModelConfig(),
        tcfg: Stage2TrainConfig = Stage2TrainConfig()) -> dict:
    subject_dir = Path(subject_dir)
    subject = SubjectLayout(subject_dir)
    outdir = Path(outdir) if outdir else subject.stage2.path
    files = Stage2Files(outdir)
    device = resolve_device(tcfg.device, "stage2.device")
    setup_torch(tcfg, device)
    data = SubjectData(subject_dir, tcfg.head_radius, mcfg.bound, device, mcfg.landmark_motion,
                       mcfg.pose_offset_frames, mcfg.train_mouth)
    if tcfg.image_size and data.size != tcfg.image_size:
        raise ArtifactError(subject.stage2.frames, f"cached at {data.size} px, stage2.image_size is "
                            f"{tcfg.image_size}: re-run cache_frames")
    log.info("%s: %d frames at %d px (train %d, test %d) on %s; AU45 from %s", subject_dir, data.n, data.size,
             len(data.train_ids), len(data.test_ids), device, data.au45_source)
    trainer = (GaussianTrainer if mcfg.head == "gaussians" else Trainer)(data, mcfg, tcfg, outdir, device)
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
        torch.save({k: v.cpu() for k, v in trainer.weights().items()}, tmp)
    occ = trainer.occupancy_grid()
    occ_frac = float(occ.binary.float().mean())
    STAGE2_HEAD.write(files.head_meta, {
        "model_config": asdict(mcfg), "train_config": asdict(tcfg), "audio_in_dim": data.audio_dim,
        "head_space": data.head_space.to_json(), "camera": data.camera.to_json(),
        "occupancy": {"resolution": mcfg.occupancy_resolution, "occupied_fraction": occ_frac},
        "au45_source": data.au45_source, "steps": fit["steps"], "data": data.to_json()}, prov)
    STAGE2_OCCUPANCY.write(files.occupancy, {
        "binary": occ.binary.cpu().numpy(), "density": occ.density.float().cpu().numpy(),
        "resolution": np.int32(occ.resolution)}, prov)
    write_strip(files.strip, pairs)
    metrics = {"steps": fit["steps"], "train_seconds": fit["train_seconds"], "steps_per_sec": fit["steps_per_sec"],
               "train_cpu_seconds": fit["cpu_seconds"],  # process CPU time of this run's loop (all threads)
               "device": str(device), "resumed_from": trainer.resumed_from, "curve": trainer.curve,
               "eval_curve": trainer.eval_curve, **final, "lpips": LPIPS_STATUS,
               "baseline_gain_db": final["psnr_head"] - final["psnr_head_baseline"],
               "psnr_head_train": seen["psnr_head"], "ssim_head_train": seen["ssim_head"],
               "generalisation_gap_db": seen["psnr_head"] - final["psnr_head"],
               "eval_seconds": round(time.time() - t0, 2), "image_size": data.size,
               "occupied_fraction": occ_frac, "au45_source": data.au45_source, "head": mcfg.head,
               **trainer.extra_metrics(), **memory}
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
