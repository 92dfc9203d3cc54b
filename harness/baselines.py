"""Plain-torch compositions to time our kernels against (ANCHORS.md's "plain torch" columns).

Two built-in implementations use them: ``torch`` (a per-group ``torch.mm`` loop for the GEMM,
argsort + bincount + cumsum + scatter for both preprocessings, mask + index_copy_ for pre_reorder,
and the EP-rank forward chained from those and the references)
and ``torch_grouped_mm`` (``torch._grouped_mm`` for the GEMM). They keep SGLang's signatures
and the contract, validate metadata only (like a caller that trusts its inputs), and cover
the 16- and 32-bit dtypes: fp8 cases raise NotImplementedError. They are baselines, not
products: each may synchronise with the host where plain torch does.
"""
from __future__ import annotations

import torch

from reference._checks import validate_grouped_gemm, validate_pre_reorder, validate_preprocess


def _no_fp8(use_fp8_w8a8: bool) -> None:
    if use_fp8_w8a8:
        raise NotImplementedError("use_fp8_w8a8: the plain-torch baselines cover bf16/fp16/fp32 only")


def _sorted_slots(flat: torch.Tensor, n_inv: int, index_dtype: torch.dtype):
    """The flat ids sorted (stable) and src2dst: each slot's sorted position minus n_inv."""
    reorder_topk_ids, order = torch.sort(flat, stable=True)
    src2dst = torch.empty(flat.numel(), dtype=index_dtype, device=flat.device)
    src2dst[order] = torch.arange(-n_inv, flat.numel() - n_inv, dtype=index_dtype, device=flat.device)
    return reorder_topk_ids, src2dst


def ep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """argsort + bincount + cumsum + scatter (stable, as SGLang's)."""
    validate_preprocess(topk_ids, num_experts, allow_invalid=False, check_values=False)
    flat = topk_ids.reshape(-1)
    reorder_topk_ids, src2dst = _sorted_slots(flat, 0, torch.int32)
    seg_indptr = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    seg_indptr[1:] = torch.cumsum(torch.bincount(flat, minlength=num_experts), 0)
    return reorder_topk_ids, src2dst, seg_indptr


def deepep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """The same composition with ids of -1 allowed: they sort first, and their count n_inv is
    read on the host to drop them from reorder_topk_ids (as SGLang's)."""
    validate_preprocess(topk_ids, num_experts, allow_invalid=True, check_values=False)
    flat = topk_ids.reshape(-1)
    n_inv = int((flat < 0).sum())                                          # host sync
    reorder_topk_ids, src2dst = _sorted_slots(flat, n_inv, torch.int64)
    seg_indptr = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    # ids of -1 land in bin 0, which is dropped
    seg_indptr[1:] = torch.cumsum(torch.bincount(flat.long() + 1, minlength=num_experts + 1)[1:], 0)
    return reorder_topk_ids[n_inv:], src2dst, seg_indptr


def pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                hidden_size, BLOCK_SIZE=512):
    """mask + index_copy_ (copies only: scales, hence fp8, are not covered)."""
    validate_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                         hidden_size, BLOCK_SIZE, check_values=False)
    _no_fp8(a1_scales is not None)
    flat = topk_ids.reshape(-1)
    local = torch.nonzero((flat >= start_expert_id) & (flat <= end_expert_id)).flatten()   # [S]
    gateup_input.index_copy_(0, src2dst.reshape(-1)[local].long(), input.index_select(0, local // topk))


def grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8=False,
                 scale_a=None, scale_b=None, block_shape=None):
    """One torch.mm per group (float32 accumulation inside cuBLAS)."""
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8,
                          scale_a, scale_b, block_shape, check_values=False)
    _no_fp8(use_fp8_w8a8)
    seg, experts = seg_indptr.tolist(), weight_indices.tolist()        # host sync, as a torch loop does
    for g in range(batch_size):
        lo, hi = seg[g], seg[g + 1]
        if hi > lo:
            torch.mm(a[lo:hi], b[experts[g]].t(), out=c[lo:hi])
    return c


def grouped_gemm_grouped_mm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                            use_fp8_w8a8=False, scale_a=None, scale_b=None, block_shape=None):
    """torch._grouped_mm over the rows [seg[0], seg[batch]) with offsets relative to seg[0].

    Weights are gathered by weight_indices (a copy) unless they are the identity, which is
    checked on the host: SGLang's EP layer passes arange(E_local). torch._grouped_mm wants
    16-byte aligned strides (Kd and N multiples of 8 in bf16): other shapes raise there."""
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8,
                          scale_a, scale_b, block_shape, check_values=False)
    _no_fp8(use_fp8_w8a8)
    if batch_size == 0:
        return c
    lo, hi = (int(x) for x in seg_indptr[[0, -1]].tolist())
    identity = batch_size == b.shape[0] and bool(
        torch.equal(weight_indices, torch.arange(batch_size, device=weight_indices.device)))
    w = b if identity else b.index_select(0, weight_indices)             # [G, N, Kd]
    offs = (seg_indptr[1:] - lo).to(torch.int32)                          # group ends, relative to lo
    c[lo:hi] = torch._grouped_mm(a[lo:hi], w.transpose(1, 2), offs=offs)
    return c


def ep_moe_forward(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id, end_expert_id,
                   activation="silu", w13_scale=None, w2_scale=None, block_shape=None):
    """The EP-rank forward chained from plain torch: this module's preprocess, pre_reorder and
    per-group mm loop, with the references' activation and post_reorder (already plain torch)."""
    import types

    import reference
    from reference.moe import ep_moe_forward as chain
    _no_fp8(block_shape is not None or w13_scale is not None)
    ops = types.SimpleNamespace(ep_preprocess=ep_preprocess, pre_reorder=pre_reorder, grouped_gemm=grouped_gemm,
                                silu_and_mul=reference.silu_and_mul, gelu_and_mul=reference.gelu_and_mul,
                                post_reorder=reference.post_reorder)
    return chain(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id, end_expert_id,
                 activation=activation, w13_scale=w13_scale, w2_scale=w2_scale, block_shape=block_shape, ops=ops)
