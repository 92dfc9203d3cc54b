"""How long the check's start takes on this machine (issue 24: the seconds before the first
row's first case): the parent's own imports, its CUDA initialisation, and N children made
ready (each importing what a check child imports and initialising CUDA) with the "spawn"
start method and with a forkserver that has imported torch beforehand.

    PYTHONPATH=. python tools/child_start_times.py --children 16
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time


def _child(conn, t_start: float) -> None:
    t0 = time.time()
    import torch
    t1 = time.time()
    import harness.isolate  # noqa: F401  (the check child's own imports)
    import optimized  # noqa: F401
    t2 = time.time()
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
    t3 = time.time()
    conn.send(dict(begin=t0 - t_start, torch=t1 - t0, harness=t2 - t1, cuda=t3 - t2, ready=t3 - t_start))


def children_ready(method: str, n: int) -> dict:
    """Start n children with ``method`` at once; seconds until each reports ready."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["torch"])
    t_start = time.time()
    pipes, procs = [], []
    for _ in range(n):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_child, args=(b, t_start))
        p.start()
        pipes.append(a)
        procs.append(p)
    got = [a.recv() for a in pipes]
    for p in procs:
        p.join()
    last = max(g["ready"] for g in got)
    mean = {k: round(sum(g[k] for g in got) / n, 2) for k in got[0]}
    return dict(method=method, children=n, all_ready_s=round(last, 2), mean=mean)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--children", type=int, default=16)
    ap.add_argument("--methods", nargs="+", default=["spawn", "forkserver"])
    args = ap.parse_args(argv)
    t0 = time.time()
    import torch
    t1 = time.time()
    from harness.cli import build_parser
    build_parser()
    t2 = time.time()
    from harness.backend import describe
    describe("cuda" if torch.cuda.is_available() else "interpreter")
    t3 = time.time()
    print(json.dumps(dict(parent_torch=round(t1 - t0, 2), parent_parser=round(t2 - t1, 2),
                          parent_describe=round(t3 - t2, 2))), flush=True)
    for method in args.methods:
        print(json.dumps(children_ready(method, args.children)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
