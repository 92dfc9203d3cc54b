"""pre_reorder / post_reorder against per-slot Python loops; untouched rows stay poisoned."""
import pytest
import torch

import reference
from tests.helpers import nan_like, random_ids

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
RANGES = [(0, 7), (2, 5), (0, 0), (7, 7)]  # all local, a middle range, first expert only, last only


def _routing(gen, T, K, E, invalid_frac=0.0):
    ids = random_ids(gen, T, K, E, invalid_frac=invalid_frac)
    if invalid_frac:
        _, src2dst, _ = reference.deepep_preprocess(ids, E)
    else:
        _, src2dst, _ = reference.ep_preprocess(ids, E)
    return ids, src2dst


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("start,end", RANGES, ids=str)
@pytest.mark.parametrize("invalid_frac", [0.0, 0.4])
def test_pre_reorder_copies_local_slots_only(gen, dtype, start, end, invalid_frac):
    T, K, E, H = 13, 3, 8, 37
    ids, src2dst = _routing(gen, T, K, E, invalid_frac)
    x = torch.randn(T, H, generator=gen, device=gen.device).to(dtype)
    out = nan_like((T * K, H), dtype, gen.device)
    reference.pre_reorder(x, out, src2dst, ids, None, start, end, K, H, 512)
    want = nan_like((T * K, H), dtype, gen.device)
    for t in range(T):
        for k in range(K):
            e = int(ids[t, k])
            if start <= e <= end:
                want[int(src2dst[t * K + k])] = x[t]
    assert torch.equal(out.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_pre_reorder_fp8_scales_per_expert(gen):
    T, K, E, H, start, end = 9, 2, 6, 20, 1, 4
    ids, src2dst = _routing(gen, T, K, E)
    x = torch.randn(T, H, generator=gen, device=gen.device).bfloat16()
    scales = (x.float().abs().max() / 448) * (1 + torch.rand(end - start + 1, generator=gen, device=gen.device))
    out = nan_like((T * K, H), torch.float8_e4m3fn, gen.device)
    reference.pre_reorder(x, out, src2dst, ids, scales, start, end, K, H, 512)
    for s in range(T * K):
        e, row = int(ids.flatten()[s]), int(src2dst[s])
        if start <= e <= end:
            want = (x[s // K].float() * (1.0 / scales[e - start])).to(torch.float8_e4m3fn)
            assert torch.equal(out[row].view(torch.uint8), want.view(torch.uint8))
        else:
            assert bool(out[row].float().isnan().all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("start,end", RANGES, ids=str)
def test_post_reorder_weighted_sum_per_token(gen, dtype, start, end):
    T, K, E, H = 11, 4, 8, 29
    ids, src2dst = _routing(gen, T, K, E, invalid_frac=0.2)
    down = torch.randn(T * K, H, generator=gen, device=gen.device).to(dtype)
    w = torch.rand(T, K, generator=gen, device=gen.device)
    out = nan_like((T, H), dtype, gen.device)
    reference.post_reorder(down, out, src2dst, ids, w, start, end, K, H, 512)
    for t in range(T):
        acc = torch.zeros(H, dtype=torch.float64, device=gen.device)
        for k in range(K):
            if start <= int(ids[t, k]) <= end:
                acc += down[int(src2dst[t * K + k])].double() * float(w[t, k])
        # float32 accumulation of <= K terms, then one rounding to dtype
        tol = 2 * torch.finfo(dtype).eps * acc.abs() + K * 2 ** -23 * acc.abs().max() + 1e-30
        assert bool(((out[t].double() - acc).abs() <= tol).all()), t
    assert not bool(out.isnan().any())   # every row is written, zeros where no expert is local


def test_post_reorder_token_without_local_expert_gets_zeros(gen):
    ids = torch.tensor([[0, 1], [5, 6]], dtype=torch.int32, device=gen.device)
    _, src2dst, _ = reference.ep_preprocess(ids, 8)
    down = torch.randn(4, 3, generator=gen, device=gen.device)
    out = nan_like((2, 3), torch.float32, gen.device)
    reference.post_reorder(down, out, src2dst, ids, torch.rand(2, 2, generator=gen, device=gen.device),
                           0, 1, 2, 3, 512)
    assert torch.equal(out[1], torch.zeros(3, device=gen.device))
    assert not bool(out[0].eq(0).all())


def test_empty_batch_leaves_outputs_empty(gen):
    ids = torch.empty(0, 2, dtype=torch.int32, device=gen.device)
    _, src2dst, _ = reference.ep_preprocess(ids, 4)
    x = torch.empty(0, 8, device=gen.device)
    out = torch.empty(0, 8, device=gen.device)
    reference.pre_reorder(x, out, src2dst, ids, None, 0, 3, 2, 8, 512)
    reference.post_reorder(out, x, src2dst, ids, torch.empty(0, 2, device=gen.device), 0, 3, 2, 8, 512)
    assert out.shape == (0, 8) and x.shape == (0, 8)
