"""The timing engine: interleaved, L2-flushed, event-timed repetitions in eager and CUDA-graph
mode; the statistics (quantiles, bootstrap confidence interval of a speedup, verdict); and the
card's own ceilings (device-to-device copy, bf16 matmul).

Method (as ``triton.testing.do_bench``, generalised to several implementations at once):

- Before every timed call the L2 cache is flushed by writing a buffer of at least twice its
  size (on a GPU at least do_bench's 256 MiB); the write is enqueued outside the timed region
  (between the previous end event and the next start event).
- CUDA events are recorded immediately around the call; nothing waits on the host between
  repetitions: the device is synchronised once after the timed rounds.
- Warm-up and repetition counts are sized by time: a few untimed rounds estimate the cost of
  one round, then ``warmup_ms`` and ``rep_ms`` of rounds are run.
- Several implementations are timed in interleaved rounds (A B, B A, A B, ...: the order
  rotates every round), so clock drift and thermal state hit all of them alike, and sample i
  of each implementation comes from the same round: the speedup's confidence interval is a
  paired bootstrap over rounds.
- Eager mode calls the Python function (host launch time is visible wherever it exceeds
  the device time of the preceding flush, as with do_bench); graph mode replays a CUDA graph
  captured from one call (device time, what a graph-captured decode step pays).

On the CPU (interpreter backend) the same engine runs with ``time.perf_counter_ns`` in
place of events; such timings are not representative of any GPU.

Results are frozen, JSON-safe dataclasses. The pure-math functions (``quantile``,
``bootstrap_ratio_ci``, ``verdict``, ``compare``) need no device.
"""
from __future__ import annotations

import functools
import gc
import math
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

FASTER, SLOWER, WITHIN_NOISE = "faster", "slower", "within noise"
TOO_FEW = "too few repetitions"
MIN_PAIRS_FOR_VERDICT = 10     # below this a bootstrap interval of a median means little


# ----------------------------------------------------------------------------- statistics

def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) with linear interpolation between order statistics
    (numpy's default method). ValueError on an empty sequence."""
    if len(samples) == 0:
        raise ValueError("quantile: no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: expected 0 <= q <= 1, got {q}")
    xs = sorted(float(x) for x in samples)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings of one call, in milliseconds."""

    n: int
    median_ms: float
    q1_ms: float        # 25th percentile
    q3_ms: float        # 75th percentile
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Stats":
        return cls(n=len(samples_ms), median_ms=quantile(samples_ms, 0.5), q1_ms=quantile(samples_ms, 0.25),
                   q3_ms=quantile(samples_ms, 0.75), min_ms=min(samples_ms), max_ms=max(samples_ms))


def bootstrap_ratio_ci(baseline_ms: Sequence[float], candidate_ms: Sequence[float], *, n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    """Speedup of the candidate over the baseline, median(baseline) / median(candidate)
    (above 1: the candidate is faster), with a percentile bootstrap confidence interval.

    When both sequences have the same length they are taken as paired by round (sample i of
    each came from the same interleaved round) and rounds are resampled as pairs, so drift
    shared by a round cancels; otherwise each sequence is resampled on its own. Seeded:
    the same inputs give the same interval. Returns (ratio, low, high)."""
    a = np.asarray(baseline_ms, dtype=np.float64)
    b = np.asarray(candidate_ms, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("bootstrap_ratio_ci: both sample sets must be non-empty")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ratio_ci: expected 0 < confidence < 1, got {confidence}")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 4_000_000 // max(a.size, b.size))   # bound the index matrices' memory
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        ia = rng.integers(0, a.size, size=(m, a.size))
        ib = ia if a.size == b.size else rng.integers(0, b.size, size=(m, b.size))
        with np.errstate(divide="ignore", invalid="ignore"):   # a 0 ms median (a call that does nothing)
            ratios[start:start + m] = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    with np.errstate(divide="ignore", invalid="ignore"):
        point = np.median(a) / np.median(b)
    return float(point), float(lo), float(hi)


def verdict(ci_low: float, ci_high: float, *, min_effect: float = 0.0) -> str:
    """'faster' when the whole interval lies above 1 + min_effect, 'slower' when it lies below
    1 / (1 + min_effect), else 'within noise' (the interval admits no difference, or one too
    small to matter)."""
    if ci_low > ci_high:
        raise ValueError(f"verdict: interval low {ci_low} above high {ci_high}")
    if ci_low > 1.0 + min_effect:
        return FASTER
    if ci_high < 1.0 / (1.0 + min_effect):
        return SLOWER
    return WITHIN_NOISE


@dataclass(frozen=True)
class Comparison:
    """A/B result: ratio = median(baseline) / median(candidate), above 1 means candidate faster."""

    baseline: str
    candidate: str
    mode: str               # eager | graph
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    verdict: str            # faster | slower | within noise | too few repetitions
    n_pairs: int

    def describe(self) -> str:
        return f"{self.ratio:.3f}x [{self.ci_low:.3f}, {self.ci_high:.3f}] {self.verdict}"


def compare(baseline: str, baseline_ms: Sequence[float], candidate: str, candidate_ms: Sequence[float], mode: str,
            *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, min_effect: float = 0.0) -> Comparison:
    """Bootstrap the speedup of ``candidate`` over ``baseline`` and name the verdict (no verdict
    from fewer than MIN_PAIRS_FOR_VERDICT repetitions)."""
    ratio, lo, hi = bootstrap_ratio_ci(baseline_ms, candidate_ms, n_boot=n_boot, confidence=confidence, seed=seed)
    n = min(len(baseline_ms), len(candidate_ms))
    word = verdict(lo, hi, min_effect=min_effect) if n >= MIN_PAIRS_FOR_VERDICT else TOO_FEW
    return Comparison(baseline, candidate, mode, ratio, lo, hi, confidence, word, n)


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TimingConfig:
    """How long to warm up and measure; counts follow from the measured cost of one round."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_rounds: int = 10
    max_rounds: int = 2000
    estimate_rounds: int = 3     # untimed rounds that estimate the cost of one round
    flush_l2: bool = True
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0                # bootstrap seed


# ----------------------------------------------------------------------------- device plumbing

def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def device_name(device) -> str:
    if is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.machine()})"


