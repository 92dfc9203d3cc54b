"""Tile and path sweep of our kernels on the GPU (issue 8): where each kernel stands against its
floor and which launch settings move it. A measuring script, not a check: correctness is the
harness's job (run it on the same tree in the same device call).

For each section it times every variant alone (harness.timing: L2 flushed, event-timed, median
and quartiles), prints one line per variant and writes the records to --json:
- gemm: the ANCHORS.md shapes (bf16; fp8 per tensor and block-wise on two of them) with torch's
  per-group mm loop and torch._grouped_mm, our autotuned kernel through TMA and through
  pointers, and fixed tiles on both paths (registers and spills of each compiled variant);
- gemm_ep: the bench's grouped_gemm cases in SGLang's EP layout (a holds all T*K slots, routed
  groups): autotuned under each grid cap, the same groups with a cut to the rank's rows, tiles;
- reorder / silu: T=4096, H=7168 (DeepSeek-V3), all experts local and EP8, tile sizes and warps,
  CUDA-graph replay;
- ep_skip: silu and post_reorder under EP8 on inputs that isolate one part of their time
  (nothing local, the local span alone, everything local);
- preprocess: T*K = 1024 / 32768 / 131072 over 256 experts, block plan and scan tile, graph
  replay, and the device time of each of its three kernels (torch profiler);
- copies: a memcpy and the bench's copy kernel at the EP8 ops' sizes and at 1 GiB, eager / graph;
  the write rate at pre_reorder's all-local size, rows in order and shuffled;
- gemm_parts: the uniform DeepSeek GEMM shapes whole and as parts of their K loop (weight stream,
  both streams, MMA alone, loads and MMA without the epilogue);
- movement: pre_reorder's all-local traffic with one part changed at a time (destinations, reads,
  cache hints, TMA stores) and silu over a compact span through TMA tiles.
Usage: PYTHONPATH=. python tools/explore_tiles.py [--section gemm gemm_ep reorder ep_skip preprocess copies movement
       gemm_parts]
       [--json F]
       (--smoke: every section at tiny sizes on the CPU, TRITON_INTERPRET=1; tests/test_explore_smoke.py runs it)
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, List

import torch
import triton
import triton.language as tl

from harness.specs import SPECS
from harness.timing import TimingConfig, Workload, capture_graph, copy_moving, measure_ceilings, run_interleaved, Stats
from optimized import activation, config, describe_last_launch, gemm, preprocess, reorder

try:  # host-side TMA descriptors (triton >= 3.3); the interpreter emulates them
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the TMA variants are left out
    TensorDescriptor = None

DEV = "cuda"
CFG = TimingConfig(warmup_ms=30, rep_ms=120)


@dataclass(frozen=True)
class Record:
    """One timed variant: what it is, its median and quartiles, and its share of the floor."""

    section: str
    case: str
    variant: str
    median_us: float
    q25_us: float
    q75_us: float
    floor_us: float
    share_of_floor: float
    note: str = ""


RECORDS: List[Record] = []
# the GEMM's plain-torch baselines, as the op's record names them: a per-group torch.mm loop, torch._grouped_mm
TORCH_MM_LOOP = SPECS["grouped_gemm"].baselines["torch"]
TORCH_GROUPED_MM = SPECS["grouped_gemm"].baselines["torch_grouped_mm"]


def _replayable(call: Callable[[], object]) -> Callable[[], object]:
    """The call captured in a CUDA graph (its replay); the call itself on the CPU (the smoke run
    times eagerly)."""
    return capture_graph(call, DEV)[0].replay if DEV == "cuda" else call


def _time(call: Callable[[], object], graph: bool) -> Stats:
    if graph:
        call = _replayable(call)
    run = run_interleaved([Workload("x", (call,))], DEV, CFG)
    return Stats.of(run.times_ms[0])


def record(section, case, variant, call, floor_us, graph=False, note=""):
    try:
        st = _time(call, graph)
    except Exception as exc:  # a variant that cannot run is a finding, not a crash of the sweep
        print(f"{section:10s} {case:34s} {variant:44s} FAILED {type(exc).__name__}: {str(exc)[:150]}", flush=True)
        RECORDS.append(Record(section, case, variant, math.nan, math.nan, math.nan, floor_us, math.nan,
                              f"failed: {type(exc).__name__}: {str(exc)[:300]}"))
        return
    med = st.median_ms * 1e3
    r = Record(section, case, variant, med, st.q1_ms * 1e3, st.q3_ms * 1e3, floor_us, floor_us / med, note)
    RECORDS.append(r)
    print(f"{section:10s} {case:34s} {variant:44s} {med:10.1f} us  [{r.q25_us:.1f}, {r.q75_us:.1f}]  "
          f"floor {floor_us:8.1f}  {100 * r.share_of_floor:5.1f}%  {note}", flush=True)


# ----------------------------------------------------------------------------- GEMM

GEMM_SHAPES = {  # name: (groups, M_total, N, Kd)  (ANCHORS.md)
    "ds_gate_up": (32, 4096, 4096, 7168),
    "ds_down": (32, 4096, 7168, 2048),
    "mixtral_gate_up": (8, 8192, 28672, 4096),
    "decode": (32, 256, 4096, 7168),
}
TILES_16 = [  # BM, BN, BK, warps, stages, persist[, warp-specialised]
    (128, 256, 64, 8, 3, 0), (128, 256, 64, 8, 3, 1), (128, 128, 64, 4, 4, 0), (128, 128, 64, 4, 4, 1),
]
TILES_FP8 = [
    (128, 256, 128, 8, 3, 0), (128, 256, 128, 8, 3, 1), (64, 256, 128, 4, 3, 0), (64, 128, 128, 4, 3, 0),
    (64, 128, 128, 4, 5, 0), (128, 128, 128, 4, 3, 0),
]
# Block-wise: the tiles whose columns lie in one scale block (BN <= 128), where the scale is one FFMA
# per element and nothing spills (seventh session, compile_sm90.py --dtype fp8_block)
TILES_FP8_BLOCK = [  # ..., persist[, WS[, maxnreg]]
    (64, 128, 128, 4, 3, 0), (64, 128, 128, 4, 4, 0), (64, 128, 128, 4, 5, 0), (128, 128, 128, 8, 3, 0),
    (128, 128, 128, 8, 4, 0), (128, 128, 128, 8, 3, 1), (128, 128, 64, 8, 4, 0), (64, 128, 64, 4, 4, 0),
    # register caps for three 64-row programs per SM (168) or two 128-row ones (128); both spill a little
    (64, 128, 128, 4, 2, 0, False, 168), (64, 128, 128, 4, 3, 0, False, 168), (64, 128, 64, 4, 3, 0, False, 168),
    (128, 128, 128, 8, 3, 0, False, 128), (64, 128, 128, 4, 2, 3, False, 168),
]
GEMM_DTYPES = ("bfloat16", "fp8_tensor", "fp8_block")
GEMM_DTYPES_WANTED = list(GEMM_DTYPES)  # --gemm-dtypes
# tiles are timed on the TMA path only; the pointer path is timed autotuned, for the A/B
POINTER_TILES = False


def _gemm_inputs(shape, dtype, gen):
    G, M, N, Kd = shape
    per = M // G
    seg = torch.arange(G + 1, device=DEV, dtype=torch.int64) * per
    widx = torch.arange(G, device=DEV, dtype=torch.int64)
    a = torch.randn(M, Kd, device=DEV, generator=gen).to(torch.bfloat16)
    b = (torch.randn(G, N, Kd, device=DEV, generator=gen) / math.sqrt(Kd)).to(torch.bfloat16)
    c = torch.empty(M, N, device=DEV, dtype=torch.bfloat16)
    kw = {}
    if dtype == "fp8_tensor":
        a, b = a.to(torch.float8_e4m3fn), (b * math.sqrt(Kd)).to(torch.float8_e4m3fn)
        s = torch.full((G,), 1.0 / math.sqrt(math.sqrt(Kd)), device=DEV)
        kw = dict(use_fp8_w8a8=True, scale_a=s, scale_b=s.clone())
    elif dtype == "fp8_block":
        b = (b * math.sqrt(Kd)).to(torch.float8_e4m3fn)
        sb = torch.rand(G, triton.cdiv(N, 128), triton.cdiv(Kd, 128), device=DEV, generator=gen) / math.sqrt(Kd)
        kw = dict(use_fp8_w8a8=True, scale_b=sb, block_shape=[128, 128])
    return (a, b, c, G, True, seg, widx), kw


def _gemm_floor(shape, ceil, dtype):
    G, M, N, Kd = shape
    el = 1 if dtype.startswith("fp8") else 2
    flops_us = 2 * M * N * Kd / (ceil.matmul_tflops * (2 if el == 1 else 1) * 1e12) * 1e6
    bytes_us = (M * Kd * el + G * N * Kd * el + M * N * 2) / (ceil.copy_gbps * 1e9) * 1e6
    return max(flops_us, bytes_us)


def _spills(kernel) -> str:
    return f"regs {getattr(kernel, 'n_regs', '?')} spills {getattr(kernel, 'n_spills', '?')}"


def gemm_section(ceil, gen):
    dtypes = {"bfloat16": list(GEMM_SHAPES), "fp8_tensor": ["mixtral_gate_up", "ds_gate_up"],
              "fp8_block": ["mixtral_gate_up", "ds_gate_up"]}
    for dtype, names in dtypes.items():
        if dtype not in GEMM_DTYPES_WANTED:
            continue
        for name in names:
            shape = GEMM_SHAPES[name]
            args, kw = _gemm_inputs(shape, dtype, gen)
            floor = _gemm_floor(shape, ceil, dtype)
            case = f"{name}:{dtype}"
            if dtype == "bfloat16":
                record("gemm", case, "torch_loop", lambda: TORCH_MM_LOOP(*args), floor)
                record("gemm", case, "torch_grouped_mm", lambda: TORCH_GROUPED_MM(*args), floor)
            for use_tma in (True, False):
                with gemm.tma_allowed(use_tma):
                    record("gemm", case, f"ours_autotuned tma={use_tma}", lambda: gemm.grouped_gemm(*args, **kw),
                           floor)
                _print_launch()
            tiles = {"bfloat16": TILES_16, "fp8_tensor": TILES_FP8, "fp8_block": TILES_FP8_BLOCK}[dtype]
            if name == "decode":
                tiles = [t for t in tiles if t[0] <= 64] + [(16, 64, 256, 4, 3, 0), (32, 64, 128, 4, 4, 0)]
            for bm, bn, bk, w, st, ps, *extra in tiles:
                ws = bool(extra and extra[0])
                maxnreg = extra[1] if len(extra) > 1 else None
                for use_tma in (True, False):
                    if not use_tma and (ps or ws or dtype != "bfloat16" or not POINTER_TILES):
                        continue
                    tile = triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "PERSIST": ps, "WS": ws},
                                         num_warps=w, num_stages=st, maxnreg=maxnreg)
                    with gemm.pinned_tile(tile, tma=use_tma) as pin:
                        record("gemm", case, f"{bm}x{bn}x{bk} w{w} s{st} p{ps}{' ws' if ws else ''}"
                               f"{f' r{maxnreg}' if maxnreg else ''} tma={use_tma}",
                               lambda: gemm.grouped_gemm(*args, **kw), floor)
                    if pin.kernel is not None:
                        print(f"    {_spills(pin.kernel)}", flush=True)
            args = kw = None  # free the operands before the next shape
            torch.cuda.empty_cache()


def _print_launch():
    """How our last grouped_gemm launch chose its tile (the autotuner's pick and runner-up)."""
    print(f"    launch: {describe_last_launch('grouped_gemm')}", flush=True)


# ----------------------------------------------------------------------------- GEMM, bench layout

# The bench's grouped_gemm cases (harness.bench.ANCHOR_CASES), built as the bench builds them:
# a holds every slot of the batch (T*K rows), seg_indptr only this rank's; routed, not uniform.
GEMM_EP_CASES = {  # name: CaseParams fields
    "ds_gate_up_ep8": dict(tokens=4096, topk=8, experts=256, end_expert=31, hidden=7168, inter=4096),
    "ds_down_ep8": dict(tokens=4096, topk=8, experts=256, end_expert=31, hidden=2048, inter=7168),
    "mixtral_gate_up": dict(tokens=4096, topk=2, experts=8, hidden=4096, inter=28672),
    "decode_ep8": dict(tokens=256, topk=8, experts=256, end_expert=31, hidden=7168, inter=4096),
}
EP_TILES = [  # BM, BN, BK, warps, stages, persist, GROUP_M, BM2[, WS]
    # Sixth session: a group's last tile is stored through a descriptor made on the device (ending
    # at the group's last row) instead of a masked tl.store; with that, triton 3.6 issues every
    # tile's wgmma asynchronously and spills nothing (tools/compile_sm90.py), 8-warp tiles
    # included. H200 after it, us, DeepSeek gate_up / down / Mixtral / decode:
    # 128x128x64 w4: 719 / 422 / 3,618 / 561; 128x256 w8 persistent: 655 / 356 / 3,095 / 532;
    # 128+64 x128 w4 s4: 627 / 357 / 3,358 / 554; 64+64 x256 w8 s4: 642 / 345 / 3,465 / 462.
    (128, 256, 64, 8, 3, 1, 8, 0), (128, 128, 64, 4, 4, 0, 8, 64), (64, 256, 64, 8, 4, 0, 8, 64),
    # warp-specialised K loops again, now that the plain loop's wgmma are asynchronous
    (128, 256, 64, 8, 3, 1, 8, 0, True), (128, 256, 64, 8, 3, 0, 8, 0, True), (128, 128, 64, 4, 4, 1, 8, 0, True),
    (128, 128, 64, 4, 4, 0, 8, 64, True),
    # bands and stages around the best tiles
    (128, 256, 64, 8, 3, 1, 16, 0), (128, 256, 64, 8, 3, 1, 4, 0), (128, 256, 64, 8, 3, 2, 8, 0),
    (128, 128, 64, 4, 4, 1, 8, 64), (128, 128, 64, 4, 3, 0, 8, 64), (64, 256, 64, 8, 3, 0, 8, 64),
    (128, 128, 128, 4, 3, 0, 8, 64), (128, 256, 32, 8, 5, 1, 8, 0),
]
# Programs-per-SM caps of the grid (gemm.grid_cap) timed autotuned, and with each tile.
# H200, fifth session: every cap was slower than none (DeepSeek gate_up EP8 840 -> 903-927 us,
# down 507 -> 581-645, Mixtral 3,714 -> 4,499-4,622), so the default sweep times no cap only.
GRID_CAPS = (0,)
TILE_CAPS = (0,)


def gemm_ep_section(ceil, gen):
    from harness.bench import production_layout
    from harness.cases import CaseParams
    for name, fields in GEMM_EP_CASES.items():
        p = CaseParams(op="grouped_gemm", dtype="bfloat16", seed=1, **fields)
        args = production_layout(SPECS["grouped_gemm"].build(p, torch.device(DEV))).args
        a, b, c, batch, seg, widx = (args[k] for k in ("a", "b", "c", "batch_size", "seg_indptr", "weight_indices"))
        lo, hi = int(seg[0]), int(seg[-1])
        sizes = (seg[1:] - seg[:-1]).tolist()
        M, Kd = a.shape
        N = b.shape[1]
        flops_us = 2 * (hi - lo) * N * Kd / (ceil.matmul_tflops * 1e12) * 1e6
        bytes_us = ((hi - lo) * Kd * 2 + batch * N * Kd * 2 + (hi - lo) * N * 2) / (ceil.copy_gbps * 1e9) * 1e6
        floor = max(flops_us, bytes_us)
        case = f"{name} rows {hi - lo}/{M}"
        print(f"    {case}: groups {batch}, rows per group min {min(sizes)} max {max(sizes)}", flush=True)
        full = (a, b, c, batch, True, seg, widx)
        record("gemm_ep", case, "torch_loop", lambda: TORCH_MM_LOOP(*full), floor)
        c_torch = c[lo:hi].float().clone()   # what each tile's result is compared with (not a check)
        record("gemm_ep", case, "torch_grouped_mm", lambda: TORCH_GROUPED_MM(*full), floor)
        for cap in GRID_CAPS:
            # fresh autotuners: the grid cap is not part of the autotune key
            with gemm.fresh_autotuning(), gemm.grid_cap(cap):
                record("gemm_ep", case, f"ours_autotuned cap={cap}", lambda: gemm.grouped_gemm(*full), floor)
                _print_launch()
        # oracle: the same groups with a cut to this rank's rows (the grid and the rows-per-group
        # hint then see the real row count)
        compact = (a[lo:hi], b, c[lo:hi], batch, True, seg - lo, widx)
        with gemm.fresh_autotuning(), gemm.grid_cap(0):
            record("gemm_ep", case, "ours_autotuned compact rows (oracle)", lambda: gemm.grouped_gemm(*compact),
                   floor)
            _print_launch()
        for bm, bn, bk, w, st, ps, gm, bm2, *ws in EP_TILES:
            ws = bool(ws and ws[0])
            for cap in (TILE_CAPS if not ps else (0,)):
                tile = triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": gm, "PERSIST": ps, "WS": ws,
                                      "BM2": bm2}, num_warps=w, num_stages=st)
                with gemm.grid_cap(cap), gemm.pinned_tile(tile) as pin:
                    record("gemm_ep", case,
                           f"{bm}+{bm2}x{bn}x{bk} w{w} s{st} p{ps} g{gm}{' ws' if ws else ''} cap={cap}",
                           lambda: gemm.grouped_gemm(*full), floor)
                if pin.kernel is not None:
                    err = (c[lo:hi].float() - c_torch).abs().max().item()
                    print(f"    {_spills(pin.kernel)}; max |ours - torch loop| {err:.3g}", flush=True)
                c[lo:hi] = float("nan")   # the next variant must write every row again
        full = compact = args = a = b = c = None
        torch.cuda.empty_cache() if DEV == "cuda" else None


