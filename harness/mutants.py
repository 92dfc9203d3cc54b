"""The mutant catalogue: deliberately broken variants of our own kernels (optimized/).

A mutant is one small, named change a kernel author could plausibly make, modelled on bugs
that real MoE kernels have had. Most are SOURCE PATCHES of one optimized/ module: the text
``old`` must occur exactly once in the module's source and is replaced by ``new`` (``more``
holds further sites of the same change). A patch whose text no longer occurs exactly once
is STALE: an error, never silently skipped. The patched module is written to a file and
imported from there (Triton's @jit reads kernel source with ``inspect``) under a unique
name inside the ``optimized`` package, so its relative imports resolve to the real modules.

A few bugs live around a kernel rather than in it (a result cached from an earlier call);
those carry ``wrap``, a function that turns our function into the broken one.

The mutant implementation is ``ours`` with the mutant's op replaced by the mutated
function; for an ``ep_moe_forward`` mutant, our forward whose chain uses the mutated
module's functions.

The harness must kill every mutant (harness/mutate.py runs them); the unpatched kernels
must pass the same cases.

Left out as equivalent to the original (each survived, as it must):
- grouped_gemm's tiles per group computed as ``(hi - lo) // BM + 1``: every tile is masked by
  its group's end row and the grid is an upper bound already, so an extra empty tile writes nothing;
- the preprocess histogram's dump bin (out-of-range ids) left unwritten: it is the last bucket
  and feeds no valid position.
Left out as allowed by the contract: post_reorder accumulating in the input dtype (SPEC.md
section 5 says the tolerance must admit SGLang doing exactly that).
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

OPTIMIZED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "optimized")
# What each op's mutated function is called in its module.
OP_FUNCTION = {
    "ep_preprocess": "ep_preprocess", "deepep_preprocess": "deepep_preprocess", "pre_reorder": "pre_reorder",
    "post_reorder": "post_reorder", "silu_and_mul": "silu_and_mul", "gelu_and_mul": "gelu_and_mul",
    "grouped_gemm": "grouped_gemm",
}


class StalePatch(ValueError):
    """A mutant's ``old`` text does not occur exactly once in its module (the module changed)."""


@dataclass(frozen=True)
class Mutant:
    """One deliberately broken variant of one op.

    Source patch: ``old`` -> ``new`` in optimized/<module>.py (plus the ``more`` sites).
    Wrapper: ``wrap(original) -> broken`` applied to ``function`` of the module (default:
    the op's own function; for ep_moe_forward, the chain piece it names).
    ``dtypes``: the op's dtypes the bug can show in (None: all of them). ``backends``: where
    it can be computed; ``min_preset``: the fuzz preset it needs (int32 overflows need
    "large", GPU only).
    """

    name: str
    op: str
    module: str
    old: str
    new: str
    description: str
    dtypes: Optional[Tuple[str, ...]] = None
    backends: Tuple[str, ...] = ("cuda", "interpreter")
    min_preset: Optional[str] = None
    more: Tuple[Tuple[str, str], ...] = ()
    wrap: Optional[Callable[[Callable], Callable]] = None
    function: Optional[str] = None

    @property
    def patches(self) -> Tuple[Tuple[str, str], ...]:
        return () if self.wrap is not None else ((self.old, self.new),) + tuple(self.more)


# ----------------------------------------------------------------------------- wrappers

def _cache_by_shape(fn: Callable) -> Callable:
    """Memoise on the arguments' shapes and dtypes (and plain values), as a decode loop that
    'knows' its batch shape might: a new routing of the same shape gets the old result."""
    import torch
    memo: Dict[tuple, object] = {}

    def key_of(a):
        if isinstance(a, torch.Tensor):
            return ("T", tuple(a.shape), a.dtype, a.device.type)
        return tuple(a) if isinstance(a, list) else a

    @functools.wraps(fn)
    def cached(*args):
        key = tuple(key_of(a) for a in args)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return cached


# ----------------------------------------------------------------------------- catalogue

