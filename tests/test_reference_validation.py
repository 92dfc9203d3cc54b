"""Every class of bad input gets TypeError/ValueError naming the argument, before any work.

The table is the records' ``error_inputs`` (harness/ops/): each starts from a valid case
built by the op's record, breaks one argument, and expects the exception type and the
argument's name in the message. It runs against the references and against our launchers.
"""
import pytest
import torch

from harness.cases import CaseParams
from harness.impls import load_implementation
from harness.specs import SPECS

BAD = [(op, bad) for op, record in SPECS.items() for bad in record.error_inputs]


def valid_args(op, dtype, device="cpu", **over):
    p = CaseParams(op=op, dtype=dtype, tokens=5, topk=2, experts=6, start_expert=1, end_expert=4,
                   hidden=40, inter=24, seed=3, **over)
    return dict(SPECS[op].build(p, torch.device(device)).args)


@pytest.fixture(scope="module", params=["reference", "ours"])
def impl(request):
    return load_implementation(request.param)


@pytest.mark.parametrize("op,bad", BAD, ids=[f"{op}-{bad.id}" for op, bad in BAD])
def test_bad_input_is_rejected_naming_the_argument(op, bad, impl, device):
    args = bad.breaks(valid_args(op, bad.dtype, device))
    with pytest.raises(bad.error) as info:
        impl.ops[op](*args.values())
    assert bad.argument in str(info.value), str(info.value)


def test_every_op_has_bad_inputs():
    """A record without error inputs would make the table above silently smaller."""
    assert {op for op, _ in BAD} == set(SPECS)


@pytest.mark.parametrize("op,dtype", [(op, d) for op, s in SPECS.items() for d in s.dtypes
                                      if any(b.dtype == d for b in s.error_inputs)])
def test_valid_args_are_accepted(op, dtype, impl, device):
    """The table is only meaningful if the unbroken case passes validation: the call returns
    without raising, and every output the record names is a tensor (None where the reference
    returns None: an output this dtype does not have, e.g. the scales of a bf16 copy)."""
    if SPECS[op].skip_reason("interpreter" if device == "cpu" else "cuda", dtype):
        pytest.skip(SPECS[op].skip_reason("interpreter" if device == "cpu" else "cuda", dtype))
    ref_args = valid_args(op, dtype, device)
    ref_returned = SPECS[op].reference(*ref_args.values())
    args = valid_args(op, dtype, device)
    returned = impl.ops[op](*args.values())
    for out in SPECS[op].outputs:
        expected = out.where.fetch(ref_args, ref_returned)
        got = out.where.fetch(args, returned)
        assert isinstance(got, torch.Tensor) if expected is not None else got is None, out.name