@triton.jit
def _gemm_parts_kernel(a_desc, b_desc, sink_ptr, rows_per_group, N, Kd, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, LOAD_A: tl.constexpr, LOAD_B: tl.constexpr, MMA: tl.constexpr,
                       STAGES: tl.constexpr):
    """One part of a uniform grouped GEMM's main loop at a time: program (m-tile, n-tile) runs the
    K loop with TMA loads of its a tile (LOAD_A) and / or its group's b tile (LOAD_B) each step, and
    the dot (MMA) on them; a part left out uses the first step's tile throughout. Without the dot
    the tiles are summed (the stream alone); one float per program goes to sink (keeps it live)."""
    row0 = tl.program_id(0) * BM
    n_row = (row0 // rows_per_group) * N + tl.program_id(1) * BN     # row of b's [E*N, Kd] view
    a = a_desc.load([row0, 0])
    b = b_desc.load([n_row, 0])
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    part = tl.zeros([BM, BK], dtype=tl.float32)
    for k in tl.range(0, Kd, BK, num_stages=STAGES):
        if LOAD_A:
            a = a_desc.load([row0, k])
        if LOAD_B:
            b = b_desc.load([n_row, k])
        if MMA:
            acc = tl.dot(a, b.T, acc)
        else:
            part += a.to(tl.float32)
            acc += tl.sum(b.to(tl.float32), axis=1)[None, :]
    tl.store(sink_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(acc, axis=1), axis=0)
             + tl.sum(tl.sum(part, axis=1), axis=0))


