"""Each probe and comparator of the harness fires on a deliberately broken implementation,
and stays quiet on the reference itself."""
import json
import shlex

import pytest
import torch

import reference
from harness.cases import CaseParams
from harness.report import replay_command
from harness.fuzz import sweep
from harness.runner import Candidate, run_case
from harness.specs import SPECS
from harness.tolerance import FACTOR, compare_float, elementwise_bound


def params(op, dtype, seed, **kw):
    base = dict(tokens=9, topk=3, experts=8, start_expert=2, end_expert=5, hidden=40, inter=24, seed=seed)
    base.update(kw)
    return CaseParams(op=op, dtype=dtype, **base)


def check(op, fn, p, device, **cand):
    return run_case(SPECS[op], Candidate(fn, **cand), p, device, "planted")


def test_reference_passes_every_op(seed, device):
    for op, spec in SPECS.items():
        for dtype in spec.dtypes:
            res = check(op, spec.reference, params(op, dtype, seed, invalid_frac=0.0), device)
            assert res.status == "passed", (op, dtype, res.message)


# ----------------------------------------------------------------------------- planted faults

def post_reorder_skips_unrouted_tokens(down_output, output, src2dst, topk_ids, topk_weights, start, end, topk,
                                       hidden_size, BLOCK_SIZE=512):
    full = torch.empty_like(output)
    reference.post_reorder(down_output, full, src2dst, topk_ids, topk_weights, start, end, topk, hidden_size)
    ids = topk_ids.long()
    has_local = ((ids >= start) & (ids <= end)).any(dim=1)
    output[has_local] = full[has_local]


