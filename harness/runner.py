"""Run one case of one op against one implementation, with every memory probe.

Per case: build the inputs from the parameters; evaluate the reference twice (in the
case's dtypes, and in float64 for float outputs); then call the candidate twice, each time
with freshly poisoned output buffers framed by poisoned guard rows and with fresh
allocations inside the candidate poisoned too. A case fails on the first probe that fires:

  exception         the candidate raised
  input_modified    an input tensor changed (compared bit for bit with a snapshot); inputs the
                    record declares rewritten in place (opspec.in_place) are instead passed as a
                    guarded copy per call and compared as outputs
  guard             a guard row before or after an output buffer changed (out-of-bounds write)
  untouched         an element the contract leaves alone was written
  unwritten         an element the contract defines still holds its poison
  exact             an integer output or a pure copy differs from the reference
  order_free        src2dst breaks the invariants (for implementations whose order is free), or
                    a "row_index" output is no within-expert permutation (harness.canonical)
  tolerance         a float output is further from the float64 reference than the rule allows
  nondeterministic  the two runs gave different bits
  graph             (GPU, ops whose record says capturable) the call could not be captured in
                    a CUDA graph, or the graph replayed on new inputs gave a wrong answer (and
                    on each of the record's graph_variants, e.g. other device-held token counts)

Two more probes act on every call rather than on outputs: ``fresh_poison`` fills the
candidate's own fresh allocations (torch.empty & co.) with poison, so a read of scratch it
never wrote is a deterministic failure, not a lucky zero; ``decoy`` calls the candidate once,
before the two runs, on a decoy: the same case with another seed (same shapes, other values
and routing). An implementation that returns a result cached from an earlier call (memoised
on shapes, a static buffer handed out again) then fails on the very first case instead of
only when a sweep happens to repeat a shape; its failure message says when the outputs are
bit for bit the decoy's (right) answer.

Every probe can be switched off (``probes_switched_off``), for the harness's own tests: each
probe has a test that a planted bug fails with that probe on and gets past it with it off.

A float output over its tolerance is also checked against the precision a kernel may have
used instead: TF32 operands for a float32 matrix product (reported as passing at TF32
precision unless IEEE float32 is required), or partial sums kept in a 16-bit dtype (still a
failure, named as such with its distance from the float32-accumulation bound).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from .canonical import OrderFreeViolation, canonicalise
from .sglang.bind import NotSupported
from .cases import CaseParams
from .specs import SPECS, OpSpec, OutputSpec, Sample
from .status import CASE_FAILED, CASE_NOT_COMPUTABLE, CASE_PASSED, CASE_REJECTED, CASE_SKIPPED
from .supervise import is_device_fault
from .machine_limits import machine_limit, needs_cuda
from .tolerance import UNIT_ROUNDOFF, compare_float, norm_bound

GUARD_ROWS = 3
PROBES = ("exception", "input_modified", "guard", "untouched", "unwritten", "exact", "order_free", "tolerance",
          "nondeterministic", "graph", "fresh_poison", "decoy")
_SWITCHED_OFF: set = set()
INT_POISON = {torch.int32: -0x5A5A5A5A, torch.int64: -0x5A5A5A5A5A5A5A5A}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case (JSON-safe)."""

    op: str
    impl: str
    dtype: str
    params: str              # CaseParams.to_json()
    status: str              # CASE_PASSED | CASE_FAILED | CASE_REJECTED | CASE_SKIPPED | CASE_CRASHED
    probe: Optional[str] = None
    message: str = ""
    details: Dict[str, Any] = field(default_factory=dict)
    graph: str = ""          # the graph probe: "" not run, GRAPH_REPLAYED, or "skipped: why"

    @property
    def ok(self) -> bool:
        return self.status in (CASE_PASSED, CASE_SKIPPED, CASE_REJECTED, CASE_NOT_COMPUTABLE)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class ProbeFailure(Exception):
    def __init__(self, probe: str, message: str, details: Optional[dict] = None):
        super().__init__(message)
        self.probe, self.message, self.details = probe, message, details or {}


