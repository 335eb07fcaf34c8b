"""The Gaussian-splatting head: canonical 3D Gaussians moved per frame by landmarks, audio and AU45.

Space and cameras are the NeRF head's (``pipeline.stage2.data``): normalised head space, one camera-to-head
transform per frame (OpenGL axes, as ``camera_rays``), pinhole intrinsics of the crop.

Canonical Gaussians (parameters, ``N`` of them): ``means [N, 3]``, ``log_scales [N, 3]``, ``quats [N, 4]``
(w, x, y, z), ``opacity_logits [N]``, ``color_logits [N, 3]`` (view-independent RGB, sigmoid) and a learnt
``features [N, F]``. Per frame ``b`` (:meth:`GaussianHead.deform`):

1. **Skinning** to the landmarks (rigged, as GaussianAvatars binds to a mesh): each Gaussian follows the motion of
   its ``skin_k`` nearest rest landmarks (the train-split mean shape of the field's landmark subset),
   ``s_i = sum_k w_ik (l_b,k - rest_k) / max(1, sum_k w_ik)``, ``w = exp(-|mean_i - rest_k|^2 / 2 sigma^2)``
   (``sigma = landmark_sigma``): the lips open the mouth's Gaussians at once, far Gaussians (hair) barely move.
2. **Deformation network** (TalkingGaussian's idea, GtsTalkNeRF's conditioning): an MLP on
   ``[features, mean, GaussianLandmarkEncoding(mean + s, frame landmarks), gated audio code, gated AU45]``
   gives offsets of position, log-scale, rotation, opacity and colour (last layer zero-initialised, so training
   starts from the skinned Gaussians). Audio and AU45 are gated per Gaussian by its features as the NeRF gates
   them by its hash features; AU45 also by a Gaussian window around each eye (``eye_region``), and the audio,
   with ``audio_region > 0``, by one around the mouth (``pipeline.stage2.regions``): hair and brows then cannot
   use the audio code to tell training frames apart.

:meth:`GaussianHead.render` rasterises each frame (gsplat or the torch reference, ``backend.rasterizer``) and
returns the premultiplied colour over black and the alpha, like the NeRF head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.core.config import Stage2ModelConfig
from pipeline.stage2.nerf.field import add_conditioning, audio_code, mlp
from pipeline.stage2.regions import (LANDMARK_SUBSETS, LEFT_EYE, LIPS, RIGHT_EYE, eye_regions, eye_window,
                                     mouth_region, mouth_window)

N_OUT = 3 + 3 + 4 + 1 + 3        # offsets: position, log-scale, quaternion, opacity logit, colour logit


def viewmats_from_c2w(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrices in OpenCV axes (x right, y down, z forward) from camera-to-head ``[B, 4, 4]``
    in the NeRF's OpenGL axes (y up, z backward)."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    return torch.linalg.inv(c2w @ flip)


def intrinsics(focal: float, cx: float, cy: float, device: torch.device | str) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]], device=device)


def nearest(x: torch.Tensor, points: torch.Tensor, k: int, chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices ``[N, k]`` of the ``k`` nearest ``points [M, 3]`` to each ``x [N, 3]``."""
    k = min(k, points.shape[0])
    dist, idx = [], []
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s:s + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        v, i = d.topk(k, dim=1, largest=False)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


