"""Stand-ins for the few ``sglang.*`` names that SGLang's EP-MoE kernel files import.

A release's kernel file (harness.sglang.release) is executed unmodified; its ``import
sglang...`` statements, at load time and inside functions called later, are served by this
module's import hook (``scoped_builtins``: the file's own ``__builtins__`` with
``__import__`` replaced, so nothing global changes and an installed sglang is not touched).
The stand-ins are written for the harness; no code of the sglang package is copied.

Every name the files of releases 0.4.1 .. 0.5.23 import at module level (the inventory,
tools/sglang_inventory.py) is here, and one that 0.5.23 imports inside a checked function:

================================================  ==================================  ===============================
module: name                                       stands for (releases)               why faithful enough
================================================  ==================================  ===============================
``sglang.srt.utils: is_cuda``                      the CUDA-build test (0.4.4 ..)       the same test: a CUDA build of
                                                                                        torch that sees a GPU
``sglang.srt.utils: is_musa``                      the MUSA-build test (0.5.11 ..)      False unless torch is a MUSA
                                                                                        build; the harness runs on
                                                                                        CUDA or CPU
``sglang.srt.utils: ceil_div``,                    integer ceil division (0.4.8 ..)    the same arithmetic
``sglang.math_utils: ceil_div``
``sglang.srt.utils: dispose_tensor``               frees a tensor's storage             the same effect: the tensor is
                                                   (0.4.7 .. 0.5.3)                     set to an empty storage
``sglang.utils: is_in_ci``                         "SGLang's CI?" (0.4.9.post .. 0.5.3) the same environment variable,
                                                                                        SGLANG_IS_IN_CI; only ep_gather
                                                                                        (not checked) reads it
``sglang.srt.distributed:``                        this process's TP rank              imported, never called by the
``get_tensor_model_parallel_rank``                 (0.4.5 .. 0.4.6.x)                   file: calling it raises
``sglang.srt.layers.quantization.fp8_kernel`` and  per-token-group fp8 quantisation     the same arithmetic as SGLang's
``sglang.kernels.ops.quantization.fp8_kernel``:    (Triton / sgl_kernel builds of the   Triton kernel: scale = max(amax,
``per_token_group_quant_fp8``,                     same math; 0.4.4 ..; used by         eps) / 448, clamp, cast to
``sglang_per_token_group_quant_fp8``               grouped_gemm_triton's block fp8)     e4m3fn, row-major scales; the
                                                                                        same preconditions (last dim a
                                                                                        multiple of the group,
                                                                                        contiguous); other layouts raise
``sglang.srt.environ: envs``                       SGLang's settings (0.5.17 ..)        SETTING_DEFAULTS: the value that
                                                                                        holds where the harness runs
                                                                                        (0.5.23's masked preprocess
                                                                                        reads SGLANG_OPT_DG_MASKED_M_CAP,
                                                                                        default False; fp8_kernel.py
                                                                                        SGLANG_USE_AITER, False off
                                                                                        ROCm); any other setting raises
``sglang.kernels.ops.moe.moe_permute_prepare:``    the JIT-compiled CUDA kernel behind  the same arithmetic in torch:
``moe_permute_prepare`` (0.5.23; 0.5.16's          the permute's indices (imported      torch.sort (unstable, as
``sglang.jit_kernel.moe_permute_prepare``)         inside the function)                 SGLang's), lower bounds of 0
                                                                                        and each expert, the scatter of
                                                                                        sorted positions; the same
                                                                                        TypeError for non-int32 ids. Not
                                                                                        its speed: a bench of that op
                                                                                        times this stand-in
``sglang.srt.layers.deep_gemm_wrapper:``           DeepGEMM's scale format on this     False: SGLang's value on Hopper
``DEEPGEMM_SCALE_UE8M0``                           card (imported inside the masked    (UE8M0 scales are Blackwell's);
                                                   preprocess, 0.5.x)                  the packed path is reached
                                                                                        through use_mxfp8 instead
``sglang.kernels.ops.moe.minimax_quant_ue8m0:``    the packed UE8M0 quantise-and-       not stood in: SGLang's JIT CUDA
``per_token_quant_fp8_ue8m0_scatter``              scatter of the masked preprocess     kernel (not in the kernel file,
                                                   (0.5.2x)                             needs sglang's JIT toolchain);
                                                                                        calling it raises
================================================  ==================================  ===============================

The neighbour files the binding also looks in (harness.sglang.release.NEIGHBOUR_PATHS; 0.5.23's
``sglang/kernels/ops/quantization/fp8_kernel.py``) import more at module level:

================================================  ==================================  ===============================
module: name                                       stands for                          why faithful enough
================================================  ==================================  ===============================
``sglang.srt.utils: is_hip``, ``is_xpu``           the ROCm / XPU build tests           the same tests of torch's build
``sglang.srt.utils: ceil_align``                   round up to a multiple               the same arithmetic
``sglang.srt.environ: envs.SGLANG_USE_AITER``      ROCm's AITER switch                  False: the harness runs on CUDA
                                                                                        or CPU, where it is ignored
``sglang.kernels.jit.utils: is_arch_support_pdl``, used by functions the harness does    called: raises (StandInError)
``sglang.kernels.ops.quantization.fp8_utils:``     not check (static and MLA quant)
``fp8_dtype_to_triton``
``sglang.srt.utils.patch_torch:``                  a MUSA-only decorator                called: raises
``register_fake_if_exists``
``sglang.kernels.ops.quantization:``               the CUDA JIT / sgl_kernel            called: raises. The CUDA path
``sgl_per_token_quant_fp8``, ``...quantization.``  quantisers (CUDA builds only)        of sglang_per_token_group_quant
``per_tensor_quant_fp8: per_tensor_quant_fp8``,                                         _fp8 is this JIT kernel, which
``...quantization.per_token_group_quant:``                                              the harness cannot build from
``per_token_group_quant``                                                               the wheel; it binds the file's
                                                                                        Triton quantiser instead
================================================  ==================================  ===============================

An ``sglang.*`` import that this table cannot serve (a module or a name not listed, such as
the function-level imports of ``sglang.jit_kernel...`` in 0.5.16+) goes to the real sglang
package when it is installed, and otherwise raises an ImportError that names it and says
that the stand-ins do not cover it. Stand-ins that cannot be faithful raise
``StandInError`` (a RuntimeError) when called, naming themselves.
"""
from __future__ import annotations

