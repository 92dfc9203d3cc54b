"""Permute family of SGLang 0.5.23 (``sglang/kernels/ops/moe/ep_moe_kernels.py``) and the
0.5-era conventions of the older preprocess / post-reorder names, as pure-PyTorch references.

Vocabulary. ``topk_ids`` [T, K]; flat slot s = t * K + k. A slot is *routed* when its id is
non-negative (a negative id, -1 in practice, means "not routed to this rank"; DeepEP normal
mode and SGLang's EP dispatch produce those). ``src2dst[s]`` is the row of the permuted
buffer that slot s occupies, or a negative value for a slot that has no row.

Row order inside an expert's segment: SGLang 0.5.23's ``moe_permute`` sorts with
``torch.sort`` (stability not requested), so the order of an expert's rows is
implementation-defined there; the references use the stable order (ties by slot s), one valid
choice. ``check_src2dst_assignment`` states what any valid assignment must satisfy; compare
other implementations through it, or exactly where the op sorts stably (the two
``*preproess*`` / ``deepep_run_moe_deep_preprocess`` functions do: ``stable=True``).

Outputs that SGLang allocates with torch.empty and leaves partly unwritten are returned here
holding poison there (``quant.poisoned``); a preallocated output passed in is left exactly as it
was outside the elements each docstring defines. Sums accumulate in float32 (float64 for
float64 inputs) in ascending k; where SGLang rounds to the input dtype the docstring says so.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._checks import ACT_DTYPES, FP8_DTYPE, ID_DTYPES, acc_dtype, check_int, check_tensor
from .quant import check_float, poisoned
from .reorder import cast_saturating

ROW_DTYPES = ACT_DTYPES + (FP8_DTYPE,)   # rows that are only copied may be fp8
PERMUTE_BLOCK_SIZE = 512                 # the BLOCK_SIZE SGLang launches these kernels with


# --------------------------------------------------------------------------- helpers


def _sorted_positions(flat_ids: torch.Tensor):
    """(ids sorted ascending, stable; pos[s] = position of slot s in that order)."""
    sorted_ids, order = torch.sort(flat_ids, stable=True)
    pos = torch.empty_like(order)
    pos[order] = torch.arange(flat_ids.numel(), device=flat_ids.device)
    return sorted_ids, pos


def _count_below(flat_ids: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """int64 [len(bounds)]: how many ids are < each bound."""
    return (flat_ids.to(torch.int64)[None, :] < bounds.to(torch.int64)[:, None]).sum(dim=1)


def check_rows_addressed(name: str, src2dst: torch.Tensor, used: torch.Tensor, rows: int, what: str) -> None:
    """src2dst values at the ``used`` slots must address one of ``rows`` rows."""
    if bool(used.any()):
        dst = src2dst.reshape(-1)[used.reshape(-1)]
        lo, hi = int(dst.min()), int(dst.max())
        if lo < 0 or hi >= rows:
            raise ValueError(f"{name}: expected values in [0, {rows - 1}] for every {what}, got values from {lo} to {hi}")


def validate_row_scatter(input, gateup_input, src2dst, topk, hidden_size, input_dtypes):
    """Shared checks of the ops that copy token rows input [T, H] into gateup_input [*, H]
    through src2dst [T*topk]; returns (T, H). gateup_input may have any float dtype."""
    check_tensor("input", input, dtypes=input_dtypes, ndim=2)
    T, H = input.shape
    check_int("topk", topk, lo=1)
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H:
        raise ValueError(f"hidden_size: expected input.shape[1] = {H}, got {hidden_size}")
    check_tensor("gateup_input", gateup_input, dtypes=ROW_DTYPES, ndim=2, device=input.device)
    if gateup_input.shape[1] != H:
        raise ValueError(f"gateup_input: expected shape (*, {H}), got {tuple(gateup_input.shape)}")
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * topk,), device=input.device)
    return T, H


def check_src2dst_assignment(src2dst: torch.Tensor, topk_ids: torch.Tensor, expert_offsets: torch.Tensor) -> None:
    """Raise AssertionError unless ``src2dst`` is a valid moe_permute row assignment.

    Valid: every routed slot (id >= 0) of expert e has a distinct row in
    [expert_offsets[e], expert_offsets[e + 1]); every unrouted slot has a negative value; the
    routed slots fill rows 0 .. n_routed - 1 exactly. The order inside a segment is free.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    dst = src2dst.reshape(-1).to(torch.int64)
    routed = flat >= 0
    assert bool((dst[~routed] < 0).all()), "an unrouted slot (negative id) has a row"
    rows = dst[routed]
    assert torch.equal(torch.sort(rows).values, torch.arange(rows.numel(), device=rows.device)), \
        "the routed slots do not fill rows 0 .. n_routed - 1 exactly once each"
    offsets = expert_offsets.to(torch.int64)
    experts = flat[routed]
    assert bool(((rows >= offsets[experts]) & (rows < offsets[experts + 1])).all()), \
        "a routed slot lies outside its expert's segment"


