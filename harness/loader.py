"""Loading code by name or by file: the one place the harness runs a file as a module.

Used for implementation sources (a user's kernel file), op modules outside the package
(harness.ops), the kernel modules mutants patch, and optimized/ as it is at another git
revision (``bench --baseline REV``). ``load_file_module`` is the one function that runs a
file: it registers the module in sys.modules under its name before its code runs (Triton
and pickling look a kernel's module up by name, and a package's relative imports need it),
and the name is the cache: callers derive it from what they load (the file's path, the
revision, the mutant), and a second load returns the module as it is. Imports nothing of the
harness, so any module may use it at import time.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def is_path(target: str) -> bool:
    """Whether ``target`` names a file (a .py path) rather than a dotted module."""
    return target.endswith(".py") or os.sep in target or "/" in target


def load_file_module(name: str, path: PathLike, *, source: Optional[str] = None, package: bool = False,
                     extend_sys_path: bool = False, builtins: Optional[dict] = None) -> types.ModuleType:
    """Execute the file at ``path`` as the module ``name`` and return it.

    ``source``: the module's text, written to ``path`` first (a module made at run time:
    Triton's @jit reads kernel source through ``inspect``, which needs a real file).
    ``package``: ``path`` is a package's ``__init__.py``; its folder is searched for the
    package's submodules. ``extend_sys_path``: append the file's folder to sys.path, so that
    the file can import its own helpers. ``builtins``: the module's ``__builtins__``, for its
    code and the functions it defines (e.g. an ``__import__`` that serves stand-ins:
    harness/sglang/standins.py). A name inside a package (``optimized._mutant_x``)
    resolves its relative imports in that package, which must be imported already.

    A module already registered as ``name`` is returned without running anything. When the
    file raises, ``name`` and its submodules leave sys.modules and the error propagates."""
    if not name or not isinstance(name, str):
        raise ValueError(f"name: expected a module name, got {name!r}")
    if name in sys.modules:
        return sys.modules[name]
    path = os.fspath(path)
    if source is not None:
        with open(path, "w") as fh:
            fh.write(source)
    folder = os.path.dirname(os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path,
                                                  submodule_search_locations=[folder] if package else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python source file that can be loaded as module {name!r}")
    if extend_sys_path and folder not in sys.path:
        sys.path.append(folder)
    mod = importlib.util.module_from_spec(spec)
    if builtins is not None:
        mod.__dict__["__builtins__"] = builtins
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[loaded]
        raise
    return mod


def load_module(target: str, name: Optional[str] = None, *, extend_sys_path: bool = True,
                builtins: Optional[dict] = None) -> types.ModuleType:
    """Import a dotted module name, or execute a local .py file as a module (one module per
    real path: ``name`` chooses its module name, else one derived from the path). The file's
    folder is appended to sys.path so that it can import its own helpers, unless
    ``extend_sys_path`` is False; ``builtins`` as for load_file_module."""
    if not is_path(target):
        return importlib.import_module(target)
    path = os.path.realpath(os.path.expanduser(target))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{target}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    return load_file_module(name or f"_moe_ext_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}", path,
                            extend_sys_path=extend_sys_path, builtins=builtins)
