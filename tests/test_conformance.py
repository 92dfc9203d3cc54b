"""Conformance suite: every op of every --moe-impl against the references, generated from
harness.specs.SPECS (one test per implementation, op and dtype; ids like
``ours-pre_reorder-bfloat16``). Each test runs harness.fuzz.sweep over --cases fuzzed cases
with every probe and fails with the harness's failure report (op, implementation, dtype,
case, probe, first mismatches, replay command).

Check your own kernels: ``pytest --pyargs tests.test_conformance --moe-impl sglang:kernels.py``.
"""
import pytest

from harness.report import format_failures
from harness.specs import SPECS

pytestmark = pytest.mark.conformance


def test_conformance(moe_target, moe_runner):
    spec = SPECS[moe_target.op]
    reason = spec.skip_reason(moe_runner.backend, moe_target.dtype)
    if reason:
        pytest.skip(reason)
    if not moe_runner.config.getoption("moe_isolate"):
        impl = moe_runner.implementation(moe_target.impl)
        if moe_target.op not in impl.ops:
            pytest.skip(f"not provided: {impl.notes.get(moe_target.op, '')}")
    row = moe_runner.check(moe_target)
    if row.status == "not provided":
        pytest.skip(f"not provided: {row.reason}")
    if row.status == "skipped":
        pytest.skip(row.reason)
    if row.status != "passed":
        pytest.fail(format_failures([row]).strip() or f"{row.status}: {row.reason}", pytrace=False)
    assert row.passed >= 1, "no case ran"
