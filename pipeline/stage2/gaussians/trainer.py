"""Training of the Gaussian head (``stage2.head: gaussians``): whole images, not rays.

A step (:meth:`GaussianTrainer.train_step`): ``frames_per_batch`` random train frames; the head deformed for each
(landmarks, audio, AU45) and rasterised at the cache size from the frame's tracked camera; the render composited
over the background plate; on the head region (labels 3-7 dilated by ``head_margin``, torso and neck pixels
left out as for the NeRF) the loss ``(1 - dssim_weight) L1 + dssim_weight (1 - SSIM)`` (3DGS's) plus
``opacity_weight`` x the BCE of the render's alpha against the head mask. Adam with per-parameter rates
(``stage2.gaussians.lr_*``; the networks at ``lr_net``), decayed exponentially to ``lr_final_factor`` with the
run's progress. The loop, checkpoints, resume and SIGTERM handling are the NeRF's (:mod:`pipeline.stage2.loop`).

The run lasts ``min(stage2.steps, stage2.gaussians.steps)`` steps (or less with ``max_minutes``). Every
``densify_every`` steps in the first ``densify_until`` of the run, adaptive density control clones, splits
and prunes Gaussians (:mod:`pipeline.stage2.gaussians.density`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.core.config import Stage2ModelConfig, Stage2TrainConfig
from pipeline.stage2.data import HEAD_MIN_LABEL, SubjectData, color_weight
from pipeline.stage2.gaussians.backend import rasterizer
from pipeline.stage2.gaussians.density import PER_GAUSSIAN, DensityControl
from pipeline.stage2.gaussians.init import place, project
from pipeline.stage2.gaussians.model import GaussianHead, intrinsics, viewmats_from_c2w
from pipeline.stage2.losses import ssim_map
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.sampling import device_view
from pipeline.stage2.loop import HeadTrainer, no_timer, resume_hash

log = logging.getLogger("pipeline.stage2.train")


def build_head(data: SubjectData, mcfg: Stage2ModelConfig, device: torch.device) -> GaussianHead:
    rest = data.landmarks[torch.as_tensor(data.train_ids, device=data.device)].mean(0)
    return GaussianHead(mcfg, mcfg.gaussians.count, rest, data.audio_dim if mcfg.audio_dim > 0 else None).to(device)


def optimizer(head: GaussianHead, mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig) -> torch.optim.Adam:
    g = mcfg.gaussians
    rates = {"means": g.lr_means, "log_scales": g.lr_scales, "quats": g.lr_quats, "opacity_logits": g.lr_opacities,
             "color_logits": g.lr_colors, "features": g.lr_features}
    groups = [{"params": [getattr(head, k)], "lr": rates[k], "name": k} for k in PER_GAUSSIAN]
    nets = [p for name, p in head.named_parameters() if name not in PER_GAUSSIAN]
    groups.append({"params": nets, "lr": tcfg.lr_net, "name": "networks"})
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def head_region(labels: torch.Tensor, margin_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head mask and region (head dilated by ``margin_px``, a square window as cv2.dilate) of ``labels [B, S, S]``."""
    head = (labels >= HEAD_MIN_LABEL).float()
    region = F.max_pool2d(head[:, None], 2 * margin_px + 1, stride=1, padding=margin_px)[:, 0] if margin_px else head
    return head, region


def region_loss(pred: torch.Tensor, gt: torch.Tensor, w: torch.Tensor, dssim_weight: float) -> torch.Tensor:
    """``(1 - l) L1 + l (1 - SSIM)`` of ``[B, 3, S, S]`` images weighted by ``w [B, S, S]`` (SSIM's map is the
    valid part of an 11 x 11 window: ``w`` is cropped to it)."""
    l1 = ((pred - gt).abs().mean(1) * w).sum() / w.sum().clamp_min(1.0)
    if dssim_weight <= 0:
        return l1
    m = ssim_map(pred, gt).mean(1)
    c = (w.shape[-1] - m.shape[-1]) // 2
    wc = w[:, c:c + m.shape[-2], c:c + m.shape[-1]]
    ssim = (m * wc).sum() / wc.sum().clamp_min(1.0)
    return (1 - dssim_weight) * l1 + dssim_weight * (1 - ssim)