class GaussianHead(nn.Module):
    def __init__(self, cfg: Stage2ModelConfig, n: int, rest_landmarks: torch.Tensor, audio_in_dim: int | None):
        """``n`` Gaussians (placed later: :func:`pipeline.stage2.gaussians.init.place` or a state dict),
        ``rest_landmarks [478, 3]`` the head-space rest shape (the train-split mean)."""
        super().__init__()
        g = cfg.gaussians
        self.cfg = cfg
        self.means = nn.Parameter(torch.zeros(n, 3))
        self.log_scales = nn.Parameter(torch.full((n, 3), math.log(0.01)))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))
        self.opacity_logits = nn.Parameter(torch.full((n,), math.log(g.init_opacity / (1 - g.init_opacity))))
        self.color_logits = nn.Parameter(torch.zeros(n, 3))
        self.features = nn.Parameter(torch.randn(n, g.feature_dim) * 0.1)
        ids = LANDMARK_SUBSETS[cfg.landmark_subset]
        self.register_buffer("landmark_ids", torch.tensor(ids, dtype=torch.int64))
        self.register_buffer("rest", torch.as_tensor(rest_landmarks, dtype=torch.float32)[list(ids)].clone())
        in_dim = g.feature_dim + 3 + add_conditioning(self, cfg, len(ids), g.feature_dim, audio_in_dim)
        self.deform_net = mlp(in_dim, g.hidden_dim, N_OUT, g.num_layers)
        last = self.deform_net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self._cache: dict[str, tuple] = {}

    @property
    def n(self) -> int:
        return self.means.shape[0]

    @property
    def uses_audio(self) -> bool:
        return self.audio_att is not None

    def _cached(self, name: str, make, *params: torch.Tensor):
        """``make()``, kept while ``params`` are unchanged (same storage, no in-place update since): at render
        time the canonical Gaussians are fixed, so their skinning weights and the deformation network's static
        input and gates are computed once, not per batch. Training updates them every step, which recomputes."""
        key = tuple((p.data_ptr(), p._version, p.shape) for p in params)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key and not torch.is_grad_enabled():
            return hit[1]
        value = make()
        if not torch.is_grad_enabled():
            self._cache[name] = (key, value)
        return value

    @torch.no_grad()
    def _skin_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        dist, idx = nearest(self.means.detach(), self.rest, self.cfg.gaussians.skin_k)
        w = torch.exp(-0.5 * (dist / self.cfg.landmark_sigma) ** 2)              # [N, k]
        return idx, w / w.sum(1, keepdim=True).clamp_min(1.0)

    def skinning(self, lm: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3]`` offsets of the Gaussians from the subset landmarks' motion ``lm [B, M, 3]`` (step 1)."""
        with torch.no_grad():
            idx, w = self._cached("skin", self._skin_weights, self.means, self.rest)
        motion = lm - self.rest                                                  # [B, M, 3]
        return (motion[:, idx] * w[None, :, :, None]).sum(2)

    def _static_input(self) -> torch.Tensor:
        """``[N, H]``: the first layer of the deformation network applied to the per-Gaussian inputs
        (features, canonical mean) plus its bias, the same for every frame."""
        lin = self.deform_net[0]
        s = self.features.shape[1] + 3
        return torch.addmm(lin.bias, torch.cat([self.features, self.means], 1), lin.weight[:, :s].T)

    def deform(self, landmarks: torch.Tensor | None, audio: torch.Tensor | None,
               au45: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-frame Gaussians of B frames: ``means [B, N, 3]``, ``quats [B, N, 4]``, ``scales [B, N, 3]``,
        ``opacities [B, N]``, ``colors [B, N, 3]``. ``landmarks [B, 478, 3]`` head space, ``audio [B, W, D]``,
        ``au45 [B]`` (0-5)."""
        if landmarks is None or landmarks.ndim != 3 or landmarks.shape[1] <= int(self.landmark_ids.max()):
            raise ValueError("the Gaussian head is landmark-driven: pass landmarks [B, 478, 3]")
        dev = self.means.device
        landmarks = landmarks.to(dev, torch.float32)
        b, n = landmarks.shape[0], self.n
        lm = landmarks[:, self.landmark_ids]
        x = self.means[None] + self.skinning(lm)                                 # [B, N, 3]
        parts = []      # the per-frame inputs; the static ones enter through _static_input
        if self.landmark_enc is not None:
            frame = torch.arange(b, device=dev).repeat_interleave(n)
            parts.append(self.landmark_enc(x.reshape(-1, 3), frame, lm).view(b, n, -1))
        if self.audio_att is not None:
            code = audio_code(self.audio_att, audio, self.cfg.audio_window, dev)   # [B, A]
            gate = self._cached("audio_gate", lambda: torch.sigmoid(self.audio_gate(self.features)), self.features,
                                *self.audio_gate.parameters())
            gated = gate[None] * code[:, None]
            if self.cfg.audio_region > 0 and landmarks.shape[1] > max(LIPS):
                gated = gated * mouth_window(x, mouth_region(landmarks, self.cfg.audio_region)[:, None])
            parts.append(gated)
        if self.cfg.use_au45:
            if au45 is None:
                raise ValueError("this head uses AU45: pass au45 [B]")
            blink = (au45.to(dev, torch.float32) / 5.0).reshape(b, 1, 1).expand(b, n, 1)
            if self.cfg.eye_region > 0 and landmarks.shape[1] > max(RIGHT_EYE + LEFT_EYE):
                blink = blink * eye_window(x, eye_regions(landmarks, self.cfg.eye_region).view(b, 1, 2, 4))
            gate = self._cached("eye_gate", lambda: torch.sigmoid(self.eye_gate(self.features)), self.features,
                                *self.eye_gate.parameters())
            parts.append(gate[None] * blink)
        # the first layer on [features, mean, per-frame inputs], split: its static part once for all B frames
        lin = self.deform_net[0]
        static = self._cached("static", self._static_input, self.features, self.means, lin.weight, lin.bias)
        s = self.features.shape[1] + 3
        pre = torch.cat(parts, dim=-1) @ lin.weight[:, s:].T + static if parts else static.expand(b, -1, -1).clone()
        h = self.deform_net[1:](pre)                                             # [B, N, N_OUT]
        return {"means": x + h[..., 0:3], "scales": torch.exp(self.log_scales[None] + h[..., 3:6]),
                "quats": self.quats[None] + h[..., 6:10],
                "opacities": torch.sigmoid(self.opacity_logits[None] + h[..., 10]),
                "colors": torch.sigmoid(self.color_logits[None] + h[..., 11:14])}

    def render(self, gs: dict[str, torch.Tensor], viewmats: torch.Tensor, K: torch.Tensor, size: int,
               rasterize, metas: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Premultiplied colour over black ``[B, 3, S, S]`` and alpha ``[B, 1, S, S]`` of the deformed Gaussians
        ``gs`` (:meth:`deform`), seen by ``viewmats [B, 4, 4]`` (OpenCV, :func:`viewmats_from_c2w`) with
        intrinsics ``K [3, 3]`` at ``size`` px; ``rasterize`` has gsplat's ``rasterization`` call (non-packed
        layout). All B frames go through one call (gsplat's batch dimension: each frame its own Gaussians and
        camera; one host synchronisation instead of B). With ``metas``, the rasteriser's meta is appended to it,
        its ``means2d [B, 1, N, 2]`` keeping its gradient (adaptive density control)."""
        b = viewmats.shape[0]
        c, a, meta = rasterize(gs["means"], gs["quats"], gs["scales"], gs["opacities"], gs["colors"],
                               viewmats[:, None], K.expand(b, 1, 3, 3), size, size, packed=False)
        if metas is not None and meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()
            metas.append(meta)
        return c[:, 0].permute(0, 3, 1, 2), a[:, 0].permute(0, 3, 1, 2)
