"""Records of the activation family: ``silu_and_mul`` and ``gelu_and_mul`` (SPEC.md section
4: act(gate) * up over this rank's rows in expert order, with an optional fp8 quantisation),
with their builder, cost, bench shapes, SGLang binding, bad inputs and mutants."""
from __future__ import annotations

from typing import Any, Mapping

import torch

import reference
from reference._checks import FP8_DTYPE, FP8_MAX

from ..cases import CaseParams, make_generator, randn
from ..costs import Cost, local_slots
from ..mutants import Mutant
from ..opspec import (BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, SglangBinding, activation_dtype, buffer,
                      is_fp8, set_arg)
from .preprocess import case_ids, routing_tensors

KERNELS = "optimized.activation"
_FP8 = ("fp8",)
_DTYPES = ("bfloat16", "float16", "float32", "fp8")


def build_act_and_mul(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = case_ids(p, gen)
    reorder, _, _, pos_to_slot = routing_tensors(ids, p)
    act = activation_dtype(p.dtype)
    M = p.tokens * p.topk
    gateup = randn((M, 2 * p.inter), gen, act, scale=2.0)                        # [M, 2I]
    out_dtype = FP8_DTYPE if is_fp8(p.dtype) else act
    scales = None
    if is_fp8(p.dtype):
        g = gateup.float()
        amax = float((g[:, :p.inter].abs() * g[:, p.inter:].abs()).max()) if M else 1.0
        scales = (max(amax, 1e-3) / FP8_MAX) * (1.0 + torch.rand(p.e_local, generator=gen, device=device))
    args = dict(gateup_output=gateup, down_input=torch.empty(M, p.inter, dtype=out_dtype, device=device),
                hidden_size=2 * p.inter, reorder_topk_ids=reorder.to(torch.int32), scales=scales,
                start_expert_id=p.start_expert, end_expert_id=p.end_expert, BLOCK_SIZE=512)
    return Sample(p, args, ("gateup_output", "down_input"), ids, pos_to_slot)


def act_and_mul_cost(params: CaseParams, args: Mapping[str, Any]) -> Cost:
    """Each local row read (2I wide) and written (I wide) once; elementwise FLOPs not counted."""
    gateup, out = args["gateup_output"], args["down_input"]
    rows = local_slots(args["reorder_topk_ids"], params.start_expert, params.end_expert)
    two_i = gateup.shape[1]
    return Cost(rows * two_i * gateup.element_size() + rows * out.shape[1] * out.element_size(), 0,
                f"{rows} local rows read (2I wide) and written (I wide)")


# float32 exp/tanh in the activation cost a few float32 ulps of |gate| * |up| in absolute
# terms (1 + tanh(z) cancels for negative z), counted as 8 accumulated terms.
_OUTPUTS = (OutputSpec("down_input", buffer("down_input"), "float", "position", reduction_len=lambda p: 8),)
_DS_EP8 = (BenchAnchor(4096, 8, 256, 31, 7168, 2048, "DeepSeek-V3 EP8"),)   # DeepSeek-V3's H and I


def _grid(args: Mapping[str, Any]):
    return (args["gateup_output"].shape[0],)


def _label(p: CaseParams) -> str:
    return f"I={p.inter}"


RECORDS = (
    OpSpec("silu_and_mul", reference.silu_and_mul, build_act_and_mul, _OUTPUTS, _DTYPES, KERNELS, act_and_mul_cost,
           invalid_ids=True, bench_anchors=_DS_EP8, shape_label=_label,
           # gateup [36000 * 8, 2 * 4096]: 2.36e9 elements
           large_shape=dict(tokens=36000, topk=8, experts=256, hidden=64, inter=4096),
           sglang=SglangBinding(("silu_and_mul_triton_kernel",), grid=_grid),
           error_inputs=(
               ErrorInput("bfloat16", set_arg("hidden_size", 47), ValueError, "hidden_size"),
               ErrorInput("bfloat16", set_arg("down_input", lambda a: a["down_input"][:, :-1]), ValueError,
                          "down_input"),
               ErrorInput("bfloat16", set_arg("reorder_topk_ids", lambda a: a["reorder_topk_ids"][1:]), ValueError,
                          "reorder_topk_ids"),
           )),
    OpSpec("gelu_and_mul", reference.gelu_and_mul, build_act_and_mul, _OUTPUTS, _DTYPES, KERNELS, act_and_mul_cost,
           invalid_ids=True, bench_anchors=_DS_EP8, shape_label=_label,
           sglang=SglangBinding(("gelu_and_mul_triton_kernel",), grid=_grid),
           error_inputs=(
               ErrorInput("fp8", set_arg("scales", None), ValueError, "scales"),
               ErrorInput("float32", set_arg("reorder_topk_ids", lambda a: a["reorder_topk_ids"].float()), TypeError,
                          "reorder_topk_ids"),
           )),
)


# ----------------------------------------------------------------------------- mutants

_M = Mutant
MUTANTS = (
    # --- silu_and_mul ---------------------------------------------------------------------
    _M("silu_gate_up_swapped", "silu_and_mul", KERNELS,
       "gate = tl.load(gu_ptr + in_off, mask=m2, other=0.0).to(tl.float32)\n"
       "    up = tl.load(gu_ptr + in_off + I, mask=m2, other=0.0).to(tl.float32)",
       "gate = tl.load(gu_ptr + in_off + I, mask=m2, other=0.0).to(tl.float32)\n"
       "    up = tl.load(gu_ptr + in_off, mask=m2, other=0.0).to(tl.float32)",
       "gate and up swapped: the activation is applied to the second half of the row"),
    _M("silu_end_exclusive", "silu_and_mul", KERNELS,
       "local = (rows < M) & (e >= start_expert) & (e <= end_expert)",
       "local = (rows < M) & (e >= start_expert) & (e < end_expert)",
       "the expert range end treated as exclusive: rows of end_expert_id are left unwritten"),
    _M("silu_scale_not_reciprocal", "silu_and_mul", KERNELS,
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "inv = tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "the fp8 scale applied instead of its reciprocal", dtypes=_FP8),
    _M("silu_int32_row_offset", "silu_and_mul", KERNELS,
       "rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)",
       "rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
       "int32 row offsets: rows * 2I overflows once M*2I passes 2**31",
       dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- gelu_and_mul ---------------------------------------------------------------------
    _M("gelu_erf_form", "gelu_and_mul", KERNELS,
       "a = gate / (1.0 + tl.exp(-2.0 * y))",
       "a = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))",
       "GELU without its tanh form: the exact erf GELU where the tanh approximation is the contract"),
    _M("gelu_expert_offset_dropped", "gelu_and_mul", KERNELS,
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "inv = 1.0 / tl.load(scales_ptr + e, mask=local, other=1.0)",
       "expert offset dropped: scales indexed by e instead of e - start_expert_id", dtypes=_FP8),
    _M("gelu_tail_mask_dropped", "gelu_and_mul", KERNELS,
       "m2 = local[:, None] & (cols < I)[None, :]",
       "m2 = local[:, None]",
       "missing tail mask: when I is not a multiple of the block, gate reads into up and stores spill into "
       "the next row"),
)
