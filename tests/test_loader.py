"""Running a file as a module (harness.loader), the one loader behind a user's kernels file
(impls), a git revision's optimized/ (bench --baseline) and a mutant's patched module."""
import sys

import pytest

from harness.loader import load_file_module


@pytest.fixture
def names():
    """Module names a test registers; removed from sys.modules afterwards."""
    made = []
    yield made
    for name in list(sys.modules):
        if any(name == n or name.startswith(n + ".") for n in made):
            del sys.modules[name]


def test_a_file_runs_once_under_its_name(tmp_path, names):
    path = tmp_path / "kernels.py"
    path.write_text("import builtins\nbuiltins._moe_loader_runs = getattr(builtins, '_moe_loader_runs', 0) + 1\n"
                    "VALUE = 7\n")
    names.append("_moe_test_kernels")
    mod = load_file_module("_moe_test_kernels", path)
    again = load_file_module("_moe_test_kernels", path)
    import builtins
    try:
        assert mod is again and sys.modules["_moe_test_kernels"] is mod and mod.VALUE == 7
        assert builtins._moe_loader_runs == 1                # the second load ran nothing
    finally:
        del builtins._moe_loader_runs


def test_extend_sys_path_lets_the_file_import_its_helpers(tmp_path, names):
    (tmp_path / "moe_test_helper_mod.py").write_text("ANSWER = 42\n")
    (tmp_path / "uses_helper.py").write_text("from moe_test_helper_mod import ANSWER\n")
    names += ["_moe_test_uses_helper", "moe_test_helper_mod"]
    try:
        assert load_file_module("_moe_test_uses_helper", tmp_path / "uses_helper.py", extend_sys_path=True).ANSWER == 42
        assert str(tmp_path) in sys.path
    finally:
        sys.path.remove(str(tmp_path))


def test_a_package_resolves_its_relative_imports_inside_itself(tmp_path, names):
    pkg = tmp_path / "optimized"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .impl import VERSION\n")
    (pkg / "impl.py").write_text("VERSION = 'side by side'\n")
    names.append("_moe_test_pkg")
    mod = load_file_module("_moe_test_pkg", pkg / "__init__.py", package=True)
    assert mod.VERSION == "side by side" and "_moe_test_pkg.impl" in sys.modules


def test_source_is_written_to_the_file_before_it_runs(tmp_path, names):
    path = tmp_path / "patched.py"
    names.append("_moe_test_patched")
    mod = load_file_module("_moe_test_patched", path,
                           source="import inspect\nimport sys\nSRC = inspect.getsource(sys.modules[__name__])\n")
    assert path.read_text().startswith("import inspect") and "SRC" in mod.SRC   # inspect reads the real file
    load_file_module("_moe_test_patched", path, source="raise SystemExit('not run again')\n")
    assert path.read_text().startswith("import inspect")                       # cached: not rewritten


def test_a_failing_file_leaves_nothing_registered(tmp_path, names):
    pkg = tmp_path / "broken"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import fine\nraise RuntimeError('broken on import')\n")
    (pkg / "fine.py").write_text("")
    names.append("_moe_test_broken")
    with pytest.raises(RuntimeError, match="broken on import"):
        load_file_module("_moe_test_broken", pkg / "__init__.py", package=True)
    assert not [n for n in sys.modules if n.startswith("_moe_test_broken")]
    (pkg / "__init__.py").write_text("from . import fine\n")
    assert load_file_module("_moe_test_broken", pkg / "__init__.py", package=True).fine  # a retry runs it again


def test_a_bad_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="name: expected a module name"):
        load_file_module("", tmp_path / "x.py")
