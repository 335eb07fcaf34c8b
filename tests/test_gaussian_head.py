"""The Gaussian-splatting head (stage2.head: gaussians) on a real clip, CPU, tiny size, torch reference rasteriser:
config, backend choice, training, the render path's view of the trained head, resume after SIGTERM."""

from __future__ import annotations

import json
import math
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, profile_section
from pipeline.core.artifacts import STAGE2_HEAD, STAGE2_METRICS, STAGE2_OCCUPANCY
from pipeline.core.config import ConfigError, stage2_configs
from pipeline.stage2 import checkpoint as ckpt

CLIP = "talk_sadtalker_katiehill_en"   # 8 s, 200 frames (181 train / 19 test)
GAUSSIANS = {"head": "gaussians", "gaussians": {"count": 1500}, "frames_per_batch": 2}


def test_head_key_and_gaussian_section_are_validated():
    m, _ = stage2_configs({"head": "gaussians", "gaussians": {"count": 10, "backend": "torch"}})
    assert m.head == "gaussians" and m.gaussians.count == 10 and m.gaussians.backend == "torch"
    assert stage2_configs({})[0].head == "nerf"
    with pytest.raises(ConfigError, match="head"):
        stage2_configs({"head": "splats"})
    with pytest.raises(ConfigError, match="stage2.gaussians: unknown config keys"):
        stage2_configs({"gaussians": {"cnt": 10}})
    with pytest.raises(ConfigError, match="steps"):
        stage2_configs({"gaussians": {"steps": 0}})
    with pytest.raises(ConfigError, match="init_opacity"):
        stage2_configs({"gaussians": {"init_opacity": 1.5}})
    with pytest.raises(ConfigError, match="audio_region"):
        stage2_configs({"audio_region": -0.5})


def test_backend_falls_back_with_one_warning_or_refuses_at_full_size(caplog):
    from pipeline.stage2.gaussians.backend import GaussianBackendError, rasterizer
    from pipeline.stage2.gaussians.rasterize import rasterization

    with caplog.at_level(logging.WARNING, logger="pipeline.stage2.gaussians.backend"):
        fn, name = rasterizer("auto", "cpu", 96)
    assert fn is rasterization and name == "torch"
    assert len(caplog.records) == 1 and "pure-torch reference" in caplog.records[0].message
    assert rasterizer("torch", "cpu", 128)[1] == "torch"
    for backend, size in (("auto", 512), ("torch", 256), ("gsplat", 64)):
        if backend == "gsplat" and torch.cuda.is_available():
            continue
        with pytest.raises(GaussianBackendError, match="pip install gsplat==1.5.3"):
            rasterizer(backend, "cpu", size)


