"""The masked SiLU-and-mul with fp8 group quantisation that feeds DeepGEMM's masked grouped GEMM:
``silu_and_mul_masked_post_quant_fwd`` (float32 scales, optionally powers of two) and its packed
UE8M0 form ``silu_and_mul_masked_post_quant_packed_fwd``; SGLang's signatures, contracts in
reference/quant.py.

One kernel serves both layouts. It works on tiles of [BLOCK_M rows, BLOCK_N columns] (BLOCK_N a
whole number of quant groups; four, one int32 word of exponents, in the packed layout) and walks
each expert's first masked_m[e] rows: a grid over column blocks, row programs that stride over the
rows, and experts, reading masked_m on the device (no host synchronisation). SGLang's packed kernel
instead takes a flat grid over num_real_tokens * topk rows, each finding its expert from a prefix
sum of masked_m; ours did the same until the grid over experts proved faster on the H100 (T = 64:
4.9 against 6.1 us; T = 4096: 117 against 134-190 us; results/2026-12-06-s16-h100).

Arithmetic follows the reference bit for bit where it can: SiLU rounded to the input dtype, the
product rounded to it; the scale amax / 448 divided with round-to-nearest (tl.math.div_rn, as
torch divides; Triton's plain fp32 division is approximate); UE8M0 taken from the scale's bits
(biased exponent + 1 when any mantissa bit is set); quantised values y / scale, also div_rn.
Only exp (and the sigmoid's reciprocal) may differ from torch's by float32 ulps.
Offsets are int64 (an [E, m_max, 2N] slab can pass 2**31 elements).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from reference import quant as ref

from . import _config
from ._tl import FP8_MAX

__all__ = ["silu_and_mul_masked_post_quant_fwd", "silu_and_mul_masked_post_quant_packed_fwd"]

# Launch settings measured on an H100 at DeepSeek-V3 EP8 (tools/explore_launch.py): one row of
# 512 columns per step (4 groups of 128) beat 8 rows (4096 elements) at every size, by 3x at decode;
# 4 warps at decode; once the live rows pass PREFILL_ROWS, 2 warps and up to 512 row programs per
# (expert, column block) (T = 4096: 116-120 us against 141 with 1 warp and 64, SGLang 123;
# results/2026-12-06-s14-h100 call 1; the packed layout alike, 117 us against 124 with 1 warp and
# 141 with 4, SGLang 658; results/2026-12-06-s16-h100 call 1).
NUM_WARPS = 4
NUM_WARPS_PREFILL = 2
PREFILL_ROWS = 4096
# Software-pipelining stages of the row loops (Triton's default, stated so the explorer can vary it).
NUM_STAGES = 3
# Row programs per (expert, column block): enough programs to fill an H100 at decode sizes
# (E_local = 32, a handful of rows each); at prefill, about two rows each.
MAX_ROW_PROGRAMS = 64
MAX_ROW_PROGRAMS_PREFILL = 512
# Elements per tile: rows x columns of one program's step.
TILE_ELEMENTS = 512


@triton.jit
def _swiglu_tile(gate, up, IN_DTYPE: tl.constexpr, GEMM1_ALPHA: tl.constexpr, CLAMP_LIMIT: tl.constexpr,
                 UP_LIMIT: tl.constexpr):
    """y (float32) of a tile from gate (float32) and up (input dtype), as the reference rounds it."""
    up = up.to(tl.float32)
    if GEMM1_ALPHA > 0:
        gate = tl.minimum(gate, CLAMP_LIMIT)
        up_plus_one = (tl.minimum(tl.maximum(up, -UP_LIMIT), UP_LIMIT) + 1.0).to(IN_DTYPE).to(tl.float32)
        y = gate * (1.0 / (1.0 + tl.exp(-(gate * GEMM1_ALPHA)))) * up_plus_one
    else:
        act = (gate / (1.0 + tl.exp(-gate))).to(IN_DTYPE).to(tl.float32)
        y = (act * up).to(IN_DTYPE).to(tl.float32)
    return y


@triton.jit
def _quant_tile(y, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr, UE8M0: tl.constexpr):
    """(fp8-ready float32 values [BLOCK_M, BLOCK_N], float32 scales [BLOCK_M, BLOCK_N // GROUP])."""
    G: tl.constexpr = BLOCK_N // GROUP
    y3 = tl.reshape(y, (BLOCK_M, G, GROUP))
    amax = tl.maximum(tl.max(tl.abs(y3), axis=2), 1e-10)
    scale = tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32))
    if UE8M0:
        bits = scale.to(tl.int32, bitcast=True)
        expo = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        scale = (expo << 23).to(tl.float32, bitcast=True)
    q = tl.math.div_rn(y3, tl.broadcast_to(scale[:, :, None], (BLOCK_M, G, GROUP)))
    q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
    return tl.reshape(q, (BLOCK_M, BLOCK_N)), scale


