"""reference/quant.py: UE8M0 rounding and packing by hand, the masked activation-quant ops
against per-row float64 formulations, the scale layouts of sglang_per_token_group_quant_fp8,
untouched rows, and one bad-input case per argument check."""
import pytest
import torch

from reference import quant as Q

FP8 = torch.float8_e4m3fn


def bits(t):
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def masked_input(gen, E, m_max, width, dtype=torch.float32, scale=3.0):
    x = (torch.randn(E, m_max, width, generator=gen, device=gen.device) * scale).to(dtype)
    masked_m = torch.randint(0, m_max + 1, (E,), generator=gen, device=gen.device, dtype=torch.int32)
    masked_m[0], masked_m[-1] = m_max, 0                                  # a full expert and an empty one
    return x, masked_m


def live_rows(masked_m, m_max):
    return torch.arange(m_max, device=masked_m.device)[None, :] < masked_m[:, None].long()


def group_scale_f64(y, group_size):
    """max(amax, 1e-10) / 448 per group of columns, in float64 then float32 (one rounding)."""
    return (y.double().view(y.shape[0], -1, group_size).abs().amax(2).clamp_min(1e-10) / 448).float()


# --------------------------------------------------------------------------- UE8M0


def test_ue8m0_rounding_by_hand(gen):
    s = torch.tensor([1.0, 1.5, 0.25, 0.2, 2.0 ** -20 * (1 + 2.0 ** -23), 3.0 * 2.0 ** 10], device=gen.device)
    assert Q.ceil_to_ue8m0_exponent(s).tolist() == [127, 128, 125, 125, 108, 139]
    assert Q.ceil_to_ue8m0(s).tolist() == [1.0, 2.0, 0.25, 0.25, 2.0 ** -19, 4096.0]


def test_ue8m0_packing_by_hand(gen):
    exps = torch.tensor([[127, 128, 1, 2, 3], [0, 0, 0, 255, 254]], dtype=torch.int32, device=gen.device)
    packed = Q.pack_ue8m0_exponents(exps)
    assert packed.dtype == torch.int32 and packed.shape == (2, 2)
    assert packed[0].tolist() == [127 | 128 << 8 | 1 << 16 | 2 << 24, 3]          # pad bytes of word 1 are 0
    assert packed[1].tolist() == [(255 << 24) - 2 ** 32, 254]
    assert torch.equal(Q.unpack_ue8m0_exponents(packed, 5), exps)


# --------------------------------------------------------------------------- masked activations


def test_silu_and_mul_masked_fwd_rows_below_masked_m(gen):
    E, m_max, n = 3, 6, 40
    x, masked_m = masked_input(gen, E, m_max, 2 * n, torch.bfloat16)
    out = Q.poisoned((E, m_max, n), torch.bfloat16, gen.device)
    assert Q.silu_and_mul_masked_fwd(x, out, masked_m) is out
    live = live_rows(masked_m, m_max)
    for e, t in live.nonzero().tolist():
        g, u = x[e, t, :n].double(), x[e, t, n:].double()
        want = (g / (1 + torch.exp(-g)) * u).float().bfloat16()     # one rounding of the float32 product
        assert torch.allclose(out[e, t].float(), want.float(), rtol=2 ** -8, atol=0), (e, t)
    assert bool(out[~live].isnan().all())


def quant_reference_rows(y, group_size, ue8m0):
    """Per-group loop: (fp8 rows, float32 scales) by the module's rule."""
    scale = group_scale_f64(y, group_size)
    if ue8m0:
        scale = torch.tensor([[2.0 ** torch.ceil(torch.log2(v.double())).item() for v in row] for row in scale],
                             dtype=torch.float32, device=y.device)
    q = (y.float().view(y.shape[0], -1, group_size) / scale[:, :, None]).clamp(-448, 448).to(FP8)
    return q.view(y.shape), scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("ue8m0", [False, True])
