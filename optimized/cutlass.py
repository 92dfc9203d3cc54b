"""The cutlass W4A8 path's reorders (SGLang 0.5.23's ``pre_reorder_for_cutlass_moe`` and
``post_reorder_for_cutlass_moe``, same signatures; contracts in reference/cutlass.py).

Both take LOCAL expert ids: a slot is local when its id is in [0, num_local_experts); -1 and
the sentinel num_local_experts (what the cutlass callers put in dropped slots) are skipped, as
is any other id. Only tokens t < num_tokens are processed. They share the tiling of
optimized/reorder.py ([ROWS, BLOCK_H] tiles of token rows, the K slots of a tile loaded at
once, int64 row offsets): the gather is its own kernel (one per-tensor scale instead of one per
expert), the combine is reorder's kernel with its scaling factor on.
"""
from __future__ import annotations

import triton
import triton.language as tl

from reference.cutlass import validate_post_reorder_for_cutlass_moe, validate_pre_reorder_for_cutlass_moe

from . import _config
from . import reorder
from ._tl import cast_out
from .reorder import _slot_tiles


@triton.jit(do_not_specialize=["num_tokens", "num_local_experts", "n_rows"])
def _pre_reorder_cutlass_kernel(
    # pointers
    x_ptr, out_ptr, src2dst_ptr, ids_ptr, scale_ptr,
    # sizes
    num_tokens, H, num_local_experts, n_rows,
    # meta
    TOPK: tl.constexpr, KP: tl.constexpr, HAS_SCALE: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[src2dst[t*K+k]] = cast(x[t] * (1 / scale[0])) for every local slot of tokens t <
    num_tokens (no scaling without HAS_SCALE); other rows of out untouched. Destinations
    outside [0, n_rows) are skipped (memory safety)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < num_tokens
    cmask = cols < H
    kk, _, _, dst2, local2 = _slot_tiles(ids_ptr, src2dst_ptr, rows, rmask, n_rows, 0, num_local_experts - 1,
                                         TOPK, KP)
    # tokens without a local slot (under EP, most) are not read
    any_local = tl.max(local2.to(tl.int32), axis=1) > 0
    x = tl.load(x_ptr + rows[:, None] * H + cols[None, :], mask=(rmask & any_local)[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)
    if HAS_SCALE:
        x = x * (1.0 / tl.load(scale_ptr))       # SGLang multiplies by the float32 reciprocal
    val = cast_out(x, out_ptr.dtype.element_ty)  # fp8 saturates at +-448; a same-dtype copy is exact
    for k in tl.static_range(TOPK):
        pick = kk[None, :] == k                  # column k of the slot tiles
        dst = tl.sum(tl.where(pick, dst2, 0), axis=1)
        local = tl.sum(tl.where(pick & local2, 1, 0), axis=1) > 0
        tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None] & cmask[None, :])


def pre_reorder_for_cutlass_moe(input, gateup_input, src2dst, topk_ids, a1_scales, num_local_experts, topk,
                                num_tokens, hidden_size):
    """SGLang's ``pre_reorder_for_cutlass_moe``: for each local slot s = t*topk + k of a token
    t < num_tokens, gateup_input[src2dst[s]] = cast(float32(input[t]) * (1 / a1_scales[0]))
    (no scaling when a1_scales is None; fp8 saturating). Other rows untouched. Returns None."""
    validate_pre_reorder_for_cutlass_moe(input, gateup_input, src2dst, topk_ids, a1_scales, num_local_experts, topk,
                                         num_tokens, hidden_size, check_values=_config.check_values())
    _config.reject_float64(input=input, gateup_input=gateup_input)
    H = input.shape[1]
    if num_tokens == 0 or H == 0:
        return None
    rows, block_h = reorder._row_tiles(num_tokens, H)
    grid = (triton.cdiv(num_tokens, rows), triton.cdiv(H, block_h))
    _pre_reorder_cutlass_kernel[grid](
        input, gateup_input, src2dst, topk_ids, a1_scales if a1_scales is not None else input,
        num_tokens, H, num_local_experts, gateup_input.shape[0],
        TOPK=topk, KP=_config.next_pow2(topk), HAS_SCALE=a1_scales is not None, ROWS=rows, BLOCK_H=block_h,
        num_warps=reorder.NUM_WARPS)
    return None


def post_reorder_for_cutlass_moe(down_output, output, src2dst, topk_ids, topk_weights, num_local_experts, topk,
                                 num_tokens, hidden_size, routed_scaling_factor):
    """SGLang's ``post_reorder_for_cutlass_moe``: output[t] = routed_scaling_factor * sum over
    the local slots k of token t (ascending) of down_output[src2dst[t*topk+k]] * topk_weights[t, k],
    in float32, cast to output's dtype, for t < num_tokens (zeros without a local slot); rows
    t >= num_tokens untouched. Returns None."""
    validate_post_reorder_for_cutlass_moe(down_output, output, src2dst, topk_ids, topk_weights, num_local_experts,
                                          topk, num_tokens, hidden_size, routed_scaling_factor,
                                          check_values=_config.check_values())
    _config.reject_float64(down_output=down_output, output=output)
    H = output.shape[1]
    if num_tokens == 0 or H == 0:
        return None
    rows, block_h = reorder._row_tiles(num_tokens, H)
    grid = (triton.cdiv(num_tokens, rows), triton.cdiv(H, block_h))
    reorder._post_reorder_kernel[grid](
        down_output, output, src2dst, topk_ids, topk_weights,
        num_tokens, H, 0, num_local_experts - 1, down_output.shape[0], float(routed_scaling_factor),
        TOPK=topk, KP=_config.next_pow2(topk), ROWS=rows, BLOCK_H=block_h,
        SLOT_GROUP=reorder.POST_SLOT_GROUP, SCALED=True, num_warps=reorder.NUM_WARPS)
    return None


__all__ = ["pre_reorder_for_cutlass_moe", "post_reorder_for_cutlass_moe"]
