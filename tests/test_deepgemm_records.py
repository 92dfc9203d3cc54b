"""The DeepGEMM contiguous-layout records (harness/ops/deepgemm.py): well formed, compared
order-free where atomics place rows (harness/canonical.py), checked and mutated through the
ordinary commands on the interpreter."""
import re

import pytest
import torch

from harness import cli
from harness.cases import CaseParams
from harness.ops import MUTANT_CATALOGUE
from harness.ops.deepgemm import RECORDS
from harness.runner import (Candidate, ProbeFailure, compare_outputs, probes_switched_off, reference_outputs,
                            run_case)
from harness.specs import SPECS
from tests.helpers import check_record_registered_and_buildable

OPS = [r.name for r in RECORDS]
# a case with several experts holding several rows each, -1 ids and an inner rank
CASE = dict(tokens=12, topk=3, experts=6, start_expert=1, end_expert=4, hidden=130, routing="skewed",
            invalid_frac=0.1, seed=5)


@pytest.mark.parametrize("op", OPS)
def test_record_is_registered_and_builds_cases_its_reference_accepts(op):
    check_record_registered_and_buildable(op, RECORDS, CASE)


def test_row_index_outputs_name_their_data():
    spec = SPECS["ep_scatter"]
    assert [o.name for o in spec.outputs if o.compare == "row_index"] == ["output_index"]
    assert {o.name for o in spec.outputs if o.index == "output_index"} == {"output_tensor", "output_tensor_scale"}


# ----------------------------------------------------------------------------- order-free comparison

def _scatter_case(dtype="fp8"):
    spec = SPECS["ep_scatter"]
    p = CaseParams(op="ep_scatter", dtype=dtype, **CASE)
    sample = spec.build(p, torch.device("cpu"))
    expected = reference_outputs(spec, sample)
    return spec, sample, expected


def _two_slots_of_one_expert(sample, index):
    """Two placed slots (flat) routed to the same expert."""
    ids = sample.topk_ids.reshape(-1)
    placed = index.reshape(-1) >= 0
    for e in ids[placed].unique().tolist():
        slots = torch.nonzero(placed & (ids == e)).flatten()
        if slots.numel() >= 2:
            return int(slots[0]), int(slots[1])
    raise AssertionError("the case has no expert with two rows")


def _permuted(expected, a, b, move_rows=True):
    """The reference's outputs with the rows of slots a and b swapped (and their index entries)."""
    out = {k: v.clone() for k, v in expected.lp.items()}
    idx = out["output_index"].view(-1)
    ra, rb = int(idx[a]), int(idx[b])
    idx[a], idx[b] = rb, ra
    if move_rows:
        for name in ("output_tensor", "output_tensor_scale"):
            t = out[name]
            t[[ra, rb]] = t[[rb, ra]]
    return out


def test_rows_permuted_within_an_expert_pass():
    spec, sample, expected = _scatter_case()
    a, b = _two_slots_of_one_expert(sample, expected.lp["output_index"])
    cand = _permuted(expected, a, b)
    assert not torch.equal(cand["output_index"], expected.lp["output_index"])    # really permuted
    compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)


def test_index_permuted_without_its_rows_fails():
    spec, sample, expected = _scatter_case()
    a, b = _two_slots_of_one_expert(sample, expected.lp["output_index"])
    with pytest.raises(ProbeFailure) as info:
        compare_outputs(spec, Candidate(lambda *a: None), sample, _permuted(expected, a, b, move_rows=False),
                        expected)
    assert info.value.probe == "exact" and "output_tensor" in info.value.message


def test_slot_moved_into_another_experts_segment_fails():
    spec, sample, expected = _scatter_case()
    ids = sample.topk_ids.reshape(-1)
    idx = expected.lp["output_index"].reshape(-1)
    placed = torch.nonzero(idx >= 0).flatten()
    a = int(placed[0])
    b = int(next(s for s in placed.tolist() if int(ids[s]) != int(ids[a])))
    cand = _permuted(expected, a, b)                   # rows and index agree, but across experts
    with pytest.raises(ProbeFailure) as info:
        compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
    assert info.value.probe == "order_free" and "segment" in info.value.message


def test_two_slots_on_one_row_fail():
    spec, sample, expected = _scatter_case()
    a, b = _two_slots_of_one_expert(sample, expected.lp["output_index"])
    cand = {k: v.clone() for k, v in expected.lp.items()}
    cand["output_index"].view(-1)[b] = cand["output_index"].view(-1)[a]
    with pytest.raises(ProbeFailure) as info:
        compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
    assert info.value.probe == "order_free" and "one-to-one" in info.value.message


def test_a_candidate_placing_rows_in_reverse_order_passes_every_probe():
    """A whole implementation whose atomics ran in the opposite order: each expert's rows in
    reverse slot order. Passes run_case (the repeat-run probe included)."""
    import inspect

    from reference import deepgemm_layout as ref
    names = list(inspect.signature(ref.ep_scatter).parameters)

    def reversed_scatter(*args):
        a = dict(zip(names, args))
        ref.ep_scatter(*args)
        index = a["output_index"].view(-1)
        ids = a["recv_topk"].reshape(-1)
        for e in ids[index >= 0].unique().tolist():
            slots = torch.nonzero((index >= 0) & (ids == e)).flatten()
            rows = index[slots].clone()
            index[slots] = rows.flip(0)
            for name in ("output_tensor", "output_tensor_scale"):
                a[name][rows.flip(0)] = a[name][rows].clone()
    p = CaseParams(op="ep_scatter", dtype="fp8", **CASE)
    result = run_case(SPECS["ep_scatter"], Candidate(reversed_scatter), p, "cpu")
    assert result.status == "passed", result.message
    with probes_switched_off("order_free"):        # compared in slot order, the same candidate fails
        assert run_case(SPECS["ep_scatter"], Candidate(reversed_scatter), p, "cpu").probe == "exact"


# ----------------------------------------------------------------------------- the commands

def test_check_passes_ours_and_reference(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["check", "--backend", "interpreter", "--op", *OPS, "--impl", "ours", "reference",
                     "--dtype", "float32", "fp8", "int32", "--cases", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    for op in OPS:
        assert re.search(rf"^{op}\s+ours\s+\S+\s+\d+\s+\d+\s+0\s+0 .*passed", out, re.M), out


def test_every_new_mutant_is_killed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = [m.name for m in MUTANT_CATALOGUE if m.op in OPS]
    assert len(mine) >= len(OPS)
    code = cli.main(["mutate", "--backend", "interpreter", "--op", *OPS, "--cases", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in mine:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "KILLED" in line or "needs the cuda backend" in line, line