@contextlib.contextmanager
def probes_switched_off(*probes: str):
    """Run with these probes off (see the module docstring); for the harness's own tests."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"probes_switched_off: expected probes among {PROBES}, got {unknown}")
    added = set(probes) - _SWITCHED_OFF
    _SWITCHED_OFF.update(added)
    try:
        yield
    finally:
        _SWITCHED_OFF.difference_update(added)


def _on(probe: str) -> bool:
    return probe not in _SWITCHED_OFF


# ----------------------------------------------------------------------------- poison

# NaNs with a payload no arithmetic produces (a kernel's own NaN is 0x7FC0.. or its sign flip),
# so that "still holds the poison" and "wrote a NaN" are told apart; fp8 e4m3 has one NaN.
NAN_POISON_BITS = {torch.float64: 0x7FF5A5A5A5A5A5A5, torch.float32: 0x7FA5A5A5, torch.float16: 0x7D5A,
                   torch.bfloat16: 0x7FA5, torch.float8_e4m3fn: 0x7F}


def fill_poison(t: torch.Tensor) -> torch.Tensor:
    """A NaN with a distinct payload for floats (NAN_POISON_BITS), a fixed sentinel for integers."""
    if t.is_floating_point():
        bits = NAN_POISON_BITS[t.dtype]
        view = _INT_VIEW[t.element_size()]
        signed = bits - (1 << (8 * t.element_size())) if bits >= 1 << (8 * t.element_size() - 1) else bits
        t.view(view).fill_(signed)
    else:
        t.fill_(INT_POISON.get(t.dtype, -1))
    return t


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """Same bytes, seen as integers of the same width (bit-exact, NaN-aware comparison)."""
    if not t.is_floating_point():
        return t
    return t.contiguous().view(_INT_VIEW[t.element_size()])


def poison_bits(dtype: torch.dtype, device) -> torch.Tensor:
    return as_bits(fill_poison(torch.empty(1, dtype=dtype, device=device)))[0]


def guarded_copy(values: torch.Tensor):
    """guarded_buffer holding a copy of ``values`` (an input the op rewrites in place)."""
    storage, view = guarded_buffer(values)
    view.copy_(values)
    return storage, view


def _guard_args(spec: OpSpec, args: Dict[str, Any]):
    """The call's arguments with every output buffer replaced by a fresh guarded, poisoned one
    and every in-place input by a guarded copy; (call args, guard storages by name)."""
    call_args = dict(args)
    storages = {}
    for name in spec.output_buffers:
        storages[name], call_args[name] = guarded_buffer(args[name])
    for name in spec.in_place_args:
        storages[name], call_args[name] = guarded_copy(args[name])
    return call_args, storages


def guarded_buffer(like: torch.Tensor):
    """A poisoned copy-shaped buffer with GUARD_ROWS poisoned rows before and after it.

    Returns (storage [R + 2G, ...], view [R, ...]); the view is contiguous.
    """
    storage = torch.empty((like.shape[0] + 2 * GUARD_ROWS,) + tuple(like.shape[1:]), dtype=like.dtype,
                          device=like.device)
    fill_poison(storage)
    return storage, storage[GUARD_ROWS:GUARD_ROWS + like.shape[0]]


@contextlib.contextmanager
def poisoned_fresh_allocations():
    """torch.empty & co. return NaN / max-int filled memory while active (PyTorch's
    deterministic mode with fill_uninitialized_memory), so reads of unwritten scratch are
    deterministic failures instead of lucky zeros."""
    import torch.utils.deterministic as det
    # set_deterministic_debug_mode("warn") is use_deterministic_algorithms(True, warn_only=True)
    # without its import of torch._inductor (seconds per fresh process, for nothing here).
    prev = (torch.get_deterministic_debug_mode(), det.fill_uninitialized_memory)
    torch.set_deterministic_debug_mode("warn")
    det.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_deterministic_debug_mode(prev[0])
        det.fill_uninitialized_memory = prev[1]


# ----------------------------------------------------------------------------- calling

def _call(fn: Callable, sample: Sample, spec: OpSpec, args: Dict[str, Any], poison_fresh: bool):
    """Call fn on args with every output buffer replaced by a fresh guarded, poisoned one (and
    every in-place input by a guarded copy of its values).

    Returns (outputs by name, guard storages by name)."""
    call_args, storages = _guard_args(spec, args)
    ctx = poisoned_fresh_allocations() if poison_fresh and _on("fresh_poison") else contextlib.nullcontext()
    with ctx:
        ret = fn(*call_args.values())
        if any(isinstance(v, torch.Tensor) and v.is_cuda for v in args.values()):
            torch.cuda.synchronize()
    if not isinstance(ret, (tuple, list)):
        ret = (ret,)
    outputs = {o.name: o.where.fetch(call_args, ret) for o in spec.outputs}
    return outputs, storages


def _float64_args(sample: Sample, abs_values: bool = False) -> Dict[str, Any]:
    """The case's args with float64_args upcast (and, for magnitudes, every float made |x|)."""
    out = {}
    for k, v in sample.args.items():
        if isinstance(v, torch.Tensor) and k in sample.float64_args:
            v = v.double()
        if abs_values and isinstance(v, torch.Tensor) and v.is_floating_point():
            v = (v.view(torch.uint8) & 0x7F).view(v.dtype) if v.dtype == torch.float8_e4m3fn else v.abs()
        out[k] = v
    return out


# ----------------------------------------------------------------------------- locating

