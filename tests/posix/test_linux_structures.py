"""One Linux binary under each of the four OS structures (exo/structures.py REFLECT_PATH):
the same output as native, and each call counted as that structure's transitions.

exokernel: one `reflect` per call (the libOS runs in the program's domain); monolithic: one
`syscall` per call, the services' resource uses are kernel-internal `kcall`s; xen-pv: a `trap`
into the hypervisor and an `upcall` bounce to the guest kernel per call, which returns through
the `svc_return` hypercall; microkernel: an `ipc_call` to the POSIX server environment and its
`svc_reply_wait`, with a context switch each way (exo/structures.py ReflectPort).
"""

from __future__ import annotations

import json

import pytest
from kit import busybox, musl, native, run_exo

SCRIPT = ("echo hi | tr a-z A-Z; trap 'echo usr1' USR1; kill -USR1 $$; (exit 4) & wait $!; echo bg=$?; "
          "x=$(seq 3 | wc -l); echo $x")


@pytest.mark.parametrize("structure", ["exokernel", "monolithic", "xen-pv", "microkernel"])
def test_shell_under_structure(tmp_path, structure):
    stats = tmp_path / "stats.json"
    argv = [busybox(), "sh", "-c", SCRIPT]
    mine = run_exo("run", "--structure", structure, "--stats-json", str(stats), *argv)
    theirs = native(argv)
    assert (mine.stdout, mine.returncode) == (theirs.stdout, theirs.returncode), mine.stderr.decode()
    d = json.loads(stats.read_text())
    t, calls = d["transitions"], sum(d["syscalls"].values())
    assert calls > 50
    if structure == "exokernel":
        assert t["reflect"] == calls and t["syscall"] == 0
    elif structure == "monolithic":
        assert t["reflect"] == 0 and t["syscall"] >= calls and t["kcall"] > t["hypercall"]
    elif structure == "xen-pv":
        assert t["reflect"] == 0 and t["trap"] >= calls and t["upcall"] >= calls
        assert d["hypercalls"]["svc_return"] >= calls
    else:  # an IPC call to the POSIX server and its reply_wait per call, a context switch each way
        assert t["reflect"] == 0 and t["syscall"] == 0
        assert d["hypercalls"]["ipc_call"] >= calls and d["hypercalls"]["svc_reply_wait"] >= calls
        assert t["context_switch"] >= 2 * calls


@pytest.mark.parametrize("structure", ["monolithic", "xen-pv", "microkernel"])
def test_signals_program_under_structure(tmp_path, structure):
    from pathlib import Path

    src = (Path(__file__).parent / "c" / "signals.c").read_text()
    binary = str(musl(tmp_path, "signals", src))
    mine = run_exo("run", "--structure", structure, binary)
    assert (mine.stdout, mine.returncode) == (native([binary]).stdout, 0), mine.stderr.decode()


@pytest.mark.parametrize("name", ["threads", "procs"])
def test_threads_and_processes_under_microkernel(tmp_path, name):
    """The POSIX server forks its client (env_create for it), sets its registers (a new thread,
    execve) and lets it wait (futex, wait4) while serving the others."""
    from pathlib import Path

    src = (Path(__file__).parent / "c" / f"{name}.c").read_text()
    binary = str(musl(tmp_path, name, src, *(["-pthread"] if name == "threads" else [])))
    mine = run_exo("run", "--structure", "microkernel", binary)
    assert (mine.stdout, mine.returncode) == (native([binary]).stdout, 0), mine.stderr.decode()
