"""SGLang as released: harness/sglang/ (release.py, standins.py, bind.py) and its use through
``--impl sglang==VERSION`` / ``sglang:PATH``.

Contracts checked:
- the stand-ins behave as the table in standins.py says (faithful ones compute what SGLang's
  names compute; the others raise naming themselves); a kernel file's ``sglang.*`` imports,
  at load time and inside functions called later, are served without the sglang package and
  without touching sys.modules; an import the stand-ins do not cover is an ImportError
  naming it;
- binding by signature: names, ``_ptr`` stems, aliases, neutral values, defaults left alone,
  parameters an Autotuner supplies left to it, conventions; a required parameter nothing
  supplies is ``Unbindable`` naming it, before any call; an argument the callable cannot
  honour raises ``NotSupported``; the records' release knowledge (aliases, neutral values,
  conventions) names only the ops' real arguments;
- release.py: wheel names, the cache (a registered wheel is found again by version without
  pip), a wheel without the kernel file, and pip's failure (a clear error suggesting
  --sglang-wheel) with no index;
- with the package index (skipped, with the reason, when it cannot be reached; set
  MOE_HARNESS_REQUIRE_INDEX=1 to fail instead): real release wheels, downloaded at most once
  per run into the user's cache, load, bind and pass the ops they should on this backend
  (0.4.6.post1, the block fp8 GEMM with the stand-in quantiser), bind with their new
  parameters' neutral values (0.4.10.post2, also through ``python -m harness check``; without
  the GEMM's knowledge its scale_a assertion fires and its input is freed), and 0.5.5's
  conventions (local expert ids, seg_indptr below each expert) bind, with its post_reorder
  caught dropping local expert 0.
"""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.check import run_check
from harness.impls import load_implementation, parse_source
from harness.options import CheckOptions, OptionError
from harness.row_check import check_one
from harness.sglang import standins
from harness.sglang.bind import (Binding, Convention, Neutral, NotSupported, OpBinding, Unbindable, bind_op,
                                  op_binding, read_target)
from harness.sglang.release import (KERNEL_PATHS, ReleaseError, cache_root, load_kernel_file, load_release, resolve,
                                    wheel_version)
from harness.specs import SPECS
from harness.status import NOT_PROVIDED, UNBINDABLE
from tests.helpers import TOY_KERNELS, toy_wheel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGLANG_INSTALLED = importlib.util.find_spec("sglang") is not None


@pytest.fixture
def backend(request):
    return getattr(request.config, "moe_backend", None) or "interpreter"


def _args(impls, ops, dtypes, cases=2, **kw):
    fields = dict(impls=impls, ops=ops, dtypes=dtypes, cases=cases, shrink=False, quiet=True, isolate=False)
    fields.update(kw)
    return CheckOptions(**fields)


def _sglang_ops():
    return [op for op, record in SPECS.items() if record.sglang is not None]


# The EP layer's ops of SGLang 0.4.x (the fixture file and 0.4.6.post1 define all of them).
EP_OPS = ("ep_preprocess", "deepep_preprocess", "pre_reorder", "silu_and_mul", "gelu_and_mul", "post_reorder",
          "grouped_gemm")


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


# ----------------------------------------------------------------------------- stand-ins