def synchronize(device) -> None:
    """Wait for all work on the device, every stream included (not just the current one)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def l2_bytes(device) -> int:
    """L2 size of the card (64 MiB if torch does not say); on the CPU a nominal 4 MiB."""
    if is_cuda(device):
        props = torch.cuda.get_device_properties(torch.device(device))
        return int(getattr(props, "L2_cache_size", 0) or 64 << 20)
    return 4 << 20


# triton.testing.do_bench zeroes a 256 MiB buffer between calls. The flush is also what hides
# host launch time in eager mode (the host prepares the next call while the device writes), so
# the same size keeps our eager figures comparable with do_bench-measured ones (ANCHORS.md).
DO_BENCH_FLUSH_BYTES = 256 << 20


class L2Flusher:
    """Overwrites a buffer of at least twice the L2 size (on a GPU at least do_bench's 256 MiB):
    evicts every line the timed call could otherwise find warm. Calling it enqueues one write
    kernel and never waits."""

    def __init__(self, device, enabled: bool = True):
        self.buffer = None
        if enabled:
            floor = DO_BENCH_FLUSH_BYTES if is_cuda(device) else 8 << 20
            nbytes = max(2 * l2_bytes(device), floor)
            self.buffer = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


class _Clock:
    """CUDA events on a GPU; the host's monotonic clock on the CPU (synchronous there)."""

    def __init__(self, device):
        self.cuda = is_cuda(device)
        self.device = device

    def marks(self, n: int) -> list:
        if self.cuda:
            return [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        return [0] * n

    def record(self, marks: list, i: int) -> None:
        if self.cuda:
            marks[i].record()
        else:
            marks[i] = time.perf_counter_ns()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) / 1e6


# ----------------------------------------------------------------------------- the engine

@dataclass(frozen=True)
class Workload:
    """One implementation as the engine times it.

    calls: zero-argument callables; round r runs ``calls[r % len(calls)]`` (so inputs can be
    rotated between rounds). Each is the whole timed region: keep it to the call itself.
    outputs(variant, returned): the tensors the call produced, read only after the final
    round's end event (never inside the timed region)."""

    name: str
    calls: Tuple[Callable[[], Any], ...]
    outputs: Callable[[int, Any], Mapping[str, torch.Tensor]] = lambda variant, returned: {}


@dataclass
class InterleavedRun:
    """Raw result of ``run_interleaved`` (holds tensors: not a result record)."""

    times_ms: List[List[float]]                       # [workload][round]
    final_variant: List[int]                          # which call each workload ran last
    final_outputs: List[Dict[str, torch.Tensor]]      # read after the device was synchronised
    final_snapshots: List[Dict[str, torch.Tensor]]    # copied on the timing stream right after the end event
    n_warmup: int
    n_rounds: int
    round_ms_estimate: float


def round_order(n: int, r: int) -> List[int]:
    """Order of the workloads in round r: rotated by r, so for two workloads A B, B A, A B, ..."""
    return [(i + r) % n for i in range(n)]


def run_interleaved(workloads: Sequence[Workload], device, config: TimingConfig = TimingConfig(), *,
                    before_final_round: Optional[Callable[[], None]] = None) -> InterleavedRun:
    """Time the workloads in interleaved rounds (see the module docstring).

    The last round is prepared outside the timed region: the device is synchronised (no
    work of earlier rounds is still running, on any stream), then ``before_final_round``
    runs (the bench command writes fresh inputs and poisons the outputs there). In that
    round each workload's outputs are copied on the current stream right after its end
    event (a work item deferred to another stream is missing from that copy), then the
    device is synchronised and the outputs are read again.
    """
    n = len(workloads)
    if n == 0:
        raise ValueError("run_interleaved: no workloads")
    clock = _Clock(device)
    flush = L2Flusher(device, config.flush_l2)

    def untimed_round(r: int) -> None:
        for i in round_order(n, r):
            w = workloads[i]
            flush()
            w.calls[r % len(w.calls)]()

    untimed_round(0)                                   # first calls: compilation, caches, allocator
    synchronize(device)
    est_rounds = max(1, config.estimate_rounds)
    t0 = time.perf_counter()
    for r in range(est_rounds):
        untimed_round(r)
    synchronize(device)
    round_ms = max((time.perf_counter() - t0) * 1e3 / est_rounds, 1e-3)
    n_warmup = max(1, math.ceil(config.warmup_ms / round_ms))
    n_rounds = int(min(max(config.min_rounds, round(config.rep_ms / round_ms)), config.max_rounds))
    n_rounds = max(n_rounds, 2)
    for r in range(n_warmup):
        untimed_round(r)

    starts = [clock.marks(n_rounds) for _ in range(n)]
    ends = [clock.marks(n_rounds) for _ in range(n)]
    final_variant = [0] * n
    final_ret: List[Any] = [None] * n
    snapshots: List[Dict[str, torch.Tensor]] = [{} for _ in range(n)]
    gc_was_enabled = gc.isenabled()
    gc.disable()                                        # no collector pauses inside timed regions
    try:
        for r in range(n_rounds):
            last = r == n_rounds - 1
            if last:
                synchronize(device)
                if before_final_round is not None:
                    before_final_round()
            for i in round_order(n, r):
                w = workloads[i]
                v = r % len(w.calls)
                call = w.calls[v]
                flush()
                clock.record(starts[i], r)
                ret = call()
                clock.record(ends[i], r)
                if last:
                    final_variant[i], final_ret[i] = v, ret
                    snapshots[i] = {k: t.clone() for k, t in w.outputs(v, ret).items()
                                    if isinstance(t, torch.Tensor)}
        synchronize(device)
    finally:
        if gc_was_enabled:
            gc.enable()
    times = [[clock.elapsed_ms(starts[i][r], ends[i][r]) for r in range(n_rounds)] for i in range(n)]
    finals = [dict(workloads[i].outputs(final_variant[i], final_ret[i])) for i in range(n)]
    return InterleavedRun(times, final_variant, finals, snapshots, n_warmup, n_rounds, round_ms)


# ----------------------------------------------------------------------------- CUDA graphs

class GraphUnavailable(Exception):
    """The call cannot be captured in a CUDA graph; the message says why."""


def _root_message(exc: BaseException) -> str:
    root = exc
    while root.__context__ is not None and root.__context__ is not root:
        root = root.__context__
    first = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return f"{type(root).__name__}: {first}"[:200]


def capture_graph(call: Callable[[], Any], device, *, warmup_calls: int = 2) -> Tuple[Any, Any]:
    """Capture one call in a CUDA graph; returns (graph, what the captured call returned).

    The call is first run with torch's sync debug mode set to 'error', so a call that
    synchronises the host is refused before any capture is attempted (a failed capture can
    leave the context unusable). Raises GraphUnavailable with the reason."""
    if not is_cuda(device):
        raise GraphUnavailable("CUDA graphs need a CUDA device")
    synchronize(device)
    prev_mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except Exception as exc:  # the call synchronises the host: it cannot be captured
        raise GraphUnavailable(f"the call synchronises with the host ({_root_message(exc)})") from None
    finally:
        torch.cuda.set_sync_debug_mode(prev_mode)
    side = torch.cuda.Stream(device=torch.device(device))
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):                     # warm-up on a side stream, as torch's docs ask
        for _ in range(warmup_calls):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            ret = call()
    except Exception as exc:
        synchronize(device)
        raise GraphUnavailable(f"capture failed ({_root_message(exc)})") from None
    synchronize(device)
    return graph, ret


