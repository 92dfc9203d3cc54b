"""The op record: one frozen, declarative description of an op, from which every part of the
harness (fuzzer, runner, bench, costs, implementations, mutants, tests) is derived.

A record says what the op computes (its reference), how a case is built from CaseParams,
which outputs it has and how each is compared, its dtypes and what each backend cannot
compute, the fuzzer's limits for it, what a call costs, how it is benched, how SGLang names
and launches it, whether it can be captured in a CUDA graph, which bad inputs it must reject
and which torch compositions time it. Records live in one module per op family
(harness/ops/*.py, beside their mutants); harness.ops collects them.

Nothing here imports triton or optimized/: records are read before the backend is chosen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch

from .cases import CaseParams

if TYPE_CHECKING:   # annotations only: harness.sglang.bind reads the records
    from .sglang.bind import Convention, Neutral


@dataclass(frozen=True)
class Location:
    """Where an output lives: the ``index``-th returned tensor (``kind`` "return"; index 0 is
    also a function's single returned tensor), the caller-provided buffer ``name`` (``kind``
    "arg": poisoned and framed by guard rows before each call), or the input ``name`` that the
    op declares it rewrites in place (``kind`` "inplace": each call gets its own copy of the
    input's values framed by poisoned guard rows; what the call leaves there is the output,
    compared with what the reference leaves, instead of the input-mutation probe firing)."""

    kind: str
    key: Union[int, str]

    def __post_init__(self):
        if self.kind not in ("return", "arg", "inplace"):
            raise ValueError(f"Location.kind: expected 'return', 'arg' or 'inplace', got {self.kind!r}")

    @property
    def is_arg(self) -> bool:
        """A caller-provided output buffer (poisoned before each call)."""
        return self.kind == "arg"

    @property
    def is_in_place(self) -> bool:
        """An input the op rewrites in place (a copy of its values before each call)."""
        return self.kind == "inplace"

    def fetch(self, call_args: Mapping[str, Any], returned: Any) -> Any:
        """The output from a call's arguments and what it returned (None when a function
        returned fewer values than this location names)."""
        if self.kind != "return":
            return call_args[self.key]
        ret = returned if isinstance(returned, (tuple, list)) else (returned,)
        return ret[self.key] if self.key < len(ret) else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


def returned(index: int = 0) -> Location:
    return Location("return", index)


def buffer(name: str) -> Location:
    return Location("arg", name)


def in_place(name: str) -> Location:
    return Location("inplace", name)


@dataclass(frozen=True)
class OutputSpec:
    """One output of an op and how it is checked.

    compare: "exact" (bit-identical, NaN-aware), "float" (harness.tolerance rule), "fp8_code"
    (float8_e4m3fn codes at most one step of the e4m3 grid from the reference's: for quantised
    outputs whose pre-cast value is not bit-reproducible; harness.runner),
    "exact_or_float" (exact for pure copies, float when the case's dtype is fp8: a scaled copy
    rounds once), "exact_or_fp8_code" (exact for pure copies, fp8_code when the case quantises), "normwise" (tolerance rule on the whole tensor) or "src2dst" (exact, or the
    canonical per-expert slot sets plus invariants when the implementation declares its order
    free) or "row_index" (slot -> row placed by atomics: any within-expert permutation of the
    reference's rows, then exact; harness.canonical). An output that comes out as integers (a
    case's packed UE8M0 scales, where other cases of the op have float32 ones) is compared
    exactly whatever its mode. index: for an output whose rows are
    placed through a "row_index" output, that output's name (rows compared slot by slot through
    the candidate's own index; harness.canonical). rows: what a row index of this output means, to locate the worst element:
    "position" (a position in expert order), "token", "slot" (flat t*K + k) or "expert".
    reduction_len: terms summed per element (the tolerance's accumulation term).
    fp8_dot: the output is a product of fp8 operands when the case's dtype is fp8 (its partial
    sums get the fp8 tensor cores' accumulation allowance).
    matmul: the output is a matrix product (a float32 one may have been computed from TF32
    operands: the runner names that precision instead of failing by default).
    defined: for an output whose contract leaves some elements unspecified (a masked slab's rows
    past masked_m[e], returned from a fresh torch.empty), (sample, the reference's outputs) -> a
    bool mask of the output's shape, True where the contract defines the element; only those
    are compared (None: every element; an "arg" output's untouched elements are the poison probe's).
    """

    name: str
    where: Location
    compare: str
    rows: str
    reduction_len: Callable[[CaseParams], int] = lambda p: 0
    fp8_dot: bool = False
    matmul: bool = False
    index: Optional[str] = None
    defined: Optional[Callable[[Sample, Mapping[str, Any]], torch.Tensor]] = None

    def how(self, p: CaseParams) -> str:
        """The comparison this case gets ("exact_or_float" resolved by the case's dtype; a
        "row_index" output is exact once harness.canonical has put it in the reference's order)."""
        if self.compare == "row_index":
            return "exact"
        if self.compare == "exact_or_float":
            return "float" if is_fp8(p.dtype) else "exact"
        if self.compare == "exact_or_fp8_code":
            return "fp8_code" if is_fp8(p.dtype) else "exact"
        return self.compare

    def is_fp8_dot(self, p: CaseParams) -> bool:
        return self.fp8_dot and is_fp8(p.dtype)


@dataclass
class Sample:
    """The arguments of one case, in the op's argument order, plus what locating needs."""

    params: CaseParams
    args: Dict[str, object]
    float64_args: Tuple[str, ...]         # float tensors upcast for the exact (float64) evaluation
    topk_ids: Optional[torch.Tensor]      # [T, K] routing behind the case, for locating
    position_to_slot: Optional[torch.Tensor] = None  # [rows] flat slot at each expert-order position


@dataclass(frozen=True)
class Precondition:
    """An input contract that some implementations assume and reject otherwise (SGLang's fp8
    block-wise GEMM asserts that Kd is a multiple of the quant block). ``holds(params)``: the case
    meets it; ``fit(params)``: the nearest case that does (the fuzzer draws through it for a
    candidate that requires it). A candidate's clean rejection of a case that breaks a
    precondition is REJECTED, not FAILED."""

    id: str
    text: str
    holds: Callable[[CaseParams], bool]
    fit: Callable[[CaseParams], CaseParams]


@dataclass(frozen=True)
class SglangBinding:
    """How SGLang names and launches the op, and what its releases changed (binding by
    parameter name: harness/sglang/bind.py). ``names``: the module attributes to look for, first
    present wins. ``grid``: for a Triton kernel, its launch grid from our arguments, as SGLang's
    EP layer launches it (None: SGLang calls a Python function). ``requires``: ids of the
    record's preconditions that SGLang's implementation assumes. ``aliases``: SGLang parameter
    -> our argument, where a release renamed one (``_ptr`` suffixes need none). ``neutral``:
    parameters that releases added -> the value under which they compute our op (Neutral).
    ``conventions``: changes of meaning between releases, recognised from the callable
    (Convention). ``limits``: input limits of SGLang's implementation alone, not of the op's
    contract (Precondition objects; ``requires`` names them too): the cases drawn for SGLang
    are fitted into them, and they never make another candidate's exception REJECTED."""

    names: Tuple[str, ...]
    grid: Optional[Callable[[Mapping[str, Any]], Tuple[int, ...]]] = None
    requires: Tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    neutral: Mapping[str, Neutral] = field(default_factory=dict)
    conventions: Tuple[Convention, ...] = ()
    limits: Tuple[Precondition, ...] = ()


@dataclass(frozen=True)
class BenchAnchor:
    """One timed shape of the default bench suite (ANCHORS.md): T, K, E, the rank's last local
    expert (None: all experts), hidden / inter (the GEMM's Kd / N) and a label."""

    tokens: int
    topk: int
    experts: int
    last_local: Optional[int]
    hidden: int
    inter: int
    variant: str = ""


@dataclass(frozen=True)
class ErrorInput:
    """A bad input the op must reject before any work: a valid case of ``dtype`` with
    ``breaks`` applied to its arguments must raise ``error`` whose message names ``argument``."""

    dtype: str
    breaks: Callable[[Dict[str, Any]], Dict[str, Any]]
    error: Type[Exception]
    argument: str

    @property
    def id(self) -> str:
        return f"{self.dtype}-{self.argument}-{self.error.__name__}"


@dataclass(frozen=True)
class OpSpec:
    """The record of one op (see the module docstring).

    kernel_module: the module holding our implementation, a function named like the op
    (a dotted name, or a .py path for ops defined outside the package).
    skips: (backend, dtype) -> why that backend cannot compute the case; "*" matches any dtype.
    max_tokens / max_hidden / max_inter: the fuzzer's size limits (large GEMMs and the dense MoE
    are slow on the CPU). invalid_ids: the fuzzer draws ids of -1 (dropped slots) for it.
    large_shape: the `large` preset's shape (offsets past 2**31 elements), if the op has one.
    cost: the bytes and FLOPs one call must move and run (harness.costs.Cost).
    bench_*: the default bench suite, the dtype timed by default, how a case's rank sees the
    routing ("rank": its experts' slots; "all": the whole routing; "dispatched": a DeepEP rank,
    ids of other ranks' experts arrive as -1), the label of a case's shape, the layout a timed
    call uses (None: the fuzz case as built) and the op's variants inside a model shape.
    composed_of: the ops this one chains (its functions take ``ops=``, a namespace of them).
    preconditions: input contracts some implementations assume (Precondition).
    row_context: more of what a failing output row means, for reports (the GEMM: the group and the
    weight it multiplies by).
    capturable: one call can be captured in a CUDA graph (no host synchronisation).
    baselines: implementation name -> a torch composition to time against (harness.impls);
    CHAINED for a composed op: chained from that baseline's parts (references for the rest).
    selftest: the op the bench's self-test times by default.
    graph_variants: more replays of the graph probe's one captured graph: sample -> argument
    overrides (tensors of the captured shapes), each replayed and checked in turn (a token count
    read on the device: one capture must serve every count).
    case_cost: what one case of the op costs a check relative to a one-kernel op (1), measured
    (GPU seconds per case of the default check; about 2.5 row-seconds per unit in
    results/2026-12-06-s17-h100 call 3, whose figures set the values of issue 26's and 27's
    ops); scheduling only: a check with parallel children starts the rows of costlier ops first,
    so that a long row does not start last and finish last.
    """

    name: str
    reference: Callable
    build: Callable[[CaseParams, torch.device], Sample]
    outputs: Tuple[OutputSpec, ...]
    dtypes: Tuple[str, ...]
    kernel_module: str
    cost: Callable[[CaseParams, Mapping[str, Any]], Any]
    skips: Mapping[Tuple[str, str], str] = field(default_factory=dict)
    max_tokens: int = 512
    max_hidden: int = 640
    max_inter: Optional[int] = None
    invalid_ids: bool = False
    large_shape: Optional[Mapping[str, int]] = None
    bench_anchors: Tuple[BenchAnchor, ...] = ()
    bench_dtype: str = "bfloat16"
    bench_routing: str = "rank"
    shape_label: Callable[[CaseParams], str] = lambda p: f"H={p.hidden}"
    model_variants: Callable[[Mapping[str, int]], Sequence[Tuple[str, Dict[str, int]]]] = \
        lambda shape: [("", dict(hidden=shape["hidden"], inter=shape["inter"]))]
    timed_layout: Optional[Callable[[Sample], Sample]] = None
    sglang: Optional[SglangBinding] = None
    composed_of: Tuple[str, ...] = ()
    capturable: bool = True
    error_inputs: Tuple[ErrorInput, ...] = ()
    preconditions: Tuple[Precondition, ...] = ()
    row_context: Optional[Callable[[Sample, int], Dict[str, int]]] = None
    baselines: Mapping[str, Callable] = field(default_factory=dict)
    selftest: bool = False
    graph_variants: Optional[Callable[[Sample], Sequence[Dict[str, Any]]]] = None
    case_cost: float = 1.0

    def __post_init__(self):
        if self.bench_routing not in ("rank", "all", "dispatched"):
            raise ValueError(f"{self.name}: bench_routing: expected 'rank', 'all' or 'dispatched', "
                             f"got {self.bench_routing!r}")

    def skip_reason(self, backend: str, dtype: str) -> Optional[str]:
        return self.skips.get((backend, dtype)) or self.skips.get((backend, "*"))

    def broken_preconditions(self, p: CaseParams) -> Tuple[Precondition, ...]:
        return tuple(c for c in self.preconditions if not c.holds(p))

    def fit(self, p: CaseParams, requires) -> CaseParams:
        """The case moved into the preconditions ``requires`` (ids) names (the record's, and
        its SGLang binding's limits)."""
        for c in self.preconditions + (self.sglang.limits if self.sglang else ()):
            if c.id in requires:
                p = c.fit(p)
        return p

    @property
    def output_buffers(self) -> Tuple[str, ...]:
        """Names of the caller-provided output buffers."""
        return tuple(o.where.key for o in self.outputs if o.where.is_arg)

    @property
    def in_place_args(self) -> Tuple[str, ...]:
        """Names of the inputs the op declares it rewrites in place (in_place outputs)."""
        return tuple(o.where.key for o in self.outputs if o.where.is_in_place)


# A baseline of a composed op that is its chain over the baseline's own parts.
CHAINED = "chained from the baseline's parts"


# ----------------------------------------------------------------------------- helpers for records

FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ID_DTYPES = {"int32": torch.int32, "int64": torch.int64}


def is_fp8(dtype: str) -> bool:
    return dtype.startswith("fp8")


def activation_dtype(dtype: str) -> torch.dtype:
    """Activation dtype of a case: fp8 cases take bfloat16 activations."""
    return FLOAT_DTYPES.get(dtype, torch.bfloat16)


def set_arg(name: str, value) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """An ErrorInput breaker: argument ``name`` replaced by ``value`` (or ``value(args)``)."""
    return lambda a: {**a, name: value(a) if callable(value) else value}


def non_contiguous(name: str) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """An ErrorInput breaker: argument ``name`` replaced by a non-contiguous view of its values."""
    return set_arg(name, lambda a: a[name].t().contiguous().t() if a[name].dim() == 2 and a[name].shape[0] > 1
                   else a[name].unsqueeze(-1).expand(*a[name].shape, 2)[..., 0])