def pre_reorder_writes_every_slot(input, gateup_input, src2dst, topk_ids, a1_scales, start, end, topk,
                                  hidden_size, BLOCK_SIZE=512):
    valid = src2dst >= 0
    gateup_input[src2dst[valid].long()] = input[torch.nonzero(valid).flatten() // topk]


def grouped_gemm_writes_past_end(a, b, c, *args):
    reference.grouped_gemm(a, b, c, *args)
    past = torch.empty(0, dtype=c.dtype, device=c.device).set_(c.untyped_storage(), c.storage_offset(),
                                                              (c.shape[0] + 1, c.shape[1]))
    past[-1] = 0.0


def ep_preprocess_seg_from_empty(topk_ids, num_experts):
    """seg_indptr allocated uninitialised and [0] never written (a `zeros` made `empty`)."""
    reorder, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
    out = torch.empty_like(seg)
    out[1:] = seg[1:]
    return reorder, src2dst, out


def post_reorder_scales_input_in_place(down_output, *args):
    down_output.mul_(1.0)
    down_output[0, 0] += 1.0
    reference.post_reorder(down_output, *args)


_calls = {"n": 0}


def silu_nondeterministic(gateup_output, down_input, *args):
    reference.silu_and_mul(gateup_output, down_input, *args)
    _calls["n"] += 1
    if _calls["n"] % 2:
        # One ulp on one column: within tolerance, so only the repeat-run probe can see it.
        rows = ~torch.isnan(down_input[:, 0])
        down_input[rows, 0] = (down_input[rows, 0].view(torch.int16) ^ 1).view(down_input.dtype)


def ep_preprocess_off_by_one(topk_ids, num_experts):
    reorder, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
    seg = seg.clone()
    seg[1:-1] += 1
    return reorder, src2dst, seg


def raises(*args):
    raise RuntimeError("unsupported overlap in an in-place operation")


PLANTED = [
    ("post_reorder", "bfloat16", post_reorder_skips_unrouted_tokens, "unwritten", dict(routing="sparse")),
    ("pre_reorder", "float16", pre_reorder_writes_every_slot, "untouched", {}),
    ("grouped_gemm", "float32", grouped_gemm_writes_past_end, "guard", {}),
    ("ep_preprocess", "int32", ep_preprocess_seg_from_empty, "exact", {}),
    ("post_reorder", "float32", post_reorder_scales_input_in_place, "input_modified", {}),
    ("silu_and_mul", "bfloat16", silu_nondeterministic, "nondeterministic", {}),
    ("ep_preprocess", "int64", ep_preprocess_off_by_one, "exact", {}),
    ("gelu_and_mul", "float32", raises, "exception", {}),
]


@pytest.mark.parametrize("op,dtype,fn,probe,kw", PLANTED, ids=[f"{r[3]}-{r[2].__name__}" for r in PLANTED])
def test_probe_fires_on_planted_fault(seed, device, op, dtype, fn, probe, kw):
    p = params(op, dtype, seed, start_expert=0, end_expert=2, experts=16, **kw) if probe == "unwritten" \
        else params(op, dtype, seed, **kw)
    res = check(op, fn, p, device)
    assert res.status == "failed" and res.probe == probe, (res.probe, res.message)


def test_unwritten_scratch_is_caught_only_with_poisoned_allocations(seed, device):
    """The fresh-allocation poison is what exposes the `empty` seg_indptr: CPU memory from a
    fresh torch.empty often happens to be zero, which would hide the bug."""
    p = params("ep_preprocess", "int32", seed)
    res = run_case(SPECS["ep_preprocess"], Candidate(ep_preprocess_seg_from_empty), p, device, "x",
                   poison_fresh=True)
    assert res.probe == "exact"
    assert any(ex["where"].get("expert") == 0 for ex in res.details["first"])


def test_order_free_candidate_passes_canonical_form_but_not_exact(seed, device):
    def unstable(topk_ids, num_experts):
        reorder, src2dst, seg = reference.ep_preprocess(topk_ids, num_experts)
        # reverse the order inside each expert's segment: same slot sets, other positions
        flat = topk_ids.flatten().long()
        seg_l = seg.tolist()
        new = src2dst.clone().long()
        for e in range(num_experts):
            members = torch.nonzero(flat == e).flatten()
            new[members] = torch.arange(seg_l[e + 1] - 1, seg_l[e] - 1, -1, device=new.device)
        return reorder, new.int(), seg
    p = params("ep_preprocess", "int32", seed, routing="repeated", experts=3)
    assert check("ep_preprocess", unstable, p, device).probe == "exact"
    assert check("ep_preprocess", unstable, p, device, order_free=True).status == "passed"

    def lands_in_wrong_segment(topk_ids, num_experts):
        reorder, src2dst, seg = unstable(topk_ids, num_experts)
        return reorder, src2dst.roll(1), seg
    assert check("ep_preprocess", lands_in_wrong_segment, p, device, order_free=True).probe == "order_free"


# ----------------------------------------------------------------------------- tolerance edge

@pytest.mark.parametrize("factor,passes", [(0.98, True), (1.02, False)])
def test_error_just_below_tolerance_passes_and_just_above_fails(seed, device, factor, passes):
    """A grouped_gemm that is off by `factor` times the allowed bound at one element."""
    p = params("grouped_gemm", "float32", seed)
    spec = SPECS["grouped_gemm"]
    sample = spec.build(p, torch.device(device))
    args = sample.args

    def exact_f64(a, b, c, *rest):
        c64 = torch.empty(c.shape, dtype=torch.float64, device=c.device).fill_(float("nan"))
        reference.grouped_gemm(a.double(), b.double(), c64, *rest)
        return c64

    def off_by_factor(a, b, c, *rest):
        c64 = exact_f64(a, b, c, *rest)
        lp = c.clone()
        reference.grouped_gemm(a, b, lp, *rest)
        mag = exact_f64(a.abs(), b.abs(), c, *rest)
        written = ~torch.isnan(c64)
        bound = elementwise_bound(c64[written], lp[written], c.dtype, mag[written], a.shape[1], False)
        out = c64[written].clone()
        out[0] = out[0] + factor * bound[0]
        c[written] = out.to(c.dtype)
        # float32 rounding of the perturbed value must not undo the planted distance
        got = (c[written][0].double() - c64[written][0]).abs() / bound[0]
        assert abs(float(got) - factor) < 0.01, float(got)

    # IEEE float32 required: otherwise an error this size passes as TF32 precision (test below)
    res = run_case(spec, Candidate(off_by_factor), p, device, "edge", require_ieee_fp32=True)
    assert (res.status == "passed") == passes, res.message
    if not passes:
        assert res.probe == "tolerance"
    assert args is not None


def test_compare_float_reports_worst_element_and_means():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    lp = r.clone()
    c = torch.tensor([1.0, 2.0, 3.5, 4.0], dtype=torch.float32)
    rep = compare_float(c, r, lp.float(), None, 0, False, False, torch.ones(4, dtype=torch.bool))
    assert not rep.passed and rep.worst_flat_index == 2 and rep.max_abs_err == 0.5
    assert rep.mean_abs_err == pytest.approx(0.125) and rep.worst_candidate == 3.5 and rep.worst_reference == 3.0
    assert FACTOR == 2.0


def test_nan_in_candidate_never_passes():
    r = torch.tensor([1.0, 2.0], dtype=torch.float64)
    c = torch.tensor([1.0, float("nan")])
    rep = compare_float(c, r, r.float(), None, 0, False, False, torch.ones(2, dtype=torch.bool))
    assert not rep.passed


@pytest.mark.parametrize("normwise", [False, True])
def test_compare_float_in_chunks_reports_as_in_one_piece(seed, monkeypatch, normwise):
    """The chunked comparison (memory-bounded for the `large` preset) reports exactly what one
    pass over the whole tensor does: worst element, its flat index, counts and means."""
    import harness.tolerance as tol
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    lp = r.to(torch.bfloat16)
    noise = 3e-2 if normwise else 3e-3   # normwise: enough to fail the whole-tensor bound
    c = (r + noise * torch.randn(37, 11, generator=gen, dtype=torch.float64)).to(torch.bfloat16)
    if not normwise:
        c.view(-1)[100] = float("nan")
    mag = r.abs() * 2
    mask = torch.rand(37, 11, generator=gen) < 0.8
    whole = compare_float(c, r, lp, mag, 16, False, normwise, mask)
    monkeypatch.setattr(tol, "COMPARE_CHUNK", 23)
    chunked = compare_float(c, r, lp, mag, 16, False, normwise, mask)
    assert chunked.n_checked == whole.n_checked == int(mask.sum())
    for f in ("passed", "worst_flat_index", "n_over", "max_abs_err", "worst_candidate", "worst_reference"):
        a, b = getattr(chunked, f), getattr(whole, f)
        assert a == b or (a != a and b != b), f   # NaN equals NaN here
    assert chunked.mean_abs_err == pytest.approx(whole.mean_abs_err, rel=1e-12)
    assert not whole.passed and (normwise or whole.n_over > 0)   # the data exercise the bound


def _blocked_fp8_product(a, b, block: int, round_partial_sums: bool):
    """a @ b.T as a K-blocked kernel computes it: float32 per block of ``block`` terms, the
    running sum in float32 (or rounded to bfloat16 after every block), the output in bfloat16."""
    acc = torch.zeros(a.shape[0], b.shape[0])
    for k0 in range(0, a.shape[1], block):
        acc = acc + a[:, k0:k0 + block] @ b[:, k0:k0 + block].T
        if round_partial_sums:
            acc = acc.to(torch.bfloat16).float()
    return acc.to(torch.bfloat16)


def test_fp8_partial_sums_in_bfloat16_fail_the_statistical_test(seed):
    """An fp8 product whose running sum is rounded to bfloat16 after every K block errs by a
    fraction of an ulp per element, often within every element's own bound; the statistical
    test (the error's norm against the precision's own) fails it, and passes the same product
    summed in float32 in another block order."""
    from harness.tolerance import norm_bound
    gen = torch.Generator().manual_seed(seed)
    fp8 = torch.float8_e4m3fn
    a = (torch.randn(64, 2048, generator=gen) * 16).clamp(-448, 448).to(fp8).float()
    b = (torch.randn(64, 2048, generator=gen) * 16).clamp(-448, 448).to(fp8).float()
    r = a.double() @ b.double().T
    mag = a.double().abs() @ b.double().abs().T
    lp = _blocked_fp8_product(a, b, 2048, False)
    mask = torch.ones(r.shape, dtype=torch.bool)
    good = compare_float(_blocked_fp8_product(a, b, 64, False), r, lp, mag, 2048, True, False, mask)
    assert good.passed and 0 < good.norm_ratio < norm_bound(2048), good
    bad = compare_float(_blocked_fp8_product(a, b, 128, True), r, lp, mag, 2048, True, False, mask)
    assert not bad.passed and not bad.norm_passed and bad.norm_ratio > norm_bound(2048), bad
    # below NORM_MIN_ELEMENTS elements, and for the explanation's elementwise-only comparisons,
    # the test does not run
    few = compare_float(_blocked_fp8_product(a, b, 128, True)[:8, :8], r[:8, :8], lp[:8, :8], mag[:8, :8], 2048,
                        True, False, mask[:8, :8])
    assert few.norm_ratio == 0 and few.norm_passed
    alone = compare_float(_blocked_fp8_product(a, b, 128, True), r, lp, mag, 2048, True, False, mask,
                          statistical=False)
    assert alone.norm_passed and alone.norm_ratio == 0


# ----------------------------------------------------------------------------- shrinking and replay

def test_planted_failure_shrinks_and_replays(tmp_path, device, monkeypatch):
    """A post_reorder that mishandles tokens routed to more than one local expert."""
    def first_local_only(down_output, output, src2dst, topk_ids, topk_weights, start, end, topk, hidden_size,
                         BLOCK_SIZE=512):
        ids = topk_ids.long()
        local = (ids >= start) & (ids <= end)
        first = local & (local.cumsum(dim=1) == 1)
        reference.post_reorder(down_output, output, src2dst, torch.where(first, topk_ids, -1), topk_weights,
                               start, end, topk, hidden_size)

    monkeypatch.chdir(tmp_path)
    spec = SPECS["post_reorder"]
    out = sweep(spec, Candidate(first_local_only), "planted", "float32", "interpreter", device, n_cases=60,
                seed=1, database_dir=str(tmp_path / "db"))
    assert out.failure is not None and out.failure.probe in ("tolerance", "exact")
    small = CaseParams.from_json(out.failure.params)
    assert small.tokens <= 4, small
    # The printed replay command carries the exact case; running that case fails the same way.
    cmd = replay_command("planted", "interpreter", out.failure.params)
    case_json = shlex.split(cmd)[shlex.split(cmd).index("--case") + 1]
    again = run_case(spec, Candidate(first_local_only), CaseParams.from_json(case_json), device, "planted")
    assert again.status == "failed" and again.probe == out.failure.probe
    assert json.loads(case_json)["op"] == "post_reorder"


def test_failure_that_does_not_repeat_is_reported_as_found(tmp_path, device, monkeypatch):
    """A race shows on some runs only. When the failing case passes on Hypothesis's replay (its
    Flaky error), the sweep still reports the failure it saw, marked nondeterministic, and
    does not die with a harness error (a GPU mutant whose tiles overwrite each other's rows did)."""
    seen = {"calls": 0, "wrong": 0}

    def wrong_once(gateup_output, down_input, *args):
        reference.silu_and_mul(gateup_output, down_input, *args)
        if down_input.numel():
            seen["calls"] += 1
            if seen["calls"] == 2:     # the first checked run (the first call of a case is its decoy)
                seen["wrong"] += 1
                down_input.add_(1.0)   # this one call only: every later run of any case is right

    monkeypatch.chdir(tmp_path)
    # drawn cases only: Hypothesis replays a failing drawn case (an explicit one it does not)
    out = sweep(SPECS["silu_and_mul"], Candidate(wrong_once), "planted", "float32", "interpreter", device, n_cases=5,
                seed=0, database_dir=None, fixed_cases=False)
    assert seen["wrong"] == 1
    assert out.failure is not None and out.failure.status == "failed"
    assert "nondeterministic" in out.failure.message


def test_a_gpu_fault_ends_the_sweep_at_the_case_that_faulted(device, tmp_path, monkeypatch):
    """A GPU fault leaves the context unusable (every later CUDA call fails in its own way): the
    sweep raises it at once, for the isolated child to report CRASHED with the case in progress,
    rather than replaying it (Hypothesis called the disagreeing replays Flaky: a harness error,
    found on an H100 with the packed_scale_token_major mutant)."""
    calls = []

    def faults(gateup_output, down_input, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if len(calls) > 2:   # the sticky context
            raise RuntimeError("CUDA error: unspecified launch failure")
        reference.silu_and_mul(gateup_output, down_input, *args)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        sweep(SPECS["silu_and_mul"], Candidate(faults), "planted", "float32", "interpreter", device, n_cases=5,
              seed=0, database_dir=None, fixed_cases=False)
    assert len(calls) == 2

    def no_driver(*args):   # a CUDA build of torch on a machine without a driver: no verdict, not a fault
        raise RuntimeError("CUDA error: CUDA driver version is insufficient for CUDA runtime version")
    p = CaseParams(op="silu_and_mul", dtype="float32", tokens=4, topk=2, experts=4, start_expert=0, end_expert=3,
                   hidden=8, inter=8, seed=1)
    assert run_case(SPECS["silu_and_mul"], Candidate(no_driver), p, device).status == "not computable"


def test_the_row_counts_the_cases_whose_graph_was_replayed_and_says_why_others_were_not(device, monkeypatch):
    """The graph probe runs on a GPU only; its outcome per case (replayed, or captured only and why)
    is counted by the sweep and named in the row's note, so a probe that never replays shows."""
    import harness.fuzz as fuzz
    from harness.row_check import graph_note
    from harness.runner import GRAPH_REPLAYED, CaseResult
    seen = {"n": 0}

    def fake_run_case(spec, candidate, params, *a, **k):
        seen["n"] += 1
        graph = GRAPH_REPLAYED if seen["n"] % 3 else "skipped: a returned tensor's shape follows the values"
        return CaseResult(spec.name, "x", params.dtype, params.to_json(), "passed", graph=graph)

    monkeypatch.setattr(fuzz, "run_case", fake_run_case)
    out = sweep(SPECS["silu_and_mul"], Candidate(reference.silu_and_mul), "x", "float32", "interpreter", device,
                n_cases=9, seed=0, database_dir=None, fixed_cases=False)
    assert out.graph_replayed + out.graph_skipped == out.passed == seen["n"] and out.graph_skipped == seen["n"] // 3
    assert out.graph_skip_reason == "skipped: a returned tensor's shape follows the values"
    note = graph_note(out.graph_replayed, out.graph_skipped, out.graph_skip_reason)
    assert note == (f"CUDA graph replayed on new inputs in {out.graph_replayed} case(s), only captured in "
                    f"{out.graph_skipped} (a returned tensor's shape follows the values)")


def test_float64_reference_out_of_device_memory_is_evaluated_on_the_host(seed, device, monkeypatch):
    """A large case whose float64 reference was to run on the GPU and ran out of its memory is
    evaluated again on the host, with the same result, instead of failing the case."""
    import harness.runner as runner
    spec = SPECS["post_reorder"]
    p = CaseParams(op="post_reorder", dtype="bfloat16", tokens=9, topk=3, experts=6, start_expert=1, end_expert=4,
                   hidden=40, routing="skewed", seed=seed)
    sample = spec.build(p, torch.device(device))
    calls = []
    real = runner._float64_references

    def short_of_memory(spec_, sample_, needs_float, on_host):
        calls.append(on_host)
        if not on_host:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (planted)")
        return real(spec_, sample_, needs_float, on_host)
    monkeypatch.setattr(runner, "_float64_references", short_of_memory)
    monkeypatch.setattr(runner, "_f64_on_host", lambda s: False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    expected = runner.reference_outputs(spec, sample)
    assert calls == [False, True]
    assert all(t.device.type == "cpu" for t in expected.f64.values()) and expected.f64
    direct = real(spec, sample, [o for o in spec.outputs if o.how(p) in ("float", "normwise")], True)[0]
    assert all(torch.equal(expected.f64[k], direct[k]) for k in direct)


def test_large_case_float64_reference_on_the_host_still_catches_errors(seed, device, monkeypatch):
    """Past F64_ON_HOST_ELEMENTS the float64 reference is evaluated on the host (a `large`
    case's float64 copies do not fit on the GPU): the comparison still passes a right answer
    and still catches a wrong one."""
    import harness.runner as runner
    monkeypatch.setattr(runner, "F64_ON_HOST_ELEMENTS", 0)
    p = CaseParams(op="post_reorder", dtype="bfloat16", tokens=9, topk=3, experts=6, start_expert=1, end_expert=4,
                   hidden=40, routing="skewed", seed=seed)
    spec = SPECS["post_reorder"]
    expected = runner.reference_outputs(spec, spec.build(p, torch.device(device)))
    assert all(t.device.type == "cpu" for t in list(expected.f64.values()) + list(expected.mag.values()))
    assert run_case(spec, Candidate(reference.post_reorder), p, device).status == "passed"

    def off_by_a_bit(down_output, output, *args):
        reference.post_reorder(down_output, output, *args)
        output.mul_(1.05)
    res = run_case(spec, Candidate(off_by_a_bit), p, device)
    assert res.probe == "tolerance", res.message


# ----------------------------------------------------------------------------- precision named

def _tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32 (10 stored mantissa bits, round to nearest even), as float64."""
    bits = x.float().contiguous().view(torch.int32)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return rounded.view(torch.float32).double()


def test_tf32_matmul_passes_as_tf32_unless_ieee_is_required(device):
    """Triton's default float32 dot uses TF32: a correct upstream kernel must not be FAILED for
    it, but the row says so, and --require-ieee-fp32 makes it a failure that names TF32."""
    p = CaseParams(op="grouped_gemm", dtype="float32", tokens=40, topk=3, experts=5, start_expert=1, end_expert=3,
                   hidden=300, inter=48, routing="skewed", seed=11)
    spec = SPECS["grouped_gemm"]

    def tf32_gemm(a, b, c, *rest):
        c64 = torch.empty(c.shape, dtype=torch.float64, device=c.device)
        reference.grouped_gemm(_tf32(a), _tf32(b), c64, *rest)
        rows = slice(int(rest[2][0]), int(rest[2][-1]))
        c[rows] = c64[rows].float()

    default = run_case(spec, Candidate(tf32_gemm), p, device, "tf32")
    assert default.status == "passed" and default.details["c"].get("precision") == "tf32", default.message
    strict = run_case(spec, Candidate(tf32_gemm), p, device, "tf32", require_ieee_fp32=True)
    assert strict.status == "failed" and strict.probe == "tolerance" and "TF32" in strict.message, strict.message
    exact = run_case(spec, Candidate(reference.grouped_gemm), p, device, "ref")
    assert exact.status == "passed" and "precision" not in exact.details["c"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_accumulation_fails_and_is_named(device, dtype):
    """SGLang's post_reorder sums its K terms in the input dtype: a failure by our contract, named
    by the dtype it summed in."""
    low = getattr(torch, dtype)
    p = CaseParams(op="post_reorder", dtype=dtype, tokens=30, topk=8, experts=8, hidden=64, inter=8,
                   routing="uniform", seed=5)
    spec = SPECS["post_reorder"]

    def bf16_sum(down_output, output, src2dst, topk_ids, topk_weights, start, end, topk, hidden_size, BLOCK_SIZE=512):
        acc = torch.zeros(output.shape, dtype=low, device=output.device)
        for k in range(topk):
            e = topk_ids[:, k]
            local = (e >= start) & (e <= end)
            rows = down_output[src2dst.view(-1, topk)[:, k].clamp_min(0).long()]
            term = (rows.float() * topk_weights[:, k:k + 1]).to(low)
            acc = torch.where(local[:, None], (acc.float() + term.float()).to(low), acc)
        output.copy_(acc)

    res = run_case(spec, Candidate(bf16_sum), p, device, "bf16acc")
    assert res.status == "failed" and res.probe == "tolerance", res.message
    assert f"consistent with accumulating in {dtype}" in res.message, res.message


# ----------------------------------------------------------------------------- preconditions

def _asserts_k_aligned(a, b, c, *rest):
    assert a.shape[1] % 128 == 0, "K must be divisible by the quant block"   # as SGLang's block-wise GEMM
    reference.grouped_gemm(a, b, c, *rest)


def test_rejection_outside_a_precondition_is_rejected_not_failed(device):
    spec = SPECS["grouped_gemm"]
    outside = CaseParams(op="grouped_gemm", dtype="fp8_block", tokens=6, topk=2, experts=4, hidden=7, inter=16,
                         seed=1)
    res = run_case(spec, Candidate(_asserts_k_aligned), outside, device, "sglang-like")
    assert res.status == "rejected" and "Kd a multiple" in res.message, res.message
    # the same assertion on an in-contract case is a failure
    inside = CaseParams(op="grouped_gemm", dtype="fp8_block", tokens=6, topk=2, experts=4, hidden=128, inter=16,
                        seed=1)

    def always_asserts(*args):
        raise AssertionError("K must be divisible by the quant block")
    failed = run_case(spec, Candidate(always_asserts), inside, device, "broken")
    assert failed.status == "failed" and failed.probe == "exception", failed.message


def test_candidates_requiring_a_precondition_are_fuzzed_within_it(device):
    spec = SPECS["grouped_gemm"]
    cand = Candidate(_asserts_k_aligned, requires=("fp8_block_k_aligned",))
    seen = []
    out = sweep(spec, cand, "sglang-like", "fp8_block", "interpreter", device, n_cases=6, seed=0,
                database_dir=None, on_case=lambda r: seen.append(r))
    assert out.failure is None and out.rejected == 0 and out.passed >= 6
    assert all(json.loads(r.params)["hidden"] % 128 == 0 for r in seen)


def test_gemm_failure_names_the_group_and_the_weight_used(device):
    """A GEMM row is located by the weight it is multiplied by (b[weight_indices[g]]), not only by
    the expert id of the slot behind it."""
    p = CaseParams(op="grouped_gemm", dtype="float32", tokens=6, topk=2, experts=4, start_expert=1, end_expert=2,
                   hidden=16, inter=8, seed=2)

    def wrong_last_row(a, b, c, batch_size, wcm, seg_indptr, weight_indices, *rest):
        reference.grouped_gemm(a, b, c, batch_size, wcm, seg_indptr, weight_indices, *rest)
        c[int(seg_indptr[-1]) - 1] += 1.0

    res = run_case(SPECS["grouped_gemm"], Candidate(wrong_last_row), p, device, "planted")
    assert res.probe == "tolerance", res.message
    where = res.details["where"]
    seg = SPECS["grouped_gemm"].build(p, torch.device(device)).args
    assert where["group"] == p.e_local - 1 and where["weight"] == int(seg["weight_indices"][-1]), where


def test_a_case_the_interpreter_cannot_compute_gets_no_verdict(device):
    """harness/interpreter.py raises InterpreterCannotCompute for what it cannot model: the case
    is 'not computable', never FAILED, and a row of only such cases says so."""
    from harness.interpreter import InterpreterCannotCompute
    from harness.options import CheckOptions
    from harness.row_check import check_one

    def cannot(*args):
        raise InterpreterCannotCompute("fp8 arithmetic")
    p = CaseParams(op="post_reorder", dtype="float32", tokens=4, topk=2, experts=4, hidden=8, inter=8, seed=1)
    res = run_case(SPECS["post_reorder"], Candidate(cannot), p, device, "x")
    assert res.status == "not computable" and res.ok and "not computable on the interpreter" in res.message

    class Impl:
        name, ops, notes = "x", {"post_reorder": cannot}, {}

        def candidate(self, op):
            return Candidate(cannot)
    row = check_one(CheckOptions(cases=3), "interpreter", Impl(), "x", "post_reorder", "float32")
    assert row.status == "NOT_COMPUTABLE" and row.passed == 0 and "not computable" in row.reason, row


def test_a_stand_in_that_cannot_be_faithful_gets_no_verdict(device):
    """An SGLang function reaching a stand-in that raises StandInError (e.g. a JIT-compiled CUDA
    kernel outside the kernel file) is 'not computable', never FAILED; any other RuntimeError is."""
    from harness.sglang.standins import StandInError

    def stand_in(*args):
        raise StandInError("a JIT kernel")

    def broken(*args):
        raise RuntimeError("a JIT kernel")
    p = CaseParams(op="post_reorder", dtype="float32", tokens=4, topk=2, experts=4, hidden=8, inter=8, seed=1)
    res = run_case(SPECS["post_reorder"], Candidate(stand_in), p, device, "x")
    assert res.status == "not computable" and "without the sglang package" in res.message
    res = run_case(SPECS["post_reorder"], Candidate(broken), p, device, "x")
    assert not res.ok and res.probe == "exception"


def test_graph_replay_needs_a_case_that_fits_the_captured_call():
    """A CUDA graph bakes in tensor shapes, dtypes, None-ness and Python scalars: the graph probe
    replays only on a case that keeps them (found on H100: a replay with another
    use_int64_offset, another routed scaling factor, a bf16 weight copied into a float32 one)."""
    from harness.runner import _fits_capture
    t = torch.zeros(3, 2)
    base = dict(x=t, w=torch.zeros(3), flag=False, factor=2.5, opt=None)
    assert _fits_capture(base, dict(base, x=torch.ones(3, 2)))
    assert not _fits_capture(base, dict(base, x=torch.zeros(4, 2)))
    assert not _fits_capture(base, dict(base, w=torch.zeros(3, dtype=torch.bfloat16)))
    assert not _fits_capture(base, dict(base, flag=True))
    assert not _fits_capture(base, dict(base, opt=torch.zeros(1)))
    assert not _fits_capture(base, dict(base, factor=1.5))
    assert _fits_capture(base, dict(base, factor=1.5), tensors_only=True)
    assert not _fits_capture(base, dict(base, opt=torch.zeros(1)), tensors_only=True)
