"""reference/cutlass.py and reference/zero_experts.py: indices exactly (hand-worked and against
loops), the local-slot gate with both dropped-slot markers (-1, the num_local_experts
sentinel), fp8 clamping, the device-held token count, untouched rows and elements, the
in-place rewrites of zero_experts_compute_triton, and bad-input tables."""
import pytest
import torch

from reference import cutlass as C
from reference.zero_experts import zero_experts_compute_triton

FP8 = torch.float8_e4m3fn


def local_ids(gen, T, K, E_local):
    """[T, K] int32 local ids with -1 and the sentinel E_local for dropped slots."""
    ids = torch.randint(0, E_local, (T, K), generator=gen, dtype=torch.int32)
    marker = torch.rand(T, K, generator=gen)
    ids = torch.where(marker < 0.15, -1, ids)
    return torch.where((marker >= 0.15) & (marker < 0.3), E_local, ids).contiguous()


def rows(gen, n, H, scale=3.0):
    return torch.randn(n, H, generator=gen) * scale + 0.25


# --------------------------------------------------------------------------- indices


def test_cutlass_w4_preproess_hand_worked_and_loop(gen):
    ids = torch.tensor([[2, -1], [0, 3], [1, -1]], dtype=torch.int32)   # 3 = sentinel
    assert C.cutlass_w4_run_moe_ep_preproess(ids).tolist() == [2, -1, 0, 3, 1, -1]
    ids = local_ids(gen, 15, 4, 5)
    got = C.cutlass_w4_run_moe_ep_preproess(ids)
    flat = ids.reshape(-1).tolist()
    n_neg = sum(e < 0 for e in flat)
    for s, e in enumerate(flat):
        pos = sum(f < e or (f == e and r < s) for r, f in enumerate(flat))
        assert int(got[s]) == (-1 if e < 0 else pos - n_neg)
    assert C.cutlass_w4_run_moe_ep_preproess(torch.empty(0, 4, dtype=torch.int32)).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_problem_sizes_written_for_first_experts_only(gen, dtype):
    masked_m = torch.randint(0, 300, (6,), generator=gen, dtype=torch.int32)
    ps1 = torch.randint(-50, -1, (7, 3), generator=gen).to(dtype)
    ps2 = torch.randint(-50, -1, (7, 3), generator=gen).to(dtype)
    keep1, keep2 = ps1.clone(), ps2.clone()
    out1, out2 = C.deepep_ll_get_cutlass_w4a8_moe_mm_data(masked_m, ps1, ps2, 5, 96, 160)
    for e in range(5):
        assert ps1[e].tolist() == [192, int(masked_m[e]), 160]
        assert ps2[e].tolist() == [160, int(masked_m[e]), 96]
    assert torch.equal(ps1[5:], keep1[5:]) and torch.equal(ps2[5:], keep2[5:])
    assert out1.dtype == torch.int32 and torch.equal(out1, ps1.to(torch.int32)) and torch.equal(out2, ps2.int())
    assert (out1 is ps1) == (dtype == torch.int32)


# --------------------------------------------------------------------------- scales


def test_input_scale_reads_active_rows_only(gen):
    T, H, E = 9, 16, 3
    x = rows(gen, T, H)
    ids = local_ids(gen, T, 2, E)
    ids[0] = torch.tensor([-1, E])            # inactive row: a huge value there must not count
    x[0, 3] = 1e6
    ids[1] = torch.tensor([0, -1])
    x[2, 5] = float("nan")
    ids[2] = torch.tensor([E, E])
    out = torch.tensor([1e-10 / 448])
    C.compute_cutlass_w4a8_moe_input_scale(x, ids, out, E)
    active = [t for t in range(T) if any(0 <= int(e) < E for e in ids[t])]
    want = max(float(x[t].abs().max()) for t in active) / 448
    assert out.item() == pytest.approx(want, rel=1e-6)
    big = torch.tensor([5.0])                 # an already larger scale stays
    C.compute_cutlass_w4a8_moe_input_scale(x, ids, big, E)
    assert big.item() == 5.0


# --------------------------------------------------------------------------- reorder


