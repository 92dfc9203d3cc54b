"""One row of the check in this process: an implementation's op in one dtype, swept over
fuzzed cases (or run on one given case), its failure saved and given a replay command.

The unit of work that harness.check runs in-process and harness.isolate runs in a child."""
from __future__ import annotations

import time
from typing import Optional

from .backend import device_of
from .cases import CaseParams
from .options import CheckOptions
from .report import Row, replay_command
from .status import FAILED, NOT_COMPUTABLE, NOT_PROVIDED, REJECTED, SKIPPED, UNBINDABLE


def check_one(options: CheckOptions, backend: str, impl, impl_src: str, op: str, dtype: str,
              single: Optional[CaseParams] = None, tick=None, spec=None) -> Row:
    """Check one (implementation, op, dtype) in this process: a sweep of the fixed cases and
    options.cases_for(backend) fuzzed ones (the profile's, or --cases), or the single case.
    With options.deadline, no fuzzed case starts after it (the budget), and the row's reason says
    how many cases it got. ``spec`` replaces SPECS[op] (the isolation child records each case it builds)."""
    from .fuzz import sweep_row
    from .runner import run_case, save_failure
    from .specs import SPECS

    device = device_of(backend)
    spec = spec or SPECS[op]
    row = Row(op, impl.name, dtype)
    if op not in impl.ops:
        row.status = UNBINDABLE if op in getattr(impl, "unbindable", ()) else NOT_PROVIDED
        row.reason = impl.notes.get(op, "")
        return row
    reason = spec.skip_reason(backend, dtype)
    if reason:
        row.status, row.reason, row.skipped = SKIPPED, reason, 1
        return row
    cand = impl.candidate(op)
    t0 = time.perf_counter()
    if single:
        res = run_case(spec, cand, single, device, impl.name, require_ieee_fp32=options.require_ieee_fp32)
        row.run, failure = 1, (None if res.ok else res)
        row.passed = int(res.status == "passed")
        # a failure's details are the probe's (an error's, a mismatch's), not per-output errors
        row.worst = {k: {"max_abs_err": v["max_abs_err"]} for k, v in res.details.items()} if res.ok else {}
        counts = dict(rejected=int(res.status == "rejected"), not_computable=int(res.status == "not computable"),
                      not_computable_reason=res.message if res.status == "not computable" else "",
                      unexpressible=int(res.probe == "not_supported"),
                      tf32=int(res.ok and any(v.get("precision") == "tf32" for v in res.details.values())))
    else:
        out = sweep_row(spec, cand, impl.name, dtype, backend, device, options.cases_for(backend), options.seed,
                        shapes=options.shapes(backend), part=options.part,
                        preset=options.preset, shrink=options.shrink, require_ieee_fp32=options.require_ieee_fp32,
                        repeat_probe_cases=options.repeat_probe_cases(backend), deadline=options.deadline,
                        on_case=(lambda r: tick(r.op, r.impl, r.dtype, None)) if tick else None)
        failure = out.failure
        row.passed, row.worst = out.passed, out.worst
        counts = dict(rejected=out.rejected, not_computable=out.not_computable,
                      not_computable_reason=out.not_computable_reason, tf32=out.tf32,
                      unexpressible=out.unexpressible, graph_replayed=out.graph_replayed,
                      graph_skipped=out.graph_skipped, graph_skip_reason=out.graph_skip_reason,
                      budget=options.deadline is not None, budget_spent=out.budget_spent)
        row.run = out.passed + counts["rejected"] + counts["not_computable"] + (1 if failure else 0)
    row.seconds = round(time.perf_counter() - t0, 2)
    row.tally, row.reason = counts, row_note(counts, row.run)
    if not failure and not row.passed:
        row.status = nothing_compared_status(counts, row.status)
    if failure and "max_abs_err" in failure.details:
        # the failing case's float error, so that the table's worst-error column shows it
        row.worst[failure.details.get("output", "output")] = {"max_abs_err": failure.details["max_abs_err"],
                                                              "params": failure.params}
    if failure:
        row.failed, row.status = 1, FAILED
        row.failure = failure.to_dict()
        row.replay = replay_command(impl_src, backend, failure.params)
        try:
            row.saved_inputs = save_failure(failure, spec, device)
        except Exception as exc:  # saving is a convenience; never hide the failure
            row.saved_inputs = f"(not saved: {exc})"
    return row


def row_note(tally: dict, run: int) -> str:
    """The row's note from its tally (check_one's counts, summed over a row's parts or chunks):
    the graph probe's replays, the budget's cases, TF32-only passes, clean rejections and cases
    the backend cannot compute; "" when there is nothing to say."""
    notes = []
    if tally.get("graph_skipped"):   # GPU rows of capturable ops: a graph probe that did not always replay says so
        notes.append(graph_note(tally["graph_replayed"], tally["graph_skipped"], tally.get("graph_skip_reason", "")))
    if tally.get("budget"):
        notes.append(f"budget: {run} case(s)" + (", stopped at its share of the budget" if tally.get("budget_spent")
                                                  else ""))
    if tally.get("tf32"):
        notes.append(f"{tally['tf32']} case(s) pass at TF32 precision only; --require-ieee-fp32 fails them")
    outside = tally.get("rejected", 0) - tally.get("unexpressible", 0)
    if outside:
        notes.append(f"{outside} case(s) outside a precondition cleanly rejected")
    if tally.get("unexpressible"):
        notes.append(f"{tally['unexpressible']} case(s) rejected: an argument this release has no parameter for")
    if tally.get("not_computable"):
        why = tally.get("not_computable_reason") or ("not computable here (the interpreter, or an SGLang stand-in "
                                                      "that cannot be faithful)")
        notes.append(f"{tally['not_computable']} case(s) {why}")
    return "; ".join(notes)


def nothing_compared_status(tally: dict, status: str) -> str:
    """A row that compared no case says why instead of passing: REJECTED or NOT_COMPUTABLE."""
    return REJECTED if tally.get("rejected") else NOT_COMPUTABLE if tally.get("not_computable") else status


def graph_note(replayed: int, skipped: int, reason: str) -> str:
    """The row's note on the graph probe: how many cases' graphs were replayed on new inputs, and
    how many were only captured (with the first one's reason), so a probe that never replays shows."""
    text = f"CUDA graph replayed on new inputs in {replayed} case(s)"
    if skipped:
        text += f", only captured in {skipped} ({reason.removeprefix('skipped: ')})"
    return text
