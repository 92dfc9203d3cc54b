"""Crash isolation: run one (implementation, op) group of the check sweep in a child process.

Why: a kernel that faults on the GPU (illegal address, device-side assert) poisons its whole
CUDA context, and under Triton's interpreter a wild pointer is a segmentation fault of the
whole Python process. So each group runs in a child process of its own (harness.supervise:
CUDA is initialised anew, TRITON_INTERPRET is set before triton is imported), and the parent
turns whatever happens to it into summary rows:

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

The child process itself (start, heartbeat, limits, fault detection, stderr) is
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
from .status import CASE_CRASHED, CASE_FAILED, CRASHED, FAILED, FAILING, SKIPPED
from .supervise import (BUDGET_TIMEOUT, EXITED, MESSAGE, STARTUP_LIMIT_S, STARTUP_TIMEOUT, Child, Death, Waited,
                        count_case, enter_child, exit_on_error, exit_with_crash, guard, is_device_fault, recording)

if TYPE_CHECKING:
    from .options import CheckOptions

_ROWS = "rows.jsonl"  # one finished row per line, appended as each dtype finishes


# ----------------------------------------------------------------------------- child side

def child_main(folder: str, conn, backend: str, gpu: Optional[int], threads: Optional[int] = None):
    """Entry point of the child (spawned, kept warm): check the jobs the parent sends over the
    pipe, each job["dtypes"] of one (implementation, op), answering "done" after each, until
    the parent sends None. Imports, loaded implementations and compiled kernels stay warm
    from one job to the next; the parent replaces the child when it dies."""
    child = enter_child(folder, backend, gpu=gpu, threads=threads)
    loaded: dict = {}  # (source, block size) -> the implementation, loaded once per child
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            # everything this child reports is on disk or sent: leave without the interpreter's
            # teardown (a second or more per child with torch and a CUDA context), atexit kept
            import atexit
            atexit._run_exitfuncs()
            child.stderr.flush()
            os._exit(0)
        _run_job(folder, child, job, loaded)
        child.progress.update(stage="idle", dtype=None, params=None)
        child.stderr.flush()
        conn.send("done")


def _run_job(folder: str, child, job: dict, loaded: dict) -> None:
    """Check job["dtypes"] of one (implementation, op); each finished row is appended to rows.jsonl."""
    backend, progress = child.backend, child.progress
    from .impls import load_implementation
    from .options import CheckOptions
    from .specs import SPECS

    options = CheckOptions.from_dict(job["options"])
    single = options.single_case()
    op, impl_src = job["op"], job["impl"]
    rows_path = os.path.join(folder, _ROWS)
    progress.update(stage="loading", dtype=None, params=None, n=0)
    try:
        key = (impl_src, options.block_size)
        if key not in loaded:
            loaded[key] = load_implementation(impl_src, block_size=options.block_size)
        impl = loaded[key]
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
            row = check_one(options, backend, impl, impl_src, op, dtype, single, spec=spec,
                            tick=lambda *_: count_case(progress))
        except Exception as exc:  # a device fault outside the candidate, or a harness error
            exit_on_error(folder, exc)
        with open(rows_path, "a") as fh:
            fh.write(json.dumps(dataclasses.asdict(row)) + "\n")


# ----------------------------------------------------------------------------- parent side

class RowWorker:
    """A slot for one warm child process (``child_main``) pinned to ``gpu`` (and ``threads`` CPU
    threads): started on first use, kept across jobs, replaced after it dies or after a failing
    row. ``close()`` ends it (after ``request_exit()``, without a second request)."""

    def __init__(self, backend: str, gpu: Optional[int] = None, threads: Optional[int] = None):
        self.backend, self.gpu, self.threads = backend, gpu, threads
        self.child: Optional[Child] = None

    def take(self) -> Child:
        if self.child is None or not self.child.alive:
            self.close()
            self.child = Child(child_main, (self.backend, self.gpu, self.threads), name="moe-check", prefix="moe-isolate-",
                               pipe=True, daemon=True)
        return self.child

    def ready(self) -> Waited:
        """Start the child if needed and wait for its "ready" (imports done): MESSAGE, or how the
        start failed."""
        child = self.take()
        return Waited(MESSAGE) if child.started else child.wait(startup_s=STARTUP_LIMIT_S)

    def request_exit(self) -> None:
        """Ask the child to end without waiting for it (Child.request_exit); close() then waits."""
        if self.child is not None:
            self.child.request_exit()

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None


def _clear_rows(folder: str) -> None:
    try:
        os.remove(os.path.join(folder, _ROWS))
    except OSError:
        pass


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
              tick: Optional[Callable] = None, gpu: Optional[int] = None,
              worker: Optional[RowWorker] = None) -> List[Row]:
    """Check ``dtypes`` of one (implementation, op) in child processes; never raises for the
    implementation's faults. options.timeout_s bounds the group, options.case_timeout_s one case
    (0: no limit). ``worker``: the warm child to use (kept for the next group unless it died);
    without one, a child of its own pinned to ``gpu``."""
    own = worker is None
    worker = worker or RowWorker(backend, gpu)
    try:
        return _run_group(options, backend, impl_src, op, dtypes, tick, worker)
    finally:
        if own:
            worker.close()


def _run_group(options: "CheckOptions", backend: str, impl_src: str, op: str, dtypes: List[str],
               tick: Optional[Callable], worker: RowWorker) -> List[Row]:
    from .impls import short_name
    timeout = float(options.timeout_s) or None
    case_timeout = float(options.case_timeout_s) or None
    name = short_name(impl_src)
    rows: List[Row] = []
    remaining = list(dtypes)
    budget = timeout  # what is left of the group's time, over its successive children

    def report_progress(record):
        if tick and record.get("params") and record.get("stage") == "running":
            tick(op, name, record.get("dtype"), int(record.get("n") or 0))

    budget_reason = f"timeout after {timeout:g} s (the time limit of {op})" if timeout else ""
    while remaining:
        job = dict(impl=impl_src, op=op, dtypes=remaining, options=options.to_dict())
        waited = worker.ready()
        child = worker.child
        if waited.kind == MESSAGE:
            child.send(job)
            waited = child.wait(budget_s=budget, budget_reason=budget_reason, stall_s=case_timeout,
                                on_progress=report_progress)
        if budget is not None:
            budget = max(0.0, budget - waited.seconds)
        done = [Row(**d) for d in _read_rows(child.folder)]
        _clear_rows(child.folder)
        rows.extend(done)
        finished = {r.dtype for r in done}
        remaining = [d for d in remaining if d not in finished]
        if waited.kind == MESSAGE and not remaining:
            if any(r.status in FAILING for r in done):
                worker.close()  # whatever a failing kernel left behind (a stray write) stays out of the next job
            break
        if waited.kind == MESSAGE:  # "done" without a row for some dtype: a harness error, say so
            waited = Waited(EXITED)
        death = child.death(waited)
        worker.close()
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
    n = int(progress.get("n") or 0) if params else 0     # finished cases before the one in flight
    where = {"starting": "while the child process started", "loading": "while loading the implementation"}.get(
        stage or "starting", "")
    row = Row(op, name, dtype, run=n + 1 if params else 0, passed=n, failed=1 if params else 0, status=CRASHED,
              reason=reason.splitlines()[0][:200])
    row.failure = dict(op=op, impl=name, dtype=dtype, params=params or "", status=CASE_CRASHED,
                       probe="timeout" if reason.startswith("timeout") else "crash", message=death.report(where),
                       details={"stderr": death.stderr, "traceback": (death.crash or {}).get("traceback", ""),
                                "stage": stage})
    if params:
        row.replay = replay_command(impl_src, backend, params)
    return row
