"""The status vocabulary (harness.status) and its exit rule: a run fails when a row is FAILED
or CRASHED, and when nothing was checked at all (every row skipped or not provided), which
used to exit 0: a kernel file defining none of SGLang's names, under ``moe-harness check``
and under pytest; a mutate run whose every mutant was skipped."""
import pytest

from harness import status
from harness.status import CRASHED, FAILED, NOT_PROVIDED, PASSED, SKIPPED


def test_every_status_has_a_meaning_an_outcome_and_a_side():
    assert set(status.MEANINGS) == set(status.ROW_STATUSES) == set(status.PYTEST_OUTCOME)
    assert all(m and "\n" not in m for m in status.MEANINGS.values())
    assert status.CHECKED | status.NOT_CHECKED == set(status.ROW_STATUSES)
    assert status.FAILING == {FAILED, CRASHED} and status.FAILING <= status.CHECKED
    assert {status.PYTEST_OUTCOME[s] for s in status.FAILING} == {"failed"}
    assert {status.PYTEST_OUTCOME[s] for s in status.NOT_CHECKED} == {"skipped"}
    assert set(status.VERDICT_MEANINGS) == set(status.VERDICTS) and status.VERDICTS_OK == {status.KILLED, SKIPPED}
    # case records keep their lower-case spelling (the JSON format of a row's failure)
    assert (status.CASE_PASSED, status.CASE_FAILED, status.CASE_CRASHED) == ("passed", "failed", "crashed")


@pytest.mark.parametrize("statuses,code", [
    ([PASSED, SKIPPED, NOT_PROVIDED], 0),
    ([PASSED, FAILED], 1),
    ([SKIPPED, CRASHED], 1),
    ([NOT_PROVIDED, SKIPPED], 1),     # nothing was checked
    ([], 1),                          # nothing was even selected
])
def test_exit_code(statuses, code):
    assert status.exit_code(statuses) == code
    assert status.nothing_checked(statuses) == (not any(s in status.CHECKED for s in statuses))


def test_check_exits_non_zero_when_nothing_was_checked(tmp_path, capsys):
    from harness.cli import main
    empty = tmp_path / "no_sglang_names.py"
    empty.write_text("# defines none of SGLang's names\n")
    rc = main(["--backend", "interpreter", "check", "--impl", f"sglang:{empty}", "--no-isolate", "--cases", "1",
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1, captured.out
    assert "not provided" in captured.out and "passed" not in captured.out
    assert "nothing was checked" in captured.err


def test_mutate_exits_non_zero_when_every_mutant_was_skipped(capsys, request):
    if getattr(request.config, "moe_backend", "interpreter") != "interpreter":
        pytest.skip("needs a mutant this backend cannot run (the interpreter cannot run GPU-only ones)")
    from harness.cli import main
    from harness.mutants import CATALOGUE
    gpu_only = next(m.name for m in CATALOGUE if "interpreter" not in m.backends)
    rc = main(["--backend", "interpreter", "mutate", "--mutant", gpu_only, "--cases", "1", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped" in captured.out, captured.out
    assert "nothing was checked" in captured.err
