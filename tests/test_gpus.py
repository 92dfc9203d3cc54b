"""xdist workers map onto GPUs round-robin, and pinning touches CUDA only when it is there."""
import os

import pytest
import torch

from harness.gpus import pin_this_process, worker_device_index


@pytest.mark.parametrize("worker_id,n_gpus,want", [
    ("gw0", 2, 0), ("gw1", 2, 1), ("gw2", 2, 0), ("gw7", 8, 7), ("gw9", 8, 1), ("gw13", 1, 0), ("gw12", 5, 2),
    ("master", 4, 0), ("", 4, 0), (None, 4, 0),
])
def test_worker_device_index(worker_id, n_gpus, want):
    assert worker_device_index(worker_id, n_gpus) == want


@pytest.mark.parametrize("worker_id,n_gpus", [("gw1", 0), ("gw1", -1), ("worker1", 2), ("gw", 2), ("gw-1", 2),
                                              ("gw1x", 2)])
def test_worker_device_index_rejects(worker_id, n_gpus):
    with pytest.raises(ValueError):
        worker_device_index(worker_id, n_gpus)


def test_pin_sets_the_workers_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert pin_this_process("gw3") == 1
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw4")
    assert pin_this_process() == 0
    assert calls == [1, 0]


def test_pin_without_cuda_does_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert pin_this_process("gw1") is None
    assert calls == []


# ----------------------------------------------------------------------------- chunked sweeps

from harness.check import CHUNK_SEED_STRIDE, chunk_plan, merge_rows  # noqa: E402
from harness.report import Row  # noqa: E402


@pytest.mark.parametrize("cases,chunk,want", [(10, 0, [10]), (10, 10, [10]), (10, 4, [4, 4, 2]), (2000, 250, [250] * 8),
                                              (1, 3, [1])])
def test_chunk_plan_covers_the_cases_with_distinct_seeds(cases, chunk, want):
    plan = chunk_plan(cases, chunk, seed=7)
    assert [n for n, _ in plan] == want
    seeds = [s for _, s in plan]
    assert len(set(seeds)) == len(seeds)
    if len(plan) > 1:
        assert seeds == [7 * CHUNK_SEED_STRIDE + i for i in range(len(plan))]
    else:
        assert seeds == [7]


def test_merge_rows_adds_counts_keeps_worst_and_the_failure():
    ok = Row("pre_reorder", "ours", "bfloat16", run=5, passed=5, seconds=1.5,
             worst={"out": {"max_abs_err": 0.5, "params": "a"}})
    bad = Row("pre_reorder", "ours", "bfloat16", run=3, passed=2, failed=1, status="FAILED", seconds=1.0,
              worst={"out": {"max_abs_err": 0.25, "params": "b"}}, failure={"probe": "guard"}, replay="moe-harness x")
    worse = Row("pre_reorder", "ours", "bfloat16", run=4, passed=4, worst={"out": {"max_abs_err": 0.75, "params": "c"}})
    row = merge_rows([ok, bad, worse])
    assert (row.run, row.passed, row.failed, row.status, row.seconds) == (12, 11, 1, "FAILED", 2.5)
    assert row.failure == {"probe": "guard"} and row.replay == "moe-harness x"
    assert row.worst["out"]["params"] == "c"
    assert merge_rows([ok, worse]).status == "passed"


def test_chunked_check_gives_the_same_rows_for_any_number_of_jobs(tmp_path, monkeypatch):
    """--chunk fixes the cases; --jobs only changes how many children run them at once."""
    from harness.backend import select_backend
    from harness.check import run_check
    from harness.options import CheckOptions
    monkeypatch.chdir(tmp_path)   # the children's Hypothesis database stays in the test's folder
    backend = select_backend(None)
    tables = []
    for jobs in (1, 3):
        options = CheckOptions(ops=["ep_preprocess"], impls=["reference"], dtypes=["int32"], cases=6, chunk=2, seed=3,
                               shrink=False, quiet=True, isolate=True, case_timeout_s=0, jobs=jobs)
        rows = run_check(options, backend)
        tables.append([(r.op, r.impl, r.dtype, r.run, r.passed, r.status) for r in rows])
    # 3 chunks x (2 drawn cases + the 3 fixed cases each sweep starts with)
    assert tables[0] == tables[1] == [("ep_preprocess", "reference", "int32", 15, 15, "passed")]