import builtins
import os
import types
from typing import Callable, Dict, Optional, Tuple

import torch

from reference._checks import FP8_DTYPE, FP8_MAX


class StandInError(RuntimeError):
    """A stand-in was used in a way it cannot stand for (the message names it)."""


# ----------------------------------------------------------------------------- the stand-ins

def is_cuda() -> bool:
    """A CUDA build of torch that sees a GPU (SGLang's test, same expression)."""
    return torch.cuda.is_available() and torch.version.cuda is not None


def is_musa() -> bool:
    """False unless torch is a MUSA build (the harness runs on CUDA or CPU)."""
    return getattr(torch.version, "musa", None) is not None


def ceil_div(x: int, y: int) -> int:
    return (x + y - 1) // y


def ceil_align(x: int, y: int) -> int:
    """x rounded up to a multiple of y."""
    return ceil_div(x, y) * y


def is_hip() -> bool:
    """A ROCm build of torch (SGLang's test: torch.version.hip is set)."""
    return getattr(torch.version, "hip", None) is not None


def is_xpu() -> bool:
    """An Intel XPU build of torch that sees an XPU."""
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def dispose_tensor(x: torch.Tensor) -> None:
    """Release x's storage: x becomes an empty tensor of its dtype and device."""
    x.set_(torch.empty((0,), device=x.device, dtype=x.dtype))