class GaussianTrainer(HeadTrainer):
    extra_curve_keys = ("visible",)     # share of the Gaussians that land in a frame's image
    # whole images: no eyes / lips phases (weighting those parts' pixels in them did not help: BENCHMARKS.md, session 15)
    has_phases = False

    def __init__(self, data: SubjectData, mcfg: Stage2ModelConfig, tcfg: Stage2TrainConfig, outdir: Path,
                 device: torch.device):
        # this head's own step count caps the loop's (it over-fits long before the NeRF's 30k steps); the learning
        # rate decay and the density-control window follow the capped run's progress
        tcfg = replace(tcfg, steps=min(tcfg.steps, mcfg.gaussians.steps))
        self.data, self.mcfg, self.tcfg, self.outdir, self.device = data, mcfg, tcfg, outdir, device
        self.init_loop()
        self.rng = np.random.default_rng(tcfg.seed)
        self.gen = torch.Generator(device=device).manual_seed(tcfg.seed)
        self.margin = int(round(tcfg.head_margin * data.size))
        self.head = build_head(data, mcfg, device)
        place(self.head, data, self.margin, self.gen)
        self.rasterize, self.backend = rasterizer(mcfg.gaussians.backend, device, data.size)
        log.info("Gaussian head: %d Gaussians, rasteriser %s", self.head.n, self.backend)
        self.opt, self.sched = self.optimiser()
        self.density = DensityControl(mcfg.gaussians, self.head.n, device)
        self.hash = resume_hash(mcfg, tcfg)
        self.K = intrinsics(data.camera.focal, data.camera.cx, data.camera.cy, device)
        self.viewmats = viewmats_from_c2w(data.c2w.to(device))
        self.plate = data.plate_t.to(device).permute(2, 0, 1)                  # [3, S, S]
        self.train_ids = torch.as_tensor(data.train_ids, device=device)
        # the frame cache as the NeRF's sampler holds it: a view of the memory map on a CPU, one copy on a GPU
        self.frames, self.labels = device_view(data.frames, device), device_view(data.labels, device)

    def optimiser(self) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
        opt = optimizer(self.head, self.mcfg, self.tcfg)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: self.tcfg.lr_final_factor ** self.progress)

    # ---------------------------------------------------------------- checkpoints
    def model_state(self) -> dict:
        return {"model": self.head.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), **self.density.state()}

    def load_model_state(self, st: dict) -> None:
        for k in PER_GAUSSIAN:      # the checkpoint's number of Gaussians (density control changes it)
            setattr(self.head, k, torch.nn.Parameter(st["model"][k].clone()))
        self.head.load_state_dict(st["model"])
        self.opt, self.sched = self.optimiser()
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.density.load(st)

    def after_step(self) -> None:
        g = self.mcfg.gaussians
        if g.densify_every and self.step % g.densify_every == 0 and g.densify_from <= self.progress < g.densify_until:
            counts = self.density.step(self.head, self.opt, self.gen)
            log.info("step %d: density control cloned %d, split %d, pruned %d -> %d Gaussians", self.step,
                     counts["cloned"], counts["split"], counts["pruned"], counts["n"])

    def weights(self) -> dict[str, torch.Tensor]:
        return self.head.state_dict()

    @torch.no_grad()
    def occupancy_grid(self) -> OccupancyGrid:
        """The head's occupancy at ``occupancy_resolution``: per cell the summed opacity of the canonical
        Gaussians whose mean lies in it (``density``), occupied where that is > 0 (``binary``)."""
        bound = self.mcfg.bound
        grid = OccupancyGrid(torch.tensor([[-bound] * 3, [bound] * 3]), self.mcfg.occupancy_resolution).to(self.device)
        idx, inside = grid.cell_index(self.head.means)
        opacity = torch.sigmoid(self.head.opacity_logits)
        grid.density.zero_().index_add_(0, idx[inside], opacity[inside])
        grid.binary.copy_(grid.density > 0)
        return grid

    def extra_metrics(self) -> dict:
        return {"gaussians": self.head.n, "rasterizer": self.backend}

    # ---------------------------------------------------------------- rendering
    def render(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Premultiplied colour ``[B, 3, S, S]`` and alpha ``[B, 1, S, S]`` of frames ``ids`` (device tensor)."""
        gs = self.head.deform(*self.data.conditioning(ids))
        return self.head.render(gs, self.viewmats[ids], self.K, self.data.size, self.rasterize)

    @torch.no_grad()
    def render_frame(self, f: int) -> np.ndarray:
        """uint8 ``[S, S, 3]``: the head over the plate on the frame's region, the plate elsewhere (as the NeRF's)."""
        pre, alpha = self.render(torch.tensor([f], device=self.device))
        over = (pre + (1 - alpha) * self.plate)[0].clamp(0, 1)
        _, region = self.data.region(f, self.margin)
        img = self.data.plate.copy()
        out = (over.permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        img[region] = out[region]
        return img

    @property
    def model(self) -> GaussianHead:
        return self.head

    # ---------------------------------------------------------------- one step
    def train_step(self, phase: str, timer=None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        tcfg, timer = self.tcfg, timer or no_timer
        with timer("batch"):
            pick = torch.randint(len(self.train_ids), (tcfg.frames_per_batch,), generator=self.gen,
                                 device=self.device)
            ids = self.train_ids[pick]
            gt, lab = self.frames[ids].permute(0, 3, 1, 2).float() / 255.0, self.labels[ids]
            head, region = head_region(lab, self.margin)
            w = region * color_weight(lab)
        metas: list[dict] = []
        with timer("deform"):
            gs = self.head.deform(*self.data.conditioning(ids))
        with timer("rasterize"):
            pre, alpha = self.head.render(gs, self.viewmats[ids], self.K, self.data.size, self.rasterize,
                                          metas if self.mcfg.gaussians.densify_every else None)
        with timer("loss"):
            pred = pre + (1 - alpha) * self.plate
            loss = region_loss(pred, gt, w, self.mcfg.gaussians.dssim_weight)
            if tcfg.opacity_weight > 0:
                a = alpha[:, 0].clamp(1e-4, 1 - 1e-4)
                bce = F.binary_cross_entropy(a, head, reduction="none")
                loss = loss + tcfg.opacity_weight * (bce * region).sum() / region.sum().clamp_min(1.0)
        with timer("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with timer("optimizer"):
            if self.mcfg.gaussians.densify_every:
                self.density.accumulate(metas, self.data.size)
            self.opt.step()
            self.sched.step()
        with torch.no_grad():
            mse = (((pred - gt) ** 2).mean(1) * w).sum() / w.sum().clamp_min(1.0)
            # share of the first frame's Gaussians in front of its camera and inside its image
            uv, z = project(gs["means"][0], self.viewmats[ids[:1]], self.K)
            visible = ((z[0] > 0) & (uv[0] >= 0).all(-1) & (uv[0] < self.data.size).all(-1)).float().mean()
        return loss.detach(), mse, {"visible": visible}
