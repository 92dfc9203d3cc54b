"""The EP-rank forward, summed over every split of the experts into ranks, equals the dense MoE."""
import math

import pytest
import torch

import reference
from harness.ops.gemm import BLOCK_SHAPE, quantize_weight_blockwise

T, K, E, H, I = 9, 3, 6, 48, 24
# Every way of cutting 0..E-1 into contiguous ranks is covered by these cut sets.
SPLITS = [[], [3], [0], [4], [1, 3], [0, 1, 2, 3, 4], [2, 4]]


def _splits_to_ranges(cuts):
    bounds = [0] + [c + 1 for c in cuts] + [E]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(len(bounds) - 1)]


def _model(gen, fp8):
    ids = torch.rand(T, E, generator=gen, device=gen.device).argsort(1)[:, :K].to(torch.int32).contiguous()
    w = torch.rand(T, K, generator=gen, device=gen.device)
    x = torch.randn(T, H, generator=gen, device=gen.device).bfloat16()
    w13 = torch.randn(E, 2 * I, H, generator=gen, device=gen.device) / math.sqrt(H)
    w2 = torch.randn(E, H, I, generator=gen, device=gen.device) / math.sqrt(I)
    if fp8:
        block = [16, 16]
        (w13, s13), (w2, s2) = quantize_weight_blockwise(w13, block), quantize_weight_blockwise(w2, block)
        return ids, w, x, w13, w2, dict(w13_scale=s13, w2_scale=s2, block_shape=block)
    return ids, w, x, w13.bfloat16(), w2.bfloat16(), {}


# bf16: each rank's output goes through four bf16 roundings (two GEMM outputs, the
# activation and the scatter), each <= 2**-8 relative: a normwise error of a few 1e-3.
# fp8: an intermediate rounded differently can move an fp8 rounding by one step (2**-3
# relative on that element); a few such elements keep the normwise error near 1e-2.
@pytest.mark.parametrize("fp8,tol", [(False, 1e-2), (True, 3e-2)], ids=["bf16", "fp8_block"])
@pytest.mark.parametrize("cuts", SPLITS, ids=str)
def test_rank_split_sums_to_dense(gen, fp8, tol, cuts):
    ids, w, x, w13, w2, q = _model(gen, fp8)
    dense = reference.dense_moe_forward(x, ids, w, w13, w2, **q)
    total = torch.zeros_like(dense)
    for start, end in _splits_to_ranges(cuts):
        qs = {k: (v[start:end + 1] if k != "block_shape" else v) for k, v in q.items()}
        total += reference.ep_moe_forward(x, ids, w, w13[start:end + 1], w2[start:end + 1], E, start, end,
                                          **qs).double()
    rel = float((total - dense).norm() / dense.norm())
    assert rel < tol, rel


def test_dense_moe_is_sensitive_to_routing(gen):
    """Guard against a dense formulation that ignores topk_ids (then any split 'matches')."""
    ids, w, x, w13, w2, _ = _model(gen, False)
    a = reference.dense_moe_forward(x, ids, w, w13, w2)
    b = reference.dense_moe_forward(x, (ids + 1) % E, w, w13, w2)
    assert float((a - b).norm() / a.norm()) > 0.1


def test_block_shape_constant_is_deepseek():
    assert BLOCK_SHAPE == [128, 128]
