"""``moe-harness releases``: SGLang's releases side by side, op x release, and the bisection of
one op's verdict over the releases the package index serves.

The engine of the command (its command line is harness.commands.releases). For each release,
``check_release`` runs the check engine (harness.check.run_check: child processes per
(implementation, op), as ``moe-harness check`` does) on ``sglang==VERSION`` for the ops the
release provides; the ops it does not provide (or cannot be bound) get their rows in this
process without a child. The rows of one (op, release) make a ``Cell``; the cells make a
``Matrix``, printed as a table, written as JSON (``Matrix.to_dict``) and as a PNG heatmap.

A cell's status is that of its worst dtype (CRASHED, FAILED, passed, REJECTED,
NOT_COMPUTABLE, skipped; UNBINDABLE and not provided hold for every dtype of an op), shown
with the failing probe and, when dtypes differ, how many of them have it ("FAILED (tolerance)
2/3"); ``unavailable``: the release could not be fetched or has no EP-MoE kernel file. A
failing cell keeps its first failing dtype's minimal case, message and replay command.

Exit status (``matrix_exit_code``): a matrix with FAILED or CRASHED cells is a finding, not a
failure of the command, so it exits 0 when every requested release was checked and at least
one cell compared something; 1 when nothing was checked at all (every cell not provided,
unbindable, skipped or not computable, or no release available); 3 when some release was
unavailable (the others are still tabulated). The bisection exits 0 when both endpoints got
a verdict (whether or not it changed), else 1.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .backend import describe
from .options import ReleasesOptions
from .records import write_json
from .report import Row
from .status import CHECKED, CRASHED, FAILED, NOT_COMPUTABLE, NOT_PROVIDED, PASSED, REJECTED, SKIPPED, UNBINDABLE

# A representative list from 0.4.x to the newest: the two kernel-file layouts (0.5.16 moved
# it), the new parameters of 0.4.8 .. 0.4.10, 0.5.x's conventions, and the expert-0 gate bug
# of 0.5.3.post1 .. 0.5.12.post1 on both sides (0.5.1 before, 0.5.5 and 0.5.9 inside, 0.5.13
# after; --bisect found both ends).
DEFAULT_RELEASES: Tuple[str, ...] = ("0.4.6.post1", "0.4.8", "0.4.10.post2", "0.5.1", "0.5.5", "0.5.9", "0.5.13",
                                     "0.5.16", "0.5.23")

UNAVAILABLE = "unavailable"
# Which dtype's status a cell shows: the first of these present (op-level statuses last).
CELL_ORDER: Tuple[str, ...] = (CRASHED, FAILED, PASSED, REJECTED, NOT_COMPUTABLE, SKIPPED, UNBINDABLE, NOT_PROVIDED,
                               UNAVAILABLE)
# Exit status when some release could not be fetched or loaded but others were tabulated.
EXIT_RELEASE_UNAVAILABLE = 3


@dataclass
class Cell:
    """One op in one release (JSON-safe): the shown ``status``, each dtype's row status, the
    reason (a not-provided or unbindable note, or the failing message), the cases run, and
    for a FAILED or CRASHED cell the first failing dtype's probe, case, replay and saved inputs."""

    op: str
    release: str
    status: str
    label: str
    dtypes: Dict[str, str] = field(default_factory=dict)
    cases: int = 0
    reason: str = ""
    failing_dtype: str = ""
    probe: str = ""
    case: str = ""
    replay: str = ""
    saved_inputs: str = ""


@dataclass
class Column:
    """One release: where its kernel file was found, how long its check took, or why it is unavailable."""

    release: str
    kernel_path: str = ""
    available: bool = True
    error: str = ""
    seconds: float = 0.0


@dataclass
class Matrix:
    """The op x release matrix: columns in the requested order, a cell per (op, release)."""

    ops: List[str]
    columns: List[Column]
    cells: Dict[Tuple[str, str], Cell]

    @property
    def releases(self) -> List[str]:
        return [c.release for c in self.columns]

    def cell(self, op: str, release: str) -> Cell:
        return self.cells[(op, release)]

    def to_dict(self) -> dict:
        """JSON-safe: the releases, ops, each column, and the cells op by op in release order."""
        return {"releases": self.releases, "ops": list(self.ops), "columns": [asdict(c) for c in self.columns],
                "cells": [asdict(self.cells[(op, r)]) for op in self.ops for r in self.releases]}


