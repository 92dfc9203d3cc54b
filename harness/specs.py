"""One frozen, declarative record per op: reference, case builder, outputs and how each is
compared, dtypes, and the cases a backend cannot compute (with the reason).

Tests and the ``check`` command are generated from ``SPECS``: adding an op is adding a record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

import reference
from reference._checks import FP8_DTYPE, FP8_MAX

from .cases import CaseParams, make_generator, make_topk_ids, make_topk_weights, randn

FLOAT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ID_DTYPES = {"int32": torch.int32, "int64": torch.int64}
BLOCK_SHAPE = [128, 128]  # DeepSeek-V3's fp8 block shape, as SGLang uses it


@dataclass(frozen=True)
class OutputSpec:
    """One output of an op and how it is checked.

    where: "return:<i>" (i-th returned tensor, or the returned tensor when i is 0 and the
    op returns one) or "arg:<name>" (a caller-provided buffer, poisoned and guarded).
    compare: "exact" (bit-identical, NaN-aware), "float" (harness.tolerance rule),
    "normwise" (tolerance rule on the whole tensor) or "src2dst" (exact, or the canonical
    per-expert slot sets plus invariants when the implementation declares its order free).
    rows: what a row index of this output means, to locate the worst element:
    "position" (a position in expert order), "token", "slot" (flat t*K + k) or "expert".
    """

    name: str
    where: str
    compare: str
    rows: str
    reduction_len: Callable[[CaseParams], int] = lambda p: 0


@dataclass
class Sample:
    """The arguments of one case, in the op's argument order, plus what locating needs."""

    params: CaseParams
    args: Dict[str, object]
    float64_args: Tuple[str, ...]         # float tensors upcast for the exact (float64) evaluation
    topk_ids: Optional[torch.Tensor]      # [T, K] routing behind the case, for locating
    position_to_slot: Optional[torch.Tensor] = None  # [rows] flat slot at each expert-order position


@dataclass(frozen=True)
class OpSpec:
    name: str
    reference: Callable
    build: Callable[[CaseParams, torch.device], Sample]
    outputs: Tuple[OutputSpec, ...]
    dtypes: Tuple[str, ...]
    # (backend, dtype) -> why that backend cannot compute the case; "*" matches any dtype.
    skips: Mapping[Tuple[str, str], str] = field(default_factory=dict)
    # Size limits of the fuzzer for this op (large GEMMs and the dense MoE are slow on CPU).
    max_tokens: int = 512
    max_hidden: int = 640

    def skip_reason(self, backend: str, dtype: str) -> Optional[str]:
        return self.skips.get((backend, dtype)) or self.skips.get((backend, "*"))


# ----------------------------------------------------------------------------- helpers

def _ids(p: CaseParams, gen, dtype=torch.int32, allow_invalid=True) -> torch.Tensor:
    return make_topk_ids(p, gen, allow_invalid=allow_invalid).to(dtype)


def _routing(topk_ids: torch.Tensor, p: CaseParams):
    """Reference routing tensors: (reorder_topk_ids, src2dst, seg_indptr, position_to_slot).

    With -1 slots (deepep), positions are counted after the invalid ones, as SGLang does.
    """
    if bool((topk_ids < 0).any()):
        reorder, src2dst, seg = reference.deepep_preprocess(topk_ids, p.experts)
        n_inv = topk_ids.numel() - reorder.numel()
        # Keep M = T*K rows: the valid ids first, then -1 rows that no expert owns.
        reorder = torch.cat([reorder, reorder.new_full((n_inv,), -1)])
    else:
        reorder, src2dst, seg = reference.ep_preprocess(topk_ids, p.experts)
        src2dst = src2dst.to(torch.int64)
    pos_to_slot = torch.full((topk_ids.numel(),), -1, dtype=torch.int64, device=topk_ids.device)
    valid = src2dst >= 0
    pos_to_slot[src2dst[valid]] = torch.nonzero(valid).flatten()
    return reorder, src2dst, seg, pos_to_slot


def _fp8_dtype(dtype: str) -> bool:
    return dtype.startswith("fp8")


def _act_dtype(dtype: str) -> torch.dtype:
    """Activation dtype of a case: fp8 cases take bfloat16 activations."""
    return FLOAT_DTYPES.get(dtype, torch.bfloat16)


# ----------------------------------------------------------------------------- builders

def build_preprocess(p: CaseParams, device, *, allow_invalid: bool) -> Sample:
    gen = make_generator(p, device)
    ids = _ids(p, gen, ID_DTYPES[p.dtype], allow_invalid=allow_invalid)
    return Sample(p, {"topk_ids": ids, "num_experts": p.experts}, (), ids)


