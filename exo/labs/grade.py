"""The grader: run a lab's graded tests against a tree and score them (`python -m exo grade N`).

The graded tests are ordinary pytest tests (exo/labs/plugin.py). `grade` runs them in a pytest
subprocess whose working directory and first import path are the graded tree, so the exokernel,
the libOS and the guest apps under test are the tree's. The test package is copied into a fresh
working directory under the private name `PKG` (its ``exo.labs`` imports rewritten to it) and pytest
runs with its own ini file, ``--noconftest`` and that copy's plugin, so nothing in the tree's
pyproject, conftest files or test directories takes part. With ``from_installed`` the copy comes from
the exo that runs the grader (the installed one: a student cannot pass by editing the tests or the
grader in their tree); otherwise from the tree's own exo/labs.

The plugin writes a JSON-lines report as the tests run. A test that hangs in Python past the wall
timeout ends the pytest process (faulthandler); the grader records it with where it was stuck and
runs the remaining tests in a new process. Output is deterministic: tests run under the virtual
clock, in pytest's collection order, and the temporary paths are taken out of every message, so
grading the same tree twice gives the same results apart from the timings.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exo.errors import ExoUserError

PKG = "exo_graded"  # the private name of the copied exo/labs package in the grader's working directory
WALL_TIMEOUT = 300.0  # seconds per test: generous, the guests' budgets (instructions) come first
OUTPUT_LIMIT = 20_000  # characters of a test's output in the Gradescope JSON (the results folder has it all)
HIDDEN_VISIBILITY = "after_published"  # Gradescope: shown to students once the grades are published
TREE_MARKS = ("exo/api.py", "hw/__init__.py", "libos/__init__.py")  # what makes a directory an exo tree

# exo status -> (table word, Gradescope status). A test scores its points only when it passed.
STATUS = {
    "pass": ("pass", "passed"),
    "fail": ("FAIL", "failed"),
    "stub": ("STUB", "failed"),  # reached a lab's stub: not implemented yet
    "timeout": ("TIMEOUT", "failed"),  # the guests' instruction budget ran out
    "hung": ("HUNG", "failed"),  # the test itself (Python) passed the wall timeout
    "skip": ("skip", "failed"),
    "error": ("ERROR", "failed"),  # the test could not run, or does not belong to this lab
}

# The launcher of the pytest subprocess: it imports what the plugin needs before the graded tree is
# on the import path (a tree cannot replace them), then puts the tree right after the grader's
# working directory (sys.path[0], where PKG is).
LAUNCHER = """\
import faulthandler, json, re, sys
import pytest

sys.path.insert(1, {tree!r})
sys.exit(pytest.main(sys.argv[1:]))
"""


@dataclass
class TestResult:
    name: str  # file::test, the same whichever directory the tests were copied to
    score: float
    max_score: float
    status: str  # a key of STATUS
    message: str  # why it failed, in short (what was expected and what came)
    output: str  # the message, then every boot's console and exo output
    hidden: bool = False
    time: float = 0.0
    extra: bool = False  # extra credit: its points add to the score, not to the lab's total


@dataclass
class Grade:
    lab: int
    tests: list[TestResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems of the test set itself
    note: str = ""  # a problem of the graded tree (it does not compile, it is not an exo tree)
    execution_time: float = 0.0

    @property
    def score(self) -> float:
        return 0 if self.note else sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests if not t.extra)


# ------------------------------------------------------------------------------- the tree
def check_tree(tree: Path, compile_python: bool = True) -> str:
    """Why ``tree`` cannot be graded ("" if it can): not an exo tree, or (``compile_python``) Python
    that does not compile."""
    if not tree.is_dir():
        return "is not a directory"
    missing = [m for m in TREE_MARKS if not (tree / m).is_file()]
    if missing:
        return f"is not an exo tree (no {missing[0]})"
    if not compile_python:
        return ""
    for top in ("exo", "hw", "libos"):
        for path in sorted((tree / top).rglob("*.py")):
            try:
                compile(path.read_bytes(), str(path.relative_to(tree)), "exec")
            except SyntaxError as e:
                return f"does not compile: {e.filename}:{e.lineno}: {e.msg}"
            except ValueError as e:  # null bytes
                return f"does not compile: {path.relative_to(tree)}: {e}"
    return ""


def grader_labs() -> Path:
    """The exo/labs directory of the running grader (the installed exo under ``python -P``)."""
    return Path(__file__).resolve().parent


# ------------------------------------------------------------------------------- the test set
def _copy_package(src: Path, dst: Path) -> None:
    """Copy a test directory as a package: every directory with Python files gets an __init__.py."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "hidden"))
    for d in [dst, *(p for p in dst.rglob("*") if p.is_dir())]:
        if not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("")


