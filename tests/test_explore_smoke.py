"""tools/explore_tiles.py, the GPU sweep script, runs end to end: its --smoke mode shrinks every
section to tiny sizes on the interpreter. A renamed module knob or a changed launcher signature
then fails here, in CI, instead of costing a device call (each variant that raises is printed as
FAILED and recorded, so the sweep itself would carry on)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_explore_tiles_smoke_runs_every_section_without_a_failed_variant(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "explore.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "explore_tiles.py"), "--smoke",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed = [line for line in proc.stdout.splitlines() if " FAILED " in line]
    assert not failed, "\n".join(failed)
    done = [line for line in proc.stdout.splitlines() if line.startswith("--- ") and line.split()[2] == "done"]
    assert [line.split()[1] for line in done] == ["gemm", "gemm_ep", "reorder", "ep_skip", "preprocess", "copies", "movement", "gemm_parts"], proc.stdout[-2000:]
    assert out.stat().st_size > 0
