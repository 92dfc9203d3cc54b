"""Profiles (harness.profiles), --budget, the repeat probes' limit, the periodic progress line
and the warm child processes of ``moe-harness check`` (issue 24)."""
import re
import time

import pytest

from harness import cli
from harness.check import LiveProgress, run_check
from harness.fuzz import sweep
from harness.options import CheckOptions, MutateOptions, OptionError
from harness.profiles import PROFILES
from harness.report import Row
from harness.runner import Candidate
from harness.specs import SPECS
from reference import preprocess as reference
from tests.helpers import memoised_on_shapes


@pytest.fixture
def backend(request):
    return getattr(request.config, "moe_backend", None) or "interpreter"


def test_cases_come_from_the_profile_per_backend_and_cases_overrides():
    for name, prof in PROFILES.items():
        for backend in ("cuda", "interpreter"):
            assert CheckOptions(profile=name).cases_for(backend) == prof.cases[backend]
            assert MutateOptions(profile=name).cases_for(backend) == prof.cases[backend]
            assert CheckOptions(profile=name, cases=7).cases_for(backend) == 7
    assert PROFILES["thorough"].cases["cuda"] == 2000
    assert CheckOptions().repeat_probe_cases("cuda") == 10  # a row's first cases on a GPU too
    assert CheckOptions(profile="thorough").repeat_probe_cases("cuda") is None  # every case


@pytest.mark.parametrize("kw, option", [(dict(profile="quick"), "--profile"), (dict(budget_s=0), "--budget"),
                                        (dict(budget_s=-5.0), "--budget")])
def test_bad_profile_or_budget_is_an_option_error(kw, option):
    with pytest.raises(OptionError, match=f"^{option}: "):
        CheckOptions(**kw)


