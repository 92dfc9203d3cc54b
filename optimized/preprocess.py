"""Routing preprocess: stable counting sort of the flat slots by expert (SPEC.md sections 1, 2).

Three launches, no atomics, deterministic (ep_preprocess of at most ONE_LAUNCH_MAX slots: one
launch of ``_one_launch_kernel``: a single program, or blocks whose programs each histogram all
the ids instead of waiting for a scan):
1. ``_hist_kernel``    one program per BLOCK slots: per-block bucket histogram (tl.histogram).
2. ``_colscan_kernel`` one program per SCAN_COLS buckets: per (block, bucket) the count of that
                       bucket in earlier blocks (a scan down each column) and each bucket's total.
3. ``_scatter_kernel`` one program per block: bucket starts (scan of the totals) and the
                       block's in-block bucket starts (scan of its histogram) give ``delta`` =
                       first global position of each bucket's slots in this block minus its first
                       position inside the sorted block; the block's keys (bucket * BLOCK + lane,
                       unique, so the in-block order is stable) are sorted and the slot at sorted
                       position p gets global position p + delta[bucket]. Program 0 writes
                       seg_indptr (all of it).
On sm_90+ the scan and the scatter are launched as programmatic dependents (each scheduled
while its predecessor runs, waiting in gdc_wait before it reads that kernel's output); the
scatter loads and sorts its block's keys before it waits.
Buckets: ep: bucket = id for ids in [0, E); deepep: bucket = id + 1 for ids in [-1, E).
Any other id (or a padding lane) goes to one extra "dump" bucket after the last expert, so
any id value is memory-safe (out-of-contract ids just sort last).
"""
from __future__ import annotations

import functools
import os
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launch), triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older triton: plain launches
    gdc_launch_dependents = gdc_wait = None

from reference._checks import validate_preprocess

from . import _config
from .config import KernelLaunch

# The GPU path ranks slots inside a block with tl.sort; the interpreter uses a pairwise
# compare instead (tl.sort is very slow there). forced_sort() sets this to run the sort path on CPU.
FORCE_SORT = False


@triton.jit
def _bucket_of(ids, E, SHIFT: tl.constexpr):
    """id -> bucket in [0, E + SHIFT]; E + SHIFT is the dump bucket."""
    b = ids + SHIFT
    ok = (b >= 0) & (b < E + SHIFT)
    return tl.where(ok, b, E + SHIFT).to(tl.int32)


@triton.jit
def _scratch_parts(scratch_ptr, NBLK, NBP: tl.constexpr):
    """The one int32 scratch buffer's three parts: hist [NBLK, NBP], colpre [NBLK, NBP], totals [NBP]."""
    hist_ptr = scratch_ptr
    colpre_ptr = scratch_ptr + NBLK.to(tl.int64) * NBP
    totals_ptr = scratch_ptr + 2 * NBLK.to(tl.int64) * NBP
    return hist_ptr, colpre_ptr, totals_ptr


