"""Host time per call of our launchers at launch-bound shapes (issue 4/8 evidence).

For each op, back-to-back calls with one sync at the end: when the device work per call is
shorter than the host work, the wall time per call is the host's. Reported per call, in us:
the whole launcher, its argument validation alone, and the bare Triton kernel launch.
Usage: PYTHONPATH=. python3 results/host_overhead.py [N_CALLS]
"""
from __future__ import annotations

import json
import sys
import time

import torch

import optimized
from harness.cases import CaseParams
from harness.specs import SPECS
from optimized import _config

_config.CHECK_VALUES = False


def per_call_us(fn, n: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    dev = torch.device("cuda")
    rows = []
    cases = [
        CaseParams(op="pre_reorder", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168),
        CaseParams(op="post_reorder", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168),
        CaseParams(op="silu_and_mul", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168,
                   inter=2048),
        CaseParams(op="ep_preprocess", dtype="int64", tokens=128, topk=8, experts=256),
        CaseParams(op="grouped_gemm", dtype="bfloat16", tokens=1, topk=8, experts=256, end_expert=31, hidden=7168,
                   inter=4096),
    ]
    empty = lambda: None  # noqa: E731  (the loop's own cost)
    base = per_call_us(empty, n)
    for p in cases:
        spec = SPECS[p.op]
        sample = spec.build(p, dev)
        args = list(sample.args.values())
        fn = getattr(optimized, p.op)
        row = {"op": p.op, "case": p.short(), "launcher_us": per_call_us(lambda: fn(*args), n) - base}
        if p.op == "pre_reorder":
            from optimized.reorder import _pre_reorder_kernel, _row_tiles
            from reference._checks import validate_pre_reorder
            x, out, s2d, ids, scales = args[:5]
            T, H = x.shape
            r, bh = _row_tiles(T, H)
            grid = ((T + r - 1) // r, (H + bh - 1) // bh)
            row["validate_us"] = per_call_us(lambda: validate_pre_reorder(*args, check_values=False), n) - base
            row["kernel_launch_us"] = per_call_us(lambda: _pre_reorder_kernel[grid](
                x, out, s2d, ids, x, T, H, args[5], args[6], TOPK=args[7], HAS_SCALES=False, ROWS=r, BLOCK_H=bh,
                INTERP=False, num_warps=4), n) - base
            row["is_capturing_us"] = per_call_us(torch.cuda.is_current_stream_capturing, n) - base
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": __import__("triton").__version__, "calls": n}))


if __name__ == "__main__":
    main()
