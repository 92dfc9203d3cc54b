"""One EP rank's MoE forward built from the ops, and an independent dense MoE (SPEC.md section 7)."""
from __future__ import annotations


import torch

from ._checks import ACT_DTYPES, FP8_DTYPE, check_expert_range, check_int, check_tensor
from .activation import ACTIVATIONS
from .gemm import expand_block_scales, per_token_group_quant_fp8

# The ops ep_moe_forward chains, in order, and the activation op each ``activation`` takes:
# an ``ops`` namespace handed to it holds these names.
CHAIN_OPS = ("ep_preprocess", "pre_reorder", "grouped_gemm", "silu_and_mul", "post_reorder")
ACTIVATION_OPS = {"silu": "silu_and_mul", "gelu": "gelu_and_mul"}


def _validate_moe(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id,
                  end_expert_id, activation, w13_scale, w2_scale, block_shape):
    check_tensor("hidden_states", hidden_states, dtypes=ACT_DTYPES, ndim=2)
    dev = hidden_states.device
    T, H = hidden_states.shape
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32, torch.int64), ndim=2, device=dev)
    K = topk_ids.shape[1]
    check_tensor("topk_ids", topk_ids, shape=(T, K))
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32,), shape=(T, K), device=dev)
    check_int("num_experts", num_experts, lo=1)
    e_local = check_expert_range(num_experts, start_expert_id, end_expert_id)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
    w_dtypes = (FP8_DTYPE,) if block_shape is not None else (hidden_states.dtype,)
    check_tensor("w13", w13, dtypes=w_dtypes, ndim=3, device=dev)
    two_i = w13.shape[1]
    check_tensor("w13", w13, shape=(e_local, two_i, H))
    if two_i % 2:
        raise ValueError(f"w13: expected an even second dimension (2 * intermediate size), got {tuple(w13.shape)}")
    check_tensor("w2", w2, dtypes=w_dtypes, shape=(e_local, H, two_i // 2), device=dev)
    if block_shape is not None:
        bn, bk = block_shape
        check_tensor("w13_scale", w13_scale, dtypes=(torch.float32,),
                     shape=(e_local, -(-two_i // bn), -(-H // bk)), device=dev)
        check_tensor("w2_scale", w2_scale, dtypes=(torch.float32,),
                     shape=(e_local, -(-H // bn), -(-(two_i // 2) // bk)), device=dev)
    return e_local


def ep_moe_forward(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id,
                   end_expert_id, activation="silu", w13_scale=None, w2_scale=None, block_shape=None,
                   ops=None):
    """One EP rank's partial MoE output, chaining the ops as SGLang's EP layer does.

    hidden_states [T, H]; topk_ids / topk_weights [T, K]; w13 [E_local, 2I, H]; w2
    [E_local, H, I] for the experts start_expert_id..end_expert_id. With block_shape
    [bn, bk], w13/w2 are fp8 e4m3 with block scales w13_scale / w2_scale and activations
    are quantised per token group inside grouped_gemm. ``ops`` is a namespace holding
    CHAIN_OPS and the activation op of ``activation`` (default: the references). Returns
    output [T, H]: the sum over this rank's experts of w[t, k] * MLP_e(x[t]).
    """
    e_local = _validate_moe(hidden_states, topk_ids, topk_weights, w13, w2, num_experts,
                            start_expert_id, end_expert_id, activation, w13_scale, w2_scale, block_shape)
    if ops is None:
        import reference as ops
    T, H = hidden_states.shape
    K = topk_ids.shape[1]
    two_i = w13.shape[1]
    dev, dtype = hidden_states.device, hidden_states.dtype
    fp8 = block_shape is not None
    reorder_topk_ids, src2dst, seg_indptr = ops.ep_preprocess(topk_ids, num_experts)
    gateup_input = torch.empty(T * K, H, device=dev, dtype=dtype)                  # [T*K, H]
    ops.pre_reorder(hidden_states, gateup_input, src2dst, topk_ids, None, start_expert_id,
                    end_expert_id, K, H)
    seg_local = seg_indptr[start_expert_id:end_expert_id + 2]                     # [E_local+1]
    weight_indices = torch.arange(e_local, device=dev, dtype=torch.int64)
    gateup_output = torch.empty(T * K, two_i, device=dev, dtype=dtype)              # [T*K, 2I]
    ops.grouped_gemm(gateup_input, w13, gateup_output, e_local, True, seg_local, weight_indices,
                     fp8, None, w13_scale, block_shape)
    down_input = torch.empty(T * K, two_i // 2, device=dev, dtype=dtype)           # [T*K, I]
    act = getattr(ops, ACTIVATION_OPS[activation])
    act(gateup_output, down_input, two_i, reorder_topk_ids, None, start_expert_id, end_expert_id)
    down_output = torch.empty(T * K, H, device=dev, dtype=dtype)                   # [T*K, H]
    ops.grouped_gemm(down_input, w2, down_output, e_local, True, seg_local, weight_indices,
                     fp8, None, w2_scale, block_shape)
    output = torch.empty(T, H, device=dev, dtype=dtype)                            # [T, H]
    ops.post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id,
                     end_expert_id, K, H)
    return output


def _dequant_weight(w: torch.Tensor, scale, block_shape) -> torch.Tensor:
    if block_shape is None:
        return w.double()
    bn, bk = block_shape
    return w.double() * expand_block_scales(scale.double(), w.shape[0], w.shape[1], bn, bk)


def _quant_dequant_row(x: torch.Tensor, block_shape) -> torch.Tensor:
    """What the fp8 block-wise layer does to an activation row: quantise, then dequantise."""
    if block_shape is None:
        return x.double()
    q, s = per_token_group_quant_fp8(x[None, :], block_shape[1])
    return (q.double() * expand_block_scales(s.double(), 1, x.shape[0], 1, block_shape[1]))[0]


def dense_moe_forward(hidden_states, topk_ids, topk_weights, w13, w2, activation="silu",
                      w13_scale=None, w2_scale=None, block_shape=None):
    """The whole MoE, token by token and expert by expert, in float64; no reordering.

    out[t] = sum_k w[t, k] * (act(x[t] @ W1[e].T) * (x[t] @ W3[e].T)) @ W2[e].T with
    e = topk_ids[t, k], W1/W3 the two halves of w13[e] [2I, H], w2 [E, H, I]. With
    block_shape, weights are dequantised from their block scales and each activation
    row entering a GEMM is quantised per token group as the fp8 layer does. Returns
    float64 [T, H].
    """
    _validate_moe(hidden_states, topk_ids, topk_weights, w13, w2, w13.shape[0], 0, w13.shape[0] - 1,
                  activation, w13_scale, w2_scale, block_shape)
    T, H = hidden_states.shape
    half = w13.shape[1] // 2
    act = ACTIVATIONS[activation]
    out = torch.zeros(T, H, dtype=torch.float64, device=hidden_states.device)
    cache = {}
    for t in range(T):
        x = _quant_dequant_row(hidden_states[t], block_shape)                        # [H]
        for k in range(topk_ids.shape[1]):
            e = int(topk_ids[t, k])
            if e not in cache:
                cache[e] = (_dequant_weight(w13[e], None if w13_scale is None else w13_scale[e], block_shape),
                            _dequant_weight(w2[e], None if w2_scale is None else w2_scale[e], block_shape))
            w13_e, w2_e = cache[e]
            gate, up = w13_e[:half] @ x, w13_e[half:] @ x                            # [I], [I]
            h = act(gate) * up
            h = _quant_dequant_row(h.to(hidden_states.dtype), block_shape)
            out[t] += float(topk_weights[t, k]) * (w2_e @ h)
    return out


__all__ = ["ep_moe_forward", "dense_moe_forward"]
