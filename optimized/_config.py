"""Run-time switches shared by the launchers.

``is_interpreter()``: True when Triton runs kernels through its CPU interpreter
(TRITON_INTERPRET=1). Kernels then take a few constexpr detours for interpreter gaps
(bf16 dots upcast to float32, float32->bf16 rounding emulated with integer ops) and the
GEMM uses one small fixed tile instead of autotuning.

``CHECK_VALUES``: whether launchers run the validators' value checks (ids in range,
seg_indptr monotone). Those need a device-to-host read, i.e. a sync in the hot path;
set MOE_CHECK_VALUES=0 (or assign optimized._config.CHECK_VALUES = False) for timing.
They are skipped anyway while a CUDA graph is being captured. Kernels are memory-safe
for any id values either way.
"""
from __future__ import annotations

import functools
import os

import torch

CHECK_VALUES: bool = os.environ.get("MOE_CHECK_VALUES", "1") not in ("0", "false", "False", "")


_INTERPRETER = None


def is_interpreter() -> bool:
    """TRITON_INTERPRET, read once: triton reads it at import, so it cannot change afterwards
    (and an environment lookup per launch is host time in the hot path)."""
    global _INTERPRETER
    if _INTERPRETER is None:
        _INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")
    return _INTERPRETER


_CUDA_AVAILABLE = None


def cuda_available() -> bool:
    """torch.cuda.is_available(), asked once: it queries the driver (~0.7 ms a call on an
    H100 host), too slow for a launcher's hot path."""
    global _CUDA_AVAILABLE
    if _CUDA_AVAILABLE is None:
        _CUDA_AVAILABLE = torch.cuda.is_available()
    return _CUDA_AVAILABLE


@functools.lru_cache(maxsize=None)
def is_hopper_or_newer(device_index: int) -> bool:
    """Compute capability 9.0 or newer (TMA descriptors, programmatic dependent launch); asked
    once per device."""
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def check_values() -> bool:
    """Value checks on, unless disabled or a CUDA graph is being captured (no host sync allowed)."""
    if not CHECK_VALUES:
        return False
    # CPU-only torch builds (the interpreter) cannot even ask whether a graph is being captured.
    return not (cuda_available() and torch.cuda.is_current_stream_capturing())


def reject_float64(**tensors) -> None:
    """Kernels compute in float32 and store bf16/fp16/fp32/fp8: float64 is the references' business."""
    for name, t in tensors.items():
        if t is not None and t.dtype == torch.float64:
            raise TypeError(f"{name}: expected dtype bfloat16, float16 or float32 (the Triton kernels do not "
                            f"support float64; use reference.* for float64), got float64")


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
