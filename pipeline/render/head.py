"""The stage-2 head as the renderer sees it: load it, condition it per frame, render RGB + opacity.

``HeadSpace`` maps the tracked head space (cm, tracking/transforms.json, canonical landmarks) into the
field's normalised cube: ``x_n = (x_cm - center) * scale``; a camera-to-head transform keeps its rotation
and maps its translation the same way (a similarity, so rays stay rays).

``Head.render(c2w, landmarks, audio, au45, focal, cx, cy, size)`` renders B frames at ``size``² (the
intrinsics are given at the crop size and rescaled; the rays of all B frames are marched together, ``ray_chunk``
at a time) and returns the *premultiplied* colour (over black)
``[B, 3, S, S]`` and the accumulated opacity ``[B, 1, S, S]``: the head layer of pipeline.render.compositing.

``GaussianHeadView`` has the same ``render`` for the Gaussian head (``stage2.head: gaussians``): the B frames'
Gaussians deformed together, each rasterised by gsplat on CUDA or the torch reference (small sizes).

``load_head(stage2_dir)`` reads the trained head (``stage2/head.json`` + weights-only ``stage2/head.pt``), NeRF or
Gaussians as head.json's ``model_config.head`` says;
``untrained_head(...)`` builds the same kind of field with random weights (tests of the render path
where no trained head exists; the output then says ``head: untrained``).
Importable with torch, numpy, pandas, pyarrow and opencv alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.core.artifacts import STAGE2_HEAD, STAGE2_OCCUPANCY
from pipeline.core.config import Stage2ModelConfig, from_mapping
from pipeline.core.errors import PipelineError
from pipeline.core.layout import RELATIVE, Stage2Files
from pipeline.stage2.data import HeadSpace
from pipeline.stage2.gaussians.backend import rasterizer
from pipeline.stage2.gaussians.model import GaussianHead, intrinsics, viewmats_from_c2w
from pipeline.stage2.nerf import LandmarkField, OccupancyGrid, VolumeRenderer, camera_rays, pixel_centers


class HeadError(PipelineError):
    pass


def default_ray_chunk(device: torch.device) -> int:
    """Rays per renderer call when the config says 0: 2^20 on a GPU (four 512² frames in one marching loop;
    ~11 GB peak with the default head, BENCHMARKS.md), 2^14 on a CPU (bounded memory, no launch overhead)."""
    return 1 << 20 if torch.device(device).type == "cuda" else 1 << 14


class Head:
    def __init__(self, field: LandmarkField, renderer: VolumeRenderer, space: HeadSpace, source: str):
        self.field, self.renderer, self.space, self.source = field.eval(), renderer.eval(), space, source

    @property
    def device(self) -> torch.device:
        return self.field.aabb.device

    @property
    def uses_audio(self) -> bool:
        return self.field.audio_att is not None

    @property
    def num_samples(self) -> int:
        return self.renderer.num_samples

    @property
    def model_config(self) -> Stage2ModelConfig:
        return self.field.cfg

    @property
    def pose_offset_frames(self) -> float:
        """The time shift of the cameras this head was trained with (``stage2.pose_offset_frames``)."""
        return self.field.cfg.pose_offset_frames

    def to(self, device: torch.device | str) -> "Head":
        self.field.to(device)
        self.renderer.to(device)
        return self

    def with_samples(self, num_samples: int, early_stop_eps: float | None = None) -> "Head":
        """Render-time marching settings: samples per ray (0 = keep the model's) and early stop."""
        if num_samples > 0:
            self.renderer.num_samples = int(num_samples)
        if early_stop_eps is not None:
            self.renderer.early_stop_eps = float(early_stop_eps)
        return self

    @torch.no_grad()
    def render(self, c2w: np.ndarray, landmarks: np.ndarray, audio: np.ndarray | None, au45: np.ndarray,
               focal: float, cx: float, cy: float, crop_size: int, size: int,
               ray_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        ray_chunk = ray_chunk or default_ray_chunk(dev)
        b = len(c2w)
        lm = torch.from_numpy(self.space.points(landmarks)).to(dev)
        aud = torch.tensor(np.asarray(audio), dtype=torch.float32, device=dev) if self.uses_audio else None
        ctx = self.field.prepare(lm, aud, torch.tensor(np.asarray(au45), dtype=torch.float32, device=dev))
        k = size / crop_size
        uv = pixel_centers(size, size, device=dev)
        mats = torch.from_numpy(self.space.c2w(c2w)).to(dev)
        n = uv.shape[0]
        # the rays of all b frames in one list, so that a chunk (and so one marching loop) spans frames:
        # fewer, larger launches per frame, which is what limits the speed on a GPU
        rays = [camera_rays(mats[f], uv, focal * k, cx * k, cy * k) for f in range(b)]
        origins = torch.cat([r[0] for r in rays])
        dirs = torch.cat([r[1] for r in rays])
        frames = torch.arange(b, device=dev).repeat_interleave(n)
        pre = torch.empty(b * n, 3, device=dev)
        alpha = torch.empty(b * n, device=dev)
        black = torch.zeros(3, device=dev)
        for i in range(0, b * n, ray_chunk):
            out = self.renderer.render(self.field, ctx, origins[i:i + ray_chunk], dirs[i:i + ray_chunk],
                                       frames[i:i + ray_chunk], black)
            pre[i:i + ray_chunk] = out.rgb
            alpha[i:i + ray_chunk] = out.opacity
        pre = pre.reshape(b, size, size, 3).permute(0, 3, 1, 2)
        alpha = alpha.reshape(b, 1, size, size)
        return pre.clamp(0, 1), alpha.clamp(0, 1)


class GaussianHeadView:
    """The Gaussian head with :class:`Head`'s interface (``render``, ``to``, ``with_samples``, ...)."""

    num_samples = 0     # no ray samples (video.json's num_samples)

    def __init__(self, head: GaussianHead, space: HeadSpace, source: str):
        self.head, self.space, self.source = head.eval(), space, source
        self.rasterize, self.rasterizer = None, ""

    @property
    def device(self) -> torch.device:
        return self.head.means.device

    @property
    def uses_audio(self) -> bool:
        return self.head.uses_audio

    @property
    def model_config(self) -> Stage2ModelConfig:
        return self.head.cfg

    @property
    def pose_offset_frames(self) -> float:
        return self.head.cfg.pose_offset_frames

    def to(self, device: torch.device | str) -> "GaussianHeadView":
        self.head.to(device)
        self.rasterize = None
        return self

    def with_samples(self, num_samples: int, early_stop_eps: float | None = None) -> "GaussianHeadView":
        return self     # marching settings: nothing to set for splatting

    @torch.no_grad()
    def render(self, c2w: np.ndarray, landmarks: np.ndarray, audio: np.ndarray | None, au45: np.ndarray,
               focal: float, cx: float, cy: float, crop_size: int, size: int,
               ray_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        if self.rasterize is None:
            self.rasterize, self.rasterizer = rasterizer(self.head.cfg.gaussians.backend, dev, size)
        k = size / crop_size
        lm = torch.from_numpy(self.space.points(landmarks)).to(dev)
        aud = torch.tensor(np.asarray(audio), dtype=torch.float32, device=dev) if self.uses_audio else None
        gs = self.head.deform(lm, aud, torch.tensor(np.asarray(au45), dtype=torch.float32, device=dev))
        views = viewmats_from_c2w(torch.from_numpy(self.space.c2w(c2w)).to(dev))
        pre, alpha = self.head.render(gs, views, intrinsics(focal * k, cx * k, cy * k, dev), size, self.rasterize)
        return pre.clamp(0, 1), alpha.clamp(0, 1)


AnyHead = Head | GaussianHeadView


def untrained_head(cfg: Stage2ModelConfig, landmarks_cm: np.ndarray, audio_in_dim: int | None,
                   seed: int = 0) -> Head:
    """A head field with random weights (render-path tests only), its space fitted to the landmarks."""
    torch.manual_seed(seed)
    if cfg.audio_dim > 0 and not audio_in_dim:
        cfg = replace(cfg, audio_dim=0)
    field = LandmarkField(cfg, audio_in_dim=audio_in_dim if cfg.audio_dim > 0 else None)
    occ = OccupancyGrid(field.aabb, cfg.occupancy_resolution, cfg.occupancy_decay, cfg.occupancy_threshold)
    renderer = VolumeRenderer(field.aabb, cfg.num_samples, occ, cfg.early_stop_eps,
                              samples_per_ray=cfg.samples_per_ray)
    space = HeadSpace.from_landmarks(np.asarray(landmarks_cm, np.float64).reshape(-1, 478, 3).mean(0), 1.6, cfg.bound)
    return Head(field, renderer, space, "untrained")


LEGACY_MODEL_KEYS = {"eye_region": 0.0, "landmark_motion": "all", "pose_offset_frames": 0.0}


def _space(meta: dict, path: Path) -> HeadSpace:
    hs = meta["head_space"]
    try:
        return HeadSpace(tuple(float(v) for v in hs["center_cm"]), float(hs["scale_per_cm"]),
                         float(hs["radius_cm"]), float(hs["bound"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadError(path, f"head_space malformed ({exc})") from exc


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError) as exc:
        raise HeadError(path, f"cannot load the head weights ({exc})") from exc


def _load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        raise HeadError(path, f"the head weights do not fit head.json's model ({exc})") from exc


def load_gaussian_head(files: Stage2Files, meta: dict, cfg: Stage2ModelConfig,
                       device: torch.device | str) -> GaussianHeadView:
    """The Gaussian head: its number of Gaussians comes from the weights themselves (density control changes it),
    its rest landmarks are a buffer of the weights."""
    weights = _read_weights(files.head)
    if "means" not in weights:
        raise HeadError(files.head, "no 'means' in the weights: not a Gaussian head (head.json says gaussians)")
    head = GaussianHead(cfg, int(weights["means"].shape[0]), torch.zeros(478, 3),
                        meta["audio_in_dim"] if cfg.audio_dim > 0 else None)
    _load_weights(head, weights, files.head)
    return GaussianHeadView(head, _space(meta, files.head_meta), str(RELATIVE.stage2.head)).to(device)


def load_head(stage2_dir: Path | str, device: torch.device | str = "cpu") -> AnyHead:
    """The trained head of ``stage2_dir``: head.json (STAGE2_HEAD) + head.pt (LandmarkField or GaussianHead state
    dict).

    The occupancy grid comes from ``occupancy.npz`` (STAGE2_OCCUPANCY) when it is there (empty-space
    skipping); without it every sample is evaluated, which gives the same image, only slower."""
    files = Stage2Files(stage2_dir)
    meta = STAGE2_HEAD.read(files.head_meta)
    # heads trained before a key existed behave as without it (e.g. AU45 everywhere, not only around the eyes)
    cfg = from_mapping(Stage2ModelConfig, {**LEGACY_MODEL_KEYS, **meta["model_config"]},
                       f"{files.head_meta}: model_config")
    if cfg.head == "gaussians":
        return load_gaussian_head(files, meta, cfg, device)
    field = LandmarkField(cfg, audio_in_dim=meta["audio_in_dim"] if cfg.audio_dim > 0 else None)
    _load_weights(field, _read_weights(files.head), files.head)
    occ = OccupancyGrid(field.aabb, cfg.occupancy_resolution, cfg.occupancy_decay, cfg.occupancy_threshold)
    occ_path = files.occupancy
    if occ_path.is_file():
        grid = STAGE2_OCCUPANCY.read(occ_path)
        if int(grid["resolution"]) != occ.resolution or grid["binary"].shape != (occ.n_cells,):
            raise HeadError(occ_path, f"grid of resolution {int(grid['resolution'])} ({grid['binary'].shape[0]} cells); "
                            f"head.json says occupancy_resolution {occ.resolution}")
        occ.binary.copy_(torch.from_numpy(grid["binary"]))
        occ.density.copy_(torch.from_numpy(grid["density"]))
        occ.n_updates.fill_(1)
    space = _space(meta, files.head_meta)
    renderer = VolumeRenderer(field.aabb, cfg.num_samples, occ, cfg.early_stop_eps,
                              samples_per_ray=cfg.samples_per_ray)
    return Head(field, renderer, space, str(RELATIVE.stage2.head)).to(device)
