"""reference/deepgemm_layout.py: index outputs checked exactly and through their invariants
(every routed slot exactly once in its expert's segment, 128-aligned segments, -1 padding,
masked_m counts), data against per-slot loops, hand-worked examples, and one bad-input case
per argument check."""
import pytest
import torch

from reference import deepgemm_layout as L
from reference.gemm import per_token_group_quant_fp8
from reference.quant import ceil_to_ue8m0, poisoned, unpack_ue8m0_exponents, ue8m0_exponent_to_scale

FP8 = torch.float8_e4m3fn


def bits(t):
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def routing(gen, T, K, E, invalid_frac=0.25, offset=0):
    """topk ids [T, K]: K distinct experts in [0, E) per token, plus offset, some slots -1."""
    ids = torch.rand(T, E, generator=gen, device=gen.device).argsort(1)[:, :K] + offset
    drop = torch.rand(T, K, generator=gen, device=gen.device) < invalid_frac
    return torch.where(drop, -1, ids).to(torch.int32).contiguous()


def routed_counts(ids, first, E):
    local = ids.reshape(-1).long() - first
    return torch.bincount(local[(local >= 0) & (local < E)], minlength=E)


def random_data(gen, rows, H, dtype):
    return (torch.randn(rows, H, generator=gen, device=gen.device) * 3).to(dtype)


def random_scales(gen, rows, width, dtype):
    if dtype == torch.int32:
        return torch.randint(0, 2 ** 31 - 1, (rows, width), generator=gen, device=gen.device, dtype=torch.int32)
    return torch.rand(rows, width, generator=gen, device=gen.device) + 0.01


# --------------------------------------------------------------------------- ep_scatter


