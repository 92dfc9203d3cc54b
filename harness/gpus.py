"""GPU pinning for pytest-xdist workers: worker ``gwN`` runs on GPU N modulo the visible count,
so that ``pytest -n 8`` on an 8-GPU host spreads the conformance suite over every card
instead of stacking it on GPU 0."""
from __future__ import annotations

import os
import re
from typing import Optional

_WORKER_ID = re.compile(r"gw(\d+)")


def worker_device_index(worker_id: Optional[str], n_gpus: int) -> int:
    """GPU index for an xdist worker id: "gw0" -> 0, "gw1" -> 1, ..., modulo ``n_gpus``.

    "master", "" or None (not running under xdist) -> 0. ValueError when ``n_gpus`` < 1 or
    the id is none of these."""
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus: expected a positive int, got {n_gpus!r}")
    if worker_id in (None, "", "master"):
        return 0
    m = _WORKER_ID.fullmatch(worker_id)
    if m is None:
        raise ValueError(f"worker_id: expected 'gw<N>' or 'master' (pytest-xdist), got {worker_id!r}")
    return int(m.group(1)) % n_gpus


def pin_this_process(worker_id: Optional[str] = None) -> Optional[int]:
    """Make this worker's GPU the current CUDA device (torch.cuda.set_device).

    ``worker_id`` defaults to $PYTEST_XDIST_WORKER. Returns the device index, or None when
    torch sees no CUDA device (then nothing is done). Call it before the worker allocates
    anything on the GPU: tensors made earlier stay on the device that was current."""
    import torch

    if not torch.cuda.is_available():
        return None
    if worker_id is None:
        worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    index = worker_device_index(worker_id, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return index
