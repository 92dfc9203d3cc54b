"""Cross-check reference/permute.py, reference/cutlass.py and reference/zero_experts.py against
SGLang's released Triton kernels, run by Triton's interpreter on the CPU.

    pip download sglang==0.5.23 --no-deps -d /tmp/sglang-0.5.23
    (cd /tmp/sglang-0.5.23 && unzip -q -o sglang-*.whl 'sglang/*')
    pip download sglang==0.5.5 --no-deps -d /tmp/sglang-0.5.5            # the 0.5 conventions
    (cd /tmp/sglang-0.5.5 && unzip -q -o sglang-*.whl 'sglang/srt/layers/moe/ep_moe/*')
    PYTHONPATH=$PWD python tools/crosscheck_sglang_permute.py --sglang-root /tmp/sglang-0.5.23 \
        --sglang-05-root /tmp/sglang-0.5.5

Loading, interpreter workarounds and comparisons come from tools/crosscheck_sglang_layouts.py.
What cannot run on the CPU is named per case: ``moe_permute_prepare`` is a CUDA JIT kernel
(moe_permute's indices; its Triton row copy is checked with the reference's src2dst), and
``compute_cutlass_w4a8_moe_input_scale`` asserts a CUDA input (its Triton kernel is launched
here with the wrapper's arguments). A known upstream deviation (a case the reference is meant
to differ on) is reported as KNOWN and does not fail the run; any other difference does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402

import crosscheck_sglang_layouts as layouts  # noqa: E402
from crosscheck_sglang_layouts import FP8, RESULTS, compare, guarded, randn, record  # noqa: E402
from reference import cutlass as ref_cutlass  # noqa: E402
from reference import permute as ref_permute  # noqa: E402
from reference.zero_experts import zero_experts_compute_triton as ref_zero_experts  # noqa: E402


def load_upstream(root: Path):
    ep, _ = layouts.load_upstream(root)
    ep._get_launch_config_1d = lambda device, numel: ((max(min(triton.cdiv(numel, 512), 3), 0),), 512)
    return ep


def load_upstream_05(root: Path):
    """The 0.5.x file (``sglang/srt/layers/moe/ep_moe/kernels.py``), after load_upstream's stand-ins."""
    layouts._module("sglang.srt.layers.moe")
    layouts._module("sglang.srt.layers.moe.ep_moe")
    return layouts.load_file(root / "sglang/srt/layers/moe/ep_moe/kernels.py", "sglang.srt.layers.moe.ep_moe.kernels")


def local_ids(gen, T, K, E):
    """int32 [T, K] local ids with -1 and the sentinel E for dropped slots."""
    ids = torch.randint(0, E, (T, K), generator=gen, dtype=torch.int32)
    marker = torch.rand(T, K, generator=gen)
    return torch.where(marker < 0.15, -1, torch.where(marker < 0.3, E, ids)).contiguous()


# --------------------------------------------------------------------------- permute family