# --------------------------------------------------------------------------- moe_permute family


def _validate_permute_ids(topk_ids, num_experts, device):
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2, device=device)
    check_int("num_experts", num_experts, lo=0, hi=2 ** 31 - 2)
    if topk_ids.numel() and int(topk_ids.max()) >= num_experts:
        raise ValueError(f"topk_ids: expected every value < num_experts = {num_experts} (negative = not routed), "
                         f"got a maximum of {int(topk_ids.max())}")


def _cast_rows(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows cast to ``dtype`` (a bit copy for the same dtype; fp8 targets saturate at +-448)."""
    if rows.dtype == dtype:
        return rows
    return cast_saturating(rows, dtype)


def _permute_rows_into(rows_in, topk_ids, src2dst, outputs, outputs_name):
    """outputs[src2dst[s]] = rows_in[s // K] for routed slots; allocate poison when outputs is None."""
    n_slots = topk_ids.numel()
    shape = (n_slots, rows_in.shape[1])
    if outputs is None:
        outputs = poisoned(shape, rows_in.dtype, rows_in.device)
    else:
        check_tensor(outputs_name, outputs, dtypes=(rows_in.dtype,), shape=shape, device=rows_in.device)
    routed = src2dst >= 0
    slots = torch.nonzero(routed).flatten()
    outputs[src2dst[slots].to(torch.int64)] = rows_in[slots // topk_ids.shape[1]]
    return outputs


def moe_permute(inputs, topk_ids, num_experts, use_int64_offset=False, is_ep=False, outputs=None):
    """SGLang's ``moe_permute``: group token rows by expert (the ``moe_permute_prepare`` CUDA
    kernel for the indices, then ``deepep_permute_triton_kernel`` with grid (T,) for the rows).

    inputs [T, H] (any float dtype, fp8 included; rows are bit-copied); topk_ids [T, K] int32
    (SGLang raises TypeError for other dtypes), values < num_experts, negative = not routed;
    use_int64_offset picks expert_offsets' dtype; is_ep is accepted and ignored (as SGLang does).
    With n_neg = number of negative ids and n_routed = T*K - n_neg, returns
    (outputs [T*K, H] inputs.dtype, src2dst [T*K] int32, expert_offsets [E+1] int32/int64):
    - expert_offsets[e] = number of routed slots with id < e, for e in 0..E (so [0] = 0,
      [E] = n_routed).
    - src2dst[s] = the sorted position of s minus n_neg: a routed slot gets a row in its
      expert's segment [expert_offsets[e], expert_offsets[e+1]); an unrouted slot gets a value
      in [-n_neg, -1]. Order inside a segment: implementation-defined (here: by slot s).
    - outputs[src2dst[s]] = inputs[s // K] for routed s. Rows n_routed .. T*K-1 are not
      written: poison when outputs is None (SGLang's torch.empty), else left as they were.
      A preallocated ``outputs`` must be [T*K, H] of inputs' dtype.
    Upstream behaviour outside this contract: ids >= num_experts are counted in
    expert_offsets[E] and get rows after expert E-1's, inside its segment by the offsets.
    """
    check_tensor("inputs", inputs, dtypes=ROW_DTYPES, ndim=2)
    _validate_permute_ids(topk_ids, num_experts, inputs.device)
    if topk_ids.shape[0] != inputs.shape[0]:
        raise ValueError(f"topk_ids: expected {inputs.shape[0]} rows (one per row of inputs), got shape "
                         f"{tuple(topk_ids.shape)}")
    if not isinstance(use_int64_offset, bool):
        raise TypeError(f"use_int64_offset: expected a bool, got {type(use_int64_offset).__name__}")
    if not isinstance(is_ep, bool):
        raise TypeError(f"is_ep: expected a bool, got {type(is_ep).__name__}")
    flat = topk_ids.reshape(-1)
    _, pos = _sorted_positions(flat)
    n_neg = int((flat < 0).sum())
    src2dst = (pos - n_neg).to(torch.int32)
    bounds = torch.arange(num_experts + 1, device=flat.device)
    expert_offsets = (_count_below(flat, bounds) - n_neg).to(torch.int64 if use_int64_offset else torch.int32)
    outputs = _permute_rows_into(inputs, topk_ids, src2dst, outputs, "outputs")
    return outputs, src2dst, expert_offsets


def moe_permute_with_scale(inputs, input_scale, topk_ids, num_experts, use_int64_offset=False, is_ep=False,
                           outputs=None, scale_outputs=None):
    """SGLang's ``moe_permute_with_scale``: moe_permute, then the same row permutation applied to
    ``input_scale`` [T, S] (any float dtype; SGLang raises ValueError when its row count differs
    from inputs'). Returns (outputs, scale_outputs [T*K, S] input_scale.dtype, src2dst,
    expert_offsets); scale_outputs' rows n_routed .. T*K-1 are poison when allocated here, left
    as they were when passed in (it must then be [T*K, S] of input_scale's dtype).
    """
    check_tensor("input_scale", input_scale, dtypes=ACT_DTYPES + (torch.int32,), ndim=2)
    check_tensor("inputs", inputs, dtypes=ROW_DTYPES, ndim=2)
    if input_scale.shape[0] != inputs.shape[0]:
        raise ValueError(f"input_scale: expected {inputs.shape[0]} rows (one per row of inputs), got shape "
                         f"{tuple(input_scale.shape)}")
    outputs, src2dst, expert_offsets = moe_permute(inputs, topk_ids, num_experts, use_int64_offset, is_ep, outputs)
    scale_outputs = _permute_rows_into(input_scale, topk_ids, src2dst, scale_outputs, "scale_outputs")
    return outputs, scale_outputs, src2dst, expert_offsets


def _weighted_row_sum(rows_src, dst, use, weights, factor, acc):
    """[T, H]: sum over k (ascending) of rows_src[dst[:, k]] * weights[:, k] where use[:, k]."""
    T, K = dst.shape
    out = torch.zeros(T, rows_src.shape[1], dtype=acc, device=rows_src.device)
    safe = torch.where(use, dst, 0)
    for k in range(K):
        term = rows_src[safe[:, k]].to(acc) * weights[:, k, None].to(acc)
        out += torch.where(use[:, k, None], term, 0.0)
    return out * factor if factor != 1.0 else out


def _input_dtype_weights(topk_weights, in_dtype, routed_scaling_factor, acc):
    """SGLang's weigh_scale: the weight cast to the input dtype, times the factor in that dtype."""
    w = topk_weights.to(in_dtype)
    if routed_scaling_factor != 1.0:
        w = w * routed_scaling_factor
    return w.to(acc)


def _validate_unpermute(inputs, output, src2dst, topk_ids, topk_weights, output_name):
    check_tensor("inputs", inputs, dtypes=ACT_DTYPES, ndim=2)
    dev = inputs.device
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2, device=dev)
    T, K = topk_ids.shape
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * K,), device=dev)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32, torch.bfloat16, torch.float16), shape=(T, K),
                 device=dev)
    if output is not None:
        check_tensor(output_name, output, dtypes=(inputs.dtype,), shape=(T, inputs.shape[1]), device=dev)
    check_rows_addressed("src2dst", src2dst, src2dst >= 0, inputs.shape[0], "slot with src2dst >= 0 (a row of inputs)")


