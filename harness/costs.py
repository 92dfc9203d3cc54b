"""Cost model per op: the bytes that must move and the FLOPs that must run for one case.

Counts come from the case's actual arguments (dtypes, and the routing for how many slots are
local), so a skewed routing or an EP rank's share is counted as it is. Conventions follow
ANCHORS.md:

- reorder ops count only the activation rows: pre_reorder reads each token row once and
  writes each local slot's row once; post_reorder reads each local slot's row once and writes
  each token row once (index and weight arrays, under 0.3% of it, are not counted);
- grouped_gemm reads the rows in its groups, the weights of every non-empty group once, and
  writes the rows in its groups; FLOPs are 2 * rows * N * Kd;
- elementwise work (activations, the weighted sum of post_reorder) is counted in bytes only:
  its FLOPs never bound a kernel, so they are left out of the FLOP count.

A time turns into GB/s, TFLOP/s and a share of the roofline floor:
floor = max(bytes / copy ceiling, FLOPs / (matmul ceiling x rate)), and % of roof = floor /
time. The matmul ceiling is measured in bf16; FLOPs whose operands are fp8 e4m3 (the weights
of both fp8 GEMM modes: block-wise quantises a to fp8 too) count at rate 2, Hopper's e4m3
tensor-core rate being twice its bf16 rate (H100 SXM dense: 1,979 vs 989 TFLOP/s, NVIDIA's
datasheet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

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


def _size(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.element_size()


def _rate_of(weights: torch.Tensor) -> float:
    """Tensor-core rate of a GEMM over these weights, in multiples of the bf16 rate (see above)."""
    return 2.0 if weights.dtype == torch.float8_e4m3fn else 1.0


def _local_count(topk_ids: torch.Tensor, start: int, end: int) -> int:
    ids = topk_ids.reshape(-1)
    return int(((ids >= start) & (ids <= end)).sum())


def preprocess_cost(params: CaseParams, args: Mapping[str, object], deepep: bool) -> Cost:
    ids = args["topk_ids"]
    n = ids.numel()
    s = ids.element_size()
    valid = int((ids >= 0).sum()) if deepep else n
    src2dst_size = 8 if deepep else 4
    nbytes = n * s + valid * s + n * src2dst_size + (params.experts + 1) * 8
    return Cost(nbytes, 0, "ids read; sorted ids, src2dst and seg_indptr written")


def pre_reorder_cost(params: CaseParams, args: Mapping[str, object]) -> Cost:
    x, out = args["input"], args["gateup_input"]
    local = _local_count(args["topk_ids"], params.start_expert, params.end_expert)
    T, H = x.shape
    return Cost(T * H * x.element_size() + local * H * out.element_size(), 0,
                f"{T} token rows read, {local} local slot rows written")


def act_and_mul_cost(params: CaseParams, args: Mapping[str, object]) -> Cost:
    gateup, out = args["gateup_output"], args["down_input"]
    rows = _local_count(args["reorder_topk_ids"], params.start_expert, params.end_expert)
    two_i = gateup.shape[1]
    return Cost(rows * two_i * gateup.element_size() + rows * out.shape[1] * out.element_size(), 0,
                f"{rows} local rows read (2I wide) and written (I wide)")


def post_reorder_cost(params: CaseParams, args: Mapping[str, object]) -> Cost:
    down, out = args["down_output"], args["output"]
    local = _local_count(args["topk_ids"], params.start_expert, params.end_expert)
    T, H = out.shape
    return Cost(local * H * down.element_size() + T * H * out.element_size(), 0,
                f"{local} local slot rows read, {T} token rows written")


def grouped_gemm_cost(params: CaseParams, args: Mapping[str, object]) -> Cost:
    a, b, c = args["a"], args["b"], args["c"]
    seg = args["seg_indptr"].to(torch.int64).cpu()
    widx = args["weight_indices"].to(torch.int64).cpu()
    rows = int(seg[-1] - seg[0])
    nonempty = (seg[1:] - seg[:-1]) > 0
    weights_used = int(torch.unique(widx[nonempty]).numel())
    _, N, Kd = b.shape
    nbytes = rows * Kd * a.element_size() + weights_used * N * Kd * b.element_size() + rows * N * c.element_size()
    for name in ("scale_a", "scale_b"):
        scale = args.get(name)
        if isinstance(scale, torch.Tensor) and scale.dim() > 1:   # block scales: a real stream of bytes
            per = scale[0].numel() * scale.element_size()
            nbytes += per * (rows if name == "scale_a" else weights_used)
    return Cost(nbytes, 2 * rows * N * Kd,
                f"{rows} rows x Kd {Kd} read, {weights_used} weights {N}x{Kd} read, {rows} x N {N} written",
                flop_rate=_rate_of(b))


def ep_moe_cost(params: CaseParams, args: Mapping[str, object]) -> Cost:
    x, w13, w2 = args["hidden_states"], args["w13"], args["w2"]
    ids = args["topk_ids"].reshape(-1).to(torch.int64)
    local_mask = (ids >= params.start_expert) & (ids <= params.end_expert)
    local = int(local_mask.sum())
    experts_used = int(torch.unique(ids[local_mask]).numel())
    T, H = x.shape
    I = w2.shape[2]
    weight_bytes = experts_used * (w13[0].numel() * w13.element_size() + w2[0].numel() * w2.element_size())
    for name, w in (("w13_scale", w13), ("w2_scale", w2)):
        scale = args.get(name)
        if isinstance(scale, torch.Tensor):
            weight_bytes += experts_used * scale[0].numel() * scale.element_size()
    nbytes = T * H * x.element_size() + weight_bytes + T * H * x.element_size()
    return Cost(nbytes, 2 * local * (2 * I) * H + 2 * local * H * I,
                f"{T} token rows read and written, weights of {experts_used} experts read, {local} local slots",
                flop_rate=_rate_of(w13))


_COSTS = {
    "ep_preprocess": lambda p, a: preprocess_cost(p, a, deepep=False),
    "deepep_preprocess": lambda p, a: preprocess_cost(p, a, deepep=True),
    "pre_reorder": pre_reorder_cost,
    "silu_and_mul": act_and_mul_cost,
    "gelu_and_mul": act_and_mul_cost,
    "post_reorder": post_reorder_cost,
    "grouped_gemm": grouped_gemm_cost,
    "ep_moe_forward": ep_moe_cost,
}


def cost_of(params: CaseParams, args: Mapping[str, object]) -> Cost:
    """The cost of one call of ``params.op`` on these arguments (a Sample's ``args``)."""
    try:
        fn = _COSTS[params.op]
    except KeyError:
        raise ValueError(f"cost_of: no cost model for op {params.op!r}; expected one of {sorted(_COSTS)}") from None
    return fn(params, args)


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
