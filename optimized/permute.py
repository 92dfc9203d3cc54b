"""The permute family of SGLang 0.5.23 (``moe_permute``, ``moe_permute_with_scale``, ``moe_unpermute``
and the two DeepEP normal-mode row kernels, here ``deepep_permute`` / ``deepep_post_reorder``), with
SGLang's signatures; contracts in reference/permute.py.

moe_permute, two paths (no host synchronisation on either: capturable):
- up to FUSED_MAX slots (decode sizes): ONE launch, ``_permute_fused_kernel``, grid (T, H chunks).
  Each program reads all N = T*K ids (at most FUSED_MAX, 4 KiB from L2) and ranks its own K
  slots directly: pos(s) = #(ids < id_s) + #(ids == id_s before s), the stable sorted position,
  minus the number of negative ids; it stores src2dst for its slots (chunk 0), copies its
  token's chunk to its K rows, and program (0, 0) writes expert_offsets from a histogram. Upstream
  runs torch.sort, the prepare kernel and the row kernel (three launches or more).
- larger: the stable counting sort of optimized/preprocess.py (three launches, DeepEP buckets:
  -1 sorts first and is not counted), written straight into moe_permute's int32 src2dst and
  expert_offsets, then ``_permute_rows_kernel``. Limitation of this path: an id below -1 (SGLang's
  dispatchers emit only -1) goes to that sort's dump bucket, after the experts, so it gets a row
  (memory-safe, but outside moe_permute's contract); the fused path drops every negative id.
Row kernels (permute and unpermute) run one program per (token, H chunk of BLOCK_H): a token's
K destination rows are one vector load, its chunk is loaded once and stored to K rows as one
[KP, BLOCK_H] tile (upstream: grid (T,), a 512-column loop, K scalar loads and branches per
chunk; one program per token leaves the GPU idle at T = 1). Row offsets are int64 only when a
buffer passes 2**31 elements (``_wide``).
moe_unpermute accumulates in float32 (upstream: in the input dtype); the router weight is rounded
to the input dtype and multiplied by routed_scaling_factor in that dtype, as upstream does.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from reference import permute as _ref

from . import _config
from ._tl import cast_out
from .preprocess import _colscan_kernel, _hist_kernel, _plan, _scatter_kernel

FUSED_MAX = 1024           # slots ranked inside the row programs (one launch); above: the counting sort
FUSED_MAX_INTERP = 256     # the interpreter: mostly the one launch (tests/test_permute_records.py runs the other)
ROW_BYTES = 2048           # bytes of a token row per program (H chunk): 1,024 bf16 columns
INT32_LIMIT = 2 ** 31


def _wide(*tensors) -> bool:
    """int64 row offsets: some buffer's element offsets reach 2**31."""
    return any(t.numel() >= INT32_LIMIT for t in tensors)


