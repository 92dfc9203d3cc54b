"""harness/interpreter.py: the patched Triton interpreter computes bf16 and fp8 as the GPU does,
and reports out-of-bounds accesses instead of corrupting memory.

Each broken behaviour of the stock interpreter is shown twice on the same fresh, seeded
inputs: wrong with the patch taken off (so these tests can fail), right with it on. The
kernels are tests/fixtures/interp_kernels.py; references are torch on the CPU. Interpreter
only (the patch is never applied on a GPU).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# The stock interpreter, run on purpose below, warns about the garbage it computes.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def _interpreter_only(request):
    if (getattr(request.config, "moe_backend", None) or "interpreter") != "interpreter":
        pytest.skip("the interpreter patch is for the interpreter backend")


@pytest.fixture
def K():
    from tests.fixtures import interp_kernels
    return interp_kernels


@pytest.fixture
def rng(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


class _Unpatched:
    """``with unpatched:`` runs its body on the stock interpreter, then re-applies the patch."""

    def __enter__(self):
        from harness.interpreter import unpatch_interpreter
        unpatch_interpreter()

    def __exit__(self, *exc):
        from harness.interpreter import patch_interpreter
        patch_interpreter()


unpatched = _Unpatched()


def _stock_broken_on_39() -> bool:
    """Some bf16 paths are wrong only in the stock interpreter of Triton 3.9 (the CI venv):
    3.6 and 3.8 widen bf16 to float32 before tl.maximum/minimum and tl.cumsum."""
    import triton
    return tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)


def _launch(kernel, n, *args, block=64, **meta):
    kernel[(max(1, -(-n // block)),)](*args, n, BLOCK=block, **meta)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _same(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Element-wise: the same bits, or both NaN (NaN payloads are not modelled)."""
    both_nan = out.float().isnan() & ref.float().isnan()
    return (_bits(out) == _bits(ref)) | both_nan


def _bf16(rng, n, scale=3.0):
    """Random bf16 values of both signs spanning several binades (never zeros or ones)."""
    x = torch.randn(n, generator=rng) * scale * torch.exp2(torch.randint(-6, 6, (n,), generator=rng).float())
    return x.to(torch.bfloat16)


# ----------------------------------------------------------------------------- the patch itself

def test_patch_is_applied_by_select_backend_and_is_idempotent():
    import triton.runtime.interpreter as th

    from harness import interpreter
    from harness.backend import select_backend
    assert interpreter.is_patched()                      # the plugin chose the interpreter
    assert th.InterpreterBuilder.binary_op is interpreter.binary_op
    select_backend("interpreter")
    interpreter.patch_interpreter()
    assert th.InterpreterBuilder.binary_op is interpreter.binary_op  # not wrapped twice
    with unpatched:
        assert not interpreter.is_patched()
        assert th.InterpreterBuilder.binary_op is not interpreter.binary_op
        assert th.GridExecutor.__call__ is not interpreter.grid_call
    assert th.GridExecutor.__call__ is interpreter.grid_call


def test_missing_interpreter_attribute_names_the_triton_version(monkeypatch):
    import triton
    import triton.runtime.interpreter as th

    from harness import interpreter
    with unpatched:
        monkeypatch.delattr(th.InterpreterBuilder, "create_fp_to_fp")
        with pytest.raises(interpreter.InterpreterPatchUnsupported) as err:
            interpreter.patch_interpreter()
        assert f"Triton {triton.__version__}" in str(err.value)
        assert "builder.create_fp_to_fp" in str(err.value)
        assert not interpreter.is_patched()
        monkeypatch.undo()


# ----------------------------------------------------------------------------- bf16 arithmetic

def _binary_reference(K, op, x, y):
    if op == K.ADD:
        return x + y
    if op == K.SUB:
        return x - y
    if op == K.MUL:
        return x * y
    if op == K.DIV:
        return (x.float() / y.float()).to(torch.bfloat16)
    if op == K.MAX:
        return torch.maximum(x, y)
    if op == K.MIN:
        return torch.minimum(x, y)
    if op == K.NEG:
        return -x
    return torch.where(x < y, x, y)


