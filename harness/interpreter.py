"""Make Triton's interpreter (TRITON_INTERPRET=1) compute bf16 and fp8 as the GPU does, and
bounds-check its memory accesses. ``select_backend`` applies the patch when it picks the
interpreter, before any kernel runs; ``unpatch_interpreter`` undoes it (for tests).

Why. The interpreter runs a kernel's ops on numpy arrays, and numpy has no bf16 or fp8: it
stores those tensors as their raw bit patterns (uint16 / uint8 arrays) and then
- computes bf16 arithmetic on the bit patterns as integers (``binary_op``: x + y of two bf16
  is the integer sum of their bits, hence NaN and garbage), and bf16 ``tl.dot`` as an
  integer matmul of the bits (1e10 where 1 is right);
- converts float32 -> bf16 by truncation (``cast_impl``, no rounding), and float -> fp8 with
  a bit-level routine (``_convert_float``) that rounds half away from zero on the cut-off bit
  only, ORs a mantissa carry into the exponent instead of adding it (-126.9 -> -64 where
  -128 is right: the carry is lost when the exponent field is odd), mis-rounds subnormals
  and neither saturates nor makes NaN for out-of-range values;
- converts integers to bf16 by storing the integer as the bit pattern;
- sums, maxes and scans bf16 tensors as integers (``ReduceOps.sum/min_max``,
  ``ScanOps.cumsum/cumprod``);
- stores and loads through raw addresses (``_interpreter.store/load`` in C++): a wild store
  corrupts the heap and the process dies with SIGSEGV, or later with SIGABRT in whatever
  code frees memory next, with no word of the kernel or the offset.

What is replaced (methods of ``triton.runtime.interpreter``; each new one hands every case
it does not concern to the original):
  InterpreterBuilder.binary_op, unary_op, ternary_op, create_fma
      bf16 operands are decoded to float32, the op runs there and the result is rounded to
      bf16 (nearest even). For + - * / that is the correctly rounded bf16 result, what
      sm_90's native bf16 instructions give: float32 has more than 2 * 8 + 2 significant
      bits, so rounding twice is innocuous. fma rounds to odd in float64 first, then to
      bf16, which is also exact. Arithmetic on fp8 values raises InterpreterCannotCompute
      (the GPU's behaviour there is not established here).
  InterpreterBuilder.cast_impl, create_fp_to_fp
      conversions from or to bf16, fp8e4nv (e4m3fn) and fp8e5 (e5m2), exact: decode to
      float64, round once. To bf16: nearest even, overflow to +-inf (``cvt.rn.bf16.f32``);
      rtz: toward zero, overflow to the largest finite value. To fp8 with the default
      rounding: nearest even, saturating: out-of-range values and infinities become
      +-max (448 for e4m3fn, 57344 for e5m2), NaN stays NaN. That is what Triton emits on
      sm_90 (``cvt.rn.satfinite.e4m3x2.f32`` / ``.e5m2x2.f32``, from fp32, bf16 via fp32, and
      fp16; see third_party/nvidia/lib/TritonNVIDIAGPUToLLVM/ElementwiseOpToLLVM.cpp) and
      what ``.satfinite`` means in the PTX ISA. Note torch's CPU cast to float8_e5m2 gives
      inf instead. e5m2 with rtz truncates (Triton goes through fp16 with rtz), overflow to
      the largest finite value, inf stays inf; other rtz conversions to fp8 (to e4m3fn, or
      from bf16/fp16) are rejected by Triton's NVIDIA backend and raise
      InterpreterCannotCompute here. The other fp8 formats (fp8e4b15,
      fp8e4b8, fp8e5b16: legacy and AMD) raise InterpreterCannotCompute: the stock routine
      is wrong for them too and no GPU semantics were checked.
  InterpreterBuilder.create_dot
      bf16 / fp8 operands are decoded to float32 and multiplied with float32 accumulation
      (the tensor cores' accumulator; the summation order differs, as it does between tile
      shapes on a GPU). fp16 and fp32 dots are left as they were (correct).
  ReduceOps.sum, ReduceOps.min_max, ScanOps.cumsum, ScanOps.cumprod
      bf16 inputs are decoded to float32, reduced there, and the values rounded to bf16
      once (a GPU rounds at every step of its reduction tree; the difference is within one
      bf16 rounding per step, and any order is legitimate).
  InterpreterBuilder.create_masked_load, create_masked_store, create_atomic_rmw,
  create_atomic_cas
      every active address must lie inside the storage of a tensor argument of the running
      launch (the whole storage, not only the view: the harness frames outputs with guard
      rows inside one storage and finds writes there itself). Otherwise InterpreterOutOfBounds
      is raised before anything is read or written, naming the kernel, the kind of access,
      the nearest tensor argument and the offset. Float atomics on bf16 / fp8 raise
      InterpreterCannotCompute.
  GridExecutor._init_args_hst, GridExecutor.__call__
      record the tensor arguments of each launch for the bounds check, and re-raise this
      module's exceptions unwrapped (the interpreter wraps every exception of a kernel in
      InterpreterError(repr(exc))), so a harness sees their type and message.
  _patch_lang (a module function; speed only)
      the stock interpreter re-patches triton.language (``inspect.getmembers`` over tl,
      tl.tensor, tl.math) at every call of a @triton.jit helper inside a kernel, for every
      program of the grid: 45% of the GEMM's interpreted time. The launch has already patched
      those modules (and restores them when it ends), so a nested call whose language modules
      the launch patched skips it; what it would have set is what is already there.

  ASTTransformer.visit_For (the rewrite of a kernel's source before it runs)
      ``for i in range(...)`` and ``for i in tl.range(...)`` yield LoopInt, a Python int with
      a Triton scalar's ``.to()``: compiled Triton makes a loop variable a tensor, and
      SGLang's kernels widen it with ``.to(tl.int64)``, which a plain int lacks
      (AttributeError on the interpreter only). The cast is the identity: Python ints do not
      overflow. Left out, without error, where a Triton has no ASTTransformer.

Checked against the interpreter sources of Triton 3.6.0 (the GPU image), 3.8.0 (what a fresh
install gets with torch 2.14.1) and 3.9.0 (the CI venv), and tests/test_interpreter.py run
with each: the replaced methods have the same role in all three; their argument lists differ
(create_masked_load/store) only where the new methods pass arguments through. The stock
interpreters differ in what they get wrong (3.6 and 3.8 widen bf16 for tl.maximum/minimum and
tl.cumsum; 3.9 does not), never in what the patch computes. ``patch_interpreter`` checks each
attribute it replaces, and that bf16 and fp8 are still stored as raw uint16 / uint8 bits, and
raises InterpreterPatchUnsupported naming the installed Triton version when one is missing.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np


class InterpreterCannotCompute(RuntimeError):
    """A construct whose GPU result the patched interpreter cannot reproduce (fp8 arithmetic,
    float atomics on bf16/fp8, unmodelled fp8 formats). A harness reports the case as "not
    computable on the interpreter" instead of as a failure of the kernel."""