def test_silu_and_mul_masked_post_quant_fp32_scales(gen, dtype, ue8m0):
    E, m_max, n, gs = 3, 5, 256, 64
    x, masked_m = masked_input(gen, E, m_max, 2 * n, dtype)
    out = Q.poisoned((E, m_max, n), FP8, gen.device)
    scale = Q.poisoned((E, n // gs, m_max), torch.float32, gen.device).transpose(1, 2)   # a column-major scale view
    Q.silu_and_mul_masked_post_quant_fwd(x, out, scale, gs, masked_m, scale_ue8m0=ue8m0)
    live = live_rows(masked_m, m_max)
    rows = x[live].double()
    act = (rows[:, :n] / (1 + torch.exp(-rows[:, :n]))).to(dtype).double()   # SiLU rounded to the input dtype
    y = (act * rows[:, n:]).to(dtype)                                      # product rounded to it too
    want_q, want_s = quant_reference_rows(y, gs, ue8m0)
    assert torch.allclose(scale[live], want_s, rtol=2 ** -20, atol=0)     # float32 SiLU vs float64 SiLU
    steps = (bits(out[live]).to(torch.int32) - bits(want_q).to(torch.int32)).abs()
    assert int(steps.max()) <= 1                                          # fp8 neighbours at most (float32 SiLU)
    assert bool(out[~live].float().isnan().all()) and bool(scale[~live].isnan().all())


def test_post_quant_zero_group_gets_eps_scale(gen):
    x = torch.zeros(1, 1, 8, device=gen.device)
    x[0, 0, 4:] = torch.rand(4, generator=gen, device=gen.device) + 1      # up != 0, gate = 0: silu(0) * up = 0
    out, scale = torch.empty(1, 1, 4, dtype=FP8, device=gen.device), torch.empty(1, 1, 1, device=gen.device)
    Q.silu_and_mul_masked_post_quant_fwd(x, out, scale, 4, torch.tensor([1], device=gen.device))
    assert float(scale) == float(torch.tensor(1e-10) / 448) and bool((out.float() == 0).all())


def test_group_quant_hand_example(gen):
    x = torch.tensor([[1.0, -2.0, 0.5, 4.0]], device=gen.device)           # amax 4: scale 1/112 (UE8M0: 1/64)
    q, s = Q.sglang_per_token_group_quant_fp8(x, 4)
    assert q.float().tolist() == [[112.0, -224.0, 56.0, 448.0]]
    assert s.tolist() == [[float(torch.tensor(4.0, dtype=torch.float32) / 448)]]
    q, s = Q.sglang_per_token_group_quant_fp8(x, 4, scale_ue8m0=True)
    assert q.float().tolist() == [[64.0, -128.0, 32.0, 256.0]] and s.tolist() == [[1.0 / 64]]


def test_post_quant_packed_equals_float_ue8m0(gen):
    """The int32 layout holds exactly the exponents of the float32 UE8M0 scales, MN-major."""
    E, m_max, n, gs = 2, 6, 512, 32
    x, masked_m = masked_input(gen, E, m_max, 2 * n, torch.bfloat16)
    q_f, s_f = Q.poisoned((E, m_max, n), FP8, gen.device), Q.poisoned((E, m_max, n // gs), torch.float32, gen.device)
    q_p, s_p = Q.poisoned((E, m_max, n), FP8, gen.device), Q.poisoned((E, n // gs // 4, m_max), torch.int32, gen.device)
    Q.silu_and_mul_masked_post_quant_fwd(x, q_f, s_f, gs, masked_m, scale_ue8m0=True)
    Q.silu_and_mul_masked_post_quant_fwd(x, q_p, s_p, gs, masked_m, scale_ue8m0=True,
                                         num_real_tokens=int(masked_m.sum()), topk=1)
    live = live_rows(masked_m, m_max)
    assert torch.equal(bits(q_p), bits(q_f))
    exps = Q.unpack_ue8m0_exponents(s_p.transpose(1, 2)[live], n // gs)
    assert torch.equal(Q.ue8m0_exponent_to_scale(exps), s_f[live])
    assert bool((s_p.transpose(1, 2)[~live] == -1).all())               # untouched


def test_post_quant_swiglu_variant(gen):
    E, m_max, n, gs, alpha, limit = 2, 4, 128, 128, 1.702, 7.0
    x, masked_m = masked_input(gen, E, m_max, 2 * n, torch.float32, scale=6.0)
    out, scale = Q.poisoned((E, m_max, n), FP8, gen.device), Q.poisoned((E, m_max, 1), torch.float32, gen.device)
    Q.silu_and_mul_masked_post_quant_fwd(x, out, scale, gs, masked_m, gemm1_alpha=alpha, gemm1_clamp_limit=limit)
    live = live_rows(masked_m, m_max)
    rows = x[live].double()
    g = rows[:, :n].clamp(max=limit)
    y = g * torch.sigmoid(alpha * g) * (rows[:, n:].clamp(-limit, limit) + 1)
    want_s = group_scale_f64(y, gs)
    assert torch.allclose(scale[live], want_s, rtol=2 ** -20, atol=0)
    dequant = out[live].double() * scale[live].double()
    assert bool(((dequant - y).abs() <= y.abs() * 2 ** -4 + want_s.double() * 2 ** -6).all())


def test_post_per_tensor_quant_reads_first_scale_only(gen):
    E, m_max, n = 3, 5, 96
    x, masked_m = masked_input(gen, E, m_max, 2 * n)
    s0 = torch.tensor([0.02], device=gen.device)
    outs = [Q.poisoned((E, m_max, n), FP8, gen.device) for _ in range(2)]
    Q.silu_and_mul_masked_post_per_tensor_quant_fwd(x, outs[0], masked_m, s0)
    per_expert = torch.cat([s0, torch.tensor([100.0, 5.0], device=gen.device)])
    Q.silu_and_mul_masked_post_per_tensor_quant_fwd(x, outs[1], masked_m, per_expert)
    assert torch.equal(bits(outs[0]), bits(outs[1]))                     # 0.5.23's kernel uses scale[0] for all experts
    live = live_rows(masked_m, m_max)
    rows = x[live].double()
    y = rows[:, n:] * (rows[:, :n] / (1 + torch.exp(-rows[:, :n]))).float().double()
    want = (y / 0.02).clamp(-448, 448)
    assert bool(((outs[0][live].double() - want).abs() <= want.abs() * 2 ** -4 + 2 ** -9).all())
    assert bool(outs[0][~live].float().isnan().all())


def test_fp8_per_token_to_per_tensor_requant(gen):
    E, m, k = 3, 7, 256
    x = (torch.randn(E, m, k, generator=gen, device=gen.device) * 40).to(FP8)
    x_scale = (torch.rand(E, k // 128, m, generator=gen, device=gen.device) + 0.1).transpose(1, 2)
    masked_m = torch.tensor([7, 0, 3], dtype=torch.int64, device=gen.device)
    out_scale = torch.tensor([0.5], device=gen.device)
    out = Q.poisoned((E, m, k), FP8, gen.device)
    Q.fp8_per_token_to_per_tensor_quant_triton(x, x_scale, masked_m, out_scale, out, expected_rows=2)
    for e in range(E):
        for t in range(m):
            if t < int(masked_m[e]):
                dq = x[e, t].float() * x_scale[e, t].repeat_interleave(128)
                want = (dq * (1 / out_scale)).clamp(-448, 448).to(FP8)
                assert torch.equal(bits(out[e, t]), bits(want)), (e, t)
            else:
                assert bool(out[e, t].float().isnan().all())


# --------------------------------------------------------------------------- per-token-group layouts


LAYOUTS = [  # column_major, tma_aligned, ue8m0, expected (dtype, stride builder)
    (False, False, False, torch.float32, lambda m, g: (g, 1)),
    (True, False, False, torch.float32, lambda m, g: (1, m)),
    (True, True, False, torch.float32, lambda m, g: (1, -(-m // 4) * 4)),
    (False, False, True, torch.float32, lambda m, g: (g, 1)),
    (True, True, True, torch.int32, lambda m, g: (1, -(-m // 4) * 4)),
]


@pytest.mark.parametrize("col,tma,ue8m0,sdtype,strides", LAYOUTS, ids=lambda v: str(v) if not callable(v) else "")
def test_group_quant_scale_layouts(gen, col, tma, ue8m0, sdtype, strides):
    m, k, gs = 13, 640, 128                                              # G = 5: the packed layout pads to 8 groups
    x = (torch.randn(m, k, generator=gen, device=gen.device) * 2).bfloat16()
    q, s = Q.sglang_per_token_group_quant_fp8(x, gs, column_major_scales=col, scale_tma_aligned=tma,
                                             scale_ue8m0=ue8m0)
    width = 2 if sdtype == torch.int32 else 5
    assert s.dtype == sdtype and s.shape == (m, width) and s.stride() == strides(m, width)
    want_q, want_s = quant_reference_rows(x.float(), gs, ue8m0)
    assert torch.equal(bits(q), bits(want_q))
    if sdtype == torch.int32:
        exps = Q.unpack_ue8m0_exponents(s, 8)
        assert torch.equal(Q.ue8m0_exponent_to_scale(exps[:, :5]), want_s)
        assert bool((exps[:, 5:] == 0).all())                           # pad bytes are zero
    else:
        assert torch.equal(s, want_s)


def test_group_quant_masked_fused_matches_post_quant(gen):
    """SGLang tests its fused masked CUDA path against silu_and_mul_masked_post_quant_fwd; so do we."""
    E, m_max, n, gs = 3, 8, 512, 128
    x, masked_m = masked_input(gen, E, m_max, 2 * n, torch.bfloat16)
    q, s = Q.sglang_per_token_group_quant_fp8(x, gs, column_major_scales=True, scale_tma_aligned=True,
                                             scale_ue8m0=True, fuse_silu_and_mul=True, masked_m=masked_m)
    q2, s2 = Q.poisoned((E, m_max, n), FP8, gen.device), Q.poisoned((E, m_max, n // gs), torch.float32, gen.device)
    Q.silu_and_mul_masked_post_quant_fwd(x, q2, s2, gs, masked_m, scale_ue8m0=True)
    live = live_rows(masked_m, m_max)
    assert s.shape == (E, m_max, 1) and s.stride() == (8, 1, 8)
    assert torch.equal(bits(q[live]), bits(q2[live]))
    assert torch.equal(Q.ue8m0_exponent_to_scale(Q.unpack_ue8m0_exponents(s[live], 4)), s2[live])
    assert bool(q[~live].float().isnan().all())


def test_group_quant_writes_given_buffers(gen):
    x = torch.randn(6, 256, generator=gen, device=gen.device)
    q = torch.zeros(6, 256, dtype=FP8, device=gen.device)
    s = torch.zeros(6, 2, device=gen.device)
    rq, rs = Q.sglang_per_token_group_quant_fp8(x, 128, output_q=q, output_s=s)
    assert rq is q and rs is s
    want_q, want_s = quant_reference_rows(x, 128, False)
    assert torch.equal(bits(q), bits(want_q)) and torch.equal(s, want_s)


# --------------------------------------------------------------------------- bad inputs


def _dev(g):
    return g.device


BAD = [
    (lambda g: Q.silu_and_mul_masked_fwd(torch.randn(2, 3, 7, device=_dev(g)), torch.empty(2, 3, 3, device=_dev(g)),
                                         torch.zeros(2, dtype=torch.int32, device=_dev(g))), ValueError, "input"),
    (lambda g: Q.silu_and_mul_masked_fwd(torch.randn(2, 3, 8, device=_dev(g)),
                                         torch.empty(2, 3, 4, dtype=torch.bfloat16, device=_dev(g)),
                                         torch.zeros(2, dtype=torch.int32, device=_dev(g))), TypeError, "output"),
    (lambda g: Q.silu_and_mul_masked_fwd(torch.randn(2, 3, 8, device=_dev(g)), torch.empty(2, 3, 4, device=_dev(g)),
                                         torch.tensor([1, 4], dtype=torch.int32, device=_dev(g))), ValueError,
     "masked_m"),
    (lambda g: Q.silu_and_mul_masked_fwd(torch.randn(2, 3, 8, device=_dev(g)), torch.empty(2, 3, 4, device=_dev(g)),
                                         torch.zeros(3, dtype=torch.int32, device=_dev(g))), ValueError, "masked_m"),
    (lambda g: Q.silu_and_mul_masked_fwd(torch.randn(2, 3, 8, device=_dev(g)), torch.empty(2, 3, 4, device=_dev(g)),
                                         torch.zeros(2, device=_dev(g))), TypeError, "masked_m"),
]


def _pq(g, **over):
    """A valid silu_and_mul_masked_post_quant_fwd call, with some arguments replaced."""
    dev = _dev(g)
    args = dict(input=torch.randn(2, 4, 512, device=dev), output=torch.empty(2, 4, 256, dtype=FP8, device=dev),
                output_scale=torch.empty(2, 4, 2, device=dev), quant_group_size=128,
                masked_m=torch.tensor([4, 1], dtype=torch.int32, device=dev))
    args.update(over)
    return Q.silu_and_mul_masked_post_quant_fwd(**args)


BAD += [
    (lambda g: _pq(g, output=torch.empty(2, 4, 256, device=_dev(g))), TypeError, "output"),
    (lambda g: _pq(g, quant_group_size=100), ValueError, "quant_group_size"),
    (lambda g: _pq(g, quant_group_size=0), ValueError, "quant_group_size"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 4, 3, device=_dev(g))), ValueError, "output_scale"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 4, 2, dtype=torch.float64, device=_dev(g))), TypeError,
     "output_scale"),
    (lambda g: _pq(g, scale_ue8m0=1), TypeError, "scale_ue8m0"),
    (lambda g: _pq(g, gemm1_alpha=float("nan")), ValueError, "gemm1_alpha"),
    (lambda g: _pq(g, gemm1_clamp_limit="7"), TypeError, "gemm1_clamp_limit"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 1, 4, dtype=torch.int32, device=_dev(g)), quant_group_size=64,
                   num_real_tokens=5, topk=1), ValueError, "scale_ue8m0"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 1, 4, dtype=torch.int32, device=_dev(g)), quant_group_size=128,
                   scale_ue8m0=True, num_real_tokens=5, topk=1), ValueError, "quant_group_size"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 1, 4, dtype=torch.int32, device=_dev(g)), quant_group_size=64,
                   scale_ue8m0=True, topk=1), TypeError, "num_real_tokens"),
    (lambda g: _pq(g, output_scale=torch.empty(2, 1, 4, dtype=torch.int32, device=_dev(g)), quant_group_size=64,
                   scale_ue8m0=True, num_real_tokens=2, topk=2), ValueError, "masked_m"),   # 5 rows > 2 * 2
    (lambda g: _pq(g, output_scale=torch.empty(2, 4, 1, dtype=torch.int32, device=_dev(g)), quant_group_size=64,
                   scale_ue8m0=True, num_real_tokens=5, topk=1), ValueError, "output_scale"),  # not MN-major shape
    (lambda g: Q.silu_and_mul_masked_post_per_tensor_quant_fwd(
        torch.randn(2, 3, 8, device=_dev(g)), torch.empty(2, 3, 4, dtype=FP8, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(3, device=_dev(g))), ValueError, "scale"),
    (lambda g: Q.silu_and_mul_masked_post_per_tensor_quant_fwd(
        torch.randn(2, 3, 8, device=_dev(g)), torch.empty(2, 3, 4, dtype=FP8, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(1, dtype=torch.float64, device=_dev(g))),
     TypeError, "scale"),
    (lambda g: Q.fp8_per_token_to_per_tensor_quant_triton(
        torch.zeros(2, 3, 100, dtype=FP8, device=_dev(g)), torch.ones(2, 3, 1, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(1, device=_dev(g)),
        torch.empty(2, 3, 100, dtype=FP8, device=_dev(g))), ValueError, "x"),
    (lambda g: Q.fp8_per_token_to_per_tensor_quant_triton(
        torch.zeros(2, 3, 128, device=_dev(g)), torch.ones(2, 3, 1, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(1, device=_dev(g)),
        torch.empty(2, 3, 128, dtype=FP8, device=_dev(g))), TypeError, "x"),
    (lambda g: Q.fp8_per_token_to_per_tensor_quant_triton(
        torch.zeros(2, 3, 128, dtype=FP8, device=_dev(g)), torch.ones(2, 3, 2, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(1, device=_dev(g)),
        torch.empty(2, 3, 128, dtype=FP8, device=_dev(g))), ValueError, "x_scale"),
    (lambda g: Q.fp8_per_token_to_per_tensor_quant_triton(
        torch.zeros(2, 3, 128, dtype=FP8, device=_dev(g)), torch.ones(2, 3, 1, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(2, device=_dev(g)),
        torch.empty(2, 3, 128, dtype=FP8, device=_dev(g))), ValueError, "output_scale"),
    (lambda g: Q.fp8_per_token_to_per_tensor_quant_triton(
        torch.zeros(2, 3, 128, dtype=FP8, device=_dev(g)), torch.ones(2, 3, 1, device=_dev(g)),
        torch.zeros(2, dtype=torch.int32, device=_dev(g)), torch.ones(1, device=_dev(g)),
        torch.empty(2, 3, 128, dtype=FP8, device=_dev(g)), expected_rows=-1), ValueError, "expected_rows"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 100, device=_dev(g)), 128), ValueError,
     "group_size"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 128, device=_dev(g)), 128, eps=1e-6), ValueError,
     "eps"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(128, device=_dev(g)), 128), ValueError, "x"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 128, device=_dev(g)), 128, column_major_scales=True,
                                                  scale_ue8m0=True), ValueError, "scale_tma_aligned"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(2, 4, 128, device=_dev(g)), 128,
                                                  column_major_scales=True), ValueError, "column_major_scales"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128, fuse_silu_and_mul=True),
     TypeError, "x"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128,
                                                  masked_m=torch.zeros(4, dtype=torch.int32, device=_dev(g))),
     ValueError, "x"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128,
                                                  output_s=torch.empty(4, 1, dtype=torch.int32, device=_dev(g))),
     ValueError, "scale_ue8m0"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128,
                                                  output_s=torch.empty(4, 3, device=_dev(g))), ValueError, "output_s"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128,
                                                  output_q=torch.empty(4, 256, device=_dev(g))), TypeError, "output_q"),
    (lambda g: Q.sglang_per_token_group_quant_fp8(torch.randn(4, 256, device=_dev(g)), 128, scale_ue8m0="yes"),
     TypeError, "scale_ue8m0"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[c[2] + str(i) for i, c in enumerate(BAD)])
def test_quant_ops_reject(gen, call, exc, name):
    with pytest.raises(exc, match=name):
        call(gen)


def test_valid_post_quant_base_passes(gen):
    _pq(gen)                   # the base of the rows above is itself valid