@pytest.mark.parametrize("n", [1, 37, 300])
@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL", "DIV", "MAX", "MIN", "NEG", "LT"])
def test_bf16_arithmetic_is_correctly_rounded(K, rng, op, n):
    """bf16 + - * / max min neg < in the kernel's bf16: bit for bit torch's correctly rounded result."""
    code = getattr(K, op)
    x, y = _bf16(rng, n), _bf16(rng, n)
    ref = _binary_reference(K, code, x, y)

    def run():
        out = torch.empty_like(x)
        _launch(K.binary_kernel, n, x, y, out, OP=code)
        return out
    assert _same(run(), ref).all()
    # enough values that some are negative or need rounding
    if n >= 37 and (op not in ("MAX", "MIN") or _stock_broken_on_39()):
        with unpatched:
            assert not _same(run(), ref).all()


@pytest.mark.parametrize("n", [40, 257])
def test_bf16_fma_rounds_once(K, rng, n):
    """tl.fma(x, y, x) in bf16: the exact x*y + x rounded once (where float32 holds it exactly,
    torch's float32 -> bf16 is the single rounding; elsewhere within one bf16 step)."""
    x, y = _bf16(rng, n), _bf16(rng, n)
    exact = x.double() * y.double() + x.double()
    ref = exact.float().to(torch.bfloat16)
    single = exact.float().double() == exact
    out = torch.empty_like(x)
    _launch(K.binary_kernel, n, x, y, out, OP=K.FMA)
    assert single.float().mean() > 0.5
    assert _same(out, ref)[single].all()
    ulp = (ref.float().abs() * 2.0 ** -7).clamp_min(2.0 ** -133)
    assert ((out.double() - exact).abs() <= ulp.double()).all()
    with unpatched:
        out = torch.empty_like(x)
        _launch(K.binary_kernel, n, x, y, out, OP=K.FMA)
        assert not _same(out, ref)[single].all()


@pytest.mark.parametrize("n", [64, 200])
def test_sglang_style_silu_and_mul_in_bf16(K, rng, n):
    """exp in float32, silu rounded to bf16, the product in bf16 (SGLang's silu_and_mul):
    torch's answer to within one bf16 step (numpy's and torch's float32 exp may differ in the
    last bit); the stock interpreter gives NaN or garbage."""
    x, y = _bf16(rng, n, 2.0), _bf16(rng, n, 2.0)
    xf = x.float()
    ref = ((xf / (1.0 + torch.exp(-xf))).to(torch.bfloat16) * y).float()

    def run():
        out = torch.empty_like(x)
        _launch(K.silu_mul_kernel, n, x, y, out)
        return out.float()
    step = ref.abs() * 2.0 ** -7 + 2.0 ** -126
    assert ((run() - ref).abs() <= step).all()
    with unpatched:
        got = run()
        assert not ((got - ref).abs() <= step).all()


@pytest.mark.parametrize("shape", [(4, 16), (16, 64)])
def test_bf16_reductions(K, rng, shape):
    """tl.sum and tl.cumsum over bf16 (reduced in bf16 by Triton's rules): within one bf16
    rounding of the exact sum; the stock interpreter sums the bit patterns (tl.cumsum: on 3.9)."""
    R, C = shape
    x = _bf16(rng, R * C).reshape(R, C)
    exact = x.double().sum(dim=1)
    tol = exact.abs() * 2.0 ** -7 + x.double().abs().sum(dim=1) * 2.0 ** -20
    for op in (0, 2):
        out = torch.empty(R, dtype=torch.float32)
        K.reduce_kernel[(1,)](x, out, R, C, op)
        assert ((out.double() - exact).abs() <= tol).all(), op
        if op == 0 or _stock_broken_on_39():
            with unpatched:
                K.reduce_kernel[(1,)](x, out, R, C, op)
                assert not ((out.double() - exact).abs() <= tol).all(), op
    out = torch.empty(R, dtype=torch.float32)
    K.reduce_kernel[(1,)](x, out, R, C, 1)
    assert torch.equal(out, x.float().amax(dim=1))


