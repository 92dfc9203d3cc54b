"""Gather token rows into expert order and scatter-add them back (SPEC.md sections 3 and 5)."""
from __future__ import annotations

import torch

from ._checks import FP8_DTYPE, FP8_MAX, acc_dtype, validate_post_reorder, validate_pre_reorder


def _local_slots(topk_ids: torch.Tensor, start_expert_id: int, end_expert_id: int):
    """Flat slot indices whose expert lies in [start, end], and those experts."""
    flat = topk_ids.reshape(-1).to(torch.int64)                          # [T*K]
    slots = torch.nonzero((flat >= start_expert_id) & (flat <= end_expert_id)).flatten()
    return slots, flat[slots]


def cast_saturating(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to ``dtype``; fp8 values are clamped to +-448 first (as the kernels do)."""
    if dtype == FP8_DTYPE:
        x = x.clamp(-FP8_MAX, FP8_MAX)
    return x.to(dtype)


def pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id,
                topk, hidden_size, BLOCK_SIZE=512):
    """SGLang's ``pre_reorder_triton_kernel`` without its grid.

    input [T, H]; gateup_input [T*K, H] (written in place); for each slot s = t*K + k whose
    expert e is in [start, end]: gateup_input[src2dst[s]] = input[t], scaled by
    1 / a1_scales[e - start] in float32 when scales are given and cast to gateup_input's
    dtype. Every other row of gateup_input is left as it was. Returns None.
    """
    validate_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id,
                         end_expert_id, topk, hidden_size, BLOCK_SIZE)
    slots, experts = _local_slots(topk_ids, start_expert_id, end_expert_id)
    rows = input[slots // topk]                                          # [S, H]
    if a1_scales is not None:
        inv = 1.0 / a1_scales[experts - start_expert_id].to(acc_dtype(input))  # [S]
        rows = cast_saturating(rows.to(inv.dtype) * inv[:, None], gateup_input.dtype)
    gateup_input[src2dst.to(torch.int64)[slots]] = rows


def post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id, end_expert_id,
                 topk, hidden_size, BLOCK_SIZE=512):
    """SGLang's ``post_reorder_triton_kernel`` without its grid.

    output[t] = sum over slots (t, k) with a local expert of
    down_output[src2dst[t*K + k]] * topk_weights[t, k], accumulated in float32 and cast
    to output's dtype. Every row of output is written (zeros where no expert is local).
    """
    validate_post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id,
                          end_expert_id, topk, hidden_size, BLOCK_SIZE)
    T, H = output.shape
    ids = topk_ids.to(torch.int64)                                       # [T, K]
    local = (ids >= start_expert_id) & (ids <= end_expert_id)            # [T, K]
    dst = torch.where(local, src2dst.view(T, topk).to(torch.int64), 0)   # [T, K], safe row index
    acc = torch.zeros(T, H, dtype=acc_dtype(down_output), device=output.device)  # [T, H]
    for k in range(topk):  # fixed order over k: deterministic on every device
        term = down_output[dst[:, k]].to(acc.dtype) * topk_weights[:, k, None].to(acc.dtype)
        acc += torch.where(local[:, k, None], term, 0.0)
    output.copy_(acc.to(output.dtype))


__all__ = ["pre_reorder", "post_reorder"]