def _row_label(row: Row) -> str:
    """A row's status, with the probe of a FAILED row: ``FAILED (tolerance)``."""
    if row.status == FAILED and row.failure:
        return f"{FAILED} ({row.failure.get('probe', '?')})"
    return row.status


def make_cell(op: str, release: str, rows: Sequence[Row]) -> Cell:
    """The cell of one op in one release from its rows (one per dtype)."""
    if not rows:
        return Cell(op, release, SKIPPED, SKIPPED, reason="no dtype of this op was selected")
    rank = {s: i for i, s in enumerate(CELL_ORDER)}
    shown = min(rows, key=lambda r: rank.get(r.status, len(CELL_ORDER)))
    same = [r for r in rows if _row_label(r) == _row_label(shown)]
    label = _row_label(shown) + (f" {len(same)}/{len(rows)}" if len(same) < len(rows) else "")
    cell = Cell(op, release, shown.status, label, dtypes={r.dtype: _row_label(r) for r in rows},
                cases=sum(r.run for r in rows), reason=shown.reason)
    if shown.status in (FAILED, CRASHED) and shown.failure:
        f = shown.failure
        cell.failing_dtype, cell.probe = shown.dtype, f.get("probe", "")
        cell.case = f.get("params", "") if isinstance(f.get("params"), str) else str(f.get("params", ""))
        cell.reason = f.get("message", "") or shown.reason
        cell.replay, cell.saved_inputs = shown.replay, shown.saved_inputs
    elif shown.status in (FAILED, CRASHED):
        cell.failing_dtype = shown.dtype
    return cell


def unavailable_cell(op: str, release: str, error: str) -> Cell:
    return Cell(op, release, UNAVAILABLE, UNAVAILABLE, reason=error)


# ----------------------------------------------------------------------------- one release

def check_release(options: ReleasesOptions, backend: str, version: str,
                  ops: Optional[Sequence[str]] = None) -> Tuple[Column, List[Row]]:
    """Check one release: its column and its rows (every selected op and dtype, in op order).

    The release is resolved first (cache, else pip; unavailable -> a column with the error and
    no rows). Ops it does not provide or cannot bind get their rows here; the others go to
    harness.check.run_check with ``options.check_options``, in child processes."""
    from .check import run_check
    from .impls import load_implementation
    from .row_check import check_one
    from .sglang.release import ReleaseError, resolve

    ops = list(ops or options.selected_ops())
    column = Column(version)
    t0 = time.perf_counter()
    try:
        column.kernel_path = resolve(version).kernel_path
    except (ReleaseError, ValueError) as exc:
        column.available, column.error = False, str(exc)
        return column, []
    source = f"sglang=={version}"
    base = options.check_options(version, ops)
    try:
        impl = load_implementation(source, block_size=options.block_size)
    except Exception as exc:  # the kernel file does not load here: its children will say so per op
        impl, column.error = None, f"{type(exc).__name__}: {exc}"
    checked = [op for op in ops if base.dtypes_of(op) and (impl is None or op in impl.ops)]
    rows: Dict[str, List[Row]] = {}
    if checked:
        for row in run_check(options.check_options(version, checked), backend):
            rows.setdefault(row.op, []).append(row)
    for op in ops:
        if op not in checked and impl is not None:
            rows[op] = [check_one(base, backend, impl, source, op, dtype) for dtype in base.dtypes_of(op)]
    column.seconds = round(time.perf_counter() - t0, 1)
    return column, [r for op in ops for r in rows.get(op, [])]