_M = Mutant
_FP8 = ("fp8",)
CATALOGUE: Tuple[Mutant, ...] = (
    # --- ep_preprocess ------------------------------------------------------------------
    _M("ep_seg_end_unwritten", "ep_preprocess", "preprocess",
       "tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets <= E)",
       "tl.store(seg_ptr + buckets, start.to(tl.int64), mask=buckets < E)",
       "scratch not fully written: seg_indptr comes from torch.empty and the scan stores [0, E) only, "
       "never seg_indptr[E]"),
    _M("ep_empty_seg_uninitialised", "ep_preprocess", "preprocess",
       "torch.zeros(num_experts + 1, dtype=torch.int64, device=dev))",
       "torch.empty(num_experts + 1, dtype=torch.int64, device=dev))",
       "a zeros made empty: for an empty batch (T = 0) seg_indptr is returned uninitialised"),
    _M("ep_bucket_off_by_one", "ep_preprocess", "preprocess",
       "ok = (b >= 0) & (b < E + SHIFT)",
       "ok = (b > 0) & (b < E + SHIFT)",
       "off-by-one in the segment bounds: bucket 0 (expert 0) is sent to the dump bucket after the last expert"),
    _M("ep_rank_ties_unbroken", "ep_preprocess", "preprocess",
       "key = _bucket_of(ids, E, SHIFT) * BLOCK + lane",
       "key = _bucket_of(ids, E, SHIFT) * BLOCK",
       "in-block sort key without the lane: slots of one expert tie and the in-block rank is no longer unique"),
    _M("ep_scan_in_place_over_hist", "ep_preprocess", "preprocess",
       "colpre_ptr = scratch_ptr + NBLK.to(tl.int64) * NBP",
       "colpre_ptr = scratch_ptr  # the scan in place over the histograms: a smaller scratch",
       "in-place update through an alias: the column scan writes its prefixes over the histograms (the "
       "same part of the shared scratch buffer), which the scatter still reads for its in-block offsets"),
    _M("ep_src2dst_over_topk_ids", "ep_preprocess", "preprocess",
       "src2dst = torch.empty(n, dtype=torch.int64 if deepep else torch.int32, device=dev)",
       "src2dst = flat if flat.dtype == torch.int32 and not deepep else torch.empty(n, dtype=torch.int64 if deepep else torch.int32, device=dev)",
       "in-place update of an input: src2dst is written into the storage of topk_ids (flat is a view of "
       "it; same length and dtype, so it 'fits'), destroying the caller's routing", dtypes=("int32",)),
    _M("ep_one_launch_start_inclusive", "ep_preprocess", "preprocess",
       "start = tl.cumsum(totals, axis=0) - totals   # exclusive scan",
       "start = tl.cumsum(totals, axis=0)   # exclusive scan",
       "off-by-one in the segment bounds: the one-launch path takes the buckets' starts from the inclusive "
       "scan of the totals, so seg_indptr and every position are one expert late"),
    _M("ep_routing_cached_by_shape", "ep_preprocess", "preprocess", "", "",
       "a result cached from a previous call: routing memoised on (shape, dtype, num_experts) and returned "
       "again for a new routing of the same shape", wrap=_cache_by_shape),
    # --- deepep_preprocess --------------------------------------------------------------
    _M("deepep_seg_counts_minus_one_slots", "deepep_preprocess", "preprocess",
       "(start - n_inv).to(tl.int64), mask=(buckets >= 1)",
       "start.to(tl.int64), mask=(buckets >= 1)",
       "seg_indptr from the bucket starts without subtracting n_inv: every segment is shifted by the "
       "number of -1 slots"),
    _M("deepep_n_inv_not_subtracted", "deepep_preprocess", "preprocess",
       "delta = start - n_inv + tl.load(",
       "delta = start + tl.load(",
       "src2dst not shifted by n_inv: positions still count the -1 slots in front"),
    _M("deepep_minus_one_sorted_last", "deepep_preprocess", "preprocess",
       "shift = 1 if deepep else 0",
       "shift = 0",
       "-1 slots sorted after the valid ones: without the bucket shift they fall into the dump bucket"),
    _M("deepep_minus_one_as_expert0", "deepep_preprocess", "preprocess",
       "flat = topk_ids.reshape(-1)",
       "flat = topk_ids.reshape(-1).clamp_min(0)  # keep every id a valid index",
       "-1 slots treated as expert 0: ids clamped to 0 before the sort"),
    # --- pre_reorder ----------------------------------------------------------------------
    _M("pre_reorder_end_exclusive", "pre_reorder", "reorder",
       "(e2 <= end_expert) & (dst2 >= 0)",
       "(e2 < end_expert) & (dst2 >= 0)",
       "the expert range end treated as exclusive: rows of end_expert_id are never gathered"),
    _M("pre_reorder_expert_offset_dropped", "pre_reorder", "reorder",
       "1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "1.0 / tl.load(scales_ptr + e, mask=local, other=1.0)  # [ROWS] fp32",
       "expert offset dropped: a1_scales indexed by e instead of e - start_expert_id", dtypes=_FP8),
    _M("pre_reorder_scale_not_reciprocal", "pre_reorder", "reorder",
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "inv = tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)  # [ROWS] fp32",
       "the fp8 scale applied instead of its reciprocal (x * s, not x / s)", dtypes=_FP8),
    _M("pre_reorder_row_read_if_last_slot_local", "pre_reorder", "reorder",
       "any_local = tl.max(local2.to(tl.int32), axis=1) > 0",
       "any_local = tl.sum(tl.where(kk[None, :] == TOPK - 1, local2.to(tl.int32), 0), axis=1) > 0",
       "a token's row read only when its last slot is local (the skip of non-local rows looks at one "
       "slot): rows whose earlier slots are local are written as zeros"),
    _M("pre_reorder_tail_mask_dropped", "pre_reorder", "reorder",
       "tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None] & cmask[None, :])",
       "tl.store(out_ptr + dst[:, None] * H + cols[None, :], val, mask=local[:, None])",
       "missing tail mask on the store: when H is not a multiple of the block, columns past H spill into "
       "the next row"),
    _M("pre_reorder_int32_row_offset", "pre_reorder", "reorder",
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int64)",
       "dst2 = tl.load(src2dst_ptr + slots, mask=m2, other=-1).to(tl.int32)",
       "int32 destination offset: dst * H overflows once T*K*H passes 2**31 (SGLang's fault at T=40000, "
       "K=8, H=7168)", dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- silu_and_mul ---------------------------------------------------------------------
    _M("silu_gate_up_swapped", "silu_and_mul", "activation",
       "gate = tl.load(gu_ptr + in_off, mask=m2, other=0.0).to(tl.float32)\n"
       "    up = tl.load(gu_ptr + in_off + I, mask=m2, other=0.0).to(tl.float32)",
       "gate = tl.load(gu_ptr + in_off + I, mask=m2, other=0.0).to(tl.float32)\n"
       "    up = tl.load(gu_ptr + in_off, mask=m2, other=0.0).to(tl.float32)",
       "gate and up swapped: the activation is applied to the second half of the row"),
    _M("silu_end_exclusive", "silu_and_mul", "activation",
       "local = (rows < M) & (e >= start_expert) & (e <= end_expert)",
       "local = (rows < M) & (e >= start_expert) & (e < end_expert)",
       "the expert range end treated as exclusive: rows of end_expert_id are left unwritten"),
    _M("silu_scale_not_reciprocal", "silu_and_mul", "activation",
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "inv = tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "the fp8 scale applied instead of its reciprocal", dtypes=_FP8),
    _M("silu_int32_row_offset", "silu_and_mul", "activation",
       "rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)",
       "rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
       "int32 row offsets: rows * 2I overflows once M*2I passes 2**31",
       dtypes=("bfloat16",), backends=("cuda",), min_preset="large"),
    # --- gelu_and_mul ---------------------------------------------------------------------
    _M("gelu_erf_form", "gelu_and_mul", "activation",
       "a = gate / (1.0 + tl.exp(-2.0 * y))",
       "a = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))",
       "GELU without its tanh form: the exact erf GELU where the tanh approximation is the contract"),
    _M("gelu_expert_offset_dropped", "gelu_and_mul", "activation",
       "inv = 1.0 / tl.load(scales_ptr + (e - start_expert), mask=local, other=1.0)",
       "inv = 1.0 / tl.load(scales_ptr + e, mask=local, other=1.0)",
       "expert offset dropped: scales indexed by e instead of e - start_expert_id", dtypes=_FP8),
    _M("gelu_tail_mask_dropped", "gelu_and_mul", "activation",
       "m2 = local[:, None] & (cols < I)[None, :]",
       "m2 = local[:, None]",
       "missing tail mask: when I is not a multiple of the block, gate reads into up and stores spill into "
       "the next row"),
    # --- post_reorder ---------------------------------------------------------------------
    _M("post_reorder_no_local_unwritten", "post_reorder", "reorder",
       "mask=rmask[:, None] & cmask[None, :])",
       "mask=(rmask & (tl.max(local2.to(tl.int32), axis=1) > 0))[:, None] & cmask[None, :])",
       "tokens with no local expert left unwritten: only rows with a local slot are stored"),
    _M("post_reorder_slot_group_skipped", "post_reorder", "reorder",
       "if tl.max(tl.max(tl.where(in_group[None, :] & local2, 1, 0), axis=1), axis=0) > 0:",
       "if tl.max(tl.max(tl.where(in_group[None, :] & local2, 1, 0), axis=1), axis=0) > 1:",
       "the slot group test off by one: every group is skipped as if no row routed there, so each "
       "token gets zeros"),
    _M("post_reorder_end_exclusive", "post_reorder", "reorder",
       "(e2 <= end_expert) & (dst2 >= 0)",
       "(e2 < end_expert) & (dst2 >= 0)",
       "the expert range end treated as exclusive: end_expert_id's contributions are dropped"),
    _M("post_reorder_weight_by_destination", "post_reorder", "reorder",
       "w2 = tl.load(w_ptr + slots, mask=local2, other=0.0)",
       "w2 = tl.load(w_ptr + src2, mask=local2, other=0.0)",
       "the router weight read at the slot's sorted position (src2dst) instead of at the slot"),
    _M("post_reorder_tail_mask_dropped", "post_reorder", "reorder",
       "mask=rmask[:, None] & cmask[None, :])",
       "mask=rmask[:, None])",
       "missing tail mask on the store: columns past H of the last token spill past the output"),
    # --- grouped_gemm ---------------------------------------------------------------------
    _M("gemm_weight_index_ignored", "grouped_gemm", "gemm",
       "e = tl.load(widx_ptr + g).to(tl.int64)",
       "e = g.to(tl.int64)",
       "the wrong weight for a group: b[g] instead of b[weight_indices[g]]"),
    _M("gemm_group_search_off_by_one", "grouped_gemm", "gemm",
       "g = tl.sum((cum <= mt).to(tl.int32), axis=0)",
       "g = tl.sum((cum < mt).to(tl.int32), axis=0)",
       "off-by-one in the search of a tile's group over the tiles' prefix sum"),
    _M("gemm_seg_start_ignored", "grouped_gemm", "gemm",
       "lo = tl.load(seg_ptr + gi, mask=gmask, other=0)",
       "lo = tl.load(seg_ptr + gi, mask=gmask & (gi > 0), other=0)",
       "a nonzero seg_indptr start ignored: group 0 is taken to start at row 0"),
    _M("gemm_empty_groups_skipped", "grouped_gemm", "gemm",
       "g = tl.sum((cum <= mt).to(tl.int32), axis=0)",
       "g = tl.sum(((cum <= mt) & (ntiles > 0)).to(tl.int32), axis=0)",
       "empty groups mishandled: left out when counting the groups before a tile, so later tiles land on "
       "an empty neighbour"),
    _M("gemm_k_tail_mask_dropped", "grouped_gemm", "gemm",
       "kmask = (k0 + kk) < Kd",
       "kmask = kk < Kd",
       "tail mask without the block offset: when Kd is not a multiple of BK the last K block reads past "
       "the row"),
    _M("gemm_rows_not_clamped_to_group", "grouped_gemm", "gemm",
       "rmask = rows < row_hi",
       "rmask = rows < M",
       "two programs writing the same rows (a race): a group's last m-tile also writes the next group's "
       "first rows, with its own weight"),
    _M("gemm_partial_sums_in_c_dtype", "grouped_gemm", "gemm",
       "acc = _mma(a, b, acc)",
       "acc = _mma(a, b, acc).to(a.dtype).to(tl.float32)  # partial sums in the input dtype",
       "accumulation in the input dtype: the running sum is rounded to a's dtype after every K block",
       dtypes=("bfloat16", "float16")),
    _M("gemm_tma_tile_row_from_group_end", "grouped_gemm", "gemm",
       "a = a_ptr.load([row0.to(tl.int32), k0])",
       "a = a_ptr.load([(row_hi - BM).to(tl.int32), k0])",
       "the TMA path's row coordinate anchored at the group's end: every m-tile multiplies the "
       "group's last BM rows (or, for a group shorter than BM, rows of the group before it); only a "
       "Kd the TMA path takes shows it"),
    _M("gemm_tma_store_whole_by_tensor_end", "grouped_gemm", "gemm",
       "whole = row0 + BM <= row_hi",
       "whole = row0 + BM <= M",
       "the TMA store's whole-tile test against the end of c instead of the group's end: a group's last "
       "tile writes its full BM rows, over the next group's rows (or past seg_indptr's last row)"),
    _M("gemm_second_accumulator_rows_from_tile_start", "grouped_gemm", "gemm",
       "a2 = a2_desc.load([(row0 + BM).to(tl.int32), k0])",
       "a2 = a2_desc.load([row0.to(tl.int32), k0])",
       "the second accumulator of a two-accumulator tile fed the tile's first rows instead of the BM "
       "rows after them (TMA path; only groups reaching past a tile's first BM rows show it)"),
    _M("gemm_tail_stored_past_group", "grouped_gemm", "gemm",
       "tail = tl.make_tensor_descriptor(c_ptr, shape=[row_hi.to(tl.int32), N], strides=[N, 1],",
       "tail = tl.make_tensor_descriptor(c_ptr, shape=[(row_hi + 1).to(tl.int32), N], strides=[N, 1],",
       "a group's last tile (either accumulator's) stored through a descriptor that ends one row past the "
       "group: that row of the next group is overwritten (a race), or the row after c (a guard row)"),
    _M("gemm_fp8_scale_of_group", "grouped_gemm", "gemm",
       "acc = _tensor_scaled(acc, sa_ptr, sb_ptr, e, MODE)",
       "acc = _tensor_scaled(acc, sa_ptr, sb_ptr, g, MODE)",
       "per-tensor fp8 scales of the wrong weight: indexed by the group instead of weight_indices[g]",
       dtypes=("fp8_tensor",)),
    _M("gemm_fp8_scale_divided", "grouped_gemm", "gemm",
       "acc = acc * (tl.load(sa_ptr + e) * tl.load(sb_ptr + e))",
       "acc = acc / (tl.load(sa_ptr + e) * tl.load(sb_ptr + e))",
       "the dequantisation scale's reciprocal applied instead of the scale", dtypes=("fp8_tensor",)),
    _M("gemm_block_scales_two_blocks_ahead", "grouped_gemm", "gemm",
       "kb_next = tl.minimum((k0 + BK) // QBK, (Kd - 1) // QBK)",
       "kb_next = tl.minimum((k0 + 2 * BK) // QBK, (Kd - 1) // QBK)",
       "the block-wise scale prefetch runs a block too far ahead: K blocks after the first are scaled by their "
       "successor's scales", dtypes=("fp8_block",)),
    _M("gemm_block_column_scale_of_first_block", "grouped_gemm", "gemm",
       "sb_ptrs = sb_ptr + e * SB_N * SB_K + (n0 // QBN) * SB_K",
       "sb_ptrs = sb_ptr + e * SB_N * SB_K",
       "a tile inside one column block of b takes the scales of b's first column block", dtypes=("fp8_block",)),
    _M("gemm_quant_scale_not_reciprocal", "grouped_gemm", "gemm",
       "q = cast_out(x / scale[:, None], q_ptr.dtype.element_ty)",
       "q = cast_out(x * scale[:, None], q_ptr.dtype.element_ty)",
       "block-wise quantiser multiplies by the scale instead of dividing", dtypes=("fp8_block",)),
    # --- ep_moe_forward -------------------------------------------------------------------
    _M("moe_quant_seg_start_ignored", "ep_moe_forward", "gemm",
       "rmask = rmask & (rows >= lo) & (rows < hi)",
       "rmask = rmask & (rows < hi - lo)",
       "a nonzero seg_indptr start ignored by the fp8 quantiser: it quantises rows [0, hi - lo), so a rank "
       "whose experts do not start at 0 multiplies unquantised rows", dtypes=("fp8_block",)),
    _M("moe_routing_cached_by_shape", "ep_moe_forward", "preprocess", "", "",
       "a result cached from a previous call: the forward's routing memoised on the shape of topk_ids",
       wrap=_cache_by_shape, function="ep_preprocess"),
)

MUTANTS: Dict[str, Mutant] = {m.name: m for m in CATALOGUE}
assert len(MUTANTS) == len(CATALOGUE), "mutant names must be unique"


# ----------------------------------------------------------------------------- loading

def module_path(module: str) -> str:
    return os.path.join(OPTIMIZED_DIR, f"{module}.py")


def patched_source(mutant: Mutant, source: Optional[str] = None) -> str:
    """The module's source with every patch of ``mutant`` applied; StalePatch unless each
    ``old`` occurs exactly once (in the source as it stands before that patch)."""
    if source is None:
        with open(module_path(mutant.module)) as fh:
            source = fh.read()
    for old, new in mutant.patches:
        n = source.count(old) if old else 0
        if n != 1:
            raise StalePatch(f"{mutant.name}: optimized/{mutant.module}.py contains the patched text {n} times "
                             f"(expected exactly once): {old.strip()[:80]!r}")
        source = source.replace(old, new)
    return source


_TMP: Dict[str, str] = {}
_LOADED: Dict[str, types.ModuleType] = {}


def _tmp_dir() -> str:
    if "dir" not in _TMP:
        _TMP["dir"] = tempfile.mkdtemp(prefix="moe-mutants-")
        atexit.register(shutil.rmtree, _TMP["dir"], True)
    return _TMP["dir"]


def load_patched_module(mutant: Mutant) -> types.ModuleType:
    """Import the patched module as ``optimized._mutant_<name>`` from a file (cached per process).

    The file lives as long as the process: Triton's @jit reads kernel source through
    ``inspect`` (and its interpreter re-parses it), which needs a real file."""
    if mutant.name in _LOADED:
        return _LOADED[mutant.name]
    source = patched_source(mutant)
    importlib.import_module("optimized")  # the parent package, for the module's relative imports
    name = f"optimized._mutant_{mutant.name}"
    path = os.path.join(_tmp_dir(), f"_mutant_{mutant.name}.py")
    with open(path, "w") as fh:
        fh.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # Triton (and pickling) look kernels' modules up by name
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _LOADED[mutant.name] = mod
    return mod


def mutated_functions(mutant: Mutant) -> Dict[str, Callable]:
    """{function name: broken function} of the mutant's module."""
    if mutant.wrap is not None:
        original = importlib.import_module(f"optimized.{mutant.module}")
        fname = mutant.function or OP_FUNCTION[mutant.op]
        return {fname: mutant.wrap(getattr(original, fname))}
    mod = load_patched_module(mutant)
    return {f: getattr(mod, f) for f in set(OP_FUNCTION.values()) if hasattr(mod, f)}


def implementation(mutant: Mutant):
    """``ours`` with the mutant's op replaced (see the module docstring); name ``mutant:<name>``."""
    from .impls import load_implementation
    ours = load_implementation("ours")
    funcs = mutated_functions(mutant)
    if mutant.op == "ep_moe_forward":
        import optimized.moe as moe
        ops = types.SimpleNamespace(**{**vars(moe.OPS), **{k: v for k, v in funcs.items() if hasattr(moe.OPS, k)}})
        fn = functools.partial(moe.ep_moe_forward, ops=ops)
    else:
        fn = funcs[OP_FUNCTION[mutant.op]]
    return dataclasses.replace(ours, name=f"mutant:{mutant.name}", ops={**ours.ops, mutant.op: fn},
                               source=f"mutant:{mutant.name}")
