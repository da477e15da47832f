"""The first slice of issue 15: unmodified static Linux programs under `exo run` (docs/posix.md).

Each test runs the CLI as a user would; busybox (busybox-static) and musl-gcc (musl-tools) are
outside tools: need_tool skips without them (and fails under EXO_REQUIRE_TOOLS=1, as in CI).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import need_tool
from kit import busybox, musl, run_exo

HELLO = r'#include <stdio.h>' "\n" r'int main(int c, char **v) { printf("hello %d %s\n", c, v[c - 1]); return 3; }'
NULL_DEREF = "int *p;\n__attribute__((noinline)) int crash(void) { return *p; }\nint main(void) { return crash(); }\n"
UNKNOWN = r"""#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    long a = syscall(999); int ea = errno; long b = syscall(999); int eb = errno;
    printf("%ld %d %ld %d\n", a, ea, b, eb);
    return 0;
}
"""
TLS = r"""#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_SET_FS 0x1002 /* asm/prctl.h, not in musl's headers */
#define ARCH_GET_FS 0x1003
__thread int counter = 41;
int main(void) {
    unsigned long fs = 0;
    counter++;
    long get = syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
    long bad = syscall(SYS_arch_prctl, ARCH_SET_FS, 1UL << 47);
    int eb = errno;
    printf("%d %ld %d %ld %d\n", counter, get, fs != 0, bad, eb);
    return 0;
}
"""


def test_busybox_echo():
    r = run_exo("run", busybox(), "echo", "hi")
    assert (r.stdout, r.stderr, r.returncode) == (b"hi\n", b"", 0)


def test_musl_hello_argc_and_exit_status(tmp_path):
    r = run_exo("run", str(musl(tmp_path, "hello", HELLO)), "a", "b")
    assert (r.stdout, r.stderr, r.returncode) == (b"hello 3 b\n", b"", 3)


def test_same_run_twice_same_stats(tmp_path):
    bb = busybox()
    stats = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        r = run_exo("run", "--stats-json", str(path), bb, "echo", "hi")
        assert r.returncode == 0, r.stderr
        stats.append(path.read_text())
    assert stats[0] == stats[1]
    s = json.loads(stats[0])
    assert s["transitions"]["reflect"] == sum(s["syscalls"].values()) > 0
    assert s["syscalls"]["write"] == 1 and s["syscalls"]["exit_group"] == 1
    assert s["hypercalls"]["env_set_syscall"] == 1 and s["hypercalls"]["env_set_fsbase"] == 1


def test_unknown_syscall_is_enosys_logged_once(tmp_path):
    r = run_exo("run", str(musl(tmp_path, "unknown", UNKNOWN)))
    assert r.returncode == 0
    assert r.stdout == b"-1 38 -1 38\n"  # ENOSYS both times
    lines = r.stderr.decode().splitlines()
    assert lines == ["exo: environment 1 (unknown): posix: syscall #999 is not implemented (-ENOSYS)"]


def test_tls_through_env_set_fsbase(tmp_path):
    r = run_exo("run", str(musl(tmp_path, "tls", TLS)))
    # __thread works (FS base set by arch_prctl), ARCH_GET_FS answers, a kernel-half base is EPERM (1).
    assert (r.stdout, r.returncode) == (b"42 0 1 -1 1\n", 0), r.stderr


def test_null_dereference_report_names_the_function(tmp_path):
    r = run_exo("run", str(musl(tmp_path, "null", NULL_DEREF)))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "page fault (#PF)" in err and "in crash+0x" in err


@pytest.mark.parametrize("kind", ["dynamic", "not-elf", "script"])
def test_bad_program_is_one_line_exit_2(tmp_path, kind):
    if kind == "dynamic":
        need_tool(shutil.which("gcc") is not None, "gcc is not installed")
        (tmp_path / "d.c").write_text("int main(void) { return 0; }\n")
        prog = tmp_path / "d"
        subprocess.run(["gcc", "-o", str(prog), str(tmp_path / "d.c")], check=True)
        want = "dynamically linked (interpreter"
    elif kind == "not-elf":
        prog = tmp_path / "data"
        prog.write_bytes(b"hello, not a program\n")
        want = "not an ELF executable"
    else:
        prog = tmp_path / "s.sh"
        prog.write_text("#!/bin/sh\necho hi\n")
        want = "a script (#!/bin/sh)"
    r = run_exo("run", str(prog))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and want in lines[0] and "Traceback" not in lines[0]


def test_stdin_is_read_through_the_console():
    # read(0) -> console_read; the unserved fstat/lseek busybox tries first are -ENOSYS (named on stderr).
    r = run_exo("run", busybox(), "wc", "-w", stdin=b"x y\nz\n")
    assert (r.stdout, r.returncode) == (b"3\n", 0)


def test_stderr_is_the_console_error_stream(tmp_path):
    src = '#include <stdio.h>\nint main(void) { fputs("out\\n", stdout); fflush(stdout); fputs("err\\n", stderr); return 0; }\n'
    r = run_exo("run", str(musl(tmp_path, "err", src)))
    assert (r.stdout, r.stderr, r.returncode) == (b"out\n", b"err\n", 0)


def test_app_toml_names_a_linux_binary(tmp_path):
    d = tmp_path / "bbenv"
    d.mkdir()
    shutil.copy(busybox(), d / "busybox")
    (d / "app.toml").write_text('name = "bbenv"\nsources = ["busybox"]\npersonality = "linux"\n'
                                'args = ["env"]\nenv = ["GREETING=hi"]\n')
    r = run_exo("boot", str(d))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"PATH=/bin:/sbin:/usr/bin:/usr/sbin\nHOME=/root\nTERM=linux\nLANG=C\nGREETING=hi\n"


@pytest.mark.parametrize("toml,why", [
    ('personality = "posix"', "personality 'posix' is not one of exo, linux"),
    ('personality = "linux"\nenv = ["NOEQUALS"]', "'env' must be a list of \"NAME=value\" strings"),
    ('env = ["A=1"]', "'env' is for personality = \"linux\""),
])
def test_bad_linux_manifest_is_one_line(tmp_path, toml, why):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "prog").write_bytes(b"\x7fELF")
    (d / "app.toml").write_text(f'name = "bad"\nsources = ["prog"]\n{toml}\n')
    r = run_exo("boot", str(d))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and why in lines[0], lines


def test_embedding_api_runs_a_linux_program_in_process():
    from exo.api import run_linux

    r = run_linux(busybox(), "echo", "in", "process")
    assert (r.stdout, r.stderr, r.exit_status) == (b"in process\n", b"", 0)
    assert r.stats["syscalls"]["write"] == 1


def test_mkfs_busybox_root_runs_a_shell(tmp_path):
    """`exo mkfs IMAGE --busybox`: /bin/busybox, its applet links, /etc, a writable /tmp; the shell
    in the image finds its applets by PATH and writes files there."""
    image = tmp_path / "root.img"
    made = run_exo("mkfs", str(image), "--size", "24M", "--busybox", busybox())
    assert made.returncode == 0, made.stderr.decode()
    r = run_exo("run", "--disk", str(image), "/bin/sh", "-c",
                "test -L /usr/bin/awk && readlink /usr/bin/awk; echo 1 2 | awk '{print $2}'; "
                "echo saved > /tmp/x && cat /tmp/x; grep root /etc/passwd | cut -d: -f7")
    assert (r.stdout, r.returncode) == (b"/bin/busybox\n2\nsaved\n/bin/sh\n", 0), r.stderr.decode()


def test_mkfs_busybox_without_a_busybox_is_one_line(tmp_path):
    r = run_exo("mkfs", str(tmp_path / "x.img"), "--size", "8M", "--busybox", str(tmp_path / "missing"))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("exo mkfs: error:")


STATIC_PIE = r"""#include <stdio.h>
#include <string.h>
#include <unistd.h>
static int answer = 42;
int *where = &answer;  /* a pointer the program's own relocation fixes (R_X86_64_RELATIVE) */
__attribute__((noinline)) int crash(int *p) { return *p; }
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "again")) { printf("exec'd pie %d\n", *where); return 0; }
    if (argc > 1 && !strcmp(argv[1], "crash")) return crash(0);
    printf("pie %d at %s\n", *where, (unsigned long)main >= 0x555555554000UL ? "ELF_ET_DYN_BASE" : "?");
    fflush(stdout);
    execl(argv[0], argv[0], "again", (char *)0);
    return 1;
}
"""


def test_static_pie_runs_relocated_and_execs_itself(tmp_path):
    """gcc -static-pie (ET_DYN, no PT_INTERP) is placed at 0x555555554000 and relocates itself;
    execve loads it the same way; a fault names its function at the placed address."""
    need_tool(shutil.which("gcc") is not None, "gcc is not installed")
    src = tmp_path / "pie.c"
    src.write_text(STATIC_PIE)
    binary = tmp_path / "pie"
    subprocess.run(["gcc", "-static-pie", "-O2", "-g", "-o", str(binary), str(src)], check=True)
    assert subprocess.run(["readelf", "-h", str(binary)], capture_output=True, text=True).stdout.count("DYN") == 1
    r = run_exo("run", str(binary))
    assert (r.stdout, r.returncode) == (b"pie 42 at ELF_ET_DYN_BASE\nexec'd pie 42\n", 0), r.stderr.decode()
    crashed = run_exo("run", str(binary), "crash")
    err = crashed.stderr.decode()
    assert crashed.returncode == 1 and "page fault (#PF)" in err
    assert re.search(r"instruction 0x00005555\w+: .* in crash\b", err), err  # its symbol at the placed address


GDB_TARGET = r"""#include <stdio.h>
__attribute__((noinline)) int add(int a, int b) { return a + b; }
int main(void) { printf("%d\n", add(2, 3)); return 0; }
"""


def test_gdb_breaks_in_a_linux_program(tmp_path):
    """`exo run --gdb`: gdb with the program's own ELF stops at a function, shows its arguments and
    the backtrace, and the program finishes when continued."""
    need_tool(shutil.which("gdb") is not None, "gdb is not installed")
    import socket
    import sys

    binary = musl(tmp_path, "g", GDB_TARGET, "-O0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exo = subprocess.Popen([sys.executable, "-m", "exo", "run", "--gdb", f"127.0.0.1:{port}", "--gdb-wait",
                            str(binary)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        gdb = subprocess.run(["gdb", "-q", "-nx", "-batch", "-ex", f"target remote 127.0.0.1:{port}",
                              "-ex", "break add", "-ex", "continue", "-ex", "bt", "-ex", "continue", str(binary)],
                             capture_output=True, text=True, timeout=120)
        out, err = exo.communicate(timeout=60)
    finally:
        if exo.poll() is None:
            exo.kill()
            exo.wait()
    assert "Breakpoint 1, add (a=2, b=3)" in gdb.stdout, gdb.stdout + gdb.stderr
    assert "in main () at" in gdb.stdout
    assert out == b"5\n" and exo.returncode == 0, err.decode()


SPIN = "__attribute__((noinline)) void spin(volatile int *x) { for (;;) ++*x; }\nint main(void) { int x = 0; spin(&x); }\n"
BAD_POINTER = r"""#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    long rc = write(1, (void *)16, 10);        /* a pointer into nothing */
    int e1 = errno;
    long rc2 = read(0, (void *)0xffff800000000000UL, 4);   /* the kernel half */
    printf("%ld %d %ld %d\n", rc, e1, rc2, errno);
    return 0;
}
"""


def test_infinite_loop_under_max_instructions_names_the_function(tmp_path):
    r = run_exo("run", "--max-instructions", "2000000", str(musl(tmp_path, "spin", SPIN, "-O1")))
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "spin+0x" in err or "(spin)" in err, err


def test_bad_syscall_pointer_is_efault_not_a_crash(tmp_path):
    """Linux answers a bad buffer with EFAULT (14) and the program goes on; so does exo."""
    r = run_exo("run", str(musl(tmp_path, "badptr", BAD_POINTER)))
    assert (r.stdout, r.returncode) == (b"-1 14 -1 14\n", 0), r.stderr.decode()