def moe_unpermute(inputs, src2dst, topk_ids, topk_weights, routed_scaling_factor=None, outputs=None):
    """SGLang's ``moe_unpermute`` (``deepep_post_reorder_triton_kernel``, grid (T,), BLOCK_SIZE 512).

    inputs [M, H] float (the expert outputs in permuted order); src2dst [T*K] int (negative =
    slot has no row); topk_ids [T, K] int (read for its shape only: the gate is src2dst >= 0);
    topk_weights [T, K] float; routed_scaling_factor None (= 1.0) or a float; outputs None or
    [T, H] of inputs' dtype. Returns outputs [T, H] inputs.dtype with EVERY row written:
        outputs[t] = sum over k with src2dst[t*K+k] >= 0 of inputs[src2dst[t*K+k]] * c[t, k],
        c[t, k] = topk_weights[t, k] cast to inputs' dtype, times routed_scaling_factor in
        that dtype (skipped when the factor is 1.0),
    zeros for a token with no row. SGLang multiplies and accumulates in inputs' dtype (bf16:
    every product and partial sum rounded); here c is rounded as SGLang does and the sum is
    accumulated in float32: a tolerance must allow the accumulation difference only.
    """
    factor = 1.0 if routed_scaling_factor is None else check_float("routed_scaling_factor", routed_scaling_factor)
    _validate_unpermute(inputs, outputs, src2dst, topk_ids, topk_weights, "outputs")
    T, K = topk_ids.shape
    acc = acc_dtype(inputs)
    dst = src2dst.view(T, K).to(torch.int64)
    w = _input_dtype_weights(topk_weights, inputs.dtype, factor, acc)
    result = _weighted_row_sum(inputs, dst, dst >= 0, w, 1.0, acc).to(inputs.dtype)
    if outputs is None:
        return result
    outputs.copy_(result)
    return outputs


