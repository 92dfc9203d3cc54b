"""The bench method on the CPU: statistics, verdicts, interleaving, the cost model, the
cheat detectors, baseline loading from a git revision, and the command on the interpreter."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import bench
from harness.bench import BenchCase, BaselineError, load_revision, resolve_baseline, time_case
from harness.cases import CaseParams
from harness.costs import Cost, cost_of, perf_of
from harness.options import BenchOptions
from harness.specs import SPECS
from harness.impls import load_implementation
from harness.timing import (FASTER, SLOWER, TOO_FEW, WITHIN_NOISE, Ceilings, Stats, TimingConfig, Workload,
                            bootstrap_ratio_ci, compare, quantile, round_order, run_interleaved, verdict)

REPO = Path(__file__).resolve().parents[1]
FAKE_CEILINGS = Ceilings(device="test", copy_gbps=100.0, matmul_tflops=1.0, copy_bytes=1 << 20, matmul_n=64,
                         copy=Stats.of([1.0]), matmul=Stats.of([1.0]), representative=False)
CPU_CONFIG = TimingConfig(warmup_ms=1.0, rep_ms=20.0, min_rounds=25, max_rounds=60, estimate_rounds=1)


# ----------------------------------------------------------------------------- statistics

def test_quantile_matches_numpy_linear_interpolation():
    xs = [5.0, 1.0, 4.0, 2.0, 10.0, 3.5]
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_stats_reports_median_and_quartiles():
    s = Stats.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (s.n, s.median_ms, s.q1_ms, s.q3_ms, s.min_ms, s.max_ms) == (5, 3.0, 2.0, 4.0, 1.0, 100.0)


def _lognormal(seed, n=300, scale=1.0):
    return (np.random.default_rng(seed).lognormal(mean=0.0, sigma=0.05, size=n) * scale).tolist()


def test_bootstrap_ci_contains_one_for_samples_of_one_distribution():
    ratio, lo, hi = bootstrap_ratio_ci(_lognormal(1), _lognormal(2), seed=0)
    assert lo <= 1.0 <= hi
    assert lo < ratio < hi
    assert verdict(lo, hi) == WITHIN_NOISE


def test_bootstrap_ci_excludes_one_for_a_20_percent_shift():
    base = _lognormal(1)
    slower = _lognormal(2, scale=1.2)
    ratio, lo, hi = bootstrap_ratio_ci(base, slower, seed=0)
    assert hi < 1.0 and ratio == pytest.approx(1 / 1.2, rel=0.02)
    assert verdict(lo, hi) == SLOWER
    ratio, lo, hi = bootstrap_ratio_ci(slower, base, seed=0)
    assert lo > 1.0 and ratio == pytest.approx(1.2, rel=0.02)
    assert verdict(lo, hi) == FASTER


def test_bootstrap_is_seeded():
    a, b = _lognormal(3, n=50), _lognormal(4, n=50)
    assert bootstrap_ratio_ci(a, b, seed=7) == bootstrap_ratio_ci(a, b, seed=7)
    assert bootstrap_ratio_ci(a, b, seed=7)[1:] != bootstrap_ratio_ci(a, b, seed=8)[1:]


def test_paired_bootstrap_cancels_drift_shared_by_a_round():
    # Each round's clock drifts by up to +-40%; the candidate is 3% slower within every round.
    rng = np.random.default_rng(0)
    drift = rng.uniform(0.6, 1.4, size=400)
    base = drift * rng.normal(1.0, 0.002, size=400)
    cand = drift * 1.03 * rng.normal(1.0, 0.002, size=400)
    _, lo, hi = bootstrap_ratio_ci(base, cand, seed=0)               # paired: drift cancels
    assert hi < 1.0
    _, lo_u, hi_u = bootstrap_ratio_ci(base, cand[:-1], seed=0)      # unequal lengths: unpaired
    assert lo_u <= 1.0 <= hi_u


def test_verdict_thresholds():
    assert verdict(1.01, 1.05) == FASTER
    assert verdict(0.90, 0.99) == SLOWER
    assert verdict(0.99, 1.01) == WITHIN_NOISE
    assert verdict(1.01, 1.05, min_effect=0.02) == WITHIN_NOISE
    assert verdict(0.95, 0.97, min_effect=0.02) == SLOWER
    with pytest.raises(ValueError):
        verdict(1.1, 1.0)


def test_compare_names_the_direction():
    c = compare("base", [2.0] * 20, "new", [1.0] * 20, "eager", n_boot=200)
    assert (c.ratio, c.verdict, c.n_pairs, c.mode) == (2.0, FASTER, 20, "eager")
    assert compare("base", [2.0] * 3, "new", [1.0] * 3, "eager", n_boot=200).verdict == TOO_FEW


# ----------------------------------------------------------------------------- the engine (CPU clock)

def test_round_order_rotates():
    assert [round_order(2, r) for r in range(3)] == [[0, 1], [1, 0], [0, 1]]
    assert round_order(3, 1) == [1, 2, 0]


def test_run_interleaved_interleaves_and_prepares_the_final_round():
    log = []

    def work(tag, seconds):
        def call():
            log.append(tag)
            time.sleep(seconds)
        return call

    hook_calls = []
    # 1 ms against 10 ms: far apart enough that a loaded machine's sleep jitter (a run beside
    # 12 pytest workers once made 1 ms against 3 ms "within noise") cannot blur the verdict.
    fast = Workload("fast", (work("a", 0.001),))
    slow = Workload("slow", (work("b", 0.010),))
    cfg = TimingConfig(warmup_ms=0.0, rep_ms=0.0, min_rounds=20, max_rounds=20, estimate_rounds=1)
    run = run_interleaved([fast, slow], "cpu", cfg, before_final_round=lambda: hook_calls.append(len(log)))
    assert run.n_rounds == 20 and [len(t) for t in run.times_ms] == [20, 20]
    timed = log[-40:]
    assert timed[:4] == ["a", "b", "b", "a"]                     # A B, B A, ...
    assert hook_calls == [len(log) - 2]                           # once, just before the last round
    c = compare("fast", run.times_ms[0], "slow", run.times_ms[1], "eager", n_boot=500)
    assert c.verdict == SLOWER and c.ratio < 0.6


def test_run_interleaved_rotates_call_variants():
    seen = []
    w = Workload("w", tuple((lambda k=k: seen.append(k)) for k in range(3)))
    cfg = TimingConfig(warmup_ms=0.0, rep_ms=0.0, min_rounds=6, max_rounds=6, estimate_rounds=1)
    run = run_interleaved([w], "cpu", cfg)
    assert seen[-6:] == [0, 1, 2, 0, 1, 2]
    assert run.final_variant == [2]


# ----------------------------------------------------------------------------- cost model

def test_pre_and_post_reorder_bytes_by_hand():
    # T=4, K=2, H=8, bf16, experts 0..1 local: slots with ids 0, 1, 0, 1 -> 4 local slots.
    ids = torch.tensor([[0, 3], [1, 2], [2, 3], [0, 1]])
    p = CaseParams(op="pre_reorder", dtype="bfloat16", tokens=4, topk=2, experts=4, start_expert=0, end_expert=1,
                   hidden=8)
    args = dict(input=torch.empty(4, 8, dtype=torch.bfloat16), gateup_input=torch.empty(8, 8, dtype=torch.bfloat16),
                topk_ids=ids)
    assert cost_of(p, args) == Cost(4 * 8 * 2 + 4 * 8 * 2, 0, cost_of(p, args).note)
    args["gateup_input"] = torch.empty(8, 8, dtype=torch.float8_e4m3fn)           # fp8 rows: 1 byte each
    assert cost_of(p, args).bytes == 64 + 32
    post = dataclasses.replace(p, op="post_reorder")
    pargs = dict(down_output=torch.empty(8, 8, dtype=torch.bfloat16), output=torch.empty(4, 8, dtype=torch.bfloat16),
                 topk_ids=ids)
    assert cost_of(post, pargs).bytes == 4 * 8 * 2 + 4 * 8 * 2


def test_reorder_bytes_reproduce_the_anchor_bandwidth():
    # ANCHORS.md: pre_reorder T=4096, K=8, H=7168, all 256 experts local: 309 us, 1,712 GB/s.
    T, K, H = 4096, 8, 7168
    p = CaseParams(op="pre_reorder", dtype="bfloat16", tokens=T, topk=K, experts=256, hidden=H)
    args = dict(input=torch.empty(T, H, dtype=torch.bfloat16, device="meta"),
                gateup_input=torch.empty(T * K, H, dtype=torch.bfloat16, device="meta"),
                topk_ids=torch.randint(0, 256, (T, K)))
    cost = cost_of(p, args)
    assert cost.bytes == T * H * 2 * (1 + K)
    perf = perf_of(cost, 0.309, copy_gbps=3017.0, matmul_tflops=694.0)
    assert perf.gbps == pytest.approx(1712, rel=0.005)
    assert perf.pct_of_roof == pytest.approx(57, abs=0.5) and perf.bound == "memory"


def test_grouped_gemm_counts_only_rows_and_weights_in_use():
    # Groups [2, 5), [5, 5) (empty), [5, 9): 7 rows; weights 3 and 0 read, weight 1 (empty group) not.
    N, Kd, M = 16, 32, 12
    p = CaseParams(op="grouped_gemm", dtype="bfloat16", tokens=6, topk=2, experts=3, hidden=Kd, inter=N)
    args = dict(a=torch.empty(M, Kd, dtype=torch.bfloat16), b=torch.empty(4, N, Kd, dtype=torch.bfloat16),
                c=torch.empty(M, N, dtype=torch.bfloat16), seg_indptr=torch.tensor([2, 5, 5, 9]),
                weight_indices=torch.tensor([3, 1, 0]), scale_a=None, scale_b=None)
    cost = cost_of(p, args)
    assert cost.flops == 2 * 7 * N * Kd
    assert cost.bytes == 7 * Kd * 2 + 2 * N * Kd * 2 + 7 * N * 2
    perf = perf_of(cost, 1.0, copy_gbps=1e9, matmul_tflops=1e-6)          # absurd ceilings: compute-bound
    assert perf.bound == "compute"


@pytest.mark.parametrize("dtype,rate", [("bfloat16", 1.0), ("fp8_tensor", 2.0), ("fp8_block", 2.0)])
def test_fp8_gemm_flops_count_at_twice_the_bf16_ceiling(dtype, rate):
    """The measured matmul ceiling is bf16's; e4m3 tensor cores run at twice it, so an fp8 GEMM's
    compute floor is half a bf16 one's (without this an fp8 kernel showed 144% of its roof)."""
    from harness.specs import SPECS
    p = CaseParams(op="grouped_gemm", dtype=dtype, tokens=64, topk=2, experts=4, hidden=256, inter=128)
    cost = cost_of(p, SPECS["grouped_gemm"].build(p, torch.device("cpu")).args)
    assert cost.flop_rate == rate
    perf = perf_of(cost, 1.0, copy_gbps=1e9, matmul_tflops=1e-6)          # compute-bound
    assert perf.bound == "compute"
    assert perf.floor_ms == pytest.approx(cost.flops / (1e-6 * rate * 1e12) * 1e3)


