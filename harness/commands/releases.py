"""``moe-harness releases``: the command line of harness.releases (flags -> ReleasesOptions)."""
from __future__ import annotations

import argparse

from .. import releases
from ..fuzz import PRESETS
from . import add_sglang_wheel
from ..options import ReleasesOptions


def add_parser(sub):
    p = sub.add_parser("releases", help="check SGLang releases side by side: an op x release matrix, or --bisect OP",
                       description="Check each SGLang release's EP-MoE kernels as released (as check --impl "
                                   "sglang==VERSION does, children and all) and tabulate op x release: passed, "
                                   "FAILED (probe), CRASHED, REJECTED, not provided, UNBINDABLE, NOT_COMPUTABLE, "
                                   "skipped, or unavailable (the release could not be fetched). Exit status: 0 when "
                                   "every release was checked (FAILED cells are findings), 1 when nothing was "
                                   "compared, 3 when some release was unavailable, 2 for a bad option.")
    p.add_argument("versions", nargs="*", metavar="VERSION",
                   help="releases, in the matrix's order (default: " + " ".join(releases.DEFAULT_RELEASES) +
                        "); with --bisect: the two endpoints (default: the first and last of that list)")
    p.add_argument("--bisect", metavar="OP",
                   help="find the first release (among the package index's versions between the endpoints, by "
                        "bisection) where OP's verdict (each dtype's status) changed; print the versions tried")
    p.add_argument("--op", nargs="+", help="ops of the matrix (default: all)")
    p.add_argument("--dtype", nargs="+", help="dtypes to check (default: every dtype of each op)")
    p.add_argument("--cases", type=int, default=ReleasesOptions.cases,
                   help=f"fuzzed cases per op, release and dtype (default {ReleasesOptions.cases})")
    p.add_argument("--seed", type=int, default=ReleasesOptions.seed, help="seed of the case generator")
    p.add_argument("--preset", choices=PRESETS, help="fix the model shape (as for check)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="child processes at once (as for check)")
    p.add_argument("--block-size", type=int, help="BLOCK_SIZE the releases' raw kernels are launched with")
    p.add_argument("--timeout", type=float, default=ReleasesOptions.timeout_s,
                   help="seconds one (release, op) group may run in its child process (default 1800)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=ReleasesOptions.isolate,
                   help="run each (release, op) in a child process, as check does (default: on)")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case without shrinking it")
    add_sglang_wheel(p, "an sglang release wheel to register in the cache first (no package index); repeatable")
    p.add_argument("--json", help="write the matrix (or the bisection) to this JSON file")
    p.add_argument("--png", help="write a heatmap of the matrix to this PNG file (needs the extra [plot]: "
                                 "matplotlib)")
    p.add_argument("--export-cache", metavar="DIR",
                   help="instead of checking: copy the releases' extracted kernel files (no wheels, tens of kB "
                        "each) into DIR, a cache to carry to a machine without an index and use there with "
                        "MOE_HARNESS_SGLANG_CACHE=DIR")
    p.add_argument("--quiet", action="store_true", help="no line per finished check row (release lines stay)")
    p.set_defaults(run=main)
    return p


def options_from_args(args) -> ReleasesOptions:
    """The parsed command line as ReleasesOptions (OptionError for a value that cannot run)."""
    return ReleasesOptions(releases=args.versions, ops=args.op, dtypes=args.dtype, cases=args.cases, seed=args.seed,
                           preset=args.preset, jobs=args.jobs, block_size=args.block_size, timeout_s=args.timeout,
                           sglang_wheels=args.sglang_wheel, shrink=not args.no_shrink, isolate=args.isolate,
                           quiet=args.quiet,
                           json_path=args.json, png_path=args.png, bisect=args.bisect,
                           export_cache=args.export_cache)


def main(args, backend: str) -> int:
    return releases.run_command(options_from_args(args), backend)
