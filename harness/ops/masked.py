"""Records of DeepGEMM's masked layout and the remaining contiguous-layout helpers (SGLang 0.5.23's
``ep_moe_kernels.py``): ``fused_moe_dispatch_index``, ``moe_ep_deepgemm_preprocess``,
``expand_to_masked_slab``, ``masked_slab_to_expand``, ``scale_expanded_rows_`` and
``tma_align_input_scale``; contracts in reference/deepgemm_layout.py.

Only the first masked_m[e] rows of an expert's slab are defined: the slab outputs are
returned from a fresh allocation, so their other rows are not compared (OutputSpec.defined);
the expanded rows of masked_slab_to_expand outside the experts' segments likewise. Rows that
the dispatch index places with atomics are compared order-free through ``src2dst``
(harness.canonical), as the contiguous layout's scatter's are. Our Triton kernels: optimized/masked.py (the
dispatch index and the masked preprocess with its fused quantisation); ``ours`` for the
others is the reference (host-side, no graph probe), and their mutants patch it.
``get_tma_aligned_size`` returns an int, not a tensor: tests/test_masked_records.py compares
it with SGLang's; the record of tma_align_input_scale checks the values it lays out.

Edge cases the builders draw from the case's seed: m_max exactly the largest expert's count
(an expert with exactly m_max rows), that count rounded up to 128 * n, SGLang's
(T // 256 + 1) * 256; an expert given exactly 128 * n slots (cuda, T >= 128); empty experts,
all tokens on one expert and -1 ids (the case's routing); hidden sizes of exactly one quant
group and of four (the packed minimum); slab capacities below a segment (masked_slab_to_expand
clamps), column-major scales, absent weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from reference import deepgemm_layout as ref
from reference._checks import FP8_DTYPE

from ..cases import CaseParams, make_generator, randn
from ..costs import Cost
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, ID_DTYPES, OpSpec, OutputSpec, Precondition, Sample, SglangBinding,
                      activation_dtype, in_place, returned, set_arg)
from .deepgemm import QUANT_BLOCK, _alignment, _int, _scatter_data
from .preprocess import case_ids

KERNELS = "optimized.masked"
REFERENCE = "reference.deepgemm_layout"
DS_BLOCK_K = 128
# offsets past 2**31 elements: m_max = 40192 rows of 7168 per expert, 10 local experts (2.9e9
# elements): every row of experts 8 and 9 starts past 2**31 (with 8, only rows past 18,249 of the
# last expert did, which uniform routing never fills: the int32 mutant survived on an H100); the
# builder caps E_local at 10 so that three slabs fit on an 80 GB card (128 experts: every rank the
# large preset draws, E or E / 8 of them, holds at least 10)
_LARGE = dict(tokens=40000, topk=8, experts=128, hidden=7168, inter=64)
_LARGE_E_LOCAL = 10
# each local expert is a slab of m_max >= 256 rows: the interpreter's cases keep a few
_INTERPRETER_E_LOCAL = 6
_DS_EP8 = tuple(BenchAnchor(t, 8, 256, 31, 7168, 2048, f"DeepSeek-V3 EP8 T={t}") for t in (1, 64, 4096))


def _local_ids(p: CaseParams, gen, e_local: int) -> torch.Tensor:
    """The case's ids [T, K] (global, -1 where drawn) with repeats within a token made -1 (a
    real top-k picks distinct experts; SGLang's m_max relies on it). From the seed, on a GPU
    case of T >= 128: the rank's first expert gets exactly 128 * n slots (one per token of the
    first 128 * n tokens)."""
    ids = case_ids(p, gen).to(torch.int64)
    if ids.numel():
        same = ids[:, :, None] == ids[:, None, :]
        earlier = torch.ones(p.topk, p.topk, dtype=torch.bool, device=ids.device).tril(-1)
        ids = torch.where((same & earlier).any(-1) & (ids >= 0), -1, ids)
    if ids.device.type == "cuda" and p.tokens >= 128 and e_local and _int(gen, 0, 2) == 0:
        first = p.start_expert
        ids = torch.where(ids == first, -1, ids)
        n = 128 * _int(gen, 1, p.tokens // 128)
        ids[:n, 0] = first
    return ids.to(ID_DTYPES[p.index_dtype])


def _capacity(gen, largest: int, sglang_m_max: int) -> int:
    """m_max from the seed: exactly the largest count, rounded up to 128 * n, or SGLang's."""
    mode = _int(gen, 0, 2)
    if mode == 0:
        return max(largest, 1)
    if mode == 1:
        return max(-(-largest // 128), 1) * 128
    return max(sglang_m_max, largest)


def _local_counts(ids: torch.Tensor, first: int, e_local: int) -> torch.Tensor:
    local = ids.reshape(-1).to(torch.int64) - first
    return torch.bincount(local[(local >= 0) & (local < e_local)], minlength=e_local)


def _slab_rows(masked_m: torch.Tensor, shape) -> torch.Tensor:
    """bool of ``shape`` ([E, m_max, ...]): True on rows j < masked_m[e]."""
    rows = torch.arange(shape[1], device=masked_m.device)[None, :] < masked_m.to(torch.int64)[:, None]
    return rows.view(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape)


# ----------------------------------------------------------------------------- builders

def build_dispatch_index(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = _local_ids(p, gen, p.e_local)
    largest = int(_local_counts(ids, p.start_expert, p.e_local).max()) if p.e_local else 0
    m_max = _capacity(gen, largest, (p.tokens // ref.DEEPGEMM_BLOCK_M + 1) * ref.DEEPGEMM_BLOCK_M)
    return Sample(p, dict(topk_ids=ids, num_local_experts=p.e_local, m_max=m_max, expert_start=p.start_expert),
                  (), ids)


def _quant_shape(p: CaseParams, device):
    """(H, block_k, packed) of a preprocess case: fp8 H is whole groups of block_k (128 on the
    GPU, 32 on the interpreter), from one group up; packed UE8M0 needs four groups per int32.
    bf16 output takes any H."""
    block_k = DS_BLOCK_K if torch.device(device).type == "cuda" else 32
    if p.dtype == "bfloat16":
        return max(p.hidden, 1), block_k, False
    packed = p.dtype == "fp8_ue8m0"
    groups = max(1, p.hidden // block_k)
    if packed:
        groups = -(-groups // 4) * 4
    return groups * block_k, block_k, packed


def build_preprocess(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    e_local = min(p.e_local, _LARGE_E_LOCAL) if p.tokens * p.hidden > 2 ** 28 else \
        p.e_local if torch.device(device).type == "cuda" else min(p.e_local, _INTERPRETER_E_LOCAL)
    ids = _local_ids(p, gen, e_local)
    H, block_k, packed = _quant_shape(p, device)
    x = randn((p.tokens, H), gen, torch.bfloat16, scale=_int(gen, 1, 64) / 8)
    out_dtype = torch.bfloat16 if p.dtype == "bfloat16" else FP8_DTYPE
    args = dict(topk_ids=ids, num_local_experts=e_local, hidden_states=x, top_k=p.topk,
                block_shape=[DS_BLOCK_K, block_k], output_dtype=out_dtype, use_mxfp8=packed,
                expert_start=p.start_expert, deepgemm_scale_ue8m0=False, cap_m_max=False)
    return Sample(p, args, (), ids)


def _expanded_psum(p: CaseParams, gen, device):
    """(local ids, counts, DeepEP's expanded psum int32, alignment) of a case."""
    ids = case_ids(p, gen).to(torch.int64) - p.start_expert
    ids = torch.where((ids >= 0) & (ids < p.e_local), ids, -1)
    counts = _local_counts(ids, 0, p.e_local).tolist()
    align = _alignment(p, device)
    psum, prev = [], 0
    for c in counts:
        prev = -(-prev // align) * align + c
        psum.append(prev)
    return ids, counts, torch.tensor(psum, dtype=torch.int32, device=device), align


def build_expand_to_masked_slab(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids, counts, psum, align = _expanded_psum(p, gen, device)
    end = int(psum[-1]) if p.e_local else 0
    n_rows = -(-end // align) * align + _int(gen, 0, 2)
    x, scale, _ = _scatter_data(p, gen, n_rows, device)
    if _int(gen, 0, 1):
        scale = scale.t().contiguous().t()                            # column-major scales (any strides)
    max_m = _capacity(gen, max(counts, default=0), max(counts, default=0) + _int(gen, 1, 5))
    args = dict(recv_x=x, recv_x_scale=scale, psum_num_recv_tokens_per_expert=psum, num_local_experts=p.e_local,
                max_m=max_m, expert_alignment=align)
    return Sample(p, args, (), ids)


def build_masked_slab_to_expand(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids, counts, psum, align = _expanded_psum(p, gen, device)
    largest = max(counts, default=0)
    # a capacity below the largest segment from the seed: the contract clamps count to max_m
    max_m = max(1, largest - _int(gen, 1, 3)) if largest > 1 and _int(gen, 0, 3) == 0 else \
        _capacity(gen, largest, largest + 3)
    segments = ref._expanded_segments(psum.tolist(), align, max_m)
    reach = max((s + c for s, c in segments), default=0)
    end = int(psum[-1]) if p.e_local else 0
    total = max(reach, -(-end // align) * align) if _int(gen, 0, 1) else reach
    act = activation_dtype(p.dtype)
    weights = None if _int(gen, 0, 3) == 0 else torch.rand(total, generator=gen, device=device) * 0.95 + 0.05
    args = dict(input_tensor=randn((p.e_local, max_m, max(p.hidden, 1)), gen, act),
                psum_num_recv_tokens_per_expert=psum, total_expanded_tokens=total, expert_alignment=align,
                topk_weights=weights)
    return Sample(p, args, (), ids)


def build_scale_rows(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    rows = p.tokens * p.topk
    width = max(1, p.hidden // 16)
    w = torch.rand(rows, generator=gen, device=device) * 0.95 + 0.05
    if _int(gen, 0, 3) == 0:
        w = w.to(torch.bfloat16)                                     # SGLang promotes: one float32 product
    args = dict(x=torch.rand(rows, width, generator=gen, device=device) * 2 + 0.01, row_weights=w)
    return Sample(p, args, (), None)


def build_tma_align(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    kb = max(1, -(-p.hidden // 128)) + _int(gen, 0, 2)
    if p.dtype == "int32":
        s = torch.randint(-2 ** 31, 2 ** 31 - 1, (p.tokens, kb), generator=gen, device=device,
                          dtype=torch.int64).to(torch.int32)
    else:
        s = torch.rand(p.tokens, kb, generator=gen, device=device) * 0.5 + 0.01
    if _int(gen, 0, 1):
        s = s.t().contiguous().t()                                    # column-major already
    return Sample(p, dict(input_scale=s), (), None)


# ----------------------------------------------------------------------------- outputs and costs

def _defined_rows_of(output: str, masked_m: str):
    """OutputSpec.defined: rows j < masked_m[e] of the [E, m_max, ...] output."""
    def defined(sample, ref_out):
        return _slab_rows(ref_out[masked_m], ref_out[output].shape)
    return defined


def _expanded_defined(sample, ref_out):
    """Rows [start[e], start[e] + count(e)) of masked_slab_to_expand's output."""
    a = sample.args
    out = ref_out["output"]
    mask = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    for start, count in ref._expanded_segments(a["psum_num_recv_tokens_per_expert"].tolist(), a["expert_alignment"],
                                               a["input_tensor"].shape[1]):
        mask[start:start + count] = True
    return mask[:, None].expand(out.shape)


def dispatch_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    n = args["topk_ids"].numel()
    return Cost(n * args["topk_ids"].element_size() + 4 * n + 4 * args["num_local_experts"], 0,
                f"{n} ids read, {n} src2dst entries written")


def preprocess_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each token row read once; each placed slot's row (and scales) written once."""
    x, ids = args["hidden_states"], args["topk_ids"]
    first, e_local = args["expert_start"], args["num_local_experts"]
    local = ids.to(torch.int64) - first
    placed = int(((local >= 0) & (local < e_local)).sum())
    H = x.shape[1]
    out_row = H * (2 if args["output_dtype"] == torch.bfloat16 else 1)
    scale_row = 0 if args["output_dtype"] == torch.bfloat16 else \
        (H // args["block_shape"][1]) * (1 if args["use_mxfp8"] else 4)
    return Cost(x.numel() * x.element_size() + placed * (out_row + scale_row) + 12 * ids.numel(), 0,
                f"{x.shape[0]} token rows read, {placed} slab rows written")


def expand_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    x = args["recv_x"]
    rows = int(torch.diff(args["psum_num_recv_tokens_per_expert"].to(torch.int64), prepend=torch.zeros(
        1, dtype=torch.int64, device=x.device)).clamp_min(0).sum()) if args["num_local_experts"] else 0
    row = x.shape[1] * x.element_size()
    return Cost(2 * rows * row, 0, f"about {rows} rows copied")


def to_expand_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    x = args["input_tensor"]
    rows = args["total_expanded_tokens"]
    row = x.shape[2] * x.element_size()
    return Cost(2 * rows * row, 0, f"up to {rows} rows copied")


def scale_rows_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    x = args["x"]
    return Cost(2 * x.numel() * 4 + x.shape[0] * args["row_weights"].element_size(), 0, f"{x.shape[0]} rows scaled")


def tma_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    s = args["input_scale"]
    return Cost(2 * s.numel() * s.element_size(), 0, f"{s.shape[0]} x {s.shape[1]} scales laid out")


# ----------------------------------------------------------------------------- records

_SLAB_DTYPES = ("float32", "bfloat16", "fp8", "fp8_ue8m0")

# SGLang 0.5.23 copies the scales of any recv_x that is not bf16 (float32 too) and cannot compile a
# zero-width scale (tl.arange(0, 0)): H < 128 gives float32 data no quant group (found on an H100).
SCALE_HAS_A_COLUMN = Precondition(
    "expand_scale_has_a_column", "recv_x not bf16: recv_x_scale has at least one column (H >= 128 for float32)",
    holds=lambda p: p.dtype != "float32" or p.hidden >= QUANT_BLOCK,
    fit=lambda p: p if p.dtype != "float32" else dataclasses.replace(p, hidden=max(p.hidden, QUANT_BLOCK)))


RECORDS = (
    OpSpec("fused_moe_dispatch_index", ref.fused_moe_dispatch_index, build_dispatch_index,
           (OutputSpec("masked_m", returned(0), "exact", "expert"),
            OutputSpec("src2dst", returned(1), "row_index", "slot")),
           ("int32",), KERNELS, dispatch_cost, invalid_ids=True, bench_anchors=_DS_EP8, bench_dtype="int32",
           shape_label=lambda p: "", sglang=SglangBinding(("fused_moe_dispatch_index",)),
           error_inputs=(
               ErrorInput("int32", set_arg("topk_ids", lambda a: a["topk_ids"].double()), TypeError, "topk_ids"),
               ErrorInput("int32", set_arg("m_max", 0), ValueError, "m_max"),
           ), case_cost=1.8),
    OpSpec("moe_ep_deepgemm_preprocess", ref.moe_ep_deepgemm_preprocess, build_preprocess,
           (OutputSpec("masked_m", returned(0), "exact", "expert"),
            OutputSpec("src2dst", returned(2), "row_index", "slot"),
            # bf16 rows: copies, exact. fp8: scale = amax / 448 is one rounding, but not the same one
            # everywhere (torch on a GPU multiplies by a rounded 1/448, SGLang's Triton divides
            # approximately): float32 scales by the tolerance rule (a few ulps), codes within one e4m3
            # step (harness.runner); packed UE8M0 exponents are integers, exact (found on an H100)
            OutputSpec("gateup_input", returned(3), "exact_or_fp8_code", "expert", index="src2dst",
                       defined=_defined_rows_of("gateup_input", "masked_m")),
            OutputSpec("gateup_input_scale", returned(4), "float", "expert", index="src2dst",
                       defined=_defined_rows_of("gateup_input_scale", "masked_m"))),
           ("bfloat16", "fp8", "fp8_ue8m0"), KERNELS, preprocess_cost, invalid_ids=True, max_tokens=256, max_hidden=512,
           large_shape=_LARGE, bench_anchors=_DS_EP8, bench_dtype="fp8",
           shape_label=lambda p: f"H={p.hidden}", sglang=SglangBinding(("moe_ep_deepgemm_preprocess",)),
           error_inputs=(
               ErrorInput("fp8", set_arg("block_shape", [128, 96]), ValueError, "block_shape"),
               ErrorInput("fp8", set_arg("topk_ids", lambda a: a["topk_ids"][:, :1].contiguous()), ValueError,
                          "topk_ids"),
               ErrorInput("bfloat16", set_arg("hidden_states", lambda a: a["hidden_states"].int()), TypeError,
                          "hidden_states"),
           ), case_cost=2.2),
    OpSpec("expand_to_masked_slab", ref.expand_to_masked_slab, build_expand_to_masked_slab,
           (OutputSpec("slab", returned(0), "exact", "expert", defined=_defined_rows_of("slab", "masked_m")),
            OutputSpec("slab_scale", returned(1), "exact", "expert", defined=_defined_rows_of("slab_scale", "masked_m")),
            OutputSpec("masked_m", returned(2), "exact", "expert")),
           _SLAB_DTYPES, REFERENCE, expand_cost, invalid_ids=True, bench_anchors=_DS_EP8, bench_dtype="fp8",
           bench_routing="dispatched", preconditions=(SCALE_HAS_A_COLUMN,),
           sglang=SglangBinding(("expand_to_masked_slab",), requires=(SCALE_HAS_A_COLUMN.id,)),
           error_inputs=(
               ErrorInput("float32", set_arg("max_m", 0), ValueError, "max_m"),
               ErrorInput("float32", set_arg("psum_num_recv_tokens_per_expert",
                                             lambda a: a["psum_num_recv_tokens_per_expert"].double()), TypeError,
                          "psum_num_recv_tokens_per_expert"),
           )),
    OpSpec("masked_slab_to_expand", ref.masked_slab_to_expand, build_masked_slab_to_expand,
           # a copy, or one float32 product per element rounded once to the dtype: the contract fixes
           # the rounding, so bit equality on the rows it defines
           (OutputSpec("output", returned(0), "exact", "position", defined=_expanded_defined),),
           ("float32", "bfloat16"), REFERENCE, to_expand_cost, invalid_ids=True, bench_anchors=_DS_EP8,
           bench_routing="dispatched", sglang=SglangBinding(("masked_slab_to_expand",)),
           error_inputs=(
               ErrorInput("float32", set_arg("total_expanded_tokens", -1), ValueError, "total_expanded_tokens"),
               ErrorInput("float32", set_arg("input_tensor", lambda a: a["input_tensor"][0]), ValueError,
                          "input_tensor"),
           )),
    OpSpec("scale_expanded_rows_", ref.scale_expanded_rows_, build_scale_rows,
           # float32 x times a float32 or bf16 weight: the product is exact in float64, so one
           # correctly rounded float32 product: bit equality
           (OutputSpec("x", in_place("x"), "exact", "slot"),),
           ("float32",), REFERENCE, scale_rows_cost, bench_anchors=_DS_EP8,
           shape_label=lambda p: f"W={max(1, p.hidden // 16)}", sglang=SglangBinding(("scale_expanded_rows_",)),
           error_inputs=(
               ErrorInput("float32", set_arg("x", lambda a: a["x"].to(torch.bfloat16)), TypeError, "x"),
               ErrorInput("float32", set_arg("row_weights", lambda a: a["row_weights"][:-1]), ValueError,
                          "row_weights"),
           )),
    OpSpec("tma_align_input_scale", ref.tma_align_input_scale, build_tma_align,
           (OutputSpec("aligned_scale", returned(0), "exact", "token"),),
           ("float32", "int32"), REFERENCE, tma_cost, bench_anchors=_DS_EP8, bench_dtype="float32",
           shape_label=lambda p: f"kb={max(1, -(-p.hidden // 128))}", sglang=SglangBinding(("tma_align_input_scale",)),
           error_inputs=(
               ErrorInput("float32", set_arg("input_scale", lambda a: a["input_scale"].reshape(-1)), ValueError,
                          "input_scale"),
           )),
)


# ----------------------------------------------------------------------------- mutants

_M = Mutant
MUTANTS = (
    # --- our Triton kernels ---------------------------------------------------------------
    _M("fused_moe_dispatch_index_padding_zero", "fused_moe_dispatch_index", KERNELS,
       "tl.store(src2dst_ptr + offs, tl.where(local, dst, -1).to(tl.int32), mask=inside)",
       "tl.store(src2dst_ptr + offs, tl.where(local, dst, 0).to(tl.int32), mask=inside)",
       "non-local and -1 slots get row 0 instead of -1 in src2dst (a later combine adds expert 0's first "
       "row into them)"),
    _M("moe_ep_deepgemm_preprocess_int32_row_offset", "moe_ep_deepgemm_preprocess", KERNELS,
       "                  other=-1).to(tl.int64)                                                 # [TOKENS, KP]",
       "                  other=-1)                                                              # [TOKENS, KP]",
       "int32 slab offset: row * H overflows once E_local * m_max * H passes 2**31 (sglang#6348's class)",
       backends=("cuda",), min_preset="large"),
    _M("moe_ep_deepgemm_preprocess_unplaced_slots_stored", "moe_ep_deepgemm_preprocess", KERNELS,
       "             mask=placed[:, :, None] & cmask[None, None, :])",
       "             mask=tmask[:, None, None] & cmask[None, None, :])",
       "an unmasked store: slots without a row (-1, other ranks' experts) still store their token, into "
       "expert 0's first row"),
    _M("moe_ep_deepgemm_preprocess_ue8m0_floor", "moe_ep_deepgemm_preprocess", KERNELS,
       "expo = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)",
       "expo = ((bits >> 23) & 0xFF)",
       "the UE8M0 scale rounded down instead of up: codes past 448 saturate",
       dtypes=("fp8_ue8m0",)),
    # --- ops whose `ours` is the reference: patches of the reference ----------------------
    # the rows copied from the unaligned start, the counts (and the max_m check) from the aligned one:
    # a wrong slab, not the reference's own max_m refusal (a kill by exception proves nothing)
    _M("expand_to_masked_slab_start_unaligned", "expand_to_masked_slab", REFERENCE,
       "    for e, (start, count) in enumerate(segments):\n        slab[e, :count] = recv_x[start:start + count]",
       "    for e, ((start, _), (_, count)) in enumerate(zip(_expanded_segments(psum, 1, 2 ** 62), segments)):\n"
       "        slab[e, :count] = recv_x[start:start + count]",
       "an expert's rows read from the previous segment's end, not from it rounded up to expert_alignment"),
    _M("masked_slab_to_expand_weights_dropped", "masked_slab_to_expand", REFERENCE,
       "            rows = (rows.to(acc) * weights[start:start + count, None].to(acc)).to(input_tensor.dtype)",
       "            rows = rows",
       "topk_weights not applied"),
    _M("scale_expanded_rows_weight_rounded", "scale_expanded_rows_", REFERENCE,
       "x.copy_(x.to(torch.float64) * row_weights.to(torch.float64)[:, None])",
       "x.copy_(x.to(torch.float64) * row_weights.to(torch.bfloat16).to(torch.float64)[:, None])",
       "the row weights rounded to bf16 before the product (a float32 x would round the weight)"),
    _M("tma_align_input_scale_last_row_dropped", "tma_align_input_scale", REFERENCE,
       "    out[:, :m] = input_scale.t()",
       "    out[:, :m - 1] = input_scale.t()[:, :m - 1]",
       "the last scale row not laid out (a grid one program short)"),
)