def test_cost_of_every_op_on_a_built_case():
    from harness.specs import SPECS
    for op, spec in SPECS.items():
        dtype = "bfloat16" if "bfloat16" in spec.dtypes else spec.dtypes[0]
        p = CaseParams(op=op, dtype=dtype, tokens=6, topk=2, experts=8, start_expert=2, end_expert=5, hidden=16,
                       inter=8, invalid_frac=0.3 if op == "deepep_preprocess" else 0.0)
        cost = cost_of(p, spec.build(p, torch.device("cpu")).args)
        assert cost.bytes > 0, op
        assert (cost.flops > 0) == (op in ("grouped_gemm", "ep_moe_forward")), op


# ----------------------------------------------------------------------------- cheats and A/B on cases

def _case(op="post_reorder", **kw):
    base = dict(op=op, dtype="bfloat16", tokens=8, topk=2, experts=8, start_expert=2, end_expert=5, hidden=32,
                inter=16)
    base.update(kw)
    return BenchCase(CaseParams(**base), "test")


def _renamed(impl, name, op, fn):
    return dataclasses.replace(impl, name=name, ops={op: fn})


@pytest.mark.parametrize("op", ["post_reorder", "ep_preprocess", "grouped_gemm"])
def test_cached_and_skipping_candidates_are_flagged_honest_one_is_not(op):
    ref = load_implementation("reference")
    fn = ref.ops[op]
    calls = {"n": 0}

    def skips_after_first(*args):      # does the work once, then returns the first result
        calls["n"] += 1
        if calls["n"] == 1:
            calls["first"] = fn(*args)
        return calls["first"]

    case = _case(op, dtype="int32") if op == "ep_preprocess" else _case(op)
    impls = [ref, _renamed(ref, "cached", op, bench._caching(fn)), _renamed(ref, "skips", op, skips_after_first)]
    rows = {r.impl: r for r in time_case(case, impls, "cpu", CPU_CONFIG, FAKE_CEILINGS, modes=("eager",))}
    assert rows["reference"].status == "ok", rows["reference"].message
    assert rows["cached"].status == "WRONG" and "fresh inputs" in rows["cached"].message
    assert rows["skips"].status == "WRONG"
    assert rows["reference"].eager.stats.n == rows["cached"].eager.stats.n >= CPU_CONFIG.min_rounds


