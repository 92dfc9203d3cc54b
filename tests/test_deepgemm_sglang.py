"""SGLang 0.5.23's real ``ep_moe_kernels.py`` (from the release wheel, unmodified, loaded with
tools/crosscheck_sglang_layouts.py's stand-ins) passes the DeepGEMM contiguous-layout records
through their SGLang bindings on the interpreter, float32 (its wrappers have our signatures).

Needs the unpacked wheel: ``pip download sglang==0.5.23 --no-deps -d /tmp/sg && cd /tmp/sg &&
unzip -q -o *.whl`` (or MOE_SGLANG_ROOT); skipped otherwise. Runs in a child process: the
stand-ins and the interpreter patches of the cross-check tool must not leak into this session.
To be replaced by harness/sglang's loader."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = [os.environ.get("MOE_SGLANG_ROOT", ""), "/tmp/sg", "/tmp/sglang-0.5.23"]
ROOT = next((Path(r) for r in ROOTS if r and (Path(r) / "sglang/kernels/ops/moe/ep_moe_kernels.py").exists()), None)

CHILD = r'''
import sys, torch
sys.path.insert(0, {repo!r})
from tools import crosscheck_sglang_layouts as cc
from pathlib import Path
cc.load_upstream(Path({root!r}))   # stand-ins, interpreter patches, the file loaded as its module name
from harness.impls import sglang_impl
from harness.specs import SPECS
from harness.cases import CaseParams
from harness.runner import run_case
impl = sglang_impl("sglang.kernels.ops.moe.ep_moe_kernels")
bad = []
for op in {ops!r}:
    assert op in impl.ops, impl.notes.get(op)
    for seed, routing in enumerate(["skewed", "one_expert", "repeated", "uniform"]):
        p = CaseParams(op=op, dtype="float32", tokens=9 + seed, topk=3, experts=6, start_expert=1, end_expert=4,
                       hidden=130, routing=routing, invalid_frac=0.2, seed=seed)
        r = run_case(SPECS[op], impl.candidate(op), p, "cpu", impl_name=impl.name)
        print(op, routing, r.status, r.probe, r.message[:200])
        if r.status != "passed":
            bad.append(op)
sys.exit(1 if bad else 0)
'''


@pytest.mark.skipif(ROOT is None, reason="SGLang 0.5.23's wheel is not unpacked under /tmp/sg (see the docstring)")
def test_sglang_0_5_23_contiguous_layout_passes():
    from harness.ops.deepgemm import RECORDS
    ops = [r.name for r in RECORDS]
    code = CHILD.format(repo=str(REPO), root=str(ROOT), ops=ops)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" passed ") == 4 * len(ops), proc.stdout
