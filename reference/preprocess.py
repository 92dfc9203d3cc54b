"""Routing preprocessing: sort the flat slots by expert (SPEC.md sections 1 and 2)."""
from __future__ import annotations

import torch

from ._checks import validate_preprocess


def _stable_sort_slots(topk_ids: torch.Tensor, num_experts: int):
    flat = topk_ids.reshape(-1)                                       # [T*K]
    sorted_ids, order = torch.sort(flat, stable=True)                 # order[p] = slot at position p
    pos = torch.empty_like(order)
    pos[order] = torch.arange(flat.numel(), device=flat.device)       # pos[s] = position of slot s
    # lower[e] = number of slots with id < e, for e in 0..E (ids of -1 count as below 0's bound).
    bounds = torch.arange(num_experts + 1, device=flat.device, dtype=torch.int64)
    lower = (flat.to(torch.int64)[None, :] < bounds[:, None]).sum(dim=1)  # [E+1]
    return sorted_ids, pos, lower


def ep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """SGLang's ``run_moe_ep_preproess``.

    topk_ids [T, K] int32/int64, values in [0, E). Returns
    reorder_topk_ids [T*K] (input dtype): the flat ids sorted ascending, stable;
    src2dst [T*K] int32: position of slot s = t*K + k in that order (ties by s);
    seg_indptr [E+1] int64: seg_indptr[e] = number of slots with id < e.
    """
    validate_preprocess(topk_ids, num_experts, allow_invalid=False)
    sorted_ids, pos, lower = _stable_sort_slots(topk_ids, num_experts)
    return sorted_ids, pos.to(torch.int32), lower


def deepep_preprocess(topk_ids: torch.Tensor, num_experts: int):
    """SGLang's ``deepep_run_moe_deep_preprocess``: as ep_preprocess, but ids may be -1.

    With n_inv slots of id -1: reorder_topk_ids drops the n_inv leading -1 entries;
    src2dst [T*K] int64 is the sorted position minus n_inv (so -1 slots land in
    [-n_inv, -1]); seg_indptr [E+1] int64 counts only valid slots: seg_indptr[e] =
    number of valid slots with id < e.
    """
    validate_preprocess(topk_ids, num_experts, allow_invalid=True)
    sorted_ids, pos, lower = _stable_sort_slots(topk_ids, num_experts)
    n_inv = int((topk_ids < 0).sum())
    # Out of place on purpose: seg_indptr must not alias what n_inv was read from.
    return sorted_ids[n_inv:].clone(), pos.to(torch.int64) - n_inv, lower - n_inv


__all__ = ["ep_preprocess", "deepep_preprocess"]
