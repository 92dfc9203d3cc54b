"""Cross-check reference/deepgemm_layout.py and reference/quant.py against SGLang's released
Triton kernels, run by Triton's interpreter on the CPU.

    pip download sglang==0.5.23 --no-deps -d /tmp/sglang-0.5.23
    (cd /tmp/sglang-0.5.23 && unzip -q -o sglang-*.whl 'sglang/*')
    PYTHONPATH=$PWD python tools/crosscheck_sglang_layouts.py --sglang-root /tmp/sglang-0.5.23

The two upstream files (``sglang/kernels/ops/moe/ep_moe_kernels.py``,
``sglang/kernels/ops/quantization/fp8_kernel.py``) are loaded on their own, with small
stand-in modules for the ``sglang.*`` names they import (platform probes answer "not CUDA",
environment flags answer False). What the CPU cannot run is patched in the loaded module
only: the two launch-geometry helpers that read CUDA device properties, and
``torch.cuda.is_current_stream_capturing``. Inputs are float32 where the upstream op allows
it (the interpreter gets bf16 arithmetic wrong); fp8 values are compared code by code, and
a code one step away (the interpreter's fp32->fp8 cast may take the other neighbour) is
counted separately from a real difference. Rows placed by atomics are compared through the
index outputs. Prints one line per case and exits non-zero when any case differs.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported, here or by the upstream files

import argparse
import importlib.util
import sys
import traceback
import types
from pathlib import Path

import torch
import triton

from reference import deepgemm_layout as ref_layout
from reference import quant as ref_quant

FP8 = torch.float8_e4m3fn
RESULTS: list = []   # (op, case, verdict, detail)


# --------------------------------------------------------------------------- loading upstream


class _Flag:
    def get(self):
        return False


class _Envs:
    def __getattr__(self, name):
        return _Flag()


def _module(name: str, **attrs) -> types.ModuleType:
    mod = sys.modules.get(name) or types.ModuleType(name)
    mod.__path__ = getattr(mod, "__path__", [])
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def install_stand_ins() -> None:
    """Minimal modules for the names the two upstream files import."""
    import triton.language as tl
    no = lambda *a, **k: False  # noqa: E731
    for pkg in ("sglang", "sglang.srt", "sglang.srt.layers", "sglang.kernels", "sglang.kernels.jit",
                "sglang.kernels.ops", "sglang.kernels.ops.quantization", "sglang.kernels.ops.moe"):
        _module(pkg)
    _module("sglang.srt.environ", envs=_Envs())
    _module("sglang.srt.utils", ceil_div=lambda a, b: -(-a // b), ceil_align=lambda a, b: -(-a // b) * b,
            is_cuda=no, is_musa=no, is_hip=no, is_xpu=no)
    _module("sglang.srt.utils.patch_torch", register_fake_if_exists=lambda name: (lambda fn: fn))
    _module("sglang.kernels.jit.utils", is_arch_support_pdl=no)
    _module("sglang.kernels.ops.quantization.fp8_utils", fp8_dtype_to_triton=lambda dtype, **k: tl.float8e4nv)
    _module("sglang.srt.layers.deep_gemm_wrapper", DEEPGEMM_SCALE_UE8M0=False)


def load_file(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class _LoopInt(int):
    """A Python int with the ``.to(dtype)`` of a Triton scalar (a no-op: Python ints cannot overflow)."""

    def to(self, *args, **kwargs):
        return self


def _interpreter_range(*args):
    """range yielding _LoopInt: under the interpreter a kernel's ``range`` and ``tl.range`` yield
    Python ints, and SGLang's kernels call ``.to(tl.int64)`` on the loop variable."""
    return map(_LoopInt, range(*args))


