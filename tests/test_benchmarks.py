"""pytest-benchmark timings of every op on DeepSeek-V3-shaped cases (one rank of EP8).

Run on a GPU with ``python -m pytest tests/test_benchmarks.py --benchmark-only``; skipped
elsewhere, with the reason. pytest-benchmark's own figures are host-clock times of one call
plus a device synchronisation, with the L2 cache flushed (and the device idle) before each
round, outside the timed region. Each test also stores the bench engine's device-side
figures (CUDA events, eager and graph medians and quartiles, GB/s, TFLOP/s, % of roofline)
in ``extra_info`` (shown by ``--benchmark-json``), and fails if the timed outputs were wrong.
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from harness.cases import CaseParams
from harness.bench import anchor_cases
from harness.specs import SPECS

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (pip install -e '.[test]')")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="benchmarks time CUDA kernels and no CUDA device is visible; on a GPU machine "
                                       "run python -m pytest tests/test_benchmarks.py --benchmark-only")

# One case per op: the first of its record's bench anchors (ANCHORS.md's shapes, DeepSeek-V3 EP8
# for the ops ANCHORS.md does not list).
CASES = {}
for _case in anchor_cases(list(SPECS), None, ("uniform",), None):
    CASES.setdefault(_case.params.op, _case.params)


def test_every_op_has_a_benchmark_case():
    assert set(CASES) == set(SPECS)


@pytest.fixture(scope="module")
def ceilings():
    from harness.timing import TimingConfig, measure_ceilings
    return measure_ceilings("cuda", TimingConfig(warmup_ms=10, rep_ms=50))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("impl_name", ["ours", "reference"])
@pytest.mark.parametrize("op", sorted(SPECS))
def test_benchmark(benchmark, ceilings, op, impl_name):
    from harness.bench import BenchCase, time_case, value_checks_off
    from harness.impls import load_implementation
    from harness.timing import L2Flusher, TimingConfig

    impl = load_implementation(impl_name)
    if op not in impl.ops:
        pytest.skip(f"{impl_name} does not provide {op}")
    params = CASES[op]
    sample = SPECS[op].build(params, torch.device("cuda"))
    fn, args = impl.ops[op], tuple(sample.args.values())
    flush = L2Flusher("cuda")

    def setup():
        flush()
        torch.cuda.synchronize()

    def one_call():
        fn(*args)
        torch.cuda.synchronize()

    benchmark.group = op
    with value_checks_off():
        setup()
        one_call()                                           # compile / autotune outside the rounds
        setup()
        t0 = time.perf_counter()
        one_call()
        one_s = time.perf_counter() - t0
        rounds = int(min(200, max(10, 0.25 / max(one_s, 1e-6))))   # about a quarter second of calls
        benchmark.pedantic(one_call, setup=setup, rounds=rounds, warmup_rounds=3, iterations=1)
        rows = time_case(BenchCase(params, "benchmark"), [impl], "cuda", TimingConfig(warmup_ms=10, rep_ms=50),
                         ceilings)
    row = rows[0]
    for mode in ("eager", "graph"):
        m = row.mode(mode)
        if m is not None and m.stats is not None:
            benchmark.extra_info[f"{mode}_median_us"] = m.stats.median_ms * 1e3
            benchmark.extra_info[f"{mode}_q1_us"] = m.stats.q1_ms * 1e3
            benchmark.extra_info[f"{mode}_q3_us"] = m.stats.q3_ms * 1e3
            benchmark.extra_info[f"{mode}_gbps"] = m.perf.gbps
            benchmark.extra_info[f"{mode}_tflops"] = m.perf.tflops
            benchmark.extra_info[f"{mode}_pct_of_roof"] = m.perf.pct_of_roof
        elif m is not None:
            benchmark.extra_info[f"{mode}_unavailable"] = m.message
    benchmark.extra_info["device"] = ceilings.device
    benchmark.extra_info["case"] = dataclasses.asdict(params)
    assert row.status == "ok", row.message
