"""The registry of op records (harness.opspec.OpSpec) and their mutants.

Each op family is one module here (preprocess, reorder, activation, gemm, moe, deepgemm, permute, masked,
cutlass, quant) defining ``RECORDS`` (its ops' records) and ``MUTANTS`` (harness.mutants.Mutant, its catalogue).
Modules outside the package add ops the same way: name them (dotted module names or .py
paths, separated by os.pathsep) in the environment variable MOE_HARNESS_OP_MODULES, or call
``add_op_module`` (which also sets the variable, so the harness's child processes load them
too). Adding an op is adding a record: every command and test is generated from REGISTRY.
"""
from __future__ import annotations

import importlib
import os
import types
from typing import Dict, List, Tuple

from ..opspec import OpSpec

ENV_VAR = "MOE_HARNESS_OP_MODULES"
FAMILIES = ("preprocess", "reorder", "activation", "gemm", "moe", "deepgemm", "permute", "masked", "cutlass", "quant")

REGISTRY: Dict[str, OpSpec] = {}
MUTANT_CATALOGUE: List = []
_LOADED: Dict[str, types.ModuleType] = {}


def _register(module: types.ModuleType, source: str) -> None:
    records: Tuple[OpSpec, ...] = getattr(module, "RECORDS", ())
    if not records:
        raise ValueError(f"{source}: an op module must define RECORDS, a tuple of harness.opspec.OpSpec")
    for rec in records:
        if not isinstance(rec, OpSpec):
            raise TypeError(f"{source}: RECORDS must hold harness.opspec.OpSpec, got {type(rec).__name__}")
        if rec.name in REGISTRY and REGISTRY[rec.name] is not rec:
            raise ValueError(f"{source}: op {rec.name!r} is already registered")
        REGISTRY[rec.name] = rec
    known = {m.name for m in MUTANT_CATALOGUE}
    for m in getattr(module, "MUTANTS", ()):
        if m.name in known:
            raise ValueError(f"{source}: mutant {m.name!r} is already registered")
        if m.op not in REGISTRY:
            raise ValueError(f"{source}: mutant {m.name!r} is of op {m.op!r}, which no record defines")
        MUTANT_CATALOGUE.append(m)


def add_op_module(target: str) -> None:
    """Register the records and mutants of a module outside the package (a dotted name or a .py
    path), in this process and in the child processes it starts."""
    from ..loader import load_module
    if target in _LOADED:
        return
    module = load_module(target)
    _register(module, target)
    _LOADED[target] = module
    listed = [t for t in os.environ.get(ENV_VAR, "").split(os.pathsep) if t]
    if target not in listed:
        os.environ[ENV_VAR] = os.pathsep.join(listed + [target])


for _family in FAMILIES:
    _register(importlib.import_module(f"{__name__}.{_family}"), f"harness.ops.{_family}")
for _target in [t for t in os.environ.get(ENV_VAR, "").split(os.pathsep) if t]:
    add_op_module(_target)
