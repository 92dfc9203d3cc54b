"""DeepGEMM's contiguous layout: ``ep_scatter`` (DeepEP-received tokens into per-expert
segments) and ``ep_gather`` (the weighted combine back to tokens); contracts in
reference/deepgemm_layout.py.

ep_scatter runs two launches, ordered by the stream: the first (one program per local
expert) computes each segment's start as the prefix sum of the padded sizes *in registers*
(never stored and read back: sglang#31929's race), labels the segment's m_indices rows
(masked to the segment: sglang#33128's padding rows get -1) and seeds expert_start_loc with
the start; the second (one program per token) takes a row per local slot with an atomic
counter on expert_start_loc (so the order inside a segment is the atomics', which the
harness compares order-free) and copies the token's row (and scales) there. ep_gather
accumulates each token's counted slots in float32, column block by column block. Row
offsets are int64 everywhere (sglang#6348: rows * H passes 2**31).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from reference._checks import ID_DTYPES, check_id_range, check_tensor
from reference.deepgemm_layout import _check_counts, _validate_scatter_common, validate_ep_gather

from . import _config
from ._tl import cast_out

__all__ = ["ep_scatter", "ep_gather", "pinned_launch"]

NUM_WARPS_SEGMENTS = 4
# ep_scatter copies a token's row to its K slots as one [KP, BLOCK_H] tile: the whole row at once
# (H100, H=7168, K=8: 9.9 / 33.0 us at T=1 / 4096 against 12.4 / 37.2 with 1024-column steps,
# results/2026-12-06-s15-h100), but never more than the 8 x 8192 elements measured there (a wider
# tile would only spill).
NUM_WARPS_SCATTER = 4
SCATTER_BLOCK_H = 8192
SCATTER_TILE_ELEMENTS = 8 * 8192
NUM_WARPS_GATHER = 4
GATHER_BLOCK_H = 1024
# m_indices rows labelled per step: two of SGLang's 128-row alignment blocks, so a segment of an
# odd number of blocks ends mid-step and the store's mask is what keeps it inside the segment.
SEGMENT_BLOCK = 256


@triton.jit
def _scatter_segments_kernel(padded_ptr, valid_ptr, start_loc_ptr, m_indices_ptr, E,
                             EP: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program e: seg_start = sum(padded[:e]); m_indices[seg_start + j] = e for j < valid[e],
    -1 for valid[e] <= j < padded[e]; expert_start_loc[e] = seg_start."""
    e = tl.program_id(0)
    ee = tl.arange(0, EP)
    padded_all = tl.load(padded_ptr + ee, mask=ee < E, other=0).to(tl.int64)
    seg_start = tl.sum(tl.where(ee < e, padded_all, 0), axis=0)
    padded = tl.load(padded_ptr + e).to(tl.int64)
    valid = tl.load(valid_ptr + e).to(tl.int64)
    for m0 in range(0, padded, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        labels = tl.where(rows < valid, e, -1)
        tl.store(m_indices_ptr + seg_start + rows, labels, mask=rows < padded)
    tl.store(start_loc_ptr + e, seg_start)


@triton.jit(do_not_specialize=["expert_start", "E"])
def _scatter_rows_kernel(x_ptr, xs_ptr, topk_ptr, start_loc_ptr, out_ptr, outs_ptr, index_ptr,
                         H, W, xs_s0, xs_s1, os_s0, os_s1, expert_start, E,
                         TOPK: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                         IS_FP8: tl.constexpr):
    """Program t: each local slot (t, k) takes the next row of its expert's segment (atomic),
    records it in output_index and receives token t's row (and scale row)."""
    t = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, KP)
    ids = tl.load(topk_ptr + t * TOPK + kk, mask=kk < TOPK, other=-1).to(tl.int64)
    e = ids - expert_start
    local = (kk < TOPK) & (ids >= 0) & (e >= 0) & (e < E)
    e_safe = tl.where(local, e, 0)
    ones = tl.full([KP], 1, dtype=start_loc_ptr.dtype.element_ty)
    dst = tl.atomic_add(start_loc_ptr + e_safe, ones, mask=local).to(tl.int64)
    tl.store(index_ptr + t * TOPK + kk, tl.where(local, dst, -1), mask=kk < TOPK)
    dst = tl.where(local, dst, 0)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        cmask = cols < H
        x = tl.load(x_ptr + t * H + cols, mask=cmask)
        val = tl.broadcast_to(x[None, :], (KP, BLOCK_H))
        tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None] & cmask[None, :])
    if IS_FP8:
        wc = tl.arange(0, BLOCK_W)
        wmask = wc < W
        s = tl.load(xs_ptr + t * xs_s0 + wc * xs_s1, mask=wmask)
        sval = tl.broadcast_to(s[None, :], (KP, BLOCK_W))
        tl.store(outs_ptr + dst[:, None] * os_s0 + wc[None, :] * os_s1, sval, mask=local[:, None] & wmask[None, :])


