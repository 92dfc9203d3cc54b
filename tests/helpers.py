"""Shared builders and slow, obviously-right formulations used by the tests."""
from __future__ import annotations

import textwrap
import zipfile

import torch


def random_ids(gen, T, K, E, *, distinct=True, invalid_frac=0.0, dtype=torch.int32):
    """topk_ids [T, K] drawn from gen: distinct experts per token when possible."""
    dev = gen.device
    if distinct and K <= E:
        ids = torch.rand(T, E, generator=gen, device=dev).argsort(dim=1)[:, :K]
    else:
        ids = torch.randint(0, E, (T, K), generator=gen, device=dev)
    if invalid_frac:
        ids = torch.where(torch.rand(T, K, generator=gen, device=dev) < invalid_frac, -1, ids)
    return ids.to(dtype).contiguous()


def nan_like(shape, dtype, device):
    """A buffer whose every element is poison (NaN; 0x7F bytes for fp8)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if dtype == torch.float8_e4m3fn:
        t.view(torch.uint8).fill_(0x7F)
    else:
        t.fill_(float("nan"))
    return t


def loop_preprocess(flat_ids, num_experts):
    """Slot-by-slot counting sort: (sorted ids, position of each slot, count of ids < e)."""
    flat = [int(x) for x in flat_ids.tolist()]
    order = sorted(range(len(flat)), key=lambda s: (flat[s], s))
    pos = [0] * len(flat)
    for p, s in enumerate(order):
        pos[s] = p
    lower = [sum(1 for x in flat if x < e) for e in range(num_experts + 1)]
    return [flat[s] for s in order], pos, lower


def silu_f64(x):
    return x / (1 + torch.exp(-x))


def gelu_tanh_f64(x):
    import math
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# A toy EP-MoE kernel file: a correct run_moe_ep_preproess, importing sglang.* names (stand-ins).
TOY_KERNELS = """
    import torch
    from sglang.srt.utils import ceil_div, is_cuda

    def run_moe_ep_preproess(topk_ids, num_experts):
        flat = topk_ids.reshape(-1)
        reorder, order = torch.sort(flat, stable=True)
        src2dst = torch.empty_like(order, dtype=torch.int32)
        src2dst[order] = torch.arange(flat.numel(), dtype=torch.int32, device=flat.device)
        bounds = torch.arange(num_experts + 1, device=flat.device, dtype=reorder.dtype)
        return reorder, src2dst, torch.searchsorted(reorder, bounds).to(torch.int64)
    """


def toy_wheel(folder, version="9.9.9", path="sglang/srt/layers/moe/ep_moe/kernels.py", text=TOY_KERNELS):
    """An sglang wheel holding one kernel file (``text``, dedented) at ``path``: a toy release."""
    wheel = folder / f"sglang-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(path, textwrap.dedent(text))
        zf.writestr("sglang/__init__.py", "")
    return wheel


def memoised_on_shapes(preprocess):
    """ep_preprocess(topk_ids, num_experts) with its result cached on the shapes: the bug the
    decoy call exposes (a result from an earlier call with other values)."""
    memo = {}

    def cached(topk_ids, num_experts):
        key = (tuple(topk_ids.shape), topk_ids.dtype, num_experts)
        if key not in memo:
            memo[key] = preprocess(topk_ids, num_experts)
        return memo[key]
    return cached


def check_record_registered_and_buildable(op, records, case):
    """The family's record for ``op`` is the registered one, bound to SGLang 0.5.23's function of
    the same name (our signature), its index outputs name outputs of its own, and every dtype's
    case (CaseParams ``case``) builds inputs its reference accepts, giving exactly the record's
    outputs (reference_outputs raises on arguments the reference rejects)."""
    from harness.cases import CaseParams
    from harness.runner import reference_outputs
    from harness.specs import SPECS
    record = SPECS[op]
    assert record is next(r for r in records if r.name == op)
    assert record.sglang is not None and record.sglang.names == (op,)
    names = {o.name for o in record.outputs}
    for o in record.outputs:
        assert o.index is None or o.index in names
    for dtype in record.dtypes:
        sample = record.build(CaseParams(op=op, dtype=dtype, **case), torch.device("cpu"))
        assert set(reference_outputs(record, sample).lp) == names
