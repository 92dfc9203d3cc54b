"""Implementation sources: which function runs for which op.

One syntax everywhere (``moe-harness check --impl``, ``pytest --moe-impl``):

``ours``
    optimized/, our Triton kernels (the default).
``reference``
    reference/, the pure-PyTorch references.
``sglang:TARGET``
    TARGET is a path to a ``.py`` file or a dotted module name (for example
    ``sglang.srt.layers.moe.ep_moe.kernels``). The module may define any of SGLang's names;
    each one present is adapted to our op signature, the others are "not provided":

    ==========================================  =====================================
    SGLang name                                  op
    ==========================================  =====================================
    ``run_moe_ep_preproess(topk_ids, E)``        ep_preprocess
    ``deepep_run_moe_deep_preprocess(...)``      deepep_preprocess
    ``pre_reorder_triton_kernel``  grid (T,)     pre_reorder
    ``silu_and_mul_triton_kernel`` grid (M,)     silu_and_mul
    ``gelu_and_mul_triton_kernel`` grid (M,)     gelu_and_mul
    ``post_reorder_triton_kernel`` grid (T,)     post_reorder
    ``grouped_gemm_triton(a, b, c, ...)``        grouped_gemm
    ==========================================  =====================================

    Raw kernels are launched exactly as SGLang's EP layer launches them, with BLOCK_SIZE
    from ``--block-size`` (default: the call's BLOCK_SIZE, 512); an empty grid is not
    launched. A name bound to a plain function (not a Triton kernel) is called with our
    op signature instead. ``ep_moe_forward`` is composed from the module's pieces, chained
    as SGLang's EP layer chains them, when all of them are present.
``OP=module:function`` or ``OP=path.py:function``
    One function with our signature (reference/) for op OP.

Several sources combine into one implementation when joined by commas, applied left to
right, a later source replacing an op of an earlier one:
``pre_reorder=a.py:f,post_reorder=b.py:g`` or ``sglang:k.py,grouped_gemm=mine.py:gemm``.
Ops that no part provides are "not provided".

Loading a file or module RUNS ITS CODE, with your privileges. Nothing is ever loaded from
the network: TARGET must be a local file or an importable module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from .loader import load_file_module
from .runner import Candidate
from .specs import SPECS

SOURCE_HELP = ("implementation sources: 'ours' (default), 'reference', 'sglang:PATH.py' or 'sglang:dotted.module' "
               "(a module with SGLang's kernel names), 'OP=PATH.py:function' or 'OP=module:function' (one function "
               "with our signature); join sources with ',' to combine them into one implementation. Loading a "
               "file or module runs its code; nothing is loaded from the network.")

# SGLang's names, in the order the adapter looks for them (first present wins).
SGLANG_NAMES: Dict[str, Tuple[str, ...]] = {
    "ep_preprocess": ("run_moe_ep_preproess", "run_moe_ep_preprocess"),  # SGLang's spelling first
    "deepep_preprocess": ("deepep_run_moe_deep_preprocess",),
    "pre_reorder": ("pre_reorder_triton_kernel",),
    "silu_and_mul": ("silu_and_mul_triton_kernel",),
    "gelu_and_mul": ("gelu_and_mul_triton_kernel",),
    "post_reorder": ("post_reorder_triton_kernel",),
    "grouped_gemm": ("grouped_gemm_triton",),
}
# What ep_moe_forward is composed of (gelu_and_mul only when the case asks for GELU).
_FORWARD_PARTS = ("ep_preprocess", "pre_reorder", "grouped_gemm", "silu_and_mul", "post_reorder")


@dataclass(frozen=True)
class Implementation:
    """A named set of op implementations; ops it lacks are reported as not provided."""

    name: str
    ops: Mapping[str, Callable]
    order_free: FrozenSet[str] = frozenset()        # ops whose order within an expert is free
    nondeterministic: FrozenSet[str] = frozenset()  # ops exempt from the repeat-run probe
    notes: Mapping[str, str] = field(default_factory=dict)  # op -> why it is not provided
    source: str = ""                                # the source string it was loaded from
    # op -> how its last launch chose its tiles (e.g. the autotuner's pick), for bench records
    describe: Optional[Callable[[str], str]] = None

    def candidate(self, op: str) -> Candidate:
        return Candidate(self.ops[op], order_free=op in self.order_free,
                         deterministic=op not in self.nondeterministic)


# ----------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class SourcePart:
    """One comma-separated part of a source string."""

    kind: str            # "builtin" | "sglang" | "function"
    target: str          # builtin name, module path/name
    op: str = ""         # for "function"
    function: str = ""   # for "function": attribute path inside the module


def _is_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target


def parse_source(source: str) -> List[SourcePart]:
    """Split and validate a source string without importing anything (ValueError if malformed)."""
    if not source or not source.strip():
        raise ValueError("implementation source: got an empty string")
    parts = []
    for raw in source.split(","):
        part = raw.strip()
        if part in BUILTIN:
            parts.append(SourcePart("builtin", part))
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
            raise ValueError(f"implementation source {part!r}: expected 'ours', 'reference', 'sglang:TARGET' or "
                             f"'OP=TARGET:function' (see moe-harness check --help)")
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

def load_module(target: str) -> types.ModuleType:
    """Import a dotted module name, or execute a local .py file as a module (harness.loader;
    one module per real path, named after it).

    The file's folder is appended to sys.path so that it can import its own helpers."""
    if not _is_path(target):
        return importlib.import_module(target)
    path = os.path.realpath(os.path.expanduser(target))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{target}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_moe_ext_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    return load_file_module(name, path, extend_sys_path=True)


def _attr(mod: types.ModuleType, dotted: str):
    obj = mod
    for piece in dotted.split("."):
        obj = getattr(obj, piece)
    return obj


