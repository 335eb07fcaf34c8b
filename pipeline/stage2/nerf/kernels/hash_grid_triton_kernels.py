"""Triton kernels of the hash-grid encoding (imported only by ``hash_grid_triton``, and only when needed).

This module imports ``triton`` at the top: import it lazily (``hash_grid_triton`` does) so that machines
without Triton never touch it. The kernels compute exactly ``TorchHashGrid``'s function (see the
docstring of ``pipeline.stage2.nerf.hash_grid``): clamp to the unit cube, ``pos = x R``, cell
``clamp(floor(pos), 0, R - 1)``, d-linear weights of the ``2**d`` corners (axis 0 slowest), dense
indexing ``i + j (R+1) + k (R+1)^2`` or the uint32 hash ``i xor j 2654435761 xor k 805459861`` masked to
``T`` bits, plus the level's first row.

Launch layout: the grid is ``(ceil(N / BLOCK), ceil(L / G))``. Program ``(p, q)`` handles points
``p BLOCK ...`` for the ``G`` levels ``q G ...``. Since CUDA schedules the first grid axis fastest, the
whole GPU works on one group of levels at a time, so only those levels' table rows (``G`` x 4 MiB for
2^19 rows x 2 fp32 features) compete for L2, and the ``G F`` output floats of a point are written
close together in time (``G F = 8``: one full 32-byte sector); with ``vector_levels`` the G levels are
one ``[BLOCK, G, F]`` tile and each point's ``G F`` outputs one contiguous store; with ``pair_x`` the two
corners of each axis-0 edge come from one 16-byte load where they share an aligned row pair. The backward pass has
the per-level layout and scatters ``w g`` into an fp32 gradient table with relaxed atomic adds
(vectorised ``red.global.add.v2.f32`` for F = 2 on Hopper). Kernels are launched without FMA
contraction, so ``x R`` is rounded before the cell is subtracted exactly as in the reference (with
contraction the finest levels' weights differed by ~1e-4). ``FORWARD_CONFIG`` / ``BACKWARD_CONFIG`` are
the launch configs that ``bench/bench_encoding_gpu.py`` measured fastest (BENCHMARKS.md).

The kernels also run under the Triton interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is
how their index arithmetic is checked on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters.

    ``block`` points and ``levels_per_program`` (G) levels per program, ``num_warps`` warps; forward only:
    ``vector_levels`` computes the G levels as one ``[block, G, F]`` tile and stores each point's ``G F``
    outputs as one contiguous row (G a power of two, F a power of two; otherwise the per-level loop is
    used); ``hints`` marks table reads ``evict_last`` and streamed inputs/outputs ``evict_first`` in L2;
    ``pair_x`` (forward, with ``vector_levels`` and F = 2) reads the two corners that differ only along axis 0
    with one 16-byte load of their aligned row pair where they share one (:func:`_hashgrid_fwd_pair`).
    """

    block: int = 256
    levels_per_program: int = 4
    num_warps: int = 4
    vector_levels: bool = False
    hints: bool = False
    pair_x: bool = False


# fastest on an H200 for 4M points, 16 levels x 2 features, 2^19 rows (BENCHMARKS.md, 2026-11-22 sweeps)
FORWARD_CONFIG = KernelConfig(block=128, levels_per_program=4, num_warps=2, vector_levels=True, hints=True,
                              pair_x=True)
BACKWARD_CONFIG = KernelConfig(block=256, levels_per_program=4, num_warps=8)


@triton.jit
def _axis(x_ptr, offs, mask_n, axis: tl.constexpr, D: tl.constexpr, POLICY: tl.constexpr):
    x = tl.load(x_ptr + offs * D + axis, mask=mask_n, other=0.0, eviction_policy=POLICY)
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _cell(x, resf):
    """Vertex below ``x`` (uint32) and the fraction; launched without FMA contraction so that
    ``x R - cell`` rounds ``x R`` first, exactly as the torch reference does."""
    pos = x * resf
    cell = tl.minimum(tl.maximum(tl.floor(pos), 0.0), resf - 1.0)
    return cell.to(tl.int32).to(tl.uint32), pos - cell