# Sizes that are neither strides nor offsets' alignment stay unspecialised (do_not_specialize):
# one compiled variant whatever their value, instead of one per (== 1, % 16 == 0, other) class.
@triton.jit(do_not_specialize=["N", "E"])
def _hist_kernel(
    # pointers
    ids_ptr, hist_ptr,
    # sizes
    N, E,
    # meta
    SHIFT: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr, PDL: tl.constexpr,
):
    """hist[pid, :] = histogram of the buckets of slots [pid*BLOCK, (pid+1)*BLOCK); writes all NBP bins."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if PDL:
        gdc_launch_dependents()   # the column scan may be scheduled now; it waits for us in gdc_wait
    ids = tl.load(ids_ptr + offs, mask=offs < N, other=-2)  # -2: a padding lane -> dump bucket
    h = tl.histogram(_bucket_of(ids, E, SHIFT), NBP)         # every bucket value is in [0, NBP)
    tl.store(hist_ptr + pid.to(tl.int64) * NBP + tl.arange(0, NBP), h)


@triton.jit(do_not_specialize=["NBLK"])
def _colscan_kernel(
    # pointers
    scratch_ptr, ninv_ptr,
    # sizes
    NBLK,
    # meta
    NBP: tl.constexpr, BB: tl.constexpr, R: tl.constexpr, DEEPEP: tl.constexpr, PDL: tl.constexpr,
):
    """Program q, buckets j in [q*BB, (q+1)*BB): colpre[b, j] = count of bucket j in blocks < b;
    totals[j] = count of bucket j overall; deepep: n_inv = totals[0] (program 0; the -1 bucket)."""
    hist_ptr, colpre_ptr, totals_ptr = _scratch_parts(scratch_ptr, NBLK, NBP)
    if PDL:
        # The scatter may start now: it sorts its block before it waits for us. No deadlock from its
        # programs holding SMs: they launch only once every scan program has started, and those
        # only once every histogram program has, so nothing they wait for still needs a slot.
        gdc_launch_dependents()
        gdc_wait()                # launched early (programmatic dependent launch): wait for the histograms
    cols = tl.program_id(0) * BB + tl.arange(0, BB)
    rows0 = tl.arange(0, R)
    carry = tl.zeros([BB], dtype=tl.int32)
    for r0 in range(0, NBLK, R):
        rows = r0 + rows0
        rmask = rows[:, None] < NBLK
        off = rows[:, None].to(tl.int64) * NBP + cols[None, :]
        h = tl.load(hist_ptr + off, mask=rmask, other=0)
        tl.store(colpre_ptr + off, tl.cumsum(h, axis=0) - h + carry[None, :], mask=rmask)
        carry += tl.sum(h, axis=0)
    tl.store(totals_ptr + cols, carry)
    if DEEPEP and tl.program_id(0) == 0:
        tl.store(ninv_ptr, tl.sum(tl.where(cols == 0, carry, 0), axis=0).to(tl.int64))


@triton.jit
def _block_order(ids, base, lane, E, SHIFT: tl.constexpr, BLOCK: tl.constexpr, USE_SORT: tl.constexpr):
    """The stable order of one block's slots (ids [BLOCK], slot base + lane): (src, p, bucket) where
    slot src has in-block sorted position p and bucket is src's bucket (as a multiset: the block's)."""
    key = _bucket_of(ids, E, SHIFT) * BLOCK + lane               # unique keys: stable within the block
    if USE_SORT:
        key = tl.sort(key)
        src = base + (key % BLOCK)                               # the slot at sorted position p = lane
        p = lane
    else:
        # Interpreter: tl.sort is very slow there; the same in-block rank by pairwise compare.
        src = base + lane
        p = tl.sum((key[None, :] < key[:, None]).to(tl.int32), axis=1)
    return src, p, key // BLOCK


@triton.jit
def _store_seg(seg_ptr, start, n_inv, buckets, E, DEEPEP: tl.constexpr):
    """seg_indptr from the buckets' first sorted positions ``start`` [NBP]."""
    if DEEPEP:
        # seg_indptr[e] = start[e + 1] - n_inv for e in 0..E
        tl.store(seg_ptr + buckets - 1, (start - n_inv).to(tl.int64), mask=(buckets >= 1) & (buckets <= E + 1))
    else:
        tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets <= E)


@triton.jit
def _store_order(ids_ptr, src2dst_ptr, sorted_ptr, src, pos, N, OUT_LEN):
    """src2dst[src] = pos and sorted[pos] = ids[src] for the real slots (src < N) among a block's."""
    ok = src < N
    tl.store(src2dst_ptr + src, pos.to(src2dst_ptr.dtype.element_ty), mask=ok)
    idv = tl.load(ids_ptr + src, mask=ok, other=0)               # original id (exact even for dump ids)
    tl.store(sorted_ptr + pos, idv, mask=ok & (pos >= 0) & (pos < OUT_LEN))