def build_pre_reorder(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = _ids(p, gen)
    _, src2dst, _, pos_to_slot = _routing(ids, p)
    act = _act_dtype(p.dtype)
    x = randn((p.tokens, p.hidden), gen, act)                                    # [T, H]
    out_dtype = FP8_DTYPE if _fp8_dtype(p.dtype) else act
    scales = None
    if _fp8_dtype(p.dtype):
        amax = float(x.float().abs().max()) if x.numel() else 1.0
        # amax / 448 keeps every scaled value in fp8 range; the factor varies scales per expert.
        scales = (amax / FP8_MAX) * (1.0 + torch.rand(p.e_local, generator=gen, device=device))
    args = dict(input=x, gateup_input=torch.empty(p.tokens * p.topk, p.hidden, dtype=out_dtype, device=device),
                src2dst=src2dst, topk_ids=ids, a1_scales=scales, start_expert_id=p.start_expert,
                end_expert_id=p.end_expert, topk=p.topk, hidden_size=p.hidden, BLOCK_SIZE=512)
    f64 = ("input", "gateup_input") if _fp8_dtype(p.dtype) else ()
    return Sample(p, args, f64, ids, pos_to_slot)


def build_act_and_mul(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = _ids(p, gen)
    reorder, _, _, pos_to_slot = _routing(ids, p)
    act = _act_dtype(p.dtype)
    M = p.tokens * p.topk
    gateup = randn((M, 2 * p.inter), gen, act, scale=2.0)                        # [M, 2I]
    out_dtype = FP8_DTYPE if _fp8_dtype(p.dtype) else act
    scales = None
    if _fp8_dtype(p.dtype):
        g = gateup.float()
        amax = float((g[:, :p.inter].abs() * g[:, p.inter:].abs()).max()) if M else 1.0
        scales = (max(amax, 1e-3) / FP8_MAX) * (1.0 + torch.rand(p.e_local, generator=gen, device=device))
    args = dict(gateup_output=gateup, down_input=torch.empty(M, p.inter, dtype=out_dtype, device=device),
                hidden_size=2 * p.inter, reorder_topk_ids=reorder.to(torch.int32), scales=scales,
                start_expert_id=p.start_expert, end_expert_id=p.end_expert, BLOCK_SIZE=512)
    return Sample(p, args, ("gateup_output", "down_input"), ids, pos_to_slot)


def build_post_reorder(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = _ids(p, gen)
    _, src2dst, _, pos_to_slot = _routing(ids, p)
    act = _act_dtype(p.dtype)
    down = randn((p.tokens * p.topk, p.hidden), gen, act)                       # [T*K, H]
    args = dict(down_output=down, output=torch.empty(p.tokens, p.hidden, dtype=act, device=device),
                src2dst=src2dst, topk_ids=ids, topk_weights=make_topk_weights(p, gen),
                start_expert_id=p.start_expert, end_expert_id=p.end_expert, topk=p.topk,
                hidden_size=p.hidden, BLOCK_SIZE=512)
    return Sample(p, args, ("down_output", "output"), ids, pos_to_slot)


def build_grouped_gemm(p: CaseParams, device) -> Sample:
    """a [T*K, H] in expert order, b [E_w, I, H]; groups are this rank's experts."""
    gen = make_generator(p, device)
    ids = _ids(p, gen)
    _, _, seg, pos_to_slot = _routing(ids, p)
    seg_local = seg[p.start_expert:p.end_expert + 2].clone()                     # [E_local + 1]
    M, N, Kd = p.tokens * p.topk, p.inter, p.hidden
    e_w = p.e_local + 1 + p.seed % 3                                             # more weights than groups
    weight_indices = torch.randperm(e_w, generator=gen, device=device)[:p.e_local]
    act = _act_dtype(p.dtype)
    scale_a = scale_b = block_shape = None
    fp8 = _fp8_dtype(p.dtype)
    if p.dtype == "fp8_tensor":
        a = randn((M, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        b = randn((e_w, N, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        base = 1.0 / (256.0 * math.sqrt(Kd))                                     # outputs of order 1
        scale_a = (torch.rand(e_w, generator=gen, device=device) + 0.5) * math.sqrt(base)
        scale_b = (torch.rand(e_w, generator=gen, device=device) + 0.5) * math.sqrt(base)
    elif p.dtype == "fp8_block":
        block_shape = list(BLOCK_SHAPE)
        a = randn((M, Kd), gen, act)
        b = randn((e_w, N, Kd), gen, torch.float32, scale=16.0).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        nb, kb = -(-N // block_shape[0]), -(-Kd // block_shape[1])
        scale_b = (torch.rand(e_w, nb, kb, generator=gen, device=device) + 0.5) / (16.0 * math.sqrt(Kd))
    else:
        a = randn((M, Kd), gen, act)
        b = randn((e_w, N, Kd), gen, act, scale=1.0 / math.sqrt(Kd))
    c = torch.empty(M, N, dtype=act, device=device)
    args = dict(a=a, b=b, c=c, batch_size=p.e_local, weight_column_major=True, seg_indptr=seg_local,
                weight_indices=weight_indices, use_fp8_w8a8=fp8, scale_a=scale_a, scale_b=scale_b,
                block_shape=block_shape)
    f64 = ("c",) if p.dtype == "fp8_tensor" else ("a", "c") if fp8 else ("a", "b", "c")
    return Sample(p, args, f64, ids, pos_to_slot)


def _quantize_weight_blockwise(w: torch.Tensor, gen, block_shape):
    """fp8 weight and its block scales from a float32 weight [E, N, Kd] (amax / 448 per block)."""
    E, N, Kd = w.shape
    bn, bk = block_shape
    nb, kb = -(-N // bn), -(-Kd // bk)
    padded = torch.nn.functional.pad(w, (0, kb * bk - Kd, 0, nb * bn - N))
    blocks = padded.view(E, nb, bn, kb, bk)
    scale = blocks.abs().amax(dim=(2, 4)).clamp_min(1e-10) / FP8_MAX             # [E, nb, kb]
    q = (blocks / scale[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(E, nb * bn, kb * bk)[:, :N, :Kd].contiguous(), scale


def build_ep_moe(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    ids = _ids(p, gen, allow_invalid=False)
    act = _act_dtype(p.dtype)
    H, I = p.hidden, p.inter
    x = randn((p.tokens, H), gen, act)
    w13 = randn((p.e_local, 2 * I, H), gen, torch.float32, scale=1.0 / math.sqrt(H))
    w2 = randn((p.e_local, H, I), gen, torch.float32, scale=1.0 / math.sqrt(I))
    w13_scale = w2_scale = block_shape = None
    if p.dtype == "fp8_block":
        block_shape = list(BLOCK_SHAPE)
        w13, w13_scale = _quantize_weight_blockwise(w13, gen, block_shape)
        w2, w2_scale = _quantize_weight_blockwise(w2, gen, block_shape)
    else:
        w13, w2 = w13.to(act), w2.to(act)
    args = dict(hidden_states=x, topk_ids=ids, topk_weights=make_topk_weights(p, gen), w13=w13, w2=w2,
                num_experts=p.experts, start_expert_id=p.start_expert, end_expert_id=p.end_expert,
                activation="silu", w13_scale=w13_scale, w2_scale=w2_scale, block_shape=block_shape)
    f64 = ("hidden_states",) if block_shape else ("hidden_states", "w13", "w2")
    return Sample(p, args, f64, ids)


# ----------------------------------------------------------------------------- records

_PREPROCESS_OUTPUTS = (
    OutputSpec("reorder_topk_ids", "return:0", "exact", "position"),
    OutputSpec("src2dst", "return:1", "src2dst", "slot"),
    OutputSpec("seg_indptr", "return:2", "exact", "expert"),
)
# float32 exp/tanh in the activation cost a few float32 ulps of |gate| * |up| in absolute
# terms (1 + tanh(z) cancels for negative z), counted as 8 accumulated terms.
_ACT_OUTPUTS = (OutputSpec("down_input", "arg:down_input", "float", "position", reduction_len=lambda p: 8),)

SPECS: Dict[str, OpSpec] = {s.name: s for s in (
    OpSpec("ep_preprocess", reference.ep_preprocess,
           lambda p, d: build_preprocess(p, d, allow_invalid=False),
           _PREPROCESS_OUTPUTS, tuple(ID_DTYPES), max_tokens=4096),
    OpSpec("deepep_preprocess", reference.deepep_preprocess,
           lambda p, d: build_preprocess(p, d, allow_invalid=True),
           _PREPROCESS_OUTPUTS, tuple(ID_DTYPES), max_tokens=4096),
    OpSpec("pre_reorder", reference.pre_reorder, build_pre_reorder,
           # A pure copy is exact; the fp8 case scales and rounds once.
           (OutputSpec("gateup_input", "arg:gateup_input", "exact_or_float", "position"),),
           ("bfloat16", "float16", "float32", "fp8")),
    OpSpec("silu_and_mul", reference.silu_and_mul, build_act_and_mul, _ACT_OUTPUTS,
           ("bfloat16", "float16", "float32", "fp8")),
    OpSpec("gelu_and_mul", reference.gelu_and_mul, build_act_and_mul, _ACT_OUTPUTS,
           ("bfloat16", "float16", "float32", "fp8")),
    OpSpec("post_reorder", reference.post_reorder, build_post_reorder,
           (OutputSpec("output", "arg:output", "float", "token", reduction_len=lambda p: p.topk),),
           ("bfloat16", "float16", "float32")),
    OpSpec("grouped_gemm", reference.grouped_gemm, build_grouped_gemm,
           (OutputSpec("c", "arg:c", "float", "position", reduction_len=lambda p: p.hidden),),
           ("bfloat16", "float16", "float32", "fp8_tensor", "fp8_block"), max_tokens=256),
    OpSpec("ep_moe_forward", reference.ep_moe_forward, build_ep_moe,
           (OutputSpec("output", "return:0", "normwise", "token"),),
           ("bfloat16", "fp8_block"), max_tokens=128, max_hidden=384),
)}

# Outputs whose exactness depends on the case: pure copies are exact, scaled fp8 copies are float.
def resolve_compare(out: OutputSpec, p: CaseParams) -> str:
    if out.compare == "exact_or_float":
        return "float" if _fp8_dtype(p.dtype) else "exact"
    return out.compare


def is_fp8_dot(out: OutputSpec, p: CaseParams) -> bool:
    return out.name == "c" and _fp8_dtype(p.dtype)
