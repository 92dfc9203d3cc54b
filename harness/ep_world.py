"""``moe-harness ep-world``: a real expert-parallel world, one process per GPU (SPEC.md section 7).

N processes join a torch.distributed group (NCCL on CUDA, one GPU per rank; gloo on CPU).
For each scenario every rank builds the SAME case from the seed (all E experts' weights,
the tokens and the routing), keeps its own contiguous expert range (the first E % N ranks
own one expert more), runs the implementation's EP forward (``FORWARD``) for that range and times
it; an all-reduce sums the partial outputs in float32 and rank 0 compares the sum with
``reference.dense_moe_forward`` on the full weights (float64). The sweep covers an even
split, an uneven split (E % N != 0), a routing that sends every token to rank 0's experts
(all other ranks receive no tokens), T = 1 decode and a bigger T.

Every process started here runs with NVLink multicast off (``NO_MULTICAST_ENV``): multicast
objects can take a shared host's GPUs out of service.
"""
from __future__ import annotations

import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .backend import describe
from .ops.moe import FORWARD
from .options import WorldConfig
from .records import write_json
from .specs import SPECS
from .status import FAILED, PASSED
from .tolerance import FACTOR, UNIT_ROUNDOFF

# Set in the parent before spawning and again in every rank before init_process_group.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# After one rank dies, the others are stuck in a collective until its timeout: stop them sooner.
_GRACE_AFTER_RANK_DIED_S = 15.0


def set_no_multicast_env() -> None:
    """Force NVLink multicast off in this process's environment (overrides any other value)."""
    os.environ.update(NO_MULTICAST_ENV)


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Scenario:
    """One world run: a kind (even | uneven | empty), its expert count, tokens and routing."""

    name: str
    kind: str
    experts: int
    tokens: int
    routing: str                        # a harness.cases routing, or "rank0_only"


@dataclass(frozen=True)
class RankResult:
    rank: int
    start_expert: int
    end_expert: int
    local_slots: int                    # (token, k) slots routed to this rank's experts
    local_tokens: int                   # tokens with at least one local expert
    time_ms: Optional[float]            # median of the timed reps; None if not timed or failed
    error: str = ""                     # why this rank's part failed; "" if it did not


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    kind: str
    dtype: str
    experts: int
    tokens: int
    topk: int
    hidden: int
    inter: int
    routing: str
    seed: int
    ranks: Tuple[RankResult, ...]
    rel_error: Optional[float]          # ||sum - dense|| / ||dense||; None when not finite
    bound: Optional[float]              # the allowed rel_error (see _bound)
    passed: bool
    reason: str = ""

    @property
    def split(self) -> str:
        return "+".join(str(r.end_expert - r.start_expert + 1) for r in self.ranks)


@dataclass(frozen=True)
class WorldReport:
    impl: str
    backend: str
    dist_backend: str
    world_size: int
    environment: Dict[str, str]
    rank0_env: Dict[str, str]           # NO_MULTICAST_ENV's variables as rank 0 saw them
    scenarios: Tuple[ScenarioResult, ...]
    error: str = ""                     # a world-level failure (a rank died, timeout, ...)

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.scenarios) and all(s.passed for s in self.scenarios)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "WorldReport":
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        d["scenarios"] = tuple(ScenarioResult(**{**s, "ranks": tuple(RankResult(**r) for r in s["ranks"])})
                               for s in d["scenarios"])
        return cls(**d)


# ----------------------------------------------------------------------------- planning

def expert_ranges(num_experts: int, ranks: int) -> List[Tuple[int, int]]:
    """Contiguous inclusive (start, end) per rank; the first E % N ranks own one expert more.

    ValueError when a rank would own no expert (E < N)."""
    if ranks < 1 or num_experts < ranks:
        raise ValueError(f"experts: expected at least one expert per rank ({ranks} ranks), got {num_experts}")
    base, extra = divmod(num_experts, ranks)
    out, start = [], 0
    for r in range(ranks):
        n = base + (1 if r < extra else 0)
        out.append((start, start + n - 1))
        start += n
    return out


def _uneven_experts(even: int, ranks: int) -> int:
    return even - 1 if even - 1 > ranks and (even - 1) % ranks else even + 1