def test_slowed_copy_is_reported_slower_and_itself_within_noise_is_not_slower():
    ref = load_implementation("reference")
    op = "post_reorder"
    case = _case(op, tokens=16, hidden=64)
    slowed = _renamed(ref, "slowed", op, bench._slowed(ref.ops[op]))
    cfg = dataclasses.replace(CPU_CONFIG, min_rounds=60, max_rounds=60)
    rows = {r.impl: r for r in time_case(case, [ref, slowed], "cpu", cfg, FAKE_CEILINGS, baseline="reference",
                                         modes=("eager",))}
    c = rows["slowed"].eager.vs_baseline
    assert rows["slowed"].status == "ok"
    # An extra pass over the output: clearly slower, by how much depends on the host.
    assert c.verdict == SLOWER and 0.35 < c.ratio < 0.9 and c.ci_high < 1.0, c
    assert rows["reference"].eager.vs_baseline is None


def test_a_crashing_candidate_is_an_error_row_not_an_exception():
    ref = load_implementation("reference")

    def crashes(*args):
        raise RuntimeError("boom")

    rows = time_case(_case(), [_renamed(ref, "crash", "post_reorder", crashes), ref], "cpu", CPU_CONFIG,
                     FAKE_CEILINGS, modes=("eager",))
    assert [(r.impl, r.status) for r in rows] == [("crash", "error"), ("reference", "ok")]
    assert "boom" in rows[0].message