GEMM_PARTS_TILES = [(128, 128, 64, 4, 4), (128, 256, 64, 8, 3)]   # BM, BN, BK, warps, stages
GEMM_STREAM_BOXES = [  # BN, BK, warps, stages
    (128, 64, 4, 4), (128, 64, 4, 6), (128, 128, 4, 3), (128, 128, 4, 4), (256, 64, 8, 4), (256, 128, 8, 3),
    (64, 128, 4, 6), (256, 64, 8, 6),
]


def gemm_parts_section(ceil, gen):
    """Where the DeepSeek GEMM's time goes (eleventh session): the uniform gate_up and down shapes
    (32 groups of 128 rows, one m-tile per group, so no padding) timed whole (ours, autotuned) and
    as parts of the same K loop: the weight stream alone, both operand streams, the MMA alone on
    tiles loaded once, and loads with MMA but no epilogue."""
    for name in ("ds_gate_up", "ds_down"):
        shape = GEMM_SHAPES[name]
        G, M, N, Kd = shape
        (a, b, c, *rest), kw = _gemm_inputs(shape, "bfloat16", gen)
        floor = _gemm_floor(shape, ceil, "bfloat16")
        w_us = G * N * Kd * 2 / (ceil.copy_gbps * 1e9) * 1e6
        mma_us = 2 * M * N * Kd / (ceil.matmul_tflops * 1e12) * 1e6
        case = f"{name} uniform (weights {w_us:.0f} us, MMA {mma_us:.0f} us at the ceilings)"
        with gemm.fresh_autotuning():
            record("gemm_parts", case, "ours autotuned", lambda: gemm.grouped_gemm(a, b, c, *rest), floor)
            _print_launch()
        sink = torch.empty(triton.cdiv(M, 16) * triton.cdiv(N, 16), device=DEV)
        for bm, bn, bk, w, st in GEMM_PARTS_TILES if DEV == "cuda" else ((16, 16, 32, 1, 1),):
            a_desc = TensorDescriptor(a, [M, Kd], [Kd, 1], [bm, bk])
            b_desc = TensorDescriptor(b.view(G * N, Kd), [G * N, Kd], [Kd, 1], [bn, bk])
            grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
            for part, (la, lb, mma) in (("weight stream alone", (False, True, False)),
                                        ("a and weight streams", (True, True, False)),
                                        ("MMA alone (tiles loaded once)", (False, False, True)),
                                        ("loads and MMA, no epilogue", (True, True, True))):
                record("gemm_parts", case, f"{part}, {bm}x{bn}x{bk} w{w} s{st}",
                       lambda la=la, lb=lb, mma=mma: _gemm_parts_kernel[grid](
                           a_desc, b_desc, sink, M // G, N, Kd, BM=bm, BN=bn, BK=bk, LOAD_A=la, LOAD_B=lb, MMA=mma,
                           STAGES=st, num_warps=w), floor)
        # the weight stream alone in other TMA boxes (BN x BK), against torch's read-only sum of the same
        # weights: whether a wider or deeper box streams them faster than the GEMM's tiles do
        record("gemm_parts", case, "torch b.sum() (reads the weights once)", lambda: b.sum(dtype=torch.float32),
               w_us)
        for bn, bk, w, st in GEMM_STREAM_BOXES if DEV == "cuda" else ((16, 32, 1, 1),):
            bm = 64 if DEV == "cuda" else 16
            a_desc = TensorDescriptor(a, [M, Kd], [Kd, 1], [bm, bk])
            b_desc = TensorDescriptor(b.view(G * N, Kd), [G * N, Kd], [Kd, 1], [bn, bk])
            grid = (G, triton.cdiv(N, bn))   # one program per (group, n-tile): rows_per_group = bm below
            record("gemm_parts", case, f"weight stream alone, box {bn}x{bk} w{w} s{st}",
                   lambda: _gemm_parts_kernel[grid](a_desc, b_desc, sink, bm, N, Kd, BM=bm, BN=bn, BK=bk,
                                                    LOAD_A=False, LOAD_B=True, MMA=False, STAGES=st, num_warps=w),
                   w_us)
        a = b = c = rest = None
        torch.cuda.empty_cache() if DEV == "cuda" else None