# ----------------------------------------------------------------------------- ceilings

@dataclass(frozen=True)
class Ceilings:
    """The card's measured ceilings: D2D copy bandwidth (bytes read + written) and bf16 matmul."""

    device: str
    copy_gbps: float
    matmul_tflops: float
    copy_bytes: int           # bytes of the copied buffer (moved: twice that)
    matmul_n: int             # an n x n x n bf16 matmul
    copy: Stats
    matmul: Stats
    representative: bool      # False on the CPU / interpreter

    def describe(self) -> str:
        return (f"ceilings on {self.device}: device-to-device copy {self.copy_gbps:,.0f} GB/s (read + write, "
                f"{self.copy_bytes / 2**30:.2f} GiB buffer); bf16 matmul {self.matmul_n}^3 "
                f"{self.matmul_tflops:,.3g} TFLOP/s")


def _time_alone(call: Callable[[], Any], device, config: TimingConfig) -> Stats:
    run = run_interleaved([Workload("ceiling", (call,))], device, config)
    return Stats.of(run.times_ms[0])


def measure_ceilings(device, config: TimingConfig = TimingConfig(), *, copy_bytes: Optional[int] = None,
                     matmul_n: Optional[int] = None) -> Ceilings:
    """Time a large device-to-device copy and a large bf16 matmul on random data.

    Defaults: 1 GiB and 8192 on a GPU (both far beyond L2, so no flush is needed),
    32 MiB and 256 on the CPU."""
    cuda = is_cuda(device)
    copy_bytes = copy_bytes or ((1 << 30) if cuda else (32 << 20))
    matmul_n = matmul_n or (8192 if cuda else 256)
    cfg = TimingConfig(warmup_ms=config.warmup_ms, rep_ms=config.rep_ms, min_rounds=config.min_rounds,
                       max_rounds=config.max_rounds, estimate_rounds=config.estimate_rounds, flush_l2=False)
    src = torch.empty(copy_bytes // 4, dtype=torch.int32, device=device).random_()
    dst = torch.empty_like(src)
    copy = _time_alone(lambda: dst.copy_(src), device, cfg)
    del src, dst
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    a = torch.randn(matmul_n, matmul_n, generator=gen, device=device).to(torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, generator=gen, device=device).to(torch.bfloat16)
    c = torch.empty(matmul_n, matmul_n, dtype=torch.bfloat16, device=device)
    mm = _time_alone(lambda: torch.mm(a, b, out=c), device, cfg)
    return Ceilings(device=device_name(device), copy_gbps=2 * copy_bytes / (copy.median_ms * 1e-3) / 1e9,
                    matmul_tflops=2 * matmul_n ** 3 / (mm.median_ms * 1e-3) / 1e12, copy_bytes=copy_bytes,
                    matmul_n=matmul_n, copy=copy, matmul=mm, representative=cuda)


def copy_moving(n_bytes: int, device) -> Callable[[], Any]:
    """One copy kernel that moves ``n_bytes`` (reads + writes: n_bytes / 2 of random int16 values,
    ``dst = src * 1``, an elementwise kernel on the SMs), as a size-matched reference for a kernel that
    moves that much. Not ``dst.copy_(src)``: that is a driver memcpy whose engine is the driver's
    choice; on an H200 (tenth session) it took 23.8 us for 50.9 MB and 48.3 us for 118 MB as a
    CUDA-graph memcpy node, against 17.8 and 33.2 us for this kernel."""
    src = torch.empty(max(1, n_bytes // 4), dtype=torch.int16, device=device).random_()
    dst = torch.empty_like(src)
    return functools.partial(torch.mul, src, 1, out=dst)


def plain_copy_gbps(device, copy_bytes: int, seconds: float = 0.2) -> float:
    """An independent copy bandwidth: back-to-back ``dst.copy_(src)`` timed with the host clock
    between two device synchronisations (no events, no flush); GB/s of bytes read + written."""
    src = torch.empty(copy_bytes // 4, dtype=torch.int32, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    t0 = time.perf_counter()
    dst.copy_(src)
    synchronize(device)
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(5, int(seconds / one))
    t0 = time.perf_counter()
    for _ in range(n):
        dst.copy_(src)
    synchronize(device)
    elapsed = time.perf_counter() - t0
    return 2 * copy_bytes * n / elapsed / 1e9
