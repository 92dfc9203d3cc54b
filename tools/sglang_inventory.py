#!/usr/bin/env python
"""Inventory of SGLang releases' EP-MoE kernels, regenerated from the release wheels.

For each release: the kernel file's path inside the wheel (harness.sglang.release.KERNEL_PATHS),
the ``sglang.*`` imports it makes (module, names, and where: top level, under an ``if``,
inside a function), each of SGLang's names for the harness's ops (the op records' ``sglang.names``,
harness/ops/) with its kind (triton.jit kernel, autotuned kernel, function) and parameter
list, and how the release's own code launches or calls it (grid and keyword arguments)
in the kernel file, the EP layer file and the release's tests.

    PYTHONPATH=$PWD python tools/sglang_inventory.py                 # the representative list
    PYTHONPATH=$PWD python tools/sglang_inventory.py 0.4.6.post1 0.5.23
    PYTHONPATH=$PWD python tools/sglang_inventory.py --wheels /tmp/sglang-wheels --json inv.json
    PYTHONPATH=$PWD python tools/sglang_inventory.py --changes    # per op: where it changed

Wheels come from the harness's cache (harness.sglang.release.resolve: pip download on a
miss) or, with ``--wheels DIR``, from ``DIR/**/sglang-VERSION-*.whl``. Nothing is imported
from the wheels: the files are parsed with ``ast``.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import zipfile
from glob import glob
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.sglang.release import KERNEL_PATHS, LAYER_PATHS, find_kernel_path, resolve, wheel_version  # noqa: E402

# The representative list: the first of each minor line with the EP kernels, the releases
# that changed a signature, the move of the file (0.5.15 -> 0.5.16) and the newest.
DEFAULT_VERSIONS = ("0.4.3", "0.4.5", "0.4.6.post1", "0.4.7", "0.4.8", "0.4.9", "0.4.10.post2", "0.5.1", "0.5.3",
                    "0.5.5", "0.5.8", "0.5.10", "0.5.13", "0.5.15", "0.5.16", "0.5.19", "0.5.21", "0.5.23")
# Where else the release's own code launches the kernels: its tests of the EP kernels.
EXTRA_CALLER_PATHS = ("sglang/test/test_block_fp8_ep.py",)


def sglang_names() -> Dict[str, tuple]:
    """op -> SGLang's names for it (first present wins), from the op records."""
    from harness.specs import SPECS
    return {op: record.sglang.names for op, record in SPECS.items() if record.sglang is not None}