# ----------------------------------------------------------------------------- reorder / silu

def _routing(T, K, E, gen):
    ids = torch.rand(T, E, device=DEV, generator=gen).topk(K, dim=1).indices.to(torch.int32)   # [T, K] distinct
    sorted_ids, src2dst, seg = preprocess.ep_preprocess(ids, E)
    return ids, sorted_ids, src2dst, seg


REORDER_SHAPE = dict(T=4096, K=8, E=256, H=7168, I=2048)
REORDER_TILES = [  # TILE_ELEMS, NUM_WARPS, MAX_BLOCK_H (the first is the default)
    (1024, 2, 1024), (1024, 4, 1024), (512, 1, 512), (512, 2, 512), (2048, 2, 1024),
]
# ninth session, with slot groups of 4: (2048, 4, 1024), (4096, 4, 1024), (4096, 4, 2048), (8192, 8, 2048),
# (2048, 2, 2048), (2048, 4, 2048), (4096, 4, 4096) and (8192, 8, 8192) were all slower for post
# under EP8 (41-95 us against 39) and no faster for pre (within 1%); dropped from the sweep.
# post_reorder's slot columns per load group (0: all K loads unconditional, the eighth session's kernel)
POST_GROUPS = (0, 4)   # ninth session: 1, 2 and 8 lost to 4 everywhere
# tenth session: pre_reorder loading its token tile beside the slot ids instead of after them (every
# token read): all local 147.6 us, the same as after (147.6-148.4 at every tile above); dropped
# tenth session: one token row per program with its K slots as scalars, each local slot's row loaded
# under a uniform branch (70 registers against 126), at row blocks of 1,024-8,192 and 2-8 warps:
# EP8 38.0-43.6 us (grouped: 38.4), all local 136.6-154.9 (134.3), T=256 EP8 9.4-13.1 (9.2); dropped
# H200, fifth session: row tiles visited in a strided order and programs working through 2-16
# tiles each (ids checked at once, empty spans skipped) were both tried for silu under EP8 and
# neither beat one tile per program (22 us); both were dropped.
SILU_TILES = [  # TILE_ELEMS, NUM_WARPS (the first is the default)
    (4096, 4), (4096, 2), (2048, 4), (8192, 8),
]


def _ep_bytes(ids, start, end, H, I):
    """Bytes each op must move (reads + writes) for the experts [start, end] of ``ids`` [T, K]: pre
    reads each token with a local slot and writes each local slot's row; post reads the local slots'
    rows and writes every token's row; silu reads gate and up of each local slot and writes its row."""
    loc = (ids >= start) & (ids <= end)
    n_slots, n_tokens, T = int(loc.sum()), int(loc.any(dim=1).sum()), ids.shape[0]
    return {"pre": (n_tokens + n_slots) * H * 2, "post": (n_slots + T) * H * 2, "silu": n_slots * 3 * I * 2}


