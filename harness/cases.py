"""Case parameters and the routing distributions that turn them into tensors.

A case is fully described by a frozen, JSON-safe ``CaseParams``; every tensor of the case
is drawn from a torch.Generator seeded with ``params.seed`` on the target device, so the
same parameters rebuild the same case (the replay command is just the parameters).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Dict

import torch

# Real model shapes (SPEC.md "Shapes that matter in practice").
MODEL_SHAPES = {
    "deepseek-v3": dict(experts=256, topk=8, hidden=7168, inter=2048),
    "qwen3-235b": dict(experts=128, topk=8, hidden=4096, inter=1536),
    "mixtral-8x7b": dict(experts=8, topk=2, hidden=4096, inter=14336),
}


@dataclass(frozen=True)
class CaseParams:
    """Everything that defines one case; ``seed`` seeds every tensor of it."""

    op: str
    dtype: str                 # a key of harness.specs.DTYPES, e.g. "bfloat16", "fp8_block", "int32"
    tokens: int                # T
    topk: int                  # K
    experts: int               # E
    start_expert: int = 0      # this EP rank's first expert
    end_expert: int = -1       # ... and last (inclusive); -1 means E - 1
    hidden: int = 64           # H (the GEMM's Kd)
    inter: int = 32            # I (the GEMM's N; activation input rows are 2I wide)
    routing: str = "uniform"   # a key of ROUTINGS
    invalid_frac: float = 0.0  # share of slots set to -1 (deepep inputs)
    seed: int = 0
    # dtype of the routing's index tensors that a later op takes (topk_ids, src2dst): SGLang's
    # pipeline passes int32 (its preprocess emits int32 src2dst), other producers int64
    index_dtype: str = "int32"

    def __post_init__(self):
        if self.end_expert == -1:
            object.__setattr__(self, "end_expert", self.experts - 1)

    @property
    def e_local(self) -> int:
        return self.end_expert - self.start_expert + 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CaseParams":
        return cls(**json.loads(text))

    def short(self) -> str:
        """Readable one-line id, used as the pytest id."""
        ep = "" if (self.start_expert, self.end_expert) == (0, self.experts - 1) else \
            f"-ep{self.start_expert}..{self.end_expert}"
        inv = f"-inv{self.invalid_frac:g}" if self.invalid_frac else ""
        idx = "" if self.index_dtype == "int32" else f"-{self.index_dtype}"
        return (f"{self.dtype}-T{self.tokens}-K{self.topk}-E{self.experts}{ep}-H{self.hidden}-I{self.inter}"
                f"-{self.routing}{inv}{idx}-s{self.seed}")


# ----------------------------------------------------------------------------- routing
# Each routing returns topk_ids [T, K] int64 with values in [0, E) on the generator's device.

def _distinct(T, K, E, gen, weights=None):
    """K distinct experts per token (real top-k); repeats only when K > E."""
    dev = gen.device
    if K > E:
        return torch.randint(0, E, (T, K), generator=gen, device=dev)
    if weights is None:
        keys = torch.rand(T, E, generator=gen, device=dev)
        return keys.argsort(dim=1)[:, :K]
    return torch.multinomial(weights.expand(T, E), K, replacement=False, generator=gen)


def route_uniform(p: CaseParams, gen):
    return _distinct(p.tokens, p.topk, p.experts, gen)


def route_skewed(p: CaseParams, gen):
    """Power law over a random permutation of experts: a few hot ones, a long cold tail."""
    dev = gen.device
    rank = torch.randperm(p.experts, generator=gen, device=dev).double() + 1.0
    return _distinct(p.tokens, p.topk, p.experts, gen, weights=rank ** -1.5)


def route_one_expert(p: CaseParams, gen):
    e = int(torch.randint(0, p.experts, (1,), generator=gen, device=gen.device))
    return torch.full((p.tokens, p.topk), e, dtype=torch.int64, device=gen.device)


def route_sparse(p: CaseParams, gen):
    """Only about E/8 experts in use: many empty segments."""
    dev = gen.device
    used = torch.randperm(p.experts, generator=gen, device=dev)[: max(1, p.experts // 8)]
    pick = torch.randint(0, used.numel(), (p.tokens, p.topk), generator=gen, device=dev)
    return used[pick]


def route_repeated(p: CaseParams, gen):
    """Experts drawn with replacement: the same expert twice in a token (NaN router logits)."""
    return torch.randint(0, p.experts, (p.tokens, p.topk), generator=gen, device=gen.device)


def route_identical(p: CaseParams, gen):
    """Every token routed like the first (a warm-up batch of identical tokens)."""
    row = _distinct(1, p.topk, p.experts, gen)
    return row.expand(p.tokens, p.topk).contiguous()


def route_rank_edges(p: CaseParams, gen):
    """Experts just inside and just outside this rank's range, and the first and last expert."""
    dev = gen.device
    cand = torch.tensor(sorted({0, p.experts - 1, p.start_expert, p.end_expert,
                                max(0, p.start_expert - 1), min(p.experts - 1, p.end_expert + 1)}), device=dev)
    pick = torch.randint(0, cand.numel(), (p.tokens, p.topk), generator=gen, device=dev)
    return cand[pick]


ROUTINGS: Dict[str, Callable[[CaseParams, torch.Generator], torch.Tensor]] = {
    "uniform": route_uniform,
    "skewed": route_skewed,
    "one_expert": route_one_expert,
    "sparse": route_sparse,
    "repeated": route_repeated,
    "identical": route_identical,
    "rank_edges": route_rank_edges,
}


def make_generator(p: CaseParams, device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(p.seed)
    return gen


def make_topk_ids(p: CaseParams, gen: torch.Generator, *, allow_invalid: bool = False) -> torch.Tensor:
    """topk_ids [T, K] int64 for the case; with allow_invalid, a share of slots becomes -1."""
    ids = ROUTINGS[p.routing](p, gen).to(torch.int64).contiguous()
    if allow_invalid and p.invalid_frac > 0:
        drop = torch.rand(ids.shape, generator=gen, device=ids.device) < p.invalid_frac
        if p.invalid_frac >= 1.0:
            drop[:] = True
        ids = torch.where(drop, -1, ids)
    return ids


def make_topk_weights(p: CaseParams, gen: torch.Generator) -> torch.Tensor:
    """Router weights [T, K] float32 in (0.05, 1], as a softmax-then-top-k would give."""
    return torch.rand(p.tokens, p.topk, generator=gen, device=gen.device) * 0.95 + 0.05


def randn(shape, gen, dtype, scale=1.0):
    """Standard normal values (never zeros or ones) drawn in float32, cast to dtype."""
    return (torch.randn(shape, generator=gen, device=gen.device) * scale).to(dtype)
