"""Stage 2's dense near-surface path (nerf/marching.py, VolumeRenderer(samples_per_ray=k)) and the field's gathers
whose backwards avoid index_add_ contention (field.frame_rows, field.gather_columns); CPU, synthetic data."""

from __future__ import annotations

import torch

from pipeline.stage2.nerf.field import frame_rows, gather_columns
from pipeline.stage2.nerf.marching import first_occupied
from pipeline.stage2.nerf.occupancy import OccupancyGrid
from pipeline.stage2.nerf.renderer import VolumeRenderer, camera_rays, pixel_centers
from test_stage2_core import BlobField


def test_first_occupied_keeps_the_first_k_candidates_in_depth_order():
    t = torch.arange(10.0).expand(3, 10)
    delta = torch.full((3, 10), 0.5)
    keep = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 1, 0], [0] * 10, [1] * 10], dtype=torch.bool)
    t_k, d_k, n = first_occupied(t, delta, keep, torch.tensor([9.5, 9.5, 9.5]), 4)
    assert t_k[0].tolist() == [1, 2, 4, 5] and t_k[2].tolist() == [0, 1, 2, 3] and n.tolist() == [4, 0, 4]
    assert t_k[1].tolist() == [9.5] * 4 and d_k[1].tolist() == [0] * 4        # no candidate: empty slots
    t_k, d_k, n = first_occupied(t, delta, keep, torch.tensor([9.5, 9.5, 9.5]), 8)
    assert t_k[0, :6].tolist() == [1, 2, 4, 5, 6, 8] and d_k[0].tolist() == [0.5] * 6 + [0, 0] and n[0] == 6


def test_dense_path_equals_the_packed_one_when_k_holds_every_sample():
    """samples_per_ray >= the occupied candidates of every ray: the same samples, the same image and gradients."""
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = BlobField()
    occ = OccupancyGrid(aabb, resolution=32, threshold=5.0, warmup_updates=0)   # the config's threshold
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        occ.update(lambda x: field.density(x, None, None), generator=gen)
    packed = VolumeRenderer(aabb, num_samples=96, occupancy=occ)
    dense = VolumeRenderer(aabb, num_samples=96, occupancy=occ, samples_per_ray=96)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.0, 2.5])
    o, d = camera_rays(c2w, pixel_centers(24, 24), 22.0, 12.0, 12.0)
    fr = torch.zeros(o.shape[0], dtype=torch.int64)
    bg = torch.tensor([0.2, 0.3, 0.4])
    a = packed.render(field, None, o, d, fr, bg, stratified=True, generator=torch.Generator().manual_seed(1))
    b = dense.render(field, None, o, d, fr, bg, stratified=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b.rgb, a.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.opacity, a.opacity, atol=1e-5, rtol=0)
    assert int(b.n_candidates) == a.ray_indices.numel() and a.opacity.max() > 0.9
    with torch.no_grad():                                             # rendering: only rays with samples
        c = dense.render(field, None, o, d, fr, bg)
    torch.testing.assert_close(c.rgb, packed.render(field, None, o, d, fr, bg).rgb, atol=1e-5, rtol=0)


class SolidField(BlobField):
    """An opaque ball (radius 0.35, density 200 inside, a soft edge): a surface, as a trained head is."""

    def density(self, x, frame, ctx):
        return 200.0 * torch.sigmoid((0.35 - x.norm(dim=-1)) * 60.0)


def test_few_samples_a_ray_render_an_opaque_surface():
    """The first k occupied candidates: where the surface stops the rays within them, the image is the full one."""
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = SolidField()
    occ = OccupancyGrid(aabb, resolution=32, threshold=5.0, warmup_updates=0)
    gen = torch.Generator().manual_seed(6)
    for _ in range(4):
        occ.update(lambda x: field.density(x, None, None), generator=gen)
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.0, 0.0, 2.5])
    o, d = camera_rays(c2w, pixel_centers(24, 24), 22.0, 12.0, 12.0)
    fr = torch.zeros(o.shape[0], dtype=torch.int64)
    bg = torch.tensor([0.2, 0.3, 0.4])
    full = VolumeRenderer(aabb, num_samples=128, occupancy=occ).render(field, None, o, d, fr, bg)
    few = VolumeRenderer(aabb, num_samples=128, occupancy=occ, samples_per_ray=24).render(field, None, o, d, fr, bg)
    assert torch.bincount(full.ray_indices).max() > 24 and full.opacity.max() > 0.99   # k cuts real samples
    assert few.weights.numel() == o.shape[0] * 24 and (few.rgb - full.rgb).abs().max() < 0.02
    # k spanning too short a stretch (16 of 192: 1/12 of the chord) misses the surface on grazing rays, whose
    # path through the occupied cells around the silhouette is long; the rays inside the outline stay right
    short = VolumeRenderer(aabb, num_samples=192, occupancy=occ, samples_per_ray=16).render(field, None, o, d, fr, bg)
    err = (short.rgb - full.rgb).abs().amax(1)
    assert err.max() > 0.1 and err[full.opacity > 0.99].max() < 0.1


def _same_as_index_select(fast, dim: int, table: torch.Tensor, idx: torch.Tensor, upstream: torch.Tensor) -> None:
    """``fast(table, idx)`` equals ``table.index_select(dim, idx)``, and so does the table's gradient."""
    table = table.requires_grad_(True)
    ref = table.detach().clone().requires_grad_(True)
    (fast(table, idx) * upstream).sum().backward()
    (ref.index_select(dim, idx) * upstream).sum().backward()
    torch.testing.assert_close(fast(table, idx), ref.index_select(dim, idx))
    torch.testing.assert_close(table.grad, ref.grad, rtol=1e-5, atol=1e-4)


def test_gathers_with_matrix_and_histogram_backwards_match_index_select():
    """field.gather_columns (bincount backward) and field.frame_rows (one-hot product) against index_select."""
    gen = torch.Generator().manual_seed(8)
    _same_as_index_select(gather_columns, 1, torch.randn(5, 13, generator=gen),
                          torch.randint(0, 13, (4000,), generator=gen), torch.randn(5, 4000, generator=gen))
    _same_as_index_select(frame_rows, 0, torch.randn(4, 6, generator=gen),
                          torch.randint(0, 4, (3000,), generator=gen), torch.randn(3000, 6, generator=gen))
