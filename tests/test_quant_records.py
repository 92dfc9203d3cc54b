"""The activation-with-quantisation records (harness/ops/quant.py): cases their references accept,
the fp8-code comparison (one e4m3 step, no more), integer scales compared exactly, our kernels'
strided scale layouts, the mutants killed through the ordinary command, and SGLang 0.5.23's
neighbour file (fp8_kernel.py) extracted, loaded with its stand-ins and bound."""
import glob
import os
import shutil
import textwrap
import zipfile

import pytest
import torch

from harness import cli
from harness.cases import CaseParams
from harness.impls import sglang_impl
from harness.ops import MUTANT_CATALOGUE
from harness.ops.quant import RECORDS
from harness.runner import Candidate, ProbeFailure, compare_outputs, fp8_grid_position, reference_outputs, run_case
from harness.sglang import standins
from harness.sglang.release import KERNEL_PATHS, NEIGHBOUR_PATHS, load_neighbours, resolve
from harness.specs import SPECS

OPS = [r.name for r in RECORDS]
CASE = dict(tokens=13, topk=3, experts=6, start_expert=1, end_expert=4, hidden=130, inter=40, routing="skewed",
            seed=3)


@pytest.mark.parametrize("op", OPS)
def test_record_builds_cases_its_reference_accepts(op):
    record = SPECS[op]
    assert record is next(r for r in RECORDS if r.name == op) and record.sglang is not None
    for dtype in record.dtypes:
        sample = record.build(CaseParams(op=op, dtype=dtype, **CASE), torch.device("cpu"))
        assert set(reference_outputs(record, sample).lp) == {o.name for o in record.outputs}


def _post_quant(dtype="bfloat16", op="silu_and_mul_masked_post_quant_fwd"):
    spec = SPECS[op]
    sample = spec.build(CaseParams(op=op, dtype=dtype, **CASE), torch.device("cpu"))
    return spec, sample, reference_outputs(spec, sample)


def _stepped(codes: torch.Tensor, flat: int, steps: int) -> torch.Tensor:
    """codes with element ``flat`` moved ``steps`` places up the e4m3 grid (positive values)."""
    out = codes.clone()
    b = out.view(torch.uint8).view(-1)
    b[flat] = int(b[flat]) + steps
    return out


def test_fp8_codes_pass_one_grid_step_and_fail_two():
    spec, sample, expected = _post_quant()
    codes = expected.lp["output"]
    live = (fp8_grid_position(codes) > 0) & (fp8_grid_position(codes) < 0x7D)
    flat = int(torch.nonzero(live.view(-1))[0])
    for steps, passes in ((1, True), (2, False)):
        cand = dict(expected.lp, output=_stepped(codes, flat, steps))
        if passes:
            compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
        else:
            with pytest.raises(ProbeFailure, match="more than one e4m3 step") as info:
                compare_outputs(spec, Candidate(lambda *a: None), sample, cand, expected)
            assert info.value.probe == "exact"
    nan = codes.clone()
    nan.view(torch.uint8).view(-1)[flat] = 0x7F
    with pytest.raises(ProbeFailure):
        compare_outputs(spec, Candidate(lambda *a: None), sample, dict(expected.lp, output=nan), expected)
    # the grid: +0 and -0 coincide, the smallest subnormals of either sign are two apart
    signed_zeros = torch.tensor([0x00, 0x80, 0x01, 0x81], dtype=torch.uint8).view(torch.float8_e4m3fn)
    assert fp8_grid_position(signed_zeros).tolist() == [0, 0, 1, -1]


def test_packed_scales_are_compared_exactly_whatever_the_mode():
    spec, sample, expected = _post_quant("bfloat16", "silu_and_mul_masked_post_quant_packed_fwd")
    scales = expected.lp["output_scale"].clone()
    live = torch.nonzero((scales != -1).view(-1)).flatten()
    scales.view(-1)[int(live[0])] += 1 << 8                  # group 4c + 1's exponent one higher
    with pytest.raises(ProbeFailure, match="differ from the reference"):
        compare_outputs(spec, Candidate(lambda *a: None), sample, dict(expected.lp, output_scale=scales), expected)
    group_quant = SPECS["sglang_per_token_group_quant_fp8"]
    assert next(o for o in group_quant.outputs if o.name == "output_s").compare == "float"   # int32 when packed


def test_our_kernel_writes_column_major_scales_through_their_strides():
    """DeepGEMM reads MN-major float32 scales: a [E, G, m] buffer seen as [E, m, G]."""
    from optimized import quant as ours
    from reference import quant as ref
    g = torch.Generator().manual_seed(0)
    E, m, gs, G = 3, 9, 16, 3
    x = (torch.randn(E, m, 2 * gs * G, generator=g) * 3).to(torch.bfloat16)
    masked_m = torch.tensor([9, 0, 4], dtype=torch.int32)
    outs = []
    for fn in (ours.silu_and_mul_masked_post_quant_fwd, ref.silu_and_mul_masked_post_quant_fwd):
        q = torch.zeros(E, m, gs * G, dtype=torch.float8_e4m3fn)
        s = torch.full((E, G, m), -1.0).transpose(1, 2)
        fn(x, q, s, gs, masked_m, True)
        outs.append((q.view(torch.uint8), s))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert bool((outs[0][1][1] == -1).all())                 # the empty expert's scales untouched


