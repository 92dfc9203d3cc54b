"""Record of ``ep_moe_forward`` (SPEC.md section 7: one EP rank's MoE forward chained from the
other ops), with its builder, cost, bench shape and the mutants that break it through one of
its parts."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch

import reference
from reference.moe import CHAIN_OPS

from ..cases import CaseParams, make_generator, make_topk_weights, randn
from ..costs import Cost, tensor_core_rate
from ..mutants import Mutant, cache_by_shape
from ..opspec import (CHAINED, BenchAnchor, ErrorInput, OpSpec, OutputSpec, Precondition, Sample, activation_dtype,
                      returned, set_arg)
from .gemm import BLOCK_SHAPE, K_BLOCK_ALIGNED, quantize_weight_blockwise
from .preprocess import case_ids

FORWARD = "ep_moe_forward"


def build_ep_moe(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen, allow_invalid=False)
    act = activation_dtype(p.dtype)
    H, I = p.hidden, p.inter
    x = randn((p.tokens, H), gen, act)
    w13 = randn((p.e_local, 2 * I, H), gen, torch.float32, scale=1.0 / math.sqrt(H))
    w2 = randn((p.e_local, H, I), gen, torch.float32, scale=1.0 / math.sqrt(I))
    w13_scale = w2_scale = block_shape = None
    if p.dtype == "fp8_block":
        block_shape = list(BLOCK_SHAPE)
        w13, w13_scale = quantize_weight_blockwise(w13, block_shape)
        w2, w2_scale = quantize_weight_blockwise(w2, block_shape)
    else:
        w13, w2 = w13.to(act), w2.to(act)
    args = dict(hidden_states=x, topk_ids=ids, topk_weights=make_topk_weights(p, gen), w13=w13, w2=w2,
                num_experts=p.experts, start_expert_id=p.start_expert, end_expert_id=p.end_expert,
                activation="silu", w13_scale=w13_scale, w2_scale=w2_scale, block_shape=block_shape)
    f64 = ("hidden_states",) if block_shape else ("hidden_states", "w13", "w2")
    return Sample(p, args, f64, ids)


def ep_moe_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Token rows read and written once, the weights of every expert in use read once; FLOPs of
    both GEMMs over the local slots."""
    x, w13, w2 = args["hidden_states"], args["w13"], args["w2"]
    ids = args["topk_ids"].reshape(-1).to(torch.int64)
    local_mask = (ids >= params.start_expert) & (ids <= params.end_expert)
    local = int(local_mask.sum())
    experts_used = int(torch.unique(ids[local_mask]).numel())
    T, H = x.shape
    I = w2.shape[2]
    weight_bytes = experts_used * (w13[0].numel() * w13.element_size() + w2[0].numel() * w2.element_size())
    for name in ("w13_scale", "w2_scale"):
        scale = args.get(name)
        if isinstance(scale, torch.Tensor):
            weight_bytes += experts_used * scale[0].numel() * scale.element_size()
    nbytes = T * H * x.element_size() + weight_bytes + T * H * x.element_size()
    return Cost(nbytes, 2 * local * (2 * I) * H + 2 * local * H * I,
                f"{T} token rows read and written, weights of {experts_used} experts read, {local} local slots",
                flop_rate=tensor_core_rate(w13))


# The block-wise fp8 forward's two GEMMs reduce over H and I: both multiples of the quant block's K
# where the GEMM requires it (the same precondition id as the GEMM's, so a chain of a GEMM that
# requires it requires it too).
_K = BLOCK_SHAPE[1]
FORWARD_K_ALIGNED = Precondition(
    K_BLOCK_ALIGNED.id, f"fp8 block-wise: H and I multiples of the quant block's {_K}",
    holds=lambda p: p.dtype != "fp8_block" or (p.hidden % _K == 0 and p.inter % _K == 0),
    fit=lambda p: p if p.dtype != "fp8_block" else dataclasses.replace(
        p, hidden=max(_K, p.hidden // _K * _K), inter=max(_K, p.inter // _K * _K)))

RECORDS = (
    OpSpec(FORWARD, reference.ep_moe_forward, build_ep_moe, (OutputSpec("output", returned(0), "normwise", "token"),),
           ("bfloat16", "fp8_block"), "optimized.moe", ep_moe_cost, max_tokens=128, max_hidden=384, max_inter=192,
           bench_anchors=(BenchAnchor(4096, 8, 256, 31, 7168, 2048, "DeepSeek-V3 EP8"),),
           shape_label=lambda p: f"H={p.hidden} I={p.inter}", composed_of=CHAIN_OPS,
           preconditions=(FORWARD_K_ALIGNED,),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("w13", lambda a: a["w13"][:-1].contiguous()), ValueError, "w13"),
               ErrorInput("bfloat16", set_arg("activation", "relu"), ValueError, "activation"),
               ErrorInput("bfloat16", set_arg("end_expert_id", 6), ValueError, "end_expert_id"),
               ErrorInput("fp8_block", set_arg("w2_scale", None), TypeError, "w2_scale"),
           ),
           # plain torch: the baseline's preprocess, pre_reorder and mm loop, the references' rest
           baselines={"torch": CHAINED}, case_cost=8.3),
)

MUTANTS = (
    Mutant("moe_quant_seg_start_ignored", FORWARD, "optimized.gemm",
           "rmask = rmask & (rows >= lo) & (rows < hi)",
           "rmask = rmask & (rows < hi - lo)",
           "a nonzero seg_indptr start ignored by the fp8 quantiser: it quantises rows [0, hi - lo), so a rank "
           "whose experts do not start at 0 multiplies unquantised rows", dtypes=("fp8_block",)),
    Mutant("moe_routing_cached_by_shape", FORWARD, "optimized.preprocess", "", "",
           "a result cached from a previous call: the forward's routing memoised on the shape of topk_ids",
           wrap=cache_by_shape, function=CHAIN_OPS[0]),
)
