"""Landmark-conditioned head field (GtsTalkNeRF-style): hash grid + Gaussian relative-position encoding.

Coordinates: normalised head space. The data task scales head space so that the head fits in the cube
``[-bound, bound]^3`` (``Stage2ModelConfig.bound``); ``landmark_sigma`` is a length in the same units.

Per-frame conditioning goes through ``ctx = field.prepare(landmarks, audio, au45)`` once per batch:

* ``landmarks [B, M_all, 3]``: the frame's 3D landmarks in head space indexed by landmark id (478 mediapipe
  points); the field keeps the fixed subset ``landmark_ids`` (default ``LANDMARK_SUBSETS[cfg.landmark_subset]``:
  lips, eyes, brows, jaw line, nose; 113 points);
* ``audio [B, W, D]`` (``W = cfg.audio_window`` audio feature vectors around the frame; ``[B, D]`` means W = 1), reduced
  by ``AudioAttention`` to ``[B, cfg.audio_dim]``; needs ``audio_in_dim = D`` at construction;
* ``au45 [B]``: blink intensity (OpenFace scale 0-5, the field divides by 5).

Then ``field.density(x, frame, ctx) -> sigma [N]`` and ``field(x, d, frame, ctx) -> (sigma [N], rgb [N, 3])``,
``frame [N]`` indexing the batch of ``ctx`` (the renderer's ``RadianceField`` protocol).

Gaussian relative-position encoding (``GaussianLandmarkEncoding``): for a point x of frame b, its k nearest
subset landmarks l_j (selected without gradient; by a Triton kernel on GPUs, otherwise in chunks of points so
that nothing of size [N, M] exists), offsets ``o_j = (x - l_j) / sigma``, weights ``w_j = exp(-|o_j|^2 / 2)``,
per-neighbour input
``z_j = [w_j o_j, sin/cos(2^f pi w_j o_j) for f < landmark_freqs, E[id_j]]`` (``E`` a learned embedding of the
landmark's identity, so the network knows *which* landmark it is near), ``h = sum_j w_j relu(W z_j + b)``
(a sum: invariant to neighbour order, continuous when the k-nearest set changes since far neighbours
weigh ~0), output ``[h, sum_j w_j]``. Far from every landmark the encoding vanishes.

Audio and blink enter as in ER-NeRF: spatially gated by the hash features, ``sigmoid(A enc(x)) * audio_b`` and
``sigmoid(e . enc(x)) * au45_b``, so each region learns how much they matter.

Network: ``sigma_net`` (``num_layers`` x ``hidden_dim``, ReLU) on ``[enc, landmark enc, audio, eye]`` gives the
density (``trunc_exp`` or ``softplus`` of the first output) and ``geo_feat_dim`` features; ``color_net`` maps
them to RGB (sigmoid). Colour is view-independent by default (a fixed camera sees the head from a narrow
range of angles; view dependence mostly overfits lighting); ``view_dependent=True`` appends degree-2
spherical harmonics of the view direction (9 values) to the colour input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.core.config import Stage2ModelConfig
from pipeline.stage2.nerf.encoding import HashGridSpec, build_encoding
from pipeline.stage2.nerf.kernels import landmark_triton
from pipeline.stage2.regions import (LANDMARK_SUBSETS, LEFT_EYE, LIPS, RIGHT_EYE, eye_regions, eye_window,
                                     mouth_region, mouth_window)


class _TruncExp(torch.autograd.Function):
    """exp with the gradient's exponent clamped at 15 (Instant-NGP's density activation)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def sh_degree2(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 2 of unit directions ``[N, 3]`` -> ``[N, 9]``."""
    x, y, z = d.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
        0.31539156525252005 * (2 * z * z - x * x - y * y),
        -1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y),
    ], dim=-1)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers (``layers - 1`` hidden of width ``hidden``), ReLU in between."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class _GatherColumns(torch.autograd.Function):
    """``table[:, idx]`` whose backward sums by ``bincount`` (a shared-memory histogram per block on CUDA) instead
    of ``index_add_``: millions of indices into ~100 columns made index_add_'s atomics contend, 2.3 ms a call
    on an H200 (BENCHMARKS.md, session 6)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.n_cols = table.shape[1]
        return table.index_select(1, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        g = grad.float()
        cols = [torch.bincount(idx, weights=g[r], minlength=ctx.n_cols) for r in range(g.shape[0])]
        return torch.stack(cols).to(grad.dtype), None


def gather_columns(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table [D, M]`` at columns ``idx [n]`` -> ``[D, n]`` (differentiable w.r.t. ``table``)."""
    return _GatherColumns.apply(table, idx) if table.requires_grad else table.index_select(1, idx)


def frame_rows(table: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """``table [B, D]`` at rows ``frame [N]`` -> ``[N, D]``. For the few frames of a batch with a gradient, a
    one-hot product: its backward is a matrix product, where ``index_select``'s (``index_add_``: N atomic adds
    into B rows) contended."""
    if table.requires_grad and table.shape[0] <= 64:
        return F.one_hot(frame, table.shape[0]).to(table.dtype) @ table
    return table.index_select(0, frame)


class AudioAttention(nn.Module):
    """Window of per-step audio features ``[B, W, D]`` -> one code ``[B, out_dim]`` (attention over W)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, out_dim))
        self.score = nn.Sequential(nn.Conv1d(out_dim, 16, 3, padding=1), nn.LeakyReLU(0.02),
                                   nn.Conv1d(16, 1, 3, padding=1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.ndim == 2:
            a = a[:, None]
        h = self.proj(a)                                            # [B, W, A]
        att = torch.softmax(self.score(h.transpose(1, 2)).squeeze(1), dim=-1)  # [B, W]
        return (att.unsqueeze(-1) * h).sum(1)


class GaussianLandmarkEncoding(nn.Module):
    """Gaussian relative-position encoding of points w.r.t. their k nearest landmarks (module docstring)."""

    def __init__(self, n_landmarks: int, k: int, sigma: float, n_freqs: int, embed_dim: int, out_dim: int,
                 knn_chunk: int = 1 << 16, use_kernels: bool = True):
        super().__init__()
        if n_landmarks < 1 or k < 1 or sigma <= 0:
            raise ValueError("landmark encoding needs n_landmarks >= 1, k >= 1 and sigma > 0")
        self.n_landmarks = n_landmarks
        self.k = min(k, n_landmarks)
        self.sigma = float(sigma)
        self.n_freqs = n_freqs
        self.knn_chunk = knn_chunk
        self.use_kernels = use_kernels   # the Triton kNN on CUDA (landmark_triton), else knn_reference
        self.embed = nn.Embedding(n_landmarks, embed_dim)
        nn.init.normal_(self.embed.weight, std=0.5)
        self.lin = nn.Linear(3 + 6 * n_freqs + embed_dim, out_dim)
        self.out_dim = out_dim

    @property
    def output_dim(self) -> int:
        return self.out_dim + 1

    @torch.no_grad()
    def knn(self, x: torch.Tensor, frame: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """Indices ``[N, k]`` (into the subset) of each point's k nearest landmarks of its frame: the Triton
        kernel on a GPU (``landmark_triton.fast_knn``), else :meth:`knn_reference`."""
        if self.use_kernels and x.is_cuda:
            idx = landmark_triton.fast_knn(self.k, x, frame, landmarks)
            if idx is not None:
                return idx
        return self.knn_reference(x, frame, landmarks)

    @torch.no_grad()
    def knn_reference(self, x: torch.Tensor, frame: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """The torch kNN: per frame, distances to its landmarks computed directly (``cdist`` without the
        ``|a|^2 + |b|^2 - 2ab`` matrix-product shortcut, whose cancellation reorders near neighbours; the kernel
        computes them directly too), ``knn_chunk`` points at a time, then ``topk``."""
        idx = torch.empty(x.shape[0], self.k, dtype=torch.int64, device=x.device)
        frames, inverse = torch.unique(frame, return_inverse=True)
        for j, f in enumerate(frames.tolist()):
            rows = (inverse == j).nonzero().squeeze(1)
            lm = landmarks[f].to(x.dtype)
            for s in range(0, rows.numel(), self.knn_chunk):
                r = rows[s:s + self.knn_chunk]
                d = torch.cdist(x[r], lm, compute_mode="donot_use_mm_for_euclid_dist")
                idx[r] = d.topk(self.k, dim=1, largest=False).indices
        return idx

    def forward(self, x: torch.Tensor, frame: torch.Tensor, landmarks: torch.Tensor,
                idx: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, out_dim + 1]``; ``idx``: the points' :meth:`knn` when the caller has it. The per-neighbour
        inputs are built feature-major, ``[D, N k]``: every piece is a contiguous block (a 3-wide last dimension
        made ``torch.cat`` and the embedding gather the slowest kernels of a rendered frame, BENCHMARKS.md), and
        the linear layer is one ``W @ input`` product."""
        n = x.shape[0]
        if idx is None:
            idx = self.knn(x.detach(), frame, landmarks.detach())
        nb = landmarks[frame[:, None], idx].to(x.dtype)             # [N, k, 3]
        off = (x[:, None, :] - nb) / self.sigma
        w = torch.exp(-0.5 * (off * off).sum(-1))                   # [N, k]
        z = (w.unsqueeze(-1) * off).reshape(-1, 3).T.contiguous()   # [3, N k]
        parts = [z]
        for f in range(self.n_freqs):
            parts += [torch.sin((2.0**f) * math.pi * z), torch.cos((2.0**f) * math.pi * z)]
        parts.append(gather_columns(self.embed.weight.T.to(x.dtype), idx.reshape(-1)))   # [E, N k]
        h = F.relu(torch.addmm(self.lin.bias[:, None], self.lin.weight, torch.cat(parts)))  # [C, N k]
        out = (h.view(-1, n, self.k) * w).sum(-1)                   # [C, N]
        return torch.cat([out.T, w.sum(1, keepdim=True)], dim=-1)


def add_conditioning(module: nn.Module, cfg: Stage2ModelConfig, n_landmarks: int, gate_dim: int,
                     audio_in_dim: int | None) -> int:
    """Give ``module`` the per-frame conditioning both heads use (the NeRF's field and the Gaussian head):
    ``landmark_enc`` (None without landmarks), ``audio_att`` (None without audio) and ``audio_gate``, ``eye_gate``
    (with AU45), the gates reading ``gate_dim`` features. Returns the width they add to the network's input."""
    width = 0
    module.landmark_enc = None
    if cfg.use_landmarks:
        module.landmark_enc = GaussianLandmarkEncoding(n_landmarks, cfg.landmark_k, cfg.landmark_sigma,
                                                       cfg.landmark_freqs, cfg.landmark_embed_dim,
                                                       cfg.landmark_feat_dim,
                                                       use_kernels=cfg.backend in ("auto", "triton"))
        width += module.landmark_enc.output_dim
    module.audio_att = None
    if cfg.audio_dim > 0:
        if not audio_in_dim:
            raise ValueError("audio_dim > 0 needs audio_in_dim (the audio feature width D)")
        module.audio_att = AudioAttention(audio_in_dim, cfg.audio_dim)
        module.audio_gate = nn.Linear(gate_dim, cfg.audio_dim)
        width += cfg.audio_dim
    if cfg.use_au45:
        module.eye_gate = nn.Linear(gate_dim, 1)
        width += 1
    return width


def audio_code(att: AudioAttention, audio: torch.Tensor | None, window: int, device: torch.device) -> torch.Tensor:
    """``[B, audio_dim]`` from the audio window ``[B, W, D]`` (or ``[B, D]``: W = 1), which must hold ``window``
    steps (``stage2.audio_window``)."""
    if audio is None:
        raise ValueError("this head is audio-conditioned: pass audio [B, W, D] or [B, D]")
    audio = audio if audio.ndim == 3 else audio[:, None]
    if audio.shape[1] != window:
        raise ValueError(f"audio window has {audio.shape[1]} steps; stage2.audio_window is {window}")
    return att(audio.to(device, torch.float32))


@dataclass
class FieldContext:
    """Per-frame conditioning of one batch (B frames); ``frame`` indices of samples point into it."""

    landmarks: torch.Tensor | None  # [B, M, 3] the field's landmark subset, head space
    audio: torch.Tensor | None      # [B, audio_dim] after attention
    au45: torch.Tensor | None       # [B] in [0, 1] (au45_r / 5)
    appearance: torch.Tensor | None = None  # [B, appearance_dim] per-frame appearance code (None: zeros)
    eyes: torch.Tensor | None = None        # [B, 8] both eyes' centre (xyz) and Gaussian sigma: AU45's region
    mouth: torch.Tensor | None = None       # [B, 4] the mouth's centre and sigma: the audio's (stage2.audio_region)

    @property
    def n_frames(self) -> int:
        for t in (self.landmarks, self.audio, self.au45):
            if t is not None:
                return int(t.shape[0])
        return 1


class LandmarkField(nn.Module):
    """The head field: density and colour at head-space points, conditioned per frame."""

    def __init__(self, cfg: Stage2ModelConfig, aabb: torch.Tensor | None = None,
                 landmark_ids: Sequence[int] | None = None, audio_in_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        if aabb is None:
            aabb = torch.tensor([[-cfg.bound] * 3, [cfg.bound] * 3])
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        spec = HashGridSpec(3, cfg.levels, cfg.features_per_level, cfg.log2_hashmap_size,
                            cfg.base_resolution, cfg.finest_resolution)
        self.encoding = build_encoding(cfg.grid, spec, cfg.backend, cfg.triplane_reduce)
        enc_dim = self.encoding.output_dim
        ids = tuple(landmark_ids) if landmark_ids is not None else LANDMARK_SUBSETS[cfg.landmark_subset]
        if cfg.use_landmarks:
            self.register_buffer("landmark_ids", torch.tensor(ids, dtype=torch.int64))
        in_dim = enc_dim + add_conditioning(self, cfg, len(ids), enc_dim, audio_in_dim)
        self.sigma_net = mlp(in_dim, cfg.hidden_dim, 1 + cfg.geo_feat_dim, cfg.num_layers)
        color_in = cfg.geo_feat_dim + (9 if cfg.view_dependent else 0) + cfg.appearance_dim
        self.color_net = mlp(color_in, cfg.hidden_dim_color, 3, cfg.num_layers_color)

    def prepare(self, landmarks: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                au45: torch.Tensor | None = None, appearance: torch.Tensor | None = None) -> FieldContext:
        """Per-frame conditioning (module docstring); call once per batch, inside autograd if training.
        ``appearance [B, appearance_dim]``: the training frames' appearance codes; None (rendering) = zeros,
        the mean appearance when the trainer keeps the codes centred."""
        lm = aud = eye = None
        if self.landmark_enc is not None:
            if landmarks is None or landmarks.ndim != 3 or landmarks.shape[-1] != 3:
                raise ValueError("this field is landmark-conditioned: pass landmarks [B, M_all, 3]")
            if landmarks.shape[1] <= int(self.landmark_ids.max()):
                raise ValueError(f"landmarks have {landmarks.shape[1]} points; the subset needs ids up to "
                                 f"{int(self.landmark_ids.max())}")
            lm = landmarks.to(self.aabb.device, torch.float32)[:, self.landmark_ids]
        mouth = None
        if self.audio_att is not None:
            aud = audio_code(self.audio_att, audio, self.cfg.audio_window, self.aabb.device)
            if self.cfg.audio_region > 0 and landmarks is not None and landmarks.shape[1] > max(LIPS):
                mouth = mouth_region(landmarks.to(self.aabb.device, torch.float32), self.cfg.audio_region)
        eyes = None
        if self.cfg.use_au45:
            if au45 is None:
                raise ValueError("this field uses AU45: pass au45 [B]")
            eye = (au45.to(self.aabb.device, torch.float32) / 5.0).reshape(-1)
            if self.cfg.eye_region > 0 and landmarks is not None and landmarks.shape[1] > max(RIGHT_EYE + LEFT_EYE):
                eyes = eye_regions(landmarks.to(self.aabb.device, torch.float32), self.cfg.eye_region)
        sizes = {int(t.shape[0]) for t in (lm, aud, eye, appearance) if t is not None}
        if len(sizes) > 1:
            raise ValueError(f"conditioning tensors disagree on the number of frames: {sorted(sizes)}")
        if appearance is not None and appearance.shape[-1] != self.cfg.appearance_dim:
            raise ValueError(f"appearance codes have {appearance.shape[-1]} values; stage2.appearance_dim is "
                             f"{self.cfg.appearance_dim}")
        return FieldContext(lm, aud, eye, appearance, eyes, mouth)

    def _sigma_geo(self, x: torch.Tensor, frame: torch.Tensor, ctx: FieldContext) -> tuple[torch.Tensor, torch.Tensor]:
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        enc = self.encoding(u)
        idx = None if self.landmark_enc is None else self.landmark_enc.knn(x.detach(), frame, ctx.landmarks.detach())
        return self._sigma_geo_from(x, frame, ctx, enc, idx)

    def _sigma_geo_from(self, x: torch.Tensor, frame: torch.Tensor, ctx: FieldContext, enc: torch.Tensor,
                        idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The density and geometry features from the hash-grid features ``enc`` and the landmark neighbours
        ``idx``: the pure-torch part of the field, after its two kernels (hash grid, kNN)."""
        parts = [enc]
        if self.landmark_enc is not None:
            parts.append(self.landmark_enc(x, frame, ctx.landmarks, idx))
        if self.audio_att is not None:
            # frame_rows, not ctx.audio[frame]: advanced indexing's backward (a sort over N samples that all point
            # at a handful of frames) took 30 ms a step at 4096 x 128 samples on an H200, index_select's atomics 2 ms
            gated = torch.sigmoid(self.audio_gate(enc)) * frame_rows(ctx.audio, frame)
            if ctx.mouth is not None:    # the audio reaches only the mouth's neighbourhood (stage2.audio_region)
                gated = gated * mouth_window(x, frame_rows(ctx.mouth, frame))
            parts.append(gated)
        if self.cfg.use_au45:
            blink = ctx.au45.index_select(0, frame)[:, None]
            if ctx.eyes is not None:     # AU45 reaches only the eyes' neighbourhood (stage2.eye_region)
                blink = blink * eye_window(x, ctx.eyes.index_select(0, frame).view(-1, 2, 4))
            parts.append(torch.sigmoid(self.eye_gate(enc)) * blink)
        h = self.sigma_net(torch.cat(parts, dim=-1))
        raw = h[:, 0]
        sigma = trunc_exp(raw) if self.cfg.density_activation == "trunc_exp" else F.softplus(raw)
        return sigma, h[:, 1:]

    def density(self, x: torch.Tensor, frame: torch.Tensor, ctx: FieldContext) -> torch.Tensor:
        return self._sigma_geo(x, frame, ctx)[0]

    def forward(self, x: torch.Tensor, d: torch.Tensor, frame: torch.Tensor,
                ctx: FieldContext) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, geo = self._sigma_geo(x, frame, ctx)
        parts = [geo] + ([sh_degree2(d)] if self.cfg.view_dependent else [])
        if self.cfg.appearance_dim:
            code = ctx.appearance
            parts.append(geo.new_zeros(x.shape[0], self.cfg.appearance_dim) if code is None
                         else frame_rows(code, frame).to(geo.dtype))
        c_in = torch.cat(parts, dim=-1) if len(parts) > 1 else geo
        return sigma, torch.sigmoid(self.color_net(c_in))

    def density_fn(self, ctx: FieldContext, frames: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> max over frames of sigma`` for ``OccupancyGrid.update`` (all frames of ctx by default)."""
        frames = list(range(ctx.n_frames)) if frames is None else list(frames)

        def fn(x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], device=x.device)
            for f in frames:
                fr = torch.full((x.shape[0],), f, dtype=torch.int64, device=x.device)
                out = torch.maximum(out, self.density(x, fr, ctx))
            return out

        return fn
