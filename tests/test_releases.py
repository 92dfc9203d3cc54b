"""``moe-harness releases`` (harness/releases.py, harness/commands/releases.py) and the slim,
offline release cache (harness/sglang/release.py).

Contracts checked:
- a cell is its worst dtype's status (FAILED with its probe, and how many dtypes have it) and
  keeps its minimal case and replay; the matrix's exit status: 0 with FAILED cells (a
  finding), 1 when nothing was compared, 3 when a release was unavailable; its JSON is typed
  and JSON-safe; the table has a line per op and a column per release;
- the bisection finds the boundary in O(log n) checks, drops an unavailable release and goes
  on, and reports no boundary when the endpoints agree;
- the options: --bisect takes two endpoints or none and no --op; --png without matplotlib is
  an error naming the extra [plot] before anything runs;
- a slim cache (release.json + files/, no wheel), as --export-cache writes it, loads offline
  through MOE_HARNESS_SGLANG_CACHE without pip; versions order as PEP 440 does;
- end to end on toy releases in-process: a correct and a buggy release make a matrix with
  passed and FAILED, and --bisect over the cache finds the release that broke it;
- with the package index (skipped with the reason when it cannot be reached; failed instead
  when MOE_HARNESS_REQUIRE_INDEX=1, as .ci/run sets): 0.4.6.post1's wheel, downloaded by pip
  into the user's cache on first use, loads, binds and passes through ``moe-harness releases``.
"""
import importlib.util
import json

import pytest

from harness import releases as rel
from harness.cli import main as cli_main
from harness.options import OptionError, ReleasesOptions
from harness.report import Row
from harness.sglang import release as release_mod
from harness.sglang.release import (CACHE_ENV, KERNEL_PATHS, ReleaseError, cache_root, cached_versions,
                                    export_slim_cache, load_release, resolve, sort_versions)
from harness.status import FAILED, NOT_PROVIDED, PASSED, UNBINDABLE
from tests.helpers import TOY_KERNELS, toy_wheel

GOOD = TOY_KERNELS
# seg_indptr[e] counts the ids <= e instead of < e: every expert's segment starts one expert late
BUGGY = GOOD.replace("torch.searchsorted(reorder, bounds)", "torch.searchsorted(reorder, bounds, right=True)")


def _wheel(folder, version, text=GOOD):
    return toy_wheel(folder, version, text=text)


def _row(op, dtype, status, probe=None, run=3):
    row = Row(op, "sglang==1.0", dtype, run=run, status=status)
    if probe:
        row.failure = {"probe": probe, "params": '{"op": "%s", "seed": 4}' % op, "message": "3 of 8 differ"}
        row.replay = f"moe-harness check --case {op}"
    return row


# ----------------------------------------------------------------------------- cells and matrix

def test_a_cell_shows_its_worst_dtype_and_keeps_the_minimal_case():
    cell = rel.make_cell("post_reorder", "1.0", [_row("post_reorder", "float32", PASSED),
                                                 _row("post_reorder", "bfloat16", FAILED, "tolerance")])
    assert (cell.status, cell.label) == (FAILED, "FAILED (tolerance) 1/2")
    assert cell.dtypes == {"float32": PASSED, "bfloat16": "FAILED (tolerance)"}
    assert (cell.failing_dtype, cell.probe, cell.reason) == ("bfloat16", "tolerance", "3 of 8 differ")
    assert '"seed": 4' in cell.case and cell.replay.startswith("moe-harness check")
    assert rel.make_cell("x", "1.0", [_row("x", "int32", PASSED)] * 2).label == PASSED
    unbindable = Row("x", "s", "int32", status=UNBINDABLE, reason="needs dst_start")
    assert (rel.make_cell("x", "1.0", [unbindable]).label, rel.make_cell("x", "1.0", [unbindable]).reason) == \
        (UNBINDABLE, "needs dst_start")