@triton.jit(do_not_specialize=["N", "E", "OUT_LEN", "NBLK"])
def _scatter_kernel(
    # pointers
    ids_ptr, scratch_ptr, src2dst_ptr, sorted_ptr, seg_ptr,
    # sizes
    N, E, OUT_LEN, NBLK,
    # meta
    SHIFT: tl.constexpr, DEEPEP: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr, USE_SORT: tl.constexpr,
    PDL: tl.constexpr,
):
    """src2dst[s] = global sorted position (minus n_inv for deepep); sorted[pos] = id for pos in [0, OUT_LEN).

    Block b's offset of bucket j: delta[j] = start[j] - n_inv + colpre[b, j] - inblock[j], with
    start the exclusive prefix of the bucket totals and inblock the exclusive prefix of this
    block's histogram (both [NBP] scans in registers). Program 0 also writes seg_indptr.
    """
    pid = tl.program_id(0)
    # The block's own order first: it needs only the ids, so under PDL the sort overlaps the
    # histograms and the column scan.
    base = pid.to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + base + lane, mask=base + lane < N, other=-2)
    src, p, bucket = _block_order(ids, base, lane, E, SHIFT, BLOCK, USE_SORT)
    if PDL:
        gdc_wait()                # launched early: wait for the column scan (and, through it, the histograms)
    hist_ptr, colpre_ptr, totals_ptr = _scratch_parts(scratch_ptr, NBLK, NBP)
    buckets = tl.arange(0, NBP)
    totals = tl.load(totals_ptr + buckets)
    start = tl.cumsum(totals, axis=0) - totals                       # first sorted position of each bucket
    if DEEPEP:
        n_inv = tl.sum(tl.where(buckets == 0, totals, 0), axis=0)   # bucket 0 holds the -1 ids
    else:
        n_inv = 0
    if pid == 0:
        _store_seg(seg_ptr, start, n_inv, buckets, E, DEEPEP)
    h = tl.load(hist_ptr + pid.to(tl.int64) * NBP + buckets)
    delta = start - n_inv + tl.load(colpre_ptr + pid.to(tl.int64) * NBP + buckets) - (tl.cumsum(h, axis=0) - h)
    _store_order(ids_ptr, src2dst_ptr, sorted_ptr, src, p + tl.gather(delta, bucket, 0), N, OUT_LEN)


