"""``breakpoint()`` in a libOS module under ``exo boot``, driven through a pseudo-terminal (issue 14).

The module is a test-only package "installed" on PYTHONPATH as pip lays one out
(tests/libos/test_entrypoints.py): ``dbgprobe.poke(n)`` computes ``secret = 6n + 1``, calls
``breakpoint()`` and returns it. The guest pokes, then echoes its console input and exits with
the secret. Every wait has a deadline and every child is killed (its whole session) at the end:
a regression shows as a failed expectation, never as a hung CI.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_app, need_tool

TIMEOUT = 60  # seconds for any one expected output (boots share 2 cores with other tests)

PROBE = '''\
    from libos.module import LibModule


    class Probe(LibModule):
        NAME = "dbgprobe"
        IMPL = "plain"
        INDEX = 7
        ENTRIES = ("poke",)
        HYPERCALLS = frozenset()
        DOC = "poke(n): stops at breakpoint(); returns 6n + 1"

        def poke(self, n: int) -> int:
            secret = 6 * n + 1
            breakpoint()
            return secret
'''
BREAKPOINT_LINE = textwrap.dedent(PROBE).splitlines().index("        breakpoint()") + 1

GUEST = """
    BUFSIZE equ 4096
    section .text
    _start:
        mov rdi, 7
        call LIB_DBGPROBE_POKE      ; stops in pdb; rax = 43
        mov [rip + secret], rax
    read_more:                      ; then echo the console input until its end
        lea rdi, [rip + buf]
        mov rsi, BUFSIZE
        call HC_CONSOLE_READ
        test rax, rax
        jle done
        mov rsi, rax
        lea rdi, [rip + buf]
        call HC_CONSOLE_WRITE
        jmp read_more
    done:
        mov rdi, SCHED_EXIT
        mov rsi, [rip + secret]     ; exit status 43: the module's return value reached the guest
        call HC_SCHED_OP
    section .data
    secret: dq 0
    section .bss
    buf: resb BUFSIZE