@triton.jit
def _corner(c: tl.constexpr, D: tl.constexpr, c0, c1, c2, f0, f1, f2, s1, s2, dense, row0,
            HASH_MASK: tl.constexpr):
    """Row and weight of corner ``c`` (bit ``a`` of ``c`` = upper vertex along axis ``a``; axis 0 slowest)."""
    P1: tl.constexpr = 2654435761
    P2: tl.constexpr = 805459861
    if (c >> (D - 1)) & 1:
        v0 = c0 + 1
        w = f0
    else:
        v0 = c0
        w = 1.0 - f0
    if (c >> (D - 2)) & 1:
        v1 = c1 + 1
        w = w * f1
    else:
        v1 = c1
        w = w * (1.0 - f1)
    idx_dense = v0 + v1 * s1
    idx_hash = v0 ^ (v1 * P1)
    if D == 3:
        if c & 1:
            v2 = c2 + 1
            w = w * f2
        else:
            v2 = c2
            w = w * (1.0 - f2)
        idx_dense = idx_dense + v2 * s2
        idx_hash = idx_hash ^ (v2 * P2)
    idx = tl.where(dense != 0, idx_dense, idx_hash & HASH_MASK)
    return idx.to(tl.int32) + row0, w


@triton.jit
def _points(x_ptr, N, D: tl.constexpr, BLOCK: tl.constexpr, POLICY: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask_n = offs < N
    x0 = _axis(x_ptr, offs, mask_n, 0, D, POLICY)
    x1 = _axis(x_ptr, offs, mask_n, 1, D, POLICY)
    if D == 3:
        x2 = _axis(x_ptr, offs, mask_n, 2, D, POLICY)
    else:
        x2 = x1
    return offs, mask_n, x0, x1, x2


@triton.jit
def _hashgrid_fwd(x_ptr, table_ptr, meta_ptr, out_ptr, N,
                  L: tl.constexpr, D: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                  HASH_MASK: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr,
                  TABLE_EVICT: tl.constexpr, STREAM_EVICT: tl.constexpr):
    """One level at a time (G levels per program): ``[BLOCK, F]`` tiles."""
    offs, mask_n, x0, x1, x2 = _points(x_ptr, N, D, BLOCK, STREAM_EVICT)
    cols = tl.arange(0, FP)
    if FP == F:
        mask2 = mask_n[:, None] & (cols[None, :] < FP)
    else:
        mask2 = mask_n[:, None] & (cols[None, :] < F)
    for i in tl.static_range(G):
        lvl = tl.program_id(1) * G + i
        if lvl < L:
            res = tl.load(meta_ptr + lvl * 4)
            row0 = tl.load(meta_ptr + lvl * 4 + 1)
            dense = tl.load(meta_ptr + lvl * 4 + 2)
            s1 = tl.load(meta_ptr + lvl * 4 + 3).to(tl.uint32)
            resf = res.to(tl.float32)
            c0, f0 = _cell(x0, resf)
            c1, f1 = _cell(x1, resf)
            c2, f2 = _cell(x2, resf)
            acc = tl.zeros([BLOCK, FP], dtype=tl.float32)
            for c in tl.static_range(1 << D):
                row, w = _corner(c, D, c0, c1, c2, f0, f1, f2, s1, s1 * s1, dense, row0, HASH_MASK)
                feat = tl.load(table_ptr + row[:, None] * F + cols[None, :], mask=mask2, other=0.0,
                               eviction_policy=TABLE_EVICT)
                acc += w[:, None] * feat
            tl.store(out_ptr + offs[:, None] * (L * F) + lvl * F + cols[None, :], acc, mask=mask2,
                     eviction_policy=STREAM_EVICT)


@triton.jit
def _level_group(meta_ptr, x0, x1, x2, L: tl.constexpr, G: tl.constexpr):
    """The ``G`` levels of program ``(p, q)`` as ``[1, G]`` rows (mask, first row, dense flag, ``R + 1``) and the
    points' cells and fractions at each of them (``[BLOCK, G]``)."""
    lv = tl.program_id(1) * G + tl.arange(0, G)
    mask_l = lv < L
    res = tl.load(meta_ptr + lv * 4, mask=mask_l, other=1)[None, :]
    row0 = tl.load(meta_ptr + lv * 4 + 1, mask=mask_l, other=0)[None, :]
    dense = tl.load(meta_ptr + lv * 4 + 2, mask=mask_l, other=1)[None, :]
    s1 = tl.load(meta_ptr + lv * 4 + 3, mask=mask_l, other=2).to(tl.uint32)[None, :]
    resf = res.to(tl.float32)
    c0, f0 = _cell(x0[:, None], resf)
    c1, f1 = _cell(x1[:, None], resf)
    c2, f2 = _cell(x2[:, None], resf)
    return mask_l, row0, dense, s1, c0, f0, c1, f1, c2, f2


@triton.jit
def _store_group(out_ptr, acc, offs, mask_n, L: tl.constexpr, F: tl.constexpr, G: tl.constexpr,
                 BLOCK: tl.constexpr, STREAM_EVICT: tl.constexpr):
    """Store the ``[BLOCK, G, F]`` features of a level group as one contiguous ``G F`` row per point."""
    flat = tl.reshape(acc, [BLOCK, G * F])
    gcols = tl.arange(0, G * F)
    mask_o = mask_n[:, None] & (tl.program_id(1) * (G * F) + gcols[None, :] < L * F)
    tl.store(out_ptr + offs[:, None] * (L * F) + tl.program_id(1) * (G * F) + gcols[None, :], flat, mask=mask_o,
             eviction_policy=STREAM_EVICT)


@triton.jit
def _hashgrid_fwd_vec(x_ptr, table_ptr, meta_ptr, out_ptr, N,
                      L: tl.constexpr, D: tl.constexpr, F: tl.constexpr,
                      HASH_MASK: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr,
                      TABLE_EVICT: tl.constexpr, STREAM_EVICT: tl.constexpr):
    """G levels as one ``[BLOCK, G, F]`` tile (G, F powers of two); each point's ``G F`` outputs stored
    as one contiguous row."""
    offs, mask_n, x0, x1, x2 = _points(x_ptr, N, D, BLOCK, STREAM_EVICT)
    mask_l, row0, dense, s1, c0, f0, c1, f1, c2, f2 = _level_group(meta_ptr, x0, x1, x2, L, G)
    cols = tl.arange(0, F)
    mask3 = (mask_n[:, None] & mask_l[None, :])[:, :, None] & (cols[None, None, :] < F)
    acc = tl.zeros([BLOCK, G, F], dtype=tl.float32)
    for c in tl.static_range(1 << D):
        row, w = _corner(c, D, c0, c1, c2, f0, f1, f2, s1, s1 * s1, dense, row0, HASH_MASK)
        feat = tl.load(table_ptr + row[:, :, None] * F + cols[None, None, :], mask=mask3, other=0.0,
                       eviction_policy=TABLE_EVICT)
        acc += w[:, :, None] * feat
    _store_group(out_ptr, acc, offs, mask_n, L, F, G, BLOCK, STREAM_EVICT)


@triton.jit
def _hashgrid_fwd_pair(x_ptr, table_ptr, meta_ptr, out_ptr, N, n_rows,
                       L: tl.constexpr, D: tl.constexpr, F: tl.constexpr,
                       HASH_MASK: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr,
                       TABLE_EVICT: tl.constexpr, STREAM_EVICT: tl.constexpr):
    """:func:`_hashgrid_fwd_vec` for F = 2 with fewer table requests.

    Corners ``c`` and ``c + 2**(D-1)`` differ only along axis 0, whose hash multiplier is 1 and whose dense
    stride is 1: for an even vertex (hashed levels) or an even row (dense levels) the two rows are
    ``2k, 2k + 1``, one aligned 16-byte pair. Each pair of corners is fetched as that ``[BLOCK, G, 4]``
    vector load of rows ``2k, 2k + 1`` (``k`` = first corner's row // 2); the second corner is loaded on its
    own only where it lies outside the pair (about half the points), so a 3D level costs ~6 table requests
    instead of 8. The two halves of the corners are summed separately, then added.
    """
    offs, mask_n, x0, x1, x2 = _points(x_ptr, N, D, BLOCK, STREAM_EVICT)
    mask_l, row0, dense, s1, c0, f0, c1, f1, c2, f2 = _level_group(meta_ptr, x0, x1, x2, L, G)
    cols = tl.arange(0, F)
    quad = tl.arange(0, 2 * F)
    mask_pl = mask_n[:, None] & mask_l[None, :]
    mask3 = mask_pl[:, :, None] & (cols[None, None, :] < F)
    acc_lo = tl.zeros([BLOCK, G, F], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK, G, F], dtype=tl.float32)
    UPPER: tl.constexpr = 1 << (D - 1)
    for c in tl.static_range(UPPER):
        row_a, w_a = _corner(c, D, c0, c1, c2, f0, f1, f2, s1, s1 * s1, dense, row0, HASH_MASK)
        row_b, w_b = _corner(c + UPPER, D, c0, c1, c2, f0, f1, f2, s1, s1 * s1, dense, row0, HASH_MASK)
        pair = row_a >> 1
        elem = pair[:, :, None] * (2 * F) + quad[None, None, :]
        both = tl.load(table_ptr + elem, mask=mask_pl[:, :, None] & (elem < n_rows * F), other=0.0,
                       eviction_policy=TABLE_EVICT)
        # [BLOCK, G, 2 rows, F] -> [BLOCK, G, F, 2 rows] -> the even and the odd row of the pair
        even, odd = tl.split(tl.permute(tl.reshape(both, [BLOCK, G, 2, F]), (0, 1, 3, 2)))
        feat_a = tl.where(((row_a & 1) != 0)[:, :, None], odd, even)
        shared = (row_b >> 1) == pair
        alone = tl.load(table_ptr + row_b[:, :, None] * F + cols[None, None, :],
                        mask=mask3 & ~shared[:, :, None], other=0.0, eviction_policy=TABLE_EVICT)
        feat_b = tl.where(shared[:, :, None], tl.where(((row_b & 1) != 0)[:, :, None], odd, even), alone)
        acc_lo += w_a[:, :, None] * feat_a
        acc_hi += w_b[:, :, None] * feat_b
    _store_group(out_ptr, acc_lo + acc_hi, offs, mask_n, L, F, G, BLOCK, STREAM_EVICT)


