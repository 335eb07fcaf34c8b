"""Audio-to-landmark Transformer.

Each video frame brings a window of audio features [W=16, D] (log-mel + formants + f0/voicing/
energy, see pipeline.audio.features). A small 1-D conv net summarises the window into one vector per frame;
a Transformer encoder then mixes a sequence of T frames (bidirectional: a rendered video has the
whole audio), and a linear head outputs the target coefficients per frame (PCA coefficients of
the subject's canonical landmark offsets, see data.py).

A fixed linear path (a closed-form ridge regression from the flattened window, fitted on the train
split before training: ``set_linear``) carries the part of the mapping a linear model explains; the
Transformer, whose output layer starts at zero, learns the residual. Training therefore starts from
the linear baseline and early stopping can only keep a model that validates better.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(t: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(t, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class WindowEncoder(nn.Module):
    """[B*T, W, D] audio window -> [B*T, d_model]."""

    def __init__(self, in_dim: int, d_model: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_dim, d_model, 3, padding=1), nn.GELU(),
            nn.Conv1d(d_model, d_model, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(d_model, d_model, 3, stride=2, padding=1), nn.GELU(),
        )
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x.transpose(1, 2))          # [B*T, d, W/4]
        return self.proj(h.mean(-1))


class Audio2Landmarks(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4,
                 dropout: float = 0.1, window: int = 16):
        super().__init__()
        self.in_dim, self.out_dim, self.d_model, self.window_len = in_dim, out_dim, d_model, window
        self.register_buffer("lin_mean", torch.zeros(window * in_dim))
        self.register_buffer("lin_weight", torch.zeros(window * in_dim, out_dim))
        self.register_buffer("lin_bias", torch.zeros(out_dim))
        self.window = WindowEncoder(in_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, out_dim))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def set_linear(self, mean: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Install the closed-form linear path (see the module docstring)."""
        self.lin_mean.copy_(mean)
        self.lin_weight.copy_(weight)
        self.lin_bias.copy_(bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, T, W, D] -> coefficients [B, T, out_dim]."""
        b, t, w, d = feats.shape
        linear = (feats.reshape(b, t, w * d) - self.lin_mean) @ self.lin_weight + self.lin_bias
        h = self.window(feats.reshape(b * t, w, d)).reshape(b, t, self.d_model)
        h = h + sinusoidal_positions(t, self.d_model, feats.device)
        return linear + self.head(self.transformer(h))
