"""The mutant catalogue (harness/mutants.py) and ``moe-harness mutate`` (harness/mutate.py).

Contracts checked: every mutant's patch applies to optimized/ as it stands (a stale patch
fails CI) and the mutated module imports; every mutant names an op, dtypes of that op and
a one-line description; the catalogue covers every op and the bug classes the issue lists;
every mutant the backend can compute at fuzz sizes is KILLED within a few cases, by a probe
rather than by an exception, and the unpatched kernels pass every case the mutants ran (no
false alarm on the same seeds); a stale patch is an error, an equivalent mutant SURVIVES
and fails the command, a mutant that crashes the process is KILLED by "crash" once the
unpatched kernels pass that case in a fresh child (INCONCLUSIVE when they do not); the
harness gap fixes hold (a result cached from an earlier call is caught on the first case,
every sweep checks the empty batch).
"""
import json
import re

import pytest
import torch

import reference
from harness import mutate
from harness.backend import BACKENDS
from harness.cases import CaseParams
from harness.fuzz import PRESETS, narrow_rank_case, sweep
from harness.mutants import CATALOGUE, MUTANTS, Mutant, StalePatch, implementation, module_path, patched_source
from harness.options import CheckOptions
from harness.runner import Candidate, run_case
from harness.specs import SPECS
from tests.helpers import memoised_on_shapes

# Cases per mutant and dtype in CI: the default profile's (harness.profiles), so that this table
# is the README's claim that the default check kills every mutant, at another seed than the
# command's 0; killed mutants stop at their first failure.
COMPUTABLE = [m.name for m in CATALOGUE if m.min_preset is None]


@pytest.fixture(scope="module")
def backend(request):
    return getattr(request.config, "moe_backend", None) or "interpreter"


@pytest.fixture(scope="module")
def base_seed(request):
    return request.config.getoption("--seed", default=0) or 0


# ----------------------------------------------------------------------------- the catalogue

@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_applies_and_imports(name):
    m = MUTANTS[name]
    if m.wrap is None:
        with open(module_path(m.module)) as fh:
            original = fh.read()
        assert patched_source(m) != original  # raises StalePatch when a patch no longer applies
    impl = implementation(m)
    assert callable(impl.ops[m.op]) and impl.name == f"mutant:{name}"


def test_catalogue_records_are_well_formed():
    for m in CATALOGUE:
        assert m.op in SPECS, m.name
        assert m.dtypes is None or set(m.dtypes) <= set(SPECS[m.op].dtypes), m.name
        assert m.backends and set(m.backends) <= set(BACKENDS), m.name
        assert m.min_preset is None or m.min_preset in PRESETS, m.name
        assert m.description and "\n" not in m.description, m.name
        assert (m.wrap is None) == bool(m.old), f"{m.name}: a mutant is a source patch or a wrapper"


def test_catalogue_covers_every_op_and_the_issue_bug_classes():
    assert {m.op for m in CATALOGUE} == set(SPECS)
    wanted = {  # bug class of the issue -> a mutant of it
        "zeros made empty": "ep_empty_seg_uninitialised", "in-place update through a view": "ep_scan_in_place_over_hist",
        "off-by-one in segment bounds": "ep_bucket_off_by_one", "off-by-one in the search": "gemm_group_search_off_by_one",
        "missing tail mask": "pre_reorder_tail_mask_dropped", "no local expert unwritten":
        "post_reorder_no_local_unwritten", "expert offset dropped": "pre_reorder_expert_offset_dropped",
        "range end exclusive": "silu_end_exclusive", "scale not reciprocal": "silu_scale_not_reciprocal",
        "gate/up swapped": "silu_gate_up_swapped", "GELU without tanh": "gelu_erf_form",
        "wrong weight": "gemm_weight_index_ignored", "empty group": "gemm_empty_groups_skipped",
        "seg start ignored": "gemm_seg_start_ignored", "race": "gemm_rows_not_clamped_to_group",
        "int32 overflow": "pre_reorder_int32_row_offset", "input-dtype accumulation": "gemm_partial_sums_in_c_dtype",
        "-1 as expert 0": "deepep_minus_one_as_expert0", "-1 sorted last": "deepep_minus_one_sorted_last",
        "cached result": "ep_routing_cached_by_shape",
    }
    assert not [k for k, name in wanted.items() if name not in MUTANTS]
    assert MUTANTS["pre_reorder_int32_row_offset"].min_preset == "large"  # 2**31 elements: GPU only


