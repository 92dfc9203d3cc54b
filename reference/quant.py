"""Fused activation + quantisation ops of SGLang's DeepGEMM MoE paths, and the scale layouts
of its per-token-group fp8 quantisation (SGLang 0.5.23: ``sglang/kernels/ops/moe/ep_moe_kernels.py``
and ``sglang/kernels/ops/quantization/fp8_kernel.py``).

Conventions shared by every op here:
- "Masked" tensors are ``[E, m_max, ...]`` slabs, one per local expert; only the first
  ``masked_m[e]`` rows of expert e are defined. The ops read and write those rows only:
  every other row of an output (values and scales alike) is left exactly as it was.
- fp8 is float8_e4m3fn, max 448. A group's scale is ``max(amax, 1e-10) / 448`` in float32
  (``amax`` = the largest magnitude of the group's values) and the quantised value is
  ``fp8(clamp(y / scale, -448, 448))`` (round to nearest even). SGLang's kernels compute
  ``y * (1 / scale)`` or ``y * (448 / amax)`` and the CUDA one ``amax * (1 / 448)``: these
  agree with the formula up to one float32 rounding, which can move a value that lies on an
  fp8 rounding boundary to the neighbouring fp8 value; a comparison must allow that.
- UE8M0 ("scale_ue8m0"): the scale is rounded UP to a power of two before quantising,
  ``2 ** ceil(log2(scale))``, taken from the float32 bits: biased exponent + 1 when any
  mantissa bit is set (DeepGEMM's and SGLang's ``cast_to_ue8m0``). A float ``log2`` can
  differ from this for scales just above a power of two; the bit rule is the contract.
  Its byte is the biased exponent (scale = 2 ** (byte - 127)).
- Packed UE8M0: four exponent bytes per int32, little-endian, byte b of word c holding
  group 4c + b; bytes of groups past the last group are 0.
- Computation in float32 (float64 for float64 inputs); roundings to the input dtype that
  SGLang's kernels perform are stated per op and reproduced (they vanish for float32/64).
"""
from __future__ import annotations

import torch

from ._checks import ACT_DTYPES, FP8_DTYPE, ID_DTYPES, acc_dtype, check_int, check_tensor
from .activation import ref_silu
from .gemm import QUANT_EPS, per_token_group_quant_fp8
from .reorder import cast_saturating

SCALE_DTYPES = (torch.float32, torch.int32)  # float32 scales, or int32 with four UE8M0 bytes each


# --------------------------------------------------------------------------- UE8M0 and layout helpers


def ceil_to_ue8m0_exponent(scale: torch.Tensor) -> torch.Tensor:
    """Biased exponent (int32) of each positive float32 scale rounded up to a power of two."""
    bits = scale.to(torch.float32).contiguous().view(torch.int32)
    return ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)


def ue8m0_exponent_to_scale(exponent: torch.Tensor) -> torch.Tensor:
    """float32 2 ** (exponent - 127) for biased exponents in [1, 254]."""
    return (exponent.to(torch.int32) << 23).view(torch.float32)


def ceil_to_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """Each float32 scale rounded up to a power of two (the UE8M0 rule), as float32."""
    return ue8m0_exponent_to_scale(ceil_to_ue8m0_exponent(scale))


