"""The pure-torch Gaussian-splatting reference (pipeline/stage2/gaussians): analytic images, compositing order,
culling, conventions, gradients, a small fit, and parity with gsplat where CUDA and gsplat are importable.

Everything but the parity test runs on the CPU in a few seconds. The expected values are derived in the
tests themselves (docs/gaussians.md explains the conventions), not taken from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.stage2.gaussians import rasterization


def camera(f: float = 32.0, cx: float = 15.5, cy: float = 15.5, viewmat: torch.Tensor | None = None,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    V = torch.eye(4, dtype=dtype) if viewmat is None else viewmat.to(dtype)
    return V[None], K[None]


def render(means, scales, opacities, colors, quats=None, W=32, H=32, cam=None, **kw):
    means, scales = torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(scales, dtype=torch.float32)
    if scales.dim() == 1:
        scales = scales[:, None].expand(-1, 3)
    if quats is None:
        quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(len(means), 4)
    V, K = cam or camera()
    return rasterization(means, torch.as_tensor(quats, dtype=torch.float32), scales,
                         torch.as_tensor(opacities, dtype=torch.float32),
                         torch.as_tensor(colors, dtype=torch.float32), V, K, W, H, **kw)


# ---------------------------------------------------------------- analytic images


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_gaussian_is_the_analytic_2d_gaussian(mode):
    """An isotropic Gaussian of scale s at (x, 0, z) (camera looking down +z, fx = fy = f): its footprint is
    the 2D Gaussian with variance s^2 (f/z)^2 (1 + x^2/z^2) along the image x axis (the Jacobian's extra
    -f x / z^2 term) and s^2 (f/z)^2 along y, plus 0.3 px^2 (eps2d) on both, centred at
    (f x / z + cx, cy), with peak = opacity (times sqrt(det / det_blurred) in antialiased mode)."""
    f, s, x, z, opacity = 32.0, 0.1, 0.3125, 2.0, 0.7
    color = torch.tensor([1.0, 0.5, 0.25])
    img, alpha, meta = render([[x, 0.0, z]], [s], [opacity], color[None], rasterize_mode=mode)
    u, v = f * x / z + 15.5, 15.5                          # (20.5, 15.5): the centre of pixel (row 15, col 20)
    var_x0, var_y0 = s * s * (f / z) ** 2 * (1 + (x / z) ** 2), s * s * (f / z) ** 2
    var_x, var_y = var_x0 + 0.3, var_y0 + 0.3
    peak = opacity * (math.sqrt(var_x0 * var_y0 / (var_x * var_y)) if mode == "antialiased" else 1.0)

    cols, rows = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="xy")
    expect = peak * torch.exp(-0.5 * ((cols - u) ** 2 / var_x + (rows - v) ** 2 / var_y))
    expect = torch.where(expect >= 1 / 255, expect, torch.zeros(()))
    assert torch.allclose(alpha[0, ..., 0], expect, atol=2e-6)
    assert torch.allclose(img[0], expect[..., None] * color, atol=2e-6)

    assert divmod(int(alpha[0, ..., 0].argmax()), 32) == (15, 20)
    assert abs(float(img[0, 15, 20, 0]) - peak) < 1e-6
    # the width read back from the image: ln(I(k) / I(0)) = -k^2 / (2 var) along the row and the column
    k = torch.arange(1, 4)
    fit_x = -(k ** 2) / (2 * torch.log(alpha[0, 15, 20 + k, 0] / peak))
    fit_y = -(k ** 2) / (2 * torch.log(alpha[0, 15 + k, 20, 0] / peak))
    assert torch.allclose(fit_x, torch.full((3,), var_x), rtol=1e-4)
    assert torch.allclose(fit_y, torch.full((3,), var_y), rtol=1e-4)
    assert meta["radii"].tolist() == [[[math.ceil(math.sqrt(2 * math.log(255 * peak) * var_x)),
                                        math.ceil(math.sqrt(2 * math.log(255 * peak) * var_y))]]]


def test_opencv_camera_axes_and_world_to_camera_viewmat():
    """+x is right, +y is down, depth is +z; viewmats map world to camera (a camera 2 units behind the origin
    sees a Gaussian at the origin; read as camera-to-world it would be behind the camera)."""
    _, alpha, meta = render([[0.25, 0.25, 2.0]], [0.05], [0.9], [[1.0, 1.0, 1.0]])
    assert meta["means2d"][0, 0].tolist() == [19.5, 19.5]  # right of and below (15.5, 15.5)
    assert divmod(int(alpha[0, ..., 0].argmax()), 32) == (19, 19)

    world_to_cam = torch.eye(4)
    world_to_cam[2, 3] = 2.0                               # camera centre at world (0, 0, -2)
    _, alpha, meta = render([[0.0, 0.0, 0.0]], [0.05], [0.9], [[1.0, 1.0, 1.0]], cam=camera(viewmat=world_to_cam))
    assert float(meta["depths"][0, 0]) == 2.0 and float(alpha.max()) == pytest.approx(0.9)


def test_render_modes_depth():
    _, alpha, _ = render([[0.0, 0.0, 2.5]], [0.1], [0.6], [[1.0, 1.0, 1.0]])
    d, _, _ = render([[0.0, 0.0, 2.5]], [0.1], [0.6], [[1.0, 1.0, 1.0]], render_mode="D")
    ed, _, _ = render([[0.0, 0.0, 2.5]], [0.1], [0.6], [[1.0, 1.0, 1.0]], render_mode="RGB+ED")
    assert torch.allclose(d, 2.5 * alpha)
    drawn = alpha[..., 0] > 0
    assert drawn.sum() > 20 and torch.allclose(ed[..., 3][drawn], torch.tensor(2.5))
    assert torch.all(ed[..., 3][~drawn] == 0) and ed.shape[-1] == 4


# ---------------------------------------------------------------- compositing


def test_front_to_back_order_by_depth_not_input_order():
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    near, far = [0.0, 0.0, 2.0], [0.0, 0.0, 4.0]          # both centred on pixel (15, 15)
    a, alpha_a, _ = render([near, far], [0.1, 0.2], [0.8, 0.8], [red, green])
    b, alpha_b, _ = render([far, near], [0.2, 0.1], [0.8, 0.8], [green, red])
    assert torch.equal(a, b) and torch.equal(alpha_a, alpha_b)
    # at the centre both have alpha 0.8: red 0.8, green 0.2 * 0.8 behind it, alpha 1 - 0.2^2
    assert a[0, 15, 15].tolist() == pytest.approx([0.8, 0.16, 0.0], abs=1e-6)
    assert float(alpha_a[0, 15, 15, 0]) == pytest.approx(0.96, abs=1e-6)
    swapped, _, _ = render([[0.0, 0.0, 5.0], far], [0.1, 0.2], [0.8, 0.8], [red, green])
    assert swapped[0, 15, 15].tolist() == pytest.approx([0.16, 0.8, 0.0], abs=1e-6)


def test_alpha_is_capped_and_pixels_stop_at_transmittance_1e4():
    """Opacity 1 gives alpha 0.999, never 1; a second opaque Gaussian would leave T = 1e-6 <= 1e-4, so the
    pixel stops before it: the colour stays the first one's and alpha stays 0.999."""
    n = 20
    means = [[0.0, 0.0, 2.0 + 0.1 * i] for i in range(n)]
    colors = [[1.0, 0.0, 0.0]] + [[0.0, 0.0, 1.0]] * (n - 1)
    img, alpha, _ = render(means, [0.2] * n, [1.0] * n, colors, backgrounds=torch.tensor([[0.0, 1.0, 0.0]]))
    assert float(alpha[0, 15, 15, 0]) == pytest.approx(0.999, abs=1e-7)
    assert img[0, 15, 15].tolist() == pytest.approx([0.999, 0.001, 0.0], abs=1e-6)
    assert float(alpha.max()) <= 1.0 and float(alpha.min()) >= 0.0


