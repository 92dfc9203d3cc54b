"""The check's report: one Row per (implementation, op, dtype), the replay command of a failing
case, and the table and failure text printed for them. Shared by the engine that makes rows
in this process (harness.row_check), in child processes (harness.isolate) and the command
(harness.check), so none of them imports another for these."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .status import PASSED


@dataclass
class Row:
    """One line of the summary table (JSON-safe)."""

    op: str
    impl: str
    dtype: str
    run: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    status: str = PASSED        # a row status of harness.status
    reason: str = ""
    worst: Dict[str, dict] = field(default_factory=dict)
    failure: Optional[dict] = None
    replay: str = ""
    saved_inputs: str = ""
    seconds: float = 0.0        # wall time of the sweep (cases per minute = 60 * run / seconds)
    tally: Dict[str, Any] = field(default_factory=dict)   # what the reason is made of (harness.row_check.row_note)


def merge_worst(into: Dict[str, dict], other: Dict[str, dict]) -> None:
    """Keep in ``into`` the larger max_abs_err of each output ({output: {"max_abs_err": ...}})."""
    for name, w in other.items():
        if name not in into or w["max_abs_err"] > into[name]["max_abs_err"]:
            into[name] = w


def merge_tallies(tallies) -> Dict[str, Any]:
    """Tallies of a row's pieces (chunks, parts) as one: counts add, flags or, the first
    non-empty text."""
    merged: Dict[str, Any] = {}
    for tally in tallies:
        for key, value in tally.items():
            if isinstance(value, bool):
                merged[key] = merged.get(key, False) or value
            elif isinstance(value, int):
                merged[key] = merged.get(key, 0) + value
            else:
                merged[key] = merged.get(key) or value
    return merged


def replay_command(impl: str, backend: str, params_json: str) -> str:
    """The command line that runs exactly this case (``params_json``) of ``impl`` again."""
    return f"moe-harness check --backend {backend} --impl {shlex.quote(impl)} --case {shlex.quote(params_json)}"


def format_table(rows: List[Row]) -> str:
    """The summary table: one line per row, counts, the worst float error and the status."""
    head = f"{'op':<18} {'impl':<10} {'dtype':<10} {'run':>5} {'pass':>5} {'fail':>4} {'skip':>4}  {'worst |err|':>11}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        worst = max((v["max_abs_err"] for v in r.worst.values()), default=None)
        # "exact": every case compared bit for bit; a failing row without a float error shows "-"
        w = f"{worst:11.3g}" if worst is not None else f"{'exact' if r.passed and not r.failed else '-':>11}"
        status = r.status + (f" ({r.reason})" if r.reason else "")
        lines.append(f"{r.op:<18} {r.impl:<10} {r.dtype:<10} {r.run:>5} {r.passed:>5} {r.failed:>4} {r.skipped:>4}  "
                     f"{w}  {status}")
    return "\n".join(lines)


def format_failures(rows: List[Row]) -> str:
    """Each failed or crashed row's probe, case, message, first mismatches, replay command and
    saved inputs ("" when no row has a failure)."""
    out = []
    for r in rows:
        if not r.failure:
            continue
        f = r.failure
        out.append(f"\n{r.status} {r.op} [{r.impl}, {r.dtype}] probe={f['probe']}\n  case: {f['params']}\n"
                   f"  {f['message']}")
        for ex in f["details"].get("first", [])[:5]:
            out.append(f"    at {ex['where']}: candidate {ex['candidate']}, reference {ex['reference']}")
        out.append(f"  replay: {r.replay}\n  inputs: {r.saved_inputs}")
    return "\n".join(out)
