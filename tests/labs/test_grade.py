"""The grader (`python -m exo grade N`, exo/labs/grade.py): table, score, Gradescope JSON, results
folder, timeouts, stubs, hangs, determinism, --from-installed and batch grading.

The graded tests here are small synthetic ones written to a temporary directory (``--tests``), so
these tests do not depend on the labs' own graded tests and stay fast: tiny guests, small budgets.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_tool

from exo.labs import cmd_grade

ROOT = Path(__file__).resolve().parents[2]

DEMO = '''
from pathlib import Path

import pytest

from exo.labs.plugin import expect

HERE = Path(__file__).parent


@pytest.mark.lab(1, points=5)
def test_echo_passes(boot):
    expect(boot("guest_apps/echo", stdin=b"hi\\n").stdout, r"^hi$")


@pytest.mark.lab(1, points=3)
def test_echo_fails(boot):
    expect(boot("guest_apps/echo", stdin=b"hi\\n").stdout, r"bye")


@pytest.mark.lab(1, points=2)
def test_spins(boot):
    boot(HERE / "loop", max_instructions=100_000)


@pytest.mark.lab(1, points=4)
def test_stub(boot):
    expect(boot("guest_apps/stubbed").stdout, r"^hello, world$")
'''

LOOP_S = """\
section .text
_start:
    xor eax, eax
spin:
    add rax, 1
    jmp spin
"""

HIDDEN = '''
import pytest

from exo.labs.plugin import expect


@pytest.mark.lab(1, points=7)
def test_secret(boot):
    expect(boot("guest_apps/echo", stdin=b"x\\n").stdout, "x")
'''

MISC = '''
import os
import time

import pytest


@pytest.mark.lab(1, points=1)
def test_a_ok():
    pass


@pytest.mark.lab(1, points=2)
def test_b_hangs():
    time.sleep(120)


@pytest.mark.lab(1, points=2)
def test_c_kills_the_process():
    os._exit(7)


@pytest.mark.lab(2, points=2)
def test_d_of_another_lab():
    pass


@pytest.mark.lab(1, points=1)
def test_e_after():
    pass


@pytest.mark.lab(1, points=3)
def test_f_python_stub():
    raise NotImplementedError("LAB 1 (pick): pick the next thread -- libos/sched.py")
'''


def _app(d: Path, name: str, source: str) -> None:
    d.mkdir(parents=True)
    (d / "app.toml").write_text(f'name = "{name}"\nsources = ["{name}.s"]\nentry = "_start"\n')
    (d / f"{name}.s").write_text(source)


def make_tree(dst: Path) -> Path:
    """A student tree: the reference exo, hw, libos and guest apps, plus a guest that reached a
    lab's stub (what regions.default_stub puts in assembly)."""
    for top in ("exo", "hw", "libos", "guest_apps"):
        shutil.copytree(ROOT / top, dst / top, ignore=shutil.ignore_patterns("__pycache__", "hidden"))
    from exo.labs.regions import Region, default_stub

    region = Region(1, "hello", "print hello", "guest_apps/stubbed/stubbed.s", 1, None, 3, "    ")
    _app(dst / "guest_apps" / "stubbed", "stubbed",
         "\n".join(["section .text", "_start:", *default_stub(region), ""]))
    (dst / "guest_apps" / "stubbed" / "app.toml").write_text(
        'name = "stubbed"\nsources = ["stubbed.s"]\nentry = "_start"\n')
    return dst


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("student") / "tree")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("graded") / "lab1"
    d.mkdir()
    (d / "test_lab1_demo.py").write_text(DEMO)
    _app(d / "loop", "loop", LOOP_S)
    return d


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hidden") / "lab1"
    d.mkdir()
    (d / "test_lab1_hidden_secret.py").write_text(HIDDEN)
    return d


