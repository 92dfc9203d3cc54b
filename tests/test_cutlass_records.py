"""The cutlass family and zero-expert records (harness/ops/cutlass.py): well formed, checked and
with a mutant per op (killed by tests/test_mutants.py's catalogue test); declared in-place inputs compared
exactly (and undeclared ones still flagged); SGLang 0.5.23's kernels that run without a GPU pass,
and its zero-expert column gap shows outside the precondition; on a GPU, one captured graph of the
silu-mul ops replayed at several device-held counts, which a planted host read of the count fails."""
import os
import re

import pytest
import torch

from harness.cases import CaseParams
from harness.ops import MUTANT_CATALOGUE
from harness.ops.cutlass import RECORDS
from harness.runner import Candidate, as_bits, reference_outputs, run_case
from harness.specs import SPECS
from tests.helpers import check_record_registered_and_buildable
from reference import cutlass as ref
from reference.zero_experts import zero_experts_compute_triton

OPS = [r.name for r in RECORDS]
# an inner rank (experts 1..4 of 6) with -1 ids: dropped slots carry -1 and the sentinel
CASE = dict(tokens=9, topk=3, experts=6, start_expert=1, end_expert=4, hidden=40, inter=24, routing="skewed",
            invalid_frac=0.2, seed=5)


@pytest.mark.parametrize("op", OPS)
def test_record_is_registered_and_builds_cases_its_reference_accepts(op):
    check_record_registered_and_buildable(op, RECORDS, CASE)


def test_cases_carry_both_dropped_slot_markers_and_a_partial_token_count():
    seen_sentinel = seen_minus_one = partial = False
    for seed in range(12):
        args = SPECS["pre_reorder_for_cutlass_moe"].build(
            CaseParams(op="pre_reorder_for_cutlass_moe", dtype="bfloat16", **{**CASE, "seed": seed}), "cpu").args
        seen_sentinel |= bool((args["topk_ids"] == args["num_local_experts"]).any())
        seen_minus_one |= bool((args["topk_ids"] == -1).any())
        partial |= args["num_tokens"] < args["input"].shape[0]
    assert seen_sentinel and seen_minus_one and partial


# ----------------------------------------------------------------------------- declared in-place inputs

def _zero_case(seed=2):
    p = CaseParams(op="zero_experts_compute_triton", dtype="float32", **{**CASE, "seed": seed})
    return SPECS["zero_experts_compute_triton"], p


def test_declared_in_place_inputs_pass_and_the_sample_stays_as_built():
    spec, p = _zero_case()
    sample = spec.build(p, torch.device("cpu"))
    before = sample.args["expert_indices"].clone()
    reference_outputs(spec, sample)                                 # the reference rewrites a copy
    assert torch.equal(sample.args["expert_indices"], before)
    assert run_case(spec, Candidate(zero_experts_compute_triton), p, "cpu").status == "passed"


def test_an_in_place_input_left_unrewritten_fails_exactly():
    spec, p = _zero_case()

    def ids_untouched(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states):
        return zero_experts_compute_triton(expert_indices.clone(), expert_scales, num_experts, zero_expert_type,
                                           hidden_states)
    r = run_case(spec, Candidate(ids_untouched), p, "cpu")
    assert r.status == "failed" and r.probe == "exact" and "expert_indices" in r.message, r.message


def test_an_undeclared_input_written_is_still_input_mutation():
    spec, p = _zero_case()

    def writes_hidden(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states):
        out = zero_experts_compute_triton(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states)
        hidden_states.mul_(2.0)
        return out
    r = run_case(spec, Candidate(writes_hidden), p, "cpu")
    assert r.status == "failed" and r.probe == "input_modified" and "hidden_states" in r.message, r.message


# ----------------------------------------------------------------------------- mutants

MINE = [m for m in MUTANT_CATALOGUE if m.op in OPS]


