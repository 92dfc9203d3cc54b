"""Run-time switches shared by the launchers.

``is_interpreter()``: True when Triton runs kernels through its CPU interpreter
(TRITON_INTERPRET=1). Kernels then take a few constexpr detours for interpreter gaps
(bf16 dots upcast to float32, float32->bf16 rounding emulated with integer ops) and the
GEMM uses one small fixed tile instead of autotuning.

``CHECK_VALUES``: whether launchers run the validators' value checks (ids in range,
seg_indptr monotone). Those need a device-to-host read, i.e. a sync in the hot path;
set MOE_CHECK_VALUES=0 (or, for a block, ``optimized.config.value_checks(False)``) for timing.
They are skipped anyway while a CUDA graph is being captured. Kernels are memory-safe
for any id values either way.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

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


@contextlib.contextmanager
def pinned_globals(namespace: dict, **values) -> Iterator[None]:
    """Set module-level knobs for the block (``namespace``: the module's globals()) and put the
    previous values back after it, also when it raises. A value None leaves its knob as it is
    (no knob takes None). Every name must already be one of the module's globals: a misspelt
    knob would otherwise pin nothing. The public switches of each module (gemm.tma_allowed,
    preprocess.forced_way, ...) are built on this; given the globals() of their own module,
    they also work on a mutant copy of it (harness/mutants.py)."""
    unknown = sorted(name for name in values if name not in namespace)
    if unknown:
        raise KeyError(f"not a knob of {namespace.get('__name__', 'this module')}: {', '.join(unknown)}")
    values = {name: value for name, value in values.items() if value is not None}
    saved = {name: namespace[name] for name in values}
    namespace.update(values)
    try:
        yield
    finally:
        namespace.update(saved)