def plan_scenarios(config: WorldConfig) -> Tuple[Scenario, ...]:
    """The sweep, in the order every rank runs it.

    even: E rounded down to a multiple of N (at least N), uniform routing. uneven: E itself
    if E % N != 0, else a neighbour of it that is not a multiple of N; skewed routing (a few
    hot experts, some empty). empty: the even E, every token routed to rank 0's experts only.
    Each kind runs for every T of ``config.tokens``; uneven and empty need N >= 2."""
    N, E = config.ranks, config.experts
    even = max(N, E - E % N)
    uneven = E if (E % N and E > N) else _uneven_experts(even, N)
    out = []
    for T in config.tokens:
        for kind in config.scenarios:
            if N < 2 and kind != "even":
                continue
            e, routing = {"even": (even, "uniform"), "uneven": (uneven, "skewed"),
                          "empty": (even, "rank0_only")}[kind]
            out.append(Scenario(f"{kind} T={T}", kind, e, T, routing))
    return tuple(out)


# ----------------------------------------------------------------------------- one case

def build_world_case(config: WorldConfig, sc: Scenario, device) -> Dict[str, Any]:
    """The full case (all E experts), identical on every rank: the forward record's builder on
    the whole expert range, seeded with ``config.seed``; for "rank0_only" the routing is then
    redrawn (seed + 1) inside rank 0's range, K distinct experts per token when it has K."""
    from .cases import CaseParams
    from .ops.moe import build_ep_moe

    p = CaseParams(op=FORWARD, dtype=config.dtype, tokens=sc.tokens, topk=config.topk,
                   experts=sc.experts, hidden=config.hidden, inter=config.inter,
                   routing="uniform" if sc.routing == "rank0_only" else sc.routing, seed=config.seed)
    args = dict(build_ep_moe(p, torch.device(device)).args)
    if sc.routing == "rank0_only":
        e0 = expert_ranges(sc.experts, config.ranks)[0][1] + 1
        gen = torch.Generator(device=device)
        gen.manual_seed(config.seed + 1)
        T, K = sc.tokens, config.topk
        ids = (torch.rand(T, e0, generator=gen, device=device).argsort(dim=1)[:, :K] if K <= e0
               else torch.randint(0, e0, (T, K), generator=gen, device=device))
        args["topk_ids"] = ids.to(args["topk_ids"].dtype).contiguous()
    return args


def local_args(full: Dict[str, Any], start: int, end: int) -> Tuple[Any, ...]:
    """The EP forward's positional arguments for experts start..end (weights sliced, copied)."""
    sl = slice(start, end + 1)
    cut = lambda t: None if t is None else t[sl].contiguous()  # noqa: E731
    return (full["hidden_states"], full["topk_ids"], full["topk_weights"], cut(full["w13"]), cut(full["w2"]),
            full["num_experts"], start, end, full["activation"], cut(full["w13_scale"]), cut(full["w2_scale"]),
            full["block_shape"])


