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
  CRASHED with reason "timeout after N s": ``timeout`` bounds the whole group (the dtypes
  left are then skipped), ``case_timeout`` one case (the others still run).

A Python exception raised by an implementation is not a crash: the runner already reports
it as a FAILED case (probe ``exception``). Only exceptions that say the device faulted are
turned into crashes, because the CUDA context cannot run anything after them.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from .cases import CaseParams
from .records import read_json, write_json
from .report import Row, replay_command
from .row_check import check_one
from .status import CASE_CRASHED, CASE_FAILED, CRASHED, FAILED, SKIPPED

if TYPE_CHECKING:
    from .options import CheckOptions

CRASH_EXIT = 87          # the child found a device fault (or a harness error) and wrote crash.json
STARTUP_LIMIT_S = 300.0  # importing torch and starting up; not counted against the group's timeout
STDERR_TAIL = 4000       # characters of the child's stderr kept in the report
_FAULT_MARKERS = (
    "cuda error", "triton error [cuda]", "cuda_error_", "illegal memory access", "illegal address",
    "device-side assert", "unspecified launch failure", "misaligned address", "an illegal instruction",
    "hip error", "cudaerror",
)


def is_device_fault(exc: BaseException) -> bool:
    """True for errors after which the device context is unusable (CUDA/HIP faults)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(m in text for m in _FAULT_MARKERS)


# ----------------------------------------------------------------------------- child side

class _Progress:
    """What the child is doing, in <folder>/progress.json (rewritten atomically)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, "progress.json")
        self.state: Dict[str, object] = {"stage": "starting", "dtype": None, "params": None, "n": 0}

    def update(self, **kw):
        self.state.update(kw)
        write_json(self.path, self.state, indent=None)


def _write_crash(folder: str, message: str, tb: str):
    with open(os.path.join(folder, "crash.json"), "w") as fh:
        json.dump({"message": message, "traceback": tb}, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _guard(fn: Callable, folder: str, cuda: bool) -> Callable:
    """Synchronise after each call, so a device fault surfaces here, and leave at once on one."""
    def guarded(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
            if cuda:
                import torch
                torch.cuda.synchronize()
            return out
        except Exception as exc:
            if is_device_fault(exc):
                _write_crash(folder, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8))
                sys.stderr.flush()
                os._exit(CRASH_EXIT)  # the context is gone: no cleanup, no further case
            raise
    return guarded


def _recording(build: Callable, progress: _Progress) -> Callable:
    def build_and_record(params: CaseParams, device):
        progress.update(params=params.to_json(), n=int(progress.state["n"]) + 1)
        return build(params, device)
    return build_and_record


def child_main(job: dict):
    """Entry point of the child (spawned): check job["dtypes"] of one (implementation, op)."""
    folder = job["folder"]
    err = open(os.path.join(folder, "stderr.txt"), "w", buffering=1)
    os.dup2(err.fileno(), 2)  # C-level output too: CUDA assert text, faulthandler's traceback
    os.dup2(err.fileno(), 1)  # kernels' prints must not garble the parent's table
    sys.stdout = sys.stderr = err
    import faulthandler
    faulthandler.enable(file=err, all_threads=True)
    progress = _Progress(folder)
    progress.update(stage="starting")

    from .backend import select_backend
    backend = select_backend(job["backend"])  # before anything imports triton
    if job.get("gpu") is not None:
        import torch
        torch.cuda.set_device(job["gpu"])  # "cuda" means this card for everything the child makes
    from .impls import load_implementation
    from .options import CheckOptions
    from .specs import SPECS

    options = CheckOptions.from_dict(job["options"])
    single = options.single_case()
    op, impl_src = job["op"], job["impl"]
    rows_path = os.path.join(folder, "rows.jsonl")
    progress.update(stage="loading")
    try:
        impl = load_implementation(impl_src, block_size=options.block_size)
    except Exception as exc:  # a broken file is the implementation's failure, not the harness's
        if is_device_fault(exc):
            _write_crash(folder, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8))
            os._exit(CRASH_EXIT)
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
    impl = dataclasses.replace(impl, ops={k: _guard(f, folder, cuda) for k, f in impl.ops.items()})
    spec = dataclasses.replace(SPECS[op], build=_recording(SPECS[op].build, progress))
    for dtype in job["dtypes"]:
        progress.update(stage="running", dtype=dtype, params=None, n=0)
        try:
            row = check_one(options, backend, impl, impl_src, op, dtype, single, spec=spec)
        except Exception as exc:  # a device fault outside the candidate, or a harness error
            kind = "" if is_device_fault(exc) else "harness error: "
            _write_crash(folder, f"{kind}{type(exc).__name__}: {exc}", traceback.format_exc(limit=12))
            os._exit(CRASH_EXIT)
        with open(rows_path, "a") as fh:
            fh.write(json.dumps(dataclasses.asdict(row)) + "\n")
    progress.update(stage="done")
    err.flush()


