"""exo experiment ring-transitions --sweep: a grid of independent jobs on local processes or Ray,
whose exact results (counts, modelled cycles, inputs) do not depend on the executor."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT, need_tool

from benchmarks import sweep as S
from benchmarks.ring_transitions import measure
from exo import jobs
from exo.errors import ExoUserError

DEFAULTS = {"structures": ["exokernel"], "workloads": ["null"], "repeats": 1, "ops": 20}
# Small enough for CI: null calls under two structures, two seeds, two repeats: 8 runs of 4 boots.
SMALL = "structures=exokernel,microkernel;workloads=null;seeds=0,1;repeats=2;ops=20;timing_ops=20;profiles=kvm-vmx,xen-pv"


def _points(spec: str = SMALL) -> list[dict]:
    return S.parse(spec, DEFAULTS).points()


def test_spec_inline_file_and_defaults(tmp_path):
    sw = S.parse(SMALL, DEFAULTS)
    assert (sw.structures, sw.workloads, sw.seeds, sw.repeats, sw.ops, sw.timing_ops) == (
        ["exokernel", "microkernel"], ["null"], [0, 1], 2, 20, 20)
    assert sw.slices == [None] and sw.profiles == ["kvm-vmx", "xen-pv"]
    assert len(sw.points()) == 8
    f = tmp_path / "grid.toml"
    f.write_text('structures = ["monolithic"]\nworkloads = ["null", "fault"]\nslices = [1000, 20000]\nrepeats = 3\n')
    sw = S.parse(str(f), DEFAULTS)
    assert sw.slices == [1000, 20000] and sw.ops == 20  # ops from the command's defaults
    assert len(sw.points()) == 2 * 2 * 3
    j = tmp_path / "grid.json"
    j.write_text(json.dumps({"structures": ["microkernel"], "workloads": ["null", "fault"]}))
    assert [(p["workload"], p["structure"]) for p in S.parse(str(j), DEFAULTS).points()] == [
        ("null", "microkernel"), ("fault", "microkernel")]


@pytest.mark.parametrize("spec, message", [
    ("structures=exokernel;colour=red", "unknown key 'colour'"),
    ("structures=exokernal", "unknown structure 'exokernal'"),
    ("workloads=null;repeats=0", "repeats is one positive number"),
    ("slices=100,-5", "slices must be positive"),
    ("seeds=a", "seeds must be whole numbers"),
    ("structures", "is not KEY=VALUE"),
    ("profiles=", "profiles is empty"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ExoUserError, match=message):
        S.parse(spec, DEFAULTS)


def test_bad_executor_and_bad_file():
    for spec, message in (("cloud", "unknown executor"), ("local:0", "positive number"), ("thread:x", "positive")):
        with pytest.raises(ExoUserError, match=message):
            jobs.parse(spec)
    assert jobs.parse("ray:10.0.0.1:6379").address == "10.0.0.1:6379"
    with pytest.raises(ExoUserError, match="cannot read the sweep"):
        S.parse("/nonexistent/grid.toml", DEFAULTS)


def test_jobs_keep_submission_order_on_every_local_executor():
    for ex in ("local:2", "thread:3"):
        assert jobs.run(abs, [-5, 3, -1, 0, -8], ex) == [5, 3, 1, 0, 8]


def test_a_run_is_exact_and_slices_are_honoured():
    """One job gives the counts `measure` gives; a shorter time slice shows as more timer
    interrupts per operation, and the seed does not change an assembly workload's counts."""
    base = {"workload": "null", "structure": "monolithic", "repeat": 0, "ops": 20, "timing_ops": 20,
            "profiles": ["kvm-vmx"]}
    row = S.run_point({**base, "slice": None, "seed": 0})
    ref = measure("null", "monolithic", 20, 1)
    assert row["per_op"] == ref.per_op and row["crossings"] == ref.crossings == 2
    assert row["modelled_cycles"]["kvm-vmx"] == ref.modelled["kvm-vmx"]
    assert row["inputs"] == ref.inputs
    short = S.run_point({**base, "slice": 50, "seed": 7})
    assert short["per_op"]["interrupt"] > row["per_op"]["interrupt"]
    assert short["per_op"]["syscall"] == row["per_op"]["syscall"] == 1
    reseeded = S.run_point({**base, "slice": None, "seed": 7})
    assert S.exact([reseeded])[0] == {**S.exact([row])[0], "seed": 7}


def _local_rows():
    return S.run(S.parse(SMALL, DEFAULTS), "local:2")


def test_sweep_on_local_processes_is_tidy_and_repeatable(tmp_path):
    rows = _local_rows()
    assert [(r["structure"], r["seed"], r["repeat"]) for r in rows] == [
        (s, seed, rep) for s in ("exokernel", "microkernel") for seed in (0, 1) for rep in (0, 1)]
    exact = S.exact(rows)
    # every repeat and seed of a point gives the same counts (the assembly workloads have no randomness)
    by_structure = {}
    for r in exact:
        key = r["structure"]
        same = {k: v for k, v in r.items() if k not in ("seed", "repeat")}
        assert by_structure.setdefault(key, same) == same
    assert by_structure["exokernel"]["crossings"] == 0 and by_structure["microkernel"]["crossings"] == 4
    assert by_structure["microkernel"]["per_op"]["context_switch"] == 2
    # host time is measured, never judged here (a difference of two timed runs may even be negative)
    assert all(isinstance(r["host_us"], float) and r["machine"]["host"] and r["executor"] == "local" for r in rows)
    S.write(rows, str(tmp_path / "s.json"), str(tmp_path / "s.csv"))
    table = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(table) == 8 and {"cycles_kvm-vmx", "cycles_xen-pv", "per_op_libcall", "host", "cpu"} <= set(table[0])
    assert json.loads((tmp_path / "s.json").read_text())[0]["inputs"] == rows[0]["inputs"]


def test_sweep_on_ray_equals_local_processes():
    need_tool(importlib.util.find_spec("ray") is not None, "ray is not installed (pip install 'exo[ray]')")
    ray_rows = S.run(S.parse(SMALL, DEFAULTS), "ray")
    assert {r["executor"] for r in ray_rows} == {"ray"}
    assert S.exact(ray_rows) == S.exact(_local_rows())


def test_cli_sweep_writes_tables_and_refuses_bad_input(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "exo", "experiment", "ring-transitions", "--sweep",
                        "structures=exokernel,monolithic;workloads=write;ops=10;timing_ops=10;repeats=1",
                        "--executor", "local:2", "--json", str(out), "--csv", str(tmp_path / "rows.csv")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "sweep: write" in r.stdout and "monolithic" in r.stdout
    rows = json.loads(out.read_text())
    assert [(x["structure"], x["crossings"]) for x in rows] == [("exokernel", 2), ("monolithic", 2)]
    for args, message in ((["--sweep", "structures=nope"], "unknown structure 'nope'"),
                          (["--sweep", "workloads=null", "--executor", "cloud"], "unknown executor 'cloud'")):
        r = subprocess.run([sys.executable, "-m", "exo", "experiment", "ring-transitions", *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
