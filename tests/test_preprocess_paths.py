"""ep_preprocess's three ways (optimized/preprocess.py): one launch of _one_launch_kernel with one
program (up to ONE_BLOCK_MAX slots) or several blocks (up to ONE_LAUNCH_MAX), three launches above
(the interpreter: the *_INTERP caps). Each is forced here in turn (preprocess.forced_way), with
tl.sort (preprocess.forced_sort, the GPU's block order) and with the interpreter's pairwise rank,
and checked against the reference through every probe of harness.runner.run_case."""
import contextlib
import sys

import pytest
import torch

from harness.cases import CaseParams
from harness.impls import load_implementation
from harness.mutants import MUTANTS, implementation
from harness.runner import Candidate, run_case
from harness.specs import SPECS
from optimized import config, preprocess

SPEC = SPECS["ep_preprocess"]
PATHS = {  # preprocess.forced_way's arguments for each way (203-238 slots below)
    "one launch, 1 block": (preprocess.ONE_PROGRAM, None),
    "one launch, 4 blocks": (preprocess.ONE_LAUNCH_BLOCKS, 64),
    "three launches, 4 blocks": (preprocess.THREE_LAUNCHES, 64),
}


@contextlib.contextmanager
def _forced(path, sort, module=preprocess):
    """``path`` forced in ``module`` (ours, or a mutant copy of it), with tl.sort when ``sort``."""
    with module.forced_way(*PATHS[path]), module.forced_sort(sort):
        yield


def _params(dtype, seed):
    # 29 x 7 = 203 slots (+35 for seed 1): one 256-slot block, or blocks of 64 with a partial tail;
    # 37 experts: a bucket count that is not a power of 2
    return CaseParams(op="ep_preprocess", dtype=dtype, tokens=29 + 5 * seed, topk=7, experts=37 + seed,
                      start_expert=0, end_expert=36 + seed, routing="skewed" if seed else "uniform", seed=seed)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sort", [False, True], ids=["pairwise rank", "tl.sort"])
@pytest.mark.parametrize("dtype", SPEC.dtypes)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_path_matches_reference(path, sort, dtype, seed, device, moe_backend):
    reason = SPEC.skip_reason(moe_backend, dtype)
    if reason:
        pytest.skip(reason)
    if moe_backend == "cuda" and not sort:
        pytest.skip("the pairwise rank is the interpreter's path (FORCE_SORT is moot on the GPU)")
    params = _params(dtype, seed)
    with _forced(path, sort):
        plan = preprocess.launch_plan(params.tokens * params.topk, params.experts)
        assert plan.one_launch == path.startswith("one launch") and plan.nblk == int(path.split(", ")[1][0])
        res = run_case(SPEC, load_implementation("ours").candidate("ep_preprocess"), params, device, "ours")
    assert res.ok, f"{res.probe}: {res.message}"


def test_default_caps_send_fuzzed_interpreter_sizes_down_all_three_ways():
    """The interpreter's fuzzed cases reach ~400 slots: its caps keep all three ways in every CI sweep."""
    assert 1 <= preprocess.ONE_BLOCK_MAX_INTERP < preprocess.ONE_LAUNCH_MAX_INTERP < 400
    assert preprocess.ONE_BLOCK_MAX <= preprocess.ONE_LAUNCH_MAX <= preprocess.MAX_BLOCK


@pytest.mark.parametrize("path", PATHS)
def test_out_of_range_ids_sort_last_in_every_way(path, device, moe_backend):
    """With value checks off (timing), ids outside [0, E) are memory-safe and sort after every valid
    id, in slot order, and count in no segment: the dump bucket, in every way."""
    E = 37
    gen = torch.Generator(device=device).manual_seed(5)
    flat = torch.randint(0, E, (29 * 7,), generator=gen, device=device)
    flat[::9] = torch.tensor([E, -1, 2 ** 40, -(2 ** 40), E + 100], device=device).repeat(5)[:len(flat[::9])]
    with _forced(path, moe_backend == "cuda"), config.value_checks(False):
        sorted_ids, src2dst, seg = preprocess.ep_preprocess(flat.view(29, 7), E)
    valid = (flat >= 0) & (flat < E)
    order = torch.sort(torch.where(valid, flat, E), stable=True).indices      # the dump bucket E last
    assert torch.equal(sorted_ids, flat[order])
    assert torch.equal(src2dst[order].long(), torch.arange(len(flat), device=device))
    want_seg = torch.tensor([int((flat[valid] < e).sum()) for e in range(E + 1)], device=device)
    assert torch.equal(seg, want_seg)


def test_one_launch_test_fires_on_an_inclusive_start_scan(device):
    """The buckets' starts from the inclusive scan of the totals: every position one expert late.
    The same mutant module on the three-launch path passes, so the cap does pick the path."""
    fn = implementation(MUTANTS["ep_one_launch_start_inclusive"]).ops["ep_preprocess"]
    mutant_module = sys.modules[fn.__module__]
    for path, broken in (("one launch, 4 blocks", True), ("three launches, 4 blocks", False)):
        with _forced(path, False, mutant_module):
            res = run_case(SPEC, Candidate(fn), _params("int32", 0), device, "broken")
        if broken:
            assert not res.ok and res.probe in ("exact", "invariant"), (res.probe, res.message)
        else:
            assert res.ok, f"{res.probe}: {res.message}"