def _block_h(h: int, element_size: int) -> int:
    return max(16, min(_config.next_pow2(h), ROW_BYTES // element_size))


@triton.jit
def _store_rows(out_ptr, dst, use, row, cols, cmask, H, WIDE: tl.constexpr):
    """out[dst[k], cols] = row for the slots k with use[k] (a [KP, BLOCK_H] tile store)."""
    if WIDE:
        base = dst.to(tl.int64) * H
    else:
        base = dst * H
    val = cast_out(row.to(tl.float32), out_ptr.dtype.element_ty)
    tile = tl.broadcast_to(val[None, :], (dst.shape[0], row.shape[0]))
    tl.store(out_ptr + base[:, None] + cols[None, :], tile, mask=use[:, None] & cmask[None, :])


@triton.jit(do_not_specialize=["N", "E", "H"])
def _permute_fused_kernel(
    # pointers
    x_ptr, ids_ptr, out_ptr, src2dst_ptr, offsets_ptr,
    # sizes
    N, E, H,
    # meta
    K: tl.constexpr, KP: tl.constexpr, NP: tl.constexpr, EP: tl.constexpr, BLOCK_H: tl.constexpr,
    WIDE: tl.constexpr,
):
    """moe_permute of N <= NP slots in one launch: grid (T, cdiv(H, BLOCK_H))."""
    t = tl.program_id(0)
    c = tl.program_id(1)
    every = tl.arange(0, NP)
    in_range = every < N
    ids_all = tl.load(ids_ptr + every, mask=in_range, other=0)
    kk = tl.arange(0, KP)
    kmask = kk < K
    slot = t * K + kk
    mine = tl.load(ids_ptr + slot, mask=kmask, other=0)
    # stable rank: ids below mine, then equal ids of earlier slots
    before = (ids_all[None, :] < mine[:, None]) | ((ids_all[None, :] == mine[:, None]) & (every[None, :] < slot[:, None]))
    n_neg = tl.sum((in_range & (ids_all < 0)).to(tl.int32), axis=0)
    dst = tl.sum((before & in_range[None, :]).to(tl.int32), axis=1) - n_neg
    if c == 0:
        tl.store(src2dst_ptr + slot, dst, mask=kmask)
    if (t == 0) & (c == 0):
        experts = tl.arange(0, EP)
        counted = in_range & (ids_all >= 0) & (ids_all < E)
        hist = tl.histogram(tl.where(counted, ids_all, 0), EP, mask=counted)
        below = tl.cumsum(hist, axis=0) - hist                       # routed ids < e
        last = N - n_neg                                             # SGLang's last entry: every non-negative id
        tl.store(offsets_ptr + experts, tl.where(experts == E, last, below), mask=experts <= E)
    cols = c * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    if WIDE:
        row = tl.load(x_ptr + t.to(tl.int64) * H + cols, mask=cmask)
    else:
        row = tl.load(x_ptr + t * H + cols, mask=cmask)
    _store_rows(out_ptr, dst, kmask & (dst >= 0), row, cols, cmask, H, WIDE)


@triton.jit(do_not_specialize=["H"])
def _permute_rows_kernel(
    # pointers
    x_ptr, out_ptr, src2dst_ptr,
    # sizes
    H,
    # meta
    K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, WIDE: tl.constexpr,
):
    """out[src2dst[t*K + k]] = x[t] (cast to out's dtype) for src2dst >= 0; grid (T, cdiv(H, BLOCK_H))."""
    t = tl.program_id(0)
    c = tl.program_id(1)
    kk = tl.arange(0, KP)
    kmask = kk < K
    dst = tl.load(src2dst_ptr + t * K + kk, mask=kmask, other=-1)
    write = kmask & (dst >= 0)
    cols = c * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    if WIDE:
        row = tl.load(x_ptr + t.to(tl.int64) * H + cols, mask=cmask)
    else:
        row = tl.load(x_ptr + t * H + cols, mask=cmask)
    _store_rows(out_ptr, dst, write, row, cols, cmask, H, WIDE)


@triton.jit(do_not_specialize=["H"])
def _unpermute_kernel(
    # pointers
    x_ptr, out_ptr, src2dst_ptr, w_ptr,
    # scalars
    factor,
    # sizes
    H,
    # meta
    K: tl.constexpr, KP: tl.constexpr, BLOCK_H: tl.constexpr, SCALE: tl.constexpr, WIDE: tl.constexpr,
):
    """out[t] = sum_k x[src2dst[t*K+k]] * c[t, k] over src2dst >= 0 (float32 sum), c = weight rounded
    to x's dtype, times factor in that dtype when SCALE; grid (T, cdiv(H, BLOCK_H))."""
    t = tl.program_id(0)
    c = tl.program_id(1)
    in_dtype = x_ptr.dtype.element_ty
    kk = tl.arange(0, KP)
    kmask = kk < K
    dst = tl.load(src2dst_ptr + t * K + kk, mask=kmask, other=-1)
    use = kmask & (dst >= 0)
    w = tl.load(w_ptr + t * K + kk, mask=kmask, other=0.0).to(in_dtype).to(tl.float32)
    if SCALE:
        w = (w * factor).to(in_dtype).to(tl.float32)
    cols = c * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    if WIDE:
        base = dst.to(tl.int64) * H
        out_base = t.to(tl.int64) * H
    else:
        base = dst * H
        out_base = t * H
    rows = tl.load(x_ptr + base[:, None] + cols[None, :], mask=use[:, None] & cmask[None, :], other=0.0)
    acc = tl.sum(rows.to(tl.float32) * w[:, None], axis=0)
    out_dtype = out_ptr.dtype.element_ty
    if out_dtype != in_dtype:
        acc = acc.to(in_dtype).to(tl.float32)        # upstream's sum is in the input dtype, then stored
    tl.store(out_ptr + out_base + cols, cast_out(acc, out_dtype), mask=cmask)


# ----------------------------------------------------------------------------- launchers

def _launch_rows(x: torch.Tensor, out: torch.Tensor, src2dst: torch.Tensor, topk: int) -> None:
    T, H = x.shape
    if T == 0 or H == 0:
        return
    block_h = _block_h(H, max(x.element_size(), out.element_size()))
    _permute_rows_kernel[(T, triton.cdiv(H, block_h))](
        x, out, src2dst, H, K=topk, KP=max(2, _config.next_pow2(topk)), BLOCK_H=block_h,
        WIDE=_wide(x, out), num_warps=4)


def _fused_max() -> int:
    return FUSED_MAX_INTERP if _config.is_interpreter() else FUSED_MAX


def _prepare_by_counting_sort(topk_ids: torch.Tensor, num_experts: int, src2dst, expert_offsets) -> None:
    """src2dst / expert_offsets by optimized/preprocess.py's three launches (DeepEP buckets: -1 in
    bucket 0), with no sorted-id output (OUT_LEN 0) and no host read."""
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    plan = _plan(n, num_experts, True, flat.get_device())
    nbp, block, nblk = plan.nbp, plan.block, plan.nblk
    scratch = torch.empty(2 * nblk * nbp + nbp, dtype=torch.int32, device=flat.device)
    ninv = torch.empty(1, dtype=torch.int64, device=flat.device)
    later = {"launch_pdl": True} if plan.pdl else {}
    _hist_kernel[(nblk,)](flat, scratch, n, num_experts, SHIFT=1, BLOCK=block, NBP=nbp, PDL=plan.pdl,
                          num_warps=plan.warps)
    _colscan_kernel[(nbp // plan.scan_cols,)](scratch, ninv, nblk, NBP=nbp, BB=plan.scan_cols, R=plan.scan_rows,
                                              DEEPEP=True, PDL=plan.pdl, num_warps=4, **later)
    _scatter_kernel[(nblk,)](flat, scratch, src2dst, flat, expert_offsets, n, num_experts, 0, nblk,
                             SHIFT=1, DEEPEP=True, BLOCK=block, NBP=nbp, num_warps=plan.warps,
                             USE_SORT=plan.use_sort, PDL=plan.pdl, **later)


def _check_permute(inputs, topk_ids, num_experts, use_int64_offset, is_ep):
    _ref.check_tensor("inputs", inputs, dtypes=_ref.ROW_DTYPES, ndim=2)
    _ref.check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2, device=inputs.device)
    _ref.check_int("num_experts", num_experts, lo=0, hi=2 ** 31 - 2)
    if topk_ids.shape[0] != inputs.shape[0]:
        raise ValueError(f"topk_ids: expected {inputs.shape[0]} rows (one per row of inputs), got shape "
                         f"{tuple(topk_ids.shape)}")
    for name, flag in (("use_int64_offset", use_int64_offset), ("is_ep", is_ep)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
    if _config.check_values() and topk_ids.numel() and int(topk_ids.max()) >= num_experts:
        raise ValueError(f"topk_ids: expected every value < num_experts = {num_experts} (negative = not routed), "
                         f"got a maximum of {int(topk_ids.max())}")


def _rows_out(name: str, outputs: Optional[torch.Tensor], like: torch.Tensor, n_rows: int) -> torch.Tensor:
    shape = (n_rows, like.shape[1])
    if outputs is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    _ref.check_tensor(name, outputs, dtypes=(like.dtype,), shape=shape, device=like.device)
    return outputs


def moe_permute(inputs, topk_ids, num_experts, use_int64_offset=False, is_ep=False, outputs=None):
    """SGLang's ``moe_permute``: (outputs [T*K, H], src2dst [T*K] int32, expert_offsets [E+1]
    int32 / int64). Routed rows in stable slot order inside each expert's segment; rows
    n_routed .. T*K-1 of outputs are not written. Contract: reference.permute.moe_permute."""
    _check_permute(inputs, topk_ids, num_experts, use_int64_offset, is_ep)
    T, K = topk_ids.shape
    n = T * K
    dev = inputs.device
    outputs = _rows_out("outputs", outputs, inputs, n)
    src2dst = torch.empty(n, dtype=torch.int32, device=dev)
    expert_offsets = torch.empty(num_experts + 1, dtype=torch.int64 if use_int64_offset else torch.int32, device=dev)
    if n == 0:
        expert_offsets.zero_()
        return outputs, src2dst, expert_offsets
    H = inputs.shape[1]
    if n <= _fused_max():
        block_h = _block_h(max(H, 1), inputs.element_size())
        _permute_fused_kernel[(T, max(1, triton.cdiv(H, block_h)))](
            inputs, topk_ids, outputs, src2dst, expert_offsets, n, num_experts, H,
            K=K, KP=max(2, _config.next_pow2(K)), NP=max(32, _config.next_pow2(n)),
            EP=max(32, _config.next_pow2(num_experts + 1)), BLOCK_H=block_h, WIDE=_wide(inputs, outputs),
            num_warps=4 if n <= 512 else 8)
        return outputs, src2dst, expert_offsets
    _prepare_by_counting_sort(topk_ids, num_experts, src2dst, expert_offsets)
    _launch_rows(inputs, outputs, src2dst, K)
    return outputs, src2dst, expert_offsets


def moe_permute_with_scale(inputs, input_scale, topk_ids, num_experts, use_int64_offset=False, is_ep=False,
                           outputs=None, scale_outputs=None):
    """SGLang's ``moe_permute_with_scale``: moe_permute, and input_scale's rows moved the same way.
    Returns (outputs, scale_outputs [T*K, S], src2dst, expert_offsets)."""
    _ref.check_tensor("input_scale", input_scale, dtypes=_ref.ACT_DTYPES + (torch.int32,), ndim=2,
                      device=inputs.device)
    if input_scale.shape[0] != inputs.shape[0]:
        raise ValueError(f"input_scale: expected {inputs.shape[0]} rows (one per row of inputs), got shape "
                         f"{tuple(input_scale.shape)}")
    scale_outputs = _rows_out("scale_outputs", scale_outputs, input_scale, topk_ids.numel())
    outputs, src2dst, expert_offsets = moe_permute(inputs, topk_ids, num_experts, use_int64_offset, is_ep, outputs)
    _launch_rows(input_scale, scale_outputs, src2dst, topk_ids.shape[1])
    return outputs, scale_outputs, src2dst, expert_offsets


def _launch_unpermute(x, out, src2dst, topk_weights, topk: int, factor: float) -> None:
    T, H = out.shape
    if T == 0 or H == 0:
        return
    block_h = _block_h(H, x.element_size())
    _unpermute_kernel[(T, triton.cdiv(H, block_h))](
        x, out, src2dst, topk_weights, float(factor), H, K=topk, KP=max(2, _config.next_pow2(topk)),
        BLOCK_H=block_h, SCALE=factor != 1.0, WIDE=_wide(x, out), num_warps=4)


def moe_unpermute(inputs, src2dst, topk_ids, topk_weights, routed_scaling_factor=None, outputs=None):
    """SGLang's ``moe_unpermute``: outputs [T, H], every row written (zeros for a token with no
    row). Contract: reference.permute.moe_unpermute."""
    factor = 1.0 if routed_scaling_factor is None else _ref.check_float("routed_scaling_factor",
                                                                        routed_scaling_factor)
    _config.reject_float64(inputs=inputs)
    _ref.check_tensor("inputs", inputs, dtypes=_ref.ACT_DTYPES, ndim=2)
    dev = inputs.device
    _ref.check_tensor("topk_ids", topk_ids, dtypes=_ref.ID_DTYPES, ndim=2, device=dev)
    T, K = topk_ids.shape
    _ref.check_tensor("src2dst", src2dst, dtypes=_ref.ID_DTYPES, shape=(T * K,), device=dev)
    _ref.check_tensor("topk_weights", topk_weights, dtypes=(torch.float32, torch.bfloat16, torch.float16),
                      shape=(T, K), device=dev)
    if _config.check_values():
        _ref.check_rows_addressed("src2dst", src2dst, src2dst >= 0, inputs.shape[0],
                                  "slot with src2dst >= 0 (a row of inputs)")
    outputs = _rows_out("outputs", outputs, inputs, T)
    _launch_unpermute(inputs, outputs, src2dst, topk_weights, K, factor)
    return outputs


def deepep_permute(input, gateup_input, src2dst, topk_ids, a1_scales, topk, hidden_size):
    """SGLang's ``deepep_permute_triton_kernel`` as a launcher: gateup_input[src2dst[s]] =
    input[s // topk] cast to gateup_input's dtype, for src2dst >= 0; topk_ids and a1_scales are
    not read. Contract: reference.permute.deepep_permute_triton_kernel."""
    _ref.validate_row_scatter(input, gateup_input, src2dst, topk, hidden_size, _ref.ROW_DTYPES)
    _config.reject_float64(input=input, gateup_input=gateup_input)
    if _config.check_values():
        _ref.check_rows_addressed("src2dst", src2dst, src2dst >= 0, gateup_input.shape[0],
                                  "slot with src2dst >= 0 (a row of gateup_input)")
    _launch_rows(input, gateup_input, src2dst, topk)


def deepep_post_reorder(down_output, output, src2dst, topk_ids, topk_weights, topk, hidden_size,
                        routed_scaling_factor=1.0):
    """SGLang's ``deepep_post_reorder_triton_kernel`` as a launcher: moe_unpermute into ``output``.
    Contract: reference.permute.deepep_post_reorder_triton_kernel."""
    _ref.check_int("topk", topk, lo=1)
    _ref.check_tensor("output", output, dtypes=_ref.ACT_DTYPES, ndim=2)
    _ref.check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != output.shape[1]:
        raise ValueError(f"hidden_size: expected output.shape[1] = {output.shape[1]}, got {hidden_size}")
    _ref.check_tensor("topk_ids", topk_ids, dtypes=_ref.ID_DTYPES, shape=(output.shape[0], topk),
                      device=output.device)
    _ref.check_tensor("down_output", down_output, dtypes=_ref.ACT_DTYPES, ndim=2, device=output.device)
    if down_output.shape[1] != output.shape[1]:
        raise ValueError(f"down_output: expected shape (*, {output.shape[1]}), got {tuple(down_output.shape)}")
    _config.reject_float64(down_output=down_output, output=output)
    _ref.check_tensor("src2dst", src2dst, dtypes=_ref.ID_DTYPES, shape=(output.shape[0] * topk,),
                      device=output.device)
    _ref.check_tensor("topk_weights", topk_weights, dtypes=(torch.float32, torch.bfloat16, torch.float16),
                      shape=(output.shape[0], topk), device=output.device)
    factor = _ref.check_float("routed_scaling_factor", routed_scaling_factor)
    if _config.check_values():
        _ref.check_rows_addressed("src2dst", src2dst, src2dst >= 0, down_output.shape[0],
                                  "slot with src2dst >= 0 (a row of down_output)")
    _launch_unpermute(down_output, output, src2dst, topk_weights, topk, factor)


__all__ = ["moe_permute", "moe_permute_with_scale", "moe_unpermute", "deepep_permute", "deepep_post_reorder"]
