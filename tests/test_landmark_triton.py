"""Triton kNN kernel of the Gaussian landmark encoding: parity with the torch reference, and the fallback.

The CUDA tests skip where CUDA or Triton is missing (CPU-only machines, CI). The reference tests and the
fallback tests run everywhere. ``test_kernels_in_triton_interpreter`` runs the kernels on CPU through
``TRITON_INTERPRET=1`` where ``triton`` is installed but there is no GPU (a developer option, as for the
hash grid).
"""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch

from pipeline.stage2.nerf.kernels import hash_grid_triton as ET
from pipeline.stage2.nerf.kernels import landmark_triton as LT
from pipeline.stage2.nerf.field import GaussianLandmarkEncoding

from conftest import run_in_triton_interpreter

KERNELS_OK, KERNELS_WHY = ET.module_status(LT.KERNELS_MODULE)
needs_kernels = pytest.mark.skipif(not KERNELS_OK, reason=f"Triton kernels cannot run here: {KERNELS_WHY}")


def _inputs(n: int, b: int, m: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points and ``b`` frames of ``m`` landmarks in the head box; landmarks a bit denser than the points,
    as on a face."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lm = (torch.rand(b, m, 3, generator=gen) * 1.2 - 0.6).to(device)
    x = (torch.rand(n, 3, generator=gen) * 2 - 1).to(device)
    frame = torch.randint(0, b, (n,), generator=gen).to(device)
    return x, frame, lm


def _encoding(m: int, k: int, freqs: int, embed: int, out: int, seed: int, device: str) -> GaussianLandmarkEncoding:
    torch.manual_seed(seed)
    enc = GaussianLandmarkEncoding(m, k, 0.1, freqs, embed, out).to(device)
    with torch.no_grad():
        enc.lin.weight.normal_(0, 0.5)   # larger than the init, so that every input column matters
        enc.lin.bias.normal_(0, 0.2)
    return enc


def assert_same_neighbours(idx: torch.Tensor, x: torch.Tensor, frame: torch.Tensor, lm: torch.Tensor, k: int) -> None:
    """``idx`` holds each point's k nearest landmarks: the same set as float64 brute force, except where the
    k-th and (k+1)-th distances tie within float32 rounding."""
    d = ((x.double()[:, None] - lm.double()[frame]) ** 2).sum(-1)
    srt = d.sort(1).values
    exact = d.topk(k, 1, largest=False).indices.sort(1).values
    got = idx.sort(1).values
    tie = (srt[:, k] - srt[:, k - 1]) <= 1e-6 * srt[:, k]
    bad = ((got != exact).any(1) & ~tie).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} points with other neighbours, first {int(bad[0])}: {got[bad[0]]} vs {exact[bad[0]]}"


# ---------------------------------------------------------------- the reference (everywhere)

@pytest.mark.parametrize("k", [1, 4, 8])
def test_reference_knn_is_the_nearest_set_in_every_chunk(k):
    x, frame, lm = _inputs(5000, 3, 113, "cpu", seed=k)
    enc = _encoding(113, k, 2, 8, 32, 0, "cpu")
    enc.knn_chunk = 700            # several chunks, the last one partial
    assert_same_neighbours(enc.knn_reference(x, frame, lm), x, frame, lm, k)


