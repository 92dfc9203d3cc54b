"""How many Triton specialisations a check row would compile on a GPU, counted on the CPU.

On a GPU the default check's time is Triton compiling one binary per new specialisation of each
kernel (results/2026-12-06-s16-h100: ep_moe_forward's row, 72 compilations in 39 of its 44 s).
This tool runs a row's cases as a GPU's default profile draws them (the palette of sizes within
the cuda backend's size limits, the fixed cases, the per-case draws; the row's parts as
harness.fuzz.sweep_parts splits it) through our launchers on the CPU, with every kernel launch
recorded and skipped: nothing is computed, only the host side runs (value checks off). It
counts the distinct launch keys per kernel. A key is what Triton specialises on: the constexpr
values, each tensor's dtype and 16-byte alignment, each integer's value class (1, a multiple of
16, other, past int32) unless the kernel does not specialise it, and the launch's num_warps /
num_stages. Checked against the H100's count for ep_moe_forward's row: the reorders' 15 and 15
and act_and_mul's 9 agree. The grouped GEMM takes its interpreter tile here, not its autotuned
ones, and the EP preprocess may take another path than on a GPU, so those counts are not the GPU's.

    PYTHONPATH=. python tools/specialisations.py --op ep_moe_forward --dtype bfloat16 [--whole]
        [--detail _pre_reorder_kernel] [--ignore TOPK]
    PYTHONPATH=. python tools/specialisations.py            # every row: per-row counts and the sum
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
os.environ["MOE_CHECK_VALUES"] = "0"   # value checks would read what no kernel computed here


def launch_key(fn, arg_names, args, kwargs, do_not_specialize=()):
    """The specialisation key of one launch of the Triton function ``fn`` (see the module doc)."""
    bound = dict(zip(arg_names, args))
    bound.update(kwargs)
    key = []
    for p in inspect.signature(fn).parameters.values():
        v = bound.get(p.name, p.default)
        if "constexpr" in str(p.annotation):
            key.append((p.name, repr(v)))
        elif hasattr(v, "data_ptr"):
            key.append((p.name, str(v.dtype), v.data_ptr() % 16 == 0))
        elif isinstance(v, bool) or v is None:
            key.append((p.name, v))
        elif isinstance(v, int):
            cls = "any" if p.name in do_not_specialize else ("1" if v == 1 else "16k" if v % 16 == 0 else "int")
            key.append((p.name, cls + ("/64" if not -2 ** 31 <= v < 2 ** 31 else "")))
        elif isinstance(v, float):
            key.append((p.name, "fp32"))
    meta = tuple(sorted((k, kwargs[k]) for k in ("num_warps", "num_stages", "num_ctas") if k in kwargs))
    return tuple(key) + meta


class Recorder:
    """Replaces the interpreter's launch: records each launch's key (less ``ignore``d parameters)
    under the current part, computes nothing."""

    def __init__(self, ignore=()):
        self.ignore = set(ignore)
        self.keys = collections.defaultdict(set)         # kernel -> keys over the row
        self.part = set()                                # (kernel, key) of the current part
        self.launches = collections.Counter()

    def install(self):
        from triton.runtime import interpreter
        recorder = self

        def run(fn_self, *a, grid, warmup, **kw):
            if warmup:
                return None
            recorder.launches[fn_self.__name__] += 1
            key = tuple(k for k in launch_key(fn_self.fn, fn_self.arg_names, a, kw,
                                              fn_self.kwargs.get("do_not_specialize", ()))
                        if k[0] not in recorder.ignore)
            recorder.keys[fn_self.__name__].add(key)
            recorder.part.add((fn_self.__name__, key))
            return None
        interpreter.InterpretedFunction.run = run


def count_row(recorder: Recorder, op: str, dtype: str, seed: int, whole: bool, only_part=None):
    """Run the row's cases through our launcher; [(part, cases, specialisations)] and the host
    errors (a case whose launcher raised: its keys so far stand)."""
    import torch
    from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings
    from harness import fuzz
    from harness.impls import load_implementation
    from harness.options import CheckOptions
    from harness.specs import SPECS

    spec = SPECS[op]
    options = CheckOptions(ops=[op])
    cases, shapes = options.cases_for("cuda"), options.shapes("cuda")
    parts = [fuzz.SweepPart(cases, seed, shapes, True)] if whole else fuzz.sweep_parts(spec, cases, seed, shapes)
    ours = load_implementation("ours").ops[op]
    per_part, errors = [], collections.Counter()
    for i, part in enumerate(parts):
        if only_part is not None and i != only_part:
            continue
        recorder.part.clear()
        params = []
        if part.fixed_cases:
            params += [fuzz.empty_batch_case(spec, dtype), fuzz.aligned_long_groups_case(spec, dtype, "cuda"),
                       fuzz.narrow_rank_case(spec, dtype, "cuda")]
        palette = fuzz.shape_palette(spec, "cuda", part.shapes, part.seed) if part.shapes else None

        @hyp_seed(part.seed)
        @settings(max_examples=part.cases, phases=[Phase.generate], database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(fuzz.case_params(spec, dtype, "cuda", None, palette))
        def draw(p):
            params.append(p)
        draw()
        for p in params:
            sample = spec.build(spec.fit(p, ()), torch.device("cpu"))
            try:
                ours(*sample.args.values())
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
        per_part.append((i, len(params), len(recorder.part)))
    return per_part, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", nargs="+", default=None, help="default: every op")
    ap.add_argument("--dtype", nargs="+", default=None, help="default: every dtype of each op")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", type=int, default=None, help="only this part of the row (harness.fuzz.sweep_parts)")
    ap.add_argument("--whole", action="store_true", help="rows unsplit (as before parts): one sweep, one palette")
    ap.add_argument("--detail", metavar="KERNEL", help="per parameter of this kernel, its distinct key values")
    ap.add_argument("--ignore", nargs="+", default=[], metavar="PARAM",
                    help="leave these kernel parameters out of the keys: what making them runtime arguments saves")
    args = ap.parse_args(argv)
    from harness.backend import select_backend
    select_backend("interpreter")
    from harness.specs import SPECS

    unknown = sorted(set(args.op or ()) - set(SPECS))
    if unknown:
        ap.error(f"--op: expected ops of the registry, got {unknown}")
    rows = [(op, d) for op in (args.op or SPECS) for d in SPECS[op].dtypes if not args.dtype or d in args.dtype]
    if not rows:   # nothing counted is no answer
        ap.error(f"--dtype: none of {args.dtype} is a dtype of {args.op or 'any op'}")
    total = longest = pieces = 0
    for op, dtype in rows:
        recorder = Recorder(args.ignore)
        recorder.install()
        per_part, errors = count_row(recorder, op, dtype, args.seed, args.whole, args.part)
        pieces += len(per_part)
        row_total = sum(len(k) for k in recorder.keys.values())
        total += row_total
        longest = max([longest] + [k for _, _, k in per_part])
        # parts run side by side from a cold cache: each compiles all of its own keys
        print(f"{op} [{dtype}]: {row_total} specialisation(s); "
              + ", ".join(f"part {i}: {n} cases, {k}" for i, n, k in per_part), flush=True)
        if len(rows) == 1:
            for name in sorted(recorder.keys, key=lambda k: -len(recorder.keys[k])):
                print(f"  {len(recorder.keys[name]):4d} of {name} ({recorder.launches[name]} launches)")
            for message, n in errors.items():
                print(f"  {n} case(s) stopped at a host error: {message}")
        if args.detail and args.detail in recorder.keys:
            by_param = collections.defaultdict(set)
            for key in recorder.keys[args.detail]:
                for item in key:
                    by_param[item[0]].add(item[1:])
            for name, values in by_param.items():
                if len(values) > 1:
                    print(f"  {args.detail}.{name}: {sorted(map(str, values))}")
    if not pieces:   # nothing counted is no answer
        ap.error(f"--part: no row here has a part {args.part}")
    if len(rows) > 1:
        print(f"{len(rows)} rows: {total} specialisations in all (each row counted apart); the largest piece "
              f"(row or part) {longest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
