"""The layouts in which SGLang's EP-MoE feeds DeepGEMM's grouped GEMMs (SGLang 0.5.23,
``sglang/kernels/ops/moe/ep_moe_kernels.py``), as pure-PyTorch references.

Contiguous layout: the routed rows of local expert e occupy one segment of a flat
``[rows, H]`` buffer, segments in expert order; ``m_indices[row]`` names the expert of each
row (DeepGEMM skips rows whose index is -1). Masked layout: a ``[E_local, m_max, H]`` slab
with ``masked_m[e]`` live rows per expert.

Where SGLang assigns a destination row with an atomic counter, the order of an expert's
rows inside its segment is implementation-defined: an implementation is correct when its
index output (``output_index`` / ``src2dst``) is a valid assignment and the data moved agrees
with it. The references assign rows in ascending flat slot order (s = t * topk + k), one
such valid order; compare order-free through the index outputs.

Outputs that SGLang allocates with torch.empty and leaves partly unwritten are returned by
the references holding poison there (see quant.poisoned); in-place outputs are left
exactly as they were outside the elements each docstring defines.

Named bugs these contracts rule out (SGLang history): int32 overflow of row offsets in
ep_scatter / ep_gather (sglang#6348: offsets are int64 for any buffer size); ep_scatter's
m_indices stores running past an expert's segment (the store must stop at the segment,
here: segments are multiples of expert_alignment, and nothing past sum(counts) is written);
ep_scatter_1's store-then-reload of expert_start_loc without a barrier (sglang#31929: the
segment start must be the prefix sum itself); padding rows of a segment labelled with the
expert instead of -1 (sglang#33128: rows past num_valid_tokens_per_expert[e] get -1).
"""
from __future__ import annotations

import torch

from ._checks import ACT_DTYPES, FP8_DTYPE, ID_DTYPES, check_id_range, check_int, check_tensor
from .quant import (ceil_to_ue8m0_exponent, check_bool, check_float, pack_ue8m0_exponents, poisoned,
                    quantize_groups)

DATA_DTYPES = ACT_DTYPES + (FP8_DTYPE,)
SCALE_COPY_DTYPES = (torch.float32, torch.int32)
DEEPGEMM_BLOCK_M = 256   # moe_ep_deepgemm_preprocess rounds m_max to this


def _align_up(v: torch.Tensor, a: int) -> torch.Tensor:
    return (v + a - 1) // a * a


def _flat_local_slots(ids: torch.Tensor, first: int, num_experts: int):
    """(flat slot indices, local expert of each) of ids [T, K] whose id - first is in [0, num_experts)."""
    local = ids.reshape(-1).to(torch.int64) - first
    slots = torch.nonzero((local >= 0) & (local < num_experts)).flatten()
    return slots, local[slots]


