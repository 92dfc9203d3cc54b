"""grouped_gemm against a row-by-row float64 loop; per_token_group_quant_fp8 against its definition."""
import math

import pytest
import torch

import reference
from tests.helpers import nan_like


def _segments(gen, sizes, start):
    seg = [start]
    for s in sizes:
        seg.append(seg[-1] + s)
    return torch.tensor(seg, dtype=torch.int64, device=gen.device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_grouped_gemm_rows_outside_segments_untouched(gen, dtype):
    M, N, Kd, E_w = 30, 12, 40, 5
    seg = _segments(gen, [4, 0, 7, 1], start=3)                  # starts above 0, one empty group
    wi = torch.tensor([2, 0, 4, 1], dtype=torch.int64, device=gen.device)
    a = torch.randn(M, Kd, generator=gen, device=gen.device).to(dtype)
    b = (torch.randn(E_w, N, Kd, generator=gen, device=gen.device) / math.sqrt(Kd)).to(dtype)
    c = nan_like((M, N), dtype, gen.device)
    reference.grouped_gemm(a, b, c, 4, True, seg, wi, False, None, None, None)
    bounds = seg.tolist()
    for g in range(4):
        for r in range(bounds[g], bounds[g + 1]):
            want = a[r].double() @ b[int(wi[g])].double().T
            mag = a[r].double().abs() @ b[int(wi[g])].double().abs().T
            tol = torch.finfo(dtype).eps * want.abs() + Kd * 2 ** -24 * mag + 1e-30
            assert bool(((c[r].double() - want).abs() <= tol).all()), (g, r)
    outside = [r for r in range(M) if not bounds[0] <= r < bounds[-1]]
    assert bool(c[outside].isnan().all())


def test_grouped_gemm_fp8_per_tensor_applies_both_scales(gen):
    M, N, Kd, E_w = 6, 8, 32, 3
    seg = _segments(gen, [2, 4], start=0)
    wi = torch.tensor([2, 1], dtype=torch.int64, device=gen.device)
    a = (torch.randn(M, Kd, generator=gen, device=gen.device) * 8).to(torch.float8_e4m3fn)
    b = (torch.randn(E_w, N, Kd, generator=gen, device=gen.device) * 8).to(torch.float8_e4m3fn)
    sa = torch.rand(E_w, generator=gen, device=gen.device) + 0.1
    sb = torch.rand(E_w, generator=gen, device=gen.device) + 0.1
    c = nan_like((M, N), torch.bfloat16, gen.device)
    reference.grouped_gemm(a, b, c, 2, True, seg, wi, True, sa, sb, None)
    for g, (lo, hi) in enumerate([(0, 2), (2, 6)]):
        e = int(wi[g])
        want = (a[lo:hi].double() @ b[e].double().T) * float(sa[e]) * float(sb[e])
        assert torch.allclose(c[lo:hi].double(), want, rtol=2 ** -7, atol=1e-6)


def test_per_token_group_quant_fp8_definition(gen):
    x = torch.randn(5, 300, generator=gen, device=gen.device).bfloat16()      # 300 = 2 full groups + 44
    q, s = reference.per_token_group_quant_fp8(x, 128)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 3)
    for r in range(5):
        for g in range(3):
            cols = slice(g * 128, min(300, (g + 1) * 128))
            amax = x[r, cols].float().abs().max()
            assert float(s[r, g]) == pytest.approx(float(amax) / 448, rel=1e-6)
            want = (x[r, cols].float() / s[r, g]).clamp(-448, 448).to(torch.float8_e4m3fn)
            assert torch.equal(q[r, cols].view(torch.uint8), want.view(torch.uint8))


def test_grouped_gemm_fp8_blockwise_matches_dequantised_product(gen):
    M, N, Kd, bn, bk = 7, 20, 70, 16, 32                          # partial blocks in both N and Kd
    seg = _segments(gen, [3, 4], start=0)
    wi = torch.tensor([1, 0], dtype=torch.int64, device=gen.device)
    a = torch.randn(M, Kd, generator=gen, device=gen.device).bfloat16()
    b = (torch.randn(2, N, Kd, generator=gen, device=gen.device) * 16).to(torch.float8_e4m3fn)
    sb = torch.rand(2, 2, 3, generator=gen, device=gen.device) / 100 + 1e-3
    c = nan_like((M, N), torch.bfloat16, gen.device)
    reference.grouped_gemm(a, b, c, 2, True, seg, wi, True, None, sb, [bn, bk])
    q, sa = reference.per_token_group_quant_fp8(a, bk)
    for g, (lo, hi) in enumerate([(0, 3), (3, 7)]):
        e = int(wi[g])
        acc = torch.zeros(hi - lo, N, dtype=torch.float64, device=gen.device)
        for kb in range(3):                                        # block by block, as the contract says
            ks = slice(kb * bk, min(Kd, (kb + 1) * bk))
            part = q[lo:hi, ks].double() @ b[e, :, ks].double().T
            col_scale = sb[e, torch.arange(N, device=gen.device) // bn, kb].double()
            acc += part * sa[lo:hi, kb, None].double() * col_scale[None, :]
        assert torch.allclose(c[lo:hi].double(), acc, rtol=2 ** -7, atol=1e-5)
