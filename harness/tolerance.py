"""The one tolerance rule for float outputs, with its constants.

A float output c is compared with r, the reference evaluated in float64 (inputs upcast,
no intermediate rounding), and with l, the reference evaluated in the candidate's own
dtypes (what the same computation gives when done at that precision). Element i passes when

    |c_i - r_i| <= FACTOR * ( |l_i - r_i|                 # the precision's own error here
                            + U_OUT * |r_i|               # one rounding of the output
                            + ACC * mag_i )               # accumulation over L terms
                   + TINY                                 # output dtype's smallest subnormal

with ACC = L * 2**-24 (float32 accumulation of L terms, the worst-case bound gamma_L) plus,
for fp8 matrix products, ceil(min(L, 128) / 32) * 2**-14: Hopper's fp8 tensor cores align
the 32 products of one MMA instruction (k = 32) with the running sum keeping about 14 bits,
one truncation per instruction, and a kernel must promote its sum to float32 at least every
128 terms (DeepGEMM does), so at most 4 such truncations stand between promotions; mag_i is
the same op evaluated in float64 on |inputs| (the sum of the magnitudes of the terms).
Measured on an H100 (results/2026-12-06-s13-h100, tools/fp8_accumulation_errors.py, 275
cases up to L = 8064): correct fp8 GEMMs use at most a fifth of this fp8 term plus gamma_L,
while a kernel that rounds its running sum to bfloat16 after every K block exceeds it in a
fifth of the cases with L > 256 (the earlier term, min(L, 128) * 2**-14, was 32 times this
one and let that kernel pass every case). Elementwise ops have L = 0. FACTOR = 2 lets a candidate be twice
as far from the exact value as the precision itself is, and no further.

For outputs declared "normwise" (the chained MoE forward, whose intermediate roundings a
candidate may place differently), the test is on the whole tensor instead:
    ||c - r|| <= FACTOR * ||l - r|| + U_OUT * ||r||.

fp8 matrix products with a 16-bit output get a second, statistical test on top of the
elementwise one, over at least NORM_MIN_ELEMENTS elements:
    ||c - r|| <= NORM_FACTOR * sqrt(1 + L / NORM_TRUNCATION_L) * ||l - r||.
The output's own rounding dominates what a kernel accumulating as the contract says adds,
so its error has about l's size element for element and, over many elements, about l's norm;
the tensor cores' alignment truncations (one per 32 terms) add error variance in proportion
to their number. A kernel that rounds its running sum to bfloat16 after every K block errs by
a fraction of an ulp per element, which the elementwise bound (it must hold for the worst
element) lets through in four cases of five with L > 256 (results/2026-12-06-s13-h100), but
its error's norm is several times l's. Measured on
an H100 (results/2026-12-06-s17-h100, tools/fp8_accumulation_errors.py, 56 cases, Kd 128 to
7552): ours has ||c - r|| / ||l - r|| of 1.0 up to 1.52 (at L = 7168), at most 0.65 of this
bound at any L; the bfloat16-running-sum kernel 1.6 (L = 206) to 5.4 (L = 7168), from 1.03x
this bound at L = 206 to 1.7x at L = 7168 (fp8_tensor; block-wise, it stays under the bound
only at L <= 256, two K blocks). A flat 1.5 would have failed ours at L = 7168.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

FACTOR = 2.0
FP32_ROUNDOFF = 2.0 ** -24
FP8_ACC_ROUNDOFF = 2.0 ** -14      # one alignment truncation of an fp8 MMA instruction
FP8_MMA_K = 32                     # products per fp8 MMA instruction (Hopper wgmma, k = 32)
FP8_PROMOTE_EVERY = 128            # terms between float32 promotions, at most
NORM_FACTOR = 1.5                  # the statistical test's ||c - r|| / ||l - r|| (fp8 products) ...
NORM_TRUNCATION_L = 2048           # ... times sqrt(1 + L / this): the truncations' share grows with L
NORM_MIN_ELEMENTS = 1024           # below this many elements a norm is not yet a statistic

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
        acc += -(-min(reduction_len, FP8_PROMOTE_EVERY) // FP8_MMA_K) * FP8_ACC_ROUNDOFF
    return acc


def norm_bound(reduction_len: int) -> float:
    """The statistical test's largest ||c - r|| / ||l - r|| for an fp8 product over L terms."""
    return NORM_FACTOR * (1.0 + reduction_len / NORM_TRUNCATION_L) ** 0.5


def elementwise_bound(ref64: torch.Tensor, ref_lp: torch.Tensor, out_dtype: torch.dtype,
                      mag: Optional[torch.Tensor], reduction_len: int, fp8_dot: bool,
                      accumulation: Optional[float] = None, operand_roundoff: float = 0.0) -> torch.Tensor:
    """Allowed |c - r| per element (float64), following the rule in the module docstring.

    ``accumulation`` replaces the accumulation term's roundoff, and ``operand_roundoff`` adds
    2 * u_op * mag for operands rounded to a coarser format (TF32's u_op = 2**-11): both only to
    ask which precision explains an error (harness.runner), never to pass a case by default."""
    bound = (ref_lp.double() - ref64).abs() + UNIT_ROUNDOFF[out_dtype] * ref64.abs()
    if mag is not None and reduction_len > 0:
        acc = accumulation_roundoff(reduction_len, fp8_dot) if accumulation is None else accumulation
        bound = bound + (acc + 2.0 * operand_roundoff) * mag
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
    norm_ratio: float = 0.0     # ||c - r|| / ||l - r|| where the statistical test ran, else 0
    norm_passed: bool = True    # that test passed (or did not apply)