def test_fp8_arithmetic_is_not_computable(K, rng):
    from harness.interpreter import InterpreterCannotCompute
    x = torch.randn(32, generator=rng).to(torch.float8_e4m3fn)
    out = torch.empty_like(x)
    with pytest.raises(InterpreterCannotCompute, match="fp8e4nv"):
        _launch(K.binary_kernel, 32, x, x, out, OP=K.ADD)


# ----------------------------------------------------------------------------- conversions

def _around_grid(grid: torch.Tensor, rng) -> torch.Tensor:
    """float32 values at, between and exactly half-way between neighbours of ``grid`` (sorted,
    finite): the ties and the values just around them, plus random points in the gaps."""
    g = grid.double()
    lo, hi = g[:-1], g[1:]
    mid = (lo + hi) / 2
    gap = hi - lo
    frac = torch.rand(lo.shape, generator=rng, dtype=torch.float64)
    vals = torch.cat([g, mid, mid + gap * 2.0 ** -10, mid - gap * 2.0 ** -10, lo + gap * frac])
    vals = vals.float()
    return vals[torch.randperm(vals.numel(), generator=rng)]


def _all_finite(dtype) -> torch.Tensor:
    """Every finite value of an 8-bit float dtype, sorted."""
    v = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    return v[v.isfinite()].unique()


def _bf16_grid(rng, n) -> torch.Tensor:
    """Sorted distinct bf16 values: random ones, powers of two and their neighbours, subnormals, the largest."""
    bits = torch.randint(0, 0x7F7F, (n,), generator=rng, dtype=torch.int32)
    pows = torch.tensor([0x3F80, 0x4000, 0x4300, 0x3F7F, 0x42FF, 0x0001, 0x0080, 0x7F7F], dtype=torch.int32)
    b = torch.cat([bits, pows]).to(torch.int16).view(torch.bfloat16).float()
    b = torch.cat([b, -b]).unique()
    return b[b.isfinite()]


@pytest.mark.parametrize("n", [50, 400])
def test_float32_to_bf16_rounds_to_nearest_even(K, rng, n):
    """Ties to even, values next to ties, around powers of two, subnormals, overflow to inf, NaN:
    bit for bit torch's conversion (the stock interpreter truncates)."""
    x = torch.cat([_around_grid(_bf16_grid(rng, n), rng),
                   torch.tensor([3.4e38, -3.4e38, float("inf"), float("nan"), 1e-40, -1e-41])])
    ref = x.to(torch.bfloat16)

    def run():
        out = torch.empty(x.numel(), dtype=torch.bfloat16)
        _launch(K.cast_kernel, x.numel(), x, out)
        return out
    assert _same(run(), ref).all()
    with unpatched:
        assert not _same(run(), ref).all()


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16, torch.float16])
def test_conversion_to_fp8_e4m3_rounds_to_nearest_even_and_saturates(K, rng, src):
    """Every gap of the e4m3fn grid (ties, near-ties, random), subnormals, powers of two
    (-127.9 must give -128: the stock interpreter gave -64), out-of-range values and inf
    saturate to +-448 as Hopper's cvt.rn.satfinite does; from float32, bf16 and fp16. torch's
    float8_e4m3fn conversion rounds and saturates the same way."""
    grid = _all_finite(torch.float8_e4m3fn)
    x = torch.cat([_around_grid(grid, rng), torch.tensor([-127.9, 127.9, 1000.0, -5e4, 464.0, 470.0,
                                                           float("inf"), -float("inf"), float("nan")])])
    x = x.to(src)
    ref = x.float().to(torch.float8_e4m3fn)   # src -> float32 is exact

    def run():
        out = torch.empty(x.numel(), dtype=torch.float8_e4m3fn)
        _launch(K.cast_kernel, x.numel(), x, out)
        return out
    got = run()
    assert _same(got, ref).all(), (x[~_same(got, ref)][:8], got[~_same(got, ref)][:8].float())
    assert got[x.float() == -127.9].float().tolist() == [-128.0] or src != torch.float32
    with unpatched:
        assert not _same(run(), ref).all()


