"""Check profiles, in the sense of Hypothesis's settings profiles: how much a check sweeps.

``default`` is what a kernel author runs before a merge (``moe-harness check``, and pytest's
conformance tests unless ``--moe-profile`` says otherwise); ``thorough`` is the 2,000-case
sweep for nights and releases. ``--cases N`` overrides a profile's count. Every profile keeps
the three fixed cases of each sweep (empty batch, aligned long groups, narrow rank,
harness.fuzz) before its fuzzed ones.

A profile's numbers are per backend, because a case costs ~1000x more on Triton's
interpreter than on a GPU:

  cases               fuzzed cases per (implementation, op, dtype) row, after the fixed ones.
                      The default's counts kill every mutant of the catalogue with margin
                      (measured with ``moe-harness mutate --profile default``; README,
                      "Profiles"): on the interpreter the last mutant dies at its 4th fuzzed
                      case of 6; on an H100 (results/2026-12-06-s15-h100) every mutant died
                      within the first 10 cases of a row (the 3 fixed ones included), so 25
                      fuzzed cases keep more than twice that. With the palette and the parts
                      all 106 died on an H100 (results/2026-12-06-s17-h100 call 3), after one,
                      fp8 partial sums rounded to bf16, had survived call 1: the elementwise
                      bound let it through on most sizes; the statistical test of fp8
                      products (harness.tolerance) now fails it on any size of more than two K
                      blocks.
  repeat_probe_cases  how many of a row's cases (the first ones: the fixed cases come first) get
                      the probes that call the candidate again: the decoy call before the case
                      (a result cached from an earlier call), the second run (two runs that
                      differ) and, on a GPU, the CUDA-graph capture and replay. None: every
                      case. On the interpreter the programs of a launch run one after another
                      and fresh allocations are poisoned with a fixed payload, so a second run
                      repeats the first bit for bit unless the candidate keeps state between
                      calls, which the first cases already show; each probe costs a full
                      interpreted call. On a GPU the three cost more than the case itself (two
                      more case builds, a capture, up to GRAPH_SEED_TRIES builds for a replay
                      that fits it, a second reference); what they catch does not depend on
                      the routing (a cache keyed on shapes, a host synchronisation, a value
                      baked into the capture) or, for a race, shows in the comparison of any
                      case as well, so the default gives them to the first 10 cases of a row and
                      the thorough profile to every case.

  shapes              how many sizes (experts, topk, tokens, hidden, inter) a row's fuzzed
                      cases take theirs from (harness.fuzz.shape_palette, drawn under the row's
                      seed: another seed, other sizes); the routing, the rank's experts, invalid
                      slots and values are drawn per case, the index dtype per size. None: sizes
                      drawn per case. On a GPU a check's time is Triton compiling each new specialisation
                      of each kernel, which the sizes decide: the default check on an H100 took
                      as long with 25 fuzzed cases per row as with 50 (642 against 663
                      row-seconds, results/2026-12-06-s15-h100), and the EP preprocess row spent
                      11 of its 13 s compiling 21 specialisations. A palette applies only to the
                      profile's own case count: ``--cases N`` or ``--budget`` draw sizes per case.
                      A palette row of a costly record runs in parts, each with its share of the
                      cases and sizes, in separate children (harness.fuzz.sweep_parts).

The pytest suite's conformance tests take their per-row count from the profile too, so an op
added to the registry costs the suite what the profile says and no more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

BACKEND_NAMES = ("cuda", "interpreter")


@dataclass(frozen=True)
class Profile:
    """How much one row of a check sweeps, per backend (see the module docstring)."""

    name: str
    purpose: str
    cases: Mapping[str, int]
    repeat_probe_cases: Mapping[str, Optional[int]]
    shapes: Mapping[str, Optional[int]]

    def cases_for(self, backend: str) -> int:
        return self.cases[backend]

    def repeat_probes_for(self, backend: str) -> Optional[int]:
        return self.repeat_probe_cases[backend]

    def shapes_for(self, backend: str) -> Optional[int]:
        return self.shapes[backend]


PROFILES = {
    "default": Profile(
        "default", "before a merge: the fixed cases and enough fuzzed ones to kill every mutant of the catalogue",
        cases={"interpreter": 6, "cuda": 25},
        repeat_probe_cases={"interpreter": 4, "cuda": 10},
        shapes={"interpreter": None, "cuda": 8}),
    "thorough": Profile(
        "thorough", "nights and releases: the 2,000-case sweep (hours on the interpreter)",
        cases={"interpreter": 2000, "cuda": 2000},
        repeat_probe_cases={"interpreter": None, "cuda": None},
        shapes={"interpreter": None, "cuda": None}),
}
DEFAULT_PROFILE = "default"


def profile_named(name: str) -> Profile:
    return PROFILES[name]


def palette_size(profile: str, backend: str, cases_override: Optional[int] = None) -> Optional[int]:
    """The profile's palette of sizes on ``backend``, or None when --cases overrides its count."""
    return None if cases_override is not None else PROFILES[profile].shapes_for(backend)


def fuzzed_cases(profile: str, backend: str, override: Optional[int] = None) -> int:
    """Fuzzed cases per row: ``override`` (--cases) when given, else the profile's for the backend."""
    return override if override is not None else PROFILES[profile].cases_for(backend)