def _fingerprint(args: Sequence[Any]) -> Tuple[float, ...]:
    """Sums and sums of squares of every tensor argument (float64, expert by expert to bound
    memory): equal on every rank iff the ranks built the same case, for all practical purposes."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            for chunk in (a if a.dim() == 3 else [a]):
                d = chunk.double()
                out += [float(d.sum()), float((d * d).sum())]
    return tuple(out)


def _timed(fn: Callable, args, device: torch.device, warmup: int, reps: int) -> Optional[float]:
    """Median milliseconds of ``reps`` calls after ``warmup`` calls (CUDA events on GPU)."""
    if reps <= 0:
        return None
    # Our launchers' value checks read the device (a sync per op); documented off switch for timing.
    cfg = sys.modules.get("optimized._config")
    saved = getattr(cfg, "CHECK_VALUES", None)
    if cfg is not None:
        cfg.CHECK_VALUES = False
    try:
        for _ in range(warmup):
            fn(*args)
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    finally:
        if cfg is not None:
            cfg.CHECK_VALUES = saved


# The bound is harness/tolerance.py's normwise rule (the one `check` applies to the EP forward),
# carried over to the sum over ranks:
#     ||c - r|| <= FACTOR * ||l - r|| + U_OUT * sum_r ||l_r||,   reported relative to ||r||,
# r: reference.dense_moe_forward in float64 on all E experts;
# l: the same world run with the reference chain (each rank's reference forward at the
#    case's precision, partials l_r summed in float32 like c): the error that the precision
#    itself makes on these inputs and this split; a candidate may be FACTOR times as far from r;
# U_OUT * sum_r ||l_r||: each rank's partial is rounded once to the activation dtype before the
#    float32 all-reduce: N output roundings, hence the sum of the partials' norms, not ||r||.
# Not a fixed 1e-2 / 3e-2 as in tests/test_reference_moe.py (set by hand to cover the reference
# itself on every seed): this one is measured on each case, so a kernel that passes `check` on
# one rank is held to the same standard summed over ranks. Measured on CPU, 2..9 ranks, small
# shapes: l is about 5e-3 from r for bf16 (bound 1.1e-2..2e-2, the larger with more ranks'
# roundings) and 7e-3..3e-2 for fp8 blocks (bound 2e-2..7e-2); an expert dropped on each rank
# gives 0.3..1.
def _bound(ref64: torch.Tensor, ref_sum: torch.Tensor, ref_partial_norms: Sequence[float],
           act_dtype: torch.dtype) -> float:
    """Allowed ||c - r|| / ||r|| (see the comment above)."""
    r_norm = float(ref64.norm())
    allowed = FACTOR * float((ref_sum.double() - ref64).norm()) + UNIT_ROUNDOFF[act_dtype] * sum(ref_partial_norms)
    return allowed / r_norm if r_norm > 0 else (0.0 if allowed == 0 else math.inf)


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- one rank

def _run_scenario(rank: int, config: WorldConfig, sc: Scenario, fn: Callable, device: torch.device,
                  dist) -> Optional[ScenarioResult]:
    """Every rank's part of one scenario; rank 0 returns the result, the others None.

    A candidate's exception is caught and reported so that every rank still reaches every
    collective (a rank that skipped one would hang the world)."""
    import reference

    full = build_world_case(config, sc, device)
    start, end = expert_ranges(sc.experts, config.ranks)[rank]
    args = local_args(full, start, end)
    x, ids = full["hidden_states"], full["topk_ids"]
    T, H = x.shape
    local = (ids >= start) & (ids <= end)                                         # [T, K]
    # Same case on every rank (compared by rank 0), and inputs the candidate must leave alone.
    world_fingerprint = _fingerprint([full[k] for k in ("hidden_states", "topk_ids", "topk_weights", "w13", "w2",
                                                        "w13_scale", "w2_scale")])
    fingerprint = _fingerprint(args)
    ref_partial = SPECS[FORWARD].reference(*args).float()                         # l_r
    error, time_ms = "", None
    partial = torch.zeros(T, H, dtype=torch.float32, device=device)
    try:
        out = fn(*args)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (T, H):
            raise ValueError(f"expected a tensor of shape {(T, H)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if out.dtype != x.dtype:
            error = f"output dtype {out.dtype}, expected {x.dtype}"
        partial = out.float()
        # SPEC 5: a token with no local expert gets a row of exact zeros; a sum cannot show
        # an unwritten row that happens to be small, this can.
        stray = partial[~local.any(dim=1)]
        n_stray = int(((stray != 0) | torch.isnan(stray)).any(dim=1).sum())
        if n_stray:
            error = error or f"{n_stray} token row(s) with no local expert are not zero"
        if _fingerprint(args) != fingerprint:
            error = error or "the implementation modified its inputs"
        if not error:
            time_ms = _timed(fn, args, device, config.warmup, config.reps)
    except Exception as exc:  # a candidate's fault is this rank's failure, not the world's
        if device.type == "cuda" and "CUDA error" in str(exc):
            raise  # the context is gone (e.g. an illegal address); the parent reports the dead rank
        error = f"{type(exc).__name__}: {exc}"
        partial = torch.zeros(T, H, dtype=torch.float32, device=device)
    both = torch.stack([partial, ref_partial])                                    # [2, T, H]
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    info = dict(rank=rank, start_expert=start, end_expert=end, local_slots=int(local.sum()),
                local_tokens=int(local.any(dim=1).sum()), time_ms=time_ms, error=error,
                fingerprint=world_fingerprint, ref_norm=float(ref_partial.norm()))
    infos: List[Optional[dict]] = [None] * config.ranks
    dist.all_gather_object(infos, info)
    if rank != 0:
        return None

    ranks = tuple(RankResult(**{k: v for k, v in i.items() if k not in ("fingerprint", "ref_norm")}) for i in infos)
    reasons = [f"rank {i['rank']}: {i['error']}" for i in infos if i["error"]]
    if any(i["fingerprint"] != infos[0]["fingerprint"] for i in infos):
        reasons.append("ranks built different inputs from the same seed")
    dense = reference.dense_moe_forward(x, ids, full["topk_weights"], full["w13"], full["w2"], full["activation"],
                                        full["w13_scale"], full["w2_scale"], full["block_shape"])
    total, ref_total = both[0].double(), both[1]
    r_norm = float(dense.norm())
    err = float((total - dense).norm())
    rel = err / r_norm if r_norm > 0 else (0.0 if err == 0 else math.inf)
    bound = _bound(dense, ref_total, [i["ref_norm"] for i in infos], x.dtype)
    if not math.isfinite(rel):
        reasons.append("the summed output is not finite")
    elif rel > bound:
        reasons.append(f"relative error {rel:.3g} over the bound {bound:.3g}")
    return ScenarioResult(sc.name, sc.kind, config.dtype, sc.experts, sc.tokens, config.topk, config.hidden,
                          config.inter, sc.routing, config.seed, ranks, _finite(rel), _finite(bound),
                          not reasons, "; ".join(reasons))


def _rank_main(rank: int, config: WorldConfig, port: int, folder: str) -> None:
    """Entry point of one spawned rank; rank 0 writes the report to ``folder``/report.json."""
    try:
        set_no_multicast_env()
        if config.backend == "interpreter":
            from .backend import select_backend
            select_backend("interpreter")  # before anything imports triton (optimized/); patches the interpreter
        import torch.distributed as dist

        from .impls import load_implementation

        if config.backend == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
            dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                    world_size=config.ranks, timeout=timedelta(seconds=config.timeout_s),
                                    device_id=device)
        else:
            device = torch.device("cpu")
            # CI has few cores: N ranks with every core each would thrash.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.ranks))
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                    world_size=config.ranks, timeout=timedelta(seconds=config.timeout_s))
        fn = load_implementation(config.impl).ops[FORWARD]
        results = []
        for sc in plan_scenarios(config):
            res = _run_scenario(rank, config, sc, fn, device, dist)
            if res is not None:
                results.append(res)
                sys.stderr.write(f"ep-world: {res.name}: {PASSED if res.passed else FAILED}\n")
                # After every scenario: if a rank dies later, the finished ones are still reported.
                report = dict(scenarios=[asdict(r) for r in results],
                              rank0_env={k: os.environ.get(k, "") for k in NO_MULTICAST_ENV})
                write_json(os.path.join(folder, "report.json"), report, indent=None)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(folder, f"rank{rank}.err"), "w") as fh:
            fh.write(traceback.format_exc())
        raise


# ----------------------------------------------------------------------------- the world

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs) -> None:
    """Terminate (then kill) the ranks that are still running, and reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is None:
            continue  # never started
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def run_world(config: WorldConfig, environment: Optional[Dict[str, str]] = None) -> WorldReport:
    """Spawn ``config.ranks`` processes, run the sweep, return rank 0's report.

    Never hangs past ``config.timeout_s``: ranks still running then are terminated and the
    report says so. A rank that dies (its traceback is in the report's error) fails the world.
    (WorldConfig validated itself when it was made: one GPU per rank, positive sizes.)"""
    set_no_multicast_env()  # inherited by the spawned ranks
    ctx = torch.multiprocessing.get_context("spawn")
    dist_backend = "nccl" if config.backend == "cuda" else "gloo"
    errors: List[str] = []
    with tempfile.TemporaryDirectory(prefix="moe-ep-world-") as folder:
        port = _free_port()
        # Not daemonic: an implementation may start processes of its own (daemons cannot);
        # every exit path below stops the ranks that are still running.
        procs = [ctx.Process(target=_rank_main, args=(r, config, port, folder), name=f"moe-ep-rank{r}")
                 for r in range(config.ranks)]
        died_at: Dict[int, float] = {}  # when each failed rank was seen dead: the first is the cause
        try:
            for p in procs:
                p.start()
            deadline = time.monotonic() + config.timeout_s
            while any(p.is_alive() for p in procs):
                now = time.monotonic()
                for r, p in enumerate(procs):
                    if p.exitcode not in (None, 0) and r not in died_at:
                        died_at[r] = now
                if now > deadline:
                    errors.append(f"timed out after {config.timeout_s:g}s")
                    break
                if died_at and now - min(died_at.values()) > _GRACE_AFTER_RANK_DIED_S:
                    break
                for p in procs:
                    p.join(0.05)
        finally:
            _stop(procs)
        for r, p in sorted(enumerate(procs), key=lambda rp: died_at.get(rp[0], math.inf)):
            if p.exitcode != 0:
                tb_path = os.path.join(folder, f"rank{r}.err")
                tb = open(tb_path).read().strip().splitlines()[-1] if os.path.exists(tb_path) else ""
                errors.append(f"rank {r} exited with code {p.exitcode}" + (f": {tb}" if tb else ""))
        path = os.path.join(folder, "report.json")
        raw = json.load(open(path)) if os.path.exists(path) else {"scenarios": [], "rank0_env": {}}
    if not raw["scenarios"] and not errors:
        errors.append("rank 0 wrote no results")
    return WorldReport.from_dict(dict(impl=config.impl, backend=config.backend, dist_backend=dist_backend,
                                      world_size=config.ranks, environment=dict(environment or {}),
                                      rank0_env=raw["rank0_env"], scenarios=raw["scenarios"],
                                      error="; ".join(errors)))


