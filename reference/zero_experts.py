"""Zero experts (LongCat-Flash): routed slots that name an expert id >= num_experts are
"zero-computation" experts; the identity kind returns the token itself, weighted. SGLang 0.5.23's
``zero_experts_compute_triton`` (``sglang/kernels/ops/moe/ep_moe_kernels.py``), as a
pure-PyTorch reference.
"""
from __future__ import annotations

import torch

from ._checks import ACT_DTYPES, ID_DTYPES, acc_dtype, check_int, check_tensor

ZERO_EXPERT_TYPES = ("identity",)
IDENTITY_BLOCK_SIZE = 256   # SGLang's compute_identity_kernel tile: see the docstring's caveat


def zero_experts_compute_triton(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states):
    """SGLang's ``zero_experts_compute_triton`` with zero_expert_type "identity".

    expert_indices [T, K] int32/int64 and expert_scales [T, K] float (float32 in practice), both
    contiguous; num_experts = number of real (routed) experts; hidden_states [T, H] float.
    A slot is a zero-expert slot when its ORIGINAL id is >= num_experts (a negative id is not).
    Returns output [T, H] of hidden_states' dtype, fresh:
        output[t] = sum over zero-expert slots k of hidden_states[t] * expert_scales[t, k]
    (original scales; float32 products and sum, k ascending, then cast); zeros for a token
    with no zero-expert slot.
    Rewrites its inputs in place, so that the routed-expert MoE that follows ignores the
    zero-expert slots: at every zero-expert slot, expert_indices is set to 0 (a valid routed
    id) and expert_scales to 0.0; every other element of both is left as it was;
    hidden_states is not modified. Other zero_expert_type values: ValueError here (SGLang
    0.5.23 fails with UnboundLocalError after having rewritten nothing).
    Upstream caveat: SGLang launches num_tokens * (H // 256) programs of 256 columns, so its
    columns h >= 256 * (H // 256) stay 0 (all of them when H < 256). For H a multiple of 256
    (LongCat-Flash: 6144) it equals this contract; for other H it differs in those columns.
    """
    if zero_expert_type not in ZERO_EXPERT_TYPES:
        raise ValueError(f"zero_expert_type: expected one of {ZERO_EXPERT_TYPES}, got {zero_expert_type!r}")
    check_tensor("hidden_states", hidden_states, dtypes=ACT_DTYPES, ndim=2)
    dev = hidden_states.device
    T = hidden_states.shape[0]
    check_tensor("expert_indices", expert_indices, dtypes=ID_DTYPES, ndim=2, device=dev)
    if expert_indices.shape[0] != T:
        raise ValueError(f"expert_indices: expected {T} rows (one per row of hidden_states), got shape "
                         f"{tuple(expert_indices.shape)}")
    check_tensor("expert_scales", expert_scales, dtypes=(torch.float32, torch.bfloat16, torch.float16),
                 shape=tuple(expert_indices.shape), device=dev)
    check_int("num_experts", num_experts, lo=0)
    zero_slot = expert_indices >= num_experts                                   # [T, K]
    acc = acc_dtype(hidden_states)
    weights = torch.where(zero_slot, expert_scales.to(acc), 0.0)                # [T, K]
    h = hidden_states.to(acc)
    output = torch.zeros(hidden_states.shape, dtype=acc, device=dev)
    for k in range(expert_indices.shape[1]):
        output += h * weights[:, k, None]
    expert_indices[zero_slot] = 0
    expert_scales[zero_slot] = 0.0
    return output.to(hidden_states.dtype)


__all__ = ["zero_experts_compute_triton"]
