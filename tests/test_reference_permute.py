"""reference/permute.py: indices checked exactly against hand-worked examples and per-slot
loops, the order-free assignment rule, data against per-slot loops, untouched rows left as
they were, the expert-0 gate, and bad-input tables (each error must name its argument)."""
import pytest
import torch

from reference import permute as P
from reference.preprocess import deepep_preprocess, ep_preprocess

FP8 = torch.float8_e4m3fn


def bits(t):
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def routing(gen, T, K, E, drop_frac=0.3, dtype=torch.int32):
    """[T, K] distinct ids in [0, E) per token, a share of slots set to -1."""
    ids = torch.rand(T, E, generator=gen, device=gen.device).argsort(1)[:, :K]
    drop = torch.rand(T, K, generator=gen, device=gen.device) < drop_frac
    return torch.where(drop, -1, ids).to(dtype).contiguous()


def rows(gen, n, H, dtype=torch.float32):
    return (torch.randn(n, H, generator=gen, device=gen.device) * 3 + 0.5).to(dtype)


# --------------------------------------------------------------------------- moe_permute


def test_moe_permute_hand_worked():
    ids = torch.tensor([[2, -1], [0, 2], [1, -1]], dtype=torch.int32)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out, src2dst, offsets = P.moe_permute(x, ids, 3)
    assert src2dst.tolist() == [2, -2, 0, 3, 1, -1]
    assert offsets.tolist() == [0, 1, 2, 4] and offsets.dtype == torch.int32
    assert out[:4].tolist() == [[3.0, 4.0], [5.0, 6.0], [1.0, 2.0], [3.0, 4.0]]
    assert bool(out[4:].isnan().all()), "rows past n_routed must hold poison (SGLang's torch.empty)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, FP8])