def reorder_section(ceil, gen):
    T, K, E, H, I = (REORDER_SHAPE[k] for k in "TKEHI")
    ids, sorted_ids, src2dst, seg = _routing(T, K, E, gen)
    x = torch.randn(T, H, device=DEV, generator=gen).to(torch.bfloat16)
    gateup = torch.empty(T * K, H, device=DEV, dtype=torch.bfloat16)
    down = torch.randn(T * K, H, device=DEV, generator=gen).to(torch.bfloat16)
    out = torch.empty(T, H, device=DEV, dtype=torch.bfloat16)
    w = torch.rand(T, K, device=DEV, generator=gen)
    gu = torch.randn(T * K, 2 * I, device=DEV, generator=gen).to(torch.bfloat16)
    di = torch.empty(T * K, I, device=DEV, dtype=torch.bfloat16)
    gbps = ceil.copy_gbps * 1e9
    for ep, (s, e) in (("all", (0, E - 1)), ("ep8", (32, 63))):
        pre_floor, post_floor, silu_floor = (n / gbps * 1e6 for n in _ep_bytes(ids, s, e, H, I).values())
        for tile, warps, block_h in REORDER_TILES if DEV == "cuda" else ((2048, 4, 1024),):
            v = f"tile {tile} warps {warps} block_h {block_h}"
            with reorder.pinned_tiles(tile_elems=tile, num_warps=warps, max_block_h=block_h):
                record("reorder", f"pre T{T} {ep}", v, lambda: reorder.pre_reorder(
                    x, gateup, src2dst, ids, None, s, e, K, H), pre_floor, graph=True)
                record("reorder", f"post T{T} {ep}", v, lambda: reorder.post_reorder(
                    down, out, src2dst, ids, w, s, e, K, H), post_floor, graph=True)
        for group in POST_GROUPS:
            with reorder.pinned_slot_group(group):
                record("reorder", f"post T{T} {ep}", f"default tile, slot groups of {group}",
                       lambda: reorder.post_reorder(down, out, src2dst, ids, w, s, e, K, H), post_floor, graph=True)
        for tile, warps in SILU_TILES if DEV == "cuda" else ((4096, 4),):
            with activation.pinned_tiles(tile_elems=tile, num_warps=warps):
                record("silu", f"silu T{T} {ep}", f"tile {tile} warps {warps}",
                       lambda: activation.silu_and_mul(gu, di, 2 * I, sorted_ids, None, s, e), silu_floor, graph=True)
    # T = 256, EP8: each op against one copy launch that moves the same bytes (read + write)
    T2 = min(256, T)
    ids2, sorted2, src2, _ = _routing(T2, K, E, gen)
    s, e = 32, 63
    x2, g2, d2, o2, w2 = x[:T2].contiguous(), gateup[:T2 * K], down[:T2 * K], out[:T2], w[:T2].contiguous()
    gu2, di2 = gu[:T2 * K], di[:T2 * K]
    moved = _ep_bytes(ids2, s, e, H, I)
    calls = {
        "pre": lambda: reorder.pre_reorder(x2, g2, src2, ids2, None, s, e, K, H),
        "post": lambda: reorder.post_reorder(d2, o2, src2, ids2, w2, s, e, K, H),
        "silu": lambda: activation.silu_and_mul(gu2, di2, 2 * I, sorted2, None, s, e),
    }
    for op, call in calls.items():
        copy = _time(copy_moving(moved[op], DEV), graph=True).median_ms * 1e3
        record("reorder" if op != "silu" else "silu", f"{op} T{T2} ep8", "default tile", call, copy, graph=True,
               note=f"floor = one copy launch moving the same {moved[op] / 1e6:.1f} MB")
        if op == "post":
            for group in POST_GROUPS:
                with reorder.pinned_slot_group(group):
                    record("reorder", f"post T{T2} ep8", f"default tile, slot groups of {group}",
                           call, copy, graph=True)


