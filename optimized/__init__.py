"""Triton kernels for SGLang's expert-parallel MoE ops (same names, arguments and
semantics as ``reference``; see SPEC.md). Launchers validate with reference._checks,
reject float64, skip empty launches and never sync the host (except value checks, see
config.value_checks, and the DeepEP preprocess's data-dependent output length). Each family
module lists its ops in ``__all__``; the public launch/config API (switches for tiles and
paths, launch descriptions) is listed in config.py.
"""
from . import activation, gemm, moe, preprocess, reorder
from .activation import *  # noqa: F401,F403
from .gemm import *  # noqa: F401,F403
from .moe import *  # noqa: F401,F403
from .preprocess import *  # noqa: F401,F403
from .reorder import *  # noqa: F401,F403

__all__ = [name for family in (preprocess, reorder, activation, gemm, moe) for name in family.__all__]


def describe_last_launch(op: str) -> str:
    """How our last launch of ``op`` chose its tiles, for the bench's record beside the timing
    (the grouped GEMM's autotuned, heuristic or fixed tile); "" for ops whose tiling is fixed."""
    return gemm.describe_last_launch() if op in gemm.__all__ else ""
