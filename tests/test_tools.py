"""tools/ and results/ keep their roles (tools/README.md, results/README.md).

Contracts checked: results/ holds records only (no .py or .sh file anywhere under it); every tool
reaches optimized/ through its public API only: it imports no private name from optimized,
reads no private attribute of an optimized module and assigns none of their globals (a knob is
set through a switch, which restores it), and every name it takes from optimized exists; every
Python tool imports, every shell tool parses, and none runs a script from results/.
"""
import ast
import json
import importlib
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
PY_TOOLS = sorted(f for f in os.listdir(TOOLS) if f.endswith(".py"))
SH_TOOLS = sorted(f for f in os.listdir(TOOLS) if f.endswith(".sh"))
# private names of optimized/ as text: optimized.gemm._launch, from optimized.gemm import _launch
PRIVATE_TEXT = re.compile(r"optimized\.\w+\._\w+|from optimized[\w.]* import [^\n]*\b_\w+")


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except ImportError:   # a parent that is no package
        return False


def _exists(dotted: str) -> bool:
    """Whether ``dotted`` (optimized.gemm.tma_allowed, ...) names a module or an attribute of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if _is_module(".".join(parts[:i])):
            obj = importlib.import_module(".".join(parts[:i]))
            break
    else:
        return False
    for part in parts[i:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _dotted(node):
    """'a.b.c' for an attribute chain on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def violations(source: str):
    """Every way ``source`` reaches past optimized/'s public API: private names imported or read,
    module globals assigned (or setattr), names that do not exist; as 'line N: what' strings."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    bound = {}   # local name -> the optimized module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optimized":
                    bound[alias.asname or "optimized"] = alias.name if alias.asname else "optimized"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optimized":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if any(part.startswith("_") for part in full.split(".")):
                    found.append(f"line {node.lineno}: imports the private {full}")
                elif not _exists(full):
                    found.append(f"line {node.lineno}: imports {full}, which does not exist")
                elif _is_module(full):
                    bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        # the outermost attribute of a chain on a name bound to an optimized module
        if isinstance(node, ast.Attribute) and not isinstance(parents.get(node), ast.Attribute):
            dotted = _dotted(node)
            if dotted is None or dotted.split(".")[0] not in bound:
                continue
            base, *attrs = dotted.split(".")
            full = ".".join([bound[base]] + attrs)
            if any(a.startswith("_") for a in attrs):
                found.append(f"line {node.lineno}: reads the private {full}")
            elif isinstance(node.ctx, ast.Store):
                found.append(f"line {node.lineno}: assigns the module global {full}")
            elif not _exists(full):
                found.append(f"line {node.lineno}: uses {full}, which does not exist")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
              and node.args and _dotted(node.args[0]) in bound):
            found.append(f"line {node.lineno}: setattr on the module {bound[_dotted(node.args[0])]}")
    return found


def test_results_holds_records_only():
    scripts = [os.path.relpath(os.path.join(folder, name), ROOT)
               for folder, _, names in os.walk(os.path.join(ROOT, "results")) for name in names
               if name.endswith((".py", ".sh"))]
    assert not scripts, f"scripts belong in tools/, not results/: {scripts}"


def test_the_checker_finds_each_kind_of_private_use():
    source = ("from optimized import gemm, preprocess as pp\nfrom optimized.reorder import _row_tiles\n"
              "import optimized\ngemm.USE_TMA = False\npp._plan(8, 4, False)\nsetattr(gemm, 'USE_TMA', True)\n"
              "optimized.gemm.grouped_gemm_kernels\nwith gemm.tma_allowed(False):\n    gemm.grouped_gemm\n")
    found = violations(source)
    assert len(found) == 5, found
    assert PRIVATE_TEXT.search("from optimized.reorder import pre_reorder, _row_tiles")
    assert PRIVATE_TEXT.search("x = optimized.gemm._launch")
    assert not PRIVATE_TEXT.search("from optimized import config, gemm")


@pytest.mark.parametrize("name", PY_TOOLS)
def test_python_tool_uses_only_the_public_api_and_imports(name):
    with open(os.path.join(TOOLS, name)) as fh:
        source = fh.read()
    assert not PRIVATE_TEXT.findall(source)
    assert not violations(source)
    if name == "gluon_fp8_block_probe.py":
        pytest.importorskip("triton.experimental.gluon")
    # in a child process: some tools set TRITON_INTERPRET when imported, which must not leak into this one
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", f"import tools.{name[:-3]}"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", SH_TOOLS)
def test_shell_tool_parses_and_runs_nothing_from_results(name):
    path = os.path.join(TOOLS, name)
    with open(path) as fh:
        source = fh.read()
    assert not PRIVATE_TEXT.findall(source)
    assert not re.findall(r"results/\w+\.(?:py|sh)", source)
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sweep_remaining_merges_chunks_across_calls_and_lists_what_is_short(tmp_path):
    """Rows of two calls add up per (implementation, op, dtype); an op is left while any of its
    dtypes has fewer cases than asked (or no row)."""
    sys.path.insert(0, TOOLS)
    try:
        import sweep_remaining as tool
    finally:
        sys.path.remove(TOOLS)
    from harness.ops import REGISTRY

    def row(impl, op, dtype, run):
        return dict(impl=impl, op=op, dtype=dtype, run=run, failed=0)
    ints = REGISTRY["ep_preprocess"].dtypes
    (tmp_path / "a.json").write_text(json.dumps({"rows": [row("ours", "ep_preprocess", d, 1012) for d in ints]}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": [row("ours", "ep_preprocess", ints[0], 1012)]}))
    counts = tool.merged_counts([tmp_path / "a.json", tmp_path / "b.json"])
    assert counts[("ours", "ep_preprocess", ints[0])] == (2024, 0)
    left = tool.remaining_ops(counts, "ours", 2000)
    assert "ep_preprocess" in left and left == [op for op in REGISTRY if op in left]   # registry order
    assert "ep_preprocess" not in tool.remaining_ops(counts, "ours", 1000)
    assert tool.remaining_ops(counts, "reference", 1) == list(REGISTRY)
    # --stale OP@PART: the op's rows in files whose path contains PART count as missing
    stale = tool.merged_counts([tmp_path / "a.json", tmp_path / "b.json"], [("ep_preprocess", "b.json")])
    assert stale[("ours", "ep_preprocess", ints[0])] == (1012, 0)
    assert ("ours", "ep_preprocess", ints[0]) not in tool.merged_counts([tmp_path / "a.json"], [("ep_preprocess", "")])


def test_sweep_remaining_groups_sweep_only_the_missing_dtypes(tmp_path):
    """--groups: an op with some dtypes swept is listed with the others only; ops missing every
    dtype go together with no dtype filter."""
    sys.path.insert(0, TOOLS)
    try:
        import sweep_remaining as tool
    finally:
        sys.path.remove(TOOLS)
    from harness.ops import REGISTRY
    first, *rest = REGISTRY["ep_scatter"].dtypes
    counts = {("ours", "ep_scatter", first): (2024, 0)}
    groups = tool.remaining_groups(counts, "ours", 2000)
    whole, all_dtypes = groups[0]
    assert all_dtypes == () and "ep_scatter" not in whole and "ep_gather" in whole
    assert (["ep_scatter"], tuple(rest)) in groups
    assert all(op in REGISTRY for ops, _ in groups for op in ops)


def test_specialisations_counts_a_rows_kernel_keys_without_computing():
    """tools/specialisations.py: the reorders' keys of ep_moe_forward's row, counted with every
    launch skipped and no case stopped on the host; --ignore takes a parameter out of the keys."""
    def run(*extra):
        proc = subprocess.run([sys.executable, os.path.join(TOOLS, "specialisations.py"), "--op", "ep_moe_forward",
                               "--dtype", "bfloat16", *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(TOOLS)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "host error" not in proc.stdout, proc.stdout
        return int(re.search(r"(\d+) of _pre_reorder_kernel", proc.stdout).group(1))
    keys = run("--whole")
    assert keys >= 4
    assert run("--whole", "--ignore", "BLOCK_H", "ROWS", "KP", "TOPK", "H", "ids_ptr") < keys


def test_mutant_draws_give_the_large_int32_mutants_a_layout_past_int32():
    """tools/mutant_draws.py lists a mutant's cases without running them. The ep_scatter and
    ep_gather int32-offset mutants are killed on the GPU only if one of their 2 large cases per
    dtype lays out more than 2**31 elements: the first one has every expert local (T*K rows of
    H). The listing repeats under the same seed and leaves harness.fuzz's case runner in place."""
    sys.path.insert(0, TOOLS)
    try:
        import mutant_draws as tool
    finally:
        sys.path.remove(TOOLS)
    import harness.fuzz as fuzz
    runner = fuzz.run_case
    for name in ("ep_scatter_int32_row_offset", "ep_gather_int32_row_offset"):
        cases = tool.draws(name, "cuda", 0)
        assert fuzz.run_case is runner
        assert [p.to_json() for _, p in cases] == [p.to_json() for _, p in tool.draws(name, "cuda", 0)]
        by_dtype = {}
        for dtype, p in cases:
            by_dtype.setdefault(dtype, []).append(p)
        assert by_dtype and all(len(ps) == 2 for ps in by_dtype.values())
        for ps in by_dtype.values():
            p = ps[0]
            assert p.e_local == p.experts and p.index_dtype == "int32"
            assert p.tokens * p.topk * p.hidden > 2 ** 31
