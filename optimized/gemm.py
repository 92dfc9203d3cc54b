"""Grouped GEMM over expert segments, bf16/fp16/fp32 and fp8 e4m3 (SPEC.md section 6),
plus the per-token-group fp8 quantiser used by the block-wise path.

Tile bookkeeping lives inside the GEMM kernel: every program loads seg_indptr (batch+1
values), computes tiles per group and their prefix sum in registers and maps its m-slot
to (group, tile) from that. No index buffer is allocated, so nothing can be read unwritten
(the only allocation is triton's scratch for the descriptors that programs make on the device
for a group's last tile); the tile size may come from autotuning; and the grid is a host-known
upper bound (cdiv(M, BM + BM2) + batch m-slots x cdiv(N, BN)) so no host sync is needed. Slots
past the real tile count exit at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: pointer loads only
    TensorDescriptor = None
try:  # where triton keeps the allocator for kernels' global scratch (a private module)
    from triton.runtime import _allocation as _triton_allocation
except ImportError:  # pragma: no cover - another triton layout: _ensure_allocator sets ours
    _triton_allocation = None

from reference._checks import FP8_DTYPE, validate_group_quant, validate_grouped_gemm

from . import _config
from ._tl import FP8_MAX, cast_out

QUANT_EPS = 1e-10  # same floor as reference.gemm.QUANT_EPS

# ----------------------------------------------------------------------------- quantiser


# Sizes that are neither strides nor offsets' alignment stay unspecialised (do_not_specialize):
# one compiled variant whatever their value, instead of one per (== 1, % 16 == 0, other) class.
@triton.jit(do_not_specialize=["M", "G", "NSEG"])
def _group_quant_kernel(
    # pointers
    x_ptr, q_ptr, s_ptr, seg_ptr,
    # sizes
    M, Kd, G, GS, NSEG,
    # meta
    HAS_SEG: tl.constexpr, SEG_P: tl.constexpr, ROWS: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Row r, group g: s[r, g] = max(amax|x[r, g*GS:(g+1)*GS]|, eps) / 448; q = fp8(clamp(x / s)).

    With HAS_SEG only rows in [min(seg), max(seg)) are processed (the rows a grouped GEMM
    over seg_indptr can read); the others are left unwritten and are never read.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    g = tl.program_id(1)
    j = tl.arange(0, BLOCK_G)
    cols = g * GS + j
    rmask = rows < M
    if HAS_SEG:
        si = tl.arange(0, SEG_P)
        sv = tl.load(seg_ptr + si, mask=si < NSEG, other=0)
        lo = tl.min(tl.where(si < NSEG, sv, M), axis=0)
        hi = tl.max(tl.where(si < NSEG, sv, 0), axis=0)
        rmask = rmask & (rows >= lo) & (rows < hi)
    m2 = rmask[:, None] & ((j < GS) & (cols < Kd))[None, :]
    x = tl.load(x_ptr + rows[:, None] * Kd + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.maximum(amax, 1e-10) / FP8_MAX
    q = cast_out(x / scale[:, None], q_ptr.dtype.element_ty)
    tl.store(q_ptr + rows[:, None] * Kd + cols[None, :], q, mask=m2)
    tl.store(s_ptr + rows * G + g, scale, mask=rmask)


def _quant(x: torch.Tensor, group_size: int, seg_indptr=None):
    M, Kd = x.shape
    G = triton.cdiv(Kd, group_size)
    q = torch.empty(M, Kd, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(M, G, dtype=torch.float32, device=x.device)
    if M == 0 or Kd == 0:
        return q, s
    block_g = _config.next_pow2(group_size)
    rows = max(1, min(4096 // block_g, _config.next_pow2(M), 64))
    nseg = 0 if seg_indptr is None else seg_indptr.numel()
    _group_quant_kernel[(triton.cdiv(M, rows), G)](
        x, q, s, seg_indptr if seg_indptr is not None else s,
        M, Kd, G, group_size, nseg,
        HAS_SEG=seg_indptr is not None, SEG_P=max(16, _config.next_pow2(nseg)), ROWS=rows, BLOCK_G=block_g,
        num_warps=4)
    return q, s


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int):
    """Quantise each row of x [M, Kd] per group of ``group_size`` columns to fp8 e4m3.

    scale[m, g] = max(amax |x[m, group g]|, 1e-10) / 448 (float32); x_q = fp8(clamp(x / scale,
    -448, 448)); a last partial group is quantised on its own columns. Returns (x_q [M, Kd]
    float8_e4m3fn, scale [M, ceil(Kd / group_size)] float32).
    """
    validate_group_quant(x, group_size)
    _config.reject_float64(x=x)
    return _quant(x, group_size)


# ----------------------------------------------------------------------------- grouped GEMM

MODE_PLAIN, MODE_FP8_TENSOR, MODE_FP8_BLOCK, MODE_FP8_BLOCK_GENERIC = 0, 1, 2, 3


@triton.jit
def _mma(a, b, acc):
    """acc + a @ b in float32. float32 operands in IEEE precision (no tf32)."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _add_scaled(acc, part, sa, sb, SB_SCALAR: tl.constexpr):
    """acc + part * sa[:, None] * sb: one K block's product [rows, BN] scaled by a's row scales and
    b's scale, a scalar for the tile (SB_SCALAR: one FFMA per element, (sa * sb) being a row
    vector) or one per column [BN]. tl.fma: one FFMA per element whether or not the compiler
    contracts a multiply-add (triton 3.10 stops doing so by default)."""
    if SB_SCALAR:
        return tl.fma(part, (sa * sb)[:, None], acc)
    else:
        return tl.fma(part, sa[:, None] * sb[None, :], acc)


