"""Compile the grouped GEMM kernel for Hopper (sm_90) on a machine without a GPU and report, per
tile config, what decides its speed before any timing: registers, spill stack, and whether the K
loop's wgmma run asynchronously (several in flight) or each waits for the previous one.

Triton compiles and ptxas assembles without a device; cuobjdump and nvdisasm (shipped in triton's
nvidia backend) read the cubin. The wait pattern is the sequence of HGMMA/QGMMA instructions and
`WARPGROUP.DEPBAR.LE gsb0, n` waits in the SASS: `H*4 0x1` (four wgmma, then wait until one group
is left in flight) is a pipelined loop; `H*1 0x0 H*1 0x0 ...` waits for every wgmma.

Sixth session (issue 8): with triton 3.6 (the GPU image's), a masked tl.store of a group's last
tile beside the TMA store of whole tiles made every 8-warp tile wait for each wgmma and most 4-warp
tiles spill; storing that tile through a device-made descriptor instead gave asynchronous wgmma and
no spills on every tile (and 1.2-1.5x on the H200). Run this after any change to the kernel's
epilogue or K loop, with the device's triton if it differs from the local one:

  pip download triton==3.6.0 --no-deps -d /tmp/t36 && python -m zipfile -e /tmp/t36/triton-*.whl /tmp/t36
  chmod +x /tmp/t36/triton/backends/nvidia/bin/*     # zipfile drops the tools' exec bits
  PYTHONPATH=/tmp/t36:. python tools/compile_sm90.py 128,128,64,4,4 128,256,64,8,3 128,128,64,4,4,64

Each config is BM,BN,BK,warps,stages[,BM2[,GROUP_M[,PERSIST]]]; --dtype picks the operands
(bfloat16; fp8: e4m3 with per-tensor scales; fp8_block: e4m3 with [128, 128] block scales).
TRITON_INTERPRET must not be set.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type
from triton.tools.tensor_descriptor import TensorDescriptor

from optimized import gemm


def compile_config(bm, bn, bk, warps, stages, bm2=0, group_m=8, persist=0, dtype="bfloat16", ws=False,
                   maxnreg=None):
    """The compiled kernel (sm_90) of one tile config, on the TMA path, for operands of ``dtype``
    (``ws``: the warp-specialised K loop; ``maxnreg``: a register cap per thread)."""
    M, Kd, N, E = 1024, 512, 512, 4     # sizes only shape the signature (none is specialised on)
    fp8 = dtype in ("fp8", "fp8_block")
    block = dtype == "fp8_block"       # block-wise [128, 128] scales
    a = torch.empty(M, Kd, dtype=torch.float8_e4m3fn if fp8 else torch.bfloat16)
    b = torch.empty(E * N, Kd, dtype=a.dtype)
    c = torch.empty(M, N, dtype=torch.bfloat16)
    scale = torch.empty(E, dtype=torch.float32)   # a pointer: its shape does not enter the signature
    values = dict(
        a_ptr=TensorDescriptor(a, [M, Kd], [Kd, 1], [bm, bk]),
        b_ptr=TensorDescriptor(b, [E * N, Kd], [Kd, 1], [bn, bk]),
        c_ptr=c, c_desc=TensorDescriptor(c, [M, N], [N, 1], [bm, bn]),
        a2_desc=TensorDescriptor(a, [M, Kd], [Kd, 1], [bm2 or bm, bk]),
        seg_ptr=torch.empty(E + 1, dtype=torch.int64), widx_ptr=torch.empty(E, dtype=torch.int64),
        sa_ptr=scale, sb_ptr=scale)
    mode = gemm.MODE_FP8_BLOCK if block else gemm.MODE_FP8_TENSOR if fp8 else gemm.MODE_PLAIN
    constants = dict(MODE=mode, QBN=128 if block else 1, QBK=128 if block else 1, BATCH_P=16, USE_TMA=True,
                     BM=bm, BN=bn, BK=bk, GROUP_M=group_m, PERSIST=persist, WS=ws,
                     BM2=bm2)
    return compile_kernel(gemm.grouped_gemm_kernel, values, constants,
                          {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})})


def compile_kernel(kernel, values, constants, options, source=ASTSource):
    """``kernel`` compiled for sm_90: its arguments typed from ``values`` (host objects), the
    ``constants`` as constexprs, any other argument an i32; ``source`` GluonASTSource for Gluon."""
    signature = {name: "constexpr" if name in constants else (mangle_type(values[name]) if name in values else "i32")
                 for name in kernel.arg_names}
    return triton.compile(source(kernel, signature, constants), target=GPUTarget("cuda", 90, 32), options=options)


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


# float opcodes counted by --opcodes: the block-wise scaling of a K block's product is one FFMA
# per accumulator element when b's scale is a scalar for the tile, an FMUL more when it is not
FLOAT_OPCODES = ("FFMA", "FMUL", "FADD")


def describe(compiled, opcodes: bool = False) -> str:
    """'REG r STACK s | wait pattern' of a compiled kernel, with ``opcodes`` '| FFMA n FMUL n FADD n'
    (whole kernel)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", usage, re.S)
    marks = []
    for line in sass.splitlines():
        if re.search(r"\b[HQ]GMMA\.", line):   # HGMMA: 16-bit operands, QGMMA: fp8
            marks.append("H")
        else:
            wait = re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, (0x\d+)", line)
            if wait:
                marks.append(wait.group(1))
    pattern = re.sub(r"(?:H )+", lambda run: f"H*{run.group(0).count('H')} ", " ".join(marks) + " ").strip()
    text = f"REG {m.group(1) if m else '?'} STACK {m.group(2) if m else '?'} | {pattern}"
    if opcodes:
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", sass)
        text += " | " + " ".join(f"{op} {ops.count(op)}" for op in FLOAT_OPCODES)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="BM,BN,BK,warps,stages[,BM2[,GROUP_M[,PERSIST]]]")
    ap.add_argument("--dtype", choices=("bfloat16", "fp8", "fp8_block"), default="bfloat16")
    ap.add_argument("--ws", action="store_true", help="the warp-specialised K loop (WS=True)")
    ap.add_argument("--maxnreg", type=int, default=None, help="a register cap per thread")
    ap.add_argument("--opcodes", action="store_true", help="also count FFMA / FMUL / FADD in the SASS")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: this compiles for the GPU")
    print(f"triton {triton.__version__}, sm_90, {args.dtype}", flush=True)
    status = 0
    for spec in args.configs:
        try:
            compiled = compile_config(*map(int, spec.split(",")), dtype=args.dtype, ws=args.ws, maxnreg=args.maxnreg)
            print(f"{spec:24s} {describe(compiled, args.opcodes)}", flush=True)
        except Exception as exc:  # one config that does not compile is a finding, not the end of the list
            print(f"{spec:24s} FAILED {type(exc).__name__}: {str(exc)[-300:]}", flush=True)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