def patch_interpreter() -> list:
    """Work around three limits of Triton's CPU interpreter (not of the kernels); returns their names.

    - fp32 -> fp8e4nv / bf16 / fp16 downcasts: the interpreter truncates, rounds ties up and
      drops the carry out of the mantissa (1.9375 -> 1.0 in fp8); replaced by torch's
      round-to-nearest-even cast, saturating to +-448 for fp8 as the GPU's cvt.satfinite does.
    - a scalar mask on a block store/load ("mask has unsupported dtype"): broadcast to bool.
    - ``.to()`` on a plain-range loop variable (see _interpreter_range).
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp

    convert = interp._convert_float
    torch_of = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float16: torch.float16,
                tl.float8e4nv: FP8}
    np_uint = {torch.float32: np.uint32, torch.bfloat16: np.uint16, torch.float16: np.uint16, FP8: np.uint8}

    def convert_rne(input, input_dtype, output_dtype, rounding_mode):
        src, dst = torch_of.get(input_dtype), torch_of.get(output_dtype)
        downcast = src is not None and dst is not None and input_dtype.primitive_bitwidth > output_dtype.primitive_bitwidth
        if not downcast:
            return convert(input, input_dtype, output_dtype, rounding_mode)
        raw = np.ascontiguousarray(input).view(np_uint[src])
        values = torch.from_numpy(raw.astype(np.int64)).to(torch.int32 if src == torch.float32 else torch.int16)
        values = values.view(src).to(torch.float32)
        if dst == FP8:
            values = values.clamp(-448.0, 448.0)
        out = values.to(dst).view(torch.uint8 if dst == FP8 else torch.int16).numpy()
        return out.view(np_uint[dst]).reshape(input.shape)

    interp._convert_float = convert_rne
    interp.range = _interpreter_range          # what the interpreter's tl.range returns
    builder = interp.InterpreterBuilder
    store, load = builder.create_masked_store, builder.create_masked_load

    def bool_mask(ptrs, mask):
        data = np.ascontiguousarray(np.broadcast_to(np.asarray(mask.data).astype(bool), np.shape(ptrs.data)))
        return interp.TensorHandle(data, tl.int1)

    # the cache / eviction / volatile arguments pass through: their number differs between Triton
    # releases (3.8 passes an eviction policy that 3.9 does not)
    builder.create_masked_store = lambda self, ptrs, value, mask, *rest: store(self, ptrs, value,
                                                                               bool_mask(ptrs, mask), *rest)
    builder.create_masked_load = lambda self, ptrs, mask, other, *rest: load(self, ptrs, bool_mask(ptrs, mask),
                                                                             other, *rest)
    return ["fp32->fp8/bf16 round-to-nearest-even", "scalar masks", "range loop .to()"]


PATCHES: list = []


def load_upstream(root: Path):
    install_stand_ins()
    PATCHES[:] = patch_interpreter()
    fp8 = load_file(root / "sglang/kernels/ops/quantization/fp8_kernel.py",
                    "sglang.kernels.ops.quantization.fp8_kernel")
    ep = load_file(root / "sglang/kernels/ops/moe/ep_moe_kernels.py", "sglang.kernels.ops.moe.ep_moe_kernels")
    # CPU stand-ins for what reads CUDA device properties (launch geometry only).
    ep._get_launch_config_2d = lambda device, m, n: ((max(min(m, 3), 1), triton.cdiv(n, 128)), 128)
    ep.requant_warp_size = lambda device: 32
    ep.per_token_group_quant_fp8 = fp8.per_token_group_quant_fp8   # imported only under CUDA upstream
    ep.range = _interpreter_range
    torch.cuda.is_current_stream_capturing = lambda: False
    return ep, fp8


# --------------------------------------------------------------------------- comparisons


def record(op, case, verdict, detail=""):
    RESULTS.append((op, case, verdict, detail))
    print(f"{verdict:10s} {op:48s} {case:34s} {detail}", flush=True)


def bits(t: torch.Tensor) -> torch.Tensor:
    size = t.element_size()
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size])


def fp8_code_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many fp8 codes apart each pair is (same sign: code difference; +0 and -0 are equal)."""
    ca, cb = a.contiguous().view(torch.uint8).to(torch.int32), b.contiguous().view(torch.uint8).to(torch.int32)
    signed = lambda c: torch.where(c >= 128, -(c - 128), c)  # noqa: E731  (monotone in value, -0 == +0)
    return (signed(ca) - signed(cb)).abs()


def compare(op, case, got, want, *, fp8_steps=0, rtol=0.0):
    """Exact comparison (bits), or fp8 within fp8_steps codes, or floats within rtol."""
    if got.shape != want.shape:
        return record(op, case, "DIFFERS", f"shape {tuple(got.shape)} vs {tuple(want.shape)}")
    if got.dtype == FP8:
        dist = fp8_code_distance(got, want)
        worst = int(dist.max()) if dist.numel() else 0
        off = int((dist > 0).sum())
        if worst == 0:
            return record(op, case, "matches", f"{got.numel()} fp8 values bit-equal")
        verdict = "matches~" if worst <= fp8_steps else "DIFFERS"
        return record(op, case, verdict, f"{off}/{got.numel()} fp8 values {worst} code(s) apart")
    if rtol and got.dtype.is_floating_point:
        g, w = got.double(), want.double()
        both_nan = g.isnan() & w.isnan()
        bad = ~both_nan & ((g - w).abs() > rtol * w.abs() + 1e-30)
        if bool(bad.any()):
            return record(op, case, "DIFFERS", f"{int(bad.sum())}/{got.numel()} beyond rtol {rtol}, max abs "
                                               f"{float((g - w)[~both_nan].abs().max()):.3g}")
        exact = torch.equal(bits(got), bits(want))
        return record(op, case, "matches" if exact else "matches~", "bit-equal" if exact else f"within rtol {rtol}")
    if torch.equal(bits(got), bits(want)):
        return record(op, case, "matches", f"{got.numel()} elements bit-equal")
    diff = int((bits(got) != bits(want)).sum())
    return record(op, case, "DIFFERS", f"{diff}/{got.numel()} elements differ")


