"""Where the Gaussian head's Gaussians start: the head's visual hull, in front of nothing but the face.

:func:`place` draws points uniformly in the head ball (radius ``bound``) and keeps those that

* project inside the head mask (labels 3-7, dilated by ``head_margin``) of at least ``agree`` of ``n_views``
  evenly spaced training frames (a visual hull; with a near-frontal camera it is deep along the view axis), and
* do not lie in front of the face: a point closer to the camera of the middle view than the rest landmark nearest
  to it in that image, by more than ``slack`` head-space units, is dropped (the tracked landmarks give the face's
  depth, which the masks cannot).

Each kept point starts with the mean colour of the training frames at its projections, a scale equal to the mean
distance to its 3 nearest neighbours (3DGS's rule) and the configured opacity.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.stage2.data import HEAD_MIN_LABEL, SubjectData
from pipeline.stage2.gaussians.model import GaussianHead, intrinsics, nearest, viewmats_from_c2w


def project(x: torch.Tensor, viewmats: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``[V, N, 2]`` (u, v) and camera depths ``[V, N]`` of head-space points ``x [N, 3]``."""
    cam = torch.einsum("vij,nj->vni", viewmats[:, :3, :3], x) + viewmats[:, None, :3, 3]
    z = cam[..., 2]
    uv = cam[..., :2] / z.clamp_min(1e-6)[..., None] * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]]
    return uv, z


@torch.no_grad()
def place(head: GaussianHead, data: SubjectData, margin_px: int, gen: torch.Generator, n_views: int = 16,
          agree: float = 0.9, slack: float = 0.05, max_rounds: int = 200) -> None:
    """Set ``head``'s means, colours and scales from ``data`` (module docstring)."""
    dev, n, s = head.means.device, head.n, data.size
    n_train = len(data.train_ids)
    views = data.train_ids[np.linspace(0, n_train - 1, min(n_views, n_train)).round().astype(int)]
    viewmats = viewmats_from_c2w(data.c2w[torch.as_tensor(views, device=data.device)].to(dev))
    K = intrinsics(data.camera.focal, data.camera.cx, data.camera.cy, dev)
    k = 2 * margin_px + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    masks = torch.from_numpy(np.stack([cv2.dilate((np.asarray(data.labels[f]) >= HEAD_MIN_LABEL).astype(np.uint8),
                                                  kernel) for f in views])).to(dev).bool()
    frames = torch.from_numpy(np.stack([np.asarray(data.frames[f]) for f in views])).to(dev).float() / 255.0
    # the face's depth in the middle view: rest landmarks (all 478) projected there
    mid = len(views) // 2
    rest_all = data.landmarks[torch.as_tensor(data.train_ids, device=data.device)].mean(0).to(dev)
    lm_uv, lm_z = project(rest_all, viewmats[mid:mid + 1], K)
    kept, colours = [], []
    count, bound = 0, head.cfg.bound
    for _ in range(max_rounds):
        x = (torch.rand(4 * n + 1024, 3, generator=gen, device=dev) * 2 - 1) * bound
        x = x[x.norm(dim=1) <= bound]
        uv, z = project(x, viewmats, K)
        px = uv.floor().long()
        inside = (z > 0) & (px >= 0).all(-1) & (px < s).all(-1)
        col, row = px[..., 0].clamp(0, s - 1), px[..., 1].clamp(0, s - 1)
        v_idx = torch.arange(len(views), device=dev)[:, None]
        hit = inside & masks[v_idx, row, col]
        keep = hit.float().mean(0) >= agree
        _, near = nearest(uv[mid], lm_uv[0], 1)
        keep &= z[mid] >= lm_z[0, near[:, 0]] - slack      # head space is metric-rigid: depth in its units
        if keep.any():
            kept.append(x[keep])
            colours.append((frames[v_idx, row, col][:, keep] * hit[:, keep, None]).sum(0)
                           / hit[:, keep].sum(0).clamp_min(1)[:, None])
            count += int(keep.sum())
        if count >= n:
            break
    if count < n:
        raise PipelineError(data.root / "parsing" / "labels.npz",
                            f"the head masks of train frames {views.tolist()} leave room for {count} of "
                            f"{n} Gaussians in the head ball: check the masks and the tracked camera")
    means = torch.cat(kept)[:n]
    head.means.copy_(means)
    head.color_logits.copy_(torch.logit(torch.cat(colours)[:n].clamp(0.02, 0.98)))
    dist, _ = nearest(means, means, 4, chunk=4096)
    head.log_scales.copy_(torch.log(dist[:, 1:].mean(1, keepdim=True).clamp_min(1e-4)).expand(-1, 3))
    head.quats.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(n, 4))
    g = head.cfg.gaussians
    head.opacity_logits.fill_(math.log(g.init_opacity / (1 - g.init_opacity)))