"""

# Run a command with the given terminal as its controlling terminal (for /dev/tty), in a new session.
_WITH_CTTY = ("import fcntl, os, sys, termios; fd = os.open(sys.argv[1], os.O_RDWR); "
              "fcntl.ioctl(fd, termios.TIOCSCTTY, 0); os.close(fd); os.execv(sys.argv[2], sys.argv[2:])")


@pytest.fixture
def probe(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The guest app, and the environment in which exo finds the dbgprobe module."""
    site = tmp_path / "site"
    (site / "exo_dbgprobe").mkdir(parents=True)
    (site / "exo_dbgprobe" / "__init__.py").write_text(textwrap.dedent(PROBE))
    info = site / "exo_dbgprobe-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exo-dbgprobe\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[exo.libos]\ndbgprobe.plain = exo_dbgprobe:Probe\n")
    app = make_app(tmp_path, "probe", GUEST, libos={"dbgprobe": "plain", "console": "direct"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
               TERM="dumb")  # no terminal escapes from readline in what pdb prints
    env.pop("PYTHONBREAKPOINT", None)
    return app, env


class Terminal:
    """The master side of a pseudo-terminal: what the child printed on it, and typing into it."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        attrs = termios.tcgetattr(self.slave)
        attrs[3] &= ~termios.ECHO  # what is typed is not shown: the output is the programs' own
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.seen = b""

    def expect(self, what: bytes, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + TIMEOUT
        while what not in self.seen:
            left = deadline - time.monotonic()
            ready = select.select([self.master], [], [], max(left, 0))[0]
            if not ready:
                raise AssertionError(f"no {what!r} within {TIMEOUT} s; the terminal shows {self.seen!r}"
                                     f" (exo {'exited ' + str(proc.poll()) if proc.poll() is not None else 'runs'})")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # EIO: every process closed the terminal
                raise AssertionError(f"terminal closed before {what!r}; it shows {self.seen!r}") from None

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def _spawn(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, **kw)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: exo and anything it started
    proc.wait(timeout=TIMEOUT)


def _boot_on_terminal(app: Path, env: dict[str, str], debug: bool) -> bytes:
    """exo boot with stdin, stdout and stderr on a terminal: type a line for the guest before the
    breakpoint, talk to pdb (``debug``), type a line after it; what the terminal showed."""
    tty = Terminal()
    if not debug:
        env = dict(env, PYTHONBREAKPOINT="0")
    proc = _spawn([sys.executable, "-m", "exo", "boot", str(app)], env,
                  stdin=tty.slave, stdout=tty.slave, stderr=tty.slave)
    try:
        tty.type(b"early\n")  # typed before the breakpoint: the guest's, not a pdb command
        if debug:
            tty.expect(b"(Pdb) ", proc)
            # Typed ahead in one go: pdb keeps the terminal from its first prompt to `c`, also
            # while it runs `n` (a reader that went back to reading in between took "w" and the rest).
            tty.type(b"n\nw\np secret\nc\n")
            tty.expect(b"43\r\n(Pdb) ", proc)
        tty.expect(b"early\r\n", proc)
        tty.type(b"late\n")  # after `continue`: the guest reads the terminal again
        tty.expect(b"late\r\n", proc)
        tty.type(b"\x04")  # Ctrl-D: end of input
        assert proc.wait(timeout=TIMEOUT) == 43, tty.seen
        return tty.seen
    finally:
        _stop(proc)
        tty.close()


def test_pdb_on_the_terminal_the_guest_reads(probe):
    """The run used to hang: the console reader took the line typed at pdb's prompt."""
    app, env = probe
    seen = _boot_on_terminal(app, env, debug=True)
    at = f"exo_dbgprobe/__init__.py({BREAKPOINT_LINE + 1})poke()".encode()
    assert at + b"\r\n-> return secret\r\n(Pdb) --Return--\r\n" in seen  # n
    assert seen.count(at) == 3  # where it stopped, after n, and in w's stack
    assert b"->43\r\n-> return secret\r\n(Pdb) 43\r\n(Pdb) " in seen  # p secret
    assert seen.endswith(b"(Pdb) early\r\nlate\r\n")  # nothing typed for the guest was lost or doubled
    plain = _boot_on_terminal(app, env, debug=False)
    assert plain == b"early\r\nlate\r\n"
    # Counts are compared in the next test, whose input is a pipe: with typed input they depend on
    # when each line arrives (a console_read that finds nothing blocks and runs again), pdb or not.


def test_pdb_talks_to_the_controlling_terminal_when_input_and_output_are_pipes(probe, tmp_path):
    """`printf ... | exo boot APP > out`: pdb must neither read the guest's input nor write into its output.
    With input from a pipe a run is deterministic: stopping in pdb changes no count (the guest does not
    run while pdb waits, and no virtual time passes)."""
    need_tool(os.path.exists("/dev/tty"), "no /dev/tty on this machine")
    app, env = probe
    tty = Terminal()
    argv = [sys.executable, "-m", "exo", "boot", str(app), "--stats-json", str(tmp_path / "debugged.json")]
    proc = _spawn([sys.executable, "-c", _WITH_CTTY, os.ttyname(tty.slave), *argv], env,
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"early\nlate\n")
        proc.stdin.close()
        tty.expect(b"(Pdb) ", proc)
        tty.type(b"p secret\n")
        tty.expect(b"43\r\n(Pdb) ", proc)
        tty.type(b"c\n")
        assert proc.wait(timeout=TIMEOUT) == 43, proc.stderr.read()
        assert proc.stdout.read() == b"early\nlate\n"
        assert proc.stderr.read() == b""
    finally:
        _stop(proc)
        tty.close()
    plain = subprocess.run([*argv[:-1], str(tmp_path / "plain.json")], input=b"early\nlate\n", capture_output=True,
                           cwd=ROOT, env=dict(env, PYTHONBREAKPOINT="0"), timeout=TIMEOUT, start_new_session=True)
    assert plain.returncode == 43 and plain.stdout == b"early\nlate\n"
    assert json.loads((tmp_path / "debugged.json").read_text()) == json.loads((tmp_path / "plain.json").read_text())


def test_without_a_terminal_the_breakpoint_is_skipped_with_a_message(probe):
    """CI, a service: no terminal to debug on. The run goes on; the guest's input is its own."""
    app, env = probe
    r = subprocess.run([sys.executable, "-m", "exo", "boot", str(app)], input=b"early\nlate\n",
                       capture_output=True, cwd=ROOT, env=env, timeout=TIMEOUT,
                       start_new_session=True)  # a new session: no controlling terminal, no /dev/tty
    assert r.returncode == 43, r.stderr
    assert r.stdout == b"early\nlate\n"
    assert r.stderr.decode().splitlines() == [
        f"exo: breakpoint() at {app.parent / 'site' / 'exo_dbgprobe' / '__init__.py'}:{BREAKPOINT_LINE} skipped: no terminal "
        "for pdb (stdin and stdout are not both terminals, and /dev/tty cannot be opened)"]
