"""Host time per call of our launchers at launch-bound shapes (issue 4/8 evidence).

For each op, back-to-back calls with one sync at the end: when the device work per call is
shorter than the host work, the wall time per call is the host's. Reported per call, in us:
the whole launcher, its argument validation alone, and the bare Triton kernel launch.
Usage: PYTHONPATH=. python3 tools/host_overhead.py [N_CALLS] [--preprocess]

--preprocess: ep_preprocess's host time taken apart (validation, allocations, each launch, the
torch composition the bench compares it with) and the cProfile entries of the whole call that
cost most, at the bench's sizes.
"""
from __future__ import annotations

import json
import sys
import time

import torch

import optimized
from harness.cases import CaseParams
from harness.specs import SPECS
from optimized import config


def per_call_us(fn, n: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def preprocess_breakdown(n: int) -> None:
    import cProfile
    import pstats

    from optimized import preprocess as pp
    from reference._checks import validate_preprocess

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    base = per_call_us(lambda: None, n)
    torch_ep_preprocess = SPECS["ep_preprocess"].baselines["torch"]   # the bench's plain-torch composition
    for T, K, E in ((16, 8, 256), (64, 8, 256), (128, 8, 256), (4096, 8, 256), (16384, 8, 256), (4096, 2, 8)):
        ids = torch.rand(T, E, device=dev, generator=gen).topk(K, dim=1).indices.to(torch.int32)
        N = ids.numel()
        plan = pp.launch_plan(N, E, device_index=dev.index or 0)
        row = {"case": f"T{T} K{K} E{E}", "plan": plan._asdict()}
        row["ours_us"] = per_call_us(lambda: pp.ep_preprocess(ids, E), n) - base
        if plan.one_launch:
            with pp.forced_way(pp.THREE_LAUNCHES):
                row["ours_three_launches_us"] = per_call_us(lambda: pp.ep_preprocess(ids, E), n) - base
        row["torch_us"] = per_call_us(lambda: torch_ep_preprocess(ids, E), n) - base
        row["validate_us"] = per_call_us(lambda: validate_preprocess(ids, E, allow_invalid=False, check_values=False),
                                         n) - base
        with pp.forced_way(pp.THREE_LAUNCHES):   # the three-launch plan and its launches, for the rows below
            p3 = pp.launch_plan(N, E, device_index=dev.index or 0)
            launches, _ = pp.ep_preprocess_launches(ids, E)
        row["empty_x1_us"] = per_call_us(lambda: torch.empty(p3.nblk, p3.nbp, dtype=torch.int32, device=dev), n) - base
        row["plan_us"] = per_call_us(lambda: pp.launch_plan(N, E, device_index=0), n) - base
        for name, launch in launches.items():
            row[f"launch_{name}_us"] = per_call_us(launch, n) - base
        # the same scan launched through the compiled kernel's own runner (no binder, no cache key)
        scan = launches["colscan"]
        constexprs = dict(scan.constexprs, PDL=False)
        compiled = scan.kernel[scan.grid](*scan.args, **constexprs, num_warps=scan.options["num_warps"])
        try:
            runner = compiled[scan.grid + (1, 1)]
            row["launch_colscan_compiled_runner_us"] = per_call_us(
                lambda: runner(*scan.args, *constexprs.values()), n) - base
        except Exception as exc:  # an internal API: record why it did not run
            row["launch_colscan_compiled_runner_us"] = f"{type(exc).__name__}: {exc}"[:200]
        print(json.dumps(row), flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            pp.ep_preprocess(ids, E)
        torch.cuda.synchronize()
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(18)


def main() -> None:
    with config.value_checks(False):   # their device-to-host read would be timed with each call
        _main()


def _main() -> None:
    if "--preprocess" in sys.argv:
        args = [a for a in sys.argv[1:] if a != "--preprocess"]
        preprocess_breakdown(int(args[0]) if args else 2000)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    dev = torch.device("cuda")
    rows = []
    cases = [
        CaseParams(op="pre_reorder", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168),
        CaseParams(op="post_reorder", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168),
        CaseParams(op="silu_and_mul", dtype="bfloat16", tokens=256, topk=8, experts=256, end_expert=31, hidden=7168,
                   inter=2048),
        CaseParams(op="ep_preprocess", dtype="int64", tokens=128, topk=8, experts=256),
        CaseParams(op="grouped_gemm", dtype="bfloat16", tokens=1, topk=8, experts=256, end_expert=31, hidden=7168,
                   inter=4096),
    ]
    empty = lambda: None  # noqa: E731  (the loop's own cost)
    base = per_call_us(empty, n)
    for p in cases:
        spec = SPECS[p.op]
        sample = spec.build(p, dev)
        args = list(sample.args.values())
        fn = getattr(optimized, p.op)
        row = {"op": p.op, "case": p.short(), "launcher_us": per_call_us(lambda: fn(*args), n) - base}
        if p.op == "pre_reorder":
            from optimized.reorder import pre_reorder_launch
            from reference._checks import validate_pre_reorder
            row["validate_us"] = per_call_us(lambda: validate_pre_reorder(*args, check_values=False), n) - base
            row["kernel_launch_us"] = per_call_us(pre_reorder_launch(*args[:8]), n) - base
            row["is_capturing_us"] = per_call_us(torch.cuda.is_current_stream_capturing, n) - base
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": __import__("triton").__version__, "calls": n}))


if __name__ == "__main__":
    main()
