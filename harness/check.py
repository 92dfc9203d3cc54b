"""``moe-harness check``: prove implementations equal to the references on fuzzed routings."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from .backend import describe, device_of
from .cases import CaseParams
from .fuzz import PRESETS, large_shape_ops
from .records import write_json


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
    status: str = "passed"      # passed | FAILED | skipped | not provided | CRASHED
    reason: str = ""
    worst: Dict[str, dict] = field(default_factory=dict)
    failure: Optional[dict] = None
    replay: str = ""
    saved_inputs: str = ""
    seconds: float = 0.0        # wall time of the sweep (cases per minute = 60 * run / seconds)


def replay_command(impl: str, backend: str, params_json: str) -> str:
    return f"moe-harness check --backend {backend} --impl {shlex.quote(impl)} --case {shlex.quote(params_json)}"


def add_parser(sub):
    p = sub.add_parser("check", help="fuzz every op of the chosen implementations against the references",
                       description="Fuzz routings and compare implementations with the references, probing "
                                   "unwritten outputs, writes out of bounds, modified inputs and nondeterminism.")
    p.add_argument("--op", nargs="+", help="ops to check (default: all)")
    from .impls import SOURCE_HELP
    p.add_argument("--impl", nargs="+", default=["ours"], help=SOURCE_HELP)
    p.add_argument("--block-size", type=int, help="BLOCK_SIZE that sglang: raw kernels are launched with "
                                                  "(default: 512, as SGLang's EP layer)")
    p.add_argument("--dtype", nargs="+", help="dtypes to check (default: every dtype of each op)")
    p.add_argument("--cases", type=int, default=50, help="fuzzed cases per op, implementation and dtype")
    p.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    p.add_argument("--preset", choices=PRESETS,
                   help="fix the model shape (SPEC.md); 'large' (GPU): buffers past 2**31 elements")
    p.add_argument("--case", help="run exactly this case (the JSON of a replay command)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case without shrinking it")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="run each (implementation, op) in a child process, so that a GPU fault, a segmentation "
                        "fault or a hang is reported as CRASHED and the run goes on (default: on)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one (implementation, op) group may run in its child process (default 1800)")
    p.add_argument("--case-timeout", type=float, default=600.0,
                   help="seconds one case may run before the child is taken for hung (default 600; 0: no limit)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="child processes at once (default: one per GPU); above that, each (implementation, op, "
                        "dtype) gets its own child, spread round-robin over the GPUs")
    p.add_argument("--chunk", type=int, default=0, metavar="N",
                   help="split each (implementation, op, dtype) sweep into child processes of N cases each, with "
                        "seeds derived from --seed and the chunk's index, merged into one row; the cases depend on "
                        "--chunk, not on --gpus or --jobs (default 0: one sweep of --cases per row; needs --isolate)")
    p.add_argument("--gpus", default="1", metavar="N|all",
                   help="spread the (implementation, op) groups over N GPUs (or all), one child process per "
                        "GPU at a time; same cases, report and exit status as on one GPU (needs --isolate)")
    p.set_defaults(run=main)
    return p


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


def op_dtypes(args, op: str, single: Optional[CaseParams]) -> List[str]:
    """The dtypes of one op that a run checks (--dtype filters, --case fixes one)."""
    from .specs import SPECS
    spec = SPECS[op]
    return [single.dtype] if single else [d for d in (getattr(args, "dtype", None) or spec.dtypes)
                                          if d in spec.dtypes]


def check_one(args, backend: str, impl, impl_src: str, op: str, dtype: str, single: Optional[CaseParams] = None,
              tick=None, spec=None) -> Row:
    """Check one (implementation, op, dtype) in this process: a sweep of args.cases cases, or the
    single case. ``spec`` replaces SPECS[op] (the isolation child records each case it builds)."""
    from .fuzz import sweep
    from .runner import run_case, save_failure
    from .specs import SPECS

    device = device_of(backend)
    spec = spec or SPECS[op]
    row = Row(op, impl.name, dtype)
    if op not in impl.ops:
        row.status, row.reason = "not provided", impl.notes.get(op, "")
        return row
    reason = spec.skip_reason(backend, dtype)
    if reason:
        row.status, row.reason, row.skipped = "skipped", reason, 1
        return row
    cand = impl.candidate(op)
    t0 = time.perf_counter()
    if single:
        res = run_case(spec, cand, single, device, impl.name)
        row.run, failure = 1, (None if res.ok else res)
        row.passed = int(res.ok)
        # a failure's details are the probe's (an error's, a mismatch's), not per-output errors
        row.worst = {k: {"max_abs_err": v["max_abs_err"]} for k, v in res.details.items()} if res.ok else {}
    else:
        out = sweep(spec, cand, impl.name, dtype, backend, device, args.cases, args.seed,
                    preset=getattr(args, "preset", None), shrink=not getattr(args, "no_shrink", False),
                    on_case=(lambda r: tick(f"{r.op} {r.impl} {r.dtype}")) if tick else None)
        failure = out.failure
        row.passed, row.worst = out.passed, out.worst
        row.run = out.passed + (1 if failure else 0)
    row.seconds = round(time.perf_counter() - t0, 2)
    if failure:
        row.failed, row.status = 1, "FAILED"
        row.failure = failure.to_dict()
        row.replay = replay_command(impl_src, backend, failure.params)
        try:
            row.saved_inputs = save_failure(failure, spec, device)
        except Exception as exc:  # saving is a convenience; never hide the failure
            row.saved_inputs = f"(not saved: {exc})"
    return row


def run_check(args, backend: str) -> List[Row]:
    from .impls import load_implementation, parse_source
    from .specs import SPECS

    ops = args.op or (large_shape_ops() if args.preset == "large" else list(SPECS))
    for op in ops:
        if op not in SPECS:
            raise SystemExit(f"--op: expected one of {sorted(SPECS)}, got {op!r}")
    rows: List[Row] = []
    tick, done = _progress(not args.quiet and sys.stderr.isatty())
    single = CaseParams.from_json(args.case) if args.case else None
    if single:
        ops = [single.op]
    isolate = getattr(args, "isolate", False)
    chunk = getattr(args, "chunk", 0) or 0
    if chunk < 0:
        raise SystemExit(f"--chunk: expected a number of cases >= 0 (0: no chunks), got {chunk}")
    if chunk and not isolate:
        raise SystemExit("--chunk: chunks run in child processes; it needs --isolate (the default), "
                         "not --no-isolate")
    groups: List[Tuple[str, str]] = []  # (implementation, op) groups for child processes
    for impl_src in args.impl:
        try:
            parse_source(impl_src)
        except ValueError as exc:
            raise SystemExit(f"--impl: {exc}")
        if isolate:
            # Each (implementation, op) in a child process: faults and hangs become CRASHED rows.
            groups.extend((impl_src, op) for op in ops)
            continue
        impl = load_implementation(impl_src, block_size=getattr(args, "block_size", None))
        for op in ops:
            for dtype in op_dtypes(args, op, single):
                rows.append(check_one(args, backend, impl, impl_src, op, dtype, single, tick))
    if groups:
        rows.extend(_run_groups(args, backend, groups, single, tick))
    done()
    return rows


def gpu_count(requested: Optional[str], backend: str) -> int:
    """--gpus N|all -> how many GPUs the sweep spreads over (1 on the interpreter)."""
    if backend != "cuda" or requested in (None, "1"):
        return 1
    import torch
    visible = torch.cuda.device_count()
    n = visible if requested == "all" else int(requested)
    if not 1 <= n <= visible:
        raise SystemExit(f"--gpus: expected 'all' or a count in [1, {visible}], got {requested!r}")
    return n


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
    bad = [p for p in parts if p.status in ("FAILED", "CRASHED")]
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


def _run_groups(args, backend: str, groups, single, tick) -> List[Row]:
    """Run the groups in child processes, one at a time per GPU; rows come back in group order,
    so the report and exit status do not depend on how many GPUs ran them."""
    import copy
    from concurrent.futures import ThreadPoolExecutor, as_completed
    from queue import Queue

    from .isolate import run_group
    n = gpu_count(getattr(args, "gpus", None), backend)
    jobs = max(1, getattr(args, "jobs", None) or n)
    work = [(impl_src, op, op_dtypes(args, op, single)) for impl_src, op in groups]
    plan = [(args.cases, args.seed)] if single else chunk_plan(args.cases, getattr(args, "chunk", 0) or 0, args.seed)
    if jobs > len(work) or len(plan) > 1:  # more children than groups: one child per dtype (and chunk)
        work = [(impl_src, op, [d]) for impl_src, op, dtypes in work for d in dtypes]
    items = [(w, c) for w in work for c in range(len(plan))]
    free: "Queue[Optional[int]]" = Queue()
    for i in range(jobs):
        free.put(i % n if n > 1 else None)

    def run(item):
        (impl_src, op, dtypes), c = item
        sub = args
        if len(plan) > 1:
            sub = copy.copy(args)
            sub.cases, sub.seed = plan[c]
        gpu = free.get()
        try:
            return run_group(sub, backend, impl_src, op, dtypes, tick=tick, gpu=gpu)
        finally:
            free.put(gpu)

    on_rows = getattr(args, "on_rows", None)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run, item) for item in items]
        if on_rows:  # report each group as it finishes (partial JSON survives a killed run)
            for fut in as_completed(futures):
                on_rows(fut.result())
        return merge_chunks([r for fut in futures for r in fut.result()])


def format_table(rows: List[Row]) -> str:
    head = f"{'op':<18} {'impl':<10} {'dtype':<10} {'run':>5} {'pass':>5} {'fail':>4} {'skip':>4}  {'worst |err|':>11}  status"
    lines = [head, "-" * len(head)]
    for r in rows:
        worst = max((v["max_abs_err"] for v in r.worst.values()), default=None)
        w = f"{worst:11.3g}" if worst is not None else f"{'exact' if r.passed else '-':>11}"
        status = r.status + (f" ({r.reason})" if r.reason else "")
        lines.append(f"{r.op:<18} {r.impl:<10} {r.dtype:<10} {r.run:>5} {r.passed:>5} {r.failed:>4} {r.skipped:>4}  "
                     f"{w}  {status}")
    return "\n".join(lines)


def format_failures(rows: List[Row]) -> str:
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


def main(args, backend: str) -> int:
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    t0 = time.perf_counter()
    if args.json:
        done_rows: List[Row] = []

        def on_rows(rows_done):
            done_rows.extend(rows_done)
            write_json(args.json, {"environment": info, "complete": False, "wall_s": round(time.perf_counter() - t0, 1),
                                   "rows": [asdict(r) for r in merge_chunks(done_rows)]})
        args.on_rows = on_rows
    rows = run_check(args, backend)
    wall = time.perf_counter() - t0
    cases = sum(r.run for r in rows)
    throughput = {"cases": cases, "wall_s": round(wall, 1), "cases_per_minute": round(60 * cases / max(wall, 1e-9), 1),
                  "gpus": gpu_count(getattr(args, "gpus", None), backend), "jobs": getattr(args, "jobs", None)}
    print(format_table(rows))
    print(format_failures(rows))
    print(f"{cases} cases in {wall:.1f} s: {throughput['cases_per_minute']} cases per minute "
          f"on {throughput['gpus']} GPU(s)" if backend == "cuda" else f"{cases} cases in {wall:.1f} s")
    if args.json:
        write_json(args.json, {"environment": info, "complete": True, "throughput": throughput,
                               "rows": [asdict(r) for r in rows]})
    return 1 if any(r.status in ("FAILED", "CRASHED") for r in rows) else 0
