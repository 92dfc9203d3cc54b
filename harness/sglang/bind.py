"""Binding SGLang's functions and Triton kernels to the harness's ops by parameter name.

``bind_op(op, obj, spec)`` reads the parameter names of ``obj`` (a function, or a Triton kernel:
JITFunction, InterpretedFunction, Autotuner, Heuristics, unwrapped through ``.fn``; names
an Autotuner's configs or a Heuristics supplies count as supplied) and plans, before any
call, where each parameter's value comes from:

1. a convention of the op (its record's ``sglang.conventions``) that applies to this callable (a change
   of meaning between releases, recognised from the callable's parameters or the names its
   code uses) and gives the parameter a value computed from the op's arguments;
2. the op's argument of the same name, or of the name without a ``_ptr`` suffix
   (``input_ptr`` <- ``input``), or an explicit alias;
3. the neutral value of a parameter that some releases added (``neutral``: the value under
   which the release computes what the op's contract says);
4. the parameter's own default, when it has one (unknown optional parameters stay there).

A required parameter that none of these supplies gives ``Unbindable(parameter, op,
reason)``, and no call is made; so does a required argument of the op (no default) that
the callable has no parameter for (an earlier contract without it: 0.4.8 .. 0.5.16's
contiguous-layout scatter has no num_valid_tokens_per_expert). The result of a successful plan is a ``Binding``: a
callable with the op's signature (the harness's argument order: the parameters of the
record's reference) that launches a Triton kernel on the record's grid
(``record.sglang.grid``; an empty grid is not launched) or calls a function, and applies
the conventions' result mappings. An argument of the op that the callable has no parameter
for is ignored while its value is neutral (None or False) or a tuning knob (BLOCK_SIZE);
any other value raises ``NotSupported`` naming the argument, since the callable cannot
honour it (e.g. ``block_shape`` for a release before 0.4.4).

What an op offers (``op_binding(record)``) comes from its record (harness/ops/): the reference's
parameters and defaults, and the record's SglangBinding: ``grid``, and what releases changed,
``aliases``, ``neutral`` values and ``conventions`` (each with the releases where it was
seen; tools/sglang_inventory.py regenerates the facts behind them from the wheels). This
module holds the machinery and no op's data.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

Args = Mapping[str, Any]


# ----------------------------------------------------------------------------- data types

@dataclass(frozen=True)
class Neutral:
    """A parameter that some releases added, and the value that keeps the op's meaning."""

    value: Any
    releases: str
    why: str


@dataclass(frozen=True)
class Target:
    """What binding knows about a callable: its parameters and the global names its code uses."""

    name: str
    params: Tuple[inspect.Parameter, ...]
    supplied: FrozenSet[str]   # parameters an Autotuner's configs or a Heuristics fills in
    code_names: FrozenSet[str]  # global names the (unwrapped) function's code refers to
    is_kernel: bool

    @property
    def param_names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.params)


@dataclass(frozen=True)
class Convention:
    """A change of meaning between releases, recognised from the callable itself.

    applies: Target -> bool. args: parameter -> value computed from the op's arguments
    (overrides binding by name). consumes: the op's arguments the convention accounts for.
    result: (callable's result, op's arguments) -> the op's result."""

    name: str
    applies: Callable[[Target], bool]
    args: Mapping[str, Callable[[Args], Any]] = field(default_factory=dict)
    consumes: Tuple[str, ...] = ()
    result: Optional[Callable[[Any, Args], Any]] = None
    releases: str = ""
    why: str = ""


@dataclass(frozen=True)
class OpBinding:
    """Everything binding needs of one op: its arguments in the harness's call order and
    their defaults, the launch grid of a Triton kernel (None: the op is a function), the op
    arguments a callable may lack whatever their value (tuning knobs), explicit aliases
    (parameter -> op argument), the neutral values of parameters releases added, and the
    conventions."""

    args: Tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    grid: Optional[Callable[[Args], Tuple[int, ...]]] = None
    tuning: Tuple[str, ...] = ("BLOCK_SIZE",)
    aliases: Mapping[str, str] = field(default_factory=dict)
    neutral: Mapping[str, Neutral] = field(default_factory=dict)
    conventions: Tuple[Convention, ...] = ()