def _fake_check(table):
    """A check_release stand-in: table[version] is None (unavailable) or {op: [(dtype, status, probe)]}."""
    def check(options, backend, version):
        if table[version] is None:
            return rel.Column(version, available=False, error=f"sglang=={version}: pip could not download"), []
        rows = [_row(op, d, s, p) for op, entries in table[version].items() for d, s, p in entries]
        return rel.Column(version, kernel_path=KERNEL_PATHS[1], seconds=1.0), rows
    return check


def test_matrix_table_json_and_exit_status():
    options = ReleasesOptions(ops=["ep_preprocess", "post_reorder"])
    ok = {"ep_preprocess": [("int32", PASSED, None)], "post_reorder": [("float32", FAILED, "tolerance")]}
    absent = {"ep_preprocess": [("int32", NOT_PROVIDED, None)], "post_reorder": [("float32", NOT_PROVIDED, None)]}
    lines = []
    matrix = rel.build_matrix(options, "interpreter", ["1.0", "1.1"], lines.append,
                              check=_fake_check({"1.0": ok, "1.1": absent}))
    assert rel.matrix_exit_code(matrix) == 0  # FAILED cells are findings, not a failed command
    table = rel.format_matrix(matrix).splitlines()
    assert table[0].split() == ["op", "1.0", "1.1"] and len(table) == 4
    assert "FAILED (tolerance)" in table[3] and NOT_PROVIDED in table[3]
    assert "replay: moe-harness check" in rel.format_findings(matrix)
    assert any("[2/2] sglang==1.1" in line and "2 not provided" in line for line in lines), lines
    record = json.loads(json.dumps(matrix.to_dict()))
    assert record["releases"] == ["1.0", "1.1"] and len(record["cells"]) == 4
    assert {c["status"] for c in record["cells"]} == {PASSED, FAILED, NOT_PROVIDED}
    nothing = rel.build_matrix(options, "interpreter", ["1.1"], check=_fake_check({"1.1": absent}))
    assert rel.matrix_exit_code(nothing) == 1
    gone = rel.build_matrix(options, "interpreter", ["1.0", "2.0"], check=_fake_check({"1.0": ok, "2.0": None}))
    assert rel.matrix_exit_code(gone) == rel.EXIT_RELEASE_UNAVAILABLE
    assert gone.cell("post_reorder", "2.0").status == rel.UNAVAILABLE


def test_bisection_finds_the_boundary_and_skips_unavailable_releases():
    versions = [f"1.{i}" for i in range(17)]
    calls = []

    def verdict(v):
        calls.append(v)
        if v == "1.8":
            return None  # could not be fetched: dropped, the search goes on
        return {"float32": PASSED if int(v.split(".")[1]) < 11 else "FAILED (tolerance)"}
    options = ReleasesOptions(bisect="post_reorder")
    result = rel.bisect_releases(options, "interpreter", versions, "test", verdict=verdict)
    assert result.boundary == ("1.10", "1.11") and result.skipped == ["1.8"] and result.endpoints_checked
    assert len(calls) <= 2 + 6, calls
    text = rel.format_bisection(result)
    assert "changed between sglang==1.10 and sglang==1.11 (float32: passed -> FAILED (tolerance))" in text
    same = rel.bisect_releases(options, "interpreter", versions, "test", verdict=lambda v: {"float32": PASSED})
    assert same.boundary is None and "endpoints agree" in same.note
    assert len(json.dumps(rel.asdict(result))) > 0


