"""Routing preprocess: stable counting sort of the flat slots by expert (SPEC.md sections 1, 2).

Two launches, no atomics outside deepep's n_inv count, deterministic:
1. ``_hist_kernel``    one program per superblock of SUPER blocks of BLOCK slots: each block's
                       bucket histogram (tl.histogram); per block, the count of each bucket in
                       the earlier blocks of its superblock (``colsb``), and the superblock's
                       counts (``sbtot``).
2. ``_scatter_kernel`` one program per block: sorts its keys (bucket * BLOCK + lane, unique, so
                       the in-block order is stable) and histograms its block first, then reads
                       every superblock row: their sum gives the bucket starts, the rows before
                       its own the count in earlier superblocks. ``delta`` = first global
                       position of each bucket's slots in this block minus its first position
                       inside the sorted block; the slot at sorted position p gets p +
                       delta[bucket]. Program 0 writes seg_indptr (all of it).
On sm_90+ the scatter is launched as a programmatic dependent: its programs start while the
histograms run (there are SUPER times fewer of those), load, sort and histogram their own block,
and wait in gdc_wait only before they read the histograms.
Buckets: ep: bucket = id for ids in [0, E); deepep: bucket = id + 1 for ids in [-1, E).
Any other id (or a padding lane) goes to one extra "dump" bucket after the last expert, so
any id value is memory-safe (out-of-contract ids just sort last).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launch), triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older triton: plain launches
    gdc_launch_dependents = gdc_wait = None

from reference._checks import validate_preprocess

from . import _config

# The GPU path ranks slots inside a block with tl.sort; the interpreter uses a pairwise
# compare instead (tl.sort is very slow there). Tests set this to run the sort path on CPU.
FORCE_SORT = False


@triton.jit
def _bucket_of(ids, E, SHIFT: tl.constexpr):
    """id -> bucket in [0, E + SHIFT]; E + SHIFT is the dump bucket."""
    b = ids + SHIFT
    ok = (b >= 0) & (b < E + SHIFT)
    return tl.where(ok, b, E + SHIFT).to(tl.int32)


# Sizes that are neither strides nor offsets' alignment stay unspecialised (do_not_specialize):
# one compiled variant whatever their value, instead of one per (== 1, % 16 == 0, other) class.
@triton.jit(do_not_specialize=["N", "E", "NBLK"])
def _hist_kernel(
    # pointers
    ids_ptr, colsb_ptr, sbtot_ptr, ninv_ptr,
    # sizes
    N, E, NBLK,
    # meta
    SHIFT: tl.constexpr, DEEPEP: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr,
    SUPER: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
):
    """Superblock g (blocks g*SUPER .. g*SUPER + SUPER - 1): colsb[b, j] = count of bucket j in
    the blocks of the superblock before b, for each of its blocks b < NBLK; sbtot[g, j] = count
    of bucket j in the superblock; deepep: n_inv += its count of -1 ids (bucket 0)."""
    g = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()   # the scatter may be scheduled now; it waits for us in gdc_wait
    lane = tl.arange(0, BLOCK)
    buckets = tl.arange(0, NBP)
    seen = tl.zeros([NBP], dtype=tl.int32)                        # counts of the blocks before b
    for j in tl.range(0, SUPER, num_stages=STAGES):               # pipelined: STAGES - 1 blocks' loads ahead
        b = g * SUPER + j
        offs = b.to(tl.int64) * BLOCK + lane
        ids = tl.load(ids_ptr + offs, mask=offs < N, other=0)
        h = tl.histogram(_bucket_of(ids, E, SHIFT), NBP, mask=offs < N)   # every bucket is in [0, NBP)
        tl.store(colsb_ptr + b.to(tl.int64) * NBP + buckets, seen, mask=tl.full([NBP], b, tl.int32) < NBLK)
        seen += h
    tl.store(sbtot_ptr + g.to(tl.int64) * NBP + buckets, seen)
    if DEEPEP:
        tl.atomic_add(ninv_ptr, tl.sum(tl.where(buckets == 0, seen, 0), axis=0))


@triton.jit(do_not_specialize=["N", "E", "OUT_LEN", "NSB"])
def _scatter_kernel(
    # pointers
    ids_ptr, colsb_ptr, sbtot_ptr, src2dst_ptr, sorted_ptr, seg_ptr,
    # sizes
    N, E, OUT_LEN, NSB,
    # meta
    SHIFT: tl.constexpr, DEEPEP: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr, SUPER: tl.constexpr,
    R: tl.constexpr, USE_SORT: tl.constexpr, PDL: tl.constexpr,
):
    """src2dst[s] = global sorted position (minus n_inv for deepep); sorted[pos] = id for pos in [0, OUT_LEN).

    Block b's offset of bucket j: delta[j] = start[j] - n_inv + colsb[b, j] + before[j] - inblock[j],
    with start the exclusive prefix of the bucket totals (the sum of the NSB superblock rows),
    before[j] the count of bucket j in the superblocks before b's, and inblock the exclusive
    prefix of this block's histogram. Program 0 also writes seg_indptr.
    """
    pid = tl.program_id(0)
    buckets = tl.arange(0, NBP)
    # This block's own part first: it reads only the ids, so under PDL it overlaps the histograms.
    base = pid.to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + base + lane, mask=base + lane < N, other=-2)   # -2: a padding lane -> dump bucket
    bucket = _bucket_of(ids, E, SHIFT)
    h = tl.histogram(bucket, NBP)
    key = bucket * BLOCK + lane                                  # unique keys: stable within the block
    if USE_SORT:
        key = tl.sort(key)
        bucket = key // BLOCK
        src = base + (key % BLOCK)                               # the slot at sorted position p = lane
        p = lane
    else:
        # Interpreter: tl.sort is very slow there; the same in-block rank by pairwise compare.
        src = base + lane
        p = tl.sum((key[None, :] < key[:, None]).to(tl.int32), axis=1)
    if PDL:
        gdc_wait()                # launched early: wait for the histograms before reading them
    g = pid // SUPER
    rows0 = tl.arange(0, R)
    totals = tl.zeros([NBP], dtype=tl.int32)
    before = tl.zeros([NBP], dtype=tl.int32)
    for r0 in range(0, NSB, R):
        rows = r0 + rows0
        t = tl.load(sbtot_ptr + rows[:, None].to(tl.int64) * NBP + buckets[None, :], mask=rows[:, None] < NSB, other=0)
        totals += tl.sum(t, axis=0)
        before += tl.sum(tl.where(rows[:, None] < g, t, 0), axis=0)
    start = tl.cumsum(totals, axis=0) - totals                       # first sorted position of each bucket
    if DEEPEP:
        n_inv = tl.sum(tl.where(buckets == 0, totals, 0), axis=0)   # bucket 0 holds the -1 ids
    else:
        n_inv = 0
    if pid == 0:
        if DEEPEP:
            # seg_indptr[e] = start[e + 1] - n_inv for e in 0..E
            tl.store(seg_ptr + buckets - 1, (start - n_inv).to(tl.int64), mask=(buckets >= 1) & (buckets <= E + 1))
        else:
            tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets <= E)
    delta = start - n_inv + tl.load(colsb_ptr + pid.to(tl.int64) * NBP + buckets) + before - (tl.cumsum(h, axis=0) - h)
    ok = src < N
    pos = p + tl.gather(delta, bucket, 0)
    tl.store(src2dst_ptr + src, pos.to(src2dst_ptr.dtype.element_ty), mask=ok)
    idv = tl.load(ids_ptr + src, mask=ok, other=0)               # original id (exact even for dump ids)
    tl.store(sorted_ptr + pos, idv, mask=ok & (pos >= 0) & (pos < OUT_LEN))


# Block plan; module-level so that results scripts can sweep them on the GPU.
TARGET_BLOCKS = 256     # blocks for mid sizes (H200 sweep: 13 / 17 us at T*K = 32768 / 131072)
MIN_BLOCK = 256
MAX_BLOCK = 4096        # bitonic sort in registers
SUPER_BLOCKS = 8        # blocks per superblock (a power of 2): the histogram kernel's program
SUPER_TILE = 8192       # superblock-row entries per load of the scatter's loop
HIST_WARPS = 4
HIST_STAGES = 4        # the histogram loop's software pipeline (cp.async): 3 blocks in flight
SCATTER_WARPS = 0       # warps of the scatter programs; 0: 4, or 8 from 2,048-slot blocks
# Programmatic dependent launch of the scatter kernel (sm_90+): scheduled while the histograms
# run, it waits for them in gdc_wait, which hides the gap between the two launches in a CUDA graph
# and overlaps the scatter's sort with the histograms. MOE_PREPROCESS_PDL=0 turns it off (an A/B switch).
USE_PDL = os.environ.get("MOE_PREPROCESS_PDL", "1") not in ("0", "false", "False", "")


def _plan(n: int, num_experts: int, deepep: bool):
    """(NBP histogram bins, BLOCK slots per block, blocks, SUPER blocks per superblock, superblocks)."""
    nb = num_experts + (2 if deepep else 1)                      # (-1 bucket) + experts + dump
    nbp = max(32, _config.next_pow2(nb))                         # tl.histogram: power of 2, >= warp size
    block = min(MAX_BLOCK, max(MIN_BLOCK, _config.next_pow2(triton.cdiv(n, TARGET_BLOCKS))))
    if _config.is_interpreter() and not FORCE_SORT:
        block = min(block, 512)  # the pairwise rank is BLOCK x BLOCK
    nblk = triton.cdiv(n, block)
    sup = min(SUPER_BLOCKS, _config.next_pow2(nblk))
    return nbp, block, nblk, sup, triton.cdiv(nblk, sup)


def _sort_slots(topk_ids: torch.Tensor, num_experts: int, deepep: bool):
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    dev = flat.device
    shift = 1 if deepep else 0
    nbp, block, nblk, sup, nsb = _plan(n, num_experts, deepep)
    colsb = torch.empty(nblk, nbp, dtype=torch.int32, device=dev)    # fully written by _hist_kernel
    sbtot = torch.empty(nsb, nbp, dtype=torch.int32, device=dev)     # fully written by _hist_kernel
    seg = torch.empty(num_experts + 1, dtype=torch.int64, device=dev)  # fully written by _scatter_kernel
    ninv = torch.zeros(1, dtype=torch.int32, device=dev) if deepep else sbtot  # deepep's atomic count (else unused)
    warps = SCATTER_WARPS or (8 if block >= 2048 else 4)
    pdl = (USE_PDL and gdc_wait is not None and not _config.is_interpreter()
           and _config.is_hopper_or_newer(dev.index))
    _hist_kernel[(nsb,)](flat, colsb, sbtot, ninv, n, num_experts, nblk,
                         SHIFT=shift, DEEPEP=deepep, BLOCK=block, NBP=nbp, SUPER=sup, STAGES=HIST_STAGES, PDL=pdl,
                         num_warps=HIST_WARPS)
    if deepep:
        # The output length N - n_inv is data dependent: one device-to-host read, here only.
        n_out = n - int(ninv.item())
        src2dst = torch.empty(n, dtype=torch.int64, device=dev)
    else:
        n_out = n
        src2dst = torch.empty(n, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(n_out, dtype=flat.dtype, device=dev)
    rows = max(1, min(_config.next_pow2(nsb), SUPER_TILE // nbp))
    _scatter_kernel[(nblk,)](flat, colsb, sbtot, src2dst, sorted_ids, seg, n, num_experts, n_out, nsb,
                             SHIFT=shift, DEEPEP=deepep, BLOCK=block, NBP=nbp, SUPER=sup, R=rows, num_warps=warps,
                             USE_SORT=FORCE_SORT or not _config.is_interpreter(), PDL=pdl,
                             **({"launch_pdl": True} if pdl else {}))
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
