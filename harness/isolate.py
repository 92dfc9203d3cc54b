"""Crash isolation: run one (implementation, op) group of the check sweep in a child process.

Why: a kernel that faults on the GPU (illegal address, device-side assert) poisons its whole
CUDA context, and under Triton's interpreter a wild pointer is a segmentation fault of the
whole Python process. So each group runs in a child started with the "spawn" method (a
fresh interpreter: CUDA is initialised anew, TRITON_INTERPRET is set before triton is
imported), and the parent turns whatever happens to it into summary rows:

- rows the child finished come back as they are (JSON lines, one per dtype, written as
  each dtype finishes, so a later crash loses none of them);
- a child that dies (signal, CUDA fault caught in the child, any other exit) gives a
  CRASHED row for the dtype in flight, with the exit signal or the CUDA error text, the
  tail of the child's stderr (fd 2 is captured, so CUDA's own messages and faulthandler's
  traceback land there too), the case in flight (the child writes each case's params
  before running it) and the replay command; the remaining dtypes run in a fresh child;
- a child that passes its time limit is killed (SIGKILL) and the dtype in flight is
  CRASHED with reason "timeout after N s": CheckOptions.timeout_s bounds the whole group (the
  dtypes left are then skipped), CheckOptions.case_timeout_s one case (the others still run).

A Python exception raised by an implementation is not a crash: the runner already reports
it as a FAILED case (probe ``exception``). Only exceptions that say the device faulted are
turned into crashes, because the CUDA context cannot run anything after them.

The child process itself (spawn, heartbeat, limits, fault detection, stderr) is
harness.supervise's, shared with ``moe-harness mutate``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import traceback
from typing import TYPE_CHECKING, Callable, List, Optional

from .report import Row, replay_command
from .row_check import check_one
from .status import CASE_CRASHED, CASE_FAILED, CRASHED, FAILED, SKIPPED
from .supervise import (BUDGET_TIMEOUT, EXITED, STARTUP_LIMIT_S, STARTUP_TIMEOUT, Child, Death, enter_child,
                        exit_on_error, exit_with_crash, guard, is_device_fault, recording)

if TYPE_CHECKING:
    from .options import CheckOptions

_ROWS = "rows.jsonl"  # one finished row per line, appended as each dtype finishes


# ----------------------------------------------------------------------------- child side

def child_main(folder: str, job: dict):
    """Entry point of the child (spawned): check job["dtypes"] of one (implementation, op)."""
    child = enter_child(folder, job["backend"], gpu=job.get("gpu"))
    backend, progress = child.backend, child.progress
    from .impls import load_implementation
    from .options import CheckOptions
    from .specs import SPECS

    options = CheckOptions.from_dict(job["options"])
    single = options.single_case()
    op, impl_src = job["op"], job["impl"]
    rows_path = os.path.join(folder, _ROWS)
    progress.update(stage="loading")
    try:
        impl = load_implementation(impl_src, block_size=options.block_size)
    except Exception as exc:  # a broken file is the implementation's failure, not the harness's
        if is_device_fault(exc):
            exit_with_crash(folder, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8))
        from .impls import short_name
        with open(rows_path, "a") as fh:
            for dtype in job["dtypes"]:
                row = Row(op, short_name(impl_src), dtype, status=FAILED, failed=1,
                          reason=f"could not load the implementation: {type(exc).__name__}")
                row.failure = dict(op=op, impl=row.impl, dtype=dtype, params="", status=CASE_FAILED, probe="load",
                                   message=f"{type(exc).__name__}: {exc}",
                                   details={"traceback": traceback.format_exc(limit=8)[-2000:]})
                fh.write(json.dumps(dataclasses.asdict(row)) + "\n")
        return
    cuda = backend == "cuda"
    impl = dataclasses.replace(impl, ops={k: guard(f, folder, cuda) for k, f in impl.ops.items()})
    spec = dataclasses.replace(SPECS[op], build=recording(SPECS[op].build, progress))
    for dtype in job["dtypes"]:
        progress.update(stage="running", dtype=dtype, params=None, n=0)
        try:
            row = check_one(options, backend, impl, impl_src, op, dtype, single, spec=spec)
        except Exception as exc:  # a device fault outside the candidate, or a harness error
            exit_on_error(folder, exc)
        with open(rows_path, "a") as fh:
            fh.write(json.dumps(dataclasses.asdict(row)) + "\n")
    progress.update(stage="done")
    child.stderr.flush()


# ----------------------------------------------------------------------------- parent side

def _read_rows(folder: str) -> List[dict]:
    rows = []
    try:
        with open(os.path.join(folder, _ROWS)) as fh:
            for line in fh:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # a line cut short by the crash
                        pass
    except OSError:
        pass
    return rows


def run_group(options: "CheckOptions", backend: str, impl_src: str, op: str, dtypes: List[str],
              tick: Optional[Callable] = None, gpu: Optional[int] = None) -> List[Row]:
    """Check ``dtypes`` of one (implementation, op) in child processes; never raises for the
    implementation's faults. options.timeout_s bounds the group, options.case_timeout_s one case
    (0: no limit). ``gpu`` pins the children to that CUDA device."""
    from .impls import short_name
    timeout = float(options.timeout_s) or None
    case_timeout = float(options.case_timeout_s) or None
    name = short_name(impl_src)
    rows: List[Row] = []
    remaining = list(dtypes)
    budget = timeout  # what is left of the group's time, over its successive children

    def report_progress(record):
        if tick and record.get("params"):
            tick(f"{record.get('dtype')} case {record.get('n')} (isolated)")

    budget_reason = f"timeout after {timeout:g} s (the time limit of {op})" if timeout else ""
    while remaining:
        job = dict(impl=impl_src, op=op, dtypes=remaining, backend=backend, options=options.to_dict(), gpu=gpu)
        child = Child(child_main, (job,), name=f"moe-check-{op}", prefix="moe-isolate-")
        try:
            waited = child.wait(startup_s=STARTUP_LIMIT_S, budget_s=budget, budget_reason=budget_reason,
                                stall_s=case_timeout, on_progress=report_progress)
            if budget is not None:
                budget = max(0.0, budget - waited.seconds)
            done = [Row(**d) for d in _read_rows(child.folder)]
            rows.extend(done)
            finished = {r.dtype for r in done}
            remaining = [d for d in remaining if d not in finished]
            if waited.kind == EXITED and child.exitcode == 0 and not remaining:
                break
            death = child.death(waited)
        finally:
            child.close()
        stage = death.progress.get("stage")
        in_flight = death.progress.get("dtype") if stage == "running" else None
        if in_flight not in remaining:
            in_flight = None
        # Died before running any case (start-up or loading): every dtype left shares the fate.
        victims = [in_flight] if in_flight else list(remaining)
        for dtype in victims:
            rows.append(_crashed_row(op, name, impl_src, backend, dtype, death))
            remaining.remove(dtype)
        if waited.kind in (STARTUP_TIMEOUT, BUDGET_TIMEOUT) or not in_flight:
            for dtype in remaining:
                rows.append(Row(op, name, dtype, status=SKIPPED, skipped=1,
                                reason=f"not run: {op} stopped after {death.reason}"))
            break
    order = {d: i for i, d in enumerate(dtypes)}
    rows.sort(key=lambda r: order.get(r.dtype, len(order)))
    return rows


def _crashed_row(op: str, name: str, impl_src: str, backend: str, dtype: str, death: Death) -> Row:
    """The CRASHED row of ``dtype``: the case in flight (if the child died in one of this dtype's
    cases), its replay command, the reason and the child's stderr."""
    progress, reason = death.progress, death.reason
    stage = progress.get("stage")
    params = progress.get("params") if progress.get("dtype") == dtype else None
    n = int(progress.get("n") or 0) if params else 0
    where = {"starting": "while the child process started", "loading": "while loading the implementation"}.get(
        stage or "starting", "")
    row = Row(op, name, dtype, run=n, passed=max(0, n - 1), failed=1 if params else 0, status=CRASHED,
              reason=reason.splitlines()[0][:200])
    row.failure = dict(op=op, impl=name, dtype=dtype, params=params or "", status=CASE_CRASHED,
                       probe="timeout" if reason.startswith("timeout") else "crash", message=death.report(where),
                       details={"stderr": death.stderr, "traceback": (death.crash or {}).get("traceback", ""),
                                "stage": stage})
    if params:
        row.replay = replay_command(impl_src, backend, params)
    return row
