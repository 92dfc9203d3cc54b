"""``moe-harness bench``: the command line of harness.bench (flags -> BenchOptions)."""
from __future__ import annotations

from .. import bench
from ..cases import MODEL_SHAPES, ROUTINGS
from . import add_sglang_wheel
from ..options import BENCH_MODES, BenchOptions
from ..specs import SPECS


def add_parser(sub):
    p = sub.add_parser("bench", help="time implementations (eager and CUDA graph), A/B against a baseline",
                       description="Time implementations on model-shaped cases with L2 flushed between interleaved "
                                   "repetitions, in eager mode and CUDA-graph replay; report medians and quartiles, "
                                   "GB/s, TFLOP/s and share of the card's measured ceilings, the speedup against "
                                   "--baseline with a bootstrap 95%% CI, and whether the timed outputs were right.")
    p.add_argument("--op", nargs="+", help=f"ops to time (default: all): {', '.join(SPECS)}")
    p.add_argument("--impl", nargs="+", default=list(BenchOptions.impls),
                   help="implementation sources to time (default: ours); see moe-harness check --help")
    add_sglang_wheel(p)
    p.add_argument("--preset", choices=("anchors",) + tuple(sorted(MODEL_SHAPES)),
                   help="anchors (default): the shapes of ANCHORS.md; a model name: its shapes at decode (1, 64) and "
                        "prefill (1024, 4096) tokens, uniform and skewed routing (DeepSeek-V3 on one rank of EP8)")
    p.add_argument("--tokens", nargs="+", type=int, help="token counts (replace the preset's)")
    p.add_argument("--dtype", nargs="+", help="dtypes (default: int32 ids for preprocess, bfloat16 otherwise)")
    p.add_argument("--routing", nargs="+", choices=sorted(ROUTINGS), help="routings (replace the preset's)")
    p.add_argument("--baseline", help="git revision (its optimized/, from a temporary worktree; 'git:REV' forces it) "
                                      "or implementation source to compare against, A/B in this process")
    p.add_argument("--modes", nargs="+", choices=BENCH_MODES, help="timing modes (default: eager graph)")
    p.add_argument("--warmup-ms", type=float, default=BenchOptions.warmup_ms,
                   help="warm-up time per case and mode (default 25)")
    p.add_argument("--rep-ms", type=float, default=BenchOptions.rep_ms,
                   help="measured time per case and mode (default 100)")
    p.add_argument("--seed", type=int, default=BenchOptions.seed, help="seed of the cases and of the bootstrap")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write a PNG of time against tokens (needs matplotlib)")
    p.add_argument("--selftest", action="store_true",
                   help="check the method itself: copy ceiling vs a plain torch copy, A/B against itself and "
                        "against a slowed copy, cheating candidates flagged (uses the first --op and --impl)")
    p.set_defaults(run=main)
    return p


def options_from_args(args) -> BenchOptions:
    """The parsed command line as BenchOptions (OptionError for a value that cannot run)."""
    return BenchOptions(ops=args.op, impls=args.impl, preset=args.preset, tokens=args.tokens, dtypes=args.dtype,
                        routings=args.routing, baseline=args.baseline, modes=args.modes, warmup_ms=args.warmup_ms,
                        rep_ms=args.rep_ms, seed=args.seed, json_path=args.json, plot_path=args.plot,
                        selftest=args.selftest, sglang_wheels=args.sglang_wheel)


def main(args, backend: str) -> int:
    return bench.run_command(options_from_args(args), backend)
