"""Stage-2 core, end to end on synthetic scenes: a field + encoding + renderer learn a textured sphere and a
landmark-driven "mouth" spot from a handful of views (CPU, a few hundred steps)."""

from __future__ import annotations

import math

import torch

from pipeline.stage2.nerf.field import LandmarkField
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import VolumeRenderer, camera_rays, intersect_sphere, pixel_centers

from test_stage2_field import _small_cfg


# ---------------------------------------------------------------- end-to-end fits

FOCAL, H, W = 40.0, 32, 32
BG = torch.tensor([0.1, 0.2, 0.3])


def _look_at(az: float, el: float, r: float = 2.5) -> torch.Tensor:
    eye = torch.tensor([r * math.cos(el) * math.sin(az), r * math.sin(el), r * math.cos(el) * math.cos(az)])
    z = eye / eye.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), z)
    x = x / x.norm()
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, torch.linalg.cross(z, x), z, eye
    return m


def _sphere_image(c2w: torch.Tensor, spot: torch.Tensor | None = None):
    """Ground truth by ray casting: a textured sphere (radius 0.6), optionally with a red spot at ``spot``."""
    o, d = camera_rays(c2w, pixel_centers(H, W), FOCAL, W / 2, H / 2)
    near, _, hit = intersect_sphere(o, d, torch.zeros(3), 0.6)
    p = o + near[:, None] * d
    col = 0.5 + 0.35 * torch.stack([torch.sin(4 * p[:, 0] + 1), torch.sin(4 * p[:, 1] + 2), torch.sin(4 * p[:, 2])], -1)
    if spot is not None:
        g = torch.exp(-((p - spot) ** 2).sum(-1) / (2 * 0.12**2))[:, None]
        col = (1 - g) * col + g * torch.tensor([0.95, 0.05, 0.05])
    return torch.where(hit[:, None], col, BG), o, d


