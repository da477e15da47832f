"""An interactive busybox sh on a pseudo-terminal (issue 15): exo run puts the host terminal in
raw input mode and the posix libOS is the line discipline (libos/posix/tty.py).

The test drives the terminal as a user would: it types at the prompt, edits a line with
backspace, interrupts a foreground `sleep 100` with Ctrl-C (the sleep dies of SIGINT, the shell
says 130), and leaves with `exit`; then the host terminal's mode is as it was before.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from kit import busybox

pty = pytest.importorskip("pty")
ROOT = Path(__file__).resolve().parents[2]


class Terminal:
    def __init__(self, argv: list[str]) -> None:
        self.master, self.slave = pty.openpty()
        self.before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen([sys.executable, "-m", "exo", "run", *argv], stdin=self.slave,
                                     stdout=self.slave, stderr=self.slave, start_new_session=True, cwd=ROOT)
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 60) -> bytes:
        """Everything shown up to and including ``text``."""
        end = time.monotonic() + timeout
        while text not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {text!r} on the terminal; it shows {self.seen[-300:]!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError as e:
                raise AssertionError(f"the terminal closed before {text!r}: {self.seen[-300:]!r}") from e
        i = self.seen.index(text) + len(text)
        shown, self.seen = self.seen[:i], self.seen[i:]
        return shown

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal():
    t = Terminal(["--env", "PS1=exo$ ", busybox(), "sh", "-i"])
    yield t
    t.close()


def test_interactive_shell_ctrl_c_and_exit(terminal):
    t = terminal
    t.expect(b"exo$ ")
    t.type(b"echo hi therx\x7fe\r")  # a typo, backspace, the right letter
    assert b"hi there\r\n" in t.expect(b"exo$ ")
    t.type(b"tty; test -t 0 && echo is-a-tty\r")
    shown = t.expect(b"exo$ ")
    assert b"is-a-tty" in shown and b"not a tty" not in shown
    t.type(b"sleep 100\r")
    t.expect(b"sleep 100")
    time.sleep(1.0)  # the sleep is running (wall clock: an interactive run's default)
    started = time.monotonic()
    t.type(b"\x03")
    t.expect(b"exo$ ", timeout=30)
    assert time.monotonic() - started < 30  # interrupted, not slept out
    t.type(b"echo status=$?\r")
    assert b"status=130" in t.expect(b"exo$ ")
    t.type(b"exit\r")
    assert t.proc.wait(timeout=30) == 0
    assert termios.tcgetattr(t.slave) == t.before  # the host terminal is given back as it was


def test_cat_reads_lines_and_ctrl_d_ends_input(terminal):
    t = terminal
    t.expect(b"exo$ ")
    t.type(b"cat\r")
    t.expect(b"cat\r\n")
    time.sleep(2.0)  # cat is reading: what is typed now is echoed by the line discipline (before,
    # the shell's line editor had echo off, as on Linux, and the line would come through unechoed)
    t.type(b"one\r")
    assert t.expect(b"one\r\none\r\n")  # echoed by the line discipline, then written by cat
    t.type(b"\x04")  # Ctrl-D on an empty line: end of input, cat exits 0
    t.expect(b"exo$ ")
    t.type(b"echo cat=$?\r")
    assert b"cat=0" in t.expect(b"exo$ ")
    t.type(b"\x04")  # and at the prompt: the shell's input ends, it exits
    assert t.proc.wait(timeout=30) == 0
