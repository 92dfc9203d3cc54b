"""``moe-harness bench``: time implementations on model-shaped cases, A/B against a baseline,
and check that what was timed was the real work.

Per case, every implementation that provides the op is timed in interleaved rounds
(harness.timing), in eager mode and in CUDA-graph replay. Implementations share the case's
input sets in rotation (implementation i uses set (i + r) mod n in round r), so no
implementation is tied to one memory placement. The last round runs on fresh inputs
written in place just before it, with the outputs poisoned; its outputs are copied on the
timing stream right after each end event and read again after the whole device has been
synchronised. Both copies are checked against the reference with the harness's comparators
(harness.runner): a candidate that returns a cached result or skips work gives a wrong
answer ("WRONG"); one whose outputs were still changing after its end event left work on
another stream ("DEFERRED").

``--selftest`` runs the method's own checks (copy ceiling against a plain torch copy, an
implementation against itself, against a slowed copy of itself, and cheating candidates).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .backend import describe, device_of
from .cases import MODEL_SHAPES, CaseParams
from .costs import Cost, Perf, cost_of, perf_of
from .loader import load_file_module
from .options import BENCH_MODES, BenchOptions
from .records import write_json
from .status import NOT_PROVIDED
from .timing import (Ceilings, Comparison, GraphUnavailable, Stats, TimingConfig, Workload, capture_graph, compare,
                     copy_moving, measure_ceilings, plain_copy_gbps, run_interleaved, synchronize)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = BENCH_MODES
DECODE_TOKENS = (1, 64)
PREFILL_TOKENS = (1024, 4096)
PRESET_ROUTINGS = ("uniform", "skewed")
PRESET_EP = {"deepseek-v3": 8}                  # EP ranks per preset (SPEC.md: DeepSeek at EP 8..64)
INTERPRETER_LIMITS = dict(tokens=16, hidden=128, inter=128)
NOT_REPRESENTATIVE = ("NOTE: interpreter backend: Triton kernels run in Python on the CPU and sizes are shrunk "
                      "(T <= {tokens}, H <= {hidden}, I <= {inter}); these timings are not representative of any GPU."
                      ).format(**INTERPRETER_LIMITS)


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class BenchCase:
    """One timed case: its parameters and where it comes from."""

    params: CaseParams
    suite: str          # "anchors" or a MODEL_SHAPES name
    variant: str = ""   # e.g. "gate_up" / "down" for the GEMM

    def label(self, with_tokens: bool = True) -> str:
        from .specs import SPECS
        p = self.params
        record = SPECS[p.op]
        parts = [f"T={p.tokens}"] if with_tokens else []
        parts += [f"K={p.topk}", f"E={p.experts}"]
        if p.e_local != p.experts:
            parts.append(f"EP{p.experts // max(p.e_local, 1)}" if p.experts % max(p.e_local, 1) == 0
                         else f"experts {p.start_expert}..{p.end_expert}")
        if p.dtype != record.bench_dtype:
            parts.append(p.dtype)   # early in the label: the table cuts cases at 50 characters
        shape = record.shape_label(p)
        if shape:
            parts.append(shape)
        if p.invalid_frac:
            parts.append(f"inv={p.invalid_frac:g}")
        if p.routing != "uniform":
            parts.append(p.routing)
        if self.variant:
            parts.append(self.variant)
        return " ".join(parts)


def _dtypes_for(record, requested: Optional[Sequence[str]]) -> List[str]:
    if requested:
        return [d for d in requested if d in record.dtypes]
    return [record.bench_dtype]


def _rank_params(record, dtype: str, tokens: int, topk: int, experts: int, last_local: int, ep: int,
                 routing: str, seed: int, **shape) -> CaseParams:
    """A bench case of one EP rank holding experts 0..last_local of ``experts`` (``ep`` ranks),
    seen as the op's record says its rank sees the routing (bench_routing)."""
    whole = record.bench_routing in ("all", "dispatched")
    return CaseParams(op=record.name, dtype=dtype, tokens=tokens, topk=topk, experts=experts, start_expert=0,
                      end_expert=experts - 1 if whole else last_local, routing=routing,
                      invalid_frac=(1.0 - 1.0 / ep) if record.bench_routing == "dispatched" else 0.0, seed=seed,
                      **shape)