# Elements compared per step: float64 temporaries stay near 0.5 GiB each whatever the output's
# size (the `large` preset's outputs hold over 10**9 elements).
COMPARE_CHUNK = 1 << 26


def _chunks(n: int):
    for lo in range(0, n, COMPARE_CHUNK):
        yield lo, min(n, lo + COMPARE_CHUNK)


def compare_float(cand: torch.Tensor, ref64: torch.Tensor, ref_lp: torch.Tensor, mag: Optional[torch.Tensor],
                  reduction_len: int, fp8_dot: bool, normwise: bool, mask: torch.Tensor,
                  accumulation: Optional[float] = None, operand_roundoff: float = 0.0,
                  statistical: bool = True) -> FloatReport:
    """Compare ``cand`` with the float64 reference on the elements where ``mask`` is True
    (``accumulation`` / ``operand_roundoff``: see elementwise_bound). The statistical test of
    fp8 products runs unless ``statistical`` is False (the elementwise test alone: asking
    which precision explains an error).

    Works through the flattened tensors COMPARE_CHUNK elements at a time, on ``ref64``'s
    device (the other tensors' chunks are moved there: a large case's float64 reference may
    have been evaluated on the host)."""
    dev = ref64.device
    flat = {"c": cand.reshape(-1), "r": ref64.reshape(-1), "lp": ref_lp.reshape(-1), "mask": mask.reshape(-1),
            "mag": None if mag is None else mag.reshape(-1)}

    def piece(name: str, lo: int, hi: int) -> torch.Tensor:
        t = flat[name][lo:hi].to(dev)
        return t if name == "mask" else t.double()

    def masked(lo: int, hi: int):
        m = piece("mask", lo, hi)
        c, r, lp = piece("c", lo, hi)[m], piece("r", lo, hi)[m], piece("lp", lo, hi)[m]
        err = (c - r).abs()
        err = torch.where(torch.isnan(err), torch.inf, err)          # NaN never passes
        return m, c, r, lp, err

    out_dtype = cand.dtype
    total = flat["c"].numel()
    allowed = None
    if normwise:  # first pass: the norms that fix the one bound of the whole tensor
        sq = {"lp_r": 0.0, "r": 0.0, "err": 0.0}
        for lo, hi in _chunks(total):
            _, c, r, lp, err = masked(lo, hi)
            sq["lp_r"] += float(((lp - r) ** 2).sum())
            sq["r"] += float((r ** 2).sum())
            sq["err"] += float((err ** 2).sum())
        allowed = FACTOR * sq["lp_r"] ** 0.5 + UNIT_ROUNDOFF[out_dtype] * sq["r"] ** 0.5
    stat = statistical and not normwise and fp8_dot and reduction_len > 0 and \
        out_dtype in (torch.bfloat16, torch.float16)
    n = n_over = n_finite = 0
    err_sum, max_err = 0.0, 0.0
    err_sq = lp_sq = 0.0
    worst = None  # (ratio, flat index, candidate, reference, bound)
    for lo, hi in _chunks(total):
        m, c, r, lp, err = masked(lo, hi)
        if err.numel() == 0:
            continue
        if normwise:
            bound = torch.full_like(err, allowed)
        else:
            mg = None if flat["mag"] is None else piece("mag", lo, hi)[m]
            bound = elementwise_bound(r, lp, out_dtype, mg, reduction_len, fp8_dot, accumulation, operand_roundoff)
        n += err.numel()
        n_over += int((err > bound).sum())
        if stat:
            err_sq += float((err ** 2).sum())
            lp_sq += float(((lp - r) ** 2).sum())
        finite = torch.isfinite(err)
        n_finite += int(finite.sum())
        err_sum += float(err[finite].sum())
        max_err = max(max_err, float(err.max()))
        ratio = err / bound.clamp_min(1e-300)
        i = int(ratio.argmax())
        if worst is None or float(ratio[i]) > worst[0]:
            pos = lo + int(torch.nonzero(m).flatten()[i])
            worst = (float(ratio[i]), pos, float(c[i]), float(r[i]), float(bound[i]))
    if n == 0:
        return FloatReport(True, 0.0, 0.0, -1, 0.0, 0.0, 0.0, 0, 0)
    if normwise:
        passed = sq["err"] ** 0.5 <= allowed if max_err < float("inf") else False
    else:
        passed = n_over == 0
    norm_ratio, norm_passed = 0.0, True
    if stat and n >= NORM_MIN_ELEMENTS and lp_sq > 0:   # (l exact everywhere: no scale to compare with)
        norm_ratio = err_sq ** 0.5 / lp_sq ** 0.5
        norm_passed = norm_ratio <= norm_bound(reduction_len)
        passed = passed and norm_passed
    return FloatReport(
        passed=passed,
        max_abs_err=max_err,
        mean_abs_err=err_sum / n_finite if n_finite else float("inf"),
        worst_flat_index=worst[1],
        worst_candidate=worst[2],
        worst_reference=worst[3],
        worst_bound=worst[4],
        n_over=n_over,
        n_checked=n,
        norm_ratio=norm_ratio,
        norm_passed=norm_passed,
    )
