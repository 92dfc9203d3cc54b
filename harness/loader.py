"""Loading code by name or by file: the one place the harness runs a file as a module.

Used for implementation sources (a user's kernel file), op modules outside the package
(harness.ops), and the kernel modules mutants patch. Imports nothing of the harness, so any
module may use it at import time.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Dict, Optional

_FILE_MODULES: Dict[str, types.ModuleType] = {}


def is_path(target: str) -> bool:
    """Whether ``target`` names a file (a .py path) rather than a dotted module."""
    return target.endswith(".py") or os.sep in target or "/" in target


def exec_file_as_module(path: str, name: str, add_folder_to_path: bool = True) -> types.ModuleType:
    """Execute the .py file ``path`` as the module ``name``, registered in sys.modules (Triton
    and pickling look kernels' modules up by name); on an error the name is unregistered.
    ``add_folder_to_path`` appends the file's folder to sys.path so that it can import its own
    helpers."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    if add_folder_to_path and folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_module(target: str, name: Optional[str] = None) -> types.ModuleType:
    """Import a dotted module name, or execute a local .py file as a module (cached by real
    path; ``name`` chooses its module name, else one derived from the path)."""
    if not is_path(target):
        return importlib.import_module(target)
    path = os.path.realpath(os.path.expanduser(target))
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{target}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    mod = exec_file_as_module(path, name or f"_moe_ext_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}")
    _FILE_MODULES[path] = mod
    return mod