def _rewrite_imports(root: Path) -> None:
    """``exo.labs`` -> PKG in every copied module: the tests use the copied plugin and helpers, never
    the graded tree's."""
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = re.sub(r"\bexo\.labs\b", PKG, text)
        new = re.sub(r"\bfrom exo import labs\b", f"import {PKG} as labs", new)
        if new != text:
            path.write_text(new, encoding="utf-8")


def prepare(work: Path, lab: int, labs_dir: Path, tests: Path | None, hidden: Path | None) -> list[Path]:
    """Lay out the grader's working directory: PKG (a copy of ``labs_dir``, the lab's tests replaced
    by ``tests`` if given, ``hidden`` as PKG/hidden) and an empty pytest.ini. The test paths to run."""
    pkg = work / PKG
    shutil.copytree(labs_dir, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "hidden"))
    lab_tests = pkg / "tests" / f"lab{lab}"
    if tests is None and not lab_tests.is_dir():
        raise ExoUserError(str(labs_dir / "tests" / f"lab{lab}"), f"no graded tests for lab {lab}")
    if tests is not None:
        shutil.rmtree(lab_tests, ignore_errors=True)
        _copy_package(tests, lab_tests)
    paths = [lab_tests]
    if hidden is not None:
        _copy_package(hidden, pkg / "hidden")
        paths.append(pkg / "hidden")
    _rewrite_imports(pkg)
    (work / "pytest.ini").write_text("[pytest]\n")
    return paths


# ------------------------------------------------------------------------------- running
def _run_pytest(work: Path, tree: Path, paths: list[Path], report: Path, deselect: Iterable[str],
                wall_timeout: float) -> tuple[int, str]:
    launcher = work / "launch.py"
    launcher.write_text(LAUNCHER.format(tree=str(tree)))
    cmd = [sys.executable, str(launcher), *map(str, paths), "-c", str(work / "pytest.ini"), "--rootdir", str(work),
           "--noconftest", "--continue-on-collection-errors", "-p", f"{PKG}.plugin", "-p", "no:cacheprovider",
           "-q", "--tb=short", "--exo-grade-report", str(report), "--exo-wall-timeout", str(wall_timeout),
           "--basetemp", str(work / "tmp")]  # tmp_path in the grader's directory: a path _clean takes out
    for nodeid in deselect:
        cmd += ["--deselect", nodeid]
    # A fresh image cache per grading (no submission reads another's images); no bytecode written
    # into the tree; pytest's options and plugins are the grader's alone (no PYTEST_ADDOPTS, no
    # auto-loaded plugins such as xdist): the same run on every machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(EXO_CACHE_DIR=str(work / "cache"), PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    p = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, text=True, errors="replace")
    return p.returncode, p.stderr


def _events(report: Path) -> list[dict]:
    if not report.exists():
        return []
    out = []
    for line in report.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the last line of a process cut off while writing
            continue
    return out


