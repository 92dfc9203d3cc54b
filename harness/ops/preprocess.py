"""Records of the preprocess family: ``ep_preprocess`` and ``deepep_preprocess`` (SPEC.md
sections 1-2), with their case builder, cost, bench shapes, SGLang binding, bad inputs,
plain-torch baselines and mutants. Also the routing tensors every later op of the chain is
built from (``routing_tensors``)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

import reference
from reference._checks import validate_preprocess

from ..cases import CaseParams, make_generator, make_topk_ids
from ..costs import Cost
from ..mutants import Mutant, cache_by_shape
from ..opspec import (ID_DTYPES, BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, SglangBinding,
                      non_contiguous, returned, set_arg)
from ..sglang.bind import Convention

KERNELS = "optimized.preprocess"


def routing_tensors(topk_ids: torch.Tensor, p: CaseParams):
    """Reference routing tensors of a case: (reorder_topk_ids, src2dst, seg_indptr, position_to_slot),
    src2dst in the case's index dtype.

    With -1 slots (deepep), positions are counted after the invalid ones, as SGLang does."""
    if bool((topk_ids < 0).any()):
        reorder, src2dst, seg = reference.deepep_preprocess(topk_ids, p.experts)
        n_inv = topk_ids.numel() - reorder.numel()
        # Keep M = T*K rows: the valid ids first, then -1 rows that no expert owns.
        reorder = torch.cat([reorder, reorder.new_full((n_inv,), -1)])
    else:
        reorder, src2dst, seg = reference.ep_preprocess(topk_ids, p.experts)
    src2dst = src2dst.to(ID_DTYPES[p.index_dtype])
    pos_to_slot = torch.full((topk_ids.numel(),), -1, dtype=torch.int64, device=topk_ids.device)
    valid = src2dst >= 0
    pos_to_slot[src2dst[valid].long()] = torch.nonzero(valid).flatten()
    return reorder, src2dst, seg, pos_to_slot


def case_ids(p: CaseParams, gen, dtype=None, allow_invalid: bool = True) -> torch.Tensor:
    """topk_ids [T, K] of a case in ``dtype`` (default: the case's index dtype), ids of -1
    where the case draws them."""
    return make_topk_ids(p, gen, allow_invalid=allow_invalid).to(dtype or ID_DTYPES[p.index_dtype])


def _build(p: CaseParams, device, *, allow_invalid: bool) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen, ID_DTYPES[p.dtype], allow_invalid=allow_invalid)
    return Sample(p, {"topk_ids": ids, "num_experts": p.experts}, (), ids)


def _cost(deepep: bool):
    def cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
        ids = args["topk_ids"]
        n = ids.numel()
        s = ids.element_size()
        valid = int((ids >= 0).sum()) if deepep else n
        src2dst_size = 8 if deepep else 4
        nbytes = n * s + valid * s + n * src2dst_size + (params.experts + 1) * 8
        return Cost(nbytes, 0, "ids read; sorted ids, src2dst and seg_indptr written")
    return cost


# ----------------------------------------------------------------------------- plain-torch baselines

def _sorted_slots(flat: torch.Tensor, n_inv: int, index_dtype: torch.dtype):
    """The flat ids sorted (stable) and src2dst: each slot's sorted position minus n_inv."""
    reorder_topk_ids, order = torch.sort(flat, stable=True)
    src2dst = torch.empty(flat.numel(), dtype=index_dtype, device=flat.device)
    src2dst[order] = torch.arange(-n_inv, flat.numel() - n_inv, dtype=index_dtype, device=flat.device)
    return reorder_topk_ids, src2dst


def torch_ep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """argsort + bincount + cumsum + scatter (stable, as SGLang's)."""
    validate_preprocess(topk_ids, num_experts, allow_invalid=False, check_values=False)
    flat = topk_ids.reshape(-1)
    reorder_topk_ids, src2dst = _sorted_slots(flat, 0, torch.int32)
    seg_indptr = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    seg_indptr[1:] = torch.cumsum(torch.bincount(flat, minlength=num_experts), 0)
    return reorder_topk_ids, src2dst, seg_indptr


def torch_deepep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """The same composition with ids of -1 allowed: they sort first, and their count n_inv is
    read on the host to drop them from reorder_topk_ids (as SGLang's)."""
    validate_preprocess(topk_ids, num_experts, allow_invalid=True, check_values=False)
    flat = topk_ids.reshape(-1)
    n_inv = int((flat < 0).sum())                                          # host sync
    reorder_topk_ids, src2dst = _sorted_slots(flat, n_inv, torch.int64)
    seg_indptr = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)
    # ids of -1 land in bin 0, which is dropped
    seg_indptr[1:] = torch.cumsum(torch.bincount(flat.long() + 1, minlength=num_experts + 1)[1:], 0)
    return reorder_topk_ids[n_inv:], src2dst, seg_indptr


