"""Stage-2 core on synthetic data (CPU): hash grid, occupancy, renderer (the landmark-conditioned field:
test_stage2_field.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from pipeline.core.config import ConfigError, Stage2TrainConfig
from pipeline.stage2.losses import distortion_loss, distortion_loss_reference, landmark_depth_loss
from pipeline.stage2.nerf import encoding as E
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import (VolumeRenderer, camera_rays, composite, pixel_centers,
                                           segment_exclusive_cumsum)

# ---------------------------------------------------------------- hash grid


def _grid(spec: E.HashGridSpec, dtype=torch.float64, seed=0) -> E.TorchHashGrid:
    torch.manual_seed(seed)
    g = E.TorchHashGrid(spec).to(dtype)
    with torch.no_grad():
        g.table.uniform_(-1, 1)
    return g


def _all_vertices(res: int, d: int) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(res + 1)] * d, indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1)


def test_level_resolutions_and_dense_vs_hashed_selection():
    spec = E.HashGridSpec(3, levels=6, features_per_level=2, log2_hashmap_size=10, base_resolution=2,
                          finest_resolution=32)
    res = spec.resolutions()
    assert res[0] == 2 and res[-1] == 32 and res == sorted(res)
    assert spec.level_is_dense() == [(r + 1) ** 3 <= 1024 for r in res]
    assert any(spec.level_is_dense()) and not all(spec.level_is_dense())
    g = E.TorchHashGrid(spec)
    assert g.table.shape == (sum(min((r + 1) ** 3, 1024) for r in res), 2)
    for lvl, (r, dense) in enumerate(zip(res, spec.level_is_dense())):
        idx = E.level_indices(_all_vertices(r, 3), r, dense, spec.log2_hashmap_size)
        if dense:  # a bijection onto the level's rows
            assert torch.equal(torch.sort(idx).values, torch.arange((r + 1) ** 3))
        else:      # collisions, but buckets filled as by a uniform random hash: 1024 (1 - e^(-V/1024))
            assert idx.min() >= 0 and idx.max() < 1024
            n_unique = torch.unique(idx).numel()
            uniform = 1024 * (1 - math.exp(-((r + 1) ** 3) / 1024))
            assert n_unique < (r + 1) ** 3 and abs(n_unique - uniform) < 0.05 * uniform


def test_hash_matches_instant_ngp_uint32_formula():
    gen = torch.Generator().manual_seed(1)
    v = torch.randint(0, 5000, (200, 3), generator=gen)
    idx = E.level_indices(v, 4999, False, 19)
    for (i, j, k), got in zip(v.tolist(), idx.tolist()):
        h = (i * 1) & 0xFFFFFFFF
        h ^= (j * 2654435761) & 0xFFFFFFFF
        h ^= (k * 805459861) & 0xFFFFFFFF
        assert got == h % (1 << 19)


@pytest.mark.parametrize("d", [2, 3])
def test_interpolation_is_exact_at_vertices_and_continuous(d):
    spec = E.HashGridSpec(d, levels=4, features_per_level=3, log2_hashmap_size=8, base_resolution=3,
                          finest_resolution=40)
    g = _grid(spec)
    gen = torch.Generator().manual_seed(2)
    for lvl, (r, dense) in enumerate(zip(spec.resolutions(), spec.level_is_dense())):
        v = torch.randint(0, r + 1, (64, d), generator=gen)
        v[0] = r          # the far corner (x = 1) is a vertex too
        v[1] = 0
        rows = E.level_indices(v, r, dense, spec.log2_hashmap_size) + g.offsets[lvl]
        got = g.level_features(v.double() / r, lvl)
        torch.testing.assert_close(got, g.table[rows].detach(), rtol=0, atol=1e-12)
        # continuity across a cell face: both sides agree to first order
        x = (v[2:].double() + 0.5) / r
        x[:, 0] = torch.clamp(v[2:, 0], 1, r - 1).double() / r
        eps = 1e-9
        lo, hi = x.clone(), x.clone()
        lo[:, 0] -= eps
        hi[:, 0] += eps
        assert (g.level_features(lo, lvl) - g.level_features(hi, lvl)).abs().max() < 1e-6


def test_gradcheck_table_and_inputs():
    spec = E.HashGridSpec(3, levels=3, features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                          finest_resolution=9)
    assert spec.level_is_dense()[0] and not spec.level_is_dense()[-1]
    g = _grid(spec)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 3, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    table = g.table.detach().clone().requires_grad_(True)

    def fn(x, table):
        return torch.func.functional_call(g, {"table": table}, (x,))

    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-6, atol=1e-6)


def test_colliding_vertices_share_a_row_and_accumulate_gradient():
    spec = E.HashGridSpec(3, levels=1, features_per_level=2, log2_hashmap_size=6, base_resolution=12,
                          finest_resolution=12)
    assert spec.level_is_dense() == [False]
    g = _grid(spec)
    v = _all_vertices(12, 3)
    idx = E.level_indices(v, 12, False, 6)
    row = int(torch.mode(idx).values)
    pair = v[idx == row][:2]
    x = pair.double() / 12
    out = g(x)
    torch.testing.assert_close(out[0], out[1])           # same row -> same features at both vertices
    out.sum().backward()
    assert torch.allclose(g.table.grad[row], torch.full((2,), 2.0, dtype=torch.float64))
    assert g.table.grad.abs().sum() == pytest.approx(4.0)


def test_triplane_and_backend_registry():
    spec = E.HashGridSpec(3, levels=3, features_per_level=2, log2_hashmap_size=8, base_resolution=4,
                          finest_resolution=16)
    cat = E.TriPlaneHashEncoding(spec, reduce="concat")
    summed = E.TriPlaneHashEncoding(spec, reduce="sum")
    summed.load_state_dict(cat.state_dict())
    for p in cat.parameters():
        torch.nn.init.uniform_(p, -1, 1)
    summed.load_state_dict(cat.state_dict())
    x = torch.rand(50, 3)
    f = cat(x)
    assert f.shape == (50, 18) and cat.output_dim == 18 and summed.output_dim == 6
    torch.testing.assert_close(f[:, :6], cat.planes[0](x[:, [0, 1]]))
    torch.testing.assert_close(f[:, 6:12], cat.planes[1](x[:, [1, 2]]))
    torch.testing.assert_close(summed(x), f[:, :6] + f[:, 6:12] + f[:, 12:])
    x2 = x.clone()
    x2[:, 2] = torch.rand(50)                             # z moves: the xy-plane features do not
    torch.testing.assert_close(cat(x2)[:, :6], f[:, :6])
    assert not torch.allclose(cat(x2)[:, 6:], f[:, 6:])
    assert "torch" in E.available_backends()
    assert E.resolve_backend("auto") in E.available_backends()
    with pytest.raises(ValueError, match="unknown hash-grid backend"):
        E.HashGridEncoding(spec, backend="cuda_magic")
    if "tcnn" not in E.available_backends():
        with pytest.raises(ValueError, match="not available"):
            E.HashGridEncoding(spec, backend="tcnn")


# ---------------------------------------------------------------- renderer


def test_camera_rays_follow_the_opengl_convention():
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.5, -1.0, 3.0])
    uv = torch.tensor([[50.0, 40.0], [90.0, 40.0], [50.0, 80.0]])
    o, d = camera_rays(c2w, uv, 100.0, 50.0, 40.0)
    torch.testing.assert_close(o, c2w[:3, 3].expand(3, 3))
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, -1.0]))
    assert d[1, 0] > 0 and abs(d[1, 1]) < 1e-7            # right of centre -> +x
    assert d[2, 1] < 0 and abs(d[2, 0]) < 1e-7            # below centre -> -y (y is up)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3))
    assert pixel_centers(2, 3)[4].tolist() == [1.5, 1.5]


class SlabField:
    """sigma inside |z| < half (and the box), constant colour."""

    def __init__(self, sigma: float, half: float, color=(0.8, 0.2, 0.1)):
        self.sigma, self.half, self.color = sigma, half, torch.tensor(color)

    def density(self, x, frame, ctx):
        return torch.where(x[:, 2].abs() < self.half, self.sigma, 0.0)

    def __call__(self, x, d, frame, ctx):
        return self.density(x, frame, ctx), self.color.expand(x.shape[0], 3)


@pytest.mark.parametrize("stratified", [False, True])
def test_constant_slab_gives_the_analytic_opacity(stratified):
    sigma, half = 3.0, 0.25
    ren = VolumeRenderer(torch.tensor([[-1.0] * 3, [1.0] * 3]), num_samples=512)
    gen = torch.Generator().manual_seed(4)
    n = 64
    tilt = (torch.rand(n, 2, generator=gen) - 0.5)       # oblique rays: path length 2 half / |d_z|
    d = torch.cat([tilt, -torch.ones(n, 1)], dim=1)
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.zeros(n, 3)
    o[:, 2] = 0.9
    o[:, :2] = torch.rand(n, 2, generator=gen) * 0.2 - 0.1
    bg = torch.tensor([0.0, 0.5, 1.0])
    out = ren.render(SlabField(sigma, half), None, o, d, torch.zeros(n, dtype=torch.int64), bg,
                     stratified=stratified, generator=gen)
    length = 2 * half / d[:, 2].abs()
    expect = 1 - torch.exp(-sigma * length)
    torch.testing.assert_close(out.opacity, expect, atol=1e-2, rtol=0)
    w_sum = torch.zeros(n).index_add_(0, out.ray_indices, out.weights)
    torch.testing.assert_close(w_sum, out.opacity)
    torch.testing.assert_close(out.rgb, expect[:, None] * torch.tensor([0.8, 0.2, 0.1]) + (1 - expect)[:, None] * bg,
                               atol=1e-2, rtol=0)
    # expected depth of an exponential attenuation inside [t0, t0 + L]
    t0 = (0.9 - half) / d[:, 2].abs()
    mean_t = t0 + 1 / sigma - length * torch.exp(-sigma * length) / (1 - torch.exp(-sigma * length))
    torch.testing.assert_close(out.depth / out.opacity, mean_t, atol=1e-2, rtol=0)


def test_segmented_cumsum_and_compositing_match_a_per_ray_loop():
    gen = torch.Generator().manual_seed(5)
    counts = torch.tensor([3, 0, 5, 1, 0, 7])
    ray_idx = torch.repeat_interleave(torch.arange(6), counts)
    sigma = torch.rand(ray_idx.numel(), generator=gen) * 5
    delta = torch.rand(ray_idx.numel(), generator=gen) * 0.3
    t = torch.cumsum(delta, 0)
    rgb = torch.rand(ray_idx.numel(), 3, generator=gen)
    excl = segment_exclusive_cumsum(sigma * delta, ray_idx, 6)
    comp = composite(sigma, rgb, t, delta, ray_idx, 6)
    start = 0
    for r, c in enumerate(counts.tolist()):
        s = slice(start, start + c)
        tau = sigma[s] * delta[s]
        ref_excl = torch.cumsum(tau, 0) - tau
        torch.testing.assert_close(excl[s], ref_excl)
        trans, acc, col = 1.0, 0.0, torch.zeros(3)
        for i in range(start, start + c):
            a = 1 - math.exp(-float(sigma[i] * delta[i]))
            col += trans * a * rgb[i]
            acc += trans * a
            trans *= 1 - a
        torch.testing.assert_close(comp.rgb[r], col)
        assert float(comp.opacity[r]) == pytest.approx(acc, abs=1e-6)
        start += c
    assert comp.opacity[1] == 0 and comp.opacity[4] == 0


def test_distortion_loss_matches_its_definition_and_prefers_one_surface():
    gen = torch.Generator().manual_seed(7)
    counts = torch.tensor([4, 0, 9, 1, 6])
    ray_idx = torch.repeat_interleave(torch.arange(5), counts)
    delta = torch.rand(ray_idx.numel(), generator=gen, dtype=torch.float64) * 0.2 + 0.01
    t = torch.cumsum(delta, 0)                       # sorted by ray, then depth
    w = (torch.rand(ray_idx.numel(), generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    fast = distortion_loss(w, t, delta, ray_idx, 5)
    ref = distortion_loss_reference(w, t, delta, ray_idx, 5)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    g_fast, = torch.autograd.grad(fast, w)
    g_ref, = torch.autograd.grad(ref, w)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    # one ray, the same total weight: on one bin it costs less than over eight bins, and the further the
    # weight is spread along the ray, the more it costs
    one = torch.zeros(8, dtype=torch.float64)
    d8, t8 = torch.full((8,), 0.1, dtype=torch.float64), torch.arange(8, dtype=torch.float64) * 0.1
    r8 = torch.zeros(8, dtype=torch.long)
    one[3] = 0.9
    spread = torch.full((8,), 0.9 / 8, dtype=torch.float64)
    near = torch.zeros(8, dtype=torch.float64)
    near[3:5] = 0.45
    far = torch.zeros(8, dtype=torch.float64)
    far[[0, 7]] = 0.45
    vals = [float(distortion_loss(x, t8, d8, r8, 1)) for x in (one, near, far, spread)]
    assert vals[0] < vals[1] < vals[2] and vals[0] < vals[3]
    assert float(distortion_loss(w[:0], t[:0], delta[:0], ray_idx[:0], 3)) == 0.0
    with pytest.raises(ConfigError, match="loss weights"):
        Stage2TrainConfig(distortion_weight=-0.1)


def test_landmark_depth_loss_is_the_weights_squared_distance_to_the_target():
    """Rays 2 and 3 of a packed batch carry targets; ray 0-1 samples do not count. A ray whose weight sits at its
    target scores 0; otherwise (E_w[t] - depth)^2 + Var_w(t) per unit of weight, averaged over the target rays."""
    t = torch.tensor([0.5, 1.0, 1.0, 2.0, 3.0, 1.5, 2.5], dtype=torch.float64)
    ray = torch.tensor([0, 1, 2, 2, 2, 3, 3])
    w = torch.tensor([0.9, 0.2, 0.0, 1.0, 0.0, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    depth = torch.tensor([2.0, 2.0], dtype=torch.float64)
    loss = landmark_depth_loss(w, t, ray, depth, 2)
    # ray 2: all weight at t = 2 -> 0; ray 3: mean 2 (no bias), variance 0.25 -> 0.25; mean over the two rays
    assert float(loss) == pytest.approx(0.125)
    loss.backward()
    assert torch.equal(w.grad[:2], torch.zeros(2, dtype=torch.float64))   # rays before `first` take no gradient
    assert w.grad[3] == 0 and w.grad[2] > 0 and w.grad[4] > 0            # weight moved off the target costs
    # a biased ray: all weight 0.5 too far
    biased = landmark_depth_loss(torch.tensor([1.0]), torch.tensor([2.5]), torch.tensor([0]), torch.tensor([2.0]), 0)
    assert float(biased) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="loss weights"):
        Stage2TrainConfig(landmark_depth_weight=-1.0)
    with pytest.raises(ConfigError, match="landmark_depth_rays"):
        Stage2TrainConfig(landmark_depth_rays=0)


class BlobField:
    """A smooth Gaussian density blob with position-dependent colour (an analytic stand-in field)."""

    def density(self, x, frame, ctx):
        return 60.0 * torch.exp(-(x * x).sum(-1) / (2 * 0.18**2))

    def __call__(self, x, d, frame, ctx):
        return self.density(x, frame, ctx), (0.5 + 0.5 * torch.sin(3 * x + 1)).clamp(0, 1)


def test_occupancy_skipping_gives_the_dense_image():
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = BlobField()
    occ = OccupancyGrid(aabb, resolution=32, warmup_updates=0)
    dense = VolumeRenderer(aabb, num_samples=192)
    skip = VolumeRenderer(aabb, num_samples=192, occupancy=occ)
    stop = VolumeRenderer(aabb, num_samples=192, occupancy=occ, early_stop_eps=1e-4)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.0, 2.5])
    bg = torch.tensor([0.2, 0.3, 0.4])
    img_dense = dense.render_image(field, None, c2w, 32, 32, 30.0, 16.0, 16.0, 0, bg)
    fresh = skip.render_image(field, None, c2w, 32, 32, 30.0, 16.0, 16.0, 0, bg)
    torch.testing.assert_close(fresh["rgb"], img_dense["rgb"])     # a fresh grid hides nothing
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        frac = occ.update(lambda x: field.density(x, None, None), generator=gen)
    assert 0.05 < frac < 0.3
    img_skip = skip.render_image(field, None, c2w, 32, 32, 30.0, 16.0, 16.0, 0, bg)
    img_stop = stop.render_image(field, None, c2w, 32, 32, 30.0, 16.0, 16.0, 0, bg)
    assert (img_skip["rgb"] - img_dense["rgb"]).abs().max() < 5e-3
    assert (img_stop["rgb"] - img_dense["rgb"]).abs().max() < 5e-3
    assert img_dense["opacity"].max() > 0.9                 # the blob is really there
    uv = pixel_centers(32, 32)
    o, d = camera_rays(c2w, uv, 30.0, 16.0, 16.0)
    fr = torch.zeros(o.shape[0], dtype=torch.int64)
    n_dense = dense.render(field, None, o, d, fr, bg).ray_indices.numel()
    n_skip = skip.render(field, None, o, d, fr, bg).ray_indices.numel()
    n_stop = stop.render(field, None, o, d, fr, bg).ray_indices.numel()
    assert n_skip < 0.25 * n_dense and n_stop < n_skip


def test_stage2_imports_without_preprocessing_libraries():
    blocked = ["mediapipe", "librosa", "parselmouth", "av", "snakemake", "scipy", "sklearn", "imageio_ffmpeg"]
    code = ("import sys\n"
            f"for m in {blocked!r}: sys.modules[m] = None\n"
            "import pipeline.stage2, pipeline.stage2.nerf.encoding, pipeline.stage2.nerf.field\n"
            "import pipeline.stage2.nerf.renderer, pipeline.stage2.nerf.occupancy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_marching_matches_the_two_pass_early_stop_and_evaluates_less():
    """Rendering without gradients marches rays window by window and stops them behind the surface; with
    gradients the two-pass early stop runs. Same image (within eps), fewer field evaluations."""
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = BlobField()
    occ = OccupancyGrid(aabb, resolution=32, warmup_updates=0)
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        occ.update(lambda x: field.density(x, None, None), generator=gen)
    dense = VolumeRenderer(aabb, num_samples=192, occupancy=occ)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.0, 2.5])
    o, d = camera_rays(c2w, pixel_centers(32, 32), 30.0, 16.0, 16.0)
    fr = torch.zeros(o.shape[0], dtype=torch.int64)
    bg = torch.tensor([0.2, 0.3, 0.4])
    ref = dense.render(field, None, o, d, fr, bg)
    for window in (1, 7, 64):
        stop = VolumeRenderer(aabb, num_samples=192, occupancy=occ, early_stop_eps=1e-3, march_window=window)
        two_pass = stop.render(field, None, o, d, fr, bg)                # gradients on: density pass + survivors
        with torch.no_grad():
            marched = stop.render(field, None, o, d, fr, bg)
        for out in (two_pass, marched):
            assert (out.rgb - ref.rgb).abs().max() < 5e-3 and (out.opacity - ref.opacity).abs().max() < 5e-3
        torch.testing.assert_close(marched.weights.sum(), marched.opacity.sum(), rtol=1e-5, atol=1e-5)
        # the two-pass path evaluates every candidate once for density, then the survivors; marching less
        assert marched.ray_indices.numel() < ref.ray_indices.numel() + two_pass.ray_indices.numel()
        if window == 1:
            assert marched.ray_indices.numel() <= two_pass.ray_indices.numel() + o.shape[0]


def test_time_shift_c2w_interpolates_between_frames():
    """stage2.pose_offset_frames: the camera of frame f at time f + offset: whole offsets pick a neighbour
    (clamped at the clip's ends), half a frame lies halfway in rotation angle and translation."""
    import numpy as np

    from pipeline.stage2.data import time_shift_c2w

    ang = np.deg2rad([0.0, 10.0, 20.0, 20.0])
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 0], c2w[:, 0, 1], c2w[:, 1, 0], c2w[:, 1, 1] = np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)
    c2w[:, :3, 3] = [[0, 0, 0], [2, 0, 0], [4, 2, 0], [4, 2, 0]]
    assert np.array_equal(time_shift_c2w(c2w, 0.0), c2w)
    assert np.array_equal(time_shift_c2w(c2w, 1.0), c2w[[1, 2, 3, 3]])
    assert np.array_equal(time_shift_c2w(c2w, -1.0), c2w[[0, 0, 1, 2]])
    half = time_shift_c2w(c2w, 0.5)
    got = np.rad2deg(np.arctan2(half[:, 1, 0], half[:, 0, 0]))
    assert np.allclose(got, [5.0, 15.0, 20.0, 20.0], atol=1e-6)
    assert np.allclose(half[:, :3, 3], [[1, 0, 0], [3, 1, 0], [4, 2, 0], [4, 2, 0]])
    assert np.allclose(np.einsum("nij,nkj->nik", half[:, :3, :3], half[:, :3, :3]), np.eye(3), atol=1e-12)
