"""Records of the DeepGEMM contiguous layout (SGLang 0.5.23's ``ep_moe_kernels.py``): ``ep_scatter``,
``ep_scatter_from_psum``, ``fill_m_indices_from_psum``, ``ep_gather`` and ``post_reorder_deepgemm``;
contracts in reference/deepgemm_layout.py.

Rows that SGLang places with atomic counters (ep_scatter's output rows) are compared order-free:
``output_index`` is a "row_index" output and the data rows are mapped through it
(harness.canonical). Our Triton kernels: optimized/deepgemm_layout.py (ep_scatter, ep_gather). For
``ep_scatter_from_psum``, ``fill_m_indices_from_psum`` and ``post_reorder_deepgemm`` we have no
kernel yet: their records point ``ours`` at the reference module (so `ours` is the reference there,
host-side, outside the graph probe), and their mutants patch the reference.

Edge cases the builders draw from the case's seed (the fuzzer's CaseParams cannot name them):
experts whose segment is exactly a multiple of the alignment with no -1 padding (valid = padded),
empty experts with and without a padded segment, extra -1 padding blocks, m_indices and output
buffers longer than the segments (their tails must stay untouched), the case's routing (all on
one expert, sparse, repeated...) and -1 ids (``invalid_ids``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from reference import deepgemm_layout as ref
from reference._checks import FP8_DTYPE

from ..cases import CaseParams, make_generator, make_topk_weights, randn
from ..costs import Cost
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, ID_DTYPES, OpSpec, OutputSpec, Precondition, Sample, SglangBinding,
                      activation_dtype, buffer, returned, set_arg)
from .preprocess import case_ids, routing_tensors

KERNELS = "optimized.deepgemm_layout"
REFERENCE = "reference.deepgemm_layout"
QUANT_BLOCK = 128
# offsets past 2**31 elements: 40000 tokens x 8 slots = 320000 rows of 7168 (SGLang's fault size)
_LARGE = dict(tokens=40000, topk=8, experts=256, hidden=7168, inter=64)
_DS_EP8 = (BenchAnchor(4096, 8, 256, 31, 7168, 2048, "DeepSeek-V3 EP8"),
           BenchAnchor(256, 8, 256, 31, 7168, 2048, "DeepSeek-V3 EP8 decode"))
SCATTER_DTYPES = ("float32", "bfloat16", "fp8", "fp8_ue8m0")


def _int(gen, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from the case's generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen, device=gen.device))


def _alignment(p: CaseParams, device) -> int:
    """SGLang's expert_alignment is 128; on the CPU interpreter a smaller power of two when the
    rank has many experts (E_local x 128 padded rows would make every case slow)."""
    if torch.device(device).type == "cuda":
        return 128
    a = 128
    while a > 1 and p.e_local * a > 2048:
        a //= 2
    return a


def _segment_sizes(routed: torch.Tensor, alignment: int, gen):
    """(valid, padded) per expert: valid >= routed (DeepEP counts rows it expects), padded =
    valid rounded up to the alignment. Per expert, from the seed: valid = routed (most), valid =
    padded (a segment of exactly n * alignment rows, no -1 padding), or an extra block of -1 rows."""
    n = routed.numel()
    mode = torch.randint(0, 6, (n,), generator=gen, device=gen.device)
    padded = (routed + alignment - 1) // alignment * alignment
    valid = routed.clone()
    full = mode == 1
    valid[full] = torch.maximum(padded[full], torch.full_like(padded[full], alignment))   # n >= 1 blocks, all e
    padded = torch.where(full, valid, padded)
    extra = mode == 2
    padded = torch.where(extra, padded + alignment, padded)                                 # a block of -1 rows
    return valid, padded


def _scatter_data(p: CaseParams, gen, n_tok: int, device):
    """recv_x [N, H] in the case's data dtype and recv_x_scale [N, W] (float32 or packed int32)."""
    H = p.hidden if p.dtype.startswith("fp8") and p.hidden >= QUANT_BLOCK else \
        p.hidden + (QUANT_BLOCK if p.dtype.startswith("fp8") else 0)
    act = activation_dtype(p.dtype)
    if p.dtype.startswith("fp8"):
        x = randn((n_tok, H), gen, torch.float32, scale=40.0).to(FP8_DTYPE)
    else:
        x = randn((n_tok, H), gen, act)
    ue8m0 = p.dtype == "fp8_ue8m0"
    groups = H // QUANT_BLOCK
    width = -(-groups // 4) if ue8m0 else groups         # float32 data copies H // 128 scales: maybe none
    if ue8m0:
        scale = torch.randint(-2 ** 31, 2 ** 31 - 1, (n_tok, width), generator=gen, device=device, dtype=torch.int64)
        scale = scale.to(torch.int32)
    else:
        scale = torch.rand(n_tok, width, generator=gen, device=device) * 0.5 + 0.01
    return x, scale, ue8m0


# SGLang's ep_scatter launches tl.arange(0, next_power_of_2(hidden // quant_block_size)) for the
# scales even when it copies none (float32 / bf16 data): hidden < 128 does not compile. A limit
# of SGLang's binding, not of the op: ours and the reference take any hidden, and an exception
# of theirs on such a case stays FAILED.
ONE_SCALE_GROUP = Precondition(
    "scatter_hidden_one_quant_block", f"hidden >= the quant block ({QUANT_BLOCK}): one scale column at least",
    holds=lambda p: p.dtype.startswith("fp8") or p.hidden >= QUANT_BLOCK,
    fit=lambda p: p if p.dtype.startswith("fp8") or p.hidden >= QUANT_BLOCK else dataclasses.replace(
        p, hidden=QUANT_BLOCK))


def build_ep_scatter(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    recv_topk = case_ids(p, gen)                                                          # [N, K] global ids, -1
    x, scale, ue8m0 = _scatter_data(p, gen, p.tokens, device)
    local = recv_topk.reshape(-1).to(torch.int64) - p.start_expert
    local = local[(local >= 0) & (local < p.e_local)]
    routed = torch.bincount(local, minlength=p.e_local)
    align = _alignment(p, device)
    valid, padded = _segment_sizes(routed, align, gen)
    total = int(padded.sum())
    block_e = align & -align
    m_len = -(-total // block_e) * block_e + block_e * _int(gen, 0, 1)                 # a tail left untouched
    rows = total + _int(gen, 0, 3)
    idx = ID_DTYPES[p.index_dtype]
    args = dict(recv_x=x, recv_x_scale=scale, recv_topk=recv_topk,
                num_recv_tokens_per_expert=padded.to(torch.int32), num_valid_tokens_per_expert=valid.to(torch.int32),
                expert_start_loc=torch.empty(p.e_local, dtype=torch.int32, device=device),
                output_tensor=torch.empty(rows, x.shape[1], dtype=x.dtype, device=device),
                output_tensor_scale=torch.empty(rows, scale.shape[1], dtype=scale.dtype, device=device),
                m_indices=torch.empty(m_len, dtype=torch.int32, device=device),
                output_index=torch.empty(recv_topk.shape, dtype=idx, device=device),
                scale_ue8m0=ue8m0, quant_block_size=QUANT_BLOCK, expert_alignment=align,
                expert_start=p.start_expert)
    return Sample(p, args, (), recv_topk)


def build_ep_scatter_from_psum(p: CaseParams, device) -> Sample:
    """DeepEP v2: recv_topk holds LOCAL ids (other ranks' slots arrive as -1) and the segments
    are given by an inclusive prefix sum; sizes >= routed, some packed (not aligned)."""
    gen = make_generator(p, device)
    ids = case_ids(p, gen).to(torch.int64) - p.start_expert
    recv_topk = torch.where((ids >= 0) & (ids < p.e_local), ids, -1).to(ID_DTYPES[p.index_dtype])
    x, scale, ue8m0 = _scatter_data(p, gen, p.tokens, device)
    routed = torch.bincount(recv_topk.reshape(-1).to(torch.int64).clamp_min(-1) + 1,
                            minlength=p.e_local + 1)[1:]
    _, sizes = _segment_sizes(routed, _alignment(p, device), gen)
    sizes = torch.where(torch.rand(p.e_local, generator=gen, device=device) < 0.5, routed, sizes)
    psum = torch.cumsum(sizes, 0)
    total = int(psum[-1]) if p.e_local else 0
    m_len = -(-total // 128) * 128 + 128 * _int(gen, 0, 1)
    rows = total + _int(gen, 0, 3)
    args = dict(recv_x=x, recv_x_scale=scale, recv_topk=recv_topk,
                psum_num_recv_tokens_per_expert=psum.to(torch.int32),
                expert_start_loc=torch.empty(p.e_local, dtype=torch.int32, device=device),
                output_tensor=torch.empty(rows, x.shape[1], dtype=x.dtype, device=device),
                output_tensor_scale=torch.empty(rows, scale.shape[1], dtype=scale.dtype, device=device),
                m_indices=torch.empty(m_len, dtype=torch.int32, device=device),
                output_index=torch.empty(recv_topk.shape, dtype=recv_topk.dtype, device=device),
                scale_ue8m0=ue8m0, quant_block_size=QUANT_BLOCK)
    return Sample(p, args, (), recv_topk)


def build_fill_m_indices(p: CaseParams, device) -> Sample:
    """DeepEP's expanded prefix sum psum[e] = align(psum[e-1]) + count(e); total_rows from the
    seed: exactly the aligned end, more, or fewer (the last segments clipped)."""
    gen = make_generator(p, device)
    ids = case_ids(p, gen).to(torch.int64) - p.start_expert
    counts = torch.bincount(ids[(ids >= 0) & (ids < p.e_local)], minlength=p.e_local).tolist()
    align = _alignment(p, device)
    psum, prev = [], 0
    for c in counts:
        prev = -(-prev // align) * align + c
        psum.append(prev)
    end = -(-prev // align) * align
    total = max(0, end + align * _int(gen, -2, 2))
    return Sample(p, dict(psum_num_recv_tokens_per_expert=torch.tensor(psum, dtype=torch.int32, device=device),
                          num_local_experts=p.e_local, total_rows=total, expert_alignment=align), (), None)


def _gather_hidden(p: CaseParams) -> int:
    """ep_gather needs H a multiple of 128 (SGLang's block of columns): the case's H rounded up."""
    return max(1, -(-p.hidden // 128)) * 128


def build_ep_gather(p: CaseParams, device) -> Sample:
    """Rows of the contiguous layout, each counted slot naming its own row (a random one-to-one
    placement, as ep_scatter's atomics give), uncounted slots (id -1) naming -1; a few rows that
    no slot names (alignment padding)."""
    gen = make_generator(p, device)
    ids = case_ids(p, gen)                                                              # -1 where not counted
    counted = ids.reshape(-1) >= 0
    n = int(counted.sum())
    rows = n + _int(gen, 0, 5)
    perm = torch.randperm(max(rows, 1), generator=gen, device=device)[:n]
    index = torch.full((ids.numel(),), -1, dtype=torch.int64, device=device)
    index[counted] = perm
    act = activation_dtype(p.dtype)
    H = _gather_hidden(p)
    args = dict(input_tensor=randn((rows, H), gen, act), recv_topk_ids=ids, recv_topk_weight=make_topk_weights(p, gen),
                input_index=index.view(ids.shape).to(ID_DTYPES[p.index_dtype]),
                output_tensor=torch.empty(p.tokens, H, dtype=act, device=device))
    return Sample(p, args, ("input_tensor", "output_tensor", "recv_topk_weight"), ids)


def build_post_reorder_deepgemm(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    _, src2dst, _, pos_to_slot = routing_tensors(ids, p)
    act = activation_dtype(p.dtype)
    M = p.tokens * p.topk
    lora = randn((p.tokens, p.topk, p.hidden), gen, act, scale=0.25) if _int(gen, 0, 1) else None
    args = dict(down_output=randn((M, p.hidden), gen, act),
                output=torch.empty(p.tokens + _int(gen, 0, 2), p.hidden, dtype=act, device=device),
                src2dst=src2dst, topk_ids=ids, topk_weights=make_topk_weights(p, gen), topk=p.topk,
                num_tokens=p.tokens, hidden_size=p.hidden, routed_scaling_factor=2.5, lora_delta=lora)
    return Sample(p, args, ("down_output", "output", "topk_weights", "lora_delta"), ids, pos_to_slot)


# ----------------------------------------------------------------------------- costs

def _row_bytes(t: torch.Tensor) -> int:
    return t.shape[1] * t.element_size() if t.dim() == 2 else 0


def scatter_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each token row (and its scales) read once, each placed slot's row written once."""
    x, s = args["recv_x"], args["recv_x_scale"]
    placed = int(args.get("num_valid_tokens_per_expert", args.get("psum_num_recv_tokens_per_expert")).sum())
    per_row = _row_bytes(x) + (_row_bytes(s) if x.dtype == FP8_DTYPE else 0)
    return Cost(x.shape[0] * per_row + placed * per_row, 0, f"{x.shape[0]} rows read, up to {placed} rows written")


def gather_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each counted slot's row read once, each token row written once."""
    x, out = args["input_tensor"], args["output_tensor"]
    counted = int((args["recv_topk_ids"] >= 0).sum())
    return Cost(counted * _row_bytes(x) + out.shape[0] * _row_bytes(out), 0,
                f"{counted} slot rows read, {out.shape[0]} token rows written")


def post_reorder_deepgemm_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    down, out = args["down_output"], args["output"]
    counted = int((args["src2dst"] >= 0).sum())
    lora = counted * _row_bytes(down) if args["lora_delta"] is not None else 0
    return Cost(counted * _row_bytes(down) + lora + args["num_tokens"] * _row_bytes(out), 0,
                f"{counted} slot rows read, {args['num_tokens']} token rows written")


def fill_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    return Cost(4 * args["total_rows"], 0, f"{args['total_rows']} m_indices entries written")


# ----------------------------------------------------------------------------- records

def _scatter_outputs():
    return (
        OutputSpec("output_index", buffer("output_index"), "row_index", "slot"),
        OutputSpec("output_tensor", buffer("output_tensor"), "exact", "position", index="output_index"),
        OutputSpec("output_tensor_scale", buffer("output_tensor_scale"), "exact", "position", index="output_index"),
        OutputSpec("m_indices", buffer("m_indices"), "exact", "position"),
        OutputSpec("expert_start_loc", buffer("expert_start_loc"), "exact", "expert"),
    )


RECORDS = (
    OpSpec("ep_scatter", ref.ep_scatter, build_ep_scatter, _scatter_outputs(), SCATTER_DTYPES, KERNELS,
           scatter_cost, invalid_ids=True, large_shape=_LARGE, bench_anchors=_DS_EP8, bench_dtype="fp8",
           bench_routing="dispatched",
           sglang=SglangBinding(("ep_scatter",), requires=(ONE_SCALE_GROUP.id,), limits=(ONE_SCALE_GROUP,)),
           error_inputs=(
               ErrorInput("float32", set_arg("num_recv_tokens_per_expert",
                                             lambda a: a["num_recv_tokens_per_expert"] + 1), ValueError,
                          "num_recv_tokens_per_expert"),
               ErrorInput("float32", set_arg("output_index", lambda a: a["output_index"][:, :1]), ValueError,
                          "output_index"),
               ErrorInput("fp8", set_arg("output_tensor_scale", lambda a: a["output_tensor_scale"].double()),
                          TypeError, "output_tensor_scale"),
           ), case_cost=1.9),
    OpSpec("ep_scatter_from_psum", ref.ep_scatter_from_psum, build_ep_scatter_from_psum, _scatter_outputs(),
           SCATTER_DTYPES, REFERENCE, scatter_cost, invalid_ids=True, bench_anchors=_DS_EP8, bench_dtype="fp8",
           bench_routing="dispatched",
           sglang=SglangBinding(("ep_scatter_from_psum",), requires=(ONE_SCALE_GROUP.id,), limits=(ONE_SCALE_GROUP,)),
           error_inputs=(
               ErrorInput("float32", set_arg("psum_num_recv_tokens_per_expert",
                                             lambda a: a["psum_num_recv_tokens_per_expert"].double()), TypeError,
                          "psum_num_recv_tokens_per_expert"),
               ErrorInput("float32", set_arg("m_indices", lambda a: a["m_indices"].double()), TypeError, "m_indices"),
           ), case_cost=1.8),
    OpSpec("fill_m_indices_from_psum", ref.fill_m_indices_from_psum, build_fill_m_indices,
           (OutputSpec("m_indices", returned(0), "exact", "position"),), ("int32",), REFERENCE, fill_cost,
           bench_anchors=_DS_EP8, bench_dtype="int32", bench_routing="dispatched", shape_label=lambda p: "",
           sglang=SglangBinding(("fill_m_indices_from_psum",)),
           error_inputs=(ErrorInput("int32", set_arg("psum_num_recv_tokens_per_expert",
                                                     lambda a: a["psum_num_recv_tokens_per_expert"].double()),
                                    TypeError, "psum_num_recv_tokens_per_expert"),)),
    OpSpec("ep_gather", ref.ep_gather, build_ep_gather,
           # float32 sum of K weighted terms: reduction length K
           (OutputSpec("output_tensor", buffer("output_tensor"), "float", "token", reduction_len=lambda p: p.topk),),
           ("float32", "bfloat16"), KERNELS, gather_cost, invalid_ids=True, large_shape=_LARGE,
           bench_anchors=_DS_EP8, bench_routing="dispatched", shape_label=lambda p: f"H={_gather_hidden(p)}",
           sglang=SglangBinding(("ep_gather",)),
           error_inputs=(
               ErrorInput("float32", set_arg("input_index", lambda a: a["input_index"][:, :1].contiguous()),
                          ValueError, "input_index"),
               ErrorInput("float32", set_arg("recv_topk_weight", lambda a: a["recv_topk_weight"].int()),
                          TypeError, "recv_topk_weight"),
           ), case_cost=2.6),
    OpSpec("post_reorder_deepgemm", ref.post_reorder_deepgemm, build_post_reorder_deepgemm,
           # K terms, each (down + lora) * weight (two roundings), then one product by the scaling factor
           (OutputSpec("output", buffer("output"), "float", "token", reduction_len=lambda p: 2 * p.topk + 1),),
           ("float32", "bfloat16"), REFERENCE, post_reorder_deepgemm_cost, invalid_ids=True,
           bench_anchors=_DS_EP8, sglang=SglangBinding(("post_reorder_deepgemm",)),
           error_inputs=(
               ErrorInput("float32", set_arg("src2dst", lambda a: a["src2dst"].double()), TypeError, "src2dst"),
               ErrorInput("float32", set_arg("topk_weights", lambda a: a["topk_weights"].int()), TypeError,
                          "topk_weights"),
           )),
)


# ----------------------------------------------------------------------------- mutants

_M = Mutant
MUTANTS = (
    # --- ep_scatter (our kernel) ----------------------------------------------------------
    _M("ep_scatter_int32_row_offset", "ep_scatter", KERNELS,
       "dst = tl.atomic_add(start_loc_ptr + e_safe, ones, mask=local).to(tl.int64)",
       "dst = tl.atomic_add(start_loc_ptr + e_safe, ones, mask=local)",
       "int32 destination offset: row * H overflows once the layout passes 2**31 elements (sglang#6348)",
       backends=("cuda",), min_preset="large"),
    _M("ep_scatter_padding_rows_labelled", "ep_scatter", KERNELS,
       "tl.where(rows < valid, e, -1)",
       "tl.where(rows < padded, e, -1)",
       "padding rows of a segment labelled with the expert instead of -1 (sglang#33128)"),
    _M("ep_scatter_m_indices_store_unmasked", "ep_scatter", KERNELS,
       "tl.store(m_indices_ptr + seg_start + rows, labels, mask=rows < padded)",
       "tl.store(m_indices_ptr + seg_start + rows, labels)",
       "an unmasked m_indices store: the last block runs past the segment into the next expert's rows "
       "(and past sum(padded) into entries that must stay untouched)"),
    _M("ep_scatter_start_reloaded", "ep_scatter", KERNELS,
       "seg_start = tl.sum(tl.where(ee < e, padded_all, 0), axis=0)",
       "seg_start = tl.load(start_loc_ptr + e)",
       "a store-then-reload of the segment start (sglang#31929): the start is read back from "
       "expert_start_loc, which another program may not have written yet (here: nobody writes it first)"),
    _M("ep_scatter_scale_not_copied", "ep_scatter", KERNELS,
       "if IS_FP8:",
       "if False:",
       "the fp8 scales not copied with their rows: output_tensor_scale left unwritten",
       dtypes=("fp8", "fp8_ue8m0")),
    # --- ep_gather (our kernel) -----------------------------------------------------------
    _M("ep_gather_int32_row_offset", "ep_gather", KERNELS,
       "src = tl.load(index_ptr + t * TOPK + k).to(tl.int64)",
       "src = tl.load(index_ptr + t * TOPK + k).to(tl.int32)",
       "int32 source offset: row * H overflows once the layout passes 2**31 elements (sglang#6348)",
       backends=("cuda",), min_preset="large"),
    _M("ep_gather_minus_one_counted", "ep_gather", KERNELS,
       "if eid >= 0:",
       "if eid >= -1:",
       "slots of id -1 counted: their (invalid) rows are added into the token"),
    _M("ep_gather_weight_dropped", "ep_gather", KERNELS,
       "acc += rows.to(tl.float32) * w",
       "acc += rows.to(tl.float32)",
       "the router weight not applied"),
    # --- ops whose `ours` is the reference: patches of the reference ----------------------
    _M("ep_scatter_from_psum_m_indices_unmasked", "ep_scatter_from_psum", REFERENCE,
       "        m_indices[seg_start[e]:psum[e]] = e",
       "        m_indices[seg_start[e]:seg_start[e] + -(-(psum[e] - seg_start[e]) // 128) * 128] = e",
       "an unmasked m_indices store: a whole block of 128 is written per expert, running past the packed "
       "segment into the next expert's rows and past psum[-1]"),
    _M("fill_m_indices_padding_minus_one", "fill_m_indices_from_psum", REFERENCE,
       "        m_indices[start:min(seg_end, total_rows)] = e",
       "        m_indices[start:min(end, total_rows)] = e",
       "a segment's alignment padding left at -1 instead of labelled with its expert"),
    _M("post_reorder_deepgemm_scaling_dropped", "post_reorder_deepgemm", REFERENCE,
       "    output[:num_tokens] = (acc * rsf).to(output.dtype)",
       "    output[:num_tokens] = acc.to(output.dtype)",
       "routed_scaling_factor not applied"),
)
