"""Cutlass W4A8 family of SGLang 0.5.23 (``sglang/kernels/ops/moe/ep_moe_kernels.py``): the
index, reorder, activation-quantisation and problem-size ops around ``cutlass_w4a8_moe_mm``,
as pure-PyTorch references.

Conventions. ``topk_ids`` [T, K] holds LOCAL expert ids; a slot is *local* when its id is in
[0, num_local_experts). Dropped slots carry -1 or the sentinel ``num_local_experts`` (the
0.5-era callers map -1 to it); the reorder ops skip both (any id outside [0, E_local)).
fp8 is float8_e4m3fn: a float32 value is cast by round-to-nearest-even after clamping to
+-448 (the GPU's saturating ``cvt.satfinite``; Triton's ``.to(fp8)``). Per-tensor scales are
float32 and read from element 0. Computation in float32 (float64 for float64 inputs where the
kernel's own float32 step is not the point). In-place outputs are left exactly as they were
outside the elements each docstring defines.
"""
from __future__ import annotations

import torch

from ._checks import ACT_DTYPES, FP8_DTYPE, FP8_MAX, ID_DTYPES, acc_dtype, check_int, check_tensor
from .activation import ref_silu
from .permute import check_rows_addressed, validate_row_scatter
from .quant import check_float
from .reorder import cast_saturating

OUT_DTYPES = ACT_DTYPES + (FP8_DTYPE,)
SCALE_EPS = 1e-10   # the silu-mul dynamic scale's floor on amax


def _local_mask(topk_ids: torch.Tensor, num_local_experts: int) -> torch.Tensor:
    ids = topk_ids.to(torch.int64)
    return (ids >= 0) & (ids < num_local_experts)


def _check_num_tokens(num_tokens, rows: int) -> int:
    check_int("num_tokens", num_tokens, lo=0)
    if num_tokens > rows:
        raise ValueError(f"num_tokens: expected at most {rows} (rows of topk_ids), got {num_tokens}")
    return num_tokens


def _check_scalar_scale(name: str, scale, device) -> None:
    check_tensor(name, scale, dtypes=(torch.float32,), ndim=1, device=device)
    if scale.numel() < 1:
        raise ValueError(f"{name}: expected a float32 tensor with at least one element (element 0 is read), "
                         f"got shape {tuple(scale.shape)}")


def _check_local_dst(src2dst, local, rows) -> None:
    check_rows_addressed("src2dst", src2dst, local, rows, "local slot")


# --------------------------------------------------------------------------- indices


def cutlass_w4_run_moe_ep_preproess(topk_ids):
    """SGLang's ``cutlass_w4_run_moe_ep_preproess`` (the non-CUDA path of cutlass_w4a8_moe).

    topk_ids [T, K] int32/int64, any values. Returns src2dst [T*K] int32: with n_neg = number
    of negative ids, a slot with a negative id gets -1; any other slot gets its stable sorted
    position minus n_neg (ids >= num_local_experts, the sentinel, included: they sort last).
    Empty topk_ids: an empty int32 tensor.
    """
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2)
    flat = topk_ids.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    pos = torch.empty_like(order)
    pos[order] = torch.arange(flat.numel(), device=flat.device)
    n_neg = int((flat < 0).sum())
    return torch.where(flat < 0, -1, pos - n_neg).to(torch.int32)


def compute_problem_sizes_w4a8(masked_m, problem_sizes1, problem_sizes2, n, k, num_experts):
    """SGLang's ``compute_problem_sizes_w4a8``: per-expert GEMM shapes for the DeepEP
    low-latency path. masked_m int [>= num_experts]; problem_sizes1/2 int32/int64 contiguous
    [P, 3] with P >= num_experts, written in place for rows e < num_experts only:
        problem_sizes1[e] = (2 * n, masked_m[e], k),  problem_sizes2[e] = (k, masked_m[e], n);
    rows e >= num_experts are left as they were. Returns (problem_sizes1, problem_sizes2), the
    same tensors.
    """
    check_int("num_experts", num_experts, lo=0)
    check_int("n", n, lo=0)
    check_int("k", k, lo=0)
    check_tensor("masked_m", masked_m, dtypes=ID_DTYPES, ndim=1)
    if masked_m.shape[0] < num_experts:
        raise ValueError(f"masked_m: expected at least num_experts = {num_experts} entries, got shape "
                         f"{tuple(masked_m.shape)}")
    for name, ps in (("problem_sizes1", problem_sizes1), ("problem_sizes2", problem_sizes2)):
        check_tensor(name, ps, dtypes=ID_DTYPES, ndim=2, device=masked_m.device)
        if ps.shape[1] != 3 or ps.shape[0] < num_experts:
            raise ValueError(f"{name}: expected shape (P, 3) with P >= num_experts = {num_experts}, "
                             f"got {tuple(ps.shape)}")
    m = masked_m[:num_experts].to(torch.int64)
    problem_sizes1[:num_experts, 0] = 2 * n
    problem_sizes1[:num_experts, 1] = m.to(problem_sizes1.dtype)
    problem_sizes1[:num_experts, 2] = k
    problem_sizes2[:num_experts, 0] = k
    problem_sizes2[:num_experts, 1] = m.to(problem_sizes2.dtype)
    problem_sizes2[:num_experts, 2] = n
    return problem_sizes1, problem_sizes2