def test_standins_compute_what_sglang_names_compute(monkeypatch):
    utils = standins.standin_module("sglang.srt.utils")
    assert utils.is_cuda() == bool(torch.cuda.is_available() and torch.version.cuda is not None)
    assert utils.is_musa() is False
    assert [utils.ceil_div(x, 4) for x in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert standins.standin_module("sglang.math_utils").ceil_div(9, 4) == 3
    t = torch.ones(6)
    utils.dispose_tensor(t)
    assert t.numel() == 0 and t.dtype == torch.float32
    is_in_ci = standins.standin_module("sglang.utils").is_in_ci
    monkeypatch.setenv("SGLANG_IS_IN_CI", "true")
    assert is_in_ci() is True
    monkeypatch.setenv("SGLANG_IS_IN_CI", "0")
    assert is_in_ci() is False


@pytest.mark.parametrize("module", ["sglang.srt.layers.quantization.fp8_kernel",
                                    "sglang.kernels.ops.quantization.fp8_kernel"])
def test_standin_quantiser_matches_the_reference_and_keeps_sglangs_preconditions(module):
    from reference.gemm import per_token_group_quant_fp8 as reference_quant
    mod = standins.standin_module(module)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1)) * 3
    x[2, :128] = 0  # an all-zero group: the eps floor
    for name in ("per_token_group_quant_fp8", "sglang_per_token_group_quant_fp8"):
        q, s = getattr(mod, name)(x, 128)
        rq, rs = reference_quant(x, 128)
        assert s.shape == (5, 2) and torch.equal(s, rs)
        assert q.dtype == torch.float8_e4m3fn and torch.equal(q.float(), rq.float())
    with pytest.raises(AssertionError, match="not a multiple of group_size"):
        mod.per_token_group_quant_fp8(torch.zeros(2, 100), 128)
    with pytest.raises(standins.StandInError, match="column_major_scales=True"):
        mod.per_token_group_quant_fp8(x, 128, 1e-10, True)


def test_standins_that_cannot_be_faithful_raise_naming_themselves():
    rank = standins.standin_module("sglang.srt.distributed").get_tensor_model_parallel_rank
    with pytest.raises(standins.StandInError, match="get_tensor_model_parallel_rank"):
        rank()
    envs = standins.standin_module("sglang.srt.environ").envs
    with pytest.raises(standins.StandInError, match="SGLANG_SOME_OTHER_SETTING"):
        envs.SGLANG_SOME_OTHER_SETTING.get()
    assert envs.SGLANG_OPT_DG_MASKED_M_CAP.get() is False   # read by 0.5.23's masked preprocess: its default


@pytest.mark.skipif(SGLANG_INSTALLED, reason="the sglang package is installed: uncovered imports go to it")
def test_kernel_file_imports_are_served_by_the_standins_without_the_package(tmp_path):
    path = _write(tmp_path / "uses_sglang.py", """
        import sglang.srt.utils
        from sglang.srt.utils import ceil_div, is_cuda
        from sglang.srt.layers.quantization.fp8_kernel import sglang_per_token_group_quant_fp8 as quant

        CUDA = is_cuda()

        def later():
            from sglang.srt.layers import moe_runner  # not stood in for
            return moe_runner

        def later_name():
            from sglang.srt.utils import get_device_name  # not stood in for
            return get_device_name
        """)
    before = {m for m in sys.modules if m == "sglang" or m.startswith("sglang.")}
    mod = load_kernel_file(path)
    assert mod.ceil_div(7, 2) == 4 and mod.CUDA == standins.is_cuda()
    assert mod.quant is standins.per_token_group_quant_fp8
    assert mod.sglang.srt.utils is standins.standin_module("sglang.srt.utils")
    with pytest.raises(ImportError, match="moe_runner from sglang.srt.layers"):
        mod.later()
    with pytest.raises(ImportError, match=r"get_device_name from sglang.srt.utils: .*its stand-in provides ceil_align, "
                                          r"ceil_div, dispose_tensor, is_cuda, is_hip, is_musa, is_xpu"):
        mod.later_name()
    assert {m for m in sys.modules if m == "sglang" or m.startswith("sglang.")} == before
    assert load_kernel_file(path) is mod  # cached by path


# ----------------------------------------------------------------------------- binding

KERNELS = """
    import triton
    import triton.language as tl

    CALLS = []

    @triton.jit
    def renamed(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr = 3):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, tl.load(x_ptr + i, mask=i < n) * scale + FLAG, mask=i < n)

    @triton.autotune(configs=[triton.Config({"BLOCK": 4})], key=["n"])
    @triton.jit
    def tuned(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + i, tl.load(x_ptr + i, mask=i < n) * scale, mask=i < n)

    @triton.jit
    def mystery(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr, mystery_flag: tl.constexpr):
        pass

    def function(x, n, new_mode, scale=2.0, *rest, **extra):
        CALLS.append((new_mode, scale))
        return x[:n] * scale
    """


