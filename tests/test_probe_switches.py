"""Every probe of the runner has a bug that only it catches here: a planted candidate fails
with that probe on, and gets past that probe when it is switched off
(harness.runner.probes_switched_off). So switching off any one probe makes
``test_probe_catches_its_planted_bug`` fail for it: no probe is untested.
"""
import pytest
import torch

import reference
from harness.cases import CaseParams
from harness.mutants import cache_by_shape
from harness.runner import PROBES, Candidate, fill_poison, probes_switched_off, run_case
from harness.specs import SPECS

NARROW = dict(tokens=12, topk=3, experts=6, start_expert=2, end_expert=3, hidden=24, inter=16, routing="uniform",
              seed=7)


def _case(op, dtype, **over):
    return CaseParams(op=op, dtype=dtype, **{**NARROW, **over})


def raises(*args):
    raise RuntimeError("planted failure")


def modifies_input(down_output, output, *rest):
    reference.post_reorder(down_output, output, *rest)
    down_output[0, 0] = down_output[0, 0] + 1


def writes_past_the_end(gateup_output, down_input, *rest):
    reference.silu_and_mul(gateup_output, down_input, *rest)
    after = torch.as_strided(down_input, (1,), (1,), down_input.storage_offset() + down_input.numel())
    after.fill_(0.5)


def writes_rows_of_other_experts(gateup_output, down_input, *rest):
    down_input.zero_()
    reference.silu_and_mul(gateup_output, down_input, *rest)


def leaves_a_row_unwritten(down_output, output, *rest):
    reference.post_reorder(down_output, output, *rest)
    fill_poison(output[:1])


def seg_end_off_by_one(topk_ids, num_experts):
    ids, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
    seg = seg.clone()
    seg[-1] += 1
    return ids, src2dst, seg


def slots_out_of_their_segment(topk_ids, num_experts):
    """A valid permutation that moves a slot into another expert's segment."""
    ids, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
    flat = topk_ids.reshape(-1)
    first, other = 0, int(torch.nonzero(flat != flat[0])[0])
    swapped = src2dst.clone()
    swapped[first], swapped[other] = src2dst[other], src2dst[first]
    return ids, swapped, seg


def alternating_order():
    """Correct in the order-free canonical form, but each call orders an expert's slots
    differently: two runs on the same inputs disagree."""
    calls = {"n": 0}

    def preprocess(topk_ids, num_experts):
        calls["n"] += 1
        ids, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
        if calls["n"] % 2:
            return ids, src2dst, seg
        e = topk_ids.reshape(-1).long()
        lo, hi = seg[e], seg[e + 1]
        return ids, (lo + hi - 1 - src2dst.long()).to(src2dst.dtype), seg   # each segment reversed
    return preprocess


def off_by_one_percent(down_output, output, *rest):
    reference.post_reorder(down_output, output, *rest)
    output.mul_(1.01)


def empty_batch_seg_from_fresh_memory(topk_ids, num_experts):
    """The zeros->empty bug: for an empty batch seg_indptr comes from torch.empty. Fresh pages
    of a large host allocation are zeros, so without the poisoning the bug is lucky here."""
    ids, src2dst, _ = reference.ep_preprocess(topk_ids, num_experts)
    return ids, src2dst, torch.empty(1 << 24, dtype=torch.int64, device=topk_ids.device)[:num_experts + 1]


def host_sync(topk_ids, num_experts):
    """A host read of a device value: cannot be captured in a CUDA graph."""
    if int(topk_ids.max()) >= num_experts:
        raise ValueError("topk_ids: out of range")
    return reference.ep_preprocess(topk_ids, num_experts)


# probe -> (op, dtype, candidate factory, Candidate flags, case overrides, backend it needs)
PLANTED = {
    "exception": ("post_reorder", "float32", lambda: raises, {}, {}, None),
    "input_modified": ("post_reorder", "float32", lambda: modifies_input, {}, {}, None),
    "guard": ("silu_and_mul", "float32", lambda: writes_past_the_end, {}, {}, None),
    "untouched": ("silu_and_mul", "float32", lambda: writes_rows_of_other_experts, {}, {}, None),
    "unwritten": ("post_reorder", "float32", lambda: leaves_a_row_unwritten, {}, {}, None),
    "exact": ("ep_preprocess", "int64", lambda: seg_end_off_by_one, {}, {}, None),
    "order_free": ("ep_preprocess", "int64", lambda: slots_out_of_their_segment, {"order_free": True}, {}, None),
    "tolerance": ("post_reorder", "float32", lambda: off_by_one_percent, {}, {}, None),
    "nondeterministic": ("ep_preprocess", "int64", alternating_order, {"order_free": True}, {}, None),
    "fresh_poison": ("ep_preprocess", "int64", lambda: empty_batch_seg_from_fresh_memory, {}, {"tokens": 0}, "cpu"),
    "decoy": ("ep_preprocess", "int64", lambda: cache_by_shape(reference.ep_preprocess), {}, {}, None),
    "graph": ("ep_preprocess", "int64", lambda: host_sync, {"graph": True}, {}, "cuda"),
}


def _run(probe, device):
    op, dtype, factory, flags, over, needs = PLANTED[probe]
    if needs and needs != device:
        pytest.skip(f"the {probe} probe's planted bug needs the {needs} device")
    return run_case(SPECS[op], Candidate(factory(), **flags), _case(op, dtype, **over), device, f"planted-{probe}")


def test_every_probe_has_a_planted_bug():
    assert set(PLANTED) == set(PROBES)


@pytest.mark.parametrize("probe", PROBES)
def test_probe_catches_its_planted_bug(probe, device):
    res = _run(probe, device)
    assert res.status == "failed", res.message
    # fresh_poison and decoy act on calls: what they expose is an exact mismatch (the poisoned
    # scratch is not the zeros it should be; the cached answer is another case's)
    assert res.probe == ("exact" if probe in ("fresh_poison", "decoy") else probe), res.message
    if probe == "decoy":
        assert "cached from an earlier call" in res.message, res.message


@pytest.mark.parametrize("probe", PROBES)
def test_switching_off_a_probe_lets_its_planted_bug_past_it(probe, device):
    """What ``test_probe_catches_its_planted_bug`` would see with the probe off: the bug is no
    longer caught as that probe's (it passes, or a later probe catches it otherwise)."""
    with probes_switched_off(probe):
        res = _run(probe, device)
    if probe in ("fresh_poison", "decoy"):
        assert res.status == "passed", res.message
    else:
        assert res.status == "passed" or res.probe != probe, res.message


def test_unknown_probe_names_are_refused():
    with pytest.raises(ValueError, match="probes_switched_off"):
        with probes_switched_off("guards"):
            pass