def test_stale_patch_is_an_error_never_skipped(backend):
    m = MUTANTS["ep_bucket_off_by_one"]
    gone = Mutant("test_gone", m.op, m.module, "text that optimized/ does not contain", "x", "stale on purpose")
    twice = Mutant("test_twice", "pre_reorder", "optimized.reorder", "tl.program_id(0).to(tl.int64) * ROWS", "x", "ambiguous")
    for bad in (gone, twice):
        with pytest.raises(StalePatch):
            patched_source(bad)
    res = mutate.run_mutant(gone, backend, cases=2, seed=0)
    assert res.verdict == "STALE" and "0 times" in res.reason
    assert mutate.failed([res])


# ----------------------------------------------------------------------------- the kill table

def test_computable_mutants_are_killed_and_the_originals_pass_their_cases(backend, base_seed, device):
    """Every mutant this backend can compute at fuzz sizes is KILLED (two child processes at a
    time), and ours passes each case some mutant ran: no false alarm on the same seeds. One
    test, so that pytest-xdist does not run the catalogue once per worker."""
    from harness.impls import load_implementation
    names = [n for n in COMPUTABLE if backend in MUTANTS[n].backends]
    default = CheckOptions()
    table = mutate.run_mutants(names, backend, default.cases_for(backend), base_seed, shrink=False, jobs=2,
                               repeat_probe_cases=default.repeat_probe_cases(backend))
    # A kill by exception could be a mutant that no longer compiles, not the harness at work;
    # an out-of-bounds access reported by the patched interpreter (harness/interpreter.py) is.
    not_killed = [(r.name, r.verdict, r.probe, r.reason or r.message[:200], r.cases_run) for r in table
                  if r.verdict != "KILLED" or (r.probe == "exception" and
                                               not r.message.startswith("InterpreterOutOfBounds: out-of-bounds"))]
    assert not not_killed, "\n" + mutate.format_table([r for r in table if r.name in {n[0] for n in not_killed}])
    assert all(r.control == "passed" for r in table if r.verdict == "KILLED")

    ours = load_implementation("ours")
    cases = {}
    for r in table:
        for params in r.passed_cases + ([r.case] if r.case else []):
            cases[params] = CaseParams.from_json(params)
    assert len(cases) >= len(SPECS)
    false_alarms = []
    for params in cases.values():
        res = run_case(SPECS[params.op], ours.candidate(params.op), params, device, "ours")
        if not res.ok:
            false_alarms.append((params.short(), res.probe, res.message[:200]))
    assert not false_alarms


# ----------------------------------------------------------------------------- other verdicts

def test_equivalent_mutant_survives_and_fails_the_command(backend):
    """A mutant the harness cannot see (here: a changed comment) is reported SURVIVED."""
    same = Mutant("test_equivalent", "ep_preprocess", "optimized.preprocess", "# -2: a padding lane -> dump bucket",
                  "# padding", "equivalent by construction")
    res = mutate.run_mutant(same, backend, cases=3, seed=0)
    assert res.verdict == "SURVIVED" and res.cases_run >= 3 * len(SPECS["ep_preprocess"].dtypes)
    assert mutate.failed([res]) and "1 SURVIVED" in mutate.summary([res], backend)


def test_mutant_that_stores_far_away_is_killed(backend):
    """A wild store: an illegal address on a GPU, where the child dies and the case in flight
    is the evidence (probe ``crash``); the patched interpreter reports the out-of-bounds write
    itself (probe ``exception``)."""
    wild = Mutant("test_wild_store", "pre_reorder", "optimized.reorder",
                  "tl.store(out_ptr + dst[:, None] * H + cols[None, :], val,",
                  "tl.store(out_ptr + (dst[:, None] + (1 << 40)) * H + cols[None, :], val,", "stores far away")
    (res,) = mutate.run_mutants([wild], backend, cases=3, seed=0, shrink=False, jobs=1)
    want = "exception" if backend == "interpreter" else "crash"
    assert (res.verdict, res.probe) == ("KILLED", want), (res.verdict, res.reason, res.message[:500])
    assert CaseParams.from_json(res.case).op == "pre_reorder"
    if backend == "interpreter":
        assert "out-of-bounds write in kernel _pre_reorder_kernel" in res.message, res.message[:500]