@triton.jit
def _hashgrid_bwd(x_ptr, grad_ptr, meta_ptr, gtable_ptr, N, stride_gn, stride_gc,
                  L: tl.constexpr, D: tl.constexpr, F: tl.constexpr, FP: tl.constexpr,
                  HASH_MASK: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr, STREAM_EVICT: tl.constexpr):
    offs, mask_n, x0, x1, x2 = _points(x_ptr, N, D, BLOCK, STREAM_EVICT)
    cols = tl.arange(0, FP)
    if FP == F:
        mask2 = mask_n[:, None] & (cols[None, :] < FP)
    else:
        mask2 = mask_n[:, None] & (cols[None, :] < F)
    for i in tl.static_range(G):
        lvl = tl.program_id(1) * G + i
        if lvl < L:
            res = tl.load(meta_ptr + lvl * 4)
            row0 = tl.load(meta_ptr + lvl * 4 + 1)
            dense = tl.load(meta_ptr + lvl * 4 + 2)
            s1 = tl.load(meta_ptr + lvl * 4 + 3).to(tl.uint32)
            resf = res.to(tl.float32)
            c0, f0 = _cell(x0, resf)
            c1, f1 = _cell(x1, resf)
            c2, f2 = _cell(x2, resf)
            g = tl.load(grad_ptr + offs[:, None] * stride_gn + (lvl * F + cols[None, :]) * stride_gc, mask=mask2,
                        other=0.0, eviction_policy=STREAM_EVICT)
            for c in tl.static_range(1 << D):
                row, w = _corner(c, D, c0, c1, c2, f0, f1, f2, s1, s1 * s1, dense, row0, HASH_MASK)
                tl.atomic_add(gtable_ptr + row[:, None] * F + cols[None, :], w[:, None] * g, mask=mask2,
                              sem="relaxed")


