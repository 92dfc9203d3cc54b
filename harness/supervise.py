"""One supervisor for the harness's child processes: check's isolated groups (harness.isolate)
and mutate's workers (harness.mutate).

A kernel that faults on the GPU poisons its whole CUDA context, and under Triton's
interpreter a wild pointer is a segmentation fault of the whole Python process; a kernel can
also hang. So the work runs in a child that reports through a folder of its own. The child
is forked from a forkserver (a process of the parent's environment that has imported torch
and nothing that touches CUDA or triton): CUDA is initialised anew in each child,
TRITON_INTERPRET is set before triton is imported, and the child takes the parent's
environment as it is when the child starts. Forking from the server skips the import of
torch per child: on a 16-core H100 host, 16 spawned children importing torch at once started
the check's first rows 7.3 s into the run; forked from a server started with the command
(``start_child_server``), 1.3 s (results/2026-12-06-s17-h100, calls 1 and 3).

  progress.json  what it is doing (stage, case in flight, case count): the heartbeat, rewritten
                 atomically at each change (``Progress``)
  crash.json     written just before it leaves on a device fault or a harness error
                 (``exit_with_crash``, exit status CRASH_EXIT)
  stderr.txt     its fd 1 and 2 (CUDA's own messages, faulthandler's traceback land there too)

The parent (``Child``) waits for a message (over an optional pipe) or for the child's exit,
and kills it when a limit passes: the start-up limit (the child never left stage
"starting"), a total budget from its start, or no progress for too long. What happened to a
child that did not answer is a ``Death``: the reason (timeout, crash message or exit
signal), its last progress record, the crash record and the tail of its stderr.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .records import read_json, write_json

# How children start: forked from a server that has imported PRELOAD (see the docstring);
# "spawn" (a fresh interpreter per child) is the fallback where there is no forkserver.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
PRELOAD = ["torch"]

CRASH_EXIT = 87          # the child found a device fault (or a harness error) and wrote crash.json
STARTUP_LIMIT_S = 300.0  # importing torch and starting up; not counted against a budget
STDERR_TAIL = 4000       # characters of the child's stderr kept in a report
HARNESS_ERROR = "harness error: "  # prefix of a crash message that is the harness's fault, not the kernel's
_FAULT_MARKERS = (
    "cuda error", "triton error [cuda]", "cuda_error_", "illegal memory access", "illegal address",
    "device-side assert", "unspecified launch failure", "misaligned address", "an illegal instruction",
    "hip error", "cudaerror",
)

# CUDA errors of a stream capture (a host synchronisation or host read while capturing): the
# capture is invalidated, the context is fine; the graph probe reports them as failures.
_CAPTURE_MARKERS = ("stream is capturing", "during capture", "capture")

_PROGRESS, _CRASH, _STDERR = "progress.json", "crash.json", "stderr.txt"


def is_device_fault(exc: BaseException) -> bool:
    """True for errors after which the device context is unusable (CUDA/HIP faults); errors of
    a CUDA graph capture are not."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if any(m in text for m in _CAPTURE_MARKERS):
        return False
    return any(m in text for m in _FAULT_MARKERS)


# ----------------------------------------------------------------------------- child side

