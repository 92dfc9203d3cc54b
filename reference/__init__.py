"""Pure-PyTorch references for SGLang's expert-parallel MoE ops: the contract in executable form.

Every function validates its arguments first (TypeError/ValueError naming the argument),
runs on CPU and CUDA tensors, accumulates in float32 (float64 for float64 inputs) and
writes only the elements SPEC.md says.
"""
from .activation import gelu_and_mul, silu_and_mul
from .gemm import grouped_gemm, per_token_group_quant_fp8
from .moe import dense_moe_forward, ep_moe_forward
from .preprocess import deepep_preprocess, ep_preprocess
from .reorder import post_reorder, pre_reorder

__all__ = [
    "ep_preprocess", "deepep_preprocess", "pre_reorder", "silu_and_mul", "gelu_and_mul",
    "post_reorder", "grouped_gemm", "per_token_group_quant_fp8", "ep_moe_forward", "dense_moe_forward",
]
