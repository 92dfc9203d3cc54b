"""harness.machine_limits: a candidate's error that says what this machine lacks (CUDA, a package)
is no verdict, and every other error stays the candidate's failure. Found with SGLang 0.5.23 on
the CPU: three of its ops failed there only because the file asserts CUDA tensors, binds a name
only on CUDA builds, or imports DeepGEMM."""
import sys
import textwrap

import pytest
import torch

from harness import machine_limits
from harness.cases import CaseParams
from harness.loader import load_file_module
from harness.row_check import row_note
from harness.runner import Candidate, run_case
from harness.specs import SPECS

FILE = '''
import torch
_is_cuda = torch.cuda.is_available()
if _is_cuda:
    from torch import add as cuda_only_add

def asserts_cuda(x):
    assert x.is_cuda
    return x

def asserts_cuda_over_lines(x):
    assert (
        x.device.type == "cuda"
    ), "needs a GPU"
    return x

def asserts_shape(x):
    assert x.ndim == 5
    return x

def uses_cuda_only_name(x):
    return cuda_only_add(x, x)

def uses_undefined_name(x):
    return never_defined(x)

def imports_missing_package(x):
    import no_such_package_for_the_harness.sub  # noqa: F401
    return x

def imports_missing_submodule(x):
    import torch.no_such_submodule  # noqa: F401
    return x

def imports_missing_sglang(x):
    import sglang.no_such_module  # noqa: F401
    return x
'''


@pytest.fixture
def kernel_file(tmp_path):
    path = tmp_path / "kernel_file_for_limits.py"
    path.write_text(textwrap.dedent(FILE))
    yield load_file_module("kernel_file_for_limits", str(path))
    sys.modules.pop("kernel_file_for_limits", None)


def _limit(fn):
    """machine_limit of what ``fn`` raises."""
    try:
        fn(torch.ones(2))
    except Exception as exc:
        return machine_limits.machine_limit(exc)
    raise AssertionError(f"{fn.__name__} did not raise")


def test_what_this_machine_lacks_is_named_and_the_candidates_own_errors_are_not(kernel_file, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "asserts a CUDA tensor (kernel_file_for_limits.py, line" in _limit(kernel_file.asserts_cuda)
    assert "asserts a CUDA tensor" in _limit(kernel_file.asserts_cuda_over_lines)
    assert "binds 'cuda_only_add' only when CUDA is present" in _limit(kernel_file.uses_cuda_only_name)
    assert "'no_such_package_for_the_harness'" in _limit(kernel_file.imports_missing_package)
    assert machine_limits.machine_limit(RuntimeError("Torch not compiled with CUDA enabled")) == \
        "a GPU: the candidate's host code needs CUDA"   # torch's own, from the candidate's host code
    # the candidate's own faults: an assertion on anything else, a name it never binds, a module
    # missing from a package that is installed, a name of sglang the stand-ins do not serve
    assert _limit(kernel_file.asserts_shape) is None
    assert _limit(kernel_file.uses_undefined_name) is None
    assert _limit(kernel_file.imports_missing_submodule) is None
    assert machine_limits.machine_limit(RuntimeError("CUDA error: an illegal memory access was encountered")) is None
    with pytest.raises(ImportError) as err:
        kernel_file.imports_missing_sglang(torch.ones(2))
    assert machine_limits.machine_limit(err.value) is None


def test_on_a_machine_with_cuda_a_cuda_requirement_is_the_candidates_failure(kernel_file, monkeypatch):
    """There the inputs are CUDA tensors and the CUDA names bound: such an error is a real fault."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _limit(kernel_file.asserts_cuda) is None
    assert _limit(kernel_file.uses_cuda_only_name) is None
    assert "'no_such_package_for_the_harness'" in _limit(kernel_file.imports_missing_package)


def test_a_case_the_machine_cannot_run_gets_no_verdict_and_the_row_says_why(kernel_file, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = SPECS["silu_and_mul"]
    p = CaseParams(op="silu_and_mul", dtype="float32", tokens=4, topk=2, experts=4, start_expert=0, end_expert=3,
                   hidden=8, inter=8, seed=1)

    def needs_gpu(gateup_output, *args):
        kernel_file.asserts_cuda(gateup_output)

    def wrong_shape(gateup_output, *args):
        kernel_file.asserts_shape(gateup_output)
    res = run_case(spec, Candidate(needs_gpu), p, device, "x")
    assert res.status == "not computable" and res.ok, res.message
    assert res.message.startswith("not computable without a GPU: the candidate asserts a CUDA tensor")
    res = run_case(spec, Candidate(wrong_shape), p, device, "x")
    assert not res.ok and res.probe == "exception"
    assert row_note(dict(not_computable=3, not_computable_reason="not computable without X"), 3) == \
        "3 case(s) not computable without X"