def ep_scatter(recv_x, recv_x_scale, recv_topk, num_recv_tokens_per_expert, num_valid_tokens_per_expert,
               expert_start_loc, output_tensor, output_tensor_scale, m_indices, output_index, scale_ue8m0=False,
               quant_block_size=128, expert_alignment=128, expert_start=0):
    """SGLang's ``ep_scatter`` (reference.deepgemm_layout.ep_scatter's contract; the row order
    inside a segment is the atomics'). Value checks (counts, alignment, room per expert) only
    under _config.check_values(): they read the counts on the host."""
    check_tensor("num_recv_tokens_per_expert", num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1,
                 device=recv_x.device if isinstance(recv_x, torch.Tensor) else None)
    E = num_recv_tokens_per_expert.shape[0]
    is_fp8 = _validate_scatter_common(recv_x, recv_x_scale, recv_topk, output_tensor, output_tensor_scale,
                                      output_index, expert_start_loc, m_indices, E, scale_ue8m0, quant_block_size)
    check_tensor("num_valid_tokens_per_expert", num_valid_tokens_per_expert, dtypes=ID_DTYPES, shape=(E,),
                 device=recv_x.device)
    _config.reject_float64(recv_x=recv_x)
    block_m = expert_alignment & -expert_alignment
    if m_indices.shape[0] % block_m:
        raise ValueError(f"m_indices: expected a multiple of {block_m} entries (expert_alignment's lowest set bit), "
                         f"got {m_indices.shape[0]}")
    if _config.check_values():
        padded = _check_counts("num_recv_tokens_per_expert", num_recv_tokens_per_expert, (E,), recv_x.device)
        valid = _check_counts("num_valid_tokens_per_expert", num_valid_tokens_per_expert, (E,), recv_x.device)
        if any(p % expert_alignment for p in padded) or any(v > p for v, p in zip(valid, padded)):
            raise ValueError(f"num_recv_tokens_per_expert: expected multiples of {expert_alignment}, each >= "
                             f"num_valid_tokens_per_expert's; got {padded[:16]} and {valid[:16]}")
        if sum(padded) > min(m_indices.shape[0], output_tensor.shape[0]):
            raise ValueError(f"m_indices: expected room for sum(num_recv_tokens_per_expert) = {sum(padded)} rows")
    if E:
        _scatter_segments_kernel[(E,)](num_recv_tokens_per_expert, num_valid_tokens_per_expert, expert_start_loc,
                                       m_indices, E, EP=_config.next_pow2(E), BLOCK_M=SEGMENT_BLOCK,
                                       num_warps=NUM_WARPS_SEGMENTS)
    n_tok, H = recv_x.shape
    topk = recv_topk.shape[1]
    if E == 0 or n_tok == 0 or topk == 0:
        return None
    xs = recv_x_scale if is_fp8 else recv_x
    outs = output_tensor_scale if is_fp8 else output_tensor
    W = recv_x_scale.shape[1] if is_fp8 else 1
    kp = _config.next_pow2(topk)
    block_h = min(_config.next_pow2(H), SCATTER_BLOCK_H, max(1, SCATTER_TILE_ELEMENTS // kp))
    _scatter_rows_kernel[(n_tok,)](
        recv_x, xs, recv_topk, expert_start_loc, output_tensor, outs, output_index,
        H, W, xs.stride(0), xs.stride(1) if is_fp8 else 0, outs.stride(0), outs.stride(1) if is_fp8 else 0,
        expert_start, E, TOPK=topk, KP=kp, BLOCK_H=block_h, BLOCK_W=_config.next_pow2(W), IS_FP8=is_fp8,
        num_warps=NUM_WARPS_SCATTER)
    return None


@triton.jit
def _gather_kernel(x_ptr, ids_ptr, w_ptr, index_ptr, out_ptr, H,
                   TOPK: tl.constexpr, BLOCK_H: tl.constexpr):
    """Program (t, column block): out[t, cols] = sum over counted k of x[index[t, k], cols] * w[t, k]."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k in tl.range(0, TOPK):
        # scalar loads and a uniform branch: a slot of another rank (-1) costs one 4-byte load
        # (slot vectors picked apart by reductions cost a shared-memory round trip per slot)
        eid = tl.load(ids_ptr + t * TOPK + k)
        if eid >= 0:
            src = tl.load(index_ptr + t * TOPK + k).to(tl.int64)
            w = tl.load(w_ptr + t * TOPK + k).to(tl.float32)
            rows = tl.load(x_ptr + src * H + cols, mask=cmask, other=0.0)
            acc += rows.to(tl.float32) * w
    tl.store(out_ptr + t * H + cols, cast_out(acc, out_ptr.dtype.element_ty), mask=cmask)


def ep_gather(input_tensor, recv_topk_ids, recv_topk_weight, input_index, output_tensor):
    """SGLang's ``ep_gather`` (reference.deepgemm_layout.ep_gather's contract). The input_index
    range check only under _config.check_values() (a host read)."""
    validate_ep_gather(input_tensor, recv_topk_ids, recv_topk_weight, input_index, output_tensor)
    rows, H = input_tensor.shape
    T, K = recv_topk_ids.shape
    _config.reject_float64(input_tensor=input_tensor, output_tensor=output_tensor, recv_topk_weight=recv_topk_weight)
    if _config.check_values():
        counted = recv_topk_ids >= 0
        if bool(counted.any()):
            check_id_range("input_index", input_index[counted], 0, rows - 1)
    if T == 0 or H == 0:
        return None
    block_h = min(GATHER_BLOCK_H, _config.next_pow2(H))
    _gather_kernel[(T, triton.cdiv(H, block_h))](input_tensor, recv_topk_ids, recv_topk_weight, input_index,
                                                 output_tensor, H, TOPK=K, BLOCK_H=block_h,
                                                 num_warps=NUM_WARPS_GATHER)
    return None


def pinned_launch(scatter_warps=None, scatter_block_h=None, segment_warps=None, gather_warps=None,
                  gather_block_h=None):
    """Context manager (optimized/config.py's switches): ep_scatter's row copy with
    ``scatter_warps`` and column tiles of ``scatter_block_h``, its segment labelling with
    ``segment_warps``; ep_gather with ``gather_warps`` and column tiles of ``gather_block_h``
    (powers of two). None leaves a knob as it is."""
    return _config.pinned_globals(globals(), NUM_WARPS_SCATTER=scatter_warps, SCATTER_BLOCK_H=scatter_block_h,
                                  NUM_WARPS_SEGMENTS=segment_warps, NUM_WARPS_GATHER=gather_warps,
                                  GATHER_BLOCK_H=gather_block_h)
