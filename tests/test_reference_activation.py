"""silu_and_mul / gelu_and_mul against a row-by-row float64 formulation with the same roundings."""
import pytest
import torch

import reference
from tests.helpers import gelu_tanh_f64, nan_like, silu_f64

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _expected_row(row, act, in_dtype, inv_scale):
    half = row.numel() // 2
    gate, up = row[:half].double(), row[half:].double()
    a = act(gate).to(in_dtype).double()            # the contract rounds act(gate) to the input dtype
    out = a * up
    if inv_scale is not None:
        out = out * torch.tensor(inv_scale).to(in_dtype).double()
    return out


@pytest.mark.parametrize("op,act", [(reference.silu_and_mul, silu_f64), (reference.gelu_and_mul, gelu_tanh_f64)],
                         ids=["silu", "gelu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_scales", [False, True])
def test_act_and_mul_rows(gen, op, act, dtype, with_scales):
    M, I, E, start, end = 23, 19, 6, 1, 3
    ids = torch.sort(torch.randint(0, E, (M,), generator=gen, device=gen.device)).values.to(torch.int32)
    x = (torch.randn(M, 2 * I, generator=gen, device=gen.device) * 2).to(dtype)
    scales = torch.rand(end - start + 1, generator=gen, device=gen.device) + 0.5 if with_scales else None
    out = nan_like((M, I), dtype, gen.device)
    op(x, out, 2 * I, ids, scales, start, end, 512)
    u = torch.finfo(dtype).eps
    for m in range(M):
        e = int(ids[m])
        if not start <= e <= end:
            assert bool(out[m].isnan().all()), m
            continue
        inv = None if scales is None else 1.0 / float(scales[e - start])
        want = _expected_row(x[m], act, dtype, inv)
        # float32 product of already-rounded factors, then one rounding to dtype; the float32
        # activation may round to the other neighbour of the float64 one (one more ulp), and
        # 1 + tanh(z) cancels for negative z, leaving an absolute error of a few float32 ulps
        # of |gate| (times |up|).
        half = I
        operand = x[m, :half].double().abs() * x[m, half:].double().abs()
        tol = 3 * u * want.abs() + 8 * 2 ** -24 * operand * (1 if inv is None else inv) + 1e-30
        assert bool(((out[m].double() - want).abs() <= tol).all()), m


def test_act_and_mul_fp8_output_saturates_and_rounds(gen):
    M, I = 8, 16
    ids = torch.zeros(M, dtype=torch.int32, device=gen.device)
    x = torch.randn(M, 2 * I, generator=gen, device=gen.device).bfloat16()
    scales = torch.tensor([0.01], device=gen.device)
    out = nan_like((M, I), torch.float8_e4m3fn, gen.device)
    reference.silu_and_mul(x, out, 2 * I, ids, scales, 0, 0, 512)
    want = _expected_row(x[0], silu_f64, torch.bfloat16, 100.0).clamp(-448, 448).float().to(torch.float8_e4m3fn)
    assert torch.equal(out[0].view(torch.uint8), want.view(torch.uint8))