def test_every_mutant_of_the_quant_ops_is_killed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = [m.name for m in MUTANT_CATALOGUE if m.op in OPS]
    assert {m.op for m in MUTANT_CATALOGUE if m.op in OPS} == set(OPS)       # at least one per op
    code = cli.main(["mutate", "--backend", "interpreter", "--op", *OPS, "--cases", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in mine:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "KILLED" in line, line


# ----------------------------------------------------------------------------- SGLang's neighbour file

NEIGHBOUR = """
    import torch
    from sglang.srt.environ import envs
    from sglang.srt.utils import ceil_align, is_cuda, is_hip
    from sglang.kernels.jit.utils import is_arch_support_pdl

    _use_aiter = envs.SGLANG_USE_AITER.get() and is_hip()
    if is_cuda():
        from sglang.kernels.ops.quantization.per_token_group_quant import per_token_group_quant

    def silu_and_mul_masked_fwd(input, output, masked_m):
        from reference.quant import silu_and_mul_masked_fwd as ref
        return ref(input, output, masked_m)
"""
KERNELS = """
    def ep_scatter(*args):
        raise NotImplementedError
"""


def _wheel(folder, version, files):
    wheel = folder / f"sglang-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, textwrap.dedent(text))
    return wheel


def test_neighbour_file_is_extracted_loaded_with_standins_and_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    wheel = _wheel(tmp_path, "9.9.7", {KERNEL_PATHS[0]: KERNELS, NEIGHBOUR_PATHS[0]: NEIGHBOUR})
    rel = resolve(wheel=wheel)
    assert list(rel.neighbour_files) == [NEIGHBOUR_PATHS[0]]
    (path, module), = load_neighbours(rel)
    assert path == NEIGHBOUR_PATHS[0] and module._use_aiter is False
    impl = sglang_impl("", version="9.9.7")
    # the kernel file is read too (its toy ep_scatter(*args) names no parameter: unbindable)
    assert "silu_and_mul_masked_fwd" in impl.ops and "ep_scatter" in impl.unbindable
    p = CaseParams(op="silu_and_mul_masked_fwd", dtype="bfloat16", **CASE)
    assert run_case(SPECS[p.op], impl.candidate(p.op), p, "cpu").status == "passed"
    # a cache folder extracted before the neighbours existed is redone from its own wheel
    record = rel.folder / "release.json"
    record.write_text(record.read_text().replace('"extracted_for"', '"old_key"'))
    shutil.rmtree(rel.folder / "files" / "sglang" / "kernels" / "ops" / "quantization")
    assert list(resolve("9.9.7").neighbour_files) == [NEIGHBOUR_PATHS[0]]


def test_neighbour_standins_are_listed_and_raise_naming_themselves():
    utils = standins.standin_module("sglang.srt.utils")
    assert [utils.ceil_align(x, 4) for x in (0, 1, 4, 5)] == [0, 4, 4, 8] and utils.is_hip() is False
    assert standins.standin_module("sglang.srt.environ").envs.SGLANG_USE_AITER.get() is False
    for module, name in (("sglang.kernels.ops.quantization.per_token_group_quant", "per_token_group_quant"),
                         ("sglang.kernels.jit.utils", "is_arch_support_pdl")):
        with pytest.raises(standins.StandInError, match=name):
            getattr(standins.standin_module(module), name)()


WHEELS = sorted(glob.glob(os.path.expanduser("~/.cache/moe-kernel-harness/sglang/0.5.23/sglang-0.5.23-*.whl")))


@pytest.mark.skipif(not WHEELS, reason="SGLang 0.5.23's wheel is not in the user's cache")
def test_sglang_0_5_23_binds_every_quant_op_unmodified(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    resolve(wheel=WHEELS[0])
    impl = sglang_impl("", version="0.5.23")
    assert set(OPS) <= set(impl.ops), {op: impl.notes.get(op) for op in OPS}
    for op, dtype in (("sglang_per_token_group_quant_fp8", "tma_aligned"),
                      ("silu_and_mul_masked_post_quant_packed_fwd", "swiglu")):
        p = CaseParams(op=op, dtype=dtype, tokens=3, topk=2, experts=4, start_expert=1, end_expert=2, hidden=7,
                       inter=5, seed=1)
        result = run_case(SPECS[op], impl.candidate(op), p, "cpu", impl_name=impl.name)
        assert result.status == "passed", result.message