class InterpreterOutOfBounds(IndexError):
    """A kernel loaded or stored outside every tensor it was given (raised before the access)."""


class InterpreterPatchUnsupported(RuntimeError):
    """The installed Triton's interpreter lacks something the patch replaces or relies on."""


# ----------------------------------------------------------------------------- float formats

@dataclasses.dataclass(frozen=True)
class _Format:
    """A float format the interpreter keeps as raw bits: its layout and conversion rules."""

    name: str
    storage: type          # numpy dtype of the raw bits
    mbits: int             # explicit mantissa bits
    ebits: int
    bias: int
    has_inf: bool          # False: e4m3fn (all-ones exponent is a number, only S.1111.111 is NaN)
    saturate_rne: bool     # nearest-even conversions clamp to +-max (PTX .satfinite) instead of inf

    @property
    def width(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def max_finite(self) -> float:
        top = (1 << self.ebits) - 1                  # exponent field of inf/NaN (or of 448 in e4m3fn)
        if self.has_inf:
            return float(np.ldexp(2.0 - 2.0 ** -self.mbits, top - 1 - self.bias))
        return float(np.ldexp(2.0 - 2.0 ** (1 - self.mbits), top - self.bias))

    @property
    def nan_bits(self) -> int:
        if self.has_inf:                             # quiet NaN: top exponent, top mantissa bit
            return (((1 << self.ebits) - 1) << self.mbits) | (1 << (self.mbits - 1))
        return (1 << (self.width - 1)) - 1           # e4m3fn: S.1111.111

    def decode(self, bits: np.ndarray) -> np.ndarray:
        """Raw bits -> float64 values (exact)."""
        b = bits.astype(np.int64)
        sign = (b >> (self.width - 1)) & 1
        field = (b >> self.mbits) & ((1 << self.ebits) - 1)
        mant = (b & ((1 << self.mbits) - 1)).astype(np.float64)
        normal = np.ldexp(1.0 + mant / (1 << self.mbits), (field - self.bias).astype(np.int32))
        sub = np.ldexp(mant, self.emin - self.mbits)
        v = np.where(field == 0, sub, normal)
        top = field == (1 << self.ebits) - 1
        if self.has_inf:
            v = np.where(top, np.where(mant == 0, np.inf, np.nan), v)
        else:
            v = np.where(top & (mant == (1 << self.mbits) - 1), np.nan, v)
        return np.where(sign == 1, -v, v)

    def encode(self, values: np.ndarray, rtz: bool = False) -> np.ndarray:
        """float64 values -> raw bits, rounded once: to nearest even (``rtz``: toward zero),
        overflow as the GPU's conversion does (see the module docstring)."""
        v = np.asarray(values, dtype=np.float64)
        nan = np.isnan(v)
        neg = np.signbit(v)
        a = np.where(nan, 0.0, np.abs(v))
        finite = np.isfinite(a)
        af = np.where(finite, a, 0.0)
        e = np.maximum(np.frexp(af)[1] - 1, self.emin)          # exponent of a (subnormals: emin)
        quantum = np.ldexp(1.0, (e - self.mbits).astype(np.int32))
        scaled = af / quantum                                    # exact: a power-of-two scaling
        r = (np.trunc(scaled) if rtz else np.rint(scaled)) * quantum  # np.rint: ties to even
        big = self.max_finite
        if rtz:                                  # toward zero never leaves the finite range
            r = np.where(finite, np.minimum(r, big), np.inf if self.has_inf else big)
        elif self.saturate_rne:
            r = np.minimum(np.where(finite, r, np.inf), big)
        else:                                    # IEEE: rounding past the largest finite is inf
            r = np.where(finite & (r <= big), r, np.inf)
        inf = np.isinf(r)
        rr = np.where(inf, 0.0, r)
        m, ex = np.frexp(rr)                                     # rr = m * 2**ex, m in [0.5, 1)
        normal = rr >= np.ldexp(1.0, self.emin)
        field = np.where(normal, ex - 1 + self.bias, 0)
        mant = np.where(normal, (2.0 * m - 1.0) * (1 << self.mbits), rr / np.ldexp(1.0, self.emin - self.mbits))
        bits = (field.astype(np.int64) << self.mbits) | np.rint(mant).astype(np.int64)
        bits = np.where(inf, ((1 << self.ebits) - 1) << self.mbits, bits)
        bits = np.where(nan, self.nan_bits, bits) | (neg.astype(np.int64) << (self.width - 1))
        return bits.astype(self.storage)


_FORMATS: Dict[object, _Format] = {}          # tl dtype -> format, filled by _formats()
_UNMODELLED: Tuple[object, ...] = ()          # fp8 formats the patch refuses (legacy / AMD)


def _formats():
    import triton.language as tl
    if not _FORMATS:
        _FORMATS.update({
            tl.bfloat16: _Format("bf16", np.uint16, 7, 8, 127, True, False),
            tl.float8e4nv: _Format("fp8e4nv", np.uint8, 3, 4, 7, False, True),
            tl.float8e5: _Format("fp8e5", np.uint8, 2, 5, 15, True, True),
        })
    return _FORMATS


def _fmt(handle) -> Optional[_Format]:
    """The format of a handle that holds raw bf16/fp8 bits, else None. The data's numpy
    dtype is checked too: the interpreter labels a comparison's bool result with its
    operands' dtype, and those bools are not bits to decode."""
    dtype = getattr(handle.dtype, "scalar", handle.dtype)
    f = _FORMATS.get(dtype)
    if f is not None and handle.data.dtype == f.storage:
        return f
    if dtype in _UNMODELLED:
        raise InterpreterCannotCompute(f"{dtype} values: this fp8 format is not modelled on the interpreter")
    return None


def _values32(handle) -> np.ndarray:
    """A handle's values as float32 (exact for bf16 and fp8), whatever its format."""
    f = _fmt(handle)
    return f.decode(handle.data).astype(np.float32) if f is not None else handle.data


# ----------------------------------------------------------------------------- patched ops

_ORIGINALS: Dict[Tuple[object, str], Callable] = {}
_TH = None   # triton.runtime.interpreter, set by patch_interpreter


def _handle(data, dtype):
    return _TH.TensorHandle(data, dtype)


def _arith_only_bf16(f: _Format, what: str) -> None:
    if f.name != "bf16":
        raise InterpreterCannotCompute(f"{what} on {f.name} values: the GPU's fp8 arithmetic is not modelled "
                                       "on the interpreter (convert to float32 first)")


def _rounded(out: np.ndarray, f: _Format, fallback_dtype):
    """An op's float32/float64 result rounded to ``f``; non-float results (comparisons) as int1."""
    import triton.language as tl
    if out.dtype.kind == "f":
        return _handle(f.encode(out), _format_dtype(f))
    return _handle(out, tl.int1 if out.dtype == np.bool_ else fallback_dtype)


def _format_dtype(f: _Format):
    return next(k for k, v in _FORMATS.items() if v is f)


def binary_op(self, lhs, rhs, op):
    f = _fmt(lhs) or _fmt(rhs)
    if f is None:
        return _ORIGINALS[("builder", "binary_op")](self, lhs, rhs, op)
    _arith_only_bf16(f, getattr(op, "__name__", "arithmetic"))
    with np.errstate(all="ignore"):   # inf - inf, 0 / 0 and the like are the IEEE answers, not errors
        return _rounded(op(_values32(lhs), _values32(rhs)), f, lhs.dtype.scalar)


def unary_op(self, arg, op):
    f = _fmt(arg)
    if f is None:
        return _ORIGINALS[("builder", "unary_op")](self, arg, op)
    _arith_only_bf16(f, getattr(op, "__name__", "arithmetic"))
    with np.errstate(all="ignore"):
        return _rounded(op(_values32(arg)), f, arg.dtype.scalar)


def ternary_op(self, lhs, rhs, other, op):
    # np.where (tl.where) picks whole elements: bits are as good as values, and lhs is the
    # condition. Anything else (np.clip) works on values.
    f = None if op is np.where else (_fmt(lhs) or _fmt(rhs) or _fmt(other))
    if f is None:
        return _ORIGINALS[("builder", "ternary_op")](self, lhs, rhs, other, op)
    _arith_only_bf16(f, getattr(op, "__name__", "arithmetic"))
    with np.errstate(all="ignore"):
        return _rounded(op(_values32(lhs), _values32(rhs), _values32(other)), f, other.dtype.scalar)


def create_fma(self, x, y, z):
    f = _fmt(x) or _fmt(y) or _fmt(z)
    if f is None:
        return _ORIGINALS[("builder", "create_fma")](self, x, y, z)
    _arith_only_bf16(f, "fma")
    with np.errstate(all="ignore"):
        p = _values32(x).astype(np.float64) * _values32(y).astype(np.float64)  # exact: 16 of 53 bits
        c = _values32(z).astype(np.float64)
        s = p + c
        # The rounding error of s (Knuth's two-sum), then round s to odd: a float64 result
        # rounded to odd and then to bf16's 8 bits is the single, correct rounding of p + c.
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
        even = (s.view(np.int64) & 1) == 0
        s = np.where((err != 0) & even & np.isfinite(s), np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return _handle(f.encode(s), _format_dtype(f))


def _convert(src, dst_type, rtz: bool):
    """A conversion with bf16 / fp8 on at least one side (see the module docstring)."""
    import triton.language as tl
    dst = dst_type.scalar
    sf, df = _fmt(src), _FORMATS.get(dst)
    if dst in _UNMODELLED:
        raise InterpreterCannotCompute(f"conversion to {dst}: this fp8 format is not modelled on the interpreter")
    # float64 holds every bf16/fp8/fp16/fp32 value and every integer below 2**53 exactly, so
    # the conversion below rounds once
    values = sf.decode(src.data) if sf is not None else src.data.astype(np.float64)
    if df is not None:
        if rtz and df.name != "bf16" and (df.name == "fp8e4nv" or src.dtype.scalar != tl.float32):
            raise InterpreterCannotCompute(f"{src.dtype.scalar} -> {df.name} rounding toward zero: Triton's NVIDIA "
                                           "backend rejects it (only float32 -> fp8e5 has an rtz lowering), so there "
                                           "is no GPU answer to reproduce")
        return _handle(df.encode(values, rtz=rtz), dst)
    np_dtype = _TH._get_np_dtype(dst)
    with np.errstate(all="ignore"):
        if np_dtype.kind == "f":   # widening, or bf16 -> fp16 (Triton allows no rtz for either)
            return _handle(values.astype(np_dtype), dst)
        if dst == tl.int1:
            return _handle(values != 0, dst)
        return _handle(np.trunc(values).astype(np_dtype), dst)   # fptosi/fptoui truncate


def _is_rtz(rounding_mode) -> bool:
    return rounding_mode is not None and getattr(rounding_mode, "name", str(rounding_mode)).upper().endswith("RTZ")


def cast_impl(self, src, dst_type):
    if _fmt(src) is None and dst_type.scalar not in _FORMATS and dst_type.scalar not in _UNMODELLED:
        return _ORIGINALS[("builder", "cast_impl")](self, src, dst_type)
    return _convert(src, dst_type, rtz=False)


def create_fp_to_fp(self, src, dst_type, rounding_mode):
    if _fmt(src) is None and dst_type.scalar not in _FORMATS and dst_type.scalar not in _UNMODELLED:
        return _ORIGINALS[("builder", "create_fp_to_fp")](self, src, dst_type, rounding_mode)
    return _convert(src, dst_type, rtz=_is_rtz(rounding_mode))


def create_dot(self, a, b, d, *rest):
    fa, fb, fd = _fmt(a), _fmt(b), _fmt(d)
    if fa is None and fb is None and fd is None:
        return _ORIGINALS[("builder", "create_dot")](self, a, b, d, *rest)
    # an overflow is inf, silently, as on a GPU (a kernel may multiply rows it masks out later)
    with np.errstate(over="ignore", invalid="ignore"):
        acc = np.matmul(_values32(a).astype(np.float32), _values32(b).astype(np.float32))
        out = acc + _values32(d).astype(np.float32)
    if fd is not None:
        return _handle(fd.encode(out), d.dtype.scalar)
    return _handle(out.astype(d.data.dtype), d.dtype.scalar)


def _reduction(key):
    """ReduceOps/ScanOps method ``key`` on a bf16 input: run it on the values in float32 and
    round what comes out in float32 (the values, not argmax's indices) to bf16 once."""
    def method(self, input, *args, **kwargs):
        import triton.language as tl
        tensor = input[0] if isinstance(input, tuple) else input
        f = _fmt(tensor.handle)
        if f is None:
            return _ORIGINALS[key](self, input, *args, **kwargs)
        _arith_only_bf16(f, key[1])
        proxy = tl.core.tensor(_handle(_values32(tensor.handle), tl.float32), _with_scalar(tensor.type, tl.float32))
        out = _ORIGINALS[key](self, proxy, *args, **kwargs)

        def back(t):
            if isinstance(t, tl.core.tensor) and t.dtype == tl.float32:
                return tl.core.tensor(_handle(f.encode(t.handle.data), tensor.dtype),
                                      _with_scalar(t.type, tensor.dtype))
            return t
        if isinstance(out, (tuple, list)):
            return type(out)(back(t) for t in out)
        return back(out)
    method.__name__ = key[1]
    return method


def _with_scalar(ty, scalar):
    import triton.language as tl
    return tl.block_type(scalar, list(ty.shape)) if ty.is_block() else scalar


# ----------------------------------------------------------------------------- bounds-checked memory

@dataclasses.dataclass
class _Launch:
    """The memory one kernel launch may touch: the storages of its tensor arguments."""

    kernel: str
    starts: np.ndarray       # int64, sorted
    ends: np.ndarray         # exclusive
    args: List[Tuple[str, object]]   # (argument name, host tensor), in the order of starts

    @classmethod
    def of(cls, kernel: str, named_args) -> "_Launch":
        found: Dict[int, Tuple[int, str, object]] = {}

        def visit(name, arg):
            if isinstance(arg, tuple):
                for i, a in enumerate(arg):
                    visit(f"{name}[{i}]", a)
                return
            if not hasattr(arg, "untyped_storage"):      # TensorWrapper, TensorDescriptor: their base
                arg = getattr(arg, "base", None)             # (a torch view's .base would lose its offset)
            if hasattr(arg, "untyped_storage"):
                st = arg.untyped_storage()
                if st.nbytes() and st.data_ptr() not in found:
                    found[st.data_ptr()] = (st.nbytes(), name, arg)

        for name, arg in named_args:
            visit(name, arg)
        order = sorted(found)
        return cls(kernel, np.array(order, dtype=np.int64),
                   np.array([p + found[p][0] for p in order], dtype=np.int64),
                   [(found[p][1], found[p][2]) for p in order])

    def check(self, ptrs, mask, kind: str) -> None:
        addr = np.asarray(ptrs.data).astype(np.int64)
        if mask is not None:
            addr = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)]
        addr = addr.ravel()
        if not addr.size:
            return
        elem = ptrs.get_element_ty()
        size = max(1, elem.primitive_bitwidth // 8)
        i = np.searchsorted(self.starts, addr, side="right") - 1
        ok = (i >= 0) & (addr + size <= self.ends[np.maximum(i, 0)])
        if ok.all():
            return
        bad = addr[~ok]
        raise InterpreterOutOfBounds(self._describe(kind, int(bad[0]), bad.size, addr.size, elem, size))

    def _describe(self, kind, a, n_bad, n, elem, size) -> str:
        head = (f"out-of-bounds {kind} in kernel {self.kernel}: {n_bad} of the {n} {elem} elements it "
                f"{'stored' if kind == 'write' else 'loaded'} in one access lie outside every tensor argument")
        if not self.args:
            return head + " (it was given no tensor)"
        dist = [max(s - a, a + size - e, 0) for s, e in zip(self.starts.tolist(), self.ends.tolist())]
        j = int(np.argmin(dist))
        name, t = self.args[j]
        view0 = t.data_ptr()
        lo = (int(self.starts[j]) - view0) // size
        hi = (int(self.ends[j]) - view0) // size
        return (f"{head}; the first is element {(a - view0) // size} of `{name}` (the nearest tensor argument, "
                f"{tuple(t.shape)} {t.dtype}; its memory holds elements {lo} to {hi - 1} of that type)")


_LAUNCHES: List[_Launch] = []


def _check(ptrs, mask, kind) -> None:
    if _LAUNCHES:
        _LAUNCHES[-1].check(ptrs, mask, kind)


def create_masked_load(self, ptrs, mask, *rest, **kw):
    _check(ptrs, mask, "read")
    return _ORIGINALS[("builder", "create_masked_load")](self, ptrs, mask, *rest, **kw)


def create_masked_store(self, ptrs, value, mask, *rest, **kw):
    _check(ptrs, mask, "write")
    return _ORIGINALS[("builder", "create_masked_store")](self, ptrs, value, mask, *rest, **kw)


def create_atomic_rmw(self, rmw_op, ptr, val, mask, *rest):
    f = _fmt(val)
    if f is not None and "XCHG" not in str(rmw_op):
        raise InterpreterCannotCompute(f"atomic {rmw_op} on {f.name} values is not modelled on the interpreter")
    _check(ptr, mask, "write")
    return _ORIGINALS[("builder", "create_atomic_rmw")](self, rmw_op, ptr, val, mask, *rest)


def create_atomic_cas(self, ptr, cmp, val, *rest):
    _check(ptr, None, "write")
    return _ORIGINALS[("builder", "create_atomic_cas")](self, ptr, cmp, val, *rest)


def _init_args_hst(self, args_dev, kwargs):
    args_hst, kwargs_hst = _ORIGINALS[("grid", "_init_args_hst")](self, args_dev, kwargs)
    names = list(self.arg_names) + [f"arg{i}" for i in range(len(self.arg_names), len(args_hst))]
    _LAUNCHES.append(_Launch.of(getattr(self.fn, "__name__", "?"), list(zip(names, args_hst)) +
                                list(kwargs_hst.items())))
    return args_hst, kwargs_hst


class LoopInt(int):
    """A kernel's loop variable on the interpreter: an int with the ``.to(dtype)`` of a Triton
    scalar (the identity: a Python int cannot overflow the dtype it is widened to)."""

    def to(self, *args, **kwargs):
        return self


def loop_range(arg1, arg2=None, step=None, **kwargs):
    """``range`` / ``tl.range`` of a kernel loop, yielding LoopInt (``tl.range``'s tuning
    keywords, num_stages and the like, mean nothing here)."""
    start, end = (0, arg1) if arg2 is None else (arg1, arg2)
    return map(LoopInt, range(start, end, 1 if step is None else step))


# The global name a rewritten kernel calls for its loops (copied into the kernel's module
# globals by the interpreter's FunctionRewriter, as it does with its own helpers).
_LOOP_RANGE = "_moe_harness_loop_range"


def visit_For(self, node):
    """Route ``for x in range(..)`` / ``tl.range(..)`` through loop_range."""
    import ast
    node = self.generic_visit(node)
    it = node.iter
    if isinstance(it, ast.Call) and ((isinstance(it.func, ast.Name) and it.func.id == "range")
                                     or (isinstance(it.func, ast.Attribute) and it.func.attr == "range")):
        it.func = ast.copy_location(ast.Name(id=_LOOP_RANGE, ctx=ast.Load()), it.func)
    return node


def _own_error(exc: BaseException) -> Optional[BaseException]:
    """This module's exception behind the interpreter's InterpreterError wrapping(s), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (InterpreterCannotCompute, InterpreterOutOfBounds)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# Per running launch: the ids of the language modules patched since it started (None before
# the launch's own _patch_lang call).
_LANG_PATCHED: List[Optional[frozenset]] = []


def _lang_modules(fn) -> frozenset:
    import triton.language as tl
    return frozenset(id(v) for v in fn.__globals__.values() if v is tl or v is tl.core)


def patch_lang(fn):
    """The interpreter's _patch_lang, skipped for a @triton.jit helper called inside a launch
    that has already patched the language modules the helper sees (see the module docstring)."""
    if _LANG_PATCHED:
        langs = _lang_modules(fn)
        if _LANG_PATCHED[-1] is not None and langs <= _LANG_PATCHED[-1]:
            return _TH._LangPatchScope()    # a nested helper: nothing left to patch
        # the launch's own call, or a helper that sees another language module: patch, and
        # remember it (a helper's patch stays until the launch ends, as it does in the stock code)
        _LANG_PATCHED[-1] = langs | (_LANG_PATCHED[-1] or frozenset())
    return _ORIGINALS[("module", "_patch_lang")](fn)


def grid_call(self, *args, **kwargs):
    depth = len(_LAUNCHES)
    _LANG_PATCHED.append(None)
    try:
        return _ORIGINALS[("grid", "__call__")](self, *args, **kwargs)
    except Exception as exc:
        own = _own_error(exc)
        if own is None or own is exc:
            raise
        raise own from None   # its own traceback still ends in the kernel line that raised it
    finally:
        del _LAUNCHES[depth:]
        _LANG_PATCHED.pop()


# ----------------------------------------------------------------------------- patch / unpatch

_BUILDER_METHODS = {
    "binary_op": binary_op, "unary_op": unary_op, "ternary_op": ternary_op, "create_fma": create_fma,
    "cast_impl": cast_impl, "create_fp_to_fp": create_fp_to_fp, "create_dot": create_dot,
    "create_masked_load": create_masked_load, "create_masked_store": create_masked_store,
    "create_atomic_rmw": create_atomic_rmw, "create_atomic_cas": create_atomic_cas,
}
_REDUCTIONS = {("ReduceOps", "sum"), ("ReduceOps", "min_max"), ("ScanOps", "cumsum"), ("ScanOps", "cumprod")}
_GRID_METHODS = {"_init_args_hst": _init_args_hst, "__call__": grid_call}


def _targets(th):
    """(owner key, class, attribute, replacement) for every replaced attribute."""
    builder, grid = getattr(th, "InterpreterBuilder", None), getattr(th, "GridExecutor", None)
    out = [(("builder", n), builder, n, f) for n, f in _BUILDER_METHODS.items()]
    out += [((c, n), getattr(th, c, None), n, _reduction((c, n))) for c, n in sorted(_REDUCTIONS)]
    out += [(("grid", n), grid, n, f) for n, f in _GRID_METHODS.items()]
    out += [(("module", "_patch_lang"), th, "_patch_lang", patch_lang)]
    return out


def is_patched() -> bool:
    return bool(_ORIGINALS)


def patch_interpreter() -> None:
    """Replace the interpreter methods listed in the module docstring (idempotent). Must run
    after TRITON_INTERPRET=1 is set (it imports triton). Raises InterpreterPatchUnsupported,
    naming the Triton version, when this Triton's interpreter lacks what the patch replaces."""
    global _TH, _UNMODELLED
    if _ORIGINALS:
        return
    import triton
    import triton.language as tl
    try:
        import triton.runtime.interpreter as th
    except ImportError as exc:
        raise InterpreterPatchUnsupported(f"Triton {triton.__version__} has no triton.runtime.interpreter: {exc}")
    missing = [f"{key[0]}.{name}" for key, cls, name, _ in _targets(th)
               if cls is None or not callable(getattr(cls, name, None))]
    missing += [name for name in ("TensorHandle", "_get_np_dtype", "_LangPatchScope") if not hasattr(th, name)]
    if not missing:
        try:
            layout_ok = all(th._get_np_dtype(t) == np.dtype(f.storage) for t, f in _formats().items())
        except Exception:
            layout_ok = False
        if not layout_ok:
            missing.append("bf16/fp8 stored as raw uint16/uint8 bits (_get_np_dtype)")
    if missing:
        raise InterpreterPatchUnsupported(
            f"harness.interpreter cannot patch Triton {triton.__version__}'s interpreter: missing "
            f"{', '.join(missing)} (checked with Triton 3.6, 3.8 and 3.9)")
    _TH = th
    _UNMODELLED = tuple(getattr(tl, n) for n in ("float8e4b15", "float8e4b8", "float8e5b16") if hasattr(tl, n))
    for key, cls, name, new in _targets(th):
        _ORIGINALS[key] = getattr(cls, name)
        setattr(cls, name, new)
    if hasattr(th, "ASTTransformer"):  # optional: only kernels that cast loop variables need it
        _ORIGINALS[("ast", "visit_For")] = th.ASTTransformer.__dict__.get("visit_For")
        th.ASTTransformer.visit_For = visit_For
        setattr(th, _LOOP_RANGE, loop_range)


def unpatch_interpreter() -> None:
    """Put back every original method (a no-op when not patched)."""
    if not _ORIGINALS:
        return
    for key, cls, name, _ in _targets(_TH):
        setattr(cls, name, _ORIGINALS[key])
    if ("ast", "visit_For") in _ORIGINALS:
        original = _ORIGINALS[("ast", "visit_For")]
        if original is None:
            del _TH.ASTTransformer.visit_For
        else:
            _TH.ASTTransformer.visit_For = original
        delattr(_TH, _LOOP_RANGE)
    _ORIGINALS.clear()
    _LAUNCHES.clear()
    _LANG_PATCHED.clear()
