"""The Gaussian-splatting head (stage2.head: gaussians) on a real clip, CPU, tiny size, torch reference rasteriser:
config, backend choice, training, the render path's view of the trained head, resume after SIGTERM."""

from __future__ import annotations

import json
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
    with pytest.raises(ConfigError, match="init_opacity"):
        stage2_configs({"gaussians": {"init_opacity": 1.5}})


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
    assert a[head].mean() > 0.8 and a[~head].mean() < a[head].mean() - 0.3, "opaque on the head, not around it"


def test_sigterm_then_resume_equals_an_uninterrupted_run(subject, tmp_path):
    cfg = _config(steps=16, checkpoint_every=4, deterministic=True, eval_max_frames=1, strip_frames=1, log_every=4,
                  threads=1, gaussians={"count": 400})
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
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    m_ref, m_cut = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", out))
    assert m_cut["resumed_from"] == step and m_cut["psnr_head"] == m_ref["psnr_head"]