def level_meta(resolutions: list[int], offsets: list[int], dense: list[bool]) -> torch.Tensor:
    """``[L, 4]`` int32 per-level constants: resolution, first row, dense flag, ``R + 1``."""
    return torch.tensor([[r, o, int(d), r + 1] for r, o, d in zip(resolutions, offsets, dense)], dtype=torch.int32)


def _chunks(n: int, width: int):
    """Point ranges whose element offsets (< ``n_chunk * width``) fit the kernels' int32 arithmetic."""
    step = max(1024, INT32_LIMIT // max(width, 1) // 1024 * 1024)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _constexprs(levels: int, n_dims: int, features: int, log2_hashmap_size: int, cfg: KernelConfig) -> dict:
    return dict(L=levels, D=n_dims, F=features, HASH_MASK=(1 << log2_hashmap_size) - 1,
                G=min(cfg.levels_per_program, levels), BLOCK=cfg.block,
                STREAM_EVICT="evict_first" if cfg.hints else "")


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def forward(x: torch.Tensor, table: torch.Tensor, meta: torch.Tensor, log2_hashmap_size: int,
            cfg: KernelConfig | None = None) -> torch.Tensor:
    """``x`` [N, d] fp32 contiguous, ``table`` [rows, F] fp32 contiguous -> ``[N, L F]`` fp32."""
    cfg = cfg or FORWARD_CONFIG
    n, d = x.shape
    levels, features = meta.shape[0], table.shape[1]
    k = _constexprs(levels, d, features, log2_hashmap_size, cfg)
    k["TABLE_EVICT"] = "evict_last" if cfg.hints else ""
    vec = cfg.vector_levels and _pow2(k["G"]) and _pow2(features)
    if not vec:
        k["FP"] = triton.next_power_of_2(features)
    pair = vec and cfg.pair_x and features == 2 and table.numel() < INT32_LIMIT - 4
    kernel = _hashgrid_fwd_pair if pair else _hashgrid_fwd_vec if vec else _hashgrid_fwd
    extra = (table.shape[0],) if pair else ()
    out = torch.empty(n, levels * features, device=x.device, dtype=torch.float32)
    for a, b in _chunks(n, levels * features):
        grid = (triton.cdiv(b - a, cfg.block), triton.cdiv(levels, k["G"]))
        # no FMA contraction: x R is rounded before the cell is subtracted, as in the reference
        kernel[grid](x[a:b], table, meta, out[a:b], b - a, *extra, num_warps=cfg.num_warps,
                     enable_fp_fusion=False, **k)
    return out


def backward(x: torch.Tensor, grad_out: torch.Tensor, meta: torch.Tensor, n_rows: int, log2_hashmap_size: int,
             cfg: KernelConfig | None = None) -> torch.Tensor:
    """Gradient of ``sum(out * grad_out)`` w.r.t. the table: ``[n_rows, F]`` fp32 (atomic fp32 accumulation).

    ``grad_out`` [N, L F] fp32 may be strided (an expanded ``ones`` of ``out.sum()`` has stride 0, a slice of
    a tri-plane concatenation a row stride of 3 L F): no copy is made."""
    cfg = cfg or BACKWARD_CONFIG
    n, d = x.shape
    levels = meta.shape[0]
    features = grad_out.shape[1] // levels
    k = _constexprs(levels, d, features, log2_hashmap_size, cfg)
    k["FP"] = triton.next_power_of_2(features)
    gtable = torch.zeros(n_rows, features, device=x.device, dtype=torch.float32)
    width = max(1, grad_out.stride(0)) + levels * features * max(1, grad_out.stride(1))
    for a, b in _chunks(n, width):
        grid = (triton.cdiv(b - a, cfg.block), triton.cdiv(levels, k["G"]))
        _hashgrid_bwd[grid](x[a:b], grad_out[a:b], meta, gtable, b - a, grad_out.stride(0), grad_out.stride(1),
                            num_warps=cfg.num_warps, enable_fp_fusion=False, **k)
    return gtable
