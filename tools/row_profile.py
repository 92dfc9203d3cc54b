"""Where a check row's seconds go on this machine: each (op, dtype) row of the default check run
in this process (no child), from a cold Triton cache unless --warm, under cProfile.

Per row: wall seconds, cases, the Triton compilations it caused (count, seconds, the kernels that
compiled most often: each new specialisation of a kernel is one), and the functions of harness/,
reference/ and optimized/ with the most cumulative time, then the most self time overall. Issue
24's question: is a GPU row's time compilation, reference evaluation, probes or launches?

    PYTHONPATH=. python tools/row_profile.py --op ep_moe_forward ep_preprocess --dtype bfloat16 int32 \
        [--cases 50] [--warm] [--json $OUT/rows.json]
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time


class CompileLog:
    """Times triton.compiler.compile (what a JIT cache miss calls; a disk-cache hit returns from it
    quickly) per kernel name. Installed before the first launch of the process."""

    def __init__(self):
        import triton.compiler
        self.calls = []   # (kernel name, seconds)
        real = triton.compiler.compile

        def timed(src, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(src, *args, **kwargs)
            finally:
                name = getattr(getattr(src, "fn", None), "__name__", None) or getattr(src, "name", "?")
                self.calls.append((name, time.perf_counter() - t0))

        triton.compiler.compile = timed

    def since(self, start: int):
        calls = self.calls[start:]
        by_kernel = collections.Counter(name for name, _ in calls)
        return dict(compiles=len(calls), compile_s=round(sum(s for _, s in calls), 2),
                    kernels=dict(by_kernel.most_common(8)))


def our_functions(stats: pstats.Stats, top: int):
    """The functions of this repository with the most cumulative time: (where, calls, cumulative s)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for (path, line, name), (_, ncalls, _, cum, _) in stats.stats.items():
        rel = os.path.relpath(path, root) if path.startswith(root) else None
        if rel and rel.split(os.sep)[0] in ("harness", "reference", "optimized"):
            rows.append((f"{rel}:{line}({name})", ncalls, round(cum, 2)))
    return sorted(rows, key=lambda r: -r[2])[:top]


def self_time(stats: pstats.Stats, top: int):
    rows = [(f"{os.path.basename(path)}:{line}({name})", ncalls, round(tt, 2))
            for (path, line, name), (_, ncalls, tt, _, _) in stats.stats.items()]
    return sorted(rows, key=lambda r: -r[2])[:top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", nargs="+", required=True)
    ap.add_argument("--dtype", nargs="+", default=None, help="one per --op (default: each op's first dtype)")
    ap.add_argument("--cases", type=int, default=None, help="fuzzed cases per row (default: the default profile's)")
    ap.add_argument("--warm", action="store_true", help="keep the Triton cache (default: a fresh, empty one)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.dtype and len(args.dtype) != len(args.op):
        ap.error("--dtype: expected one per --op")
    if not args.warm:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cold-")
    import torch
    from harness.backend import select_backend
    backend = select_backend()   # before triton is imported
    from harness.check import run_check
    from harness.options import CheckOptions
    from harness.specs import SPECS

    log = CompileLog()
    out = []
    for i, op in enumerate(args.op):
        dtype = args.dtype[i] if args.dtype else SPECS[op].dtypes[0]
        options = CheckOptions(ops=[op], dtypes=[dtype], cases=args.cases, isolate=False, quiet=True, shrink=False)
        start, profiler = len(log.calls), cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        rows = run_check(options, backend)
        profiler.disable()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stats = pstats.Stats(profiler, stream=io.StringIO())
        rec = dict(op=op, dtype=dtype, status=rows[0].status, cases=rows[0].run,
                   seconds=round(time.perf_counter() - t0, 2), **log.since(start),
                   ours=our_functions(stats, args.top), self_time=self_time(stats, args.top))
        out.append(rec)
        print(f"== {op} [{dtype}]: {rec['status']}, {rec['cases']} cases in {rec['seconds']} s; "
              f"{rec['compiles']} compilations, {rec['compile_s']} s: {rec['kernels']}", flush=True)
        for where, calls, s in rec["ours"]:
            print(f"   {s:8.2f} s cum {calls:7d} calls  {where}")
        print("   -- self time")
        for where, calls, s in rec["self_time"][:10]:
            print(f"   {s:8.2f} s self {calls:7d} calls  {where}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=backend, warm=args.warm, rows=out), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