@triton.jit(do_not_specialize=["N", "E"])
def _one_launch_kernel(
    # pointers
    ids_ptr, src2dst_ptr, sorted_ptr, seg_ptr,
    # sizes
    N, E,
    # meta
    BLOCK: tl.constexpr, NP: tl.constexpr, NBP: tl.constexpr, USE_SORT: tl.constexpr,
):
    """ep_preprocess of N <= NP slots in one launch, one program per block of BLOCK slots.

    One block (NP == BLOCK): its stable order is the global one and its histogram the totals.
    Several: each program reads all N ids and takes the bucket totals and the counts in earlier
    blocks from two histograms of them (what the column scan gives the three-launch path), so no
    program waits for another, then places its block as _scatter_kernel does. Program 0 writes
    seg_indptr."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + base + lane, mask=base + lane < N, other=-2)   # padding lanes: dump bucket, last
    src, p, bucket = _block_order(ids, base, lane, E, 0, BLOCK, USE_SORT)
    h = tl.histogram(bucket, NBP)
    if NP == BLOCK:
        totals = h                    # the padding lanes count in the dump bucket only, after every expert
    else:
        every = tl.arange(0, NP)
        buckets_all = _bucket_of(tl.load(ids_ptr + every, mask=every < N, other=-2), E, 0)
        totals = tl.histogram(buckets_all, NBP, mask=every < N)
        before = tl.histogram(buckets_all, NBP, mask=every < pid * BLOCK)   # slots of earlier blocks
    start = tl.cumsum(totals, axis=0) - totals   # exclusive scan: first sorted position of each bucket
    if pid == 0:
        _store_seg(seg_ptr, start, 0, tl.arange(0, NBP), E, False)
    if NP == BLOCK:
        pos = p
    else:
        pos = p + tl.gather(start + before - (tl.cumsum(h, axis=0) - h), bucket, 0)
    _store_order(ids_ptr, src2dst_ptr, sorted_ptr, src, pos, N, N)


# Block plan and scan tile; module-level knobs, which forced_way() and pinned_plan() set for a block
# (tools/explore_tiles.py sweeps them on the GPU).
TARGET_BLOCKS = 256     # blocks for mid sizes (H200 sweep: 13 / 17 us at T*K = 32768 / 131072)
MIN_BLOCK = 256
MAX_BLOCK = 4096        # bitonic sort in registers
SCAN_COLS = 16          # buckets per column-scan program
SCAN_ELEMS = 4096       # histogram entries per column-scan step
SCAN_WARPS = 4
SCATTER_WARPS = 0       # warps of the histogram and scatter programs; 0: 4, or 8 from 2,048-slot blocks
# ep_preprocess of at most ONE_LAUNCH_MAX slots runs in one launch (_one_launch_kernel): one program
# up to ONE_BLOCK_MAX slots, else blocks of ONE_LAUNCH_BLOCK. 0 turns it off. The interpreter's caps
# are lower so that its fuzzed cases (T*K up to ~400) take all three ways.
# H200, tenth session, graph us (K = 8 over 256 experts; three launches: 8.1-9.6 at 128-4,096 slots):
#   one program:   6.1-6.6 at 128 slots, 7.8-8.3 at 512, 11.5-12.9 at 1,024 (one sort of every slot)
#   blocks of 64:  8.4 at 128, 9.1-9.2 at 512, 9.9-10.2 at 1,024, 11.4-11.8 at 2,048, 15.8 at 4,096
# Eager (host-bound) one launch took 5-30 us against three launches' 31-119. So one program to 512
# slots (faster both ways), blocks of 64 to 1,024 (0.7-1.0 us slower than three launches in a graph,
# 2 launches fewer eager), three launches above.
ONE_LAUNCH_MAX = 1024
ONE_BLOCK_MAX = 512
ONE_LAUNCH_BLOCK = 64
ONE_LAUNCH_MAX_INTERP = 64
ONE_BLOCK_MAX_INTERP = 32
# Programmatic dependent launch of the scan and scatter kernels (sm_90+): each is scheduled while
# its predecessor runs and waits for it in gdc_wait, which hides most of the gap between the
# three launches in a CUDA graph. MOE_PREPROCESS_PDL=0 turns it off (an A/B switch).
USE_PDL = os.environ.get("MOE_PREPROCESS_PDL", "1") not in ("0", "false", "False", "")


class _Plan(NamedTuple):
    """How one call launches: the path, its tiles and warps (a pure function of the sizes, the
    device and the module's knobs, so it is computed once per combination)."""

    one_launch: bool    # _one_launch_kernel alone (ep, n <= the cap)
    nbp: int            # histogram bins: power of 2 >= 32 covering (-1 bucket) + experts + dump
    block: int          # slots per block
    nblk: int
    warps: int          # of the histogram / scatter / one-launch programs
    use_sort: bool      # tl.sort in the block order (else the interpreter's pairwise rank)
    padded: int = 0     # one launch: the ids each program reads (== block: a single program)
    scan_cols: int = 0  # three launches: buckets per column-scan program
    scan_rows: int = 0  # three launches: histogram rows per column-scan step
    pdl: bool = False   # three launches: programmatic dependent launch of the scan and the scatter


def _knobs():
    return (TARGET_BLOCKS, MIN_BLOCK, MAX_BLOCK, SCAN_COLS, SCAN_ELEMS, SCAN_WARPS, SCATTER_WARPS, USE_PDL,
            ONE_LAUNCH_MAX, ONE_BLOCK_MAX, ONE_LAUNCH_BLOCK, ONE_LAUNCH_MAX_INTERP, ONE_BLOCK_MAX_INTERP, FORCE_SORT)


@functools.lru_cache(maxsize=512)
def _plan_for(n: int, num_experts: int, deepep: bool, device_index: int, knobs: tuple) -> _Plan:
    # ``knobs`` (the module's values, _knobs()) only keys the cache: a sweep that sets them gets new plans
    interp = _config.is_interpreter()
    nbp = max(32, _config.next_pow2(num_experts + (2 if deepep else 1)))   # tl.histogram: power of 2, >= warp size
    use_sort = FORCE_SORT or not interp
    cap, one_block = (ONE_LAUNCH_MAX, ONE_BLOCK_MAX) if use_sort else (ONE_LAUNCH_MAX_INTERP, ONE_BLOCK_MAX_INTERP)
    if not deepep and n <= min(cap, MAX_BLOCK):
        block = max(32, _config.next_pow2(n)) if n <= one_block else ONE_LAUNCH_BLOCK
        warps = 8 if max(n, block) > 2048 else 4      # a program holds its block, and with several all n ids
        return _Plan(True, nbp, block, triton.cdiv(n, block), warps, use_sort,
                     padded=max(block, _config.next_pow2(n)))
    block = min(MAX_BLOCK, max(MIN_BLOCK, _config.next_pow2(triton.cdiv(n, TARGET_BLOCKS))))
    if not use_sort:
        block = min(block, 512)  # the pairwise rank is BLOCK x BLOCK
    nblk = triton.cdiv(n, block)
    scan_cols = min(SCAN_COLS, nbp)
    scan_rows = max(1, min(_config.next_pow2(nblk), SCAN_ELEMS // scan_cols))
    pdl = (USE_PDL and gdc_wait is not None and not interp and device_index >= 0
           and _config.is_hopper_or_newer(device_index))
    return _Plan(False, nbp, block, nblk, SCATTER_WARPS or (8 if block >= 2048 else 4), use_sort,
                 scan_cols=scan_cols, scan_rows=scan_rows, pdl=pdl)


def _plan(n: int, num_experts: int, deepep: bool, device_index: int = -1) -> _Plan:
    return _plan_for(n, num_experts, deepep, device_index, _knobs())


def _sort_slots(topk_ids: torch.Tensor, num_experts: int, deepep: bool):
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    dev = flat.device
    plan = _plan(n, num_experts, deepep, flat.get_device())
    seg = torch.empty(num_experts + 1, dtype=torch.int64, device=dev)  # fully written by the last kernel
    src2dst = torch.empty(n, dtype=torch.int64 if deepep else torch.int32, device=dev)
    if plan.one_launch:
        sorted_ids = torch.empty(n, dtype=flat.dtype, device=dev)
        _one_launch_kernel[(plan.nblk,)](flat, src2dst, sorted_ids, seg, n, num_experts, BLOCK=plan.block,
                                         NP=plan.padded, NBP=plan.nbp, USE_SORT=plan.use_sort,
                                         num_warps=plan.warps)
        return sorted_ids, src2dst, seg
    nbp, block, nblk = plan.nbp, plan.block, plan.nblk
    shift = 1 if deepep else 0
    # hist, colpre [nblk, nbp] and totals [nbp] in one buffer (one allocation: host time), each part
    # fully written (_hist_kernel, _colscan_kernel) before it is read
    scratch = torch.empty(2 * nblk * nbp + nbp, dtype=torch.int32, device=dev)
    ninv = torch.empty(1, dtype=torch.int64, device=dev) if deepep else scratch   # ep: never written
    later = {"launch_pdl": True} if plan.pdl else {}   # launch options of the two dependent kernels
    _hist_kernel[(nblk,)](flat, scratch, n, num_experts, SHIFT=shift, BLOCK=block, NBP=nbp, PDL=plan.pdl,
                          num_warps=plan.warps)
    _colscan_kernel[(nbp // plan.scan_cols,)](scratch, ninv, nblk, NBP=nbp, BB=plan.scan_cols, R=plan.scan_rows,
                                              DEEPEP=deepep, PDL=plan.pdl, num_warps=SCAN_WARPS, **later)
    # deepep's output length N - n_inv is data dependent: one device-to-host read, here only
    n_out = n - int(ninv.item()) if deepep else n
    sorted_ids = torch.empty(n_out, dtype=flat.dtype, device=dev)
    _scatter_kernel[(nblk,)](flat, scratch, src2dst, sorted_ids, seg, n, num_experts, n_out, nblk,
                             SHIFT=shift, DEEPEP=deepep, BLOCK=block, NBP=nbp, num_warps=plan.warps,
                             USE_SORT=plan.use_sort, PDL=plan.pdl, **later)
    return sorted_ids, src2dst, seg


def _empty_result(topk_ids, num_experts, src_dtype):
    dev = topk_ids.device
    return (torch.empty(0, dtype=topk_ids.dtype, device=dev), torch.empty(0, dtype=src_dtype, device=dev),
            torch.zeros(num_experts + 1, dtype=torch.int64, device=dev))


def ep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """SGLang's ``run_moe_ep_preproess``: stable sort of the flat slots by expert.

    topk_ids [T, K] int32/int64, values in [0, E). Returns reorder_topk_ids [T*K] (input
    dtype, sorted ascending), src2dst [T*K] int32 (stable sorted position of slot t*K+k),
    seg_indptr [E+1] int64 (seg_indptr[e] = number of slots with id < e; all written).
    Out-of-range ids are memory-safe: they sort after every valid id.
    """
    validate_preprocess(topk_ids, num_experts, allow_invalid=False, check_values=_config.check_values())
    if topk_ids.numel() == 0:
        return _empty_result(topk_ids, num_experts, torch.int32)
    return _sort_slots(topk_ids, num_experts, deepep=False)


def deepep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """SGLang's ``deepep_run_moe_deep_preprocess``: as ep_preprocess, but ids may be -1.

    Returns reorder_topk_ids (sorted ids without the n_inv leading -1s, a fresh tensor),
    src2dst [T*K] int64 (sorted position - n_inv), seg_indptr [E+1] int64 counting only
    valid slots. n_inv lives in its own buffer: nothing is updated in place while viewed.
    One host read (of n_inv, to size reorder_topk_ids).
    """
    validate_preprocess(topk_ids, num_experts, allow_invalid=True, check_values=_config.check_values())
    if topk_ids.numel() == 0:
        return _empty_result(topk_ids, num_experts, torch.int64)
    return _sort_slots(topk_ids, num_experts, deepep=True)


# ----------------------------------------------------------------------------- public launch switches
# (optimized/config.py lists the whole public launch/config API)

# ep_preprocess's ways, for forced_way (deepep_preprocess always takes three launches)
ONE_PROGRAM = "one launch, one program"
ONE_LAUNCH_BLOCKS = "one launch, blocks"
THREE_LAUNCHES = "three launches"
WAYS = (ONE_PROGRAM, ONE_LAUNCH_BLOCKS, THREE_LAUNCHES)


def forced_way(way: str, block: Optional[int] = None):
    """Context manager: ep_preprocess takes ``way`` (one of WAYS) for the block, on the GPU and
    under the interpreter alike, instead of choosing it by size. The one-launch ways hold at most
    MAX_BLOCK slots (larger calls still take three launches). ``block``: slots per block (a power
    of 2) for ONE_LAUNCH_BLOCKS and THREE_LAUNCHES; None keeps the way's own choice."""
    if way == ONE_PROGRAM:
        knobs = dict(ONE_BLOCK_MAX=MAX_BLOCK, ONE_BLOCK_MAX_INTERP=MAX_BLOCK)
    elif way == ONE_LAUNCH_BLOCKS:
        knobs = dict(ONE_BLOCK_MAX=0, ONE_BLOCK_MAX_INTERP=0)
        if block is not None:
            knobs["ONE_LAUNCH_BLOCK"] = block
    elif way == THREE_LAUNCHES:
        knobs = dict(ONE_LAUNCH_MAX=0, ONE_LAUNCH_MAX_INTERP=0)
        if block is not None:
            knobs.update(MIN_BLOCK=block, MAX_BLOCK=block)
    else:
        raise ValueError(f"way: expected one of {WAYS}, got {way!r}")
    if way != THREE_LAUNCHES:
        knobs.update(ONE_LAUNCH_MAX=MAX_BLOCK, ONE_LAUNCH_MAX_INTERP=MAX_BLOCK)
    return _config.pinned_globals(globals(), **knobs)


def forced_sort(forced: bool = True):
    """Context manager: with ``forced``, a block's slots are ranked by tl.sort (the GPU's way)
    under the interpreter too, instead of its pairwise compare; False: each backend's own way."""
    return _config.pinned_globals(globals(), FORCE_SORT=forced)


def pinned_plan(target_blocks: Optional[int] = None, scan_cols: Optional[int] = None,
                scan_warps: Optional[int] = None, scatter_warps: Optional[int] = None,
                pdl: Optional[bool] = None):
    """Context manager: the three-launch path's settings for the block (None: as they are).
    target_blocks: blocks aimed at for mid sizes; scan_cols: buckets per column-scan program;
    scan_warps / scatter_warps: warps of the column scan / of the histogram and scatter programs
    (0: by block size); pdl: programmatic dependent launch (sm_90+)."""
    return _config.pinned_globals(globals(), TARGET_BLOCKS=target_blocks, SCAN_COLS=scan_cols,
                                  SCAN_WARPS=scan_warps, SCATTER_WARPS=scatter_warps, USE_PDL=pdl)


def launch_plan(n_slots: int, num_experts: int, deepep: bool = False, device_index: int = -1):
    """The plan a call over ``n_slots`` slots and ``num_experts`` experts takes under the knobs as
    they stand (switches included): a NamedTuple of the way (one_launch; nblk blocks of ``block``
    slots), bins, warps, block order, scan tile and PDL (its fields are documented on the class).
    device_index -1: no device (no PDL)."""
    return _plan_for(n_slots, num_experts, deepep, device_index, _knobs())


def ep_preprocess_launches(topk_ids: torch.Tensor, num_experts: int
                           ) -> Tuple[Dict[str, KernelLaunch], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The kernel launches of one ep_preprocess(topk_ids, num_experts) call under the knobs as
    they stand, in launch order ("one_launch", or "hist", "colscan", "scatter"), and the buffers
    they write: (reorder_topk_ids, src2dst, seg_indptr). Run in order, the launches write into
    those buffers what ep_preprocess returns. Buffers are allocated here, once; nothing is
    validated; topk_ids must not be empty."""
    ids = topk_ids.reshape(-1)
    n = ids.numel()
    plan = launch_plan(n, num_experts, device_index=ids.get_device())
    seg = torch.empty(num_experts + 1, dtype=torch.int64, device=ids.device)
    src2dst = torch.empty(n, dtype=torch.int32, device=ids.device)
    sorted_ids = torch.empty(n, dtype=ids.dtype, device=ids.device)
    if plan.one_launch:
        return {"one_launch": KernelLaunch(
            _one_launch_kernel, (plan.nblk,), (ids, src2dst, sorted_ids, seg, n, num_experts),
            dict(BLOCK=plan.block, NP=plan.padded, NBP=plan.nbp, USE_SORT=plan.use_sort),
            dict(num_warps=plan.warps))}, (sorted_ids, src2dst, seg)
    scratch = torch.empty(2 * plan.nblk * plan.nbp + plan.nbp, dtype=torch.int32, device=ids.device)
    later = {"launch_pdl": True} if plan.pdl else {}
    launches = {
        "hist": KernelLaunch(_hist_kernel, (plan.nblk,), (ids, scratch, n, num_experts),
                             dict(SHIFT=0, BLOCK=plan.block, NBP=plan.nbp, PDL=plan.pdl), dict(num_warps=plan.warps)),
        "colscan": KernelLaunch(_colscan_kernel, (plan.nbp // plan.scan_cols,), (scratch, scratch, plan.nblk),
                                dict(NBP=plan.nbp, BB=plan.scan_cols, R=plan.scan_rows, DEEPEP=False, PDL=plan.pdl),
                                dict(num_warps=SCAN_WARPS, **later)),
        "scatter": KernelLaunch(_scatter_kernel, (plan.nblk,),
                                (ids, scratch, src2dst, sorted_ids, seg, n, num_experts, n, plan.nblk),
                                dict(SHIFT=0, DEEPEP=False, BLOCK=plan.block, NBP=plan.nbp, USE_SORT=plan.use_sort,
                                     PDL=plan.pdl),
                                dict(num_warps=plan.warps, **later)),
    }
    return launches, (sorted_ids, src2dst, seg)


__all__ = ["ep_preprocess", "deepep_preprocess"]
