"""Probe for issue 8's fp8 block-wise target: can a K loop scale one K block's product while the
next block's wgmma runs? Written with Gluon (triton.experimental.gluon), which exposes what tl.dot
does not: an asynchronous warpgroup_mma and a wait that leaves N groups in flight.

The kernel is a dense block-wise fp8 GEMM tile (not yet grouped): c[BM, BN] = sum over K blocks kb
of (a_q[:, kb] @ b_q[:, kb]^T) * sa[:, kb] * sb[n_block, kb], with BK = 128 = the scale block and
BN dividing 128 (one b scale per K block for the tile). Per K block it issues the block's wgmma
into a fresh product, waits with one group left in flight (the block just issued), scales and adds
the previous block's product, then refills the freed ring slot by TMA.

  python tools/gluon_fp8_block_probe.py              # compile for sm_90 here, print the pattern
  python tools/gluon_fp8_block_probe.py --run        # on a Hopper GPU: check against torch, time

Compile mode (no GPU; TRITON_INTERPRET unset; the device's triton as in compile_sm90.py) prints
registers, spills and the wgmma / wait pattern: `H*4 0x1` would be a K loop whose scaling overlaps
the next block's wgmma (our tl.dot kernel shows `H*4 0x0`).

Answer (seventh session, triton 3.6 and its ptxas, compile mode only): no, not in one warpgroup.
The PTX carries the intended `wgmma.wait_group 1`, but ptxas serialises every wgmma (`H*1 0x0`,
213 registers, no spill) and says why (`ptxas -v` on the PTX): "C7514 Potential Performance Loss:
wgmma.mma_async instructions are serialized due to non wgmma instructions reading accumulator
registers of a wgmma between start and end of the pipeline stage". Reading a finished product
while the next wgmma is in flight is exactly that. So the overlap has to come from two math
warpgroups that progress independently (each waits for its own product, then scales it: the
design of DeepGEMM's fp8 kernels), i.e. Gluon's warp specialisation, not from one K loop.
--run (check against torch, time beside our kernel) has not been exercised on a GPU. Written for
the GPU image's triton 3.6 (3.9 renamed tma.async_copy_global_to_shared to tma.async_load).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

QB = 128   # the scale block (DeepSeek-V3's [128, 128]); BK equals it


@gluon.jit
def _fp8_block_gemm_tile(
    # descriptors: a [M, K] fp8 in [BM, BK] blocks, b [N, K] fp8 in [BN, BK] blocks, c [M, N] in [BM, BN]
    a_desc, b_desc, c_desc,
    # scales: sa [M, KB] float32 (per row and K block), sb [NB, KB] float32 (per 128-column block and K block)
    sa_ptr, sb_ptr,
    # sizes
    M, KB,
    # meta
    STAGES: gl.constexpr, num_warps: gl.constexpr,
):
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    gl.static_assert(BK == 128, "BK is the scale block")
    gl.static_assert(128 % BN == 0, "one b scale per K block for the tile")
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN

    # the wgmma accumulator layout: one warpgroup per 64 rows, instruction N = BN (<= 256)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                 instr_shape=[16, BN, 32])
    rows_layout: gl.constexpr = gl.SliceLayout(1, mma)

    # ring of STAGES (a, b) tiles, one "loaded" barrier per slot
    a_ring = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    b_ring = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    loaded = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(loaded.index(s), count=1)
    tile_bytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    for s in gl.static_range(STAGES - 1):          # prologue: the first STAGES - 1 K blocks
        pred = s < KB
        mbarrier.expect(loaded.index(s), tile_bytes, pred=pred)
        tma.async_copy_global_to_shared(a_desc, [off_m, s * BK], loaded.index(s), a_ring.index(s), pred=pred)
        tma.async_copy_global_to_shared(b_desc, [off_n, s * BK], loaded.index(s), b_ring.index(s), pred=pred)

    rows = off_m + gl.arange(0, BM, layout=rows_layout)
    rmask = rows < M
    sb_base = sb_ptr + (off_n // 128) * KB
    zero = gl.zeros([BM, BN], gl.float32, layout=mma)
    acc = gl.zeros([BM, BN], gl.float32, layout=mma)

    # K block 0: issue its wgmma; it is scaled in the next iteration (or after the loop)
    mbarrier.wait(loaded.index(0), phase=0)
    prod = warpgroup_mma(a_ring.index(0), b_ring.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    scale = gl.load(sa_ptr + rows * KB, mask=rmask, other=0.0) * gl.load(sb_base)     # [BM] for block 0
    for kb in range(1, KB):
        slot = kb % STAGES
        mbarrier.wait(loaded.index(slot), phase=(kb // STAGES) & 1)
        nxt = warpgroup_mma(a_ring.index(slot), b_ring.index(slot).permute((1, 0)), zero, use_acc=False,
                            is_async=True)
        nxt_scale = gl.load(sa_ptr + rows * KB + kb, mask=rmask, other=0.0) * gl.load(sb_base + kb)
        # one group left in flight (block kb): block kb - 1's product is complete, its slot free
        prod = warpgroup_mma_wait(num_outstanding=1, deps=(prod, ))
        acc = gl.fma(prod, gl.expand_dims(scale, 1), acc)
        refill = kb + STAGES - 1                       # into the slot block kb - 1 used
        rslot = refill % STAGES
        pred = refill < KB
        mbarrier.expect(loaded.index(rslot), tile_bytes, pred=pred)
        tma.async_copy_global_to_shared(a_desc, [off_m, refill * BK], loaded.index(rslot), a_ring.index(rslot),
                                        pred=pred)
        tma.async_copy_global_to_shared(b_desc, [off_n, refill * BK], loaded.index(rslot), b_ring.index(rslot),
                                        pred=pred)
        prod = nxt
        scale = nxt_scale
    prod = warpgroup_mma_wait(num_outstanding=0, deps=(prod, ))
    acc = gl.fma(prod, gl.expand_dims(scale, 1), acc)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(loaded.index(s))

    c_smem = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
    c_smem.store(acc.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(pendings=0)


def _descriptors(a, b, c, bm, bn):
    fp8 = gl.float8e4nv
    a_desc = TensorDescriptor(a, list(a.shape), list(a.stride()), [bm, QB],
                              gl.NVMMASharedLayout.get_default_for([bm, QB], fp8))
    b_desc = TensorDescriptor(b, list(b.shape), list(b.stride()), [bn, QB],
                              gl.NVMMASharedLayout.get_default_for([bn, QB], fp8))
    c_desc = TensorDescriptor(c, list(c.shape), list(c.stride()), [bm, bn],
                              gl.NVMMASharedLayout.get_default_for([bm, bn], gl.bfloat16))
    return a_desc, b_desc, c_desc


def compile_sm90(bm, bn, stages, warps):
    """The probe compiled for sm_90 without a device (signature from host tensors on the CPU)."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from tools.compile_sm90 import compile_kernel
    M, N, K = 1024, 1024, 1024
    a = torch.empty(M, K, dtype=torch.float8_e4m3fn)
    b = torch.empty(N, K, dtype=torch.float8_e4m3fn)
    c = torch.empty(M, N, dtype=torch.bfloat16)
    s = torch.empty(1, dtype=torch.float32)
    a_desc, b_desc, c_desc = _descriptors(a, b, c, bm, bn)
    values = dict(a_desc=a_desc, b_desc=b_desc, c_desc=c_desc, sa_ptr=s, sb_ptr=s)
    constants = dict(STAGES=stages, num_warps=warps)
    return compile_kernel(_fp8_block_gemm_tile, values, constants, {"num_warps": warps, "num_stages": 1},
                          source=GluonASTSource)


