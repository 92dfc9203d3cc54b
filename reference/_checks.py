"""Argument validation shared by the references and our Triton launchers.

Every op validates its arguments before doing any work. Metadata checks (type, dtype,
shape, device, contiguity) are free; value checks (ids in range, seg_indptr monotone)
need a device-to-host read, so launchers may skip them (``check_values=False``), e.g.
while a CUDA graph is being captured. Kernels stay memory-safe for any ids either way.

A violation raises TypeError (wrong kind or dtype) or ValueError (wrong shape, device,
range) whose message names the argument, what was expected and what came.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
ID_DTYPES = (torch.int32, torch.int64)
# float64 is accepted so that the harness can evaluate a reference exactly; kernels reject it.
ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of the references: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _dt(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
    device: Optional[torch.device] = None,
    contiguous: bool = True,
) -> torch.Tensor:
    """Check one tensor argument; ``shape`` entries of None match any size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dt(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        for want, got in zip(shape, t.shape):
            if want is not None and want != got:
                want_s = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{name}: expected shape {want_s}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (same device as the other inputs), got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()} for shape {tuple(t.shape)}")
    return t


def check_int(name: str, v, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """Check a Python integer argument against the inclusive range [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {v}")
    return v


def check_id_range(name: str, ids: torch.Tensor, lo: int, hi: int) -> None:
    """Values of ``ids`` must lie in [lo, hi] (a device-to-host read)."""
    if ids.numel() == 0:
        return
    mn, mx = int(ids.min()), int(ids.max())
    if mn < lo or mx > hi:
        raise ValueError(f"{name}: expected every value in [{lo}, {hi}], got values from {mn} to {mx}")


def check_expert_range(num_experts_hint: Optional[int], start_expert_id, end_expert_id) -> int:
    """start/end are an inclusive expert range; returns E_local."""
    check_int("start_expert_id", start_expert_id, lo=0)
    check_int("end_expert_id", end_expert_id, lo=start_expert_id if isinstance(start_expert_id, int) else 0)
    if num_experts_hint is not None and end_expert_id >= num_experts_hint:
        raise ValueError(f"end_expert_id: expected < {num_experts_hint}, got {end_expert_id}")
    return end_expert_id - start_expert_id + 1


def check_block_size(BLOCK_SIZE) -> None:
    check_int("BLOCK_SIZE", BLOCK_SIZE, lo=1)
    if BLOCK_SIZE & (BLOCK_SIZE - 1):
        raise ValueError(f"BLOCK_SIZE: expected a power of two, got {BLOCK_SIZE}")


# --------------------------------------------------------------------------- ops


def validate_preprocess(topk_ids, num_experts, *, allow_invalid: bool, check_values: bool = True) -> None:
    """The preprocessings' ids: in [0, E), or in [-1, E) with allow_invalid (DeepEP: -1 is a dropped slot)."""
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, ndim=2)
    check_int("num_experts", num_experts, lo=1)
    if check_values:
        check_id_range("topk_ids", topk_ids, -1 if allow_invalid else 0, num_experts - 1)


def validate_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id,
                         end_expert_id, topk, hidden_size, BLOCK_SIZE, *, check_values: bool = True) -> None:
    check_tensor("input", input, dtypes=ACT_DTYPES, ndim=2)
    dev = input.device
    T, H = input.shape
    check_int("topk", topk, lo=1)
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H:
        raise ValueError(f"hidden_size: expected input.shape[1] = {H}, got {hidden_size}")
    check_tensor("gateup_input", gateup_input, dtypes=(input.dtype, FP8_DTYPE), shape=(T * topk, H), device=dev)
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * topk,), device=dev)
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=dev)
    e_local = check_expert_range(None, start_expert_id, end_expert_id)
    check_block_size(BLOCK_SIZE)
    if gateup_input.dtype == FP8_DTYPE and a1_scales is None:
        raise ValueError("a1_scales: expected float32 scales of shape (E_local,) when gateup_input is float8_e4m3fn, got None")
    if a1_scales is not None:
        check_tensor("a1_scales", a1_scales, dtypes=(torch.float32,), shape=(e_local,), device=dev)
    if check_values:
        _check_src2dst_for_local(src2dst, topk_ids, start_expert_id, end_expert_id, T * topk)


def _check_src2dst_for_local(src2dst, topk_ids, start, end, rows) -> None:
    """src2dst entries of local slots must address a row of the reordered buffer."""
    ids = topk_ids.reshape(-1)
    local = (ids >= start) & (ids <= end)
    if bool(local.any()):
        dst = src2dst[local]
        mn, mx = int(dst.min()), int(dst.max())
        if mn < 0 or mx >= rows:
            raise ValueError(f"src2dst: expected values in [0, {rows - 1}] for every slot with a local expert, "
                             f"got values from {mn} to {mx}")


