"""``python -m exo bench posix``: what a Linux system call and a Linux process cost on exo.

* getpid round trip from an unmodified static binary (musl-gcc, ``syscall(SYS_getpid)`` in a
  loop) under the wall clock: the run with N calls minus the run with none, over N; as a ratio
  to the null hypercall (``env_id``) measured in the same run. Target: at most 5 us. Reference:
  Qiling 1.4.6 (Python + Unicorn) took 113 us per guest syscall on this machine class (issue 15).
  The path: `syscall` hook, Exokernel.reflect, the posix module's table, the libOS's own
  ``env_id``-free getpid (the pid is kept in the Process), RAX/RCX/R11 written back.
* ``python -m exo run /usr/bin/busybox true``, start to exit, as a ratio to
  ``python -c "import unicorn"`` started the same way (runs alternate; bytecode cached).
* a shell pipeline, ``busybox sh -c "seq N | sort -n | tail -1"`` (N = 100000; 10000 with
  --quick) under ``exo run`` against the same busybox run natively on the host.

Needs busybox-static and musl-tools (apt); without them the suite says so and exits 2.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.exo import NULL_BODY, _hypercall_bench, startup_against_unicorn
from benchmarks.harness import Result, Stats, result, suite_main

GETPID_LOOP = r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 0;
    for (long i = 0; i < n; i++) syscall(SYS_getpid);
    return 0;
}
"""


def _tools() -> tuple[str, str]:
    busybox = shutil.which("busybox")
    musl = shutil.which("musl-gcc")
    if busybox is None or musl is None:
        sys.stderr.write("exo bench posix: needs busybox-static and musl-tools (apt-get install busybox-static "
                         "musl-tools)\n")
        raise SystemExit(2)
    return busybox, musl


def _run_once(binary: Path, calls: int) -> float:
    """Seconds for one in-process run of the getpid loop (wall clock, as the issue asks)."""
    from exo.api import run_linux

    t0 = time.perf_counter()
    r = run_linux(binary, str(calls), clock="wall")
    t = time.perf_counter() - t0
    if r.exit_status != 0:
        raise RuntimeError(f"getpid loop failed: {r.stderr.decode()[-300:]}")
    return t


def bench_getpid(binary: Path, repeat: int, calls: int, seconds: float, log: Callable[[str], None]) -> list[Result]:
    log("null hypercall (env_id), the baseline")
    null = result("null hypercall (env_id)", _hypercall_bench(NULL_BODY, repeat, seconds))
    log(f"getpid loop: {calls} calls against none, {repeat} pairs")
    _run_once(binary, calls)  # warm-up: imports, caches
    per_call = []
    for _ in range(repeat):
        empty = _run_once(binary, 0)
        full = _run_once(binary, calls)
        per_call.append((full - empty) / calls * 1e6)
    qiling = result("Qiling 1.4.6 guest syscall (measured for issue 15, not in this run)", Stats.of([113.0], 1))
    getpid = result(
        "getpid round trip, static musl binary",
        Stats.of(per_call, calls),
        baseline=null,
        target="<= 5 us",
        check=lambda r: Stats.of(per_call, calls).median <= 5,
        note="(run with N calls - run with none) / N, wall clock; reflected `syscall`, posix table, "
        "result in RAX; ratio to the null hypercall measured in this run",
    )
    return [null, getpid, qiling]


def bench_true(busybox: str, repeat: int, log: Callable[[str], None]) -> list[Result]:
    log("exo run busybox true and python -c 'import unicorn', alternating")
    samples = startup_against_unicorn([sys.executable, "-m", "exo", "run", busybox, "true"], repeat)
    uc = result("python -c 'import unicorn': start to exit", Stats.of(samples[1], 1))
    true = result(
        "exo run busybox true: start to exit",
        Stats.of(samples[0], 1),
        baseline=uc,
        note="the whole process: interpreter, imports, the scratch ext2 root (mkfs), the ELF load, "
        "busybox's start-up calls, exit; bytecode cached",
    )
    return [uc, true]


def bench_pipeline(busybox: str, n: int, repeat: int, log: Callable[[str], None]) -> list[Result]:
    script = f"seq {n} | sort -n | tail -1"
    exo = [sys.executable, "-m", "exo", "run", busybox, "sh", "-c", script]
    native = [busybox, "sh", "-c", script]
    log(f"pipeline {script!r}: exo run and native, alternating")
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for cmd, into in ((exo, samples[0]), (native, samples[1])):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, timeout=600)
            into.append((time.perf_counter() - t0) * 1e6)
            if out.stdout != f"{n}\n".encode():
                raise RuntimeError(f"{' '.join(cmd)}: {out.stdout[-100:]!r} {out.stderr[-300:]!r}")
    nat = result(f"native busybox sh -c '{script}'", Stats.of(samples[1], 1))
    mine = result(
        f"exo run busybox sh -c '{script}'",
        Stats.of(samples[0], 1),
        baseline=nat,
        note="four processes (sh, seq, sort, tail), two pipes, fork + execve of busybox applets, "
        "start to exit of the whole command",
    )
    return [nat, mine]


def run(repeat: int = 5, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    log = log or (lambda s: None)
    busybox, _ = _tools()
    if quick:
        repeat = min(repeat, 3)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "getpid.c"
        src.write_text(GETPID_LOOP)
        binary = Path(d) / "getpid"
        subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(binary), str(src)], check=True)
        out = bench_getpid(binary, repeat, 2000 if quick else 20000, 0.05 if quick else 0.3, log)
    out += bench_true(busybox, repeat, log)
    out += bench_pipeline(busybox, 10000 if quick else 100000, min(repeat, 3), log)
    return out


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, "python -m exo bench posix", __doc__, run, "posix personality (exo run)", repeat=5)


if __name__ == "__main__":
    raise SystemExit(main())