def _fit(field, rays, landmarks, steps, n_rays=256, seed=0):
    """Photometric L2 fit with occupancy updates; ``rays`` = (rgb, origins, dirs, frame)."""
    rgb, o, d, fr = rays
    occ = OccupancyGrid(field.aabb, resolution=24, warmup_updates=2)
    ren = VolumeRenderer(field.aabb, num_samples=32, occupancy=occ)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ctx = field.prepare(landmarks)
        if step and step % 10 == 0:
            with torch.no_grad():
                occ.update(field.density_fn(ctx, frames=[step % ctx.n_frames]), generator=gen)
        idx = torch.randint(0, rgb.shape[0], (n_rays,), generator=gen)
        out = ren.render(field, ctx, o[idx], d[idx], fr[idx], BG, stratified=True, generator=gen)
        loss = ((out.rgb - rgb[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ren


def _psnr(a, b) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def sphere_fit_psnr(seed: int = 0, steps: int = 400) -> tuple[float, float]:
    """Held-out-view PSNR of a field fitted for ``steps`` steps to 24 views of a textured sphere, and of the same
    field untrained (dB). ``seed`` drives the field's initialisation and the ray draws."""
    torch.manual_seed(seed)
    n_views = 24                             # rays per step are fixed, so more views cost nothing per step
    views = [_look_at(2 * math.pi * i / n_views, 0.4 * (i % 3 - 1)) for i in range(n_views)]
    data = [_sphere_image(v) for v in views]
    rays = tuple(torch.cat([dd[i] for dd in data]) for i in range(3)) + (torch.zeros(n_views * H * W, dtype=torch.int64),)
    field = LandmarkField(_small_cfg())
    ren = _fit(field, rays, None, steps=steps, seed=seed)
    test = _look_at(2 * math.pi * 0.5 / n_views, 0.2)   # between two training views, at a new elevation
    gt, _, _ = _sphere_image(test)
    img = ren.render_image(field, field.prepare(), test, H, W, FOCAL, W / 2, H / 2, 0, BG)["rgb"].reshape(-1, 3)
    untrained = LandmarkField(_small_cfg())
    img0 = ren.render_image(untrained, untrained.prepare(), test, H, W, FOCAL, W / 2, H / 2, 0, BG)["rgb"].reshape(-1, 3)
    return _psnr(img, gt), _psnr(img0, gt)


def test_fit_textured_sphere_reaches_28db_on_a_held_out_view():
    trained, untrained = sphere_fit_psnr(seed=0)
    # measured (bench/test_margins.py, seeds 0-4 x torch threads 1, 2): trained 32.1-35.9 dB, untrained 11.2-11.9
    assert untrained < 15
    assert trained > 28


def _spot(theta: float) -> torch.Tensor:
    return 0.6 * torch.tensor([math.sin(theta) * math.cos(0.25), -math.sin(0.25), math.cos(theta) * math.cos(0.25)])


COND_STEPS = 150


def landmark_conditioning_fit(seed: int = 1) -> dict:
    """A red 'mouth' spot follows landmark 0; two landmarks stay put. Fits the same scene with and without
    landmark conditioning and scores two held-out spot positions: mean PSNR of each, and how far the rendered
    spot moves between them against the ground truth's move (pixels)."""
    train_theta = [-0.6, -0.36, -0.12, 0.12, 0.36, 0.6]
    test_theta = [-0.24, 0.24]
    fixed = torch.tensor([[-0.3, 0.25, 0.45], [0.3, 0.25, 0.45]])

    def lms(thetas):
        return torch.stack([torch.cat([_spot(t)[None], fixed]) for t in thetas])

    views = [_look_at(az, 0.1) for az in (-0.4, 0.0, 0.4)]
    parts = []
    for f, th in enumerate(train_theta):
        for v in views:
            rgb, o, d = _sphere_image(v, _spot(th))
            parts.append((rgb, o, d, torch.full((H * W,), f, dtype=torch.int64)))
    rays = tuple(torch.cat([p[i] for p in parts]) for i in range(4))
    results = {}
    for cond in (True, False):
        torch.manual_seed(seed)
        cfg = _small_cfg(use_landmarks=cond, landmark_k=3, landmark_sigma=0.25, landmark_feat_dim=16)
        field = LandmarkField(cfg, landmark_ids=(0, 1, 2) if cond else None)
        # the ray draws take seed - 1: with the test's seed 1 that is the init / draw pair (1, 0) it always used
        ren = _fit(field, rays, lms(train_theta) if cond else None, steps=COND_STEPS, seed=seed - 1)
        ctx = field.prepare(lms(test_theta) if cond else None)
        imgs = [ren.render_image(field, ctx, views[1], H, W, FOCAL, W / 2, H / 2, f if cond else 0, BG)["rgb"]
                for f in range(len(test_theta))]
        gts = [_sphere_image(views[1], _spot(t))[0].reshape(H, W, 3) for t in test_theta]
        results[cond] = (sum(_psnr(i, g) for i, g in zip(imgs, gts)) / len(imgs), imgs, gts)
    psnr_cond, imgs, gts = results[True]

    def spot_x(img):
        red = (img[..., 0] - img[..., 1:].mean(-1)).clamp_min(0) ** 2
        return float((red.sum(0) * torch.arange(W)).sum() / red.sum())

    moved, moved_gt = spot_x(imgs[1]) - spot_x(imgs[0]), spot_x(gts[1]) - spot_x(gts[0])
    return dict(psnr_cond=psnr_cond, psnr_plain=results[False][0], moved=moved, moved_gt=moved_gt)


def test_landmark_conditioning_moves_the_mouth_blob():
    """Held-out spot positions are reproduced with conditioning and not without, and the rendered spot moves
    with the landmark."""
    r = landmark_conditioning_fit(seed=1)
    # measured (bench/test_margins.py, seeds 1-5 x threads 1, 2): +6.3-11.9 dB, move error 0.3-4.7 % of the move
    assert r["psnr_cond"] > r["psnr_plain"] + 3.0, r
    assert r["moved_gt"] > 2 and abs(r["moved"] - r["moved_gt"]) < 0.35 * r["moved_gt"], r
