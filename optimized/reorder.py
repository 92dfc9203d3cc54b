"""Gather token rows into expert order and combine them back (SPEC.md sections 3 and 5).

Both kernels work on [ROWS, BLOCK_H] tiles of token rows (grid: row blocks x column
blocks), load the ids / destinations of the tile's K slots as [ROWS, KP] tiles (one helper,
``_slot_tiles``), loop over the K slots with column k picked out in registers, and use int64
row offsets (T*K*H may exceed 2**31).
"""
from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl

from reference._checks import validate_post_reorder, validate_pre_reorder

from . import _config
from ._tl import cast_out
from .config import KernelLaunch


@triton.jit
def _slot_tiles(ids_ptr, src2dst_ptr, rows, rmask, n_rows, start_expert, end_expert,
                TOPK: tl.constexpr, KP: tl.constexpr):
    """The K slots of token ``rows`` as [ROWS, KP] tiles, loaded at once: (kk, slots, expert
    ids, src2dst rows, local). A slot is local when its expert is in [start, end] and its
    src2dst row in [0, n_rows) (anything else is skipped: memory safety)."""
    kk = tl.arange(0, KP)
    slots = rows[:, None] * TOPK + kk[None, :]
    m2 = rmask[:, None] & (kk < TOPK)[None, :]
    e2 = tl.load(ids_ptr + slots, mask=m2, other=-1).to(tl.int64)
    dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int64)
    local2 = m2 & (e2 >= start_expert) & (e2 <= end_expert) & (dst2 >= 0) & (dst2 < n_rows)
    return kk, slots, e2, dst2, local2


# Sizes that are neither strides nor offsets' alignment stay unspecialised (do_not_specialize):
# one compiled variant whatever their value, instead of one per (== 1, % 16 == 0, other) class.
@triton.jit(do_not_specialize=["T", "start_expert", "end_expert"])
def _pre_reorder_kernel(
    # pointers
    x_ptr, out_ptr, src2dst_ptr, ids_ptr, scales_ptr,
    # sizes
    T, H, start_expert, end_expert,
    # meta
    TOPK: tl.constexpr, KP: tl.constexpr, HAS_SCALES: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[src2dst[t*K+k]] = x[t] (scaled by 1/scales[e-start], cast) for every local slot.

    Each token tile is read once and written to each local slot's row; other rows of out
    are untouched. Destinations outside [0, T*K) are skipped (memory safety).
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < T
    cmask = cols < H
    kk, _, e2, dst2, local2 = _slot_tiles(ids_ptr, src2dst_ptr, rows, rmask, T * TOPK, start_expert, end_expert,
                                          TOPK, KP)
    # tokens without a local slot (under EP, most) are not read
    any_local = tl.max(local2.to(tl.int32), axis=1) > 0
    x = tl.load(x_ptr + rows[:, None] * H + cols[None, :], mask=(rmask & any_local)[:, None] & cmask[None, :],
                other=0.0)
    if HAS_SCALES:
        xf = x.to(tl.float32)
    for k in tl.static_range(TOPK):
        pick = kk[None, :] == k                                  # column k of the slot tiles
        e = tl.sum(tl.where(pick, e2, 0), axis=1)
        dst = tl.sum(tl.where(pick, dst2, 0), axis=1)
        local = tl.sum(tl.where(pick & local2, 1, 0), axis=1) > 0
        if HAS_SCALES:
            inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32
            val = cast_out(xf * inv[:, None], out_ptr.dtype.element_ty)
        else:
            val = x  # same dtype (the validator guarantees it): a plain copy, bit exact
        tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None] & cmask[None, :])


@triton.jit
def _slot_column(kk, k, src2, local2, w2):
    """Column k of the [ROWS, KP] slot tiles: (source row [ROWS], local [ROWS], weight [ROWS])."""
    pick = kk[None, :] == k
    src = tl.sum(tl.where(pick, src2, 0), axis=1)
    local = tl.sum(tl.where(pick & local2, 1, 0), axis=1) > 0
    w = tl.sum(tl.where(pick, w2, 0.0), axis=1)
    return src, local, w


