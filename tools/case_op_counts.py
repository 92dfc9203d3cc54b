"""Tensor operations per case, by phase, for every op's record (CPU; no GPU needed).

On a GPU a check's case is mostly host work, and each tensor operation there is a kernel launch
(several microseconds of host time) and a `.item()` / `.tolist()` / `torch.equal` a
synchronisation; the count of ATen calls of a case's phases is therefore a CPU-side proxy for
its GPU host time that points at the loops worth vectorising. Phases: ``build`` (the record's
case builder), ``reference`` (reference_outputs: the reference in the case's dtypes and in
float64), ``case`` (harness.runner.run_case with the reference as the candidate: everything,
probes included). Sorted by ``case``, largest first.

    PYTHONPATH=. python tools/case_op_counts.py [--tokens 512] [--op NAME ...]
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CountingMode(TorchDispatchMode):
    """Counts the ATen calls made inside it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def counted(fn):
    with CountingMode() as mode:
        result = fn()
    return mode.calls, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", nargs="+", default=None)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args(argv)
    from harness.cases import CaseParams
    from harness.impls import load_implementation
    from harness.runner import reference_outputs, run_case
    from harness.specs import SPECS
    reference = load_implementation("reference")
    device = torch.device("cpu")
    rows = []
    for op in args.op or SPECS:
        spec = SPECS[op]
        dtype = "bfloat16" if "bfloat16" in spec.dtypes else spec.dtypes[0]
        p = spec.fit(CaseParams(op=op, dtype=dtype, tokens=args.tokens, topk=8, experts=256, start_expert=0,
                                end_expert=31, hidden=1024, inter=512, seed=3), ())
        build, sample = counted(lambda: spec.build(p, device))
        ref, _ = counted(lambda: reference_outputs(spec, sample))
        case, result = counted(lambda: run_case(spec, reference.candidate(op), p, device, "reference"))
        rows.append((case, op, dtype, build, ref, result.status))
    print(f"{'case':>6} {'build':>6} {'reference':>9}  op (dtype): status")
    for case, op, dtype, build, ref, status in sorted(rows, reverse=True):
        print(f"{case:>6} {build:>6} {ref:>9}  {op} ({dtype}): {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