def test_encoding_is_invariant_to_neighbour_order():
    """The kernels return the k neighbours unordered: the encoding must not depend on their order."""
    x, frame, lm = _inputs(300, 2, 40, "cpu", seed=3)
    enc = _encoding(40, 6, 2, 8, 32, 1, "cpu")
    ref = enc(x, frame, lm)
    perm = torch.randperm(6)
    orig = enc.knn_reference
    enc.knn_reference = lambda *a: orig(*a)[:, perm]   # type: ignore[method-assign]
    torch.testing.assert_close(enc(x, frame, lm), ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- fallback (everywhere)

def test_cpu_points_use_the_reference_silently():
    x, frame, lm = _inputs(200, 2, 30, "cpu", seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # the reference is the plan on a CPU: no warning
        assert LT.fast_knn(4, x, frame, lm) is None


def test_probe_reports_kernels_that_fail_and_raises_out_of_memory(monkeypatch):
    monkeypatch.setattr(LT, "_PROBED", {})
    enc = _encoding(30, 4, 1, 4, 16, 2, "cpu")

    class Failing:
        @staticmethod
        def knn(*a):
            raise RuntimeError("PTX .version 8.7 does not support .target sm_20\nmore")

    class OutOfMemory:
        @staticmethod
        def knn(*a):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    class Working:
        @staticmethod
        def knn(x, frame, lm, k):
            return enc.knn_reference(x, frame, lm)

    cpu = torch.device("cpu")
    why = LT.probe(4, 30, cpu, Failing)
    assert why is not None and "RuntimeError" in why and "sm_20" in why and "more" not in why
    assert LT.probe(4, 30, cpu, Working) == why      # cached per geometry and device
    assert LT.probe(5, 30, cpu, Working) is None     # another geometry is probed on its own
    monkeypatch.setattr(LT, "_PROBED", {})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        LT.probe(4, 30, cpu, OutOfMemory)
    assert LT.probe(4, 30, cpu, Working) is None


def test_backend_torch_never_asks_for_the_kernels():
    from pipeline.core.config import Stage2ModelConfig
    from pipeline.stage2.nerf.field import LandmarkField

    assert LandmarkField(Stage2ModelConfig(backend="torch", audio_dim=0)).landmark_enc.use_kernels is False
    assert LandmarkField(Stage2ModelConfig(backend="auto", audio_dim=0)).landmark_enc.use_kernels is True


# ---------------------------------------------------------------- CUDA parity

GEOMETRIES = [(113, 8, 2, 8, 32),     # the default field: lips_eyes_jaw_nose, k 8, 2 frequencies, 8 + 32 wide
              (40, 5, 1, 4, 24),      # k 5 (padded to 8 columns), output 24 (padded to 32)
              (20, 4, 0, 8, 16)]      # no frequencies


@needs_kernels
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_kernel_matches_the_reference(geom):
    m, k, freqs, embed, out = geom
    x, frame, lm = _inputs(200_003, 4, m, "cuda", seed=m)
    idx = LT.fast_knn(k, x, frame, lm)
    assert idx is not None and idx.shape == (len(x), k) and idx.dtype == torch.int64
    assert_same_neighbours(idx, x, frame, lm, k)
    from pipeline.stage2.nerf.kernels import landmark_triton_kernels as K
    assert_same_neighbours(K.knn(x, frame, lm, k, slots=False), x, frame, lm, k)   # the tile (k > 8) too


@needs_kernels
def test_training_and_inference_match_the_reference_kNN():
    x, frame, lm = _inputs(50_000, 4, 113, "cuda", seed=9)
    enc = _encoding(113, 8, 2, 8, 32, 6, "cuda")
    out = enc(x, frame, lm)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.use_kernels = False
    ref = enc(x, frame, lm)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, enc.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- interpreter (developer machines)

_INTERPRETER_CHECK = textwrap.dedent("""
    import torch
    from pipeline.stage2.nerf.kernels import landmark_triton_kernels as K
    from pipeline.stage2.nerf.field import GaussianLandmarkEncoding
    for i, (m, k) in enumerate([(113, 8), (40, 5), (20, 1), (30, 10)]):
        torch.manual_seed(i)
        enc = GaussianLandmarkEncoding(m, k, 0.1, 1, 4, 16, use_kernels=False)
        lm = torch.rand(3, m, 3) * 1.2 - 0.6
        x = torch.rand(333, 3) * 2 - 1
        frame = torch.randint(0, 3, (333,))
        ref = enc.knn_reference(x, frame, lm).sort(1).values
        for slots in (True, False):
            assert torch.equal(K.knn(x, frame, lm, k, slots=slots).sort(1).values, ref), (m, k, slots)
    print("interpreter parity ok")
""")


def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRETER_CHECK)