def grade_cli(cwd: Path, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    rc = cmd_grade.main([*args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def without_timings(results: dict) -> dict:
    results = json.loads(json.dumps(results))
    results.pop("execution_time")
    for t in results["tests"]:
        t["extra_data"].pop("time")
    return results


def test_grade_prints_the_table_and_score_saves_outputs_and_writes_gradescope_json(
        tree, demo, hidden, tmp_path, monkeypatch, capsys):
    res, js = tmp_path / "res", tmp_path / "results.json"
    rc, out, err = grade_cli(tree, "1", "--tests", str(demo), "--hidden", str(hidden), "--results", str(res),
                             "--json", str(js), monkeypatch=monkeypatch, capsys=capsys)
    assert rc == cmd_grade.EXIT_LOST, err
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(
        r"^test_\S+::(\S+)(?: \(hidden\))?\s+(\d+/\d+)\s+(\w+)\s+[\d.]+s$", out, re.M)}
    assert rows == {"test_echo_passes": ("5/5", "pass"), "test_echo_fails": ("0/3", "FAIL"),
                    "test_spins": ("0/2", "TIMEOUT"), "test_stub": ("0/4", "STUB"),
                    "test_secret": ("7/7", "pass")}
    assert "Score: 12/21" in out
    # A failure shows what was expected and what came; a timeout where the guest was; a stub its message.
    assert "expected a line matching 'bye' (after offset 0), got:\n    hi" in out
    assert re.search(r"timed out at 100000 instructions, at RIP 0x[0-9a-f]+ \(spin\+0x4\): jmp 0x", out)
    assert "LAB 1 (hello): print hello -- guest_apps/stubbed/stubbed.s" in out

    data = json.loads(js.read_text())
    assert set(data) == {"score", "execution_time", "tests"}
    assert data["score"] == 12
    by = {t["name"].split("::")[1]: t for t in data["tests"]}
    for t in data["tests"]:
        assert set(t) >= {"name", "score", "max_score", "output", "visibility", "status"}
    assert by["test_secret"]["visibility"] == "after_published"
    assert by["test_echo_passes"]["visibility"] == "visible"
    assert (by["test_spins"]["score"], by["test_spins"]["max_score"], by["test_spins"]["status"]) == (0, 2, "failed")
    assert "still running when the watchdog stopped the machine" in by["test_spins"]["output"]
    # The results folder: each test's console and exo output (gradelib's jos.out).
    saved = (res / "test_lab1_demo.py_test_echo_fails.out").read_text()
    assert "--- console output:\nhi\n" in saved and "exo: exit status 0" in saved
    stub = (res / "test_lab1_demo.py_test_stub.out").read_text()
    assert "exit status 99" in stub
    assert "Score: 12/21" in (res / "summary.txt").read_text()
    assert not (tree / ".pytest_cache").exists()


def test_grading_twice_gives_identical_results_apart_from_timings(tree, demo, tmp_path, monkeypatch, capsys):
    runs = []
    for i in range(2):
        js = tmp_path / f"r{i}.json"
        grade_cli(tree, "1", "--tests", str(demo), "--results", str(tmp_path / f"res{i}"), "--json", str(js),
                  monkeypatch=monkeypatch, capsys=capsys)
        runs.append(json.loads(js.read_text()))
    assert without_timings(runs[0]) == without_timings(runs[1])
    assert runs[0]["tests"][0]["extra_data"]["time"] >= 0


def test_a_hang_a_crash_and_a_test_of_another_lab_do_not_stop_the_rest(tree, tmp_path, monkeypatch, capsys):
    d = tmp_path / "lab1"
    d.mkdir()
    (d / "test_lab1_misc.py").write_text(MISC)
    (d / "test_lab1_broken.py").write_text("import no_such_module_for_the_grader\n")
    js = tmp_path / "r.json"
    rc, out, err = grade_cli(tree, "1", "--tests", str(d), "--timeout", "2", "--results", str(tmp_path / "res"),
                             "--json", str(js), monkeypatch=monkeypatch, capsys=capsys)
    assert rc == cmd_grade.EXIT_TEST_SET, err
    status = {t["name"]: (t["extra_data"]["exo_status"], t["score"], t["max_score"])
              for t in json.loads(js.read_text())["tests"]}
    assert status == {
        "test_lab1_broken.py": ("error", 0, 0),
        "test_lab1_misc.py::test_a_ok": ("pass", 1, 1),
        "test_lab1_misc.py::test_b_hangs": ("hung", 0, 2),
        "test_lab1_misc.py::test_c_kills_the_process": ("error", 0, 2),
        "test_lab1_misc.py::test_d_of_another_lab": ("error", 0, 0),
        "test_lab1_misc.py::test_e_after": ("pass", 1, 1),
        "test_lab1_misc.py::test_f_python_stub": ("stub", 0, 3),
    }
    assert "cut off after 2 s of wall time" in out and "in test_b_hangs" in out
    assert "the test process died (exit status 7)" in out
    assert "test_lab1_misc.py::test_d_of_another_lab is marked lab 2 but is in lab 1's test set" in out
    assert "test_lab1_broken.py cannot be collected: ModuleNotFoundError" in out
    assert "Score: 2/9" in out


def test_from_installed_ignores_the_tests_and_plugin_in_the_student_tree(tree, tmp_path):
    """A student who edits the graded tests and the plugin in their tree to pass everything scores
    full marks only when the grader trusts the tree; --from-installed still gives 0."""
    installed = tmp_path / "installed"
    shutil.copytree(ROOT / "exo", installed / "exo", ignore=shutil.ignore_patterns("__pycache__", "hidden"))
    honest = "@pytest.mark.lab(1, points=4)\ndef test_echo(boot):\n    expect(boot('guest_apps/echo', stdin=b'hi\\n').stdout, 'bye')\n"
    header = "import pytest\nfrom exo.labs.plugin import expect\n\n\n"
    student = make_tree(tmp_path / "student")
    for t in (installed, student):  # lab 1's real graded tests are not what this test is about
        for f in (t / "exo/labs/tests/lab1").glob("test_*.py"):
            f.unlink()
    (installed / "exo/labs/tests/lab1/test_lab1_echo.py").write_text(header + honest)
    (student / "exo/labs/tests/lab1/test_lab1_echo.py").write_text(
        header + "@pytest.mark.lab(1, points=4)\ndef test_echo(boot):\n    expect(b'', 'bye')\n")
    plugin = student / "exo/labs/plugin.py"
    plugin.write_text(plugin.read_text().replace("    pos = 0\n    for p in patterns:", "    return\n    pos = 0\n    for p in patterns:"))
    env = {**os.environ, "PYTHONPATH": str(installed)}

    def score(*extra: str) -> dict:
        js = tmp_path / "r.json"
        p = subprocess.run([sys.executable, "-P", "-m", "exo.labs.cmd_grade", "1", "--json", str(js), *extra],
                           cwd=student, env=env, capture_output=True, text=True)
        assert p.returncode in (0, 1), p.stderr
        return json.loads(js.read_text())

    assert score()["score"] == 4  # the tree's own (edited) tests and plugin
    r = score("--from-installed")
    assert r["score"] == 0 and r["tests"][0]["max_score"] == 4
    assert "expected a line matching 'bye'" in r["tests"][0]["output"]


def test_from_installed_refuses_to_be_the_trees_own_grader(monkeypatch, capsys):
    # This process imported exo from the working tree, without python -P: it is not "installed".
    if not Path(cmd_grade.__file__).resolve().is_relative_to(ROOT):
        pytest.skip("exo is imported from an installed copy, not from this tree")
    rc, out, err = grade_cli(ROOT, "1", "--from-installed", monkeypatch=monkeypatch, capsys=capsys)
    assert rc == cmd_grade.EXIT_USAGE
    assert err.startswith("exo: error: --from-installed: ") and "python -P -m exo grade" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("where", [["--jobs", "2"], ["--executor", "local:2"], ["--executor", "ray"]],
                         ids=["threads", "processes", "ray"])
def test_batch_grades_each_tree_and_a_broken_one_gets_zero_with_a_reason(where, tree, demo, tmp_path, monkeypatch,
                                                                         capsys):
    if where[-1] == "ray":  # the sweeps' executor (exo/jobs) grades a class on a cluster too
        need_tool(importlib.util.find_spec("ray") is not None, "ray is not installed (pip install 'exo[ray]')")
    subs = tmp_path / "subs"
    subs.mkdir()
    shutil.copytree(tree, subs / "alice")
    shutil.copytree(tree, subs / "bob")
    sched = subs / "bob" / "libos" / "sched.py"
    sched.write_text(sched.read_text() + "\ndef broken(:\n")
    (subs / "carol").mkdir()
    (subs / "carol" / "notes.txt").write_text("my lab\n")
    out_dir = tmp_path / "out"
    rc, out, err = grade_cli(tmp_path, "1", "--tests", str(demo), "--submissions", str(subs), "--json-dir",
                             str(out_dir), *where, monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0, err
    rows = list(csv.DictReader((out_dir / "summary.csv").open()))
    assert [r["student"] for r in rows] == ["alice", "bob", "carol"]
    alice, bob, carol = rows
    assert (alice["score"], alice["max"], alice["note"]) == ("5", "14", "")
    assert alice["test_lab1_demo.py::test_echo_passes"] == "5" and alice["test_lab1_demo.py::test_spins"] == "0"
    assert bob["score"] == "0" and bob["note"].startswith("does not compile: libos/sched.py:")
    assert carol["score"] == "0" and carol["note"] == "is not an exo tree (no exo/api.py)"
    for s in ("alice", "bob", "carol"):
        assert set(json.loads((out_dir / f"{s}.json").read_text())) >= {"score", "execution_time", "tests"}
    assert json.loads((out_dir / "bob.json").read_text())["score"] == 0
    assert (out_dir / "alice" / "test_lab1_demo.py_test_echo_fails.out").exists()
    assert "alice: 5/14" in out


@pytest.mark.parametrize("args, what", [
    (["99"], "lab: no lab 99"),
    (["1", "--submissions", "x"], "--submissions: batch grading needs both"),
    (["1", "--submissions", "x", "--json-dir", "y", "--jobs", "2", "--executor", "ray"], "--jobs: not with --executor"),
    (["1", "--submissions", "exo", "--json-dir", "/tmp/unused", "--executor", "cloud"], "--executor: unknown executor"),
    (["1", "--tests", "/nonexistent/dir"], "--tests: /nonexistent/dir: not a directory"),
    (["1", "--timeout", "0"], "--timeout: must be positive"),
    (["1"], "/: is not an exo tree (no exo/api.py): run the grader at the root of an exo tree"),
])
def test_bad_usage_is_a_one_line_error(args, what, monkeypatch, capsys):
    rc, out, err = grade_cli(ROOT if args != ["1"] else Path("/"), *args, monkeypatch=monkeypatch, capsys=capsys)
    assert rc == cmd_grade.EXIT_USAGE
    assert err.startswith(f"exo: error: {what}") and err.count("\n") == 1


def _lab_params() -> list:
    from exo.labs.catalog import LABS

    return [pytest.param(lab.n, id=f"lab{lab.n}", marks=pytest.mark.slow) for lab in LABS]


@pytest.mark.parametrize("n", _lab_params())
def test_every_lab_grades_the_reference_fully_and_the_same_twice(n):
    """Issue 13's honesty check, its determinism half: the reference tree gets every point of each lab
    that has graded tests, and two gradings give the same results apart from the timings."""
    from exo.labs import grade as G

    if not any((ROOT / "exo" / "labs" / "tests" / f"lab{n}").glob("test_*.py")):
        pytest.skip(f"lab {n} has no graded tests in this tree")
    runs = [G.grade(n, ROOT) for _ in range(2)]
    assert not runs[0].errors, runs[0].errors
    bad = {t.name: t.message for t in runs[0].tests if t.status not in ("pass", "skip")}
    assert not bad, bad
    assert without_timings(G.gradescope(runs[0])) == without_timings(G.gradescope(runs[1]))


def test_python_m_exo_grade_is_the_grader():
    """`python -m exo grade` runs this module (exo/cli's COMMANDS table names it)."""
    import exo.cli

    if not hasattr(exo.cli, "COMMANDS"):
        pytest.skip("this tree's exo/cli.py predates the command table (issue 12): not wired yet")
    assert exo.cli.COMMANDS["grade"][0] == "exo.labs.cmd_grade"
    p = subprocess.run([sys.executable, "-m", "exo", "grade", "99"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("exo: error: lab: no lab 99: the labs are 1, 2")


def test_extra_credit_adds_to_the_score_not_to_the_total(tree, tmp_path, monkeypatch, capsys):
    d = tmp_path / "lab1"
    d.mkdir()
    (d / "test_lab1_extra.py").write_text(
        "import pytest\n\n\n@pytest.mark.lab(1, points=3)\ndef test_core():\n    pass\n\n\n"
        "@pytest.mark.lab(1, points=2, extra=True)\ndef test_bonus():\n    pass\n")
    js = tmp_path / "r.json"
    rc, out, err = grade_cli(tree, "1", "--tests", str(d), "--results", str(tmp_path / "res"), "--json", str(js),
                             monkeypatch=monkeypatch, capsys=capsys)
    assert rc == 0, out + err
    assert "test_lab1_extra.py::test_bonus (extra credit)" in out and "Score: 5/3" in out
    assert json.loads(js.read_text())["score"] == 5