@triton.jit
def _pack_exponents(scale):
    """[rows, 4] power-of-two float32 scales -> [rows] int32: group 4c + b's biased exponent in byte
    b of word c (little-endian; int32 shifts wrap past bit 31, as intended)."""
    expo = (scale.to(tl.int32, bitcast=True) >> 23) & 0xFF
    return tl.sum(expo << (tl.arange(0, 4) * 8)[None, :], axis=1)


@triton.jit
def _post_quant_kernel(
        # tensors
        in_ptr, out_ptr, scale_ptr, masked_m_ptr,
        # strides
        in_s0, in_s1, out_s0, out_s1, sc_s0, sc_s1, sc_s2,
        # sizes
        N,
        # meta-parameters
        IN_DTYPE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        UE8M0: tl.constexpr, PACKED: tl.constexpr, GEMM1_ALPHA: tl.constexpr, CLAMP_LIMIT: tl.constexpr,
        UP_LIMIT: tl.constexpr):
    """Program (column block, row program, expert): rows pid_m * BLOCK_M + k * ROW_PROGRAMS * BLOCK_M
    below masked_m[e], columns of its block; float32 scales at [e, row, group] through strides, or
    (PACKED: a column block of 4 groups, UE8M0) one int32 of four exponents at [e, block, row]."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    row_programs = tl.num_programs(1)
    G: tl.constexpr = BLOCK_N // GROUP
    live = tl.load(masked_m_ptr + e).to(tl.int32)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    groups = pid_n * G + tl.arange(0, G)
    for m0 in range(pid_m * BLOCK_M, live, row_programs * BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < live
        r64 = rows.to(tl.int64)
        in_row = in_ptr + e * in_s0 + r64[:, None] * in_s1 + cols[None, :]
        gate = tl.load(in_row, mask=rmask[:, None], other=0.0).to(tl.float32)
        up = tl.load(in_row + N, mask=rmask[:, None], other=0.0)
        y = _swiglu_tile(gate, up, IN_DTYPE, GEMM1_ALPHA, CLAMP_LIMIT, UP_LIMIT)
        q, scale = _quant_tile(y, BLOCK_M, BLOCK_N, GROUP, UE8M0)
        tl.store(out_ptr + e * out_s0 + r64[:, None] * out_s1 + cols[None, :], q.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None])
        if PACKED:
            tl.store(scale_ptr + e * sc_s0 + pid_n * sc_s1 + r64 * sc_s2, _pack_exponents(scale), mask=rmask)
        else:
            tl.store(scale_ptr + e * sc_s0 + r64[:, None] * sc_s1 + groups[None, :] * sc_s2, scale,
                     mask=rmask[:, None])


# ----------------------------------------------------------------------------- host side

_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def _check_kernel_inputs(input, quant_group_size):
    if input.dtype not in _TL_DTYPES:
        got = str(input.dtype).replace("torch.", "")
        raise TypeError(f"input: expected dtype bfloat16, float16 or float32, got {got}")
    if quant_group_size & (quant_group_size - 1):
        raise ValueError(f"quant_group_size: expected a power of two (a Triton block of whole groups), "
                         f"got {quant_group_size}")


def silu_and_mul_masked_post_quant_fwd(input, output, output_scale, quant_group_size, masked_m, scale_ue8m0=False,
                                       gemm1_alpha=0.0, gemm1_clamp_limit=0.0, num_real_tokens=None, topk=None):
    """SGLang's signature; output_scale's dtype picks the layout (float32 [E, m_max, G], or int32
    [E, G / 4, m_max] packed UE8M0). Validates with the reference's checks (which read masked_m on
    the host, under _config.check_values()), then launches without synchronising. Returns None."""
    values = _config.check_values()
    E, m_max, n, packed, alpha, limit = ref.validate_masked_post_quant(
        input, output, output_scale, quant_group_size, masked_m, scale_ue8m0, gemm1_alpha, gemm1_clamp_limit,
        num_real_tokens, topk, values=values)
    _check_kernel_inputs(input, quant_group_size)
    groups = n // quant_group_size
    up_limit = float(torch.tensor(limit, dtype=input.dtype))     # the reference clamps up in the input dtype
    if E == 0 or m_max == 0 or n == 0:
        return None
    # live rows at most (the host cannot read masked_m without a synchronisation): SGLang's packed
    # schedule's num_real_tokens * topk where given, else the slab's capacity
    most_rows = num_real_tokens * topk if num_real_tokens is not None and topk is not None else E * m_max
    prefill = most_rows >= PREFILL_ROWS
    per_block = 4                       # groups per column block: the largest of 4, 2, 1 dividing G
    while groups % per_block:           # (packed: G is a multiple of 4)
        per_block //= 2
    block_n = per_block * quant_group_size
    block_m = max(1, min(TILE_ELEMENTS // block_n, 16))
    row_programs = max(1, min(MAX_ROW_PROGRAMS_PREFILL if prefill else MAX_ROW_PROGRAMS, triton.cdiv(m_max, block_m)))
    _post_quant_kernel[(groups // per_block, row_programs, E)](
        input, output, output_scale, masked_m,
        input.stride(0), input.stride(1), output.stride(0), output.stride(1), *output_scale.stride(),
        n, IN_DTYPE=_TL_DTYPES[input.dtype], GROUP=quant_group_size, BLOCK_M=block_m, BLOCK_N=block_n,
        UE8M0=bool(scale_ue8m0) or packed, PACKED=packed, GEMM1_ALPHA=alpha, CLAMP_LIMIT=limit, UP_LIMIT=up_limit,
        num_warps=NUM_WARPS_PREFILL if prefill else NUM_WARPS, num_stages=NUM_STAGES)
    return None


def silu_and_mul_masked_post_quant_packed_fwd(input, output, output_scale, quant_group_size, masked_m,
                                              scale_ue8m0=True, gemm1_alpha=0.0, gemm1_clamp_limit=0.0,
                                              num_real_tokens=None, topk=None):
    """The packed-UE8M0 layout of silu_and_mul_masked_post_quant_fwd (int32 output_scale only)."""
    ref.check_tensor("output_scale", output_scale, dtypes=(torch.int32,), ndim=3, device=input.device,
                     contiguous=False)
    return silu_and_mul_masked_post_quant_fwd(input, output, output_scale, quant_group_size, masked_m, scale_ue8m0,
                                              gemm1_alpha, gemm1_clamp_limit, num_real_tokens, topk)


def pinned_launch(num_warps=None, row_programs=None, tile_elements=None, num_stages=None):
    """Context manager (optimized/config.py's switches): the kernel launched with ``num_warps``
    (decode and prefill alike), ``num_stages``, at most ``row_programs`` row programs per (expert,
    column block) and tiles of ``tile_elements``; None leaves a knob as it is."""
    return _config.pinned_globals(globals(), NUM_WARPS=num_warps, NUM_WARPS_PREFILL=num_warps,
                                  MAX_ROW_PROGRAMS=row_programs, MAX_ROW_PROGRAMS_PREFILL=row_programs,
                                  TILE_ELEMENTS=tile_elements, NUM_STAGES=num_stages)
