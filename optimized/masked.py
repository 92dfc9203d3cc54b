"""DeepGEMM's masked layout: the dispatch index (slot -> row of an ``[E_local, m_max, H]`` slab)
and the masked preprocess (tokens quantised to fp8 and scattered into the slab); contracts
in reference/deepgemm_layout.py.

Two launches, ordered by the stream. The dispatch kernel gives each local slot the next row
of its expert with an atomic counter (masked_m ends as the per-expert count; the order of an
expert's rows is the atomics', which the harness compares order-free); a single program
zeroes the counters itself before its atomics (one launch for decode-sized batches), larger
batches count into a zeroed buffer. The fill kernel (one program per token and column block
of whole quant groups; several tokens on the interpreter) reads the token's columns once, quantises them per group (float32
scale amax / 448, or its power-of-two ceiling for UE8M0), and stores the codes and scales
to each of the token's placed rows: SGLang's fp8 path quantises into an intermediate and
copies it with a second kernel. Slot rows are int64 before they are scaled by H (sglang#6348:
E_local * m_max * H passes 2**31 at DeepSeek-V3 prefill sizes).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from reference._checks import ID_DTYPES, check_int, check_tensor
from reference.deepgemm_layout import masked_capacity, validate_masked_preprocess

from . import _config
from ._tl import FP8_MAX, cast_out

__all__ = ["fused_moe_dispatch_index", "moe_ep_deepgemm_preprocess"]

NUM_WARPS = 4
# Up to this many slots (and local experts) the dispatch index is one program that zeroes its
# own counters: no memset launch before it.
SINGLE_PROGRAM_SLOTS = 4096
DISPATCH_BLOCK = 1024
# Columns per fill program: whole quant groups, about this many.
FILL_COLUMNS = 1024
# Tokens per fill program: one on the GPU (T programs per column block fill the card); several
# on the interpreter, whose cost is per program and per operation, not per element.
INTERPRETER_TOKENS = 16


@triton.jit(do_not_specialize=["n_slots", "m_max", "expert_start"])
def _dispatch_index_kernel(topk_ptr, src2dst_ptr, masked_m_ptr,
                           n_slots, E, m_max, expert_start,
                           BLOCK: tl.constexpr, EP: tl.constexpr, ZERO_COUNTS: tl.constexpr):
    """Slots [pid * BLOCK, +BLOCK): a local slot of expert e takes row e * m_max + (its
    expert's counter, incremented atomically); other slots get -1."""
    if ZERO_COUNTS:   # the only program: zero the counters, then a barrier before any atomic
        ee = tl.arange(0, EP)
        tl.store(masked_m_ptr + ee, tl.zeros([EP], dtype=tl.int32), mask=ee < E)
        tl.debug_barrier()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_slots
    ids = tl.load(topk_ptr + offs, mask=inside, other=-1).to(tl.int64)
    e = ids - expert_start
    local = inside & (ids >= 0) & (e >= 0) & (e < E)
    e_safe = tl.where(local, e, 0)           # masked lanes keep an in-bounds address
    rank = tl.atomic_add(masked_m_ptr + e_safe, tl.full([BLOCK], 1, dtype=tl.int32), mask=local)
    dst = e_safe * m_max + rank
    tl.store(src2dst_ptr + offs, tl.where(local, dst, -1).to(tl.int32), mask=inside)


def fused_moe_dispatch_index(topk_ids, num_local_experts, m_max, expert_start=0):
    """SGLang's ``fused_moe_dispatch_index`` (reference.deepgemm_layout's contract; the row
    order inside an expert is the atomics'). Returns (masked_m int32 [E_local], src2dst int32
    [topk_ids.numel()]). The bound masked_m <= m_max is checked only under
    _config.check_values() (it reads the counts on the host)."""
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES)
    check_int("num_local_experts", num_local_experts, lo=1)
    check_int("m_max", m_max, lo=1)
    check_int("expert_start", expert_start, lo=0)
    n = topk_ids.numel()
    dev = topk_ids.device
    src2dst = torch.empty(n, dtype=torch.int32, device=dev)
    single = max(n, num_local_experts) <= SINGLE_PROGRAM_SLOTS
    masked_m = (torch.empty if single else torch.zeros)(num_local_experts, dtype=torch.int32, device=dev)
    block = _config.next_pow2(max(n, 16)) if single else DISPATCH_BLOCK
    grid = (1,) if single else (triton.cdiv(n, block),)
    _dispatch_index_kernel[grid](topk_ids.reshape(-1), src2dst, masked_m, n, num_local_experts, m_max, expert_start,
                                 BLOCK=block, EP=_config.next_pow2(max(num_local_experts, 16)), ZERO_COUNTS=single,
                                 num_warps=NUM_WARPS)
    if _config.check_values() and n and int(masked_m.max()) > m_max:
        raise ValueError(f"m_max: expected at least the largest per-expert slot count {int(masked_m.max())}, "
                         f"got {m_max}")
    return masked_m, src2dst