def _module_impl(name: str, module_name: str) -> Implementation:
    mod = importlib.import_module(module_name)
    ops: Dict[str, Callable] = {op: getattr(mod, op) for op in SPECS if hasattr(mod, op)}
    notes = {op: f"{module_name} has no {op}" for op in SPECS if op not in ops}
    return Implementation(name, ops, notes=notes, source=name, describe=getattr(mod, "describe_last_launch", None))


def _grouped_mm_impl() -> Implementation:
    from .baselines import grouped_gemm_grouped_mm
    notes = {op: "torch_grouped_mm provides grouped_gemm only" for op in SPECS if op != "grouped_gemm"}
    return Implementation("torch_grouped_mm", {"grouped_gemm": grouped_gemm_grouped_mm}, notes=notes,
                          source="torch_grouped_mm")


BUILTIN = {
    "ours": lambda: _module_impl("ours", "optimized"),
    "reference": lambda: _module_impl("reference", "reference"),
    # timing baselines (harness/baselines.py): plain torch, and torch._grouped_mm
    "torch": lambda: _module_impl("torch", "harness.baselines"),
    "torch_grouped_mm": _grouped_mm_impl,
}


# ----------------------------------------------------------------------------- SGLang adapter

def _is_kernel(obj) -> bool:
    """A Triton kernel (JITFunction / Autotuner / Heuristics): launched as kernel[grid](...)."""
    return hasattr(obj, "__getitem__") and hasattr(obj, "run")


def _block(block_size: Optional[int], given: int) -> int:
    return int(block_size) if block_size else int(given)


def _adapt_pre_reorder(kernel, block_size):
    def pre_reorder(input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                    hidden_size, BLOCK_SIZE=512):
        T = input.shape[0]
        if T:  # SGLang launches grid (T,); an empty grid is not a launch
            kernel[(T,)](input, gateup_input, src2dst, topk_ids, a1_scales, start_expert_id, end_expert_id, topk,
                         hidden_size, BLOCK_SIZE=_block(block_size, BLOCK_SIZE))
    return pre_reorder


def _adapt_act(kernel, block_size, op):
    def act_and_mul(gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                    end_expert_id, BLOCK_SIZE=512):
        M = gateup_output.shape[0]
        if M:
            kernel[(M,)](gateup_output, down_input, hidden_size, reorder_topk_ids, scales, start_expert_id,
                         end_expert_id, BLOCK_SIZE=_block(block_size, BLOCK_SIZE))
    act_and_mul.__name__ = op
    return act_and_mul


def _adapt_post_reorder(kernel, block_size):
    def post_reorder(down_output, output, src2dst, topk_ids, topk_weights, start_expert_id, end_expert_id, topk,
                     hidden_size, BLOCK_SIZE=512):
        T = output.shape[0]
        if T:
            kernel[(T,)](down_output, output, src2dst, topk_ids, topk_weights, start_expert_id, end_expert_id,
                         topk, hidden_size, BLOCK_SIZE=_block(block_size, BLOCK_SIZE))
    return post_reorder


def _adapt_call(fn, op):
    """Functions (preprocess, grouped_gemm) are called positionally, as SGLang calls them."""
    def call(*args):
        return fn(*args)
    call.__name__ = op
    return call


def _compose_forward(ops: Mapping[str, Callable]) -> Callable:
    """ep_moe_forward chained from the adapted ops (reference.ep_moe_forward's ``ops`` hook)."""
    from reference.moe import ep_moe_forward as chain

    def _missing(*_a, **_k):
        raise NotImplementedError("gelu_and_mul_triton_kernel is not provided")
    ns = types.SimpleNamespace(**{op: ops.get(op, _missing) for op in _FORWARD_PARTS + ("gelu_and_mul",)})

    def ep_moe_forward(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id, end_expert_id,
                       activation="silu", w13_scale=None, w2_scale=None, block_shape=None):
        return chain(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start_expert_id, end_expert_id,
                     activation, w13_scale, w2_scale, block_shape, ops=ns)
    return ep_moe_forward


def sglang_impl(target: str, block_size: Optional[int] = None, name: Optional[str] = None) -> Implementation:
    """Adapt a module holding SGLang's names (see the module docstring) to our op signatures."""
    mod = load_module(target)
    ops: Dict[str, Callable] = {}
    notes: Dict[str, str] = {}
    for op, names in SGLANG_NAMES.items():
        found = next((n for n in names if hasattr(mod, n)), None)
        if found is None:
            notes[op] = f"{target} defines no {names[0]}"
            continue
        obj = getattr(mod, found)
        if not _is_kernel(obj) or op in ("ep_preprocess", "deepep_preprocess", "grouped_gemm"):
            ops[op] = _adapt_call(obj, op)
        elif op == "pre_reorder":
            ops[op] = _adapt_pre_reorder(obj, block_size)
        elif op == "post_reorder":
            ops[op] = _adapt_post_reorder(obj, block_size)
        else:
            ops[op] = _adapt_act(obj, block_size, op)
    missing = [p for p in _FORWARD_PARTS if p not in ops]
    if missing:
        notes["ep_moe_forward"] = f"composed from {', '.join(_FORWARD_PARTS)}; missing {', '.join(missing)}"
    else:
        ops["ep_moe_forward"] = _compose_forward(ops)
    return Implementation(name or f"sglang:{target}", ops, notes=notes, source=f"sglang:{target}")


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
                          notes=notes, source=name)


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
        else:
            loaded.append(function_impl(p.op, p.target, p.function))
    if len(loaded) == 1:
        return dataclasses.replace(loaded[0], name=short_name(source.strip()), source=source.strip())
    return dataclasses.replace(_merge(short_name(source.strip()), loaded), source=source.strip())
