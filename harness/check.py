"""``moe-harness check``: prove implementations equal to the references on fuzzed routings.

The engine of the command (its command line is harness.commands.check): ``run_check`` checks
what a CheckOptions selects, in this process or in isolated children (harness.isolate), and
``run_command`` prints the table and writes the JSON record."""
from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

from .backend import describe
from .isolate import RowWorker, run_group
from .specs import SPECS
from .options import CheckOptions, gpu_count
from .progress import PROGRESS_EVERY_S, periodic_lines, write_line
from .records import write_json
from .report import Row, format_failures, format_table, merge_tallies, merge_worst
from .row_check import check_one, nothing_compared_status, row_note
from .status import FAILING, NOTHING_CHECKED, PASSED, exit_code, nothing_checked


class LiveProgress:
    """What the check is doing, on stderr (nothing with ``enabled`` False):

    - a line per finished row, whether or not stderr is a terminal (a CI log shows the run as
      it goes): op, implementation, dtype, status, cases and seconds;
    - every ``every_s`` seconds a line with the rows in flight and their cases so far, and the
      rows done of all (a long row, 40 s of GEMM cases on the interpreter, is not silence);
    - on a terminal, also a line rewritten at each case.

    ``case(op, impl, dtype, n)`` is told of each case (n: that row's cases so far, None: one more)."""

    def __init__(self, enabled: bool, total_rows: int, every_s: float = PROGRESS_EVERY_S,
                 on_rows: Optional[Callable[[List[Row]], None]] = None):
        self.enabled, self.total, self.every_s, self.on_rows = enabled, total_rows, every_s, on_rows
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.time()
        self.lock = threading.Lock()
        # (op, impl, dtype) -> its pieces' cases so far (piece: a chunk or part run apart; None: the row)
        self.in_flight: Dict[Tuple[str, str, str], Dict[object, int]] = {}
        self.rows_done = self.cases = 0
        # (op, impl, dtype) -> how many pieces (chunks, parts) of the row run apart, and how many are in
        self.pieces: Dict[Tuple[str, str, str], int] = {}
        self.pieces_in: Dict[Tuple[str, str, str], int] = {}

    def _write(self, text: str) -> None:
        write_line(text, self.tty)

    def case(self, op: str, impl: str, dtype: str, n: Optional[int] = None, piece: object = None) -> None:
        with self.lock:
            pieces = self.in_flight.setdefault((op, impl, dtype), {})
            before = pieces.get(piece, 0)
            now = before + 1 if n is None else n
            pieces[piece] = now
            self.cases += max(0, now - before)
            if self.tty:
                sys.stderr.write(f"\r[{time.time() - self.t0:6.1f}s] {self.cases:6d} cases  "
                                 f"{op} [{impl}, {dtype}] case {sum(pieces.values()):<20}")
                sys.stderr.flush()

    def expect_pieces(self, op: str, impl: str, dtype: str, n: int) -> None:
        """The row (op, impl, dtype) comes back in ``n`` pieces (chunks or parts run apart): it
        counts as done when all are in, and each piece's line says which it is."""
        self.pieces[(op, impl, dtype)] = n

    def finished(self, rows: List[Row]) -> None:
        with self.lock:
            for r in rows:
                key = (r.op, r.impl, r.dtype)
                n = self.pieces.get(key, 1)
                k = self.pieces_in[key] = self.pieces_in.get(key, 0) + 1
                if k == n:   # a finished piece's cases still count for the row until its last piece
                    self.rows_done += 1
                    self.in_flight.pop(key, None)
                if self.enabled:
                    self._write(f"[{time.time() - self.t0:7.1f}s] {r.op} [{r.impl}, {r.dtype}]"
                                + (f" part {k}/{n}" if n > 1 else "")
                                + f": {r.status}, {r.run} case(s) in {r.seconds:.1f} s")
        if self.on_rows:
            self.on_rows(rows)

    def periodic_line(self) -> str:
        with self.lock:
            flight = "; ".join(f"{op} [{impl}, {dtype}] {sum(pieces.values())} case(s)"
                               for (op, impl, dtype), pieces in self.in_flight.items())
            return (f"[{time.time() - self.t0:7.1f}s] {self.rows_done}/{self.total} rows done"
                    + (f"; running: {flight}" if flight else ""))

    def __enter__(self) -> "LiveProgress":
        self._periodic = periodic_lines(self.periodic_line, self.tty, self.every_s if self.enabled else 0)
        self._periodic.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._periodic.__exit__(*exc)
        if self.tty:
            sys.stderr.write("\n")


