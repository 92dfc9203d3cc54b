"""Hypothesis strategies that draw CaseParams, and the sweep that runs them.

Hypothesis draws the parameters (and shrinks a failing case towards few tokens, small
sizes, the first routing); the tensors come from the case's own seed. Its example database
(default .hypothesis/ in the working directory) keeps failing cases so they replay first.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, Phase, example, given, seed as hyp_seed, settings, strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky

from .cases import MODEL_SHAPES, ROUTINGS, CaseParams
from .report import merge_tallies, merge_worst
from .runner import GRAPH_REPLAYED, CaseResult, context_lost, run_case
from .specs import OpSpec

# Size limits per backend: the interpreter runs each Triton program in Python.
SIZE_LIMITS = {
    "interpreter": dict(tokens=40, hidden=300, inter=160, experts=512, topk=10),
    "cuda": dict(tokens=2048, hidden=4096, inter=1024, experts=512, topk=12),
}
PRIMES = (2, 3, 5, 7, 13, 31, 37, 127, 257, 509, 1021, 2039)
ODD_HIDDEN = (1, 3, 7, 100, 129, 255, 257, 384, 513, 1000, 1025, 2049, 4095, 7168)
PRESET_TOKENS = (1, 2, 7, 64, 127, 256, 1024)
PRESETS = tuple(sorted(MODEL_SHAPES)) + ("large",)


def large_shape_ops():
    """The ops whose records give a `large` preset shape (offsets past 2**31 elements)."""
    from .specs import SPECS
    return [name for name, rec in SPECS.items() if rec.large_shape is not None]


@st.composite
def case_shape(draw, spec: OpSpec, backend: str) -> Tuple[int, int, int, int, int]:
    """A fuzzed case's sizes (experts, topk, tokens, hidden, inter) within the backend's and the
    record's limits (no preset)."""
    lim = SIZE_LIMITS[backend]
    max_t = min(lim["tokens"], spec.max_tokens)
    max_h = min(lim["hidden"], spec.max_hidden)
    E = draw(st.one_of(st.integers(1, 16), st.sampled_from([32, 64, 128, 256, 512])).filter(
        lambda e: e <= lim["experts"]))
    K = draw(st.one_of(st.integers(1, 8), st.integers(1, lim["topk"])))
    T = draw(st.one_of(st.integers(1, 8), st.sampled_from([0] + [p for p in PRIMES if p <= max_t]),
                       st.integers(1, max(1, max_t))))
    # a fourth of the draws a multiple of 16, as real hidden sizes are: kernels take other
    # paths for aligned rows (the GEMM's TMA loads need Kd * itemsize % 16 == 0)
    H = draw(st.one_of(st.integers(1, 64), st.sampled_from([h for h in ODD_HIDDEN if h <= max_h]),
                       st.integers(1, max_h), st.integers(1, max(1, max_h // 16)).map(lambda h: 16 * h)))
    I = draw(st.one_of(st.integers(1, 48), st.integers(1, min(lim["inter"], max_h))))
    return E, K, T, H, I


def shape_palette(spec: OpSpec, backend: str, n: int, seed: int) -> List[Tuple[int, int, int, int, int]]:
    """``n`` sizes drawn with case_shape under ``seed`` (the same ones for the same arguments):
    a profile's palette, from which its fuzzed cases take their sizes while everything else
    (routing, the rank's experts, invalid slots, values) is drawn per case; the index dtype goes
    with the size (case_params). On a GPU a check's time is Triton compiling each new
    specialisation, which the sizes decide."""
    shapes: List[Tuple[int, int, int, int, int]] = []

    @hyp_seed(seed)
    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(case_shape(spec, backend))
    def collect(shape):
        shapes.append(shape)

    collect._hypothesis_internal_add_digest = f"palette|{spec.name}|{backend}".encode()
    collect()
    return shapes[:n]


@st.composite
def case_params(draw, spec: OpSpec, dtype: str, backend: str, preset: Optional[str] = None,
                palette: Optional[Sequence[Tuple[int, int, int, int, int]]] = None) -> CaseParams:
    """One fuzzed case: the preset's shape, a size from ``palette`` (shape_palette), or sizes drawn
    freely (case_shape); then the routing, the rank's experts, invalid slots and index dtype (with a
    palette, that of the size's entry: int32 and int64 alternate, one compile per size, not two)."""
    max_t = min(SIZE_LIMITS[backend]["tokens"], spec.max_tokens)
    if preset == "large":
        if spec.large_shape is None or backend != "cuda":
            raise ValueError(f"--preset large: only for {sorted(large_shape_ops())} on the cuda backend")
        shape = spec.large_shape
        E, K, H, I, T = shape["experts"], shape["topk"], shape["hidden"], shape["inter"], shape["tokens"]
        start, end = draw(st.sampled_from([(0, E - 1), (0, E // 8 - 1), (E - E // 8, E - 1)]))
    elif preset in MODEL_SHAPES:
        shape = MODEL_SHAPES[preset]
        E, K, H, I = shape["experts"], shape["topk"], shape["hidden"], shape["inter"]
        T = draw(st.sampled_from([t for t in PRESET_TOKENS if t <= max(max_t, 1)]))
        ep = draw(st.sampled_from([1, 2, 8, 32]))
        per = max(1, E // ep)
        start = draw(st.integers(0, E // per - 1)) * per if ep > 1 else 0
        end = min(E - 1, start + per - 1)
    else:
        entry = draw(st.integers(0, len(palette) - 1)) if palette else None
        E, K, T, H, I = palette[entry] if palette else draw(case_shape(spec, backend))
        mode = draw(st.sampled_from(["all", "range", "first", "last", "single"]))
        if mode == "all":
            start, end = 0, E - 1
        elif mode == "first":
            start, end = 0, draw(st.integers(0, E - 1))
        elif mode == "last":
            start, end = draw(st.integers(0, E - 1)), E - 1
        elif mode == "single":
            start = end = draw(st.integers(0, E - 1))
        else:
            start = draw(st.integers(0, E - 1))
            end = draw(st.integers(start, E - 1))
    if spec.max_inter is not None:
        I = min(I, spec.max_inter)
    routing = draw(st.sampled_from(["uniform", "skewed"] if preset == "large" else sorted(ROUTINGS)))
    invalid = 0.0
    if spec.invalid_ids:
        invalid = 0.0 if preset == "large" else draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]))
    # index tensors as their producers emit them: int32 (SGLang's pipeline; its int32 offset
    # arithmetic is what the `large` preset exercises) or int64
    if preset == "large":
        index_dtype = "int32"
    elif preset is None and palette:   # a size of the palette comes with its index dtype: one compile, not two
        index_dtype = ("int32", "int64")[entry % 2]
    else:
        index_dtype = draw(st.sampled_from(["int32", "int64"]))
    return CaseParams(op=spec.name, dtype=dtype, tokens=T, topk=K, experts=E, start_expert=start,
                      end_expert=end, hidden=H, inter=I, routing=routing, invalid_frac=invalid,
                      seed=draw(st.integers(0, 2 ** 31 - 1)), index_dtype=index_dtype)


def empty_batch_case(spec: OpSpec, dtype: str) -> CaseParams:
    """The case every fuzzed sweep checks first: no tokens at all (T = 0), on a rank whose
    experts start above 0. Degenerate launches are where outputs are left unwritten (a
    `zeros` made `empty`), and random draws reach T = 0 in only ~4% of cases."""
    return CaseParams(op=spec.name, dtype=dtype, tokens=0, topk=2, experts=4, start_expert=1, end_expert=2,
                      hidden=7, inter=5, routing="uniform", seed=0)


def aligned_long_groups_case(spec: OpSpec, dtype: str, backend: str) -> CaseParams:
    """The second fixed case: sizes a multiple of 16 (the aligned fast paths, e.g. the GEMM's
    TMA loads and stores) and skewed routing over few experts, so that some expert's rows span
    several tiles of any kernel's row tiling, with a partial last tile; the rank's experts are
    inner ones, so rows before and after its segment must stay untouched."""
    tokens = min(SIZE_LIMITS[backend]["tokens"], spec.max_tokens, 40 if backend == "interpreter" else 200)
    return CaseParams(op=spec.name, dtype=dtype, tokens=tokens, topk=3, experts=5, start_expert=1, end_expert=3,
                      hidden=64, inter=48, routing="skewed", seed=1)


def narrow_rank_case(spec: OpSpec, dtype: str, backend: str) -> CaseParams:
    """The third fixed case: one inner expert of 64 on this rank (EP64, or a DeepEP rank holding
    one expert), so this rank's rows are a short run in the middle of many rows: kernels that
    skip non-local tiles or reorder their tiles must still find it, and everything around it
    must stay untouched. Sizes not multiples of 16 (the pointer paths)."""
    tokens = min(SIZE_LIMITS[backend]["tokens"], spec.max_tokens, 40 if backend == "interpreter" else 200)
    return CaseParams(op=spec.name, dtype=dtype, tokens=tokens, topk=4, experts=64, start_expert=37, end_expert=37,
                      hidden=40, inter=36, routing="uniform", seed=2)


class _BudgetSpent(BaseException):
    """Raised by a sweep's test function once its deadline has passed: a BaseException, so that
    Hypothesis neither takes it for a failure (no shrinking, nothing saved) nor catches it."""


class _DeviceFault(BaseException):
    """Carries a GPU fault out of a sweep's test function at once (a BaseException, as
    _BudgetSpent): the case in progress is the one that faulted."""


class _CaseFailed(Exception):
    def __init__(self, result: CaseResult):
        super().__init__(result.message)
        self.result = result


@dataclass
class SweepOutcome:
    """What one (op, implementation, dtype) sweep found."""

    passed: int
    failure: Optional[CaseResult]          # the shrunk failing case, if any
    first_failure: Optional[CaseResult]    # as first found, before shrinking
    worst: dict                            # largest max_abs_err seen, per output
    rejected: int = 0                      # cases the candidate refused cleanly (both kinds below)
    tf32: int = 0                          # passed cases whose float32 products passed at TF32 precision only
    not_computable: int = 0                # cases the Triton interpreter cannot compute (no verdict)
    budget_spent: bool = False             # stopped at its deadline before n_cases fuzzed cases
    unexpressible: int = 0                 # of the rejected: an argument the release has no parameter for
    graph_replayed: int = 0                # passed cases whose CUDA graph was replayed and compared
    graph_skipped: int = 0                 # passed cases whose capture was checked but no replay fitted it
    graph_skip_reason: str = ""            # the first such case's reason
    not_computable_reason: str = ""        # the first not-computable case's message


def sweep(spec: OpSpec, candidate, impl_name: str, dtype: str, backend: str, device: str, n_cases: int,
          seed: int, preset: Optional[str] = None, database_dir: Optional[str] = ".hypothesis/examples",
          shrink: bool = True, on_case: Optional[Callable[[CaseResult], None]] = None,
          fixed_cases: bool = True, require_ieee_fp32: bool = False, repeat_probe_cases: Optional[int] = None,
          deadline: Optional[float] = None, shapes: Optional[int] = None) -> SweepOutcome:
    """Run up to n_cases Hypothesis-drawn cases; stop at the first failure and shrink it.

    Cases are drawn within the record's preconditions that the candidate requires
    (``candidate.requires``). The three fixed cases (empty batch, aligned long groups, narrow
    rank) run first.
    Hypothesis does not shrink a failing explicit case, so when one of the sized ones (40-200
    tokens) fails, the drawn cases are swept again without them and their shrunk failure is
    reported, if they find one.

    ``repeat_probe_cases``: only the first that many cases get the probes that call the
    candidate again (decoy, second run; None: every case; harness.profiles). ``deadline`` (a
    time.time()): past the fixed cases, a case starts only if it should end by then at the mean
    pace of the cases so far, and the outcome says when the deadline stopped the sweep.
    ``shapes``: the fuzzed cases take their sizes from a palette of that many (shape_palette,
    drawn under ``seed``; harness.profiles); None: sizes drawn per case."""
    state = {"passed": 0, "failing": False, "first": None, "worst": {}, "rejected": 0, "tf32": 0, "not_computable": 0,
             "calls": 0, "seconds": 0.0, "unexpressible": 0, "graph_replayed": 0, "graph_skipped": 0, "graph_skip_reason": "",
             "not_computable_reason": ""}
    requires = getattr(candidate, "requires", ())
    n_fixed = 3 if preset is None and fixed_cases else 0
    repeated = set()

    def run_one(params: CaseParams):
        # a case starts only if it should end by the deadline at the mean pace of the cases so far
        # (starting any case before it overran the budget by about one case)
        pace = state["seconds"] / state["calls"] if state["calls"] else 0.0
        if deadline is not None and state["calls"] >= n_fixed and not state["failing"] and \
                time.time() + pace > deadline:
            raise _BudgetSpent()
        started = time.time()
        # a case keeps its repeat probes when Hypothesis replays it (a failure found by one repeats)
        key = params.to_json()
        if repeat_probe_cases is not None and len(repeated) < repeat_probe_cases:
            repeated.add(key)
        repeat = repeat_probe_cases is None or key in repeated
        state["calls"] += 1
        try:
            res = run_case(spec, candidate, params, device, impl_name, require_ieee_fp32=require_ieee_fp32,
                           repeat_probes=repeat)
        except Exception as exc:
            # a GPU fault leaves the context unusable: no replay or shrink can tell anything (each
            # would fail in its own way, and Hypothesis would call the disagreement Flaky)
            if context_lost(exc):
                raise _DeviceFault(exc) from exc
            raise
        finally:
            state["seconds"] += time.time() - started
        if res.status in ("rejected", "not computable") and not state["failing"]:
            state["rejected" if res.status == "rejected" else "not_computable"] += 1
            if res.status == "not computable":
                state["not_computable_reason"] = state["not_computable_reason"] or res.message
            state["unexpressible"] += res.probe == "not_supported"
        elif res.ok and not state["failing"]:
            state["passed"] += 1
            state["tf32"] += any(rep.get("precision") == "tf32" for rep in res.details.values())
            if res.graph == GRAPH_REPLAYED:
                state["graph_replayed"] += 1
            elif res.graph:
                state["graph_skipped"] += 1
                state["graph_skip_reason"] = state["graph_skip_reason"] or res.graph
            merge_worst(state["worst"], {name: {"max_abs_err": rep["max_abs_err"], "params": res.params}
                                         for name, rep in res.details.items()})
            if on_case:
                on_case(res)
        if not res.ok:
            if not state["failing"]:
                state["failing"], state["first"] = True, res
                if on_case:
                    on_case(res)
            raise _CaseFailed(res)

    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])
    db = DirectoryBasedExampleDatabase(database_dir) if database_dir else None
    palette = shape_palette(spec, backend, shapes, seed) if shapes and preset is None else None
    test = given(case_params(spec, dtype, backend, preset, palette).map(lambda p: spec.fit(p, requires)))(run_one)
    sized = tuple(spec.fit(c, requires) for c in (aligned_long_groups_case(spec, dtype, backend),
                                                   narrow_rank_case(spec, dtype, backend)))
    if preset is None and fixed_cases:
        for case in reversed(sized):
            test = example(case)(test)
        test = example(spec.fit(empty_batch_case(spec, dtype), requires))(test)
    test = settings(max_examples=max(1, n_cases), deadline=None, database=db, phases=phases,
                    suppress_health_check=list(HealthCheck), print_blob=False, derandomize=False,
                    report_multiple_bugs=False)(test)
    test = hyp_seed(seed)(test)
    run_one._hypothesis_internal_add_digest = f"{spec.name}|{impl_name}|{dtype}|{backend}|{preset}".encode()

    def outcome(failure: Optional[CaseResult], first: Optional[CaseResult], spent: bool = False) -> SweepOutcome:
        counted = {f.name: state[f.name] for f in dataclasses.fields(SweepOutcome) if f.name in state}
        return SweepOutcome(failure=failure, first_failure=first, budget_spent=spent, **counted)

    try:
        test()
    except _DeviceFault as fault:
        raise fault.args[0]        # as the case in progress raised it: the isolated child reports CRASHED
    except _BudgetSpent:
        return outcome(None, None, spent=True)
    except Flaky:
        # the failing case passed when Hypothesis ran it again: a failure that does not repeat (a
        # race between programs, a read of unwritten memory) is still a failure; report it as found
        first = state["first"]
        if first is None:
            raise
        note = " [nondeterministic: this case passed when run again]"
        return outcome(dataclasses.replace(first, message=first.message + note), first)
    except _CaseFailed as exc:
        if shrink and fixed_cases and exc.result.params in {c.to_json() for c in sized}:
            again = sweep(spec, candidate, impl_name, dtype, backend, device, n_cases, seed, preset, database_dir,
                          shrink, None, fixed_cases=False, require_ieee_fp32=require_ieee_fp32,
                          repeat_probe_cases=repeat_probe_cases, shapes=shapes)
            if again.failure is not None:
                return outcome(again.failure, state["first"])
        return outcome(exc.result, state["first"])
    return outcome(None, None)


# ----------------------------------------------------------------------------- a row in parts

@dataclass(frozen=True)
class SweepPart:
    """One part of a row's sweep: its fuzzed cases, Hypothesis seed, palette of sizes (None:
    sizes drawn per case) and whether the three fixed cases run in it."""

    cases: int
    seed: int
    shapes: Optional[int]
    fixed_cases: bool


# On a GPU a palette row's time is Triton compiling its sizes, so a costly row swept in parts by
# separate children finishes in a fraction of its time: a record whose case_cost passes PART_COST
# is swept in ceil(case_cost / PART_COST) parts. On the H100 the default check's critical path
# was ep_moe_forward's two rows (case_cost 8.3: 36 s each, every other row done by 35 s;
# results/2026-12-06-s16-h100); grouped_gemm's (3.7) took 17 s, the mean row 4.6 s.
PART_COST = 3.0
PART_SEED_STRIDE = 1_000_033


def sweep_parts(spec: OpSpec, cases: int, seed: int, shapes: Optional[int]) -> List[SweepPart]:
    """The parts a row's sweep runs as, the same for any number of children or GPUs: one (the
    whole sweep) unless its sizes come from a palette (``shapes``, the default profile on a GPU)
    and the record's case_cost passes PART_COST. Then each part has its share of the cases and of
    the palette's sizes (a palette of its own, under seed * PART_SEED_STRIDE + i), and only the
    first runs the fixed cases: a row of n parts still sweeps ``cases`` cases over ``shapes`` sizes."""
    n = min(-(-spec.case_cost // PART_COST), cases, shapes or 1) if shapes else 1
    n = max(1, int(n))
    if n == 1:
        return [SweepPart(cases, seed, shapes, True)]
    return [SweepPart(_share(cases, n, i), seed * PART_SEED_STRIDE + i, _share(shapes, n, i), i == 0)
            for i in range(n)]


def _share(total: int, n: int, i: int) -> int:
    """Part i's share of ``total`` over n parts; the first part, which also runs the three fixed
    cases, gets the smaller shares."""
    return total // n + (i >= n - total % n)


def sweep_row(spec: OpSpec, candidate, impl_name: str, dtype: str, backend: str, device: str, n_cases: int,
              seed: int, shapes: Optional[int] = None, part: Optional[int] = None, **kwargs) -> SweepOutcome:
    """sweep() over the row's parts (sweep_parts): part ``part`` alone, or (None) each in turn
    until one finds a failure, their outcomes merged; other keywords as sweep()'s, the row's
    ``repeat_probe_cases`` shared out over the parts (with 3 parts, 10 become 3, 3 and 4)."""
    parts = sweep_parts(spec, n_cases, seed, shapes)
    fixed = kwargs.pop("fixed_cases", True)
    repeat = kwargs.pop("repeat_probe_cases", None)
    merged: Optional[SweepOutcome] = None
    for i in range(len(parts)) if part is None else [part]:
        p = parts[i]
        # the row's repeat-probed cases shared out as its cases are (None: every case of every part)
        share = None if repeat is None else _share(repeat, len(parts), i)
        out = sweep(spec, candidate, impl_name, dtype, backend, device, p.cases, p.seed, shapes=p.shapes,
                    fixed_cases=p.fixed_cases and fixed, repeat_probe_cases=share, **kwargs)
        merged = out if merged is None else _merge_outcomes(merged, out)
        if out.failure is not None or out.budget_spent:
            break
    return merged


def _merge_outcomes(a: SweepOutcome, b: SweepOutcome) -> SweepOutcome:
    """Two parts' outcomes as one (b ran after a passed): counts add (flags or, the first reason;
    merge_tallies), the worst error is the larger, b's failure is the row's."""
    scalars = [{f.name: getattr(o, f.name) for f in dataclasses.fields(SweepOutcome)
                if f.name not in ("failure", "first_failure", "worst")} for o in (a, b)]
    worst = dict(a.worst)
    merge_worst(worst, b.worst)
    return SweepOutcome(failure=b.failure, first_failure=b.first_failure, worst=worst, **merge_tallies(scalars))