def preset_cases(preset: str, ops: Sequence[str], tokens: Sequence[int], routings: Sequence[str],
                 dtypes: Optional[Sequence[str]], seed: int = 0) -> List[BenchCase]:
    """A model's shapes (SPEC.md) at the given token counts and routings, on one EP rank."""
    from .specs import SPECS
    shape = MODEL_SHAPES[preset]
    E, K = shape["experts"], shape["topk"]
    ep = PRESET_EP.get(preset, 1)
    cases = []
    for op in ops:
        record = SPECS[op]
        for dtype in _dtypes_for(record, dtypes):
            for variant, hi in record.model_variants(shape):
                for T in tokens:
                    for routing in routings:
                        p = _rank_params(record, dtype, T, K, E, E // ep - 1, ep, routing, seed, **hi)
                        cases.append(BenchCase(p, preset, variant))
    return cases


def anchor_cases(ops: Sequence[str], tokens: Optional[Sequence[int]], routings: Sequence[str],
                 dtypes: Optional[Sequence[str]], seed: int = 0) -> List[BenchCase]:
    """The default suite: each record's bench anchors (ANCHORS.md's shapes; token counts
    replaced by ``tokens`` if given)."""
    from .specs import SPECS
    cases = []
    for op in ops:
        record = SPECS[op]
        for anchor in record.bench_anchors:
            last = anchor.experts - 1 if anchor.last_local is None else anchor.last_local
            for dtype in _dtypes_for(record, dtypes):
                for t in (tokens or (anchor.tokens,)):
                    for routing in routings:
                        # a DeepEP rank of the anchors' EP8 receives 1/8 of the ids
                        p = _rank_params(record, dtype, t, anchor.topk, anchor.experts, last, 8, routing, seed,
                                         hidden=anchor.hidden, inter=anchor.inter)
                        cases.append(BenchCase(p, "anchors", anchor.variant))
    return cases


def shrink_for_interpreter(case: BenchCase) -> BenchCase:
    p = case.params
    lim = INTERPRETER_LIMITS
    return dataclasses.replace(case, params=dataclasses.replace(
        p, tokens=min(p.tokens, lim["tokens"]), hidden=min(p.hidden, lim["hidden"]), inter=min(p.inter, lim["inter"])))


def select_cases(options: BenchOptions, backend: str) -> List[BenchCase]:
    """The cases the options select (shrunk on the interpreter), each once, in suite order."""
    from .specs import SPECS
    ops = list(options.ops or SPECS)
    preset = options.preset or "anchors"
    if preset == "anchors":
        routings = options.routings or ("uniform",)    # ANCHORS.md measured uniform routing
        cases = anchor_cases(ops, options.tokens, routings, options.dtypes, options.seed)
    else:
        routings = options.routings or PRESET_ROUTINGS
        cases = preset_cases(preset, ops, options.tokens or DECODE_TOKENS + PREFILL_TOKENS, routings, options.dtypes,
                             options.seed)
    if backend != "cuda":
        cases = [shrink_for_interpreter(c) for c in cases]
    seen, unique = set(), []
    for c in cases:
        if c.params not in seen:
            seen.add(c.params)
            unique.append(c)
    return unique


# ----------------------------------------------------------------------------- implementations

class BaselineError(ValueError):
    """--baseline names neither an implementation nor a usable git revision."""


def _git(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)


def load_revision(rev: str, repo: Path = REPO_ROOT):
    """optimized/ as it is at git revision ``rev``: checked out into a temporary worktree and
    imported as its own package. Returns (Implementation named ``ours@REV``, cleanup)."""
    from .impls import Implementation
    from .specs import SPECS
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        raise BaselineError(f"--baseline {rev!r}: not a git revision of {repo}")
    sha = found.stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="moe-bench-baseline-"))
    tree = tmp / "tree"
    added = _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), sha)
    if added.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BaselineError(f"--baseline {rev!r}: git worktree add failed: {added.stderr.strip()}")

    def cleanup() -> None:
        _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        _git(repo, "worktree", "prune")

    try:
        pkg = tree / "optimized"
        if not (pkg / "__init__.py").is_file():
            raise BaselineError(f"--baseline {rev!r}: revision {sha[:10]} has no optimized/ package")
        # Its own package name (relative imports resolve inside it): two versions of optimized/ in one process.
        mod = load_file_module(f"_moe_baseline_{sha[:12]}", pkg / "__init__.py", package=True)
        ops = {op: getattr(mod, op) for op in SPECS if callable(getattr(mod, op, None))}
        notes = {op: f"optimized/ at {rev} has no {op}" for op in SPECS if op not in ops}
        return Implementation(f"ours@{rev}", ops, notes=notes), cleanup
    except BaseException:
        cleanup()
        raise


def resolve_baseline(ref: str, repo: Path = REPO_ROOT):
    """``git:REV`` or a git revision -> its optimized/; otherwise an implementation source.
    Implementation sources are tried first (``reference``, ``ours``, ``sglang:...``)."""
    from .impls import load_implementation
    if ref.startswith("git:"):
        return load_revision(ref[4:], repo)
    try:
        return load_implementation(ref), (lambda: None)
    except ValueError as exc:
        if _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0:
            return load_revision(ref, repo)
        raise BaselineError(f"--baseline {ref!r}: neither an implementation source ({exc}) nor a git revision "
                            f"of {repo}") from None


