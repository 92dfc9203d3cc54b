"""Pure-PyTorch references for SGLang's expert-parallel MoE ops: the contract in executable form.

Every function validates its arguments first (TypeError/ValueError naming the argument),
runs on CPU and CUDA tensors, accumulates in float32 (float64 for float64 inputs) and
writes only the elements SPEC.md says. Each family module lists its ops in ``__all__``.
"""
from . import activation, cutlass, deepgemm_layout, gemm, moe, permute, preprocess, quant, reorder, zero_experts
from .activation import *  # noqa: F401,F403
from .cutlass import *  # noqa: F401,F403
from .deepgemm_layout import *  # noqa: F401,F403
from .gemm import *  # noqa: F401,F403
from .moe import *  # noqa: F401,F403
from .permute import *  # noqa: F401,F403
from .preprocess import *  # noqa: F401,F403
from .quant import *  # noqa: F401,F403
from .reorder import *  # noqa: F401,F403
from .zero_experts import *  # noqa: F401,F403

# SGLang's EP-MoE ops up to 0.4.x (SPEC.md), then the 0.5.x ops: the DeepGEMM layouts and fused
# quantisation, the permute family, the cutlass W4A8 family, zero experts
FAMILIES = (preprocess, reorder, activation, gemm, moe, deepgemm_layout, quant, permute, cutlass, zero_experts)
__all__ = [name for family in FAMILIES for name in family.__all__]
