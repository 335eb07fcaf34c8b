"""The torso model: a pose-modulated U-Net from the head pose to the full-resolution torso+neck RGBA of a frame.

Model (StyleUNet-like, small): the pose ``p`` = z-scored (yaw, pitch, roll, tx, ty, tz) goes through a
mapping MLP to a style code that modulates every conv of a U-Net (FiLM: per-channel scale and shift).
The U-Net works at ``torso.image_size`` on the train-split *mean torso* (RGB, alpha; a buffer) plus pixel
coordinates. Its outputs, upsampled to the output size (the crop size), are a flow, residual RGBA logits and a
few feature channels. The flow warps a learnt full-resolution *texture* (RGBA logits, initialised with the
full-size mean torso): the collar, tie and lapels stay as sharp as the texture instead of passing through the
network's resolution. A two-layer convolution at full size adds a residual from the warped texture and the
features. The padding that ``crop_faces`` smeared below (beside) the source image is rebuilt the same way:
the model's last real row (column) is copied into it (:func:`smear_index`). The last convs start at zero, so
an untrained net reproduces the mean torso exactly: training can only start from the baseline it is measured
against.

``load(torso_dir)`` reads a trained model (``torso.json`` + weights-only ``torso.pt``) as a :class:`Torso`
that the render calls (``predict``); ``read_poses`` reads its pose input from ``tracks.parquet``. Trained by
rule ``train_torso`` (:mod:`pipeline.torso.train`). Importable with torch, numpy, pandas, pyarrow and opencv alone.
"""

from __future__ import annotations

import math
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