@contextlib.contextmanager
def value_checks_off() -> Iterator[Callable[[], None]]:
    """Our launchers' value checks read the device (a host sync in the timed region): turn them
    off for timing. Yields ``apply``, to call again after more packages were imported."""
    prev_env = os.environ.get("MOE_CHECK_VALUES")
    os.environ["MOE_CHECK_VALUES"] = "0"
    changed = []

    def apply() -> None:
        for name, mod in list(sys.modules.items()):
            top = name.split(".")[0]
            if name.endswith("._config") and (top == "optimized" or top.startswith("_moe_baseline_")) \
                    and getattr(mod, "CHECK_VALUES", False):
                mod.CHECK_VALUES = False
                changed.append(mod)
    apply()
    try:
        yield apply
    finally:
        for mod in changed:
            mod.CHECK_VALUES = True
        if prev_env is None:
            os.environ.pop("MOE_CHECK_VALUES", None)
        else:
            os.environ["MOE_CHECK_VALUES"] = prev_env


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ModeResult:
    """One implementation on one case in one mode."""

    mode: str                               # eager | graph
    stats: Optional[Stats] = None           # None when the mode could not run
    perf: Optional[Perf] = None
    vs_baseline: Optional[Comparison] = None
    check: str = "ok"                       # ok | wrong | deferred | unavailable | error
    message: str = ""
    n_warmup: int = 0
    copy_ms: Optional[float] = None         # one copy kernel moving the case's bytes, same run (data-movement ops)


FRESH_INPUTS = "fresh inputs"
# The case rebuilt from its own seed (fresh allocations, the timed values): for a builder whose
# shapes follow the seed (a padded layout sized by the routing), no other seed gives buffers the
# timed calls fit. Skipped work still shows (outputs are poisoned before the last round); a result
# kept from an earlier call of the same inputs would not.
VERIFIED_ON_REBUILD = "the timed case rebuilt"


@dataclass(frozen=True)
class BenchRow:
    """One implementation on one case (JSON-safe)."""

    op: str
    case: str
    suite: str
    params: str                              # CaseParams.to_json()
    impl: str
    status: str                              # ok | WRONG | DEFERRED | error | not provided
    message: str = ""
    cost: Optional[Cost] = None
    eager: Optional[ModeResult] = None
    graph: Optional[ModeResult] = None
    launch: str = ""                         # how the implementation chose its tiles (its last timed call)
    verified_on: str = FRESH_INPUTS          # the inputs of the last timed call (VERIFIED_ON_REBUILD: no other seed fit)

    @property
    def failed(self) -> bool:
        return self.status in ("WRONG", "DEFERRED", "error")

    def mode(self, name: str) -> Optional[ModeResult]:
        return self.eager if name == "eager" else self.graph


# ----------------------------------------------------------------------------- one case

def _outputs_of(spec, sample, returned) -> Dict[str, Any]:
    return {o.name: o.where.fetch(sample.args, returned) for o in spec.outputs}


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _Verifier:
    """The reference's answer on the case's fresh inputs, computed once, and the checks of
    a timed run's final outputs against it (harness.runner's comparators)."""

    def __init__(self, spec, fresh_sample, inputs: str = FRESH_INPUTS):
        from .runner import reference_outputs
        self.spec, self.sample, self.inputs = spec, fresh_sample, inputs
        self.expected = reference_outputs(spec, fresh_sample)

    def check(self, candidate, final: Mapping[str, Any], snapshot: Mapping[str, Any]) -> Tuple[str, str]:
        """("ok" | "wrong" | "deferred", message)."""
        from .runner import ProbeFailure, as_bits, compare_outputs
        try:
            compare_outputs(self.spec, candidate, self.sample, dict(final), self.expected)
        except ProbeFailure as f:
            # what the failure suggests: elements never written point at skipped work, a wholly
            # different exact answer at a result kept from an earlier call; a float error over
            # the tolerance is just that (moe-harness check finds its minimal case)
            hint = {"unwritten": " (skipped work?)", "exact": " (a result cached from an earlier call?)",
                    "tolerance": " (over the tolerance: run moe-harness check on this op)"}.get(f.probe, "")
            return "wrong", (f"the last timed call, on {self.inputs}, gave a wrong answer{hint}: {f.probe}: "
                             f"{f.message}")
        for name, after in final.items():
            before = snapshot.get(name)
            if isinstance(after, torch.Tensor) and (before is None or before.shape != after.shape or
                                                    not torch.equal(as_bits(before), as_bits(after))):
                return "deferred", (f"{name} changed after the timed region ended: work ran outside the timed "
                                    f"stream (deferred to another stream?)")
        return "ok", ""


def production_layout(sample):
    """The sample in the layout a timed call uses: the op record's ``timed_layout`` (e.g. the
    grouped GEMM's weights in group order, as SGLang's EP layer calls it), else as built."""
    from .specs import SPECS
    layout = SPECS[sample.params.op].timed_layout
    return sample if layout is None else layout(sample)


COPY_WORKLOAD = "<copy of the same bytes>"   # not a name an implementation source can take