def build_matrix(options: ReleasesOptions, backend: str, releases: Sequence[str],
                 progress: Callable[[str], None] = lambda line: None,
                 check: Callable = check_release,
                 on_release: Callable[[Matrix], None] = lambda matrix: None) -> Matrix:
    """Check each release in turn (``check``: check_release, replaceable in tests) and make the
    matrix; ``on_release`` gets the matrix so far after each release."""
    ops = list(options.selected_ops())
    matrix = Matrix(ops, [], {})
    for i, version in enumerate(releases, 1):
        progress(f"[{i}/{len(releases)}] sglang=={version}: checking {len(ops)} op(s)")
        column, rows = check(options, backend, version)
        matrix.columns.append(column)
        by_op: Dict[str, List[Row]] = {}
        for r in rows:
            by_op.setdefault(r.op, []).append(r)
        for op in ops:
            matrix.cells[(op, version)] = make_cell(op, version, by_op.get(op, [])) if column.available \
                else unavailable_cell(op, version, column.error)
        if column.available:
            counts: Dict[str, int] = {}
            for op in ops:
                counts[matrix.cells[(op, version)].status] = counts.get(matrix.cells[(op, version)].status, 0) + 1
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: CELL_ORDER.index(kv[0])))
            progress(f"[{i}/{len(releases)}] sglang=={version} ({column.kernel_path}): {summary} "
                     f"in {column.seconds:.0f} s")
        else:
            progress(f"[{i}/{len(releases)}] sglang=={version}: {UNAVAILABLE}: {column.error.splitlines()[0]}")
        on_release(matrix)
    return matrix


def matrix_exit_code(matrix: Matrix) -> int:
    """0: every release checked and some cell compared something (FAILED cells included: they
    are findings); 1: nothing compared; 3: some release unavailable (EXIT_RELEASE_UNAVAILABLE)."""
    if not any(c.status in CHECKED for c in matrix.cells.values()):
        return 1
    return EXIT_RELEASE_UNAVAILABLE if any(not c.available for c in matrix.columns) else 0


# ----------------------------------------------------------------------------- output

def format_matrix(matrix: Matrix) -> str:
    """The table: a line per op, a column per release, each cell's label."""
    ops_w = max([len("op")] + [len(op) for op in matrix.ops])
    widths = [max([len(r)] + [len(matrix.cell(op, r).label) for op in matrix.ops]) for r in matrix.releases]
    head = f"{'op':<{ops_w}}  " + "  ".join(f"{r:<{w}}" for r, w in zip(matrix.releases, widths))
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    for op in matrix.ops:
        cells = "  ".join(f"{matrix.cell(op, r).label:<{w}}" for r, w in zip(matrix.releases, widths))
        lines.append(f"{op:<{ops_w}}  {cells}".rstrip())
    return "\n".join(lines)


def format_findings(matrix: Matrix) -> str:
    """Each FAILED or CRASHED cell: its dtype, probe, message, minimal case and replay command;
    then each unavailable release's error."""
    out = []
    for op in matrix.ops:
        for r in matrix.releases:
            c = matrix.cell(op, r)
            if c.status not in (FAILED, CRASHED):
                continue
            message = (c.reason or "").strip().splitlines()
            out.append(f"{c.label} {op} @ sglang=={r} [{c.failing_dtype}]: {message[0] if message else ''}")
            if c.case:
                out.append(f"  case: {c.case}")
            if c.replay:
                out.append(f"  replay: {c.replay}")
    for col in matrix.columns:
        if not col.available:
            out.append(f"{UNAVAILABLE} sglang=={col.release}: {col.error}")
    return "\n".join(out)


# Heatmap colours per cell status.
COLOURS: Dict[str, str] = {PASSED: "#4caf50", REJECTED: "#a5d6a7", FAILED: "#e53935", CRASHED: "#7b1fa2",
                           UNBINDABLE: "#ff9800", NOT_COMPUTABLE: "#90a4ae", SKIPPED: "#eceff1",
                           NOT_PROVIDED: "#ffffff", UNAVAILABLE: "#212121"}