def test_rows_are_json_safe():
    ref = load_implementation("reference")
    rows = time_case(_case(), [ref], "cpu", CPU_CONFIG, FAKE_CEILINGS, modes=("eager",))
    back = json.loads(json.dumps([dataclasses.asdict(r) for r in rows]))
    assert back[0]["eager"]["stats"]["n"] == rows[0].eager.stats.n
    with pytest.raises(dataclasses.FrozenInstanceError):
        rows[0].status = "changed"


def test_data_movement_cases_time_a_same_bytes_copy_beside_the_implementations():
    """One copy of the case's bytes per case and mode, in the same interleaved run; the notes give
    each implementation's time against it. A GEMM (FLOPs) gets none."""
    ref = load_implementation("reference")
    op = "post_reorder"
    slowed = _renamed(ref, "slowed", op, bench._slowed(ref.ops[op]))
    case = _case(op, tokens=16, hidden=64)
    cfg = dataclasses.replace(CPU_CONFIG, min_rounds=60, max_rounds=60)
    rows = time_case(case, [ref, slowed], "cpu", cfg, FAKE_CEILINGS, modes=("eager",))
    copy_ms = rows[0].eager.copy_ms
    assert copy_ms is not None and copy_ms > 0 and rows[1].eager.copy_ms == copy_ms
    assert rows[0].graph is None
    lines = [line for line in bench.format_notes(rows).splitlines() if "one copy kernel of the same" in line]
    assert len(lines) == 1 and f"{op} {case.label()}" in lines[0], lines
    ratios = {part.split()[0]: float(part.split()[1].rstrip("x").replace(",", "")) for part in lines[0].split("against it: ")[1].split(", ")}
    assert ratios["reference"] == pytest.approx(rows[0].eager.stats.median_ms / copy_ms, rel=0.01)
    assert ratios["slowed"] > ratios["reference"], ratios       # twice the work against the same copy
    gemm = time_case(_case("grouped_gemm", dtype="float32"), [ref], "cpu", CPU_CONFIG, FAKE_CEILINGS, modes=("eager",))
    assert gemm[0].eager.copy_ms is None and "one copy kernel" not in bench.format_notes(gemm)