# --------------------------------------------------------------------------- DeepEP normal-mode kernels


def deepep_permute_triton_kernel(input, gateup_input, src2dst, topk_ids, a1_scales, topk, hidden_size):
    """SGLang's ``deepep_permute_triton_kernel`` (raw kernel; BLOCK_SIZE, a tile size, dropped).

    Launch: grid (T,), T = input.shape[0] (one program per token), BLOCK_SIZE=512, by
    moe_permute and cutlass_w4a8_moe_deepep_normal. input [T, H]; gateup_input [R, H] written
    in place (any dtype: input is cast to it, ``.to`` in Triton: round to nearest even, fp8
    saturating on the GPU); src2dst [T*topk] int (DeepEP normal mode: -1 or negative for a
    dropped slot); topk_ids and a1_scales are NOT read (pass anything; SGLang passes None for
    a1_scales: no scaling happens); topk = K; hidden_size = H.
    For each slot s = t*K + k with src2dst[s] >= 0: gateup_input[src2dst[s]] = cast(input[t]).
    Every other row of gateup_input is left as it was. Two slots naming the same row: the last
    k wins (SGLang: program order, k ascending); valid inputs never do. Returns None.
    """
    T, H = validate_row_scatter(input, gateup_input, src2dst, topk, hidden_size, ROW_DTYPES)
    check_rows_addressed("src2dst", src2dst, src2dst >= 0, gateup_input.shape[0],
                         "slot with src2dst >= 0 (a row of gateup_input)")
    rows = _cast_rows(input, gateup_input.dtype)
    dst = src2dst.view(T, topk).to(torch.int64)
    for k in range(topk):   # k ascending, the kernel's store order
        tokens = torch.nonzero(dst[:, k] >= 0).flatten()
        gateup_input[dst[tokens, k]] = rows[tokens]


