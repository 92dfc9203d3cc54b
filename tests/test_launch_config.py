"""The public launch/config API of optimized/ (optimized/config.py lists it).

Contracts checked: every switch sets exactly its own knobs inside its block and puts them back
after it, also when the block raises, and refuses a name that is not a knob; each switch reaches
the launch it is meant to change (the plan, the tile, the operand path, the value checks); and a
launch description (KernelLaunch), run on its own, writes what its launcher writes.
"""
import pytest
import torch
import triton

import reference
from optimized import _config, activation, config, describe_last_launch, gemm, preprocess, reorder


def _tile(bm=16, bn=32, bk=32, bm2=0):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 4, "PERSIST": 0, "WS": False, "BM2": bm2},
                         num_warps=4, num_stages=2)


SWITCHES = {  # name: (module whose knobs it sets, the switch, the knobs it must set)
    "value_checks": (_config, lambda: config.value_checks(not _config.CHECK_VALUES), {"CHECK_VALUES"}),
    "tma_allowed": (gemm, lambda: gemm.tma_allowed(not gemm.USE_TMA), {"USE_TMA"}),
    "grid_cap": (gemm, lambda: gemm.grid_cap(gemm.MAX_PROGRAMS_PER_SM + 3), {"MAX_PROGRAMS_PER_SM"}),
    "pinned_tile": (gemm, lambda: gemm.pinned_tile(_tile()), {"_TILE_PIN"}),
    "fresh_autotuning": (gemm, gemm.fresh_autotuning, {"_AUTOTUNE_DISK_CACHE"}),
    "forced_way one program": (preprocess, lambda: preprocess.forced_way(preprocess.ONE_PROGRAM),
                               {"ONE_LAUNCH_MAX", "ONE_LAUNCH_MAX_INTERP", "ONE_BLOCK_MAX", "ONE_BLOCK_MAX_INTERP"}),
    "forced_way one launch of blocks": (
        preprocess, lambda: preprocess.forced_way(preprocess.ONE_LAUNCH_BLOCKS, 128),
        {"ONE_LAUNCH_MAX", "ONE_LAUNCH_MAX_INTERP", "ONE_BLOCK_MAX", "ONE_BLOCK_MAX_INTERP", "ONE_LAUNCH_BLOCK"}),
    "forced_way three launches": (preprocess, lambda: preprocess.forced_way(preprocess.THREE_LAUNCHES, 64),
                                  {"ONE_LAUNCH_MAX", "ONE_LAUNCH_MAX_INTERP", "MIN_BLOCK", "MAX_BLOCK"}),
    "forced_sort": (preprocess, lambda: preprocess.forced_sort(not preprocess.FORCE_SORT), {"FORCE_SORT"}),
    "pinned_plan": (preprocess, lambda: preprocess.pinned_plan(target_blocks=128, scan_warps=2,
                                                               pdl=not preprocess.USE_PDL),
                    {"TARGET_BLOCKS", "SCAN_WARPS", "USE_PDL"}),
    "reorder.pinned_tiles": (reorder, lambda: reorder.pinned_tiles(tile_elems=512, max_block_h=256),
                             {"TILE_ELEMS", "MAX_BLOCK_H"}),
    "pinned_slot_group": (reorder, lambda: reorder.pinned_slot_group(reorder.POST_SLOT_GROUP + 1), {"POST_SLOT_GROUP"}),
    "activation.pinned_tiles": (activation, lambda: activation.pinned_tiles(num_warps=8, max_block_i=128),
                                {"NUM_WARPS", "MAX_BLOCK_I"}),
}


def _knobs(module):
    """The module's knobs: its upper-case globals (private state such as _TILE_PIN included)."""
    return {name: value for name, value in vars(module).items() if name.isupper() and not name.startswith("__")}


@pytest.mark.parametrize("name", SWITCHES)
def test_switch_sets_its_knobs_in_its_block_and_restores_them_also_when_the_block_raises(name):
    module, switch, knobs = SWITCHES[name]
    before = _knobs(module)
    with pytest.raises(RuntimeError, match="in the block"):
        with switch():
            inside = _knobs(module)
            raise RuntimeError("in the block")
    changed = {k for k in before if inside[k] is not before[k]}
    assert changed == knobs
    after = _knobs(module)
    assert all(after[k] is before[k] for k in before), {k for k in before if after[k] is not before[k]}


def test_a_name_that_is_no_knob_is_refused_and_nothing_is_set():
    before = _knobs(reorder)
    with pytest.raises(KeyError, match="TILE_ELEMENTS"):
        with _config.pinned_globals(vars(reorder), TILE_ELEMS=2, TILE_ELEMENTS=2):
            pass
    assert _knobs(reorder) == before
    with pytest.raises(ValueError, match="way"):
        preprocess.forced_way("two launches")