@triton.jit
def _tensor_scaled(acc, sa_ptr, sb_ptr, e, MODE: tl.constexpr):
    """MODE 1 (fp8 per tensor): acc * sa[e] * sb[e], weight e's two scales; other modes: acc as it is."""
    if MODE == 1:
        acc = acc * (tl.load(sa_ptr + e) * tl.load(sb_ptr + e))
    return acc


# Triton's interpreter runs no inline PTX (the packed cast below); a TMA tile can run there
# when a test pins the TMA path
_INTERPRETED = tl.constexpr(_config.is_interpreter())


@triton.jit
def _cast_c(acc, DST: tl.constexpr, PACKED: tl.constexpr):
    """cast_out(acc, DST) of an output tile; PACKED (and DST bf16): two elements per
    cvt.rn.bf16x2.f32 written out, the instruction triton 3.6 and 3.9 emit for the cast themselves.

    Why: triton 3.8 compiles the cast shared by the two TMA stores of the kernel's epilogue to one
    cvt.rn.bf16.f32 per element, and ptxas (12.8 to 13.4 alike) then serialises every wgmma of the
    K loop (C7514: 'non wgmma instructions reading accumulator registers'), on every bf16 tile with
    one accumulator. The PTX written here keeps the loop asynchronous under 3.8 and compiles to the
    very SASS of the plain cast under 3.6 and 3.9 (tools/compile_sm90.py; tests/test_gemm_compile.py).
    """
    if PACKED and (DST == tl.bfloat16):
        return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [acc], dtype=tl.bfloat16,
                                         is_pure=True, pack=2)
    else:
        return cast_out(acc, DST)