def op_binding(record) -> OpBinding:
    """The OpBinding of an op record (harness.opspec.OpSpec: the reference's parameters and the
    record's SglangBinding). ValueError for a record without an SGLang binding."""
    if record.sglang is None:
        raise ValueError(f"op {record.name!r} has no SGLang binding in its record")
    params = inspect.signature(record.reference).parameters
    b = record.sglang
    return OpBinding(tuple(params), {n: p.default for n, p in params.items() if p.default is not p.empty},
                     b.grid, aliases=b.aliases, neutral=b.neutral, conventions=b.conventions)


@dataclass(frozen=True)
class Unbindable:
    """A parameter that binding cannot supply: no call is made for the op."""

    parameter: str
    op: str
    reason: str
    target: str = ""
    missing: bool = False   # ``parameter`` is a required argument of the op that the callable lacks

    def __str__(self) -> str:
        if self.missing:
            return f"{self.target or self.op} has no parameter for {self.op}'s argument {self.parameter!r}: {self.reason}"
        return f"{self.target or self.op} has parameter {self.parameter!r}: {self.reason}"


class NotSupported(ValueError):
    """The callable has no parameter for an argument of the op whose value matters."""


# ----------------------------------------------------------------------------- reading a callable

def is_kernel(obj) -> bool:
    """A Triton kernel (JITFunction / InterpretedFunction / Autotuner / Heuristics): kernel[grid](...)."""
    return hasattr(obj, "__getitem__") and hasattr(obj, "run")


def read_target(obj, name: str = "") -> Optional[Target]:
    """The parameters of a function or Triton kernel, or None when they cannot be read."""
    supplied = set()
    inner = obj
    for _ in range(16):  # Autotuner(Heuristics(JITFunction(fn))) and the like
        if inspect.isfunction(inner):
            break
        configs = getattr(inner, "configs", None)
        if isinstance(configs, (list, tuple)):
            supplied.update(k for c in configs for k in (getattr(c, "kwargs", None) or {}))
        values = getattr(inner, "values", None)
        if isinstance(values, dict):
            supplied.update(values)
        nxt = getattr(inner, "fn", None)
        if nxt is None or nxt is inner:
            break
        inner = nxt
    fn = inner if inspect.isfunction(inner) else obj
    if is_kernel(obj) and not inspect.isfunction(inner):
        return None  # a kernel-like object that does not say what it takes
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    code = getattr(fn, "__code__", None)
    return Target(name or getattr(fn, "__name__", type(obj).__name__), tuple(sig.parameters.values()),
                  frozenset(supplied), frozenset(code.co_names) if code else frozenset(), is_kernel(obj))


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Step:
    """Where one parameter's value comes from: ``source`` is an op argument, a convention's
    name or "neutral"; ``get`` computes it from the op's arguments."""

    parameter: str
    kind: str            # positional | keyword
    source: str
    get: Callable[[Args], Any]


def _arg(name: str) -> Callable[[Args], Any]:
    return lambda v: v[name]


def plan(op: str, target: Target, spec: OpBinding
         ) -> Union[Tuple[List[Step], Tuple[Convention, ...], Tuple[str, ...]], Unbindable]:
    """(steps, conventions applied, op arguments the callable leaves unused), or Unbindable."""
    conventions = tuple(c for c in spec.conventions if c.applies(target))
    by_convention: Dict[str, Tuple[str, Callable[[Args], Any]]] = {}
    for c in conventions:
        for p, get in c.args.items():
            by_convention[p] = (c.name, get)
    steps: List[Step] = []
    used = {a for c in conventions for a in c.consumes}
    gap = None  # a positional-only parameter left at its default: later ones cannot be passed
    for p in target.params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in target.supplied:
            continue
        kind = "positional" if p.kind == p.POSITIONAL_ONLY else "keyword"
        stem = p.name[:-4] if p.name.endswith("_ptr") else None
        alias = spec.aliases.get(p.name)
        if p.name in by_convention:
            source, get = by_convention[p.name]
        elif p.name in spec.args or alias in spec.args or stem in spec.args:
            source = p.name if p.name in spec.args else alias if alias in spec.args else stem
            get = _arg(source)
            used.add(source)
        elif p.name in spec.neutral:
            source, value = "neutral", spec.neutral[p.name].value
            get = lambda _v, value=value: value
        elif p.default is not p.empty:
            gap = gap or (p.name if kind == "positional" else None)
            continue
        else:
            known = ", ".join(sorted(set(spec.args) | set(spec.neutral)))
            return Unbindable(p.name, op, f"required, and neither an argument of {op} ({known}) nor a "
                                          f"parameter with a known neutral value", target.name)
        if kind == "positional" and gap:
            return Unbindable(p.name, op, f"positional-only after {gap!r}, which is left at its default",
                              target.name)
        steps.append(Step(p.name, kind, source, get))
    unused = tuple(a for a in spec.args if a not in used and a not in spec.tuning)
    lacking = [a for a in unused if a not in spec.defaults]
    if lacking:  # a required argument (never neutral): every call would be NotSupported
        return Unbindable(lacking[0], op, "a required argument of the op; the callable implements a contract "
                                          "without it", target.name, missing=True)
    return steps, conventions, unused