def test_conversion_to_fp8_e5m2_saturates_like_the_gpu(K, rng):
    """e5m2: round to nearest even inside the range (as torch); beyond +-57344 and for inf the
    GPU's satfinite conversion gives +-57344, where torch's CPU conversion gives inf."""
    grid = _all_finite(torch.float8_e5m2)
    inside = _around_grid(grid, rng)
    inside = inside[inside.abs() <= 57344]
    outside = torch.tensor([61440.0, 1e6, float("inf"), -7e4, -float("inf")])
    x = torch.cat([inside, outside])
    out = torch.empty(x.numel(), dtype=torch.float8_e5m2)
    _launch(K.cast_kernel, x.numel(), x, out)
    assert _same(out[:inside.numel()], inside.to(torch.float8_e5m2)).all()
    assert out[inside.numel():].float().tolist() == [57344.0, 57344.0, 57344.0, -57344.0, -57344.0]
    with unpatched:
        _launch(K.cast_kernel, x.numel(), x, out)
        assert not _same(out[:inside.numel()], inside.to(torch.float8_e5m2)).all()


def test_rounding_toward_zero(K, rng):
    """fp_downcast_rounding="rtz": float32 -> bf16 and -> e5m2 truncate toward zero (overflow to
    the largest finite value); rtz to e4m3fn, or to fp8 from bf16, has no GPU lowering and is
    not computable."""
    from harness.interpreter import InterpreterCannotCompute
    for dtype in (torch.bfloat16, torch.float8_e5m2):
        grid = _all_finite(dtype) if dtype == torch.float8_e5m2 else _bf16_grid(rng, 300)
        lo = grid[(grid > 0) & (grid < grid.max())].to(dtype)
        hi = (_bits(lo) + 1).view(dtype).float()          # the next value up: a gap of the format
        lo = lo.float()
        frac = torch.rand(lo.shape, generator=rng, dtype=torch.float64)
        x = (lo.double() + (hi - lo).double() * frac * 0.999).float()
        x = torch.cat([x, -x, torch.tensor([3.4e38 if dtype == torch.bfloat16 else 6e4])])
        want = torch.cat([lo, -lo, torch.tensor([torch.finfo(dtype).max])]).to(dtype)
        out = torch.empty(x.numel(), dtype=dtype)
        _launch(K.cast_rtz_kernel, x.numel(), x, out)
        assert _same(out, want).all(), dtype
    x = torch.randn(16, generator=rng)
    with pytest.raises(InterpreterCannotCompute, match="fp32 -> fp8e4nv rounding toward zero"):
        _launch(K.cast_rtz_kernel, 16, x, torch.empty(16, dtype=torch.float8_e4m3fn))
    with pytest.raises(InterpreterCannotCompute, match="bf16 -> fp8e5 rounding toward zero"):
        _launch(K.cast_rtz_kernel, 16, x.to(torch.bfloat16), torch.empty(16, dtype=torch.float8_e5m2))


def test_integer_to_bf16(K, rng):
    """int32 -> bf16 rounds the value (the stock interpreter stores the integer as the bits)."""
    x = torch.randint(-2 ** 20, 2 ** 20, (300,), generator=rng, dtype=torch.int32)
    ref = x.to(torch.bfloat16)

    def run():
        out = torch.empty(300, dtype=torch.bfloat16)
        _launch(K.cast_kernel, 300, x, out)
        return out
    assert _same(run(), ref).all()
    with unpatched:
        assert not _same(run(), ref).all()


# ----------------------------------------------------------------------------- tl.dot

