"""What each command runs with: one frozen options object per command, validated once.

The front ends (harness.commands: argparse; harness.pytest_plugin: pytest's options) build
these objects; the engine (harness.check, harness.isolate, harness.bench, harness.mutate,
harness.ep_world) takes them and nothing else. Constructing an object validates every value,
so a bad value fails here, before anything runs, with an ``OptionError`` that names the
command-line option and says what was expected. Child processes get ``to_dict()`` (JSON-safe)
and rebuild the object with ``from_dict``.

This module imports nothing heavy at import time: the command-line parsers take their
defaults from the class attributes (``CheckOptions.cases``) before the backend is selected.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """An option value that cannot run; the message starts with the option's name."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


# ----------------------------------------------------------------------------- checks

def _tuple(value: Optional[Iterable]) -> Optional[tuple]:
    return None if value is None else tuple(value)


def _int_at_least(option: str, value, minimum: int, what: str, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(option, f"expected {what} >= {minimum}{note}, got {value!r}")


def _seconds(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise OptionError(option, f"expected a number of seconds >= 0 (0: no limit), got {value!r}")


def _one_of(option: str, values: Optional[Sequence[str]], allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for v in values or ():
        if v not in allowed:
            raise OptionError(option, f"expected one of {sorted(allowed)}, got {v!r}")


def _known_ops(ops: Optional[Sequence[str]]) -> None:
    from .specs import SPECS
    _one_of("--op", ops, SPECS)


def _dtypes_of_ops(dtypes: Optional[Sequence[str]], ops: Sequence[str]) -> None:
    """Every requested dtype must be a dtype of at least one chosen op (a typo such as 'bf16'
    would otherwise select nothing and pass)."""
    from .specs import SPECS
    known = {d for op in ops for d in SPECS[op].dtypes}
    for d in dtypes or ():
        if d not in known:
            raise OptionError("--dtype", f"expected dtypes of the chosen ops ({', '.join(sorted(known))}), got {d!r}")


def _implementation_sources(option: str, sources: Sequence[str]) -> None:
    from .impls import parse_source
    if not sources:
        raise OptionError(option, "expected at least one implementation source, got none")
    for src in sources:
        try:
            parse_source(src)
        except ValueError as exc:
            raise OptionError(option, str(exc)) from None


def _sglang_wheels(option: str, wheels: Sequence[str]) -> None:
    import os
    from .sglang.release import ReleaseError, wheel_version
    for wheel in wheels:
        if not os.path.isfile(os.path.expanduser(wheel)):
            raise OptionError(option, f"expected an sglang wheel file, got {wheel!r}: no such file")
        try:
            wheel_version(wheel)
        except ReleaseError as exc:
            raise OptionError(option, str(exc).partition(": ")[2]) from None


def _profile(name) -> None:
    from .profiles import PROFILES
    _one_of("--profile", [name], PROFILES)


def gpu_count(requested: str, backend: str) -> int:
    """--gpus N|all -> how many GPUs a run spreads over (1 on the interpreter).

    OptionError when more GPUs are asked for than torch sees."""
    if backend != "cuda" or requested == "1":
        return 1
    import torch
    visible = torch.cuda.device_count()
    n = visible if requested == "all" else int(requested)
    if not 1 <= n <= visible:
        raise OptionError("--gpus", f"expected 'all' or a count in [1, {visible}], got {requested!r}")
    return n


# ----------------------------------------------------------------------------- dict form

class _DictForm:
    """to_dict / from_dict for a frozen options dataclass (the form a child process receives)."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: Type[T], record: Dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_dict: unknown option(s) {unknown}")
        return cls(**record)


# ----------------------------------------------------------------------------- check

@dataclass(frozen=True)
class CheckOptions(_DictForm):
    """``moe-harness check`` and the pytest conformance tests.

    ``ops`` None: every op (the large preset's ops with ``preset="large"``); ``dtypes`` None:
    every dtype of each op; ``case``: the JSON of one CaseParams to run instead of a sweep.
    ``timeout_s`` bounds one row's (implementation, op, dtype) time in a child, ``case_timeout_s``
    one case without progress (0: no limit). ``chunk`` > 0 splits each sweep into children of
    that many cases (needs ``isolate``)."""

    ops: Optional[Tuple[str, ...]] = None
    impls: Tuple[str, ...] = ("ours",)
    dtypes: Optional[Tuple[str, ...]] = None
    cases: Optional[int] = None          # fuzzed cases per row; None: the profile's for the backend
    profile: str = "default"             # harness.profiles.PROFILES
    budget_s: Optional[float] = None     # spend about this many seconds in all (harness.check)
    deadline: Optional[float] = None     # (set by the budget) no row's fuzzed case starts after this time.time()
    seed: int = 0
    preset: Optional[str] = None
    case: Optional[str] = None
    shrink: bool = True
    block_size: Optional[int] = None
    isolate: bool = True
    timeout_s: float = 1800.0
    case_timeout_s: float = 600.0
    jobs: Optional[int] = None
    chunk: int = 0
    gpus: str = "1"
    json_path: Optional[str] = None
    quiet: bool = False
    require_ieee_fp32: bool = False
    sglang_wheels: Tuple[str, ...] = ()  # wheels registered for sglang==VERSION sources (no package index)
    part: Optional[int] = None           # (set by the check's scheduler) run only this part of each row
                                         # (harness.fuzz.sweep_parts); None: every part in turn

    def __post_init__(self):
        for name in ("ops", "impls", "dtypes", "sglang_wheels"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        _known_ops(self.ops)
        _implementation_sources("--impl", self.impls)
        _sglang_wheels("--sglang-wheel", self.sglang_wheels)
        if self.cases is not None:
            _int_at_least("--cases", self.cases, 1, "a number of cases")
        _profile(self.profile)
        if self.budget_s is not None and (isinstance(self.budget_s, bool) or
                                          not isinstance(self.budget_s, (int, float)) or not self.budget_s > 0):
            raise OptionError("--budget", f"expected a number of seconds > 0, got {self.budget_s!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise OptionError("--seed", f"expected an integer, got {self.seed!r}")
        if self.preset is not None:
            from .fuzz import PRESETS
            _one_of("--preset", [self.preset], PRESETS)
        if self.case is not None:
            from .cases import CaseParams
            try:
                single = CaseParams.from_json(self.case)
            except Exception as exc:  # any malformed JSON or field: the user's input, said plainly
                raise OptionError("--case", f"expected the JSON of a case (from a replay command): "
                                            f"{type(exc).__name__}: {exc}") from None
            _known_ops([single.op])
        else:
            _dtypes_of_ops(self.dtypes, self.selected_ops())
        if self.block_size is not None:
            _int_at_least("--block-size", self.block_size, 1, "a BLOCK_SIZE")
        _seconds("--timeout", self.timeout_s)
        _seconds("--case-timeout", self.case_timeout_s)
        if self.jobs is not None:
            _int_at_least("--jobs", self.jobs, 1, "a number of child processes")
        _int_at_least("--chunk", self.chunk, 0, "a number of cases", " (0: no chunks)")
        if self.chunk and not self.isolate:
            raise OptionError("--chunk", "chunks run in child processes; it needs --isolate (the default), "
                                         "not --no-isolate")
        if self.gpus != "all" and not (isinstance(self.gpus, str) and self.gpus.isdigit() and int(self.gpus) >= 1):
            raise OptionError("--gpus", f"expected 'all' or a count >= 1, got {self.gpus!r}")

    def cases_for(self, backend: str) -> int:
        """Fuzzed cases per row on ``backend``: --cases, else the profile's; with a budget, the
        profile's thorough count bounds a row that its deadline does not stop first."""
        from .profiles import PROFILES, fuzzed_cases
        if self.cases is None and self.budget_s is not None:
            return PROFILES["thorough"].cases_for(backend)
        return fuzzed_cases(self.profile, backend, self.cases)

    def repeat_probe_cases(self, backend: str) -> Optional[int]:
        from .profiles import PROFILES
        return PROFILES[self.profile].repeat_probes_for(backend)

    def shapes(self, backend: str) -> Optional[int]:
        """The profile's palette of sizes (harness.profiles), or None: --cases or --budget set
        the count, and sizes are drawn per case."""
        from .profiles import palette_size
        return None if self.budget_s is not None else palette_size(self.profile, backend, self.cases)

    def single_case(self):
        """The CaseParams of ``case``, or None for a sweep."""
        if self.case is None:
            return None
        from .cases import CaseParams
        return CaseParams.from_json(self.case)

    def selected_ops(self) -> Tuple[str, ...]:
        """The ops this run checks, in order."""
        if self.case is not None:
            return (self.single_case().op,)
        if self.ops:
            return self.ops
        from .fuzz import large_shape_ops
        from .specs import SPECS
        return tuple(large_shape_ops()) if self.preset == "large" else tuple(SPECS)

    def dtypes_of(self, op: str) -> Tuple[str, ...]:
        """The dtypes of ``op`` this run checks (``dtypes`` filters, ``case`` fixes one)."""
        if self.case is not None:
            return (self.single_case().dtype,)
        from .specs import SPECS
        spec_dtypes = SPECS[op].dtypes
        return tuple(d for d in (self.dtypes or spec_dtypes) if d in spec_dtypes)


# ----------------------------------------------------------------------------- releases

@dataclass(frozen=True)
class ReleasesOptions(_DictForm):
    """``moe-harness releases``: check SGLang releases and tabulate op x release.

    ``releases`` empty: harness.releases.DEFAULT_RELEASES (with ``bisect``: its first and last,
    the endpoints; otherwise exactly two endpoints). ``ops``, ``dtypes``, ``cases``, ``seed``,
    ``preset``, ``jobs``, ``block_size``, ``timeout_s``, ``isolate`` and ``sglang_wheels`` go to each
    release's check (``check_options``); ``bisect``: the op whose verdict change is searched
    for among the index's versions between the endpoints; ``export_cache``: write a slim cache
    of the releases (their kernel files without the wheels) to this folder instead of checking."""

    releases: Tuple[str, ...] = ()
    ops: Optional[Tuple[str, ...]] = None
    dtypes: Optional[Tuple[str, ...]] = None
    cases: int = 10
    seed: int = 0
    preset: Optional[str] = None
    jobs: Optional[int] = None
    block_size: Optional[int] = None
    timeout_s: float = 1800.0
    sglang_wheels: Tuple[str, ...] = ()
    shrink: bool = True
    isolate: bool = True
    quiet: bool = False
    json_path: Optional[str] = None
    png_path: Optional[str] = None
    bisect: Optional[str] = None
    export_cache: Optional[str] = None

    def __post_init__(self):
        for name in ("releases", "ops", "dtypes", "sglang_wheels"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        from .sglang.release import check_version
        try:
            object.__setattr__(self, "releases", tuple(check_version(v) for v in self.releases))
        except ValueError as exc:
            raise OptionError("VERSION", str(exc)) from None
        if len(set(self.releases)) != len(self.releases):
            raise OptionError("VERSION", f"expected each release once, got {' '.join(self.releases)}")
        if self.bisect is not None:
            _known_ops([self.bisect])
            if self.ops:
                raise OptionError("--bisect", "bisects one op (its argument); leave --op out")
            if len(self.releases) not in (0, 2):
                raise OptionError("--bisect", f"expected two endpoint releases (or none: the default list's first "
                                              f"and last), got {len(self.releases)}")
            if self.png_path or self.export_cache:
                raise OptionError("--bisect", "makes no matrix: leave --png and --export-cache out")
        if self.png_path:
            import importlib.util
            if importlib.util.find_spec("matplotlib") is None:
                raise OptionError("--png", "needs matplotlib, the optional extra [plot]: "
                                           "pip install 'moe-kernel-harness[plot]'")
        # the per-release check validates the rest (ops, dtypes, cases, seed, preset, jobs, wheels)
        self.check_options("0")

    def selected_ops(self) -> Tuple[str, ...]:
        """The ops of the matrix (or the bisected op), in order."""
        return (self.bisect,) if self.bisect else self.check_options("0").selected_ops()

    def check_options(self, version: str, ops: Optional[Sequence[str]] = None) -> "CheckOptions":
        """The CheckOptions of one release's check (``ops`` replaces the selected ops; ``dtypes``
        keeps those of the ops checked, as a release that lacks some ops checks fewer dtypes)."""
        ops = ops or ((self.bisect,) if self.bisect else self.ops)
        dtypes = self.dtypes
        if dtypes and ops:
            from .specs import SPECS
            dtypes = tuple(d for d in dtypes if any(d in SPECS[op].dtypes for op in ops)) or dtypes
        return CheckOptions(impls=(f"sglang=={version}",), ops=ops,
                            dtypes=dtypes, cases=self.cases, seed=self.seed, preset=self.preset, jobs=self.jobs,
                            block_size=self.block_size, timeout_s=self.timeout_s, sglang_wheels=self.sglang_wheels,
                            shrink=self.shrink, isolate=self.isolate, quiet=self.quiet)


# ----------------------------------------------------------------------------- bench

BENCH_MODES = ("eager", "graph")


@dataclass(frozen=True)
class BenchOptions(_DictForm):
    """``moe-harness bench``. ``preset`` None or "anchors": ANCHORS.md's shapes; a model name:
    its shapes at decode and prefill token counts. ``tokens``, ``routings`` replace the preset's;
    ``modes`` None: eager and graph. ``baseline``: a git revision or an implementation source."""

    ops: Optional[Tuple[str, ...]] = None
    impls: Tuple[str, ...] = ("ours",)
    preset: Optional[str] = None
    tokens: Optional[Tuple[int, ...]] = None
    dtypes: Optional[Tuple[str, ...]] = None
    routings: Optional[Tuple[str, ...]] = None
    baseline: Optional[str] = None
    modes: Optional[Tuple[str, ...]] = None
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    seed: int = 0
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    selftest: bool = False
    sglang_wheels: Tuple[str, ...] = ()  # wheels registered for sglang==VERSION sources (no package index)

    def __post_init__(self):
        for name in ("ops", "impls", "tokens", "dtypes", "routings", "modes", "sglang_wheels"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        _sglang_wheels("--sglang-wheel", self.sglang_wheels)
        from .cases import MODEL_SHAPES, ROUTINGS
        from .specs import SPECS
        _known_ops(self.ops)
        _implementation_sources("--impl", self.impls)
        _one_of("--preset", [self.preset] if self.preset else None, ("anchors",) + tuple(MODEL_SHAPES))
        for t in self.tokens or ():
            _int_at_least("--tokens", t, 1, "token counts")
        _dtypes_of_ops(self.dtypes, self.ops or tuple(SPECS))
        _one_of("--routing", self.routings, ROUTINGS)
        _one_of("--modes", self.modes, BENCH_MODES)
        for option, value in (("--warmup-ms", self.warmup_ms), ("--rep-ms", self.rep_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise OptionError(option, f"expected milliseconds >= 0, got {value!r}")


# ----------------------------------------------------------------------------- mutate

@dataclass(frozen=True)
class MutateOptions(_DictForm):
    """``moe-harness mutate``: the mutants of ``ops`` / named ``mutants`` (None: all), swept
    with ``cases`` cases per dtype; ``list_only`` lists the catalogue and runs nothing."""

    ops: Optional[Tuple[str, ...]] = None
    mutants: Optional[Tuple[str, ...]] = None
    cases: Optional[int] = None          # None: the profile's fuzzed cases for the backend
    profile: str = "default"
    seed: int = 0
    jobs: Optional[int] = None
    shrink: bool = True
    case_timeout_s: float = 600.0
    json_path: Optional[str] = None
    list_only: bool = False
    quiet: bool = False

    def __post_init__(self):
        for name in ("ops", "mutants"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        _known_ops(self.ops)
        if self.mutants:
            from .mutants import MUTANTS
            for name in self.mutants:
                if name not in MUTANTS:
                    raise OptionError("--mutant", f"no mutant {name!r}; see moe-harness mutate --list")
        if self.cases is not None:
            _int_at_least("--cases", self.cases, 1, "a number of cases")
        _profile(self.profile)
        if self.jobs is not None:
            _int_at_least("--jobs", self.jobs, 1, "a number of child processes")
        _seconds("--case-timeout", self.case_timeout_s)

    def cases_for(self, backend: str) -> int:
        """Fuzzed cases per mutant and dtype: --cases, else the profile's for the backend (so that
        ``mutate`` measures what ``check`` with that profile detects)."""
        from .profiles import fuzzed_cases
        return fuzzed_cases(self.profile, backend, self.cases)


# ----------------------------------------------------------------------------- ep-world

WORLD_SCENARIO_KINDS = ("even", "uneven", "empty")
WORLD_DTYPES = ("bfloat16", "fp8_block")
WORLD_DEFAULT_SHAPE = dict(experts=8, topk=2, hidden=128, inter=64)
WORLD_DEFAULT_TOKENS = {"cuda": (1, 512), "interpreter": (1, 16)}
WORLD_BACKENDS = ("cuda", "interpreter")


@dataclass(frozen=True)
class WorldConfig(_DictForm):
    """``moe-harness ep-world``: everything the ranks need; picklable (it crosses the spawn) and
    JSON-safe. Construction checks that the world can run (on cuda: one GPU per rank)."""

    ranks: int
    backend: str                        # "cuda" (NCCL, GPU r for rank r) or "interpreter" (CPU, gloo)
    impl: str = "ours"                  # an implementation source (harness.impls)
    dtype: str = "bfloat16"             # bfloat16 | fp8_block (fp8 weights, block scales [128, 128])
    experts: int = WORLD_DEFAULT_SHAPE["experts"]
    topk: int = WORLD_DEFAULT_SHAPE["topk"]
    hidden: int = WORLD_DEFAULT_SHAPE["hidden"]
    inter: int = WORLD_DEFAULT_SHAPE["inter"]
    tokens: Tuple[int, ...] = (1, 16)
    scenarios: Tuple[str, ...] = WORLD_SCENARIO_KINDS
    seed: int = 0
    warmup: int = 1
    reps: int = 5
    timeout_s: float = 600.0            # whole world, wall clock; also the collectives' timeout

    def __post_init__(self):
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        if self.backend not in WORLD_BACKENDS:
            raise OptionError("--backend", f"expected one of {WORLD_BACKENDS}, got {self.backend!r}")
        _int_at_least("--ranks", self.ranks, 1, "a world size")
        if self.backend == "cuda":
            import torch
            if torch.cuda.device_count() < self.ranks:
                raise OptionError("--ranks", f"{self.ranks} ranks need {self.ranks} GPUs (one per rank), "
                                             f"torch sees {torch.cuda.device_count()}")
        _one_of("--dtype", [self.dtype], WORLD_DTYPES)
        if not self.tokens:
            raise OptionError("--tokens", "expected positive token counts, got none")
        for t in self.tokens:
            _int_at_least("--tokens", t, 1, "token counts")
        for name in ("experts", "topk", "hidden", "inter"):
            _int_at_least(f"--{name}", getattr(self, name), 1, "an integer")
        _one_of("--scenario", self.scenarios, WORLD_SCENARIO_KINDS)
        _int_at_least("--warmup", self.warmup, 0, "a number of calls")
        _int_at_least("--reps", self.reps, 0, "a number of calls")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise OptionError("--timeout", f"expected a number of seconds > 0, got {self.timeout_s!r}")
