"""Implementation sources (harness.impls), crash isolation (harness.isolate) and the pytest
plugin, exercised with the external SGLang-style kernels of tests/fixtures/.

Contracts checked: every source syntax loads and passes; a missing SGLang name is "not
provided", never failed; raw kernels are launched with SGLang's grid and --block-size;
a planted unwritten-rows fault is FAILED with probe ``unwritten``; a planted wild store
kills the child on a GPU (illegal address) and is CRASHED with the case and the replay
command while the other ops of the same run pass (the patched interpreter reports it as a
FAILED out-of-bounds write instead); a native crash of the child is CRASHED; a hang is
cut off by the timeout; a Python exception is FAILED, not CRASHED.
"""
import os
import subprocess
import sys
import time

import pytest

from harness.check import run_check
from harness.impls import load_implementation, parse_source, short_name
from harness.options import CheckOptions

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(HERE, "fixtures")
GOOD = os.path.join(FIX, "sglang_style_kernels.py")
BROKEN = os.path.join(FIX, "sglang_broken.py")
OOB = os.path.join(FIX, "sglang_oob.py")
MISBEHAVING = os.path.join(FIX, "misbehaving.py")
ALL_OPS = {"ep_preprocess", "deepep_preprocess", "pre_reorder", "silu_and_mul", "gelu_and_mul", "post_reorder",
           "grouped_gemm", "ep_moe_forward"}


@pytest.fixture
def backend(request):
    return getattr(request.config, "moe_backend", None) or "interpreter"


def _args(impls, ops, dtypes=None, cases=3, isolate=False, **kw):
    fields = dict(impls=impls, ops=ops, dtypes=dtypes, cases=cases, quiet=True, isolate=isolate, timeout_s=600.0,
                  case_timeout_s=300.0)
    fields.update(kw)
    return CheckOptions(**fields)


def _by(rows):
    return {(r.impl, r.op, r.dtype): r for r in rows}


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize("source", [f"sglang:{GOOD}", "sglang:tests.fixtures.sglang_style_kernels"],
                         ids=["sglang-path", "sglang-dotted"])
def test_sglang_module_provides_every_op(source):
    impl = load_implementation(source)
    assert set(impl.ops) == ALL_OPS, impl.notes  # ep_moe_forward is composed from the pieces
    assert impl.source == source


def test_sglang_path_passes_on_every_op_family(backend):
    ops = ["ep_preprocess", "deepep_preprocess", "pre_reorder", "silu_and_mul", "gelu_and_mul", "post_reorder",
           "grouped_gemm"]
    rows = run_check(_args([f"sglang:{GOOD}"], ops, dtypes=["int32", "bfloat16", "fp8", "fp8_block"]), backend)
    assert rows and all(r.status == "passed" and r.passed >= 1 for r in rows), \
        [(r.op, r.dtype, r.status, r.failure and r.failure["message"]) for r in rows]
    assert {r.op for r in rows} == set(ops)


def test_sglang_dotted_module_passes(backend):
    rows = run_check(_args(["sglang:tests.fixtures.sglang_style_kernels"], ["post_reorder"], ["float16"]), backend)
    assert [(r.status, r.impl) for r in rows] == [("passed", "sglang:tests.fixtures.sglang_style_kernels")]


def test_single_function_sources_combine_and_pass(backend):
    source = (f"pre_reorder={GOOD}:launch_pre_reorder,ep_preprocess=tests.fixtures.sglang_style_kernels:"
              f"run_moe_ep_preproess")
    rows = _by(run_check(_args([source], ["pre_reorder", "ep_preprocess", "post_reorder"],
                               ["bfloat16", "int64", "float32"]), backend))
    name = short_name(source)
    assert rows[(name, "pre_reorder", "bfloat16")].status == "passed"
    assert rows[(name, "ep_preprocess", "int64")].status == "passed"
    assert rows[(name, "post_reorder", "float32")].status == "not provided"


def test_later_source_replaces_an_op_of_an_earlier_one():
    impl = load_implementation(f"sglang:{GOOD},post_reorder={MISBEHAVING}:sleeps")
    assert impl.ops["post_reorder"].__name__ == "sleeps"
    assert impl.ops["pre_reorder"].__name__ == "pre_reorder"


def test_missing_sglang_names_are_not_provided_with_a_note():
    impl = load_implementation(f"sglang:{BROKEN}")
    assert set(impl.ops) == {"post_reorder"}
    assert "pre_reorder_triton_kernel" in impl.notes["pre_reorder"]
    assert "missing" in impl.notes["ep_moe_forward"]


@pytest.mark.parametrize("bad", ["", "mine", "sglang:", "nosuchop=x.py:f", "pre_reorder=x.py", "pre_reorder=:f"])
def test_malformed_sources_are_rejected_before_loading(bad):
    with pytest.raises(ValueError):
        parse_source(bad)


