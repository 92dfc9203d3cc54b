"""Cost model per op: the bytes that must move and the FLOPs that must run for one case.

Each op's record (harness/ops/) holds its cost model. Counts come from the case's actual
arguments (dtypes, and the routing for how many slots are local), so a skewed routing or an
EP rank's share is counted as it is. Conventions follow ANCHORS.md: data-movement ops count
only the activation rows (index and weight arrays, under 0.3% of it, are not counted);
elementwise work is counted in bytes only (its FLOPs never bound a kernel); matrix products
count 2 * rows * N * Kd FLOPs.

A time turns into GB/s, TFLOP/s and a share of the roofline floor:
floor = max(bytes / copy ceiling, FLOPs / (matmul ceiling x rate)), and % of roof = floor /
time. The matmul ceiling is measured in bf16; FLOPs whose operands are fp8 e4m3 (the weights
of both fp8 GEMM modes: block-wise quantises a to fp8 too) count at rate 2, Hopper's e4m3
tensor-core rate being twice its bf16 rate (H100 SXM dense: 1,979 vs 989 TFLOP/s, NVIDIA's
datasheet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .cases import CaseParams


@dataclass(frozen=True)
class Cost:
    """What one call must do, whatever the implementation."""

    bytes: int
    flops: int
    note: str = ""          # what was counted, in words
    flop_rate: float = 1.0  # the FLOPs' tensor-core rate, in multiples of the bf16 matmul ceiling


@dataclass(frozen=True)
class Perf:
    """A time against a cost and the card's ceilings."""

    time_ms: float
    gbps: float
    tflops: float
    floor_ms: float          # roofline floor on this card
    pct_of_roof: float       # 100 * floor / time
    bound: str               # memory | compute (which term sets the floor)


def tensor_core_rate(weights: torch.Tensor) -> float:
    """Tensor-core rate of a GEMM over these weights, in multiples of the bf16 rate (see above)."""
    return 2.0 if weights.dtype == torch.float8_e4m3fn else 1.0


def local_slots(topk_ids: torch.Tensor, start: int, end: int) -> int:
    """How many slots of ``topk_ids`` route to the experts start..end (this rank's)."""
    ids = topk_ids.reshape(-1)
    return int(((ids >= start) & (ids <= end)).sum())


def cost_of(params: CaseParams, args: Mapping[str, object]) -> Cost:
    """The cost of one call of ``params.op`` on these arguments (a Sample's ``args``): the op
    record's cost model."""
    from .specs import SPECS
    try:
        record = SPECS[params.op]
    except KeyError:
        raise ValueError(f"cost_of: no op {params.op!r}; expected one of {sorted(SPECS)}") from None
    return record.cost(params, args)


def perf_of(cost: Cost, time_ms: float, copy_gbps: float, matmul_tflops: float) -> Perf:
    """GB/s, TFLOP/s and share of the roofline floor for one measured time."""
    if time_ms <= 0:
        raise ValueError(f"perf_of: expected a positive time, got {time_ms} ms")
    seconds = time_ms * 1e-3
    mem_floor = cost.bytes / (copy_gbps * 1e9) if copy_gbps > 0 else 0.0
    flop_floor = cost.flops / (matmul_tflops * cost.flop_rate * 1e12) if matmul_tflops > 0 else 0.0
    floor = max(mem_floor, flop_floor)
    return Perf(time_ms=time_ms, gbps=cost.bytes / seconds / 1e9, tflops=cost.flops / seconds / 1e12,
                floor_ms=floor * 1e3, pct_of_roof=100.0 * floor / seconds,
                bound="compute" if flop_floor > mem_floor else "memory")
