"""pytest plugin of moe-kernel-harness (entry point ``moe_harness`` in group pytest11).

Options:
  --moe-impl SOURCE   implementation to check; repeatable (default: ours). Same syntax as
                      ``moe-harness check --impl``: ours, reference, sglang:PATH.py,
                      sglang:dotted.module, OP=PATH.py:function, comma-joined combinations.
                      Loading a file runs its code.
  --moe-profile NAME  default | thorough (harness.profiles): fuzzed cases per (implementation, op,
                      dtype) after the three fixed cases, per backend (default: default)
  --cases N           fuzzed cases per (implementation, op, dtype) (default: the profile's)
  --seed N            seed of the case generator (default 0)
  --backend B         cuda | interpreter (default: cuda when a GPU is visible)
  --moe-block-size N  BLOCK_SIZE of sglang: raw-kernel launches (default 512)
  --moe-sglang-wheel PATH  an sglang release wheel for --moe-impl sglang==VERSION without a
                      package index (repeatable)
  --moe-isolate       run the conformance tests in a warm child process (the default; crash
                      isolation: a fault or hang is that test's CRASHED, the next gets a new child)
  --no-moe-isolate    run them in the pytest process
  --moe-timeout S     with isolation: seconds per test before it is CRASHED (default 900)

Check your own kernels, from any directory:
  pytest --pyargs tests.test_conformance --moe-impl sglang:path/to/kernels.py

The backend is selected in pytest_load_initial_conftests / pytest_configure, before any
test module (or conftest) imports triton. ``config.moe_backend`` holds the choice.

A session whose conformance tests were all skipped (every op not provided by --moe-impl, or
not computable on the backend) checked nothing: it exits non-zero with a line saying so
(harness.status), as ``moe-harness check`` does.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("moe-harness", "MoE kernel harness")
    group.addoption("--moe-impl", action="append", dest="moe_impl", default=None, metavar="SOURCE",
                    help="implementation to check (repeatable; default ours): ours, reference, sglang:PATH.py, "
                         "sglang:dotted.module, OP=PATH.py:function or OP=module:function, joined by ',' to "
                         "combine. Loading a file or module runs its code; nothing is loaded from the network.")
    from harness.profiles import DEFAULT_PROFILE, PROFILES
    group.addoption("--moe-profile", dest="moe_profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                    help="how much each conformance test sweeps (harness.profiles): "
                         + "; ".join(f"{n}: {p.cases['interpreter']} fuzzed cases on the interpreter, {p.cases['cuda']} "
                                     f"on a GPU" for n, p in PROFILES.items()) + " (default: default)")
    group.addoption("--cases", type=int, default=None,
                    help="fuzzed cases per (implementation, op, dtype), after the three fixed ones (default: the "
                         "profile's)")
    group.addoption("--seed", type=int, default=0, help="seed of the case generator (default 0)")
    group.addoption("--backend", choices=("cuda", "interpreter"), default=None,
                    help="cuda (default when a GPU is visible) or interpreter (TRITON_INTERPRET=1)")
    group.addoption("--moe-block-size", type=int, default=None,
                    help="BLOCK_SIZE that sglang: raw kernels are launched with (default 512)")
    group.addoption("--moe-sglang-wheel", action="append", dest="moe_sglang_wheel", default=None, metavar="PATH",
                    help="an sglang release wheel (.whl) for --moe-impl sglang==VERSION without a package index "
                         "(repeatable; cached under its version)")
    group.addoption("--moe-isolate", action="store_true", dest="moe_isolate", default=True,
                    help="run the conformance tests in a warm child process (the default): a GPU fault, "
                         "segfault or hang fails that test as CRASHED and the next test gets a fresh child, "
                         "instead of ending the session")
    group.addoption("--no-moe-isolate", action="store_false", dest="moe_isolate",
                    help="run the conformance tests in the pytest process (a crash ends the session)")
    group.addoption("--moe-timeout", type=float, default=900.0,
                    help="with isolation: seconds one conformance test may run (default 900)")


def _select(config) -> str:
    backend = getattr(config, "moe_backend", None)
    if backend is None:
        from harness.backend import select_backend
        backend = select_backend(config.getoption("backend", default=None))
        config.moe_backend = backend
    return backend


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # Earliest point with options parsed, before conftests (which may import triton) load.
    from harness.backend import select_backend
    try:
        early_config.moe_backend = select_backend(getattr(early_config.known_args_namespace, "backend", None))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # When loaded from a conftest's pytest_plugins, the hook above did not run for us.
    if getattr(config, "moe_backend", None) is None:
        try:
            _select(config)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    try:
        config.moe_options = _options(config)
    except ValueError as exc:  # harness.options.OptionError: a bad --cases, --moe-impl, ...
        raise pytest.UsageError(str(exc)) from None
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller sees every worker's reports
        config.pluginmanager.register(ConformanceTally(), "moe-harness-conformance-tally")
    if config.moe_backend == "cuda" and os.environ.get("PYTEST_XDIST_WORKER"):
        from harness.gpus import pin_this_process
        pin_this_process()  # `pytest -n N`: worker gwI runs on GPU I modulo the visible count
    wheels, impls = config.getoption("moe_sglang_wheel"), config.getoption("moe_impl") or []
    if wheels or any("sglang==" in i for i in impls):  # fetch releases once, before tests (and children) load them
        from harness.impls import prepare_sources
        from harness.sglang.release import ReleaseError
        try:
            prepare_sources(impls, wheels)
        except (ValueError, ReleaseError) as exc:
            raise pytest.UsageError(f"--moe-impl / --moe-sglang-wheel: {exc}") from None
    for line in ("gpu: needs a CUDA device", "slow: long-running sweep",
                 "conformance: an implementation against the references (harness.specs.SPECS)"):
        config.addinivalue_line("markers", line)


def _options(config):
    """The conformance tests' CheckOptions, from the session's options (validated here, once)."""
    from harness.options import CheckOptions
    timeout = config.getoption("moe_timeout")
    return CheckOptions(impls=config.getoption("moe_impl") or ["ours"], cases=config.getoption("cases"),
                        profile=config.getoption("moe_profile"),
                        seed=config.getoption("seed"), block_size=config.getoption("moe_block_size"),
                        isolate=config.getoption("moe_isolate"), timeout_s=timeout, case_timeout_s=timeout,
                        quiet=True)


def pytest_report_header(config):
    from harness.backend import describe
    info = describe(_select(config))
    impls = config.getoption("moe_impl") or ["ours"]
    return [" | ".join(f"{k} {v}" for k, v in info.items()),
            f"moe-harness: impl {', '.join(impls)} | cases {config.getoption('cases')} | seed "
            f"{config.getoption('seed')}" + (" | isolated" if config.getoption("moe_isolate") else "")]


# ----------------------------------------------------------------------------- conformance

@dataclass(frozen=True)
class MoeTarget:
    """One conformance test: an implementation source, an op and a dtype."""

    impl: str
    op: str
    dtype: str

    @property
    def id(self) -> str:
        from harness.impls import short_name
        return f"{short_name(self.impl)}-{self.op}-{self.dtype}"


def pytest_generate_tests(metafunc):
    """Parametrize ``moe_target`` over (implementation, op, dtype) from harness.specs.SPECS."""
    if "moe_target" not in metafunc.fixturenames:
        return
    from harness.specs import SPECS
    impls = metafunc.config.getoption("moe_impl") or ["ours"]
    targets = [MoeTarget(i, op, d) for i in impls for op, spec in SPECS.items() for d in spec.dtypes]
    metafunc.parametrize("moe_target", targets, ids=[t.id for t in targets])


@lru_cache(maxsize=None)
def _load(source: str, block_size: Optional[int]):
    from harness.impls import load_implementation
    return load_implementation(source, block_size=block_size)


@dataclass
class MoeRunner:
    """What a conformance test needs: the session's options and a way to check one target."""

    config: object

    @property
    def backend(self) -> str:
        return _select(self.config)

    def options(self):
        """The session's harness.options.CheckOptions (built and validated in pytest_configure)."""
        return self.config.moe_options

    def implementation(self, source: str):
        """The loaded implementation (cached per session); its load error fails the test."""
        return _load(source, self.config.getoption("moe_block_size"))

    def check(self, target: MoeTarget):
        """Check one target; returns harness.report.Row (status passed/FAILED/CRASHED/...)."""
        from harness.row_check import check_one
        options = self.options()
        if options.isolate:
            from harness.isolate import RowWorker, run_group
            # one warm child for the session (imports and compiled kernels kept), replaced after a
            # crash or a failing row; closed at the end of the session (pytest_unconfigure)
            worker = getattr(self.config, "moe_row_worker", None)
            if worker is None:
                worker = self.config.moe_row_worker = RowWorker(self.backend)
            return run_group(options, self.backend, target.impl, target.op, [target.dtype], worker=worker)[0]
        return check_one(options, self.backend, self.implementation(target.impl), target.impl, target.op,
                         target.dtype)


