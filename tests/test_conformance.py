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
from harness.status import NOT_PROVIDED, PYTEST_OUTCOME

pytestmark = pytest.mark.conformance


def test_conformance(moe_target, moe_runner):
    spec = SPECS[moe_target.op]
    reason = spec.skip_reason(moe_runner.backend, moe_target.dtype)
    if reason:
        pytest.skip(reason)
    if not moe_runner.config.getoption("moe_isolate"):
        impl = moe_runner.implementation(moe_target.impl)
        if moe_target.op not in impl.ops:
            pytest.skip(f"{NOT_PROVIDED}: {impl.notes.get(moe_target.op, '')}")
    row = moe_runner.check(moe_target)
    outcome = PYTEST_OUTCOME[row.status]
    if outcome == "skipped":
        pytest.skip(f"{NOT_PROVIDED}: {row.reason}" if row.status == NOT_PROVIDED else row.reason)
    if outcome == "failed":
        pytest.fail(format_failures([row]).strip() or f"{row.status}: {row.reason}", pytrace=False)
    assert row.passed >= 1, "no case ran"