def grade(lab: int, tree: str | Path = ".", *, hidden: str | Path | None = None, tests: str | Path | None = None,
          from_installed: bool = False, wall_timeout: float = WALL_TIMEOUT) -> Grade:
    """Grade ``tree`` for ``lab``: its graded tests (or ``tests``), plus ``hidden``. ``from_installed``:
    the tests and the plugin come from the running grader's exo, not from the tree."""
    from exo.labs.catalog import BY_N

    if lab not in BY_N:
        raise ExoUserError("lab", f"no lab {lab}: the labs are {', '.join(map(str, BY_N))}")
    for opt, d in (("--hidden", hidden), ("--tests", tests)):
        if d is not None and not Path(d).is_dir():
            raise ExoUserError(opt, f"{d}: not a directory")
    if wall_timeout <= 0:
        raise ExoUserError("--timeout", f"must be positive, got {wall_timeout}")
    tree = Path(tree).resolve()
    start = time.monotonic()
    g = Grade(lab)
    g.note = check_tree(tree)
    if g.note.startswith("is not"):
        return g  # nothing to run the tests against
    labs_dir = grader_labs() if from_installed else tree / "exo" / "labs"
    if not (labs_dir / "plugin.py").is_file():
        raise ExoUserError(str(labs_dir), "no plugin.py: not an exo with the coursework kit")
    with tempfile.TemporaryDirectory(prefix="exo-grade-") as tmp:
        work = Path(tmp)
        paths = prepare(work, lab, labs_dir, Path(tests).resolve() if tests else None,
                        Path(hidden).resolve() if hidden else None)
        report = work / "report.jsonl"
        done: list[str] = []
        hung: dict[str, str] = {}
        while True:
            rc, stderr = _run_pytest(work, tree, paths, report, [*done, *hung], wall_timeout)
            events = _events(report)
            finished = {e["nodeid"] for e in events if e["event"] == "result"}
            started = [e["nodeid"] for e in events if e["event"] == "start"]
            cut = [n for n in started if n not in finished and n not in hung]
            if not cut or rc == 0:
                break
            # The process ended inside a test: the wall timeout (faulthandler's dump on stderr) or a crash.
            stacks = _hang_stacks(report.with_suffix(".hang"), work)
            if stacks:
                hung[cut[-1]] = (f"cut off after {wall_timeout:g} s of wall time: the test hung in Python "
                                 f"(a guest's budget counts instructions and ends first); it was at:\n{stacks}")
            else:
                hung[cut[-1]] = f"the test process died (exit status {rc}) in this test\n{_tail(stderr)}".rstrip()
            done = sorted(finished)
        g.tests, g.errors = _results(lab, events, hung, stderr if rc not in (0, 1) else "", wall_timeout)
        g.errors = [_clean(e, work, tree) for e in g.errors]
        for t in g.tests:
            t.message, t.output = _clean(t.message, work, tree), _clean(t.output, work, tree)
    g.execution_time = time.monotonic() - start
    return g


def _hang_stacks(path: Path, work: Path) -> str:
    """faulthandler's dump of a run cut off by the wall timeout: the main thread's stack, innermost
    first, without the pytest machinery under the test."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    if "Timeout (" not in text:
        return ""
    # Thread ids differ from run to run: keep the frames only (deterministic output).
    keep = [ln for ln in text.splitlines()
            if "File " in ln and "/_pytest/" not in ln and "/pluggy/" not in ln and "launch.py" not in ln]
    return "\n".join(keep[:30])


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _clean(text: str, work: Path, tree: Path) -> str:
    """Messages without the temporary and tree paths (deterministic, and short)."""
    for base, short in ((work / PKG, PKG), (work, "<grader>"), (tree, ".")):
        text = text.replace(str(base) + os.sep, short + "/" if short != "." else "").replace(str(base), short)
    return text


def _name(nodeid: str) -> str:
    """``tests/lab1/test_lab1_hello.py::test_hello[x]`` -> ``test_lab1_hello.py::test_hello[x]``."""
    path, _, rest = nodeid.partition("::")
    return f"{path.rsplit('/', 1)[-1]}::{rest}" if rest else path.rsplit("/", 1)[-1]


def _results(lab: int, events: list[dict], hung: dict[str, str], crash: str,
             wall_timeout: float) -> tuple[list[TestResult], list[str]]:
    """The per-test results, in collection order, and the test set's errors."""
    collected: dict[str, dict] = {}
    results: dict[str, dict] = {}
    errors: list[str] = []
    out: list[TestResult] = []
    seen: set[str] = set()
    for e in events:
        if e["event"] == "collected":
            for t in e["tests"]:
                collected.setdefault(t["nodeid"], t)
        elif e["event"] == "result":
            results[e["nodeid"]] = e
        elif e["event"] == "collect_error" and e["nodeid"] not in seen:
            seen.add(e["nodeid"])  # each rerun after a hung test collects again
            name = _name(e["nodeid"]) or "(collection)"
            last = e["message"].strip().splitlines()[-1:] or [""]
            errors.append(f"{name} cannot be collected: {last[0].removeprefix('E   ').strip()}")
            out.append(TestResult(name, 0, 0, "error", f"cannot be collected:\n{e['message']}",
                                  f"cannot be collected:\n{e['message']}"))
    if not collected and not out:
        errors.append("no graded test ran" + (f": pytest ended with\n{_tail(crash)}" if crash else ""))
    for nodeid, t in collected.items():
        name, hidden = _name(nodeid), f"/{PKG}/hidden/" in t["path"].replace(os.sep, "/")
        points = t["points"]
        if t["lab"] != lab:
            why = ("has no @pytest.mark.lab(N, points=P) marker" if t["lab"] is None else
                   f"is marked lab {t['lab']} but is in lab {lab}'s test set")
            errors.append(f"{name} {why}: fix the test set")
            out.append(TestResult(name, 0, 0, "error", f"{why}: not graded", f"{why}: not graded", hidden))
            continue
        r = results.get(nodeid)
        if r is None:
            why = hung.get(nodeid, "did not run: the test process ended before it" + (f"\n{_tail(crash)}" if crash else ""))
            cut_off = hung.get(nodeid, "").startswith("cut off")
            out.append(TestResult(name, 0, points, "hung" if cut_off else "error", why, why, hidden,
                                  wall_timeout if cut_off else 0.0))
            continue
        status = _status(r)
        message = r["stub"] if status == "stub" else r["message"].rstrip()
        output = _output(name, status, message, r["runs"])
        out.append(TestResult(name, points if status == "pass" else 0, points, status, message, output, hidden,
                              round(r["duration"], 3), bool(t.get("extra"))))
    return out, errors


