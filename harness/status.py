"""The statuses the harness reports, in one place, with what each means and which fail a run.

Row statuses are what ``moe-harness check`` prints per (implementation, op, dtype) and what
the conformance tests under pytest turn into their outcomes. A case record
(harness.runner.CaseResult, a row's ``failure``) spells the same statuses in lower case
(``CASE_*``), as its JSON always has. Mutant verdicts are what ``moe-harness mutate`` reports
per mutant; a mutant the backend cannot run is ``skipped`` like a row.

Exit status: a run fails (non-zero) when any row is FAILED or CRASHED, and also when nothing
was checked at all: every row skipped or not provided (or no row), because a green run that
checked nothing is a false pass (a kernel file defining none of SGLang's names, a --dtype
typo).
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable

# ----------------------------------------------------------------------------- rows

PASSED = "passed"
FAILED = "FAILED"
CRASHED = "CRASHED"
SKIPPED = "skipped"
NOT_PROVIDED = "not provided"
# A row is REJECTED or NOT_COMPUTABLE when nothing else was compared (harness/row_check.py), and
# UNBINDABLE for an SGLang function that harness/sglang/bind.py cannot bind (Unbindable).
REJECTED = "REJECTED"
UNBINDABLE = "UNBINDABLE"
NOT_COMPUTABLE = "NOT_COMPUTABLE"

MEANINGS: Dict[str, str] = {
    PASSED: "every case ran and every probe passed",
    FAILED: "a case failed a probe (or the implementation could not be loaded)",
    CRASHED: "the child process died or hung inside a case (device fault, signal, timeout)",
    SKIPPED: "the backend cannot run this dtype, or an earlier crash used up the group's time",
    NOT_PROVIDED: "the implementation does not define this op",
    REJECTED: "an out-of-contract input, cleanly rejected by the candidate (or a case an SGLang release cannot "
              "be given: an argument it has no parameter for)",
    UNBINDABLE: "an SGLang function with a required parameter the harness cannot bind",
    NOT_COMPUTABLE: "a case the Triton interpreter cannot compute",
}
ROW_STATUSES = tuple(MEANINGS)

# Statuses that make the exit status non-zero.
FAILING: FrozenSet[str] = frozenset({FAILED, CRASHED})
# Statuses of rows where something was actually compared with the reference.
CHECKED: FrozenSet[str] = frozenset({PASSED, FAILED, CRASHED, REJECTED})
NOT_CHECKED: FrozenSet[str] = frozenset(ROW_STATUSES) - CHECKED

# pytest outcome of a conformance test per row status.
PYTEST_OUTCOME: Dict[str, str] = {
    PASSED: "passed", REJECTED: "passed",
    FAILED: "failed", CRASHED: "failed",
    SKIPPED: "skipped", NOT_PROVIDED: "skipped", UNBINDABLE: "skipped", NOT_COMPUTABLE: "skipped",
}

# ----------------------------------------------------------------------------- case records

CASE_PASSED = PASSED
CASE_FAILED = FAILED.lower()
CASE_CRASHED = CRASHED.lower()
CASE_SKIPPED = SKIPPED
CASE_REJECTED = REJECTED.lower()
CASE_NOT_COMPUTABLE = "not computable"   # the case's status when the Triton interpreter cannot compute it

# ----------------------------------------------------------------------------- mutant verdicts

KILLED = "KILLED"
SURVIVED = "SURVIVED"
INCONCLUSIVE = "INCONCLUSIVE"
STALE = "STALE"
ERROR = "ERROR"

VERDICT_MEANINGS: Dict[str, str] = {
    KILLED: "a case failed (the unpatched kernels pass it), or the mutant crashed or hung its child in a case",
    SURVIVED: "every case passed: a gap in the harness, or an equivalent mutant",
    INCONCLUSIVE: "the unpatched kernels fail (or crash on) the killing case too: no evidence",
    STALE: "the patch no longer applies to optimized/",
    ERROR: "the mutant could not be loaded, or its child died outside any case",
    SKIPPED: "the mutant needs another backend or preset",
}
VERDICTS = tuple(VERDICT_MEANINGS)
# Verdicts that do not make the exit status non-zero.
VERDICTS_OK: FrozenSet[str] = frozenset({KILLED, SKIPPED})

# ----------------------------------------------------------------------------- exit status

NOTHING_CHECKED = "nothing was checked: every row is skipped or not provided"
NO_MUTANT_RAN = "nothing was checked: every mutant was skipped"


def nothing_checked(statuses: Iterable[str]) -> bool:
    """True when no status is one of CHECKED (an empty run included)."""
    return not any(s in CHECKED for s in statuses)


def exit_code(statuses: Iterable[str]) -> int:
    """1 when a status is FAILING or nothing was checked, else 0."""
    statuses = list(statuses)
    return 1 if any(s in FAILING for s in statuses) or nothing_checked(statuses) else 0