@triton.jit
def _zero_rows_kernel(out_ptr, ids_ptr, T, H, K, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, READ_IDS: tl.constexpr,
                      SHUFFLED: tl.constexpr = False):
    """out[rows, cols] = 0 for one [ROWS, BLOCK_H] tile; with READ_IDS the store waits for a load of
    the rows' first id (whose value is never negative), like post_reorder's stores; SHUFFLED: the
    tile's rows are ids[rows] (a permutation of [0, T)), not rows."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < T
    if SHUFFLED:
        rows = tl.load(ids_ptr + rows, mask=rmask, other=0).to(tl.int64)
    if READ_IDS:
        rmask = rmask & (tl.load(ids_ptr + rows * K, mask=rmask, other=0) >= 0)
    zero = tl.zeros([ROWS, BLOCK_H], dtype=out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], zero, mask=rmask[:, None] & (cols < H)[None, :])


def ep_skip_section(ceil, gen):
    """Where the EP8 time of silu and post_reorder goes (eighth session): the same kernels on
    inputs that isolate one part. silu: the local rows as routed (one span of the sorted ids
    among all T*K), no local row at all (every program exits after reading its ids), and the
    local span alone as a compact tensor (the time a kernel given only those rows would take).
    post_reorder: as routed, no local slot (every output row written as zeros, nothing read),
    every slot local."""
    T, K, E, H, I = (REORDER_SHAPE[k] for k in "TKEHI")
    ids, sorted_ids, src2dst, seg = _routing(T, K, E, gen)
    gbps = ceil.copy_gbps * 1e9
    s, e = 32, 63
    lo, hi = int(seg[s]), int(seg[e + 1])
    none = (E + 44, E + 44)                     # an expert no slot routes to: nothing local
    gu = torch.randn(T * K, 2 * I, device=DEV, generator=gen).to(torch.bfloat16)
    di = torch.empty(T * K, I, device=DEV, dtype=torch.bfloat16)
    row_bytes = 3 * I * 2
    variants = [
        ("ep8 as routed", (gu, di, sorted_ids, (s, e)), hi - lo),
        ("no local row", (gu, di, sorted_ids, none), 0),
        ("local span alone", (gu[lo:hi], di[lo:hi], sorted_ids[lo:hi], (s, e)), hi - lo),
        ("all local", (gu, di, sorted_ids, (0, E - 1)), T * K),
    ]
    for name, (g, d, r, (a, b)), n_rows in variants:
        record("ep_skip", f"silu T{T} I{I}", name, lambda: activation.silu_and_mul(g, d, 2 * I, r, None, a, b),
               max(n_rows, 1) * row_bytes / gbps * 1e6, graph=True,
               note=f"{n_rows} rows; floor = their bytes at copy bandwidth")
    # (ninth session: a persistent silu that skips empty row tiles by a branch cut the "no local row"
    # scan from 15.0 to 9.4 us but not the routed case; refuted, its kernel is in git at 6ba0250)
    down = torch.randn(T * K, H, device=DEV, generator=gen).to(torch.bfloat16)
    out = torch.empty(T, H, device=DEV, dtype=torch.bfloat16)
    w = torch.rand(T, K, device=DEV, generator=gen)
    for group in (reorder.POST_SLOT_GROUP, 0):
        how = "" if group == reorder.POST_SLOT_GROUP else ", no slot groups"
        with reorder.pinned_slot_group(group):
            for name, (a, b) in (("ep8 as routed", (s, e)), ("no local slot", none), ("all local", (0, E - 1))):
                slots = int(((ids >= a) & (ids <= b)).sum())
                record("ep_skip", f"post T{T} H{H}", name + how,
                       lambda: reorder.post_reorder(down, out, src2dst, ids, w, a, b, K, H),
                       _ep_bytes(ids, a, b, H, I)["post"] / gbps * 1e6, graph=True,
                       note=f"{slots} local slots; floor = their rows read + every output row written")
    # each EP8 op's bytes moved by one copy kernel: how far a kernel of that size gets from the
    # 1 GiB copy's rate at all (launch, ramp and tail)
    ep8_bytes = _ep_bytes(ids, s, e, H, I)
    for op in ("silu", "post", "pre"):
        moved = ep8_bytes[op]
        record("ep_skip", f"{op} T{T} EP8 bytes", f"copy kernel of the same {moved / 1e6:.1f} MB",
               copy_moving(moved, DEV), moved / gbps * 1e6, graph=True, note="floor = the same bytes at the 1 GiB copy's rate")
    # the write-only part against the card's own write-only rate (torch's fill of the same output)
    zero_floor = T * H * 2 / gbps * 1e6
    record("ep_skip", f"post T{T} H{H}", "torch out.zero_()", out.zero_, zero_floor, graph=True,
           note="the same bytes written by one fill kernel")
    for tile, warps, block_h in REORDER_TILES[1:] + [(4096, 4, 4096), (8192, 8, 8192)]:
        with reorder.pinned_tiles(tile_elems=tile, num_warps=warps, max_block_h=block_h):
            record("ep_skip", f"post T{T} H{H}", f"no local slot, tile {tile} warps {warps} block_h {block_h}",
                   lambda: reorder.post_reorder(down, out, src2dst, ids, w, *none, K, H), zero_floor, graph=True)
    # the same zero rows stored by a Triton kernel that reads nothing (and one that first reads its
    # rows' ids, as post_reorder does): whether the gap to torch's fill is the stores' code or the
    # wait for the ids (ninth session: 17-22 us either way, so neither)
    for tile, warps, block_h in ((1024, 2, 1024), (4096, 4, 4096), (8192, 8, 8192)):
        rows_per = max(1, tile // block_h)
        grid = (triton.cdiv(T, rows_per), triton.cdiv(H, block_h))
        for read_ids in (False, True):
            record("ep_skip", f"post T{T} H{H}",
                   f"triton zero store{' after id read' if read_ids else ''}, tile {tile} warps {warps}",
                   lambda: _zero_rows_kernel[grid](out, ids, T, H, K, ROWS=rows_per, BLOCK_H=block_h,
                                                   READ_IDS=read_ids, num_warps=warps),
                   zero_floor, graph=True)


# ----------------------------------------------------------------------------- copies

COPY_SIZES_MB = (50.9, 118.1, 1073.7)   # silu's and post's EP8 bytes at T=4096, and the ceiling's 1 GiB


def copies_section(ceil, gen):
    """Copies and stores against which the data-movement kernels are read.

    Each size is copied by ``dst.copy_(src)`` (a driver memcpy; a memcpy node when captured) and by
    timing.copy_moving (``src * 1``, an elementwise kernel on the SMs), eager and graph. Tenth
    session: the memcpy took 23.8 / 48.3 us (graph) for 50.9 / 118 MB against 17.8 / 33.2 for the
    kernel, fresh or after 1.9 GB of allocations or 3 s of load, with or without the L2 flush; that
    was the ninth session's 1.4x between this script's copies and the bench's. Then the write rate:
    pre_reorder's all-local output (469.8 MB) zeroed by torch and by Triton tiles of 2-16 KB per
    program, rows in order and in a random order (pre_reorder writes each token to K scattered rows)."""
    T, K, H = (REORDER_SHAPE[k] for k in "TKH")
    gbps = ceil.copy_gbps * 1e9
    for mb in COPY_SIZES_MB if DEV == "cuda" else COPY_SIZES_MB[:1]:
        n = int(mb * 1e6)
        src = torch.empty(max(1, n // 4), dtype=torch.int16, device=DEV).random_()
        dst = torch.empty_like(src)
        for name, call in (("dst.copy_(src), memcpy", functools.partial(dst.copy_, src)),
                           ("copy kernel (timing.copy_moving)", copy_moving(n, DEV))):
            for graph in (False, True):
                record("copies", f"{mb:.1f} MB", f"{name}, {'graph' if graph else 'eager'}", call, n / gbps * 1e6,
                       graph=graph, note="floor = the same bytes at the 1 GiB copy's rate")
        del src, dst
    big = torch.empty(T * K, H, device=DEV, dtype=torch.bfloat16)
    write_floor = big.numel() * 2 / gbps * 1e6
    case = f"write {big.numel() * 2 / 1e6:.1f} MB"
    record("copies", case, "torch zero_()", big.zero_, write_floor, graph=True,
           note="floor = the same bytes at the 1 GiB copy's rate")
    order = torch.randperm(T * K, device=DEV, generator=gen).to(torch.int32)
    for tile, warps, block_h in ((1024, 2, 1024), (4096, 4, 4096), (8192, 8, 8192)):
        rows_per = max(1, tile // block_h)
        grid = (triton.cdiv(T * K, rows_per), triton.cdiv(H, block_h))
        for shuffled in (False, True):
            record("copies", case, f"triton zero store, tile {tile} warps {warps}{', rows shuffled' if shuffled else ''}",
                   lambda: _zero_rows_kernel[grid](big, order, T * K, H, 1, ROWS=rows_per, BLOCK_H=block_h,
                                                   READ_IDS=False, SHUFFLED=shuffled, num_warps=warps),
                   write_floor, graph=True)


# ----------------------------------------------------------------------------- movement

@triton.jit
def _pre_probe_kernel(x_ptr, out_ptr, src2dst_ptr, T, H, TOPK: tl.constexpr, BLOCK_H: tl.constexpr,
                      SEQUENTIAL: tl.constexpr, READ_X: tl.constexpr, LOAD_EVICT: tl.constexpr,
                      STORE_MOD: tl.constexpr):
    """pre_reorder's all-local traffic with one part changed at a time: one token row chunk per
    program, written to its K slots' rows (src2dst, or t*K + k with SEQUENTIAL); READ_X off stores
    zeros instead of the token (no reads); cache hints on the load / the stores."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    if READ_X:
        x = tl.load(x_ptr + t * H + cols, mask=cmask, eviction_policy=LOAD_EVICT)
    else:
        x = tl.zeros([BLOCK_H], dtype=out_ptr.dtype.element_ty)
    for k in tl.static_range(TOPK):
        if SEQUENTIAL:
            dst = t * TOPK + k
        else:
            dst = tl.load(src2dst_ptr + t * TOPK + k).to(tl.int64)
        tl.store(out_ptr + dst * H + cols, x, mask=cmask, cache_modifier=STORE_MOD)