# ----------------------------------------------------------------------------- records

_OUTPUTS = (
    OutputSpec("reorder_topk_ids", returned(0), "exact", "position"),
    OutputSpec("src2dst", returned(1), "src2dst", "slot"),
    OutputSpec("seg_indptr", returned(2), "exact", "expert"),
)
_ANCHORS = (
    BenchAnchor(128, 8, 256, None, 64, 32),
    BenchAnchor(4096, 8, 256, None, 64, 32),
    BenchAnchor(16384, 8, 256, None, 64, 32),
    BenchAnchor(4096, 2, 8, None, 64, 32),
)
_ids = "topk_ids"

def _first_seg_entries(ret, args):
    reorder, src2dst, seg = ret
    return reorder, src2dst, seg[:args["num_experts"] + 1]


# SGLang 0.5.4 .. 0.5.5: run_moe_ep_preproess(topk_ids, num_local_experts).
SEG_BELOW_EACH_EXPERT = Convention(
    "seg_indptr counts ids below each expert",
    applies=lambda t: "num_local_experts" in t.param_names,
    args={"num_local_experts": lambda a: a["num_experts"] + 1}, consumes=("num_experts",),
    result=_first_seg_entries, releases="0.5.4 .. 0.5.5",
    why="it launches one program per expert e < num_local_experts writing seg_indptr[e] = #(ids < e), and leaves "
        "seg_indptr[num_local_experts] at 0 (its callers mark other ranks' slots with the id num_local_experts); "
        "asked for E + 1 experts it writes seg_indptr[0..E] = #(ids < e), our seg_indptr")

RECORDS = (
    OpSpec("ep_preprocess", reference.ep_preprocess, lambda p, d: _build(p, d, allow_invalid=False), _OUTPUTS,
           tuple(ID_DTYPES), KERNELS, _cost(deepep=False), max_tokens=4096,
           bench_anchors=_ANCHORS, bench_dtype="int32", bench_routing="all", shape_label=lambda p: "",
           sglang=SglangBinding(("run_moe_ep_preproess", "run_moe_ep_preprocess"),  # SGLang's spelling first
                                conventions=(SEG_BELOW_EACH_EXPERT,)),
           error_inputs=(
               ErrorInput("int32", set_arg(_ids, lambda a: a[_ids].float()), TypeError, _ids),
               ErrorInput("int32", set_arg(_ids, lambda a: a[_ids].flatten()), ValueError, _ids),
               ErrorInput("int32", set_arg(_ids, lambda a: a[_ids] + 6), ValueError, _ids),
               ErrorInput("int32", set_arg(_ids, lambda a: a[_ids] * 0 - 1), ValueError, _ids),
               ErrorInput("int32", set_arg("num_experts", 0), ValueError, "num_experts"),
               ErrorInput("int32", set_arg("num_experts", 6.0), TypeError, "num_experts"),
               ErrorInput("int32", non_contiguous(_ids), ValueError, _ids),
           ),
           baselines={"torch": torch_ep_preprocess}, case_cost=2.4),
    OpSpec("deepep_preprocess", reference.deepep_preprocess, lambda p, d: _build(p, d, allow_invalid=True),
           _OUTPUTS, tuple(ID_DTYPES), KERNELS, _cost(deepep=True), max_tokens=4096, invalid_ids=True,
           bench_anchors=(BenchAnchor(4096, 8, 256, None, 64, 32, "DeepSeek-V3 EP8"),), bench_dtype="int32",
           bench_routing="dispatched", shape_label=lambda p: "",
           sglang=SglangBinding(("deepep_run_moe_deep_preprocess",)),
           # its output length is the number of valid ids, read on the host
           capturable=False,
           error_inputs=(ErrorInput("int64", set_arg(_ids, lambda a: a[_ids] * 0 - 2), ValueError, _ids),),
           baselines={"torch": torch_deepep_preprocess}, case_cost=1.8),
)


# ----------------------------------------------------------------------------- mutants
# Left out as equivalent to the original (it survived, as it must): the histogram's dump bin
# (out-of-range ids) left unwritten: it is the last bucket and feeds no valid position.