def check_permute_family(ep, gen):
    T, K, E, H = 23, 4, 6, 200
    ids = layouts.routing(gen, T, K, E)

    @guarded("deepep_run_moe_deep_preprocess", "int32 ids with -1")
    def _():
        for name, got, want in zip(("reorder_topk_ids", "src2dst", "seg_indptr"),
                                   ep.deepep_run_moe_deep_preprocess(ids, E),
                                   ref_permute.deepep_run_moe_deep_preprocess(ids, E)):
            compare("deepep_run_moe_deep_preprocess", f"[{name}]", got, want)

    x = randn(gen, T, H)
    _, src2dst, offsets = ref_permute.moe_permute(x, ids, E)
    record("moe_permute (indices)", "moe_permute_prepare", "NOT RUN", "CUDA JIT kernel (tvm_ffi), no CPU path")

    @guarded("moe_permute (rows: deepep_permute_triton_kernel)", "float32, poison buffer")
    def _():
        got = ep._moe_permute_rows(x, ids, src2dst, layouts.poison((T * K, H), torch.float32))
        want = ref_permute.moe_permute(x, ids, E)[0]
        compare("moe_permute (rows: deepep_permute_triton_kernel)", "float32, poison buffer", got, want)

    @guarded("moe_permute_with_scale (scale rows)", "float32 scales")
    def _():
        xs = torch.rand(T, 3, generator=gen)
        got = ep._moe_permute_rows(xs, ids, src2dst, layouts.poison((T * K, 3), torch.float32))
        want = ref_permute.moe_permute_with_scale(x, xs, ids, E)[1]
        compare("moe_permute_with_scale (scale rows)", "float32 scales", got, want)

    @guarded("deepep_permute_triton_kernel", "fp32 -> fp8 cast")
    def _():
        up, ref = layouts.poison((T * K, H), FP8), layouts.poison((T * K, H), FP8)
        x8 = randn(gen, T, H, scale=200.0)
        ep.deepep_permute_triton_kernel[(T,)](x8, up, src2dst, ids, None, K, H, BLOCK_SIZE=512)
        ref_permute.deepep_permute_triton_kernel(x8, ref, src2dst, ids, None, K, H)
        compare("deepep_permute_triton_kernel", "fp32 -> fp8 cast (|x| up to ~800)", up, ref, fp8_steps=1)

    n = int(offsets[-1])
    down = randn(gen, n, H)
    w = torch.rand(T, K, generator=gen)
    for factor in (None, 2.5):
        case = f"float32, routed_scaling_factor={factor}"

        @guarded("moe_unpermute", case)
        def _():
            got = ep.moe_unpermute(down, src2dst, ids, w, routed_scaling_factor=factor,
                                   outputs=layouts.poison((T, H), torch.float32))
            want = ref_permute.moe_unpermute(down, src2dst, ids, w, routed_scaling_factor=factor)
            compare("moe_unpermute", case, got, want, rtol=1e-6)


# --------------------------------------------------------------------------- 0.5 conventions


def check_05_conventions(old, gen):
    if old is None:
        record("run_moe_ep_preproess (0.5.4+)", "-", "NOT RUN", "no --sglang-05-root given")
        record("post_reorder_triton_kernel (0.5.4+)", "-", "NOT RUN", "no --sglang-05-root given")
        return
    T, K, E = 19, 3, 5
    ids = local_ids(gen, T, K, E)

    @guarded("run_moe_ep_preproess (0.5.4+)", "local ids, -1 and sentinel")
    def _():
        for name, got, want in zip(("reorder_topk_ids", "src2dst", "seg_indptr"), old.run_moe_ep_preproess(ids, E),
                                   ref_permute.run_moe_ep_preproess_local(ids, E)):
            compare("run_moe_ep_preproess (0.5.4+)", f"[{name}]", got, want)

    H = 64
    ids = torch.where(ids >= E, -1, ids)
    down = randn(gen, T * K, H)
    src2dst = torch.randperm(T * K, generator=gen).to(torch.int32)
    w = torch.rand(T, K, generator=gen) + 0.1

    @guarded("post_reorder_triton_kernel (0.5.4+)", "expert_id > 0 gate")
    def _():
        up = layouts.poison((T, H), torch.float32)
        ref = layouts.poison((T, H), torch.float32)
        old.post_reorder_triton_kernel[(T,)](down, up, src2dst, ids, w, K, H, BLOCK_SIZE=512)
        ref_permute.post_reorder_gated(down, ref, src2dst, ids, w, K, H)
        no_zero = ~(ids == 0).any(1)
        close = lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
        if close(up[no_zero], ref[no_zero]) and not close(up[~no_zero], ref[~no_zero]):
            record("post_reorder_triton_kernel (0.5.4+)", "expert_id > 0 gate", "KNOWN",
                   f"equal on the {int(no_zero.sum())} tokens without local expert 0, differs on the "
                   f"{int((~no_zero).sum())} with it (upstream drops expert 0)")
        else:
            compare("post_reorder_triton_kernel (0.5.4+)", "expert_id > 0 gate", up, ref, rtol=1e-6)


