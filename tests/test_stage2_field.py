"""The landmark-conditioned head field on synthetic data (CPU): the Gaussian landmark encoding's k-NN, the
conditioning API (landmarks, audio window, AU45) and the mouth window of ``stage2.audio_region``."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import ConfigError, Stage2ModelConfig
from pipeline.stage2.nerf.field import GaussianLandmarkEncoding, LandmarkField


def test_landmark_encoding_knn_locality_and_chunking():
    gen = torch.Generator().manual_seed(7)
    lm = torch.rand(3, 20, 3, generator=gen) * 2 - 1               # 3 frames, 20 landmarks
    x = torch.rand(500, 3, generator=gen) * 2 - 1
    frame = torch.randint(0, 3, (500,), generator=gen)
    enc = GaussianLandmarkEncoding(20, k=4, sigma=0.2, n_freqs=2, embed_dim=4, out_dim=8)
    idx = enc.knn(x, frame, lm)
    brute = torch.cdist(x[:, None, :], lm[frame]).squeeze(1).topk(4, largest=False).indices
    assert torch.equal(torch.sort(idx, 1).values, torch.sort(brute, 1).values)
    out = enc(x, frame, lm)
    small = GaussianLandmarkEncoding(20, k=4, sigma=0.2, n_freqs=2, embed_dim=4, out_dim=8, knn_chunk=7)
    small.load_state_dict(enc.state_dict())
    torch.testing.assert_close(small(x, frame, lm), out)
    far = enc(torch.full((5, 3), 9.0), torch.zeros(5, dtype=torch.int64), lm)
    assert far.abs().max() < 1e-12                                    # no landmark near: no signal
    lm_g = lm.clone().requires_grad_(True)
    enc(x, frame, lm_g).sum().backward()
    assert lm_g.grad.abs().sum() > 0                                  # differentiable w.r.t. landmarks


def _small_cfg(**kw) -> Stage2ModelConfig:
    base = dict(levels=8, features_per_level=2, log2_hashmap_size=14, base_resolution=4, finest_resolution=64,
                hidden_dim=32, num_layers=2, geo_feat_dim=7, hidden_dim_color=32, num_layers_color=2,
                audio_dim=0, use_au45=False, backend="torch", use_landmarks=False)
    base.update(kw)
    return Stage2ModelConfig(**base)


def test_field_conditioning_api_and_errors():
    cfg = _small_cfg(use_landmarks=True, audio_dim=8, audio_window=16, use_au45=True, view_dependent=True)
    torch.manual_seed(8)
    field = LandmarkField(cfg, audio_in_dim=20)
    lm = torch.rand(2, 478, 3) - 0.5
    audio = torch.randn(2, 16, 20)
    ctx = field.prepare(lm, audio, torch.tensor([0.0, 5.0]))
    assert ctx.landmarks.shape == (2, 113, 3) and ctx.audio.shape == (2, 8) and ctx.n_frames == 2
    x = torch.rand(300, 3) * 1.6 - 0.8
    d = torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    fr = torch.randint(0, 2, (300,))
    sigma, rgb = field(x, d, fr, ctx)
    assert sigma.shape == (300,) and rgb.shape == (300, 3)
    assert (sigma >= 0).all() and ((rgb > 0) & (rgb < 1)).all()
    torch.testing.assert_close(field.density(x, fr, ctx), sigma)
    (sigma.sum() + rgb.sum()).backward()
    for name in ("encoding.impl.table", "landmark_enc.lin.weight", "audio_att.proj.0.weight", "eye_gate.weight"):
        assert dict(field.named_parameters())[name].grad.abs().sum() > 0, name
    with torch.no_grad():                   # every conditioning input changes the output
        ctx2 = field.prepare(lm, audio.flip(0), torch.tensor([0.0, 5.0]))
        assert not torch.allclose(field.density(x, fr, ctx2), field.density(x, fr, ctx))
        ctx3 = field.prepare(lm, audio, torch.tensor([5.0, 0.0]))
        assert not torch.allclose(field.density(x, fr, ctx3), field.density(x, fr, ctx))
    with pytest.raises(ValueError, match="landmark-conditioned"):
        field.prepare(None, audio, torch.zeros(2))
    with pytest.raises(ValueError, match="audio window"):
        field.prepare(lm, audio[:, :8], torch.zeros(2))
    with pytest.raises(ValueError, match="disagree"):
        field.prepare(lm, audio[:1], torch.zeros(2))
    with pytest.raises(ConfigError, match="stage2.grid"):
        Stage2ModelConfig(grid="octree")
    tri = LandmarkField(_small_cfg(grid="triplane"))
    assert tri.encoding.output_dim == 3 * 16


def test_field_audio_region_keeps_the_audio_at_the_mouth():
    """``stage2.audio_region``: the audio code reaches the field only in a Gaussian window around the frame's mouth
    (``regions.mouth_region``), so far from it a change of audio changes nothing; at the mouth it still does."""
    from pipeline.stage2.regions import LIPS, MOUTH_CORNERS, mouth_region, mouth_window

    cfg = _small_cfg(use_landmarks=True, audio_dim=8, audio_window=16, audio_region=0.5)
    torch.manual_seed(3)
    field = LandmarkField(cfg, audio_in_dim=20)
    lm = (torch.rand(2, 478, 3) - 0.5) * 0.6
    lm[:, list(LIPS)] = lm[:, list(LIPS)] * 0.3 + torch.tensor([0.0, -0.3, 0.2])     # a small mouth below
    lm[:, MOUTH_CORNERS[0], 0], lm[:, MOUTH_CORNERS[1], 0] = -0.1, 0.1
    audio = torch.randn(2, 16, 20)
    x = torch.rand(4000, 3) * 1.6 - 0.8
    fr = torch.zeros(4000, dtype=torch.int64)
    with torch.no_grad():
        ctx = field.prepare(lm, audio)
        window = mouth_window(x, mouth_region(lm[:1], 0.5))[:, 0]
        density = field.density(x, fr, ctx)
        change = (density - field.density(x, fr, field.prepare(lm, audio.flip(0)))).abs()
    far, near = window < 1e-8, window > 0.5
    assert ctx.mouth.shape == (2, 4) and far.sum() > 1000 and near.sum() > 5
    # far away the audio enters times < 1e-8: what is left is float32 rounding of the density (a few ulps)
    ulps = 4 * torch.finfo(torch.float32).eps * float(density[far].abs().max())
    assert float(change[far].max()) <= max(1e-5 * float(change[near].mean()), ulps)
    assert float(change[near].mean()) > 0
    assert field.prepare(lm, audio).mouth is not None and LandmarkField(_small_cfg(
        use_landmarks=True, audio_dim=8, audio_window=16), audio_in_dim=20).prepare(lm, audio).mouth is None