def run_on_gpu(bm, bn, stages, warps, M=4096, N=14336, K=4096):
    """Check the probe against a float32 torch evaluation of the same quantised operands, then
    time it beside our tl.dot kernel on the same GEMM (one group)."""
    from optimized import gemm
    dev = "cuda"
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    x = torch.randn(M, K, device=dev, generator=gen).to(torch.bfloat16)
    a, sa = gemm.per_token_group_quant_fp8(x, QB)                                   # [M, K], [M, KB]
    b = (torch.randn(N, K, device=dev, generator=gen) * 16).clamp(-448, 448).to(torch.float8_e4m3fn)
    sb = torch.rand(triton.cdiv(N, QB), triton.cdiv(K, QB), device=dev, generator=gen) / (16 * K ** 0.5)
    c = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
    a_desc, b_desc, c_desc = _descriptors(a, b, c, bm, bn)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))

    def probe():
        _fp8_block_gemm_tile[grid](a_desc, b_desc, c_desc, sa, sb, M, triton.cdiv(K, QB), STAGES=stages,
                                   num_warps=warps)

    probe()
    deq_a = a.float() * sa.repeat_interleave(QB, 1)[:, :K]
    deq_b = b.float() * sb.repeat_interleave(QB, 0)[:N].repeat_interleave(QB, 1)[:, :K]
    ref = deq_a @ deq_b.T
    err = (c.float() - ref).abs()
    print(f"max |err| {err.max().item():.4g} (|ref| max {ref.abs().max().item():.4g})", flush=True)
    c2 = torch.empty_like(c)
    seg = torch.tensor([0, M], device=dev, dtype=torch.int64)
    widx = torch.zeros(1, device=dev, dtype=torch.int64)

    def ours():
        gemm.grouped_gemm(x, b.unsqueeze(0), c2, 1, True, seg, widx, use_fp8_w8a8=True, scale_b=sb.unsqueeze(0),
                          block_shape=[QB, QB])

    for name, fn in (("probe", probe), ("ours (quantises a too)", ours)):
        ms = triton.testing.do_bench(fn)
        print(f"{name:24s} {ms * 1e3:9.1f} us  {2 * M * N * K / ms / 1e9:7.1f} TFLOP/s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run on the GPU: check and time")
    ap.add_argument("--tiles", nargs="+", default=["64,128,4,4", "128,128,4,8"], help="BM,BN,STAGES,warps")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tools.compile_sm90 import describe
    for spec in args.tiles:
        bm, bn, stages, warps = map(int, spec.split(","))
        if args.run:
            run_on_gpu(bm, bn, stages, warps)
        else:
            print(f"{spec:16s} {describe(compile_sm90(bm, bn, stages, warps), opcodes=True)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