# --------------------------------------------------------------------------- cutlass family


def check_cutlass_family(ep, gen):
    T, K, E, H = 21, 3, 4, 192
    ids = local_ids(gen, T, K, E)

    @guarded("cutlass_w4_run_moe_ep_preproess", "-1 and sentinel")
    def _():
        compare("cutlass_w4_run_moe_ep_preproess", "-1 and sentinel", ep.cutlass_w4_run_moe_ep_preproess(ids),
                ref_cutlass.cutlass_w4_run_moe_ep_preproess(ids))

    src2dst = torch.randperm(T * K, generator=gen).to(torch.int32)
    x = randn(gen, T, H, scale=30.0)
    for case, a1 in (("fp8, a1_scale", torch.tensor([0.05])), ("fp8, no scale (clamps)", None)):
        @guarded("pre_reorder_for_cutlass_moe", case)
        def _():
            up, ref = layouts.poison((T * K, H), FP8), layouts.poison((T * K, H), FP8)
            ep.pre_reorder_for_cutlass_moe(x, up, src2dst, ids, a1, E, K, T - 2, H)
            ref_cutlass.pre_reorder_for_cutlass_moe(x, ref, src2dst, ids, a1, E, K, T - 2, H)
            compare("pre_reorder_for_cutlass_moe", case, up, ref, fp8_steps=1)

    @guarded("post_reorder_for_cutlass_moe", "float32, factor 1.5")
    def _():
        down = randn(gen, T * K, H)
        w = torch.rand(T, K, generator=gen)
        up, ref = layouts.poison((T, H), torch.float32), layouts.poison((T, H), torch.float32)
        ep.post_reorder_for_cutlass_moe(down, up, src2dst, ids, w, E, K, T - 1, H, 1.5)
        ref_cutlass.post_reorder_for_cutlass_moe(down, ref, src2dst, ids, w, E, K, T - 1, H, 1.5)
        compare("post_reorder_for_cutlass_moe", "float32, factor 1.5", up, ref, rtol=1e-6)

    M, I = 40, 96
    act = randn(gen, M, 2 * I, scale=4.0)
    count = torch.tensor([29], dtype=torch.int32)     # fewer rows than expected_num_tokens = M
    for name in ("static", "dynamic"):
        op = f"silu_mul_{name}_tensorwise_quant_for_cutlass_moe"

        @guarded(op, "fp8, device count 29 of 40")
        def _():
            up_out, ref_out = layouts.poison((M, I), FP8), layouts.poison((M, I), FP8)
            up_s, ref_s = torch.tensor([0.03, 7.0]), torch.tensor([0.03, 7.0])
            getattr(ep, op)(act, up_out, up_s, count, M, I)
            getattr(ref_cutlass, op)(act, ref_out, ref_s, count, M, I)
            compare(op, "fp8, device count 29 of 40 [output]", up_out, ref_out, fp8_steps=1)
            compare(op, "fp8, device count 29 of 40 [scale]", up_s, ref_s, rtol=1e-6)

    @guarded("compute_cutlass_w4a8_moe_input_scale", "kernel launched as the wrapper does")
    def _():
        xs = randn(gen, T, H)
        xs[ids.eq(-1).all(1) | ids.ge(E).all(1)] = float("nan")   # inactive rows are never read
        up, ref = torch.tensor([1e-10 / 448]), torch.tensor([1e-10 / 448])
        block = triton.next_power_of_2(H)
        ep._compute_cutlass_w4a8_moe_input_scale_kernel[(T,)](
            xs, ids, up, xs.stride(0), xs.stride(1), ids.stride(0), ids.stride(1), hidden_size=H, topk=K,
            num_local_experts=E, FP8_MAX=448.0, BLOCK_SIZE=block, BLOCK_TOPK=triton.next_power_of_2(K))
        ref_cutlass.compute_cutlass_w4a8_moe_input_scale(xs, ids, ref, E)
        compare("compute_cutlass_w4a8_moe_input_scale", "kernel launched as the wrapper does", up, ref)

    @guarded("deepep_ll_get_cutlass_w4a8_moe_mm_data", "int32 tables, 5 of 7 rows")
    def _():
        masked_m = torch.randint(0, 500, (7,), generator=gen, dtype=torch.int32)
        tables = {who: (torch.full((7, 3), -3, dtype=torch.int32), torch.full((7, 3), -4, dtype=torch.int32))
                  for who in ("up", "ref")}
        got = ep.deepep_ll_get_cutlass_w4a8_moe_mm_data(masked_m, *tables["up"], 5, 96, 160)
        want = ref_cutlass.deepep_ll_get_cutlass_w4a8_moe_mm_data(masked_m, *tables["ref"], 5, 96, 160)
        compare("deepep_ll_get_cutlass_w4a8_moe_mm_data", "[problem_sizes1]", got[0], want[0])
        compare("deepep_ll_get_cutlass_w4a8_moe_mm_data", "[problem_sizes2]", got[1], want[1])


