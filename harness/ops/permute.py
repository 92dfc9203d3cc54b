"""Records of the permute family of SGLang 0.5.23 (``ep_moe_kernels.py``): ``moe_permute``,
``moe_permute_with_scale``, ``moe_unpermute`` and the DeepEP normal-mode row kernels
``deepep_permute`` (SGLang: ``deepep_permute_triton_kernel``) and ``deepep_post_reorder``
(``deepep_post_reorder_triton_kernel``); contracts in reference/permute.py, our kernels in
optimized/permute.py.

moe_permute sorts with an unstable torch.sort upstream, so the order of an expert's rows (and
the numbering of the unrouted slots) is implementation-defined: src2dst is a "row_index" output
and the permuted rows are compared through it (harness.canonical). Rows past the routed ones
are never written (poison, as SGLang's torch.empty leaves them).

What the family does NOT get a record for, and why (issue 27):
- ``deepep_run_moe_deep_preprocess`` (0.5.23, unchanged since 0.4.10): the ``deepep_preprocess``
  record binds it (harness/ops/preprocess.py); reference/permute.py states its wider domain
  (every negative id dropped), outside that record's fuzzed ids of -1.
- ``run_moe_ep_preproess(topk_ids, num_local_experts)`` (0.5.4 .. 0.5.5): the ``ep_preprocess``
  record's convention SEG_BELOW_EACH_EXPERT; it leaves seg_indptr[num_local_experts] at 0 (a
  zeros buffer nothing writes), which the convention sidesteps by asking for E + 1 experts.
- ``post_reorder_triton_kernel`` without start/end (0.5.4 .. 0.5.10, gated on local ids): the
  ``post_reorder`` record's convention LOCAL_EXPERT_IDS; its released gate ``expert_id > 0`` drops
  local expert 0, which the check reports, and our kernel's mutant of the same slip is
  ``post_reorder_first_local_expert_dropped`` (harness/ops/reorder.py).

Edge cases drawn from the case's seed: -1 ids (``invalid_ids``), int32 or int64 expert_offsets,
is_ep either way, routed_scaling_factor None, 1.0 (no multiply) or another value, gateup buffers
longer than the routed rows (their tail untouched).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from reference import permute as ref
from reference._checks import FP8_DTYPE

from ..cases import CaseParams, make_generator, make_topk_weights, randn
from ..costs import Cost
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, SglangBinding, activation_dtype, buffer,
                      is_fp8, returned, set_arg)
from ..sglang.bind import Neutral
from .preprocess import case_ids

KERNELS = "optimized.permute"
# offsets past 2**31 elements: 40000 tokens x 8 slots = 320000 rows of 7168
_LARGE = dict(tokens=40000, topk=8, experts=256, hidden=7168, inter=64)
# DeepSeek-V3 on EP8: 256 experts, 32 per rank, top-8, H 7168; decode, small and large prefill batches
_DS_EP8 = tuple(BenchAnchor(t, 8, 256, 31, 7168, 2048, f"DeepSeek-V3 EP8 T={t}") for t in (1, 64, 4096))
# Rows are bit copies (permute) or a float32 sum of K weighted rows (unpermute): one 16-bit and one
# other dtype each exercise every code path (CI time on the interpreter: see tests/test_permute_records.py)
PERMUTE_DTYPES = ("bfloat16", "fp8")
UNPERMUTE_DTYPES = ("bfloat16", "float32")
SCALE_BLOCK = 128            # one scale per 128 columns (per-token-group fp8 quantisation)
BLOCK_SIZE_512 = Neutral(512, "0.4.x .. 0.5.23", "the tile SGLang launches the row kernels with")


def _int(gen, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen, device=gen.device))


def _rows(p: CaseParams, gen, n: int) -> torch.Tensor:
    """Token rows [n, H]: fp8 values in e4m3 range for fp8 cases, else the activation dtype."""
    if is_fp8(p.dtype):
        return randn((n, p.hidden), gen, torch.float32, scale=40.0).to(FP8_DTYPE)
    return randn((n, p.hidden), gen, activation_dtype(p.dtype))


def _scaling_factor(gen):
    """None (SGLang's default: 1.0), 1.0 (the multiply skipped), 2.5 (DeepSeek-V3's) or a random one."""
    pick = _int(gen, 0, 3)
    return (None, 1.0, 2.5, round(float(torch.rand(1, generator=gen, device=gen.device)) * 3 + 0.3, 3))[pick]


def _src2dst(ids: torch.Tensor, p: CaseParams) -> torch.Tensor:
    """The stable slot -> row assignment (negative for unrouted slots) in the case's index dtype."""
    _, src2dst, _ = ref.deepep_run_moe_deep_preprocess(ids, p.experts)
    return src2dst.to(ids.dtype if p.index_dtype == "int32" else torch.int64)