def test_raw_kernels_launch_with_sglang_grid_and_block_size(tmp_path):
    """A stand-in kernel object records its launches: grid (T,) / (M,), BLOCK_SIZE from
    --block-size, and no launch for an empty grid."""
    mod = tmp_path / "fake_kernels.py"
    mod.write_text(
        "LAUNCHES = []\n"
        "class Kernel:\n"
        "    def __init__(self, name): self.name = name\n"
        "    def run(self, *a, **k): pass\n"
        "    def __getitem__(self, grid):\n"
        "        return lambda *a, **k: LAUNCHES.append((self.name, grid, len(a), k))\n"
        "pre_reorder_triton_kernel = Kernel('pre')\n"
        "silu_and_mul_triton_kernel = Kernel('silu')\n"
        "post_reorder_triton_kernel = Kernel('post')\n")
    import torch
    impl = load_implementation(f"sglang:{mod}", block_size=64)
    from harness.impls import load_module
    launches = load_module(str(mod)).LAUNCHES
    x = torch.zeros(5, 8)
    impl.ops["pre_reorder"](x, torch.zeros(10, 8), None, None, None, 0, 1, 2, 8, 512)
    impl.ops["silu_and_mul"](torch.zeros(7, 4), torch.zeros(7, 2), 4, None, None, 0, 1, 512)
    impl.ops["post_reorder"](torch.zeros(0, 8), torch.zeros(0, 8), None, None, None, 0, 1, 2, 8, 512)
    assert launches == [("pre", (5,), 9, {"BLOCK_SIZE": 64}), ("silu", (7,), 7, {"BLOCK_SIZE": 64})]


# ----------------------------------------------------------------------------- faults

def test_planted_unwritten_rows_are_failed_with_probe_unwritten(backend):
    rows = run_check(_args([f"sglang:{BROKEN}"], ["post_reorder", "pre_reorder"], ["bfloat16"], cases=10), backend)
    post, pre = rows
    assert (post.status, post.failure["probe"]) == ("FAILED", "unwritten"), post
    assert "--case" in post.replay and "post_reorder" in post.failure["params"]
    assert pre.status == "not provided"


def test_out_of_bounds_kernel_is_reported_while_other_ops_pass(backend):
    """On a GPU the wild store is CUDA's illegal-address error, which kills the child: CRASHED
    (the reason names it). The patched interpreter checks every store against the kernel's
    tensors (harness/interpreter.py): a FAILED case naming the out-of-bounds write."""
    source = f"sglang:{GOOD},sglang:{OOB}"
    t0 = time.time()
    rows = _by(run_check(_args([source], ["ep_preprocess", "pre_reorder", "post_reorder"], ["int32", "bfloat16"],
                               isolate=True), backend))
    name = short_name(source)
    crashed = rows[(name, "pre_reorder", "bfloat16")]
    if backend == "interpreter":
        assert (crashed.status, crashed.failure["probe"]) == ("FAILED", "exception"), crashed
        assert "out-of-bounds write in kernel pre_reorder_triton_kernel" in crashed.failure["message"]
    else:
        assert crashed.status == "CRASHED", crashed
        want = "illegal memory access"
        assert want in crashed.reason or want in crashed.failure["message"], crashed.failure["message"]
    assert '"op": "pre_reorder"' in crashed.failure["params"]
    assert crashed.replay.startswith("moe-harness check") and "--case" in crashed.replay
    assert rows[(name, "ep_preprocess", "int32")].status == "passed"
    assert rows[(name, "post_reorder", "bfloat16")].status == "passed"
    assert time.time() - t0 < 300


def test_native_crash_is_crashed_with_the_case(backend):
    """A child that dies of a signal (here a null dereference in Python) is a CRASHED row with
    the signal, the case in flight and its replay command."""
    (row,) = run_check(_args([f"ep_preprocess={MISBEHAVING}:segfaults"], ["ep_preprocess"], ["int32"],
                             isolate=True), backend)
    assert row.status == "CRASHED", row
    assert "SIGSEGV" in row.reason or "SIGSEGV" in row.failure["message"], (row.reason, row.failure)
    assert '"op": "ep_preprocess"' in row.failure["params"] and "--case" in row.replay


def test_a_crashed_row_counts_the_cases_before_the_one_in_flight(backend):
    """The CRASHED row's counts are of cases, not of builds (a case's probes build it again):
    two cases passed, the third crashed."""
    (row,) = run_check(_args([f"ep_preprocess={MISBEHAVING}:segfaults_in_the_third_case"], ["ep_preprocess"],
                             ["int32"], isolate=True), backend)
    assert row.status == "CRASHED", row
    assert (row.run, row.passed, row.failed) == (3, 2, 1), row


