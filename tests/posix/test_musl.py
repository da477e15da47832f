"""musl-gcc static C programs under `exo run`, each compared with the same binary run natively
(issue 15 acceptance: fork/exec/wait, pipes, signals with handlers, mmap of files, directories,
time). The sources are in tests/posix/c/; their output avoids pids and wall times, so native and
exo print the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kit import musl, native, run_exo

SOURCES = Path(__file__).parent / "c"


def build(tmp_path: Path, name: str) -> Path:
    return musl(tmp_path, name, (SOURCES / f"{name}.c").read_text())


@pytest.mark.parametrize("name", ["signals", "procs", "files"])
def test_program_same_as_native(tmp_path, name):
    binary = build(tmp_path, name)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    theirs = native([str(binary), str(scratch)] if name == "files" else [str(binary)])
    mine = run_exo("run", str(binary), "/tmp") if name == "files" else run_exo("run", str(binary))
    assert theirs.returncode == 0, theirs.stderr.decode()
    assert (mine.stdout.decode(), mine.returncode) == (theirs.stdout.decode(), 0), mine.stderr.decode()


def test_signal_handler_sees_its_frame(tmp_path):
    """The exact lines that prove delivery: SA_SIGINFO's si_pid, the alternate stack, the FPU state
    kept across the handler, a handled SIGSEGV with its address, SIGCHLD, sigsuspend."""
    out = run_exo("run", str(build(tmp_path, "signals"))).stdout.decode()
    assert "usr1=10 from_self=1 onalt=1 x=3.00" in out
    assert "segv sig=11 addr=0x10 code=1\nrecovered" in out
    assert "child signaled=1 sig=15 chld=1" in out
    assert "suspend woke chld>=1: 1" in out


def test_child_fault_is_the_parents_business(tmp_path):
    """A child killed by SIGSEGV is reported (the fault report names the function) but the run's
    status is the first process's: the parent waited and exited 0."""
    r = run_exo("run", str(build(tmp_path, "signals")))
    assert r.returncode == 0
    assert "page fault (#PF)" in r.stderr.decode() and "in main+0x" in r.stderr.decode()
