"""``moe-harness check``: the command line of harness.check (flags -> CheckOptions)."""
from __future__ import annotations

import argparse

from .. import check
from ..fuzz import PRESETS
from ..impls import SOURCE_HELP
from . import add_sglang_wheel
from ..options import CheckOptions
from ..profiles import PROFILES


def add_parser(sub):
    p = sub.add_parser("check", help="fuzz every op of the chosen implementations against the references",
                       description="Fuzz routings and compare implementations with the references, probing "
                                   "unwritten outputs, writes out of bounds, modified inputs and nondeterminism.")
    p.add_argument("--op", nargs="+", help="ops to check (default: all)")
    p.add_argument("--impl", nargs="+", default=list(CheckOptions.impls), help=SOURCE_HELP)
    p.add_argument("--block-size", type=int, help="BLOCK_SIZE that sglang: raw kernels are launched with "
                                                  "(default: 512, as SGLang's EP layer)")
    add_sglang_wheel(p)
    p.add_argument("--dtype", nargs="+", help="dtypes to check (default: every dtype of each op)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=CheckOptions.profile,
                   help="how much to sweep: " + "; ".join(f"{name}: {prof.purpose} ({prof.cases['interpreter']} "
                                                           f"fuzzed cases per row on the interpreter, "
                                                           f"{prof.cases['cuda']} on a GPU)"
                                                           for name, prof in PROFILES.items()))
    p.add_argument("--cases", type=int, default=CheckOptions.cases,
                   help="fuzzed cases per op, implementation and dtype, after the three fixed cases "
                        "(default: the profile's)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="spend about this many seconds: each row gets a share of the time left when it starts "
                        "(the fixed cases always run; fuzzed cases until its share is spent, at most --cases or "
                        "the thorough profile's count) and the table says how many cases each row got")
    p.add_argument("--seed", type=int, default=CheckOptions.seed, help="seed of the case generator")
    p.add_argument("--preset", choices=PRESETS,
                   help="fix the model shape (SPEC.md); 'large' (GPU): buffers past 2**31 elements")
    p.add_argument("--case", help="run exactly this case (the JSON of a replay command)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case without shrinking it")
    p.add_argument("--require-ieee-fp32", action="store_true",
                   help="a float32 matrix product within TF32's error but not IEEE float32's fails (default: it "
                        "passes, and the row says it passed at TF32 precision)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=CheckOptions.isolate,
                   help="run each (implementation, op) in a child process, so that a GPU fault, a segmentation "
                        "fault or a hang is reported as CRASHED and the run goes on (default: on)")
    p.add_argument("--timeout", type=float, default=CheckOptions.timeout_s,
                   help="seconds one (implementation, op, dtype) row may run in its child process (default 1800)")
    p.add_argument("--case-timeout", type=float, default=CheckOptions.case_timeout_s,
                   help="seconds one case may run before the child is taken for hung (default 600; 0: no limit)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="child processes at once, each kept warm from row to row (default: one per core on the "
                        "interpreter; on GPUs up to 16, spread round-robin over them; one per GPU for "
                        "--preset large)")
    p.add_argument("--chunk", type=int, default=CheckOptions.chunk, metavar="N",
                   help="split each (implementation, op, dtype) sweep into child processes of N cases each, with "
                        "seeds derived from --seed and the chunk's index, merged into one row; the cases depend on "
                        "--chunk, not on --gpus or --jobs (default 0: one sweep of --cases per row; needs --isolate)")
    p.add_argument("--gpus", default=CheckOptions.gpus, metavar="N|all",
                   help="spread the rows over N GPUs (or all), --jobs child processes round-robin over them; same "
                        "cases, report and exit status as on one GPU (needs --isolate)")
    p.set_defaults(run=main)
    return p


def options_from_args(args) -> CheckOptions:
    """The parsed command line as CheckOptions (OptionError for a value that cannot run)."""
    return CheckOptions(ops=args.op, impls=args.impl, dtypes=args.dtype, cases=args.cases, profile=args.profile,
                        budget_s=args.budget, seed=args.seed,
                        preset=args.preset, case=args.case, shrink=not args.no_shrink, block_size=args.block_size,
                        isolate=args.isolate, timeout_s=args.timeout, case_timeout_s=args.case_timeout,
                        jobs=args.jobs, chunk=args.chunk, gpus=args.gpus, json_path=args.json, quiet=args.quiet,
                        require_ieee_fp32=args.require_ieee_fp32, sglang_wheels=args.sglang_wheel)


def main(args, backend: str) -> int:
    return check.run_command(options_from_args(args), backend)