class ConformanceTally:
    """Counts the session's conformance tests that compared something (passed or failed) and
    those skipped; a session with conformance tests and none of the first kind fails."""

    def __init__(self):
        self.checked = 0
        self.skipped = 0

    def pytest_runtest_logreport(self, report):
        if "conformance" not in report.keywords:
            return
        if report.skipped:
            self.skipped += 1
        elif report.when == "call":
            self.checked += 1

    @property
    def nothing_checked(self) -> bool:
        return self.skipped > 0 and self.checked == 0

    def pytest_sessionfinish(self, session, exitstatus):
        if self.nothing_checked and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.nothing_checked:
            from harness.status import NOTHING_CHECKED
            terminalreporter.write_line(f"moe-harness: {NOTHING_CHECKED} (all {self.skipped} conformance tests were "
                                        f"skipped)", red=True, bold=True)


@pytest.fixture(scope="session")
def moe_runner(request) -> MoeRunner:
    return MoeRunner(request.config)


@pytest.fixture(scope="session")
def moe_backend(request) -> str:
    return _select(request.config)


# Fallbacks for the repository's own tests when they run from an installed package
# (pytest --pyargs tests): the root conftest.py defines the same fixtures and wins there.

@pytest.fixture
def device(request) -> str:
    return "cuda" if _select(request.config) == "cuda" else "cpu"


@pytest.fixture
def seed(request) -> int:
    base = request.config.getoption("seed", default=0) or 0
    return (zlib.crc32(request.node.nodeid.encode()) ^ base) & 0x7FFFFFFF


@pytest.fixture
def gen(seed, device):
    import torch
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def pytest_unconfigure(config):
    worker = getattr(config, "moe_row_worker", None)
    if worker is not None:
        worker.close()
