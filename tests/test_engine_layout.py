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


def _imported(module: str, tree: ast.AST, is_package: bool):
    """Absolute names of everything ``module`` imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
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
