"""The grouped GEMM as compiled for Hopper (sm_90), checked without a GPU (tools/compile_sm90.py).

Contract: on the TMA path, the tiles the autotuner leans on keep their K loop's wgmma
asynchronous (a wait that leaves one group in flight, never a wait after every wgmma) and spill
nothing. A masked tl.store of a group's last tile beside the TMA store of whole tiles broke
both under triton 3.6 and 3.9 (sixth session: 1.2-1.5x slower on the H200); this test fails on
that epilogue. It compiles with the installed triton and its ptxas, and the claim holds for each
triton checked (3.6, 3.8, 3.9): under 3.8 the epilogue's bf16 cast compiled to one cvt per element
and ptxas serialised every wgmma of the one-accumulator tiles (`H*1 0x0` after each) until the
kernel wrote the packed cvt itself (gemm._cast_c). Runs in a child process: the compiler needs
TRITON_INTERPRET unset.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILES = ("128,128,64,4,4", "128,256,64,8,3", "128,128,64,4,4,64")   # BM,BN,BK,warps,stages[,BM2]
# fp8 block-wise tiles the autotuner picks on the H200 (seventh session), and the accumulator
# elements per thread of each (BM * BN / threads)
BLOCK_TILES = {"64,128,128,4,3": 64, "128,128,128,8,3": 64}


def _compiled_lines(tiles, *options, fp_fusion="1"):
    """compile_sm90.py's line per tile ({tile: line}), asserting that every tile compiled
    (``fp_fusion``: triton's default for contracting a multiply and an add into an FMA)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_DEFAULT_FP_FUSION"] = fp_fusion
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compile_sm90.py"), *options, *tiles],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isdigit()}
    assert set(lines) == set(tiles), proc.stdout
    return lines


def _backend_tools_present() -> bool:
    import triton
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return all(os.path.exists(os.path.join(bindir, t)) for t in ("ptxas", "cuobjdump", "nvdisasm"))


@pytest.mark.skipif(not _backend_tools_present(), reason="this triton ships no ptxas/cuobjdump/nvdisasm")
def test_gemm_tiles_compile_to_asynchronous_wgmma_without_spills():
    for tile, line in _compiled_lines(TILES).items():
        stack = int(re.search(r"STACK (\d+)", line).group(1))
        pattern = line.split("|", 1)[1]
        assert stack == 0, f"{tile} spills: {line}"
        # every K loop: a run of several wgmma, then a wait that leaves some in flight
        assert re.search(r"H\*\d+ 0x[1-9]", pattern), f"{tile} has no pipelined wgmma: {line}"
        assert "H*1 0x0 H*1 0x0" not in pattern, f"{tile} waits for every wgmma: {line}"


@pytest.mark.skipif(not _backend_tools_present(), reason="this triton ships no ptxas/cuobjdump/nvdisasm")
@pytest.mark.parametrize("fp_fusion", ["1", "0"], ids=["contraction-on", "contraction-off"])
def test_block_wise_scaling_is_one_ffma_per_element_without_spills(fp_fusion):
    """Block-wise fp8: each K block's product is scaled and added as acc = part * s_row + acc, one
    FFMA per accumulator element (b's scale a scalar for the tile), not FMUL + FFMA (the per-column
    form: 224 registers instead of 197 on 64x128); and nothing spills. Also with contraction off
    by default (triton 3.10's announced default): the kernel writes the FMA (tl.fma) itself."""
    lines = _compiled_lines(BLOCK_TILES, "--dtype", "fp8_block", "--opcodes", fp_fusion=fp_fusion)
    for tile, per_thread in BLOCK_TILES.items():
        line = lines[tile]
        count = {op: int(n) for op, n in re.findall(r"\b(FFMA|FMUL|FADD) (\d+)", line)}
        assert int(re.search(r"STACK (\d+)", line).group(1)) == 0, f"{tile} spills: {line}"
        assert count["FFMA"] >= per_thread, f"{tile}: the scaling is not fused: {line}"
        assert count["FMUL"] < per_thread // 4, f"{tile}: a multiply per element besides the FFMA: {line}"