def deepep_post_reorder_triton_kernel(down_output, output, src2dst, topk_ids, topk_weights, topk, hidden_size,
                                      routed_scaling_factor=1.0):
    """SGLang's ``deepep_post_reorder_triton_kernel`` (raw kernel; BLOCK_SIZE dropped; the
    constexpr routed_scaling_factor kept: it changes the result).

    Launch: grid (T,), T = output.shape[0] (one program per token), BLOCK_SIZE=512; launched by
    moe_unpermute and by cutlass_w4a8_moe_deepep_normal (factor 1.0: DeepEP applies it after
    the combine). down_output [M, H]; output [T, H], every row written: the sum is rounded to
    down_output's dtype (SGLang accumulates in it), then stored into output's dtype; src2dst [T*topk] (negative = dropped);
    topk_ids not read; topk_weights [T, topk]. Contract exactly as moe_unpermute's.
    Returns None.
    """
    check_int("topk", topk, lo=1)
    check_tensor("output", output, dtypes=ACT_DTYPES, ndim=2)
    T, H = output.shape
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H:
        raise ValueError(f"hidden_size: expected output.shape[1] = {H}, got {hidden_size}")
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=output.device)
    check_tensor("down_output", down_output, dtypes=ACT_DTYPES, ndim=2, device=output.device)
    if down_output.shape[1] != H:
        raise ValueError(f"down_output: expected shape (*, {H}), got {tuple(down_output.shape)}")
    output.copy_(moe_unpermute(down_output, src2dst, topk_ids, topk_weights, routed_scaling_factor).to(output.dtype))


def deepep_run_moe_deep_preprocess(topk_ids, num_experts):
    """SGLang 0.5.23's ``deepep_run_moe_deep_preprocess`` (unchanged since 0.4.10): SPEC.md
    section 2, with the domain stated for any negative id.

    topk_ids [T, K] int32/int64, values < num_experts; every negative id counts as dropped
    (SGLang's searchsorted at 0 counts all of them, not only -1). With n_neg such slots returns
    reorder_topk_ids [T*K - n_neg] (input dtype): the stable-sorted ids without the n_neg
    leading negatives; src2dst [T*K] int64: stable sorted position minus n_neg (dropped slots
    in [-n_neg, -1], routed ones a permutation of [0, T*K - n_neg)); seg_indptr [E+1] int64:
    seg_indptr[e] = routed slots with id < e (so [0] = 0 and [E] = T*K - n_neg). seg_indptr
    is a fresh tensor (SGLang subtracts out of place: no alias of the n_neg it read). On
    SPEC.md section 2's domain (ids in [-1, E)) this equals the SPEC.md section 2 reference (reference.preprocess).
    """
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2)
    check_int("num_experts", num_experts, lo=1)
    if topk_ids.numel() and int(topk_ids.max()) >= num_experts:
        raise ValueError(f"topk_ids: expected every value < num_experts = {num_experts} (negative = dropped), "
                         f"got a maximum of {int(topk_ids.max())}")
    flat = topk_ids.reshape(-1)
    sorted_ids, pos = _sorted_positions(flat)
    n_neg = int((flat < 0).sum())
    seg = _count_below(flat, torch.arange(num_experts + 1, device=flat.device)) - n_neg
    return sorted_ids[n_neg:].clone(), pos.to(torch.int64) - n_neg, seg


# --------------------------------------------------------------------------- the 0.5 conventions


