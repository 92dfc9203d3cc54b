"""post_reorder's slot groups (optimized/reorder.py, pinned_slot_group): slot columns are loaded in
groups, and a group that no row of the tile routes here issues no load; 0 means no groups (all K
loads unconditional). Each grouping is forced here in turn and checked against the reference
through every probe of harness.runner.run_case: tiles of several rows, EP ranges, a K that the
group size does not divide, every dtype."""
import sys

import pytest

from harness.cases import CaseParams
from harness.impls import load_implementation
from harness.mutants import MUTANTS, implementation
from harness.runner import Candidate, run_case
from harness.specs import SPECS
from optimized import reorder

GROUPS = (0, 1, 2, 4)
SPEC = SPECS["post_reorder"]


def _params(dtype, seed):
    # hidden 136: 256-column tiles of 4 rows (reorder.TILE_ELEMS 1024), the last one partial;
    # topk 3 and 5: groups of 2 and 4 end past K
    return CaseParams(op="post_reorder", dtype=dtype, tokens=37 + 11 * seed, topk=3 + 2 * seed, experts=8,
                      start_expert=seed, end_expert=4 + seed, hidden=136 + 64 * seed, inter=8,
                      routing="uniform", seed=seed)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("dtype", SPEC.dtypes)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_grouping_matches_reference(group, dtype, seed, device, moe_backend):
    reason = SPEC.skip_reason(moe_backend, dtype)
    if reason:
        pytest.skip(reason)
    with reorder.pinned_slot_group(group):
        res = run_case(SPEC, load_implementation("ours").candidate("post_reorder"), _params(dtype, seed), device,
                       "ours")
    assert res.ok, f"{res.probe}: {res.message}"


def test_grouping_test_fires_on_a_skipped_group(device):
    """The group test, off by one, skips every group: the check sees tokens whose local slots were
    never added. The same kernel without groups (0) passes, so the knob does pick the path."""
    fn = implementation(MUTANTS["post_reorder_slot_group_skipped"]).ops["post_reorder"]
    mutant_module = sys.modules[fn.__module__]
    with mutant_module.pinned_slot_group(2):
        res = run_case(SPEC, Candidate(fn), _params("float32", 0), device, "broken")
    assert not res.ok and res.probe == "tolerance", (res.probe, res.message)
    with mutant_module.pinned_slot_group(0):
        res = run_case(SPEC, Candidate(fn), _params("float32", 0), device, "broken")
    assert res.ok, f"{res.probe}: {res.message}"