def run_check(options: CheckOptions, backend: str,
              on_rows: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    """Check every (implementation, op, dtype) the options select; rows in that order.

    With ``options.isolate`` each (implementation, op) runs in child processes, and
    ``on_rows`` gets each group's rows as the group finishes (in finishing order)."""
    from .impls import load_implementation, prepare_sources
    from .sglang.release import ReleaseError

    try:  # sglang==VERSION releases fetched (or --sglang-wheel files registered) once, before any child starts
        prepare_sources(options.impls, options.sglang_wheels)
    except ReleaseError as exc:
        raise SystemExit(f"--impl: {exc}") from None
    ops = options.selected_ops()
    single = options.single_case()
    rows: List[Row] = []
    total = sum(len(options.dtypes_of(op)) for op in ops) * len(options.impls)
    with LiveProgress(not options.quiet, total, on_rows=on_rows) as live:
        if options.isolate:
            # Each row in a child process (warm, reused): faults and hangs become CRASHED rows.
            groups = [(impl_src, op) for impl_src in options.impls for op in ops]
            rows.extend(_run_groups(options, backend, groups, live))
        else:
            budget = _Budget(options, total, 1)
            for impl_src in options.impls:
                impl = load_implementation(impl_src, block_size=options.block_size)
                for op in ops:
                    for dtype in options.dtypes_of(op):
                        rows.append(check_one(budget.options_for_next_row(), backend, impl, impl_src, op, dtype,
                                              single, live.case))
                        live.finished(rows[-1:])
    return rows


class _Budget:
    """--budget: each row, when it starts, gets a deadline of an equal share of the time left
    among the rows left, over the parallel slots (rows that finish early leave their time to
    the rows after them). Without a budget, the options unchanged."""

    def __init__(self, options: CheckOptions, rows: int, slots: int):
        self.options, self.left, self.slots = options, rows, max(1, slots)
        self.end = time.time() + options.budget_s if options.budget_s else None
        self.lock = threading.Lock()

    def options_for_next_row(self) -> CheckOptions:
        if self.end is None:
            return self.options
        with self.lock:
            now = time.time()
            share = max(0.0, self.end - now) * min(self.slots, self.left) / max(1, self.left)
            self.left -= 1
        return dataclasses.replace(self.options, deadline=now + share)


def chunk_plan(cases: int, chunk: int, seed: int) -> List[Tuple[int, int]]:
    """(cases, seed) of each chunk of a sweep of ``cases`` cases split ``chunk`` at a time.

    Chunk i draws its cases with seed ``seed * CHUNK_SEED_STRIDE + i``, so two chunks (and two
    runs with different --seed) never share a Hypothesis seed, and the plan depends only on
    (cases, chunk, seed): the same cases on any number of GPUs or jobs."""
    if chunk <= 0 or cases <= chunk:
        return [(cases, seed)]
    n = -(-cases // chunk)
    return [(min(chunk, cases - i * chunk), seed * CHUNK_SEED_STRIDE + i) for i in range(n)]


CHUNK_SEED_STRIDE = 1_000_003


def merge_rows(parts: List[Row]) -> Row:
    """One row from the rows of a sweep's chunks: counts and seconds add up, the worst error
    is the largest, the first failing chunk's failure (and replay) is kept."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    row = Row(first.op, first.impl, first.dtype)
    for part in parts:
        row.run += part.run
        row.passed += part.passed
        row.failed += part.failed
        row.skipped += part.skipped
        row.seconds = round(row.seconds + part.seconds, 2)
        merge_worst(row.worst, part.worst)
    bad = [p for p in parts if p.status in FAILING]
    pick = bad[0] if bad else first
    row.status, row.reason = pick.status, pick.reason
    row.failure, row.replay, row.saved_inputs = pick.failure, pick.replay, pick.saved_inputs
    if all(p.tally for p in parts):   # the note of the whole row (a crashed piece keeps its reason)
        row.tally = merge_tallies(p.tally for p in parts)
        row.reason = row_note(row.tally, row.run)
        if not bad:
            row.status = PASSED if row.passed else nothing_compared_status(row.tally, first.status)
    return row


def merge_chunks(rows: List[Row]) -> List[Row]:
    """Rows of the same (implementation, op, dtype) merged into one, in first-seen order."""
    by_key: Dict[Tuple[str, str, str], List[Row]] = {}
    for r in rows:
        by_key.setdefault((r.impl, r.op, r.dtype), []).append(r)
    return [merge_rows(parts) for parts in by_key.values()]


def _run_groups(options: CheckOptions, backend: str, groups, live: LiveProgress) -> List[Row]:
    """Run the groups' rows in warm child processes, --jobs at a time spread over the GPUs; rows
    come back in group order, so the report and exit status do not depend on how many GPUs or
    jobs ran them."""
    from concurrent.futures import ThreadPoolExecutor, as_completed
    from queue import Queue

    from .fuzz import sweep_parts
    from .impls import short_name

    n = gpu_count(options.gpus, backend)
    jobs = options.jobs or default_jobs(backend, n, options.preset)
    cases = options.cases_for(backend)
    plan = [(cases, options.seed)] if options.case is not None else chunk_plan(cases, options.chunk, options.seed)

    def parts(op: str) -> List[Optional[int]]:
        """The row's parts run apart (harness.fuzz.sweep_parts; [None]: the row whole)."""
        if options.case is not None or len(plan) > 1:
            return [None]
        count = len(sweep_parts(SPECS[op], cases, options.seed, options.shapes(backend)))
        return list(range(count)) if count > 1 else [None]

    # one item per row (and chunk or part): warm children make a row's own item cheap, and rows
    # of one op then run side by side
    op_parts = {op: parts(op) for _, op in groups}
    items = [((impl_src, op, [d]), c, p) for impl_src, op in groups for d in options.dtypes_of(op)
             for c in range(len(plan)) for p in op_parts[op]]
    pieces = collections.Counter((op, short_name(impl_src), d) for (impl_src, op, (d,)), _, _ in items)
    for (op, impl, d), count in pieces.items():
        live.expect_pieces(op, impl, d, count)
    budget = _Budget(options, len(items), jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    slots: "Queue[RowWorker]" = Queue()
    workers = [RowWorker(backend, i % n if n > 1 else None, threads) for i in range(jobs)]
    for w in workers:
        slots.put(w)

    def run(item):
        (impl_src, op, dtypes), c, part = item
        worker = slots.get()
        try:
            if options.budget_s:
                worker.ready()  # a row's share of the budget starts after its child's imports
            row_options = budget.options_for_next_row()
            if len(plan) > 1:
                row_options = dataclasses.replace(row_options, cases=plan[c][0], seed=plan[c][1])
            if part is not None:
                row_options = dataclasses.replace(row_options, part=part)
            return run_group(row_options, backend, impl_src, op, dtypes, worker=worker,
                             tick=lambda *a: live.case(*a, piece=(c, part)))
        finally:
            slots.put(worker)

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [None] * len(items)
            for i in start_order([op for (_, op, _), _, _ in items]):
                futures[i] = pool.submit(run, items[i])
            for fut in as_completed(futures):   # each row as it finishes (partial JSON survives a killed run)
                live.finished(fut.result())
            return merge_chunks([r for fut in futures for r in fut.result()])
    finally:
        for w in workers:   # all asked first: 16 CUDA children ending one after the other took 9 s
            w.request_exit()
        for w in workers:
            w.close()


def start_order(ops: List[str]) -> List[int]:
    """The order in which rows of these ops start (indices into ``ops``): costliest first by the
    records' case_cost, record order among equals; results still come back in record order."""
    return sorted(range(len(ops)), key=lambda i: -SPECS[ops[i]].case_cost)


def default_jobs(backend: str, gpus: int, preset: Optional[str]) -> int:
    """Child processes at once when --jobs is not given: one per core on the interpreter; on
    GPUs several per card (a case is mostly host work: building inputs, launching, comparing;
    a cold run is Triton compiling, on the host's cores): one per core up to MAX_JOBS_PER_GPU
    per card, but one per card for the `large` preset (each case fills most of a card)."""
    cores = os.cpu_count() or 1
    if backend != "cuda":
        return cores
    return gpus if preset == "large" else max(gpus, min(MAX_JOBS_PER_GPU * gpus, cores))


# One H100 host of 16 cores: 16 children ran the 2,000-case sweep at 79 cases/s where 8 ran the
# default check at 52 (results/2026-12-06-s14-h100). A host of 8 cards and 128 cores runs 128.
MAX_JOBS_PER_GPU = 16


def run_command(options: CheckOptions, backend: str) -> int:
    """Run the check command: the environment line, the table, the failures and the JSON record
    (rewritten as groups finish). Exit status (harness.status.exit_code): 0 only when nothing
    failed and something was checked."""
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    t0 = time.perf_counter()
    done_rows: List[Row] = []

    def record_partial(rows_done: List[Row]) -> None:
        """The JSON record so far (``complete`` False): a run cut short keeps the rows it reached."""
        done_rows.extend(rows_done)
        write_json(options.json_path, {"environment": info, "complete": False,
                                       "wall_s": round(time.perf_counter() - t0, 1),
                                       "rows": [asdict(r) for r in merge_chunks(done_rows)]})
    rows = run_check(options, backend, on_rows=record_partial if options.json_path else None)
    wall = time.perf_counter() - t0
    cases = sum(r.run for r in rows)
    throughput = {"cases": cases, "wall_s": round(wall, 1), "cases_per_minute": round(60 * cases / max(wall, 1e-9), 1),
                  "gpus": gpu_count(options.gpus, backend), "jobs": options.jobs}
    print(format_table(rows))
    print(format_failures(rows))
    print(f"{cases} cases in {wall:.1f} s: {throughput['cases_per_minute']} cases per minute "
          f"on {throughput['gpus']} GPU(s)" if backend == "cuda" else f"{cases} cases in {wall:.1f} s")
    if options.json_path:
        write_json(options.json_path, {"environment": info, "complete": True, "throughput": throughput,
                                       "rows": [asdict(r) for r in rows]})
    statuses = [r.status for r in rows]
    if nothing_checked(statuses):  # a green run that compared nothing is a false pass
        print(f"moe-harness check: {NOTHING_CHECKED} ({len(rows)} row(s))", file=sys.stderr)
    return exit_code(statuses)
