"""Gated activations over the reordered rows (SPEC.md section 4)."""
from __future__ import annotations

import math

import torch

from ._checks import acc_dtype, validate_act_and_mul
from .reorder import cast_saturating


def ref_silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1.0 + torch.exp(-x))


def ref_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


ACTIVATIONS = {"silu": ref_silu, "gelu": ref_gelu_tanh}


def act_and_mul(activation, gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                start_expert_id, end_expert_id, BLOCK_SIZE=512):
    """Shared body of silu_and_mul / gelu_and_mul.

    For each row m of gateup_output [M, 2I] whose id reorder_topk_ids[m] is in [start, end]:
    gate = row[:I], up = row[I:]; down_input[m] = act(gate) (in float32, cast to the input
    dtype) * up * (1 / scales[e - start], cast to the input dtype, when scales are given),
    cast to down_input's dtype. Rows of other experts are left as they were.
    """
    validate_act_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                         start_expert_id, end_expert_id, BLOCK_SIZE)
    half = hidden_size // 2
    in_dtype, acc = gateup_output.dtype, acc_dtype(gateup_output)
    ids = reorder_topk_ids.to(torch.int64)                                   # [M]
    rows = torch.nonzero((ids >= start_expert_id) & (ids <= end_expert_id)).flatten()  # [R]
    gate = gateup_output[rows, :half].to(acc)                                # [R, I]
    up = gateup_output[rows, half:].to(acc)                                  # [R, I]
    out = ACTIVATIONS[activation](gate).to(in_dtype).to(acc) * up
    if scales is not None:
        inv = (1.0 / scales[ids[rows] - start_expert_id].to(acc)).to(in_dtype).to(acc)  # [R]
        out = out * inv[:, None]
    down_input[rows] = cast_saturating(out, down_input.dtype)


def silu_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                 end_expert_id, BLOCK_SIZE=512):
    """SGLang's ``silu_and_mul_triton_kernel`` without its grid (see act_and_mul)."""
    act_and_mul("silu", gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                start_expert_id, end_expert_id, BLOCK_SIZE)


def gelu_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                 end_expert_id, BLOCK_SIZE=512):
    """SGLang's ``gelu_and_mul_triton_kernel`` without its grid (see act_and_mul; GELU is tanh-approximated)."""
    act_and_mul("gelu", gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                start_expert_id, end_expert_id, BLOCK_SIZE)


__all__ = ["silu_and_mul", "gelu_and_mul"]