# ----------------------------------------------------------------------------- the command

def format_table(report: WorldReport) -> str:
    """One line per scenario: split (experts per rank), slots routed to each rank, each rank's
    median time, the relative error of the sum against the dense MoE, its bound, the status."""
    head = (f"{'scenario':<16} {'dtype':<9} {'E':>4} {'T':>5} {'split':<12} {'local slots/rank':<18} "
            f"{'ms/rank':<20} {'rel err':>9} {'bound':>9}  status")
    lines = [head, "-" * len(head)]
    for s in report.scenarios:
        slots = "/".join(str(r.local_slots) for r in s.ranks)
        ms = "/".join("-" if r.time_ms is None else f"{r.time_ms:.3g}" for r in s.ranks)
        rel = "nonfinite" if s.rel_error is None else f"{s.rel_error:.2e}"
        bound = "-" if s.bound is None else f"{s.bound:.2e}"
        status = PASSED if s.passed else f"{FAILED} ({s.reason})"
        lines.append(f"{s.name:<16} {s.dtype:<9} {s.experts:>4} {s.tokens:>5} {s.split:<12} {slots:<18} "
                     f"{ms:<20} {rel:>9} {bound:>9}  {status}")
    if report.error:
        lines.append(f"WORLD FAILED: {report.error}")
    return "\n".join(lines)


def run_command(config: WorldConfig, json_path: Optional[str] = None) -> int:
    """Run the ep-world command: the world, its table, the JSON report. Exit status: 0 when
    every scenario passed, 1 on any failure, 2 when the implementation does not provide the
    EP forward."""
    from .impls import load_implementation

    impl = load_implementation(config.impl)  # fail early, in one process, on a bad source
    if FORWARD not in impl.ops:
        print(f"ep-world: {impl.name} does not provide {FORWARD}"
              f"{': ' + impl.notes[FORWARD] if impl.notes.get(FORWARD) else ''}", file=sys.stderr)
        return 2
    if config.ranks < 2:
        print("ep-world: one rank: only the even split runs (uneven and empty-rank scenarios need 2 or more)",
              file=sys.stderr)
    backend = config.backend
    info = describe(backend)
    print(" | ".join(f"{k} {v}" for k, v in info.items()) +
          f" | world {config.ranks} x {'nccl' if backend == 'cuda' else 'gloo'} | impl {config.impl} | "
          f"E {config.experts} K {config.topk} H {config.hidden} I {config.inter} | seed {config.seed}")
    report = run_world(config, info)
    print(format_table(report))
    if json_path:
        write_json(json_path, report.to_dict())
    return 0 if report.passed else 1
