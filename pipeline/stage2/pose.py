"""Per-frame refinement of the tracked head pose during stage-2 training (``stage2.pose_refine``).

The head NeRF lives in head space and each training frame's camera comes from the landmark-only tracking
(:mod:`pipeline.tracking`). Where that pose is a pixel off, the frame's pixels pull the canonical head
towards a blurred average (BENCHMARKS.md: the head's outline and hair hold most of the error, and the model
fits its own training frames no better than unseen ones). :class:`PoseRefinement` learns a small rigid motion
per training frame, applied to the frame's rays in head space:

    o' = R(w_f) o + t_f,    d' = R(w_f) d,     (w_f, t_f) = delta_f - mean over frames of delta

``w`` is an axis-angle rotation (radians, Rodrigues' formula, exact near 0), ``t`` a translation in head-space
units. Subtracting the mean keeps the canonical frame where the tracking put it (a common motion of all frames
is the gauge freedom of the canonical head, and frames never trained on, the test split and new audio, are
rendered with their tracked poses). Starts at zero (the tracked poses), so training begins exactly as
without it. Only the training loop uses it; rendering is unchanged.
"""

from __future__ import annotations

import torch


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of axis-angle vectors ``w`` [..., 3] (Rodrigues; Taylor terms near 0)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]          # [..., 1, 1]
    small = theta2 < 1e-8
    theta = theta2.clamp_min(1e-16).sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-16))
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*w.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a * k + b * (k @ k)


class PoseRefinement(torch.nn.Module):
    """One mean-free rigid correction per training frame: ``delta`` [n_frames, 6] = (axis-angle, translation)."""

    def __init__(self, n_frames: int, train_ids) -> None:
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros(n_frames, 6))
        self.register_buffer("train_ids", torch.as_tensor(train_ids, dtype=torch.long), persistent=False)

    def corrections(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R [B, 3, 3], t [B, 3]) of the global frame ids ``frames`` [B], the mean over training frames removed."""
        d = self.delta[frames] - self.delta[self.train_ids].mean(0)
        return so3_exp(d[:, :3]), d[:, 3:]

    def forward(self, frames: torch.Tensor, frame: torch.Tensor, origins: torch.Tensor,
                dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays [R, 3] of the batch frames ``frames`` [B] (ray i belongs to ``frames[frame[i]]``), corrected."""
        rot, t = self.corrections(frames)
        r, tt = rot[frame], t[frame]
        return (r @ origins[:, :, None])[:, :, 0] + tt, (r @ dirs[:, :, None])[:, :, 0]

    @torch.no_grad()
    def summary(self) -> dict:
        """Size of the learned corrections over the training frames: rotation (deg) and translation, RMS and max."""
        d = self.delta[self.train_ids] - self.delta[self.train_ids].mean(0)
        ang, tn = torch.rad2deg(d[:, :3].norm(dim=-1)), d[:, 3:].norm(dim=-1)
        return {"rot_rms_deg": round(float(ang.pow(2).mean().sqrt()), 5), "rot_max_deg": round(float(ang.max()), 5),
                "trans_rms": round(float(tn.pow(2).mean().sqrt()), 6), "trans_max": round(float(tn.max()), 6)}
