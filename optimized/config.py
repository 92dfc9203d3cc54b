"""The public launch/config API of our kernels, for tools (tools/) and tests: switches that a
script sets around its calls instead of assigning the modules' globals, and descriptions of the
kernel launches that a launcher makes.

Every switch is a context manager that puts the previous state back when its block ends, also
when the block raises. None changes what a kernel computes, only how it is launched (tiles,
paths, value checks). The switches of one op live in that op's module, next to the knobs they
set, so that a mutant copy of a module (harness/mutants.py) carries switches acting on its own
knobs:

- ``config.value_checks(enabled)``: the launchers' value checks (a host sync) on or off.
- ``gemm.tma_allowed(allowed)``: TMA operands wherever they apply, or the pointer path only.
- ``gemm.grid_cap(programs_per_sm)``: the grid of non-persistent tiles capped per SM (0: none).
- ``gemm.pinned_tile(tile, tma=None)``: every grouped GEMM launch with one tile config.
- ``gemm.fresh_autotuning()``: autotune anew, without triton's disk cache.
- ``gemm.grouped_gemm_kernel``: the @triton.jit kernel, for compiling it ahead of time.
- ``preprocess.forced_way(way, block=None)``: the EP preprocess in one program, one launch
  of blocks, or three launches.
- ``preprocess.forced_sort(forced)``: the GPU's block order (tl.sort) under the interpreter too.
- ``preprocess.pinned_plan(...)``: the three-launch path's blocks, scan tile, warps and PDL.
- ``preprocess.launch_plan(...)``: the plan a call of that size takes under the current knobs.
- ``preprocess.ep_preprocess_launches(...)``, ``reorder.pre_reorder_launch(...)``: a
  launcher's kernel launches as ``KernelLaunch`` records.
- ``reorder.pinned_tiles(...)``, ``reorder.pinned_slot_group(size)``,
  ``activation.pinned_tiles(...)``: tiles, warps and the combine's slot groups.
- ``quant.pinned_launch(...)``: warps, row programs and tile of the masked post-quant kernels.
- ``deepgemm_layout.pinned_launch(...)``: warps and column tiles of ep_scatter and ep_gather.
- ``optimized.describe_last_launch(op)``: how the last launch of ``op`` chose its tiles.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

from . import _config


def value_checks(enabled: bool):
    """The launchers' value checks (ids in range, seg_indptr monotone: a device-to-host read, so
    a sync in the hot path) on or off for the block; off for timing. Also MOE_CHECK_VALUES=0 in
    the environment, for a whole process. Kernels are memory-safe for any id values either way."""
    return _config.pinned_globals(vars(_config), CHECK_VALUES=enabled)


class KernelLaunch(NamedTuple):
    """One kernel launch as a launcher makes it: ``kernel[grid](*args, **constexprs, **options)``.

    ``args``: the runtime arguments and ``constexprs`` the compile-time ones, each in the kernel's
    parameter order (so ``args + tuple(constexprs.values())`` is its whole argument list);
    ``options``: launch options (num_warps, launch_pdl). Calling the record launches the kernel
    again on the same buffers, without the launcher's validation, planning or allocation (a bare
    launch: what triton's launch path alone costs on the host)."""

    kernel: Any
    grid: Tuple[int, ...]
    args: Tuple[Any, ...]
    constexprs: Dict[str, Any]
    options: Dict[str, Any]

    def __call__(self):
        """Launch; returns what triton's launch returns (on the GPU, the compiled kernel)."""
        return self.kernel[self.grid](*self.args, **self.constexprs, **self.options)