def locate(sample: Sample, out: OutputSpec, shape, flat_index: int) -> Dict[str, int]:
    """Map a flat element index of an output to row/col and token, slot, expert (and what the
    op's record adds: the GEMM's group and weight)."""
    cols = 1
    for s in shape[1:]:
        cols *= s
    row, col = divmod(flat_index, cols) if len(shape) > 1 else (flat_index, 0)
    where: Dict[str, int] = {"row": row, "col": col}
    K = sample.params.topk
    slot = None
    if out.rows == "position" and sample.position_to_slot is not None and row < sample.position_to_slot.numel():
        slot = int(sample.position_to_slot[row])
    elif out.rows == "slot":
        slot = row
    elif out.rows == "token":
        where["token"] = row
    elif out.rows == "expert":
        where["expert"] = row
    if slot is not None and slot >= 0:
        where.update(slot=slot, token=slot // K, k=slot % K)
        if sample.topk_ids is not None:
            where["expert"] = int(sample.topk_ids.reshape(-1)[slot])
    record = SPECS.get(sample.params.op)
    if record is not None and record.row_context is not None:
        where.update(record.row_context(sample, row))
    return where


def _mismatch_examples(sample, out, cand, ref, idx: torch.Tensor, limit=5):
    examples = []
    for i in idx[:limit].tolist():
        examples.append({"where": locate(sample, out, tuple(cand.shape), i),
                         "candidate": _scalar(cand.reshape(-1)[i]), "reference": _scalar(ref.reshape(-1)[i])})
    return examples


def _scalar(x: torch.Tensor):
    return float(x.float()) if x.is_floating_point() else int(x)


# ----------------------------------------------------------------------------- probes

def _check_guards(storages: Dict[str, torch.Tensor]):
    if not _on("guard"):
        return
    for name, st in storages.items():
        pb = poison_bits(st.dtype, st.device)
        for label, part in (("before", st[:GUARD_ROWS]), ("after", st[-GUARD_ROWS:])):
            bad = as_bits(part) != pb
            if bool(bad.any()):
                raise ProbeFailure("guard", f"{name}: {int(bad.sum())} element(s) written in the guard rows "
                                            f"{label} the buffer (out-of-bounds write)",
                                   {"output": name, "side": label})


def _check_poison_pattern(sample, out: OutputSpec, cand: torch.Tensor, ref: torch.Tensor):
    """Elements the reference left poisoned must stay poisoned; the others must be written."""
    pb = poison_bits(cand.dtype, cand.device)
    ref_untouched = (as_bits(ref) == pb).reshape(-1)
    cand_untouched = (as_bits(cand) == pb).reshape(-1)
    written_wrongly = torch.nonzero(ref_untouched & ~cand_untouched).flatten()
    if written_wrongly.numel() and _on("untouched"):
        raise ProbeFailure("untouched", f"{out.name}: {written_wrongly.numel()} element(s) that the contract leaves "
                                        f"alone were written",
                           {"output": out.name, "first": _mismatch_examples(sample, out, cand, ref, written_wrongly)})
    unwritten = torch.nonzero(~ref_untouched & cand_untouched).flatten()
    if unwritten.numel() and _on("unwritten"):
        raise ProbeFailure("unwritten", f"{out.name}: {unwritten.numel()} element(s) the contract defines were "
                                        f"not written (they still hold the poison)",
                           {"output": out.name, "first": _mismatch_examples(sample, out, cand, ref, unwritten)})
    return ~ref_untouched


def _check_exact(sample, out, cand, ref, defined=None):
    """Bit equality, on the elements ``defined`` marks (all when None)."""
    if not _on("exact"):
        return
    if cand.shape != ref.shape or cand.dtype != ref.dtype:
        raise ProbeFailure("exact", f"{out.name}: expected shape {tuple(ref.shape)} dtype {ref.dtype}, got "
                                    f"shape {tuple(cand.shape)} dtype {cand.dtype}", {"output": out.name})
    differs = as_bits(cand) != as_bits(ref)
    if defined is not None:
        differs &= defined
    diff = torch.nonzero(differs.reshape(-1)).flatten()
    if diff.numel():
        raise ProbeFailure("exact", f"{out.name}: {diff.numel()} of {ref.numel()} element(s) differ from the "
                                    f"reference", {"output": out.name,
                                                   "first": _mismatch_examples(sample, out, cand, ref, diff)})


def fp8_grid_position(t: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn codes as their signed position on the e4m3 grid (int16): adjacent finite
    values are one apart, +0 and -0 are both 0 (sign-magnitude bytes: magnitude bits ordered)."""
    bits = t.view(torch.uint8).to(torch.int16)
    mag = bits & 0x7F
    return torch.where(bits >= 0x80, -mag, mag)


def _check_fp8_codes(sample, out, cand, ref, written):
    """fp8 codes within one grid step of the reference's on the elements the contract defines;
    NaN (e4m3's one NaN, 0x7F magnitude) only where the reference has it."""
    if not _on("exact"):
        return
    if cand.dtype != torch.float8_e4m3fn or ref.dtype != torch.float8_e4m3fn:
        raise ProbeFailure("exact", f"{out.name}: expected float8_e4m3fn codes, got {cand.dtype}", {"output": out.name})
    c, r = fp8_grid_position(cand), fp8_grid_position(ref)
    nan_c, nan_r = (c.abs() == 0x7F), (r.abs() == 0x7F)
    bad = ((c - r).abs() > 1) | (nan_c != nan_r)
    if written is not None:
        bad &= written
    diff = torch.nonzero(bad.reshape(-1)).flatten()
    if diff.numel():
        checked = int(written.sum()) if written is not None else ref.numel()
        raise ProbeFailure("exact", f"{out.name}: {diff.numel()} of {checked} fp8 code(s) more than one e4m3 step "
                                    f"from the reference's",
                           {"output": out.name, "first": _mismatch_examples(sample, out, cand, ref, diff)})


def _check_src2dst_order_free(sample, out, cand, ref_outputs):
    """Canonical form: every valid slot lands in its expert's segment, positions form a
    permutation, and -1 slots take [-n_inv, -1] (deepep)."""
    if not _on("order_free"):
        return
    flat = sample.topk_ids.reshape(-1).to(torch.int64)
    reorder = ref_outputs["reorder_topk_ids"].to(torch.int64)
    valid = flat >= 0
    n_inv = int((~valid).sum())
    c = cand.to(torch.int64)
    if cand.shape != flat.shape:
        raise ProbeFailure("order_free", f"src2dst: expected shape {tuple(flat.shape)}, got {tuple(cand.shape)}")
    pos = c[valid]
    n = int(valid.sum())
    if n and (int(pos.min()) < 0 or int(pos.max()) >= n or torch.unique(pos).numel() != n):
        raise ProbeFailure("order_free", "src2dst: valid slots do not map one-to-one onto positions [0, "
                                         f"{n})", {"output": "src2dst"})
    wrong = torch.nonzero(reorder[pos.clamp(0, max(n - 1, 0))] != flat[valid]).flatten() if n else pos
    if wrong.numel():
        raise ProbeFailure("order_free", f"src2dst: {wrong.numel()} slot(s) land outside their expert's segment",
                           {"output": "src2dst"})
    inv = torch.sort(c[~valid]).values
    if n_inv and not torch.equal(inv, torch.arange(-n_inv, 0, device=inv.device)):
        raise ProbeFailure("order_free", f"src2dst: the {n_inv} slot(s) of id -1 should take [-{n_inv}, -1]")


def _canonical(spec, sample, outputs, ref_outputs):
    """Rows placed by atomics, in the reference's order (harness.canonical); probe order_free."""
    if not _on("order_free"):
        return outputs
    try:
        return canonicalise(spec, sample, outputs, ref_outputs)
    except OrderFreeViolation as v:
        raise ProbeFailure("order_free", str(v), {"output": v.output}) from None


# ----------------------------------------------------------------------------- the case

# Cases with more tensor elements than this evaluate their float64 references on the GPU only
# where the GPU's free memory holds F64_FOOTPRINT float64 copies of their float tensors (the
# upcast inputs, then the reference's temporaries and outputs), and on the host otherwise: a
# `large` case's float64 copies (several times 10**9 elements of 8 bytes) may not fit beside the
# case, and host memory is larger. On the host, the reference and the comparison of a `large`
# case of the contiguous layout's weighted combine took about 80 s, and the whole case 35 s with its
# reference on the GPU (H100: results/2026-12-06-s17-h100, -s18-h100).
F64_ON_HOST_ELEMENTS = 1 << 30
F64_FOOTPRINT = 3


def tensor_elements(sample: Sample) -> int:
    return sum(v.numel() for v in sample.args.values() if isinstance(v, torch.Tensor))


def _f64_on_host(sample: Sample) -> bool:
    """Whether this case's float64 reference is evaluated on the host (see F64_ON_HOST_ELEMENTS)."""
    if tensor_elements(sample) <= F64_ON_HOST_ELEMENTS:
        return False
    dev = next((v.device for v in sample.args.values() if isinstance(v, torch.Tensor)), None)
    if dev is None or dev.type != "cuda":
        return True
    floats = sum(v.numel() for v in sample.args.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    free, _ = torch.cuda.mem_get_info(dev)
    return F64_FOOTPRINT * 8 * floats > free


@dataclass(frozen=True)
class Expected:
    """The reference's outputs for one sample: in the case's dtypes (``lp``), in float64
    (``f64``, float outputs only) and on |inputs| in float64 (``mag``, outputs with a reduction).
    ``f64`` and ``mag`` live on the host for cases past F64_ON_HOST_ELEMENTS whose float64
    copies the GPU's free memory does not hold (or that ran out of it there)."""

    lp: Dict[str, torch.Tensor]
    f64: Dict[str, torch.Tensor]
    mag: Dict[str, torch.Tensor]


def reference_outputs(spec: OpSpec, sample: Sample) -> Expected:
    """Evaluate the reference on poisoned, guarded buffers, as a candidate is called."""
    params = sample.params
    lp, _ = _call(spec.reference, sample, spec, sample.args, poison_fresh=False)
    needs_float = [o for o in spec.outputs if o.how(params) in ("float", "normwise")]
    f64: Dict[str, torch.Tensor] = {}
    mag: Dict[str, torch.Tensor] = {}
    if needs_float:
        on_host = _f64_on_host(sample)
        if not on_host:
            try:
                f64, mag = _float64_references(spec, sample, needs_float, on_host=False)
            except torch.cuda.OutOfMemoryError:
                on_host = True      # the attempt's tensors, held by the exception, go with this block
            if on_host:
                torch.cuda.empty_cache()
        if on_host:
            f64, mag = _float64_references(spec, sample, needs_float, on_host=True)
    return Expected(lp, f64, mag)


def _float64_references(spec: OpSpec, sample: Sample, needs_float, on_host: bool):
    """The reference in float64 (``f64``) and on |inputs| (``mag``, outputs with a reduction),
    on the case's device or on the host; one float64 copy of the inputs alive at a time."""
    base = sample
    if on_host:
        base = dataclasses.replace(sample, args={k: v.cpu() if isinstance(v, torch.Tensor) else v
                                                 for k, v in sample.args.items()})
    s64 = dataclasses.replace(base, args=_float64_args(base))
    f64, _ = _call(spec.reference, s64, spec, s64.args, poison_fresh=False)
    del s64
    mag: Dict[str, torch.Tensor] = {}
    if any(o.reduction_len(sample.params) for o in needs_float):
        sabs = dataclasses.replace(base, args=_float64_args(base, abs_values=True))
        mag, _ = _call(spec.reference, sabs, spec, sabs.args, poison_fresh=False)
    return f64, mag


@dataclass(frozen=True)
class Candidate:
    """One implementation of one op as the runner sees it."""

    fn: Callable
    order_free: bool = False      # order within an expert's segment is free (src2dst canonical form)
    deterministic: bool = True
    requires: Tuple[str, ...] = ()  # ids of the record's preconditions it assumes (the fuzzer draws within them)
    # capture it in a CUDA graph where the op's record says the op is capturable (implementations
    # meant for production; the references and plain-torch baselines read values on the host)
    graph: bool = False


def context_lost(exc: BaseException) -> bool:
    """True for a GPU fault after which the device context is unusable (an illegal address): the
    case ends there, CRASHED. A CUDA call without a usable driver reads like one ("CUDA error:
    CUDA driver version is insufficient") but is needs_cuda: no verdict, and the run goes on."""
    return is_device_fault(exc) and not needs_cuda(exc)


def _call_candidate(candidate: Candidate, sample: Sample, spec: OpSpec, poison_fresh: bool, what: str = ""):
    """One call of the candidate on guarded, poisoned outputs; its exception is the
    ``exception`` probe's failure (with the candidate's own frames), unless that probe is off,
    when the outputs it left are compared as they are."""
    try:
        return _call(candidate.fn, sample, spec, sample.args, poison_fresh)
    except Exception as exc:  # a candidate's exception is a failure of this case
        if context_lost(exc):
            raise   # the case ends here, CRASHED (harness/fuzz.py, isolate.py)
        # no verdict here: the interpreter cannot model the arithmetic (harness/interpreter.py), or the
        # candidate reached an SGLang stand-in that cannot be faithful (harness/sglang/standins.py)
        if type(exc).__name__ == "InterpreterCannotCompute":
            raise ProbeFailure("not_computable", f"not computable on the interpreter: {exc}") from None
        if type(exc).__name__ == "StandInError":
            raise ProbeFailure("not_computable", f"not computable without the sglang package: {exc}") from None
        if isinstance(exc, NotSupported):   # harness/sglang/bind.py, before calling the release
            raise ProbeFailure("not_supported", f"{type(exc).__name__}: {exc}{what}") from None
        lacking = machine_limit(exc)   # torch asked for a GPU, the file's own CUDA test, a package not installed
        if lacking:
            raise ProbeFailure("not_computable", f"not computable without {lacking} "
                                                 f"({type(exc).__name__}: {exc})") from None
        if _on("exception"):
            raise ProbeFailure("exception", f"{type(exc).__name__}: {exc}{what}",
                               {"traceback": traceback.format_exc(limit=-8)[-3000:]}) from None
        call_args, storages = _guard_args(spec, sample.args)
        return {o.name: o.where.fetch(call_args, None) for o in spec.outputs}, storages


def run_case(spec: OpSpec, candidate: Candidate, params: CaseParams, device, impl_name: str = "?",
             poison_fresh: bool = True, require_ieee_fp32: bool = False, repeat_probes: bool = True) -> CaseResult:
    """Run every probe on one case; never raises for a candidate's fault. ``require_ieee_fp32``:
    a float32 matrix product within TF32's error but not float32's fails (default: passes,
    marked as TF32 precision). ``repeat_probes`` False: no decoy call, no second run and no
    CUDA-graph capture (the probes that call the candidate again; a profile keeps them to a row's
    first cases, harness.profiles)."""
    base = dict(op=spec.name, impl=impl_name, dtype=params.dtype, params=params.to_json())
    sample = spec.build(params, torch.device(device))
    expected = reference_outputs(spec, sample)
    snapshot = {k: v.clone() for k, v in sample.args.items()
                if isinstance(v, torch.Tensor) and k not in spec.output_buffers + spec.in_place_args}
    try:
        previous = _decoy_outputs(spec, candidate, sample, device, poison_fresh) \
            if _on("decoy") and repeat_probes else None
        runs = []
        for attempt in range(2 if repeat_probes else 1):
            outputs, storages = _call_candidate(candidate, sample, spec, poison_fresh)
            for name, snap in snapshot.items():
                if _on("input_modified") and not torch.equal(as_bits(sample.args[name]), as_bits(snap)):
                    raise ProbeFailure("input_modified", f"{name}: the candidate modified this input")
            _check_guards(storages)
            runs.append(_canonical(spec, sample, outputs, expected.lp))  # atomics' row order: not a repeat-run diff
        try:
            details = compare_outputs(spec, candidate, sample, runs[0], expected, require_ieee_fp32)
        except ProbeFailure as f:
            if previous is not None and _same_bits(runs[0], previous) and \
                    _passes(spec, candidate, _decoy(spec, params, device), previous):
                # A hint, not a probe of its own: a wrong answer can coincide with another input's.
                f.message += (" [every output is bit-identical to the previous call's, the right answer for other "
                              "inputs of the same shapes: a result cached from an earlier call?]")
            raise
        if candidate.deterministic and _on("nondeterministic") and len(runs) == 2:
            for out in spec.outputs:
                a, b = runs[0][out.name], runs[1][out.name]
                if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
                    continue
                if a.shape != b.shape:
                    raise ProbeFailure("nondeterministic", f"{out.name}: two runs on the same inputs gave "
                                                           f"different shapes")
                same = as_bits(a) == as_bits(b)
                if out.defined is not None:   # unspecified elements may hold anything, run to run
                    same |= ~out.defined(sample, expected.lp)
                if not bool(same.all()):
                    raise ProbeFailure("nondeterministic", f"{out.name}: two runs on the same inputs gave "
                                                           f"different bits")
        graph = ""
        if candidate.graph and spec.capturable and torch.device(device).type == "cuda" and _on("graph") and \
                repeat_probes:
            graph = _graph_probe(spec, candidate, params, device, require_ieee_fp32)
        return CaseResult(**base, status=CASE_PASSED, details=details, graph=graph)
    except ProbeFailure as f:
        if f.probe == "not_computable":
            return CaseResult(**base, status=CASE_NOT_COMPUTABLE, message=f.message)
        if f.probe == "not_supported":
            # the binding refused before any call: the release has no parameter for an argument
            # this case gives (an optional feature it predates), which is not a wrong answer
            return CaseResult(**base, status=CASE_REJECTED, probe=f.probe,
                              message=f"rejected: the release cannot express this case: {f.message}")
        broken = spec.broken_preconditions(params)
        if f.probe == "exception" and broken:
            # out of contract for some implementations: a clean refusal is not a wrong answer
            return CaseResult(**base, status=CASE_REJECTED, probe=f.probe,
                              message=f"rejected a case outside the precondition {broken[0].text!r}: {f.message}",
                              details=f.details)
        return CaseResult(**base, status=CASE_FAILED, probe=f.probe, message=f.message, details=f.details)


# Cases with more tensor elements than this get no decoy call: the `large` preset's buffers
# already fill most of a GPU, and a cache keyed on shapes does not care about size.
DECOY_MAX_ELEMENTS = 1 << 28


def _decoy(spec: OpSpec, params: CaseParams, device) -> Sample:
    """The case rebuilt with another seed, with the registered spec's own builder: the decoy
    is not a case of its own (the crash-isolation child records each case it builds)."""
    build = SPECS[spec.name].build if spec.name in SPECS else spec.build
    return build(dataclasses.replace(params, seed=(params.seed + 1) % 2 ** 31), torch.device(device))


def _decoy_outputs(spec: OpSpec, candidate: Candidate, sample: Sample, device, poison_fresh: bool):
    """Call the candidate on the decoy of ``sample``; returns its outputs (cloned), or None
    for a case past DECOY_MAX_ELEMENTS."""
    if tensor_elements(sample) > DECOY_MAX_ELEMENTS:
        return None
    decoy = _decoy(spec, sample.params, device)
    outputs, _ = _call_candidate(candidate, decoy, spec, poison_fresh,
                                 f" (on the decoy call: the same case with seed {decoy.params.seed}, run first so "
                                 f"that a result cached from an earlier call shows on this case)")
    return {k: v.clone() for k, v in outputs.items() if isinstance(v, torch.Tensor)}


def _passes(spec: OpSpec, candidate: Candidate, sample: Sample, outputs: Dict[str, torch.Tensor]) -> bool:
    """Whether ``outputs`` are a right answer for ``sample`` (the decoy: only on a failure path)."""
    try:
        compare_outputs(spec, candidate, sample, outputs, reference_outputs(spec, sample))
        return True
    except ProbeFailure:
        return False


def _same_bits(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(isinstance(a[k], torch.Tensor) and a[k].shape == b[k].shape
                                    and a[k].dtype == b[k].dtype and torch.equal(as_bits(a[k]), as_bits(b[k]))
                                    for k in a)


# The graph probe's new inputs: the first of a few seeds whose case fits the captured call (the
# GEMM builder's weight table has e_local + 1 + seed % 3 entries, so seed + 1 would not fit).
GRAPH_SEED_OFFSET = 3
GRAPH_SEED_TRIES = 8


def _fits_capture(captured: Mapping[str, Any], fresh: Mapping[str, Any], tensors_only: bool = False) -> bool:
    """Whether a captured call can be replayed on ``fresh``'s arguments: every tensor of the same
    shape and dtype (replay writes into the captured buffers), every other argument equal (a
    graph bakes Python scalars, flags and None-ness into its kernels' launches; with
    ``tensors_only``, only None-ness)."""
    for name, value in fresh.items():
        old = captured[name]
        if isinstance(value, torch.Tensor) or isinstance(old, torch.Tensor):
            if not (isinstance(value, torch.Tensor) and isinstance(old, torch.Tensor)
                    and value.shape == old.shape and value.dtype == old.dtype):
                return False
        elif (value is None) != (old is None) or (not tensors_only and value != old):
            return False
    return True


def _replay_sample(spec: OpSpec, sample: Sample, device) -> Optional[Sample]:
    """A new case for the graph probe that fits ``sample``'s captured call, or None: the first of
    a few seeds whose case fits as it is, else the first whose tensors fit, with the captured
    call's other arguments (a graph replays the scalars it captured: a token count, a scaling
    factor drawn per seed would never fit otherwise)."""
    tensors_fit = None
    for i in range(1, GRAPH_SEED_TRIES + 1):
        params = dataclasses.replace(sample.params, seed=(sample.params.seed + i * GRAPH_SEED_OFFSET) % 2 ** 31)
        fresh = spec.build(params, torch.device(device))
        if _fits_capture(sample.args, fresh.args):
            return fresh
        if tensors_fit is None and _fits_capture(sample.args, fresh.args, tensors_only=True):
            tensors_fit = dataclasses.replace(fresh, args={k: v if isinstance(v, torch.Tensor) else sample.args[k]
                                                           for k, v in fresh.args.items()})
    return tensors_fit


GRAPH_REPLAYED = "replayed"


def _graph_probe(spec: OpSpec, candidate: Candidate, params: CaseParams, device, require_ieee_fp32: bool) -> str:
    """Capture one call in a CUDA graph, replay it on new inputs written into the captured
    buffers (outputs poisoned again), and compare; SGLang captures its decode steps, so an op
    that synchronises with the host, or bakes its inputs into the capture, breaks there.
    Returns GRAPH_REPLAYED when at least one replay was compared, else "skipped: why" (the
    capture alone was checked); raises ProbeFailure."""
    sample = spec.build(params, torch.device(device))
    call_args, storages = _guard_args(spec, {k: v.clone() if isinstance(v, torch.Tensor) else v
                                             for k, v in sample.args.items()})
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # a warm-up call off the capture: compilation, autotuning, lazy state
        candidate.fn(*call_args.values())
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # fresh allocations poisoned inside the capture too: the fills are captured and run again at each
    # replay, so rows the contract leaves unwritten hold the poison the reference's hold (found on an
    # H100: moe_permute's unrouted rows held the graph pool's stale values)
    poison = poisoned_fresh_allocations() if _on("fresh_poison") else contextlib.nullcontext()
    try:
        with torch.cuda.graph(graph), poison:
            returned = candidate.fn(*call_args.values())
    except Exception as exc:
        torch.cuda.synchronize()
        raise ProbeFailure("graph", f"the call could not be captured in a CUDA graph, which the op's record says it "
                                    f"can be (a host synchronisation, or a host read of a device value?): "
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                           {"traceback": traceback.format_exc(limit=-8)[-3000:]}) from None
    fresh = _replay_sample(spec, sample, device)
    if fresh is None:   # tensor shapes or dtypes that follow the seed
        return f"skipped: no case of {GRAPH_SEED_TRIES} other seeds fits the captured call's shapes"
    replays = [(fresh, f"on new inputs (seed {fresh.params.seed})")]
    for overrides in (spec.graph_variants(fresh) if spec.graph_variants is not None else ()):
        what = ", ".join(f"{k} = {v.tolist() if isinstance(v, torch.Tensor) and v.numel() <= 4 else v}"
                         for k, v in overrides.items())
        replays.append((dataclasses.replace(fresh, args={**fresh.args, **overrides}), f"with {what}"))
    compared, skipped = 0, ""
    for case, what in replays:
        for name, value in case.args.items():
            if name in spec.output_buffers:
                fill_poison(storages[name])
            elif name in spec.in_place_args:
                fill_poison(storages[name])
                call_args[name].copy_(value)
            elif isinstance(value, torch.Tensor):
                call_args[name].copy_(value)
        graph.replay()
        torch.cuda.synchronize()
        _check_guards(storages)
        outputs = {o.name: o.where.fetch(call_args, returned) for o in spec.outputs}
        try:
            expected = reference_outputs(spec, case)
        except ValueError:
            skipped = skipped or "skipped: the captured scalars are outside the reference's contract for the new values"
            continue
        if any(o.where.kind == "return" and isinstance(outputs[o.name], torch.Tensor)
               and isinstance(expected.lp[o.name], torch.Tensor) and outputs[o.name].shape != expected.lp[o.name].shape
               for o in spec.outputs):
            # a returned tensor sized by the values (a slab sized by the counts): the captured
            # allocation cannot hold the new answer; the plain call's probes check its shape
            skipped = skipped or "skipped: a returned tensor's shape follows the values"
            continue
        try:
            compare_outputs(spec, candidate, case, outputs, expected, require_ieee_fp32)
        except ProbeFailure as f:
            raise ProbeFailure("graph", f"the CUDA graph replayed {what} gave a wrong answer ({f.probe}): "
                                        f"{f.message}", f.details) from None
        compared += 1
    return GRAPH_REPLAYED if compared else skipped


def compare_outputs(spec: OpSpec, candidate: Candidate, sample: Sample, cand_out: Dict[str, torch.Tensor],
                    expected: Expected, require_ieee_fp32: bool = False) -> Dict[str, Any]:
    """Compare a candidate's outputs with the reference's; raises ProbeFailure on the first
    violation, returns the float error reports (JSON-safe) otherwise (a report whose
    ``precision`` is "tf32" passed only at TF32 precision)."""
    p = sample.params
    ref_out, ref64, mag = expected.lp, expected.f64, expected.mag
    details: Dict[str, Any] = {}
    cand_out = _canonical(spec, sample, cand_out, ref_out)
    for out in spec.outputs:
        cand, ref = cand_out[out.name], ref_out[out.name]
        if ref is None:   # an optional output this case does not have (e.g. scales of an unquantised copy)
            if cand is not None:
                raise ProbeFailure("exact", f"{out.name}: expected None (this case has no such output), got "
                                            f"{type(cand).__name__}")
            continue
        if not isinstance(cand, torch.Tensor):
            raise ProbeFailure("exact", f"{out.name}: expected a tensor, got {type(cand).__name__}")
        if cand.shape != ref.shape:
            raise ProbeFailure("exact", f"{out.name}: expected shape {tuple(ref.shape)}, got {tuple(cand.shape)}")
        how = out.how(p)
        written = None
        if out.where.is_arg:
            written = _check_poison_pattern(sample, out, cand, ref).view(ref.shape)
        if how == "src2dst" and candidate.order_free:
            _check_src2dst_order_free(sample, out, cand, ref_out)
            continue
        defined = out.defined(sample, ref_out) if out.defined is not None else None
        if how in ("exact", "src2dst") or not ref.is_floating_point():   # integers are exact whatever the mode
            _check_exact(sample, out, cand, ref, defined)
            continue
        if how == "fp8_code":
            _check_fp8_codes(sample, out, cand, ref,
                             defined if written is None else written if defined is None else written & defined)
            continue
        if cand.dtype != ref.dtype:
            raise ProbeFailure("exact", f"{out.name}: expected dtype {ref.dtype}, got {cand.dtype}")
        if written is None:
            written = torch.ones(ref.shape, dtype=torch.bool, device=ref.device)
        if defined is not None:
            written = written & defined
        rep = compare_float(cand, ref64[out.name], ref, mag.get(out.name) if mag else None,
                            out.reduction_len(p), out.is_fp8_dot(p), how == "normwise", written)
        details[out.name] = dataclasses.asdict(rep)
        explained = ""
        if not rep.passed and how == "float":
            explained, tf32 = _explain_precision(out, p, cand, ref64[out.name], ref, mag.get(out.name) if mag else None,
                                                 written, rep)
            if tf32 and not require_ieee_fp32:
                details[out.name]["precision"] = "tf32"
                continue
        if not rep.passed and _on("tolerance"):
            where = locate(sample, out, tuple(cand.shape), rep.worst_flat_index) if rep.worst_flat_index >= 0 else {}
            over = (f"{rep.n_over} of {rep.n_checked} element(s) over tolerance" if rep.n_over else
                    f"the error's norm is {rep.norm_ratio:.3g}x the precision's own over {rep.n_checked} "
                    f"element(s), at most {norm_bound(out.reduction_len(p)):.3g}x for float32 accumulation over "
                    f"{out.reduction_len(p)} terms (every element is within its own bound: the errors are "
                    f"systematically larger, not one outlier)")
            raise ProbeFailure("tolerance",
                               f"{out.name}: {over}; max |err| "
                               f"{rep.max_abs_err:.3g}, mean {rep.mean_abs_err:.3g}; worst at {where}: candidate "
                               f"{rep.worst_candidate:.6g}, reference {rep.worst_reference:.6g}, bound "
                               f"{rep.worst_bound:.3g}{explained}",
                               {"output": out.name, **details[out.name], "where": where})
    return details


# The unit roundoff of TF32 operands (10 stored mantissa bits): a float32 product whose inputs
# are rounded to TF32 errs by up to 2 * TF32_ROUNDOFF of |a| * |b| per term.
TF32_ROUNDOFF = 2.0 ** -11
_LOW_ACCUMULATORS = (torch.bfloat16, torch.float16)


def _explain_precision(out: OutputSpec, p: CaseParams, cand, ref64, ref_lp, mag, written, rep):
    """(a sentence naming the precision the error is consistent with, whether it is TF32's) for a
    float output over its tolerance: TF32 operands (a float32 matrix product), or partial sums
    kept in a 16-bit dtype; ("", False) when neither explains it."""
    L = out.reduction_len(p)
    if mag is None or L <= 0:
        return "", False
    if not rep.n_over:   # failed the statistical test only: how far past its bound the norm is
        times = rep.norm_ratio / norm_bound(L)
    else:
        times = (abs(rep.worst_candidate - rep.worst_reference) / rep.worst_bound) if rep.worst_bound > 0 else float("inf")
    if out.matmul and cand.dtype == torch.float32:
        tf32 = compare_float(cand, ref64, ref_lp, mag, L, False, False, written, operand_roundoff=TF32_ROUNDOFF,
                             statistical=False)
        if tf32.passed:
            return (f" [within TF32 precision (inputs rounded to 10 mantissa bits): {times:.3g}x the IEEE float32 "
                    f"bound]"), True
    # the output's own 16-bit dtype first (a kernel summing in its input dtype), then the others
    for acc in sorted(_LOW_ACCUMULATORS, key=lambda d: d != cand.dtype):
        if UNIT_ROUNDOFF[acc] <= UNIT_ROUNDOFF.get(cand.dtype, 0.0) * 0.5:
            continue
        low = compare_float(cand, ref64, ref_lp, mag, L, out.is_fp8_dot(p), False, written,
                            accumulation=L * UNIT_ROUNDOFF[acc], statistical=False)
        if low.passed:
            name = str(acc).replace("torch.", "")
            return (f" [consistent with accumulating in {name}: {times:.3g}x the float32-accumulation bound; the "
                    f"contract asks for float32 accumulation]"), False
    return "", False


# ----------------------------------------------------------------------------- artefacts

def save_failure(result: CaseResult, spec: OpSpec, device, folder: str = "moe-failures") -> str:
    """torch.save the failing case's inputs (load with weights_only=True); returns the path."""
    params = CaseParams.from_json(result.params)
    sample = spec.build(params, torch.device(device))
    os.makedirs(folder, exist_ok=True)
    tag = hashlib.sha1(f"{result.impl}|{result.params}".encode()).hexdigest()[:10]
    path = os.path.join(folder, f"{result.op}-{result.impl.replace(':', '_').replace('/', '_')}-{tag}.pt")
    torch.save({"params": result.params, "impl": result.impl, "probe": result.probe, "message": result.message,
                "args": {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in sample.args.items()}}, path)
    return path