def deepep_ll_get_cutlass_w4a8_moe_mm_data(masked_m, problem_sizes1, problem_sizes2, num_experts, n, k):
    """SGLang's ``deepep_ll_get_cutlass_w4a8_moe_mm_data``: compute_problem_sizes_w4a8 (note the
    argument order: num_experts before n, k here), then returns both tables as int32 (the same
    tensors when they already are int32, int32 copies otherwise; the in-place update stands).
    """
    ps1, ps2 = compute_problem_sizes_w4a8(masked_m, problem_sizes1, problem_sizes2, n, k, num_experts)
    return ps1.to(torch.int32), ps2.to(torch.int32)


# --------------------------------------------------------------------------- scales


def compute_cutlass_w4a8_moe_input_scale(input, topk_ids, output_s, num_local_experts):
    """SGLang's ``compute_cutlass_w4a8_moe_input_scale``: the per-tensor fp8 scale of the rows
    that reach a local expert.

    input [T, H] float16/bfloat16/float32 (any strides); topk_ids [T, K] int32/int64 (any
    strides); output_s float32 with one element, initialised by the caller (SGLang: 1e-10 / 448)
    and updated in place:
        output_s = max(output_s, max over active rows t of amax(|input[t]|) / 448)   (float32),
    a row being active when some k has topk_ids[t, k] in [0, num_local_experts). Inactive rows
    are never read (a NaN there changes nothing). Nothing happens when input is empty or K = 0.
    Returns None.
    """
    check_tensor("input", input, dtypes=(torch.float16, torch.bfloat16, torch.float32), ndim=2, contiguous=False)
    dev = input.device
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2, device=dev, contiguous=False)
    if topk_ids.shape[0] != input.shape[0]:
        raise ValueError(f"topk_ids: expected {input.shape[0]} rows (one per row of input), got shape "
                         f"{tuple(topk_ids.shape)}")
    check_tensor("output_s", output_s, dtypes=(torch.float32,), device=dev, contiguous=False)
    if output_s.numel() != 1:
        raise ValueError(f"output_s: expected exactly one element, got shape {tuple(output_s.shape)}")
    check_int("num_local_experts", num_local_experts, lo=0)
    if input.numel() == 0 or topk_ids.shape[1] == 0:
        return
    active = _local_mask(topk_ids, num_local_experts).any(dim=1)
    rows = input[active].to(torch.float32)
    if rows.shape[0] == 0:
        return
    candidate = (rows.abs().amax(dim=1) / FP8_MAX).amax()
    output_s.copy_(torch.maximum(output_s.reshape(()), candidate).reshape(output_s.shape))


# --------------------------------------------------------------------------- reorder


def validate_pre_reorder_for_cutlass_moe(input, gateup_input, src2dst, topk_ids, a1_scales, num_local_experts, topk,
                                         num_tokens, hidden_size, check_values=True):
    """pre_reorder_for_cutlass_moe's argument checks (shared with our kernel); ``check_values``:
    also the value checks that read the device (src2dst addresses a row of gateup_input for
    every local slot). Returns (T, H)."""
    T, H = validate_row_scatter(input, gateup_input, src2dst, topk, hidden_size, ACT_DTYPES)
    dev = input.device
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=dev)
    check_int("num_local_experts", num_local_experts, lo=0)
    _check_num_tokens(num_tokens, T)
    if a1_scales is not None:
        _check_scalar_scale("a1_scales", a1_scales, dev)
    if check_values:
        local = _local_mask(topk_ids, num_local_experts)
        local[num_tokens:] = False
        _check_local_dst(src2dst, local, gateup_input.shape[0])
    return T, H


