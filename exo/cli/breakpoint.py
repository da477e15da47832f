"""``breakpoint()`` in a libOS module under ``exo boot`` (a helper of exo/cli/boot.py, not a command):
pdb gets the terminal, the guest its input.

A libOS module is Python running in exo's own process, so ``breakpoint()`` in it starts pdb there.
Two things stood in the way (exo issue 14):

* on a terminal, the console reader thread (hw/console.py) reads the guest's input from the same
  terminal as pdb: it took pdb's commands and the run hung. From pdb's first prompt until
  ``continue`` the reader is parked (``ConsoleDevice.release_terminal``); lines typed before the
  breakpoint stay the guest's;
* when the guest's input is a pipe or a file (``printf ... | exo boot``), pdb reading stdin would
  eat the guest's input as commands. pdb then talks to the controlling terminal (/dev/tty); with no
  terminal at all (CI, a service) the breakpoint is skipped with a one-line message, as
  ``PYTHONBREAKPOINT=0`` would, instead of hanging or stealing input.

Nothing here runs unless ``breakpoint()`` is called: the guest's output and instruction counts are
the same with and without a breakpoint hit (the guest does not run while pdb waits; under the
virtual clock no time passes for it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Protocol, TextIO


class _Console(Protocol):
    def release_terminal(self) -> None: ...

    def reclaim_terminal(self) -> None: ...


class TerminalHold:
    """The console reader parked for pdb, once, whichever Pdb of this run holds it.

    Held from pdb's first prompt until the program goes on by itself (``continue``, ``quit``):
    between the prompts of ``next`` or ``step`` the terminal stays pdb's, so commands typed ahead
    (``n`` then ``w``) reach pdb, not the guest. One hold per run, not per Pdb: a ``breakpoint()``
    reached while stepping makes a new Pdb, and the old one never gives back what it took.
    """

    def __init__(self, console: _Console) -> None:
        self.console = console
        self.held = False

    def take(self) -> None:
        if not self.held:
            self.console.release_terminal()
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.console.reclaim_terminal()


def _console_pdb() -> type:
    """The ``ConsolePdb`` class, made on first use: importing pdb (with cmd, code, bdb) costs about
    14 ms, and every `exo boot` installs the hook but few ever hit a breakpoint (start-up is
    measured: docs/performance.md)."""
    global _CONSOLE_PDB
    if _CONSOLE_PDB is not None:
        return _CONSOLE_PDB
    import pdb

    class ConsolePdb(pdb.Pdb):
        """pdb that parks the guest console's terminal reader while it is in charge."""

        def __init__(self, hold: TerminalHold, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
            # nosigint: Ctrl-C keeps its meaning in `exo boot` (stop the run, say where each guest was,
            # exit 130) after a `continue`, instead of breaking into pdb somewhere in the exokernel.
            super().__init__(stdin=stdin, stdout=stdout, nosigint=True)
            self.hold = hold

        def interaction(self, frame, traceback) -> None:  # noqa: ANN001 - pdb's signature
            self.hold.take()
            super().interaction(frame, traceback)

        def set_continue(self) -> None:
            super().set_continue()
            self.hold.give_back()

        def set_quit(self) -> None:
            super().set_quit()
            self.hold.give_back()

    _CONSOLE_PDB = ConsolePdb
    return _CONSOLE_PDB


_CONSOLE_PDB: type | None = None


def __getattr__(name: str) -> object:
    if name == "ConsolePdb":  # exo.cli.breakpoint.ConsolePdb, as before, without the import at start
        return _console_pdb()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _isatty(f: object) -> bool:
    try:
        return f is not None and f.isatty()  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return False


_PDB = ("", "pdb.set_trace")  # PYTHONBREAKPOINT values that mean pdb (unset or empty: the default)


def _terminal() -> tuple[TextIO | None, TextIO | None] | None:
    """pdb's input and output: (None, None) for sys.stdin/stdout when both are a terminal, else the
    controlling terminal opened afresh; None when there is no terminal to debug on."""
    if _isatty(sys.stdin) and _isatty(sys.stdout):
        return None, None
    try:
        # Two files: a text file open for both reading and writing needs a seekable file.
        tty_in = open("/dev/tty", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed with the Pdb
        tty_out = open("/dev/tty", "w", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    return tty_in, tty_out


def install(console: _Console, stderr: TextIO | None = None) -> Callable[[], None]:
    """Make ``breakpoint()`` start a ``ConsolePdb`` on a terminal; returns a function that undoes it.

    Only Python's default hook with pdb as its debugger is replaced: a hook somebody else installed
    (an IDE's) stays, and so does ``PYTHONBREAKPOINT`` naming another debugger (exo cannot know when
    that one reads the terminal: docs/debugging.md). ``PYTHONBREAKPOINT=0`` skips breakpoints.
    """
    previous = sys.breakpointhook
    if previous is not sys.__breakpointhook__ or os.environ.get("PYTHONBREAKPOINT", "") not in _PDB:
        return lambda: None
    hold = TerminalHold(console)

    def hook(*args: object, **kwargs: object) -> object:
        choice = os.environ.get("PYTHONBREAKPOINT", "")  # read at each call, as Python does
        if choice not in _PDB:
            return previous(*args, **kwargs)  # "0", or changed since: Python's own hook decides
        header = kwargs.pop("header", None)
        frame = sys._getframe(1)  # the caller of breakpoint() (a builtin: no frame of its own)
        io = _terminal()
        if io is None:
            out = stderr or sys.stderr
            out.write(f"exo: breakpoint() at {frame.f_code.co_filename}:{frame.f_lineno} skipped: no terminal "
                      "for pdb (stdin and stdout are not both terminals, and /dev/tty cannot be opened)\n")
            out.flush()
            return None
        debugger = _console_pdb()(hold, stdin=io[0], stdout=io[1])
        if header is not None:
            debugger.message(header)
        debugger.set_trace(frame)
        return None

    sys.breakpointhook = hook

    def uninstall() -> None:
        if sys.breakpointhook is hook:
            sys.breakpointhook = previous
        hold.give_back()  # the run ended while stepping: the reader is ended by close() anyway

    return uninstall