# --------------------------------------------------------------------------- zero experts


def check_zero_experts(ep, gen):
    T, K, E = 9, 4, 6
    for H in (512, 320):
        case = f"H={H}"

        @guarded("zero_experts_compute_triton", case)
        def _():
            ids = torch.randint(-1, E + 3, (T, K), generator=gen, dtype=torch.int32)
            scales = torch.rand(T, K, generator=gen)
            h = randn(gen, T, H)
            up_ids, up_scales, ref_ids, ref_scales = ids.clone(), scales.clone(), ids.clone(), scales.clone()
            up = ep.zero_experts_compute_triton(up_ids, up_scales, E, "identity", h)
            ref = ref_zero_experts(ref_ids, ref_scales, E, "identity", h)
            compare("zero_experts_compute_triton", case + " [expert_indices rewrite]", up_ids, ref_ids)
            compare("zero_experts_compute_triton", case + " [expert_scales rewrite]", up_scales, ref_scales)
            full = H // 256 * 256
            if H % 256 and torch.allclose(up[:, :full], ref[:, :full], rtol=1e-6) and not bool(up[:, full:].any()):
                record("zero_experts_compute_triton", case + " [output]", "KNOWN",
                       f"equal in columns < {full}; upstream leaves columns >= {full} at 0 (grid H // 256)")
            else:
                compare("zero_experts_compute_triton", case + " [output]", up, ref, rtol=1e-6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sglang-root", default=os.environ.get("SGLANG_ROOT", "/tmp/sglang-0.5.23"),
                    help="folder holding the unpacked 0.5.23 wheel's sglang/ tree")
    ap.add_argument("--sglang-05-root", default=None,
                    help="folder holding an unpacked 0.5.4 .. 0.5.5 wheel (run_moe_ep_preproess with num_local_experts)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    ep = load_upstream(Path(args.sglang_root))
    old = load_upstream_05(Path(args.sglang_05_root)) if args.sglang_05_root else None
    gen = torch.Generator().manual_seed(args.seed)
    check_permute_family(ep, gen)
    check_05_conventions(old, gen)
    check_cutlass_family(ep, gen)
    check_zero_experts(ep, gen)
    counts = {v: sum(r[2] == v for r in RESULTS) for v in ("matches", "matches~", "KNOWN", "DIFFERS", "NOT RUN")}
    print("\n" + ", ".join(f"{n} {v}" for v, n in counts.items())
          + f" (interpreter workarounds: {', '.join(layouts.PATCHES)})")
    return 1 if counts["DIFFERS"] else 0


if __name__ == "__main__":
    sys.exit(main())