def test_pytest_and_command_line_take_the_profile(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--profile", "quick"])
    assert exc.value.code == 2 and "--profile" in capsys.readouterr().err


def _counting(fn):
    calls = []

    def counted(*args):
        calls.append(1)
        return fn(*args)
    return Candidate(counted), calls


def test_repeat_probes_only_on_the_first_cases(device):
    """With repeat_probe_cases=2 the first two cases call the candidate three times (decoy, two
    runs), every later case once."""
    cand, calls = _counting(reference.ep_preprocess)
    out = sweep(SPECS["ep_preprocess"], cand, "counted", "int32", "interpreter", device, 4, seed=0,
                database_dir=None, repeat_probe_cases=2)
    assert out.failure is None and out.passed == 7  # 3 fixed + 4 fuzzed
    assert len(calls) == 2 * 3 + 5 * 1


def test_a_cached_result_is_still_caught_with_the_default_profile(device):
    """The decoy call runs on the first cases, so memoisation on shapes fails on a fixed case."""
    out = sweep(SPECS["ep_preprocess"], Candidate(memoised_on_shapes(reference.ep_preprocess)), "cached", "int32", "interpreter", device, 6, seed=0,
                database_dir=None, shrink=False,
                repeat_probe_cases=CheckOptions().repeat_probe_cases("interpreter"))
    assert out.failure is not None and "cached from an earlier call?" in out.failure.message


def test_a_spent_budget_still_runs_the_fixed_cases_and_says_so(device):
    out = sweep(SPECS["ep_preprocess"], Candidate(reference.ep_preprocess), "ref", "int32", "interpreter", device,
                50, seed=0, database_dir=None, deadline=time.time() - 1)
    assert out.budget_spent and out.failure is None and out.passed == 3


def test_a_budget_starts_no_case_that_would_end_past_it(device, monkeypatch):
    """A case starts only if it should end by the deadline at the pace of the cases so far (on a
    fake clock that each candidate call moves by 10 s): with the fixed cases ending at 30 and the
    deadline at 55, cases start at 30 and 40 and none at 50 (before, one did and ended at 60)."""
    import types
    import harness.fuzz as fuzz
    clock = {"now": 0.0}
    monkeypatch.setattr(fuzz, "time", types.SimpleNamespace(time=lambda: clock["now"]))

    def ten_seconds(*args):
        clock["now"] += 10.0
        return reference.ep_preprocess(*args)

    out = sweep(SPECS["ep_preprocess"], Candidate(ten_seconds), "slow", "int32", "interpreter", device, 50, seed=0,
                database_dir=None, repeat_probe_cases=0, deadline=55.0)
    assert out.budget_spent and out.failure is None
    assert (out.passed, clock["now"]) == (5, 50.0)


def test_budget_rows_say_how_many_cases_they_got(backend):
    options = CheckOptions(impls=["reference"], ops=["ep_preprocess", "deepep_preprocess"], budget_s=6.0,
                           isolate=False, quiet=True)
    t0 = time.time()
    rows = run_check(options, backend)
    assert time.time() - t0 < 60
    assert len(rows) == 4
    for row in rows:
        assert row.status == "passed" and row.run >= 3, row
        assert re.search(rf"budget: {row.run} case\(s\)", row.reason), row.reason


def test_periodic_line_names_the_rows_in_flight_and_their_cases(capsys):
    with LiveProgress(True, total_rows=3, every_s=0.05) as live:
        live.case("grouped_gemm", "ours", "bfloat16", 4)
        time.sleep(0.3)
        live.finished([Row("grouped_gemm", "ours", "bfloat16", status="passed", run=9, seconds=1.0)])
    err = capsys.readouterr().err
    assert "0/3 rows done; running: grouped_gemm [ours, bfloat16] 4 case(s)" in err
    assert "grouped_gemm [ours, bfloat16]: passed, 9 case(s) in 1.0 s" in err


def test_isolated_rows_share_warm_children_and_keep_their_order(backend):
    """Four rows in one warm child (--jobs 1): the child starts once and rows come back in order."""
    from harness import isolate
    started = []
    real = isolate.RowWorker.take

    def take(self):
        if self.child is None or not self.child.alive:
            started.append(1)
        return real(self)
    options = CheckOptions(impls=["reference"], ops=["ep_preprocess", "deepep_preprocess"], cases=1, jobs=1,
                           quiet=True)
    try:
        isolate.RowWorker.take = take
        rows = run_check(options, backend)
    finally:
        isolate.RowWorker.take = real
    assert [(r.op, r.dtype) for r in rows] == [("ep_preprocess", "int32"), ("ep_preprocess", "int64"),
                                               ("deepep_preprocess", "int32"), ("deepep_preprocess", "int64")]
    assert all(r.status == "passed" for r in rows) and len(started) == 1


def test_palette_applies_to_the_profiles_own_count_only():
    """The default's palette of sizes on a GPU; --cases, --budget and the thorough profile draw
    sizes per case (a 2,000-case sweep must not run on a handful of sizes)."""
    assert CheckOptions().shapes("cuda") == PROFILES["default"].shapes["cuda"] is not None
    assert CheckOptions().shapes("interpreter") is None
    assert CheckOptions(cases=2000).shapes("cuda") is None
    assert CheckOptions(budget_s=30).shapes("cuda") is None
    assert CheckOptions(profile="thorough").shapes("cuda") is None


def test_palette_is_seeded_and_a_sweep_takes_its_sizes_from_it(backend):
    """A palette is the same for the same seed and differs for another; every fuzzed case of a
    sweep with one has its sizes from it (the fixed cases run as ever), and its other draws
    (routing, the rank's experts, values' seed) still vary."""
    from harness.fuzz import shape_palette
    spec = SPECS["ep_preprocess"]
    palette = shape_palette(spec, backend, 2, seed=5)
    assert palette == shape_palette(spec, backend, 2, seed=5) != shape_palette(spec, backend, 2, seed=6)
    assert len(palette) == 2
    seen = []

    def recording(topk_ids, num_experts):
        seen.append((num_experts, *topk_ids.shape))
        return reference.ep_preprocess(topk_ids, num_experts)

    out = sweep(spec, Candidate(recording), "recording", "int32", backend, "cpu", 12, seed=5, database_dir=None,
                shapes=2, repeat_probe_cases=0)
    assert out.failure is None and out.passed == 15
    assert len(seen) == 15           # one call a case: no repeat probes
    fuzzed = set(seen[3:])           # after the three fixed cases
    allowed = {(E, T, K) for E, K, T, _, _ in palette}
    assert fuzzed and fuzzed <= allowed


def test_costly_palette_rows_run_in_parts_that_add_up_to_the_row():
    """A palette row of a record whose case_cost passes PART_COST runs in parts: their cases and
    sizes add up to the row's, seeds differ, only the first runs the fixed cases; rows without a
    palette (the interpreter, --cases) or of cheap records stay whole, with the row's seed."""
    import dataclasses
    from harness.fuzz import PART_COST, sweep_parts
    costly = dataclasses.replace(SPECS["ep_preprocess"], case_cost=2.5 * PART_COST)
    parts = sweep_parts(costly, 25, 4, 8)
    assert len(parts) == 3
    assert sum(p.cases for p in parts) == 25 and sum(p.shapes for p in parts) == 8
    assert [p.fixed_cases for p in parts] == [True, False, False]
    assert len({p.seed for p in parts}) == 3
    for whole in (sweep_parts(costly, 25, 4, None), sweep_parts(dataclasses.replace(costly, case_cost=1.0), 25, 4, 8)):
        assert len(whole) == 1 and whole[0].cases == 25 and whole[0].seed == 4 and whole[0].fixed_cases
    assert len(sweep_parts(costly, 2, 4, 8)) == 2     # never more parts than cases or sizes


def test_a_row_in_parts_sweeps_what_its_parts_sweep_apart(backend):
    """sweep_row with every part in turn (what mutate and an in-process check run) gives the sum
    of the parts that a check's children run apart: the same cases, the fixed ones once."""
    import dataclasses
    from harness.fuzz import PART_COST, sweep_parts, sweep_row
    spec = dataclasses.replace(SPECS["ep_preprocess"], case_cost=2 * PART_COST)
    cand = Candidate(reference.ep_preprocess)

    def run(part):
        return sweep_row(spec, cand, "reference", "int32", backend, "cpu", 8, 3, shapes=4, part=part,
                         database_dir=None, repeat_probe_cases=0)
    whole = run(None)
    apart = [run(i) for i in range(len(sweep_parts(spec, 8, 3, 4)))]
    assert len(apart) == 2 and whole.failure is None
    assert whole.passed == sum(p.passed for p in apart) == 8 + 3


def test_progress_counts_a_row_in_pieces_once(capsys):
    """A row run as chunks or parts counts as done when its last piece is in; each piece's line
    says which it is (a sweep in chunks printed "120/89 rows done")."""
    with LiveProgress(True, total_rows=1, every_s=0) as live:
        live.expect_pieces("ep_moe_forward", "ours", "bfloat16", 2)
        # two pieces in flight at once: the row's cases so far are the sum of theirs
        live.case("ep_moe_forward", "ours", "bfloat16", 5, piece=0)
        live.case("ep_moe_forward", "ours", "bfloat16", 3, piece=1)
        live.case("ep_moe_forward", "ours", "bfloat16", 6, piece=0)
        assert "ep_moe_forward [ours, bfloat16] 9 case(s)" in live.periodic_line() and live.cases == 9
        live.finished([Row("ep_moe_forward", "ours", "bfloat16", status="passed", run=13, seconds=1.0)])
        assert live.rows_done == 0
        assert "ep_moe_forward [ours, bfloat16] 9 case(s)" in live.periodic_line()
        live.finished([Row("ep_moe_forward", "ours", "bfloat16", status="passed", run=12, seconds=1.0)])
        assert live.rows_done == 1
        assert live.periodic_line().endswith("1/1 rows done")
    err = capsys.readouterr().err
    assert "ep_moe_forward [ours, bfloat16] part 1/2: passed, 13 case(s)" in err
    assert "ep_moe_forward [ours, bfloat16] part 2/2: passed, 12 case(s)" in err


def test_a_row_in_parts_shares_out_its_repeat_probed_cases(backend):
    """The row's repeat-probed cases are shared out over its parts, not given to each: the
    candidate's extra calls grow with the row's count (twice the count, twice the calls)."""
    import dataclasses
    from harness.fuzz import PART_COST, sweep_row
    spec = dataclasses.replace(SPECS["ep_preprocess"], case_cost=3 * PART_COST)
    calls = []

    def counting(topk_ids, num_experts):
        calls.append(1)
        return reference.ep_preprocess(topk_ids, num_experts)

    def extra_calls(repeat):
        calls.clear()
        out = sweep_row(spec, Candidate(counting), "counting", "int32", backend, "cpu", 8, 3, shapes=4,
                        database_dir=None, repeat_probe_cases=repeat)
        assert out.failure is None and out.passed == 8 + 3
        return len(calls) - 11
    assert extra_calls(0) == 0
    per = extra_calls(4)
    assert per > 0 and extra_calls(8) == 2 * per


def test_a_palette_size_comes_with_its_index_dtype():
    """With a palette, each size is drawn with one index dtype (int32 and int64 alternate over
    the palette's entries), so a size compiles one specialisation of each index-taking kernel
    on a GPU, not two; both dtypes still appear in the row."""
    from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings
    from harness.fuzz import case_params, shape_palette
    spec = SPECS["pre_reorder"]
    palette = shape_palette(spec, "cuda", 4, seed=3)
    seen = {}

    @hyp_seed(3)
    @settings(max_examples=60, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case_params(spec, "bfloat16", "cuda", None, palette))
    def draw(p):
        seen.setdefault((p.experts, p.topk, p.tokens, p.hidden), set()).add(p.index_dtype)
    draw()
    assert all(len(dtypes) == 1 for dtypes in seen.values()), seen
    assert set().union(*seen.values()) == {"int32", "int64"}