def same_bytes_copy(cost: Cost, device) -> Optional[Callable[[], Any]]:
    """One copy kernel (timing.copy_moving) that moves the case's bytes (reads + writes), for ops
    that only move data (no FLOPs), else None: the size-matched reference of the issue's small-batch
    target, and of what a kernel of that size can reach at all (copies of 51-118 MB ran at 67-84%
    of the 1 GiB copy's rate on an H200, ninth and tenth sessions)."""
    return None if cost.flops or cost.bytes < 4 else copy_moving(cost.bytes, device)


FRESH_SEED_TRIES = 16


def _fresh_case_of_the_same_shapes(spec, p: CaseParams, first, dev, offset: int):
    """The case with the first seed from ``p.seed + offset`` on whose tensors have the timed
    case's shapes and dtypes (the last round writes it into the timed buffers), or None."""
    for k in range(FRESH_SEED_TRIES):
        fresh = production_layout(spec.build(dataclasses.replace(p, seed=p.seed + offset + k), dev))
        if all(not isinstance(v, torch.Tensor) or (v.shape == first.args[name].shape and
                                                   v.dtype == first.args[name].dtype)
               for name, v in fresh.args.items()):
            return fresh
    return None


def time_case(case: BenchCase, impls: Sequence, device, config: TimingConfig, ceilings: Ceilings, *,
              baseline: Optional[str] = None, modes: Sequence[str] = MODES, fresh_seed_offset: int = 3
              ) -> List[BenchRow]:
    """Time every implementation that provides ``case.params.op``, interleaved, in each mode;
    compare each with ``baseline`` (an implementation name among ``impls``); verify the final
    round's outputs. Returns one row per implementation. A candidate's exception becomes an
    'error' row; it never escapes. For a data-movement op a copy of the case's bytes is timed in
    the same interleaved run (``ModeResult.copy_ms``)."""
    from .runner import fill_poison
    from .specs import SPECS
    p = case.params
    spec = SPECS[p.op]
    dev = torch.device(device)
    base = dict(op=p.op, case=case.label(), suite=case.suite, params=p.to_json())
    rows: Dict[str, BenchRow] = {}
    present = []
    for impl in impls:
        if p.op not in impl.ops:
            rows[impl.name] = BenchRow(**base, impl=impl.name, status=NOT_PROVIDED,
                                       message=impl.notes.get(p.op, "") if hasattr(impl, "notes") else "")
        else:
            present.append(impl)
    if not present:
        return [rows[i.name] for i in impls]

    first = production_layout(spec.build(p, dev))
    working = []
    for impl in present:                            # a first call each: compilation, and a crash is an error row
        try:
            impl.ops[p.op](*first.args.values())
            synchronize(dev)
            working.append(impl)
        except Exception as exc:  # a candidate's fault: reported, never raised
            rows[impl.name] = BenchRow(**base, impl=impl.name, status="error", message=_error_text(exc))
    n = len(working)
    if n == 0:
        return [rows[i.name] for i in impls]
    cost = cost_of(p, first.args)
    sets = [first] + [production_layout(spec.build(p, dev)) for _ in range(n - 1)]
    arg_tuples = [tuple(s.args.values()) for s in sets]
    out_args = list(spec.output_buffers)

    fresh = _fresh_case_of_the_same_shapes(spec, p, first, dev, fresh_seed_offset)
    verified_on = FRESH_INPUTS
    if fresh is None:   # the builder's shapes follow the seed: verify on the timed case, rebuilt
        fresh, verified_on = production_layout(spec.build(p, dev)), VERIFIED_ON_REBUILD
    verifier = _Verifier(spec, fresh, verified_on)

    def set_of(i: int, r: int) -> int:
        return (i + r) % n

    def refresh(extra_outputs: Sequence[torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for s in sets:
                for name, v in s.args.items():
                    if isinstance(v, torch.Tensor):
                        if name in out_args:
                            fill_poison(v)
                        else:
                            v.copy_(fresh.args[name])
            for t in extra_outputs:
                fill_poison(t)
        return run

    results: Dict[str, Dict[str, ModeResult]] = {impl.name: {} for impl in working}
    same_bytes = same_bytes_copy(cost, dev)        # its buffers serve every mode
    for mode in modes:
        workloads, timed = [], []
        extra = []
        for i, impl in enumerate(working):
            fn = impl.ops[p.op]
            if mode == "eager":
                calls = tuple(functools.partial(fn, *arg_tuples[set_of(i, r)]) for r in range(n))
                outs = functools.partial(lambda i_, v, ret: _outputs_of(spec, sets[set_of(i_, v)], ret), i)
            else:
                try:
                    graphs = [capture_graph(functools.partial(fn, *arg_tuples[set_of(i, r)]), dev) for r in range(n)]
                except GraphUnavailable as why:
                    results[impl.name][mode] = ModeResult(mode, check="unavailable", message=str(why))
                    continue
                except Exception as exc:  # a candidate's fault while warming up for capture
                    results[impl.name][mode] = ModeResult(mode, check="unavailable", message=_error_text(exc))
                    continue
                calls = tuple(g.replay for g, _ in graphs)
                outs = functools.partial(lambda i_, gs, v, _ret: _outputs_of(spec, sets[set_of(i_, v)], gs[v][1]),
                                         i, graphs)
                for _, ret in graphs:                 # static returned outputs: poisoned before the last round
                    extra += [t for t in (ret if isinstance(ret, (tuple, list)) else (ret,))
                              if isinstance(t, torch.Tensor)]
            workloads.append(Workload(impl.name, calls, outs))
            timed.append(impl)
        if not workloads:
            continue
        copy = None
        if same_bytes is not None:
            try:
                copy = same_bytes if mode == "eager" else capture_graph(same_bytes, dev)[0].replay
                workloads.append(Workload(COPY_WORKLOAD, (copy,)))
            except GraphUnavailable:
                pass
        try:
            run = run_interleaved(workloads, dev, config, before_final_round=refresh(extra))
        except Exception as exc:  # some candidate failed mid-run: which one is unknown, so all are marked
            for impl in timed:
                results[impl.name][mode] = ModeResult(mode, check="error", message=_error_text(exc))
            continue
        times = dict(zip([w.name for w in workloads], run.times_ms))
        copy_ms = Stats.of(times[COPY_WORKLOAD]).median_ms if copy is not None else None
        for k, impl in enumerate(timed):
            stats = Stats.of(run.times_ms[k])
            check, message = verifier.check(impl.candidate(p.op), run.final_outputs[k], run.final_snapshots[k])
            vs = None
            if baseline is not None and baseline in times and impl.name != baseline:
                vs = compare(baseline, times[baseline], impl.name, run.times_ms[k], mode, n_boot=config.n_boot,
                             confidence=config.confidence, seed=config.seed)
            # A call that enqueues nothing (a cheat) can time at 0: no rate for it.
            perf = perf_of(cost, stats.median_ms, ceilings.copy_gbps, ceilings.matmul_tflops) \
                if stats.median_ms > 0 else None
            results[impl.name][mode] = ModeResult(mode, stats, perf, vs, check, message, run.n_warmup, copy_ms)
        del run
    for impl in working:
        res = results[impl.name]
        checks = [res[m] for m in modes if m in res]
        status, message = "ok", ""
        for bad, label in (("wrong", "WRONG"), ("deferred", "DEFERRED"), ("error", "error")):
            hit = next((r for r in checks if r.check == bad), None)
            if hit is not None:
                status, message = label, f"{hit.mode}: {hit.message}"
                break
        rows[impl.name] = BenchRow(**base, impl=impl.name, status=status, message=message, cost=cost,
                                   eager=res.get("eager"), graph=res.get("graph"), launch=_launch_text(impl, p.op),
                                   verified_on=verified_on)
    return [rows[i.name] for i in impls]


def _launch_text(impl, op: str) -> str:
    """What the implementation says of its last launch of ``op`` (informational: a failure to say
    is reported in the text, never raised)."""
    describe = getattr(impl, "describe", None)
    if describe is None:
        return ""
    try:
        return str(describe(op) or "")
    except Exception as exc:  # the description is a note; the timing stands without it
        return f"the launch description failed: {_error_text(exc)}"


# ----------------------------------------------------------------------------- output

def _us(ms: Optional[float]) -> str:
    return "-" if ms is None else _num(ms * 1e3)


def _num(x: float) -> str:
    """Three significant figures at least, thousands separated."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def format_header(baseline: Optional[str]) -> str:
    vs = f"vs {baseline}" if baseline else "vs baseline"
    head = (f"{'op':<17} {'case':<50} {'impl':<16} {'eager us [q1, q3]':>26} {'graph us':>10} {'GB/s':>8} "
            f"{'TFLOP/s':>8} {'% roof':>7}  {vs + ' (eager)':<38} {vs + ' (graph)':<38} check")
    return head + "\n" + "-" * len(head)


def format_row(r: BenchRow) -> str:
    e, g = r.eager, r.graph
    eager = "-"
    if e is not None and e.stats is not None:
        eager = f"{_us(e.stats.median_ms)} [{_us(e.stats.q1_ms)}, {_us(e.stats.q3_ms)}]"
    elif e is not None:
        eager = e.check
    graph = _us(g.stats.median_ms) if g is not None and g.stats is not None else ("n/a" if g is not None else "-")
    # GB/s, TFLOP/s and % of roof from device time (graph) when there is one, else from eager time.
    perf_src = g if g is not None and g.perf is not None else e
    perf = perf_src.perf if perf_src is not None else None
    gbps = _num(perf.gbps) if perf else "-"
    tflops = _num(perf.tflops) if perf and perf.tflops else "-"
    roof = f"{perf.pct_of_roof:.0f}%" if perf else "-"
    vs_e = e.vs_baseline.describe() if e is not None and e.vs_baseline else ""
    vs_g = g.vs_baseline.describe() if g is not None and g.vs_baseline else ""
    status = r.status + (f": {r.message}" if r.message and r.status != "ok" else "")
    if r.verified_on != FRESH_INPUTS and r.status in ("ok", "WRONG"):
        status += f" (verified on {r.verified_on})"
    return (f"{r.op:<17} {r.case[:50]:<50} {r.impl[:16]:<16} {eager:>26} {graph:>10} {gbps:>8} {tflops:>8} "
            f"{roof:>7}  {vs_e:<38} {vs_g:<38} {status}")


def format_notes(rows: Sequence[BenchRow]) -> str:
    """Why graph mode was unavailable, once per implementation and reason; then, per case of a
    data-movement op, the same-bytes copy and each implementation's time against it; then how
    each implementation that says so chose its tiles, per case."""
    seen, out = set(), []
    for r in rows:
        if r.graph is not None and r.graph.check == "unavailable" and (r.impl, r.graph.message) not in seen:
            seen.add((r.impl, r.graph.message))
            out.append(f"  graph mode unavailable for {r.impl} ({r.op}): {r.graph.message}")
    out += copy_notes(rows)
    out += [f"  {r.impl} {r.op} {r.case}: {r.launch}" for r in rows if r.launch]
    return "\n".join(out)


def copy_notes(rows: Sequence[BenchRow]) -> List[str]:
    """One line per case that timed a same-bytes copy: the copy's eager and graph medians, and each
    implementation's time as a multiple of the copy's in the same mode (graph where both ran)."""
    cases: Dict[Tuple[str, str], List[BenchRow]] = {}
    for r in rows:
        if any(m is not None and m.copy_ms is not None for m in (r.eager, r.graph)):
            cases.setdefault((r.op, r.case), []).append(r)
    out = []
    for (op, case), group in cases.items():
        copy = {name: next((r.mode(name).copy_ms for r in group if r.mode(name) is not None
                            and r.mode(name).copy_ms is not None), None) for name in MODES}
        ratios = []
        for r in group:
            for name in ("graph", "eager"):
                m = r.mode(name)
                if m is not None and m.stats is not None and m.copy_ms:
                    ratios.append(f"{r.impl} {_num(m.stats.median_ms / m.copy_ms)}x ({name})")
                    break
        moved = _num(group[0].cost.bytes / 1e6) if group[0].cost is not None else "?"
        timed = ", ".join(f"{name} {_us(ms)} us" for name, ms in copy.items() if ms is not None)
        out.append(f"  {op} {case}: one copy kernel of the same {moved} MB: {timed}; "
                   f"time against it: {', '.join(ratios) or '-'}")
    return out


def write_plot(rows: Sequence[BenchRow], path: str) -> str:
    """PNG of median eager time (solid) and graph time (dashed) against tokens, one panel per
    op, one line per implementation and case family. Returns what was done, in words."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (f"--plot: matplotlib is not installed (pip install 'moe-kernel-harness[plot]'); "
                f"no plot written to {path}")
    series: Dict[str, Dict[Tuple[str, str], List[Tuple[int, float, Optional[float]]]]] = {}
    for r in rows:
        if r.eager is None or r.eager.stats is None:
            continue
        p = CaseParams.from_json(r.params)
        family = r.case.split(" ", 1)[1] + ("" if r.suite == "anchors" else f" ({r.suite})")   # label minus T=...
        g = r.graph.stats.median_ms if r.graph is not None and r.graph.stats is not None else None
        series.setdefault(r.op, {}).setdefault((r.impl, family), []).append((p.tokens, r.eager.stats.median_ms, g))
    if not series:
        return "--plot: nothing was timed; no plot written"
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 3.4 * len(series)), squeeze=False)
    for ax, (op, lines) in zip(axes[:, 0], sorted(series.items())):
        for (impl, family), pts in sorted(lines.items()):
            pts.sort()
            xs = [t for t, _, _ in pts]
            line, = ax.plot(xs, [e * 1e3 for _, e, _ in pts], marker="o", label=f"{impl}: {family} (eager)")
            if all(g is not None for _, _, g in pts):
                ax.plot(xs, [g * 1e3 for _, _, g in pts], marker="x", linestyle="--", color=line.get_color(),
                        label=f"{impl}: {family} (graph)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("tokens")
        ax.set_ylabel("median time (us)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"


# ----------------------------------------------------------------------------- self-test

@dataclass(frozen=True)
class SelfCheck:
    """One of the method's own checks."""

    name: str
    measured: str
    criterion: str
    status: str          # PASS | FAIL | SKIP


def _slowed(fn: Callable) -> Callable:
    """Does the work twice (an extra full pass): must be reported about 2x slower."""
    def slowed(*args):
        fn(*args)
        return fn(*args)
    return slowed


def _caching(fn: Callable) -> Callable:
    """Computes once per set of argument addresses, then returns the cached result and skips
    the work: must be flagged."""
    memo: Dict[tuple, Any] = {}

    def cached(*args):
        key = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else repr(a) for a in args)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return cached


def _deferred(fn: Callable) -> Callable:
    """Runs the work on a side stream after a delay and returns at once, without making the
    caller's stream wait: looks fast, must be flagged."""
    side: Dict[str, Any] = {}

    def deferred(*args):
        stream = side.setdefault("s", torch.cuda.Stream())
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000)             # about a millisecond of device time
            return fn(*args)
    return deferred


