"""The op records (harness/ops/) are the one place an op lives.

- Every op's name appears in at most five source files outside tests/, results/ and tools/
  (the exploration scripts): its reference, its kernel, its record with its mutants, and the
  chain that composes it; the packages export the families' ``__all__`` without naming ops.
- A new op, defined in a temporary module outside the package (reference + record + a
  stand-in Triton kernel + a mutant), is checked, fuzzed, benched and mutated through the
  ordinary commands without touching any other file.
- Every record carries the pieces the commands need (coverage: a missing piece fails here).
"""
import os
import re
import subprocess
import textwrap

import pytest

from harness import cli
from harness.ops import ENV_VAR, REGISTRY, add_op_module
from harness.specs import SPECS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_PRODUCT = ("tests/", "results/", "tools/")
MAX_FILES_PER_OP = 5


def _source_files():
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                            capture_output=True, text=True, check=True).stdout.split()
    return [f for f in listed if not f.startswith(NOT_PRODUCT) and os.path.exists(os.path.join(REPO, f))]


def files_naming(op: str, files) -> list:
    word = re.compile(rf"\b{re.escape(op)}\b")
    out = []
    for f in files:
        with open(os.path.join(REPO, f), errors="replace") as fh:
            if word.search(fh.read()):
                out.append(f)
    return out


@pytest.mark.parametrize("op", [op for op in SPECS if op in REGISTRY and not op.startswith("tmp_")])
def test_op_lives_in_at_most_five_files(op):
    files = files_naming(op, _source_files())
    assert len(files) <= MAX_FILES_PER_OP, f"{op} is named in {len(files)} source files: {files}"


def test_the_count_fires_on_an_op_named_everywhere():
    """The counter itself: a name written into more files is counted in each."""
    files = _source_files()
    assert len(files_naming("SPECS", files)) > MAX_FILES_PER_OP
    assert files_naming("no_such_op_name_anywhere", files) == []


@pytest.mark.parametrize("op", list(SPECS))
def test_record_has_every_piece(op):
    record = SPECS[op]
    assert record.outputs and record.dtypes and callable(record.reference) and callable(record.build)
    assert callable(record.cost) and record.kernel_module
    assert record.bench_anchors, f"{op}: no bench anchor, so `bench` would never time it"
    assert record.sglang is not None or record.composed_of, f"{op}: neither an SGLang binding nor a chain"


# ----------------------------------------------------------------------------- a new op from outside

NEW_OP = '''
"""A temporary op outside the package: tmp_scale_rows, out[t, :] = x[t, :] * w[t]."""
import torch
import triton
import triton.language as tl

from harness.cases import CaseParams, make_generator, randn
from harness.costs import Cost
from harness.mutants import Mutant
from harness.opspec import BenchAnchor, ErrorInput, OpSpec, OutputSpec, Sample, buffer, set_arg

OP = "tmp_scale_rows"


def reference(x, w, out):
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise TypeError(f"x: expected a 2-D tensor, got {type(x).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out: expected shape {tuple(x.shape)}, got {tuple(out.shape)}")
    out.copy_((x.double() * w.double()[:, None]).to(out.dtype))


@triton.jit
def _kernel(x_ptr, w_ptr, out_ptr, H, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    for h0 in range(0, H, BLOCK):
        m = (h0 + cols) < H
        x = tl.load(x_ptr + t * H + h0 + cols, mask=m, other=0.0)
        tl.store(out_ptr + t * H + h0 + cols, x * tl.load(w_ptr + t), mask=m)


def tmp_scale_rows(x, w, out):
    if out.shape != x.shape:
        raise ValueError(f"out: expected shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if x.shape[0]:
        _kernel[(x.shape[0],)](x, w, out, x.shape[1], BLOCK=16)


def build(p: CaseParams, device) -> Sample:
    gen = make_generator(p, device)
    x = randn((p.tokens, p.hidden), gen, torch.float32)
    w = randn((p.tokens,), gen, torch.float32)
    return Sample(p, dict(x=x, w=w, out=torch.empty_like(x)), ("x", "w", "out"), None)


RECORDS = (OpSpec(OP, reference, build, (OutputSpec("out", buffer("out"), "float", "token"),), ("float32",),
                  __file__, lambda p, a: Cost(2 * a["x"].numel() * 4, 0, "rows read and written"),
                  bench_anchors=(BenchAnchor(8, 1, 1, None, 40, 1),),
                  error_inputs=(ErrorInput("float32", set_arg("out", lambda a: a["out"][:-1]), ValueError, "out"),)),)
# the patched text is split so that this file holds it once, in the kernel
MUTANTS = (Mutant("tmp_scale_rows_tail_unmasked", OP, __file__,
                  "tl.store(out_ptr + t * H + h0 + cols, x * tl.load(w_ptr + t), " "mask=m)",
                  "tl.store(out_ptr + t * H + h0 + cols, x * tl.load(w_ptr + t))",
                  "missing tail mask on the store: columns past H spill into the next row"),)
'''


