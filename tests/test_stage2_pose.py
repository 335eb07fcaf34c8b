"""Per-frame pose refinement of stage-2 training (pipeline/stage2/pose.py): units, no media."""

from __future__ import annotations

import torch

from pipeline.stage2.pose import PoseRefinement, so3_exp


def test_so3_exp_matches_the_matrix_exponential_and_is_a_rotation():
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(64, 3, generator=g) * s for s in (1e-6, 1e-3, 0.3, 2.0)]).double()
    rot = so3_exp(w)
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    torch.testing.assert_close(rot, torch.linalg.matrix_exp(skew), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=w.dtype).expand_as(rot))
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(w), dtype=w.dtype))
    # the gradient at 0 exists and is finite (training starts there)
    w0 = torch.zeros(2, 3, requires_grad=True)
    so3_exp(w0)[:, 0, 1].sum().backward()
    assert torch.isfinite(w0.grad).all() and w0.grad.abs().sum() > 0


def test_refinement_starts_as_the_identity_and_stays_mean_free():
    pose = PoseRefinement(10, train_ids=torch.arange(8))
    o, d = torch.randn(50, 3), torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    frames, frame = torch.tensor([2, 5, 9]), torch.randint(0, 3, (50,))
    o2, d2 = pose(frames, frame, o, d)
    assert torch.equal(o2, o) and torch.equal(d2, d)
    with torch.no_grad():
        pose.delta.normal_(0, 0.01)
        pose.delta[:8] += torch.tensor([0.1, -0.2, 0.05, 0.3, 0.0, -0.1])   # a common motion of all train frames
    rot, t = pose.corrections(torch.arange(8))
    w = pose.delta[:8] - pose.delta[:8].mean(0)
    torch.testing.assert_close(t, w[:, 3:])
    torch.testing.assert_close(t.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    o2, d2 = pose(frames, frame, o, d)
    torch.testing.assert_close(d2.norm(dim=-1), torch.ones(50))            # rigid: directions stay unit
    same = frame == frame[0]                                              # rigid: distances within a frame kept
    torch.testing.assert_close(torch.cdist(o2[same], o2[same]), torch.cdist(o[same], o[same]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(o2, o)
    s = pose.summary()
    assert 0 < s["rot_rms_deg"] <= s["rot_max_deg"] < 5 and 0 < s["trans_rms"] <= s["trans_max"] < 0.1


def test_rays_move_the_way_the_gradient_says():
    """A frame's correction is learnable: fitting rays to a rotated copy recovers the rotation."""
    torch.manual_seed(1)
    pose = PoseRefinement(3, train_ids=torch.arange(3))
    o = torch.randn(300, 3)
    frame = torch.arange(300) % 3
    target_w = torch.tensor([[0.02, 0.0, 0.0], [0.0, -0.03, 0.0], [-0.02, 0.03, 0.0]])   # mean-free already
    target = (so3_exp(target_w)[frame] @ o[:, :, None])[:, :, 0]
    opt = torch.optim.Adam(pose.parameters(), lr=3e-3)
    for _ in range(400):
        opt.zero_grad()
        o2, _ = pose(torch.arange(3), frame, o, o)
        ((o2 - target) ** 2).mean().backward()
        opt.step()
    rot, t = pose.corrections(torch.arange(3))
    torch.testing.assert_close(rot, so3_exp(target_w), atol=2e-3, rtol=0)
    assert t.abs().max() < 2e-3
