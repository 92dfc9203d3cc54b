"""The child supervisor (harness.supervise) that check's isolation and mutate's workers share:
each limit (start-up, total budget, no progress) kills the child and says which limit it
was; a message comes back over the pipe; a crash record, a signal or an exit status becomes
the reason of a Death, with the child's stderr. The children are tests/fixtures/supervised_children.py."""
import time

import pytest

from harness import supervise
from harness.supervise import (BUDGET_TIMEOUT, CRASH_EXIT, EXITED, MESSAGE, STALL_TIMEOUT, STARTUP_TIMEOUT, Child,
                               is_device_fault)
from tests.fixtures import supervised_children as kids


@pytest.fixture
def spawn():
    children = []

    def make(target, *args, pipe=False):
        child = Child(target, args, name="test-child", prefix="moe-test-supervise-", pipe=pipe, daemon=True)
        children.append(child)
        return child
    yield make
    for child in children:
        child.close()


@pytest.mark.parametrize("target,limits,kind,reason", [
    (kids.never_starts, dict(startup_s=1.0), STARTUP_TIMEOUT, "timeout after 1 s (the child did not start)"),
    (kids.stalls_in_a_case, dict(startup_s=60.0, stall_s=1.0), STALL_TIMEOUT,
     "timeout after 1 s (one case made no progress)"),
    (kids.keeps_going, dict(startup_s=60.0, stall_s=30.0, budget_s=1.0, budget_reason="timeout after 1 s (the group)"),
     BUDGET_TIMEOUT, "timeout after 1 s (the group)"),
])
def test_each_limit_kills_the_child_and_names_itself(spawn, target, limits, kind, reason):
    child = spawn(target)
    t0 = time.monotonic()
    waited = child.wait(**limits)
    assert (waited.kind, waited.reason) == (kind, reason)
    assert not child.alive and time.monotonic() - t0 < 60
    death = child.death(waited)
    assert death.reason == reason and death.crash is None
    if kind == STALL_TIMEOUT:
        assert death.progress["params"] == '{"case": 1}'      # the case in flight
    if kind == BUDGET_TIMEOUT:
        assert 1.0 <= waited.seconds < 30


def test_messages_come_back_over_the_pipe_and_close_ends_the_child(spawn):
    child = spawn(kids.answers, pipe=True)
    first = child.wait(startup_s=60.0)
    assert (first.kind, first.message) == (MESSAGE, "ready") and child.started
    child.send(21)
    assert child.wait(stall_s=30.0).message == 42
    child.close()
    assert not child.alive


def test_a_child_has_the_parents_environment_of_its_start_not_the_servers(spawn, monkeypatch):
    """Children fork from a server started once (harness.supervise.START_METHOD); a variable the
    parent sets after the server started (TRITON_INTERPRET when the backend is chosen, a test's
    monkeypatch) still reaches the next child."""
    supervise.start_child_server()
    monkeypatch.setenv("MOE_TEST_SET_LATE", "after the server started")
    child = spawn(kids.reports_environment, "MOE_TEST_SET_LATE", pipe=True)
    value, torch_preloaded = child.wait(startup_s=120.0).message
    assert value == "after the server started"
    assert torch_preloaded == (supervise.START_METHOD == "forkserver")   # forked after the server's import


def test_the_command_name_is_found_after_top_level_options():
    from harness.cli import command_name
    assert command_name(["check", "--op", "x"]) == "check"
    assert command_name(["--backend", "interpreter", "mutate"]) == "mutate"
    assert command_name(["--help"]) is None and command_name([]) is None


def test_a_crash_record_is_the_reason_and_marks_a_harness_error(spawn):
    child = spawn(kids.crashes_in_the_harness)
    waited = child.wait(startup_s=60.0)
    assert waited.kind == EXITED and child.exitcode == CRASH_EXIT
    death = child.death(waited)
    assert death.reason == "harness error: RuntimeError: boom" and death.harness_error
    assert death.crash["traceback"] == "Traceback: boom" and death.progress["n"] == 2


def test_a_signal_is_named(spawn):
    child = spawn(kids.segfaults)
    death = child.death(child.wait(startup_s=60.0))
    assert death.reason.startswith("killed by signal SIGSEGV") and not death.harness_error


def test_an_exit_status_and_the_stderr_tail_are_reported(spawn):
    child = spawn(kids.prints_then_exits)
    death = child.death(child.wait(startup_s=120.0))
    assert death.reason == "child process exited with status 3 before finishing"
    assert "the last words of the child" in death.stderr
    assert death.report("while loading").startswith("child process exited with status 3 before finishing "
                                                    "(while loading)\n  child stderr (last lines):")


def test_stderr_summary_keeps_faulthandlers_frames_down_to_the_harness():
    stderr = "\n".join(["noise"] * 20 + ["Fatal Python error: Segmentation fault", "", "Current thread:",
                                         '  File "/x/triton/interp.py", line 3 in store',
                                         '  File "/x/harness/runner.py", line 9 in _call', '  File "/x/y.py"'])
    assert supervise.summarise_stderr(stderr) == [
        "Fatal Python error: Segmentation fault", "Current thread:", '  File "/x/triton/interp.py", line 3 in store',
        '  File "/x/harness/runner.py", line 9 in _call']
    assert supervise.summarise_stderr("a\nb\n") == ["a", "b"]


def test_device_fault_classification():
    assert is_device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_fault(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_device_fault(RuntimeError("unsupported operation: more than one element of the written-to "
                                            "tensor refers to a single memory location"))


def test_the_progress_count_is_of_cases_not_of_builds(tmp_path):
    """A case's probes build it (or cases near it) again: the recorded parameters follow every
    build, the count only finished cases (on a GPU the graph probe's rebuilds made a 2-case row
    show "9 case(s)" in flight)."""
    from harness.cases import CaseParams
    progress = supervise.Progress(str(tmp_path))
    build = supervise.recording(lambda params, device: params.tokens, progress)
    first = CaseParams(op="ep_preprocess", dtype="int32", tokens=3, topk=2, experts=4, seed=1)
    near = CaseParams(op="ep_preprocess", dtype="int32", tokens=3, topk=2, experts=4, seed=2)
    for params in (first, near, first):
        build(params, "cpu")
    assert progress.state["n"] == 0 and progress.state["params"] == first.to_json()
    supervise.count_case(progress)
    assert progress.state["n"] == 1