class Progress:
    """What the child is doing, in <folder>/progress.json (rewritten atomically)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, _PROGRESS)
        self.state: Dict[str, Any] = {"stage": "starting", "dtype": None, "params": None, "n": 0}

    def update(self, **fields) -> None:
        self.state.update(fields)
        write_json(self.path, self.state, indent=None)


@dataclass
class ChildContext:
    """What ``enter_child`` set up: the selected backend, the heartbeat and the captured stderr."""

    backend: str
    progress: Progress
    stderr: Any


def enter_child(folder: str, backend: str, gpu: Optional[int] = None, threads: Optional[int] = None) -> ChildContext:
    """First thing in a spawned child: capture fd 1 and 2 in <folder>/stderr.txt (kernels' prints
    must not garble the parent's table; C-level output such as CUDA's assert text is kept),
    enable faulthandler there, write the first heartbeat, select the backend (before anything
    imports triton), then pin the child to ``gpu`` and ``threads`` CPU threads when given."""
    err = open(os.path.join(folder, _STDERR), "w", buffering=1)
    os.dup2(err.fileno(), 2)
    os.dup2(err.fileno(), 1)
    sys.stdout = sys.stderr = err
    import faulthandler
    faulthandler.enable(file=err, all_threads=True)
    progress = Progress(folder)
    progress.update(stage="starting")
    from .backend import select_backend
    backend = select_backend(backend)
    import torch
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    if gpu is not None:
        torch.cuda.set_device(gpu)  # "cuda" means this card for everything the child makes
    return ChildContext(backend, progress, err)


def exit_with_crash(folder: str, message: str, tb: str) -> None:
    """Write crash.json and leave at once (no cleanup: after a device fault the context is gone)."""
    with open(os.path.join(folder, _CRASH), "w") as fh:
        json.dump({"message": message, "traceback": tb}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    sys.stderr.flush()
    os._exit(CRASH_EXIT)


def exit_on_error(folder: str, exc: BaseException) -> None:
    """Leave the child after an exception outside the candidate: a device fault, or (with the
    HARNESS_ERROR prefix) an error of the harness itself."""
    kind = "" if is_device_fault(exc) else HARNESS_ERROR
    exit_with_crash(folder, f"{kind}{type(exc).__name__}: {exc}", traceback.format_exc(limit=12))


def guard(fn: Callable, folder: str, cuda: bool) -> Callable:
    """``fn`` synchronised after each call, so that a device fault surfaces in it, and the child
    left at once on one (not while a CUDA graph is being captured: a synchronisation would break
    the capture); other exceptions pass through (the runner reports them)."""
    def guarded(*args, **kwargs):
        try:
            out = fn(*args, **kwargs)
            if cuda:
                import torch
                if not torch.cuda.is_current_stream_capturing():
                    torch.cuda.synchronize()
            return out
        except Exception as exc:
            if is_device_fault(exc):
                exit_with_crash(folder, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8))
            raise
    return guarded


def recording(build: Callable, progress: Progress) -> Callable:
    """A case builder that records each build's parameters before building it, so that the
    case in flight is known when the child dies in it. The count ``n`` is of finished cases
    (``count_case``), not of builds: a case's probes build it, or cases near it, again."""
    def build_and_record(params, device):
        progress.update(params=params.to_json())
        return build(params, device)
    return build_and_record


def count_case(progress: Progress) -> None:
    """One more finished case in the progress record's ``n`` (a sweep's on_case)."""
    progress.update(n=int(progress.state["n"]) + 1)


# ----------------------------------------------------------------------------- parent side

MESSAGE, EXITED, STARTUP_TIMEOUT, BUDGET_TIMEOUT, STALL_TIMEOUT = (
    "message", "exited", "startup_timeout", "budget_timeout", "stall_timeout")


@dataclass(frozen=True)
class Waited:
    """How a wait ended: ``kind`` (MESSAGE, EXITED or one of the timeouts, after which the child
    was killed), the timeout's reason, the message received, and the seconds the child spent
    after its start during this wait (what a budget is charged)."""

    kind: str
    reason: str = ""
    message: Any = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Death:
    """What became of a child that stopped without answering."""

    reason: str                 # timeout text, crash message or exit status / signal
    progress: Dict[str, Any]    # its last heartbeat ({} if none)
    crash: Optional[Dict[str, Any]]
    stderr: str                 # the last STDERR_TAIL characters

    @property
    def harness_error(self) -> bool:
        """The child left on an error of the harness, not of the code under test."""
        return (self.crash or {}).get("message", "").startswith(HARNESS_ERROR)

    def report(self, where: str = "") -> str:
        """The reason (and where it happened), then the stderr lines worth reading."""
        text = self.reason + (f" ({where})" if where else "")
        lines = summarise_stderr(self.stderr)
        if lines:
            text += "\n  child stderr (last lines):\n    " + "\n    ".join(lines)
        return text


def exit_reason(code: Optional[int], crash: Optional[dict]) -> str:
    """Why a child exited: its crash message, the signal that killed it, or its exit status."""
    if crash:
        return crash["message"]
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code)
            return f"killed by signal {sig.name} ({signal.strsignal(sig) or ''})".replace(" ()", "")
        except ValueError:
            return f"killed by signal {-code}"
    return f"child process exited with status {code} before finishing"


def summarise_stderr(stderr: str) -> List[str]:
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


def start_child_server() -> None:
    """Start the forkserver now, without waiting for it: its import of torch then overlaps the
    caller's own imports instead of holding up the first child (a no-op under "spawn")."""
    if START_METHOD == "forkserver":
        multiprocessing.get_context(START_METHOD).set_forkserver_preload(PRELOAD)
        from multiprocessing import forkserver
        forkserver.ensure_running()


def _child_entry(environ: Dict[str, str], module: str, name: str, *args) -> None:
    """First thing in a child: the parent's environment as it was when the child started (a
    forkserver keeps its own from when it started), then ``module.name(*args)``, imported
    only now so that nothing the target's module imports sees the server's environment."""
    os.environ.clear()
    os.environ.update(environ)
    import importlib
    getattr(importlib.import_module(module), name)(*args)