def write_png(matrix: Matrix, path: str, title: str = "") -> str:
    """A heatmap of the matrix (op x release, coloured by status, labelled) at ``path``.

    Needs matplotlib (the optional extra ``[plot]``); ReleasesOptions checks that it is
    importable before anything runs, and this raises ImportError naming the extra otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("--png needs matplotlib, the optional extra [plot]: "
                          "pip install 'moe-kernel-harness[plot]'") from exc
    statuses = list(COLOURS)
    grid = [[statuses.index(matrix.cell(op, r).status) for r in matrix.releases] for op in matrix.ops]
    fig, ax = plt.subplots(figsize=(1.5 + 1.45 * len(matrix.releases), 1.2 + 0.5 * len(matrix.ops)))
    ax.imshow(grid, cmap=ListedColormap([COLOURS[s] for s in statuses]), vmin=-0.5, vmax=len(statuses) - 0.5,
              aspect="auto")
    for i, op in enumerate(matrix.ops):
        for j, r in enumerate(matrix.releases):
            label = matrix.cell(op, r).label.replace(" (", "\n(")
            dark = matrix.cell(op, r).status in (FAILED, CRASHED, UNAVAILABLE)
            ax.text(j, i, label, ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    ax.set_xticks(range(len(matrix.releases)), matrix.releases, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix.ops)), matrix.ops, fontsize=8)
    ax.set_xticks([x - 0.5 for x in range(1, len(matrix.releases))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(matrix.ops))], minor=True)
    ax.grid(which="minor", color="#bdbdbd", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    used = sorted({c.status for c in matrix.cells.values()}, key=statuses.index)
    ax.legend(handles=[Patch(facecolor=COLOURS[s], edgecolor="#9e9e9e", label=s) for s in used],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return f"heatmap written to {path}"


# ----------------------------------------------------------------------------- bisection

@dataclass
class Bisection:
    """The search for the first release where ``op``'s verdict changed (JSON-safe).

    candidates: the versions between the endpoints (the index's, else the cache's), oldest
    first; tried: (version, verdict) in the order checked, the verdict being each dtype's
    status; boundary: (last release with the old verdict, first with the new), or None when
    the endpoints agree; skipped: versions that could not be fetched or loaded."""

    op: str
    endpoints: Tuple[str, str]
    candidates_from: str
    candidates: List[str]
    tried: List[Tuple[str, Dict[str, str]]] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    boundary: Optional[Tuple[str, str]] = None
    endpoints_checked: bool = False
    note: str = ""


def verdict_of(options: ReleasesOptions, backend: str, version: str,
               check: Callable = check_release) -> Optional[Dict[str, str]]:
    """dtype -> status label of ``options.bisect`` in one release, or None when it is unavailable."""
    column, rows = check(options, backend, version)
    if not column.available:
        return None
    return dict(make_cell(options.bisect, version, rows).dtypes)


def bisection_candidates(low: str, high: str) -> Tuple[str, List[str]]:
    """(where from, versions from low to high inclusive, oldest first): the package index's
    releases, else (no index) the cache's; the endpoints are always included."""
    from .sglang.release import ReleaseError, cached_versions, index_versions, sort_versions, version_key
    try:
        found, origin = index_versions(), "the package index"
    except ReleaseError:
        found, origin = cached_versions(), "the cache (the package index is unreachable)"
    lo, hi = sorted((low, high), key=version_key)
    inside = [v for v in found if version_key(lo) <= version_key(v) <= version_key(hi)]
    return origin, sort_versions(inside + [lo, hi])


def bisect_releases(options: ReleasesOptions, backend: str, candidates: Sequence[str], origin: str = "",
                    progress: Callable[[str], None] = lambda line: None,
                    verdict: Optional[Callable[[str], Optional[Dict[str, str]]]] = None) -> Bisection:
    """Bisect the ordered ``candidates`` for the first release whose verdict on options.bisect
    differs from the first candidate's. Assumes one change between the endpoints (a change and a
    change back are not seen); a release that cannot be had is dropped and the search goes on."""
    verdict = verdict or (lambda v: verdict_of(options, backend, v))
    cands = list(candidates)
    result = Bisection(options.bisect, (cands[0], cands[-1]), origin, list(cands))

    def try_(i: int) -> Optional[Dict[str, str]]:
        v = verdict(cands[i])
        result.tried.append((cands[i], v if v is not None else {"*": UNAVAILABLE}))
        progress(f"bisect {options.bisect}: sglang=={cands[i]}: "
                 + (", ".join(f"{d} {s}" for d, s in v.items()) if v is not None else UNAVAILABLE))
        return v

    first, last = try_(0), try_(len(cands) - 1)
    if first is None or last is None:
        result.note = "an endpoint is unavailable: nothing to bisect"
        return result
    result.endpoints_checked = True
    if first == last:
        result.note = "the endpoints agree: no change found (a change and a change back would not be seen)"
        return result
    i, j = 0, len(cands) - 1
    while j - i > 1:
        m = (i + j) // 2
        v = try_(m)
        if v is None:
            result.skipped.append(cands.pop(m))
            j -= 1
            continue
        if v == first:
            i = m
        else:
            j = m
    result.boundary = (cands[i], cands[j])
    return result