def guarded(op, case):
    """Decorator: run a case, report an exception as 'not run'."""
    def wrap(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the sweep goes on
            record(op, case, "NOT RUN", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            if os.environ.get("CROSSCHECK_TRACE"):
                traceback.print_exc()
        return fn
    return wrap


def poison(shape, dtype):
    return ref_quant.poisoned(shape, dtype, "cpu")


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def routing(gen, tokens, topk, num_experts, invalid_frac=0.25):
    ids = torch.rand(tokens, num_experts, generator=gen).argsort(1)[:, :topk]
    drop = torch.rand(tokens, topk, generator=gen) < invalid_frac
    return torch.where(drop, -1, ids).to(torch.int32).contiguous()


# --------------------------------------------------------------------------- contiguous layout


def order_free_scatter(op, case, up, ref, recv_topk, first_expert, num_experts, names):
    """Compare scatter outputs through output_index: same slot -> same data; untouched rows equal."""
    idx_up, idx_ref = up["output_index"].long(), ref["output_index"].long()
    ids = recv_topk.long() - first_expert
    local = (ids >= 0) & (ids < num_experts)
    if not torch.equal(idx_up < 0, ~local) or not torch.equal(idx_ref < 0, ~local):
        return record(op, case, "DIFFERS", "output_index: -1 pattern differs from the non-local slots")
    for e in range(num_experts):
        a = torch.sort(idx_up[local & (ids == e)]).values
        b = torch.sort(idx_ref[local & (ids == e)]).values
        if not torch.equal(a, b):
            return record(op, case, "DIFFERS", f"expert {e}: rows {a.tolist()[:8]} vs {b.tolist()[:8]}")
    for name in names:
        got, want = up[name], ref[name]
        if got is None:
            continue
        if not torch.equal(bits(got), bits(want)):   # rows are the same sets, so whole buffers must agree
            per_row = (bits(got) != bits(want)).reshape(got.shape[0], -1).any(1).nonzero().flatten()
            return record(op, case, "DIFFERS", f"{name}: rows {per_row.tolist()[:8]} differ")
    record(op, case, "matches", "same rows per expert; data, scales, untouched rows bit-equal")


def check_ep_scatter(ep, gen):
    cases = [("float32 + fp32 scales", torch.float32, torch.float32, False, 128, 1),
             ("fp8 + fp32 scales, align 64", FP8, torch.float32, False, 64, 0),
             ("fp8 + UE8M0 int32 scales", FP8, torch.int32, True, 128, 2),
             ("bf16 (scales ignored)", torch.bfloat16, None, False, 128, 0)]
    for case, dtype, sdtype, ue8m0, align, first in cases:
        @guarded("ep_scatter", case)
        def _():
            T, K, E, H = 37, 4, 5, 512
            ids = routing(gen, T, K, E + first)
            x = randn(gen, T, H).to(dtype)
            width = H // 128 if not ue8m0 else -(-(H // 128) // 4)
            xs = (torch.randint(0, 2 ** 30, (T, width), generator=gen, dtype=torch.int32) if sdtype == torch.int32
                  else torch.rand(T, width, generator=gen)) if sdtype else None
            local = ids.long() - first
            routed = torch.bincount(local[(local >= 0) & (local < E)], minlength=E)
            valid = routed + torch.randint(0, 3, (E,), generator=gen)          # room past the routed rows
            padded = (valid + align - 1) // align * align
            rows = int(padded.sum()) + 128
            bufs = {}
            for who in ("up", "ref"):
                bufs[who] = dict(output_tensor=poison((rows, H), dtype),
                                 output_tensor_scale=None if sdtype is None else poison((rows, width), sdtype),
                                 m_indices=torch.full((rows,), -7, dtype=torch.int32),
                                 output_index=torch.full((T, K), -9, dtype=torch.int32),
                                 expert_start_loc=torch.full((E,), -5, dtype=torch.int32))
            for who, fn in (("up", ep.ep_scatter), ("ref", ref_layout.ep_scatter)):
                b = bufs[who]
                fn(x, xs, ids, padded.int(), valid.int(), b["expert_start_loc"], b["output_tensor"],
                   b["output_tensor_scale"], b["m_indices"], b["output_index"], scale_ue8m0=ue8m0,
                   expert_alignment=align, expert_start=first)
            compare("ep_scatter", case + " [m_indices]", bufs["up"]["m_indices"], bufs["ref"]["m_indices"])
            compare("ep_scatter", case + " [expert_start_loc]", bufs["up"]["expert_start_loc"],
                    bufs["ref"]["expert_start_loc"])
            order_free_scatter("ep_scatter", case, bufs["up"], bufs["ref"], ids, first, E,
                               ("output_tensor", "output_tensor_scale"))


def check_ep_scatter_from_psum(ep, gen):
    for case, dtype, sdtype in (("float32 + fp32 scales", torch.float32, torch.float32),
                                ("fp8 + fp32 scales", FP8, torch.float32), ("bf16", torch.bfloat16, None)):
        @guarded("ep_scatter_from_psum", case)
        def _():
            T, K, E, H = 29, 3, 4, 256
            ids = routing(gen, T, K, E)
            x = randn(gen, T, H).to(dtype)
            xs = torch.rand(T, H // 128, generator=gen) if sdtype else None
            routed = torch.bincount(ids[ids >= 0].long(), minlength=E)
            sizes = routed + torch.randint(0, 5, (E,), generator=gen)
            psum = torch.cumsum(sizes, 0).int()
            rows = -(-int(psum[-1]) // 128) * 128 + 128
            bufs = {}
            for who, fn in (("up", ep.ep_scatter_from_psum), ("ref", ref_layout.ep_scatter_from_psum)):
                b = bufs[who] = dict(output_tensor=poison((rows, H), dtype),
                                     output_tensor_scale=poison((rows, H // 128), torch.float32) if sdtype else None,
                                     m_indices=torch.full((rows,), -7, dtype=torch.int32),
                                     output_index=torch.full((T, K), -9, dtype=torch.int32),
                                     expert_start_loc=torch.full((E,), -5, dtype=torch.int32))
                fn(x, xs, ids, psum, b["expert_start_loc"], b["output_tensor"], b["output_tensor_scale"],
                   b["m_indices"], b["output_index"])
            compare("ep_scatter_from_psum", case + " [m_indices]", bufs["up"]["m_indices"], bufs["ref"]["m_indices"])
            compare("ep_scatter_from_psum", case + " [expert_start_loc]", bufs["up"]["expert_start_loc"],
                    bufs["ref"]["expert_start_loc"])
            order_free_scatter("ep_scatter_from_psum", case, bufs["up"], bufs["ref"], ids, 0, E,
                               ("output_tensor", "output_tensor_scale"))


def expanded_psum(gen, num_experts, align, max_count):
    counts = torch.randint(0, max_count + 1, (num_experts,), generator=gen)
    counts[1] = 0                                                   # an empty expert
    psum, prev = [], 0
    for c in counts.tolist():
        prev = -(-prev // align) * align + c
        psum.append(prev)
    return torch.tensor(psum, dtype=torch.int32)


def check_fill_m_indices(ep, gen):
    @guarded("fill_m_indices_from_psum", "E=5 align 32")
    def _():
        psum = expanded_psum(gen, 5, 32, 70)
        total = -(-int(psum[-1]) // 32) * 32 + 64
        compare("fill_m_indices_from_psum", "E=5 align 32", ep.fill_m_indices_from_psum(psum, 5, total, 32),
                ref_layout.fill_m_indices_from_psum(psum, 5, total, 32))


def check_ep_gather(ep, gen):
    @guarded("ep_gather", "float32, H=256")
    def _():
        T, K, R, H = 23, 4, 60, 256
        ids = routing(gen, T, K, 6)
        idx = torch.randint(0, R, (T, K), generator=gen, dtype=torch.int32)
        w = torch.rand(T, K, generator=gen)
        x = randn(gen, R, H)
        outs = [poison((T, H), torch.float32) for _ in range(2)]
        ep.ep_gather(x, ids, w, idx, outs[0])
        ref_layout.ep_gather(x, ids, w, idx, outs[1])
        compare("ep_gather", "float32, H=256", outs[0], outs[1], rtol=2 ** -22)


def check_post_reorder_deepgemm(ep, gen):
    for case, lora, rsf in (("float32", False, 1.0), ("float32 + lora_delta, rsf 2.5", True, 2.5)):
        @guarded("post_reorder_deepgemm", case)
        def _():
            T, K, R, H = 17, 3, 40, 200
            src2dst = torch.randint(-1, R, (T * K,), generator=gen, dtype=torch.int32)
            ids = routing(gen, T, K, 5)
            w = torch.rand(T, K, generator=gen)
            down = randn(gen, R, H)
            delta = randn(gen, T, K, H) if lora else None
            outs = [poison((T + 2, H), torch.float32) for _ in range(2)]
            ep.post_reorder_deepgemm(down, outs[0], src2dst, ids, w, K, T, H, rsf, lora_delta=delta)
            ref_layout.post_reorder_deepgemm(down, outs[1], src2dst, ids, w, K, T, H, rsf, lora_delta=delta)
            compare("post_reorder_deepgemm", case, outs[0], outs[1], rtol=2 ** -21)


def check_small_helpers(ep, gen):
    @guarded("scale_expanded_rows_", "float32, column-major x")
    def _():
        x = randn(gen, 6, 9).t().contiguous().t()
        w = torch.rand(6, generator=gen)
        a, b = x.clone(), x.clone()
        ep.scale_expanded_rows_(a, w)
        ref_layout.scale_expanded_rows_(b, w)
        compare("scale_expanded_rows_", "float32, column-major x", a, b)

    @guarded("get_tma_aligned_size", "x in 0..40, sizes 1/2/4/8")
    def _():
        bad = [(x, s) for x in range(41) for s in (1, 2, 4, 8)
               if ep.get_tma_aligned_size(x, s) != ref_layout.get_tma_aligned_size(x, s)]
        record("get_tma_aligned_size", "x in 0..40, sizes 1/2/4/8", "DIFFERS" if bad else "matches", str(bad[:4]))

    @guarded("tma_align_input_scale", "float32 [13, 7]")
    def _():
        s = torch.rand(13, 7, generator=gen)
        a, b = ep.tma_align_input_scale(s), ref_layout.tma_align_input_scale(s)
        if a.stride() != b.stride():
            return record("tma_align_input_scale", "float32 [13, 7]", "DIFFERS", f"strides {a.stride()} vs {b.stride()}")
        compare("tma_align_input_scale", "float32 [13, 7]", a.contiguous(), b.contiguous())


# --------------------------------------------------------------------------- masked layout


def order_free_dispatch(op, case, up, ref, ids, first, num_experts, m_max):
    (mm_up, s_up), (mm_ref, s_ref) = up, ref
    if not torch.equal(mm_up, mm_ref):
        return record(op, case, "DIFFERS", f"masked_m {mm_up.tolist()} vs {mm_ref.tolist()}")
    flat = ids.reshape(-1).long() - first
    local = (flat >= 0) & (flat < num_experts)
    for who, s2d in (("upstream", s_up), ("reference", s_ref)):
        if not torch.equal(s2d < 0, ~local):
            return record(op, case, "DIFFERS", f"{who} src2dst: -1 pattern differs from the non-local slots")
        for e in range(num_experts):
            rows = torch.sort(s2d[local & (flat == e)].long()).values
            if not torch.equal(rows, e * m_max + torch.arange(int(mm_ref[e]))):
                return record(op, case, "DIFFERS", f"{who} src2dst, expert {e}: rows {rows.tolist()[:8]}")
    record(op, case, "matches", "masked_m equal; each expert's rows are e*m_max + [0, masked_m)")


def check_dispatch_index(ep, gen):
    for case, T, K, E, first in (("single block (ZERO_INIT)", 40, 4, 6, 2), ("multi block", 300, 4, 8, 0)):
        @guarded("fused_moe_dispatch_index", case)
        def _():
            ids = routing(gen, T, K, E + first + 2, invalid_frac=0.1)
            m_max = (T // 256 + 1) * 256
            order_free_dispatch("fused_moe_dispatch_index", case, ep.fused_moe_dispatch_index(ids, E, m_max, first),
                                ref_layout.fused_moe_dispatch_index(ids, E, m_max, first), ids, first, E, m_max)


def check_deepgemm_preprocess(ep, gen):
    for case, out_dtype in (("float32 -> fp8, fp32 scales", FP8), ("float32 -> float32 (no quant)", torch.float32)):
        @guarded("moe_ep_deepgemm_preprocess", case)
        def _():
            T, K, E, H, first = 21, 3, 4, 256, 1
            ids = routing(gen, T, K, E + 2, invalid_frac=0.0)
            x = randn(gen, T, H, scale=3.0)
            up = ep.moe_ep_deepgemm_preprocess(ids, E, x, K, [128, 128], output_dtype=out_dtype, expert_start=first)
            ref = ref_layout.moe_ep_deepgemm_preprocess(ids, E, x, K, [128, 128], output_dtype=out_dtype,
                                                        expert_start=first)
            op = "moe_ep_deepgemm_preprocess"
            if up[1] != ref[1]:
                return record(op, case, "DIFFERS", f"expected_m {up[1]} vs {ref[1]}")
            m_max = up[3].shape[1]
            order_free_dispatch(op, case + " [index]", (up[0], up[2]), (ref[0], ref[2]), ids, first, E, m_max)
            # rows the two placed for the same slot must hold the same data
            live = up[2] >= 0
            r_up, r_ref = up[2][live].long(), ref[2][live].long()
            compare(op, case + " [rows]", up[3].view(-1, H)[r_up], ref[3].view(-1, H)[r_ref], fp8_steps=1)
            if out_dtype == FP8:
                compare(op, case + " [scales]", up[4].view(-1, H // 128)[r_up], ref[4].view(-1, H // 128)[r_ref],
                        rtol=2 ** -23)


def check_expand_to_masked_slab(ep, gen):
    for case, dtype, sdtype in (("float32, no scales", torch.float32, None), ("fp8 + fp32 scales", FP8, torch.float32),
                                ("fp8 + int32 packed scales", FP8, torch.int32)):
        @guarded("expand_to_masked_slab", case)
        def _():
            E, H, align, max_m = 5, 192, 16, 48
            psum = expanded_psum(gen, E, align, max_m)
            n = int(psum[-1]) + 3
            x = randn(gen, n, H).to(dtype)
            xs = None
            if sdtype == torch.float32:
                xs = torch.rand(n, 2, generator=gen)
            elif sdtype == torch.int32:
                xs = torch.randint(0, 2 ** 30, (n, 1), generator=gen, dtype=torch.int32)
            up = ep.expand_to_masked_slab(x, xs, psum, E, max_m, align)
            ref = ref_layout.expand_to_masked_slab(x, xs, psum, E, max_m, align)
            op = "expand_to_masked_slab"
            compare(op, case + " [masked_m]", up[2], ref[2])
            live = ref_quant._rows_below(ref[2], max_m)
            compare(op, case + " [live rows]", up[0][live], ref[0][live])
            if xs is not None:
                if up[1].stride() != ref[1].stride():
                    return record(op, case, "DIFFERS", f"scale strides {up[1].stride()} vs {ref[1].stride()}")
                compare(op, case + " [live scales]", up[1][live], ref[1][live])

    @guarded("expand_to_masked_slab", "overflow raises")
    def _():
        psum = torch.tensor([10, 40], dtype=torch.int32)
        x = randn(gen, 40, 64)
        outcomes = []
        for fn in (ep.expand_to_masked_slab, ref_layout.expand_to_masked_slab):
            try:
                fn(x, None, psum, 2, 12, 16)
                outcomes.append("returned")
            except (RuntimeError, ValueError) as exc:
                outcomes.append(type(exc).__name__)
        record("expand_to_masked_slab", "overflow raises", "matches" if "returned" not in outcomes else "DIFFERS",
               f"upstream {outcomes[0]}, reference {outcomes[1]}")


def check_masked_slab_to_expand(ep, gen):
    for case, with_w in (("float32", False), ("float32 + topk_weights", True)):
        @guarded("masked_slab_to_expand", case)
        def _():
            E, H, align, max_m = 4, 160, 8, 24
            psum = expanded_psum(gen, E, align, max_m + 6)                 # some experts overflow: clamped
            total = -(-int(psum[-1]) // align) * align + 8
            x = randn(gen, E, max_m, H)
            w = torch.rand(total, generator=gen) if with_w else None
            up = ep.masked_slab_to_expand(x, psum, total, align, w)
            ref = ref_layout.masked_slab_to_expand(x, psum, total, align, w)
            written = ~ref.isnan().all(1)                                   # rows the contract defines
            compare("masked_slab_to_expand", case + f" [{int(written.sum())} rows]", up[written], ref[written])


# --------------------------------------------------------------------------- activation + quantisation


def masked_case(gen, E, m_max, width, dtype=torch.float32, scale=2.0):
    x = randn(gen, E, m_max, width, scale=scale).to(dtype)
    masked_m = torch.randint(0, m_max + 1, (E,), generator=gen, dtype=torch.int32)
    masked_m[0] = m_max
    return x, masked_m


def check_silu_masked(ep, gen):
    @guarded("silu_and_mul_masked_fwd", "float32 (raw kernel, wrapper's grid)")
    def _():
        E, m_max, n = 3, 9, 200
        x, mm = masked_case(gen, E, m_max, 2 * n)
        outs = [poison((E, m_max, n), torch.float32) for _ in range(2)]
        ep._silu_and_mul_kernel[(triton.cdiv(n, 128), 64, E)](x, *x.stride(), outs[0], *outs[0].stride(), mm, n,
                                                               BLOCK_N=128, NUM_STAGE=4, num_warps=4)
        ref_quant.silu_and_mul_masked_fwd(x, outs[1], mm)
        compare("silu_and_mul_masked_fwd", "float32 (raw kernel, wrapper's grid)", outs[0], outs[1], rtol=2 ** -20)

    @guarded("silu_and_mul_masked_fwd", "bf16 via the wrapper")
    def _():
        E, m_max, n = 2, 5, 128
        x, mm = masked_case(gen, E, m_max, 2 * n, torch.bfloat16)
        outs = [poison((E, m_max, n), torch.bfloat16) for _ in range(2)]
        ep.silu_and_mul_masked_fwd(x, outs[0], mm)
        ref_quant.silu_and_mul_masked_fwd(x, outs[1], mm)
        compare("silu_and_mul_masked_fwd", "bf16 via the wrapper", outs[0], outs[1], rtol=2 ** -7)


def check_post_quant(ep, gen):
    cases = [("fp32 scales", False, 0.0, 0.0, torch.float32, 128),
             ("fp32 scales, scale_ue8m0", True, 0.0, 0.0, torch.float32, 64),
             ("SwiGLU alpha 1.702 limit 7", False, 1.702, 7.0, torch.float32, 128),
             ("packed int32 UE8M0", True, 0.0, 0.0, torch.int32, 32),
             ("packed int32 UE8M0 + SwiGLU", True, 1.702, 7.0, torch.int32, 32)]
    for case, ue8m0, alpha, limit, sdtype, gs in cases:
        @guarded("silu_and_mul_masked_post_quant_fwd", case)
        def _():
            E, m_max, n = 3, 7, 256
            x, mm = masked_case(gen, E, m_max, 2 * n, scale=4.0)
            groups = n // gs
            shape = (E, groups // 4, m_max) if sdtype == torch.int32 else (E, m_max, groups)
            outs = [(poison((E, m_max, n), FP8), poison(shape, sdtype)) for _ in range(2)]
            extra = dict(num_real_tokens=int(mm.sum()), topk=1) if sdtype == torch.int32 else {}
            for (q, s), fn in zip(outs, (ep.silu_and_mul_masked_post_quant_fwd,
                                         ref_quant.silu_and_mul_masked_post_quant_fwd)):
                fn(x, q, s, gs, mm, scale_ue8m0=ue8m0, gemm1_alpha=alpha, gemm1_clamp_limit=limit, **extra)
            op = "silu_and_mul_masked_post_quant_fwd"
            compare(op, case + " [q]", outs[0][0], outs[1][0], fp8_steps=1)
            compare(op, case + " [scales]", outs[0][1], outs[1][1], rtol=0 if sdtype == torch.int32 else 2 ** -22)


    record("silu_and_mul_masked_post_quant_fwd", "bf16 / fp16 inputs", "NOT RUN",
           "its kernel multiplies two bf16 values, which the interpreter computes on raw bit patterns")


def check_per_tensor_quant(ep, gen):
    for case, dtype in (("float32, scale [E]", torch.float32), ("bf16, scale [E]", torch.bfloat16)):
        @guarded("silu_and_mul_masked_post_per_tensor_quant_fwd", case)
        def _():
            E, m_max, n = 3, 6, 300
            x, mm = masked_case(gen, E, m_max, 2 * n, dtype)
            scale = torch.rand(E, generator=gen) / 50 + 0.01                   # only scale[0] is used
            outs = [poison((E, m_max, n), FP8) for _ in range(2)]
            ep.silu_and_mul_masked_post_per_tensor_quant_fwd(x, outs[0], mm, scale)
            ref_quant.silu_and_mul_masked_post_per_tensor_quant_fwd(x, outs[1], mm, scale)
            compare("silu_and_mul_masked_post_per_tensor_quant_fwd", case, outs[0], outs[1], fp8_steps=1)

    for case, expected in (("expected_rows None", None), ("expected_rows 2 (overflow phase)", 2)):
        @guarded("fp8_per_token_to_per_tensor_quant_triton", case)
        def _():
            E, m, k = 4, 10, 384
            x = randn(gen, E, m, k, scale=50).to(FP8)
            x_scale = (torch.rand(E, k // 128, m, generator=gen) / 4 + 0.01).transpose(1, 2)   # column-major, as DeepEP's
            mm = torch.randint(0, m + 1, (E,), generator=gen, dtype=torch.int32)
            mm[1] = m
            dequant_max = float((x.float() * x_scale.repeat_interleave(128, 2)).abs().max())
            out_scale = torch.tensor([dequant_max / 448 * 1.01])
            outs = [poison((E, m, k), FP8) for _ in range(2)]
            ep.fp8_per_token_to_per_tensor_quant_triton(x, x_scale, mm, out_scale, outs[0], expected_rows=expected)
            ref_quant.fp8_per_token_to_per_tensor_quant_triton(x, x_scale, mm, out_scale, outs[1], expected_rows=expected)
            compare("fp8_per_token_to_per_tensor_quant_triton", case, outs[0], outs[1], fp8_steps=1)


def check_group_quant(fp8, gen):
    layouts = [("row-major", False, False, torch.float32), ("row-major bf16", False, False, torch.bfloat16),
               ("column-major", True, False, torch.float32), ("column-major TMA-aligned", True, True, torch.float32)]
    for case, col, tma, dtype in layouts:
        @guarded("per_token_group_quant_fp8 (Triton fallback)", case)
        def _():
            x = randn(gen, 13, 512, scale=3.0).to(dtype)
            q_up, s_up = fp8.per_token_group_quant_fp8(x, 128, column_major_scales=col, scale_tma_aligned=tma)
            q_ref, s_ref = ref_quant.sglang_per_token_group_quant_fp8(x, 128, column_major_scales=col,
                                                                      scale_tma_aligned=tma)
            op = "per_token_group_quant_fp8 (Triton fallback)"
            if s_up.stride() != s_ref.stride():
                return record(op, case, "DIFFERS", f"scale strides {s_up.stride()} vs {s_ref.stride()}")
            compare(op, case + " [q]", q_up, q_ref, fp8_steps=1)
            compare(op, case + " [scales]", s_up, s_ref, rtol=2 ** -22)

    @guarded("per_token_group_quant_fp8 (Triton fallback)", "UE8M0 float scales (colmajor kernel)")
    def _():
        m, k, gs = 9, 256, 64
        x = randn(gen, m, k, scale=3.0)
        q_up = poison((m, k), FP8)
        s_up = poison((k // gs, m), torch.float32).t()
        fp8._per_token_group_quant_8bit_colmajor[(m * k // gs,)](x, q_up, s_up, gs, k, s_up.stride(1), 1e-10,
                                                                bit8_min=-448.0, bit8_max=448.0, BLOCK=gs,
                                                                SCALE_UE8M0=True)
        q_ref, s_ref = ref_quant.sglang_per_token_group_quant_fp8(x, gs, scale_ue8m0=True)
        op = "per_token_group_quant_fp8 (Triton fallback)"
        compare(op, "UE8M0 float scales [q]", q_up, q_ref, fp8_steps=1)
        compare(op, "UE8M0 float scales [scales]", s_up.contiguous(), s_ref)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sglang-root", default=os.environ.get("SGLANG_ROOT", "/tmp/sglang-0.5.23"),
                    help="folder holding the unpacked wheel's sglang/ tree")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    ep, fp8 = load_upstream(Path(args.sglang_root))
    gen = torch.Generator().manual_seed(args.seed)
    for check in (check_ep_scatter, check_ep_scatter_from_psum, check_fill_m_indices, check_ep_gather,
                  check_post_reorder_deepgemm, check_small_helpers, check_dispatch_index, check_deepgemm_preprocess,
                  check_expand_to_masked_slab, check_masked_slab_to_expand, check_silu_masked, check_post_quant,
                  check_per_tensor_quant):
        check(ep, gen)
    check_group_quant(fp8, gen)
    differs = [r for r in RESULTS if r[2] == "DIFFERS"]
    not_run = [r for r in RESULTS if r[2] == "NOT RUN"]
    print(f"\n{len(RESULTS) - len(differs) - len(not_run)} matched, {len(differs)} differ, {len(not_run)} not run "
          f"(interpreter workarounds: {', '.join(PATCHES)})")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