def test_random_scene_alpha_in_range_and_background_where_empty():
    g = torch.Generator().manual_seed(3)
    n = 300
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.6, 0.6, 0.3]) + torch.tensor([0.0, 0.0, 3.0])
    img, alpha, _ = render(means, torch.rand(n, 3, generator=g) * 0.1, torch.rand(n, generator=g),
                           torch.rand(n, 3, generator=g), quats=torch.randn(n, 4, generator=g), W=48, H=40,
                           backgrounds=torch.tensor([[0.2, 0.4, 0.6]]))
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0 and float(alpha.max()) > 0.99
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0 + 1e-6


def test_empty_scene_and_culled_gaussians_give_the_background():
    bg = torch.tensor([[0.1, 0.2, 0.3]])
    img, alpha, meta = render(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), torch.zeros(0, 3), backgrounds=bg)
    assert torch.all(alpha == 0) and torch.all(img == bg) and meta["radii"].shape == (1, 0, 2)

    culled = [[0.0, 0.0, -2.0],     # behind the camera
              [0.0, 0.0, 0.005],    # in front of the near plane (0.01)
              [5.0, 0.0, 2.0],      # projects to x = 95.5, far right of a 32-wide image
              [0.0, -3.0, 2.0]]     # far above it
    img, alpha, meta = render(culled, [0.05] * 4, [0.9] * 4, [[1.0, 1.0, 1.0]] * 4, backgrounds=bg)
    assert torch.all(alpha == 0) and torch.all(img == bg) and torch.all(meta["radii"] == 0)

    alone, alone_alpha, _ = render([[0.0, 0.0, 2.0]], [0.1], [0.9], [[1.0, 0.0, 0.0]], backgrounds=bg)
    mixed, mixed_alpha, _ = render([[0.0, 0.0, 2.0]] + culled, [0.1] + [0.05] * 4, [0.9] * 5,
                                   [[1.0, 0.0, 0.0]] + [[1.0, 1.0, 1.0]] * 4, backgrounds=bg)
    assert torch.equal(alone, mixed) and torch.equal(alone_alpha, mixed_alpha)

    # centre 1 px left of the image but 3.2 px wide: kept, and it colours the first columns only
    _, alpha, meta = render([[-16.5 * 2 / 32, 0.0, 2.0]], [0.2], [0.9], [[1.0, 1.0, 1.0]])
    assert torch.all(meta["radii"] > 0) and float(alpha[0, :, 0].max()) > 0.5 and float(alpha[0, :, 16:].max()) == 0