def selftest_case(op: str, backend: str) -> BenchCase:
    """DeepSeek-V3 EP8 prefill (T=4096) for the op; shrunk on the interpreter."""
    case = preset_cases("deepseek-v3", [op], [4096], ["uniform"], None)[0]
    return case if backend == "cuda" else shrink_for_interpreter(case)


def run_selftest(options: BenchOptions, modes: Sequence[str], backend: str, device, config: TimingConfig,
                 ceilings: Ceilings) -> Tuple[List[SelfCheck], List[BenchRow]]:
    """The 'Done when' checks of the bench method, in one go, on the first of options.ops and
    options.impls, timed in ``modes``."""
    from .impls import load_implementation
    checks: List[SelfCheck] = []
    plain = plain_copy_gbps(device, ceilings.copy_bytes)
    rel = ceilings.copy_gbps / plain - 1.0
    checks.append(SelfCheck("copy ceiling vs plain torch copy",
                            f"{ceilings.copy_gbps:,.0f} GB/s (events) vs {plain:,.0f} GB/s (host clock): "
                            f"{rel * 100:+.1f}%", "within 10%",
                            # a CPU's copy bandwidth is not the question here: reported, not judged
                            ("PASS" if abs(rel) <= 0.10 else "FAIL") if backend == "cuda" else "SKIP"))

    from .specs import SPECS
    op = (options.ops or [next(name for name, rec in SPECS.items() if rec.selftest)])[0]
    case = selftest_case(op, backend)
    impl = load_implementation((options.impls or ["ours"])[0])
    if op not in impl.ops:
        impl = load_implementation("reference")
    fn = impl.ops[op]
    a = dataclasses.replace(impl, name=f"{impl.name}:A")
    modes = list(modes)
    rows: List[BenchRow] = []

    def run(candidates, baseline, run_modes=modes):
        got = time_case(case, candidates, device, config, ceilings, baseline=baseline, modes=run_modes)
        rows.extend(got)
        return {r.impl: r for r in got}

    same = run([a, dataclasses.replace(impl, name=f"{impl.name}:A'")], a.name)[f"{impl.name}:A'"]
    for mode in modes:
        m = same.mode(mode)
        if m is None or m.vs_baseline is None:
            checks.append(SelfCheck(f"A/B against itself ({mode})", m.message if m else "not run",
                                    "CI contains 1.0", "SKIP"))
            continue
        c = m.vs_baseline
        checks.append(SelfCheck(f"A/B against itself ({mode})", c.describe(), "CI contains 1.0",
                                "PASS" if c.ci_low <= 1.0 <= c.ci_high and same.status == "ok" else "FAIL"))

    slow_impl = dataclasses.replace(impl, name=f"{impl.name}:slowed", ops={op: _slowed(fn)})
    slow = run([a, slow_impl], a.name)[slow_impl.name]
    for mode in modes:
        m = slow.mode(mode)
        if m is None or m.vs_baseline is None:
            checks.append(SelfCheck(f"A/B against a slowed copy (work done twice) ({mode})",
                                    m.message if m else "not run", "verdict 'slower'", "SKIP"))
            continue
        c = m.vs_baseline
        checks.append(SelfCheck(f"A/B against a slowed copy (work done twice) ({mode})", c.describe(),
                                "verdict 'slower'", "PASS" if c.verdict == "slower" else "FAIL"))

    # (what it does, wrapper, statuses that count as flagged, modes): the deferring cheat cannot
    # be graph-captured (its side stream never joins back), so it is timed eagerly only.
    cheats = [("returns a cached result", _caching, ("WRONG",), modes)]
    if backend == "cuda":
        cheats.append(("defers its work to another stream", _deferred, ("DEFERRED", "WRONG"), ["eager"]))
    else:
        checks.append(SelfCheck("candidate that defers its work to another stream is flagged",
                                "needs CUDA streams", "status DEFERRED", "SKIP"))
    for what, wrap, flagged, cheat_modes in cheats:
        cheat = dataclasses.replace(impl, name=f"{impl.name}:cheat", ops={op: wrap(fn)})
        r = run([cheat], None, cheat_modes)[cheat.name]
        t = r.eager.stats.median_ms if r.eager is not None and r.eager.stats is not None else None
        checks.append(SelfCheck(f"candidate that {what} is flagged",
                                f"{r.status} (eager {_us(t)} us){': ' + r.message[:120] if r.message else ''}",
                                f"status {' or '.join(flagged)}", "PASS" if r.status in flagged else "FAIL"))
    return checks, rows


