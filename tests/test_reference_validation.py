"""Every class of bad input gets TypeError/ValueError naming the argument, before any work.

Each row starts from a valid case built by the op's spec, breaks one argument, and expects
the exception type and the argument's name in the message. The same table is reused for
our Triton launchers in tests/test_optimized_validation.py.
"""
import pytest
import torch

import reference
from harness.cases import CaseParams
from harness.specs import SPECS


def valid_args(op, dtype, device="cpu", **over):
    p = CaseParams(op=op, dtype=dtype, tokens=5, topk=2, experts=6, start_expert=1, end_expert=4,
                   hidden=40, inter=24, seed=3, **over)
    return dict(SPECS[op].build(p, torch.device(device)).args)


def _set(name, value):
    return lambda a: {**a, name: value(a) if callable(value) else value}


def _noncontig(name):
    return _set(name, lambda a: a[name].t().contiguous().t() if a[name].dim() == 2 and a[name].shape[0] > 1
                else a[name].unsqueeze(-1).expand(*a[name].shape, 2)[..., 0])


# (op, dtype, break-function, exception, argument named in the message)
BAD = [
    # preprocess
    ("ep_preprocess", "int32", _set("topk_ids", lambda a: a["topk_ids"].float()), TypeError, "topk_ids"),
    ("ep_preprocess", "int32", _set("topk_ids", lambda a: a["topk_ids"].flatten()), ValueError, "topk_ids"),
    ("ep_preprocess", "int32", _set("topk_ids", lambda a: a["topk_ids"] + 6), ValueError, "topk_ids"),
    ("ep_preprocess", "int32", _set("topk_ids", lambda a: a["topk_ids"] * 0 - 1), ValueError, "topk_ids"),
    ("ep_preprocess", "int32", _set("num_experts", 0), ValueError, "num_experts"),
    ("ep_preprocess", "int32", _set("num_experts", 6.0), TypeError, "num_experts"),
    ("ep_preprocess", "int32", _noncontig("topk_ids"), ValueError, "topk_ids"),
    ("deepep_preprocess", "int64", _set("topk_ids", lambda a: a["topk_ids"] * 0 - 2), ValueError, "topk_ids"),
    # pre_reorder
    ("pre_reorder", "bfloat16", _set("input", lambda a: a["input"].int()), TypeError, "input"),
    ("pre_reorder", "bfloat16", _set("gateup_input", lambda a: a["gateup_input"][:-1]), ValueError, "gateup_input"),
    ("pre_reorder", "bfloat16", _set("gateup_input", lambda a: a["gateup_input"].half()), TypeError, "gateup_input"),
    ("pre_reorder", "bfloat16", _set("gateup_input", lambda a: a["gateup_input"].to("meta")), ValueError,
     "gateup_input"),
    ("pre_reorder", "bfloat16", _set("hidden_size", 39), ValueError, "hidden_size"),
    ("pre_reorder", "bfloat16", _set("topk", 3), ValueError, "gateup_input"),
    ("pre_reorder", "bfloat16", _set("src2dst", lambda a: a["src2dst"] + 100), ValueError, "src2dst"),
    ("pre_reorder", "bfloat16", _set("end_expert_id", 0), ValueError, "end_expert_id"),
    ("pre_reorder", "bfloat16", _set("start_expert_id", -1), ValueError, "start_expert_id"),
    ("pre_reorder", "bfloat16", _set("BLOCK_SIZE", 300), ValueError, "BLOCK_SIZE"),
    ("pre_reorder", "fp8", _set("a1_scales", None), ValueError, "a1_scales"),
    ("pre_reorder", "fp8", _set("a1_scales", lambda a: a["a1_scales"][:-1]), ValueError, "a1_scales"),
    ("pre_reorder", "fp8", _set("a1_scales", lambda a: a["a1_scales"].double()), TypeError, "a1_scales"),
    ("pre_reorder", "bfloat16", _noncontig("input"), ValueError, "input"),
    # silu / gelu
    ("silu_and_mul", "bfloat16", _set("hidden_size", 47), ValueError, "hidden_size"),
    ("silu_and_mul", "bfloat16", _set("down_input", lambda a: a["down_input"][:, :-1]), ValueError, "down_input"),
    ("silu_and_mul", "bfloat16", _set("reorder_topk_ids", lambda a: a["reorder_topk_ids"][1:]), ValueError,
     "reorder_topk_ids"),
    ("gelu_and_mul", "fp8", _set("scales", None), ValueError, "scales"),
    ("gelu_and_mul", "float32", _set("reorder_topk_ids", lambda a: a["reorder_topk_ids"].float()), TypeError,
     "reorder_topk_ids"),
    # post_reorder
    ("post_reorder", "float16", _set("topk_weights", lambda a: a["topk_weights"].half()), TypeError, "topk_weights"),
    ("post_reorder", "float16", _set("topk_weights", lambda a: a["topk_weights"][:, :1].contiguous()), ValueError,
     "topk_weights"),
    ("post_reorder", "float16", _set("down_output", lambda a: a["down_output"][:-2]), ValueError, "down_output"),
    ("post_reorder", "float16", _set("src2dst", lambda a: a["src2dst"] - 1000), ValueError, "src2dst"),
    ("post_reorder", "float16", _set("output", lambda a: a["output"].to("meta")), ValueError, "output"),
    # grouped_gemm
    ("grouped_gemm", "bfloat16", _set("b", lambda a: a["b"][:, :, :-1].contiguous()), ValueError, "b"),
    ("grouped_gemm", "bfloat16", _set("c", lambda a: a["c"].float()), TypeError, "c"),
    ("grouped_gemm", "bfloat16", _set("seg_indptr", lambda a: a["seg_indptr"].flip(0).contiguous() + 1), ValueError,
     "seg_indptr"),
    ("grouped_gemm", "bfloat16", _set("seg_indptr", lambda a: a["seg_indptr"] + 1000), ValueError, "seg_indptr"),
    ("grouped_gemm", "bfloat16", _set("seg_indptr", lambda a: a["seg_indptr"].int()), TypeError, "seg_indptr"),
    ("grouped_gemm", "bfloat16", _set("weight_indices", lambda a: a["weight_indices"] + 50), ValueError,
     "weight_indices"),
    ("grouped_gemm", "bfloat16", _set("batch_size", 2), ValueError, "seg_indptr"),
    ("grouped_gemm", "bfloat16", _set("weight_column_major", False), ValueError, "weight_column_major"),
    ("grouped_gemm", "fp8_tensor", _set("scale_a", None), ValueError, "scale_a"),
    ("grouped_gemm", "fp8_tensor", _set("use_fp8_w8a8", False), TypeError, "b"),
    ("grouped_gemm", "fp8_block", _set("block_shape", [128]), ValueError, "block_shape"),
    ("grouped_gemm", "fp8_block", _set("scale_b", lambda a: a["scale_b"][:, :, :0].contiguous()), ValueError,
     "scale_b"),
    # the MoE forward
    ("ep_moe_forward", "bfloat16", _set("w13", lambda a: a["w13"][:-1].contiguous()), ValueError, "w13"),
    ("ep_moe_forward", "bfloat16", _set("activation", "relu"), ValueError, "activation"),
    ("ep_moe_forward", "bfloat16", _set("end_expert_id", 6), ValueError, "end_expert_id"),
    ("ep_moe_forward", "fp8_block", _set("w2_scale", None), TypeError, "w2_scale"),
]


def bad_input_id(row):
    op, dtype, _, exc, name = row
    return f"{op}-{dtype}-{name}-{exc.__name__}"


@pytest.mark.parametrize("row", BAD, ids=[bad_input_id(r) for r in BAD])
def test_reference_rejects_bad_input(row):
    op, dtype, breaker, exc, name = row
    args = breaker(valid_args(op, dtype))
    with pytest.raises(exc) as info:
        getattr(reference, op)(*args.values())
    assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("op,dtype", [(op, s.dtypes[0]) for op, s in SPECS.items()])
def test_valid_args_are_accepted(op, dtype):
    """The table above is only meaningful if the unbroken case passes validation."""
    getattr(reference, op)(*valid_args(op, dtype).values())