def format_bisection(b: Bisection) -> str:
    lines = [f"bisect {b.op}: {len(b.candidates)} release(s) from {b.endpoints[0]} to {b.endpoints[1]} "
             f"({b.candidates_from}); tried {len(b.tried)}:"]
    for version, v in b.tried:
        lines.append(f"  sglang=={version:<14} " + ", ".join(f"{d}: {s}" for d, s in v.items()))
    if b.skipped:
        lines.append(f"  unavailable, dropped: {' '.join(b.skipped)}")
    if b.boundary:
        before = dict(b.tried)[b.boundary[0]]
        after = dict(b.tried)[b.boundary[1]]
        changed = ", ".join(f"{d}: {before.get(d, '-')} -> {after.get(d, '-')}"
                            for d in sorted(set(before) | set(after)) if before.get(d) != after.get(d))
        lines.append(f"boundary: {b.op} changed between sglang=={b.boundary[0]} and sglang=={b.boundary[1]} "
                     f"({changed})")
    else:
        lines.append(f"boundary: none ({b.note})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command

def _progress_line(text: str) -> None:
    """A progress line on stderr (always: a matrix takes minutes per release)."""
    sys.stderr.write(f"releases: {text}\n")
    sys.stderr.flush()



def run_command(options: ReleasesOptions, backend: str) -> int:
    """Run the releases command: the slim cache export, the bisection, or the matrix (table on
    stdout, findings, JSON and PNG). Exit status: see the module docstring."""
    from .sglang.release import ReleaseError, resolve
    progress = _progress_line
    try:
        for wheel in options.sglang_wheels:  # registered in the cache before any release resolves
            resolve(wheel=wheel)
    except ReleaseError as exc:
        raise SystemExit(f"--sglang-wheel: {exc}") from None
    if options.export_cache:
        return _export(options, progress)
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    if options.bisect:
        low, high = options.releases or (DEFAULT_RELEASES[0], DEFAULT_RELEASES[-1])
        origin, candidates = bisection_candidates(low, high)
        result = bisect_releases(options, backend, candidates, origin, progress)
        print(format_bisection(result))
        if options.json_path:
            write_json(options.json_path, {"environment": info, "options": options.to_dict(),
                                           "bisection": asdict(result)})
        return 0 if result.endpoints_checked else 1
    releases = options.releases or DEFAULT_RELEASES
    t0 = time.perf_counter()

    def record(matrix: Matrix, complete: bool, **extra) -> None:
        """The JSON record (rewritten after each release: a run cut short keeps the releases done)."""
        if options.json_path:
            write_json(options.json_path, {"environment": info, "options": options.to_dict(), "complete": complete,
                                           "wall_s": round(time.perf_counter() - t0, 1), **extra,
                                           **matrix.to_dict()})
    matrix = build_matrix(options, backend, releases, progress, on_release=lambda m: record(m, False))
    print(format_matrix(matrix))
    findings = format_findings(matrix)
    if findings:
        print("\n" + findings)
    code = matrix_exit_code(matrix)
    record(matrix, True, exit_status=code)
    if options.png_path:
        print(write_png(matrix, options.png_path, f"SGLang EP-MoE kernels per release ({backend})"))
    if code == 1:
        print("moe-harness releases: nothing was checked: no cell compared anything", file=sys.stderr)
    return code


def _export(options: ReleasesOptions, progress) -> int:
    """Write the slim cache of the releases (their kernel files, no wheels) to options.export_cache."""
    from .sglang.release import CACHE_ENV, ReleaseError, export_slim_cache
    releases = options.releases or DEFAULT_RELEASES
    failed = 0
    total = 0
    for version in releases:
        try:
            size = export_slim_cache([version], options.export_cache)[version]
        except ReleaseError as exc:
            failed += 1
            progress(f"sglang=={version}: {UNAVAILABLE}: {str(exc).splitlines()[0]}")
            continue
        total += size
        progress(f"sglang=={version}: {size / 1024:.0f} kB")
    print(f"slim cache of {len(releases) - failed} release(s), {total / 1024:.0f} kB, in {options.export_cache}; "
          f"use it with {CACHE_ENV}={options.export_cache}")
    return 1 if failed else 0