def test_density_control_clones_splits_prunes_and_carries_adam_state():
    from pipeline.core.config import GaussianConfig, Stage2ModelConfig
    from pipeline.stage2.gaussians.density import PER_GAUSSIAN, DensityControl
    from pipeline.stage2.gaussians.model import GaussianHead

    g = GaussianConfig(count=4, densify_grad=1.0, split_scale=0.05, prune_opacity=0.05, max_count=10)
    head = GaussianHead(Stage2ModelConfig(gaussians=g, audio_dim=0), 4, torch.zeros(478, 3), None)
    with torch.no_grad():
        head.means.copy_(torch.arange(12.0).view(4, 3) / 10)
        head.log_scales.copy_(torch.log(torch.tensor([[0.01] * 3, [0.2] * 3, [0.01] * 3, [0.01] * 3])))
        head.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.01])))
    opt = torch.optim.Adam([{"params": [getattr(head, k)]} for k in PER_GAUSSIAN])
    sum(getattr(head, k).sum() for k in PER_GAUSSIAN).backward()
    opt.step()
    dc = DensityControl(g, 4, torch.device("cpu"))
    dc.grad_sum, dc.seen = torch.tensor([3.0, 3.0, 0.5, 3.0]), torch.tensor([1.0, 1.0, 1.0, 1.0])
    before, log_scale = head.means.detach().clone(), head.log_scales[1].detach().clone()
    counts = dc.step(head, opt, torch.Generator().manual_seed(0))
    # 0 small, high gradient: cloned; 1 large: split; 2 low gradient: kept; 3 transparent: pruned (its clone too)
    assert counts == {"cloned": 2, "split": 1, "pruned": 2, "n": 5}
    assert head.n == 5 and all(getattr(head, k).shape[0] == 5 for k in PER_GAUSSIAN)
    means = head.means.detach()
    assert torch.equal(means[0], before[0]) and torch.equal(means[2], before[2])
    assert torch.allclose((means[1] + means[4]) / 2, before[1]), "a split keeps its pair centred on the original"
    assert torch.allclose(head.log_scales[[1, 4]], (log_scale - math.log(1.6)).expand(2, 3))
    assert torch.equal(means[3], before[0]), "the clone of Gaussian 0 follows the survivors"
    for k in PER_GAUSSIAN:
        p = getattr(head, k)
        assert any(grp["params"][0] is p for grp in opt.param_groups)
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg"][:3].abs().sum() > 0 and st["exp_avg"][3:].abs().sum() == 0
    assert dc.grad_sum.shape == (5,) and dc.seen.sum() == 0
    dc.grad_sum, dc.seen = torch.full((5,), 3.0), torch.ones(5)        # all grow, room for one: the largest
    dc.grad_sum[2] = 4.0
    dc.cfg = GaussianConfig(count=4, densify_grad=1.0, split_scale=0.05, prune_opacity=0.05, max_count=6)
    assert dc.step(head, opt, torch.Generator().manual_seed(0)) == {"cloned": 1, "split": 0, "pruned": 0, "n": 6}
    assert torch.equal(head.means[5], head.means[2])


def test_deform_caches_the_static_parts_until_the_gaussians_change():
    """At render time (no grad) the skinning weights, gates and the first layer's per-Gaussian part are computed
    once; the result equals the network on the whole concatenated input, and an update of the Gaussians (an
    optimiser step, a load) is seen at the next call."""
    from pipeline.core.config import GaussianConfig, Stage2ModelConfig
    from pipeline.stage2.gaussians.model import GaussianHead

    torch.manual_seed(0)
    cfg = Stage2ModelConfig(gaussians=GaussianConfig(count=64, hidden_dim=16), audio_dim=8, audio_window=4,
                            landmark_subset="lips")
    rest = torch.randn(478, 3) * 0.3
    head = GaussianHead(cfg, 64, rest, audio_in_dim=5)
    with torch.no_grad():
        head.means.copy_(torch.randn(64, 3) * 0.3)
        for p in head.deform_net.parameters():
            p.normal_(0, 0.3)
    lm, aud, au = rest[None] + 0.02 * torch.randn(3, 478, 3), torch.randn(3, 4, 5), torch.tensor([0.0, 2.0, 4.0])
    with torch.enable_grad():
        ref = head.deform(lm, aud, au)              # with grad: nothing cached, computed as in training

    def whole_input_first_layer():              # the unsplit network on [features, mean, per-frame inputs]
        lin, s = head.deform_net[0], head.features.shape[1] + 3
        return torch.addmm(lin.bias, torch.cat([head.features, head.means], 1), lin.weight[:, :s].T)

    with torch.no_grad():
        assert torch.allclose(head._static_input(), whole_input_first_layer())
        first, again = head.deform(lm, aud, au), head.deform(lm, aud, au)
        assert set(head._cache) == {"skin", "static", "audio_gate", "eye_gate"}
        for k in ref:
            assert torch.allclose(first[k], ref[k], atol=1e-6) and torch.equal(first[k], again[k])
        head.means.add_(0.05)                       # in place, as Adam's step
        moved = head.deform(lm, aud, au)
    with torch.enable_grad():
        fresh = head.deform(lm, aud, au)
    for k in ref:
        assert torch.allclose(moved[k], fresh[k], atol=1e-6)
    assert not torch.allclose(moved["means"], first["means"])


@pytest.fixture(scope="module")
def subject(processed) -> Path:
    processed.stage2(CLIP)      # the frame cache at the tiny size (and the session's NeRF head)
    return processed.dir(CLIP)