def is_in_ci() -> bool:
    """SGLang's CI flag: the environment variable SGLANG_IS_IN_CI is "true" or "1"."""
    return os.environ.get("SGLANG_IS_IN_CI", "false").lower() in ("true", "1")


def _not_callable(qualname: str) -> Callable:
    def fail(*_args, **_kwargs):
        raise StandInError(f"{qualname} is a stand-in of the harness (harness/sglang/standins.py) that cannot be "
                           f"called: the kernel file imports it, but none of the ops the harness checks uses it")
    fail.__name__ = qualname.rsplit(".", 1)[-1]
    fail.__qualname__ = qualname
    return fail


# Layout options of SGLang's quantisers and their defaults; any other value is not stood in for.
_QUANT_LAYOUT_DEFAULTS = {"column_major_scales": False, "scale_tma_aligned": False, "scale_ue8m0": False,
                          "fuse_silu_and_mul": False, "masked_m": None, "enable_v2": None, "output_q": None,
                          "output_s": None}


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int, eps: float = 1e-10, *layout, **options):
    """Per-token-group fp8 e4m3 quantisation as SGLang's kernels compute it.

    For each row of x [..., Kd] and group g of ``group_size`` columns:
    scale = max(amax(|x|), eps) / 448 (float32), q = fp8(clamp(x / scale, -448, 448)).
    Returns (q with x's shape, scale [..., Kd / group_size] float32, row-major).
    SGLang's preconditions hold here too (AssertionError): Kd a multiple of group_size, x
    contiguous. Layout options (column-major or TMA-aligned scales, ue8m0, fused SiLU,
    masked rows, output buffers) raise StandInError when set."""
    names = list(_QUANT_LAYOUT_DEFAULTS)
    given = dict(zip(names, layout))
    given.update(options)
    unknown = sorted(set(given) - set(names))
    set_options = sorted(k for k, v in given.items() if k in _QUANT_LAYOUT_DEFAULTS and v != _QUANT_LAYOUT_DEFAULTS[k])
    if unknown or set_options:
        raise StandInError(f"per_token_group_quant_fp8 (stand-in): only row-major float32 scales are stood in for; "
                           f"got {', '.join(f'{k}={given[k]!r}' for k in unknown + set_options)}")
    assert x.shape[-1] % group_size == 0, (f"per_token_group_quant_fp8 (stand-in; SGLang's precondition): the last "
                                           f"dimension of x ({x.shape[-1]}) is not a multiple of group_size "
                                           f"({group_size})")
    assert x.is_contiguous(), "per_token_group_quant_fp8 (stand-in; SGLang's precondition): x is not contiguous"
    groups = x.shape[-1] // group_size
    xf = x.float().reshape(*x.shape[:-1], groups, group_size)
    scale = xf.abs().amax(dim=-1).clamp_min(eps) / FP8_MAX
    q = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.reshape(x.shape), scale.contiguous()


def moe_permute_prepare(topk_ids: torch.Tensor, num_experts: int, use_int64_offset: bool = False,
                        is_ep: bool = False):
    """(expert_offsets [E+1] int32 / int64, src2dst [T*K] int32) as SGLang 0.5.23's CUDA kernel
    computes them: with the flat ids sorted ascending (not stably) and n_neg = the count of
    negative ids, expert_offsets[e] = #(ids < e) - n_neg for e < E, [E] = T*K - n_neg, and the
    slot at sorted position i gets src2dst = i - n_neg. is_ep changes nothing there either.
    Any device (the CUDA kernel's own check of a CUDA tensor is left out: the interpreter runs on
    the CPU)."""
    if topk_ids.dtype != torch.int32:
        raise TypeError(f"topk_ids must be int32, got {topk_ids.dtype}")
    flat = topk_ids.flatten()
    sorted_ids, order = torch.sort(flat)
    n = flat.numel()
    dev = flat.device
    bounds = torch.arange(num_experts + 1, dtype=torch.int32, device=dev)
    bounds[-1:].fill_(0)   # not `bounds[-1] = 0`: a host-to-device copy, which a CUDA graph capture refuses
    below = torch.searchsorted(sorted_ids, bounds)                  # [E + 1]; the last: n_neg
    n_neg = below[-1:]
    offsets = torch.cat([below[:-1], below.new_full((1,), n)]) - n_neg
    src2dst = torch.empty(n, dtype=torch.int32, device=dev)
    src2dst[order] = (torch.arange(n, device=dev) - n_neg).to(torch.int32)
    return offsets.to(torch.int64 if use_int64_offset else torch.int32), src2dst


