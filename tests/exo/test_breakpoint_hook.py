"""exo.cli.breakpoint in-process: which hook is installed, and the terminal hold pdb takes and gives back.
The whole path through a pseudo-terminal is tests/test_breakpoint.py."""

from __future__ import annotations

import io
import sys

import pytest

from exo.cli import breakpoint as bp


class FakeConsole:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def release_terminal(self) -> None:
        self.calls.append("release")

    def reclaim_terminal(self) -> None:
        self.calls.append("reclaim")


@pytest.fixture(autouse=True)
def _default_hook(monkeypatch):
    monkeypatch.setattr(sys, "breakpointhook", sys.__breakpointhook__)
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)


def test_install_replaces_only_pythons_default_hook_and_uninstall_restores_it():
    undo = bp.install(FakeConsole())
    assert sys.breakpointhook is not sys.__breakpointhook__
    undo()
    assert sys.breakpointhook is sys.__breakpointhook__


def test_a_hook_somebody_else_installed_is_kept(monkeypatch):
    def ide_hook(*a, **k):
        return "ide"

    monkeypatch.setattr(sys, "breakpointhook", ide_hook)
    bp.install(FakeConsole())()
    assert sys.breakpointhook is ide_hook


@pytest.mark.parametrize("choice", ["0", "ipdb.set_trace"])
def test_pythonbreakpoint_naming_no_debugger_or_another_leaves_python_in_charge(monkeypatch, choice):
    monkeypatch.setenv("PYTHONBREAKPOINT", choice)
    bp.install(FakeConsole())
    assert sys.breakpointhook is sys.__breakpointhook__


def test_pythonbreakpoint_0_set_during_the_run_skips_without_touching_the_console(monkeypatch):
    console = FakeConsole()
    undo = bp.install(console)
    try:
        monkeypatch.setenv("PYTHONBREAKPOINT", "0")
        assert breakpoint() is None
        assert console.calls == []
    finally:
        undo()


def test_no_terminal_skips_with_one_line(monkeypatch):
    monkeypatch.setattr(bp, "_terminal", lambda: None)
    err = io.StringIO()
    console = FakeConsole()
    undo = bp.install(console, stderr=err)
    try:
        breakpoint()
    finally:
        undo()
    line = sys._getframe().f_lineno - 3
    assert err.getvalue() == (f"exo: breakpoint() at {__file__}:{line} skipped: no terminal for pdb (stdin and "
                              "stdout are not both terminals, and /dev/tty cannot be opened)\n")
    assert console.calls == []


def test_the_hold_is_taken_once_and_given_back_at_continue():
    console = FakeConsole()
    hold = bp.TerminalHold(console)
    out = io.StringIO()
    first = bp.ConsolePdb(hold, stdin=io.StringIO("p 6 * 7\nc\n"), stdout=out)
    first.reset()  # as set_trace() does
    first.interaction(sys._getframe(), None)  # runs `p 6 * 7`, then `c`
    assert "42" in out.getvalue()
    assert console.calls == ["release", "reclaim"]
    second = bp.ConsolePdb(hold, stdin=io.StringIO("q\n"), stdout=io.StringIO())  # a new breakpoint()
    second.reset()
    second.interaction(sys._getframe(), None)
    assert console.calls == ["release", "reclaim", "release", "reclaim"]
    second.quitting = False
    hold.give_back()  # nothing held: nothing to give back
    assert console.calls == ["release", "reclaim", "release", "reclaim"]
    sys.settrace(None)
