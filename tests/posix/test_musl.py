"""musl-gcc static C programs under `exo run`, each compared with the same binary run natively
(issue 15 acceptance: fork/exec/wait, pipes, signals with handlers, mmap of files, directories,
time, threads). The sources are in tests/posix/c/; their output avoids pids and wall times, so native and
exo print the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kit import musl, native, run_exo

SOURCES = Path(__file__).parent / "c"


def build(tmp_path: Path, name: str) -> Path:
    return musl(tmp_path, name, (SOURCES / f"{name}.c").read_text(), *(["-pthread"] if name == "threads" else []))


@pytest.mark.parametrize("name", ["signals", "procs", "files", "threads"])
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


def test_threads_switch_at_futex_and_blocking_calls(tmp_path):
    """pthread mutexes, condition variables (one timed out), join with return values, __thread
    data per thread (the FS base switched with the thread), and a thread blocked in read() on a
    pipe while another thread of the same process writes it (libos/posix/threads.py)."""
    r = run_exo("run", "--strace", str(build(tmp_path, "threads")))
    assert r.stdout == b"counter=4000 sum=104 main_tls=7\ntimedwait=timeout\nreader got 4 bytes, tids differ=1\n"
    err = r.stderr.decode()
    assert "clone(0x7d0f00" in err and "[pid 100001] " in err and "futex(" in err


def test_tcp_echo_between_two_processes_over_the_switch(tmp_path):
    """A forked server and its parent as client, each with its own TCP/IP stack on the app's one
    address, frames through the exokernel and the switch backend; then UDP to itself."""
    binary = build(tmp_path, "sockets")
    theirs = native([str(binary)])
    mine = run_exo("run", "--net", "switch", str(binary))
    assert (mine.stdout, mine.returncode) == (theirs.stdout, 0), mine.stderr.decode()
    assert mine.stdout.startswith(b"client got: hello from the client\nserver echoed 22 bytes")


def test_tcp_echo_to_a_host_peer_through_user_forwarding(tmp_path):
    """The host connects to the program's port through `--net user,hostfwd=...` (the slirp-like
    backend) and gets its bytes back."""
    import socket
    import subprocess
    import sys
    import time

    binary = build(tmp_path, "echo_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "exo", "run", "--net", f"user,hostfwd=tcp:127.0.0.1:{host_port}-:7777",
                             str(binary), "7777"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline() == b"listening on 7777\n"
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", host_port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn:
            payload = b"hello from the host\n" * 500
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert got == payload
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b"echoed 10000 bytes" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mprotect_is_applied(tmp_path):
    """A read-only page faults on write (the handler runs), becomes writable again, a PROT_NONE
    page is a guard, an unmapped range is ENOMEM; only RWX differs: exo's W^X refuses it."""
    binary = build(tmp_path, "mprotect")
    theirs = native([str(binary)]).stdout.replace(b"rwx refused: 0", b"rwx refused: 1")
    mine = run_exo("run", str(binary))
    assert (mine.stdout, mine.returncode) == (theirs, 0), mine.stderr.decode()


def test_large_udp_datagrams_from_the_host_arrive_as_fragments(tmp_path):
    """Issue 16: a host datagram larger than the MTU (3,000 and 60,000 bytes) crosses the user
    backend as IP fragments and the guest's stack reassembles it (it was dropped without a word)."""
    import socket
    import subprocess
    import sys

    binary = build(tmp_path, "udp_big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        host_port = probe.getsockname()[1]
    net = f"user,hostfwd=udp:127.0.0.1:{host_port}-:9000"
    proc = subprocess.Popen([sys.executable, "-m", "exo", "run", "--net", net, str(binary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline() == b"ready\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for n in (1000, 3000, 60000):
                data = bytes((i * 7 + n) & 0xFF for i in range(n))
                want = 0
                for b in data:
                    want = (want * 31 + b) & 0xFFFF_FFFF_FFFF_FFFF
                s.sendto(data, ("127.0.0.1", host_port))
                assert proc.stdout.readline().split() == [str(n).encode(), str(want).encode()]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_descriptor_limit_is_the_apps_fds_quota(tmp_path):
    """RLIMIT_NOFILE reads the app's fds quota; past it open and dup are EMFILE; a lower soft
    limit applies; the hard limit cannot be raised. The same lines as natively under `ulimit -n`."""
    binary = build(tmp_path, "fdlimit")
    theirs = native(["sh", "-c", f"ulimit -n 64; exec 3>&- 4>&- 5>&-; exec {binary}"])
    mine = run_exo("run", "--quota", "fds=64", str(binary))
    assert theirs.returncode == 0, theirs.stderr.decode()
    assert mine.stdout.decode().splitlines()[:2] == ["limit 64 hard 64", "last fd 63, then EMFILE"]
    assert (mine.stdout.decode(), mine.returncode) == (theirs.stdout.decode(), 0), mine.stderr.decode()
    default = run_exo("run", str(binary))
    assert default.stdout.decode().splitlines()[:2] == ["limit 1024 hard 1024", "last fd 1023, then EMFILE"]