def test_rows_record_how_ours_chose_its_gemm_tile_and_a_failing_description_is_a_note():
    ours = load_implementation("ours")
    case = _case("grouped_gemm", dtype="float32")
    rows = time_case(case, [ours], "cpu", CPU_CONFIG, FAKE_CEILINGS, modes=("eager",))
    assert rows[0].status == "ok" and rows[0].launch.startswith("interpreter tile: BM 16 BN 32"), rows[0].launch
    assert f"ours grouped_gemm {case.label()}: interpreter tile" in bench.format_notes(rows)

    def broken(op):
        raise KeyError(op)

    rows = time_case(case, [dataclasses.replace(ours, describe=broken)], "cpu", CPU_CONFIG, FAKE_CEILINGS,
                     modes=("eager",))
    assert rows[0].status == "ok" and rows[0].launch.startswith("the launch description failed: KeyError"), rows[0].launch
    assert time_case(_case(), [load_implementation("reference")], "cpu", CPU_CONFIG, FAKE_CEILINGS,
                     modes=("eager",))[0].launch == ""


def test_autotuned_gemm_launch_names_the_pick_and_the_runner_up():
    """The GPU branch of optimized.gemm's description (the autotuner's pick and timings)."""
    import triton
    from optimized import gemm

    fast, slow = (triton.Config({"BM": bm, "BN": 128, "BK": 64, "BM2": 0, "GROUP_M": 8, "PERSIST": 0, "WS": False},
                                num_warps=4, num_stages=4) for bm in (128, 64))
    text = gemm._autotuned_text(fast, {slow: [1.1, 1.0, 1.2], fast: [1.0, 0.9, 1.1]})
    assert text == ("autotuned: BM 128 BN 128 BK 64 GROUP_M 8 w4 s4 (runner-up BM 64 BN 128 BK 64 GROUP_M 8 w4 s4, "
                    "+10.0%, of 2 timed)"), text
    assert gemm._autotuned_text(fast, None).endswith("(picked earlier in this process)")
    assert gemm._autotuned_text(None, None).startswith("autotuned: pick not exposed by this triton")


def test_autotuned_launch_keeps_the_candidates_timings_for_later_launches_of_its_key(monkeypatch):
    """The bench describes the last timed call, long after the autotuner timed the candidates at
    the first: the runner-up must still be named then. The autotuned branch of gemm._launch runs
    here with a stand-in for triton's Autotuner (no kernel is launched)."""
    import triton
    from optimized import gemm

    picks = [triton.Config({"BM": bm, "BN": 128, "BK": 64}, num_warps=4, num_stages=3) for bm in (128, 64)]

    class StandInTuner:
        best_config = picks[0]

        def __getitem__(self, grid):
            def run(*args, **meta):
                if not hasattr(self, "configs_timings"):   # the first call of the key times the candidates
                    self.configs_timings = {picks[1]: [2.0], picks[0]: [1.0]}
            return run

    tuner = StandInTuner()
    monkeypatch.setattr(gemm, "_tuner", lambda kind, qbk: tuner)
    monkeypatch.setattr(gemm, "AUTOTUNE_MIN_MACS", 0)
    monkeypatch.setattr(gemm._config, "is_interpreter", lambda: False)
    monkeypatch.setattr(gemm, "_TUNE_TIMINGS", {})
    a, b, c = torch.randn(64, 32), torch.randn(2, 48, 32), torch.empty(64, 48)
    seg, widx = torch.tensor([0, 40, 64]), torch.tensor([0, 1])
    for _ in range(2):
        gemm._launch(a, b, c, seg, widx, None, None, 2, gemm.MODE_PLAIN, "fp32", 1, 1, 1, 1, 1, use_tma=False)
        assert gemm.describe_last_launch() == ("autotuned: BM 128 BN 128 BK 64 w4 s3 (runner-up BM 64 BN 128 BK 64 "
                                               "w4 s3, +100.0%, of 2 timed), pointers"), gemm.describe_last_launch()


# ----------------------------------------------------------------------------- cases and presets