@pytest.mark.parametrize("n", [8, 600, 3000])
def test_forced_way_is_the_plan_whatever_the_size(n):
    with preprocess.forced_way(preprocess.ONE_PROGRAM):
        plan = preprocess.launch_plan(n, 37)
        assert plan.one_launch and plan.nblk == 1
    with preprocess.forced_way(preprocess.ONE_LAUNCH_BLOCKS, 64):
        plan = preprocess.launch_plan(n, 37)
        assert plan.one_launch and plan.block == 64 and plan.nblk == -(-n // 64)
    with preprocess.forced_way(preprocess.THREE_LAUNCHES, 256):
        plan = preprocess.launch_plan(n, 37)
        assert not plan.one_launch and plan.block == 256 and plan.nblk == -(-n // 256)
    with preprocess.forced_way(preprocess.THREE_LAUNCHES), preprocess.pinned_plan(scan_cols=8):
        assert preprocess.launch_plan(n, 37).scan_cols == 8


@pytest.mark.parametrize("way", preprocess.WAYS)
def test_ep_preprocess_launches_write_what_ep_preprocess_returns(way, device):
    gen = torch.Generator(device=device).manual_seed(3)
    topk_ids = torch.randint(0, 37, (29, 7), generator=gen, device=device, dtype=torch.int32)
    with preprocess.forced_way(way, 64 if way != preprocess.ONE_PROGRAM else None):
        want = preprocess.ep_preprocess(topk_ids, 37)
        launches, outputs = preprocess.ep_preprocess_launches(topk_ids, 37)
    assert list(launches) == (["one_launch"] if way != preprocess.THREE_LAUNCHES else ["hist", "colscan", "scatter"])
    for launch in launches.values():
        launch()
    for got, expected in zip(outputs, want):
        assert torch.equal(got, expected)


def test_pre_reorder_launch_writes_what_pre_reorder_writes(device):
    gen = torch.Generator(device=device).manual_seed(4)
    T, K, E, H = 9, 3, 6, 40
    x = torch.randn(T, H, generator=gen, device=device).to(torch.bfloat16)
    topk_ids = torch.randint(0, E, (T, K), generator=gen, device=device, dtype=torch.int32)
    _, src2dst, _ = reference.ep_preprocess(topk_ids, E)
    want = torch.zeros(T * K, H, device=device, dtype=torch.bfloat16)
    got = torch.zeros_like(want)
    with reorder.pinned_tiles(tile_elems=64, max_block_h=32):   # tiles of 2 rows, 2 column blocks
        reorder.pre_reorder(x, want, src2dst, topk_ids, None, 1, 4, K, H)
        launch = reorder.pre_reorder_launch(x, got, src2dst, topk_ids, None, 1, 4, K)
    assert launch.grid == (5, 2) and launch.constexprs["ROWS"] == 2
    launch()
    assert want.abs().sum() > 0 and torch.equal(got, want)


def test_value_checks_switch_the_launchers_value_checks(device):
    x = torch.ones(2, 8, device=device)
    topk_ids = torch.tensor([[0, 1], [1, 0]], device=device)
    src2dst = torch.tensor([0, 1, 2, 99], device=device, dtype=torch.int32)   # slot 3 points past the 4 rows
    out = torch.zeros(4, 8, device=device)
    with config.value_checks(True), pytest.raises(ValueError, match="src2dst"):
        reorder.pre_reorder(x, out, src2dst, topk_ids, None, 0, 1, 2, 8)
    with config.value_checks(False):   # no device read: the kernel skips the row it cannot address
        reorder.pre_reorder(x, out, src2dst, topk_ids, None, 0, 1, 2, 8)
    assert torch.equal(out, torch.tensor([1.0, 1.0, 1.0, 0.0], device=device)[:, None].expand(4, 8))


def _gemm_case(device):
    """Two groups of an aligned bf16 GEMM (TMA can take it) and its float32 reference."""
    gen = torch.Generator(device=device).manual_seed(5)
    a = torch.randn(40, 64, generator=gen, device=device).to(torch.bfloat16)
    b = torch.randn(2, 32, 64, generator=gen, device=device).to(torch.bfloat16)
    seg = torch.tensor([0, 24, 40], device=device)
    widx = torch.tensor([1, 0], device=device)
    want = torch.cat([a[:24].float() @ b[1].float().T, a[24:].float() @ b[0].float().T])
    return (a, b, torch.empty(40, 32, device=device, dtype=torch.bfloat16), 2, True, seg, widx), want


def test_pinned_tile_and_tma_switch_reach_the_gemm_launch(device, moe_backend):
    args, want = _gemm_case(device)
    with gemm.pinned_tile(_tile(bm=16, bm2=16), tma=False) as pin:
        gemm.grouped_gemm(*args)
    assert describe_last_launch("grouped_gemm") == "fixed: BM 16 BN 32 BK 32 BM2 16 GROUP_M 4 w4 s2, pointers"
    assert pin.tile.kwargs["BM2"] == 16 and (moe_backend != "cuda" or pin.kernel is not None)
    torch.testing.assert_close(args[2].float(), want, rtol=2e-2, atol=2e-2)
    gemm.grouped_gemm(*args)
    assert not describe_last_launch("grouped_gemm").startswith("fixed"), "the pin outlived its block"
    if gemm.TensorDescriptor is not None and moe_backend != "cuda":   # descriptors are emulated on the interpreter
        assert describe_last_launch("grouped_gemm").endswith(", TMA")
        with gemm.tma_allowed(False):
            gemm.grouped_gemm(*args)
        assert describe_last_launch("grouped_gemm").endswith(", pointers")


def test_fresh_autotuning_makes_new_autotuners_without_the_disk_cache():
    before = gemm._tuner("16bit", 1)
    with gemm.fresh_autotuning():
        fresh = gemm._tuner("16bit", 1)
        assert fresh is not before and gemm._AUTOTUNE_DISK_CACHE == {}
        assert not getattr(fresh, "cache_results", False)
    assert gemm._tuner("16bit", 1) is not fresh
