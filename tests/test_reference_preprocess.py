"""ep_preprocess / deepep_preprocess against a slot-by-slot counting sort and the invariants."""
import pytest
import torch

import reference
from tests.helpers import loop_preprocess, random_ids

SIZES = [(1, 1, 1), (5, 2, 3), (17, 4, 8), (33, 8, 64), (64, 6, 5), (3, 9, 2), (0, 4, 8)]


@pytest.mark.parametrize("T,K,E", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_ep_preprocess_matches_counting_sort(gen, T, K, E, dtype):
    ids = random_ids(gen, T, K, E, distinct=False, dtype=dtype)
    reorder, src2dst, seg = reference.ep_preprocess(ids, E)
    want_sorted, want_pos, want_lower = loop_preprocess(ids.flatten(), E)
    assert reorder.dtype == dtype and src2dst.dtype == torch.int32 and seg.dtype == torch.int64
    assert reorder.tolist() == want_sorted
    assert src2dst.tolist() == want_pos
    assert seg.tolist() == want_lower


@pytest.mark.parametrize("T,K,E", SIZES[1:], ids=lambda v: str(v))
def test_ep_preprocess_invariants(gen, T, K, E):
    ids = random_ids(gen, T, K, E)
    reorder, src2dst, seg = reference.ep_preprocess(ids, E)
    flat = ids.flatten().long()
    s2d = src2dst.long()
    assert torch.equal(torch.sort(s2d).values, torch.arange(T * K, device=ids.device))   # a permutation
    assert torch.equal(reorder.long()[s2d], flat)                                       # slots land on their id
    assert torch.equal(seg.diff(), torch.bincount(flat, minlength=E))                   # segment sizes = counts
    assert int(seg[0]) == 0


@pytest.mark.parametrize("invalid_frac", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T,K,E", [(6, 2, 4), (40, 8, 16), (1, 1, 1)], ids=lambda v: str(v))
def test_deepep_preprocess_matches_counting_sort(gen, T, K, E, invalid_frac):
    ids = random_ids(gen, T, K, E, invalid_frac=invalid_frac, dtype=torch.int64)
    if invalid_frac == 1.0:
        ids.fill_(-1)
    reorder, src2dst, seg = reference.deepep_preprocess(ids, E)
    want_sorted, want_pos, want_lower = loop_preprocess(ids.flatten(), E)
    n_inv = sum(1 for x in ids.flatten().tolist() if x < 0)
    assert reorder.tolist() == want_sorted[n_inv:]
    assert src2dst.dtype == torch.int64 and src2dst.tolist() == [p - n_inv for p in want_pos]
    assert seg.tolist() == [c - n_inv for c in want_lower]
    invalid = ids.flatten() < 0
    assert sorted(src2dst[invalid].tolist()) == list(range(-n_inv, 0))


def test_deepep_seg_indptr_does_not_alias_inputs(gen):
    """An in-place update through a view (seg_indptr -= seg_indptr[0]) would corrupt later entries."""
    ids = torch.tensor([[-1, 0], [-1, 2], [1, -1]], device=gen.device)
    _, _, seg = reference.deepep_preprocess(ids, 3)
    assert seg.tolist() == [0, 1, 2, 3]
