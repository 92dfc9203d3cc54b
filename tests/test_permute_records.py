"""The permute family's records (harness/ops/permute.py) and our kernels (optimized/permute.py):
both of moe_permute's paths equal to the reference, the unrouted slots' numbering compared
order-free (SGLang's torch.sort is unstable), the stand-in of 0.5.23's JIT moe_permute_prepare
equal to the reference, and the SGLang bindings planned without a call. The generated
conformance, bad-input and mutant tests cover the rest."""
import pytest
import torch

from harness.canonical import canonicalise
from harness.cases import CaseParams
from harness.ops.permute import RECORDS
from harness.sglang import standins
from harness.specs import SPECS
from reference import permute as ref

OPS = [r.name for r in RECORDS]
CASE = dict(tokens=12, topk=3, experts=6, start_expert=1, end_expert=4, hidden=40, routing="skewed",
            invalid_frac=0.3, seed=5)


def _ids(T, K, E, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-1, E, (T, K), generator=gen, dtype=torch.int32)


@pytest.mark.parametrize("op", OPS)
def test_record_builds_cases_its_reference_accepts(op):
    from harness.runner import reference_outputs
    record = SPECS[op]
    for dtype in record.dtypes:
        sample = record.build(CaseParams(op=op, dtype=dtype, **CASE), torch.device("cpu"))
        assert set(reference_outputs(record, sample).lp) == {o.name for o in record.outputs}


@pytest.mark.parametrize("fused", [True, False])
def test_our_moe_permute_equals_the_stable_reference_on_both_paths(fused, monkeypatch):
    """The one fused launch, and the counting sort + row kernel (the path above FUSED_MAX slots)."""
    from optimized import permute as ours
    monkeypatch.setattr(ours, "FUSED_MAX_INTERP", 10 ** 6 if fused else 0)
    T = 30
    ids = _ids(T, 3, 7, T)
    x = torch.randn(T, 24)
    got = ours.moe_permute(x, ids, 7, True)
    want = ref.moe_permute(x, ids, 7, True)
    n = int((ids >= 0).sum())
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert torch.equal(got[0][:n], want[0][:n])


def test_unrouted_slot_numbering_is_free_but_its_values_are_not():
    spec = SPECS["moe_permute"]
    sample = spec.build(CaseParams(op="moe_permute", dtype="bfloat16", **CASE), torch.device("cpu"))
    outs, src2dst, offsets = ref.moe_permute(**sample.args)
    expected = {"outputs": outs, "src2dst": src2dst, "expert_offsets": offsets}
    neg = torch.nonzero(src2dst < 0).flatten()
    assert neg.numel() >= 2
    swapped = src2dst.clone()
    swapped[neg] = swapped[neg.flip(0)]                  # another numbering of the unrouted slots
    canon = canonicalise(spec, sample, {**expected, "src2dst": swapped}, expected)
    assert torch.equal(canon["src2dst"], src2dst)
    wrong = src2dst.clone()
    wrong[neg[0]] = -1000                                # not the reference's values: stays for the exact check
    canon = canonicalise(spec, sample, {**expected, "src2dst": wrong}, expected)
    assert not torch.equal(canon["src2dst"], src2dst)


@pytest.mark.parametrize("int64", [False, True])
def test_standin_of_moe_permute_prepare_matches_the_reference(int64):
    ids = _ids(9, 4, 5, 3)
    offsets, src2dst = standins.moe_permute_prepare(ids, 5, use_int64_offset=int64)
    _, want_src2dst, want_offsets = ref.moe_permute(torch.zeros(9, 2), ids, 5, int64)
    assert torch.equal(offsets, want_offsets)
    ref.check_src2dst_assignment(src2dst, ids, offsets)
    assert torch.equal(torch.sort(src2dst).values, torch.sort(want_src2dst).values)
    with pytest.raises(TypeError, match="int32"):
        standins.moe_permute_prepare(ids.long(), 5)


@pytest.mark.parametrize("op", ["deepep_permute", "deepep_post_reorder"])
def test_raw_kernels_bind_with_sglangs_block_size(op):
    """SGLang's row kernels take BLOCK_SIZE, which the ops do not: it binds to the neutral 512."""
    import triton
    import triton.language as tl
    from harness.sglang.bind import Binding, bind_op, op_binding

    @triton.jit
    def deepep_permute_triton_kernel(input_ptr, gateup_input_ptr, src2dst_ptr, topk_ids_ptr, a1_scales_ptr, topk,
                                     hidden_size, BLOCK_SIZE: tl.constexpr):
        pass

    @triton.jit
    def deepep_post_reorder_triton_kernel(down_output_ptr, output_ptr, src2dst_ptr, topk_ids_ptr, topk_weights_ptr,
                                          topk, hidden_size, routed_scaling_factor: tl.constexpr,
                                          BLOCK_SIZE: tl.constexpr):
        pass

    kernel = deepep_permute_triton_kernel if op == "deepep_permute" else deepep_post_reorder_triton_kernel
    bound = bind_op(op, kernel, op_binding(SPECS[op]))
    assert isinstance(bound, Binding), bound
    assert "BLOCK_SIZE<-neutral" in bound.describe()


def test_unplaced_slots_take_the_references_order_per_group_exactly_when_their_multisets_agree():
    """The vectorised rule against the per-group loop it replaced, on random groups and values
    (duplicates, permutations within a group, one changed value, groups with no unplaced slot)."""
    from harness.canonical import _unplaced_in_reference_order
    gen = torch.Generator().manual_seed(7)

    def one_group_at_a_time(canon, ref, groups):
        unplaced = ref < 0
        for g in torch.unique(groups[unplaced]).tolist():
            at = torch.nonzero(unplaced & (groups == g)).flatten()
            if torch.equal(torch.sort(canon[at].to(torch.int64)).values, torch.sort(ref[at].to(torch.int64)).values):
                canon[at] = ref[at].to(canon.dtype)

    for trial in range(300):
        n = int(torch.randint(0, 60, (1,), generator=gen))
        groups = torch.randint(0, 1 + trial % 9, (n,), generator=gen) + (trial % 3) * 5
        ref = torch.where(torch.rand(n, generator=gen) < 0.6, -torch.randint(1, 6, (n,), generator=gen),
                          torch.randint(0, 40, (n,), generator=gen))
        cand = ref.clone()
        for g in torch.unique(groups).tolist():        # shuffle each group's unplaced values
            at = torch.nonzero((ref < 0) & (groups == g)).flatten()
            cand[at] = cand[at[torch.randperm(at.numel(), generator=gen)]]
        if n and trial % 4 == 0:                       # and now and then change one value
            cand[int(torch.randint(0, n, (1,), generator=gen))] = -int(torch.randint(1, 7, (1,), generator=gen))
        dtype = (torch.int32, torch.int64)[trial % 2]
        a, b = cand.to(dtype), cand.to(dtype)
        one_group_at_a_time(a, ref, groups)
        _unplaced_in_reference_order(b, ref, groups)
        assert torch.equal(a, b), (trial, groups, ref, cand, a, b)
