"""Gated activations over the reordered rows (SPEC.md section 4).

One kernel for SiLU and GELU(tanh): [ROWS, BLOCK_I] tiles of rows x intermediate columns,
gate/up loaded once, all arithmetic in float32 with the reference's rounding steps.
"""
from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl

from reference._checks import validate_act_and_mul

from . import _config
from ._tl import cast_out, round_to

_ACT = {"silu": 0, "gelu": 1}
# Tile size (elements per program), widest column block and warps; module-level knobs, which
# pinned_tiles() sets for a block (tools/explore_tiles.py sweeps them on the GPU).
TILE_ELEMS = 4096       # H200, T=4096, I=2048: EP8 22 us (2048: 33 us), all local 103 us (102)
MAX_BLOCK_I = 1024
NUM_WARPS = 4


# Sizes that are neither strides nor offsets' alignment stay unspecialised (do_not_specialize):
# one compiled variant whatever their value, instead of one per (== 1, % 16 == 0, other) class.
@triton.jit(do_not_specialize=["M", "start_expert", "end_expert"])
def _act_and_mul_kernel(
    # pointers
    gu_ptr, out_ptr, ids_ptr, scales_ptr,
    # sizes
    M, I, start_expert, end_expert,
    # meta
    ACT: tl.constexpr, HAS_SCALES: tl.constexpr, ROWS: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """out[m] = cast(round_in(act(gate)) * up * round_in(1/scale[e-start])) for rows m with a local id.

    round_in(x) = x cast to the input dtype and back; rows of other experts are untouched.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    e = tl.load(ids_ptr + rows, mask=rows < M, other=-1).to(tl.int64)
    local = (rows < M) & (e >= start_expert) & (e <= end_expert)
    if tl.max(local.to(tl.int32), axis=0) == 0:
        return  # no local row here (under EP, most tiles): no loads, no stores
    m2 = local[:, None] & (cols < I)[None, :]
    in_off = rows[:, None] * (2 * I) + cols[None, :]
    gate = tl.load(gu_ptr + in_off, mask=m2, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + in_off + I, mask=m2, other=0.0).to(tl.float32)
    if ACT == 0:
        a = gate / (1.0 + tl.exp(-gate))
    else:
        # 0.5 x (1 + tanh(y)) == x * sigmoid(2y): same function, no cancellation for x << 0
        y = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        a = gate / (1.0 + tl.exp(-2.0 * y))
    o = round_to(a, gu_ptr.dtype.element_ty) * up
    if HAS_SCALES:
        inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)
        o = o * round_to(inv, gu_ptr.dtype.element_ty)[:, None]
    tl.store(out_ptr + rows[:, None] * I + cols[None, :], cast_out(o, out_ptr.dtype.element_ty), mask=m2)


def _act_and_mul(activation, gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                 start_expert_id, end_expert_id, BLOCK_SIZE):
    validate_act_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                         end_expert_id, BLOCK_SIZE, check_values=_config.check_values())
    _config.reject_float64(gateup_output=gateup_output)
    M = gateup_output.shape[0]
    I = hidden_size // 2
    if M == 0 or I == 0:
        return None
    block_i = min(_config.next_pow2(I), MAX_BLOCK_I)
    rows = max(1, min(TILE_ELEMS // block_i, _config.next_pow2(M)))
    grid = (triton.cdiv(M, rows), triton.cdiv(I, block_i))
    _act_and_mul_kernel[grid](
        gateup_output, down_input, reorder_topk_ids, scales if scales is not None else gateup_output,
        M, I, start_expert_id, end_expert_id,
        ACT=_ACT[activation], HAS_SCALES=scales is not None, ROWS=rows, BLOCK_I=block_i,
        num_warps=NUM_WARPS)
    return None


def silu_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                 end_expert_id, BLOCK_SIZE=512):
    """SGLang's ``silu_and_mul_triton_kernel`` without its grid (BLOCK_SIZE validated, ignored).

    For rows m with reorder_topk_ids[m] in [start, end]: down_input[m] = silu(gate) (float32,
    rounded to the input dtype) * up * (1/scales[e-start] rounded to the input dtype, if
    given), cast to down_input's dtype (fp8 saturating). Other rows untouched.
    """
    _act_and_mul("silu", gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                 start_expert_id, end_expert_id, BLOCK_SIZE)


def gelu_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                 end_expert_id, BLOCK_SIZE=512):
    """SGLang's ``gelu_and_mul_triton_kernel`` without its grid; GELU with the tanh approximation."""
    _act_and_mul("gelu", gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                 start_expert_id, end_expert_id, BLOCK_SIZE)


# ----------------------------------------------------------------------------- public launch switches
# (optimized/config.py lists the whole public launch/config API)

def pinned_tiles(tile_elems: Optional[int] = None, num_warps: Optional[int] = None,
                 max_block_i: Optional[int] = None):
    """Context manager: silu_and_mul's and gelu_and_mul's tiles for the block (None: as they are).
    tile_elems: elements per program (a power of 2); num_warps: warps per program; max_block_i:
    the widest column block (a power of 2)."""
    return _config.pinned_globals(globals(), TILE_ELEMS=tile_elems, NUM_WARPS=num_warps, MAX_BLOCK_I=max_block_i)


__all__ = ["silu_and_mul", "gelu_and_mul"]
