"""Order-free comparison of outputs whose rows an implementation places with atomics.

SGLang's ep_scatter, fused_moe_dispatch_index and moe_ep_deepgemm_preprocess give each
routed slot its own row of an expert's segment through an atomic counter, so the order of
an expert's rows inside the segment is implementation-defined. The references place them in
flat slot order (t * topk + k). A candidate is right when

- its index output (OutputSpec compare "row_index": slot -> row) puts every slot the
  reference places into a row of the same segment, one slot per row: per group of slots
  (the slots sharing an id in ``Sample.topk_ids``, i.e. one expert) the candidate's rows are
  the reference's rows, as a set, and no row is taken twice; and
- every output that names that index output (``OutputSpec.index``) holds, at the row the
  candidate gave a slot, what the reference holds at the row it gave that slot.

``canonicalise`` checks the first (probe ``order_free``) and returns the candidate's outputs
rewritten into the reference's order: the index output's placed slots take the reference's
rows, and each row-mapped output's rows are moved from the candidate's row to the
reference's row of the same slot. Everything else (slots the reference leaves at -1, rows no
slot names, dtypes, the poison pattern, which is preserved row for row) is then compared
exactly as usual, so a wrong -1, a wrong dtype or a wrong copied row still fails; the values
of slots the reference leaves negative are free in order within a group (the same multiset). The
rewrite is idempotent: a canonical candidate is its own canonical form (the runner applies
it to each run before the repeat-run probe, and again inside compare_outputs).

Rows of a row-mapped output are the output viewed as ``[-1, shape[-1]]`` (a [rows, H] buffer,
or an [E, m_max, H] slab whose index values are e * m_max + j); a 1-D output has one element
per row.
"""
from __future__ import annotations

from typing import Dict

import torch

ROW_INDEX = "row_index"


class OrderFreeViolation(Exception):
    """An index output that is not a valid within-group permutation of the reference's."""

    def __init__(self, output: str, message: str):
        super().__init__(message)
        self.output = output


def _rows_of(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1) if t.dim() <= 1 else t.reshape(-1, t.shape[-1])


def placed_rows(name: str, cand: torch.Tensor, ref: torch.Tensor, groups: torch.Tensor):
    """(slots the reference places, the candidate's row of each, the reference's row of each),
    after checking that the candidate's rows are a within-group permutation of the reference's.

    cand / ref: index outputs of the same shape (slot -> row, negative = not placed);
    groups: int64 [slots], the group (expert id) of each slot."""
    c = cand.reshape(-1).to(torch.int64)
    r = ref.reshape(-1).to(torch.int64)
    slots = torch.nonzero(r >= 0).flatten()
    if not slots.numel():
        return slots, slots, slots
    cs, rs, gs = c[slots], r[slots], groups[slots]
    if int(cs.min()) < 0:
        n = int((cs < 0).sum())
        raise OrderFreeViolation(name, f"{name}: {n} slot(s) that must be placed have no row (negative index)")
    if torch.unique(cs).numel() != cs.numel():
        raise OrderFreeViolation(name, f"{name}: {cs.numel() - torch.unique(cs).numel()} row(s) given to more than "
                                       f"one slot (the placement is not one-to-one)")
    # (group, row) pairs as one sortable key: equal sorted keys <=> per group, the same set of rows
    span = int(max(int(cs.max()), int(rs.max()))) + 1
    g0 = gs - int(gs.min())
    kc, kr = torch.sort(g0 * span + cs).values, torch.sort(g0 * span + rs).values
    if not torch.equal(kc, kr):
        bad = int((kc != kr).sum())
        raise OrderFreeViolation(name, f"{name}: slot rows outside their expert's segment ({bad} of {cs.numel()} "
                                       f"(expert, row) pairs differ from the reference's)")
    return slots, cs, rs


def _unplaced_in_reference_order(canon: torch.Tensor, ref: torch.Tensor, groups: torch.Tensor) -> None:
    """Per group, the slots the reference leaves negative take the reference's values when the
    candidate's are the same multiset (SGLang 0.5.23's permute numbers unrouted slots -n_neg .. -1 in sort
    order, which an unstable sort leaves free); any other value stays, for the exact comparison.
    All groups at once (a loop over them cost a GPU synchronisation per non-local expert)."""
    at = torch.nonzero(ref < 0).flatten()
    if not at.numel():
        return
    g, c, r = groups[at], canon[at].to(torch.int64), ref[at].to(torch.int64)
    # each side sorted by (group, value): then position i holds the same group on both sides, and a
    # group's values are the same multiset exactly when they agree at each of its positions
    by_group = [_sorted_by(g, v) for v in (c, r)]
    differs = c[by_group[0]] != r[by_group[1]]
    g = g - int(g.min())                   # group numbers from 0: one counter each
    bad = torch.zeros(int(g.max()) + 1, dtype=torch.int64, device=g.device)
    bad.index_add_(0, g[by_group[0]], differs.to(torch.int64))
    same = bad[g] == 0
    canon[at[same]] = ref[at[same]].to(canon.dtype)


def _sorted_by(group: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Indices ordering (group, value) pairs lexicographically (two stable sorts)."""
    by_value = torch.sort(value, stable=True).indices
    return by_value[torch.sort(group[by_value], stable=True).indices]


def canonicalise(spec, sample, cand_out: Dict[str, torch.Tensor], ref_out: Dict[str, torch.Tensor]):
    """The candidate's outputs in the reference's row order (see the module docstring); raises
    OrderFreeViolation when an index output is not a within-group permutation. Outputs of
    unexpected shapes are returned as they are, for the ordinary comparison to report."""
    index_specs = [o for o in spec.outputs if o.compare == ROW_INDEX]
    if not index_specs:
        return cand_out
    if sample.topk_ids is None:
        raise ValueError(f"{spec.name}: a 'row_index' output needs Sample.topk_ids (the group of each slot)")
    groups = sample.topk_ids.reshape(-1).to(torch.int64)
    out = dict(cand_out)
    for o in index_specs:
        cand, ref = cand_out.get(o.name), ref_out[o.name]
        if not isinstance(cand, torch.Tensor) or cand.shape != ref.shape or ref.numel() != groups.numel():
            continue
        slots, crow, rrow = placed_rows(o.name, cand, ref, groups)
        canon = cand.contiguous().clone()
        canon.view(-1)[slots] = rrow.to(canon.dtype)
        _unplaced_in_reference_order(canon.view(-1), ref.reshape(-1), groups)
        out[o.name] = canon
        for d in spec.outputs:
            if d.index != o.name:
                continue
            data, dref = cand_out.get(d.name), ref_out[d.name]
            if not isinstance(data, torch.Tensor) or data.shape != dref.shape or not slots.numel() or not data.numel():
                continue
            rows = _rows_of(data)
            if int(crow.max()) >= rows.shape[0] or int(rrow.max()) >= rows.shape[0]:
                raise OrderFreeViolation(o.name, f"{o.name}: rows past the {rows.shape[0]} rows of {d.name}")
            moved = rows.clone()
            moved[rrow] = rows[crow]
            out[d.name] = moved.reshape(data.shape)
    return out