def test_hang_is_cut_off_by_the_timeout(backend):
    t0 = time.time()
    rows = run_check(_args([f"ep_preprocess={MISBEHAVING}:sleeps"], ["ep_preprocess"], ["int32", "int64"],
                           isolate=True, timeout_s=6.0, case_timeout_s=0), backend)
    assert time.time() - t0 < 120
    # --timeout bounds each row (rows run side by side in warm children): both are cut off
    for row in rows:
        assert row.status == "CRASHED" and row.reason.startswith("timeout after 6 s"), row
        assert row.failure["probe"] == "timeout" and '"op": "ep_preprocess"' in row.failure["params"]


def test_python_exception_is_failed_not_crashed(backend):
    rows = run_check(_args([f"ep_preprocess={MISBEHAVING}:overlapping_inplace"], ["ep_preprocess"], ["int32"],
                           isolate=True), backend)
    (row,) = rows
    assert (row.status, row.failure["probe"]) == ("FAILED", "exception"), row
    assert "single memory location" in row.failure["message"]


def test_failing_single_case_in_process_is_reported(backend):
    """--case without isolation: a failure's details are the probe's, and the row still reports it
    (a TypeError once, from reading them as per-output errors)."""
    case = ('{"dtype": "int32", "end_expert": 3, "experts": 4, "hidden": 64, "inter": 32, "invalid_frac": 0.0, '
            '"op": "ep_preprocess", "routing": "uniform", "seed": 0, "start_expert": 0, "tokens": 8, "topk": 2}')
    rows = run_check(_args([f"ep_preprocess={MISBEHAVING}:overlapping_inplace"], ["ep_preprocess"], case=case),
                     backend)
    (row,) = rows
    assert (row.status, row.failure["probe"], row.worst) == ("FAILED", "exception", {}), row


# ----------------------------------------------------------------------------- pytest plugin

def _pytest_outside(tmp_path, backend, *extra):
    """pytest --pyargs tests.test_conformance run from a foreign directory, no root conftest."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTEST_ADDOPTS", None)
    from importlib.metadata import entry_points
    installed = any(ep.value == "harness.pytest_plugin" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "harness.pytest_plugin"]  # installed: pytest loads it by itself
    cmd = [sys.executable, "-m", "pytest", *plugin, "--pyargs", "tests.test_conformance",
           "-rfs", "--cases", "2", "--backend", backend, "-p", "no:cacheprovider", *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_pytest_plugin_checks_external_kernels(tmp_path, backend):
    proc = _pytest_outside(tmp_path, backend, "--moe-impl", f"sglang:{GOOD}", "-k", "pre_reorder and bfloat16 or "
                           "post_reorder and float32", "-v")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "test_conformance[sglang:sglang_style_kernels.py-pre_reorder-bfloat16] PASSED" in proc.stdout
    assert "2 passed" in proc.stdout
    assert f"backend {backend} |" in proc.stdout  # the session header


def test_pytest_plugin_reports_planted_fault_and_not_provided(tmp_path, backend):
    proc = _pytest_outside(tmp_path, backend, "--moe-impl", f"sglang:{BROKEN}", "-k", "reorder and float32")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "probe=unwritten" in proc.stdout and "replay: moe-harness check" in proc.stdout
    assert "not provided" in proc.stdout  # pre_reorder is skipped with the adapter's note


def test_pytest_plugin_rejects_a_bad_option_value_before_any_test(tmp_path, backend):
    proc = _pytest_outside(tmp_path, backend, "--cases", "0")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]    # pytest's usage error
    assert "--cases: expected a number of cases >= 1, got 0" in proc.stderr


def test_pytest_plugin_fails_a_session_that_checked_nothing(tmp_path, backend):
    """A file defining none of SGLang's names: every conformance test is skipped (not provided),
    and the session must not pass."""
    empty = tmp_path / "no_sglang_names.py"
    empty.write_text("# defines none of SGLang's names\n")
    proc = _pytest_outside(tmp_path, backend, "--moe-impl", f"sglang:{empty}")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "nothing was checked" in proc.stdout and " passed" not in proc.stdout


def test_pytest_plugin_isolates_by_default_a_crash_fails_one_test(tmp_path, backend):
    """A native crash of the candidate (SIGSEGV) is that test's CRASHED failure, and the session
    goes on to the next test in a fresh child (isolation is the default; --no-moe-isolate opts out)."""
    proc = _pytest_outside(tmp_path, backend, "--moe-impl", f"ep_preprocess={MISBEHAVING}:segfaults",
                           "--moe-impl", "ours", "-k", "ep_preprocess and int32 and not deepep")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "CRASHED" in proc.stdout and "killed by signal SIGSEGV" in proc.stdout, proc.stdout[-3000:]
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:]     # ours ran after the crash
