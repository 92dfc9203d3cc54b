"""Triton kernels for SGLang's expert-parallel MoE ops (same names, arguments and
semantics as ``reference``; see SPEC.md). Launchers validate with reference._checks,
reject float64, skip empty launches and never sync the host (except value checks, see
_config.CHECK_VALUES, and deepep_preprocess's data-dependent output length).
"""
from . import gemm as _gemm
from .activation import gelu_and_mul, silu_and_mul
from .gemm import grouped_gemm, per_token_group_quant_fp8
from .moe import ep_moe_forward
from .preprocess import deepep_preprocess, ep_preprocess
from .reorder import post_reorder, pre_reorder

__all__ = [
    "ep_preprocess", "deepep_preprocess", "pre_reorder", "silu_and_mul", "gelu_and_mul",
    "post_reorder", "grouped_gemm", "per_token_group_quant_fp8", "ep_moe_forward",
]


def describe_last_launch(op: str) -> str:
    """How our last launch of ``op`` chose its tiles, for the bench's record beside the timing
    (the grouped GEMM's autotuned, heuristic or fixed tile); "" for ops whose tiling is fixed."""
    return _gemm.describe_last_launch() if op == "grouped_gemm" else ""
