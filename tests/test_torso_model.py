"""The torso network's contracts on synthetic inputs (CPU, seconds): an untrained net is the mean torso; the crop's
smeared padding is rebuilt from the last real row/column; a held pose gives the same frame, another pose another;
the optional head-alpha input is required when configured; the loss ignores head pixels."""

from __future__ import annotations

import pytest
import torch

from pipeline.torso.model import TorsoNet, smear_index


def _net(valid_box=None, head_input=False, out=32) -> TorsoNet:
    torch.manual_seed(0)
    mean = torch.rand(4, 16, 16)
    texture = torch.rand(4, out, out) * 0.8 + 0.1
    return TorsoNet(mean, texture, base_channels=4, depth=2, style_dim=8, feature_channels=2, refine_channels=4,
                    valid_box=valid_box, head_input=head_input)


def _perturb(net: TorsoNet) -> None:
    """Give the zero-initialised output convs and FiLM layers weights, so that the pose reaches the output."""
    with torch.no_grad():
        for layer in (net.out, net.refine[-1], *(m.film for m in net.modules() if hasattr(m, "film"))):
            layer.weight.normal_(0, 0.1)


def test_untrained_net_is_the_texture():
    net = _net()
    rgb, a = net(torch.randn(3, 6))
    tex = torch.sigmoid(net.texture)
    assert torch.allclose(rgb, tex[:3].expand(3, -1, -1, -1), atol=1e-5)
    assert torch.allclose(a, tex[3:].expand(3, -1, -1, -1), atol=1e-5)


def test_smear_index_copies_the_last_real_row_and_column():
    rows, cols = smear_index(10, (0.0, 0.0, 7.4, 6.6))
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]
    assert cols.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]
    rows, _ = smear_index(10, (0.0, 2.2, 10.0, 10.0))              # padding on top
    assert rows.tolist() == [3, 3, 3, 3, 4, 5, 6, 7, 8, 9]
    net = _net(valid_box=(0.0, 0.0, 28.0, 24.5))
    _perturb(net)
    rgb, a = net(torch.randn(2, 6))
    assert torch.equal(rgb[:, :, 24:], rgb[:, :, 24:25].expand(-1, -1, 8, -1))
    assert torch.equal(a[:, :, :, 28:], a[:, :, :, 28:29].expand(-1, -1, -1, 4))
    assert not torch.equal(rgb[:, :, 23], rgb[:, :, 24])          # the real part is the network's own


def test_held_pose_does_not_flicker_and_a_new_pose_moves_the_torso():
    net = _net().eval()
    _perturb(net)
    pose = torch.randn(1, 6)
    with torch.no_grad():
        still = net(pose.expand(5, -1))[0]
        moved = net(pose + torch.tensor([[0, 0, 0, 1.0, 0, 0]]))[0]
    # the same pose gives the same torso in every frame of a batch, to float32 rounding (CPU convolutions may
    # block a batch so that its rows round differently: 1.5e-6 measured with torch 2.13), far below one 8-bit level
    assert (still - still[:1]).abs().max() < 1e-5
    assert (moved - still[:1]).abs().mean() > 1e-3


def test_head_input_is_required_when_configured():
    net = _net(head_input=True)
    _perturb(net)
    with pytest.raises(ValueError, match="head"):
        net(torch.randn(1, 6))
    head = torch.zeros(2, 1, 64, 64)
    head[1, :, 20:40, 20:40] = 1
    rgb, _ = net(torch.zeros(2, 6), head)                          # any size; resampled to the U-Net's
    assert (rgb[0] - rgb[1]).abs().mean() > 1e-4


def test_loss_ignores_head_pixels():
    from pipeline.torso.train import loss_terms

    net = _net()
    x, a = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float()
    bg = torch.rand(1, 3, 32, 32)
    labels = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    labels[..., :16, :] = 3                                        # the top half is head
    base = loss_terms(net, torch.zeros(1, 6), x, a, labels, bg)
    x2, a2 = x.clone(), a.clone()
    x2[..., :16, :], a2[..., :16, :] = 1 - x2[..., :16, :], 1 - a2[..., :16, :]
    same = loss_terms(net, torch.zeros(1, 6), x2, a2, labels, bg)
    assert all(torch.allclose(u, v) for u, v in zip(base, same))
    x2[..., 20, :] = 1 - x2[..., 20, :]
    assert loss_terms(net, torch.zeros(1, 6), x2, a2, labels, bg, "l1")[0] > base[0] + 1e-4
