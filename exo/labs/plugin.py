"""The pytest plugin of the graded lab tests: the ``lab`` marker and the ``boot`` fixture.

A graded test is an ordinary pytest test::

    @pytest.mark.lab(3, points=10)
    def test_forktree(boot):
        r = boot("guest_apps/forktree")          # exo.api.run under the virtual clock, with a budget
        expect(r.stdout, r"0000: I am ''", r"I am '111'")
        assert r.exit_status == 0

`boot` takes `exo.api.System`'s options and returns its `Result`; a run that uses up its instruction
budget fails the test with where the guest was ("timed out at N instructions, at RIP 0x... (symbol)").
Every boot is recorded on the test (``request.node.exo_runs``: the apps, the console output and what
`exo boot` would have said about it) so that the grader can save it (gradelib's jos.out).

The grader (exo/labs/grade.py) runs these tests in a pytest subprocess with ``--exo-grade-report
FILE``: this plugin then writes one JSON line per event (the collected tests, each test's start, each
test's outcome) and cuts a test that hangs in Python off after ``--exo-wall-timeout`` seconds
(faulthandler ends the process; the grader records the test and runs the rest). Without that option
the plugin only adds the marker and the fixtures: the project's own test run is unchanged.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

DEFAULT_BUDGET = 200_000_000  # instructions: a graded boot must end well within it

# What a stub says (exo/labs/regions.py Region.message): "LAB 4 (pick): pick the next ... -- libos/sched.py".
STUB_MESSAGE = re.compile(r"LAB \d+ \([^)\n]*\): [^\n]*? -- [\w./-]*\w")
RECORD_LIMIT = 1 << 20  # bytes of console output kept per boot: a runaway guest must not fill the disk


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("exo-grade", "the exo grader (exo/labs/grade.py); not for direct use")
    g.addoption("--exo-grade-report", default=None, metavar="FILE",
                help="append a JSON line per collected test, test start and test outcome to FILE")
    g.addoption("--exo-wall-timeout", type=float, default=300.0, metavar="SECONDS",
                help="with --exo-grade-report: end the run if one test takes longer (Python hangs)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab(n, points=1): a graded test of lab n, worth points")
    path = config.getoption("--exo-grade-report", None)
    if path:
        config.pluginmanager.register(_Reporter(Path(path), config.getoption("--exo-wall-timeout")),
                                      "exo-grade-reporter")


def need_tool(available: bool, why: str) -> None:
    """A graded test that needs an outside tool (gcc, e2fsck): skipped, and so worth 0 points,
    where the tool is missing; a failure where EXO_REQUIRE_TOOLS=1 (CI), which must not skip."""
    if not available:
        if os.environ.get("EXO_REQUIRE_TOOLS") == "1":
            pytest.fail(f"EXO_REQUIRE_TOOLS=1 but {why}", pytrace=False)
        pytest.skip(why)


def expect(output: bytes | str, *patterns: str) -> None:
    """Each regex must match the output, in order (gradelib's ``match``), or the test fails
    showing what was expected and what came."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    pos = 0
    for p in patterns:
        m = re.compile(p, re.M).search(text, pos)
        if m is None:
            pytest.fail(f"expected a line matching {p!r} (after offset {pos}), got:\n{text}", pytrace=False)
        pos = m.end()


@pytest.fixture
def boot(request: pytest.FixtureRequest):
    """Boot guest apps with the public API (exo.api.System), deterministically: the virtual clock
    and an instruction budget. Each boot is recorded in ``request.node.exo_runs``."""
    runs: list[dict] = []
    request.node.exo_runs = runs

    def _boot(*apps: Any, max_instructions: int = DEFAULT_BUDGET, allow_timeout: bool = False,
              **options: Any):
        from exo.api import System

        options.setdefault("clock", "virtual")
        record = {"apps": [str(a) for a in apps], "console": "", "exo": ""}
        runs.append(record)
        try:
            with System(list(apps), **options) as s:
                r = s.run(max_instructions)
                where = {f"{e.id} ({e.name})": s.locate(e) for e in s.kernel.envs.values()
                         if e.alive and not e.is_server}
        except Exception as e:  # a build or boot error: the record says so, the test fails with it
            record["exo"] = f"exo: error: {type(e).__name__}: {e}\n"
            raise
        record["console"] = r.stdout[:RECORD_LIMIT].decode(errors="replace")
        record["exo"] = _exo_output(r, where)
        if r.watchdog_fired and not allow_timeout:
            request.node.exo_timed_out = True
            pytest.fail(timeout_message(max_instructions, r, where), pytrace=False)
        return r

    return _boot


def _at(loc: tuple[int, str | None, str]) -> str:
    rip, symbol, insn = loc
    return f"RIP {rip:#x}{f' ({symbol})' if symbol else ''}: {insn}"


def timeout_message(budget: int, r: Any, where: dict[str, tuple[int, str | None, str]]) -> str:
    """``timed out at N instructions, at RIP 0x401007 (spin+0x2): jmp 0x401005`` (per environment
    still running when the budget ran out)."""
    if not where:
        return f"timed out at {budget} instructions"
    if len(where) == 1:
        return f"timed out at {budget} instructions, at {_at(next(iter(where.values())))}"
    return f"timed out at {budget} instructions, " + "; ".join(
        f"environment {env} at {_at(loc)}" for env, loc in where.items())


def _exo_output(r: Any, where: dict[str, tuple[int, str | None, str]]) -> str:
    """What `exo boot` says on stderr about a run: fault reports, environments left and where,
    and the first app's exit status."""
    lines = [report.render() for report in r.reports]
    for env, why in r.stuck.items():
        loc = f"\n  at {_at(where[env])}" if env in where else ""
        lines.append(f"exo: environment {env}: {why}{loc}")
    if r.watchdog_fired:
        lines.append(f"exo: the instruction budget ran out ({r.stats.get('guest_instructions')} instructions)")
    lines.append(f"exo: exit status {r.exit_status}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the grader's side: the report
def _lab_of(item: pytest.Item) -> tuple[int | None, float]:
    m = item.get_closest_marker("lab")
    if m is None:
        return None, 0
    n = m.args[0] if m.args else m.kwargs.get("n")
    return n, m.kwargs.get("points", m.args[1] if len(m.args) > 1 else 1)


def _extra(item: pytest.Item) -> bool:
    """``lab(N, points=P, extra=True)``: extra credit, its points beyond the lab's total."""
    m = item.get_closest_marker("lab")
    return bool(m is not None and m.kwargs.get("extra", False))


class _Reporter:
    """Writes the grader's report (JSON lines, flushed as they come: a run cut off by the wall
    timeout or a crash still leaves everything before it) and arms the per-test wall timeout."""

    def __init__(self, path: Path, wall_timeout: float) -> None:
        self.out = path.open("a", encoding="utf-8")
        # Where faulthandler writes the hung test's stacks: not stderr, which pytest captures.
        self.hang = path.with_suffix(".hang").open("w", encoding="utf-8")
        self.wall = wall_timeout
        self.tests: dict[str, dict] = {}
        # Collection (importing the test modules) gets the same limit as one test.
        faulthandler.dump_traceback_later(self.wall, exit=True, file=self.hang)

    def _write(self, record: dict) -> None:
        self.out.write(json.dumps(record, sort_keys=True) + "\n")
        self.out.flush()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"event": "collect_error", "nodeid": report.nodeid, "message": report.longreprtext})

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        faulthandler.cancel_dump_traceback_later()
        self._write({"event": "collected", "tests": [
            {"nodeid": it.nodeid, "path": str(it.path), "name": it.name, "lab": _lab_of(it)[0],
             "points": _lab_of(it)[1], "extra": _extra(it)} for it in session.items]})

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self._write({"event": "start", "nodeid": nodeid})
        faulthandler.dump_traceback_later(self.wall, exit=True, file=self.hang)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        report = outcome.get_result()
        t = self.tests.setdefault(item.nodeid, {"outcome": "passed", "phase": "", "message": "",
                                                "duration": 0.0, "stub": None, "timeout": False})
        t["duration"] += report.duration
        t["item"] = item
        if report.failed and t["outcome"] == "passed":
            t["outcome"], t["phase"] = "failed", report.when
            t["message"] = report.longreprtext
            exc = call.excinfo
            if exc is not None and exc.errisinstance(NotImplementedError):
                m = STUB_MESSAGE.search(str(exc.value))
                t["stub"] = m[0] if m else None
        elif report.skipped and t["outcome"] == "passed":
            t["outcome"], t["phase"] = "skipped", report.when
            t["message"] = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else report.longreprtext

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        faulthandler.cancel_dump_traceback_later()
        t = self.tests.pop(nodeid, None)
        if t is None:
            return
        item = t.pop("item")
        runs = getattr(item, "exo_runs", [])
        if t["outcome"] == "failed" and t["stub"] is None:
            # A stub in the libOS (Python, run inside the exokernel) or in guest code shows in a
            # boot's fault report or console output rather than as the test's exception.
            for run in runs:
                m = STUB_MESSAGE.search(run["exo"]) or STUB_MESSAGE.search(run["console"])
                if m:
                    t["stub"] = m[0]
                    break
        t["timeout"] = bool(getattr(item, "exo_timed_out", False))
        self._write({"event": "result", "nodeid": nodeid, "runs": runs, **t})

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.out.close()
        self.hang.close()