def test_moe_permute_rows_and_indices_against_loop(gen, dtype):
    T, K, E, H = 19, 4, 7, 24
    ids = routing(gen, T, K, E)
    x = rows(gen, T, H, dtype)
    preset = rows(gen, T * K, H, dtype)
    out, src2dst, offsets = P.moe_permute(x, ids, E, use_int64_offset=True, outputs=preset.clone())
    assert offsets.dtype == torch.int64 and src2dst.dtype == torch.int32
    flat = ids.reshape(-1).tolist()
    routed = [s for s, e in enumerate(flat) if e >= 0]
    assert offsets.tolist() == [sum(0 <= e < b for e in flat) for b in range(E + 1)]
    P.check_src2dst_assignment(src2dst, ids, offsets)
    # Stable: within an expert, rows follow slot order.
    for e in range(E):
        slots = [s for s in routed if flat[s] == e]
        assert [int(src2dst[s]) for s in slots] == list(range(int(offsets[e]), int(offsets[e + 1])))
    for s in routed:
        assert torch.equal(bits(out[int(src2dst[s])]), bits(x[s // K]))
    n = len(routed)
    assert torch.equal(bits(out[n:]), bits(preset[n:])), "rows past n_routed of a passed-in buffer must be kept"


def test_moe_permute_with_scale_permutes_scales_alike(gen):
    T, K, E, H, S = 11, 3, 5, 16, 4
    ids = routing(gen, T, K, E)
    x, xs = rows(gen, T, H, FP8), rows(gen, T, S)
    out, scale_out, src2dst, offsets = P.moe_permute_with_scale(x, xs, ids, E)
    ref_out, ref_src2dst, ref_offsets = P.moe_permute(x, ids, E)
    assert torch.equal(src2dst, ref_src2dst) and torch.equal(offsets, ref_offsets)
    n = int(offsets[-1])
    assert torch.equal(bits(out[:n]), bits(ref_out[:n]))
    for s, d in enumerate(src2dst.tolist()):
        if d >= 0:
            assert torch.equal(scale_out[d], xs[s // K])
    assert bool(scale_out[n:].isnan().all())


def test_check_src2dst_assignment_rejects_bad_assignments():
    ids = torch.tensor([[0, 1], [1, -1]], dtype=torch.int32)
    offsets = torch.tensor([0, 1, 3])
    P.check_src2dst_assignment(torch.tensor([0, 2, 1, -1]), ids, offsets)          # order inside expert 1 free
    for bad in ([0, 1, 1, -1], [1, 2, 0, -1], [0, 2, 1, 3]):
        with pytest.raises(AssertionError):
            P.check_src2dst_assignment(torch.tensor(bad), ids, offsets)


def test_moe_unpermute_against_loop(gen):
    T, K, E, H = 13, 4, 6, 20
    ids = routing(gen, T, K, E)
    x = rows(gen, T, H)
    permuted, src2dst, _ = P.moe_permute(x, ids, E)
    down = rows(gen, permuted.shape[0], H)
    w = torch.rand(T, K, generator=gen) + 0.1
    for factor in (None, 2.5):
        out = P.moe_unpermute(down, src2dst, ids, w, routed_scaling_factor=factor)
        f = 1.0 if factor is None else factor
        for t in range(T):
            want = torch.zeros(H, dtype=torch.float64)
            for k in range(K):
                d = int(src2dst[t * K + k])
                if d >= 0:
                    want += down[d].double() * float(w[t, k]) * f
            torch.testing.assert_close(out[t].double(), want, rtol=1e-6, atol=1e-6)


def test_moe_unpermute_rounds_weight_to_input_dtype_and_writes_every_row(gen):
    ids = torch.tensor([[0, -1], [-1, -1]], dtype=torch.int32)
    src2dst = torch.tensor([0, -1, -2, -3], dtype=torch.int32)
    down = torch.full((1, 4), 3.0, dtype=torch.bfloat16)
    w = torch.tensor([[1 + 2 ** -8 + 2 ** -12, 7.0], [3.0, 3.0]])   # rounds to 1 + 2**-7 in bf16
    out = P.moe_unpermute(down, src2dst, ids, w, outputs=torch.full((2, 4), float("nan"), dtype=torch.bfloat16))
    # 3 * (1 + 2**-7) = 3.0234375, a bf16 tie that rounds to 3.03125; the unrounded weight gives
    # 3.01245..., which rounds to 3.015625.
    assert out[0].float().tolist() == [3.03125] * 4
    assert out[1].tolist() == [0.0] * 4, "a token with no row gets zeros"


def test_deepep_kernels_match_the_moe_wrappers(gen):
    T, K, E, H = 9, 3, 4, 12
    ids = routing(gen, T, K, E)
    x = rows(gen, T, H)
    _, src2dst, _ = P.moe_permute(x, ids, E)
    buf = rows(gen, T * K, H)
    keep = buf.clone()
    P.deepep_permute_triton_kernel(x, buf, src2dst, None, None, K, H)
    touched = set(src2dst[src2dst >= 0].tolist())
    for r in range(T * K):
        if r not in touched:
            assert torch.equal(buf[r], keep[r])
    for s, d in enumerate(src2dst.tolist()):
        if d >= 0:
            assert torch.equal(buf[d], x[s // K])
    w = torch.rand(T, K, generator=gen)
    out = torch.full((T, H), float("nan"))
    P.deepep_post_reorder_triton_kernel(buf, out, src2dst, ids, w, K, H, 0.75)
    torch.testing.assert_close(out, P.moe_unpermute(buf, src2dst, ids, w, routed_scaling_factor=0.75))


def test_deepep_permute_casts_to_fp8_with_saturation():
    x = torch.tensor([[1000.0, -3.3, 0.1]])
    buf = torch.zeros(2, 3, dtype=FP8)
    P.deepep_permute_triton_kernel(x, buf, torch.tensor([1]), None, None, 1, 3)
    assert buf[1].float().tolist() == [448.0, -3.25, float(torch.tensor(0.1).to(FP8))]
    assert buf[0].float().tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- preprocess conventions


def test_deepep_run_moe_deep_preprocess_equals_spec2_and_counts_any_negative(gen):
    ids = routing(gen, 17, 4, 9, dtype=torch.int64)
    for got, want in zip(P.deepep_run_moe_deep_preprocess(ids, 9), deepep_preprocess(ids, 9)):
        assert torch.equal(got, want) and got.dtype == want.dtype
    ids = torch.tensor([[1, -3], [-1, 0]])
    reorder, src2dst, seg = P.deepep_run_moe_deep_preprocess(ids, 2)
    assert reorder.tolist() == [0, 1] and src2dst.tolist() == [1, -2, -1, 0] and seg.tolist() == [0, 1, 2]


def test_run_moe_ep_preproess_local_hand_worked():
    ids = torch.tensor([[2, -1], [0, 2], [1, 3]], dtype=torch.int32)   # 3 = sentinel (E_local = 3)
    reorder, src2dst, seg = P.run_moe_ep_preproess_local(ids, 3)
    assert reorder.tolist() == [-1, 0, 1, 2, 2, 3]
    assert src2dst.tolist() == [3, 0, 1, 4, 2, 5] and src2dst.dtype == torch.int32
    assert seg.tolist() == [1, 2, 3, 0], "seg[0] counts the negative id, seg[E] is never written"


def test_run_moe_ep_preproess_local_differs_from_spec1_only_in_last_entry(gen):
    ids = torch.randint(0, 6, (21, 3), generator=gen, dtype=torch.int64)
    got, want = P.run_moe_ep_preproess_local(ids, 6), ep_preprocess(ids, 6)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[2][:-1], want[2][:-1]) and int(got[2][-1]) == 0 and int(want[2][-1]) == ids.numel()


def test_post_reorder_gated_keeps_expert_zero(gen):
    T, K, H = 8, 2, 6
    ids = torch.tensor([[0, -1]] * 4 + [[0, 1]] * 4, dtype=torch.int32)   # every token routed to local 0
    down = rows(gen, T * K, H)
    src2dst = torch.randperm(T * K, generator=gen).to(torch.int32)
    w = torch.rand(T, K, generator=gen) + 0.5
    out = torch.full((T, H), float("nan"))
    P.post_reorder_gated(down, out, src2dst, ids, w, K, H)
    for t in range(T):
        want = sum(down[int(src2dst[t * K + k])].double() * float(w[t, k]) for k in range(K) if int(ids[t, k]) >= 0)
        torch.testing.assert_close(out[t].double(), want, rtol=1e-6, atol=1e-6)
    # The `expert_id > 0` gate would leave tokens 0..3 (only expert 0) at zero; the contract does not.
    assert bool((out[:4].abs().sum(1) > 0).all())


# --------------------------------------------------------------------------- bad inputs


def _ids():
    return torch.tensor([[0, 1], [1, -1]], dtype=torch.int32)


BAD = [
    ("moe_permute int64 ids", lambda: P.moe_permute(torch.ones(2, 3), _ids().long(), 2), TypeError, "topk_ids"),
    ("moe_permute id >= E", lambda: P.moe_permute(torch.ones(2, 3), _ids(), 1), ValueError, "topk_ids"),
    ("moe_permute rows", lambda: P.moe_permute(torch.ones(3, 3), _ids(), 2), ValueError, "topk_ids"),
    ("moe_permute outputs shape", lambda: P.moe_permute(torch.ones(2, 3), _ids(), 2, outputs=torch.ones(3, 3)),
     ValueError, "outputs"),
    ("moe_permute outputs dtype",
     lambda: P.moe_permute(torch.ones(2, 3), _ids(), 2, outputs=torch.ones(4, 3, dtype=torch.bfloat16)),
     TypeError, "outputs"),
    ("moe_permute is_ep", lambda: P.moe_permute(torch.ones(2, 3), _ids(), 2, is_ep=1), TypeError, "is_ep"),
    ("with_scale rows", lambda: P.moe_permute_with_scale(torch.ones(2, 3), torch.ones(3, 1), _ids(), 2),
     ValueError, "input_scale"),
    ("unpermute src2dst range", lambda: P.moe_unpermute(torch.ones(2, 3), torch.tensor([0, 5, 1, -1]), _ids(),
                                                        torch.ones(2, 2)), ValueError, "src2dst"),
    ("unpermute weights shape", lambda: P.moe_unpermute(torch.ones(2, 3), torch.tensor([0, 1, 1, -1]), _ids(),
                                                        torch.ones(2, 3)), ValueError, "topk_weights"),
    ("unpermute factor", lambda: P.moe_unpermute(torch.ones(2, 3), torch.tensor([0, 1, 1, -1]), _ids(),
                                                 torch.ones(2, 2), routed_scaling_factor="2"),
     TypeError, "routed_scaling_factor"),
    ("permute kernel hidden", lambda: P.deepep_permute_triton_kernel(torch.ones(2, 3), torch.ones(4, 3),
                                                                     torch.tensor([0, 1, 2, 3]), None, None, 2, 4),
     ValueError, "hidden_size"),
    ("permute kernel row", lambda: P.deepep_permute_triton_kernel(torch.ones(2, 3), torch.ones(2, 3),
                                                                  torch.tensor([0, 1, 2, -1]), None, None, 2, 3),
     ValueError, "src2dst"),
    ("deep preprocess E", lambda: P.deepep_run_moe_deep_preprocess(_ids(), 0), ValueError, "num_experts"),
    ("local preprocess float ids", lambda: P.run_moe_ep_preproess_local(torch.ones(2, 2), 2), TypeError, "topk_ids"),
    ("gated weights dtype", lambda: P.post_reorder_gated(torch.ones(4, 3), torch.ones(2, 3), torch.arange(4), _ids(),
                                                         torch.ones(2, 2, dtype=torch.float64), 2, 3),
     TypeError, "topk_weights"),
    ("gated src2dst range", lambda: P.post_reorder_gated(torch.ones(4, 3), torch.ones(2, 3),
                                                         torch.tensor([0, 1, 9, 3]), _ids(), torch.ones(2, 2), 2, 3),
     ValueError, "src2dst"),
]


@pytest.mark.parametrize("case,call,exc,name", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_name_the_argument(case, call, exc, name):
    with pytest.raises(exc, match=name):
        call()