# Settings the checked files read, with the value that holds where the harness runs: the release's
# default (the masked preprocess's cap), or off (ROCm's AITER kernels, on CUDA and CPU).
SETTING_DEFAULTS = {"SGLANG_OPT_DG_MASKED_M_CAP": False, "SGLANG_USE_AITER": False}


class _Settings:
    """Stand-in of ``sglang.srt.environ.envs``: the settings of SETTING_DEFAULTS read as their
    defaults; every other setting raises when read."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in SETTING_DEFAULTS:
            return types.SimpleNamespace(get=lambda value=SETTING_DEFAULTS[name]: value)
        return types.SimpleNamespace(get=_not_callable(f"sglang.srt.environ.envs.{name}.get"))


def per_token_quant_fp8_ue8m0_scatter(*_args, **_kwargs):
    """Not stood in (see the module docstring): SGLang's JIT-compiled CUDA kernel."""
    raise StandInError("sglang.kernels.ops.moe.minimax_quant_ue8m0.per_token_quant_fp8_ue8m0_scatter is SGLang's "
                       "JIT-compiled CUDA kernel (outside the EP-MoE kernel file; it needs sglang's JIT toolchain): "
                       "the harness does not stand in for it, so the packed-UE8M0 masked preprocess of a release "
                       "cannot be checked without the sglang package")


_FP8_KERNEL = {"per_token_group_quant_fp8": per_token_group_quant_fp8,
               "sglang_per_token_group_quant_fp8": per_token_group_quant_fp8}

# module -> {name: object}; the table of the docstring, as data.
_QUANT = "sglang.kernels.ops.quantization"
STANDINS: Dict[str, Dict[str, object]] = {
    "sglang.srt.utils": {"is_cuda": is_cuda, "is_musa": is_musa, "ceil_div": ceil_div,
                         "dispose_tensor": dispose_tensor, "ceil_align": ceil_align, "is_hip": is_hip,
                         "is_xpu": is_xpu},
    "sglang.srt.utils.patch_torch": {"register_fake_if_exists":
                                     _not_callable("sglang.srt.utils.patch_torch.register_fake_if_exists")},
    "sglang.kernels.jit.utils": {"is_arch_support_pdl": _not_callable("sglang.kernels.jit.utils.is_arch_support_pdl")},
    f"{_QUANT}.fp8_utils": {"fp8_dtype_to_triton": _not_callable(f"{_QUANT}.fp8_utils.fp8_dtype_to_triton")},
    _QUANT: {"sgl_per_token_quant_fp8": _not_callable(f"{_QUANT}.sgl_per_token_quant_fp8")},
    f"{_QUANT}.per_tensor_quant_fp8": {"per_tensor_quant_fp8":
                                       _not_callable(f"{_QUANT}.per_tensor_quant_fp8.per_tensor_quant_fp8")},
    f"{_QUANT}.per_token_group_quant": {"per_token_group_quant":
                                        _not_callable(f"{_QUANT}.per_token_group_quant.per_token_group_quant")},
    "sglang.math_utils": {"ceil_div": ceil_div},
    "sglang.utils": {"is_in_ci": is_in_ci},
    "sglang.srt.distributed": {"get_tensor_model_parallel_rank":
                               _not_callable("sglang.srt.distributed.get_tensor_model_parallel_rank")},
    "sglang.srt.layers.quantization.fp8_kernel": dict(_FP8_KERNEL),
    "sglang.kernels.ops.quantization.fp8_kernel": dict(_FP8_KERNEL),
    "sglang.srt.environ": {"envs": _Settings()},
    "sglang.kernels.ops.moe.moe_permute_prepare": {"moe_permute_prepare": moe_permute_prepare},
    "sglang.jit_kernel.moe_permute_prepare": {"moe_permute_prepare": moe_permute_prepare},   # 0.5.16 .. 0.5.2x
    "sglang.srt.layers.deep_gemm_wrapper": {"DEEPGEMM_SCALE_UE8M0": False},
    "sglang.kernels.ops.moe.minimax_quant_ue8m0": {"per_token_quant_fp8_ue8m0_scatter":
                                                   per_token_quant_fp8_ue8m0_scatter},
}


