"""Small @triton.jit helpers shared by the kernels."""
from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)  # a constexpr global: plain globals are not visible in @jit code


@triton.jit
def cast_out(x, DST: tl.constexpr):
    """Cast float32 ``x`` to DST for a store: fp8 saturates to +-448 first, rounding is RNE.

    The same code runs on the interpreter: the harness patches its bf16/fp8 conversions to
    round as the GPU does (harness/interpreter.py)."""
    if DST == tl.float8e4nv:
        x = tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)
    return x.to(DST)


@triton.jit
def round_to(x, DST: tl.constexpr):
    """Round float32 ``x`` to DST's precision and return it as float32 again (x.to(DST).to(float32))."""
    if DST == tl.float32:
        return x
    else:
        return cast_out(x, DST).to(tl.float32)
