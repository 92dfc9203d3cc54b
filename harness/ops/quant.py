"""Records of the activation-with-quantisation ops of SGLang's DeepGEMM masked path (0.5.23:
``sglang/kernels/ops/moe/ep_moe_kernels.py``) and of its per-token-group fp8 quantiser (in the
neighbour file ``sglang/kernels/ops/quantization/fp8_kernel.py``): ``silu_and_mul_masked_fwd``,
``silu_and_mul_masked_post_quant_fwd``, its packed form ``silu_and_mul_masked_post_quant_packed_fwd``,
``silu_and_mul_masked_post_per_tensor_quant_fwd``, ``fp8_per_token_to_per_tensor_quant_triton`` and
``sglang_per_token_group_quant_fp8``; contracts in reference/quant.py.

Our Triton kernels: optimized/quant.py (the post-quant op and its packed form). For the other ops
``ours`` is the reference module (host-side, outside the graph probe) and their mutants patch it.

How outputs are compared:
- fp8 codes ("fp8_code"): at most one step of the e4m3 grid from the reference's code. The
  arithmetic before the cast is not bit-reproducible across implementations: exp (ex2.approx on
  the GPU) and Triton's float32 division (div.full.f32, within 2 ulp) move the pre-cast value by a
  few float32 ulps, and the SiLU's or the product's rounding to bf16 may then flip; either moves a
  value lying on an fp8 rounding boundary to the neighbouring code, never further (a group's scale
  that moves by one bf16 ulp of its amax changes y / scale by 2**-8 relative, under the 2**-4 of
  one e4m3 step). A wrong scale, group, clamp or row moves codes by many steps.
- float32 scales ("float", the tolerance rule): amax / 448 of the same y, which carries those
  exp and rounding differences (counted as 8 accumulated terms, as the activation record does).
- packed UE8M0 exponents ("exact"): integers from the scale's bits.
Only rows t < masked_m[e] are defined; every other row of every output must stay untouched
(the runner's poison probe).

SGLang's bindings: the masked ops are SGLang's own wrappers, with our signatures. The packed op
binds SGLang's ``silu_and_mul_masked_post_quant_fwd`` too (0.5.23 has no function of its own for
it: an int32 output_scale selects the packed kernel). ``sglang_per_token_group_quant_fp8`` binds
SGLang's Triton quantiser ``_per_token_group_quant_8bit_raw`` (what ``per_token_group_quant_fp8``
is off CUDA): 0.5.23's CUDA path is a CUDA JIT kernel (tvm-ffi, nvcc, SGLang's kernel sources) that
the harness cannot load from the wheel's Python files. That Triton path writes float32 scales
only; its UE8M0 layouts call DeepGEMM (its row-major one asserts), so SGLang's rows of the
``ue8m0*`` layouts fail with that exception: a documented contract difference, not a wrong answer.
``fp8_per_token_to_per_tensor_quant_triton`` asks torch.cuda for the warp size before launching,
so it cannot run on the CPU interpreter.

Edge cases the builders draw from the case's seed: empty experts, an expert with masked_m = m_max,
slabs taller than every expert (rows past masked_m untouched), output widths of exactly one quant
group and of odd group counts, rows of all-equal values, rows of tiny values (amax below the 1e-10
floor), rows of large values (past the SwiGLU clamp limit; past the fp8 range under a per-tensor
scale), and column-major (DeepEP) x_scale strides.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from reference import quant as ref
from reference._checks import FP8_DTYPE, FP8_MAX

from ..cases import CaseParams, make_generator
from ..costs import Cost
from ..mutants import Mutant
from ..opspec import BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, SglangBinding, buffer, returned, set_arg
from .preprocess import case_ids

KERNELS = "optimized.quant"
REFERENCE = "reference.quant"
# gpt-oss's SwiGLU constants (SGLang passes them as gemm1_alpha / gemm1_clamp_limit)
SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0
# float32 exp and rounding in the activation: a few float32 ulps of |y|, counted as 8 terms
_ACT_TERMS = 8
_DS_EP8 = tuple(BenchAnchor(t, 8, 256, 31, 7168, 2048, f"DeepSeek-V3 EP8 T={t}") for t in (1, 64, 4096))
# the interpreter runs each program in Python: at most this many experts of a case's rank, rows
# per expert and quant groups per row (the packed op: two words)
_CPU_EXPERTS, _CPU_ROWS, _CPU_GROUPS = 4, 24, 4
# rows of a GPU case's slab (E x m_max) at most: all slots on one expert of many stays in memory
_GPU_SLAB_ROWS = 1 << 17
PREFILL_SLOTS = 4096   # tokens of all ranks from which a GPU case's slab has the fixed capacity
_ACT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _int(gen, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen, device=gen.device))


def _on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _group_size(p: CaseParams, gen, device) -> int:
    """SGLang's quant group: 128 (DeepSeek's) at bench widths and mostly on the GPU; smaller powers of
    two elsewhere (the kernels' tiling of several groups per block), small on the interpreter."""
    if p.inter >= 512:
        return 128
    return (16, 16, 32)[_int(gen, 0, 2)] if not _on_cuda(device) else (32, 64, 128, 128)[_int(gen, 0, 3)]


def _group_count(p: CaseParams, gs: int, device, multiple: int = 1) -> int:
    """G = ceil(inter / gs) (one group for small widths: the group's edge), rounded up to
    ``multiple``; capped on the interpreter."""
    g = max(1, -(-p.inter // gs))
    if not _on_cuda(device):
        g = min(g, 2 * multiple if multiple > 1 else _CPU_GROUPS)
    return -(-g // multiple) * multiple


def masked_layout(p: CaseParams, gen, device):
    """(masked_m int32 [E], m_max, tokens of all ranks): rows per local expert from the routing of
    every rank's tokens (a DeepEP low-latency rank's slab receives the slots of all ranks' tokens
    routed to its experts: the case's T tokens on each of min(8, experts / E_local) ranks; -1 ids
    dropped), E capped on the interpreter and the slab's rows everywhere; from the seed, an expert
    emptied, the slab exactly as tall as the fullest expert (masked_m = m_max) or taller."""
    ranks = max(1, min(8, p.experts // max(1, p.e_local)))
    ids = case_ids(dataclasses.replace(p, tokens=p.tokens * ranks), gen).reshape(-1).to(torch.int64) - p.start_expert
    E = p.e_local if _on_cuda(device) else min(p.e_local, _CPU_EXPERTS)
    counts = torch.bincount(ids[(ids >= 0) & (ids < E)], minlength=E)[:E]
    counts = counts.clamp(max=max(1, _GPU_SLAB_ROWS // max(E, 1)) if _on_cuda(device) else _CPU_ROWS)
    if E and _int(gen, 0, 2) == 0:
        counts[_int(gen, 0, E - 1)] = 0                                            # an empty expert
    top = int(counts.max()) if E else 0
    mode = _int(gen, 0, 3)
    m_max = top if mode < 2 else top + _int(gen, 1, 5) if mode == 2 else -(-(top + 1) // 16) * 16
    if _on_cuda(device) and E and p.tokens * ranks >= PREFILL_SLOTS:
        # a prefill-sized slab: the fixed capacity DeepEP allocates (the row cap), not one that follows
        # the seed's fullest expert, so the bench can verify its timed case on another seed
        m_max = max(1, _GPU_SLAB_ROWS // E)
    if m_max == 0 and mode != 0:
        m_max = 1                                                                   # a slab of no live row
    return counts.to(device=device, dtype=torch.int32), m_max, p.tokens * ranks


def _activation_input(p: CaseParams, gen, E: int, m_max: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """input [E, m_max, 2N]: random rows, and from the seed rows of all-equal, tiny (amax under
    the 1e-10 floor or near it) or large values (past the SwiGLU clamp limit)."""
    x = torch.randn(E, m_max, 2 * n, generator=gen, device=device) * 2.0
    kind = torch.randint(0, 8, (E, m_max, 1), generator=gen, device=device)
    const = torch.randn(E, m_max, 1, generator=gen, device=device) * 3.0
    x = torch.where(kind == 1, const.expand_as(x), x)
    x = torch.where(kind == 2, x * 1e-6, x)
    x = torch.where(kind == 3, x * 1e-3, x)
    x = torch.where(kind == 4, x * 40.0, x)
    return x.to(dtype).contiguous()


def _act_dtype(p: CaseParams) -> torch.dtype:
    return _ACT_DTYPES.get(p.dtype, torch.bfloat16)


# ----------------------------------------------------------------------------- builders

def build_silu_and_mul_masked(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    masked_m, m_max, _ = masked_layout(p, gen, device)
    E = masked_m.numel()
    n = max(1, p.inter if _on_cuda(device) else min(p.inter, 96))
    x = _activation_input(p, gen, E, m_max, n, torch.bfloat16, device)
    args = dict(input=x, output=torch.empty(E, m_max, n, dtype=torch.bfloat16, device=device), masked_m=masked_m)
    return Sample(p, args, ("input", "output"), None)


def _post_quant_args(p: CaseParams, device, packed: bool) -> Sample:
    gen = make_generator(p, device)
    masked_m, m_max, tokens = masked_layout(p, gen, device)
    E = masked_m.numel()
    gs = _group_size(p, gen, device)
    G = _group_count(p, gs, device, 4 if packed else 1)
    n = gs * G
    act = _act_dtype(p)
    swiglu = p.dtype == "swiglu"
    ue8m0 = packed or p.dtype in ("ue8m0", "swiglu")
    x = _activation_input(p, gen, E, m_max, n, act, device)
    # (the runner hands candidates contiguous output buffers: strided scales are tested directly)
    scale = torch.empty((E, G // 4, m_max) if packed else (E, m_max, G), dtype=torch.int32 if packed else torch.float32,
                        device=device)
    args = dict(input=x, output=torch.empty(E, m_max, n, dtype=FP8_DTYPE, device=device), output_scale=scale,
                quant_group_size=gs, masked_m=masked_m, scale_ue8m0=ue8m0,
                gemm1_alpha=SWIGLU_ALPHA if swiglu else 0.0, gemm1_clamp_limit=SWIGLU_LIMIT if swiglu else 0.0,
                num_real_tokens=tokens if packed else None, topk=p.topk if packed else None)
    return Sample(p, args, ("input",), None)


def build_post_quant(p: CaseParams, device) -> Sample:
    return _post_quant_args(p, device, packed=False)


def build_post_quant_packed(p: CaseParams, device) -> Sample:
    return _post_quant_args(p, device, packed=True)


def build_per_tensor_quant(p: CaseParams, device) -> Sample:
    """A static scale near amax(y) / 448 (0.6 to 1.2 times it: some values past the fp8 range,
    clamped), one element, or E of which the kernel reads the first."""
    gen = make_generator(p, device)
    masked_m, m_max, _ = masked_layout(p, gen, device)
    E = masked_m.numel()
    n = max(1, p.inter if _on_cuda(device) else min(p.inter, 96))
    x = _activation_input(p, gen, E, m_max, n, torch.bfloat16, device)
    g, u = x[..., :n].float(), x[..., n:].float()
    amax = float((g * torch.sigmoid(g) * u).abs().max()) if x.numel() else 1.0
    factors = 0.6 + 0.6 * torch.rand(E if _int(gen, 0, 1) and E else 1, generator=gen, device=device)
    scale = (max(amax, 1e-6) / FP8_MAX * factors).to(torch.float32)
    args = dict(input=x, output=torch.empty(E, m_max, n, dtype=FP8_DTYPE, device=device), masked_m=masked_m,
                scale=scale)
    return Sample(p, args, ("input",), None)


def build_per_token_to_per_tensor(p: CaseParams, device) -> Sample:
    """x [E, m, K] fp8 with per-(row, 128-group) scales, row-major or DeepEP's column-major; an
    output scale at or above the largest dequantised magnitude / 448 (SGLang casts unclamped)."""
    gen = make_generator(p, device)
    masked_m, m_max, _ = masked_layout(p, gen, device)
    E = masked_m.numel()
    # the interpreter: two groups, one when H % 3 == 0 (a row of one group)
    G = max(1, -(-p.hidden // 128)) if _on_cuda(device) else 1 if p.hidden % 3 == 0 else 2
    k = 128 * G
    x = (torch.randn(E, m_max, k, generator=gen, device=device) * 100.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    s = torch.rand(E, m_max, G, generator=gen, device=device) * 0.05 + 1e-3
    if _int(gen, 0, 1):
        s = s.transpose(1, 2).contiguous().transpose(1, 2)
    deq = float((x.float().view(E, m_max, G, 128) * s[..., None]).abs().max()) if x.numel() else 1.0
    out_scale = torch.tensor([max(deq, 1e-3) / FP8_MAX * (1.0 + 0.5 * float(torch.rand(1, generator=gen,
                                                                                       device=device)))],
                             dtype=torch.float32, device=device)
    args = dict(x=x, x_scale=s, masked_m=masked_m, output_scale=out_scale,
                output=torch.empty(E, m_max, k, dtype=FP8_DTYPE, device=device),
                expected_rows=None if _int(gen, 0, 1) else max(1, p.tokens * p.topk // max(1, p.experts)))
    return Sample(p, args, ("x", "x_scale"), None)


_LAYOUTS = {  # dtype (the row's scale layout) -> (column_major_scales, scale_tma_aligned, scale_ue8m0)
    "row_major": (False, False, False), "column_major": (True, False, False), "tma_aligned": (True, True, False),
    "ue8m0": (False, False, True), "ue8m0_packed": (True, True, True),
}


def build_group_quant(p: CaseParams, device) -> Sample:
    """x [T, K] (bf16, sometimes fp16 or fp32) with K = group * G; the layout from the row's dtype."""
    gen = make_generator(p, device)
    gs = _group_size(dataclasses.replace(p, inter=p.hidden), gen, device)
    G = _group_count(dataclasses.replace(p, inter=p.hidden), gs, device)
    if G == 1 and p.dtype == "row_major":
        G = 2          # one group of the whole row with no option is SGLang's per-token op
    dtype = (torch.bfloat16, torch.bfloat16, torch.float16, torch.float32)[_int(gen, 0, 3)]
    rows = p.tokens if _on_cuda(device) else min(p.tokens, 24)
    x = _activation_input(p, gen, 1, rows, gs * G // 2, dtype, device)[0]           # [rows, gs * G]
    col, tma, ue8m0 = _LAYOUTS[p.dtype]
    args = dict(x=x, group_size=gs, eps=1e-10, column_major_scales=col, scale_tma_aligned=tma, scale_ue8m0=ue8m0,
                fuse_silu_and_mul=False, masked_m=None)
    return Sample(p, args, ("x",), None)


# ----------------------------------------------------------------------------- costs

def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _live_fraction(args) -> float:
    m = args["masked_m"]
    slab = args["input"].shape[1] * m.numel() if "input" in args else args["x"].shape[1] * m.numel()
    return float(m.sum()) / slab if slab else 0.0


def masked_act_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """The live rows read (2N wide) and written (N wide, with their scales)."""
    f = _live_fraction(args)
    out = [args[k] for k in ("output", "output_scale") if k in args]
    return Cost(int(f * _nbytes(args["input"], *out)), 0, f"{int(args['masked_m'].sum())} live rows read and written")


def requant_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    f = _live_fraction(args)
    return Cost(int(f * _nbytes(args["x"], args["x_scale"], args["output"])), 0,
                f"{int(args['masked_m'].sum())} live rows read and written")


def group_quant_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    x = args["x"]
    return Cost(_nbytes(x) + x.numel() + 4 * (x.numel() // args["group_size"]), 0, "x read, codes and scales written")


# ----------------------------------------------------------------------------- records

# fp8 codes within one e4m3 step; float32 scales by the tolerance rule (module docstring)
_CODES = OutputSpec("output", buffer("output"), "fp8_code", "expert")
_SCALES = OutputSpec("output_scale", buffer("output_scale"), "float", "expert", reduction_len=lambda p: _ACT_TERMS)
_PACKED = OutputSpec("output_scale", buffer("output_scale"), "exact", "expert")
_POST_QUANT_ERRORS = (
    ErrorInput("bfloat16", set_arg("quant_group_size", lambda a: a["output"].shape[2] + 1), ValueError,
               "quant_group_size"),
    ErrorInput("bfloat16", set_arg("masked_m", lambda a: a["masked_m"].float()), TypeError, "masked_m"),
    ErrorInput("bfloat16", set_arg("output", lambda a: a["output"].to(torch.bfloat16)), TypeError, "output"),
)


def _width_label(p: CaseParams) -> str:
    return f"N={p.inter}"


RECORDS = (
    OpSpec("silu_and_mul_masked_fwd", ref.silu_and_mul_masked_fwd, build_silu_and_mul_masked,
           # float32 SiLU and product, one rounding to bf16; exp's error as in the activation record
           (OutputSpec("output", buffer("output"), "float", "expert", reduction_len=lambda p: _ACT_TERMS),),
           ("bfloat16",), REFERENCE, masked_act_cost, bench_anchors=_DS_EP8, shape_label=_width_label,
           sglang=SglangBinding(("silu_and_mul_masked_fwd",)),
           error_inputs=(ErrorInput("bfloat16", set_arg("masked_m", lambda a: a["masked_m"][1:]), ValueError,
                                    "masked_m"),
                         ErrorInput("bfloat16", set_arg("output", lambda a: a["output"].float()), TypeError,
                                    "output"))),
    OpSpec("silu_and_mul_masked_post_quant_fwd", ref.silu_and_mul_masked_post_quant_fwd, build_post_quant,
           (_CODES, _SCALES), ("bfloat16", "float32", "ue8m0", "swiglu"), KERNELS, masked_act_cost,
           bench_anchors=_DS_EP8, bench_dtype="ue8m0", shape_label=_width_label,
           sglang=SglangBinding(("silu_and_mul_masked_post_quant_fwd",)), error_inputs=_POST_QUANT_ERRORS,
           case_cost=1.9),
    OpSpec("silu_and_mul_masked_post_quant_packed_fwd", ref.silu_and_mul_masked_post_quant_packed_fwd,
           build_post_quant_packed, (_CODES, _PACKED), ("bfloat16", "swiglu"), KERNELS, masked_act_cost,
           bench_anchors=_DS_EP8, shape_label=_width_label,
           sglang=SglangBinding(("silu_and_mul_masked_post_quant_fwd",)),
           error_inputs=(ErrorInput("bfloat16", set_arg("num_real_tokens", None), TypeError, "num_real_tokens"),
                         ErrorInput("bfloat16", set_arg("scale_ue8m0", False), ValueError, "scale_ue8m0")),
           case_cost=1.6),
    OpSpec("silu_and_mul_masked_post_per_tensor_quant_fwd", ref.silu_and_mul_masked_post_per_tensor_quant_fwd,
           build_per_tensor_quant, (_CODES,), ("bfloat16",), REFERENCE, masked_act_cost, bench_anchors=_DS_EP8,
           shape_label=_width_label, sglang=SglangBinding(("silu_and_mul_masked_post_per_tensor_quant_fwd",)),
           error_inputs=(ErrorInput("bfloat16", set_arg("scale", lambda a: a["scale"].double()), TypeError,
                                    "scale"),)),
    OpSpec("fp8_per_token_to_per_tensor_quant_triton", ref.fp8_per_token_to_per_tensor_quant_triton,
           build_per_token_to_per_tensor, (_CODES,), ("fp8",), REFERENCE, requant_cost, bench_anchors=_DS_EP8,
           bench_dtype="fp8", sglang=SglangBinding(("fp8_per_token_to_per_tensor_quant_triton",)),
           error_inputs=(ErrorInput("fp8", set_arg("output_scale", lambda a: a["output_scale"].repeat(2)), ValueError,
                                    "output_scale"),
                         ErrorInput("fp8", set_arg("x", lambda a: a["x"].float()), TypeError, "x"))),
    OpSpec("sglang_per_token_group_quant_fp8", ref.sglang_per_token_group_quant_fp8, build_group_quant,
           (OutputSpec("output_q", returned(0), "fp8_code", "token"),
            # float32 scales: amax / 448 of the input itself (no activation): one rounding
            OutputSpec("output_s", returned(1), "float", "token")),
           tuple(_LAYOUTS), REFERENCE, group_quant_cost, bench_anchors=_DS_EP8, bench_dtype="column_major",
           shape_label=lambda p: f"K={p.hidden}",
           sglang=SglangBinding(("_per_token_group_quant_8bit_raw",)),
           error_inputs=(ErrorInput("row_major", set_arg("group_size", lambda a: a["x"].shape[1] + 1), ValueError,
                                    "group_size"),
                         ErrorInput("row_major", set_arg("eps", 1e-4), ValueError, "eps"))),
)


# ----------------------------------------------------------------------------- mutants

# Left out as equivalent: a missing clamp before an fp8 cast (torch's cast and the GPU's
# cvt.rn.satfinite both saturate at +-448 already) and, for the dynamic group scales, any clamp at
# all (y / (amax / 448) cannot pass 448 by more than a rounding, which the cast rounds back to 448).
_M = Mutant
_UE8M0 = ("ue8m0", "swiglu")
MUTANTS = (
    # --- silu_and_mul_masked_post_quant_fwd and its packed form (our kernels) --------------------
    _M("post_quant_ue8m0_not_rounded_up", "silu_and_mul_masked_post_quant_fwd", KERNELS,
       "expo = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)",
       "expo = ((bits >> 23) & 0xFF) + 0 * ((bits & 0x7FFFFF) != 0).to(tl.int32)",
       "the UE8M0 scale rounded DOWN to a power of two (mantissa dropped): values past 448 saturate",
       dtypes=_UE8M0),
    _M("post_quant_amax_over_block", "silu_and_mul_masked_post_quant_fwd", KERNELS,
       "amax = tl.maximum(tl.max(tl.abs(y3), axis=2), 1e-10)",
       "amax = tl.maximum(tl.broadcast_to(tl.max(tl.max(tl.abs(y3), axis=2), axis=1)[:, None], (BLOCK_M, G)), 1e-10)",
       "amax over the whole block of groups (several groups of the row) instead of each group"),
    _M("post_quant_gate_clamp_missing", "silu_and_mul_masked_post_quant_fwd", KERNELS,
       "gate = tl.minimum(gate, CLAMP_LIMIT)",
       "gate = gate",
       "the SwiGLU variant's gate clamp (gemm1_clamp_limit) missing", dtypes=("swiglu",)),
    _M("post_quant_rows_past_masked_m", "silu_and_mul_masked_post_quant_fwd", KERNELS,
       "        rmask = rows < live\n",
       "        rmask = rows < (live + BLOCK_M - 1) // BLOCK_M * BLOCK_M\n",
       "the last row tile unmasked: rows past masked_m[e] (up to the tile's end) quantised and written"),
    _M("packed_exponents_byte_order", "silu_and_mul_masked_post_quant_packed_fwd", KERNELS,
       "return tl.sum(expo << (tl.arange(0, 4) * 8)[None, :], axis=1)",
       "return tl.sum(expo << (24 - tl.arange(0, 4) * 8)[None, :], axis=1)",
       "the four UE8M0 bytes packed big-endian (group 4c in the top byte)"),
    _M("packed_scale_token_major", "silu_and_mul_masked_post_quant_packed_fwd", KERNELS,
       "tl.store(scale_ptr + e * sc_s0 + pid_n * sc_s1 + r64 * sc_s2, _pack_exponents(scale), mask=rmask)",
       "tl.store(scale_ptr + e * sc_s0 + r64 * sc_s1 + pid_n * sc_s2, _pack_exponents(scale), mask=rmask)",
       "packed scales stored token-major ([E, m_max, G/4] addressing) instead of DeepGEMM's MN-major"),
    _M("packed_ue8m0_not_rounded_up", "silu_and_mul_masked_post_quant_packed_fwd", KERNELS,
       "expo = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)",
       "expo = ((bits >> 23) & 0xFF) + 0 * ((bits & 0x7FFFFF) != 0).to(tl.int32)",
       "the packed exponents of scales rounded DOWN to a power of two: values past 448 saturate"),
    _M("packed_rows_past_masked_m", "silu_and_mul_masked_post_quant_packed_fwd", KERNELS,
       "        rmask = rows < live\n",
       "        rmask = rows < (live + BLOCK_M - 1) // BLOCK_M * BLOCK_M\n",
       "the last row tile unmasked in the packed layout: rows past masked_m[e] and their exponent words "
       "written"),
    # --- ops whose `ours` is the reference: patches of the reference -------------------------------
    _M("silu_and_mul_masked_gate_up_swapped", "silu_and_mul_masked_fwd", REFERENCE,
       "    output[live] = (ref_silu(rows[:, :n]) * rows[:, n:]).to(output.dtype)",
       "    output[live] = (ref_silu(rows[:, n:]) * rows[:, :n]).to(output.dtype)",
       "gate and up halves swapped"),
    _M("per_tensor_scale_not_inverted", "silu_and_mul_masked_post_per_tensor_quant_fwd", REFERENCE,
       "    inv = 1.0 / scale.reshape(-1)[0].to(acc)",
       "    inv = scale.reshape(-1)[0].to(acc)",
       "the static scale multiplied instead of divided by"),
    _M("requant_first_group_scale", "fp8_per_token_to_per_tensor_quant_triton", REFERENCE,
       "    dequant = (rows * x_scale[live][:, :, None]).view(-1, k)",
       "    dequant = (rows * x_scale[live][:, :1, None]).view(-1, k)",
       "every group of a row dequantised with the row's first group scale"),
    _M("requant_rows_past_masked_m", "fp8_per_token_to_per_tensor_quant_triton", REFERENCE,
       "    live = _rows_below(masked_m, m)\n    rows = x[live]",
       "    live = _rows_below(masked_m + 1, m)\n    rows = x[live]",
       "one row past masked_m[e] requantised and written"),
    _M("group_quant_ue8m0_not_rounded_up", "sglang_per_token_group_quant_fp8", REFERENCE,
       "        scale = ceil_to_ue8m0(scale)",
       "        scale = scale",
       "the UE8M0 scale not rounded up to a power of two", dtypes=("ue8m0", "ue8m0_packed")),
    _M("group_quant_packed_byte_order", "sglang_per_token_group_quant_fp8", REFERENCE,
       "    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=exponent.device)",
       "    shifts = torch.tensor([24, 16, 8, 0], dtype=torch.int64, device=exponent.device)",
       "packed UE8M0 bytes in the wrong (big-endian) order", dtypes=("ue8m0_packed",)),
    _M("group_quant_amax_over_row", "sglang_per_token_group_quant_fp8", REFERENCE,
       "    q, scale = quantize_groups(rows, group_size, scale_ue8m0)",
       "    q, scale = quantize_groups(rows, rows.shape[1], scale_ue8m0)\n"
       "    scale = scale.expand(-1, rows.shape[1] // group_size)",
       "amax over the whole row instead of each group (one scale repeated over the row's groups)"),
)
