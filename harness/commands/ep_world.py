"""``moe-harness ep-world``: the command line of harness.ep_world (flags -> WorldConfig)."""
from __future__ import annotations

import sys

import torch

from .. import ep_world
from ..cases import MODEL_SHAPES
from ..ops.moe import FORWARD
from ..options import WORLD_DEFAULT_SHAPE as DEFAULT_SHAPE
from ..options import WORLD_DEFAULT_TOKENS as DEFAULT_TOKENS
from ..options import WORLD_DTYPES as DTYPES
from ..options import WORLD_SCENARIO_KINDS as SCENARIO_KINDS
from ..options import WorldConfig


def add_parser(sub):
    p = sub.add_parser("ep-world", help="run the EP MoE forward in a real multi-process world and check the sum",
                       description="Start N processes (torch.distributed: NCCL, one GPU each; gloo on CPU), each "
                                   "owning E/N experts; each runs the EP forward on the same tokens and routing, an "
                                   "all-reduce sums the partial outputs, and rank 0 compares the sum with the dense "
                                   "MoE reference. Sweeps an even split, an uneven split (E % N != 0), a routing "
                                   "where all ranks but rank 0 receive no tokens, T=1 and a bigger T. NVLink "
                                   "multicast is kept off in every process.")
    p.add_argument("--ranks", type=int, help="world size (default: every visible GPU; 2 on CPU)")
    p.add_argument("--impl", default="ours", help="implementation source (as for check): ours (default), reference, "
                                                  f"sglang:PATH.py, {FORWARD}=PATH.py:function. Loading runs its code.")
    p.add_argument("--preset", choices=sorted(MODEL_SHAPES),
                   help="model shape (E, K, H, I; SPEC.md); explicit --experts etc. override it. Every rank builds "
                        "all E experts' weights and rank 0 a float64 copy of the used ones: use --experts to take a "
                        "slice of deepseek-v3")
    p.add_argument("--experts", type=int, help=f"E (default {DEFAULT_SHAPE['experts']}); the even split uses the "
                                                f"largest multiple of N <= E, the uneven one E or a neighbour of it")
    p.add_argument("--topk", type=int, help=f"K (default {DEFAULT_SHAPE['topk']})")
    p.add_argument("--hidden", type=int, help=f"H (default {DEFAULT_SHAPE['hidden']})")
    p.add_argument("--inter", type=int, help=f"I (default {DEFAULT_SHAPE['inter']})")
    p.add_argument("--tokens", type=int, nargs="+",
                   help=f"token counts T (default {' '.join(map(str, DEFAULT_TOKENS['cuda']))} on GPU, "
                        f"{' '.join(map(str, DEFAULT_TOKENS['interpreter']))} on CPU)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="bfloat16 (default) or fp8_block (fp8 weights with [128, 128] block scales)")
    p.add_argument("--scenario", nargs="+", choices=SCENARIO_KINDS, default=list(SCENARIO_KINDS),
                   help="scenario kinds to run (default: all)")
    p.add_argument("--seed", type=int, default=WorldConfig.seed, help="seed of every rank's inputs")
    p.add_argument("--warmup", type=int, default=WorldConfig.warmup, help="untimed calls before timing (default 1)")
    p.add_argument("--reps", type=int, default=WorldConfig.reps,
                   help="timed calls per rank; the median is reported (default 5)")
    p.add_argument("--timeout", type=float, default=WorldConfig.timeout_s,
                   help="seconds for the whole world (default 600)")
    p.add_argument("--json", help="write the report to this JSON file")
    p.set_defaults(run=main)
    return p


def config_from_args(args, backend: str) -> WorldConfig:
    """The parsed command line as a WorldConfig (OptionError for a world that cannot run)."""
    shape = dict(DEFAULT_SHAPE, **(MODEL_SHAPES[args.preset] if args.preset else {}))
    for k in shape:
        if getattr(args, k) is not None:
            shape[k] = getattr(args, k)
    if args.ranks is not None:
        ranks = args.ranks
    else:
        ranks = torch.cuda.device_count() if backend == "cuda" else 2
    return WorldConfig(ranks=ranks, backend=backend, impl=args.impl, dtype=args.dtype,
                       tokens=tuple(args.tokens or DEFAULT_TOKENS[backend]), scenarios=tuple(args.scenario),
                       seed=args.seed, warmup=args.warmup, reps=args.reps, timeout_s=args.timeout, **shape)


def main(args, backend: str) -> int:
    """Exit status: 0 when every scenario passed, 1 on any failure, 2 when the implementation
    does not provide the EP forward or the options cannot run."""
    try:
        config = config_from_args(args, backend)
    except ValueError as exc:  # harness.options.OptionError
        print(f"ep-world: {exc}", file=sys.stderr)
        return 2
    return ep_world.run_command(config, args.json)