def pre_reorder_for_cutlass_moe(input, gateup_input, src2dst, topk_ids, a1_scales, num_local_experts, topk,
                                num_tokens, hidden_size):
    """SGLang's ``pre_reorder_for_cutlass_moe`` (2-D grid over tokens x column blocks).

    input [T, H] float; gateup_input [R, H] written in place (fp8 in SGLang; any float dtype
    here); src2dst [T*topk] int; topk_ids [T, topk] int; a1_scales None or float32 (element 0
    is the per-tensor scale); num_tokens <= T: only tokens t < num_tokens are processed.
    For each such slot s = t*topk + k with topk_ids[t, k] in [0, num_local_experts):
        gateup_input[src2dst[s]] = cast(float32(input[t]) * float32(1 / a1_scales[0]))
    (no scaling without a1_scales; cast = fp8 saturating at +-448, round to nearest even).
    Slots with -1, the sentinel num_local_experts or any other id outside the range, and tokens
    t >= num_tokens, write nothing: every other row of gateup_input is left as it was.
    Returns None.
    """
    T, _ = validate_pre_reorder_for_cutlass_moe(input, gateup_input, src2dst, topk_ids, a1_scales, num_local_experts,
                                                topk, num_tokens, hidden_size)
    local = _local_mask(topk_ids, num_local_experts)
    local[num_tokens:] = False
    rows = input.to(torch.float32)                       # the kernel computes in float32
    if a1_scales is not None:
        rows = rows * (1.0 / a1_scales[0])
    rows = cast_saturating(rows, gateup_input.dtype)
    token, k = torch.nonzero(local, as_tuple=True)
    gateup_input[src2dst.view(T, topk)[token, k].to(torch.int64)] = rows[token]


def validate_post_reorder_for_cutlass_moe(down_output, output, src2dst, topk_ids, topk_weights, num_local_experts,
                                          topk, num_tokens, hidden_size, routed_scaling_factor, check_values=True):
    """post_reorder_for_cutlass_moe's argument checks (shared with our kernel); ``check_values``:
    also src2dst addressing a row of down_output for every local slot (a device read).
    Returns (T, H) of output."""
    check_tensor("down_output", down_output, dtypes=ACT_DTYPES, ndim=2)
    dev = down_output.device
    check_tensor("output", output, dtypes=ACT_DTYPES, ndim=2, device=dev)
    T, H = output.shape
    check_int("topk", topk, lo=1)
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H or down_output.shape[1] != H:
        raise ValueError(f"hidden_size: expected output.shape[1] = down_output.shape[1] = {H}, got {hidden_size} "
                         f"(down_output {tuple(down_output.shape)})")
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=dev)
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * topk,), device=dev)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32, torch.bfloat16, torch.float16),
                 shape=(T, topk), device=dev)
    check_int("num_local_experts", num_local_experts, lo=0)
    _check_num_tokens(num_tokens, T)
    check_float("routed_scaling_factor", routed_scaling_factor)
    if check_values:
        local = _local_mask(topk_ids, num_local_experts)[:num_tokens]
        _check_local_dst(src2dst[:num_tokens * topk], local, down_output.shape[0])
    return T, H


def post_reorder_for_cutlass_moe(down_output, output, src2dst, topk_ids, topk_weights, num_local_experts, topk,
                                 num_tokens, hidden_size, routed_scaling_factor):
    """SGLang's ``post_reorder_for_cutlass_moe``: the weighted combine of the expert outputs.

    down_output [M, H] float; output [T, H] float (any dtype), rows t < num_tokens written:
        output[t] = routed_scaling_factor * sum over k with topk_ids[t, k] in
                    [0, num_local_experts) of float32(down_output[src2dst[t*topk+k]]) * float32(topk_weights[t, k]),
    accumulated in float32 (k ascending), then cast to output's dtype; zeros for a token with
    no local slot. Rows t >= num_tokens are left as they were. Returns None.
    """
    T, H = validate_post_reorder_for_cutlass_moe(down_output, output, src2dst, topk_ids, topk_weights,
                                                 num_local_experts, topk, num_tokens, hidden_size, routed_scaling_factor)
    factor = float(routed_scaling_factor)
    dev = down_output.device
    local = _local_mask(topk_ids, num_local_experts)[:num_tokens]
    acc = acc_dtype(down_output)
    dst = torch.where(local, src2dst.view(T, topk)[:num_tokens].to(torch.int64), 0)
    total = torch.zeros(num_tokens, H, dtype=acc, device=dev)
    for k in range(topk):
        term = down_output[dst[:, k]].to(acc) * topk_weights[:num_tokens, k, None].to(acc)
        total += torch.where(local[:, k, None], term, 0.0)
    output[:num_tokens] = (total * factor).to(output.dtype)


# --------------------------------------------------------------------------- activation + per-tensor quant