@pytest.fixture(scope="module")
def new_op(tmp_path_factory):
    path = tmp_path_factory.mktemp("newop") / "tmp_scale_rows_op.py"
    path.write_text(textwrap.dedent(NEW_OP))
    before = os.environ.get(ENV_VAR)
    add_op_module(str(path))
    yield "tmp_scale_rows"
    REGISTRY.pop("tmp_scale_rows", None)
    from harness import ops
    ops.MUTANT_CATALOGUE[:] = [m for m in ops.MUTANT_CATALOGUE if m.op != "tmp_scale_rows"]
    if before is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = before


def _run(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().out


def test_new_op_is_checked_in_child_processes(new_op, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["check", "--backend", "interpreter", "--op", new_op, "--cases", "4"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert re.search(rf"{new_op}\s+ours\s+float32\s+\d+\s+\d+\s+0\s+0 .* passed", out), out
    # a line per finished row on stderr, terminal or not (what a CI log shows while the check runs)
    assert re.search(rf"\] {new_op} \[ours, float32\]: passed, \d+ case\(s\) in", captured.err), captured.err


def test_new_op_is_benched(new_op, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = _run(["bench", "--backend", "interpreter", "--op", new_op, "--impl", "ours", "reference"], capsys)
    assert code == 0, out
    assert new_op in out and "not representative" in out


def test_new_op_mutant_is_killed(new_op, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = _run(["mutate", "--backend", "interpreter", "--op", new_op, "--cases", "6"], capsys)
    assert code == 0, out
    assert "tmp_scale_rows_tail_unmasked" in out and "KILLED" in out


def test_new_op_bad_input_is_in_the_table(new_op):
    from harness.impls import load_implementation
    from tests.test_reference_validation import valid_args
    bad = SPECS[new_op].error_inputs[0]
    with pytest.raises(bad.error, match=bad.argument):
        load_implementation("ours").ops[new_op](*bad.breaks(valid_args(new_op, "float32")).values())


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_fuzzer_draws_index_tensors_as_their_producers_emit_them(index_dtype, device):
    """SGLang's pipeline hands pre_reorder the int32 src2dst its preprocess returns (where its
    int32 offset arithmetic overflows); other producers give int64: the fuzzer draws both, and
    the built case carries topk_ids and src2dst in the drawn dtype."""
    import torch
    from hypothesis import find, settings

    from harness.fuzz import case_params
    spec = SPECS["pre_reorder"]
    p = find(case_params(spec, "bfloat16", "interpreter"), lambda c: c.index_dtype == index_dtype and c.tokens > 0,
             settings=settings(database=None, max_examples=200))
    args = spec.build(p, torch.device(device)).args
    assert args["src2dst"].dtype == args["topk_ids"].dtype == getattr(torch, index_dtype)


def test_the_suite_runs_outside_the_repository():
    """conftest's session fixture: the harness's files (moe-failures/, .hypothesis/) land in a
    temporary folder, not in the checkout."""
    assert not os.path.realpath(os.getcwd()).startswith(os.path.realpath(REPO) + os.sep)
    assert os.path.realpath(os.getcwd()) != os.path.realpath(REPO)