def run_scatter(gen, *, dtype, scale_dtype, ue8m0, align, first, T=23, K=4, E=5, H=256, spare=2):
    dev = gen.device
    ids = routing(gen, T, K, E + first + 1, offset=0)
    x = random_data(gen, T, H, dtype)
    width = -(-(H // 128) // 4) if ue8m0 else H // 128
    xs = None if scale_dtype is None else random_scales(gen, T, width, scale_dtype)
    routed = routed_counts(ids, first, E)
    valid = routed + torch.randint(0, spare + 1, (E,), generator=gen, device=dev)
    padded = (valid + align - 1) // align * align
    rows = int(padded.sum()) + align
    out = dict(output_tensor=poisoned((rows, H), dtype, dev),
               output_tensor_scale=None if xs is None else poisoned((rows, width), scale_dtype, dev),
               m_indices=torch.full((rows,), -7, dtype=torch.int32, device=dev),
               output_index=torch.full((T, K), -9, dtype=torch.int32, device=dev),
               expert_start_loc=torch.full((E,), -5, dtype=torch.int32, device=dev))
    L.ep_scatter(x, xs, ids, padded.int(), valid.int(), out["expert_start_loc"], out["output_tensor"],
                 out["output_tensor_scale"], out["m_indices"], out["output_index"], scale_ue8m0=ue8m0,
                 expert_alignment=align, expert_start=first)
    return ids, x, xs, routed, valid, padded, out


SCATTER_CASES = [  # dtype, scale dtype, ue8m0, alignment, expert_start
    (torch.float32, torch.float32, False, 128, 0),
    (FP8, torch.float32, False, 128, 2),
    (FP8, torch.int32, True, 128, 1),
    (torch.bfloat16, None, False, 64, 0),
    (FP8, torch.float32, False, 96, 3),      # alignment that is not a power of two (BLOCK_E = 32)
]


@pytest.mark.parametrize("dtype,scale_dtype,ue8m0,align,first", SCATTER_CASES, ids=str)
def test_ep_scatter_segments_rows_and_indices(gen, dtype, scale_dtype, ue8m0, align, first):
    E = 5
    ids, x, xs, routed, valid, padded, out = run_scatter(gen, dtype=dtype, scale_dtype=scale_dtype, ue8m0=ue8m0,
                                                          align=align, first=first, E=E)
    starts = (torch.cumsum(padded, 0) - padded).tolist()
    total = int(padded.sum())
    m_idx = out["m_indices"].tolist()
    for e in range(E):
        seg = m_idx[starts[e]:starts[e] + int(padded[e])]
        assert starts[e] % align == 0                                        # segments aligned
        assert seg == [e] * int(valid[e]) + [-1] * int(padded[e] - valid[e])  # live rows e, padding -1
    assert m_idx[total:] == [-7] * (len(m_idx) - total)                      # past the last segment: untouched
    assert out["expert_start_loc"].tolist() == [s + int(r) for s, r in zip(starts, routed)]

    index = out["output_index"].long()
    local = ids.long() - first
    is_local = (local >= 0) & (local < E)
    assert bool((index[~is_local] == -1).all())
    targeted = torch.zeros(out["output_tensor"].shape[0], dtype=torch.bool, device=gen.device)
    for e in range(E):
        rows = torch.sort(index[is_local & (local == e)]).values
        assert rows.tolist() == list(range(starts[e], starts[e] + int(routed[e])))   # each slot once, in its segment
        targeted[rows] = True
    for t, k in is_local.nonzero().tolist():
        row = int(index[t, k])
        assert torch.equal(bits(out["output_tensor"][row]), bits(x[t]))
        if xs is not None and dtype != torch.bfloat16:
            assert torch.equal(out["output_tensor_scale"][row], xs[t])
    assert torch.equal(bits(out["output_tensor"][~targeted]), bits(poisoned((int((~targeted).sum()), x.shape[1]),
                                                                              dtype, gen.device)))
    if out["output_tensor_scale"] is not None:
        assert torch.equal(bits(out["output_tensor_scale"][~targeted]),
                           bits(poisoned((int((~targeted).sum()), xs.shape[1]), xs.dtype, gen.device)))


def test_ep_scatter_hand_example(gen):
    """Two local experts (global 1 and 2), alignment 4: expert 0 gets slots (0,0) and (2,1), expert 1 gets (1,0)."""
    dev = gen.device
    ids = torch.tensor([[1, 0], [2, -1], [3, 1]], dtype=torch.int32, device=dev)
    x = torch.arange(3 * 128, dtype=torch.float32, device=dev).view(3, 128)
    out = torch.full((12, 128), -1.0, device=dev)
    m_indices = torch.full((12,), 9, dtype=torch.int32, device=dev)
    index = torch.empty(3, 2, dtype=torch.int32, device=dev)
    loc = torch.empty(2, dtype=torch.int32, device=dev)
    padded = torch.tensor([4, 4], dtype=torch.int32, device=dev)
    valid = torch.tensor([3, 1], dtype=torch.int32, device=dev)
    L.ep_scatter(x, None, ids, padded, valid, loc, out, None, m_indices, index, expert_alignment=4, expert_start=1)
    assert m_indices.tolist() == [0, 0, 0, -1, 1, -1, -1, -1, 9, 9, 9, 9]
    assert index.tolist() == [[0, -1], [4, -1], [-1, 1]]
    assert loc.tolist() == [2, 5]
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[2]) and torch.equal(out[4], x[1])
    assert bool((out[[2, 3, 5, 6, 7, 8]] == -1).all())


def test_ep_scatter_from_psum_labels_whole_segments(gen):
    dev, T, K, E, H = gen.device, 19, 3, 4, 256
    ids = routing(gen, T, K, E)
    x = random_data(gen, T, H, FP8)
    xs = random_scales(gen, T, 2, torch.float32)
    routed = routed_counts(ids, 0, E)
    sizes = routed + torch.tensor([0, 3, 1, 5], device=dev)
    psum = torch.cumsum(sizes, 0).to(torch.int32)
    rows = 128
    out, out_s = poisoned((rows, H), FP8, dev), poisoned((rows, 2), torch.float32, dev)
    m_indices = torch.full((rows,), -7, dtype=torch.int32, device=dev)
    index = torch.empty(T, K, dtype=torch.int64, device=dev)
    loc = torch.empty(E, dtype=torch.int32, device=dev)
    L.ep_scatter_from_psum(x, xs, ids, psum, loc, out, out_s, m_indices, index)
    starts = [0] + psum.tolist()[:-1]
    expect = sum(([e] * int(sizes[e]) for e in range(E)), []) + [-7] * (rows - int(psum[-1]))
    assert m_indices.tolist() == expect
    assert loc.tolist() == [s + int(r) for s, r in zip(starts, routed)]
    for e in range(E):
        mine = torch.sort(index[ids == e]).values.tolist()
        assert mine == list(range(starts[e], starts[e] + int(routed[e])))
    for t, k in (ids >= 0).nonzero().tolist():
        assert torch.equal(bits(out[index[t, k]]), bits(x[t])) and torch.equal(out_s[index[t, k]], xs[t])
    assert bool((index[ids < 0] == -1).all())


def test_fill_m_indices_from_psum_hand_example(gen):
    # expanded psum, alignment 4: expert 0 has 3 rows, 1 has 4, 2 none, 3 has 13
    psum = torch.tensor([3, 8, 8, 21], dtype=torch.int32, device=gen.device)
    got = L.fill_m_indices_from_psum(psum, 4, 28, 4)
    assert got.dtype == torch.int32
    assert got.tolist() == [0] * 4 + [1] * 4 + [3] * 16 + [-1] * 4
    clipped = L.fill_m_indices_from_psum(psum, 4, 20, 4)              # segments stop at total_rows
    assert clipped.tolist() == [0] * 4 + [1] * 4 + [3] * 12


# --------------------------------------------------------------------------- gathers


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
def test_ep_gather_weighted_sum_per_token(gen, out_dtype):
    dev, T, K, R, H = gen.device, 15, 4, 40, 256
    ids = routing(gen, T, K, 6, invalid_frac=0.4)
    ids[3] = -1                                                         # a token with no slot
    index = torch.randint(0, R, (T, K), generator=gen, device=dev, dtype=torch.int32)
    index[ids < 0] = -1                                                 # never read for uncounted slots
    w = torch.rand(T, K, generator=gen, device=dev)
    x = random_data(gen, R, H, torch.bfloat16)
    out = poisoned((T, H), out_dtype, dev)
    L.ep_gather(x, ids, w, index, out)
    for t in range(T):
        want = torch.zeros(H, dtype=torch.float64, device=dev)
        for k in range(K):
            if int(ids[t, k]) >= 0:
                want += x[int(index[t, k])].double() * float(w[t, k])
        tol = torch.finfo(out_dtype).eps * want.abs() + K * 2 ** -23 * want.abs().max() + 1e-30
        assert bool(((out[t].double() - want).abs() <= tol).all()), t
    assert torch.equal(out[3], torch.zeros(H, dtype=out_dtype, device=dev))


@pytest.mark.parametrize("with_lora", [False, True])
def test_post_reorder_deepgemm_scaled_weighted_sum(gen, with_lora):
    dev, T, K, R, H, rsf = gen.device, 9, 3, 30, 72, 2.5
    src2dst = torch.randint(-1, R, (T * K,), generator=gen, device=dev, dtype=torch.int32)
    src2dst[:K] = -1                                                    # token 0 has no slot
    ids = routing(gen, T, K, 5, invalid_frac=0.0)
    w = torch.rand(T, K, generator=gen, device=dev)
    down = random_data(gen, R, H, torch.bfloat16)
    delta = (torch.randn(T, K, H, generator=gen, device=dev) * 3).bfloat16() if with_lora else None
    out = poisoned((T + 2, H), torch.bfloat16, dev)
    L.post_reorder_deepgemm(down, out, src2dst, ids, w, K, T, H, rsf, lora_delta=delta)
    for t in range(T):
        want = torch.zeros(H, dtype=torch.float64, device=dev)
        for k in range(K):
            row = int(src2dst[t * K + k])
            if row >= 0:
                want += (down[row].double() + (delta[t, k].double() if with_lora else 0)) * float(w[t, k])
        want *= rsf
        tol = 2 ** -8 * want.abs() + K * 2 ** -22 * want.abs().max() + 1e-30
        assert bool(((out[t].double() - want).abs() <= tol).all()), t
    assert bool((out[0] == 0).all())
    assert bool(out[T:].isnan().all())                                  # rows past num_tokens untouched


def test_scale_expanded_rows_in_place_any_strides(gen):
    x = torch.randn(7, 5, generator=gen, device=gen.device).t().contiguous().t()   # column-major
    w = torch.rand(7, generator=gen, device=gen.device)
    want = x.double() * w.double()[:, None]
    got = L.scale_expanded_rows_(x, w)
    assert got is x and got.stride() == (1, 7)
    assert torch.equal(x, want.float())


def test_tma_aligned_size_and_layout(gen):
    assert [L.get_tma_aligned_size(x, 4) for x in (0, 1, 4, 5, 8, 9)] == [0, 4, 4, 8, 8, 12]
    assert [L.get_tma_aligned_size(x, 2) for x in (1, 8, 9)] == [8, 8, 16]
    s = torch.rand(13, 7, generator=gen, device=gen.device)
    aligned = L.tma_align_input_scale(s)
    assert aligned.shape == (13, 7) and aligned.stride() == (1, 16)
    assert torch.equal(aligned, s)


# --------------------------------------------------------------------------- masked layout


@pytest.mark.parametrize("first", [0, 3])
def test_fused_moe_dispatch_index_invariants(gen, first):
    T, K, E = 50, 4, 6
    ids = routing(gen, T, K, E + first + 2, invalid_frac=0.1)
    m_max = 256
    masked_m, src2dst = L.fused_moe_dispatch_index(ids, E, m_max, first)
    assert masked_m.dtype == torch.int32 and src2dst.dtype == torch.int32
    assert torch.equal(masked_m.long(), routed_counts(ids, first, E))
    local = ids.reshape(-1).long() - first
    is_local = (local >= 0) & (local < E)
    assert bool((src2dst[~is_local] == -1).all())
    for e in range(E):
        rows = torch.sort(src2dst[is_local & (local == e)].long()).values
        assert rows.tolist() == [e * m_max + j for j in range(int(masked_m[e]))]


def test_fused_moe_dispatch_index_hand_example(gen):
    ids = torch.tensor([[5, 4], [4, 9], [6, 5]], dtype=torch.int64, device=gen.device)
    masked_m, src2dst = L.fused_moe_dispatch_index(ids, 3, 8, expert_start=4)
    assert masked_m.tolist() == [2, 2, 1]
    assert src2dst.tolist() == [8, 0, 1, -1, 16, 9]


def test_moe_ep_deepgemm_preprocess_fp32_scales(gen):
    T, K, E, H, first = 20, 3, 4, 256, 1
    ids = routing(gen, T, K, E + 2, invalid_frac=0.0)
    x = random_data(gen, T, H, torch.bfloat16)
    masked_m, expected_m, src2dst, slab, scale = L.moe_ep_deepgemm_preprocess(ids, E, x, K, None, expert_start=first)
    assert slab.shape == (E, 256, H) and scale.shape == (E, 256, 2) and scale.dtype == torch.float32
    assert expected_m == -(-T * K // E)
    assert torch.equal(masked_m.long(), routed_counts(ids, first, E))
    q, s = per_token_group_quant_fp8(x, 128)
    for slot in (src2dst >= 0).nonzero().flatten().tolist():
        e, j = divmod(int(src2dst[slot]), 256)
        assert j < int(masked_m[e])
        assert torch.equal(bits(slab[e, j]), bits(q[slot // K])) and torch.equal(scale[e, j], s[slot // K])


def test_moe_ep_deepgemm_preprocess_packed_ue8m0(gen):
    T, K, E, H = 12, 2, 3, 512
    ids = routing(gen, T, K, E, invalid_frac=0.0)
    x = random_data(gen, T, H, torch.bfloat16)
    masked_m, _, src2dst, slab, scale = L.moe_ep_deepgemm_preprocess(ids, E, x, K, [128, 128],
                                                                     deepgemm_scale_ue8m0=True)
    assert scale.dtype == torch.int32 and scale.shape == (E, 256, 1) and scale.stride() == (256, 1, 256)
    _, raw = per_token_group_quant_fp8(x, 128)
    pow2 = ceil_to_ue8m0(raw)                                             # [T, 4]
    for slot in range(T * K):
        e, j = divmod(int(src2dst[slot]), 256)
        t = slot // K
        assert torch.equal(ue8m0_exponent_to_scale(unpack_ue8m0_exponents(scale[e, j], 4)), pow2[t])
        want = (x[t].float().view(4, 128) / pow2[t][:, None]).clamp(-448, 448).to(FP8).view(H)
        assert torch.equal(bits(slab[e, j]), bits(want))


def test_moe_ep_deepgemm_preprocess_m_max_and_plain_copy(gen):
    T, K, E = 300, 2, 8
    ids = routing(gen, T, K, E, invalid_frac=0.0)
    x = random_data(gen, T, 64, torch.float32)
    masked_m, _, src2dst, slab, scale = L.moe_ep_deepgemm_preprocess(ids, E, x, K, None, output_dtype=torch.float32)
    assert scale is None and slab.shape == (E, 512, 64)                 # (300 // 256 + 1) * 256
    capped = L.moe_ep_deepgemm_preprocess(ids, E, x, K, None, output_dtype=torch.float32, cap_m_max=True)
    assert capped[3].shape[1] == max(256, -(-int(masked_m.max()) // 256) * 256)
    for slot in range(T * K):
        e, j = divmod(int(src2dst[slot]), 512)
        assert torch.equal(slab[e, j], x[slot // K])


def expanded_psum(counts, align):
    psum, prev = [], 0
    for c in counts:
        prev = -(-prev // align) * align + c
        psum.append(prev)
    return psum


@pytest.mark.parametrize("dtype,scale_dtype", [(FP8, torch.float32), (FP8, torch.int32), (torch.bfloat16, None)], ids=str)
def test_expand_to_masked_slab_rows_and_scales(gen, dtype, scale_dtype):
    dev, H, align, max_m = gen.device, 192, 16, 20
    counts = [5, 0, 20, 7]
    psum = expanded_psum(counts, align)
    n = psum[-1] + 2
    x = random_data(gen, n, H, dtype)
    xs = None if scale_dtype is None else random_scales(gen, n, 3, scale_dtype)
    slab, slab_s, masked_m = L.expand_to_masked_slab(x, xs, torch.tensor(psum, device=dev), 4, max_m, align)
    assert masked_m.tolist() == counts
    prev = 0
    for e, c in enumerate(counts):
        start = -(-prev // align) * align
        assert torch.equal(bits(slab[e, :c]), bits(x[start:start + c]))
        if xs is not None:
            assert torch.equal(slab_s[e, :c], xs[start:start + c])
        prev = psum[e]
    if xs is None:
        assert slab_s is None
    else:
        assert slab_s.shape == (4, max_m, 3) and slab_s.stride() == (3 * max_m, 1, max_m)


def test_masked_slab_round_trip_with_weights(gen):
    dev, H, align, max_m = gen.device, 64, 8, 12
    counts = [3, 12, 0, 9]
    psum = torch.tensor(expanded_psum(counts, align), device=dev)
    total = int(psum[-1]) + 3
    x = random_data(gen, total, H, torch.float32)
    slab, _, masked_m = L.expand_to_masked_slab(x, None, psum, 4, max_m, align)
    back = L.masked_slab_to_expand(slab, psum, total, align)
    w = torch.rand(total, generator=gen, device=dev)
    weighted = L.masked_slab_to_expand(slab, psum, total, align, topk_weights=w)
    prev = 0
    live = torch.zeros(total, dtype=torch.bool, device=dev)
    for e, c in enumerate(counts):
        start = -(-prev // align) * align
        live[start:start + c] = True
        prev = int(psum[e])
    assert torch.equal(back[live], x[live])
    assert torch.equal(weighted[live], x[live] * w[live, None])
    assert bool(back[~live].isnan().all()) and bool(weighted[~live].isnan().all())


def test_masked_slab_to_expand_clamps_to_max_m(gen):
    psum = torch.tensor([10], device=gen.device)                       # one expert, 10 rows, slab holds 4
    slab = random_data(gen, 4, 8, torch.float32).view(1, 4, 8)
    out = L.masked_slab_to_expand(slab, psum, 10, 1)
    assert torch.equal(out[:4], slab[0]) and bool(out[4:].isnan().all())


# --------------------------------------------------------------------------- bad inputs


def _scatter_args(gen):
    dev = gen.device
    ids = torch.tensor([[0, 1], [1, -1]], dtype=torch.int32, device=dev)
    return dict(recv_x=torch.randn(2, 256, generator=gen, device=dev), recv_x_scale=torch.rand(2, 2, device=dev),
                recv_topk=ids, num_recv_tokens_per_expert=torch.tensor([128, 128], dtype=torch.int32, device=dev),
                num_valid_tokens_per_expert=torch.tensor([1, 2], dtype=torch.int32, device=dev),
                expert_start_loc=torch.empty(2, dtype=torch.int32, device=dev),
                output_tensor=torch.empty(256, 256, device=dev), output_tensor_scale=torch.empty(256, 2, device=dev),
                m_indices=torch.empty(256, dtype=torch.int32, device=dev),
                output_index=torch.empty(2, 2, dtype=torch.int32, device=dev))


def _set(**over):
    return lambda a: {**a, **{k: (v(a) if callable(v) else v) for k, v in over.items()}}


SCATTER_BAD = [
    (_set(recv_x=lambda a: a["recv_x"].int()), TypeError, "recv_x"),
    (_set(recv_topk=lambda a: a["recv_topk"][:1]), ValueError, "recv_topk"),
    (_set(output_tensor=lambda a: a["output_tensor"][:, :128]), ValueError, "output_tensor"),
    (_set(output_tensor=lambda a: a["output_tensor"][:200]), ValueError, "output_tensor"),
    (_set(output_index=lambda a: a["output_index"][:, :1]), ValueError, "output_index"),
    (_set(expert_start_loc=lambda a: a["expert_start_loc"][:1]), ValueError, "expert_start_loc"),
    (_set(m_indices=lambda a: a["m_indices"][:255]), ValueError, "m_indices"),
    (_set(m_indices=lambda a: a["m_indices"].float()), TypeError, "m_indices"),
    (_set(num_recv_tokens_per_expert=lambda a: a["num_recv_tokens_per_expert"] - 1), ValueError,
     "num_recv_tokens_per_expert"),
    (_set(num_valid_tokens_per_expert=lambda a: a["num_valid_tokens_per_expert"] + 200), ValueError,
     "num_valid_tokens_per_expert"),
    (_set(num_valid_tokens_per_expert=lambda a: a["num_valid_tokens_per_expert"] * 0), ValueError,
     "num_valid_tokens_per_expert"),     # fewer rows than routed slots
    (_set(recv_x_scale=lambda a: a["recv_x_scale"][:, :1]), ValueError, "recv_x_scale"),
    (_set(recv_x_scale=lambda a: a["recv_x_scale"].double()), TypeError, "recv_x_scale"),
    (_set(output_tensor_scale=lambda a: a["output_tensor_scale"].int()), TypeError, "output_tensor_scale"),
    (_set(scale_ue8m0=1), TypeError, "scale_ue8m0"),
    (_set(quant_block_size=0), ValueError, "quant_block_size"),
    (_set(expert_alignment=0), ValueError, "expert_alignment"),
    (_set(expert_start=-1), ValueError, "expert_start"),
]


@pytest.mark.parametrize("brk,exc,name", SCATTER_BAD, ids=[c[2] + str(i) for i, c in enumerate(SCATTER_BAD)])
def test_ep_scatter_rejects(gen, brk, exc, name):
    args = brk(_scatter_args(gen))
    with pytest.raises(exc, match=name):
        L.ep_scatter(**args)


def test_valid_scatter_args_pass(gen):
    L.ep_scatter(**_scatter_args(gen))     # the base of the table above is itself valid


def _psum_args(gen, **over):
    dev = gen.device
    base = dict(recv_x=torch.randn(4, 128, generator=gen, device=dev), recv_x_scale=None,
                recv_topk=torch.tensor([[0], [1], [1], [-1]], dtype=torch.int32, device=dev),
                psum_num_recv_tokens_per_expert=torch.tensor([1, 3], dtype=torch.int32, device=dev),
                expert_start_loc=torch.empty(2, dtype=torch.int32, device=dev),
                output_tensor=torch.empty(128, 128, device=dev), output_tensor_scale=None,
                m_indices=torch.empty(128, dtype=torch.int32, device=dev),
                output_index=torch.empty(4, 1, dtype=torch.int32, device=dev))
    return {**base, **{k: (v(base) if callable(v) else v) for k, v in over.items()}}


def _psum(*values):
    return lambda a: torch.tensor(values, dtype=torch.int32, device=a["recv_x"].device)


OTHER_BAD = [
    (lambda g: L.ep_scatter_from_psum(**_psum_args(g, psum_num_recv_tokens_per_expert=_psum(3, 1))), ValueError,
     "psum_num_recv_tokens_per_expert"),
    (lambda g: L.ep_scatter_from_psum(**_psum_args(g, psum_num_recv_tokens_per_expert=_psum(1, 2))), ValueError,
     "psum_num_recv_tokens_per_expert"),                                   # expert 1 routed 2 > its 1 row
    (lambda g: L.ep_scatter_from_psum(**_psum_args(g, m_indices=lambda a: a["m_indices"][:100])), ValueError,
     "m_indices"),
    (lambda g: L.fill_m_indices_from_psum(torch.tensor([3, 5], device=g.device), 2, 30, 4), ValueError, "total_rows"),
    (lambda g: L.fill_m_indices_from_psum(torch.tensor([3, 2], device=g.device), 2, 32, 4), ValueError,
     "psum_num_recv_tokens_per_expert"),                                   # 2 < align(3, 4) = 4
    (lambda g: L.fill_m_indices_from_psum(torch.tensor([3], device=g.device), 2, 32, 4), ValueError,
     "psum_num_recv_tokens_per_expert"),
    (lambda g: L.fill_m_indices_from_psum(torch.tensor([3, 5], device=g.device), 2, 32, 0), ValueError,
     "expert_alignment"),
    (lambda g: L.ep_gather(torch.randn(4, 100, device=g.device), torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                           torch.ones(2, 1, device=g.device), torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                           torch.empty(2, 100, device=g.device)), ValueError, "input_tensor"),
    (lambda g: L.ep_gather(torch.randn(4, 128, device=g.device), torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                           torch.ones(2, 1, device=g.device), torch.full((2, 1), 4, dtype=torch.int32, device=g.device),
                           torch.empty(2, 128, device=g.device)), ValueError, "input_index"),
    (lambda g: L.ep_gather(torch.randn(4, 128, device=g.device), torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                           torch.ones(2, 2, device=g.device), torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                           torch.empty(2, 128, device=g.device)), ValueError, "recv_topk_weight"),
    (lambda g: L.ep_gather(torch.randn(4, 128, device=g.device), torch.zeros(3, 1, dtype=torch.int32, device=g.device),
                           torch.ones(3, 1, device=g.device), torch.zeros(3, 1, dtype=torch.int32, device=g.device),
                           torch.empty(2, 128, device=g.device)), ValueError, "recv_topk_ids"),
    (lambda g: L.post_reorder_deepgemm(torch.randn(4, 8, device=g.device), torch.empty(2, 8, device=g.device),
                                       torch.tensor([0, 9], dtype=torch.int32, device=g.device),
                                       torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                                       torch.ones(2, 1, device=g.device), 1, 2, 8, 1.0), ValueError, "src2dst"),
    (lambda g: L.post_reorder_deepgemm(torch.randn(4, 8, device=g.device), torch.empty(2, 8, device=g.device),
                                       torch.tensor([0, 1], dtype=torch.int32, device=g.device),
                                       torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                                       torch.ones(2, 1, device=g.device), 1, 2, 7, 1.0), ValueError, "hidden_size"),
    (lambda g: L.post_reorder_deepgemm(torch.randn(4, 8, device=g.device), torch.empty(2, 8, device=g.device),
                                       torch.tensor([0, 1], dtype=torch.int32, device=g.device),
                                       torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                                       torch.ones(2, 1, device=g.device), 1, 2, 8, "2"), TypeError,
     "routed_scaling_factor"),
    (lambda g: L.post_reorder_deepgemm(torch.randn(4, 8, device=g.device), torch.empty(2, 8, device=g.device),
                                       torch.tensor([0, 1], dtype=torch.int32, device=g.device),
                                       torch.zeros(2, 1, dtype=torch.int32, device=g.device),
                                       torch.ones(2, 1, device=g.device), 1, 2, 8, 1.0,
                                       lora_delta=torch.zeros(2, 2, 8, device=g.device)), ValueError, "lora_delta"),
    (lambda g: L.scale_expanded_rows_(torch.ones(3, 2, dtype=torch.bfloat16, device=g.device),
                                      torch.ones(3, device=g.device)), TypeError, "x"),
    (lambda g: L.scale_expanded_rows_(torch.ones(3, 2, device=g.device), torch.ones(2, device=g.device)), ValueError,
     "row_weights"),
    (lambda g: L.get_tma_aligned_size(5, 3), ValueError, "element_size"),
    (lambda g: L.get_tma_aligned_size(5.0, 4), TypeError, "x"),
    (lambda g: L.tma_align_input_scale(torch.ones(3, device=g.device)), ValueError, "input_scale"),
    (lambda g: L.fused_moe_dispatch_index(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2, 3), ValueError,
     "m_max"),
    (lambda g: L.fused_moe_dispatch_index(torch.zeros(4, 2, device=g.device), 2, 8), TypeError, "topk_ids"),
    (lambda g: L.fused_moe_dispatch_index(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 0, 8), ValueError,
     "num_local_experts"),
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 256, device=g.device), 3, None), ValueError, "topk_ids"),
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 256, device=g.device), 2, [128]), ValueError, "block_shape"),
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 200, device=g.device), 2, None), ValueError, "block_shape"),
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 256, device=g.device), 2, None, use_mxfp8=True),
     ValueError, "block_shape"),                                           # packed needs G % 4 == 0
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 256, device=g.device), 2, None, output_dtype=torch.int8),
     TypeError, "output_dtype"),
    (lambda g: L.moe_ep_deepgemm_preprocess(torch.zeros(4, 2, dtype=torch.int32, device=g.device), 2,
                                            torch.randn(4, 256, device=g.device), 2, None, use_mxfp8=0),
     TypeError, "use_mxfp8"),
    (lambda g: L.expand_to_masked_slab(torch.randn(40, 8, device=g.device), None,
                                       torch.tensor([10, 40], device=g.device), 2, 12, 16), ValueError, "max_m"),
    (lambda g: L.expand_to_masked_slab(torch.randn(30, 8, device=g.device), None,
                                       torch.tensor([10, 40], device=g.device), 2, 32, 16), ValueError,
     "psum_num_recv_tokens_per_expert"),                                    # psum[-1] past recv_x's rows
    (lambda g: L.expand_to_masked_slab(torch.randn(40, 8, device=g.device).to(FP8),
                                       torch.ones(39, 1, device=g.device), torch.tensor([10, 40], device=g.device),
                                       2, 32, 16), ValueError, "recv_x_scale"),
    (lambda g: L.masked_slab_to_expand(torch.randn(2, 4, 8, device=g.device), torch.tensor([3, 20], device=g.device),
                                       10, 8), ValueError, "total_expanded_tokens"),
    (lambda g: L.masked_slab_to_expand(torch.randn(2, 4, 8, device=g.device), torch.tensor([3, 10], device=g.device),
                                       12, 8, topk_weights=torch.ones(11, device=g.device)), ValueError,
     "topk_weights"),
]


@pytest.mark.parametrize("call,exc,name", OTHER_BAD, ids=[c[2] + str(i) for i, c in enumerate(OTHER_BAD)])
def test_layout_ops_reject(gen, call, exc, name):
    with pytest.raises(exc, match=name):
        call(gen)


def test_ep_gather_with_every_slot_dropped_reads_no_row():
    """All ids -1 and an input with no rows (a rank that received nothing): every output row is
    zeros, and input_tensor is never indexed (it has no row 0 to read)."""
    gen = torch.Generator().manual_seed(4)
    out = torch.randn(3, 128, generator=gen)
    L.ep_gather(torch.empty(0, 128), torch.full((3, 2), -1), torch.rand(3, 2, generator=gen),
                torch.full((3, 2), -1, dtype=torch.int32), out)
    assert torch.equal(out, torch.zeros(3, 128))
