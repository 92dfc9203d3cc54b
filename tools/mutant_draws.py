"""The cases a mutant's sweep would run, listed on the CPU without building or running any.

`moe-harness mutate` sweeps each mutant with Hypothesis, seeded by the seed and the mutant's
name; the draws do not depend on the backend that runs them, so they can be listed here for a
backend this machine does not have (a `--preset large` mutant's cases exist only on cuda). Each
case goes through harness.fuzz.sweep_row as mutate sends it, with the case runner replaced by one
that records the parameters and passes: the list is every case the mutant would see if it
survived them all (a mutant stops at its first failing case). Used to see whether a large
mutant's cases reach the offsets it breaks before spending device time on it.

    PYTHONPATH=. python tools/mutant_draws.py ep_gather_int32_row_offset [--backend cuda] [--seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import harness.fuzz as fuzz
from harness.mutate import sweep_plan
from harness.mutants import MUTANTS
from harness.profiles import PROFILES, fuzzed_cases, palette_size
from harness.specs import SPECS


@dataclasses.dataclass
class _Recorded:
    """What sweep_row reads of a passing case (harness.runner.CaseResult's fields it uses)."""
    params: str
    status: str = "passed"
    ok: bool = True
    graph: str = ""
    probe: str = ""
    details: dict = dataclasses.field(default_factory=dict)


class _AnyCandidate:
    requires = ()     # draw as for a candidate without preconditions (ours: mutants patch ours)


def draws(name: str, backend: str, seed: int, profile: str = "default"):
    """(dtype, CaseParams) for each case of mutant ``name``'s sweep, in order."""
    m = MUTANTS[name]
    spec = SPECS[m.op]
    dtypes, n = sweep_plan(m, spec, backend, fuzzed_cases(profile, backend))
    seen = []
    real = fuzz.run_case
    fuzz.run_case = lambda spec_, cand, params, *a, **k: seen.append((dtype, params)) or _Recorded(params.to_json())
    try:
        for dtype in dtypes:
            fuzz.sweep_row(spec, _AnyCandidate(), f"mutant:{m.name}", dtype, backend, "cpu", n, seed,
                           preset=m.min_preset, database_dir=None, shrink=False,
                           shapes=palette_size(profile, backend))
    finally:
        fuzz.run_case = real
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mutants", nargs="+", metavar="MUTANT")
    ap.add_argument("--backend", default="cuda", choices=("cuda", "interpreter"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES))
    args = ap.parse_args(argv)
    unknown = [m for m in args.mutants if m not in MUTANTS]
    if unknown:
        print(f"mutant_draws: unknown mutant(s) {unknown}; `moe-harness mutate --list` names them", file=sys.stderr)
        return 2
    for name in args.mutants:
        for dtype, p in draws(name, args.backend, args.seed, args.profile):
            print(f"{name} {dtype}: {p.short()} (local experts {p.start_expert}..{p.start_expert + p.e_local - 1}, "
                  f"{p.index_dtype} indices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
