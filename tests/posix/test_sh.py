"""busybox sh scripts under exo run, compared with the same busybox run natively (issue 15).

Each script exercises processes (fork, execve of busybox's own applets, wait4), pipes and
descriptors (pipe2, dup2, fcntl); stdout and the exit status must equal the host's run.
"""

from __future__ import annotations

import pytest
from kit import busybox, run_exo, same_as_native

SCRIPTS = {
    "pipe": "echo a | cat",
    "pipeline-3": "seq 100 | sort -n | tail -1",
    "pipe-filters": "echo abc | sed s/b/X/ | awk '{print $1 \"!\"}'",
    "loop-into-pipe": "for i in 1 2 3; do echo $i; done | wc -l",
    "while-read": "printf 'x\\ny\\nz\\n' | while read l; do echo \"<$l>\"; done",
    "subshell-status": "(exit 3); echo $?",
    "command-substitution": "x=$(echo hi | tr a-z A-Z); echo $x $(echo nested $(echo deep))",
    "here-document": "cat <<EOF\nhere $((1+2))\nEOF",
    "redirect-stderr": "ls /nonexistent-dir 2>&1 | wc -l",
    "status-of-pipeline": "false | true; echo $?; true | false; echo $?",
    "set-e": "set -e; echo before; false; echo not-reached",
    "and-or": "false || echo or; true && echo and",
    "exit-status": "exit 7",
    "fd-dup": "exec 3>&1; echo to3 >&3; exec 3>&-; echo closed",
    "case-and-functions": "f() { case $1 in a*) echo A;; *) echo other;; esac; }; f apple; f pear",
    # background jobs and signals (libos/posix/signals.py): `wait` sleeps in sigsuspend until SIGCHLD
    "background-wait": "sleep 0 & wait; echo wait=$?; (exit 3) & wait $!; echo bg=$?",
    "background-pipeline": "(echo one; echo two) | sort -r & wait; echo done",
    "trap-handler": "trap 'echo got USR1' USR1; kill -USR1 $$; echo after",
    "killed-by-signal": "sh -c 'kill -TERM $$; echo not-reached'; echo status=$?",
    "trap-exit": "trap 'echo bye' EXIT; echo hi",
    "sigpipe-ends-writer": "yes | head -c 5; echo; seq 100000 | head -1",
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_script_same_as_native(script):
    same_as_native(busybox(), "sh", "-c", script)


def test_stdin_through_a_pipeline():
    same_as_native(busybox(), "sh", "-c", "sort | uniq -c | sort -rn | head -2", stdin=b"b\na\nb\nc\nb\na\n")


def test_two_runs_same_stats(tmp_path):
    out = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        r = run_exo("run", "--stats-json", str(path), busybox(), "sh", "-c", "seq 20 | sort -rn | head -3")
        assert r.returncode == 0, r.stderr
        out.append(path.read_text())
    assert out[0] == out[1]


def test_strace_prints_the_calls_of_every_process():
    r = run_exo("run", "--strace", busybox(), "sh", "-c", "echo a | cat")
    err = r.stderr.decode().splitlines()
    assert r.stdout == b"a\n" and r.returncode == 0
    assert any(line.startswith("[pid 1] pipe2(") and line.endswith(") = 0") for line in err), err
    assert any("] execve(\"/proc/self/exe\", [\"cat\"]" in line for line in err), err
    assert any(line.startswith("[pid 1] wait4(-1, ") for line in err), err
    assert err[-1] == "[pid 1] exit_group(0) = ?"


def test_proc_and_system_tools():
    """/proc made from the libOS's own state (libos/posix/procfs.py): ps sees the shell, a
    background sleep and itself; id, df, free, mount and nproc work as on a small Linux box."""
    script = ("sleep 1 & ps; wait; id; df / | tail -1 | cut -c1-9; free | head -2 | tail -1 | tr -s ' ' | cut -d' ' -f1,2;"
              " mount; nproc; cat /proc/self/status | head -1; readlink /proc/self; ls /proc | grep -c mem")
    r = run_exo("run", busybox(), "sh", "-c", script)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().splitlines()
    # ps shows each process's cmdline: the shell's argv; the forked `ps` (a busybox applet run
    # without an exec, as on Linux) keeps it and shows its own name in braces.
    assert out[0] == "PID   USER     COMMAND" and out[1].startswith(f"    1 root     {busybox()} sh -c sleep 1")
    assert out[2] == "    2 root     sleep 1" and out[3].startswith("    3 root     {ps} ")
    assert out[4:11] == ["uid=0(root) gid=0(root) groups=0(root)", "/dev/root", "Mem: 262144",
                         "/dev/root on / type ext2 (rw)", "proc on /proc type proc (rw)", "1", "Name:\tcat"]
    assert out[11].isdigit() and out[12] == "1"  # /proc/self -> the reader's pid; one meminfo
    assert b"not implemented" not in r.stderr
