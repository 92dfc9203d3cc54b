"""Implementation sources: which function runs for which op.

Built-in names: ``ours`` (optimized/, our Triton kernels) and ``reference`` (reference/).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Mapping

from .runner import Candidate
from .specs import SPECS


@dataclass(frozen=True)
class Implementation:
    """A named set of op implementations; ops it lacks are reported as not provided."""

    name: str
    ops: Mapping[str, Callable]
    order_free: FrozenSet[str] = frozenset()        # ops whose order within an expert is free
    nondeterministic: FrozenSet[str] = frozenset()  # ops exempt from the repeat-run probe
    notes: Mapping[str, str] = field(default_factory=dict)  # op -> why it is not provided

    def candidate(self, op: str) -> Candidate:
        return Candidate(self.ops[op], order_free=op in self.order_free,
                         deterministic=op not in self.nondeterministic)


def _module_impl(name: str, module_name: str) -> Implementation:
    mod = importlib.import_module(module_name)
    ops: Dict[str, Callable] = {op: getattr(mod, op) for op in SPECS if hasattr(mod, op)}
    return Implementation(name, ops)


BUILTIN = {
    "ours": lambda: _module_impl("ours", "optimized"),
    "reference": lambda: _module_impl("reference", "reference"),
}


def load_implementation(source: str) -> Implementation:
    """Resolve an implementation source string (see the module docstring)."""
    if source in BUILTIN:
        return BUILTIN[source]()
    raise ValueError(f"--impl: expected one of {sorted(BUILTIN)}, got {source!r}")
