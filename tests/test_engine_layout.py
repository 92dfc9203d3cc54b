"""How the harness's modules depend on each other: only the front ends (harness.cli and
harness.commands) parse command lines; the engine takes options objects and never imports
argparse. Read from the source (AST), so a lazy import inside a function counts too."""
import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
FRONT_ENDS = {"harness.cli", "harness.commands"} | {f"harness.commands.{p.stem}"
                                                     for p in (HARNESS / "commands").glob("*.py") if p.stem != "__init__"}


def _modules():
    """{dotted name: parsed source} of every module of the harness package."""
    out = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (ast.parse(path.read_text(), str(path)), path.name == "__init__.py")
    return out


def _type_checking_only(tree: ast.AST) -> set:
    """The import statements inside ``if TYPE_CHECKING:`` blocks: they never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imported(module: str, tree: ast.AST, is_package: bool):
    """Absolute names of everything ``module`` imports when it runs, wherever the import
    statement is (in functions too), but for the annotations-only ``if TYPE_CHECKING:`` ones."""
    package = module if is_package else module.rpartition(".")[0]
    never_run = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in never_run:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)  # `from . import check`


def test_the_engine_imports_no_argparse():
    modules = _modules()
    assert FRONT_ENDS <= set(modules) and len(FRONT_ENDS) >= 6
    offenders = sorted(name for name, (tree, pkg) in modules.items() if name not in FRONT_ENDS
                       and any(n == "argparse" or n.startswith("argparse.") for n in _imported(name, tree, pkg)))
    assert not offenders, f"engine modules importing argparse: {offenders}"


def _import_graph():
    """{module: the harness modules it imports}, from import statements at any depth."""
    modules = _modules()
    graph = {}
    for name, (tree, pkg) in modules.items():
        deps = set()
        for target in _imported(name, tree, pkg):
            while target and target not in modules:   # `harness.report.Row` -> harness.report
                target = target.rpartition(".")[0]
            if target and target not in (name, "harness"):
                deps.add(target)
        graph[name] = deps
    return graph


def _cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_in_the_harness():
    """check runs rows through isolate; isolate (and the row and report modules both use) must
    not import check back, even lazily inside a function."""
    graph = _import_graph()
    assert "harness.isolate" in graph["harness.check"]
    for lower in ("harness.isolate", "harness.row_check", "harness.report"):
        assert "harness.check" not in graph[lower], lower
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_loader_runs_files_as_modules():
    """impls (a user's file), bench (a revision's optimized/) and mutants (a patched module)
    all go through harness.loader, where one function runs a file."""
    modules = _modules()
    runners = sorted(name for name, (tree, _) in modules.items()
                     if any(isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "exec_module")
                            for node in ast.walk(tree)))
    assert runners == ["harness.loader"]
    for caller in ("harness.impls", "harness.bench", "harness.mutants"):
        tree, pkg = modules[caller]
        assert any(n.startswith("harness.loader.") for n in _imported(caller, tree, pkg)), caller
    loader, _ = modules["harness.loader"]
    runs = [f.name for f in ast.walk(loader) if isinstance(f, ast.FunctionDef)
            and any(isinstance(n, ast.Attribute) and n.attr == "exec_module" for n in ast.walk(f))]
    assert runs == ["load_file_module"]
