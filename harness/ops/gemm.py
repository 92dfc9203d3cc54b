"""Record of ``grouped_gemm`` (SPEC.md section 6: one GEMM per expert group over rows in
expert order, bf16/fp16/fp32 or fp8 w8a8 per tensor / block-wise), with its builder, cost,
bench shapes and timed layout, SGLang binding, bad inputs, plain-torch baselines and mutants."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch

import reference
from reference._checks import FP8_DTYPE, FP8_MAX, validate_grouped_gemm

from ..cases import CaseParams, make_generator, randn
from ..costs import Cost, tensor_core_rate
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, OpSpec, OutputSpec, Precondition, Sample, SglangBinding,
                      activation_dtype, buffer, is_fp8, set_arg)
from ..sglang.bind import Convention, Neutral
from .preprocess import case_ids, routing_tensors

KERNELS = "optimized.gemm"
BLOCK_SHAPE = [128, 128]  # DeepSeek-V3's fp8 block shape, as SGLang uses it


def build_grouped_gemm(p: CaseParams, device) -> Sample:
    """a [T*K, H] in expert order, b [E_w, I, H]; groups are this rank's experts."""
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    _, _, seg, pos_to_slot = routing_tensors(ids, p)
    seg_local = seg[p.start_expert:p.end_expert + 2].clone()                     # [E_local + 1]
    M, N, Kd = p.tokens * p.topk, p.inter, p.hidden
    e_w = p.e_local + 1 + p.seed % 3                                             # more weights than groups
    weight_indices = torch.randperm(e_w, generator=gen, device=device)[:p.e_local]
    act = activation_dtype(p.dtype)
    scale_a = scale_b = block_shape = None
    fp8 = is_fp8(p.dtype)
    if p.dtype == "fp8_tensor":
        a = randn((M, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        b = randn((e_w, N, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        base = 1.0 / (256.0 * math.sqrt(Kd))                                     # outputs of order 1
        scale_a = (torch.rand(e_w, generator=gen, device=device) + 0.5) * math.sqrt(base)
        scale_b = (torch.rand(e_w, generator=gen, device=device) + 0.5) * math.sqrt(base)
    elif p.dtype == "fp8_block":
        block_shape = list(BLOCK_SHAPE)
        a = randn((M, Kd), gen, act)
        b = randn((e_w, N, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        nb, kb = -(-N // block_shape[0]), -(-Kd // block_shape[1])
        scale_b = (torch.rand(e_w, nb, kb, generator=gen, device=device) + 0.5) / (16.0 * math.sqrt(Kd))
    else:
        a = randn((M, Kd), gen, act)
        b = randn((e_w, N, Kd), gen, act, scale=1.0 / math.sqrt(Kd))
    c = torch.empty(M, N, dtype=act, device=device)
    args = dict(a=a, b=b, c=c, batch_size=p.e_local, weight_column_major=True, seg_indptr=seg_local,
                weight_indices=weight_indices, use_fp8_w8a8=fp8, scale_a=scale_a, scale_b=scale_b,
                block_shape=block_shape)
    f64 = ("c",) if p.dtype == "fp8_tensor" else ("a", "c") if fp8 else ("a", "b", "c")
    return Sample(p, args, f64, ids, pos_to_slot)


def quantize_weight_blockwise(w: torch.Tensor, block_shape):
    """fp8 weight and its block scales from a float32 weight [E, N, Kd] (amax / 448 per block)."""
    E, N, Kd = w.shape
    bn, bk = block_shape
    nb, kb = -(-N // bn), -(-Kd // bk)
    padded = torch.nn.functional.pad(w, (0, kb * bk - Kd, 0, nb * bn - N))
    blocks = padded.view(E, nb, bn, kb, bk)
    scale = blocks.abs().amax(dim=(2, 4)).clamp_min(1e-10) / FP8_MAX             # [E, nb, kb]
    q = (blocks / scale[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(E, nb * bn, kb * bk)[:, :N, :Kd].contiguous(), scale


def grouped_gemm_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Reads the rows in its groups, the weights of every non-empty group once (block scales
    too), writes the rows in its groups; FLOPs are 2 * rows * N * Kd."""
    a, b, c = args["a"], args["b"], args["c"]
    seg = args["seg_indptr"].to(torch.int64).cpu()
    widx = args["weight_indices"].to(torch.int64).cpu()
    rows = int(seg[-1] - seg[0])
    nonempty = (seg[1:] - seg[:-1]) > 0
    weights_used = int(torch.unique(widx[nonempty]).numel())
    _, N, Kd = b.shape
    nbytes = rows * Kd * a.element_size() + weights_used * N * Kd * b.element_size() + rows * N * c.element_size()
    for name in ("scale_a", "scale_b"):
        scale = args.get(name)
        if isinstance(scale, torch.Tensor) and scale.dim() > 1:   # block scales: a real stream of bytes
            per = scale[0].numel() * scale.element_size()
            nbytes += per * (rows if name == "scale_a" else weights_used)
    return Cost(nbytes, 2 * rows * N * Kd,
                f"{rows} rows x Kd {Kd} read, {weights_used} weights {N}x{Kd} read, {rows} x N {N} written",
                flop_rate=tensor_core_rate(b))


def production_layout(sample: Sample) -> Sample:
    """The sample as SGLang's EP layer calls the GEMM: this rank's weights in group order
    (weight_indices = arange). The case builder's permuted, padded weight table is a correctness
    fuzz; timed as such it would charge a baseline that cannot index weights (torch._grouped_mm)
    a gather of every weight per call."""
    args = dict(sample.args)
    wi = args["weight_indices"]
    order = wi.to(torch.int64)
    args["b"] = args["b"].index_select(0, order).contiguous()                 # [E_local, N, Kd]
    for name in ("scale_a", "scale_b"):   # per-expert scales (fp8 per tensor; block-wise scale_b)
        if args[name] is not None and args[name].dim() >= 1 and args[name].shape[0] == sample.args["b"].shape[0]:
            args[name] = args[name].index_select(0, order).contiguous()
    args["weight_indices"] = torch.arange(wi.numel(), dtype=wi.dtype, device=wi.device)
    return dataclasses.replace(sample, args=args)


# ----------------------------------------------------------------------------- plain-torch baselines

def _no_fp8(use_fp8_w8a8: bool) -> None:
    if use_fp8_w8a8:
        raise NotImplementedError("use_fp8_w8a8: the plain-torch baselines cover bf16/fp16/fp32 only")


def torch_mm_loop(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8=False,
                  scale_a=None, scale_b=None, block_shape=None):
    """One torch.mm per group (float32 accumulation inside cuBLAS)."""
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8,
                          scale_a, scale_b, block_shape, check_values=False)
    _no_fp8(use_fp8_w8a8)
    seg, experts = seg_indptr.tolist(), weight_indices.tolist()        # host sync, as a torch loop does
    for g in range(batch_size):
        lo, hi = seg[g], seg[g + 1]
        if hi > lo:
            torch.mm(a[lo:hi], b[experts[g]].t(), out=c[lo:hi])
    return c


def torch_grouped_mm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices,
                     use_fp8_w8a8=False, scale_a=None, scale_b=None, block_shape=None):
    """torch._grouped_mm over the rows [seg[0], seg[batch]) with offsets relative to seg[0].

    Weights are gathered by weight_indices (a copy) unless they are the identity, which is
    checked on the host: SGLang's EP layer passes arange(E_local). torch._grouped_mm wants
    16-byte aligned strides (Kd and N multiples of 8 in bf16): other shapes raise there."""
    validate_grouped_gemm(a, b, c, batch_size, weight_column_major, seg_indptr, weight_indices, use_fp8_w8a8,
                          scale_a, scale_b, block_shape, check_values=False)
    _no_fp8(use_fp8_w8a8)
    if batch_size == 0:
        return c
    lo, hi = (int(x) for x in seg_indptr[[0, -1]].tolist())
    identity = batch_size == b.shape[0] and bool(
        torch.equal(weight_indices, torch.arange(batch_size, device=weight_indices.device)))
    w = b if identity else b.index_select(0, weight_indices)             # [G, N, Kd]
    offs = (seg_indptr[1:] - lo).to(torch.int32)                          # group ends, relative to lo
    c[lo:hi] = torch._grouped_mm(a[lo:hi], w.transpose(1, 2), offs=offs)
    return c


# ----------------------------------------------------------------------------- record

_ANCHORS = (
    # (groups, M_total, N, Kd): 32 local experts of 256 with T*K/8 = M_total local rows.
    BenchAnchor(4096, 8, 256, 31, 7168, 4096, "DeepSeek-V3 EP8 gate_up"),
    BenchAnchor(4096, 8, 256, 31, 2048, 7168, "DeepSeek-V3 EP8 down"),
    BenchAnchor(4096, 2, 8, None, 4096, 28672, "Mixtral gate_up"),
    BenchAnchor(256, 8, 256, 31, 7168, 4096, "decode-sized"),
)


def gemm_row_context(sample: Sample, row: int):
    """The group a row of c belongs to and the weight (b's index) it is multiplied by."""
    seg = sample.args["seg_indptr"].to(torch.int64).cpu()
    g = int(torch.searchsorted(seg, torch.tensor([row]), right=True)[0]) - 1
    if not 0 <= g < int(sample.args["batch_size"]) or row >= int(seg[-1]):
        return {"group": None}
    return {"group": g, "weight": int(sample.args["weight_indices"][g])}


# SGLang's block-wise fp8 GEMM asserts that Kd is a multiple of the quant block's K; ours takes any Kd.
K_BLOCK_ALIGNED = Precondition(
    "fp8_block_k_aligned", f"fp8 block-wise: Kd a multiple of the quant block's {BLOCK_SHAPE[1]}",
    holds=lambda p: p.dtype != "fp8_block" or p.hidden % BLOCK_SHAPE[1] == 0,
    fit=lambda p: p if p.dtype != "fp8_block" else dataclasses.replace(
        p, hidden=max(BLOCK_SHAPE[1], p.hidden // BLOCK_SHAPE[1] * BLOCK_SHAPE[1])))


# What SGLang's releases changed (tools/sglang_inventory.py).
SCALE_A_PER_WEIGHT = Neutral(
    False, "0.4.7 .. 0.5.3 (default True)", "True reads scale_a per row [M] (w8a8 dynamic quantisation); False per "
                                            "weight, our scale_a")
FREES_A = Convention(
    "frees a", applies=lambda t: "dispose_tensor" in t.code_names,
    args={"a": lambda a: a["a"].clone() if a["block_shape"] is not None else a["a"]}, consumes=("a",),
    releases="0.4.7 .. 0.5.3",
    why="with block_shape, grouped_gemm_triton frees a's storage after quantising it (SGLang's layer passes a "
        "temporary); our a is an input the caller keeps, so the call gets a copy")


def _model_variants(shape: Mapping[str, int]):
    """The GEMM appears twice in a model: gate_up (N = 2I, Kd = H) and down (N = H, Kd = I)."""
    H, I = shape["hidden"], shape["inter"]
    return [("gate_up", dict(hidden=H, inter=2 * I)), ("down", dict(hidden=I, inter=H))]


RECORDS = (
    OpSpec("grouped_gemm", reference.grouped_gemm, build_grouped_gemm,
           (OutputSpec("c", buffer("c"), "float", "position", reduction_len=lambda p: p.hidden, fp8_dot=True,
                       matmul=True),),
           ("bfloat16", "float16", "float32", "fp8_tensor", "fp8_block"), KERNELS, grouped_gemm_cost,
           max_tokens=256, invalid_ids=True, bench_anchors=_ANCHORS,
           shape_label=lambda p: f"N={p.inter} Kd={p.hidden}", model_variants=_model_variants,
           timed_layout=production_layout, preconditions=(K_BLOCK_ALIGNED,), row_context=gemm_row_context,
           sglang=SglangBinding(("grouped_gemm_triton",), requires=(K_BLOCK_ALIGNED.id,),
                                neutral={"use_per_token_if_dynamic": SCALE_A_PER_WEIGHT}, conventions=(FREES_A,)),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("b", lambda a: a["b"][:, :, :-1].contiguous()), ValueError, "b"),
               ErrorInput("bfloat16", set_arg("c", lambda a: a["c"].float()), TypeError, "c"),
               ErrorInput("bfloat16", set_arg("seg_indptr", lambda a: a["seg_indptr"].flip(0).contiguous() + 1),
                          ValueError, "seg_indptr"),
               ErrorInput("bfloat16", set_arg("seg_indptr", lambda a: a["seg_indptr"] + 1000), ValueError,
                          "seg_indptr"),
               ErrorInput("bfloat16", set_arg("seg_indptr", lambda a: a["seg_indptr"].int()), TypeError, "seg_indptr"),
               ErrorInput("bfloat16", set_arg("weight_indices", lambda a: a["weight_indices"] + 50), ValueError,
                          "weight_indices"),
               ErrorInput("bfloat16", set_arg("batch_size", 2), ValueError, "seg_indptr"),
               ErrorInput("bfloat16", set_arg("weight_column_major", False), ValueError, "weight_column_major"),
               ErrorInput("fp8_tensor", set_arg("scale_a", None), ValueError, "scale_a"),
               ErrorInput("fp8_tensor", set_arg("use_fp8_w8a8", False), TypeError, "b"),
               ErrorInput("fp8_block", set_arg("block_shape", [128]), ValueError, "block_shape"),
               ErrorInput("fp8_block", set_arg("scale_b", lambda a: a["scale_b"][:, :, :0].contiguous()), ValueError,
                          "scale_b"),
           ),
           baselines={"torch": torch_mm_loop, "torch_grouped_mm": torch_grouped_mm}, case_cost=3.7),
)


# ----------------------------------------------------------------------------- mutants
# Left out as equivalent to the original (it survived, as it must): the tiles per group
# computed as ``(hi - lo) // BM + 1``: every tile is masked by its group's end row and the grid
# is an upper bound already, so an extra empty tile writes nothing.

_M = Mutant
_OP = "grouped_gemm"
MUTANTS = (
    _M("gemm_weight_index_ignored", _OP, KERNELS,
       "e = tl.load(widx_ptr + g).to(tl.int64)",
       "e = g.to(tl.int64)",
       "the wrong weight for a group: b[g] instead of b[weight_indices[g]]"),
    _M("gemm_group_search_off_by_one", _OP, KERNELS,
       "g = tl.sum((cum <= mt).to(tl.int32), axis=0)",
       "g = tl.sum((cum < mt).to(tl.int32), axis=0)",
       "off-by-one in the search of a tile's group over the tiles' prefix sum"),
    _M("gemm_seg_start_ignored", _OP, KERNELS,
       "lo = tl.load(seg_ptr + gi, mask=gmask, other=0)",
       "lo = tl.load(seg_ptr + gi, mask=gmask & (gi > 0), other=0)",
       "a nonzero seg_indptr start ignored: group 0 is taken to start at row 0"),
    _M("gemm_empty_groups_skipped", _OP, KERNELS,
       "g = tl.sum((cum <= mt).to(tl.int32), axis=0)",
       "g = tl.sum(((cum <= mt) & (ntiles > 0)).to(tl.int32), axis=0)",
       "empty groups mishandled: left out when counting the groups before a tile, so later tiles land on "
       "an empty neighbour"),
    _M("gemm_k_tail_mask_dropped", _OP, KERNELS,
       "kmask = (k0 + kk) < Kd",
       "kmask = kk < Kd",
       "tail mask without the block offset: when Kd is not a multiple of BK the last K block reads past "
       "the row"),
    _M("gemm_rows_not_clamped_to_group", _OP, KERNELS,
       "rmask = rows < row_hi",
       "rmask = rows < M",
       "two programs writing the same rows (a race): a group's last m-tile also writes the next group's "
       "first rows, with its own weight"),
    _M("gemm_partial_sums_in_c_dtype", _OP, KERNELS,
       "acc = _mma(a, b, acc)",
       "acc = _mma(a, b, acc).to(a.dtype).to(tl.float32)  # partial sums in the input dtype",
       "accumulation in the input dtype: the running sum is rounded to a's dtype after every K block",
       dtypes=("bfloat16", "float16")),
    _M("gemm_tma_tile_row_from_group_end", _OP, KERNELS,
       "a = a_ptr.load([row0.to(tl.int32), k0])",
       "a = a_ptr.load([(row_hi - BM).to(tl.int32), k0])",
       "the TMA path's row coordinate anchored at the group's end: every m-tile multiplies the "
       "group's last BM rows (or, for a group shorter than BM, rows of the group before it); only a "
       "Kd the TMA path takes shows it"),
    _M("gemm_tma_store_whole_by_tensor_end", _OP, KERNELS,
       "whole = row0 + BM <= row_hi",
       "whole = row0 + BM <= M",
       "the TMA store's whole-tile test against the end of c instead of the group's end: a group's last "
       "tile writes its full BM rows, over the next group's rows (or past seg_indptr's last row)"),
    _M("gemm_second_accumulator_rows_from_tile_start", _OP, KERNELS,
       "a2 = a2_desc.load([(row0 + BM).to(tl.int32), k0])",
       "a2 = a2_desc.load([row0.to(tl.int32), k0])",
       "the second accumulator of a two-accumulator tile fed the tile's first rows instead of the BM "
       "rows after them (TMA path; only groups reaching past a tile's first BM rows show it)"),
    _M("gemm_tail_stored_past_group", _OP, KERNELS,
       "tail = tl.make_tensor_descriptor(c_ptr, shape=[row_hi.to(tl.int32), N], strides=[N, 1],",
       "tail = tl.make_tensor_descriptor(c_ptr, shape=[(row_hi + 1).to(tl.int32), N], strides=[N, 1],",
       "a group's last tile (either accumulator's) stored through a descriptor that ends one row past the "
       "group: that row of the next group is overwritten (a race), or the row after c (a guard row)"),
    _M("gemm_fp8_scale_of_group", _OP, KERNELS,
       "acc = _tensor_scaled(acc, sa_ptr, sb_ptr, e, MODE)",
       "acc = _tensor_scaled(acc, sa_ptr, sb_ptr, g, MODE)",
       "per-tensor fp8 scales of the wrong weight: indexed by the group instead of weight_indices[g]",
       dtypes=("fp8_tensor",)),
    _M("gemm_fp8_scale_divided", _OP, KERNELS,
       "acc = acc * (tl.load(sa_ptr + e) * tl.load(sb_ptr + e))",
       "acc = acc / (tl.load(sa_ptr + e) * tl.load(sb_ptr + e))",
       "the dequantisation scale's reciprocal applied instead of the scale", dtypes=("fp8_tensor",)),
    # issue 23 item 3: a running sum rounded to bfloat16 after every K block; the fp8 accumulation
    # term of harness/tolerance.py is set to catch it. Killed on both backends (the interpreter in
    # 2 min at 30 cases), kept off CI's kill table (tests/test_mutants.py) for its time: GPU only
    _M("gemm_fp8_tensor_partial_sums_bf16", _OP, KERNELS,
       "            acc = _mma(a, b, acc)\n",
       "            acc = _mma(a, b, acc).to(tl.bfloat16).to(tl.float32)\n",
       "fp8 per tensor: the running sum rounded to bfloat16 after every K block", dtypes=("fp8_tensor",),
       backends=("cuda",)),
    _M("gemm_fp8_block_partial_sums_bf16", _OP, KERNELS,
       "acc = _add_scaled(acc, _mma(a, b, tl.zeros([BM, BN], dtype=tl.float32)), sa, sb, QBN % BN == 0)",
       "acc = _add_scaled(acc, _mma(a, b, tl.zeros([BM, BN], dtype=tl.float32)), sa, sb, QBN % BN == 0)"
       ".to(tl.bfloat16).to(tl.float32)",
       "fp8 block-wise: the running sum rounded to bfloat16 after every K block (after its scales)",
       dtypes=("fp8_block",), backends=("cuda",)),
    _M("gemm_block_scales_two_blocks_ahead", _OP, KERNELS,
       "kb_next = tl.minimum((k0 + BK) // QBK, (Kd - 1) // QBK)",
       "kb_next = tl.minimum((k0 + 2 * BK) // QBK, (Kd - 1) // QBK)",
       "the block-wise scale prefetch runs a block too far ahead: K blocks after the first are scaled by their "
       "successor's scales", dtypes=("fp8_block",)),
    _M("gemm_block_column_scale_of_first_block", _OP, KERNELS,
       "sb_ptrs = sb_ptr + e * SB_N * SB_K + (n0 // QBN) * SB_K",
       "sb_ptrs = sb_ptr + e * SB_N * SB_K",
       "a tile inside one column block of b takes the scales of b's first column block", dtypes=("fp8_block",)),
    _M("gemm_quant_scale_not_reciprocal", _OP, KERNELS,
       "q = cast_out(x / scale[:, None], q_ptr.dtype.element_ty)",
       "q = cast_out(x * scale[:, None], q_ptr.dtype.element_ty)",
       "block-wise quantiser multiplies by the scale instead of dividing", dtypes=("fp8_block",)),
)