@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 16, 64), (16, 64, 32)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_dot_accumulates_the_exact_products_in_float32(K, rng, dtype, shape):
    """tl.dot of bf16 / fp16 / fp8 operands = float32 matmul of their exact values (bf16: the
    stock interpreter multiplies the bit patterns, 1e10 off; fp16 and fp8 were right already)."""
    M, N, Kd = shape
    a = (torch.randn(M, Kd, generator=rng) * 2).to(dtype)
    b = (torch.randn(Kd, N, generator=rng) * 2).to(dtype)
    ref = a.float() @ b.float()

    def run():
        c = torch.empty(M, N)
        K.dot_kernel[(1,)](a, b, c, M, N, Kd)
        return c
    torch.testing.assert_close(run(), ref, rtol=1e-5, atol=1e-5)
    if dtype == torch.bfloat16:
        with unpatched:
            assert not torch.allclose(run(), ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- memory

def _far(t: torch.Tensor) -> torch.Tensor:
    """``t`` copied into a large allocation of its own (mmap'd, away from the small heap
    blocks), so that an overrun of another, small argument cannot land inside it: the bounds
    are per argument, and memory of another argument is not out of bounds."""
    big = torch.empty(t.numel() + (1 << 18), dtype=t.dtype)
    return big[:t.numel()].copy_(t)


@pytest.mark.parametrize("block,n", [(64, 100), (512, 700)])
def test_store_one_block_past_the_output_is_reported(K, rng, block, n):
    """A store one block past the output raises InterpreterOutOfBounds naming the kernel, the
    argument and the offset, before anything is written."""
    from harness.interpreter import InterpreterOutOfBounds
    out = torch.full((n,), -1.0)
    programs = -(-n // block)
    # x anywhere but in the memory the faulting store reaches: memory of an argument is not out of
    # bounds, and in a long session the allocator can put x's block right after out's (it did,
    # under triton 3.8's full suite)
    danger = (out.data_ptr() + 4 * n, out.data_ptr() + 4 * (programs + 1) * block)
    discarded = []
    while True:
        x = _far(torch.randn(n, generator=rng))
        start = x.untyped_storage().data_ptr()
        if start + x.untyped_storage().nbytes() <= danger[0] or start >= danger[1]:
            break
        discarded.append(x)   # kept alive, so that the next try gets other memory
    with pytest.raises(InterpreterOutOfBounds) as err:
        _launch(K.store_one_block_past_kernel, n, x, out, block=block)
    msg = str(err.value)
    assert msg.startswith(f"out-of-bounds write in kernel store_one_block_past_kernel: {block} of the {block} "
                          f"fp32 elements it stored in one access lie outside every tensor argument; the first "
                          f"is element {programs * block} of `out_ptr`"), msg
    assert f"({n},) torch.float32; its memory holds elements 0 to {n - 1}" in msg, msg
    done = (programs - 1) * block
    assert torch.equal(out[:done], x[:done])      # earlier programs ran; the faulting one stopped there


def test_load_past_the_input_is_reported(K, rng):
    """The first program reads elements 64..127 of a 100-element input: 28 are past its end."""
    from harness.interpreter import InterpreterOutOfBounds
    x = torch.randn(100, generator=rng)
    with pytest.raises(InterpreterOutOfBounds, match=r"^out-of-bounds read in kernel load_one_block_past_kernel: "
                                                     r"28 of the 64 fp32 elements .* element 100 of `x_ptr`"):
        _launch(K.load_one_block_past_kernel, 100, x, _far(torch.empty(100)))


def test_accesses_inside_a_views_storage_are_allowed(K, rng):
    """The bounds are the argument's whole storage: the harness's guard rows around an output
    view are its own to check (probe ``guard``)."""
    x = torch.randn(64, generator=rng)
    storage = torch.zeros(64 + 2 * 64)
    _launch(K.store_one_block_past_kernel, 64, x, storage[64:128], block=64)
    assert torch.equal(storage[64:128], x) and torch.equal(storage[128:], x)


def test_stock_interpreter_does_not_report_the_store(tmp_path):
    """Without the patch the same store goes through silently or kills the process: what the
    patch turns into a report (run in a child, whose heap it may corrupt)."""
    code = (
        "import os, sys; os.environ['TRITON_INTERPRET'] = '1'; sys.path.insert(0, %r)\n"
        "import torch\n"
        "from tests.fixtures import interp_kernels as K\n"
        "x = torch.randn(700); out = torch.empty(700)\n"
        "K.store_one_block_past_kernel[(2,)](x, out, 700, BLOCK=512)\n"
        "print('NO REPORT')\n" % ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "NO REPORT" in proc.stdout or proc.returncode < 0, (proc.returncode, proc.stderr[-2000:])
    assert "out-of-bounds" not in proc.stdout + proc.stderr


def test_harness_reports_the_sglang_one_block_past_store_with_the_case(tmp_path, monkeypatch):
    """The issue's case: an SGLang-style pre_reorder storing one BLOCK_SIZE (512) block past
    gateup_input is a FAILED case whose message names the out-of-bounds write, with the case,
    its replay command and its saved inputs (no SIGABRT, no anonymous crash)."""
    from harness.check import run_check
    from harness.options import CheckOptions
    monkeypatch.chdir(tmp_path)
    source = f"sglang:{os.path.join(HERE, 'fixtures', 'sglang_oob_block.py')}"
    case = ('{"dtype": "bfloat16", "end_expert": 3, "experts": 4, "hidden": 64, "inter": 32, "invalid_frac": 0.0, '
            '"op": "pre_reorder", "routing": "uniform", "seed": 0, "start_expert": 0, "tokens": 8, "topk": 2}')
    options = CheckOptions(impls=(source,), ops=("pre_reorder",), cases=1, case=case, shrink=False, quiet=True,
                           case_timeout_s=300.0)
    (row,) = run_check(options, "interpreter")
    assert (row.status, row.failure["probe"]) == ("FAILED", "exception"), row
    msg = row.failure["message"]
    assert msg.startswith("InterpreterOutOfBounds: out-of-bounds write in kernel pre_reorder_triton_kernel"), msg
    assert "`gateup_input_ptr`" in msg
    assert '"op": "pre_reorder"' in row.failure["params"] and "--case" in row.replay
    assert row.saved_inputs and os.path.exists(row.saved_inputs), row.saved_inputs


def test_offsets_are_counted_from_the_view_the_kernel_was_given(K, rng):
    """An output that is a view into a larger storage (the harness's guard rows): the message
    counts elements from the view's start and gives the storage's extent around it."""
    from harness.interpreter import InterpreterOutOfBounds
    x = _far(torch.randn(64, generator=rng))
    storage = torch.zeros(16 + 64 + 8)
    with pytest.raises(InterpreterOutOfBounds, match=r"the first is element 72 of `out_ptr` \(the nearest tensor "
                                                     r"argument, \(64,\) torch.float32; its memory holds elements "
                                                     r"-16 to 71 of that type\)"):
        _launch(K.store_one_block_past_kernel, 64, x, storage[16:80], block=64)


@pytest.mark.parametrize("tl_range", [False, True])
def test_loop_variables_have_a_to_method(K, rng, tl_range):
    """``for i in range(..)`` / ``tl.range(..)`` then ``i.to(tl.int64)`` (SGLang's ep_gather):
    an AttributeError on the stock interpreter, the identity with the patch."""
    from triton.runtime.interpreter import InterpretedFunction
    x = torch.randn(5, generator=rng)
    out = torch.zeros(5)

    def run():
        InterpretedFunction.rewritten_fn.pop(K.loop_widen_kernel.fn, None)  # rewrite under the current patch
        K.loop_widen_kernel[(1,)](x, out, 5, TL_RANGE=tl_range)
    with unpatched:
        with pytest.raises(Exception, match="has no attribute 'to'"):
            run()
    run()
    assert torch.equal(out, x * 2)