def test_culled_gaussians_get_zero_radii_and_zero_gradients():
    """A Gaussian in the camera's plane (z = 0) or just behind it: radii 0, and gradients exactly 0 (not NaN
    from its unused projection), while the visible one's are non-zero."""
    means = torch.tensor([[0.0, 0.0, 2.0], [0.1, 0.0, 0.0], [0.0, 0.1, -1e-30]], requires_grad=True)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3, requires_grad=True)
    scales = torch.full((3, 3), 0.1, requires_grad=True)
    opacities = torch.full((3,), 0.8, requires_grad=True)
    colors = torch.tensor([[1.0, 0.5, 0.2]] * 3, requires_grad=True)
    V, K = camera()
    img, alpha, meta = rasterization(means, quats, scales, opacities, colors, V, K, 32, 32)
    (img.sum() + alpha.sum()).backward()
    assert bool((meta["radii"][0, 0] > 0).all()) and bool((meta["radii"][0, 1:] == 0).all())
    for p in (means, quats, scales, opacities, colors):
        assert torch.isfinite(p.grad).all() and torch.all(p.grad[1:] == 0)
    assert float(scales.grad[0].abs().sum()) > 0 and float(opacities.grad[0]) > 0


# ---------------------------------------------------------------- quaternions


def test_quaternion_is_wxyz_and_need_not_be_unit():
    """A Gaussian long along x, rotated 90 degrees about the view axis (w, x, y, z) = (cos 45, 0, 0, sin 45)
    (times 2.5: not unit) is long along y: the image transposes. Rotated by +45 degrees its long axis runs
    from top-left to bottom-right of the image (x right, y down), so the 2D covariance's xy term is > 0."""
    scales, mean, white = [[0.3, 0.08, 0.05]], [[0.0, 0.0, 3.0]], [[1.0, 1.0, 1.0]]
    cam = camera(cx=16.0, cy=16.0)                         # centre on a pixel corner: transposition-symmetric
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    flat, _, _ = render(mean, scales, [0.9], white, quats=[[1.0, 0.0, 0.0, 0.0]], cam=cam)
    turned, _, _ = render(mean, scales, [0.9], white, quats=[[2.5 * c, 0.0, 0.0, 2.5 * s]], cam=cam)
    assert torch.allclose(turned[0], flat[0].transpose(0, 1), atol=1e-6)
    extent = (flat[0, ..., 0] > 0.1)
    assert int(extent.any(0).sum()) > 2 * int(extent.any(1).sum())  # wider (x) than tall (y)

    c8, s8 = math.cos(math.pi / 8), math.sin(math.pi / 8)
    diag, _, meta = render(mean, scales, [0.9], white, quats=[[c8, 0.0, 0.0, s8]], cam=cam)
    assert float(meta["conics"][0, 0, 1]) < 0                # inverse of a positive xy covariance
    assert float(diag[0, 20, 20, 0]) > 10 * float(diag[0, 20, 11, 0])   # below-right lit, below-left not