# ----------------------------------------------------------------------------- the modules

def _build_modules() -> Dict[str, types.ModuleType]:
    """One module object per stand-in module and per package above one, linked as attributes."""
    mods: Dict[str, types.ModuleType] = {}

    def get(name: str) -> types.ModuleType:
        if name not in mods:
            mod = types.ModuleType(name, f"Stand-in of {name} (harness/sglang/standins.py).")
            mod.__standin__ = True
            mods[name] = mod
            parent, _, leaf = name.rpartition(".")
            if parent:
                mod.__package__ = parent
                setattr(get(parent), leaf, mod)
            mod.__path__ = []  # a package for the import system's purposes (children are attributes)
        return mods[name]

    for name, attrs in STANDINS.items():
        vars(get(name)).update(attrs)
    return mods


_MODULES = _build_modules()


def standin_module(name: str) -> Optional[types.ModuleType]:
    """The stand-in module (or package) ``name``, or None when the table has none."""
    return _MODULES.get(name)


def _missing(name: str, fromlist: Tuple[str, ...], cause: BaseException) -> ImportError:
    mod = _MODULES.get(name)
    what = f"{', '.join(fromlist)} from {name}" if mod is not None and fromlist else name
    has = sorted(k for k in vars(mod) if not k.startswith("__") and not isinstance(getattr(mod, k), types.ModuleType)) \
        if mod is not None else []
    offer = f" (its stand-in provides {', '.join(has)})" if has else ""
    err = ImportError(f"cannot import {what}: the harness's stand-ins for sglang (harness/sglang/standins.py) do "
                      f"not cover it{offer}, and the sglang package is not importable ({cause}). The ops the "
                      f"harness checks do not need it; it is imported by other code of the kernel file.")
    err.name = name
    return err


def standin_import(name: str, globals=None, locals=None, fromlist=(), level: int = 0):
    """``__import__`` for kernel files: ``sglang`` names from the stand-ins, others as usual.

    An ``sglang.*`` import that the stand-ins cannot serve completely goes to the real
    package (when installed); failing that, an ImportError names what is missing."""
    if level != 0 or not (name == "sglang" or name.startswith("sglang.")):
        return builtins.__import__(name, globals, locals, fromlist, level)
    mod = _MODULES.get(name)
    wanted = tuple(fromlist or ())
    if mod is not None and all(n == "*" or hasattr(mod, n) for n in wanted):
        return mod if wanted else _MODULES["sglang"]
    try:
        return builtins.__import__(name, globals, locals, fromlist, level)
    except ImportError as exc:
        raise _missing(name, tuple(n for n in wanted if mod is None or not hasattr(mod, n)), exc) from None


def scoped_builtins() -> dict:
    """A copy of the builtins whose ``__import__`` is ``standin_import``: set as a module's
    ``__builtins__`` before executing it, it routes that module's imports (and those of the
    functions it defines, whenever they run) through the stand-ins."""
    scoped = dict(vars(builtins))
    scoped["__import__"] = standin_import
    return scoped