def test_presets_cover_decode_and_prefill_on_one_ep8_rank():
    cases = bench.preset_cases("deepseek-v3", ["pre_reorder", "grouped_gemm"], bench.DECODE_TOKENS +
                               bench.PREFILL_TOKENS, bench.PRESET_ROUTINGS, None)
    pre = [c.params for c in cases if c.params.op == "pre_reorder"]
    assert sorted({p.tokens for p in pre}) == [1, 64, 1024, 4096]
    assert {p.routing for p in pre} == {"uniform", "skewed"}
    assert {(p.e_local, p.hidden, p.dtype) for p in pre} == {(32, 7168, "bfloat16")}
    gemm = {(c.variant, c.params.inter, c.params.hidden) for c in cases if c.params.op == "grouped_gemm"}
    assert gemm == {("gate_up", 4096, 7168), ("down", 7168, 2048)}


def test_default_suite_is_the_anchor_shapes():
    options = BenchOptions()
    cases = bench.select_cases(options, "cuda")
    got = {(c.params.op, c.params.tokens, c.params.topk, c.params.experts, c.params.e_local) for c in cases}
    assert ("ep_preprocess", 16384, 8, 256, 256) in got
    assert ("post_reorder", 256, 8, 256, 32) in got
    assert ("grouped_gemm", 4096, 2, 8, 8) in got
    small = bench.select_cases(options, "interpreter")
    assert max(c.params.tokens for c in small) <= bench.INTERPRETER_LIMITS["tokens"]


def test_case_labels_name_a_dtype_other_than_the_ops_default_within_the_tables_width():
    """The fp8 sweep times one shape in three dtypes: its rows must say which is which, inside the
    50 characters the table keeps of a case."""
    cases = bench.anchor_cases(["grouped_gemm", "ep_preprocess"], None, ["uniform"],
                               ["bfloat16", "fp8_block", "int32", "int64"])
    labels = {(c.params.op, c.params.dtype): c.label()[:50] for c in cases}
    ds = [c for c in cases if c.params.op == "grouped_gemm" and c.params.dtype == "fp8_block"
          and c.variant.endswith("gate_up") and c.params.experts == 256 and c.params.tokens == 4096]
    assert ds and "fp8_block" in ds[0].label()[:50], ds
    assert all(d not in labels[("grouped_gemm", "bfloat16")] for d in ("bfloat16", "fp8"))
    assert "int32" not in labels[("ep_preprocess", "int32")] and "int64" in labels[("ep_preprocess", "int64")]


# ----------------------------------------------------------------------------- baselines

def _git(repo, *argv):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *argv], check=True,
                   capture_output=True)


