"""The one tolerance rule for float outputs, with its constants.

A float output c is compared with r, the reference evaluated in float64 (inputs upcast,
no intermediate rounding), and with l, the reference evaluated in the candidate's own
dtypes (what the same computation gives when done at that precision). Element i passes when

    |c_i - r_i| <= FACTOR * ( |l_i - r_i|                 # the precision's own error here
                            + U_OUT * |r_i|               # one rounding of the output
                            + ACC * mag_i )               # accumulation over L terms
                   + TINY                                 # output dtype's smallest subnormal

with ACC = L * 2**-24 (float32 accumulation of L terms, the worst-case bound gamma_L) plus,
for fp8 matrix products, min(L, 128) * 2**-14: Hopper's fp8 tensor cores keep about 14
bits in their partial sums, so a kernel must promote to float32 at least every 128 terms
(DeepGEMM does); mag_i is the same op evaluated in float64 on |inputs| (the sum of the
magnitudes of the terms). Elementwise ops have L = 0. FACTOR = 2 lets a candidate be twice
as far from the exact value as the precision itself is, and no further.

For outputs declared "normwise" (the chained MoE forward, whose intermediate roundings a
candidate may place differently), the test is on the whole tensor instead:
    ||c - r|| <= FACTOR * ||l - r|| + U_OUT * ||r||.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

FACTOR = 2.0
FP32_ROUNDOFF = 2.0 ** -24
FP8_ACC_ROUNDOFF = 2.0 ** -14
FP8_PROMOTE_EVERY = 128

UNIT_ROUNDOFF = {
    torch.bfloat16: 2.0 ** -8,
    torch.float16: 2.0 ** -11,
    torch.float32: 2.0 ** -24,
    torch.float64: 2.0 ** -53,
    torch.float8_e4m3fn: 2.0 ** -4,
}
SMALLEST_SUBNORMAL = {
    torch.bfloat16: 2.0 ** -133,
    torch.float16: 2.0 ** -24,
    torch.float32: 2.0 ** -149,
    torch.float64: 0.0,
    torch.float8_e4m3fn: 2.0 ** -9,
}


def accumulation_roundoff(reduction_len: int, fp8_dot: bool) -> float:
    acc = reduction_len * FP32_ROUNDOFF
    if fp8_dot:
        acc += min(reduction_len, FP8_PROMOTE_EVERY) * FP8_ACC_ROUNDOFF
    return acc


def elementwise_bound(ref64: torch.Tensor, ref_lp: torch.Tensor, out_dtype: torch.dtype,
                      mag: Optional[torch.Tensor], reduction_len: int, fp8_dot: bool) -> torch.Tensor:
    """Allowed |c - r| per element (float64), following the rule in the module docstring."""
    bound = (ref_lp.double() - ref64).abs() + UNIT_ROUNDOFF[out_dtype] * ref64.abs()
    if mag is not None and reduction_len > 0:
        bound = bound + accumulation_roundoff(reduction_len, fp8_dot) * mag
    return FACTOR * bound + SMALLEST_SUBNORMAL[out_dtype]


@dataclass(frozen=True)
class FloatReport:
    """Errors of one float output over the elements the contract defines (JSON-safe)."""

    passed: bool
    max_abs_err: float
    mean_abs_err: float
    worst_flat_index: int
    worst_candidate: float
    worst_reference: float
    worst_bound: float
    n_over: int
    n_checked: int


def compare_float(cand: torch.Tensor, ref64: torch.Tensor, ref_lp: torch.Tensor, mag: Optional[torch.Tensor],
                  reduction_len: int, fp8_dot: bool, normwise: bool, mask: torch.Tensor) -> FloatReport:
    """Compare ``cand`` with the float64 reference on the elements where ``mask`` is True."""
    c = cand.double()[mask]
    r = ref64.double()[mask]
    lp = ref_lp.double()[mask]
    err = (c - r).abs()
    err = torch.where(torch.isnan(err), torch.inf, err)          # NaN never passes
    n = int(err.numel())
    if n == 0:
        return FloatReport(True, 0.0, 0.0, -1, 0.0, 0.0, 0.0, 0, 0)
    out_dtype = cand.dtype
    if normwise:
        allowed = FACTOR * float((lp - r).norm()) + UNIT_ROUNDOFF[out_dtype] * float(r.norm())
        total = float(err.norm()) if torch.isfinite(err).all() else float("inf")
        over = err > allowed  # per element, for the report only
        passed = total <= allowed
        bound = torch.full_like(err, allowed)
    else:
        m = None if mag is None else mag.double()[mask]
        bound = elementwise_bound(r, lp, out_dtype, m, reduction_len, fp8_dot)
        over = err > bound
        passed = not bool(over.any())
    # Worst element: the one furthest over its bound (or with the largest error if none is over).
    ratio = err / bound.clamp_min(1e-300)
    i = int(ratio.argmax())
    flat_positions = torch.nonzero(mask.reshape(-1)).flatten()
    return FloatReport(
        passed=passed,
        max_abs_err=float(err.max()),
        mean_abs_err=float(err[torch.isfinite(err)].mean()) if torch.isfinite(err).any() else float("inf"),
        worst_flat_index=int(flat_positions[i]),
        worst_candidate=float(c[i]),
        worst_reference=float(r[i]),
        worst_bound=float(bound[i]),
        n_over=int(over.sum()),
        n_checked=n,
    )
