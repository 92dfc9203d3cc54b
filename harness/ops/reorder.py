"""Records of the reorder family: ``pre_reorder`` (gather token rows into expert order, with
an optional fp8 quantisation) and ``post_reorder`` (the weighted combine back into token
order), SPEC.md sections 3 and 5, with builders, costs, bench shapes, SGLang binding, bad
inputs, baselines and mutants."""
from __future__ import annotations

from typing import Any, Mapping

import torch

import reference
from reference._checks import FP8_DTYPE, FP8_MAX, validate_pre_reorder

from ..cases import CaseParams, make_generator, make_topk_weights, randn
from ..costs import Cost, local_slots
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, SglangBinding, activation_dtype, buffer,
                      is_fp8, non_contiguous, set_arg)
from ..sglang.bind import Convention, Neutral
from .preprocess import case_ids, routing_tensors

KERNELS = "optimized.reorder"
_FP8 = ("fp8",)


def build_pre_reorder(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    _, src2dst, _, pos_to_slot = routing_tensors(ids, p)
    act = activation_dtype(p.dtype)
    x = randn((p.tokens, p.hidden), gen, act)                                    # [T, H]
    out_dtype = FP8_DTYPE if is_fp8(p.dtype) else act
    scales = None
    if is_fp8(p.dtype):
        amax = float(x.float().abs().max()) if x.numel() else 1.0
        # amax / 448 keeps every scaled value in fp8 range; the factor varies scales per expert.
        scales = (amax / FP8_MAX) * (1.0 + torch.rand(p.e_local, generator=gen, device=device))
    args = dict(input=x, gateup_input=torch.empty(p.tokens * p.topk, p.hidden, dtype=out_dtype, device=device),
                src2dst=src2dst, topk_ids=ids, a1_scales=scales, start_expert_id=p.start_expert,
                end_expert_id=p.end_expert, topk=p.topk, hidden_size=p.hidden, BLOCK_SIZE=512)
    f64 = ("input", "gateup_input") if is_fp8(p.dtype) else ()
    return Sample(p, args, f64, ids, pos_to_slot)


def build_post_reorder(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    _, src2dst, _, pos_to_slot = routing_tensors(ids, p)
    act = activation_dtype(p.dtype)
    down = randn((p.tokens * p.topk, p.hidden), gen, act)                       # [T*K, H]
    args = dict(down_output=down, output=torch.empty(p.tokens, p.hidden, dtype=act, device=device),
                src2dst=src2dst, topk_ids=ids, topk_weights=make_topk_weights(p, gen),
                start_expert_id=p.start_expert, end_expert_id=p.end_expert, topk=p.topk,
                hidden_size=p.hidden, BLOCK_SIZE=512)
    return Sample(p, args, ("down_output", "output"), ids, pos_to_slot)


def pre_reorder_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each token row read once, each local slot's row written once (index arrays not counted)."""
    x, out = args["input"], args["gateup_input"]
    local = local_slots(args["topk_ids"], params.start_expert, params.end_expert)
    T, H = x.shape
    return Cost(T * H * x.element_size() + local * H * out.element_size(), 0,
                f"{T} token rows read, {local} local slot rows written")


def post_reorder_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each local slot's row read once, each token row written once; the weighted sum's FLOPs
    never bound the kernel and are not counted."""
    down, out = args["down_output"], args["output"]
    local = local_slots(args["topk_ids"], params.start_expert, params.end_expert)
    T, H = out.shape
    return Cost(local * H * down.element_size() + T * H * out.element_size(), 0,
                f"{local} local slot rows read, {T} token rows written")


def torch_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                      hidden_size, BLOCK_SIZE=512):
    """mask + index_copy_ (copies only: scales, hence fp8, are not covered)."""
    validate_pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                         hidden_size, BLOCK_SIZE, check_values=False)
    if a1_scales is not None:
        raise NotImplementedError("a1_scales: the plain-torch baselines cover bf16/fp16/fp32 only")
    flat = topk_ids.reshape(-1)
    local = torch.nonzero((flat >= start_expert_id) & (flat <= end_expert_id)).flatten()   # [S]
    gateup_input.index_copy_(0, src2dst.reshape(-1)[local].long(), input.index_select(0, local // topk))


_EP8_ANCHORS = (
    BenchAnchor(4096, 8, 256, None, 7168, 32),
    BenchAnchor(4096, 8, 256, 31, 7168, 32),
    BenchAnchor(256, 8, 256, 31, 7168, 32),
)
# The `large` preset: buffers whose element offsets pass 2**31, where 32-bit index arithmetic
# overflows (SGLang's pre_reorder faulted at T=40000, K=8, H=7168; ANCHORS.md): 2.29e9 elements.
_LARGE = dict(tokens=40000, topk=8, experts=256, hidden=7168, inter=64)

# What SGLang's releases changed (tools/sglang_inventory.py).
PER_EXPERT_SCALES = Neutral(
    False, "0.4.7 .. 0.5.3", "True reads a1_scales per token (w8a8 dynamic quantisation); False per local expert, "
                             "our a1_scales")
ROWS_FROM_ZERO = Neutral(
    0, "0.4.8 .. 0.5.3", "rows of down_output are src2dst[s] - dst_start (the DeepGEMM layout passes m_max * "
                         "start_expert_id); 0 reads row src2dst[s], our layout")


def _local_topk_ids(a):
    """Global expert ids -> this rank's local ids (id - start), -1 elsewhere, int32: what SGLang's
    standard dispatcher hands the EP kernels from 0.5.3.post1 on (its local_expert_mapping)."""
    ids, start, end = a["topk_ids"], a["start_expert_id"], a["end_expert_id"]
    local = (ids >= start) & (ids <= end)
    return torch.where(local, ids - start, torch.full_like(ids, -1)).to(torch.int32)


LOCAL_EXPERT_IDS = Convention(
    "local expert ids",
    applies=lambda t: "start_expert_id" not in t.param_names and "topk_ids_ptr" in t.param_names,
    args={"topk_ids_ptr": _local_topk_ids}, consumes=("topk_ids", "start_expert_id", "end_expert_id"),
    releases="0.5.3.post1 .. 0.5.22",
    why="the kernel lost start_expert_id/end_expert_id: it takes this rank's local ids (-1 for other ranks' "
        "experts), as SGLang's dispatcher remaps them")

RECORDS = (
    OpSpec("pre_reorder", reference.pre_reorder, build_pre_reorder,
           # A pure copy is exact; the fp8 case scales and rounds once.
           (OutputSpec("gateup_input", buffer("gateup_input"), "exact_or_float", "position"),),
           ("bfloat16", "float16", "float32", "fp8"), KERNELS, pre_reorder_cost, invalid_ids=True,
           large_shape=_LARGE, bench_anchors=_EP8_ANCHORS,
           sglang=SglangBinding(("pre_reorder_triton_kernel",), grid=lambda a: (a["input"].shape[0],),
                                neutral={"use_per_token_if_dynamic": PER_EXPERT_SCALES}),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("input", lambda a: a["input"].int()), TypeError, "input"),
               ErrorInput("bfloat16", set_arg("gateup_input", lambda a: a["gateup_input"][:-1]), ValueError,
                          "gateup_input"),
               ErrorInput("bfloat16", set_arg("gateup_input", lambda a: a["gateup_input"].half()), TypeError,
                          "gateup_input"),
               ErrorInput("bfloat16", set_arg("gateup_input", lambda a: a["gateup_input"].to("meta")), ValueError,
                          "gateup_input"),
               ErrorInput("bfloat16", set_arg("hidden_size", 39), ValueError, "hidden_size"),
               ErrorInput("bfloat16", set_arg("topk", 3), ValueError, "gateup_input"),
               ErrorInput("bfloat16", set_arg("src2dst", lambda a: a["src2dst"] + 100), ValueError, "src2dst"),
               ErrorInput("bfloat16", set_arg("end_expert_id", 0), ValueError, "end_expert_id"),
               ErrorInput("bfloat16", set_arg("start_expert_id", -1), ValueError, "start_expert_id"),
               ErrorInput("bfloat16", set_arg("BLOCK_SIZE", 300), ValueError, "BLOCK_SIZE"),
               ErrorInput("fp8", set_arg("a1_scales", None), ValueError, "a1_scales"),
               ErrorInput("fp8", set_arg("a1_scales", lambda a: a["a1_scales"][:-1]), ValueError, "a1_scales"),
               ErrorInput("fp8", set_arg("a1_scales", lambda a: a["a1_scales"].double()), TypeError, "a1_scales"),
               ErrorInput("bfloat16", non_contiguous("input"), ValueError, "input"),
           ),
           baselines={"torch": torch_pre_reorder}, case_cost=1.6),
    OpSpec("post_reorder", reference.post_reorder, build_post_reorder,
           (OutputSpec("output", buffer("output"), "float", "token", reduction_len=lambda p: p.topk),),
           ("bfloat16", "float16", "float32"), KERNELS, post_reorder_cost, invalid_ids=True,
           large_shape=_LARGE, bench_anchors=_EP8_ANCHORS, selftest=True,
           sglang=SglangBinding(("post_reorder_triton_kernel",), grid=lambda a: (a["output"].shape[0],),
                                neutral={"dst_start": ROWS_FROM_ZERO}, conventions=(LOCAL_EXPERT_IDS,)),
           error_inputs=(
               ErrorInput("float16", set_arg("topk_weights", lambda a: a["topk_weights"].half()), TypeError,
                          "topk_weights"),
               ErrorInput("float16", set_arg("topk_weights", lambda a: a["topk_weights"][:, :1].contiguous()),
                          ValueError, "topk_weights"),
               ErrorInput("float16", set_arg("down_output", lambda a: a["down_output"][:-2]), ValueError,
                          "down_output"),
               ErrorInput("float16", set_arg("src2dst", lambda a: a["src2dst"] - 1000), ValueError, "src2dst"),
               ErrorInput("float16", set_arg("output", lambda a: a["output"].to("meta")), ValueError, "output"),
           ), case_cost=1.9),
)


# ----------------------------------------------------------------------------- mutants
# Left out as allowed by the contract: post_reorder accumulating in the input dtype (SPEC.md
# section 5 says the tolerance must admit SGLang doing exactly that).

_M = Mutant
MUTANTS = (
    # --- pre_reorder ----------------------------------------------------------------------
    _M("pre_reorder_end_exclusive", "pre_reorder", KERNELS,
       "(e2 <= end_expert) & (dst2 >= 0)",
       "(e2 < end_expert) & (dst2 >= 0)",
       "the expert range end treated as exclusive: rows of end_expert_id are never gathered"),
    _M("pre_reorder_expert_offset_dropped", "pre_reorder", KERNELS,
       "1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "1.0 / tl.load(scales_ptr + e, mask=local, other=1.0)  # [ROWS] fp32",
       "expert offset dropped: a1_scales indexed by e instead of e - start_expert_id", dtypes=_FP8),
    _M("pre_reorder_scale_not_reciprocal", "pre_reorder", KERNELS,
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "inv = tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "the fp8 scale applied instead of its reciprocal (x * s, not x / s)", dtypes=_FP8),
    _M("pre_reorder_row_read_if_last_slot_local", "pre_reorder", KERNELS,
       "any_local = tl.max(local2.to(tl.int32), axis=1) > 0",
       "any_local = tl.sum(tl.where(kk[None, :] == TOPK - 1, local2.to(tl.int32), 0), axis=1) > 0",
       "a token's row read only when its last slot is local (the skip of non-local rows looks at one "
       "slot): rows whose earlier slots are local are written as zeros"),
    _M("pre_reorder_tail_mask_dropped", "pre_reorder", KERNELS,
       "tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None] & cmask[None, :])",
       "tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None])",
       "missing tail mask on the store: when H is not a multiple of the block, columns past H spill into "
       "the next row"),
    _M("pre_reorder_int32_row_offset", "pre_reorder", KERNELS,
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int64)",
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int32)",
       "int32 destination offset: dst * H overflows once T*K*H passes 2**31 (SGLang's fault at T=40000, "
       "K=8, H=7168)", dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    _M("pre_reorder_src2dst_offset_in_its_dtype", "pre_reorder", KERNELS,
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int64)",
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1)",
       "destination offsets computed in src2dst's own dtype: right for an int64 src2dst, an int32 overflow "
       "for the int32 src2dst SGLang's preprocess returns (SGLang issue 4856)",
       dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- post_reorder ---------------------------------------------------------------------
    _M("post_reorder_no_local_unwritten", "post_reorder", KERNELS,
       "mask=rmask[:, None] & cmask[None, :])",
       "mask=(rmask & (tl.max(local2.to(tl.int32), axis=1) > 0))[:, None] & cmask[None, :])",
       "tokens with no local expert left unwritten: only rows with a local slot are stored"),
    _M("post_reorder_slot_group_skipped", "post_reorder", KERNELS,
       "if tl.max(tl.max(tl.where(in_group[None, :] & local2, 1, 0), axis=1), axis=0) > 0:",
       "if tl.max(tl.max(tl.where(in_group[None, :] & local2, 1, 0), axis=1), axis=0) > 1:",
       "the slot group test off by one: every group is skipped as if no row routed there, so each "
       "token gets zeros"),
    _M("post_reorder_first_local_expert_dropped", "post_reorder", KERNELS,
       "(e2 >= start_expert) & (e2 <= end_expert)",
       "(e2 > start_expert) & (e2 <= end_expert)",
       "the expert gate written '> start' (SGLang commit 26be49be's 'expert_id > 0' on local ids, released in "
       "0.5.4 .. 0.5.10): the rank's first expert - local expert 0, on every rank - is silently left out of "
       "each token's sum"),
    _M("post_reorder_end_exclusive", "post_reorder", KERNELS,
       "(e2 <= end_expert) & (dst2 >= 0)",
       "(e2 < end_expert) & (dst2 >= 0)",
       "the expert range end treated as exclusive: end_expert_id's contributions are dropped"),
    _M("post_reorder_weight_by_destination", "post_reorder", KERNELS,
       "w2 = tl.load(w_ptr + slots, mask=local2, other=0.0)",
       "w2 = tl.load(w_ptr + src2, mask=local2, other=0.0)",
       "the router weight read at the slot's sorted position (src2dst) instead of at the slot"),
    _M("post_reorder_tail_mask_dropped", "post_reorder", KERNELS,
       "mask=rmask[:, None] & cmask[None, :])",
       "mask=rmask[:, None])",
       "missing tail mask on the store: columns past H of the last token spill past the output"),
)