_M = Mutant
MUTANTS = (
    # --- ep_preprocess ------------------------------------------------------------------
    _M("ep_seg_end_unwritten", "ep_preprocess", KERNELS,
       "tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets <= E)",
       "tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets < E)",
       "scratch not fully written: seg_indptr comes from torch.empty and the scan stores [0, E) only, "
       "never seg_indptr[E]"),
    _M("ep_empty_seg_uninitialised", "ep_preprocess", KERNELS,
       "torch.zeros(num_experts + 1, dtype=torch.int64, device=dev))",
       "torch.empty(num_experts + 1, dtype=torch.int64, device=dev))",
       "a zeros made empty: for an empty batch (T = 0) seg_indptr is returned uninitialised"),
    _M("ep_bucket_off_by_one", "ep_preprocess", KERNELS,
       "ok = (b >= 0) & (b < E + SHIFT)",
       "ok = (b > 0) & (b < E + SHIFT)",
       "off-by-one in the segment bounds: bucket 0 (expert 0) is sent to the dump bucket after the last expert"),
    _M("ep_rank_ties_unbroken", "ep_preprocess", KERNELS,
       "key = _bucket_of(ids, E, SHIFT) * BLOCK + lane",
       "key = _bucket_of(ids, E, SHIFT) * BLOCK",
       "in-block sort key without the lane: slots of one expert tie and the in-block rank is no longer unique"),
    _M("ep_scan_in_place_over_hist", "ep_preprocess", KERNELS,
       "colpre_ptr = scratch_ptr + NBLK.to(tl.int64) * NBP",
       "colpre_ptr = scratch_ptr  # the scan in place over the histograms: a smaller scratch",
       "in-place update through an alias: the column scan writes its prefixes over the histograms (the "
       "same part of the shared scratch buffer), which the scatter still reads for its in-block offsets"),
    _M("ep_src2dst_over_topk_ids", "ep_preprocess", KERNELS,
       "src2dst = torch.empty(n, dtype=torch.int64 if deepep else torch.int32, device=dev)",
       "src2dst = flat if flat.dtype == torch.int32 and not deepep else torch.empty(n, dtype=torch.int64 if deepep else torch.int32, device=dev)",
       "in-place update of an input: src2dst is written into the storage of topk_ids (flat is a view of "
       "it; same length and dtype, so it 'fits'), destroying the caller's routing", dtypes=("int32",)),
    _M("ep_one_launch_start_inclusive", "ep_preprocess", KERNELS,
       "start = tl.cumsum(totals, axis=0) - totals   # exclusive scan",
       "start = tl.cumsum(totals, axis=0)   # exclusive scan",
       "off-by-one in the segment bounds: the one-launch path takes the buckets' starts from the inclusive "
       "scan of the totals, so seg_indptr and every position are one expert late"),
    _M("ep_host_sync", "ep_preprocess", KERNELS,
       "plan = _plan(n, num_experts, deepep, flat.get_device())",
       "plan = _plan(n if deepep else int((flat >= 0).sum()), num_experts, deepep, flat.get_device())",
       "a host synchronisation in a capturable op: the slot count read back from the device (the same n for "
       "valid ids), so the op can no longer be captured in a CUDA graph", backends=("cuda",)),
    _M("ep_routing_cached_by_shape", "ep_preprocess", KERNELS, "", "",
       "a result cached from a previous call: routing memoised on (shape, dtype, num_experts) and returned "
       "again for a new routing of the same shape", wrap=cache_by_shape),
    # --- deepep_preprocess --------------------------------------------------------------
    _M("deepep_seg_counts_minus_one_slots", "deepep_preprocess", KERNELS,
       "(start - n_inv).to(tl.int64), mask=(buckets >= 1)",
       "start.to(tl.int64), mask=(buckets >= 1)",
       "seg_indptr from the bucket starts without subtracting n_inv: every segment is shifted by the "
       "number of -1 slots"),
    _M("deepep_n_inv_not_subtracted", "deepep_preprocess", KERNELS,
       "delta = start - n_inv + tl.load(",
       "delta = start + tl.load(",
       "src2dst not shifted by n_inv: positions still count the -1 slots in front"),
    _M("deepep_minus_one_sorted_last", "deepep_preprocess", KERNELS,
       "shift = 1 if deepep else 0",
       "shift = 0",
       "-1 slots sorted after the valid ones: without the bucket shift they fall into the dump bucket"),
    _M("deepep_minus_one_as_expert0", "deepep_preprocess", KERNELS,
       "flat = topk_ids.reshape(-1)",
       "flat = topk_ids.reshape(-1).clamp_min(0)  # keep every id a valid index",
       "-1 slots treated as expert 0: ids clamped to 0 before the sort"),
)