class Child:
    """One spawned child reporting through its own temporary folder.

    ``target(folder, *args)`` runs in the child, or ``target(folder, conn, *args)`` with
    ``pipe=True`` (then ``send`` reaches it and ``wait`` returns what it sends). ``close()``
    ends the child if it still runs (None over the pipe first) and removes the folder."""

    def __init__(self, target: Callable, args: tuple, *, name: str, prefix: str, pipe: bool = False,
                 daemon: bool = False):
        self.folder = tempfile.mkdtemp(prefix=prefix)
        start_child_server()   # (when none runs yet)
        ctx = multiprocessing.get_context(START_METHOD)
        self.conn, child_conn = ctx.Pipe() if pipe else (None, None)
        head = (self.folder, child_conn) if pipe else (self.folder,)
        self.proc = ctx.Process(target=_child_entry, name=name, daemon=daemon,
                                args=(dict(os.environ), target.__module__, target.__qualname__) + head + tuple(args))
        self.proc.start()
        if child_conn is not None:
            child_conn.close()
        self.started = False    # it left stage "starting", or sent a message
        self._exit_requested = False
        self._t_start: Optional[float] = None

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()

    @property
    def exitcode(self) -> Optional[int]:
        return self.proc.exitcode

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def _message(self, timeout: float):
        """(True, message) when one is waiting (for up to ``timeout`` s), else (False, None)."""
        try:
            if self.conn.poll(timeout):
                return True, self.conn.recv()
        except (EOFError, OSError):
            pass
        return False, None

    def wait(self, *, startup_s: Optional[float] = None, budget_s: Optional[float] = None,
             budget_reason: str = "", stall_s: Optional[float] = None,
             on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Waited:
        """Wait for a message or the child's exit; kill it when a limit passes.

        ``startup_s``: it must start (leave stage "starting" or send a message) within that
        many seconds of this wait; ``budget_s``: seconds it may run after its start (reason
        ``budget_reason``); ``stall_s``: seconds it may go without a change of its progress
        record. ``on_progress`` gets each new progress record."""
        t0 = last_change = time.monotonic()
        last_key = None
        path = os.path.join(self.folder, _PROGRESS)
        while True:
            if self.conn is not None:
                got, message = self._message(0.1)
                if got:
                    self.started = True
                    return Waited(MESSAGE, message=message, seconds=self._used(time.monotonic()))
            else:
                self.proc.join(0.1)
            now = time.monotonic()
            if not self.proc.is_alive():
                if self.conn is not None:  # a message may have arrived just before the exit
                    got, message = self._message(0)
                    if got:
                        return Waited(MESSAGE, message=message, seconds=self._used(now))
                return Waited(EXITED, seconds=self._used(now))
            record = read_json(path)
            if record:
                if not self.started and record.get("stage") != "starting":
                    self.started = True
                key = json.dumps(record, sort_keys=True)
                if key != last_key:
                    last_key, last_change = key, now
                    if on_progress:
                        on_progress(record)
            if self.started and self._t_start is None:
                self._t_start = now
            kind = reason = None
            if not self.started and startup_s and now - t0 > startup_s:
                kind, reason = STARTUP_TIMEOUT, f"timeout after {startup_s:g} s (the child did not start)"
            elif self.started and budget_s is not None and now - self._t_start > budget_s:
                kind, reason = BUDGET_TIMEOUT, budget_reason or f"timeout after {budget_s:g} s"
            elif self.started and stall_s and now - last_change > stall_s:
                kind, reason = STALL_TIMEOUT, f"timeout after {stall_s:g} s (one case made no progress)"
            if kind:
                self.proc.kill()
                self.proc.join(10)
                return Waited(kind, reason, seconds=self._used(now))

    def _used(self, now: float) -> float:
        """Seconds since the child started (0 before); each wait charges its own share."""
        if self._t_start is None:
            return 0.0
        used, self._t_start = now - self._t_start, now
        return used

    def death(self, waited: Waited) -> Death:
        """What became of the child after a wait that did not end with a message."""
        self.proc.join(10)
        crash = read_json(os.path.join(self.folder, _CRASH))
        reason = exit_reason(self.proc.exitcode, crash) if waited.kind == EXITED else waited.reason
        try:
            with open(os.path.join(self.folder, _STDERR), errors="replace") as fh:
                stderr = fh.read()[-STDERR_TAIL:]
        except OSError:
            stderr = ""
        return Death(reason, read_json(os.path.join(self.folder, _PROGRESS)) or {}, crash, stderr)

    def request_exit(self) -> None:
        """Ask a piped child to end (None over the pipe) without waiting: a pool asks all its
        children first, then closes each, so their exits (a CUDA context's teardown each) overlap."""
        if self.conn is not None and not self._exit_requested and self.proc.is_alive():
            self._exit_requested = True
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass

    def close(self) -> None:
        if self.proc.is_alive():
            self.request_exit()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
        shutil.rmtree(self.folder, ignore_errors=True)
