"""Launch settings of our masked SiLU-and-mul + fp8 group quantisation (optimized/quant.py) against
SGLang's kernel, at the bench's DeepSeek-V3 EP8 anchors (T = 1, 64, 4096 tokens per rank).

For each anchor it builds the record's case (harness.bench.anchor_cases, the same shapes the bench
times), times SGLang's function (a release's file, bound as check binds it) and ours under each
combination of the launch settings (``optimized.quant.pinned_launch``: warps, row programs, tile), checks
every variant's output against the reference once (decode cases), and prints one JSON line per (case, variant)
with the median microseconds (triton.testing.do_bench, CUDA graph replay).

    MOE_CHECK_VALUES=0 PYTHONPATH=. python tools/explore_masked_quant.py --sglang-wheel W.whl
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="silu_and_mul_masked_post_quant_fwd")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--sglang", default="sglang==0.5.23")
    ap.add_argument("--sglang-wheel", action="append", default=[])
    ap.add_argument("--warps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--row-programs", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--tile", type=int, nargs="+", default=[512, 1024, 4096])
    ap.add_argument("--stages", type=int, nargs="+", default=[3])
    ap.add_argument("--tokens", type=int, nargs="+", default=None, help="only these anchors (default: all)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    import triton.testing
    from harness.bench import anchor_cases
    from harness.impls import load_implementation, prepare_sources
    from harness.runner import Candidate, run_case
    from harness.specs import SPECS
    import optimized.quant as ours_module

    prepare_sources([args.sglang], args.sglang_wheel)
    upstream = load_implementation(args.sglang).ops[args.op]
    spec = SPECS[args.op]
    ours = getattr(ours_module, args.op)
    cases = anchor_cases([args.op], None, ["uniform"], [args.dtype] if args.dtype else None)

    def time_us(fn, sample) -> float:
        call = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sample.args.items()}
        fn(*call.values())
        return triton.testing.do_bench_cudagraph(lambda: fn(*call.values()), rep=50) * 1e3

    for case in cases:
        if args.tokens and case.params.tokens not in args.tokens:
            continue
        sample = spec.build(case.params, torch.device("cuda"))
        line = dict(case=case.params.short(), impl=args.sglang, us=round(time_us(upstream, sample), 2))
        print(json.dumps(line), flush=True)
        for warps, programs, tile, stages in itertools.product(args.warps, args.row_programs, args.tile, args.stages):
            with ours_module.pinned_launch(warps, programs, tile, stages):
                ok = run_case(spec, Candidate(ours), case.params, "cuda", "ours").status == "passed" \
                    if case.params.tokens <= 64 else None   # the prefill case: timed only (check covers it)
                line = dict(case=case.params.short(), impl="ours", warps=warps, row_programs=programs, tile=tile, stages=stages,
                            us=round(time_us(ours, sample), 2), correct=ok)
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
