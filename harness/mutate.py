"""``moe-harness mutate``: prove the check catches real bugs, by running it on every mutant
of harness.mutants.

Each mutant is swept like ``check`` sweeps an implementation (harness.fuzz.sweep over the
op's dtypes, ``--cases`` cases each, seed ``--seed``, no example database, so a run is
reproducible) in a child process, so that a mutant that faults (a segmentation fault
under the interpreter, an illegal address on the GPU) or hangs only ends that child.
Verdicts:

  KILLED        a case failed (probe, case and message recorded; the case was shrunk unless
                --no-shrink), or the mutant crashed its child process or hung inside a case
                (probe "crash" / "timeout"), and the unpatched kernels pass that same case
                (the control: after a crash or a hang it runs in a fresh child)
  SURVIVED      every case passed: a gap in the harness (or an equivalent mutant)
  INCONCLUSIVE  the unpatched kernels fail, crash or hang on the killing case too: no evidence
  STALE         the patch no longer applies to optimized/ (its text does not occur once)
  ERROR         the mutant could not be loaded, or its child died outside any case
  skipped       needs another backend (int32 overflows need the GPU and --preset large)

Progress goes to stderr: a line per finished mutant in a log (one line rewritten on a
terminal), and every 10 s (harness.progress.PROGRESS_EVERY_S) a line naming the mutants in flight
with their dtype and cases so far; ``--quiet`` silences both.

The exit status is non-zero when any mutant is not KILLED (skipped ones aside), and when every
mutant was skipped (nothing was checked). The verdicts are defined in harness.status.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from .backend import describe, device_of
from .options import MutateOptions
from .progress import periodic_lines
from .records import write_json
from .status import (CASE_CRASHED, CASE_FAILED, CASE_PASSED, ERROR, INCONCLUSIVE, KILLED, NO_MUTANT_RAN, SKIPPED,
                     STALE, SURVIVED, VERDICTS, VERDICTS_OK)
from .supervise import (EXITED, MESSAGE, STARTUP_LIMIT_S, Child, Waited, enter_child, exit_on_error, guard,
                        count_case, recording)

if TYPE_CHECKING:
    from .mutants import Mutant

LARGE_CASES = 2          # cases of a mutant that needs --preset large (each is several GB)


@dataclass
class MutantResult:
    """What running the check against one mutant found (JSON-safe)."""

    name: str
    op: str
    description: str
    verdict: str = SURVIVED
    reason: str = ""             # why skipped / STALE / ERROR / how it crashed
    probe: Optional[str] = None  # the probe that fired (or "crash" / "timeout")
    dtype: Optional[str] = None
    case: str = ""               # CaseParams JSON of the (shrunk) killing case
    first_case: str = ""         # ... as first found, before shrinking
    message: str = ""
    cases_run: int = 0
    # the unpatched kernels on the killing case: "passed" / "failed (<probe>): ..." / "crashed: ..."
    control: Optional[str] = None
    seconds: float = 0.0
    swept: Dict[str, int] = field(default_factory=dict)  # dtype -> cases run (a prefix of that dtype's sweep)
    passed_cases: List[str] = field(default_factory=list)  # CaseParams JSON of every case the mutant passed


# ----------------------------------------------------------------------------- one mutant (in-process)

def _count(res, case, progress) -> None:
    """A sweep's on_case in a mutant's run: its passed cases kept (the report's), and the
    progress record's count of finished cases."""
    if case.ok:
        res.passed_cases.append(case.params)
    if progress is not None:
        count_case(progress)


def _large(m) -> bool:
    return m.min_preset == "large"


def sweep_plan(m: "Mutant", spec, backend: str, cases: int) -> Tuple[List[str], int]:
    """The dtypes mutant ``m`` (of the op ``spec``) is swept in on ``backend``, in order, and its
    cases per dtype: ``cases``, at most LARGE_CASES for a mutant of the large preset."""
    dtypes = [d for d in (m.dtypes or spec.dtypes) if d in spec.dtypes and not spec.skip_reason(backend, d)]
    return dtypes, min(cases, LARGE_CASES) if _large(m) else cases


def run_mutant(mutant, backend: str, cases: int, seed: int, shrink: bool = True,
               wrap_candidate: Optional[Callable] = None, progress=None,
               repeat_probe_cases: Optional[int] = None, shapes: Optional[int] = None) -> MutantResult:
    """Sweep one mutant (a catalogue name, or a harness.mutants.Mutant) in this process (a
    fault of the mutant may end the process: the command runs this in a child).
    ``wrap_candidate`` wraps the called functions (device fault guard); ``progress``
    (harness.supervise.Progress) records the case in flight; ``repeat_probe_cases`` and
    ``shapes`` as in harness.fuzz.sweep (a profile's, so that a mutant faces what that profile's
    check runs)."""
    from .fuzz import sweep_row
    from .mutants import MUTANTS, StalePatch, implementation
    from .specs import SPECS

    t0 = time.time()
    m = MUTANTS[mutant] if isinstance(mutant, str) else mutant
    res = MutantResult(m.name, m.op, m.description)
    if backend not in m.backends:
        res.verdict = SKIPPED
        res.reason = f"needs the {'/'.join(m.backends)} backend" + (f" (--preset {m.min_preset})" if m.min_preset else "")
        return res
    try:
        impl = implementation(m)
    except StalePatch as exc:
        res.verdict, res.reason = STALE, str(exc)
        return res
    except Exception as exc:  # a mutant that does not even import is a broken catalogue entry
        res.verdict, res.reason = ERROR, f"could not load: {type(exc).__name__}: {exc}"
        return res
    spec = SPECS[m.op]
    if progress is not None:
        progress.update(stage="running", mutant=m.name, dtype=None, params=None, n=0)
        spec = dataclasses.replace(spec, build=recording(spec.build, progress))
    wrap = wrap_candidate or (lambda f: f)
    cand = dataclasses.replace(impl.candidate(m.op), fn=wrap(impl.ops[m.op]))
    device = device_of(backend)
    dtypes, n = sweep_plan(m, spec, backend, cases)
    for dtype in dtypes:
        if progress is not None:
            progress.update(dtype=dtype, params=None, n=0)
        # the row's parts in turn, as check sweeps the row (harness.fuzz.sweep_parts)
        out = sweep_row(spec, cand, f"mutant:{m.name}", dtype, backend, device, n, seed, shapes=shapes,
                        preset=m.min_preset, database_dir=None, shrink=shrink and not _large(m),
                        repeat_probe_cases=repeat_probe_cases,
                        on_case=lambda r: _count(res, r, progress))
        res.swept[dtype] = out.passed + (1 if out.failure else 0)
        res.cases_run += res.swept[dtype]
        if out.failure:
            f = out.failure
            res.verdict, res.probe, res.dtype, res.case, res.message = KILLED, f.probe, dtype, f.params, f.message
            res.first_case = out.first_failure.params if out.first_failure else f.params
            res.control = run_control(m, f.params, backend, wrap, progress)
            if res.control != CASE_PASSED:
                res.verdict = INCONCLUSIVE
            break
    if not dtypes:
        res.verdict, res.reason = SKIPPED, f"no dtype of {m.op} runs on {backend}"
    res.seconds = round(time.time() - t0, 2)
    return res


def run_control(m: "Mutant", params: str, backend: str, wrap: Callable = lambda f: f, progress=None) -> str:
    """The control of mutant ``m``: the unpatched kernels (ours) on its killing case ``params``
    (CaseParams JSON), in this process. CASE_PASSED, or 'failed (<probe>): <message>'."""
    from .cases import CaseParams
    from .impls import load_implementation
    from .runner import run_case
    from .specs import SPECS

    if progress is not None:
        progress.update(stage="control", mutant=m.name, params=params)
    ours = load_implementation("ours")
    control = dataclasses.replace(ours.candidate(m.op), fn=wrap(ours.ops[m.op]))
    ctl = run_case(SPECS[m.op], control, CaseParams.from_json(params), device_of(backend), "ours")
    return CASE_PASSED if ctl.ok else f"{CASE_FAILED} ({ctl.probe}): {ctl.message[:200]}"


# ----------------------------------------------------------------------------- child process

def _child_main(folder: str, conn, backend: str, threads: int, gpu: Optional[int]):
    """Child (spawned): run the jobs the parent sends, one at a time, until it sends None: a
    mutant's sweep (answered with its MutantResult as a dict), or with "control" set, only the
    control on that killing case (answered with run_control's string)."""
    child = enter_child(folder, backend, gpu=gpu, threads=threads)
    backend, progress = child.backend, child.progress
    import torch

    from . import mutants
    mutants._TMP["dir"] = tempfile.mkdtemp(prefix="src-", dir=folder)  # patched modules: gone with the folder
    cuda = backend == "cuda"
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            break
        progress.update(stage="loading", mutant=job["mutant"].name, dtype=None, params=None, n=0)
        if cuda:
            torch.cuda.empty_cache()  # what the previous mutant cached; `large` cases need most of the card
        wrap = lambda f: guard(f, folder, cuda)  # noqa: E731
        try:
            if job.get("control"):
                answer = run_control(job["mutant"], job["control"], backend, wrap, progress)
            else:
                answer = asdict(run_mutant(job["mutant"], backend, job["cases"], job["seed"], job["shrink"],
                                           wrap_candidate=wrap, progress=progress,
                                           repeat_probe_cases=job.get("repeat_probe_cases"),
                                           shapes=job.get("shapes")))
        except Exception as exc:  # a device fault outside the candidate, or a harness error
            exit_on_error(folder, exc)
        progress.update(stage="idle", mutant=None, params=None)
        conn.send(answer)
    child.stderr.flush()


class _Worker:
    """One persistent child that runs mutants sent over a pipe (harness.supervise.Child)."""

    def __init__(self, backend: str, threads: int, gpu: Optional[int]):
        self.child = Child(_child_main, (backend, threads, gpu), name="moe-mutate", prefix="moe-mutate-", pipe=True,
                           daemon=True)

    @property
    def alive(self) -> bool:
        return self.child.alive

    def run(self, job: dict, case_timeout: Optional[float],
            on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> MutantResult:
        """Send one mutant; return its result, or a crash / timeout result (the child is then gone).
        ``on_progress`` gets each new progress record of the child while the mutant runs."""
        m = job["mutant"]
        t0 = time.time()
        waited = self._ask(job, case_timeout, on_progress)
        if waited.kind == MESSAGE:
            return MutantResult(**waited.message)
        return self._died(m, t0, waited)

    def control(self, m: "Mutant", params: str, case_timeout: Optional[float],
                on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> str:
        """Run mutant ``m``'s control on its killing case ``params`` (run_control) in this child:
        its answer, or 'crashed: <reason>' when the child died or hung (the child is then gone)."""
        t0 = time.time()
        waited = self._ask(dict(mutant=m, control=params), case_timeout, on_progress)
        if waited.kind == MESSAGE:
            return waited.message
        died = self._died(m, t0, waited)  # its control branch, or a death before the control began
        return died.control or f"{CASE_CRASHED}: {died.reason}"

    def _ask(self, job: dict, case_timeout: Optional[float],
             on_progress: Optional[Callable[[Dict[str, Any]], None]]) -> Waited:
        """Send ``job`` once the child has started; wait for its answer, its death or a stall."""
        if not self.child.started:  # its "ready"
            waited = self.child.wait(startup_s=STARTUP_LIMIT_S)
            if waited.kind != MESSAGE:
                return waited
        self.child.send(job)
        return self.child.wait(stall_s=case_timeout, on_progress=on_progress)

    def _died(self, m, t0: float, waited: Waited) -> MutantResult:
        death = self.child.death(waited)
        self.close()
        prog = death.progress
        res = MutantResult(m.name, m.op, m.description, seconds=round(time.time() - t0, 2))
        mine = prog.get("mutant") == m.name
        params = prog.get("params") if mine and prog.get("stage") == "running" else None
        res.reason = death.reason.splitlines()[0][:200]
        res.message = death.report()
        if mine and prog.get("stage") == "control":  # the unpatched kernels died on the mutant's killing case
            res.verdict, res.case = INCONCLUSIVE, prog.get("params") or ""
            res.control = f"{CASE_CRASHED}: {res.reason}"
        elif params and not death.harness_error:
            # the mutant crashed (or hung) the process inside a case: the harness caught it
            res.verdict, res.probe = KILLED, ("crash" if waited.kind == EXITED else "timeout")
            res.dtype, res.case, res.first_case = prog.get("dtype"), params, params
            res.cases_run = int(prog.get("n") or 0) + 1   # the dtype's finished cases, and the one in flight
        else:
            res.verdict = ERROR
            res.reason = f"child died outside a case ({prog.get('stage', 'starting')}): {res.reason}"
        return res

    def close(self):
        self.child.close()


def run_mutants(mutants: List[Union[str, "Mutant"]], backend: str, cases: int, seed: int, shrink: bool = True,
                jobs: int = 1, case_timeout: Optional[float] = 600.0, on_result: Optional[Callable[[MutantResult], None]] = None,
                gpu: Optional[int] = None, repeat_probe_cases: Optional[int] = None,
                shapes: Optional[int] = None,
                on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[MutantResult]:
    """Run the mutants (catalogue names or Mutant records) in ``jobs`` child processes at a
    time (each child runs mutants one after the other and is replaced after a crash).
    Results come back in the given order. Mutants that need --preset large run one at a
    time, last (each of their cases holds several GB). ``on_result`` gets each result as it
    arrives, ``on_progress`` each new progress record of a child (harness.supervise.Progress:
    stage, mutant, dtype, n), both from the worker threads."""
    from .mutants import MUTANTS
    todo = [MUTANTS[m] if isinstance(m, str) else m for m in mutants]
    jobs = max(1, min(jobs, len(todo) or 1))
    pending = deque(sorted(todo, key=_large))
    results: Dict[str, MutantResult] = {}
    lock, large_lock = threading.Lock(), threading.Lock()
    threads = max(1, (os.cpu_count() or 1) // jobs)

    def worker():
        child = None
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    m = pending.popleft()
                if child is None:
                    child = _Worker(backend, threads, gpu)
                job = dict(mutant=m, cases=cases, seed=seed, shrink=shrink, repeat_probe_cases=repeat_probe_cases,
                           shapes=shapes)
                with large_lock if _large(m) else contextlib.nullcontext():
                    res = child.run(job, case_timeout, on_progress)
                    if res.verdict == KILLED and res.control is None:
                        # killed by a crash or a hang: its child is gone, the control runs in a new one
                        t0 = time.time()
                        child = _Worker(backend, threads, gpu)
                        res.control = child.control(m, res.case, case_timeout, on_progress)
                        res.seconds = round(res.seconds + time.time() - t0, 2)
                        if res.control != CASE_PASSED:
                            res.verdict = INCONCLUSIVE
                if not child.alive:
                    child = None
                with lock:
                    results[m.name] = res
                if on_result:
                    on_result(res)
        finally:
            if child is not None:
                child.close()

    pool = [threading.Thread(target=worker, name=f"mutate-{i}", daemon=True) for i in range(jobs)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return [results[m.name] for m in todo]


# ----------------------------------------------------------------------------- command

class _InFlight:
    """The mutants in flight, for the command's periodic line: each one's last progress record
    from its child (stage, dtype, finished cases n), kept until its result arrives."""

    def __init__(self):
        self.records: Dict[str, Dict[str, Any]] = {}

    def update(self, record: Dict[str, Any]) -> None:
        if record.get("mutant"):
            self.records[record["mutant"]] = record

    def finished(self, name: str) -> None:
        self.records.pop(name, None)

    def describe(self) -> str:
        """'name [dtype] n case(s)' while sweeping, 'name (stage)' before (loading) or after
        (control: the unpatched kernels on the killing case), joined by '; '."""
        return "; ".join(f"{name} [{r.get('dtype')}] {int(r.get('n') or 0)} case(s)"
                         if r.get("stage") == "running" and r.get("dtype") else f"{name} ({r.get('stage')})"
                         for name, r in self.records.items())


def select(options: MutateOptions) -> List[str]:
    """Names of the catalogue's mutants that the options' ops and mutants select, in catalogue order."""
    from .mutants import CATALOGUE
    ops, mutants = options.ops, options.mutants
    return [m.name for m in CATALOGUE if (not ops or m.op in ops) and (not mutants or m.name in mutants)]


def _short_case(params: str) -> str:
    from .cases import CaseParams
    try:
        return CaseParams.from_json(params).short()
    except Exception:
        return params[:40]


def _cut(text: str, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n - 3] + "..."


def format_table(results: List[MutantResult]) -> str:
    head = (f"{'mutant':<34} {'op':<17} {'verdict':<12} {'probe':<16} {'failing case':<46} "
            f"{'description':<60} message")
    lines = [head, "-" * len(head)]
    for r in results:
        verdict = r.verdict if r.verdict != SKIPPED else f"{SKIPPED}({_cut(r.reason, 40)})"
        case = _short_case(r.case) if r.case else "-"
        msg = r.message if r.verdict in (KILLED, INCONCLUSIVE) else r.reason
        if r.verdict == INCONCLUSIVE:
            msg = f"control {r.control}"
        lines.append(f"{r.name:<34} {r.op:<17} {verdict:<12} {(r.probe or '-'):<16} {_cut(case, 46):<46} "
                     f"{_cut(r.description, 60):<60} {_cut(msg, 90)}")
    return "\n".join(lines)


def summary(results: List[MutantResult], backend: str) -> str:
    ran = [r for r in results if r.verdict != SKIPPED]
    killed = sum(r.verdict == KILLED for r in ran)
    rate = 100.0 * killed / len(ran) if ran else 100.0
    by = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    rest = ", ".join(f"{n} {v}" for v, n in by.items() if n and v != KILLED)
    return f"killed {killed} / {len(ran)} mutants ({rate:.1f}%) on {backend}" + (f"; {rest}" if rest else "")


def failed(results: List[MutantResult]) -> bool:
    return any(r.verdict not in VERDICTS_OK for r in results)


def _list(names: List[str]) -> int:
    from .mutants import MUTANTS, StalePatch, patched_source
    stale = 0
    for name in names:
        m = MUTANTS[name]
        state = "wrapper" if m.wrap else "applies"
        if not m.wrap:
            try:
                patched_source(m)
            except StalePatch:
                state, stale = STALE, stale + 1
        where = f"{m.module}.py" + (f":{m.function}" if m.function else "")
        extra = "".join([f" dtypes={','.join(m.dtypes)}" if m.dtypes else "",
                         f" backends={','.join(m.backends)}" if m.backends != ("cuda", "interpreter") else "",
                         f" preset={m.min_preset}" if m.min_preset else ""])
        print(f"{m.name:<34} {m.op:<17} {where:<26} {state:<8}{extra}\n    {m.description}")
    print(f"{len(names)} mutants" + (f", {stale} STALE" if stale else ""))
    return 1 if stale else 0


def _write_json(path: str, info: dict, options: MutateOptions, results: List[MutantResult], pending: List[str],
                backend: str) -> None:
    """The JSON record: ``complete`` is False and ``pending`` names the mutants not yet finished
    while the run goes on, so a run cut short by a time limit still leaves every verdict it reached."""
    write_json(path, {"environment": info, "cases": options.cases_for(backend), "profile": options.profile,
                      "seed": options.seed, "complete": not pending,
                      "pending": pending, "summary": summary(results, backend),
                      "mutants": [asdict(r) for r in results]})


def run_command(options: MutateOptions, backend: str) -> int:
    """Run the mutate command (or list the catalogue): progress, the table, the summary and the
    JSON record (rewritten as each mutant finishes). Exit status 1 when a mutant is neither KILLED
    nor skipped, or when every mutant was skipped (nothing was checked)."""
    names = select(options)
    if options.list_only:
        return _list(names)
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    jobs = options.jobs or max(1, min(4, os.cpu_count() or 1))
    tty = sys.stderr.isatty()
    t0, lock = time.time(), threading.Lock()
    done: List[MutantResult] = []
    in_flight = _InFlight()

    def head() -> str:
        killed = sum(r.verdict == KILLED for r in done)
        return f"[{time.time() - t0:6.1f}s] {len(done):3d}/{len(names)} mutants, {killed} killed"

    def on_progress(record: Dict[str, Any]):
        with lock:  # records arrive from the worker threads
            in_flight.update(record)

    def periodic_line() -> str:
        # a mutant of the large preset takes minutes on a GPU: the mutants in flight, between verdicts
        with lock:
            running = in_flight.describe()
            return head() + (f"; running: {running}" if running else "")

    def tick(res: MutantResult):
        with lock:  # results arrive from the worker threads
            done.append(res)
            in_flight.finished(res.name)
            if options.json_path:
                finished = {r.name for r in done}
                _write_json(options.json_path, info, options, done, [n for n in names if n not in finished], backend)
            if options.quiet:
                return
            if tty:  # one line, rewritten
                sys.stderr.write(f"\r{head()}  {res.name:<40.40}")
            else:    # logs: a line per mutant, so a run cut short still shows how far it got
                sys.stderr.write(f"{head()}: {res.name} {res.verdict}\n")
            sys.stderr.flush()

    if options.json_path:  # an empty record first: a run killed before any verdict still says what was pending
        _write_json(options.json_path, info, options, [], list(names), backend)
    from .profiles import PROFILES, palette_size
    with periodic_lines(periodic_line, tty, 0 if options.quiet else None):
        results = run_mutants(names, backend, options.cases_for(backend), options.seed, shrink=options.shrink,
                              jobs=jobs, repeat_probe_cases=PROFILES[options.profile].repeat_probes_for(backend),
                              shapes=palette_size(options.profile, backend, options.cases),
                              case_timeout=options.case_timeout_s or None, on_result=tick, on_progress=on_progress)
    if tty and not options.quiet:
        sys.stderr.write("\n")
    print(format_table(results))
    print(summary(results, backend) + f" in {time.time() - t0:.0f} s ({options.cases_for(backend)} fuzzed cases per dtype"
          f"{'' if options.cases else ' (profile ' + options.profile + ')'}, "
          f"seed {options.seed})")
    if options.json_path:  # the final record, in catalogue order
        _write_json(options.json_path, info, options, results, [], backend)
    if not failed(results) and all(r.verdict == SKIPPED for r in results):
        print(f"moe-harness mutate: {NO_MUTANT_RAN}", file=sys.stderr)
        return 1
    return 1 if failed(results) else 0
