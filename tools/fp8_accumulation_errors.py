"""Measure how much of the fp8 accumulation allowance a correct fp8 grouped GEMM uses, and how
much a kernel that rounds its running sum to bfloat16 after every K block needs (issue 23,
item 3), so that the tolerance's fp8 term can be set between them with a margin.

For each case (the grouped_gemm record's builder, fp8_tensor and fp8_block, sizes drawn from
a seeded generator plus DeepSeek-V3's Kd = 7168) and each candidate, it reports the smallest
accumulation coefficient ``acc`` (harness.tolerance: the term multiplied by mag, the float64
sum of |terms|) under which every element passes:

    need = max_i ( |c_i - r_i| / FACTOR - |l_i - r_i| - U_OUT * |r_i| ) / mag_i

and the same divided by sqrt(L) * 2**-24 and by L * 2**-24, so that rules of either shape can
be read off; and the ratio of the error's norm to the precision's own, ||c - r|| / ||l - r||
(harness.tolerance's statistical test for fp8 products). GPU only (fp8 tensor cores). Prints one JSON line per case and a summary.

    PYTHONPATH=. python tools/fp8_accumulation_errors.py --cases 300 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200, help="cases per dtype")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    from harness.cases import CaseParams
    from harness.mutants import Mutant, implementation
    from harness.runner import reference_outputs
    from harness.impls import load_implementation
    from harness.specs import SPECS
    from harness.tolerance import FACTOR, NORM_MIN_ELEMENTS, UNIT_ROUNDOFF, norm_bound

    spec = SPECS["grouped_gemm"]
    ours = load_implementation("ours").ops["grouped_gemm"]
    rounding = {
        "fp8_tensor": Mutant("fp8_tensor_partial_sums_bf16", "grouped_gemm", "optimized.gemm",
                             "            acc = _mma(a, b, acc)\n",
                             "            acc = _mma(a, b, acc).to(tl.bfloat16).to(tl.float32)\n", ""),
        "fp8_block": Mutant("fp8_block_partial_sums_bf16", "grouped_gemm", "optimized.gemm",
                            "acc = _add_scaled(acc, _mma(a, b, tl.zeros([BM, BN], dtype=tl.float32)), sa, sb, "
                            "QBN % BN == 0)",
                            "acc = _add_scaled(acc, _mma(a, b, tl.zeros([BM, BN], dtype=tl.float32)), sa, sb, "
                            "QBN % BN == 0).to(tl.bfloat16).to(tl.float32)", ""),
    }
    cands = {"ours": lambda dt: ours,
             "bf16_partial_sums": lambda dt: implementation(rounding[dt]).ops["grouped_gemm"]}
    rng = random.Random(args.seed)
    rows = []
    for dtype in ("fp8_tensor", "fp8_block"):
        for i in range(args.cases):
            H = rng.choice([7168, 2048, 4096, rng.randint(1, 64) * 128, rng.randint(129, 3000), rng.randint(1, 400)])
            if dtype == "fp8_block":
                H = -(-H // 128) * 128
            T = rng.choice([1, 7, 64, rng.randint(1, 600)])
            E = rng.choice([8, 16, 64])
            p = CaseParams(op="grouped_gemm", dtype=dtype, tokens=T, topk=rng.randint(1, 8), experts=E,
                           start_expert=0, end_expert=min(E, 8) - 1, hidden=H, inter=rng.choice([64, 128, 200, 512]),
                           routing=rng.choice(["uniform", "skewed"]), seed=rng.randint(0, 2 ** 31 - 1))
            sample = spec.build(p, "cuda")
            exp = reference_outputs(spec, sample)
            out = spec.outputs[0]
            r, l, mag = exp.f64[out.name], exp.lp[out.name].double(), exp.mag[out.name]
            seg = sample.args["seg_indptr"]
            lo, hi = int(seg[0]), int(seg[-1])
            r, l, mag = r[lo:hi], l[lo:hi], mag[lo:hi]
            u = UNIT_ROUNDOFF[sample.args["c"].dtype]
            row = dict(dtype=dtype, L=H, T=T, rows=hi - lo, case=p.to_json())
            for name, make in cands.items():
                a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sample.args.items()}
                make(dtype)(**a)
                c = a["c"][lo:hi].double()
                if c.numel() == 0:
                    continue
                excess = (c - r).abs() / FACTOR - (l - r).abs() - u * r.abs()
                need = (excess / mag.clamp_min(1e-300)).max().item()
                row[name] = dict(need=need, need_over_sqrtL=need / (math.sqrt(H) * 2 ** -24),
                                 need_over_L=need / (H * 2 ** -24), max_err=(c - r).abs().max().item(),
                                 norm_ratio=((c - r).norm() / (l - r).norm().clamp_min(1e-300)).item(),
                                 elements=c.numel())
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for dtype in ("fp8_tensor", "fp8_block"):
        for name in cands:
            sel = [r for r in rows if r["dtype"] == dtype and name in r]
            got = [r[name] for r in sel]
            # the statistical test's view: the norm ratio against its bound, where the test runs
            tested = [r[name]["norm_ratio"] / norm_bound(r["L"]) for r in sel
                      if r[name]["elements"] >= NORM_MIN_ELEMENTS]
            if got:
                summary[f"{dtype}/{name}"] = dict(
                    max_need_over_sqrtL=max(g["need_over_sqrtL"] for g in got),
                    min_need_over_sqrtL=min(g["need_over_sqrtL"] for g in got),
                    max_need_over_L=max(g["need_over_L"] for g in got),
                    min_need_over_L=min(g["need_over_L"] for g in got), cases=len(got),
                    norm_tested=len(tested), max_of_norm_bound=max(tested, default=0.0),
                    min_of_norm_bound=min(tested, default=0.0))
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, summary=summary), fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
