"""Errors that say what this machine lacks, not what the candidate computes wrongly.

A candidate's exception is normally the ``exception`` probe's failure. Four kinds are a
limit of the environment instead, and give a case no verdict (not computable here):

- torch's own error of a CUDA call without CUDA (the candidate's host code asking for device
  properties, a stream, ...): ``needs_cuda``, never raised on a GPU machine.
- on a machine without CUDA, the candidate file's own requirement of it: an ``assert`` on a
  CUDA device (``assert input.is_cuda``: SGLang 0.5.23's compute_cutlass_w4a8_moe_input_scale),
  or a NameError for a name that the file binds only under a CUDA-build test at module level
  (``if _is_cuda or _is_musa: from ... import ... as per_token_group_quant_fp8``: 0.5.23's
  moe_ep_deepgemm_preprocess). On a machine with CUDA such an error is the candidate's own.
- on any machine, a third-party package the candidate imports that is not installed
  (``deep_gemm``: 0.5.23's UE8M0-packed group quantiser). Not ``sglang`` itself: a name of
  sglang that the harness's stand-ins do not serve is the harness's gap, and stays loud.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
from typing import FrozenSet, Optional, Tuple

import torch

STANDIN_PACKAGE = "sglang"     # served by harness/sglang/standins.py, never "not installed"

# What torch raises when code asks for a GPU that a CPU-only torch or machine lacks.
_NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available",
            # a CUDA binding of a CPU-only torch (torch.cuda.is_current_stream_capturing & co.), and a
            # CUDA build of torch on a machine without a driver (the index's torch on a CPU machine)
            "Tried to instantiate dummy base class _cuda", "CUDA driver version is insufficient",
            "no CUDA-capable device is detected")


def needs_cuda(exc: BaseException) -> bool:
    """True for torch's error of a CUDA call without CUDA (never raised on a GPU machine)."""
    return isinstance(exc, (AssertionError, RuntimeError)) and any(m in str(exc) for m in _NO_CUDA)


def machine_limit(exc: BaseException) -> Optional[str]:
    """Why ``exc`` is a limit of this machine rather than a fault of the candidate (a phrase to
    follow "not computable without ..."), or None when it is the candidate's own error."""
    if needs_cuda(exc):
        return "a GPU: the candidate's host code needs CUDA"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top != STANDIN_PACKAGE and importlib.util.find_spec(top) is None:
            return f"the package {top!r}, which the candidate imports and this environment does not have"
    if torch.cuda.is_available() or not isinstance(exc, (AssertionError, NameError)):
        return None
    where = _raising_line(exc)
    if where is None:
        return None
    filename, lineno = where
    if isinstance(exc, AssertionError) and lineno in _cuda_asserts(filename):
        return f"a GPU: the candidate asserts a CUDA tensor ({os.path.basename(filename)}, line {lineno})"
    name = getattr(exc, "name", None)
    if isinstance(exc, NameError) and name and name in _bound_only_with_cuda(filename):
        return f"a GPU: {os.path.basename(filename)} binds {name!r} only when CUDA is present"
    return None


def _raising_line(exc: BaseException) -> Optional[Tuple[str, int]]:
    """(file, line) of the innermost frame of ``exc``'s traceback."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


@functools.lru_cache(maxsize=64)
def _parse(filename: str) -> Optional[ast.Module]:
    try:
        with open(filename, encoding="utf-8") as fh:
            return ast.parse(fh.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None


def _mentions_cuda(node: ast.AST) -> bool:
    """A test that names CUDA: an identifier, attribute or string containing 'cuda'."""
    for sub in ast.walk(node):
        text = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else \
            sub.value if isinstance(sub, ast.Constant) and isinstance(sub.value, str) else ""
        if "cuda" in text.lower():
            return True
    return False


@functools.lru_cache(maxsize=64)
def _cuda_asserts(filename: str) -> FrozenSet[int]:
    """The lines of the file's assert statements whose test names CUDA (each line they span)."""
    tree = _parse(filename)
    if tree is None:
        return frozenset()
    return frozenset(line for node in ast.walk(tree) if isinstance(node, ast.Assert) and _mentions_cuda(node.test)
                     for line in range(node.lineno, (node.end_lineno or node.lineno) + 1))


@functools.lru_cache(maxsize=64)
def _bound_only_with_cuda(filename: str) -> FrozenSet[str]:
    """Names that module-level ``if`` statements testing CUDA bind (imports, assignments,
    definitions), in either branch: where the machine has no CUDA, a NameError for one of them
    means the branch that binds it is the CUDA one."""
    tree = _parse(filename)
    if tree is None:
        return frozenset()
    names = set()
    for stmt in tree.body:
        if not (isinstance(stmt, ast.If) and _mentions_cuda(stmt.test)):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return frozenset(names)
