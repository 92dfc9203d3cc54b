"""The plain-torch timing baselines keep the contract on the cases they cover."""
import pytest

from harness.cases import CaseParams
from harness.impls import load_implementation
from harness.runner import run_case
from harness.specs import SPECS

# Kd and N multiples of 8: torch._grouped_mm needs 16-byte aligned strides.
CASES = [
    ("torch", "ep_preprocess", "int32", {}),
    ("torch", "deepep_preprocess", "int32", dict(invalid_frac=0.3)),
    ("torch", "deepep_preprocess", "int64", dict(invalid_frac=0.9)),
    ("torch", "pre_reorder", "bfloat16", {}),
    ("torch", "grouped_gemm", "float16", {}),
    ("torch_grouped_mm", "grouped_gemm", "bfloat16", {}),
    ("torch_grouped_mm", "grouped_gemm", "bfloat16", dict(start_expert=0, end_expert=7)),
    ("torch", "ep_moe_forward", "bfloat16", {}),
]


@pytest.mark.parametrize("impl,op,dtype,kw", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{len(c[3])}" for c in CASES])
def test_baseline_passes_every_probe(seed, device, impl, op, dtype, kw):
    p = CaseParams(op=op, dtype=dtype, tokens=11, topk=3, experts=8, start_expert=kw.get("start_expert", 2),
                   end_expert=kw.get("end_expert", 5), hidden=64, inter=32, routing="skewed", seed=seed,
                   invalid_frac=kw.get("invalid_frac", 0.0))
    res = run_case(SPECS[op], load_implementation(impl).candidate(op), p, device, impl)
    assert res.status == "passed", res.message


def test_baselines_refuse_fp8_clearly(device):
    p = CaseParams(op="grouped_gemm", dtype="fp8_tensor", tokens=4, topk=2, experts=4, hidden=64, inter=32)
    res = run_case(SPECS["grouped_gemm"], load_implementation("torch").candidate("grouped_gemm"), p, device, "torch")
    assert res.probe == "exception" and "use_fp8_w8a8" in res.message