def test_pre_reorder_gate_scale_clamp_and_untouched_rows(gen):
    T, K, H, E = 10, 3, 8, 4
    x = rows(gen, T, H, scale=40.0)
    x[1, 2] = 5000.0                          # saturates at 448 after scaling
    ids = local_ids(gen, T, K, E)
    ids[1, 0] = 0
    src2dst = torch.randperm(T * K, generator=gen).to(torch.int32)
    a1 = torch.tensor([0.37])
    out = torch.full((T * K, H), float("nan")).to(FP8)
    C.pre_reorder_for_cutlass_moe(x, out, src2dst, ids, a1, E, K, T - 2, H)   # last two tokens not processed
    written = set()
    for t in range(T - 2):
        for k in range(K):
            if 0 <= int(ids[t, k]) < E:
                d = int(src2dst[t * K + k])
                written.add(d)
                want = (x[t] * (1.0 / a1[0])).clamp(-448, 448).to(FP8)
                assert torch.equal(out[d].view(torch.uint8), want.view(torch.uint8))
    assert float(out[int(src2dst[1 * K])][2]) == 448.0
    for r in set(range(T * K)) - written:
        assert bool(out[r].float().isnan().all()), f"row {r} has no local slot and must be left as it was"


def test_post_reorder_sum_factor_and_rows_past_num_tokens(gen):
    T, K, H, E = 7, 3, 5, 3
    ids = local_ids(gen, T, K, E)
    down = rows(gen, T * K, H)
    src2dst = torch.randperm(T * K, generator=gen).to(torch.int32)
    w = torch.rand(T, K, generator=gen)
    out = torch.full((T, H), -7.0)
    C.post_reorder_for_cutlass_moe(down, out, src2dst, ids, w, E, K, T - 1, H, 1.5)
    for t in range(T - 1):
        want = torch.zeros(H, dtype=torch.float64)
        for k in range(K):
            if 0 <= int(ids[t, k]) < E:
                want += down[int(src2dst[t * K + k])].double() * float(w[t, k])
        torch.testing.assert_close(out[t].double(), want * 1.5, rtol=1e-6, atol=1e-6)
    assert out[T - 1].tolist() == [-7.0] * H


# --------------------------------------------------------------------------- silu-mul quant


def silu_mul(x, I):
    g, u = x[:, :I].double(), x[:, I:].double()
    return g * torch.sigmoid(g) * u


def test_static_quant_uses_the_device_token_count(gen):
    M, I = 12, 16
    x = rows(gen, M, 2 * I)
    scale = torch.tensor([0.02])
    out = torch.full((M, I), float("nan")).to(FP8)
    C.silu_mul_static_tensorwise_quant_for_cutlass_moe(x, out, scale, torch.tensor([9], dtype=torch.int32), 4, I)
    want = (silu_mul(x[:9], I) / 0.02).clamp(-448, 448)
    got = out[:9].double()
    # one fp8 step of slack for values near a rounding boundary (float32 vs float64 silu)
    assert bool(((got - want).abs() <= want.abs() * 2 ** -3 + 2 ** -9).all())
    assert bool((got.abs() == 448).any()), "the case must exercise the clamp"
    assert bool(out[9:].float().isnan().all()), "rows past the device count are left as they were"


def test_dynamic_quant_scale_and_zeroing(gen):
    M, I = 6, 8
    x = rows(gen, M, 2 * I)
    scale = torch.tensor([9.0, 9.0])
    out = torch.zeros(M, I, dtype=FP8)
    C.silu_mul_dynamic_tensorwise_quant_for_cutlass_moe(x, out, scale, torch.tensor([4]), M, I)
    amax = float(silu_mul(x[:4], I).abs().max())
    assert scale[0].item() == pytest.approx(amax / 448, rel=1e-6) and scale[1].item() == 0.0
    assert float(out[:4].float().abs().max()) == 448.0, "the largest value maps to 448"
    zero = torch.tensor([9.0])
    C.silu_mul_dynamic_tensorwise_quant_for_cutlass_moe(x, out, zero, torch.tensor([0]), M, I)
    assert zero.item() == pytest.approx(1e-10 / 448), "no rows: the amax floor 1e-10"


# --------------------------------------------------------------------------- zero experts


def test_zero_experts_identity_and_in_place_rewrites(gen):
    T, K, H, E = 6, 3, 512, 4
    ids = torch.randint(-1, E + 2, (T, K), generator=gen, dtype=torch.int32)
    ids[0] = torch.tensor([0, 1, 2])          # no zero expert: zeros
    ids[1] = torch.tensor([E, E + 1, 0])
    scales = torch.rand(T, K, generator=gen) + 0.1
    h = rows(gen, T, H).to(torch.bfloat16)
    ids0, scales0, h0 = ids.clone(), scales.clone(), h.clone()
    out = zero_experts_compute_triton(ids, scales, E, "identity", h)
    zero = ids0 >= E
    for t in range(T):
        w = float(sum(float(scales0[t, k]) for k in range(K) if zero[t, k]))
        torch.testing.assert_close(out[t].float(), (h0[t].float() * w).to(torch.bfloat16).float(), rtol=0, atol=0)
    assert out[0].float().abs().sum() == 0
    assert torch.equal(ids, torch.where(zero, 0, ids0)), "zero-expert ids become 0, others (-1 included) stay"
    assert torch.equal(scales, torch.where(zero, 0.0, scales0))
    assert torch.equal(h, h0) and out.dtype == torch.bfloat16


