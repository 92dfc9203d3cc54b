"""Backend selection. Must run before triton (or optimized/) is imported: Triton decides
at decoration time whether a kernel is compiled or interpreted."""
from __future__ import annotations

import os
import platform
import sys
from typing import Dict, Optional

BACKENDS = ("cuda", "interpreter")


def select_backend(requested: Optional[str] = None) -> str:
    """'cuda' when a GPU is visible, else 'interpreter' (TRITON_INTERPRET=1, and the interpreter
    patched by harness.interpreter.patch_interpreter); ``requested`` overrides."""
    import torch
    if requested is None:
        requested = "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() \
            else "cuda"
    if requested not in BACKENDS:
        raise ValueError(f"--backend: expected one of {BACKENDS}, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--backend: 'cuda' was asked for, but torch sees no CUDA device")
    if requested == "interpreter":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the interpreter backend must be selected before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
        # bf16/fp8 arithmetic and conversions as on the GPU, and bounds-checked memory
        # (harness/interpreter.py); imports triton, so only now that the variable is set.
        from .interpreter import patch_interpreter
        patch_interpreter()
    return requested


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def describe(backend: str) -> Dict[str, str]:
    """Backend, card and versions, for session headers and result records."""
    import torch
    info = {"backend": backend, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    if backend == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    else:
        info["device"] = f"CPU ({platform.machine()}), Triton interpreter"
    return info