# ----------------------------------------------------------------------------- the bound call

class Binding:
    """A planned call of ``obj`` with the op's signature (``OpBinding.args``)."""

    def __init__(self, op: str, obj, target: Target, steps: List[Step], conventions: Tuple[Convention, ...],
                 unused: Tuple[str, ...], spec: OpBinding, block_size: Optional[int] = None, label: str = ""):
        self.op, self.obj, self.target, self.steps = op, obj, target, steps
        self.conventions, self.unused, self.spec = conventions, unused, spec
        self.block_size, self.label = block_size, label or target.name
        self.__name__ = op

    def describe(self) -> str:
        """One line: parameter <- source, for notes and the inventory."""
        parts = [f"{s.parameter}<-{s.source}" if s.source != s.parameter else s.parameter for s in self.steps]
        conv = f"; conventions: {', '.join(c.name for c in self.conventions)}" if self.conventions else ""
        return f"{self.target.name}({', '.join(parts)}){conv}"

    def values(self, args: Tuple, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
        names = self.spec.args
        if len(args) > len(names):
            raise TypeError(f"{self.op}: expected at most {len(names)} arguments ({', '.join(names)}), got {len(args)}")
        values = dict(self.spec.defaults)
        values.update(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{self.op}: unexpected argument {k!r}; expected {', '.join(names)}")
            values[k] = v
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"{self.op}: missing argument(s) {', '.join(missing)}")
        if self.block_size and "BLOCK_SIZE" in values:
            values["BLOCK_SIZE"] = int(self.block_size)
        return values

    def __call__(self, *args, **kwargs):
        v = self.values(args, kwargs)
        for name in self.unused:
            if v[name] is not None and v[name] is not False:
                raise NotSupported(f"{self.label} has no parameter for {self.op}'s argument {name} "
                                   f"(given {_short(v[name])}): it cannot compute this case")
        pos = [s.get(v) for s in self.steps if s.kind == "positional"]
        kw = {s.parameter: s.get(v) for s in self.steps if s.kind == "keyword"}
        if self.target.is_kernel:
            grid = self.spec.grid(v)
            if math.prod(grid) == 0:
                return None  # SGLang does not launch an empty grid
            self.obj[grid](*pos, **kw)
            ret = None
        else:
            ret = self.obj(*pos, **kw)
        for c in self.conventions:
            if c.result is not None:
                ret = c.result(ret, v)
        return ret


def _short(value) -> str:
    shape = getattr(value, "shape", None)
    return f"a tensor of shape {tuple(shape)}" if shape is not None else repr(value)


def bind_op(op: str, obj, spec: OpBinding, block_size: Optional[int] = None,
            label: str = "") -> Union[Binding, Unbindable, None]:
    """Bind ``obj`` to the op named ``op`` by parameter name (see the module docstring), with
    what ``spec`` (usually ``op_binding(record)``) says the op offers.

    Returns a Binding, an Unbindable (a required parameter nothing supplies; nothing was
    called), or None when the parameters of ``obj`` cannot be read. ``block_size``
    replaces the op's BLOCK_SIZE argument; ``label`` names the callable in errors (e.g.
    ``sglang==0.4.10.post2: pre_reorder_triton_kernel``)."""
    target = read_target(obj)
    if target is None:
        return None
    if target.is_kernel and spec.grid is None:
        return Unbindable(target.name, op, f"{op} is called as a function, but {target.name} is a Triton kernel "
                                           f"with no launch grid known for it", target.name)
    planned = plan(op, target, spec)
    if isinstance(planned, Unbindable):
        return planned
    steps, conventions, unused = planned
    return Binding(op, obj, target, steps, conventions, unused, spec, block_size, label or target.name)
