"""Our grouped GEMM on fp8 block shapes other than DeepSeek's [128, 128], which the harness's
fuzzer always uses (SPEC.md's contract): each takes a different branch of the K loop, and none is
reached by the conformance suite.

- [bn, bk] with bn a multiple of the tile's BN: one scale of b per K block for the whole tile;
- bn not a multiple of BN (e.g. 16 or 48 beside the interpreter's BN 32): a scale per column;
- bk not a multiple of 16: the element-wise dequantising path (MODE 3).
Each case is built as the fuzzer builds grouped_gemm fp8_block cases, with b's scales drawn for the
block shape, and judged by every probe of harness.runner.run_case against the reference.
"""
import dataclasses
import math

import pytest
import torch

from harness.cases import CaseParams
from harness.impls import load_implementation
from harness.runner import run_case
from harness.specs import SPECS


def _spec_with_block_shape(block_shape):
    """grouped_gemm's spec whose samples carry ``block_shape`` and scale_b drawn for it."""
    base = SPECS["grouped_gemm"]

    def build(p: CaseParams, device):
        sample = base.build(p, device)
        e_w, N, Kd = sample.args["b"].shape
        gen = torch.Generator(device=device)
        gen.manual_seed(p.seed + 7)
        nb, kb = -(-N // block_shape[0]), -(-Kd // block_shape[1])
        scale_b = (torch.rand(e_w, nb, kb, generator=gen, device=device) + 0.5) / (16.0 * math.sqrt(Kd))  # [E_w, nb, kb]
        return dataclasses.replace(sample, args={**sample.args, "scale_b": scale_b, "block_shape": list(block_shape)})

    return dataclasses.replace(base, build=build)


@pytest.mark.parametrize("block_shape", [[64, 128], [16, 64], [48, 32], [128, 40]],
                         ids=["bn64", "bn16-per-column", "bn48-per-column", "bk40-elementwise"])
@pytest.mark.parametrize("seed", [0, 1])
def test_block_shapes_match_reference(block_shape, seed, device, moe_backend):
    # N and Kd leave partial blocks; two or three local experts with uneven groups
    params = CaseParams(op="grouped_gemm", dtype="fp8_block", tokens=24, topk=2, experts=4, start_expert=1,
                        end_expert=2 + seed, hidden=200, inter=72, routing="uniform", seed=seed)
    spec = _spec_with_block_shape(block_shape)
    reason = spec.skip_reason(moe_backend, "fp8_block")
    if reason:
        pytest.skip(reason)
    candidate = load_implementation("ours").candidate("grouped_gemm")
    res = run_case(spec, candidate, params, device, "ours")
    assert res.ok, f"{res.probe}: {res.message}"


def test_block_shape_test_fires_on_a_wrong_column_scale(device, monkeypatch):
    """The per-column branch is checked: scale_b read at the wrong column block fails the case."""
    from optimized import gemm
    real = gemm._launch

    def wrong_scales(a, b, c, seg, widx, sa, sb, *rest, **kw):
        return real(a, b, c, seg, widx, sa, sb.roll(1, dims=1).contiguous(), *rest, **kw)

    monkeypatch.setattr(gemm, "_launch", wrong_scales)
    params = CaseParams(op="grouped_gemm", dtype="fp8_block", tokens=24, topk=2, experts=4, start_expert=1,
                        end_expert=2, hidden=200, inter=72, routing="uniform", seed=0)
    spec = _spec_with_block_shape([16, 64])
    res = run_case(spec, load_implementation("ours").candidate("grouped_gemm"), params, device, "ours")
    assert not res.ok and res.probe == "tolerance", (res.probe, res.message)