def validate_act_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales,
                         start_expert_id, end_expert_id, BLOCK_SIZE, *, check_values: bool = True) -> None:
    check_tensor("gateup_output", gateup_output, dtypes=ACT_DTYPES, ndim=2)
    dev = gateup_output.device
    M, two_i = gateup_output.shape
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != two_i or hidden_size % 2:
        raise ValueError(f"hidden_size: expected gateup_output.shape[1] = {two_i} (2 * intermediate size, even), "
                         f"got {hidden_size}")
    check_tensor("down_input", down_input, dtypes=(gateup_output.dtype, FP8_DTYPE), shape=(M, two_i // 2), device=dev)
    check_tensor("reorder_topk_ids", reorder_topk_ids, dtypes=ID_DTYPES, shape=(M,), device=dev)
    e_local = check_expert_range(None, start_expert_id, end_expert_id)
    check_block_size(BLOCK_SIZE)
    if down_input.dtype == FP8_DTYPE and scales is None:
        raise ValueError("scales: expected float32 scales of shape (E_local,) when down_input is float8_e4m3fn, got None")
    if scales is not None:
        check_tensor("scales", scales, dtypes=(torch.float32,), shape=(e_local,), device=dev)


def validate_post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id,
                          end_expert_id, topk, hidden_size, BLOCK_SIZE, *, check_values: bool = True) -> None:
    check_tensor("down_output", down_output, dtypes=ACT_DTYPES, ndim=2)
    dev = down_output.device
    check_int("topk", topk, lo=1)
    check_tensor("output", output, dtypes=ACT_DTYPES, ndim=2, device=dev)
    T, H = output.shape
    check_int("hidden_size", hidden_size, lo=0)
    if hidden_size != H:
        raise ValueError(f"hidden_size: expected output.shape[1] = {H}, got {hidden_size}")
    check_tensor("down_output", down_output, shape=(T * topk, H))
    check_tensor("src2dst", src2dst, dtypes=ID_DTYPES, shape=(T * topk,), device=dev)
    check_tensor("topk_ids", topk_ids, dtypes=ID_DTYPES, shape=(T, topk), device=dev)
    check_tensor("topk_weights", topk_weights, dtypes=(torch.float32,), shape=(T, topk), device=dev)
    check_expert_range(None, start_expert_id, end_expert_id)
    check_block_size(BLOCK_SIZE)
    if check_values:
        _check_src2dst_for_local(src2dst, topk_ids, start_expert_id, end_expert_id, T * topk)


def validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                          use_fp8_w8a8, scale_a, scale_b, block_shape, *, check_values: bool = True) -> None:
    blockwise = block_shape is not None
    a_dtypes = ACT_DTYPES if (blockwise or not use_fp8_w8a8) else (FP8_DTYPE,)
    check_tensor("a", a, dtypes=a_dtypes, ndim=2)
    dev = a.device
    M, Kd = a.shape
    b_dtypes = (FP8_DTYPE,) if use_fp8_w8a8 else (a.dtype,)
    check_tensor("b", b, dtypes=b_dtypes, ndim=3, device=dev)
    E_w, N, Kb = b.shape
    if Kb != Kd:
        raise ValueError(f"b: expected shape (E_w, N, {Kd}) to match a's inner size {Kd}, got {tuple(b.shape)}")
    check_tensor("c", c, dtypes=ACT_DTYPES, shape=(M, N), device=dev)
    if not use_fp8_w8a8 and c.dtype != a.dtype:
        raise TypeError(f"c: expected dtype {str(a.dtype).replace('torch.', '')} (same as a), got "
                        f"{str(c.dtype).replace('torch.', '')}")
    check_int("batch_size", batch_size, lo=0)
    if weight_column_major is not True:
        raise ValueError(f"weight_column_major: expected True (b is [E_w, N, Kd], c = a @ b[e].T), got {weight_column_major!r}")
    check_tensor("seg_indptr", seg_indptr, dtypes=(torch.int64,), shape=(batch_size + 1,), device=dev)
    check_tensor("weight_indices", weight_indices, dtypes=(torch.int64,), shape=(batch_size,), device=dev)
    if not isinstance(use_fp8_w8a8, bool):
        raise TypeError(f"use_fp8_w8a8: expected a bool, got {type(use_fp8_w8a8).__name__}")
    if blockwise:
        if not use_fp8_w8a8:
            raise ValueError("block_shape: block-wise quantisation needs use_fp8_w8a8=True, got use_fp8_w8a8=False")
        if (not isinstance(block_shape, (list, tuple)) or len(block_shape) != 2
                or not all(isinstance(x, int) and x > 0 for x in block_shape)):
            raise ValueError(f"block_shape: expected [block_n, block_k] of two positive ints, got {block_shape!r}")
        bn, bk = block_shape
        kb, nb = -(-Kd // bk), -(-N // bn)
        if scale_b is None:
            raise ValueError(f"scale_b: expected float32 block scales of shape ({E_w}, {nb}, {kb}), got None")
        check_tensor("scale_b", scale_b, dtypes=(torch.float32,), shape=(E_w, nb, kb), device=dev)
        if scale_a is not None:
            raise ValueError("scale_a: expected None with block_shape (a is quantised per token group inside), got a tensor")
    elif use_fp8_w8a8:
        for name, s in (("scale_a", scale_a), ("scale_b", scale_b)):
            if s is None:
                raise ValueError(f"{name}: expected float32 per-weight scales of shape ({E_w},) with use_fp8_w8a8, got None")
            check_tensor(name, s, dtypes=(torch.float32,), shape=(E_w,), device=dev)
    if check_values and batch_size > 0:
        seg = seg_indptr.tolist()
        if seg[0] < 0 or seg[-1] > M:
            raise ValueError(f"seg_indptr: expected values within [0, {M}] (rows of a), got from {seg[0]} to {seg[-1]}")
        if any(x > y for x, y in zip(seg, seg[1:])):
            raise ValueError(f"seg_indptr: expected a non-decreasing sequence, got {seg[:16]}{' ...' if len(seg) > 16 else ''}")
        check_id_range("weight_indices", weight_indices, 0, E_w - 1)


def validate_group_quant(x, group_size) -> None:
    """per_token_group_quant_fp8: x [M, Kd] float, group_size a positive int."""
    check_tensor("x", x, dtypes=ACT_DTYPES, ndim=2)
    check_int("group_size", group_size, lo=1)
