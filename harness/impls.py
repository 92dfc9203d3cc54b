"""Implementation sources: which function runs for which op.

One syntax everywhere (``moe-harness check --impl``, ``pytest --moe-impl``):

``ours``
    optimized/, our Triton kernels (the default).
``reference``
    reference/, the pure-PyTorch references.
``sglang==VERSION``
    The EP-MoE kernel file of that SGLang release, as released: the wheel is fetched with
    pip from the package index (or taken from ``--sglang-wheel PATH``) and cached, and the
    file is loaded unmodified with stand-ins for the ``sglang.*`` names it imports
    (harness/sglang/). Its names are bound as for ``sglang:TARGET``.
``sglang:TARGET``
    TARGET is a path to a ``.py`` file (loaded with the same stand-ins, so a copied release
    file needs no sglang package) or a dotted module name (imported as usual, e.g.
    ``sglang.srt.layers.moe.ep_moe.kernels`` of an installed sglang). The module may define
    any of SGLang's names; each op record's SGLang binding (harness/ops/, ``sglang=``) names
    what to look for, and each name present is bound to our op by its parameter names
    (harness/sglang/bind.py: with the neutral values of parameters releases added and the
    conventions they changed; a required parameter it cannot supply makes the op
    "unbindable", naming it); ops whose names are absent are "not provided". Raw kernels are
    launched exactly as SGLang's EP layer launches them, on the record's grid, with
    BLOCK_SIZE from ``--block-size`` (default: the call's BLOCK_SIZE, 512); an empty grid is
    not launched. An object whose parameters cannot be read is called positionally in our
    order. A composed op (the EP forward) is chained from the module's pieces, as SGLang's
    EP layer chains them, when all of them are present.
``OP=module:function`` or ``OP=path.py:function``
    One function with our signature (reference/) for op OP.

Several sources combine into one implementation when joined by commas, applied left to
right, a later source replacing an op of an earlier one:
``opA=a.py:f,opB=b.py:g`` or ``sglang:k.py,opB=mine.py:g``.
Ops that no part provides are "not provided".

Loading a file or module RUNS ITS CODE, with your privileges. Only ``sglang==VERSION``
touches the network (pip, for a release not in the cache); TARGET must be a local file or
an importable module.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from .loader import is_path as _is_path, load_module
from .opspec import CHAINED, OpSpec, SglangBinding
from .runner import Candidate
from .sglang.bind import Unbindable, bind_op, op_binding
from .specs import SPECS

SOURCE_HELP = ("implementation sources: 'ours' (default), 'reference', 'sglang==VERSION' (an SGLang release's "
               "EP-MoE kernels, fetched with pip and cached, or from --sglang-wheel), 'sglang:PATH.py' or "
               "'sglang:dotted.module' (a module with SGLang's kernel names), 'OP=PATH.py:function' or "
               "'OP=module:function' (one function with our signature); join sources with ',' to combine them into "
               "one implementation. Loading a file or module runs its code; only sglang==VERSION uses the network.")

@dataclass(frozen=True)
class Implementation:
    """A named set of op implementations; ops it lacks are reported as not provided."""

    name: str
    ops: Mapping[str, Callable]
    order_free: FrozenSet[str] = frozenset()        # ops whose order within an expert is free
    nondeterministic: FrozenSet[str] = frozenset()  # ops exempt from the repeat-run probe
    notes: Mapping[str, str] = field(default_factory=dict)  # op -> why it is not provided
    requires: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # op -> precondition ids it assumes
    # ops not meant for CUDA graphs (the references, the plain-torch baselines read values on the host)
    host_side: FrozenSet[str] = frozenset()
    unbindable: FrozenSet[str] = frozenset()        # ops not provided because binding failed (notes say why)
    source: str = ""                                # the source string it was loaded from
    # op -> how its last launch chose its tiles (e.g. the autotuner's pick), for bench records
    describe: Optional[Callable[[str], str]] = None

    def candidate(self, op: str) -> Candidate:
        return Candidate(self.ops[op], order_free=op in self.order_free,
                         deterministic=op not in self.nondeterministic, requires=tuple(self.requires.get(op, ())),
                         graph=op not in self.host_side)


# ----------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class SourcePart:
    """One comma-separated part of a source string."""

    kind: str            # "builtin" | "sglang" | "sglang-release" | "function"
    target: str          # builtin name, module path/name, release version
    op: str = ""         # for "function"
    function: str = ""   # for "function": attribute path inside the module


def parse_source(source: str) -> List[SourcePart]:
    """Split and validate a source string without importing anything (ValueError if malformed)."""
    if not source or not source.strip():
        raise ValueError("implementation source: got an empty string")
    parts = []
    for raw in source.split(","):
        part = raw.strip()
        if part in BUILTIN:
            parts.append(SourcePart("builtin", part))
        elif part.startswith("sglang=="):
            from .sglang.release import check_version
            parts.append(SourcePart("sglang-release", check_version(part[len("sglang=="):])))
        elif part.startswith("sglang:"):
            target = part[len("sglang:"):]
            if not target:
                raise ValueError(f"{part!r}: expected sglang:PATH.py or sglang:dotted.module")
            parts.append(SourcePart("sglang", target))
        elif "=" in part:
            op, _, rest = part.partition("=")
            op = op.strip()
            if op not in SPECS:
                raise ValueError(f"{part!r}: expected OP=module:function with OP one of {sorted(SPECS)}, got {op!r}")
            target, sep, func = rest.rpartition(":")
            if not sep or not target or not func:
                raise ValueError(f"{part!r}: expected {op}=module:function or {op}=path.py:function")
            parts.append(SourcePart("function", target, op, func))
        else:
            raise ValueError(f"implementation source {part!r}: expected 'ours', 'reference', 'sglang==VERSION', "
                             f"'sglang:TARGET' or 'OP=TARGET:function' (see moe-harness check --help)")
    return parts


def short_name(source: str) -> str:
    """A readable label for ids and tables: file paths shortened to their base name."""
    out = []
    for raw in source.split(","):
        part = raw.strip()
        if part.startswith("sglang:") and _is_path(part[7:]):
            part = "sglang:" + os.path.basename(part[7:])
        elif "=" in part and ":" in part:
            op, _, rest = part.partition("=")
            target, _, func = rest.rpartition(":")
            if _is_path(target):
                part = f"{op}={os.path.basename(target)}:{func}"
        out.append(part)
    return ",".join(out)


# ----------------------------------------------------------------------------- loading

def _attr(mod: types.ModuleType, dotted: str):
    obj = mod
    for piece in dotted.split("."):
        obj = getattr(obj, piece)
    return obj


def _records_impl(name: str, function_of: Callable[[OpSpec], Optional[Callable]], describe=None,
                  host_side: bool = False) -> Implementation:
    """An implementation assembled from the op records: ``function_of(record)`` gives each op's
    function (None: not provided; CHAINED: a composed op chained from this implementation's
    parts, with the references for parts it lacks)."""
    ops: Dict[str, Callable] = {}
    chained = []
    for op, record in SPECS.items():
        fn = function_of(record)
        if fn is CHAINED:
            chained.append(record)
        elif fn is not None:
            ops[op] = fn
    for record in chained:
        ops[record.name] = compose(record, {o: ops.get(o, r.reference) for o, r in SPECS.items()})
    notes = {op: f"{name} has no {op}" for op in SPECS if op not in ops}
    return Implementation(name, ops, notes=notes, source=name, describe=describe,
                          host_side=frozenset(ops) if host_side else frozenset())


def _our_kernel(record: OpSpec) -> Optional[Callable]:
    return getattr(load_module(record.kernel_module), record.name, None)


def _ours() -> Implementation:
    describe = getattr(importlib.import_module("optimized"), "describe_last_launch", None)
    impl = _records_impl("ours", _our_kernel, describe)
    # ops whose record points `ours` at the reference (no kernel of ours yet) read values on the host like it
    by_reference = frozenset(op for op, r in SPECS.items() if r.kernel_module.startswith("reference") and op in impl.ops)
    return dataclasses.replace(impl, host_side=impl.host_side | by_reference)


def _baseline(name: str) -> Callable[[], Implementation]:
    return lambda: _records_impl(name, lambda record: record.baselines.get(name), host_side=True)


def _baseline_names() -> List[str]:
    return sorted({b for record in SPECS.values() for b in record.baselines})


BUILTIN = {
    "ours": _ours,
    "reference": lambda: _records_impl("reference", lambda record: record.reference, host_side=True),
}
# timing baselines, the torch compositions the records name (e.g. "torch", "torch_grouped_mm")
BUILTIN.update({name: _baseline(name) for name in _baseline_names()})


# ----------------------------------------------------------------------------- SGLang adapter

def _is_kernel(obj) -> bool:
    """A Triton kernel (JITFunction / Autotuner / Heuristics): launched as kernel[grid](...)."""
    return hasattr(obj, "__getitem__") and hasattr(obj, "run")


def _block(block_size: Optional[int], given: int) -> int:
    return int(block_size) if block_size else int(given)


def _adapt_kernel(kernel, binding: SglangBinding, block_size: Optional[int], op: str) -> Callable:
    """Our signature -> SGLang's raw kernel, launched as its EP layer launches it: every
    argument in our order, BLOCK_SIZE by keyword (``block_size`` replaces the call's), on the
    record's grid; an empty grid is not a launch."""
    def launch(*args):
        named = dict(zip(_parameters(op), args))
        grid = binding.grid(named)
        if all(grid):
            block = named.pop("BLOCK_SIZE", 512)
            kernel[grid](*named.values(), BLOCK_SIZE=_block(block_size, block))
    launch.__name__ = op
    return launch


def _parameters(op: str) -> List[str]:
    import inspect
    return list(inspect.signature(SPECS[op].reference).parameters)


def _adapt_call(fn, op):
    """Functions (the preprocessings, the GEMM) are called positionally, as SGLang calls them."""
    def call(*args):
        return fn(*args)
    call.__name__ = op
    return call


def compose(record: OpSpec, parts: Mapping[str, Callable]) -> Callable:
    """A composed op (record.composed_of) chained from ``parts``: the record's reference is the
    chain, called with an ``ops`` namespace of the parts (e.g. the EP forward from the adapted
    pieces of an SGLang file). A part missing from ``parts`` raises when the chain reaches it."""
    def _missing(name):
        def missing(*_a, **_k):
            raise NotImplementedError(f"{name} is not provided")
        return missing
    ns = types.SimpleNamespace(**{op: parts.get(op) or _missing(op) for op in SPECS})

    def composed(*args):
        return record.reference(*args, ops=ns)
    composed.__name__ = record.name
    return composed


def sglang_impl(target: str, block_size: Optional[int] = None, name: Optional[str] = None,
                version: Optional[str] = None) -> Implementation:
    """Bind a module holding SGLang's names (see the module docstring) to our op signatures;
    with ``version``, the module is that release's kernel file (harness.sglang.release)."""
    from .sglang.release import load_kernel_file, load_neighbours, load_release, resolve
    neighbours: List[Tuple[str, types.ModuleType]] = []
    neighbour_error = ""
    if version:
        release = resolve(version)
        mod, target = load_release(release), f"sglang=={release.version} ({release.kernel_path})"
        try:
            neighbours = [(f"sglang=={release.version} ({path})", m) for path, m in load_neighbours(release)]
        except ImportError as exc:     # the kernel file's ops still bind; the neighbours' say why not
            neighbour_error = f"; its neighbour files did not load: {exc}"
    else:
        mod = load_kernel_file(target) if _is_path(target) else load_module(target)
    modules = [(target, mod)] + neighbours
    ops: Dict[str, Callable] = {}
    notes: Dict[str, str] = {}
    requires: Dict[str, Tuple[str, ...]] = {}
    unbindable = set()
    for op, record in SPECS.items():
        binding = record.sglang
        if binding is None:
            continue
        where, found = next(((label, n) for n in binding.names for label, m in modules if hasattr(m, n)),
                            (target, None))
        if found is None:
            notes[op] = f"{target} defines no {binding.names[0]}{neighbour_error}"
            continue
        obj = getattr(dict(modules)[where], found)
        bound = bind_op(op, obj, op_binding(record), block_size, label=f"{where}: {found}")
        if isinstance(bound, Unbindable):
            notes[op] = str(bound)
            unbindable.add(op)
            continue
        if bound is not None:
            ops[op] = bound
        elif _is_kernel(obj) and binding.grid is not None:
            ops[op] = _adapt_kernel(obj, binding, block_size, op)
        else:
            ops[op] = _adapt_call(obj, op)
        requires[op] = binding.requires
    for op, record in SPECS.items():
        if not record.composed_of:
            continue
        missing = [p for p in record.composed_of if p not in ops]
        if missing:
            notes[op] = f"composed from {', '.join(record.composed_of)}; missing {', '.join(missing)}"
        else:
            ops[op] = compose(record, ops)
            # a chain assumes what its parts assume, where the chain's record states it too
            own = {c.id for c in record.preconditions}
            requires[op] = tuple(sorted({r for part in record.composed_of for r in requires.get(part, ()) if r in own}))
    for op in SPECS:
        if op not in ops:
            notes.setdefault(op, f"SGLang has no {op}")
    source = f"sglang=={version}" if version else f"sglang:{target}"
    return Implementation(name or source, ops, notes=notes, source=source, requires=requires,
                          unbindable=frozenset(unbindable))


def function_impl(op: str, target: str, function: str) -> Implementation:
    fn = _attr(load_module(target), function)
    if not callable(fn):
        raise TypeError(f"{op}={target}:{function}: expected a callable, got {type(fn).__name__}")
    return Implementation(f"{op}={target}:{function}", {op: fn})


def _merge(name: str, parts: List[Implementation]) -> Implementation:
    """Left to right; a later part's op replaces an earlier one's (with its flags)."""
    ops: Dict[str, Callable] = {}
    owner: Dict[str, Implementation] = {}
    for impl in parts:
        for op, fn in impl.ops.items():
            ops[op], owner[op] = fn, impl
    notes = {op: "; ".join(p.notes[op] for p in parts if op in p.notes) or f"not provided by {name}"
             for op in SPECS if op not in ops}
    return Implementation(name, ops,
                          order_free=frozenset(op for op, p in owner.items() if op in p.order_free),
                          nondeterministic=frozenset(op for op, p in owner.items() if op in p.nondeterministic),
                          notes=notes, source=name,
                          requires={op: p.requires[op] for op, p in owner.items() if op in p.requires},
                          host_side=frozenset(op for op, p in owner.items() if op in p.host_side),
                          unbindable=frozenset(op for p in parts for op in p.unbindable if op not in ops))


def prepare_sources(sources, wheels=()) -> None:
    """Before anything loads (child processes included): register each ``--sglang-wheel``
    file in the cache, and fetch each ``sglang==VERSION`` release once. Raises ValueError
    for a malformed source and harness.sglang.release.ReleaseError for a failed fetch."""
    from .sglang.release import resolve
    for wheel in wheels or ():
        resolve(wheel=wheel)
    for source in sources:
        for part in parse_source(source):
            if part.kind == "sglang-release":
                resolve(part.target)


def load_implementation(source: str, block_size: Optional[int] = None) -> Implementation:
    """Resolve an implementation source string (see the module docstring).

    ``block_size`` replaces the BLOCK_SIZE that SGLang-style raw kernels are launched with.
    Raises ValueError for a malformed source; loading errors of user code propagate.
    """
    parts = parse_source(source)
    loaded = []
    for p in parts:
        if p.kind == "builtin":
            loaded.append(BUILTIN[p.target]())
        elif p.kind == "sglang":
            loaded.append(sglang_impl(p.target, block_size))
        elif p.kind == "sglang-release":
            loaded.append(sglang_impl("", block_size, version=p.target))
        else:
            loaded.append(function_impl(p.op, p.target, p.function))
    if len(loaded) == 1:
        return dataclasses.replace(loaded[0], name=short_name(source.strip()), source=source.strip())
    return dataclasses.replace(_merge(short_name(source.strip()), loaded), source=source.strip())
