"""Pure-PyTorch references for SGLang's expert-parallel MoE ops: the contract in executable form.

Every function validates its arguments first (TypeError/ValueError naming the argument),
runs on CPU and CUDA tensors, accumulates in float32 (float64 for float64 inputs) and
writes only the elements SPEC.md says. Each family module lists its ops in ``__all__``.
"""
from . import activation, gemm, moe, preprocess, reorder
from .activation import *  # noqa: F401,F403
from .gemm import *  # noqa: F401,F403
from .moe import *  # noqa: F401,F403
from .preprocess import *  # noqa: F401,F403
from .reorder import *  # noqa: F401,F403

__all__ = [name for family in (preprocess, reorder, activation, gemm, moe) for name in family.__all__]
