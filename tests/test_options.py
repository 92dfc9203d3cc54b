"""Command options (harness.options): each command's options are one frozen object, validated
when it is made; a value that cannot run is an OptionError naming the option, which the CLI
reports in one line with exit status 2 (no traceback). Values that used to pass silently are
errors here: a dtype no chosen op has (a typo selected nothing and exited 0), zero or negative
case counts."""
import dataclasses
import re

import pytest

from harness.cli import main
from harness.options import BenchOptions, CheckOptions, MutateOptions, OptionError, WorldConfig


@pytest.mark.parametrize("fields,option,needle", [
    (dict(cases=0), "--cases", "expected a number of cases >= 1, got 0"),
    (dict(cases=-3), "--cases", "expected a number of cases >= 1, got -3"),
    (dict(dtypes=["bf16"]), "--dtype", "got 'bf16'"),
    (dict(ops=["pre_reorder"], dtypes=["int32"]), "--dtype", "got 'int32'"),   # a dtype of another op only
    (dict(ops=["no_such_op"]), "--op", "got 'no_such_op'"),
    (dict(impls=["mine"]), "--impl", "'mine'"),
    (dict(jobs=0), "--jobs", ">= 1, got 0"),
    (dict(chunk=-1), "--chunk", ">= 0 (0: no chunks), got -1"),
    (dict(chunk=5, isolate=False), "--chunk", "needs --isolate"),
    (dict(gpus="two"), "--gpus", "got 'two'"),
    (dict(timeout_s=-1.0), "--timeout", "got -1.0"),
    (dict(block_size=0), "--block-size", "got 0"),
    (dict(case="{not json"), "--case", "expected the JSON of a case"),
])
def test_check_options_reject_values_that_cannot_run(fields, option, needle):
    with pytest.raises(OptionError, match=re.escape(needle)) as info:
        CheckOptions(**fields)
    assert info.value.option == option and str(info.value).startswith(f"{option}: ")


def test_check_options_accept_a_dtype_of_some_chosen_op_and_select_per_op():
    options = CheckOptions(ops=["ep_preprocess", "pre_reorder"], dtypes=["int32", "bfloat16"])
    assert options.dtypes_of("ep_preprocess") == ("int32",) and options.dtypes_of("pre_reorder") == ("bfloat16",)
    assert options.selected_ops() == ("ep_preprocess", "pre_reorder")


@pytest.mark.parametrize("make,option", [
    (lambda: BenchOptions(dtypes=["bf16"]), "--dtype"),
    (lambda: BenchOptions(tokens=[0]), "--tokens"),
    (lambda: BenchOptions(preset="gpt-5"), "--preset"),
    (lambda: BenchOptions(rep_ms=-1.0), "--rep-ms"),
    (lambda: MutateOptions(cases=0), "--cases"),
    (lambda: MutateOptions(mutants=["no_such_mutant"]), "--mutant"),
    (lambda: MutateOptions(jobs=0), "--jobs"),
    (lambda: WorldConfig(ranks=0, backend="interpreter"), "--ranks"),
    (lambda: WorldConfig(ranks=2, backend="interpreter", tokens=()), "--tokens"),
    (lambda: WorldConfig(ranks=2, backend="interpreter", scenarios=("sideways",)), "--scenario"),
])
def test_other_commands_options_reject_values_that_cannot_run(make, option):
    with pytest.raises(OptionError) as info:
        make()
    assert info.value.option == option


def test_options_are_frozen_and_cross_to_a_child_as_a_json_safe_dict():
    import json
    options = CheckOptions(ops=["ep_preprocess"], impls=["reference"], dtypes=["int64"], cases=4, seed=9, chunk=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.cases = 5
    record = json.loads(json.dumps(options.to_dict()))      # what a spawned child receives
    assert CheckOptions.from_dict(record) == options
    with pytest.raises(TypeError, match="unknown option"):
        CheckOptions.from_dict({**record, "no_shrink": True})


@pytest.mark.parametrize("argv,needle", [
    (["check", "--dtype", "bf16"], "moe-harness check: error: --dtype: "),
    (["check", "--cases", "0"], "moe-harness check: error: --cases: expected a number of cases >= 1, got 0"),
    (["check", "--cases", "-2"], "moe-harness check: error: --cases: "),
    (["check", "--jobs", "0"], "moe-harness check: error: --jobs: "),
    (["check", "--chunk", "-1"], "moe-harness check: error: --chunk: "),
    (["bench", "--dtype", "bf16"], "moe-harness bench: error: --dtype: "),
    (["mutate", "--cases", "0"], "moe-harness mutate: error: --cases: "),
])
def test_cli_reports_a_bad_option_value_in_one_line_with_exit_status_2(argv, needle, capsys):
    assert main(["--backend", "interpreter", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == captured.err.strip().splitlines()[0]      # one line, no traceback
    assert captured.err.startswith(needle), captured.err
    assert captured.out == ""                                                  # nothing ran