def _validate_silu_mul(input, output, scale, num_tokens_tensor, expected_num_tokens, intermediate_size) -> int:
    """Shared checks; returns the token count read from num_tokens_tensor."""
    check_tensor("input", input, dtypes=ACT_DTYPES, ndim=2)
    dev = input.device
    M, two_i = input.shape
    check_int("intermediate_size", intermediate_size, lo=0)
    if two_i != 2 * intermediate_size:
        raise ValueError(f"intermediate_size: expected input.shape[1] / 2 = {two_i / 2:g}, got {intermediate_size}")
    check_tensor("output", output, dtypes=OUT_DTYPES, shape=(M, intermediate_size), device=dev)
    _check_scalar_scale("scale", scale, dev)
    check_tensor("num_tokens_tensor", num_tokens_tensor, dtypes=ID_DTYPES, device=dev, contiguous=False)
    if num_tokens_tensor.numel() < 1:
        raise ValueError("num_tokens_tensor: expected an int tensor whose first element is the token count, "
                         "got an empty tensor")
    check_int("expected_num_tokens", expected_num_tokens, lo=0)
    n = int(num_tokens_tensor.reshape(-1)[0])
    if n < 0 or n > M:
        raise ValueError(f"num_tokens_tensor: expected a token count in [0, {M}] (rows of input), got {n}")
    return n


def _silu_mul_rows(input, n: int, intermediate_size: int) -> torch.Tensor:
    """float32 [n, I]: silu(gate) * up of the first n rows, computed in float32 (as the kernel)."""
    rows = input[:n].to(torch.float32)
    return ref_silu(rows[:, :intermediate_size]) * rows[:, intermediate_size:]


def silu_mul_static_tensorwise_quant_for_cutlass_moe(input, output, scale, num_tokens_tensor, expected_num_tokens,
                                                     intermediate_size):
    """SGLang's ``silu_mul_static_tensorwise_quant_for_cutlass_moe``.

    input [M, 2I] float, contiguous (gate = [:, :I], up = [:, I:]); output [M, I] contiguous
    (fp8 in SGLang; any float dtype here), written in place; scale float32 (element 0 is read);
    num_tokens_tensor an int tensor on the device whose first element n (0 <= n <= M) is the
    token count: read on the device, so a captured CUDA graph replays correctly for any n;
    expected_num_tokens only sizes the launch grid (the kernel loops over all n rows whatever
    it is). For rows t < n:
        output[t] = cast(float32(silu(gate) * up) * float32(1 / scale[0])),
    silu(x) = x / (1 + exp(-x)) in float32, cast saturating for fp8. Rows t >= n are left as
    they were. Returns None.
    """
    n = _validate_silu_mul(input, output, scale, num_tokens_tensor, expected_num_tokens, intermediate_size)
    if expected_num_tokens * intermediate_size == 0:
        return   # SGLang launches an empty grid: nothing is written
    y = _silu_mul_rows(input, n, intermediate_size) * (1.0 / scale[0])
    output[:n] = cast_saturating(y, output.dtype)


def silu_mul_dynamic_tensorwise_quant_for_cutlass_moe(input, output, scale, num_tokens_tensor, expected_num_tokens,
                                                      intermediate_size):
    """SGLang's ``silu_mul_dynamic_tensorwise_quant_for_cutlass_moe``: the per-tensor scale of
    the activation, then the static quantisation with it. Arguments as the static op's.

    In place: every element of ``scale`` is zeroed, then
        scale[0] = max(amax, 1e-10) / 448   (float32),
    amax = the largest |silu(gate) * up| over rows t < n (float32); ``output`` as the static op
    with that scale. When expected_num_tokens * intermediate_size == 0 SGLang launches empty
    grids: scale is all zeros and output is left as it was. Returns None.
    """
    n = _validate_silu_mul(input, output, scale, num_tokens_tensor, expected_num_tokens, intermediate_size)
    scale.zero_()
    if expected_num_tokens * intermediate_size == 0:
        return
    y = _silu_mul_rows(input, n, intermediate_size)
    amax = y.abs().amax() if y.numel() else torch.zeros((), dtype=torch.float32, device=y.device)
    scale[0] = torch.clamp_min(amax, SCALE_EPS) / FP8_MAX
    silu_mul_static_tensorwise_quant_for_cutlass_moe(input, output, scale, num_tokens_tensor, expected_num_tokens,
                                                     intermediate_size)


__all__ = ["cutlass_w4_run_moe_ep_preproess", "compute_problem_sizes_w4a8", "deepep_ll_get_cutlass_w4a8_moe_mm_data",
           "compute_cutlass_w4a8_moe_input_scale", "pre_reorder_for_cutlass_moe", "post_reorder_for_cutlass_moe",
           "silu_mul_static_tensorwise_quant_for_cutlass_moe", "silu_mul_dynamic_tensorwise_quant_for_cutlass_moe"]