# the process ends on the first non-empty batch: a crash inside a case that no probe reports
_EXITS = Mutant("test_exits", "pre_reorder", "optimized.reorder",
                "    validate_pre_reorder(input, gateup_input,",
                "    __import__('os')._exit(3) if input.shape[0] else None\n"
                "    validate_pre_reorder(input, gateup_input,",
                "ends the process")


def test_crash_kill_is_confirmed_by_a_control_in_a_fresh_child(backend):
    """A mutant that kills its child is KILLED by "crash" only once the unpatched kernels,
    in a new child, pass the case it died on (the control)."""
    (res,) = mutate.run_mutants([_EXITS], backend, cases=3, seed=0, shrink=False, jobs=1)
    assert (res.verdict, res.probe, res.control) == ("KILLED", "crash", "passed"), (res.verdict, res.reason)
    assert CaseParams.from_json(res.case).tokens > 0 and "exited with status 3" in res.reason


def test_crash_kill_whose_control_fails_or_dies_is_inconclusive(backend, monkeypatch):
    """If the unpatched kernels fail the crash case too, the crash is no evidence: INCONCLUSIVE.
    A control whose child dies answers 'crashed: <reason>' (here: a case that does not parse)."""
    worker = mutate._Worker(backend, 1, None)
    try:
        answer = worker.control(_EXITS, "not a case", 120.0)
    finally:
        worker.close()
    assert answer.startswith("crashed: ") and not worker.alive, answer
    monkeypatch.setattr(mutate._Worker, "control", lambda self, m, params, *a: answer)
    (res,) = mutate.run_mutants([_EXITS], backend, cases=3, seed=0, shrink=False, jobs=1)
    assert (res.verdict, res.probe, res.control) == ("INCONCLUSIVE", "crash", answer)
    assert mutate.failed([res])


