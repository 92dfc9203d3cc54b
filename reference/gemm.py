"""Grouped GEMM over expert segments, bf16/fp16/fp32 and fp8 e4m3 (SPEC.md section 6)."""
from __future__ import annotations

import torch

from ._checks import FP8_DTYPE, FP8_MAX, validate_group_quant, validate_grouped_gemm

# Floor of a group's amax, so an all-zero group gets a finite scale (SGLang uses the same).
QUANT_EPS = 1e-10


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int):
    """Quantise each row of x [M, Kd] per group of ``group_size`` columns to fp8 e4m3.

    scale[m, g] = max(amax(|x[m, group g]|), 1e-10) / 448 in float32;
    x_q[m, j] = fp8(clamp(x[m, j] / scale[m, j // group_size], -448, 448)).
    A last partial group is quantised on its own columns. Returns (x_q [M, Kd] fp8,
    scale [M, ceil(Kd / group_size)] float32).
    """
    validate_group_quant(x, group_size)
    M, Kd = x.shape
    n_groups = -(-Kd // group_size)
    pad = n_groups * group_size - Kd
    xf = torch.nn.functional.pad(x.float(), (0, pad)).view(M, n_groups, group_size)  # [M, G, gs]
    scale = xf.abs().amax(dim=2).clamp_min(QUANT_EPS) / FP8_MAX                     # [M, G]
    q = (xf / scale[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(M, n_groups * group_size)[:, :Kd].contiguous(), scale


def expand_block_scales(scale: torch.Tensor, rows: int, cols: int, block_rows: int, block_cols: int):
    """Spread a per-block scale [R/br, C/bc] over a [rows, cols] matrix."""
    return scale.repeat_interleave(block_rows, 0)[:rows].repeat_interleave(block_cols, 1)[:, :cols]


def grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                 use_fp8_w8a8=False, scale_a=None, scale_b=None, block_shape=None):
    """SGLang's ``grouped_gemm_triton``.

    For group g and rows r in [seg_indptr[g], seg_indptr[g+1]):
    c[r] = a[r] @ b[weight_indices[g]].T, accumulated in float32 (float64 for float64
    inputs or a float64 c) and cast to c's dtype. fp8 per-tensor: times scale_a[e] * scale_b[e].
    fp8 block-wise (block_shape [bn, bk]): a is quantised per token group of bk
    (per_token_group_quant_fp8), and each [bn, bk] block of b carries scale_b[e, n//bn, k//bk].
    Rows outside [seg_indptr[0], seg_indptr[batch_size]) are left as they were. Returns c.
    """
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                          use_fp8_w8a8, scale_a, scale_b, block_shape)
    acc = torch.float64 if torch.float64 in (a.dtype, c.dtype) else torch.float32
    if block_shape is not None:
        bn, bk = block_shape
        a, scale_a = per_token_group_quant_fp8(a, bk)
    seg = seg_indptr.tolist()
    experts = weight_indices.tolist()
    N, Kd = b.shape[1], b.shape[2]
    for g in range(batch_size):
        lo, hi, e = seg[g], seg[g + 1], experts[g]
        if hi == lo:
            continue
        a_g = a[lo:hi].to(acc)                                               # [m, Kd]
        b_e = b[e].to(acc)                                                   # [N, Kd]
        if block_shape is not None:
            a_g = a_g * expand_block_scales(scale_a[lo:hi], hi - lo, Kd, 1, bk)
            b_e = b_e * expand_block_scales(scale_b[e], N, Kd, bn, bk)
        out = a_g @ b_e.T                                                    # [m, N]
        if use_fp8_w8a8 and block_shape is None:
            out = out * (scale_a[e] * scale_b[e])
        c[lo:hi] = out.to(c.dtype)
    return c


__all__ = ["grouped_gemm", "per_token_group_quant_fp8"]