@triton.jit
def _store_to_group_end(c_ptr, acc, r0, rows, rmask, row_hi, cols, nmask, n0, N, USE_TMA: tl.constexpr,
                        ROWS: tl.constexpr, BN: tl.constexpr, PACK_C: tl.constexpr):
    """c[r0 : r0 + ROWS, n0 : n0 + BN] = acc (cast) for the rows of the group, i.e. below row_hi;
    the rows past it (the next group's) stay untouched. With TMA through a descriptor made on the
    device whose rows end at row_hi, so that TMA clips the rest (a masked tl.store there, beside
    the TMA store of whole tiles, made triton 3.6 wait for every wgmma of the K loop and spill:
    tools/compile_sm90.py); on the pointer path a store masked by rmask (rows: clamped). PACK_C:
    the cast as _cast_c's PACKED."""
    c = _cast_c(acc, c_ptr.dtype.element_ty, PACK_C)
    if USE_TMA:
        tail = tl.make_tensor_descriptor(c_ptr, shape=[row_hi.to(tl.int32), N], strides=[N, 1],
                                         block_shape=[ROWS, BN])
        tail.store([r0.to(tl.int32), n0], c)
    else:
        tl.store(c_ptr + rows[:, None] * N + cols[None, :], c, mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _k_loop(
    # operands (pointers, or with USE_TMA descriptors; a2_desc: a with [BM2, BK] blocks)
    a_ptr, b_ptr, a2_desc, sa_ptr, sb_ptr,
    # this tile: its first row, its group's end, rows/cols (clamped) and masks, the weight index
    # and first column
    row0, row_hi, rows, rmask, cols, nmask, e, n0,
    # sizes
    N, Kd, SB_N, SB_K, SA_K,
    # meta
    MODE: tl.constexpr, QBN: tl.constexpr, QBK: tl.constexpr, USE_TMA: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WS: tl.constexpr, BM2: tl.constexpr,
    TWO: tl.constexpr,
):
    """The K loop of one output tile: (acc [BM, BN], acc2) in float32, before MODE 1's scale.

    TWO: the BM2 rows after the tile's BM rows (row0 + BM ...) are a second accumulator fed by the
    same b tiles, so a group slightly longer than BM streams each weight tile once instead of
    twice; acc2 is [BM2, BN] then, else a placeholder scalar.
    """
    kk = tl.arange(0, BK)
    if TWO:
        rows2 = row0 + BM + tl.arange(0, BM2)
        rmask2 = rows2 < row_hi
        rows2 = tl.where(rmask2, rows2, 0)
        acc2 = tl.zeros([BM2, BN], dtype=tl.float32)
    else:
        acc2 = 0.0
    if not USE_TMA:
        a_ptrs = a_ptr + rows[:, None] * Kd + kk[None, :]                  # [BM, BK]
        b_ptrs = b_ptr + e * N * Kd + cols[None, :] * Kd + kk[:, None]     # [BK, BN] = b[e]^T tile
    if MODE == 2:
        # the K block's scales are loaded one iteration ahead: the pipeliner prefetches the dot's
        # operands only, and a scale load issued beside its own block's wgmma waits on L2 after it.
        # Masks: the first load only if there is a K block (Kd > 0); later indices are clamped to
        # the last block (the interpreter rejects a block mask and-ed with a scalar one)
        sa_ptrs = sa_ptr + rows * SA_K                                  # [BM], + kb
        sa_next = tl.load(sa_ptrs, mask=rmask & (tl.zeros_like(rows) < Kd), other=0.0)
        if TWO:
            sa2_ptrs = sa_ptr + rows2 * SA_K                            # [BM2], + kb
            sa2_next = tl.load(sa2_ptrs, mask=rmask2 & (tl.zeros_like(rows2) < Kd), other=0.0)
        if QBN % BN == 0:  # the tile's columns share one scale block of b: a scalar per K block
            sb_ptrs = sb_ptr + e * SB_N * SB_K + (n0 // QBN) * SB_K     # scalar, + kb
            sb_next = tl.load(sb_ptrs, mask=Kd > 0, other=0.0)
        else:
            sb_ptrs = sb_ptr + e * SB_N * SB_K + (cols // QBN) * SB_K   # [BN], + kb
            sb_next = tl.load(sb_ptrs, mask=nmask & (tl.zeros_like(cols) < Kd), other=0.0)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in tl.range(0, Kd, BK, warp_specialize=WS):
        if USE_TMA:
            a = a_ptr.load([row0.to(tl.int32), k0])                        # [BM, BK]
            b = b_ptr.load([(e * N + n0).to(tl.int32), k0]).T                 # [BK, BN]
            if TWO:
                a2 = a2_desc.load([(row0 + BM).to(tl.int32), k0])          # [BM2, BK]
        else:
            kmask = (k0 + kk) < Kd
            a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if TWO:
                a2 = tl.load(a_ptr + rows2[:, None] * Kd + (k0 + kk)[None, :],
                             mask=rmask2[:, None] & kmask[None, :], other=0.0)
            a_ptrs += BK
            b_ptrs += BK
        if MODE == 2:
            sa, sb = sa_next, sb_next
            kb_next = tl.minimum((k0 + BK) // QBK, (Kd - 1) // QBK)
            sa_next = tl.load(sa_ptrs + kb_next, mask=rmask, other=0.0)
            if QBN % BN == 0:
                sb_next = tl.load(sb_ptrs + kb_next)
            else:
                sb_next = tl.load(sb_ptrs + kb_next, mask=nmask, other=0.0)
            acc = _add_scaled(acc, _mma(a, b, tl.zeros([BM, BN], dtype=tl.float32)), sa, sb, QBN % BN == 0)
            if TWO:
                sa2 = sa2_next
                sa2_next = tl.load(sa2_ptrs + kb_next, mask=rmask2, other=0.0)
                acc2 = _add_scaled(acc2, _mma(a2, b, tl.zeros([BM2, BN], dtype=tl.float32)), sa2, sb,
                                   QBN % BN == 0)
        elif MODE == 3:
            kabs = k0 + kk
            sa2 = tl.load(sa_ptr + rows[:, None] * SA_K + (kabs // QBK)[None, :],
                          mask=rmask[:, None] & kmask[None, :], other=0.0)
            sb2 = tl.load(sb_ptr + e * SB_N * SB_K + (cols // QBN)[None, :] * SB_K + (kabs // QBK)[:, None],
                          mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc = tl.dot(a.to(tl.float32) * sa2, b.to(tl.float32) * sb2, acc, input_precision="ieee")
        else:
            acc = _mma(a, b, acc)
            if TWO:
                acc2 = _mma(a2, b, acc2)
    return acc, acc2


@triton.jit(do_not_specialize=["M", "E_w", "batch", "SB_N", "SB_K", "SA_K", "M_HINT", "N_HINT", "K_HINT"])
def _grouped_gemm_kernel(
    # operands: pointers, or with USE_TMA tensor descriptors of a [M, Kd] and b [E_w * N, Kd];
    # c_desc: with USE_TMA a descriptor of c [M, N] (else c again, unused); a2_desc: with USE_TMA
    # a descriptor of a in [BM2, BK] blocks (else a again, unused)
    a_ptr, b_ptr, c_ptr, c_desc, a2_desc,
    # routing
    seg_ptr, widx_ptr,
    # fp8 scales (unused in MODE 0)
    sa_ptr, sb_ptr,
    # sizes
    M, N, Kd, E_w, batch, SB_N, SB_K, SA_K,
    # autotune keys only (rows per group, N and Kd, each rounded up to a power of two, so that
    # a sweep over many shapes retunes per size class, not per shape); unused in the body
    M_HINT, N_HINT, K_HINT,
    # meta
    MODE: tl.constexpr, QBN: tl.constexpr, QBK: tl.constexpr, BATCH_P: tl.constexpr,
    USE_TMA: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, PERSIST: tl.constexpr,
    WS: tl.constexpr, BM2: tl.constexpr,
):
    """c[r] = a[r] @ b[widx[g]].T for r in [seg[g], seg[g+1]), float32 accumulation.

    MODE 0: bf16/fp16/fp32 (fp32 dots in IEEE precision, no tf32).
    MODE 1: fp8 per tensor: acc * sa[e] * sb[e].
    MODE 2: fp8 block-wise with BK | QBK: each BK-slice's dot scaled by sa[r, kb] * sb[e, n // QBN, kb].
    MODE 3: fp8 block-wise, any [QBN, QBK]: operands dequantised element-wise, float32 IEEE dot.
    An m-tile is BM + BM2 rows of one group: BM rows in one accumulator and, when the group has
    rows past them, the next BM2 rows in a second one fed by the same weight tiles (BM2 = 0: one
    accumulator, the plain tile). Program p computes output tiles p, p + P, p + 2P, ... (P = the
    grid size: one tile per program when the grid covers them all, a persistent loop when PERSIST
    sized it by the SM count; PERSIST is the host's business only). seg values are clamped into
    [0, M] and groups with a weight index outside [0, E_w) are skipped, so no value of seg_indptr /
    weight_indices can cause an out-of-bounds access. With USE_TMA, a and b tiles come through
    the tensor-memory engine (zero-filled past the tensors' ends, so no K mask is needed); rows
    of a past the group's end (and rows of b past expert e's N, when BN does not divide N) are
    read but never stored. Tiles whose rows all lie in the group are stored by TMA too; a
    group's last, partial tile (and every second accumulator) through a descriptor made on the
    device whose rows end at the group's end, so TMA clips the rest; the pointer path stores
    with masks.
    """
    tl.static_assert((BM2 == 0) | (MODE != 3), "the element-wise block-wise path has one accumulator")
    TM: tl.constexpr = BM + BM2     # rows per m-tile
    # --- tiles per group and their prefix sum, in registers
    gi = tl.arange(0, BATCH_P)
    gmask = gi < batch
    lo = tl.load(seg_ptr + gi, mask=gmask, other=0)
    hi = tl.load(seg_ptr + gi + 1, mask=gmask, other=0)
    lo = tl.minimum(tl.maximum(lo, 0), M)
    hi = tl.minimum(tl.maximum(hi, lo), M)
    ntiles = ((hi - lo + TM - 1) // TM).to(tl.int32)
    cum = tl.cumsum(ntiles, axis=0)
    num_m = tl.sum(ntiles, axis=0)
    num_n = tl.cdiv(N, BN)
    # grouped ("swizzled") order: GROUP_M m-tiles share a band of B tiles in L2
    width = GROUP_M * num_n
    for t in range(tl.program_id(0), num_m * num_n, tl.num_programs(0)):
        first_m = (t // width) * GROUP_M
        gsize = tl.minimum(num_m - first_m, GROUP_M)
        mt = first_m + (t % width) % gsize
        nt = (t % width) // gsize
        # --- which group is m-tile mt
        g = tl.sum((cum <= mt).to(tl.int32), axis=0)
        sel = gi == g
        tile0 = tl.sum(tl.where(sel, cum - ntiles, 0), axis=0)
        row_lo = tl.sum(tl.where(sel, lo, 0), axis=0)
        row_hi = tl.sum(tl.where(sel, hi, 0), axis=0)
        e = tl.load(widx_ptr + g).to(tl.int64)
        if (e >= 0) & (e < E_w):
            row0 = row_lo + (mt - tile0).to(tl.int64) * TM
            rows = row0 + tl.arange(0, BM)
            rmask = rows < row_hi
            rows = tl.where(rmask, rows, 0)
            n0 = nt * BN
            cols = n0.to(tl.int64) + tl.arange(0, BN)
            nmask = cols < N
            cols = tl.where(nmask, cols, 0)
            if BM2 > 0:
                if row0 + BM < row_hi:   # the group has rows past the first BM: both accumulators
                    acc, acc2 = _k_loop(a_ptr, b_ptr, a2_desc, sa_ptr, sb_ptr, row0, row_hi, rows, rmask, cols, nmask,
                                        e, n0, N, Kd, SB_N, SB_K, SA_K, MODE, QBN, QBK, USE_TMA,
                                        BM, BN, BK, WS, BM2, True)
                    rows2 = row0 + BM + tl.arange(0, BM2)
                    rmask2 = rows2 < row_hi
                    _store_to_group_end(c_ptr, _tensor_scaled(acc2, sa_ptr, sb_ptr, e, MODE), row0 + BM,
                                        tl.where(rmask2, rows2, 0), rmask2, row_hi, cols, nmask, n0, N, USE_TMA,
                                        BM2, BN, False)
                else:   # (the placeholder's name differs: a branch's names must keep their types)
                    acc, no_acc2 = _k_loop(a_ptr, b_ptr, a2_desc, sa_ptr, sb_ptr, row0, row_hi, rows, rmask, cols,
                                           nmask, e, n0, N, Kd, SB_N, SB_K, SA_K, MODE, QBN, QBK, USE_TMA,
                                           BM, BN, BK, WS, BM2, False)
            else:
                acc, no_acc2 = _k_loop(a_ptr, b_ptr, a2_desc, sa_ptr, sb_ptr, row0, row_hi, rows, rmask, cols, nmask,
                                       e, n0, N, Kd, SB_N, SB_K, SA_K, MODE, QBN, QBK, USE_TMA,
                                       BM, BN, BK, WS, BM2, False)
            acc = _tensor_scaled(acc, sa_ptr, sb_ptr, e, MODE)
            if USE_TMA:
                # the packed cast only where triton 3.8 needs it (a wgmma tile, BM >= 64, whose one
                # accumulator is stored as it is): elsewhere inline PTX, opaque to LLVM, changed the
                # SASS under 3.6 and 3.9 (fp8 tiles: up to 39 registers more) and 3.8 did not need it
                PACK_C: tl.constexpr = (MODE == 0) and (BM2 == 0) and (BM >= 64) and (not _INTERPRETED)
                whole = row0 + BM <= row_hi    # the tile's rows all belong to this group
                if whole:   # (the store is clipped at N)
                    c_desc.store([row0.to(tl.int32), n0], _cast_c(acc, c_ptr.dtype.element_ty, PACK_C))
                else:   # a group's last tile
                    _store_to_group_end(c_ptr, acc, row0, rows, rmask, row_hi, cols, nmask, n0, N, USE_TMA,
                                        BM, BN, PACK_C)
            else:
                _store_to_group_end(c_ptr, acc, row0, rows, rmask, row_hi, cols, nmask, n0, N, USE_TMA, BM, BN,
                                    False)


def _set_tma_blocks(nargs):
    """Autotune pre-hook: a TMA descriptor's block shape is the tile of the config being run."""
    a, b, c, a2 = nargs["a_ptr"], nargs["b_ptr"], nargs["c_desc"], nargs["a2_desc"]
    if isinstance(a, TensorDescriptor):
        a.block_shape = [nargs["BM"], nargs["BK"]]
        b.block_shape = [nargs["BN"], nargs["BK"]]
        c.block_shape = [nargs["BM"], nargs["BN"]]
        a2.block_shape = [nargs["BM2"] or nargs["BM"], nargs["BK"]]   # unused when BM2 = 0


def _cfg(bm, bn, bk, warps, stages, group_m=8, persist=0, ws=False, bm2=0, maxnreg=None):
    """A tile config. persist > 0: a persistent grid of persist programs per SM; ws: warp-specialised
    K loop; bm2 > 0: m-tiles of bm + bm2 rows, the last bm2 in a second accumulator used only
    when the group reaches them; maxnreg: a register cap per thread (more programs per SM)."""
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group_m, "PERSIST": persist, "WS": ws,
                          "BM2": bm2},
                         num_warps=warps, num_stages=stages, maxnreg=maxnreg, pre_hook=_set_tma_blocks)


# Hopper-sensible tiles. Large: 128x256 / 128x128 / 64x256 with BK 64 (16-bit) or 128 (fp8);
# small-M (decode, few rows per expert): 16/32/64 x 128 with deep K.
# Two-accumulator tiles (bm2) last: the small-shape heuristic picks the first tile of a height.
_CONFIGS_16BIT = [
    _cfg(128, 256, 64, 8, 3), _cfg(128, 256, 64, 8, 3, persist=1), _cfg(128, 128, 64, 8, 4),
    _cfg(128, 128, 64, 4, 4), _cfg(128, 128, 64, 4, 4, persist=1), _cfg(64, 256, 64, 4, 4),
    _cfg(128, 128, 128, 8, 3), _cfg(64, 128, 128, 4, 4), _cfg(64, 64, 128, 4, 4),
    _cfg(32, 128, 128, 4, 4), _cfg(16, 128, 128, 4, 4), _cfg(16, 64, 256, 4, 3),
    _cfg(128, 256, 64, 8, 3, persist=1, group_m=16),
    # groups of ~1-1.5 tiles (DeepSeek EP8: 108-154 rows): H200, routed gate_up 718 -> 627 us
    _cfg(128, 128, 64, 4, 4, bm2=64), _cfg(64, 256, 64, 8, 4, bm2=64),
]
_CONFIGS_FP32 = [
    _cfg(128, 128, 32, 8, 3), _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 32, 4, 4), _cfg(32, 64, 32, 4, 4),
    _cfg(16, 64, 64, 4, 3),
]
_CONFIGS_FP8 = [
    _cfg(128, 256, 128, 8, 3), _cfg(128, 256, 128, 8, 3, persist=1), _cfg(128, 128, 128, 8, 4),
    _cfg(128, 128, 128, 4, 4), _cfg(64, 256, 128, 4, 4), _cfg(64, 128, 128, 4, 4), _cfg(128, 128, 64, 8, 4),
    _cfg(64, 128, 64, 4, 4), _cfg(32, 128, 128, 4, 4), _cfg(16, 128, 128, 4, 4), _cfg(16, 64, 256, 4, 3),
    _cfg(128, 128, 128, 4, 4, bm2=64), _cfg(64, 256, 128, 8, 3, bm2=64),
]
# extra BK = 64 tiles for block-wise bk = 64 (only tiles whose BK divides bk are kept there)
_CONFIGS_FP8_BK64 = [_cfg(128, 256, 64, 8, 4), _cfg(32, 128, 64, 4, 5), _cfg(16, 128, 64, 4, 5)]
# block-wise keeps two accumulators (the K block's product and the scaled sum) and waits for each
# K block's product: tiles of 4 warps (two CTAs per SM overlap each other's waits) did best there.
# Its family keeps BN <= 128 (the columns' scale is one scalar per K block) and one accumulator
# pair: wider or two-accumulator tiles spill there (compile_sm90.py --dtype fp8_block, triton 3.6).
# H200, Mixtral gate_up: 64x128 w4 s3 / s4 2,559 / 2,457 us, 128x128 w8 s3 2,638, persistent 2,514;
# 5 stages (3,246) and register caps for a third CTA per SM (2,674-2,926) were slower.
_CONFIGS_FP8_BLOCK = [_cfg(64, 128, 128, 4, 3), _cfg(128, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 3, persist=1)]
# the interpreter's tile has a second accumulator, so that CI runs both K loops (a tile whose group
# ends within its first 16 rows takes the one-accumulator loop)
_INTERP_CONFIG = {"BM": 16, "BN": 32, "BK": 32, "GROUP_M": 4, "PERSIST": 0, "WS": False, "BM2": 16}
# MODE 3 fallback (rare block shapes)
_GENERIC_CONFIG = {"BM": 32, "BN": 64, "BK": 32, "GROUP_M": 8, "PERSIST": 0, "WS": False, "BM2": 0}


# Below this many multiply-adds a GEMM is launch-bound: autotuning (benchmarking every
# config on each new shape) costs far more than it can win, so a tile is picked by rows per group.
AUTOTUNE_MIN_MACS = 1 << 30


def _heuristic_config(kind: str, qbk: int, m_hint: int) -> triton.Config:
    """The family's tile whose height (BM + BM2) best fits the rows per group: the lowest tile at
    least m_hint rows high (the first in the family's order among equals), else the highest."""
    family = _family(kind, qbk)

    def height(c):
        return c.kwargs["BM"] + c.kwargs["BM2"]

    fits = sorted((c for c in family if height(c) >= m_hint), key=lambda c: (height(c), -c.kwargs["BN"]))
    return fits[0] if fits else max(family, key=lambda c: (height(c), c.kwargs["BN"]))


# Autotune timings kept on disk (triton's cache directory) where this triton can: a new process
# (a serving worker, each child of a harness sweep) reuses them instead of re-benchmarking.
_AUTOTUNE_DISK_CACHE = (
    {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {})


@functools.lru_cache(maxsize=None)
def _tuner(kind: str, qbk: int):
    """One autotuner per config family; block-wise keeps only tiles whose BK divides bk. The
    operand path (USE_TMA) is part of the key: descriptors carry no dtype, and the best tile differs."""
    return triton.autotune(configs=_family(kind, qbk), key=["N_HINT", "K_HINT", "M_HINT", "USE_TMA"],
                           **_AUTOTUNE_DISK_CACHE)(_grouped_gemm_kernel)


def _family(kind: str, qbk: int):
    if kind == "fp32":
        configs = _CONFIGS_FP32
    elif kind == "fp8":
        configs = _CONFIGS_FP8
    elif kind == "fp8_block":
        configs = [c for c in _CONFIGS_FP8 + _CONFIGS_FP8_BK64 + _CONFIGS_FP8_BLOCK
                   if qbk % c.kwargs["BK"] == 0 and c.kwargs["BN"] <= 128 and c.kwargs["BM2"] == 0]
        if not configs:  # bk a multiple of 16 but of neither 64 nor 128: same tiles with BK = bk-ish
            bk = max(d for d in (16, 32) if qbk % d == 0)
            configs = [_cfg(64, 128, bk, 4, 4), _cfg(128, 128, bk, 8, 4), _cfg(32, 128, bk, 4, 4),
                       _cfg(16, 128, bk, 4, 4)]
    else:
        configs = _CONFIGS_16BIT
    return configs


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Grid cap of the configs without PERSIST, in programs per SM (0: no cap), for sweeps (grid_cap()).
# The grid is an upper bound on the tiles (cdiv(M, BM) + batch m-slots): under EP, a holds every slot of
# the batch (T*K rows) and only this rank's share (1/8 at EP8) is in seg_indptr, so most
# programs of an uncapped grid find no tile. Capping measured slower on the H200 (DeepSeek EP8
# gate_up 840 -> 903-927 us at 1-4 per SM; tools/explore_tiles.py --section gemm_ep): the
# empty programs cost little, the static tile loop more.
MAX_PROGRAMS_PER_SM = 0

# Off switch for A/B measurements (harness bench, tools/: tma_allowed()) and a way out should a
# triton release break descriptors: MOE_GEMM_TMA=0.
USE_TMA = os.environ.get("MOE_GEMM_TMA", "1") not in ("0", "false", "False", "")


# ----------------------------------------------------------------------------- public launch switches
# (optimized/config.py lists the whole public launch/config API)

# The @triton.jit kernel grouped_gemm launches, for compiling it ahead of time (tools/compile_sm90.py):
# its parameters, constexprs included, are those of _grouped_gemm_kernel's signature and docstring.
grouped_gemm_kernel = _grouped_gemm_kernel


def tma_allowed(allowed: bool):
    """Context manager: grouped_gemm takes TMA operands wherever they apply (True: the default,
    unless MOE_GEMM_TMA=0) or the pointer path only (False), for the block."""
    return _config.pinned_globals(globals(), USE_TMA=allowed)


def grid_cap(programs_per_sm: int):
    """Context manager: the grid of configs without PERSIST capped at ``programs_per_sm`` programs
    per SM for the block (0: no cap, the default; on the GPU only), the tile loop covering the rest."""
    return _config.pinned_globals(globals(), MAX_PROGRAMS_PER_SM=programs_per_sm)


@dataclasses.dataclass
class TilePin:
    """What pinned_tile() pins: ``tile`` (a triton.Config of BM, BN, BK and optionally GROUP_M,
    PERSIST, WS, BM2; num_warps, num_stages, maxnreg) and ``tma`` (None: TMA wherever it applies;
    True: TMA, or ValueError for operands it cannot take; False: pointers). ``kernel``: what the
    latest launch under the pin returned (on the GPU the compiled kernel, with n_regs and
    n_spills), None before the first."""

    tile: triton.Config
    tma: Optional[bool] = None
    kernel: object = None


_TILE_PIN: Optional[TilePin] = None


@contextlib.contextmanager
def pinned_tile(tile: triton.Config, tma: Optional[bool] = None) -> Iterator[TilePin]:
    """Context manager: every grouped_gemm launch in the block uses ``tile`` instead of an
    autotuned, heuristic or interpreter tile, on the operand path ``tma`` asks for (see TilePin);
    describe_last_launch() calls it "fixed". Yields the TilePin, whose ``kernel`` the launches
    update. Validation and fp8 block-wise quantisation run as in any call."""
    global _TILE_PIN
    saved, _TILE_PIN = _TILE_PIN, TilePin(tile, tma)
    try:
        yield _TILE_PIN
    finally:
        _TILE_PIN = saved


@contextlib.contextmanager
def fresh_autotuning() -> Iterator[None]:
    """Context manager: launches in the block autotune anew, through new autotuners that neither
    read nor write triton's disk cache of timings, so every key is timed again (what a sweep of a
    setting outside the autotune key, such as grid_cap, needs). On exit the block's autotuners are
    dropped and the disk cache setting comes back: later launches autotune again, from the disk
    cache where it holds their key."""
    global _AUTOTUNE_DISK_CACHE
    saved, _AUTOTUNE_DISK_CACHE = _AUTOTUNE_DISK_CACHE, {}
    _tuner.cache_clear()
    try:
        yield
    finally:
        _AUTOTUNE_DISK_CACHE = saved
        _tuner.cache_clear()


def _descriptor_scratch(size: int, alignment: int, stream):
    """Global memory for the descriptors the kernel makes on the device (128 bytes per program
    that makes one); from torch's caching allocator, so CUDA-graph capture keeps it."""
    return torch.empty(size, dtype=torch.int8, device=torch.cuda.current_device())


def _ensure_allocator():
    """Give triton an allocator for device-side descriptors unless the caller has set one."""
    try:
        unset = isinstance(_triton_allocation._allocator.get(), _triton_allocation.NullAllocator)
    except AttributeError:  # another triton layout (or none found): set ours
        unset = True
    if unset:
        triton.set_allocator(_descriptor_scratch)


def _tma_operands(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, mode: int):
    """(a_desc, b_desc, c_desc, a2_desc) when all three can go through TMA, else None.

    TMA wants 16-byte aligned bases and row strides (Kd * itemsize and N * c.itemsize multiples
    of 16), contiguous tensors, 16-bit or fp8 operands (float32 stays on the IEEE pointer path),
    int32 coordinates (E_w * N rows of b) and sm_90+. Other cases (a Kd not a multiple of 8,
    say) take the pointer path, so fuzzed sizes test both. Block shapes are placeholders here:
    each launch sets them to its tile (_set_tma_blocks).
    """
    M, Kd = a.shape
    E_w, N, _ = b.shape
    if (not USE_TMA or TensorDescriptor is None or mode == MODE_FP8_BLOCK_GENERIC or a.dtype == torch.float32
            or Kd == 0 or not (a.is_contiguous() and b.is_contiguous() and c.is_contiguous())
            or a.data_ptr() % 16 or b.data_ptr() % 16 or c.data_ptr() % 16
            or (Kd * a.element_size()) % 16 or (N * c.element_size()) % 16 or E_w * N >= 2 ** 31
            or M >= 2 ** 31):
        return None
    # the interpreter emulates descriptors (so CI runs this path); on a GPU they need sm_90+
    if not _config.is_interpreter() and not _config.is_hopper_or_newer(a.device.index):
        return None
    return (TensorDescriptor(a, [M, Kd], [Kd, 1], [16, 16]),
            TensorDescriptor(b, [E_w * N, Kd], [Kd, 1], [16, 16]),
            TensorDescriptor(c, [M, N], [N, 1], [16, 16]),
            TensorDescriptor(a, [M, Kd], [Kd, 1], [16, 16]))


def grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                 use_fp8_w8a8=False, scale_a=None, scale_b=None, block_shape=None):
    """SGLang's ``grouped_gemm_triton``.

    For group g and rows r in [seg_indptr[g], seg_indptr[g+1]): c[r] = a[r] @
    b[weight_indices[g]].T, float32 accumulation, cast to c's dtype. fp8 per tensor: times
    scale_a[e] * scale_b[e]. fp8 block-wise (block_shape [bn, bk]): a (bf16/fp16/fp32) is
    quantised per token group of bk by our Triton quantiser and each K-block's partial
    product is scaled by scale_a[r, kb] * scale_b[e, n // bn, kb]. seg_indptr may start
    above 0; groups may be empty; rows outside [seg[0], seg[batch]) are untouched. No host
    sync (value checks aside). Returns c.
    """
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                          use_fp8_w8a8, scale_a, scale_b, block_shape, check_values=_config.check_values())
    _config.reject_float64(a=a, c=c)
    M, Kd = a.shape
    E_w, N, _ = b.shape
    if batch_size == 0 or M == 0 or N == 0:
        return c
    sb_n = sb_k = sa_k = 1
    qbn = qbk = 1
    if block_shape is not None:
        qbn, qbk = block_shape
        a, scale_a = _quant(a, qbk, seg_indptr)      # only rows some group can read
        sa_k, sb_n, sb_k = scale_a.shape[1], scale_b.shape[1], scale_b.shape[2]
        mode = MODE_FP8_BLOCK if qbk % 16 == 0 else MODE_FP8_BLOCK_GENERIC
        kind = "fp8_block"
    elif use_fp8_w8a8:
        mode, kind = MODE_FP8_TENSOR, "fp8"
    else:
        mode, kind = MODE_PLAIN, ("fp32" if a.dtype == torch.float32 else "16bit")
    _launch(a, b, c, seg_indptr, weight_indices, scale_a, scale_b, batch_size, mode, kind, qbn, qbk,
            sb_n, sb_k, sa_k)
    return c


# What the last launch ran, for the bench's record beside its timing: (how the tile was chosen,
# its config, the autotuner's timings of the candidates for its key, operand path). Only
# references are kept per launch; describe_last_launch formats them when asked. The timings are
# remembered per autotune key when the autotuner produces them (it keeps only the latest).
_LAST_LAUNCH = ("", None, None, "")
_TUNE_TIMINGS = {}


def _config_text(cfg) -> str:
    """A tile config in one short line: 'BM 128 BN 128 BK 64 BM2 64 GROUP_M 8 w4 s4' (zero knobs left out)."""
    kw = cfg.kwargs
    parts = [f"{k} {kw[k]}" for k in ("BM", "BN", "BK", "BM2", "GROUP_M", "PERSIST", "WS") if kw.get(k)]
    parts += [f"w{cfg.num_warps}", f"s{cfg.num_stages}"]
    if getattr(cfg, "maxnreg", None):
        parts.append(f"maxnreg {cfg.maxnreg}")
    return " ".join(parts)


def _autotuned_text(pick, timings) -> str:
    """The autotuner's pick, and the runner-up's distance when the candidates' timings are known
    (timed by that launch, or read with the pick from triton's disk cache)."""
    text = f"autotuned: {_config_text(pick) if pick is not None else 'pick not exposed by this triton'}"
    if timings:
        def first(t):  # triton stores a list of quantiles (median first) or one number per config
            return t[0] if isinstance(t, (list, tuple)) else t
        ranked = sorted(timings, key=lambda c: first(timings[c]))
        if len(ranked) > 1 and first(timings[ranked[0]]) > 0:
            gap = first(timings[ranked[1]]) / first(timings[ranked[0]]) - 1
            text += f" (runner-up {_config_text(ranked[1])}, +{100 * gap:.1f}%, of {len(ranked)} timed)"
    else:
        text += " (picked earlier in this process)"
    return text


def describe_last_launch() -> str:
    """How the last grouped_gemm launch chose its tile: autotuned (the pick, and the runner-up when
    the candidates' timings for its key are known), heuristic (small problems), interpreter,
    generic or fixed; and its operand path."""
    how, cfg, timings, path = _LAST_LAUNCH
    if not how:
        return ""
    text = _autotuned_text(cfg, timings) if how == "autotuned" else f"{how}: {_config_text(cfg)}"
    return f"{text}, {path}"


def _launch(a, b, c, seg_indptr, weight_indices, scale_a, scale_b, batch_size, mode, kind, qbn, qbk,
            sb_n, sb_k, sa_k, config=None, use_tma=None):
    """Launch the GEMM kernel: autotuned (large), heuristic tile (small) or ``config`` (a
    triton.Config, for A/B measurements). ``use_tma`` None: TMA wherever it applies. Returns
    what the launch returned (with ``config``, the compiled kernel: registers, spills). Under
    pinned_tile() with no ``config``, the pin's tile and operand path."""
    pin = _TILE_PIN if config is None else None
    if pin is not None:
        config, use_tma = pin.tile, pin.tma
    M, Kd = a.shape
    E_w, N, _ = b.shape
    interp = _config.is_interpreter()
    descs = _tma_operands(a, b, c, mode) if use_tma is not False else None
    if use_tma and descs is None:
        raise ValueError("use_tma=True but these operands cannot go through TMA (alignment, dtype or device)")
    a_op, b_op, c_op, a2_op = descs if descs is not None else (a, b, c, a)
    if descs is not None and not interp:
        _ensure_allocator()
    dummy = c
    m_hint = min(4096, _config.next_pow2(triton.cdiv(M, batch_size)))
    args = (a_op, b_op, c, c_op, a2_op, seg_indptr, weight_indices,
            scale_a if scale_a is not None else dummy, scale_b if scale_b is not None else dummy,
            M, N, Kd, E_w, batch_size, sb_n, sb_k, sa_k,
            m_hint, _config.next_pow2(N), _config.next_pow2(Kd))
    meta = dict(MODE=mode, QBN=qbn, QBK=qbk, BATCH_P=max(16, _config.next_pow2(batch_size)),
                USE_TMA=descs is not None)

    def grid(META):
        # one program per possible tile (an upper bound: no host sync), capped at a few programs
        # per SM (the tile loop covers the rest), or a persistent grid
        tiles = (triton.cdiv(M, META["BM"] + META.get("BM2", 0)) + batch_size) * triton.cdiv(N, META["BN"])
        per_sm = META.get("PERSIST", 0) or MAX_PROGRAMS_PER_SM
        if per_sm and not interp:
            tiles = min(tiles, per_sm * _sm_count(c.device.index))
        return (tiles,)

    def fixed(cfg):
        kw = {"WS": False, "BM2": 0, **cfg.kwargs}   # configs from sweeps may omit the later knobs
        if descs is not None:
            _set_tma_blocks({"a_ptr": a_op, "b_ptr": b_op, "c_desc": c_op, "a2_desc": a2_op, **kw})
        cap = {"maxnreg": cfg.maxnreg} if getattr(cfg, "maxnreg", None) else {}
        return _grouped_gemm_kernel[grid](*args, **meta, **kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                          **cap)

    global _LAST_LAUNCH
    path = "TMA" if descs is not None else "pointers"
    if config is not None:
        _LAST_LAUNCH = ("fixed", config, None, path)
        kernel = fixed(config)
        if pin is not None:
            pin.kernel = kernel
        return kernel
    elif interp or mode == MODE_FP8_BLOCK_GENERIC:
        # the interpreter cannot afford autotuning: one small tile, BK dividing bk when block-wise
        cfg = dict(_INTERP_CONFIG if interp else _GENERIC_CONFIG)
        if mode == MODE_FP8_BLOCK:
            cfg["BK"] = 16 if qbk % 32 else 32
        elif mode == MODE_FP8_BLOCK_GENERIC:
            cfg["BM2"] = 0   # the element-wise block-wise path keeps one accumulator
        cfg = triton.Config(cfg, num_warps=4)
        _LAST_LAUNCH = ("interpreter tile" if interp else "generic tile", cfg, None, path)
        fixed(cfg)
    elif M * N * Kd < AUTOTUNE_MIN_MACS:
        cfg = _heuristic_config(kind, qbk, m_hint)
        _LAST_LAUNCH = ("heuristic (small problem)", cfg, None, path)
        fixed(cfg)
    else:
        tuner = _tuner(kind, qbk)
        timed_before = getattr(tuner, "configs_timings", None)   # replaced only when candidates are timed or loaded
        tuner[grid](*args, **meta)
        # as fine as triton's key (its key arguments and every tensor's dtype)
        key = (kind, qbk, mode, m_hint, N, Kd, descs is not None, a.dtype, b.dtype, c.dtype)
        timings = getattr(tuner, "configs_timings", None)
        if timings is not timed_before:
            _TUNE_TIMINGS[key] = timings
        # getattr: a triton without these attributes loses the description, never the launch
        _LAST_LAUNCH = ("autotuned", getattr(tuner, "best_config", None), _TUNE_TIMINGS.get(key), path)


__all__ = ["grouped_gemm", "per_token_group_quant_fp8"]