@triton.jit(do_not_specialize=["T"])
def _fill_slab_kernel(x_ptr, src2dst_ptr, out_ptr, scale_ptr,
                      T, H, G, m_max,
                      TOPK: tl.constexpr, KP: tl.constexpr, GROUP: tl.constexpr, GROUPS: tl.constexpr,
                      TOKENS: tl.constexpr, QUANT: tl.constexpr, PACKED: tl.constexpr):
    """Program (b, c): tokens [b * TOKENS, +TOKENS), columns [c * GROUPS * GROUP, +GROUPS * GROUP),
    into each token's placed rows. QUANT: per group of GROUP columns, scale = max(amax, 1e-10) /
    448 (PACKED: its power-of-two ceiling, four biased exponents per int32, MN-major
    [E, G / 4, m_max]), codes fp8(clamp(x / scale)); otherwise a cast to the slab's dtype."""
    COLS: tl.constexpr = GROUPS * GROUP
    t = tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)
    tmask = t < T
    kk = tl.arange(0, KP)
    dst = tl.load(src2dst_ptr + t[:, None] * TOPK + kk[None, :], mask=tmask[:, None] & (kk < TOPK)[None, :],
                  other=-1).to(tl.int64)                                                 # [TOKENS, KP]
    placed = dst >= 0
    dst = tl.where(placed, dst, 0)
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
    cmask = cols < H
    x = tl.load(x_ptr + t[:, None] * H + cols[None, :], mask=tmask[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)                                                # [TOKENS, COLS]
    if QUANT:
        xg = tl.reshape(x, (TOKENS, GROUPS, GROUP))
        # IEEE divisions (div_rn): Triton's `/` on float32 is approximate (div.full.f32) and flips a code
        # or a scale now and then against the reference's correctly rounded ones (14 of 2.3e9 codes at
        # the large preset on an H100)
        amax = tl.maximum(tl.max(tl.abs(xg), axis=2), 1e-10)
        scale = tl.div_rn(amax, tl.full(amax.shape, FP8_MAX, tl.float32))                # [TOKENS, GROUPS]
        if PACKED:   # round the scale up to a power of two: exponent + 1 unless the mantissa is 0
            bits = scale.to(tl.int32, bitcast=True)
            expo = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
            scale = (expo << 23).to(tl.float32, bitcast=True)
        val = tl.reshape(cast_out(tl.div_rn(xg, tl.broadcast_to(scale[:, :, None], xg.shape)), tl.float8e4nv),
                         (TOKENS, COLS))
    else:
        val = x.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + dst[:, :, None] * H + cols[None, None, :],
             tl.broadcast_to(val[:, None, :], (TOKENS, KP, COLS)),
             mask=placed[:, :, None] & cmask[None, None, :])
    if QUANT:
        if PACKED:
            WORDS: tl.constexpr = GROUPS // 4
            shifts = tl.arange(0, 4) * 8
            words = tl.sum(tl.reshape(expo, (TOKENS, WORDS, 4)) << shifts[None, None, :], axis=2)  # bytes: sum = or
            w = tl.program_id(1) * WORDS + tl.arange(0, WORDS)
            expert, row = dst // m_max, dst % m_max
            addr = scale_ptr + (expert * (G // 4) * m_max + row)[:, :, None] + (w * m_max)[None, None, :]
            tl.store(addr, tl.broadcast_to(words[:, None, :], (TOKENS, KP, WORDS)),
                     mask=placed[:, :, None] & (w < G // 4)[None, None, :])
        else:
            g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
            tl.store(scale_ptr + dst[:, :, None] * G + g[None, None, :],
                     tl.broadcast_to(scale[:, None, :], (TOKENS, KP, GROUPS)),
                     mask=placed[:, :, None] & (g < G)[None, None, :])


def moe_ep_deepgemm_preprocess(topk_ids, num_local_experts, hidden_states, top_k, block_shape,
                               output_dtype=torch.float8_e4m3fn, use_mxfp8=False, expert_start=0,
                               deepgemm_scale_ue8m0=False, cap_m_max=False):
    """SGLang's ``moe_ep_deepgemm_preprocess`` (reference.deepgemm_layout's contract; rows in
    the atomics' order). block_k must be a power of two (SGLang's is 128). cap_m_max reads
    the largest count on the host (one sync, as SGLang's setting does); without it nothing
    syncs. Returns (masked_m, expected_m, src2dst, gateup_input, gateup_input_scale)."""
    block_k, is_fp8, packed = validate_masked_preprocess(topk_ids, num_local_experts, hidden_states, top_k,
                                                         block_shape, output_dtype, use_mxfp8, expert_start,
                                                         deepgemm_scale_ue8m0, cap_m_max)
    if block_k & (block_k - 1):
        raise ValueError(f"block_shape: expected block_k a power of two (the kernel's group tile), got {block_k}")
    _config.reject_float64(hidden_states=hidden_states)
    tokens, hidden = hidden_states.shape
    dev = hidden_states.device
    m_max, expected_m = masked_capacity(topk_ids, num_local_experts, tokens, expert_start, cap_m_max,
                                        fused_moe_dispatch_index)
    masked_m, src2dst = fused_moe_dispatch_index(topk_ids, num_local_experts, m_max, expert_start)
    gateup_input = torch.empty((num_local_experts, m_max, hidden), dtype=output_dtype, device=dev)
    groups = hidden // block_k if is_fp8 else 0
    if packed:
        gateup_input_scale = torch.empty((num_local_experts, groups // 4, m_max), dtype=torch.int32,
                                         device=dev).transpose(1, 2)
    elif is_fp8:
        gateup_input_scale = torch.empty((num_local_experts, m_max, groups), dtype=torch.float32, device=dev)
    else:
        gateup_input_scale = None
    if tokens and hidden:
        group = block_k if is_fp8 else 1
        per_program = max(4 if packed else 1, _config.next_pow2(max(FILL_COLUMNS // group, 1)))
        if is_fp8:   # no more groups per program than the row has (rounded up: a masked tail)
            per_program = min(per_program, max(4 if packed else 1, _config.next_pow2(groups)))
        else:
            per_program = min(per_program, _config.next_pow2(hidden))
        block_t = INTERPRETER_TOKENS if _config.is_interpreter() else 1
        grid = (triton.cdiv(tokens, block_t), triton.cdiv(hidden, per_program * group))
        _fill_slab_kernel[grid](hidden_states, src2dst, gateup_input,
                                gateup_input_scale if is_fp8 else gateup_input, tokens, hidden, groups, m_max,
                                TOPK=top_k, KP=_config.next_pow2(top_k), GROUP=group, GROUPS=per_program,
                                TOKENS=block_t, QUANT=is_fp8, PACKED=packed, num_warps=NUM_WARPS)
    return masked_m, expected_m, src2dst, gateup_input, gateup_input_scale
