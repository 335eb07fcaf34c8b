"""The torso model: a pose-modulated U-Net from the head pose to the torso+neck RGBA of a frame.

Model (StyleUNet-like, small): the pose ``p`` = z-scored (yaw, pitch, roll, tx, ty, tz) goes through a
mapping MLP to a style code that modulates every conv of a U-Net (FiLM: per-channel scale and shift).
The U-Net's input is the train-split *mean torso* (RGB, alpha; a buffer of the net) plus pixel
coordinates; it outputs a flow (the torso follows the head, mostly by translation) that warps the
mean torso, and residual logits for RGB and alpha. The last conv starts at zero, so an untrained
net reproduces the mean torso exactly: training can only start from the baseline it is measured
against. Network resolution ``torso.image_size``; the RGBA is upsampled to the crop size.

``load(torso_dir)`` reads a trained model (``torso.json`` + weights-only ``torso.pt``) as a :class:`Torso`
that the render calls (``predict``); ``read_poses`` reads its pose input from ``tracks.parquet``. Trained by
rule ``train_torso`` (:mod:`pipeline.torso.train`). Importable with torch, numpy, pandas, pyarrow and opencv alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.artifacts import TORSO_MODEL, TORSO_POSE_COLUMNS, TRACKS
from pipeline.core.errors import PipelineError
from pipeline.core.layout import TorsoFiles


class TorsoError(PipelineError):
    pass


# ----------------------------------------------------------------------------- network

class ModConv(nn.Module):
    """3x3 conv -> GroupNorm -> FiLM(style) -> LeakyReLU."""

    def __init__(self, cin: int, cout: int, style_dim: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm = nn.GroupNorm(min(8, cout // 4) or 1, cout, affine=False)
        self.film = nn.Linear(style_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(s)[:, :, None, None].chunk(2, dim=1)
        return F.leaky_relu(self.norm(self.conv(x)) * (1 + scale) + shift, 0.2)


class TorsoNet(nn.Module):
    """Pose [B, P] (z-scores) -> torso RGB [B, 3, S, S] and alpha [B, 1, S, S] in [0, 1]."""

    def __init__(self, mean_rgba: torch.Tensor, pose_dim: int = len(TORSO_POSE_COLUMNS), base_channels: int = 32,
                 depth: int = 4, style_dim: int = 64, flow_scale: float = 0.15):
        super().__init__()
        size = int(mean_rgba.shape[-1])
        self.register_buffer("mean_rgba", mean_rgba.reshape(4, size, size).float().clone())
        v, u = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("grid", torch.stack([u, v], -1)[None])          # [1, S, S, 2] (x, y)
        self.flow_scale = float(flow_scale)
        self.mapping = nn.Sequential(nn.Linear(pose_dim, style_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2))
        ch = [min(base_channels * 2**i, base_channels * 8) for i in range(depth + 1)]
        self.inp = ModConv(6, ch[0], style_dim)
        self.down = nn.ModuleList(ModConv(ch[i], ch[i + 1], style_dim, stride=2) for i in range(depth))
        self.mid = ModConv(ch[depth], ch[depth], style_dim)
        self.up = nn.ModuleList(ModConv(ch[i + 1] + ch[i], ch[i], style_dim) for i in reversed(range(depth)))
        self.out = nn.Conv2d(ch[0], 6, 3, 1, 1)                               # flow (2), rgb (3), alpha (1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = pose.shape[0]
        s = self.mapping(pose)
        mean = self.mean_rgba[None].expand(b, -1, -1, -1)
        x = self.inp(torch.cat([mean, self.grid.permute(0, 3, 1, 2).expand(b, -1, -1, -1)], 1), s)
        skips = [x]
        for layer in self.down:
            x = layer(x, s)
            skips.append(x)
        x = self.mid(skips.pop(), s)
        for layer in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = layer(torch.cat([x, skips.pop()], 1), s)
        o = self.out(x)
        flow = torch.tanh(o[:, :2]).permute(0, 2, 3, 1) * self.flow_scale
        warped = F.grid_sample(mean, self.grid.expand(b, -1, -1, -1) + flow, mode="bilinear",
                               padding_mode="border", align_corners=True)
        logits = torch.logit(warped.clamp(1e-3, 1 - 1e-3)) + o[:, 2:]
        return torch.sigmoid(logits[:, :3]), torch.sigmoid(logits[:, 3:])


# ----------------------------------------------------------------------------- loading

class Torso:
    """A trained torso model: ``predict(poses [B, 6] raw pose columns, size) -> (rgb [B,3,H,W], alpha [B,1,H,W])``."""

    def __init__(self, net: TorsoNet, pose_mean: np.ndarray, pose_std: np.ndarray, crop_size: int):
        self.net = net.eval()
        self.pose_mean = torch.as_tensor(pose_mean, dtype=torch.float32)
        self.pose_std = torch.as_tensor(pose_std, dtype=torch.float32)
        self.crop_size = crop_size

    def to(self, device: torch.device | str) -> "Torso":
        self.net.to(device)
        return self

    @torch.no_grad()
    def predict(self, poses: np.ndarray | torch.Tensor, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.net.mean_rgba.device
        p = (torch.tensor(np.asarray(poses), dtype=torch.float32, device=dev) - self.pose_mean.to(dev)) / self.pose_std.to(dev)
        rgb, alpha = self.net(p)
        size = size or self.crop_size
        if size != rgb.shape[-1]:
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
            alpha = F.interpolate(alpha, size=(size, size), mode="bilinear", align_corners=False)
        return rgb.clamp(0, 1), alpha.clamp(0, 1)


def load(model_dir: Path | str, device: torch.device | str = "cpu") -> Torso:
    files = TorsoFiles(model_dir)
    meta = TORSO_MODEL.read(files.meta)
    s = meta["image_size"]
    net = TorsoNet(torch.zeros(4, s, s), len(meta["pose_columns"]), meta["base_channels"], meta["depth"],
                   meta["style_dim"], meta["flow_scale"])
    try:
        net.load_state_dict(torch.load(files.model, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise TorsoError(files.model, f"cannot load weights ({exc})") from exc
    return Torso(net, np.array(meta["pose_mean"]), np.array(meta["pose_std"]), meta["crop_size"]).to(device)


def read_poses(tracks: Path | str) -> np.ndarray:
    """[N, 6] pose columns (TORSO_POSE_COLUMNS) of tracks.parquet, in frame order."""
    df = TRACKS.read_pandas(tracks)
    if not np.array_equal(df["frame_idx"].to_numpy(), np.arange(len(df))):
        raise TorsoError(tracks, "frame_idx is not 0..N-1")
    poses = df[list(TORSO_POSE_COLUMNS)].to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(poses).all(1))
    if len(bad):
        raise TorsoError(tracks, f"non-finite pose at frame {int(bad[0])}")
    return poses