def test_every_op_has_a_mutant_and_the_gpu_ones_are_declared():
    """(tests/test_mutants.py's catalogue test kills each on the interpreter.)"""
    assert {m.op for m in MINE} == set(OPS)
    overflow = [m for m in MINE if "int32_row_offset" in m.name]
    assert overflow and all(m.backends == ("cuda",) and m.min_preset == "large" for m in overflow)
    assert any("sentinel" in m.name for m in MINE if m.op == "pre_reorder_for_cutlass_moe")


# ----------------------------------------------------------------------------- SGLang 0.5.23

WHEEL_FILE = os.path.expanduser("~/.cache/moe-kernel-harness/sglang/0.5.23/files/sglang/kernels/ops/moe/"
                                "ep_moe_kernels.py")
needs_0_5_23 = pytest.mark.skipif(not os.path.exists(WHEEL_FILE), reason="sglang 0.5.23 is not in the cache")


@needs_0_5_23
def test_sglang_zero_experts_leaves_the_last_columns_at_zero_outside_its_precondition():
    """H = 320: 0.5.23 launches T * (320 // 256) programs of 256 columns, so columns 256..319
    stay 0 (the record's docstring); H = 256 passes."""
    from harness.impls import load_implementation
    impl = load_implementation("sglang==0.5.23")
    cand = impl.candidate("zero_experts_compute_triton")
    spec = SPECS["zero_experts_compute_triton"]
    for hidden, status in ((256, "passed"), (320, "failed")):
        p = CaseParams(op="zero_experts_compute_triton", dtype="float32", **{**CASE, "hidden": hidden})
        r = run_case(spec, cand, p, "cpu", impl_name="sglang==0.5.23")
        assert r.status == status, (hidden, r.message)
    assert r.probe == "tolerance" and re.search(r"'col': 2[5-9]\d|'col': 3[01]\d", r.message), r.message
    assert not spec.preconditions[0].holds(p) and spec.fit(p, ("hidden_multiple_of_256",)).hidden == 256


# ----------------------------------------------------------------------------- GPU: one graph, several counts

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
SILU = "silu_mul_static_tensorwise_quant_for_cutlass_moe"


def _silu_on_device(input, output, scale, num_tokens_tensor, expected_num_tokens, intermediate_size):
    """The static op in torch, the count kept on the device (capturable for any count)."""
    if expected_num_tokens * intermediate_size == 0:
        return
    rows = torch.arange(input.shape[0], device=input.device)[:, None] < num_tokens_tensor.reshape(-1)[0]
    y = ref._silu_mul_rows(input, input.shape[0], intermediate_size) * (1.0 / scale[0])
    bits = as_bits(output)                 # rows past the count keep their bits (a select, no host read)
    bits.copy_(torch.where(rows, as_bits(ref.cast_saturating(y, output.dtype)), bits))


def _silu_count_read_on_host():
    """The same op with the count read on the host when it can be (outside capture) and that
    value reused inside it: the planted host read a graph replayed at other counts exposes."""
    last = {}

    def fn(input, output, scale, num_tokens_tensor, expected_num_tokens, intermediate_size):
        if expected_num_tokens * intermediate_size == 0:
            return
        if not torch.cuda.is_current_stream_capturing():
            last["n"] = int(num_tokens_tensor.reshape(-1)[0])
        n = last["n"]
        y = ref._silu_mul_rows(input, n, intermediate_size) * (1.0 / scale[0])
        output[:n] = ref.cast_saturating(y, output.dtype)
    return fn


@needs_cuda
def test_graph_replayed_at_several_counts_passes_a_device_count_and_fails_a_host_read():
    spec = SPECS[SILU]
    assert spec.capturable and spec.graph_variants is not None
    p = CaseParams(op=SILU, dtype="fp8", **{**CASE, "tokens": 33})
    good = run_case(spec, Candidate(_silu_on_device, graph=True), p, "cuda")
    assert good.status == "passed", good.message
    bad = run_case(spec, Candidate(_silu_count_read_on_host(), graph=True), p, "cuda")
    assert bad.status == "failed" and bad.probe == "graph", bad.message
