"""A real EP world: processes that each own a slice of the experts, summed by an all-reduce,
match the dense MoE; an implementation that loses an expert does not. CPU worlds use gloo
(2 ranks, tiny shapes); the NCCL world needs two GPUs."""
import json
import textwrap

import pytest
import torch

from harness import ep_world
from harness.cli import build_parser
from harness.ep_world import NO_MULTICAST_ENV, WorldConfig, expert_ranges, plan_scenarios, run_world

TINY = dict(experts=6, topk=2, hidden=32, inter=16, tokens=(1, 12), warmup=0, reps=1, timeout_s=180.0)

DROP_LAST_EXPERT = '''
import torch
import reference


def drop_last_local_expert(hidden_states, topk_ids, topk_weights, w13, w2, num_experts, start, end,
                           activation="silu", w13_scale=None, w2_scale=None, block_shape=None):
    """Correct for experts start..end-1; the rank's last expert contributes nothing."""
    if end == start:
        return torch.zeros_like(hidden_states)
    cut = lambda t: None if t is None else t[:-1].contiguous()
    return reference.ep_moe_forward(hidden_states, topk_ids, topk_weights, cut(w13), cut(w2), num_experts, start,
                                    end - 1, activation, cut(w13_scale), cut(w2_scale), block_shape)
'''


@pytest.mark.parametrize("E,N,want", [
    (8, 2, [(0, 3), (4, 7)]), (7, 2, [(0, 3), (4, 6)]), (10, 4, [(0, 2), (3, 5), (6, 7), (8, 9)]),
    (3, 3, [(0, 0), (1, 1), (2, 2)]), (5, 1, [(0, 4)]),
])
def test_expert_ranges_cover_every_expert_once(E, N, want):
    assert expert_ranges(E, N) == want


def test_expert_ranges_reject_a_rank_without_experts():
    with pytest.raises(ValueError, match="at least one expert per rank"):
        expert_ranges(3, 4)


@pytest.mark.parametrize("E,N", [(8, 2), (7, 2), (6, 4), (3, 4), (256, 8)])
def test_plan_has_even_uneven_empty_at_decode_and_prefill(E, N):
    plan = plan_scenarios(WorldConfig(ranks=N, backend="interpreter", experts=E, tokens=(1, 64)))
    by = {(s.kind, s.tokens): s for s in plan}
    assert set(by) == {(k, t) for k in ("even", "uneven", "empty") for t in (1, 64)}
    for t in (1, 64):
        assert by["even", t].experts % N == 0 and by["even", t].experts >= N
        assert by["uneven", t].experts % N != 0 and by["uneven", t].experts > N
        assert by["empty", t].routing == "rank0_only"


def test_cpu_world_with_reference_passes_every_scenario(tmp_path, monkeypatch):
    monkeypatch.setattr(ep_world, "describe", lambda backend: {"backend": backend})  # no triton import here
    out = tmp_path / "world.json"
    argv = ["ep-world", "--ranks", "2", "--impl", "reference", "--experts", "6", "--topk", "2", "--hidden", "32",
            "--inter", "16", "--tokens", "1", "12", "--warmup", "0", "--reps", "1", "--timeout", "180",
            "--json", str(out)]
    args = build_parser().parse_args(argv)
    assert args.run(args, "interpreter") == 0
    report = json.loads(out.read_text())
    assert report["passed"] and not report["error"], report["error"]
    assert report["dist_backend"] == "gloo" and report["world_size"] == 2
    assert report["rank0_env"] == NO_MULTICAST_ENV
    scen = {s["name"]: s for s in report["scenarios"]}
    assert set(scen) == {f"{k} T={t}" for k in ("even", "uneven", "empty") for t in (1, 12)}
    for s in scen.values():
        assert s["passed"], (s["name"], s["reason"])
        assert 0 <= s["rel_error"] <= s["bound"] < 0.05
        assert all(r["time_ms"] is not None and r["time_ms"] >= 0 for r in s["ranks"])
        assert sum(r["local_slots"] for r in s["ranks"]) == s["tokens"] * s["topk"]
    sizes = [r["end_expert"] - r["start_expert"] + 1 for r in scen["uneven T=12"]["ranks"]]
    assert sizes == [3, 2]
    assert [r["local_slots"] for r in scen["empty T=12"]["ranks"]] == [24, 0]


def test_cpu_world_fails_an_implementation_that_drops_an_expert(tmp_path):
    path = tmp_path / "planted_ep.py"
    path.write_text(textwrap.dedent(DROP_LAST_EXPERT))
    config = WorldConfig(ranks=2, backend="interpreter", impl=f"ep_moe_forward={path}:drop_last_local_expert",
                         **dict(TINY, tokens=(12,)))
    report = run_world(config)
    assert not report.error, report.error  # the world ran; the implementation is what failed
    assert not report.passed
    for s in report.scenarios:  # 24 slots over 2-3 experts a rank: every last expert gets some
        assert not s.passed and "relative error" in s.reason, (s.name, s.reason)
        assert s.rel_error > 10 * s.bound
    assert "FAILED" in ep_world.format_table(report)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["reference", "configured"])
def test_nccl_world_on_every_gpu(request, which):
    """NCCL, one rank per visible GPU, E = 4N + 1 (uneven) and 4N (even); the reference
    checks the world itself, then each --moe-impl (default ours) that has ep_moe_forward."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        pytest.skip(f"an NCCL world needs at least 2 CUDA devices; torch sees {n}")
    from harness.impls import load_implementation
    impls = ["reference"] if which == "reference" else (request.config.getoption("--moe-impl", default=None) or ["ours"])
    impls = [impls] if isinstance(impls, str) else list(impls)
    ran, missing = 0, []
    for impl in impls:
        if "ep_moe_forward" not in load_implementation(impl).ops:
            missing.append(impl)
            continue
        config = WorldConfig(ranks=n, backend="cuda", impl=impl, experts=4 * n + 1, topk=4, hidden=256, inter=128,
                             tokens=(1, 200), warmup=1, reps=3, timeout_s=300.0)
        report = run_world(config)
        assert report.dist_backend == "nccl" and report.world_size == n
        assert report.rank0_env == NO_MULTICAST_ENV
        assert report.passed, f"{impl}:\n" + ep_world.format_table(report)
        assert all(r.time_ms is not None for s in report.scenarios for r in s.ranks)
        ran += 1
    if not ran:
        pytest.skip(f"not provided: {', '.join(missing)} has no ep_moe_forward")