# --------------------------------------------------------------------------- bad inputs


def _ids():
    return torch.tensor([[0, 1], [1, -1]], dtype=torch.int32)


BAD = [
    ("preproess float ids", lambda: C.cutlass_w4_run_moe_ep_preproess(torch.ones(2, 2)), TypeError, "topk_ids"),
    ("problem sizes shape", lambda: C.compute_problem_sizes_w4a8(torch.ones(3, dtype=torch.int32),
                                                                 torch.ones(2, 3, dtype=torch.int32),
                                                                 torch.ones(3, 3, dtype=torch.int32), 8, 8, 3),
     ValueError, "problem_sizes1"),
    ("problem sizes masked_m", lambda: C.compute_problem_sizes_w4a8(torch.ones(2, dtype=torch.int32),
                                                                    torch.ones(3, 3, dtype=torch.int32),
                                                                    torch.ones(3, 3, dtype=torch.int32), 8, 8, 3),
     ValueError, "masked_m"),
    ("input scale output_s", lambda: C.compute_cutlass_w4a8_moe_input_scale(torch.ones(2, 4), _ids(), torch.ones(2), 2),
     ValueError, "output_s"),
    ("input scale dtype", lambda: C.compute_cutlass_w4a8_moe_input_scale(torch.ones(2, 4, dtype=torch.float64), _ids(),
                                                                         torch.ones(1), 2), TypeError, "input"),
    ("pre_reorder num_tokens", lambda: C.pre_reorder_for_cutlass_moe(torch.ones(2, 4), torch.ones(4, 4),
                                                                     torch.arange(4), _ids(), None, 2, 2, 3, 4),
     ValueError, "num_tokens"),
    ("pre_reorder a1_scales", lambda: C.pre_reorder_for_cutlass_moe(torch.ones(2, 4), torch.ones(4, 4),
                                                                    torch.arange(4), _ids(), torch.ones(1).double(),
                                                                    2, 2, 2, 4), TypeError, "a1_scales"),
    ("pre_reorder src2dst", lambda: C.pre_reorder_for_cutlass_moe(torch.ones(2, 4), torch.ones(4, 4),
                                                                  torch.tensor([0, 8, 2, 3]), _ids(), None, 2, 2, 2, 4),
     ValueError, "src2dst"),
    ("post_reorder factor", lambda: C.post_reorder_for_cutlass_moe(torch.ones(4, 4), torch.ones(2, 4), torch.arange(4),
                                                                   _ids(), torch.ones(2, 2), 2, 2, 2, 4, None),
     TypeError, "routed_scaling_factor"),
    ("silu intermediate", lambda: C.silu_mul_static_tensorwise_quant_for_cutlass_moe(
        torch.ones(3, 8), torch.ones(3, 4), torch.ones(1), torch.tensor([3]), 3, 3), ValueError, "intermediate_size"),
    ("silu count", lambda: C.silu_mul_static_tensorwise_quant_for_cutlass_moe(
        torch.ones(3, 8), torch.ones(3, 4), torch.ones(1), torch.tensor([4]), 3, 4), ValueError, "num_tokens_tensor"),
    ("silu scale", lambda: C.silu_mul_dynamic_tensorwise_quant_for_cutlass_moe(
        torch.ones(3, 8), torch.ones(3, 4), torch.ones(1, 1), torch.tensor([3]), 3, 4), ValueError, "scale"),
    ("zero type", lambda: zero_experts_compute_triton(_ids(), torch.ones(2, 2), 1, "const", torch.ones(2, 4)),
     ValueError, "zero_expert_type"),
    ("zero scales shape", lambda: zero_experts_compute_triton(_ids(), torch.ones(2, 3), 1, "identity", torch.ones(2, 4)),
     ValueError, "expert_scales"),
]


@pytest.mark.parametrize("case,call,exc,name", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_name_the_argument(case, call, exc, name):
    with pytest.raises(exc, match=name):
        call()
