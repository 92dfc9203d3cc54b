"""One EP rank's MoE forward chained from our Triton ops (SPEC.md section 7).

The chaining itself (buffer allocation, the order of the ops, the slicing of seg_indptr)
is the reference's ``ep_moe_forward``: we hand it a namespace of our ops, so the two
cannot drift apart.
"""
from __future__ import annotations

import types

from reference.moe import ACTIVATION_OPS, CHAIN_OPS
from reference.moe import ep_moe_forward as _reference_chain

from . import activation, gemm, preprocess, reorder


def _our_op(name: str):
    return next(getattr(m, name) for m in (preprocess, reorder, gemm, activation) if hasattr(m, name))


OPS = types.SimpleNamespace(**{name: _our_op(name) for name in CHAIN_OPS + tuple(ACTIVATION_OPS.values())})


def ep_moe_forward(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id,
                   end_expert_id, activation="silu", w13_scale=None, w2_scale=None, block_shape=None,
                   ops=None):
    """reference.ep_moe_forward with our kernels (``ops`` defaults to this package's ops).

    Returns this rank's partial output [T, H]: the sum over its experts of w[t, k] * MLP_e(x[t]).
    """
    return _reference_chain(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id,
                            end_expert_id, activation=activation, w13_scale=w13_scale, w2_scale=w2_scale,
                            block_shape=block_shape, ops=OPS if ops is None else ops)


__all__ = ["ep_moe_forward"]