def format_selfchecks(checks: Sequence[SelfCheck]) -> str:
    head = f"{'self-check':<62} {'status':<6} {'criterion':<22} measured"
    lines = [head, "-" * len(head)]
    for c in checks:
        lines.append(f"{c.name:<62} {c.status:<6} {c.criterion:<22} {c.measured}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command

def timing_config(options: BenchOptions, backend: str) -> TimingConfig:
    if backend != "cuda":      # each interpreted call is slow; a few rounds show that it runs
        rounds = 20 if options.selftest else 3    # the self-test's verdicts need MIN_PAIRS_FOR_VERDICT pairs
        return TimingConfig(warmup_ms=0.0, rep_ms=0.0, min_rounds=rounds, max_rounds=rounds, estimate_rounds=1,
                            n_boot=500, seed=options.seed)
    rep = max(options.rep_ms, 300.0) if options.selftest else options.rep_ms
    return TimingConfig(warmup_ms=options.warmup_ms, rep_ms=rep, seed=options.seed)


def _progress(text: str) -> None:
    """A transient status line on a terminal (cleared with an empty text); nothing otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text:<100.100}" if text else "\r" + " " * 100 + "\r")
        sys.stderr.flush()


def _load_impls(options: BenchOptions) -> Tuple[list, Optional[str], Callable[[], None]]:
    """(implementations, baseline name or None, cleanup); the baseline comes first.
    Raises ValueError (BaselineError included) with a message for the user."""
    from .impls import load_implementation, prepare_sources
    from .sglang.release import ReleaseError
    try:  # sglang==VERSION releases fetched (or --sglang-wheel files registered) once
        prepare_sources(options.impls, options.sglang_wheels)
    except ReleaseError as exc:
        raise ValueError(f"--impl: {exc}") from None
    impls: list = []
    for src in options.impls:
        try:
            impl = load_implementation(src)
        except ValueError as exc:
            raise ValueError(f"--impl {src!r}: {exc}") from None
        if impl.name not in {i.name for i in impls}:
            impls.append(impl)
    if not options.baseline:
        return impls, None, lambda: None
    try:
        base_impl, cleanup = resolve_baseline(options.baseline)
    except BaselineError:
        raise
    except Exception as exc:  # the revision's code failed to import: the user's to see, not a traceback
        raise BaselineError(f"--baseline {options.baseline!r}: loading it failed: {_error_text(exc)}") from None
    return [base_impl] + [i for i in impls if i.name != base_impl.name], base_impl.name, cleanup


def run_command(options: BenchOptions, backend: str) -> int:
    """Run the bench command; 0 when every timed output was right (and, with --selftest,
    every self-check passed), 1 otherwise, 2 for a bad --impl or --baseline."""
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()))
    representative = backend == "cuda"
    if not representative:
        print(NOT_REPRESENTATIVE)
    device = device_of(backend)
    config = timing_config(options, backend)
    modes = tuple(options.modes or MODES)
    if not representative and "graph" in modes:
        print("graph mode needs a CUDA device: eager only")
        modes = tuple(m for m in modes if m != "graph") or ("eager",)
    report: Dict[str, Any] = {"environment": info, "representative": representative, "config": asdict(config)}
    with value_checks_off() as apply_value_checks_off:
        cleanup: Callable[[], None] = lambda: None
        try:
            if not options.selftest:
                cases = select_cases(options, backend)
                impls, baseline_name, cleanup = _load_impls(options)
                apply_value_checks_off()          # the packages just imported have their own switch
            ceilings = measure_ceilings(device, config)
            print(ceilings.describe())
            report["ceilings"] = asdict(ceilings)
            if options.selftest:
                checks, rows = run_selftest(options, modes, backend, device, config, ceilings)
                print(format_header(None))
                for r in rows:
                    print(format_row(r))
                print()
                print(format_selfchecks(checks))
                report.update(selfchecks=[asdict(c) for c in checks], rows=[asdict(r) for r in rows])
                code = 0 if all(c.status != "FAIL" for c in checks) else 1
            else:
                rows = []
                report.update(baseline=baseline_name)
                print(format_header(baseline_name))
                for k, case in enumerate(cases):
                    _progress(f"[{k + 1}/{len(cases)}] {case.params.op} {case.label()}")
                    got = time_case(case, impls, device, config, ceilings, baseline=baseline_name, modes=modes)
                    _progress("")
                    for r in got:
                        print(format_row(r), flush=True)
                    rows.extend(got)
                    if options.json_path:  # after every case: a run cut short keeps the rows it timed
                        write_json(options.json_path, {**report, "complete": False, "pending": len(cases) - k - 1,
                                               "rows": [asdict(r) for r in rows]})
                notes = format_notes(rows)
                if notes:
                    print(notes)
                if not cases:
                    print("no case matches the selection (--op / --dtype)")
                report.update(rows=[asdict(r) for r in rows])
                code = 1 if any(r.failed for r in rows) else 0
                if options.plot_path:
                    print(write_plot(rows, options.plot_path))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            cleanup()
    if not representative:
        print(NOT_REPRESENTATIVE)
    if options.json_path:
        write_json(options.json_path, {**report, "complete": True, "pending": 0})
    return code