# ----------------------------------------------------------------------------- parent side

def _read_rows(folder: str) -> List[dict]:
    rows = []
    try:
        with open(os.path.join(folder, "rows.jsonl")) as fh:
            for line in fh:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # a line cut short by the crash
                        pass
    except OSError:
        pass
    return rows


def _stderr_tail(folder: str) -> str:
    try:
        with open(os.path.join(folder, "stderr.txt"), errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    return text[-STDERR_TAIL:]


def _exit_reason(code: Optional[int], crash: Optional[dict]) -> str:
    if crash:
        return crash["message"]
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
            return f"killed by signal {sig.name} ({signal.strsignal(sig) or ''})".replace(" ()", "")
        except ValueError:
            return f"killed by signal {-code}"
    return f"child process exited with status {code} before finishing"


def run_group(options: "CheckOptions", backend: str, impl_src: str, op: str, dtypes: List[str],
              tick: Optional[Callable] = None, gpu: Optional[int] = None) -> List[Row]:
    """Check ``dtypes`` of one (implementation, op) in child processes; never raises for the
    implementation's faults. options.timeout_s bounds the group, options.case_timeout_s one case
    (0: no limit). ``gpu`` pins the children to that CUDA device."""
    from .impls import short_name
    timeout = float(options.timeout_s) or None
    case_timeout = float(options.case_timeout_s) or None
    ctx = multiprocessing.get_context("spawn")
    name = short_name(impl_src)
    rows: List[Row] = []
    remaining = list(dtypes)
    budget = timeout  # what is left of the group's time, over its successive children
    while remaining:
        folder = tempfile.mkdtemp(prefix="moe-isolate-")
        try:
            job = dict(impl=impl_src, op=op, dtypes=remaining, backend=backend, options=options.to_dict(),
                       folder=folder, gpu=gpu)
            proc = ctx.Process(target=child_main, args=(job,), name=f"moe-check-{op}")
            proc.start()
            outcome, reason, used = _wait(proc, folder, budget, case_timeout, tick, timeout)
            if budget is not None:
                budget = max(0.0, budget - used)
            done = [Row(**d) for d in _read_rows(folder)]
            rows.extend(done)
            finished = {r.dtype for r in done}
            remaining = [d for d in remaining if d not in finished]
            if outcome == "exit" and proc.exitcode == 0 and not remaining:
                break
            progress = read_json(os.path.join(folder, "progress.json")) or {}
            crash = read_json(os.path.join(folder, "crash.json"))
            if outcome == "exit":
                reason = _exit_reason(proc.exitcode, crash)
            stderr = _stderr_tail(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        stage = progress.get("stage")
        in_flight = progress.get("dtype") if stage == "running" else None
        if in_flight not in remaining:
            in_flight = None
        # Died before running any case (start-up or loading): every dtype left shares the fate.
        victims = [in_flight] if in_flight else list(remaining)
        for dtype in victims:
            rows.append(_crashed_row(op, name, impl_src, backend, dtype, reason, stage, progress, crash, stderr))
            remaining.remove(dtype)
        if outcome == "group_timeout" or not in_flight:
            for dtype in remaining:
                rows.append(Row(op, name, dtype, status=SKIPPED, skipped=1,
                                reason=f"not run: {op} stopped after {reason}"))
            break
    order = {d: i for i, d in enumerate(dtypes)}
    rows.sort(key=lambda r: order.get(r.dtype, len(order)))
    return rows


def _summarise_stderr(stderr: str) -> List[str]:
    """The lines worth reading: faulthandler's innermost frames (down to the harness's own
    call), else the last lines."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("Fatal Python error"):
            out = lines[i:i + 2]
            for frame in lines[i + 2:i + 40]:
                out.append(frame)
                if "/harness/" in frame or "\\harness\\" in frame:
                    break
            return out
    return lines[-12:]


def _crashed_row(op, name, impl_src, backend, dtype, reason, stage, progress, crash, stderr) -> Row:
    params = progress.get("params") if progress.get("dtype") == dtype else None
    n = int(progress.get("n") or 0) if params else 0
    where = {"starting": "while the child process started", "loading": "while loading the implementation"}.get(
        stage or "starting", "")
    message = reason + (f" ({where})" if where else "")
    tail_lines = _summarise_stderr(stderr)
    if tail_lines:
        message += "\n  child stderr (last lines):\n    " + "\n    ".join(tail_lines)
    row = Row(op, name, dtype, run=n, passed=max(0, n - 1), failed=1 if params else 0, status=CRASHED,
              reason=reason.splitlines()[0][:200])
    row.failure = dict(op=op, impl=name, dtype=dtype, params=params or "", status=CASE_CRASHED,
                       probe="timeout" if reason.startswith("timeout") else "crash", message=message,
                       details={"stderr": stderr, "traceback": (crash or {}).get("traceback", ""),
                                "stage": stage})
    if params:
        row.replay = replay_command(impl_src, backend, params)
    return row


def _wait(proc, folder: str, budget: Optional[float], case_timeout: Optional[float], tick, timeout=None):
    """Wait for the child; kill it when a limit passes. Returns (outcome, reason, seconds used),
    outcome one of "exit", "group_timeout", "case_timeout"."""
    path = os.path.join(folder, "progress.json")
    t_spawn = time.monotonic()
    t_start = None   # the child has imported torch and is loading / running
    last_key, last_change = None, time.monotonic()
    while True:
        proc.join(0.1)
        now = time.monotonic()
        if not proc.is_alive():
            return "exit", "", (now - t_start) if t_start else 0.0
        prog = read_json(path)
        if prog:
            if t_start is None and prog.get("stage") != "starting":
                t_start = now
            key = (prog.get("dtype"), prog.get("n"), prog.get("stage"))
            if key != last_key:
                last_key, last_change = key, now
                if tick and prog.get("params"):
                    tick(f"{prog.get('dtype')} case {prog.get('n')} (isolated)")
        outcome = None
        if t_start is None and now - t_spawn > STARTUP_LIMIT_S:
            outcome, reason = "group_timeout", f"timeout after {STARTUP_LIMIT_S:g} s (the child did not start)"
        elif t_start is not None and budget is not None and now - t_start > budget:
            outcome, reason = "group_timeout", f"timeout after {timeout or budget:g} s (the time limit of {proc.name[len('moe-check-'):]})"
        elif t_start is not None and case_timeout and now - last_change > case_timeout:
            outcome, reason = "case_timeout", f"timeout after {case_timeout:g} s (one case made no progress)"
        if outcome:
            proc.kill()
            proc.join(10)
            return outcome, reason, now - (t_start or now)