def smear_index(size: int, valid_box: tuple[float, float, float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices ``[size]`` that copy the crop's last real row/column into its padding.

    ``crop_faces`` fills the part of the window outside the source image by replicating the border
    (``valid_box`` = [x0, y0, x1, y1) of real pixels in output px, :data:`~pipeline.core.artifacts.CROP_META`),
    so the padding of every frame is a smear of one row (column); the model predicts that row and copies it."""
    idx = torch.arange(size)
    if valid_box is None:
        return idx, idx
    x0, y0, x1, y1 = (float(v) for v in valid_box)
    lo_x, lo_y = min(max(math.ceil(x0), 0), size - 1), min(max(math.ceil(y0), 0), size - 1)
    hi_x, hi_y = max(min(math.floor(x1), size - 1), lo_x), max(min(math.floor(y1), size - 1), lo_y)
    return idx.clamp(lo_y, hi_y), idx.clamp(lo_x, hi_x)


class TorsoNet(nn.Module):
    """Pose [B, P] (z-scores) -> torso RGB [B, 3, O, O] and alpha [B, 1, O, O] in [0, 1] (module docstring).

    ``mean_rgba [4, S, S]`` (network size) is the U-Net's input; ``texture [4, O, O]`` (output size) the
    full-resolution RGBA that the predicted flow warps, learnt from the train-split mean torso."""

    def __init__(self, mean_rgba: torch.Tensor, texture: torch.Tensor, pose_dim: int = len(TORSO_POSE_COLUMNS),
                 base_channels: int = 32, depth: int = 4, style_dim: int = 64, flow_scale: float = 0.15,
                 feature_channels: int = 8, refine_channels: int = 16,
                 valid_box: tuple[float, float, float, float] | None = None, head_input: bool = False):
        super().__init__()
        size, out = int(mean_rgba.shape[-1]), int(texture.shape[-1])
        self.register_buffer("mean_rgba", mean_rgba.reshape(4, size, size).float().clone())
        self.texture = nn.Parameter(torch.logit(texture.reshape(4, out, out).float().clamp(1e-3, 1 - 1e-3)))
        self.register_buffer("grid", _grid(size))                            # [1, S, S, 2] (x, y)
        self.register_buffer("grid_out", _grid(out))                         # [1, O, O, 2]
        rows, cols = smear_index(out, valid_box)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.flow_scale = float(flow_scale)
        self.feature_channels = int(feature_channels)
        self.head_input = bool(head_input)
        self.mapping = nn.Sequential(nn.Linear(pose_dim, style_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2))
        ch = [min(base_channels * 2**i, base_channels * 8) for i in range(depth + 1)]
        self.inp = ModConv(6 + int(self.head_input), ch[0], style_dim)
        self.down = nn.ModuleList(ModConv(ch[i], ch[i + 1], style_dim, stride=2) for i in range(depth))
        self.mid = ModConv(ch[depth], ch[depth], style_dim)
        self.up = nn.ModuleList(ModConv(ch[i + 1] + ch[i], ch[i], style_dim) for i in reversed(range(depth)))
        self.out = nn.Conv2d(ch[0], 6 + feature_channels, 3, 1, 1)       # flow (2), rgba logits (4), features
        self.refine = nn.Sequential(nn.Conv2d(4 + feature_channels, refine_channels, 3, 1, 1), nn.LeakyReLU(0.2),
                                    nn.Conv2d(refine_channels, 4, 3, 1, 1))
        for conv in (self.out, self.refine[-1]):   # an untrained net reproduces the texture (the mean torso)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, pose: torch.Tensor, head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``head [B, 1, H, W]``: the head layer's alpha at any size (required when ``head_input``)."""
        b = pose.shape[0]
        s = self.mapping(pose)
        inputs = [self.mean_rgba[None].expand(b, -1, -1, -1), self.grid.permute(0, 3, 1, 2).expand(b, -1, -1, -1)]
        if self.head_input:
            if head is None:
                raise ValueError("this torso model needs the head layer's alpha")
            size = self.mean_rgba.shape[-1]
            inputs.append(head if head.shape[-1] == size else F.interpolate(head, size=(size, size), mode="area"))
        x = self.inp(torch.cat(inputs, 1), s)
        skips = [x]
        for layer in self.down:
            x = layer(x, s)
            skips.append(x)
        x = self.mid(skips.pop(), s)
        for layer in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = layer(torch.cat([x, skips.pop()], 1), s)
        o = self.out(x)
        out = self.texture.shape[-1]
        if o.shape[-1] != out:
            o = F.interpolate(o, size=(out, out), mode="bilinear", align_corners=False)
        flow = torch.tanh(o[:, :2]).permute(0, 2, 3, 1) * self.flow_scale
        warped = F.grid_sample(self.texture[None].expand(b, -1, -1, -1), self.grid_out.expand(b, -1, -1, -1) + flow,
                               mode="bilinear", padding_mode="border", align_corners=True)
        logits = warped + o[:, 2:6] + self.refine(torch.cat([torch.sigmoid(warped), o[:, 6:]], 1))
        logits = logits[:, :, self.rows][:, :, :, self.cols]
        return torch.sigmoid(logits[:, :3]), torch.sigmoid(logits[:, 3:])


def _grid(size: int) -> torch.Tensor:
    v, u = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([u, v], -1)[None]


# ----------------------------------------------------------------------------- loading

class Torso:
    """A trained torso model: ``predict(poses [B, 6] raw pose columns, size, head_alpha [B, 1, h, w])`` ->
    ``(rgb [B, 3, size, size], alpha [B, 1, size, size])``; ``head_alpha`` is the head layer's opacity (the
    render's, any size), needed when the model was trained with ``torso.head_input``."""

    def __init__(self, net: TorsoNet, pose_mean: np.ndarray, pose_std: np.ndarray, crop_size: int):
        self.net = net.eval()
        self.pose_mean = torch.as_tensor(pose_mean, dtype=torch.float32)
        self.pose_std = torch.as_tensor(pose_std, dtype=torch.float32)
        self.crop_size = crop_size

    def to(self, device: torch.device | str) -> "Torso":
        self.net.to(device)
        return self

    @torch.no_grad()
    def predict(self, poses: np.ndarray | torch.Tensor, size: int | None = None,
                head_alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.net.mean_rgba.device
        p = (torch.tensor(np.asarray(poses), dtype=torch.float32, device=dev) - self.pose_mean.to(dev)) / self.pose_std.to(dev)
        head = head_alpha.to(dev, torch.float32) if head_alpha is not None and self.net.head_input else None
        rgb, alpha = self.net(p, head)
        size = size or self.crop_size
        if size != rgb.shape[-1]:
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
            alpha = F.interpolate(alpha, size=(size, size), mode="bilinear", align_corners=False)
        return rgb.clamp(0, 1), alpha.clamp(0, 1)


def load(model_dir: Path | str, device: torch.device | str = "cpu") -> Torso:
    files = TorsoFiles(model_dir)
    meta = TORSO_MODEL.read(files.meta)
    s, o = meta["image_size"], meta["output_size"]
    net = TorsoNet(torch.zeros(4, s, s), torch.full((4, o, o), 0.5), len(meta["pose_columns"]), meta["base_channels"],
                   meta["depth"], meta["style_dim"], meta["flow_scale"], meta["feature_channels"],
                   meta["refine_channels"], meta["valid_box"], meta["head_input"])
    try:
        net.load_state_dict(torch.load(files.model, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise TorsoError(files.model, f"cannot load weights ({exc}); a torso trained before the full-resolution "
                                      "model must be trained again (rule train_torso)") from exc
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