def run_moe_ep_preproess_local(topk_ids, num_local_experts):
    """SGLang 0.5.4 .. 0.5.5's ``run_moe_ep_preproess(topk_ids, num_local_experts)`` (gone by
    0.5.6; 0.5.3 and earlier had the ``num_experts`` form of SPEC.md section 1).

    topk_ids [T, K] int32/int64 of LOCAL ids, any values (callers pass -1 or the sentinel
    num_local_experts for slots not computed here). Returns
    - reorder_topk_ids [T*K] (input dtype): the flat ids sorted ascending, stable;
    - src2dst [T*K] int32: the stable sorted position of each slot (sentinels included);
    - seg_indptr [E+1] int64 (E = num_local_experts; allocated with zeros, then one program per
      e in [0, E) writes entry e): seg_indptr[e] = number of ids < e for e < E, and
      seg_indptr[E] = 0: nothing writes the last entry.
    How it differs from SPEC.md section 1 (``run_moe_ep_preproess(topk_ids, num_experts)``):
    (a) seg_indptr[E] is 0, not T*K (never written); (b) any id is accepted: negative ids
    count below every e, so seg_indptr[0] = number of negative ids, not 0, and ids >= E sort
    to the end without being counted; (c) the ids are local (its caller, cutlass_w4a8_moe, maps
    -1 to num_local_experts first and uses only src2dst). On SPEC 1's domain (ids in [0, E))
    only (a) differs.
    """
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2)
    check_int("num_local_experts", num_local_experts, lo=1)
    flat = topk_ids.reshape(-1)
    sorted_ids, pos = _sorted_positions(flat)
    seg = torch.zeros(num_local_experts + 1, dtype=torch.int64, device=flat.device)
    seg[:num_local_experts] = _count_below(flat, torch.arange(num_local_experts, device=flat.device))
    return sorted_ids, pos.to(torch.int32), seg


def post_reorder_gated(down_output, output, src2dst, topk_ids, topk_weights, topk, hidden_size):
    """SGLang 0.5.4 .. 0.5.10's ``post_reorder_triton_kernel`` without start/end (raw kernel,
    grid (T,), BLOCK_SIZE=512; called by the DeepGEMM runner's post-permute, which multiplies
    the result by routed_scaling_factor afterwards), with the gate it is meant to have.

    down_output [M, H]; output [T, H] (every row written); src2dst [T*topk] int; topk_ids
    [T, topk] int of LOCAL ids, negative = not routed here; topk_weights [T, topk] float32.
        output[t] = sum over k with topk_ids[t, k] >= 0 of
                    down_output[src2dst[t*topk + k]] * topk_weights[t, k],
    zeros for a token with no routed slot. SGLang casts the weight to down_output's dtype and
    accumulates in that dtype; here the weight is cast the same way and the sum accumulated in
    float32. Returns None.
    How it differs from SPEC.md section 5: no start/end_expert_id: the ids are already local
    and the gate is ``topk_ids >= 0`` (no upper bound; every non-negative id is summed).
    The bug class it rules out: the released kernel (checked in wheels 0.5.4, 0.5.5, 0.5.6,
    0.5.8, 0.5.10; not 0.5.3, whose kernel has start/end; named commit 26be49be in the
    project issue) gates on ``expert_id > 0``. Every slot routed to LOCAL expert 0 - on every
    EP rank, since each rank's first expert has local id 0 - is then skipped: its weighted
    down-projection is missing from the token's output, silently (no error, no NaN, a row
    that is merely smaller; a token whose only routed expert is local 0 gets zeros).
    """
    check_int("topk", topk, lo=1)
    check_tensor("output", output, dtypes=ACT_DTYPES, ndim=2)
    dev = output.device
    T, H = output.shape
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H:
        raise ValueError(f"hidden_size: expected output.shape[1] = {H}, got {hidden_size}")
    check_tensor("down_output", down_output, dtypes=(output.dtype,), ndim=2, device=dev)
    if down_output.shape[1] != H:
        raise ValueError(f"down_output: expected shape (*, {H}), got {tuple(down_output.shape)}")
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=dev)
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * topk,), device=dev)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32,), shape=(T, topk), device=dev)
    routed = topk_ids >= 0
    check_rows_addressed("src2dst", src2dst, routed, down_output.shape[0],
                          "slot with topk_ids >= 0 (a row of down_output)")
    acc = acc_dtype(down_output)
    w = _input_dtype_weights(topk_weights, down_output.dtype, 1.0, acc)
    dst = src2dst.view(T, topk).to(torch.int64)
    output.copy_(_weighted_row_sum(down_output, dst, routed, w, 1.0, acc).to(output.dtype))


__all__ = ["moe_permute", "moe_permute_with_scale", "moe_unpermute", "deepep_permute_triton_kernel",
           "deepep_post_reorder_triton_kernel", "deepep_run_moe_deep_preprocess", "run_moe_ep_preproess_local",
           "post_reorder_gated", "check_src2dst_assignment"]