@triton.jit
def _mix_probe_kernel(x_ptr, out_ptr, sink_ptr, src2dst_ptr, T, H, TOPK: tl.constexpr, BLOCK_H: tl.constexpr,
                      WRITES: tl.constexpr, READS: tl.constexpr):
    """pre_reorder's reads and writes with no dependency between them: programs p = t*(K+1) + j in
    dispatch order; j = 0 reads token t's chunk (READS) and keeps only its sum (a 4-byte sink
    store), j = 1..K store zeros to slot t*K + j - 1's row (WRITES). So the same bytes in the same
    interleaving, but no store waits for a load."""
    p = tl.program_id(0)
    t = (p // (TOPK + 1)).to(tl.int64)
    j = p % (TOPK + 1)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    if j == 0:
        if READS:
            x = tl.load(x_ptr + t * H + cols, mask=cmask, other=0.0)
            tl.store(sink_ptr + t * tl.num_programs(1) + tl.program_id(1), tl.sum(x.to(tl.float32), axis=0))
    else:
        if WRITES:
            dst = tl.load(src2dst_ptr + t * TOPK + j - 1).to(tl.int64)
            tl.store(out_ptr + dst * H + cols, tl.zeros([BLOCK_H], dtype=out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _pre_probe_tma_kernel(x_desc, out_desc, src2dst_ptr, TOPK: tl.constexpr, BLOCK_H: tl.constexpr,
                          TMA_LOAD: tl.constexpr, x_ptr, H):
    """The same with the K row stores through a TMA descriptor of out ([T*K, H], block [1, BLOCK_H];
    triton splits a block wider than 256 into several boxes); the token row through TMA too with
    TMA_LOAD, else a plain load."""
    t = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_H
    if TMA_LOAD:
        x = x_desc.load([t, c0])                                             # [1, BLOCK_H]
    else:
        cols = c0 + tl.arange(0, BLOCK_H)
        x = tl.load(x_ptr + t.to(tl.int64) * H + cols, mask=cols < H)[None, :]
    for k in tl.static_range(TOPK):
        dst = tl.load(src2dst_ptr + t * TOPK + k)
        out_desc.store([dst, c0], x)


@triton.jit
def _silu_probe_tma_kernel(gu_desc, out_desc, I, ROWS: tl.constexpr, BLOCK_I: tl.constexpr):
    """silu_and_mul of a compact block of rows (every row local) through TMA loads and stores."""
    r0 = tl.program_id(0) * ROWS
    c0 = tl.program_id(1) * BLOCK_I
    gate = gu_desc.load([r0, c0]).to(tl.float32)
    up = gu_desc.load([r0, c0 + I]).to(tl.float32)
    a = gate / (1.0 + tl.exp(-gate))
    o = a.to(out_desc.dtype).to(tl.float32) * up
    out_desc.store([r0, c0], o.to(out_desc.dtype))


def _host_desc(t, block):
    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)


def movement_section(ceil, gen):
    """Where pre_reorder's all-local time goes (84% of copy, eleventh session), one part of its
    traffic changed at a time, and whether TMA moves it or silu's compact span: the same bytes
    with sequential destinations, without the reads, with cache hints, with TMA stores (and loads),
    each checked to write what pre_reorder writes (the variants that write the same rows)."""
    T, K, E, H, I = (REORDER_SHAPE[k] for k in "TKEHI")
    ids, sorted_ids, src2dst, seg = _routing(T, K, E, gen)
    gbps = ceil.copy_gbps * 1e9
    x = torch.randn(T, H, device=DEV, generator=gen).to(torch.bfloat16)
    want = torch.zeros(T * K, H, device=DEV, dtype=torch.bfloat16)
    reorder.pre_reorder(x, want, src2dst, ids, None, 0, E - 1, K, H)
    out = torch.empty_like(want)
    moved = (T + T * K) * H * 2
    floor = moved / gbps * 1e6
    case = f"pre T{T} all local {moved / 1e6:.1f} MB"
    record("movement", case, "copy kernel of the same bytes", copy_moving(moved, DEV), floor, graph=True)
    record("movement", case, "pre_reorder (default)", lambda: reorder.pre_reorder(x, out, src2dst, ids, None, 0, E - 1,
                                                                                 K, H), floor, graph=True)

    def same(call):
        out.fill_(7)
        call()
        return "writes what pre_reorder writes" if torch.equal(out, want) else "DIFFERS from pre_reorder"

    for block_h, warps in ((1024, 2), (2048, 4), (8192, 8)) if DEV == "cuda" else ((64, 1),):
        grid = (T, triton.cdiv(H, block_h))
        variants = [  # SEQUENTIAL, READ_X, LOAD_EVICT, STORE_MOD
            ("probe as pre_reorder", False, True, "", ""),
            ("sequential destinations", True, True, "", ""),
            ("no reads (zeros to the same rows)", False, False, "", ""),
            ("load evict_first", False, True, "evict_first", ""),
            ("stores .cs (streaming)", False, True, "", ".cs"),
            ("load evict_first, stores .cs", False, True, "evict_first", ".cs"),
        ]
        for name, seq, read, evict, mod in variants:
            def call(seq=seq, read=read, evict=evict, mod=mod):
                _pre_probe_kernel[grid](x, out, src2dst, T, H, TOPK=K, BLOCK_H=block_h, SEQUENTIAL=seq, READ_X=read,
                                        LOAD_EVICT=evict, STORE_MOD=mod, num_warps=warps)
            note = same(call) if (read and not seq) else ""
            record("movement", case, f"{name}, block {block_h} w{warps}", call, floor, graph=True, note=note)
        mix_grid = (T * (K + 1), triton.cdiv(H, block_h))
        sink = torch.empty(T * mix_grid[1], device=DEV, dtype=torch.float32)
        for name, writes, reads in (("reads and writes, no dependency", True, True), ("its reads alone", False, True),
                                    ("its writes alone", True, False)):
            record("movement", case, f"{name}, block {block_h} w{warps}",
                   lambda writes=writes, reads=reads: _mix_probe_kernel[mix_grid](
                       x, out, sink, src2dst, T, H, TOPK=K, BLOCK_H=block_h, WRITES=writes, READS=reads,
                       num_warps=warps), floor, graph=True)
        if TensorDescriptor is not None:
            for tma_load in (False, True):
                x_desc, o_desc = _host_desc(x, [1, block_h]), _host_desc(out, [1, block_h])

                def call(tma_load=tma_load, x_desc=x_desc, o_desc=o_desc):
                    _pre_probe_tma_kernel[grid](x_desc, o_desc, src2dst, TOPK=K, BLOCK_H=block_h, TMA_LOAD=tma_load,
                                                x_ptr=x, H=H, num_warps=warps)
                record("movement", case, f"TMA stores{', TMA load' if tma_load else ''}, block {block_h} w{warps}",
                       call, floor, graph=True, note=same(call))
    # silu over a compact span of local rows (the EP8 span's size): the grid kernel against TMA tiles
    n = int(seg[64]) - int(seg[32])
    gu = torch.randn(n, 2 * I, device=DEV, generator=gen).to(torch.bfloat16)
    di = torch.empty(n, I, device=DEV, dtype=torch.bfloat16)
    r = torch.full((n,), 40, device=DEV, dtype=torch.int32)
    silu_bytes = n * 3 * I * 2
    scase = f"silu {n} local rows {silu_bytes / 1e6:.1f} MB"
    record("movement", scase, "copy kernel of the same bytes", copy_moving(silu_bytes, DEV), silu_bytes / gbps * 1e6,
           graph=True)
    record("movement", scase, "silu_and_mul (default)", lambda: activation.silu_and_mul(gu, di, 2 * I, r, None, 32, 63),
           silu_bytes / gbps * 1e6, graph=True)
    want_di = di.clone()
    silu_tiles = ((4, 1024, 4), (8, 512, 4), (16, 256, 4), (8, 1024, 8), (32, 128, 4)) if DEV == "cuda" else ((8, 16, 1),)
    if TensorDescriptor is not None:
        for rows, block_i, warps in silu_tiles:
            g_desc, o_desc = _host_desc(gu, [rows, block_i]), _host_desc(di, [rows, block_i])
            grid = (triton.cdiv(n, rows), triton.cdiv(I, block_i))

            def call(g_desc=g_desc, o_desc=o_desc, grid=grid, rows=rows, block_i=block_i, warps=warps):
                _silu_probe_tma_kernel[grid](g_desc, o_desc, I, ROWS=rows, BLOCK_I=block_i, num_warps=warps)
            di.fill_(7)
            call()
            note = "same bits as silu_and_mul" if torch.equal(di, want_di) else "DIFFERS from silu_and_mul"
            record("movement", scase, f"TMA tiles {rows}x{block_i} w{warps}", call, silu_bytes / gbps * 1e6,
                   graph=True, note=note)


# ----------------------------------------------------------------------------- preprocess

PREPROCESS_PLANS = [  # preprocess.pinned_plan's target_blocks, scan_cols, scan_warps, scatter_warps, pdl (the module's
    # default first)
    # H200, sixth session, T*K = 131,072 without PDL: 1, 2 or 8 warps per scatter program and
    # 128-1,024 blocks all measured 17.1-24.7 us against the default's 17.1
    (256, 16, 4, 0, True), (256, 16, 4, 0, False), (512, 16, 4, 0, True), (128, 16, 4, 0, True),
    (256, 8, 4, 0, True), (256, 8, 2, 0, True), (256, 32, 4, 0, True), (256, 16, 4, 2, True),
]


def preprocess_section(ceil, gen):
    E = 256
    # one launch (one program, or blocks of 64 that each histogram all ids) against three, where one
    # launch may do; the tenth session's figures are beside preprocess.ONE_LAUNCH_MAX
    for T in ((16, 64, 128, 256) if DEV == "cuda" else (4,)):
        ids = torch.rand(T, E, device=DEV, generator=gen).topk(8, dim=1).indices.to(torch.int32)
        variants = [("three launches", (preprocess.THREE_LAUNCHES, None)),
                    ("one launch, one program", (preprocess.ONE_PROGRAM, None)),
                    ("one launch, blocks of 64", (preprocess.ONE_LAUNCH_BLOCKS, 64))]
        for name, (way, block) in variants:
            with preprocess.forced_way(way, block):
                for graph in (True, False):
                    record("preprocess", f"T{T} K8 E{E}", f"{name}, {'graph' if graph else 'eager'}",
                           lambda: preprocess.ep_preprocess(ids, E), 15.0, graph=graph, note="floor = 15 us target")
    for T in ((128, 4096, 16384) if DEV == "cuda" else (8,)):
        ids = torch.rand(T, E, device=DEV, generator=gen).topk(8, dim=1).indices.to(torch.int32)
        case = f"T{T} K8 E{E}"
        for plan in PREPROCESS_PLANS:
            with preprocess.forced_way(preprocess.THREE_LAUNCHES), preprocess.pinned_plan(*plan):
                record("preprocess", case, "blocks {} scan cols {} w{} scatter w{} pdl {}".format(*plan),
                       lambda: preprocess.ep_preprocess(ids, E), 15.0, graph=True, note="floor = 15 us target")
        # device time per kernel
        from torch.profiler import ProfilerActivity, profile
        for _ in range(3):
            preprocess.ep_preprocess(ids, E)
        if DEV != "cuda":
            continue
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                preprocess.ep_preprocess(ids, E)
            torch.cuda.synchronize()
        for ev in prof.key_averages():
            dt = getattr(ev, "self_device_time_total", 0) or getattr(ev, "self_cuda_time_total", 0)
            if dt:
                print(f"    {case} kernel {ev.key[:60]:60s} {dt / ev.count:8.2f} us x{ev.count}", flush=True)


def _smoke():
    """Shrink every section to a few tiny cases on the CPU (TRITON_INTERPRET=1 must be set)."""
    global DEV, CFG, TILES_16, TILES_FP8, PREPROCESS_PLANS, COPY_SIZES_MB
    DEV = "cpu"
    CFG = TimingConfig(warmup_ms=1, rep_ms=1, min_rounds=2)
    for k in list(GEMM_SHAPES):
        GEMM_SHAPES[k] = (2, 32, 32, 128)
    TILES_16, TILES_FP8, PREPROCESS_PLANS = TILES_16[:1], TILES_FP8[:1], PREPROCESS_PLANS[:2]
    REORDER_SHAPE.update(T=16, H=64, I=32)
    for k in list(GEMM_EP_CASES):
        GEMM_EP_CASES[k] = dict(GEMM_EP_CASES[k], tokens=8, hidden=32, inter=32)
    EP_TILES[:] = EP_TILES[:1]
    COPY_SIZES_MB = (0.05,)


SECTIONS = {"gemm": gemm_section, "gemm_ep": gemm_ep_section, "reorder": reorder_section, "ep_skip": ep_skip_section,
            "preprocess": preprocess_section, "copies": copies_section, "movement": movement_section,
            "gemm_parts": gemm_parts_section}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--gemm-dtypes", nargs="+", choices=GEMM_DTYPES, default=GEMM_DTYPES,
                    help="the gemm section's operand dtypes")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (interpreter): checks the script runs")
    args = ap.parse_args(argv)
    GEMM_DTYPES_WANTED[:] = args.gemm_dtypes
    if args.smoke:
        _smoke()
    gen = torch.Generator(device=DEV)
    gen.manual_seed(0)
    ceil = measure_ceilings(DEV)
    print(ceil.describe(), "| torch", torch.__version__, "| triton", triton.__version__, flush=True)
    t0 = time.time()
    with config.value_checks(False):   # their device-to-host read would be timed with each call
        for sec in args.section:
            SECTIONS[sec](ceil, gen)
            print(f"--- {sec} done at {time.time() - t0:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": ceil.device, "copy_gbps": ceil.copy_gbps, "matmul_tflops": ceil.matmul_tflops,
                       "torch": torch.__version__, "triton": triton.__version__,
                       "records": [asdict(r) for r in RECORDS]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