def _permute_args(p: CaseParams, gen, with_scale: bool):
    ids = case_ids(p, gen, torch.int32)                       # SGLang accepts int32 only
    args = dict(inputs=_rows(p, gen, p.tokens))
    if with_scale:
        width = max(1, -(-p.hidden // SCALE_BLOCK))
        args["input_scale"] = torch.rand(p.tokens, width, generator=gen, device=gen.device) * 0.5 + 0.01
    args.update(topk_ids=ids, num_experts=p.experts, use_int64_offset=bool(_int(gen, 0, 1)),
                is_ep=bool(_int(gen, 0, 1)))
    return args, ids


def build_moe_permute(p: CaseParams, device) -> Sample:
    args, ids = _permute_args(p, make_generator(p, device), with_scale=False)
    return Sample(p, args, (), ids)


def build_moe_permute_with_scale(p: CaseParams, device) -> Sample:
    args, ids = _permute_args(p, make_generator(p, device), with_scale=True)
    return Sample(p, args, (), ids)


def build_moe_unpermute(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    act = activation_dtype(p.dtype)
    args = dict(inputs=randn((p.tokens * p.topk, p.hidden), gen, act), src2dst=_src2dst(ids, p), topk_ids=ids,
                topk_weights=make_topk_weights(p, gen), routed_scaling_factor=_scaling_factor(gen))
    return Sample(p, args, ("inputs",), ids)


def build_deepep_permute(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    x = _rows(p, gen, p.tokens)
    rows = p.tokens * p.topk + _int(gen, 0, 2)               # a tail no slot names: left untouched
    args = dict(input=x, gateup_input=torch.empty(rows, p.hidden, dtype=x.dtype, device=device),
                src2dst=_src2dst(ids, p), topk_ids=ids, a1_scales=None, topk=p.topk, hidden_size=p.hidden)
    return Sample(p, args, (), ids)


def build_deepep_post_reorder(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    act = activation_dtype(p.dtype)
    factor = _scaling_factor(gen)
    args = dict(down_output=randn((p.tokens * p.topk, p.hidden), gen, act),
                output=torch.empty(p.tokens, p.hidden, dtype=act, device=device), src2dst=_src2dst(ids, p),
                topk_ids=ids, topk_weights=make_topk_weights(p, gen), topk=p.topk, hidden_size=p.hidden,
                routed_scaling_factor=1.0 if factor is None else factor)
    return Sample(p, args, ("down_output", "output"), ids)


# ----------------------------------------------------------------------------- costs

def _routed(src2dst_or_ids: torch.Tensor) -> int:
    return int((src2dst_or_ids >= 0).sum())


def permute_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each token row read once, each routed slot's row written once (scales alike)."""
    x = args.get("inputs", args.get("input"))
    routed = _routed(args["topk_ids"] if "inputs" in args else args["src2dst"])
    row = x.shape[1] * x.element_size()
    scale = args.get("input_scale")
    if scale is not None:
        row += scale.shape[1] * scale.element_size()
    return Cost(x.shape[0] * row + routed * row, 0, f"{x.shape[0]} token rows read, {routed} slot rows written")


def unpermute_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each routed slot's row read once, each token row written once."""
    x = args.get("inputs", args.get("down_output"))
    routed = _routed(args["src2dst"])
    T = args["topk_ids"].shape[0]
    row = x.shape[1] * x.element_size()
    return Cost(routed * row + T * row, 0, f"{routed} slot rows read, {T} token rows written")


# ----------------------------------------------------------------------------- records

def _permuted(rows_at: int, scale_at: int = -1):
    outs = (OutputSpec("src2dst", returned(rows_at + (2 if scale_at >= 0 else 1)), "row_index", "slot"),
            OutputSpec("outputs", returned(rows_at), "exact", "position", index="src2dst"),
            OutputSpec("expert_offsets", returned(rows_at + (3 if scale_at >= 0 else 2)), "exact", "expert"))
    if scale_at >= 0:
        outs += (OutputSpec("scale_outputs", returned(scale_at), "exact", "position", index="src2dst"),)
    return outs


# the float32 sum of K weighted terms (the weight's rounding to the input dtype is the reference's too)
_SUM_OF_K = dict(reduction_len=lambda p: p.topk)
_ids = "topk_ids"

RECORDS = (
    OpSpec("moe_permute", ref.moe_permute, build_moe_permute, _permuted(0), PERMUTE_DTYPES, KERNELS, permute_cost,
           invalid_ids=True, large_shape=_LARGE, bench_anchors=_DS_EP8,
           bench_routing="dispatched", sglang=SglangBinding(("moe_permute",)),
           error_inputs=(
               ErrorInput("bfloat16", set_arg(_ids, lambda a: a[_ids].long()), TypeError, _ids),
               ErrorInput("bfloat16", set_arg(_ids, lambda a: a[_ids][:-1]), ValueError, _ids),
               ErrorInput("bfloat16", set_arg(_ids, lambda a: a[_ids] + a["num_experts"]), ValueError, _ids),
               ErrorInput("bfloat16", set_arg("use_int64_offset", 1), TypeError, "use_int64_offset"),
           ), case_cost=1.8),
    OpSpec("moe_permute_with_scale", ref.moe_permute_with_scale, build_moe_permute_with_scale, _permuted(0, 1),
           ("fp8",), KERNELS, permute_cost, invalid_ids=True,
           bench_anchors=_DS_EP8[:2], bench_dtype="fp8", bench_routing="dispatched",
           sglang=SglangBinding(("moe_permute_with_scale",)),
           error_inputs=(ErrorInput("fp8", set_arg("input_scale", lambda a: a["input_scale"][:-1]), ValueError,
                                    "input_scale"),), case_cost=2.0),
    OpSpec("moe_unpermute", ref.moe_unpermute, build_moe_unpermute,
           (OutputSpec("outputs", returned(0), "float", "token", **_SUM_OF_K),), UNPERMUTE_DTYPES, KERNELS,
           unpermute_cost, invalid_ids=True, large_shape=_LARGE,
           bench_anchors=_DS_EP8, bench_routing="dispatched", sglang=SglangBinding(("moe_unpermute",)),
           error_inputs=(
               ErrorInput("float32", set_arg("topk_weights", lambda a: a["topk_weights"].int()), TypeError,
                          "topk_weights"),
               ErrorInput("float32", set_arg("src2dst", lambda a: a["src2dst"][:-1]), ValueError, "src2dst"),
               ErrorInput("float32", set_arg("src2dst", lambda a: a["src2dst"] + 10 ** 6), ValueError, "src2dst"),
           ), case_cost=2.0),
    OpSpec("deepep_permute", ref.deepep_permute_triton_kernel, build_deepep_permute,
           (OutputSpec("gateup_input", buffer("gateup_input"), "exact", "position"),), PERMUTE_DTYPES, KERNELS,
           permute_cost, invalid_ids=True, bench_anchors=_DS_EP8[:2],
           bench_routing="dispatched",
           sglang=SglangBinding(("deepep_permute_triton_kernel",), grid=lambda a: (a["input"].shape[0],),
                                neutral={"BLOCK_SIZE": BLOCK_SIZE_512}),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("hidden_size", 3), ValueError, "hidden_size"),
               ErrorInput("bfloat16", set_arg("src2dst", lambda a: a["src2dst"] + 10 ** 6), ValueError, "src2dst"),
           )),
    OpSpec("deepep_post_reorder", ref.deepep_post_reorder_triton_kernel, build_deepep_post_reorder,
           (OutputSpec("output", buffer("output"), "float", "token", **_SUM_OF_K),), ("bfloat16",), KERNELS,
           unpermute_cost, invalid_ids=True, bench_anchors=_DS_EP8[:2],
           bench_routing="dispatched",
           sglang=SglangBinding(("deepep_post_reorder_triton_kernel",), grid=lambda a: (a["output"].shape[0],),
                                neutral={"BLOCK_SIZE": BLOCK_SIZE_512}),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("down_output", lambda a: a["down_output"][:, :-1]), ValueError,
                          "down_output"),
               ErrorInput("bfloat16", set_arg("topk_weights", lambda a: a["topk_weights"].int()), TypeError,
                          "topk_weights"),
           ), case_cost=1.8),
)


# ----------------------------------------------------------------------------- mutants

_M = Mutant
MUTANTS = (
    # --- moe_permute ----------------------------------------------------------------------
    _M("moe_permute_rank_counts_own_slot", "moe_permute", KERNELS,
       "(every[None, :] < slot[:, None])",
       "(every[None, :] <= slot[:, None])",
       "off-by-one in the stable rank: a slot counts itself among the equal ids before it, so every row "
       "lands one place late (fused path)"),
    _M("moe_permute_unrouted_not_subtracted", "moe_permute", KERNELS,
       "dst = tl.sum((before & in_range[None, :]).to(tl.int32), axis=1) - n_neg",
       "dst = tl.sum((before & in_range[None, :]).to(tl.int32), axis=1)",
       "dropped slots (-1) copied: positions still count the unrouted slots, which get rows of their own "
       "in front of expert 0's"),
    _M("moe_permute_offsets_inclusive", "moe_permute", KERNELS,
       "below = tl.cumsum(hist, axis=0) - hist",
       "below = tl.cumsum(hist, axis=0)",
       "expert_offsets from the inclusive scan: every segment starts one expert late"),
    _M("moe_permute_int32_row_offset", "moe_permute", KERNELS,
       "\n        WIDE=_wide(x, out), num_warps=4)",
       "\n        WIDE=False, num_warps=4)",
       "int32 row offsets: dst * H overflows once T*K*H passes 2**31 (T=40000, K=8, H=7168)",
       dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- moe_permute_with_scale -----------------------------------------------------------
    _M("moe_permute_with_scale_scales_unpermuted", "moe_permute_with_scale", KERNELS,
       "_launch_rows(input_scale, scale_outputs, src2dst, topk_ids.shape[1])",
       "scale_outputs.copy_(input_scale.repeat_interleave(topk_ids.shape[1], 0))",
       "the scales copied in slot order instead of through src2dst: each row gets another token's scales"),
    # --- moe_unpermute --------------------------------------------------------------------
    _M("moe_unpermute_scaling_factor_dropped", "moe_unpermute", KERNELS,
       "SCALE=factor != 1.0",
       "SCALE=False",
       "routed_scaling_factor not applied"),
    _M("moe_unpermute_dropped_slots_summed", "moe_unpermute", KERNELS,
       "use = kmask & (dst >= 0)",
       "use = kmask & (dst >= -1)",
       "dropped slots (src2dst -1) summed: row -1, before the buffer, is added into the token"),
    _M("moe_unpermute_int32_row_offset", "moe_unpermute", KERNELS,
       "BLOCK_H=block_h, SCALE=factor != 1.0, WIDE=_wide(x, out), num_warps=4)",
       "BLOCK_H=block_h, SCALE=factor != 1.0, WIDE=False, num_warps=4)",
       "int32 row offsets: src2dst * H overflows once T*K*H passes 2**31",
       dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- deepep_permute -------------------------------------------------------------------
    _M("deepep_permute_dropped_slots_copied", "deepep_permute", KERNELS,
       "write = kmask & (dst >= 0)",
       "write = kmask & (dst >= -1)",
       "dropped slots (src2dst -1) copied: the token row is written to row -1, before gateup_input"),
    # --- deepep_post_reorder --------------------------------------------------------------
    _M("deepep_post_reorder_row0_dropped", "deepep_post_reorder", KERNELS,
       "use = kmask & (dst >= 0)",
       "use = kmask & (dst > 0)",
       "the gate written 'src2dst > 0' (the slip of SGLang commit 26be49be's 'expert_id > 0', on a row "
       "index): the slot placed in row 0 is silently left out of its token's sum"),
)