def _rank_in_expert(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """For each entry, how many earlier entries share its expert (a stable counting sort)."""
    order = torch.sort(experts, stable=True).indices
    counts = torch.bincount(experts, minlength=num_experts)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(experts)
    rank[order] = torch.arange(experts.numel(), device=experts.device) - first[experts[order]]
    return rank


def _check_counts(name: str, t: torch.Tensor, shape, device) -> list:
    check_tensor(name, t, dtypes=ID_DTYPES, shape=shape, device=device)
    values = t.tolist()
    if any(v < 0 for v in values):
        raise ValueError(f"{name}: expected non-negative counts, got {values[:16]}")
    return values


def _check_psum(name: str, psum, num_experts: int, device, alignment: int) -> list:
    """DeepEP's inclusive per-expert prefix sum: psum[e] >= align(psum[e-1], alignment) >= 0."""
    values = _check_counts(name, psum, (num_experts,), device)
    prev = 0
    for e, v in enumerate(values):
        start = -(-prev // alignment) * alignment
        if v < start:
            raise ValueError(f"{name}: expected psum[{e}] >= {start} (psum[{e - 1}] = {prev} rounded up to "
                             f"{alignment}), got {v}")
        prev = v
    return values


def _scale_width(hidden: int, quant_block_size: int, scale_ue8m0: bool) -> int:
    width = hidden // quant_block_size
    return -(-width // 4) if scale_ue8m0 else width


def _validate_scatter_common(recv_x, recv_x_scale, recv_topk, output_tensor, output_tensor_scale, output_index,
                             expert_start_loc, m_indices, num_experts, scale_ue8m0, quant_block_size):
    """Shared checks of ep_scatter / ep_scatter_from_psum; returns is_fp8 (scales are copied)."""
    check_tensor("recv_x", recv_x, dtypes=DATA_DTYPES, ndim=2)
    dev = recv_x.device
    n_tok, hidden = recv_x.shape
    check_tensor("recv_topk", recv_topk, dtypes=ID_DTYPES, ndim=2, device=dev)
    if recv_topk.shape[0] != n_tok:
        raise ValueError(f"recv_topk: expected {n_tok} rows (one per row of recv_x), got shape {tuple(recv_topk.shape)}")
    check_tensor("output_tensor", output_tensor, dtypes=(recv_x.dtype,), ndim=2, device=dev)
    if output_tensor.shape[1] != hidden:
        raise ValueError(f"output_tensor: expected shape (*, {hidden}), got {tuple(output_tensor.shape)}")
    check_tensor("output_index", output_index, dtypes=ID_DTYPES, shape=tuple(recv_topk.shape), device=dev)
    check_tensor("expert_start_loc", expert_start_loc, dtypes=ID_DTYPES, shape=(num_experts,), device=dev)
    check_tensor("m_indices", m_indices, dtypes=ID_DTYPES, ndim=1, device=dev)
    check_bool("scale_ue8m0", scale_ue8m0)
    check_int("quant_block_size", quant_block_size, lo=1)
    is_fp8 = recv_x_scale is not None and recv_x.dtype != torch.bfloat16
    if is_fp8:
        width = _scale_width(hidden, quant_block_size, scale_ue8m0)
        check_tensor("recv_x_scale", recv_x_scale, dtypes=SCALE_COPY_DTYPES, shape=(n_tok, width), device=dev,
                     contiguous=False)
        check_tensor("output_tensor_scale", output_tensor_scale, dtypes=(recv_x_scale.dtype,), ndim=2, device=dev,
                     contiguous=False)
        if output_tensor_scale.shape != (output_tensor.shape[0], width):
            raise ValueError(f"output_tensor_scale: expected shape ({output_tensor.shape[0]}, {width}) (a scale row "
                             f"per output row), got {tuple(output_tensor_scale.shape)}")
    return is_fp8


def _scatter_rows(recv_x, recv_x_scale, recv_topk, first_expert, num_experts, seg_start, capacity, is_fp8,
                  output_tensor, output_tensor_scale, output_index, expert_start_loc, capacity_name):
    """Place each local slot at seg_start[e] + its rank in e; fill output_index and expert_start_loc."""
    slots, experts = _flat_local_slots(recv_topk, first_expert, num_experts)
    routed = torch.bincount(experts, minlength=num_experts).tolist()
    for e in range(num_experts):
        if routed[e] > capacity[e]:
            raise ValueError(f"{capacity_name}: expert {e} has {routed[e]} routed slots in recv_topk but room for "
                             f"{capacity[e]}")
    starts = torch.tensor(seg_start, dtype=torch.int64, device=recv_x.device)
    dst = starts[experts] + _rank_in_expert(experts, num_experts)                      # [S]
    tokens = slots // recv_topk.shape[1]
    output_tensor[dst] = recv_x[tokens]
    if is_fp8:
        output_tensor_scale[dst] = recv_x_scale[tokens]
    flat_index = torch.full((recv_topk.numel(),), -1, dtype=torch.int64, device=recv_x.device)
    flat_index[slots] = dst
    output_index.copy_(flat_index.view(recv_topk.shape))
    expert_start_loc.copy_(starts + torch.tensor(routed, dtype=torch.int64, device=recv_x.device))


def ep_scatter(recv_x, recv_x_scale, recv_topk, num_recv_tokens_per_expert, num_valid_tokens_per_expert,
               expert_start_loc, output_tensor, output_tensor_scale, m_indices, output_index, scale_ue8m0=False,
               quant_block_size=128, expert_alignment=128, expert_start=0):
    """SGLang's ``ep_scatter``: tokens received by DeepEP into the contiguous layout.

    recv_x [N, H] (bf16, fp8 or another float; contiguous), recv_topk [N, K] int32/int64 of
    GLOBAL expert ids (a slot is local when id - expert_start is in [0, E_local); -1 never is),
    num_recv_tokens_per_expert int [E_local]: the padded segment sizes, each a multiple of
    expert_alignment; num_valid_tokens_per_expert int [E_local] with
    routed(e) <= valid[e] <= padded[e], routed(e) = local slots of e.
    Scales (is_fp8 = recv_x_scale is given and recv_x is not bf16; bf16 inputs ignore them):
    recv_x_scale [N, W] float32 (W = H / quant_block_size) or int32 packed UE8M0 (scale_ue8m0:
    W = ceil(H / quant_block_size / 4)); output_tensor_scale of the same dtype, [rows, W], any strides.
    With start[e] = sum(padded[:e]):
    - m_indices[start[e] + j] = e (local id) for j < valid[e] and -1 for valid[e] <= j < padded[e];
      entries past sum(padded) are left as they were. m_indices must have at least sum(padded)
      entries, a multiple of the lowest set bit of expert_alignment (SGLang asserts it).
    - each local slot (t, k) of e gets its own row start[e] + r, r in [0, routed(e)), order
      implementation-defined (atomics): output_tensor[row] = recv_x[t] (bit copy),
      output_tensor_scale[row] = recv_x_scale[t] when is_fp8, output_index[t, k] = row.
      Non-local slots: output_index = -1. Rows of a segment past routed(e) are left as they were.
    - expert_start_loc[e] = start[e] + routed(e) on return (SGLang's atomic counters' final value).
    Returns None.
    """
    check_tensor("recv_x", recv_x, dtypes=DATA_DTYPES, ndim=2)
    dev = recv_x.device
    check_int("expert_alignment", expert_alignment, lo=1)
    check_int("expert_start", expert_start, lo=0)
    check_tensor("num_recv_tokens_per_expert", num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1, device=dev)
    num_experts = num_recv_tokens_per_expert.shape[0]
    is_fp8 = _validate_scatter_common(recv_x, recv_x_scale, recv_topk, output_tensor, output_tensor_scale,
                                      output_index, expert_start_loc, m_indices, num_experts, scale_ue8m0,
                                      quant_block_size)
    padded = _check_counts("num_recv_tokens_per_expert", num_recv_tokens_per_expert, (num_experts,), dev)
    valid = _check_counts("num_valid_tokens_per_expert", num_valid_tokens_per_expert, (num_experts,), dev)
    if any(p % expert_alignment for p in padded):
        raise ValueError(f"num_recv_tokens_per_expert: expected multiples of expert_alignment={expert_alignment}, "
                         f"got {padded[:16]}")
    if any(v > p for v, p in zip(valid, padded)):
        raise ValueError(f"num_valid_tokens_per_expert: expected each count <= num_recv_tokens_per_expert's, "
                         f"got {valid[:16]} against {padded[:16]}")
    total = sum(padded)
    block_e = expert_alignment & -expert_alignment
    if m_indices.shape[0] < total or m_indices.shape[0] % block_e:
        raise ValueError(f"m_indices: expected at least sum(num_recv_tokens_per_expert) = {total} entries, a multiple "
                         f"of {block_e}, got {m_indices.shape[0]}")
    if output_tensor.shape[0] < total:
        raise ValueError(f"output_tensor: expected at least {total} rows (sum(num_recv_tokens_per_expert)), "
                         f"got {output_tensor.shape[0]}")
    seg_start = [sum(padded[:e]) for e in range(num_experts)]
    for e in range(num_experts):
        row = torch.arange(padded[e], device=m_indices.device)
        m_indices[seg_start[e]:seg_start[e] + padded[e]] = torch.where(row < valid[e], e, -1).to(m_indices.dtype)
    _scatter_rows(recv_x, recv_x_scale, recv_topk, expert_start, num_experts, seg_start, valid, is_fp8,
                  output_tensor, output_tensor_scale, output_index, expert_start_loc, "num_valid_tokens_per_expert")


def ep_scatter_from_psum(recv_x, recv_x_scale, recv_topk, psum_num_recv_tokens_per_expert, expert_start_loc,
                         output_tensor, output_tensor_scale, m_indices, output_index, scale_ue8m0=False,
                         quant_block_size=128):
    """SGLang's ``ep_scatter_from_psum`` (DeepEP v2, segments given by a device prefix sum).

    As ep_scatter, with these differences: recv_topk holds LOCAL expert ids (a slot is local
    when its id is in [0, E_local)); psum_num_recv_tokens_per_expert int [E_local] is the
    inclusive prefix sum of the segment sizes (non-decreasing, >= 0), segment e being
    [start[e], psum[e]) with start[e] = psum[e-1] (0 for e = 0) and routed(e) <= its size;
    m_indices[row] = e for EVERY row of segment e (alignment padding included: no -1 here),
    entries past psum[-1] left as they were; m_indices must have at least psum[-1] entries, a
    multiple of 128 (SGLang asserts it). Data rows, scales, output_index and
    expert_start_loc (= start[e] + routed(e)) as in ep_scatter. Returns None.
    """
    check_tensor("recv_x", recv_x, dtypes=DATA_DTYPES, ndim=2)
    check_tensor("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1,
                 device=recv_x.device)
    num_experts = psum_num_recv_tokens_per_expert.shape[0]
    is_fp8 = _validate_scatter_common(recv_x, recv_x_scale, recv_topk, output_tensor, output_tensor_scale,
                                      output_index, expert_start_loc, m_indices, num_experts, scale_ue8m0,
                                      quant_block_size)
    psum = _check_psum("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, num_experts,
                       recv_x.device, 1)
    total = psum[-1] if psum else 0
    if m_indices.shape[0] < total or m_indices.shape[0] % 128:
        raise ValueError(f"m_indices: expected at least psum[-1] = {total} entries, a multiple of 128, "
                         f"got {m_indices.shape[0]}")
    if output_tensor.shape[0] < total:
        raise ValueError(f"output_tensor: expected at least psum[-1] = {total} rows, got {output_tensor.shape[0]}")
    seg_start = [0] + psum[:-1]
    for e in range(num_experts):
        m_indices[seg_start[e]:psum[e]] = e
    sizes = [end - start for start, end in zip(seg_start, psum)]
    _scatter_rows(recv_x, recv_x_scale, recv_topk, 0, num_experts, seg_start, sizes, is_fp8, output_tensor,
                  output_tensor_scale, output_index, expert_start_loc, "psum_num_recv_tokens_per_expert")


def fill_m_indices_from_psum(psum_num_recv_tokens_per_expert, num_local_experts, total_rows, expert_alignment):
    """SGLang's ``fill_m_indices_from_psum`` (DeepEP v2 expanded prefill).

    psum int [num_local_experts]: DeepEP's expanded prefix sum, psum[e] = align(psum[e-1]) +
    count(e) (align = round up to expert_alignment; psum[-1] for e = 0 is 0). total_rows must be
    a multiple of expert_alignment. Returns m_indices int32 [total_rows]: rows
    [align(psum[e-1]), align(psum[e])) hold e (alignment padding included), clipped to
    total_rows; every other row holds -1.
    """
    check_int("num_local_experts", num_local_experts, lo=0)
    check_int("total_rows", total_rows, lo=0)
    check_int("expert_alignment", expert_alignment, lo=1)
    if total_rows % expert_alignment:
        raise ValueError(f"total_rows: expected a multiple of expert_alignment={expert_alignment}, got {total_rows}")
    check_tensor("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1)
    psum = _check_psum("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, num_local_experts,
                       psum_num_recv_tokens_per_expert.device, expert_alignment)
    m_indices = torch.full((total_rows,), -1, dtype=torch.int32, device=psum_num_recv_tokens_per_expert.device)
    prev = 0
    for e, end in enumerate(psum):
        start, seg_end = -(-prev // expert_alignment) * expert_alignment, -(-end // expert_alignment) * expert_alignment
        m_indices[start:min(seg_end, total_rows)] = e
        prev = end
    return m_indices


def validate_ep_gather(input_tensor, recv_topk_ids, recv_topk_weight, input_index, output_tensor):
    """ep_gather's argument checks without reading values (shared with the Triton launcher)."""
    check_tensor("input_tensor", input_tensor, dtypes=ACT_DTYPES, ndim=2)
    dev = input_tensor.device
    rows, hidden = input_tensor.shape
    if hidden % 128:
        raise ValueError(f"input_tensor: expected a hidden size that is a multiple of 128, got shape {tuple(input_tensor.shape)}")
    check_tensor("output_tensor", output_tensor, dtypes=ACT_DTYPES, ndim=2, device=dev)
    tokens = output_tensor.shape[0]
    if output_tensor.shape[1] != hidden:
        raise ValueError(f"output_tensor: expected shape ({tokens}, {hidden}), got {tuple(output_tensor.shape)}")
    check_tensor("recv_topk_ids", recv_topk_ids, dtypes=ID_DTYPES, ndim=2, device=dev)
    if recv_topk_ids.shape[0] != tokens:
        raise ValueError(f"recv_topk_ids: expected {tokens} rows (output_tensor's), got shape {tuple(recv_topk_ids.shape)}")
    topk = recv_topk_ids.shape[1]
    check_tensor("recv_topk_weight", recv_topk_weight, dtypes=ACT_DTYPES, shape=(tokens, topk), device=dev)
    check_tensor("input_index", input_index, dtypes=ID_DTYPES, shape=(tokens, topk), device=dev)


def ep_gather(input_tensor, recv_topk_ids, recv_topk_weight, input_index, output_tensor):
    """SGLang's ``ep_gather``: weighted combine of contiguous-layout rows back to tokens.

    input_tensor [R, H] float (H a multiple of 128), recv_topk_ids [T, K] int (a slot counts
    when its id is >= 0), recv_topk_weight [T, K] float, input_index [T, K] int (rows of
    input_tensor; in [0, R) for every slot that counts), output_tensor [T, H] float.
    output_tensor[t] = sum over k with recv_topk_ids[t, k] >= 0, in order of k, of
    float32(input_tensor[input_index[t, k]]) * recv_topk_weight[t, k], accumulated in float32
    and cast to output_tensor's dtype. Every row is written (zeros for a token with no slot). Returns None.
    """
    validate_ep_gather(input_tensor, recv_topk_ids, recv_topk_weight, input_index, output_tensor)
    dev = input_tensor.device
    rows, hidden = input_tensor.shape
    tokens, topk = recv_topk_ids.shape
    counted = recv_topk_ids >= 0
    if bool(counted.any()):
        check_id_range("input_index", input_index[counted], 0, rows - 1)
    acc_t = torch.float64 if torch.float64 in (input_tensor.dtype, output_tensor.dtype) else torch.float32
    acc = torch.zeros(tokens, hidden, dtype=acc_t, device=dev)
    for k in range(topk):
        take = counted[:, k]                     # only routed slots index input_tensor (it may have no rows)
        rows_k = input_tensor[input_index[take, k].to(torch.int64)].to(acc_t)
        acc[take] += rows_k * recv_topk_weight[take, k, None].to(acc_t)
    output_tensor.copy_(acc.to(output_tensor.dtype))


def post_reorder_deepgemm(down_output, output, src2dst, topk_ids, topk_weights, topk, num_tokens, hidden_size,
                          routed_scaling_factor, lora_delta=None):
    """SGLang's ``post_reorder_deepgemm``: weighted combine by src2dst, with routed scaling.

    down_output [R, hidden_size] float; output [>= num_tokens, hidden_size] float;
    src2dst int [num_tokens * topk] (flat slot -> row of down_output, negative = skip; a row in
    [0, R) otherwise); topk_ids [num_tokens, topk] int (not read: SGLang passes it, its kernel
    ignores it); topk_weights [num_tokens, topk] float; lora_delta None or
    [num_tokens, topk, hidden_size] contiguous float, an unweighted per-slot addend.
    output[t] = output dtype(routed_scaling_factor * sum over k with src2dst[t*topk + k] >= 0,
    in order of k, of (float32(down_output[row]) + float32(lora_delta[t, k])) * topk_weights[t, k]),
    in float32. Rows t < num_tokens are all written (zeros where no slot counts); rows past
    num_tokens are left as they were. Returns None.
    """
    check_int("topk", topk, lo=1)
    check_int("num_tokens", num_tokens, lo=0)
    check_int("hidden_size", hidden_size, lo=0)
    rsf = check_float("routed_scaling_factor", routed_scaling_factor)
    check_tensor("down_output", down_output, dtypes=ACT_DTYPES, ndim=2)
    dev = down_output.device
    if down_output.shape[1] != hidden_size:
        raise ValueError(f"hidden_size: expected down_output.shape[1] = {down_output.shape[1]}, got {hidden_size}")
    check_tensor("output", output, dtypes=ACT_DTYPES, ndim=2, device=dev)
    if output.shape[0] < num_tokens or output.shape[1] != hidden_size:
        raise ValueError(f"output: expected shape (>= {num_tokens}, {hidden_size}), got {tuple(output.shape)}")
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, ndim=1, device=dev)
    if src2dst.shape[0] < num_tokens * topk:
        raise ValueError(f"src2dst: expected at least num_tokens * topk = {num_tokens * topk} entries, got {src2dst.shape[0]}")
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(num_tokens, topk), device=dev)
    check_tensor("topk_weights", topk_weights, dtypes=ACT_DTYPES, shape=(num_tokens, topk), device=dev)
    if lora_delta is not None:
        check_tensor("lora_delta", lora_delta, dtypes=ACT_DTYPES, shape=(num_tokens, topk, hidden_size), device=dev)
    dst = src2dst[:num_tokens * topk].to(torch.int64).view(num_tokens, topk)
    counted = dst >= 0
    if bool(counted.any()):
        check_id_range("src2dst", dst[counted], 0, down_output.shape[0] - 1)
    acc_t = torch.float64 if torch.float64 in (down_output.dtype, output.dtype) else torch.float32
    acc = torch.zeros(num_tokens, hidden_size, dtype=acc_t, device=dev)
    rows = torch.where(counted, dst, 0)
    for k in range(topk):
        term = down_output[rows[:, k]].to(acc_t)
        if lora_delta is not None:
            term = term + lora_delta[:, k].to(acc_t)
        acc += torch.where(counted[:, k, None], term * topk_weights[:, k, None].to(acc_t), 0.0)
    output[:num_tokens] = (acc * rsf).to(output.dtype)


def scale_expanded_rows_(x, row_weights):
    """SGLang's ``scale_expanded_rows_``: x[r, :] *= row_weights[r] in place, in float32.

    x float32 [rows, W] (any strides); row_weights float [rows] (any 1-D float tensor).
    Returns x.
    """
    check_tensor("x", x, dtypes=(torch.float32,), ndim=2, contiguous=False)
    check_tensor("row_weights", row_weights, dtypes=ACT_DTYPES, shape=(x.shape[0],), device=x.device, contiguous=False)
    x.copy_(x.to(torch.float64) * row_weights.to(torch.float64)[:, None])      # one product, one rounding
    return x


def get_tma_aligned_size(x, element_size):
    """SGLang's (DeepGEMM's) ``get_tma_aligned_size``: x rounded up to a multiple of
    16 // element_size, so that a column of that many elements spans a multiple of 16 bytes.
    x >= 0; element_size must divide 16."""
    check_int("x", x, lo=0)
    check_int("element_size", element_size, lo=1)
    if 16 % element_size:
        raise ValueError(f"element_size: expected a divisor of 16 (TMA's 16-byte alignment), got {element_size}")
    alignment = 16 // element_size
    return -(-x // alignment) * alignment


def tma_align_input_scale(input_scale):
    """SGLang's ``tma_align_input_scale``: the same [m, kb] values in DeepGEMM's column-major,
    TMA-aligned layout.

    input_scale [m, kb] (any strides; float32 in practice, any dtype whose size divides 16).
    Returns a tensor equal to input_scale, of shape [m, kb] and strides (1, M) with
    M = get_tma_aligned_size(m, element size): a view of a fresh [kb, M] buffer whose columns
    m..M-1 are unspecified (the reference leaves poison there).
    """
    check_tensor("input_scale", input_scale, ndim=2, contiguous=False)
    m, kb = input_scale.shape
    padded = get_tma_aligned_size(m, input_scale.element_size())
    out = poisoned((kb, padded), input_scale.dtype, input_scale.device)
    out[:, :m] = input_scale.t()
    return out.t()[:m]


# --------------------------------------------------------------------------- masked layout


def fused_moe_dispatch_index(topk_ids, num_local_experts, m_max, expert_start=0):
    """SGLang's ``fused_moe_dispatch_index``: slot -> row of the masked slab.

    topk_ids int32/int64 of any shape, contiguous, of global expert ids; a slot is local when
    id - expert_start is in [0, num_local_experts). Returns (masked_m int32 [num_local_experts]:
    local slots per expert, src2dst int32 [topk_ids.numel()]): for local slot s of expert e,
    src2dst[s] = e * m_max + r with r in [0, masked_m[e]) distinct within e (order
    implementation-defined: atomics; the reference takes flat order); -1 for other slots.
    Every expert must get at most m_max slots (SGLang relies on distinct experts per token and
    m_max > tokens); ValueError otherwise.
    """
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES)
    check_int("num_local_experts", num_local_experts, lo=1)
    check_int("m_max", m_max, lo=1)
    check_int("expert_start", expert_start, lo=0)
    flat = topk_ids.reshape(1, -1)
    slots, experts = _flat_local_slots(flat, expert_start, num_local_experts)
    counts = torch.bincount(experts, minlength=num_local_experts)
    if counts.numel() and int(counts.max()) > m_max:
        raise ValueError(f"m_max: expected at least the largest per-expert slot count {int(counts.max())}, got {m_max}")
    src2dst = torch.full((flat.shape[1],), -1, dtype=torch.int32, device=topk_ids.device)
    src2dst[slots] = (experts * m_max + _rank_in_expert(experts, num_local_experts)).to(torch.int32)
    return counts.to(torch.int32), src2dst


def validate_masked_preprocess(topk_ids, num_local_experts, hidden_states, top_k, block_shape, output_dtype,
                               use_mxfp8, expert_start, deepgemm_scale_ue8m0, cap_m_max):
    """The argument checks of the masked preprocess (shared with our kernel's launcher);
    returns (block_k, is_fp8, packed: UE8M0 scales packed four to an int32)."""
    check_tensor("hidden_states", hidden_states, dtypes=ACT_DTYPES, ndim=2)
    dev = hidden_states.device
    tokens, hidden = hidden_states.shape
    check_int("top_k", top_k, lo=1)
    check_int("num_local_experts", num_local_experts, lo=1)
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(tokens, top_k), device=dev)
    check_int("expert_start", expert_start, lo=0)
    if block_shape is None:
        block_shape = [128, 128]
    if (not isinstance(block_shape, (list, tuple)) or len(block_shape) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block_shape)):
        raise ValueError(f"block_shape: expected None or [block_n, block_k] of two positive ints, got {block_shape!r}")
    block_k = block_shape[1]
    if not isinstance(output_dtype, torch.dtype) or output_dtype not in DATA_DTYPES:
        raise TypeError(f"output_dtype: expected float8_e4m3fn or a float dtype, got {output_dtype!r}")
    check_bool("use_mxfp8", use_mxfp8)
    check_bool("deepgemm_scale_ue8m0", deepgemm_scale_ue8m0)
    check_bool("cap_m_max", cap_m_max)
    is_fp8 = output_dtype == FP8_DTYPE
    packed = is_fp8 and (use_mxfp8 or deepgemm_scale_ue8m0)
    if is_fp8 and hidden % block_k:
        raise ValueError(f"block_shape: expected block_k to divide the hidden size {hidden}, got {block_k}")
    if packed and (hidden // block_k) % 4:
        raise ValueError(f"block_shape: packed UE8M0 scales need H / block_k = {hidden // block_k} to be a multiple of 4")
    return block_k, is_fp8, packed


def masked_capacity(topk_ids, num_local_experts, tokens, expert_start, cap_m_max, dispatch_index):
    """(m_max, expected_m) of the masked preprocess: m_max = (T // 256 + 1) * 256, with cap_m_max
    capped at max(256, the largest count rounded up to 256) (a host read of ``dispatch_index``'s
    masked_m); expected_m = ceil(T * top_k / E_local)."""
    m_max = (tokens // DEEPGEMM_BLOCK_M + 1) * DEEPGEMM_BLOCK_M
    if cap_m_max:
        probe, _ = dispatch_index(topk_ids, num_local_experts, m_max, expert_start)
        cap = -(-int(probe.max()) // DEEPGEMM_BLOCK_M) * DEEPGEMM_BLOCK_M
        m_max = min(m_max, max(cap, DEEPGEMM_BLOCK_M))
    return m_max, (topk_ids.numel() - 1) // num_local_experts + 1


def moe_ep_deepgemm_preprocess(topk_ids, num_local_experts, hidden_states, top_k, block_shape,
                               output_dtype=torch.float8_e4m3fn, use_mxfp8=False, expert_start=0,
                               deepgemm_scale_ue8m0=False, cap_m_max=False):
    """SGLang's ``moe_ep_deepgemm_preprocess``: tokens into the masked layout, fp8-quantised.

    topk_ids int [T, top_k] (global ids, local when id - expert_start in [0, E_local)),
    hidden_states [T, H] float, contiguous; block_shape None (= [128, 128]) or [block_n, block_k].
    Two trailing arguments (not SGLang's) stand for its globals: deepgemm_scale_ue8m0 for
    deep_gemm_wrapper.DEEPGEMM_SCALE_UE8M0, cap_m_max for SGLANG_OPT_DG_MASKED_M_CAP.
    Returns (masked_m, expected_m, src2dst, gateup_input, gateup_input_scale):
    - m_max = (T // 256 + 1) * 256; with cap_m_max, min(that, max(256, max(masked_m) rounded up to 256)).
    - expected_m = ceil(T * top_k / E_local) (0 for T = 0).
    - masked_m, src2dst = fused_moe_dispatch_index(topk_ids, E_local, m_max, expert_start).
    - gateup_input [E_local, m_max, H] of output_dtype: row r = src2dst[t*top_k + k] (as
      [e, j]) holds token t; rows j >= masked_m[e] unspecified (poison).
    - fp8 output with UE8M0 (use_mxfp8 or deepgemm_scale_ue8m0; SGLang's fused CUDA kernel
      takes bf16 input only): each token quantised per group of block_k with power-of-two
      scales (H / block_k a multiple of 4);
      gateup_input_scale int32 [E_local, m_max, H / block_k / 4], the transpose of an
      [E_local, G/4, m_max] buffer: packed UE8M0 bytes of the row.
    - fp8 output otherwise: per_token_group_quant_fp8(hidden_states, block_k) (float32
      scales amax / 448), gateup_input_scale float32 [E_local, m_max, H / block_k], row-major.
    - other output dtypes: the token cast to output_dtype; gateup_input_scale None.
    """
    block_k, is_fp8, packed = validate_masked_preprocess(topk_ids, num_local_experts, hidden_states, top_k,
                                                         block_shape, output_dtype, use_mxfp8, expert_start,
                                                         deepgemm_scale_ue8m0, cap_m_max)
    dev = hidden_states.device
    tokens, hidden = hidden_states.shape
    m_max, expected_m = masked_capacity(topk_ids, num_local_experts, tokens, expert_start, cap_m_max,
                                        fused_moe_dispatch_index)
    masked_m, src2dst = fused_moe_dispatch_index(topk_ids, num_local_experts, m_max, expert_start)

    live = src2dst >= 0
    rows = src2dst[live].to(torch.int64)                                              # slab rows (e * m_max + j)
    tokens_of = torch.nonzero(live).flatten() // top_k
    gateup_input = poisoned((num_local_experts, m_max, hidden), output_dtype, dev)
    flat_in = gateup_input.view(-1, hidden)
    if not is_fp8:
        flat_in[rows] = hidden_states[tokens_of].to(output_dtype)
        return masked_m, expected_m, src2dst, gateup_input, None
    q, scale = quantize_groups(hidden_states, block_k, packed)
    flat_in[rows] = q[tokens_of]
    groups = hidden // block_k
    if packed:
        buffer = poisoned((num_local_experts, groups // 4, m_max), torch.int32, dev)
        gateup_input_scale = buffer.transpose(1, 2)                                  # [E, m_max, G/4]
        packed_rows = pack_ue8m0_exponents(ceil_to_ue8m0_exponent(scale))            # [T, G/4]
        e_idx, j_idx = rows // m_max, rows % m_max
        gateup_input_scale[e_idx, j_idx] = packed_rows[tokens_of]
    else:
        gateup_input_scale = poisoned((num_local_experts, m_max, groups), torch.float32, dev)
        gateup_input_scale.view(-1, groups)[rows] = scale[tokens_of]
    return masked_m, expected_m, src2dst, gateup_input, gateup_input_scale


def _expanded_segments(psum: list, alignment: int, max_m: int):
    """(start, count) per expert of DeepEP's expanded psum, count clamped to max_m."""
    out, prev = [], 0
    for end in psum:
        start = -(-prev // alignment) * alignment
        out.append((start, min(end - start, max_m)))
        prev = end
    return out


def expand_to_masked_slab(recv_x, recv_x_scale, psum_num_recv_tokens_per_expert, num_local_experts, max_m,
                          expert_alignment):
    """SGLang's ``expand_to_masked_slab``: DeepEP v2 expanded rows -> masked slab.

    recv_x [N, H] contiguous (bf16, fp8 or float); recv_x_scale None or [N, W] (float32 or
    int32 packed; any strides; copied when recv_x is not bf16); psum int [num_local_experts]:
    DeepEP's expanded prefix sum, expert e owning rows [start[e], psum[e]) with
    start[e] = align(psum[e-1], expert_alignment) (0 for e = 0), psum[-1] <= N.
    Every expert must have count(e) = psum[e] - start[e] <= max_m: otherwise ValueError naming
    max_m (SGLang raises RuntimeError after its kernel has run; under CUDA-graph capture it
    silently clamps count to max_m).
    Returns (slab [E, max_m, H] of recv_x's dtype, slab_scale or None, masked_m int32 [E]):
    masked_m[e] = count(e); slab[e, j] = recv_x[start[e] + j] and slab_scale[e, j] =
    recv_x_scale[start[e] + j] for j < count(e); slab_scale is [E, max_m, W], the MN-major
    transpose of an [E, W, max_m] buffer (strides (W*max_m, 1, max_m)). Other rows unspecified (poison).
    """
    check_int("num_local_experts", num_local_experts, lo=0)
    check_int("max_m", max_m, lo=1)
    check_int("expert_alignment", expert_alignment, lo=1)
    check_tensor("recv_x", recv_x, dtypes=DATA_DTYPES, ndim=2)
    dev = recv_x.device
    n_rows, hidden = recv_x.shape
    is_fp8 = recv_x_scale is not None and recv_x.dtype != torch.bfloat16
    if is_fp8:
        check_tensor("recv_x_scale", recv_x_scale, dtypes=SCALE_COPY_DTYPES, ndim=2, device=dev, contiguous=False)
        if recv_x_scale.shape[0] != n_rows:
            raise ValueError(f"recv_x_scale: expected {n_rows} rows (recv_x's), got shape {tuple(recv_x_scale.shape)}")
    check_tensor("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1)
    psum = _check_psum("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, num_local_experts, dev,
                       expert_alignment)
    if psum and psum[-1] > n_rows:
        raise ValueError(f"psum_num_recv_tokens_per_expert: expected psum[-1] <= {n_rows} (rows of recv_x), got {psum[-1]}")
    segments = _expanded_segments(psum, expert_alignment, 2 ** 62)
    worst = max((count for _, count in segments), default=0)
    if worst > max_m:
        raise ValueError(f"max_m: an expert received {worst} rows, more than max_m={max_m} (the slab's rows per expert)")
    slab = poisoned((num_local_experts, max_m, hidden), recv_x.dtype, dev)
    slab_scale = None
    if is_fp8:
        width = recv_x_scale.shape[1]
        slab_scale = poisoned((num_local_experts, width, max_m), recv_x_scale.dtype, dev).transpose(1, 2)
    for e, (start, count) in enumerate(segments):
        slab[e, :count] = recv_x[start:start + count]
        if is_fp8:
            slab_scale[e, :count] = recv_x_scale[start:start + count]
    masked_m = torch.tensor([count for _, count in segments], dtype=torch.int32, device=dev)
    return slab, slab_scale, masked_m


def masked_slab_to_expand(input_tensor, psum_num_recv_tokens_per_expert, total_expanded_tokens, expert_alignment,
                          topk_weights=None):
    """SGLang's ``masked_slab_to_expand``: masked-GEMM output -> DeepEP v2 expanded rows.

    input_tensor [E, max_m, H] contiguous float; psum int [E] as in expand_to_masked_slab,
    count(e) = min(psum[e] - start[e], max_m) (clamped silently), start[e] + count(e) <=
    total_expanded_tokens; topk_weights None or a float tensor of total_expanded_tokens
    elements (one per expanded row, any shape).
    Returns out [total_expanded_tokens, H] of input_tensor's dtype: out[start[e] + j] =
    input_tensor[e, j] for j < count(e), times topk_weights[start[e] + j] in float32 and
    rounded back to the dtype when weights are given. Other rows unspecified (poison).
    """
    check_tensor("input_tensor", input_tensor, dtypes=ACT_DTYPES, ndim=3)
    dev = input_tensor.device
    num_experts, max_m, hidden = input_tensor.shape
    check_int("total_expanded_tokens", total_expanded_tokens, lo=0)
    check_int("expert_alignment", expert_alignment, lo=1)
    check_tensor("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, dtypes=ID_DTYPES, ndim=1)
    psum = _check_psum("psum_num_recv_tokens_per_expert", psum_num_recv_tokens_per_expert, num_experts, dev,
                       expert_alignment)
    segments = _expanded_segments(psum, expert_alignment, max_m)
    reach = max((start + count for start, count in segments), default=0)
    if reach > total_expanded_tokens:
        raise ValueError(f"total_expanded_tokens: expected at least {reach} (the end of the last expert's rows), "
                         f"got {total_expanded_tokens}")
    if topk_weights is not None:
        check_tensor("topk_weights", topk_weights, dtypes=ACT_DTYPES, device=dev, contiguous=False)
        if topk_weights.numel() != total_expanded_tokens:
            raise ValueError(f"topk_weights: expected {total_expanded_tokens} elements (one per expanded row), "
                             f"got shape {tuple(topk_weights.shape)}")
        weights = topk_weights.reshape(-1).to(torch.float32)
    out = poisoned((total_expanded_tokens, hidden), input_tensor.dtype, dev)
    for e, (start, count) in enumerate(segments):
        rows = input_tensor[e, :count]
        if topk_weights is not None:
            acc = torch.float64 if input_tensor.dtype == torch.float64 else torch.float32
            rows = (rows.to(acc) * weights[start:start + count, None].to(acc)).to(input_tensor.dtype)
        out[start:start + count] = rows
    return out


__all__ = ["ep_scatter", "ep_scatter_from_psum", "fill_m_indices_from_psum", "ep_gather", "post_reorder_deepgemm",
           "scale_expanded_rows_", "get_tma_aligned_size", "tma_align_input_scale", "fused_moe_dispatch_index",
           "moe_ep_deepgemm_preprocess", "expand_to_masked_slab", "masked_slab_to_expand"]
