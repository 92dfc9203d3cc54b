"""What the 2,000-case false-alarm sweep (issues 23, 26, 27) still lacks, from the sweep JSONs of
earlier device calls (``moe-harness check --cases 2000 --chunk 250 --json``, any number of files,
rows merged by (implementation, op, dtype), chunk counts added).

Prints the ops of ``--impl`` that still have a dtype row under ``--cases`` cases (or none), one
line, in registry order: the ``--op`` list (``SWEEP_OPS``) of the next call. ``--groups`` prints
instead one line per check command that sweeps only the missing rows, ``OPS|DTYPES``: the ops
whose every dtype is missing with DTYPES empty (all of them), then each set of ops missing the
same dtypes (an op's swept dtypes are not swept again). ``--table`` prints per (op, dtype) what
each implementation has so far. CPU; reads JSON only.

    PYTHONPATH=. python tools/sweep_remaining.py --impl ours results/*/*_sweep.json
    PYTHONPATH=. python tools/sweep_remaining.py --groups --impl ours --stale ep_scatter@s15-h100 \
      results/*/*_sweep*.json |
      while IFS='|' read -r ops dtypes; do moe-harness check --op $ops ${dtypes:+--dtype $dtypes} ...; done
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def merged_counts(paths, stale=()):
    """{(impl, op, dtype): (cases run, failures)} over the files' rows, leaving out the rows of
    each stale (op, path part): that op's rows in files whose path contains the part ("": all)."""
    counts = defaultdict(lambda: [0, 0])
    for path in paths:
        with open(path) as f:
            for row in json.load(f)["rows"]:
                if any(row["op"] == op and part in str(path) for op, part in stale):
                    continue
                key = (row["impl"], row["op"], row["dtype"])
                counts[key][0] += row["run"] or 0
                counts[key][1] += row["failed"] or 0
    return {k: tuple(v) for k, v in counts.items()}


def remaining_ops(counts, impl: str, cases: int):
    """Ops of the registry with a dtype row of ``impl`` under ``cases`` cases."""
    from harness.ops import REGISTRY
    return [op for op, rec in REGISTRY.items()
            if any(counts.get((impl, op, d), (0, 0))[0] < cases for d in rec.dtypes)]


def remaining_groups(counts, impl: str, cases: int):
    """[(ops, dtypes)]: check commands that sweep exactly the rows of ``impl`` under ``cases``
    cases; dtypes () for ops missing all theirs (first), else the ops missing those dtypes."""
    from harness.ops import REGISTRY
    whole, partial = [], {}
    for op in remaining_ops(counts, impl, cases):
        missing = tuple(d for d in REGISTRY[op].dtypes if counts.get((impl, op, d), (0, 0))[0] < cases)
        if missing == tuple(REGISTRY[op].dtypes):
            whole.append(op)
        else:
            partial.setdefault(missing, []).append(op)
    return ([(whole, ())] if whole else []) + [(ops, dtypes) for dtypes, ops in partial.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="*", help="sweep JSON files of earlier calls")
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--cases", type=int, default=2000, help="cases a row needs (default 2000)")
    ap.add_argument("--table", action="store_true", help="per (op, dtype): cases / failures of each implementation")
    ap.add_argument("--groups", action="store_true", help="one 'OPS|DTYPES' line per check command of the missing rows")
    ap.add_argument("--stale", action="append", default=[], metavar="OP[@PATH_PART]",
                    help="an op whose kernel changed after some of its rows were swept: its rows (in the files "
                         "whose path contains PATH_PART, e.g. a session's results folder) count as missing (repeatable)")
    args = ap.parse_args(argv)
    stale = [tuple(item.partition("@")[::2]) for item in args.stale]
    counts = merged_counts(args.json, stale)
    if args.table:
        from harness.ops import REGISTRY
        impls = sorted({k[0] for k in counts})
        for op, rec in REGISTRY.items():
            for d in rec.dtypes:
                cells = [f"{i} {counts[(i, op, d)][0]}/{counts[(i, op, d)][1]}" if (i, op, d) in counts else f"{i} -"
                         for i in impls]
                print(f"{op:<50} {d:<14} " + "  ".join(cells))
        return 0
    if args.groups:
        for ops, dtypes in remaining_groups(counts, args.impl, args.cases):
            print(" ".join(ops) + "|" + " ".join(dtypes))
        return 0
    print(*remaining_ops(counts, args.impl, args.cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
