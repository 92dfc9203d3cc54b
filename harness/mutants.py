"""Mutants: deliberately broken variants of our own kernels (optimized/), and how they load.

A mutant is one small, named change a kernel author could plausibly make, modelled on bugs
that real MoE kernels have had. Each op family's module in harness/ops/ holds its mutants
beside its records (``MUTANTS``); harness.ops collects them into the catalogue. Most are
SOURCE PATCHES of one kernel module: the text ``old`` must occur exactly once in the
module's source and is replaced by ``new`` (``more`` holds further sites of the same
change). A patch whose text no longer occurs exactly once is STALE: an error, never
silently skipped. The patched module is written to a file and imported from there (Triton's
@jit reads kernel source with ``inspect``) under a unique name inside the module's own
package, so its relative imports resolve to the real modules.

A few bugs live around a kernel rather than in it (a result cached from an earlier call);
those carry ``wrap``, a function that turns our function into the broken one.

The mutant implementation is ``ours`` with the mutant's op replaced by the mutated
function; for a composed op (the EP forward), our composed op whose chain uses the mutated
module's functions.

The harness must kill every mutant (harness/mutate.py runs them); the unpatched kernels
must pass the same cases.

Mutants left out (equivalent to the original, or allowed by the contract) are listed beside
the catalogue they would belong to.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib
import importlib.util
import os
import shutil
import tempfile
import types
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from .loader import load_file_module


class StalePatch(ValueError):
    """A mutant's ``old`` text does not occur exactly once in its module (the module changed)."""


@dataclass(frozen=True)
class Mutant:
    """One deliberately broken variant of one op.

    ``module``: the kernel module it breaks (a dotted name such as "optimized.reorder", or a
    .py path). Source patch: ``old`` -> ``new`` in that module's source (plus the ``more``
    sites). Wrapper: ``wrap(original) -> broken`` applied to ``function`` of the module
    (default: the op's own function; for a composed op, the chain piece it names).
    ``dtypes``: the op's dtypes the bug can show in (None: all of them). ``backends``: where
    it can be computed; ``min_preset``: the fuzz preset it needs (int32 overflows need
    "large", GPU only).
    """

    name: str
    op: str
    module: str
    old: str
    new: str
    description: str
    dtypes: Optional[Tuple[str, ...]] = None
    backends: Tuple[str, ...] = ("cuda", "interpreter")
    min_preset: Optional[str] = None
    more: Tuple[Tuple[str, str], ...] = ()
    wrap: Optional[Callable[[Callable], Callable]] = None
    function: Optional[str] = None

    @property
    def patches(self) -> Tuple[Tuple[str, str], ...]:
        return () if self.wrap is not None else ((self.old, self.new),) + tuple(self.more)


# ----------------------------------------------------------------------------- wrappers

def cache_by_shape(fn: Callable) -> Callable:
    """Memoise on the arguments' shapes and dtypes (and plain values), as a decode loop that
    'knows' its batch shape might: a new routing of the same shape gets the old result."""
    import torch
    memo: Dict[tuple, object] = {}

    def key_of(a):
        if isinstance(a, torch.Tensor):
            return ("T", tuple(a.shape), a.dtype, a.device.type)
        return tuple(a) if isinstance(a, list) else a

    @functools.wraps(fn)
    def cached(*args):
        key = tuple(key_of(a) for a in args)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return cached


# ----------------------------------------------------------------------------- catalogue

def __getattr__(name: str):
    """CATALOGUE (every registered mutant, in registration order) and MUTANTS (by name), read
    from the op registry when asked for: the family modules that define the mutants import
    this module for the Mutant type."""
    if name in ("CATALOGUE", "MUTANTS"):
        from .ops import MUTANT_CATALOGUE
        catalogue = tuple(MUTANT_CATALOGUE)
        return catalogue if name == "CATALOGUE" else {m.name: m for m in catalogue}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- loading

def module_path(module: str) -> str:
    """The source file of a kernel module (a dotted name or a .py path), without importing it."""
    if module.endswith(".py") or os.sep in module:
        return os.path.realpath(module)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"mutant module {module!r}: no such module")
    return spec.origin


def patched_source(mutant: Mutant, source: Optional[str] = None) -> str:
    """The module's source with every patch of ``mutant`` applied; StalePatch unless each
    ``old`` occurs exactly once (in the source as it stands before that patch)."""
    if source is None:
        with open(module_path(mutant.module)) as fh:
            source = fh.read()
    for old, new in mutant.patches:
        n = source.count(old) if old else 0
        if n != 1:
            raise StalePatch(f"{mutant.name}: {mutant.module} contains the patched text {n} times "
                             f"(expected exactly once): {old.strip()[:80]!r}")
        source = source.replace(old, new)
    return source


_TMP: Dict[str, str] = {}


def _tmp_dir() -> str:
    if "dir" not in _TMP:
        _TMP["dir"] = tempfile.mkdtemp(prefix="moe-mutants-")
        atexit.register(shutil.rmtree, _TMP["dir"], True)
    return _TMP["dir"]


def _original(module: str) -> types.ModuleType:
    from .loader import load_module
    return load_module(module)


def load_patched_module(mutant: Mutant) -> types.ModuleType:
    """Import the patched module as ``<its package>._mutant_<name>`` from a file (harness.loader;
    cached per process by that name).

    The file lives as long as the process: Triton's @jit reads kernel source through
    ``inspect`` (and its interpreter re-parses it), which needs a real file."""
    source = patched_source(mutant)
    original = _original(mutant.module)
    package = original.__name__.rpartition(".")[0] if original.__spec__ and original.__spec__.parent else ""
    if package:
        importlib.import_module(package)  # the parent package, for the module's relative imports
    name = f"{package}._mutant_{mutant.name}" if package else f"_moe_mutant_{mutant.name}"
    return load_file_module(name, os.path.join(_tmp_dir(), f"_mutant_{mutant.name}.py"), source=source)


def mutated_functions(mutant: Mutant) -> Dict[str, Callable]:
    """{op name: broken function}: the wrapped original (the op's own function, or the chain
    piece ``function``), or every op function the patched module defines."""
    from .specs import SPECS
    if mutant.wrap is not None:
        fname = mutant.function or mutant.op
        return {fname: mutant.wrap(getattr(_original(mutant.module), fname))}
    mod = load_patched_module(mutant)
    return {op: getattr(mod, op) for op in SPECS if hasattr(mod, op)}


def implementation(mutant: Mutant):
    """``ours`` with the mutant's op replaced (see the module docstring); name ``mutant:<name>``."""
    from .impls import compose, load_implementation
    from .specs import SPECS
    ours = load_implementation("ours")
    record = SPECS[mutant.op]
    broken = mutated_functions(mutant)
    if record.composed_of:
        fn = compose(record, {**ours.ops, **broken})
    else:
        fn = broken[mutant.op]
    return dataclasses.replace(ours, name=f"mutant:{mutant.name}", ops={**ours.ops, mutant.op: fn},
                               source=f"mutant:{mutant.name}")
