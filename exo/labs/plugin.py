"""The pytest plugin of the graded lab tests: the ``lab`` marker and the ``boot`` fixture.

A graded test is an ordinary pytest test::

    @pytest.mark.lab(3, points=10)
    def test_forktree(boot):
        r = boot("guest_apps/forktree")          # exo.api.run under the virtual clock, with a budget
        expect(r.stdout, r"0000: I am ''", r"I am '111'")
        assert r.exit_status == 0

`boot` takes `exo.api.System`'s options and returns its `Result`; a run that uses up its instruction
budget fails the test with where the guest was. The grader (exo/labs/grade.py) runs these tests.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

DEFAULT_BUDGET = 200_000_000  # instructions: a graded boot must end well within it


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab(n, points=1): a graded test of lab n, worth points")


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
    """Boot guest apps with the public API (exo.api.run), deterministically: the virtual clock
    and an instruction budget."""
    runs: list = []
    request.node.exo_runs = runs

    def _boot(*apps: Any, max_instructions: int = DEFAULT_BUDGET, allow_timeout: bool = False,
              **options: Any):
        from exo.api import run

        options.setdefault("clock", "virtual")
        r = run(*apps, max_instructions=max_instructions, **options)
        runs.append(r)
        if r.watchdog_fired and not allow_timeout:
            where = "; ".join(f"{k}: {v}" for k, v in r.stuck.items())
            pytest.fail(f"timed out at {max_instructions} instructions ({where})", pytrace=False)
        return r

    return _boot