def test_mutate_command_table_json_and_exit_status(backend, tmp_path, capsys):
    from harness.cli import main
    out = tmp_path / "mutate.json"
    rc = main(["--backend", backend, "mutate", "--mutant", "ep_bucket_off_by_one", "gemm_fp8_scale_divided",
               "--cases", "3", "--no-shrink", "--quiet", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "killed 2 / 2 mutants (100.0%)" in text and "ep_bucket_off_by_one" in text
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["pending"] == []
    assert [(r["name"], r["verdict"]) for r in data["mutants"]] == [
        ("ep_bucket_off_by_one", "KILLED"), ("gemm_fp8_scale_divided", "KILLED")]
    assert data["mutants"][1]["probe"] == "tolerance" and data["mutants"][1]["dtype"] == "fp8_tensor"
    assert main(["mutate", "--list", "--op", "post_reorder"]) == 0
    listed = capsys.readouterr().out
    assert "post_reorder_no_local_unwritten" in listed and "gemm_" not in listed
    assert main(["mutate", "--mutant", "no_such_mutant"]) == 2
    assert "--mutant: no mutant 'no_such_mutant'" in capsys.readouterr().err


def test_mutate_json_records_each_verdict_as_it_arrives(backend, tmp_path, capsys, monkeypatch):
    """A run cut short (a CI time limit) leaves the verdicts it reached: the JSON is rewritten
    after each mutant with the rest listed as pending, and a log gets a line per mutant."""
    from harness.cli import main
    out = tmp_path / "mutate.json"
    real_run = mutate.run_mutants

    def cut_after_first(names, *args, **kw):
        real_run(names[:1], *args, **kw)
        raise KeyboardInterrupt  # the time limit strikes after the first verdict

    monkeypatch.setattr(mutate, "run_mutants", cut_after_first)
    with pytest.raises(KeyboardInterrupt):
        main(["--backend", backend, "mutate", "--mutant", "ep_bucket_off_by_one", "ep_seg_end_unwritten",
              "--cases", "3", "--no-shrink", "--json", str(out)])
    data = json.loads(out.read_text())
    # mutants run in catalogue order: ep_seg_end_unwritten first
    assert data["complete"] is False and data["pending"] == ["ep_bucket_off_by_one"]
    assert [(r["name"], r["verdict"]) for r in data["mutants"]] == [("ep_seg_end_unwritten", "KILLED")]
    assert "1/2 mutants, 1 killed: ep_seg_end_unwritten KILLED" in capsys.readouterr().err


# ----------------------------------------------------------------------------- harness gap fixes

def test_result_cached_from_an_earlier_call_is_caught_on_the_first_case(seed, device):
    """The decoy call (same shapes, another seed) before the real runs exposes memoisation."""
    cached = memoised_on_shapes(reference.ep_preprocess)
    p = CaseParams(op="ep_preprocess", dtype="int32", tokens=9, topk=3, experts=8, seed=seed)
    res = run_case(SPECS["ep_preprocess"], Candidate(cached), p, device, "cached")
    assert (res.status, res.probe) == ("failed", "exact"), res.message
    assert "cached from an earlier call?" in res.message
    assert run_case(SPECS["ep_preprocess"], Candidate(reference.ep_preprocess), p, device, "ref").ok


def test_every_sweep_starts_with_the_three_fixed_cases(backend, device):
    seen = []
    out = sweep(SPECS["post_reorder"], Candidate(reference.post_reorder), "reference", "float32", backend, device,
                2, 0, database_dir=None, on_case=lambda r: seen.append(CaseParams.from_json(r.params)))
    assert out.failure is None and seen[0].tokens == 0 and seen[0].start_expert > 0       # the empty batch
    aligned, narrow = seen[1], seen[2]
    assert aligned.hidden % 16 == 0 and 0 < aligned.start_expert < aligned.end_expert < aligned.experts - 1
    assert narrow.start_expert == narrow.end_expert and 0 < narrow.start_expert < narrow.experts - 1
    assert any(p.tokens > 0 for p in seen[3:])


def test_narrow_rank_case_catches_a_tile_skip_that_looks_at_one_row(device):
    """The narrow rank (one inner expert of 64) puts the rank's rows in a short run that starts
    inside a row tile: a kernel that skips a tile when its first row is not local leaves them
    unwritten. The reference passes the same case."""
    def skip_by_first_row(gateup_output, down_input, hidden_size, ids, scales, start, end, BLOCK_SIZE=512):
        full = down_input.clone()
        reference.silu_and_mul(gateup_output, full, hidden_size, ids, scales, start, end)
        for r0 in range(0, ids.numel(), 8):                       # tiles of 8 rows
            first = int(ids[r0])
            if start <= first <= end:
                down_input[r0:r0 + 8] = full[r0:r0 + 8]
    p = narrow_rank_case(SPECS["silu_and_mul"], "float32", "interpreter")
    res = run_case(SPECS["silu_and_mul"], Candidate(skip_by_first_row), p, device, "planted")
    assert (res.status, res.probe) == ("failed", "unwritten"), res.message
    assert run_case(SPECS["silu_and_mul"], Candidate(reference.silu_and_mul), p, device, "reference").ok


def test_uninitialised_empty_batch_output_is_caught(device):
    """seg_indptr from torch.empty on an empty batch: the explicit T = 0 case sees the poison."""
    def empty_seg(topk_ids, num_experts):
        out = reference.ep_preprocess(topk_ids, num_experts)
        return (out[0], out[1], torch.empty_like(out[2])) if topk_ids.numel() == 0 else out
    out = sweep(SPECS["ep_preprocess"], Candidate(empty_seg), "planted", "int64", "interpreter", device, 1, 0,
                database_dir=None, shrink=False)
    assert out.failure is not None and out.failure.probe == "exact"
    assert CaseParams.from_json(out.failure.params).tokens == 0


def test_mutate_names_the_mutants_in_flight_every_period(backend, capsys, monkeypatch):
    """Between verdicts (a large-preset mutant takes minutes on the GPU) a line every period names
    the mutants in flight; the line's description of each comes from its child's progress record."""
    import harness.progress
    from harness.cli import main
    flight = mutate._InFlight()
    flight.update(dict(stage="running", mutant="a", dtype="bfloat16", n=3))
    flight.update(dict(stage="control", mutant="b", dtype="fp8", n=1))
    flight.update(dict(stage="idle", mutant=None))
    assert flight.describe() == "a [bfloat16] 3 case(s); b (control)"
    flight.finished("a")
    assert flight.describe() == "b (control)"
    monkeypatch.setattr(harness.progress, "PROGRESS_EVERY_S", 0.1)
    assert main(["--backend", backend, "mutate", "--mutant", "ep_bucket_off_by_one", "--cases", "3",
                 "--no-shrink"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"\] +0/1 mutants, 0 killed; running: ep_bucket_off_by_one", err), err[-2000:]