@triton.jit
def _slot_term(down_ptr, src, local, w, cols, cmask, H):
    """down[src, cols] * w in float32 ([ROWS, BLOCK_H]); non-local rows: d = 0 and w = 0, so the term
    is +0, exactly like the reference's where(., ., 0)."""
    d = tl.load(down_ptr + src[:, None] * H + cols[None, :], mask=local[:, None] & cmask[None, :], other=0.0)
    return d.to(tl.float32) * w[:, None]


@triton.jit(do_not_specialize=["T", "start_expert", "end_expert", "n_rows"])
def _post_reorder_kernel(
    # pointers
    down_ptr, out_ptr, src2dst_ptr, ids_ptr, w_ptr,
    # sizes
    T, H, start_expert, end_expert, n_rows,
    # scalars
    factor,
    # meta
    TOPK: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
    SLOT_GROUP: tl.constexpr, SCALED: tl.constexpr,
):
    """out[t] = sum_k (local) down[src2dst[t*K+k]] * w[t, k] in float32, k in order (times
    ``factor`` when SCALED); rows t < T written. Rows of down outside [0, n_rows) are skipped."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < T
    cmask = cols < H
    # the slot tiles loaded at once: the K row loads below depend on nothing else, so they can
    # all be in flight together
    kk, slots, _, src2, local2 = _slot_tiles(ids_ptr, src2dst_ptr, rows, rmask, n_rows, start_expert, end_expert,
                                             TOPK, KP)
    w2 = tl.load(w_ptr + slots, mask=local2, other=0.0)
    acc = tl.zeros([ROWS, BLOCK_H], dtype=tl.float32)
    if SLOT_GROUP == 0:
        # every slot column's load issued, all K in flight at once (masked-off rows read nothing)
        for k in tl.static_range(TOPK):
            src, local, w = _slot_column(kk, k, src2, local2, w2)
            acc += _slot_term(down_ptr, src, local, w, cols, cmask, H)
    else:
        # slot columns in groups of SLOT_GROUP: a group that no row of the tile routes here issues no
        # load at all (under EP8 most), because a masked-off [ROWS, BLOCK_H] load still costs its
        # address and predicate math: the K of them made EP8's all-zero rows cost twice a plain
        # store. Groups taken are issued one after another. Skipped terms are +0 and acc (from
        # +0) is never -0, so every grouping gives the same bits.
        for k0 in tl.static_range(0, TOPK, SLOT_GROUP):
            in_group = (kk >= k0) & (kk < k0 + SLOT_GROUP)
            if tl.max(tl.max(tl.where(in_group[None, :] & local2, 1, 0), axis=1), axis=0) > 0:
                for j in tl.static_range(SLOT_GROUP):
                    if k0 + j < TOPK:
                        src, local, w = _slot_column(kk, k0 + j, src2, local2, w2)
                        acc += _slot_term(down_ptr, src, local, w, cols, cmask, H)
    if SCALED:
        acc = acc * factor
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], cast_out(acc, out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


# Tile size (elements per program) and warps of both kernels; module-level knobs, which pinned_tiles()
# and pinned_slot_group() set for a block (tools/explore_tiles.py sweeps them on the GPU).
TILE_ELEMS = 1024       # H200, T=4096, H=7168: EP8 pre 34 / post 56 us (2048: 37 / 62), all local equal
MAX_BLOCK_H = 1024
NUM_WARPS = 2           # H200, same shapes: EP8 pre 31 / post 45 us (4 warps: 34 / 56), all local equal
# post_reorder's slot columns per load group (0: no groups, all K loads unconditional; see the kernel).
# H200, ninth session, T=4096 H=7168 K=8, groups of 0 / 1 / 2 / 4 / 8: EP8 44.9 / 39.9 / 40.6 / 38.7 /
# 41.9 us, all local 133.3 / 139.7 / 136.7 / 134.4 / 137.0 us, T=256 EP8 8.7 / 10.1 / 10.0 / 9.3 / 10.3 us
POST_SLOT_GROUP = 4


def _row_tiles(T: int, H: int):
    """[ROWS, BLOCK_H] tile: whole rows for small H (several per program), MAX_BLOCK_H-column chunks for large H."""
    block_h = min(_config.next_pow2(max(H, 1)), MAX_BLOCK_H)
    rows = max(1, min(TILE_ELEMS // block_h, _config.next_pow2(max(T, 1))))
    return rows, block_h


def pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id,
                topk, hidden_size, BLOCK_SIZE=512):
    """SGLang's ``pre_reorder_triton_kernel`` without its grid (BLOCK_SIZE is validated, then
    ignored: the launcher picks its own tiling).

    input [T, H]; gateup_input [T*K, H] (written in place): for each slot s = t*K + k whose
    expert e is in [start, end], row src2dst[s] = input[t] (times 1/a1_scales[e - start] in
    float32 and cast, fp8 saturating to +-448, when scales are given). Other rows untouched.
    """
    validate_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id,
                         topk, hidden_size, BLOCK_SIZE, check_values=_config.check_values())
    _config.reject_float64(input=input)
    T, H = input.shape
    if T == 0 or H == 0:
        return None
    rows, block_h = _row_tiles(T, H)
    grid = (triton.cdiv(T, rows), triton.cdiv(H, block_h))
    _pre_reorder_kernel[grid](
        input, gateup_input, src2dst, topk_ids, a1_scales if a1_scales is not None else input,
        T, H, start_expert_id, end_expert_id,
        TOPK=topk, KP=_config.next_pow2(topk), HAS_SCALES=a1_scales is not None, ROWS=rows, BLOCK_H=block_h,
        num_warps=NUM_WARPS)
    return None


def post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id, end_expert_id,
                 topk, hidden_size, BLOCK_SIZE=512):
    """SGLang's ``post_reorder_triton_kernel`` without its grid (BLOCK_SIZE validated, ignored).

    output[t] = sum over local slots (t, k), k ascending, of down_output[src2dst[t*K+k]] *
    topk_weights[t, k], accumulated in float32 and cast to output's dtype. Every row of
    output is written (zeros where no expert is local).
    """
    validate_post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id,
                          end_expert_id, topk, hidden_size, BLOCK_SIZE, check_values=_config.check_values())
    _config.reject_float64(down_output=down_output, output=output)
    T, H = output.shape
    if T == 0 or H == 0:
        return None
    rows, block_h = _row_tiles(T, H)
    grid = (triton.cdiv(T, rows), triton.cdiv(H, block_h))
    _post_reorder_kernel[grid](
        down_output, output, src2dst, topk_ids, topk_weights,
        T, H, start_expert_id, end_expert_id, T * topk, 1.0,
        TOPK=topk, KP=_config.next_pow2(topk), ROWS=rows, BLOCK_H=block_h,
        SLOT_GROUP=POST_SLOT_GROUP, SCALED=False, num_warps=NUM_WARPS)
    return None


# ----------------------------------------------------------------------------- public launch switches
# (optimized/config.py lists the whole public launch/config API)

def pinned_tiles(tile_elems: Optional[int] = None, num_warps: Optional[int] = None,
                 max_block_h: Optional[int] = None):
    """Context manager: pre_reorder's and post_reorder's tiles for the block (None: as they are).
    tile_elems: elements per program (a power of 2); num_warps: warps per program; max_block_h:
    the widest column block (a power of 2; wider rows are split into blocks of this width)."""
    return _config.pinned_globals(globals(), TILE_ELEMS=tile_elems, NUM_WARPS=num_warps, MAX_BLOCK_H=max_block_h)


def pinned_slot_group(size: int):
    """Context manager: post_reorder loads its slot columns in groups of ``size`` for the block,
    a group that no row of a tile routes here issuing no load (0: no groups, every load issued)."""
    return _config.pinned_globals(globals(), POST_SLOT_GROUP=size)


def pre_reorder_launch(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id,
                       topk) -> KernelLaunch:
    """The kernel launch of pre_reorder with these arguments under the knobs as they stand (its
    tile, grid and warps): launching it writes what that call writes. Nothing is validated; input
    must not be empty."""
    T, H = input.shape
    rows, block_h = _row_tiles(T, H)
    return KernelLaunch(
        _pre_reorder_kernel, (triton.cdiv(T, rows), triton.cdiv(H, block_h)),
        (input, gateup_input, src2dst, topk_ids, a1_scales if a1_scales is not None else input,
         T, H, start_expert_id, end_expert_id),
        dict(TOPK=topk, KP=_config.next_pow2(topk), HAS_SCALES=a1_scales is not None, ROWS=rows, BLOCK_H=block_h,
             INTERP=_config.is_interpreter()),
        dict(num_warps=NUM_WARPS))


__all__ = ["pre_reorder", "post_reorder"]
