"""``moe-harness mutate``: the command line of harness.mutate (flags -> MutateOptions)."""
from __future__ import annotations

from .. import mutate
from ..options import MutateOptions
from ..profiles import PROFILES


def add_parser(sub):
    p = sub.add_parser("mutate", help="run the check against every mutant of our kernels (harness/mutants.py)",
                       description="Run the check against deliberately broken variants of optimized/ and report "
                                   "which the harness kills. Exit status 1 when a mutant survives, is stale or "
                                   "cannot be loaded.")
    p.add_argument("--op", nargs="+", help="only the mutants of these ops")
    p.add_argument("--mutant", nargs="+", metavar="NAME", help="only these mutants")
    p.add_argument("--cases", type=int, default=MutateOptions.cases,
                   help="fuzzed cases per mutant and dtype (default: the profile's, as check sweeps)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=MutateOptions.profile,
                   help="the check profile whose case count the mutants are swept with (default: default)")
    p.add_argument("--seed", type=int, default=MutateOptions.seed, help="seed of the case generator (default 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="mutants run at a time, each in its own child process (default: the CPU count, at "
                        "most 4; on cuda they share the GPU; mutants needing --preset large run last, one at a time)")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case without shrinking it")
    p.add_argument("--case-timeout", type=float, default=MutateOptions.case_timeout_s,
                   help="seconds one case may make no progress before the mutant counts as hung (default 600)")
    p.add_argument("--json", help="write the results to this JSON file (rewritten as each mutant finishes: "
                                  "'complete' and 'pending' say how far a run got)")
    p.add_argument("--list", action="store_true", help="list the catalogue (and whether each patch applies), run nothing")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (a line rewritten on a terminal, a line per mutant in a log)")
    p.set_defaults(run=main)
    return p


def options_from_args(args) -> MutateOptions:
    """The parsed command line as MutateOptions (OptionError for a value that cannot run)."""
    return MutateOptions(ops=args.op, mutants=args.mutant, cases=args.cases, profile=args.profile, seed=args.seed,
                         jobs=args.jobs, shrink=not args.no_shrink, case_timeout_s=args.case_timeout, json_path=args.json,
                         list_only=args.list, quiet=args.quiet)


def main(args, backend: str) -> int:
    return mutate.run_command(options_from_args(args), backend)