def _status(r: dict) -> str:
    if r["outcome"] == "passed":
        return "pass"
    if r["outcome"] == "skipped":
        return "skip"
    if r["stub"]:
        return "stub"
    if r["timeout"]:
        return "timeout"
    return "fail" if r["phase"] == "call" else "error"


def _output(name: str, status: str, message: str, runs: list[dict]) -> str:
    """The whole story of one test: why it failed, then each boot's console and exo output."""
    parts = [f"{name}: {status}"]
    if message:
        parts.append(message)
    for i, run in enumerate(runs, 1):
        parts.append(f"--- boot {i}: {' '.join(run['apps'])}\n--- console output:\n{run['console']}"
                     f"{'' if run['console'].endswith(chr(10)) or not run['console'] else chr(10)}"
                     f"--- exo:\n{run['exo']}")
    return "\n".join(parts).rstrip() + "\n"


# ------------------------------------------------------------------------------- reporting
def table(g: Grade, results_dir: Path | None = None) -> str:
    """The table a student reads (test, points, status, time), the failures and the score."""
    from exo.labs.catalog import BY_N

    rows = [("test", "points", "status", "time")]
    for t in g.tests:
        rows.append((t.name + (" (hidden)" if t.hidden else "") + (" (extra credit)" if t.extra else ""),
                     f"{_num(t.score)}/{_num(t.max_score)}",
                     STATUS[t.status][0], f"{t.time:.1f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"lab {g.lab}: {BY_N[g.lab].title}"]
    if g.note:
        lines.append(f"the tree {g.note}: it scores 0")  # "is not an exo tree", "does not compile: ..."
    lines += ["  ".join(c.ljust(w) if i == 0 or i == 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    for t in g.tests:
        if t.status != "pass":
            msg = t.message.splitlines()
            shown = "\n".join("    " + m for m in msg[:25]) + ("\n    ..." if len(msg) > 25 else "")
            saved = f"  (all of it: {results_dir / _file(t.name)})" if results_dir else ""
            lines.append(f"\n{t.name}: {STATUS[t.status][0]}{saved}\n{shown}")
    for e in g.errors:
        lines.append(f"\nerror in the test set: {e}")
    lines.append(f"\nScore: {_num(g.score)}/{_num(g.max_score)}")
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return f"{x:g}"


def _file(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("_") + ".out"


def save_results(g: Grade, results_dir: Path) -> None:
    """gradelib's jos.out, per test: results_dir/<test>.out (the console and exo output of every
    boot), and summary.txt. Earlier .out files there are removed first."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        for old in results_dir.glob("*.out"):
            old.unlink()
        for t in g.tests:
            (results_dir / _file(t.name)).write_text(t.output, encoding="utf-8")
        (results_dir / "summary.txt").write_text(table(g), encoding="utf-8")
    except OSError as e:
        raise ExoUserError(str(results_dir), f"cannot write the results: {e.strerror or e}") from None


def gradescope(g: Grade) -> dict:
    """Gradescope's autograder results (https://gradescope-autograders.readthedocs.io/en/latest/specs/,
    "Output format"): the total ``score``, ``execution_time`` in seconds, and per test ``name``, ``score``,
    ``max_score``, ``status``, ``output`` and ``visibility``. Hidden tests are "after_published"."""
    tests = []
    for t in g.tests:
        output = t.output if len(t.output) <= OUTPUT_LIMIT else (
            t.output[:OUTPUT_LIMIT] + f"\n... ({len(t.output) - OUTPUT_LIMIT} more characters in the results folder)\n")
        tests.append({"name": t.name, "score": t.score, "max_score": t.max_score,
                      "status": STATUS[t.status][1], "output": output,
                      "visibility": HIDDEN_VISIBILITY if t.hidden else "visible",
                      "extra_data": {"exo_status": t.status, "time": t.time}})
    out = {"score": g.score, "execution_time": round(g.execution_time, 3), "tests": tests}
    notes = ([f"The submission {g.note}: it scores 0."] if g.note else []) + \
            [f"Error in the lab's test set: {e}" for e in g.errors]
    if notes:
        out["output"] = "\n".join(notes)
    return out


def write_json(data: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as e:
        raise ExoUserError(str(path), f"cannot write: {e.strerror or e}") from None


# ------------------------------------------------------------------------------- a class at once
def grade_batch(lab: int, submissions: Path, json_dir: Path, *, jobs: int | None = None,
                hidden: Path | None = None, tests: Path | None = None,
                wall_timeout: float = WALL_TIMEOUT, executor: str | None = None) -> dict[str, Grade]:
    """Grade every subfolder of ``submissions`` (one student tree each), ``jobs`` at a time, always
    with the running grader's tests (``from_installed``): json_dir/<student>.json (Gradescope format),
    json_dir/<student>/ (the per-test output) and json_dir/summary.csv.

    ``executor`` (exo/jobs): where the trees are graded: ``thread[:N]`` (the default: each grade
    waits on its own pytest process), ``local[:N]`` processes or ``ray[:ADDRESS]`` (a cluster whose
    nodes see the same paths). Every grade comes back here, and only this process writes files."""
    from exo import jobs as J

    if not submissions.is_dir():
        raise ExoUserError("--submissions", f"{submissions}: not a directory")
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ExoUserError("--submissions", f"{submissions}: no submission folders in it")
    if jobs is not None and jobs <= 0:
        raise ExoUserError("--jobs", f"must be positive, got {jobs}")
    ex = J.parse(executor) if executor else J.Executor("thread", workers=jobs)
    results = J.run(_grade_one, [(lab, tree, hidden, tests, wall_timeout) for tree in students], ex)
    grades = {}
    for tree, g in zip(students, results):
        save_results(g, json_dir / tree.name)
        write_json(gradescope(g), json_dir / f"{tree.name}.json")
        grades[tree.name] = g
    write_summary(grades, json_dir / "summary.csv")
    return grades


def _grade_one(job: tuple[int, Path, Path | None, Path | None, float]) -> Grade:
    """One tree of a batch (a job of exo/jobs: it may run in another process or on another node)."""
    lab, tree, hidden, tests, wall_timeout = job
    try:
        return grade(lab, tree, hidden=hidden, tests=tests, from_installed=True, wall_timeout=wall_timeout)
    except ExoUserError as e:  # a problem of this submission only: the batch goes on
        return Grade(lab, note=str(e))
    except OSError as e:  # e.g. an unreadable file in the submission
        return Grade(lab, note=f"could not be graded: {e}")


def write_summary(grades: dict[str, Grade], path: Path) -> None:
    """One row per student: score, max, why it scored 0 if the tree was broken, the per-test scores."""
    names: list[str] = []
    for g in grades.values():
        names += [t.name for t in g.tests if t.name not in names]
    best_max = max((g.max_score for g in grades.values()), default=0)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "score", "max", "note", *names])
        for student, g in grades.items():
            by = {t.name: t.score for t in g.tests}
            w.writerow([student, _num(g.score), _num(g.max_score or best_max), g.note,
                        *(_num(0 if g.note else by[n]) if n in by else "" for n in names)])


def as_dict(g: Grade) -> dict:
    return {**asdict(g), "score": g.score, "max_score": g.max_score}
