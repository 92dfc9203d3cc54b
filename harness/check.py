"""``moe-harness check``: prove implementations equal to the references on fuzzed routings.

The engine of the command (its command line is harness.commands.check): ``run_check`` checks
what a CheckOptions selects, in this process or in isolated children (harness.isolate), and
``run_command`` prints the table and writes the JSON record."""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

from .backend import describe
from .isolate import run_group
from .options import CheckOptions, gpu_count
from .records import write_json
from .report import Row, format_failures, format_table
from .row_check import check_one
from .status import FAILING, NOTHING_CHECKED, exit_code, nothing_checked


def _progress(enabled: bool):
    state = {"n": 0, "t0": time.time()}

    def tick(label: str):
        state["n"] += 1
        if enabled:
            sys.stderr.write(f"\r[{time.time() - state['t0']:6.1f}s] {state['n']:6d} cases  {label:<60.60}")
            sys.stderr.flush()

    def done():
        if enabled:
            sys.stderr.write("\n")
    return tick, done


def _row_lines(enabled: bool, on_rows: Optional[Callable[[List[Row]], None]]):
    """on_rows, plus one line per finished row on stderr (whether or not it is a terminal, so a
    CI log shows the run going on): op, implementation, dtype, status, cases and seconds."""
    t0 = time.time()

    def finished(rows: List[Row]) -> None:
        if enabled:
            for r in rows:
                sys.stderr.write(f"\n[{time.time() - t0:7.1f}s] {r.op} [{r.impl}, {r.dtype}]: {r.status}, "
                                 f"{r.run} case(s) in {r.seconds:.1f} s\n")
            sys.stderr.flush()
        if on_rows:
            on_rows(rows)
    return finished


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
    tick, done = _progress(not options.quiet and sys.stderr.isatty())
    finished = _row_lines(not options.quiet, on_rows)
    if options.isolate:
        # Each (implementation, op) in a child process: faults and hangs become CRASHED rows.
        groups = [(impl_src, op) for impl_src in options.impls for op in ops]
        rows.extend(_run_groups(options, backend, groups, tick, finished))
    else:
        for impl_src in options.impls:
            impl = load_implementation(impl_src, block_size=options.block_size)
            for op in ops:
                for dtype in options.dtypes_of(op):
                    rows.append(check_one(options, backend, impl, impl_src, op, dtype, single, tick))
                    finished(rows[-1:])
    done()
    return rows


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
        for name, w in part.worst.items():
            if name not in row.worst or w["max_abs_err"] > row.worst[name]["max_abs_err"]:
                row.worst[name] = w
    bad = [p for p in parts if p.status in FAILING]
    pick = bad[0] if bad else first
    row.status, row.reason = pick.status, pick.reason
    row.failure, row.replay, row.saved_inputs = pick.failure, pick.replay, pick.saved_inputs
    return row


def merge_chunks(rows: List[Row]) -> List[Row]:
    """Rows of the same (implementation, op, dtype) merged into one, in first-seen order."""
    by_key: Dict[Tuple[str, str, str], List[Row]] = {}
    for r in rows:
        by_key.setdefault((r.impl, r.op, r.dtype), []).append(r)
    return [merge_rows(parts) for parts in by_key.values()]


def _run_groups(options: CheckOptions, backend: str, groups, tick, on_rows) -> List[Row]:
    """Run the groups in child processes, one at a time per GPU; rows come back in group order,
    so the report and exit status do not depend on how many GPUs ran them."""
    from concurrent.futures import ThreadPoolExecutor, as_completed
    from queue import Queue

    n = gpu_count(options.gpus, backend)
    jobs = options.jobs or n
    work = [(impl_src, op, list(options.dtypes_of(op))) for impl_src, op in groups]
    plan = [(options.cases, options.seed)] if options.case is not None else \
        chunk_plan(options.cases, options.chunk, options.seed)
    if jobs > len(work) or len(plan) > 1:  # more children than groups: one child per dtype (and chunk)
        work = [(impl_src, op, [d]) for impl_src, op, dtypes in work for d in dtypes]
    items = [(w, c) for w in work for c in range(len(plan))]
    free: "Queue[Optional[int]]" = Queue()
    for i in range(jobs):
        free.put(i % n if n > 1 else None)

    def run(item):
        (impl_src, op, dtypes), c = item
        chunk_options = options
        if len(plan) > 1:
            cases, seed = plan[c]
            chunk_options = dataclasses.replace(options, cases=cases, seed=seed)
        gpu = free.get()
        try:
            return run_group(chunk_options, backend, impl_src, op, dtypes, tick=tick, gpu=gpu)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run, item) for item in items]
        if on_rows:  # report each group as it finishes (partial JSON survives a killed run)
            for fut in as_completed(futures):
                on_rows(fut.result())
        return merge_chunks([r for fut in futures for r in fut.result()])


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