@pytest.mark.parametrize("chunk,isolate,needle", [(-1, True, "expected a number of cases >= 0"),
                                                  (5, False, "needs --isolate")])
def test_chunk_option_rejects_what_it_cannot_do(chunk, isolate, needle):
    from harness.options import CheckOptions, OptionError
    with pytest.raises(OptionError, match="--chunk: .*" + needle):
        CheckOptions(ops=["ep_preprocess"], impls=["reference"], cases=10, chunk=chunk, isolate=isolate)


def test_costliest_rows_start_first_and_equals_keep_record_order():
    """A check's parallel children take the rows of costly ops first (OpSpec.case_cost), so that a
    long row does not start last; rows of equal cost keep the registry's order."""
    from harness.check import start_order
    from harness.specs import SPECS
    ops = ["silu_and_mul", "ep_moe_forward", "gelu_and_mul", "grouped_gemm", "ep_gather"]
    assert SPECS["ep_moe_forward"].case_cost > SPECS["grouped_gemm"].case_cost > SPECS["silu_and_mul"].case_cost
    assert SPECS["silu_and_mul"].case_cost == SPECS["gelu_and_mul"].case_cost
    order = [ops[i] for i in start_order(ops)]
    assert order[:2] == ["ep_moe_forward", "grouped_gemm"]
    assert order.index("silu_and_mul") < order.index("gelu_and_mul")


def test_a_row_merged_from_pieces_notes_the_whole_row():
    """The merged row's note is made from all its pieces' tallies (graph replays and TF32-only
    passes summed), not taken from the first piece; a row none of whose pieces compared a case
    says why, and one piece that passed makes it passed."""
    from harness.row_check import row_note
    a = dict(graph_replayed=4, graph_skipped=6, graph_skip_reason="no case fits", tf32=1, rejected=0)
    b = dict(graph_replayed=3, graph_skipped=7, graph_skip_reason="", tf32=2, rejected=0)
    parts = [Row("grouped_gemm", "ours", "float32", run=12, passed=12, tally=a, reason=row_note(a, 12)),
             Row("grouped_gemm", "ours", "float32", run=13, passed=13, tally=b, reason=row_note(b, 13))]
    row = merge_rows(parts)
    assert "replayed on new inputs in 7 case(s), only captured in 13 (no case fits)" in row.reason, row.reason
    assert "3 case(s) pass at TF32 precision only" in row.reason
    rejected = dict(rejected=5, not_computable=0)
    parts = [Row("grouped_gemm", "ours", "fp8_block", run=5, status="REJECTED", tally=rejected),
             Row("grouped_gemm", "ours", "fp8_block", run=4, passed=4, tally=dict(rejected=0))]
    assert merge_rows(parts).status == "passed"
    assert merge_rows(parts[:1] * 2).status == "REJECTED"


def test_default_jobs_scale_with_the_cards_and_cores(monkeypatch):
    """One child per core up to 16 per card (a host of 8 cards and 128 cores runs 128, not 16);
    one per card for the large preset; one per core on the interpreter."""
    from harness.check import MAX_JOBS_PER_GPU, default_jobs
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert default_jobs("cuda", 8, None) == 8 * MAX_JOBS_PER_GPU == 128
    assert default_jobs("cuda", 1, None) == MAX_JOBS_PER_GPU
    assert default_jobs("cuda", 8, "large") == 8
    assert default_jobs("interpreter", 0, None) == 128
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_jobs("cuda", 2, None) == 16