def _toy():
    """A toy op 'scale' (x, out, n, scale, BLOCK_SIZE) with an alias, a neutral value and a convention."""
    return OpBinding(
        args=("x", "out", "n", "scale", "BLOCK_SIZE"), defaults={"BLOCK_SIZE": 8}, grid=lambda v: (-(-v["n"] // 4),),
        aliases={"BLOCK": "BLOCK_SIZE"}, neutral={"new_mode": Neutral("off", "9.9", "off keeps the old meaning")},
        conventions=(Convention("doubled", applies=lambda t: "new_mode" in t.param_names,
                                args={"scale": lambda v: v["scale"] * 2}, consumes=("out", "scale"),
                                result=lambda ret, v: ret + 1),))


def test_binding_by_name_stem_alias_and_default(tmp_path, backend):
    mod = load_kernel_file(_write(tmp_path / "k.py", KERNELS))
    bound = bind_op("scale", mod.renamed, _toy())
    assert isinstance(bound, Binding)
    assert [(s.parameter, s.source) for s in bound.steps] == [
        ("x_ptr", "x"), ("out_ptr", "out"), ("n", "n"), ("scale", "scale"), ("BLOCK", "BLOCK_SIZE")]  # FLAG: default
    device = "cuda" if backend == "cuda" else "cpu"
    x, out = torch.arange(6.0, device=device), torch.zeros(6, device=device)
    assert bound(x, out, 6, 0.5, 4) is None  # a kernel launch returns nothing
    assert torch.equal(out.cpu(), torch.arange(6.0) * 0.5 + 3)
    out.zero_()
    bound(x, out, 0, 0.5)  # empty grid: not launched (BLOCK_SIZE from the table's defaults)
    assert not out.any()


def test_binding_leaves_autotuned_parameters_to_the_autotuner(tmp_path, backend):
    mod = load_kernel_file(_write(tmp_path / "k.py", KERNELS))
    target = read_target(mod.tuned)
    assert target.is_kernel and "BLOCK" in target.supplied
    bound = bind_op("scale", mod.tuned, _toy())
    assert [s.parameter for s in bound.steps] == ["x_ptr", "out_ptr", "n", "scale"]
    device = "cuda" if backend == "cuda" else "cpu"
    x, out = torch.arange(6.0, device=device), torch.zeros(6, device=device)
    bound(x, out, 6, 3.0)
    assert torch.equal(out.cpu(), torch.arange(6.0) * 3)


def test_neutral_values_and_conventions_apply_to_functions(tmp_path):
    mod = load_kernel_file(_write(tmp_path / "k.py", KERNELS))
    bound = bind_op("scale", mod.function, _toy())
    assert [(s.parameter, s.source) for s in bound.steps] == [
        ("x", "x"), ("n", "n"), ("new_mode", "neutral"), ("scale", "doubled")]
    assert [c.name for c in bound.conventions] == ["doubled"]
    out = bound(torch.ones(4), None, 3, 1.5)
    assert mod.CALLS[-1] == ("off", 3.0) and torch.equal(out, torch.full((3,), 4.0))


def test_unknown_required_parameter_is_unbindable_before_any_call(tmp_path):
    mod = load_kernel_file(_write(tmp_path / "k.py", KERNELS))
    result = bind_op("scale", mod.mystery, _toy())
    assert isinstance(result, Unbindable)
    assert (result.parameter, result.op, result.target) == ("mystery_flag", "scale", "mystery")
    assert "mystery_flag" in str(result) and "required" in result.reason


def test_an_argument_the_callable_cannot_honour_raises_not_supported(tmp_path):
    mod = load_kernel_file(_write(tmp_path / "k.py", KERNELS))
    bound = bind_op("scale", mod.function, OpBinding(args=("x", "n", "new_mode", "block_shape"),
                                                     defaults={"block_shape": None}))
    assert bound.unused == ("block_shape",)
    assert torch.equal(bound(torch.ones(3), 2, "on", None), torch.full((2,), 2.0))  # None: nothing to honour
    with pytest.raises(NotSupported, match=r"no parameter for scale's argument block_shape \(given \[128, 128\]\)"):
        bound(torch.ones(3), 2, "on", [128, 128])
    # a required argument of the op that the callable lacks: unbindable before any call
    lacking = bind_op("scale", mod.function, OpBinding(args=("x", "n", "new_mode", "valid_counts")))
    assert isinstance(lacking, Unbindable) and lacking.missing and lacking.parameter == "valid_counts"
    assert "has no parameter for scale's argument 'valid_counts'" in str(lacking)


def test_records_release_knowledge_names_the_ops_real_arguments():
    """What the records' conventions consume and their aliases point to are the op's arguments
    (the reference's parameters, which the harness passes in that order); a neutral value is
    for a parameter the op lacks. The knowledge the inventory found is where it belongs."""
    import inspect
    for op in _sglang_ops():
        b = op_binding(SPECS[op])
        assert b.args == tuple(inspect.signature(SPECS[op].reference).parameters), op
        assert set(b.aliases.values()) <= set(b.args), op
        assert {a for c in b.conventions for a in c.consumes} <= set(b.args), op
        assert not set(b.neutral) & set(b.args), op
    knowledge = {op: (sorted(op_binding(SPECS[op]).neutral), [c.name for c in op_binding(SPECS[op]).conventions])
                 for op in _sglang_ops()}
    assert knowledge["pre_reorder"] == (["use_per_token_if_dynamic"], [])
    assert knowledge["post_reorder"] == (["dst_start"], ["local expert ids"])
    assert knowledge["grouped_gemm"] == (["use_per_token_if_dynamic"], ["frees a"])
    assert knowledge["ep_preprocess"] == ([], ["seg_indptr counts ids below each expert"])
    composed = [op for op in SPECS if SPECS[op].sglang is None]
    with pytest.raises(ValueError, match="no SGLang binding"):
        op_binding(SPECS[composed[0]])


def test_unbindable_op_is_an_unbindable_row_naming_the_parameter(tmp_path, backend):
    path = _write(tmp_path / "kernels_with_a_new_parameter.py", """
        import triton
        import triton.language as tl

        @triton.jit
        def pre_reorder_triton_kernel(input_ptr, gateup_input_ptr, src2dst_ptr, topk_ids_ptr, a1_scales_ptr,
                                      start_expert_id, end_expert_id, topk, hidden_size, BLOCK_SIZE: tl.constexpr,
                                      brand_new_switch: tl.constexpr):
            tl.device_assert(False, "never launched")
        """)
    impl = load_implementation(f"sglang:{path}")
    assert "pre_reorder" not in impl.ops and impl.unbindable == {"pre_reorder"}
    row = check_one(_args([f"sglang:{path}"], ["pre_reorder"], ["float32"]), backend, impl, f"sglang:{path}",
                    "pre_reorder", "float32")
    assert row.status == UNBINDABLE and row.run == 0
    assert "brand_new_switch" in row.reason and "pre_reorder_triton_kernel" in row.reason


def test_sglang_style_file_binds_by_signature():
    impl = load_implementation(f"sglang:{os.path.join(ROOT, 'tests', 'fixtures', 'sglang_style_kernels.py')}")
    for op in EP_OPS:
        assert isinstance(impl.ops[op], Binding), op
    assert impl.ops["pre_reorder"].target.is_kernel and not impl.ops["grouped_gemm"].target.is_kernel


# ----------------------------------------------------------------------------- release.py, offline

def test_wheel_names_and_versions():
    assert wheel_version("/x/sglang-0.4.10.post2-py3-none-any.whl") == "0.4.10.post2"
    assert wheel_version("sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl") == "0.5.23"
    for bad in ("sgl_kernel-0.1-py3-none-any.whl", "sglang-0.4.6.tar.gz", "sglang-..%2f-py3-none-any.whl"):
        with pytest.raises(ReleaseError, match="expected an sglang wheel|expected a release version"):
            wheel_version(bad)
    for bad in ("sglang==latest", "sglang==../../x", "sglang=="):
        with pytest.raises(ValueError, match="expected a release version"):
            parse_source(bad)
    assert parse_source("sglang==0.4.6.post1")[0].target == "0.4.6.post1"


def test_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "moe-kernel-harness" / "sglang"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == type(tmp_path)(os.path.expanduser("~")) / ".cache" / "moe-kernel-harness" / "sglang"


def test_registered_wheel_is_found_again_by_version_without_pip(tmp_path, monkeypatch, backend):
    import harness.sglang.release as release
    wheel = toy_wheel(tmp_path)
    root = tmp_path / "cache"
    rel = resolve(wheel=wheel, root=root)
    assert (rel.version, rel.kernel_path) == ("9.9.9", KERNEL_PATHS[1])
    assert rel.kernel_file.read_text() == textwrap.dedent(TOY_KERNELS) and rel.wheel.is_file()

    def no_pip(*_a, **_k):
        raise AssertionError("pip must not run for a cached release")
    monkeypatch.setattr(release, "fetch_wheel", no_pip)
    again = resolve("9.9.9", root=root)
    assert again.kernel_file == rel.kernel_file
    mod = load_release(again)
    ids = torch.tensor([[2, 0], [1, 2]], dtype=torch.int32)
    assert mod.run_moe_ep_preproess(ids, 3)[2].tolist() == [0, 1, 2, 4]
    with pytest.raises(ReleaseError, match="holds sglang 9.9.9, not the requested 1.0"):
        resolve("1.0", wheel=wheel, root=root)


def test_check_takes_a_release_from_sglang_wheel(tmp_path, monkeypatch, backend):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    wheel = toy_wheel(tmp_path, version="9.9.8", path=KERNEL_PATHS[0])
    rows = run_check(_args(["sglang==9.9.8"], ["ep_preprocess", "pre_reorder"], ["int32", "float32"],
                           sglang_wheels=[str(wheel)]), backend)
    assert [(r.op, r.impl, r.status) for r in rows] == [("ep_preprocess", "sglang==9.9.8", "passed"),
                                                        ("pre_reorder", "sglang==9.9.8", NOT_PROVIDED)]
    assert KERNEL_PATHS[0] in rows[1].reason and "pre_reorder_triton_kernel" in rows[1].reason


def test_sglang_wheel_option_names_a_bad_wheel(tmp_path):
    with pytest.raises(OptionError, match=r"--sglang-wheel: expected an sglang wheel file, got .*: no such file"):
        _args(["ours"], ["pre_reorder"], ["float32"], sglang_wheels=[str(tmp_path / "sglang-1.0-py3-none-any.whl")])
    other = tmp_path / "torch-2.0-py3-none-any.whl"
    other.write_bytes(b"")
    with pytest.raises(OptionError, match=r"--sglang-wheel: expected an sglang wheel file named"):
        _args(["ours"], ["pre_reorder"], ["float32"], sglang_wheels=[str(other)])


def test_wheel_without_the_kernel_file_is_a_clear_error(tmp_path):
    wheel = toy_wheel(tmp_path, path="sglang/srt/other.py")
    with pytest.raises(ReleaseError, match=r"sglang==9.9.9 .*no EP-MoE kernel file at any of the paths"):
        resolve(wheel=wheel, root=tmp_path / "cache")
    with pytest.raises(ReleaseError, match="no such file"):
        resolve(wheel=tmp_path / "sglang-1.0-py3-none-any.whl", root=tmp_path / "cache")


def test_failed_download_names_the_version_and_suggests_a_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")               # no index, and nothing local to find
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    with pytest.raises(ReleaseError) as info:
        resolve("0.4.6.post1", root=tmp_path / "cache")
    message = str(info.value)
    assert "sglang==0.4.6.post1: pip could not download" in message and "--sglang-wheel" in message
    assert not (tmp_path / "cache" / "0.4.6.post1").exists()


# ----------------------------------------------------------------------------- real releases

@pytest.fixture(scope="session")
def release():
    """sglang==VERSION from the user's cache, downloaded at most once; skip when the package
    index cannot be reached (fail instead when MOE_HARNESS_REQUIRE_INDEX=1)."""
    def get(version):
        try:
            return resolve(version)
        except ReleaseError as exc:
            if os.environ.get("MOE_HARNESS_REQUIRE_INDEX") == "1":
                pytest.fail(f"MOE_HARNESS_REQUIRE_INDEX=1 and {exc}")
            pytest.skip(f"the package index is not reachable (sglang=={version} could not be fetched): "
                        f"{str(exc).splitlines()[-1]}")
    return get


# What 0.4.6.post1 passes, one or two dtypes per op (the block fp8 GEMM quantises its input
# with the stand-in quantiser; the EP forward is chained from the release's pieces). Not here:
# post_reorder in bf16/fp16, where SGLang accumulates in the input dtype and the harness asks
# for float32 accumulation (FAILED, "consistent with accumulating in bfloat16").
PASSING_0_4_6 = {"ep_preprocess": ["int32"], "deepep_preprocess": ["int64"], "pre_reorder": ["fp8"],
                 "silu_and_mul": ["bfloat16"], "gelu_and_mul": ["fp8"], "post_reorder": ["float32"],
                 "grouped_gemm": ["bfloat16", "fp8_tensor", "fp8_block"], "ep_moe_forward": ["bfloat16"]}


def test_release_0_4_6_post1_loads_binds_and_passes(release, backend):
    rel = release("0.4.6.post1")
    assert rel.kernel_path == "sglang/srt/layers/moe/ep_moe/kernels.py"
    mod = load_release(rel)
    assert mod.per_token_group_quant_fp8 is standins.per_token_group_quant_fp8  # served by the stand-in
    impl = load_implementation("sglang==0.4.6.post1")
    assert set(EP_OPS) | {"ep_moe_forward"} <= set(impl.ops) and not impl.unbindable, impl.notes
    for op in EP_OPS:
        assert isinstance(impl.ops[op], Binding) and impl.ops[op].obj is getattr(mod, SPECS[op].sglang.names[0]), op
    rows = []
    for op, dtypes in PASSING_0_4_6.items():
        rows += run_check(_args(["sglang==0.4.6.post1"], [op], dtypes), backend)
    assert rows and all(r.status == "passed" and r.passed >= 2 for r in rows), \
        [(r.op, r.dtype, r.status, r.failure and r.failure["message"]) for r in rows]


def _case(op, dtype, device, **kw):
    from harness.cases import CaseParams
    params = dict(op=op, dtype=dtype, tokens=6, topk=2, experts=4, start_expert=1, end_expert=2, hidden=128,
                  inter=32, seed=3, routing="uniform", invalid_frac=0.0)
    params.update(kw)
    return SPECS[op].build(CaseParams(**params), torch.device(device)).args


def test_release_0_4_10_post2_binds_new_parameters_to_neutral_values(release, backend):
    rel = release("0.4.10.post2")
    impl = load_implementation("sglang==0.4.10.post2")
    steps = {op: {s.parameter: s.source for s in impl.ops[op].steps} for op in ("pre_reorder", "post_reorder",
                                                                                "grouped_gemm")}
    assert steps["pre_reorder"]["use_per_token_if_dynamic"] == "neutral"
    assert steps["post_reorder"]["dst_start"] == "neutral"
    assert steps["grouped_gemm"]["use_per_token_if_dynamic"] == "neutral"  # overrides its default, True
    assert [c.name for c in impl.ops["grouped_gemm"].conventions] == ["frees a"]
    assert impl.ops["post_reorder"].describe() == (
        "post_reorder_triton_kernel(down_output_ptr<-down_output, output_ptr<-output, src2dst_ptr<-src2dst, "
        "topk_ids_ptr<-topk_ids, topk_weights_ptr<-topk_weights, start_expert_id, end_expert_id, topk, hidden_size, "
        "dst_start<-neutral, BLOCK_SIZE)")
    # Without the per-release knowledge, the new parameters are unbindable, named, not a TypeError.
    mod = load_release(rel)
    for op, parameter in (("pre_reorder", "use_per_token_if_dynamic"), ("post_reorder", "dst_start")):
        unknowing = dataclasses.replace(op_binding(SPECS[op]), neutral={})
        result = bind_op(op, getattr(mod, SPECS[op].sglang.names[0]), unknowing)
        assert isinstance(result, Unbindable) and result.parameter == parameter, result
    # The GEMM's knowledge matters: its default use_per_token_if_dynamic=True wants a per-row
    # scale_a (an assertion on our per-weight one), and with block_shape it frees its input a.
    device = "cuda" if backend == "cuda" else "cpu"
    gemm = mod.grouped_gemm_triton
    args = _case("grouped_gemm", "fp8_tensor", device)
    with pytest.raises(AssertionError, match="scale_a.shape"):
        bind_op("grouped_gemm", gemm, dataclasses.replace(op_binding(SPECS["grouped_gemm"]), neutral={}))(**args)
    args = _case("grouped_gemm", "fp8_block", device)
    a = args["a"]
    bind_op("grouped_gemm", gemm, dataclasses.replace(op_binding(SPECS["grouped_gemm"]), conventions=()))(**args)
    assert a.numel() == 0  # freed
    args = _case("grouped_gemm", "fp8_block", device)
    a = args["a"]
    impl.ops["grouped_gemm"](**args)
    assert a.numel() == 128 * 6 * 2  # kept: the call got a copy
    rows = run_check(_args(["sglang==0.4.10.post2"], ["grouped_gemm"], ["fp8_tensor", "fp8_block"]), backend)
    assert [(r.dtype, r.status) for r in rows] == [("fp8_tensor", "passed"), ("fp8_block", "passed")], \
        [r.failure for r in rows]


def test_check_command_on_release_0_4_10_post2_gives_a_verdict(release, backend, tmp_path):
    release("0.4.10.post2")
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "check", "--backend", backend, "--impl",
                           "sglang==0.4.10.post2", "--op", "pre_reorder", "--cases", "5", "--quiet", "--json",
                           str(out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=600)
    rows = {r["dtype"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(SPECS["pre_reorder"].dtypes), proc.stdout[-2000:] + proc.stderr[-2000:]
    for dtype, row in rows.items():
        assert row["status"] == "passed" and row["passed"] >= 5, row
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_release_0_5_5_conventions_bind_and_its_post_reorder_drops_local_expert_0(release, backend):
    release("0.5.5")
    impl = load_implementation("sglang==0.5.5")
    assert set(impl.ops) & set(EP_OPS) == {"ep_preprocess", "deepep_preprocess", "post_reorder"}
    assert [c.name for c in impl.ops["ep_preprocess"].conventions] == ["seg_indptr counts ids below each expert"]
    assert [c.name for c in impl.ops["post_reorder"].conventions] == ["local expert ids"]
    rows = run_check(_args(["sglang==0.5.5"], ["ep_preprocess", "post_reorder"], ["int64", "float32"]), backend)
    by_op = {r.op: r for r in rows}
    assert by_op["ep_preprocess"].status == "passed", by_op["ep_preprocess"].failure
    # 0.5.3.post1 .. 0.5.12.post1 test `expert_id > 0` on local ids: local expert 0's rows are dropped.
    assert by_op["post_reorder"].status == "FAILED" and by_op["post_reorder"].failure["probe"] == "tolerance"


def test_bench_takes_a_release_from_sglang_wheel(tmp_path, monkeypatch):
    """bench registers --sglang-wheel files as check does (the GPU machine has no index)."""
    from harness.bench import _load_impls
    from harness.options import BenchOptions
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    wheel = toy_wheel(tmp_path, version="9.9.7", path=KERNEL_PATHS[0])
    with pytest.raises(OptionError, match="--sglang-wheel"):
        BenchOptions(ops=["ep_preprocess"], impls=["sglang==9.9.7"], sglang_wheels=[str(tmp_path / "none.whl")])
    impls, _, _ = _load_impls(BenchOptions(ops=["ep_preprocess"], impls=["sglang==9.9.7"], sglang_wheels=[str(wheel)]))
    assert impls[0].name == "sglang==9.9.7" and "ep_preprocess" in impls[0].ops