def pack_ue8m0_exponents(exponent: torch.Tensor) -> torch.Tensor:
    """[..., G] exponents -> int32 [..., ceil(G / 4)]: byte b of word c = group 4c + b, pad bytes 0."""
    groups = exponent.shape[-1]
    words = -(-groups // 4)
    padded = torch.zeros(*exponent.shape[:-1], words * 4, dtype=torch.int64, device=exponent.device)
    padded[..., :groups] = exponent.to(torch.int64) & 0xFF
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=exponent.device)
    word = (padded.view(*exponent.shape[:-1], words, 4) << shifts).sum(-1)        # [..., words] in [0, 2**32)
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def unpack_ue8m0_exponents(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of pack_ue8m0_exponents: int32 [..., W] -> int32 exponents [..., groups]."""
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=packed.device)
    exps = (packed.to(torch.int64)[..., None] >> shifts) & 0xFF                   # [..., W, 4]
    return exps.flatten(-2)[..., :groups].to(torch.int32)


def poisoned(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A fresh tensor whose every element is a value no op writes: NaN for floats (0x7F, NaN,
    for fp8), -1 for integers (0xFF bytes: the UE8M0 NaN). The references return these for
    the elements SGLang allocates with torch.empty and leaves unspecified."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if dtype == FP8_DTYPE:
        t.view(torch.uint8).fill_(0x7F)
    elif dtype.is_floating_point:
        t.fill_(float("nan"))
    else:
        t.fill_(-1)
    return t


def quantize_groups(y: torch.Tensor, group_size: int, scale_ue8m0: bool):
    """y [R, N] float -> (fp8 [R, N], float32 scale [R, N / group_size]) by the module's rule."""
    q, scale = per_token_group_quant_fp8(y, group_size)
    if scale_ue8m0:
        scale = ceil_to_ue8m0(scale)
        groups = y.to(torch.float32).view(y.shape[0], y.shape[1] // group_size, group_size) / scale[:, :, None]
        q = cast_saturating(groups, FP8_DTYPE).view(y.shape)
    return q, scale


def put_rows(dst: torch.Tensor, live: torch.Tensor, values: torch.Tensor) -> None:
    """dst[live] = values; fp8 through its bytes (torch's deterministic mode, which the harness
    turns on to poison fresh allocations, has no fp8 masked_fill for the boolean index_put)."""
    if dst.dtype == FP8_DTYPE:
        dst.view(torch.uint8)[live] = values.view(torch.uint8)
    else:
        dst[live] = values


def _rows_below(masked_m: torch.Tensor, m_max: int) -> torch.Tensor:
    """bool [E, m_max]: row t of expert e is defined (t < masked_m[e])."""
    return torch.arange(m_max, device=masked_m.device)[None, :] < masked_m.to(torch.int64)[:, None]


# --------------------------------------------------------------------------- validation


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
    return v


def check_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite float, got {v}")
    return float(v)


def check_masked_m(masked_m, num_experts: int, m_max: int, device, values: bool = True) -> None:
    """masked_m: int32/int64 [num_experts] with every count in [0, m_max] (the counts read on the
    host only with ``values``)."""
    check_tensor("masked_m", masked_m, dtypes=ID_DTYPES, shape=(num_experts,), device=device)
    if values and masked_m.numel():
        lo, hi = int(masked_m.min()), int(masked_m.max())
        if lo < 0 or hi > m_max:
            raise ValueError(f"masked_m: expected every count in [0, {m_max}] (rows of the slab), "
                             f"got values from {lo} to {hi}")


def _validate_masked_act(input, output, masked_m, out_dtypes, ratio=2, values=True):
    """input [E, m_max, 2N] contiguous; output [E, m_max, N] contiguous of out_dtypes."""
    check_tensor("input", input, dtypes=ACT_DTYPES, ndim=3)
    E, m_max, two_n = input.shape
    if two_n % ratio:
        raise ValueError(f"input: expected an even last dimension (gate and up halves), got shape {tuple(input.shape)}")
    check_tensor("output", output, dtypes=out_dtypes, shape=(E, m_max, two_n // ratio), device=input.device)
    check_masked_m(masked_m, E, m_max, input.device, values)
    return E, m_max, two_n // ratio


# --------------------------------------------------------------------------- masked SiLU-and-mul


def silu_and_mul_masked_fwd(input, output, masked_m):
    """SGLang's ``silu_and_mul_masked_fwd``.

    input [E, m_max, 2N] (SGLang: bf16 only; the reference also takes fp16/fp32/fp64),
    output [E, m_max, N] of input's dtype, masked_m int32/int64 [E] in [0, m_max].
    For every expert e and row t < masked_m[e]: gate = input[e, t, :N], up = input[e, t, N:]
    in float32, output[e, t] = (silu(gate) * up) rounded once to the output dtype.
    Rows t >= masked_m[e] are left as they were. Returns output.
    """
    _validate_masked_act(input, output, masked_m, (input.dtype,))
    acc = acc_dtype(input)
    n = input.shape[2] // 2
    live = _rows_below(masked_m, input.shape[1])                               # [E, m_max]
    rows = input[live].to(acc)                                                 # [R, 2N]
    output[live] = (ref_silu(rows[:, :n]) * rows[:, n:]).to(output.dtype)
    return output


def _swiglu_rows(rows: torch.Tensor, in_dtype: torch.dtype, gemm1_alpha: float, gemm1_clamp_limit: float):
    """The activation of silu_and_mul_masked_post_quant_fwd on rows [R, 2N] (in acc dtype)."""
    n = rows.shape[1] // 2
    gate, up = rows[:, :n], rows[:, n:]
    if gemm1_alpha > 0:
        gate = gate.clamp(max=gemm1_clamp_limit)                                  # float32 gate, float32 limit
        limit_t = float(torch.tensor(gemm1_clamp_limit, dtype=in_dtype))          # up is clamped in T
        up_plus_one = (up.clamp(-limit_t, limit_t) + 1).to(in_dtype).to(rows.dtype)
        return gate * torch.sigmoid(gate * gemm1_alpha) * up_plus_one
    act = ref_silu(gate).to(in_dtype).to(rows.dtype)
    return (act * up).to(in_dtype).to(rows.dtype)


def validate_masked_post_quant(input, output, output_scale, quant_group_size, masked_m, scale_ue8m0,
                               gemm1_alpha, gemm1_clamp_limit, num_real_tokens, topk, values=True):
    """The argument checks of silu_and_mul_masked_post_quant_fwd (its docstring states them); the
    checks of masked_m's values (a host read) only with ``values``. Returns (E, m_max, N, packed,
    gemm1_alpha, gemm1_clamp_limit) with None activation constants made 0.0."""
    E, m_max, n = _validate_masked_act(input, output, masked_m, (FP8_DTYPE,), values=values)
    check_int("quant_group_size", quant_group_size, lo=1)
    if n % quant_group_size:
        raise ValueError(f"quant_group_size: expected a divisor of the output width {n}, got {quant_group_size}")
    groups = n // quant_group_size
    check_bool("scale_ue8m0", scale_ue8m0)
    gemm1_alpha = check_float("gemm1_alpha", 0.0 if gemm1_alpha is None else gemm1_alpha)
    gemm1_clamp_limit = check_float("gemm1_clamp_limit", 0.0 if gemm1_clamp_limit is None else gemm1_clamp_limit)
    check_tensor("output_scale", output_scale, dtypes=SCALE_DTYPES, ndim=3, device=input.device, contiguous=False)
    packed = output_scale.dtype == torch.int32
    if packed:
        if not scale_ue8m0:
            raise ValueError("scale_ue8m0: expected True with int32 (packed UE8M0) output_scale, got False")
        if groups % 4:
            raise ValueError(f"quant_group_size: the packed layout needs the group count N / quant_group_size "
                             f"= {groups} to be a multiple of 4")
        check_tensor("output_scale", output_scale, shape=(E, groups // 4, m_max), contiguous=False)
        check_int("num_real_tokens", num_real_tokens, lo=0)
        check_int("topk", topk, lo=1)
        total = int(masked_m.sum()) if values else 0
        if total > num_real_tokens * topk:
            raise ValueError(f"masked_m: expected sum(masked_m) <= num_real_tokens * topk = {num_real_tokens * topk} "
                             f"(the packed path processes no more rows), got {total}")
    else:
        check_tensor("output_scale", output_scale, shape=(E, m_max, groups), contiguous=False)
    return E, m_max, n, packed, gemm1_alpha, gemm1_clamp_limit


def silu_and_mul_masked_post_quant_fwd(input, output, output_scale, quant_group_size, masked_m,
                                       scale_ue8m0=False, gemm1_alpha=0.0, gemm1_clamp_limit=0.0,
                                       num_real_tokens=None, topk=None):
    """SGLang's ``silu_and_mul_masked_post_quant_fwd``: masked SiLU-and-mul, then fp8 group quant.

    input [E, m_max, 2N] bf16/fp16/fp32 (fp64 for exact evaluation), contiguous;
    output [E, m_max, N] float8_e4m3fn, contiguous; N % quant_group_size == 0, G = N / quant_group_size;
    masked_m int32/int64 [E] in [0, m_max].
    For every expert e and row t < masked_m[e], with gate = input[e, t, :N], up = input[e, t, N:]
    and T = input's dtype:
    - gemm1_alpha == 0 (SiLU): y = T(T(silu(float32 gate)) * up) (SiLU rounded to T, then
      the product rounded to T).
    - gemm1_alpha > 0 (gpt-oss SwiGLU), L = gemm1_clamp_limit: g = min(float32 gate, L),
      u = T(clamp(up, -T(L), T(L)) + 1) (clamp and +1 in T), y = g * sigmoid(alpha * g) * u in float32.
    - each group of quant_group_size columns of y is quantised by the module's rule; with
      scale_ue8m0 its scale is rounded up to a power of two first.
    Scale layouts, chosen by output_scale's dtype:
    - float32 [E, m_max, G] (any strides): output_scale[e, t, g] = the group's scale (a power of
      two under scale_ue8m0).
    - int32 [E, G / 4, m_max] (the MN-major packed layout DeepGEMM reads; any strides): the
      UE8M0 bytes of groups 4c..4c+3 packed into output_scale[e, c, t]. Needs scale_ue8m0=True,
      G % 4 == 0, and num_real_tokens, topk with sum(masked_m) <= num_real_tokens * topk
      (SGLang's grid covers that many rows and no more).
    Rows t >= masked_m[e] of output and output_scale are left as they were. Returns None.
    """
    _, m_max, n, packed, gemm1_alpha, gemm1_clamp_limit = validate_masked_post_quant(
        input, output, output_scale, quant_group_size, masked_m, scale_ue8m0, gemm1_alpha, gemm1_clamp_limit,
        num_real_tokens, topk)

    live = _rows_below(masked_m, m_max)                                        # [E, m_max]
    rows = input[live].to(acc_dtype(input))                                    # [R, 2N]
    y = _swiglu_rows(rows, input.dtype, gemm1_alpha, gemm1_clamp_limit)        # [R, N]
    q, scale = quantize_groups(y, quant_group_size, scale_ue8m0 or packed)
    put_rows(output, live, q)
    if packed:
        output_scale.transpose(1, 2)[live] = pack_ue8m0_exponents(ceil_to_ue8m0_exponent(scale))
    else:
        output_scale[live] = scale


def silu_and_mul_masked_post_quant_packed_fwd(input, output, output_scale, quant_group_size, masked_m,
                                              scale_ue8m0=True, gemm1_alpha=0.0, gemm1_clamp_limit=0.0,
                                              num_real_tokens=None, topk=None):
    """The packed-UE8M0 form of silu_and_mul_masked_post_quant_fwd, as an op of its own.

    SGLang 0.5.23 has no function of this name: ``silu_and_mul_masked_post_quant_fwd`` takes
    this path when output_scale is int32 (its own kernel and launch grid, num_real_tokens * topk
    programs). Same arguments and contract as that function's packed layout; output_scale
    must be int32 [E, G / 4, m_max]. Returns None.
    """
    check_tensor("output_scale", output_scale, dtypes=(torch.int32,), ndim=3, device=input.device, contiguous=False)
    return silu_and_mul_masked_post_quant_fwd(input, output, output_scale, quant_group_size, masked_m, scale_ue8m0,
                                              gemm1_alpha, gemm1_clamp_limit, num_real_tokens, topk)


def silu_and_mul_masked_post_per_tensor_quant_fwd(input, output, masked_m, scale):
    """SGLang's ``silu_and_mul_masked_post_per_tensor_quant_fwd``: masked SiLU-and-mul to fp8
    with one static scale.

    input [E, m_max, 2D] float, contiguous; output [E, m_max, D] float8_e4m3fn, contiguous;
    masked_m int32/int64 [E] in [0, m_max]; scale float32 with 1 or E elements.
    For row t < masked_m[e]: y = float32(up) * T(silu(float32 gate)) (SiLU rounded to the input
    dtype T, product in float32), output[e, t] = fp8(clamp(y * (1 / s), -448, 448)) with
    s = scale.flatten()[0] FOR EVERY EXPERT: SGLang's docstring calls an [E] scale per-expert,
    but its 0.5.23 kernel reads the first element only, and the reference follows the kernel.
    Rows t >= masked_m[e] are left as they were. Returns output.
    """
    E, _, _ = _validate_masked_act(input, output, masked_m, (FP8_DTYPE,))
    check_tensor("scale", scale, dtypes=(torch.float32,), device=input.device, contiguous=False)
    if scale.numel() not in (1, E):
        raise ValueError(f"scale: expected 1 or {E} (experts) elements, got shape {tuple(scale.shape)}")
    acc = acc_dtype(input)
    n = input.shape[2] // 2
    live = _rows_below(masked_m, input.shape[1])
    rows = input[live].to(acc)
    y = rows[:, n:] * ref_silu(rows[:, :n]).to(input.dtype).to(acc)
    inv = 1.0 / scale.reshape(-1)[0].to(acc)
    put_rows(output, live, cast_saturating(y * inv, FP8_DTYPE))
    return output


def fp8_per_token_to_per_tensor_quant_triton(x, x_scale, masked_m, output_scale, output, expected_rows=None):
    """SGLang's ``fp8_per_token_to_per_tensor_quant_triton``: requantise fp8 rows with
    per-(token, 128-group) scales to one per-tensor scale.

    x [E, m, K] float8_e4m3fn, contiguous, K % 128 == 0; x_scale float32 [E, m, K / 128]
    (any strides: DeepEP's are column-major); masked_m int32/int64 [E] in [0, m];
    output_scale float32 with one element; output [E, m, K] float8_e4m3fn, contiguous.
    For row t < masked_m[e] and column k: output[e, t, k] =
    fp8((float32(x[e, t, k]) * x_scale[e, t, k // 128]) * (1 / output_scale)), each product
    rounded to float32. SGLang's kernel casts without clamping: values past +-448 are out of
    contract (choose output_scale >= the largest dequantised magnitude / 448); the reference
    saturates them. Rows t >= masked_m[e] are left as they were. expected_rows is a launch
    hint (checked to be None or a non-negative int) with no effect on the result. Returns None.
    """
    check_tensor("x", x, dtypes=(FP8_DTYPE,), ndim=3)
    E, m, k = x.shape
    if k % 128:
        raise ValueError(f"x: expected a last dimension that is a multiple of 128, got shape {tuple(x.shape)}")
    check_tensor("x_scale", x_scale, dtypes=(torch.float32,), shape=(E, m, k // 128), device=x.device, contiguous=False)
    check_masked_m(masked_m, E, m, x.device)
    check_tensor("output_scale", output_scale, dtypes=(torch.float32,), device=x.device, contiguous=False)
    if output_scale.numel() != 1:
        raise ValueError(f"output_scale: expected one element, got shape {tuple(output_scale.shape)}")
    check_tensor("output", output, dtypes=(FP8_DTYPE,), shape=(E, m, k), device=x.device)
    if expected_rows is not None:
        check_int("expected_rows", expected_rows, lo=0)
    live = _rows_below(masked_m, m)
    rows = x[live].to(torch.float32).view(-1, k // 128, 128)                   # [R, G, 128]
    dequant = (rows * x_scale[live][:, :, None]).view(-1, k)
    inv = 1.0 / output_scale.reshape(-1)[0]
    put_rows(output, live, cast_saturating(dequant * inv, FP8_DTYPE))


# --------------------------------------------------------------------------- per-token-group quant layouts


def create_per_token_group_quant_fp8_output_scale(x_shape, device, group_size, column_major_scales,
                                                  scale_tma_aligned, scale_ue8m0):
    """SGLang's scale buffer for a per-token-group quant of an [..., M, K] tensor, G = K / group_size.

    - default: float32 [..., M, G], contiguous.
    - column_major_scales (2-D only): float32 [M, G] with strides (1, M).
    - column_major_scales + scale_tma_aligned: float32 [..., M, G], a view of [..., G, M4]
      (M4 = M rounded up to a multiple of 4, 16 bytes) with strides (1, M4).
    - scale_ue8m0 (row-major): float32 [..., M, G] holding powers of two.
    - scale_ue8m0 + column_major_scales + scale_tma_aligned: int32 [..., M, G4 / 4] (G4 = G
      rounded up to a multiple of 4), a view of [..., G4 / 4, M4]: packed UE8M0 bytes.
    - scale_ue8m0 + column_major_scales without scale_tma_aligned: ValueError (SGLang asserts).
    The reference's buffer holds poison (see poisoned) where SGLang's holds torch.empty garbage.
    """
    *batch, m, k = x_shape
    g = k // group_size
    m4 = -(-m // 4) * 4
    if scale_ue8m0 and column_major_scales:
        if not scale_tma_aligned:
            raise ValueError("scale_tma_aligned: expected True when column_major_scales and scale_ue8m0 are both set")
        g4 = -(-g // 4) * 4
        return poisoned((*batch, g4 // 4, m4), torch.int32, device).transpose(-1, -2)[..., :m, :]
    if column_major_scales and scale_tma_aligned:
        return poisoned((*batch, g, m4), torch.float32, device).transpose(-1, -2)[..., :m, :]
    if column_major_scales:
        if batch:
            raise ValueError(f"column_major_scales: without scale_tma_aligned only 2-D inputs are supported, "
                             f"got shape {tuple(x_shape)}")
        return poisoned((g, m), torch.float32, device).t()
    return poisoned((*batch, m, g), torch.float32, device)


def sglang_per_token_group_quant_fp8(x, group_size, eps=1e-10, column_major_scales=False, scale_tma_aligned=False,
                                     scale_ue8m0=False, fuse_silu_and_mul=False, masked_m=None, *,
                                     output_q=None, output_s=None):
    """SGLang's ``sglang_per_token_group_quant_fp8`` (``per_token_group_quant_fp8`` on CUDA).

    x [..., M, K] bf16/fp16/fp32 (fp64 for exact evaluation), contiguous, ndim >= 2;
    K % group_size == 0 (with fuse_silu_and_mul, K = 2N and the groups split N). SGLang's CUDA
    kernel takes group sizes 16..256; a 2-D call with group_size == K and no option goes to
    its per-token kernel instead, which the reference holds to the same rule. On other
    platforms SGLang's ``per_token_group_quant_fp8`` is its Triton fallback
    (``_per_token_group_quant_8bit_raw``: same rule, no fused SiLU, no masked_m; its UE8M0
    path needs DeepGEMM).
    y = x, or with fuse_silu_and_mul (16-bit inputs only) y = T(T(silu(gate)) * up) for
    gate = x[..., :N], up = x[..., N:]. Each group of group_size columns of each row of y is
    quantised by the module's rule (eps must be 1e-10: SGLang's CUDA kernel bakes it in);
    with scale_ue8m0 the scale is rounded up to a power of two first.
    masked_m (int32/int64 [E], x [E, m_max, K]) restricts the op to rows t < masked_m[e]; the
    other rows of output_q and output_s are left as they were.
    Returns (output_q [..., M, N or K] float8_e4m3fn, output_s) with output_s laid out as
    create_per_token_group_quant_fp8_output_scale says: float32 scales, or packed UE8M0 int32
    (bytes of groups past G are 0). output_q / output_s, when given, are written in place and
    returned; output_s then selects the layout by dtype (int32 = packed, needs scale_ue8m0; a
    float32 one under scale_ue8m0 gets power-of-two float scales) and must have the logical
    shape [..., M, G] (packed: [..., M, ceil(G / 4)]).
    """
    check_tensor("x", x, dtypes=ACT_DTYPES)
    if x.dim() < 2:
        raise ValueError(f"x: expected at least 2 dimensions, got shape {tuple(x.shape)}")
    check_int("group_size", group_size, lo=1)
    check_float("eps", eps)
    if eps != QUANT_EPS:
        raise ValueError(f"eps: expected {QUANT_EPS} (the amax floor SGLang's CUDA kernel bakes in), got {eps}")
    for name, flag in (("column_major_scales", column_major_scales), ("scale_tma_aligned", scale_tma_aligned),
                       ("scale_ue8m0", scale_ue8m0), ("fuse_silu_and_mul", fuse_silu_and_mul)):
        check_bool(name, flag)
    k_in = x.shape[-1]
    if fuse_silu_and_mul:
        if x.dtype not in (torch.bfloat16, torch.float16, torch.float64):
            raise TypeError(f"x: fuse_silu_and_mul expects dtype bfloat16 or float16, got {str(x.dtype).replace('torch.', '')}")
        if k_in % 2:
            raise ValueError(f"x: fuse_silu_and_mul expects an even last dimension (gate and up), got {tuple(x.shape)}")
    n = k_in // 2 if fuse_silu_and_mul else k_in
    if n % group_size:
        raise ValueError(f"group_size: expected a divisor of the quantised width {n}, got {group_size}")
    groups = n // group_size
    out_shape = (*x.shape[:-1], n)
    rows_shape = x.shape[:-1]
    if masked_m is not None:
        if x.dim() != 3:
            raise ValueError(f"x: masked_m expects x of shape [E, m_max, K], got {tuple(x.shape)}")
        check_masked_m(masked_m, x.shape[0], x.shape[1], x.device)
    if output_q is None:
        output_q = poisoned(out_shape, FP8_DTYPE, x.device)
    else:
        check_tensor("output_q", output_q, dtypes=(FP8_DTYPE,), shape=out_shape, device=x.device)
    if output_s is None:
        output_s = create_per_token_group_quant_fp8_output_scale(out_shape, x.device, group_size, column_major_scales,
                                                                 scale_tma_aligned, scale_ue8m0)
    else:
        check_tensor("output_s", output_s, dtypes=SCALE_DTYPES, device=x.device, contiguous=False)
        if output_s.dtype == torch.int32 and not scale_ue8m0:
            raise ValueError("scale_ue8m0: expected True with an int32 (packed UE8M0) output_s, got False")
    packed = output_s.dtype == torch.int32
    want_s = (*rows_shape, -(-groups // 4) if packed else groups)
    check_tensor("output_s", output_s, shape=want_s, contiguous=False)

    live = (_rows_below(masked_m, x.shape[1]) if masked_m is not None
            else torch.ones(rows_shape, dtype=torch.bool, device=x.device))
    rows = x[live].to(acc_dtype(x))                                             # [R, K]
    if fuse_silu_and_mul:
        rows = _swiglu_rows(rows, x.dtype, 0.0, 0.0)
    q, scale = quantize_groups(rows, group_size, scale_ue8m0)
    put_rows(output_q, live, q)
    output_s[live] = pack_ue8m0_exponents(ceil_to_ue8m0_exponent(scale)) if packed else scale
    return output_q, output_s


__all__ = ["silu_and_mul_masked_fwd", "silu_and_mul_masked_post_quant_fwd", "silu_and_mul_masked_post_quant_packed_fwd",
           "silu_and_mul_masked_post_per_tensor_quant_fwd",
           "fp8_per_token_to_per_tensor_quant_triton", "sglang_per_token_group_quant_fp8",
           "create_per_token_group_quant_fp8_output_scale"]
