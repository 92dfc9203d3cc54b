"""Our preprocess (optimized/preprocess.py) on block plans the fuzzer's sizes never reach.

At fuzz sizes every batch fits one superblock of a few blocks, so the scatter's count of
earlier superblocks, its loop over superblock rows and a partial last superblock are only
run here: the plan's sizes are shrunk (32-slot blocks, 8 per superblock, 2 superblock rows
per load) so that a 900-slot batch has 29 blocks in 4 superblocks, the last one partial.
Outputs are compared exactly with the reference (SPEC.md: the order is stable).
"""
import pytest
import torch

import reference
from harness.mutants import MUTANTS, implementation
from optimized import preprocess
from tests.helpers import random_ids

SMALL_PLAN = dict(TARGET_BLOCKS=4096, MIN_BLOCK=32, MAX_BLOCK=32, SUPER_BLOCKS=8)


def _shrink_plan(monkeypatch, module_globals, nbp):
    for name, value in dict(SMALL_PLAN, SUPER_TILE=2 * nbp).items():
        monkeypatch.setitem(module_globals, name, value)


def _check(fn, ref_fn, ids, E):
    got, want = fn(ids, E), ref_fn(ids, E)
    for name, g, w in zip(("reorder_topk_ids", "src2dst", "seg_indptr"), got, want):
        assert g.dtype == w.dtype and torch.equal(g.cpu(), w.cpu()), f"{name} differs from the reference"


@pytest.mark.parametrize("force_sort", [False, True], ids=["pairwise-rank", "sort"])
@pytest.mark.parametrize("seed", [0, 1])
def test_many_superblocks_match_reference(seed, force_sort, device, monkeypatch):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    E, T, K = 40, 150, 6                                         # 900 slots: 29 blocks, superblocks 8+8+8+5
    _shrink_plan(monkeypatch, vars(preprocess), nbp=64)
    monkeypatch.setattr(preprocess, "FORCE_SORT", force_sort)
    assert preprocess._plan(T * K, E, False)[2:] == (29, 8, 4)
    _check(preprocess.ep_preprocess, reference.ep_preprocess, random_ids(gen, T, K, E), E)
    _check(preprocess.deepep_preprocess, reference.deepep_preprocess,
           random_ids(gen, T, K, E, invalid_frac=0.2, dtype=torch.int64), E)


def test_many_superblocks_test_fires_on_an_inclusive_superblock_prefix(device, monkeypatch):
    """A scatter that counts its own superblock among the earlier ones fails the comparison."""
    fn = implementation(MUTANTS["ep_superblock_prefix_inclusive"]).ops["ep_preprocess"]
    _shrink_plan(monkeypatch, fn.__globals__, nbp=64)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    with pytest.raises(AssertionError, match="differs from the reference"):
        _check(fn, reference.ep_preprocess, random_ids(gen, 150, 6, 40), 40)
