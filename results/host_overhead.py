"""Host time per call of our launchers at launch-bound shapes (issue 4/8 evidence).

For each op, back-to-back calls with one sync at the end: when the device work per call is
shorter than the host work, the wall time per call is the host's. Reported per call, in us:
the whole launcher, its argument validation alone, and the bare Triton kernel launch.
Usage: PYTHONPATH=. python3 results/host_overhead.py [N_CALLS] [--preprocess]

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
from optimized import _config

_config.CHECK_VALUES = False


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

    from harness import baselines
    from optimized import preprocess as pp
    from reference._checks import validate_preprocess

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    base = per_call_us(lambda: None, n)
    for T, K, E in ((16, 8, 256), (64, 8, 256), (128, 8, 256), (4096, 8, 256), (16384, 8, 256), (4096, 2, 8)):
        ids = torch.rand(T, E, device=dev, generator=gen).topk(K, dim=1).indices.to(torch.int32)
        flat = ids.reshape(-1)
        N = flat.numel()
        plan = pp._plan(N, E, False, dev.index or 0)
        row = {"case": f"T{T} K{K} E{E}", "plan": plan._asdict()}
        row["ours_us"] = per_call_us(lambda: pp.ep_preprocess(ids, E), n) - base
        one_launch_cap = pp.ONE_LAUNCH_MAX
        if N <= one_launch_cap:
            pp.ONE_LAUNCH_MAX = 0
            row["ours_three_launches_us"] = per_call_us(lambda: pp.ep_preprocess(ids, E), n) - base
            pp.ONE_LAUNCH_MAX = one_launch_cap
        row["torch_us"] = per_call_us(lambda: baselines.ep_preprocess(ids, E), n) - base
        row["validate_us"] = per_call_us(lambda: validate_preprocess(ids, E, allow_invalid=False, check_values=False),
                                         n) - base
        pp.ONE_LAUNCH_MAX = 0
        p3 = pp._plan(N, E, False, dev.index or 0)        # the three-launch plan, for the launches below
        pp.ONE_LAUNCH_MAX = one_launch_cap
        nbp, block, nblk = p3.nbp, p3.block, p3.nblk
        row["empty_x1_us"] = per_call_us(lambda: torch.empty(nblk, nbp, dtype=torch.int32, device=dev), n) - base
        row["plan_us"] = per_call_us(lambda: pp._plan(N, E, False, 0), n) - base
        scratch = torch.empty(2 * nblk * nbp + nbp, dtype=torch.int32, device=dev)
        seg = torch.empty(E + 1, dtype=torch.int64, device=dev)
        s2d, srt = torch.empty(N, dtype=torch.int32, device=dev), torch.empty(N, dtype=ids.dtype, device=dev)
        later = {"launch_pdl": True} if p3.pdl else {}
        grid_scan = (nbp // p3.scan_cols,)
        launches = {
            "hist": lambda: pp._hist_kernel[(nblk,)](flat, scratch, N, E, SHIFT=0, BLOCK=block, NBP=nbp, PDL=p3.pdl,
                                                     num_warps=p3.warps),
            "colscan": lambda: pp._colscan_kernel[grid_scan](scratch, scratch, nblk, NBP=nbp, BB=p3.scan_cols,
                                                             R=p3.scan_rows, DEEPEP=False, PDL=p3.pdl,
                                                             num_warps=pp.SCAN_WARPS, **later),
            "scatter": lambda: pp._scatter_kernel[(nblk,)](flat, scratch, s2d, srt, seg, N, E, N, nblk, SHIFT=0,
                                                           DEEPEP=False, BLOCK=block, NBP=nbp, num_warps=p3.warps,
                                                           USE_SORT=True, PDL=p3.pdl, **later),
        }
        for name, call in launches.items():
            row[f"launch_{name}_us"] = per_call_us(call, n) - base
        # the same scan launched through the compiled kernel's own runner (no binder, no cache key)
        compiled = pp._colscan_kernel[grid_scan](scratch, scratch, nblk, NBP=nbp, BB=p3.scan_cols, R=p3.scan_rows,
                                                 DEEPEP=False, PDL=False, num_warps=pp.SCAN_WARPS)
        try:
            runner = compiled[grid_scan + (1, 1)]
            row["launch_colscan_compiled_runner_us"] = per_call_us(
                lambda: runner(scratch, scratch, nblk, nbp, p3.scan_cols, p3.scan_rows, False, False), n) - base
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
            from optimized.reorder import _pre_reorder_kernel, _row_tiles
            from reference._checks import validate_pre_reorder
            x, out, s2d, ids, scales = args[:5]
            T, H = x.shape
            r, bh = _row_tiles(T, H)
            grid = ((T + r - 1) // r, (H + bh - 1) // bh)
            row["validate_us"] = per_call_us(lambda: validate_pre_reorder(*args, check_values=False), n) - base
            row["kernel_launch_us"] = per_call_us(lambda: _pre_reorder_kernel[grid](
                x, out, s2d, ids, x, T, H, args[5], args[6], TOPK=args[7], KP=args[7], HAS_SCALES=False, ROWS=r,
                BLOCK_H=bh, num_warps=2), n) - base
            row["is_capturing_us"] = per_call_us(torch.cuda.is_current_stream_capturing, n) - base
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": __import__("triton").__version__, "calls": n}))


if __name__ == "__main__":
    main()