def test_release_options(monkeypatch):
    with pytest.raises(OptionError, match="--bisect: expected two endpoint releases"):
        ReleasesOptions(releases=["0.4.8"], bisect="post_reorder")
    with pytest.raises(OptionError, match="--bisect: bisects one op"):
        ReleasesOptions(bisect="post_reorder", ops=["post_reorder"])
    with pytest.raises(OptionError, match="VERSION: .*expected a release version"):
        ReleasesOptions(releases=["latest"])
    with pytest.raises(OptionError, match="--op"):
        ReleasesOptions(ops=["no_such_op"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(OptionError, match=r"--png: needs matplotlib, the optional extra \[plot\]"):
        ReleasesOptions(png_path="m.png")
    assert cli_main(["--backend", "interpreter", "releases", "--png", "m.png"]) == 2
    # a release without some ops checks only the dtypes of the ops it has
    assert ReleasesOptions(dtypes=["int32", "float32"]).check_options("1.0", ["post_reorder"]).dtypes == ("float32",)


def test_cases_a_release_cannot_compute_here_get_no_verdict():
    """0.5.x's post_reorder_deepgemm reads the GPU's properties on the host: on a CPU-only torch
    that is 'not computable', not a FAILED verdict against the kernel; a case the binding cannot
    express to a release (NotSupported: 0.5.16 has no lora_delta) is rejected, not failed."""
    import torch
    from harness.cases import CaseParams
    from harness.runner import Candidate, run_case
    from harness.sglang.bind import NotSupported
    from harness.specs import SPECS

    def needs_gpu(*_a, **_k):
        torch.cuda.get_device_properties(0)
        raise AssertionError("Torch not compiled with CUDA enabled")  # where torch has CUDA but no GPU is seen
    p = CaseParams(op="post_reorder_deepgemm", dtype="float32", tokens=5, topk=2, experts=4, start_expert=0,
                   end_expert=3, hidden=16, seed=2)
    res = run_case(SPECS["post_reorder_deepgemm"], Candidate(needs_gpu), p, "cpu")
    assert res.status == "not computable" and "needs CUDA" in res.message, res.message

    def asks_for_capture(*_a, **_k):   # 0.5.23's expand_to_masked_slab
        torch.cuda.is_current_stream_capturing()
    try:
        torch.cuda.is_current_stream_capturing()
    except RuntimeError:    # a CPU-only torch (a CUDA build answers False without a GPU)
        res = run_case(SPECS["post_reorder_deepgemm"], Candidate(asks_for_capture), p, "cpu")
        assert res.status == "not computable" and "needs CUDA" in res.message, res.message

    def no_lora(*_a, **_k):  # what a binding raises for an argument the release has no parameter for
        raise NotSupported("sglang==0.5.16: post_reorder_deepgemm has no parameter for lora_delta")
    res = run_case(SPECS["post_reorder_deepgemm"], Candidate(no_lora), p, "cpu")
    assert res.status == "rejected" and "cannot express this case" in res.message, res.message
    # the row says which kind of rejection it was, not "outside a precondition"
    from harness.fuzz import sweep
    out = sweep(SPECS["post_reorder_deepgemm"], Candidate(no_lora), "release", "float32", "interpreter", "cpu",
                n_cases=2, seed=0, database_dir=None, fixed_cases=False)
    assert out.failure is None and out.rejected == out.unexpressible > 0, out


def test_sglangs_own_limits_fit_its_cases_and_reject_nothing_of_others():
    """ep_scatter's hidden >= 128 is a limit of SGLang's kernel (a binding limit), not of the op:
    SGLang's cases are fitted into it, and no case breaks a precondition of the op's (so an
    exception of ours on hidden < 128 stays FAILED)."""
    from harness.cases import CaseParams
    from harness.specs import SPECS
    spec = SPECS["ep_scatter"]
    p = CaseParams(op="ep_scatter", dtype="float32", tokens=5, topk=2, experts=4, start_expert=0, end_expert=3,
                   hidden=64, seed=2)
    assert spec.fit(p, spec.sglang.requires).hidden == 128 and spec.fit(p, ()).hidden == 64
    assert spec.broken_preconditions(p) == ()


# ----------------------------------------------------------------------------- the cache

def test_versions_sort_as_pep_440():
    assert sort_versions(["0.5.1.post1", "0.4.10", "0.5.1", "0.4.9.post6", "0.5.1rc1", "0.5.1.dev2", "0.5"]) == \
        ["0.4.9.post6", "0.4.10", "0.5", "0.5.1.dev2", "0.5.1rc1", "0.5.1", "0.5.1.post1"]


def test_slim_cache_loads_offline_without_the_wheel(tmp_path, monkeypatch):
    full = tmp_path / "full"
    resolve(wheel=_wheel(tmp_path, "9.9.1"), root=full)
    sizes = export_slim_cache(["9.9.1"], tmp_path / "slim", root=full)
    assert sizes["9.9.1"] < 4096 and not list((tmp_path / "slim").rglob("*.whl"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "slim"))
    monkeypatch.setattr(release_mod, "fetch_wheel", lambda *a, **k: pytest.fail("pip must not run"))
    assert cache_root() == tmp_path / "slim" and cached_versions() == ["9.9.1"]
    slim = resolve("9.9.1")
    assert slim.wheel is None and slim.folder == tmp_path / "slim" / "9.9.1"
    assert hasattr(load_release(slim), "run_moe_ep_preproess")
    with pytest.raises(ReleaseError, match="the cache being read"):
        export_slim_cache(["9.9.1"], tmp_path / "slim")


# ----------------------------------------------------------------------------- end to end

def test_releases_command_on_toy_releases_and_bisect(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    for version, text in (("9.0.1", GOOD), ("9.0.2", GOOD), ("9.0.3", BUGGY), ("9.0.4", BUGGY)):
        resolve(wheel=_wheel(tmp_path, version, text))
    flags = ["--op", "ep_preprocess", "--dtype", "int32", "--cases", "2", "--no-isolate", "--quiet"]
    out = tmp_path / "m.json"
    code = cli_main(["--backend", "interpreter", "releases", "9.0.1", "9.0.3", *flags, "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    record = json.loads(out.read_text())
    cells = {c["release"]: c for c in record["cells"]}
    assert cells["9.0.1"]["status"] == PASSED and cells["9.0.3"]["status"] == FAILED, text
    assert cells["9.0.3"]["replay"].startswith("moe-harness check --backend interpreter --impl sglang==9.0.3")
    monkeypatch.setattr(release_mod, "index_versions",
                        lambda *a, **k: (_ for _ in ()).throw(ReleaseError("no index")))  # offline: the cache's
    code = cli_main(["--backend", "interpreter", "releases", "--bisect", "ep_preprocess", "9.0.1", "9.0.4",
                     *flags[2:]])
    text = capsys.readouterr().out
    assert code == 0 and "changed between sglang==9.0.2 and sglang==9.0.3" in text, text
    assert "the cache (the package index is unreachable)" in text


def test_a_real_release_downloads_loads_binds_and_passes(tmp_path, monkeypatch, capsys):
    """0.4.6.post1 (1.2 MB, py3-none-any) through ``moe-harness releases``: from the user's
    cache, where pip puts it on first use (a fresh CI machine downloads it here or in
    test_sglang_release.py, once per run)."""
    import os
    monkeypatch.delenv(CACHE_ENV, raising=False)
    try:
        resolve("0.4.6.post1")
    except ReleaseError as exc:
        if os.environ.get("MOE_HARNESS_REQUIRE_INDEX") == "1":
            pytest.fail(f"MOE_HARNESS_REQUIRE_INDEX=1 and {exc}")
        pytest.skip(f"the package index is not reachable: {str(exc).splitlines()[-1]}")
    out = tmp_path / "m.json"
    code = cli_main(["--backend", "interpreter", "releases", "0.4.6.post1", "--op", "ep_preprocess", "silu_and_mul",
                     "grouped_gemm", "--dtype", "int32", "bfloat16", "--cases", "2", "--no-isolate", "--quiet",
                     "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    cells = {c["op"]: c for c in json.loads(out.read_text())["cells"]}
    assert {op: c["status"] for op, c in cells.items()} == {"ep_preprocess": PASSED, "silu_and_mul": PASSED,
                                                            "grouped_gemm": PASSED}, text
    assert resolve("0.4.6.post1").wheel is not None  # the normal path keeps the wheel beside the files