def test_baseline_from_a_git_revision_loads_its_optimized_package_side_by_side(tmp_path):
    pkg = tmp_path / "optimized"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .impl import post_reorder\n")
    (pkg / "impl.py").write_text("import reference\nVERSION = 1\n"
                                 "def post_reorder(*args):\n    return reference.post_reorder(*args)\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "one")
    (pkg / "impl.py").write_text((pkg / "impl.py").read_text().replace("VERSION = 1", "VERSION = 2"))
    _git(tmp_path, "commit", "-q", "-am", "two")
    impl, cleanup = load_revision("HEAD~1", repo=tmp_path)
    try:
        fn = impl.ops["post_reorder"]
        assert impl.name == "ours@HEAD~1" and "ep_preprocess" not in impl.ops
        assert fn.__module__ != "optimized.impl" and fn.__module__.endswith(".impl")
        assert sys.modules[fn.__module__].VERSION == 1
        rows = time_case(_case(), [impl], "cpu", CPU_CONFIG, FAKE_CEILINGS, modes=("eager",))
        assert rows[0].status == "ok"
    finally:
        cleanup()
    listed = subprocess.run(["git", "-C", str(tmp_path), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(listed.strip().splitlines()) == 1                  # the temporary worktree is gone


def test_baseline_names_an_implementation_or_fails_clearly(tmp_path):
    impl, cleanup = resolve_baseline("reference", repo=tmp_path)
    assert impl.name == "reference" and "post_reorder" in impl.ops
    cleanup()
    with pytest.raises(BaselineError, match="neither an implementation source"):
        resolve_baseline("no-such-revision-or-impl", repo=REPO)


# ----------------------------------------------------------------------------- the command

def test_bench_command_on_the_interpreter_says_timings_are_not_representative(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "harness", "--backend", "interpreter", "bench", "--op",
                           "post_reorder", "--impl", "reference", "--tokens", "4", "--json", str(out_json)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not representative" in proc.stdout
    assert "ceilings on CPU" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["representative"] is False and report["complete"] is True and report["pending"] == 0
    rows = report["rows"]
    assert rows and all(r["status"] == "ok" and r["eager"]["stats"]["n"] >= 3 for r in rows)
    assert all(r["graph"] is None for r in rows)


def test_bench_json_keeps_the_cases_timed_when_a_run_is_cut_short(tmp_path, monkeypatch):
    """The report is rewritten after every case: a time limit striking mid-run leaves the rows
    timed so far, marked incomplete, with the number of cases still pending."""
    from harness import bench
    from harness.cli import main
    out_json = tmp_path / "bench.json"
    real_time_case, timed = bench.time_case, []

    def cut_after_first(case, *args, **kw):
        if timed:
            raise KeyboardInterrupt  # the time limit strikes during the second case
        timed.append(case)
        return real_time_case(case, *args, **kw)

    monkeypatch.setattr(bench, "time_case", cut_after_first)
    with pytest.raises(KeyboardInterrupt):
        main(["--backend", "interpreter", "bench", "--op", "post_reorder", "--impl", "reference", "--tokens", "2",
              "4", "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert report["complete"] is False and report["pending"] >= 1
    assert [r["case"] for r in report["rows"]] == [timed[0].label()]
    assert report["rows"][0]["status"] == "ok"


@pytest.mark.parametrize("dtype", ["float32", "fp8_tensor", "fp8_block"])
def test_production_layout_keeps_the_answer_with_weights_in_group_order(device, dtype):
    """bench times grouped_gemm with weight_indices = arange (as SGLang's EP layer calls it):
    the gathered weights and scales give bit for bit the builder's answer."""
    import reference
    from harness.bench import production_layout
    from harness.cases import CaseParams
    from harness.specs import SPECS
    p = CaseParams(op="grouped_gemm", dtype=dtype, tokens=9, topk=2, experts=6, start_expert=1, end_expert=4,
                   hidden=128, inter=64, routing="skewed", seed=4)   # seed % 3 = 1: two spare weights
    sample = SPECS["grouped_gemm"].build(p, torch.device(device))
    prod = production_layout(sample)
    assert prod.args["b"].shape[0] == p.e_local < sample.args["b"].shape[0]
    assert torch.equal(prod.args["weight_indices"].cpu(), torch.arange(p.e_local, dtype=torch.int64))
    outs = []
    for s in (sample, prod):
        args = dict(s.args, c=torch.full_like(s.args["c"], 7.0))
        outs.append(reference.grouped_gemm(*args.values()))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(sample.args["weight_indices"].cpu(), torch.arange(p.e_local))  # the fuzz permuted them


def test_a_case_whose_shapes_follow_the_seed_is_verified_on_its_rebuild_and_skipped_work_still_shows():
    """ep_scatter's padded rows follow the routing: no other seed fits the timed buffers, so the last
    round runs on the timed case rebuilt (said in the row); outputs poisoned before it still catch
    a candidate that does the work once."""
    ref = load_implementation("reference")
    op = "ep_scatter"
    fn = ref.ops[op]
    calls = {"n": 0}

    def works_once(*args):
        calls["n"] += 1
        return fn(*args) if calls["n"] == 1 else None

    case = _case(op, dtype="bfloat16", tokens=24, topk=4, experts=16, start_expert=0, end_expert=7, hidden=64)
    assert bench._fresh_case_of_the_same_shapes(SPECS[op], case.params, SPECS[op].build(case.params, torch.device("cpu")),
                                                torch.device("cpu"), 3) is None
    rows = {r.impl: r for r in time_case(case, [ref, _renamed(ref, "once", op, works_once)], "cpu", CPU_CONFIG,
                                         FAKE_CEILINGS, modes=("eager",))}
    assert rows["reference"].status == "ok" and rows["reference"].verified_on == bench.VERIFIED_ON_REBUILD
    assert "(verified on the timed case rebuilt)" in bench.format_row(rows["reference"])
    assert rows["once"].status == "WRONG" and "on the timed case rebuilt" in rows["once"].message, rows["once"].message
