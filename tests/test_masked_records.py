"""The masked-layout records (harness/ops/masked.py): well formed, rows past masked_m not
compared where the contract leaves them unspecified (OutputSpec.defined), slab rows compared
order-free, in-place outputs fed the case's values (an in_place output location), and their mutants killed
through the ordinary command on the interpreter."""
import inspect

import pytest
import torch

from harness import cli
from harness.cases import CaseParams
from harness.ops import MUTANT_CATALOGUE
from harness.ops.masked import RECORDS
from harness.runner import Candidate, ProbeFailure, compare_outputs, reference_outputs, run_case
from harness.specs import SPECS
from tests.helpers import check_record_registered_and_buildable
from reference import deepgemm_layout as ref

OPS = [r.name for r in RECORDS]
CASE = dict(tokens=12, topk=3, experts=6, start_expert=1, end_expert=4, hidden=130, routing="skewed",
            invalid_frac=0.1, seed=5)


def _case(op, dtype):
    spec = SPECS[op]
    sample = spec.build(CaseParams(op=op, dtype=dtype, **CASE), torch.device("cpu"))
    return spec, sample, reference_outputs(spec, sample)


@pytest.mark.parametrize("op", OPS)
def test_record_is_registered_and_builds_cases_its_reference_accepts(op):
    check_record_registered_and_buildable(op, RECORDS, CASE)


def test_rows_past_masked_m_are_not_compared_but_defined_rows_are():
    spec, sample, expected = _case("moe_ep_deepgemm_preprocess", "fp8")
    masked_m = expected.lp["masked_m"]
    e = int(torch.argmax(masked_m))
    assert 0 < int(masked_m[e]) < expected.lp["gateup_input"].shape[1]
    cand = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in expected.lp.items()}
    cand["gateup_input"][e, int(masked_m[e]):] = cand["gateup_input"][e, 0]          # junk past masked_m
    cand["gateup_input_scale"][e, int(masked_m[e]):] = 1.0
    compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
    cand["gateup_input"][e, int(masked_m[e]) - 1] = cand["gateup_input"][e, 0].view(torch.uint8).add(1).view(
        cand["gateup_input"].dtype)                                                # a defined row wrong
    with pytest.raises(ProbeFailure) as info:
        compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
    assert info.value.probe == "exact" and "gateup_input" in info.value.message


def test_a_preprocess_placing_rows_in_reverse_order_passes():
    """The atomics' order is free: each expert's rows in reverse slot order pass run_case."""
    names = list(inspect.signature(ref.moe_ep_deepgemm_preprocess).parameters)

    def reversed_preprocess(*args):
        a = dict(zip(names, args))
        masked_m, expected_m, src2dst, slab, scale = ref.moe_ep_deepgemm_preprocess(*args)
        ids = a["topk_ids"].reshape(-1)
        src2dst = src2dst.clone()
        flat, flat_s = slab.view(-1, slab.shape[-1]), scale.reshape(-1, scale.shape[-1])
        moved_s = flat_s.clone()
        for e in ids[src2dst >= 0].unique().tolist():
            slots = torch.nonzero((src2dst >= 0) & (ids == e)).flatten()
            rows = src2dst[slots].to(torch.int64)
            src2dst[slots] = rows.flip(0).to(torch.int32)
            flat[rows.flip(0)] = flat[rows].clone()
            moved_s[rows.flip(0)] = flat_s[rows]
        return masked_m, expected_m, src2dst, slab, moved_s.view(scale.shape)
    p = CaseParams(op="moe_ep_deepgemm_preprocess", dtype="fp8", **CASE)
    result = run_case(SPECS["moe_ep_deepgemm_preprocess"], Candidate(reversed_preprocess), p, "cpu")
    assert result.status == "passed", result.message


def test_an_in_place_output_receives_the_case_values():
    """scale_expanded_rows_ updates x in place: the runner fills x's buffer with the case's x,
    so an implementation writing the weights alone fails (it would pass on poison-filled x
    only if it ignored x, which this catches)."""
    def weights_only(x, row_weights):
        x.copy_(row_weights.float()[:, None].expand_as(x))
        return x
    p = CaseParams(op="scale_expanded_rows_", dtype="float32", **CASE)
    assert run_case(SPECS["scale_expanded_rows_"], Candidate(ref.scale_expanded_rows_), p, "cpu").status == "passed"
    assert run_case(SPECS["scale_expanded_rows_"], Candidate(weights_only), p, "cpu").probe == "exact"


@pytest.mark.parametrize("element_size,expected", [(4, [0, 4, 4, 8, 132]), (2, [0, 8, 8, 8, 136]),
                                                   (1, [0, 16, 16, 16, 144])])
def test_get_tma_aligned_size_pads_to_16_bytes(element_size, expected):
    assert [ref.get_tma_aligned_size(m, element_size) for m in (0, 1, 3, 5, 129)] == expected
    with pytest.raises(ValueError, match="element_size"):
        ref.get_tma_aligned_size(4, 3)


def test_tma_aligned_scale_is_column_major_with_padded_columns():
    s = torch.rand(5, 3)
    out = ref.tma_align_input_scale(s)
    assert torch.equal(out, s) and out.stride() == (1, 8)


def test_every_new_mutant_is_killed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = [m.name for m in MUTANT_CATALOGUE if m.op in OPS]
    assert {m.op for m in MUTANT_CATALOGUE if m.op in OPS} == set(OPS)          # at least one per op
    code = cli.main(["mutate", "--backend", "interpreter", "--op", *OPS, "--cases", "2", "--no-shrink"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in mine:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "KILLED" in line or "needs the cuda backend" in line, line