# ---------------------------------------------------------------- gradients


def tiny_scene(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.1, -0.05, 2.4], [-0.12, 0.08, 1.8], [0.05, 0.1, 3.0]], dtype=dtype)
    scales = torch.rand(4, 3, generator=g, dtype=dtype) * 0.12 + 0.08
    quats = torch.randn(4, 4, generator=g, dtype=dtype)
    opacities = torch.rand(4, generator=g, dtype=dtype) * 0.6 + 0.3
    colors = torch.rand(4, 3, generator=g, dtype=dtype)
    angle = 0.15                                             # a turned and shifted world-to-camera
    V = torch.eye(4, dtype=dtype)
    V[0, 0], V[0, 2], V[2, 0], V[2, 2] = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
    V[:3, 3] = torch.tensor([-0.3, -0.02, 0.1], dtype=dtype)
    K = torch.tensor([[14.0, 0.0, 5.0], [0.0, 13.0, 4.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return [means, scales, quats, opacities, colors], V[None], K[None]


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_gradcheck_float64(mode):
    params, V, K = tiny_scene(torch.float64)
    bg = torch.tensor([[0.3, 0.1, 0.7]], dtype=torch.float64)

    def fn(means, scales, quats, opacities, colors):
        img, alpha, _ = rasterization(means, quats, scales, opacities, colors, V, K, 10, 9, tile_size=4,
                                      backgrounds=bg, rasterize_mode=mode)
        return torch.cat([img, alpha], dim=-1)

    out = fn(*params)
    assert float(out[..., 3].max()) > 0.5 and int((out[..., 3] > 0).sum()) > 40   # a non-trivial image
    inputs = [p.clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster than two, and on a busy 2-core machine much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_a_random_image(one_thread):
    """100 Gaussians fitted to a random smooth 32 x 32 target by 300 Adam steps lower the MSE 100-fold
    (measured: 0.132 -> 6.0e-5)."""
    torch.manual_seed(0)
    target = F.interpolate(torch.rand(1, 3, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)[0]
    target = target.permute(1, 2, 0)
    n = 100
    V, K = camera()
    means = (torch.rand(n, 3) * torch.tensor([1.6, 1.6, 0.5]) + torch.tensor([-0.8, -0.8, 2.0])).requires_grad_()
    log_scales = torch.full((n, 3), math.log(0.08)).requires_grad_()
    quats = torch.randn(n, 4).requires_grad_()
    logit_op = torch.zeros(n).requires_grad_()
    color_logits = torch.zeros(n, 3).requires_grad_()
    opt = torch.optim.Adam([{"params": [means], "lr": 0.01}, {"params": [log_scales, quats], "lr": 0.02},
                            {"params": [logit_op, color_logits], "lr": 0.05}])
    losses = []
    for _ in range(300):
        img, _, _ = rasterization(means, quats, log_scales.exp(), torch.sigmoid(logit_op),
                                  torch.sigmoid(color_logits), V, K, 32, 32)
        loss = F.mse_loss(img[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"fit: MSE {losses[0]:.4g} -> {losses[-1]:.4g}")
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


# ---------------------------------------------------------------- parity with gsplat (GPU sessions)


def test_projection_matches_gsplats_torch_projection():
    """gsplat's own pure-torch projection (``gsplat.cuda._torch_impl``, importable without CUDA) gives the
    same centres, depths, conics and compensations in float64, Gaussians outside the FOV clamp included.
    (Its radii differ by design: that function ignores opacities, ``rasterization`` passes them in.)"""
    pytest.importorskip("gsplat")
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    from pipeline.stage2.gaussians import project_gaussians
    g = torch.Generator().manual_seed(1)
    n, W, H, f64 = 500, 72, 56, torch.float64
    means = torch.randn(n, 3, generator=g, dtype=f64) * torch.tensor([1.5, 1.2, 0.5], dtype=f64)
    means[:, 2] += 3.0
    quats, scales = torch.randn(n, 4, generator=g, dtype=f64), torch.rand(n, 3, generator=g, dtype=f64) * 0.1
    _, V, _ = tiny_scene(f64)                               # its turned and shifted camera
    K = torch.tensor([[[60.0, 0.0, W / 2], [0.0, 62.0, H / 2], [0.0, 0.0, 1.0]]], dtype=f64)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, comps = _fully_fused_projection(means, covars, V, K, W, H,
                                                                    calc_compensations=True)
    ours = project_gaussians(means, quats, scales, torch.ones(n, dtype=f64), V, K, W, H, antialiased=True)
    for theirs, mine in [(means2d, ours.means2d), (depths, ours.depths), (conics, ours.conics),
                         (comps, ours.compensations)]:
        assert torch.allclose(theirs, mine, rtol=1e-10, atol=1e-10)
    assert int((radii > 0).all(-1).sum()) > n // 2


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_parity_with_gsplat(mode):
    gsplat = pytest.importorskip("gsplat")
    if not torch.cuda.is_available():
        pytest.skip("gsplat parity needs CUDA")
    g = torch.Generator().manual_seed(7)
    n, W, H = 400, 72, 56                                    # not multiples of 16: edge tiles
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.8, 0.6, 0.5]) + torch.tensor([0.0, 0.0, 3.0])
    means[:10, 2] = -1.0                                      # behind the camera
    params = [means, torch.rand(n, 3, generator=g) * 0.08 + 0.01, torch.randn(n, 4, generator=g),
              torch.rand(n, generator=g) * 0.95 + 0.02, torch.rand(n, 3, generator=g)]
    V = torch.eye(4)[None].repeat(2, 1, 1)
    V[1, 0, 3] = 0.3                                          # a second camera, shifted
    K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 62.0, H / 2], [0.0, 0.0, 1.0]])[None].repeat(2, 1, 1)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    weights = torch.rand(2, H, W, 4, generator=g)             # a fixed random loss, the same for both

    def run(fn, device):
        ps = [p.to(device).clone().requires_grad_(True) for p in params]
        img, alpha, meta = fn(ps[0], ps[2], ps[1], ps[3], ps[4], V.to(device), K.to(device), W, H, packed=False,
                              backgrounds=bg.to(device), rasterize_mode=mode)
        (torch.cat([img, alpha], dim=-1) * weights.to(device)).sum().backward()
        return img.detach().cpu(), alpha.detach().cpu(), meta, [p.grad.cpu() for p in ps]

    img_g, alpha_g, meta_g, grads_g = run(gsplat.rasterization, "cuda")
    img_r, alpha_r, meta_r, grads_r = run(rasterization, "cpu")
    # __logf and ceil may round one box differently now and then: nearly all radii agree exactly
    same_radii = (meta_g["radii"].cpu() == meta_r["radii"]).all(-1).float().mean()
    assert float(same_radii) > 0.99, float(same_radii)
    # a pixel may flip across the 1/255 or 1e-4 cut by float rounding: bound the typical and the worst error
    assert float((img_g - img_r).abs().mean()) < 1e-5 and float((img_g - img_r).abs().max()) < 1e-2
    assert float((alpha_g - alpha_r).abs().mean()) < 1e-5 and float((alpha_g - alpha_r).abs().max()) < 1e-2
    errors = {name: float((a - b).norm() / b.norm())
              for name, a, b in zip(["means", "scales", "quats", "opacities", "colors"], grads_g, grads_r)}
    assert max(errors.values()) < 5e-3, errors


def batch_scene(b: int, n: int, W: int, H: int, seed: int) -> list[torch.Tensor]:
    """``b`` scenes of ``n`` Gaussians each (gsplat's leading batch dimension), one camera per scene."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(b, n, 3, generator=g) * torch.tensor([0.8, 0.6, 0.5]) + torch.tensor([0.0, 0.0, 3.0])
    V = torch.eye(4)[None, None].repeat(b, 1, 1, 1)
    V[:, 0, 0, 3] = torch.linspace(-0.2, 0.2, b)
    K = torch.tensor([[50.0, 0.0, W / 2], [0.0, 50.0, H / 2], [0.0, 0.0, 1.0]])[None, None].repeat(b, 1, 1, 1)
    return [means, torch.randn(b, n, 4, generator=g), torch.rand(b, n, 3, generator=g) * 0.08 + 0.01,
            torch.rand(b, n, generator=g) * 0.95 + 0.02, torch.rand(b, n, 3, generator=g), V, K]


def test_batch_dimension_renders_each_entry_alone():
    """``means [B, N, 3]`` with ``viewmats [B, 1, 4, 4]`` (how the Gaussian head renders a batch of frames,
    each with its own deformed Gaussians) gives what B separate calls give, outputs and metas ``[B, 1, ...]``."""
    W, H = 40, 24
    means, quats, scales, opac, colors, V, K = batch_scene(3, 60, W, H, seed=3)
    img, alpha, meta = rasterization(means, quats, scales, opac, colors, V, K, W, H, packed=False)
    assert img.shape == (3, 1, H, W, 3) and alpha.shape == (3, 1, H, W, 1)
    assert meta["means2d"].shape == (3, 1, 60, 2) and meta["radii"].shape == (3, 1, 60, 2)
    for b in range(3):
        one, a1, m1 = rasterization(means[b], quats[b], scales[b], opac[b], colors[b], V[b], K[b], W, H)
        assert torch.equal(img[b], one) and torch.equal(alpha[b], a1)
        assert torch.equal(meta["means2d"][b], m1["means2d"]) and torch.equal(meta["radii"][b], m1["radii"])
    assert float(alpha.amax()) > 0.5 and not torch.equal(img[0], img[2])    # drawn, and the scenes differ
    # the batched meta's centres are upstream of the images: a gradient kept on them arrives (density control)
    means.requires_grad_(True)
    img, alpha, meta = rasterization(means, quats, scales, opac, colors, V, K, W, H, packed=False)
    meta["means2d"].retain_grad()
    img.sum().backward()
    assert meta["means2d"].grad is not None and float(meta["means2d"].grad.abs().sum()) > 0


def test_batched_parity_with_gsplat():
    gsplat = pytest.importorskip("gsplat")
    if not torch.cuda.is_available():
        pytest.skip("gsplat parity needs CUDA")
    W, H = 48, 40
    params = batch_scene(3, 300, W, H, seed=11)

    def run(fn, device):
        ps = [p.to(device).clone().requires_grad_(True) for p in params[:5]]
        img, alpha, meta = fn(ps[0], ps[1], ps[2], ps[3], ps[4], params[5].to(device), params[6].to(device), W, H,
                              packed=False)
        meta["means2d"].retain_grad()
        (img.sum(-1) * torch.linspace(0, 1, W, device=device) + alpha[..., 0]).sum().backward()
        return img.detach().cpu(), alpha.detach().cpu(), meta["means2d"].grad.cpu(), [p.grad.cpu() for p in ps]

    img_g, alpha_g, m2d_g, grads_g = run(gsplat.rasterization, "cuda")
    img_r, alpha_r, m2d_r, grads_r = run(rasterization, "cpu")
    assert img_g.shape == img_r.shape == (3, 1, H, W, 3)
    assert float((img_g - img_r).abs().mean()) < 1e-5 and float((alpha_g - alpha_r).abs().mean()) < 1e-5
    # the projected centres' gradients (density control reads them) and the parameters' gradients
    assert float((m2d_g - m2d_r).norm() / m2d_r.norm()) < 5e-3
    errors = [float((a - b).norm() / b.norm()) for a, b in zip(grads_g, grads_r)]
    assert max(errors) < 5e-3, errors
