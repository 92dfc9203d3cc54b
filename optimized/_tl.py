"""Small @triton.jit helpers shared by the kernels."""
from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)  # a constexpr global: plain globals are not visible in @jit code


@triton.jit
def _f32_to_bf16_rne(x):
    """float32 -> bf16, round to nearest even, via integer ops (the interpreter's own cast truncates)."""
    u = x.to(tl.uint32, bitcast=True)
    r = u + 0x7FFF + ((u >> 16) & 1)
    r = tl.where(x != x, u | 0x400000, r)  # keep NaN a (quiet) NaN
    return (r >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _f32_to_e4m3_rne(x):
    """float32 (already within +-448) -> float8 e4m3fn, RNE, via integer ops.

    The interpreter's own conversion mis-rounds (subnormals especially). Round |x| to its
    fp8 quantum with the float32 add-and-subtract trick, then assemble the fp8 bits.
    """
    a = tl.abs(x)
    e = tl.maximum((a.to(tl.uint32, bitcast=True) >> 23).to(tl.int32) - 127, -6)  # -6: subnormal quantum 2^-9
    magic = ((e + 20 + 127).to(tl.uint32) << 23).to(tl.float32, bitcast=True)  # 2^(e-3) * 2^23
    r = (a + magic) - magic                       # |x| rounded to a multiple of 2^(e-3), ties to even
    ur = r.to(tl.uint32, bitcast=True)
    normal = (((ur >> 23) - 120) << 3) | ((ur >> 20) & 7)
    sub = (r * 512.0).to(tl.uint32)
    bits = tl.where(r < 0.015625, sub, normal)
    bits = bits | ((x.to(tl.uint32, bitcast=True) >> 31) << 7)
    bits = tl.where(x != x, 0x7F, bits)
    return bits.to(tl.uint8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def cast_out(x, DST: tl.constexpr, INTERP: tl.constexpr):
    """Cast float32 ``x`` to DST for a store: fp8 saturates to +-448 first, rounding is RNE.

    INTERP selects exact integer emulations of float32->bf16/fp8 for the interpreter; on the
    GPU the native conversion (RNE) is used.
    """
    if DST == tl.float8e4nv:
        x = tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)
        if INTERP:
            return _f32_to_e4m3_rne(x)
        else:
            return x.to(DST)
    elif DST == tl.bfloat16:
        if INTERP:
            return _f32_to_bf16_rne(x)
        else:
            return x.to(DST)
    else:
        return x.to(DST)


@triton.jit
def round_to(x, DST: tl.constexpr, INTERP: tl.constexpr):
    """Round float32 ``x`` to DST's precision and return it as float32 again (x.to(DST).to(float32))."""
    if DST == tl.float32:
        return x
    else:
        return cast_out(x, DST, INTERP).to(tl.float32)