def _scope(stack: List[ast.AST]) -> str:
    if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in stack):
        fn = next(n.name for n in reversed(stack) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        return f"in {fn}()"
    if any(isinstance(n, (ast.If, ast.Try)) for n in stack):
        return "conditional"
    return "top"


def sglang_imports(tree: ast.AST) -> List[dict]:
    """Every ``import sglang...`` / ``from sglang... import names`` with where it happens."""
    out = []

    def visit(node, stack):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sglang":
            out.append({"module": node.module, "names": [a.name for a in node.names], "scope": _scope(stack),
                        "line": node.lineno})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "sglang":
                    out.append({"module": a.name, "names": [], "scope": _scope(stack), "line": node.lineno})
        for child in ast.iter_child_nodes(node):
            visit(child, stack + [node])
    visit(tree, [])
    return out


def _decorator_kind(fn: ast.FunctionDef) -> str:
    kinds = []
    for d in fn.decorator_list:
        text = ast.unparse(d)
        if "autotune" in text:
            kinds.append("autotune")
        elif "heuristics" in text:
            kinds.append("heuristics")
        elif "jit" in text:
            kinds.append("jit")
    return "+".join(kinds) or "def"


def _params(fn: ast.FunctionDef) -> List[str]:
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = []
    for arg, default in zip(positional, defaults):
        text = arg.arg
        if arg.annotation is not None and "constexpr" in ast.unparse(arg.annotation):
            text += ":constexpr"
        if default is not None:
            text += "=" + ast.unparse(default)
        out.append(text)
    if a.vararg:
        out.append("*" + a.vararg.arg)
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append(arg.arg + ("" if default is None else "=" + ast.unparse(default)) + " (kw-only)")
    if a.kwarg:
        out.append("**" + a.kwarg.arg)
    return out


def definitions(tree: ast.AST, names) -> Dict[str, dict]:
    """Top-level definitions of ``names``: kind and parameter list."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            body = ast.dump(ast.Module(body=node.body, type_ignores=[]))  # without line numbers or docstring edits
            out[node.name] = {"kind": _decorator_kind(node), "params": _params(node), "line": node.lineno,
                              "body": hashlib.sha1(body.encode()).hexdigest()[:8]}
    return out


def call_sites(tree: ast.AST, names, where: str) -> List[dict]:
    """``NAME[grid](...)`` launches and ``NAME(...)`` calls of ``names``."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, grid = node.func, None
        if isinstance(f, ast.Subscript):
            grid, f = ast.unparse(f.slice), f.value
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name not in names:
            continue
        out.append({"name": name, "where": f"{where}:{node.lineno}", "grid": grid, "positional": len(node.args),
                    "keywords": {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}})
    return out


def inventory_wheel(wheel: str) -> dict:
    """The inventory of one wheel (see the module docstring)."""
    version = wheel_version(wheel)
    names_of = sglang_names()
    op_names = {n: op for op, names in names_of.items() for n in names}
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        kernel_path = find_kernel_path(names)
        entry = {"version": version, "wheel": os.path.basename(wheel), "kernel_path": kernel_path}
        if kernel_path is None:
            entry["note"] = f"none of {', '.join(KERNEL_PATHS)}"
            return entry
        tree = ast.parse(zf.read(kernel_path), kernel_path)
        entry["imports"] = sglang_imports(tree)
        defs = definitions(tree, op_names)
        entry["ops"] = {op_names[n]: dict(d, name=n) for n, d in defs.items()}
        entry["missing"] = sorted(set(names_of) - set(entry["ops"]))
        entry["functions"] = sum(isinstance(n, ast.FunctionDef) for n in tree.body)
        sites = call_sites(tree, op_names, kernel_path)
        for path in LAYER_PATHS + EXTRA_CALLER_PATHS:
            if path in names:
                sites += call_sites(ast.parse(zf.read(path), path), op_names, path)
        entry["calls"] = sites
    return entry


def _wheel_for(version: str, wheels: Optional[str]) -> str:
    if wheels:
        found = sorted(glob(os.path.join(wheels, "**", f"sglang-{version}-*.whl"), recursive=True))
        if not found:
            raise SystemExit(f"--wheels {wheels}: no sglang-{version}-*.whl")
        return found[0]
    release = resolve(version)
    if release.wheel is None:  # a slim cache (moe-harness releases --export-cache) keeps no wheels
        raise SystemExit(f"sglang=={version}: the cache {release.folder} is slim (no wheel); the inventory reads "
                         f"the wheel: pass --wheels DIR or use a full cache")
    return os.fspath(release.wheel)


def render(entries: List[dict]) -> str:
    lines = []
    for e in entries:
        lines.append(f"## sglang {e['version']}  ({e['wheel']})")
        if not e.get("kernel_path"):
            lines.append(f"  no EP-MoE kernel file: {e.get('note')}\n")
            continue
        lines.append(f"  kernel file: {e['kernel_path']}  ({e['functions']} top-level functions)")
        for imp in e["imports"]:
            lines.append(f"  import {imp['module']}: {', '.join(imp['names']) or '(module)'}  [{imp['scope']}]")
        for op, d in sorted(e["ops"].items()):
            lines.append(f"  {op:<18} {d['name']} [{d['kind']}, body {d['body']}] ({', '.join(d['params'])})")
        if e["missing"]:
            lines.append(f"  missing: {', '.join(e['missing'])}")
        for c in e["calls"]:
            kw = ", ".join(f"{k}={v}" for k, v in c["keywords"].items())
            grid = f"[{c['grid']}]" if c["grid"] else ""
            lines.append(f"    call {c['name']}{grid}({c['positional']} positional{', ' + kw if kw else ''})"
                         f"  {c['where']}")
        lines.append("")
    return "\n".join(lines)


def render_changes(entries: List[dict]) -> str:
    """Per op: the releases where its parameters or its body changed (and where it is absent)."""
    lines = []
    for op in sglang_names():
        lines.append(f"## {op}")
        last = None
        for e in entries:
            d = (e.get("ops") or {}).get(op)
            state = None if d is None else (d["name"], tuple(d["params"]), d["body"])
            if state == last:
                continue
            if d is None:
                lines.append(f"  {e['version']:<13} absent")
            else:
                what = "body" if last and last[:2] == state[:2] else f"{d['name']}({', '.join(d['params'])})"
                lines.append(f"  {e['version']:<13} [{d['kind']}, body {d['body']}] {what}")
            last = state
        lines.append("")
    paths, imports = [], []
    for e in entries:
        if not paths or paths[-1][1] != e.get("kernel_path"):
            paths.append((e["version"], e.get("kernel_path")))
        names = sorted({f"{i['module']}: {', '.join(i['names'])} [{i['scope']}]" for i in e.get("imports", [])})
        if not imports or imports[-1][1] != names:
            imports.append((e["version"], names))
    lines.append("## kernel file")
    lines += [f"  {v:<13} {p}" for v, p in paths]
    lines.append("\n## sglang imports")
    for v, names in imports:
        lines.append(f"  {v:<13} " + ("\n" + " " * 16).join(names or ["(none)"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("versions", nargs="*", default=list(DEFAULT_VERSIONS),
                    help=f"releases (default: {' '.join(DEFAULT_VERSIONS)})")
    ap.add_argument("--wheels", help="read DIR/**/sglang-VERSION-*.whl instead of the harness's cache")
    ap.add_argument("--json", help="also write the inventory as JSON to this path")
    ap.add_argument("--changes", action="store_true",
                    help="print, per op, only the releases where it changed (then the kernel file and imports)")
    args = ap.parse_args(argv)
    entries = [inventory_wheel(_wheel_for(v, args.wheels)) for v in args.versions]
    print(render_changes(entries) if args.changes else render(entries))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(entries, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
