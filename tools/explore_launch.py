"""Launch settings of one of our kernels against SGLang's, at the bench's DeepSeek-V3 EP8 anchors
(T = 1, 64, 4096 tokens per rank).

For each anchor it builds the record's case (harness.bench.anchor_cases, the same shapes the bench
times), times SGLang's function (a release's file, bound as check binds it) and ours under each
combination of the op module's ``pinned_launch`` settings (optimized/config.py's switches: e.g.
``quant.pinned_launch(num_warps=, row_programs=, ...)``, ``deepgemm_layout.pinned_launch(gather_warps=,
...)``), checks every variant's output against the reference once (decode cases), and prints one
JSON line per (case, variant) with the median microseconds (triton.testing.do_bench, CUDA graph
replay).

    MOE_CHECK_VALUES=0 PYTHONPATH=. python tools/explore_launch.py --op ep_gather \
        --set gather_warps=2,4,8 --set gather_block_h=512,1024,2048 [--sglang-wheel W.whl]
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys

import torch


def parse_setting(text: str):
    """'name=v1,v2' -> (name, [v1, v2]) (integers)."""
    name, _, values = text.partition("=")
    if not name or not values:
        raise argparse.ArgumentTypeError(f"--set: expected NAME=V1,V2,..., got {text!r}")
    try:
        return name, [int(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {name}: expected integers, got {values!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="silu_and_mul_masked_post_quant_fwd")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--sglang", default="sglang==0.5.23")
    ap.add_argument("--sglang-wheel", action="append", default=[])
    ap.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                    help="a pinned_launch keyword and the values to try (repeatable); none: as shipped")
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

    spec = SPECS[args.op]
    module = importlib.import_module(spec.kernel_module)
    ours = getattr(module, args.op)
    prepare_sources([args.sglang], args.sglang_wheel)
    upstream = load_implementation(args.sglang).ops[args.op]
    names = [name for name, _ in args.settings]
    grid = list(itertools.product(*[values for _, values in args.settings]))
    cases = anchor_cases([args.op], None, ["uniform"], [args.dtype] if args.dtype else None)

    def time_us(fn, sample) -> float:
        call = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sample.args.items()}
        fn(*call.values())
        return triton.testing.do_bench_cudagraph(lambda: fn(*call.values()), rep=50) * 1e3

    cases = [c for c in cases if not args.tokens or c.params.tokens in args.tokens]
    if not cases:   # nothing timed is no result
        print(f"--tokens: {args.op} has no bench anchor with {args.tokens} tokens", file=sys.stderr)
        return 2
    timed = 0
    for case in cases:
        sample = spec.build(case.params, torch.device("cuda"))
        line = dict(op=args.op, case=case.params.short(), impl=args.sglang, us=round(time_us(upstream, sample), 2))
        print(json.dumps(line), flush=True)
        for values in grid:
            setting = dict(zip(names, values))
            line = dict(op=args.op, case=case.params.short(), impl="ours", **setting)
            try:
                with module.pinned_launch(**setting):
                    ok = run_case(spec, Candidate(ours), case.params, "cuda", "ours").status == "passed" \
                        if case.params.tokens <= 64 else None   # the prefill case: timed only (check covers it)
                    line.update(us=round(time_us(ours, sample), 2), correct=ok)
                timed += 1
            except Exception as exc:   # a setting that does not compile (registers, shared memory) ends only itself
                line.update(error=f"{type(exc).__name__}: {str(exc)[:200]}")
            print(json.dumps(line), flush=True)
    return 0 if timed else 1   # every setting failed: no timing of ours at all


if __name__ == "__main__":
    sys.exit(main())
