"""Triton kNN kernel of the Gaussian landmark encoding (imported only by ``landmark_triton``, when needed).

This module imports ``triton`` at the top: import it lazily, as ``landmark_triton`` does.

``knn(x, frame, landmarks, k)``: each point's ``k`` nearest landmarks of its own frame
(``pipeline.stage2.nerf.field.GaussianLandmarkEncoding.knn_reference`` is the reference), by the squared distance
``dx^2 + dy^2 + dz^2`` computed directly, as the reference does (no ``|a|^2 + |b|^2 - 2ab`` cancellation).
One program holds ``BLOCK`` points and streams the frame's ``M`` landmarks once, keeping the best ``k``:

* ``k <= 8`` (``_knn_slots``, the default ``landmark_k`` is 8): eight sorted registers per point and one
  insertion (eight compare-swaps) per landmark; slots ``k..7`` hold -inf and never change. Every point's
  work stays in its own thread.
* ``k > 8`` (``_knn_tile``): a ``[BLOCK, KP]`` tile (``KP`` the next power of two, padding columns -inf)
  where a landmark closer than the row's worst replaces it; the row max and argmax are reductions across
  threads, so this is ~2.4x slower (BENCHMARKS.md).

``M`` (the number of landmarks) is a compile-time constant: one compiled kernel per landmark subset.

The ``k`` indices come back in no particular order (the encoding sums over its neighbours). Where two
landmarks are exactly equally far, the lower index stays. The kernel also runs under the Triton
interpreter (``TRITON_INTERPRET=1``) on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_KNN = 128
NUM_WARPS = 4


@triton.jit
def _dist2(x0, x1, x2, lm_base, m, mask):
    """Squared distance of each point to landmark ``m`` of its frame, computed directly."""
    p = lm_base + m * 3
    dx = x0 - tl.load(p, mask=mask, other=0.0)
    dy = x1 - tl.load(p + 1, mask=mask, other=0.0)
    dz = x2 - tl.load(p + 2, mask=mask, other=0.0)
    return dx * dx + dy * dy + dz * dz


@triton.jit
def _knn_tile(x0, x1, x2, lm_base, mask, M: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """``(best_d, best_i)``: ``[BLOCK, KP]`` squared distances and indices of the k nearest landmarks."""
    cols = tl.arange(0, KP)[None, :]
    best_d = tl.where(cols < K, float("inf"), float("-inf")) + tl.zeros([BLOCK, KP], dtype=tl.float32)
    best_i = tl.zeros([BLOCK, KP], dtype=tl.int32)
    for m in range(M):
        d = _dist2(x0, x1, x2, lm_base, m, mask)
        worst = tl.max(best_d, axis=1)
        at = tl.argmax(best_d, axis=1, tie_break_left=True)
        replace = (d < worst)[:, None] & (cols == at[:, None])
        best_d = tl.where(replace, d[:, None], best_d)
        best_i = tl.where(replace, m, best_i)
    return best_d, best_i


@triton.jit
def _insert(c_d, c_i, b_d, b_i):
    """One compare-swap of an insertion: the slot keeps the nearer, the carry moves on with the farther."""
    s = c_d < b_d
    return tl.where(s, b_d, c_d), tl.where(s, b_i, c_i), tl.where(s, c_d, b_d), tl.where(s, c_i, b_i)


@triton.jit
def _knn_slots(x0, x1, x2, lm_base, mask, M: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    """The k <= 8 nearest as eight sorted per-point registers (slots k.. hold -inf and never change): no
    cross-thread reductions, unlike the ``[BLOCK, KP]`` tile of :func:`_knn_tile`."""
    inf = tl.full([BLOCK], float("inf"), tl.float32)
    d0 = inf
    d1 = tl.where(K > 1, inf, -inf)
    d2 = tl.where(K > 2, inf, -inf)
    d3 = tl.where(K > 3, inf, -inf)
    d4 = tl.where(K > 4, inf, -inf)
    d5 = tl.where(K > 5, inf, -inf)
    d6 = tl.where(K > 6, inf, -inf)
    d7 = tl.where(K > 7, inf, -inf)
    i0 = tl.zeros([BLOCK], dtype=tl.int32)
    i1 = i0
    i2 = i0
    i3 = i0
    i4 = i0
    i5 = i0
    i6 = i0
    i7 = i0
    for m in range(M):
        cd = _dist2(x0, x1, x2, lm_base, m, mask)
        ci = tl.zeros([BLOCK], dtype=tl.int32) + m
        cd, ci, d0, i0 = _insert(cd, ci, d0, i0)
        cd, ci, d1, i1 = _insert(cd, ci, d1, i1)
        cd, ci, d2, i2 = _insert(cd, ci, d2, i2)
        cd, ci, d3, i3 = _insert(cd, ci, d3, i3)
        cd, ci, d4, i4 = _insert(cd, ci, d4, i4)
        cd, ci, d5, i5 = _insert(cd, ci, d5, i5)
        cd, ci, d6, i6 = _insert(cd, ci, d6, i6)
        cd, ci, d7, i7 = _insert(cd, ci, d7, i7)
    return i0, i1, i2, i3, i4, i5, i6, i7


@triton.jit
def _load_points(x_ptr, frame_ptr, lm_ptr, N, M: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    x0 = tl.load(x_ptr + rows * 3, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + rows * 3 + 1, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + rows * 3 + 2, mask=mask, other=0.0)
    frame = tl.load(frame_ptr + rows, mask=mask, other=0).to(tl.int64)
    return rows, mask, x0, x1, x2, lm_ptr + frame * M * 3


@triton.jit
def _knn_kernel(x_ptr, frame_ptr, lm_ptr, idx_ptr, N, M: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                BLOCK: tl.constexpr, SLOTS: tl.constexpr):
    rows, mask, x0, x1, x2, lm_base = _load_points(x_ptr, frame_ptr, lm_ptr, N, M, BLOCK)
    if SLOTS:
        i0, i1, i2, i3, i4, i5, i6, i7 = _knn_slots(x0, x1, x2, lm_base, mask, M, K, BLOCK)
        cols = tl.arange(0, 8)[None, :]
        best_i = tl.where(cols == 0, i0[:, None], tl.where(cols == 1, i1[:, None], tl.where(
            cols == 2, i2[:, None], tl.where(cols == 3, i3[:, None], tl.where(cols == 4, i4[:, None], tl.where(
                cols == 5, i5[:, None], tl.where(cols == 6, i6[:, None], i7[:, None])))))))
    else:
        _, best_i = _knn_tile(x0, x1, x2, lm_base, mask, M, K, KP, BLOCK)
        cols = tl.arange(0, KP)[None, :]
    tl.store(idx_ptr + rows[:, None] * K + cols, best_i.to(tl.int64), mask=mask[:, None] & (cols < K))


def knn(x: torch.Tensor, frame: torch.Tensor, landmarks: torch.Tensor, k: int, block: int = BLOCK_KNN,
        num_warps: int = NUM_WARPS, slots: bool = True) -> torch.Tensor:
    """Indices ``[N, k]`` (int64) of each point's ``k`` nearest landmarks of its frame (unordered):
    ``x [N, 3]``, ``frame [N]`` int, ``landmarks [B, M, 3]``. ``slots=False`` forces the tile for any k."""
    if x.ndim != 2 or x.shape[1] != 3 or landmarks.ndim != 3 or landmarks.shape[2] != 3 or frame.shape != x.shape[:1]:
        raise ValueError(f"expected x [N, 3], frame [N], landmarks [B, M, 3]; got {tuple(x.shape)}, "
                         f"{tuple(frame.shape)}, {tuple(landmarks.shape)}")
    n, m = x.shape[0], landmarks.shape[1]
    if not 1 <= k <= m:
        raise ValueError(f"k = {k} must be in [1, {m}]")
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
    if n:
        _knn_kernel[(triton.cdiv(n, block),)](
            x.to(torch.float32).contiguous(), frame.contiguous(), landmarks.to(torch.float32).contiguous(), idx, n,
            M=m, K=k, KP=triton.next_power_of_2(k), BLOCK=block, SLOTS=slots and k <= 8, num_warps=num_warps)
    return idx