def _config(**over) -> dict:
    return {**profile_section("stage2"), **GAUSSIANS, **over}


@pytest.fixture(scope="module")
def trained(subject, tmp_path_factory) -> Path:
    from pipeline.stage2 import train

    out = tmp_path_factory.mktemp("gaussian_head")
    mcfg, tcfg = stage2_configs(_config(steps=60, eval_max_frames=6, log_every=10))
    train.run(subject, out, mcfg, tcfg)
    return out


def test_gaussian_head_learns_the_held_out_head(trained, subject):
    m = STAGE2_METRICS.read(trained / "metrics.json")
    print(f"\n{CLIP} tiny, Gaussian head: test head PSNR {m['psnr_head']:.2f} dB vs plate {m['psnr_head_baseline']:.2f}"
          f" dB, SSIM {m['ssim_head']:.3f}, {m['steps']} steps in {m['train_seconds']:.0f} s")
    assert m["head"] == "gaussians" and m["rasterizer"] == "torch" and m["gaussians"] == 1500
    assert m["psnr_head"] >= m["psnr_head_baseline"] + 3.0
    assert m["psnr_head_train"] > m["psnr_head_baseline"] + 3.0
    curve = m["curve"]
    assert curve[-1]["step"] == 60 and max(c["psnr"] for c in curve) > curve[0]["psnr"] + 1.0
    assert min(c["visible"] for c in curve) > 0.9, "the Gaussians start in the hull and stay in the image"
    meta = STAGE2_HEAD.read(trained / "head.json")
    assert meta["model_config"]["head"] == "gaussians" and meta["model_config"]["gaussians"]["count"] == 1500
    occ = STAGE2_OCCUPANCY.read(trained / "occupancy.npz")
    assert 0 < occ["binary"].mean() < 0.5 and occ["density"].sum() > 0
    state = torch.load(trained / "head.pt", weights_only=True)
    assert state["means"].shape == (1500, 3) and state["means"].abs().max() <= 1.5


def test_render_path_draws_the_head_training_drew(trained, subject):
    """load_head() gives the render stage's view of the trained head; fed the frame in centimetres as the render
    stage does (tracked camera, landmarks), it draws what the trainer draws from head-space tensors."""
    from pipeline.render.head import GaussianHeadView, load_head
    from pipeline.stage2.data import SubjectData
    from pipeline.stage2.gaussians.model import intrinsics, viewmats_from_c2w

    mcfg, tcfg = stage2_configs(_config())
    data = SubjectData(subject, tcfg.head_radius, mcfg.bound, "cpu", mcfg.landmark_motion)
    view = load_head(trained)
    assert isinstance(view, GaussianHeadView) and view.num_samples == 0
    f = int(data.test_ids[len(data.test_ids) // 2])
    space, cam = data.head_space, data.camera
    lm_cm = data.landmarks[f:f + 1].numpy().astype(np.float64) / space.scale + np.array(space.center_cm)
    c2w_cm = data.c2w[f:f + 1].numpy().astype(np.float64)
    c2w_cm[:, :3, 3] = c2w_cm[:, :3, 3] / space.scale + np.array(space.center_cm)
    audio, au45 = data.audio[f:f + 1].numpy(), data.au45[f:f + 1].numpy()
    pre, alpha = view.render(c2w_cm, lm_cm, audio, au45, cam.focal, cam.cx, cam.cy, data.size, data.size)
    with torch.no_grad():
        gs = view.head.deform(*data.conditioning(np.array([f])))
        ref_pre, ref_alpha = view.head.render(gs, viewmats_from_c2w(data.c2w[f:f + 1]),
                                              intrinsics(cam.focal, cam.cx, cam.cy, "cpu"), data.size, view.rasterize)
    assert pre.shape == (1, 3, data.size, data.size) and alpha.shape == (1, 1, data.size, data.size)
    assert torch.allclose(pre, ref_pre.clamp(0, 1), atol=1e-4)
    assert torch.allclose(alpha, ref_alpha.clamp(0, 1), atol=1e-4)
    head = np.asarray(data.labels[f]) >= 3
    a = alpha[0, 0].numpy()
    print(f"\nGaussian head alpha: {a[head].mean():.3f} on the head, {a[~head].mean():.3f} elsewhere")
    assert a[head].mean() > 0.8 and a[~head].mean() < a[head].mean() - 0.3, "opaque on the head, not around it"


def test_audio_region_keeps_the_audio_at_the_mouth(trained, subject):
    """``stage2.audio_region``: the trained head's weights, two frames' audio windows under the same landmarks
    and AU45. With the audio everywhere (the trained default) Gaussians far from the mouth move with the audio;
    with a mouth window they stay put while the ones at the mouth still follow it."""
    from pipeline.stage2.data import SubjectData
    from pipeline.stage2.gaussians.trainer import build_head
    from pipeline.stage2.regions import mouth_region, mouth_window

    state = torch.load(trained / "head.pt", weights_only=True)
    _, tcfg = stage2_configs(_config())
    changes = {}
    for region in (0.0, 0.5):
        mcfg, _ = stage2_configs(_config(audio_region=region))
        data = SubjectData(subject, tcfg.head_radius, mcfg.bound, "cpu", mcfg.landmark_motion)
        head = build_head(data, mcfg, torch.device("cpu"))
        head.load_state_dict(state)
        f, g = int(data.test_ids[0]), int(data.test_ids[-1])
        lm, audio, au45 = data.conditioning(np.array([f, g]))
        with torch.no_grad():
            gs = head.deform(lm[[0, 0]], audio, au45[[0, 0]])
            window = mouth_window(head.means, mouth_region(lm[:1], 0.5))[:, 0]
        changes[region] = sum((gs[k][0] - gs[k][1]).abs().reshape(head.n, -1).sum(-1) for k in gs)
    far, near = window < 1e-6, window > 0.5
    print(f"\naudio change of far / near Gaussians ({int(far.sum())} / {int(near.sum())}): everywhere "
          f"{float(changes[0.0][far].mean()):.2e} / {float(changes[0.0][near].mean()):.2e}, mouth window "
          f"{float(changes[0.5][far].mean()):.2e} / {float(changes[0.5][near].mean()):.2e}")
    assert far.sum() > 100 and near.sum() > 5
    assert float(changes[0.0][far].mean()) > 0 and float(changes[0.5][near].mean()) > 0
    assert float(changes[0.5][far].max()) < 1e-3 * float(changes[0.0][far].mean())


def test_sigterm_then_resume_equals_an_uninterrupted_run(subject, tmp_path):
    # density control every 3 steps: the checkpoint holds another number of Gaussians than the start; the head's
    # own step count (16) caps the loop's 20
    cfg = _config(steps=20, checkpoint_every=4, deterministic=True, eval_max_frames=1, strip_frames=1, log_every=4,
                  threads=1, gaussians={"count": 400, "steps": 16, "densify_every": 3, "densify_from": 0.0,
                                        "densify_until": 0.9})
    cmd = lambda out: [sys.executable, "-m", "pipeline.stage2.train", "--subject-dir", str(subject),  # noqa: E731
                       "--outdir", str(out), "--config", json.dumps(cfg)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "cut"
    ck = out / "checkpoint.pt"
    with open(tmp_path / "1.log", "w") as log1:
        p = subprocess.Popen(cmd(out), cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)
        while not ck.exists():
            assert p.poll() is None, (tmp_path / "1.log").read_text()[-2000:]
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == ckpt.EXIT_INTERRUPTED
    step = int(ckpt.load(ck)["step"])
    assert 4 <= step < 16 and not (out / "head.pt").exists()
    final = subprocess.run(cmd(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resumed from {ck} at step {step}" in final.stderr
    a, b = (torch.load(d / "head.pt", weights_only=True) for d in (tmp_path / "ref", out))
    assert a["means"].shape[0] != 400, "density control did not change the number of Gaussians"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    m_ref, m_cut = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", out))
    assert m_cut["resumed_from"] == step and m_cut["psnr_head"] == m_ref["psnr_head"]
    assert m_ref["steps"] == m_cut["steps"] == 16
