"""The GDB remote stub (exo/gdb, `exo boot --gdb`): its packet layer without gdb, a raw-socket
client feeding it bad input, and stock gdb in batch mode against real guests.

Every process has a timeout: a stub that stops answering fails the test, never hangs it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_app, need_tool

from exo.gdb.rsp import Decoder, checksum, escape, frame, unescape

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60

# A guest with labels to break at: writes "hello\n" (or what the debugger left there) and
# exits with the status in `status`.
HELLO = """
section .text
_start:
    lea rdi, [rip + msg]
    mov rsi, 6
stop_here:
    nop
    nop
    call HC_CONSOLE_WRITE
    lea rax, [rip + status]
    mov rsi, qword ptr [rax]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
section .data
msg: db "hello", 10
status: dq 3
"""

FOREVER = """
section .text
_start:
    inc rax
    jmp _start
"""

FAULT = """
section .text
_start:
    xor eax, eax
    nop
bad:
    mov qword ptr [rax], 1
"""


# ---------------------------------------------------------------- packet layer (no gdb)
def test_packet_framing_and_checksum():
    assert frame(b"OK") == b"$OK#9a"
    d = Decoder()
    d.feed(b"junk$qSupported#37+$g#67")
    assert list(d.events) == [("packet", b"qSupported"), ("ack", None), ("packet", b"g")]
    assert bytes(d.replies) == b"++"


def test_bad_checksum_is_nakked_and_dropped():
    d = Decoder()
    d.feed(b"$g#00$g#zz")
    assert not d.events and bytes(d.replies) == b"--" and d.bad_packets == 2


def test_huge_packet_is_dropped_not_buffered():
    d = Decoder(max_size=64)
    body = b"m" * 10_000
    d.feed(b"$" + body + b"#%02x" % checksum(body))
    assert not d.events and bytes(d.replies) == b"-" and len(d._buf) == 64
    d.feed(frame(b"?"))  # the next packet is fine
    assert list(d.events) == [("packet", b"?")]


def test_interrupt_and_split_input():
    d = Decoder()
    for b in b"\x03$m0,4#fd":
        d.feed(bytes((b,)))
    assert list(d.events) == [("interrupt", None), ("packet", b"m0,4")]
    d.feed(b"$m0")
    assert d.mid_packet


def test_escape_round_trip():
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    assert b"$" not in escape(data) and b"#" not in escape(data) and b"*" not in escape(data)
    assert unescape(b"a}") == b"a"  # a dangling escape is dropped, not an error


def test_no_ack_mode_stops_acks():
    d = Decoder()
    d.ack = False
    d.feed(frame(b"g"))
    assert list(d.events) == [("packet", b"g")] and not d.replies


# ---------------------------------------------------------------- the stub over TCP
class Stub:
    """`exo boot APP --gdb 127.0.0.1:0 --gdb-wait` in the background; its port from stderr."""

    def __init__(self, *args: str, stdin: bytes = b"", wait: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "exo", "boot", *args, "--gdb", "127.0.0.1:0",
                                      *(["--gdb-wait"] if wait else [])], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=dict(os.environ))
        self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not flush it
        self.err = b""
        deadline = time.monotonic() + TIMEOUT
        while b"listening" not in self.err or not self.err.endswith(b"\n"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise AssertionError(f"no gdb port announced: {self.err.decode()}")
            if select.select([self.proc.stderr], [], [], 1)[0]:
                self.err += os.read(self.proc.stderr.fileno(), 4096)
        self.port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", self.err).group(1))

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, out.decode(), (self.err + err).decode()

    def gdb(self, *commands: str) -> str:
        cmd = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", f"target remote 127.0.0.1:{self.port}"]
        for c in commands:
            cmd += ["-ex", c]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return r.stdout.decode() + r.stderr.decode()


def _symbols(app: Path) -> dict[str, int]:
    from exo.api import build

    return build(app).image.symbols


def _rsp(sock: socket.socket, data: bytes | None) -> bytes:
    """Send a packet (None: send nothing), read its ack and reply (no-ack mode not negotiated)."""
    buf = b""
    if data is None:
        buf = b"+"
    else:
        sock.sendall(frame(data))
    while not re.search(rb"\$[^#]*#..", buf):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r} ({buf!r})"
        buf += chunk
    assert buf.startswith(b"+"), buf
    return re.search(rb"\$([^#]*)#", buf).group(1)


def test_raw_client_bad_input_gets_replies_and_guest_finishes(tmp_path):
    """Malformed input never crashes the stub; a disconnect mid-packet lets the guests run on."""
    app = make_app(tmp_path, "hello", HELLO)
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        s.sendall(b"$g#00")  # bad checksum
        assert s.recv(1) == b"-"
        assert _rsp(s, b"vMustReplyEmpty") == b""  # unknown packet: empty reply
        assert _rsp(s, b"m0,8") == b"E01"  # page 0 is unmapped
        assert _rsp(s, b"mzz") == b"E01"  # not hex
        assert _rsp(s, b"M400000,2:00") == b"E01"  # length does not match the data
        assert _rsp(s, b"Hg99") == b"E01"  # no such environment
        assert _rsp(s, b"p999") == b"E01"  # no such register
        assert _rsp(s, b"?").startswith(b"T05thread:1;")
        assert _rsp(s, b"qfThreadInfo") == b"m1"
        s.sendall(b"$m40")  # and hang up in the middle of a packet
    code, out, err = stub.finish()
    assert (code, out) == (3, "hello\n"), err
    assert "disconnected in the middle of a packet" in err and "Traceback" not in err


def test_breakpoint_hidden_from_reads_and_removed_cleanly(tmp_path):
    app = make_app(tmp_path, "hello", HELLO)
    stop = _symbols(app)["stop_here"]
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z0,%x,1" % stop) == b"OK"
        assert _rsp(s, b"m%x,2" % stop) == b"9090"  # the int3 is there, reads see the nops
        assert _rsp(s, b"c") == b"T05thread:1;"
        assert _rsp(s, b"p10") == stop.to_bytes(8, "little").hex().encode()  # rip at the breakpoint
        assert _rsp(s, b"z0,%x,1" % stop) == b"OK"
        assert _rsp(s, b"c") == b"W03"
    code, out, err = stub.finish()
    assert (code, out) == (3, "hello\n"), err


def test_ctrl_c_stops_a_running_guest_and_breakpoints_refuse_exokernel_pages(tmp_path):
    app = make_app(tmp_path, "forever", FOREVER)
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z0,100020,1") == b"E01"  # the hypercall page: every app's, not this one's
        s.sendall(frame(b"c"))
        assert s.recv(1) == b"+"
        time.sleep(0.3)
        s.sendall(b"\x03")
        assert _rsp(s, None) == b"T02thread:1;"
        rip = int.from_bytes(bytes.fromhex(_rsp(s, b"p10").decode()), "little")
        assert 0x400000 <= rip < 0x400010
        s.sendall(frame(b"k"))
    code, _, err = stub.finish()
    assert code == 137, err


def test_attach_while_running(tmp_path):
    """Without --gdb-wait the guests start at once; a connection stops them wherever they are."""
    app = make_app(tmp_path, "forever", FOREVER)
    stub = Stub(str(app), wait=False)
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"?") == b"T05thread:1;"
        rax = int.from_bytes(bytes.fromhex(_rsp(s, b"p0").decode()), "little")
        assert rax > 1000  # it had been running
        s.sendall(frame(b"k"))
    code, _, err = stub.finish()
    assert code == 137, err


def test_same_run_with_gdb_attached(tmp_path):
    """Attached and continuing, the guests run as they do without a debugger: same output, same counts."""
    from test_echo import run_exo

    app = ROOT / "guest_apps/threads"
    plain = run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"))
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"c") == b"W00"
    code, out, err = stub.finish()
    assert (code, out.encode()) == (plain.returncode, plain.stdout), err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()


# ---------------------------------------------------------------- stock gdb
@pytest.fixture
def gdb_tool():
    need_tool(shutil.which("gdb") is not None, "gdb is not installed")


def test_break_registers_memory_write_and_stepi(tmp_path, gdb_tool):
    app = make_app(tmp_path, "hello", HELLO)
    sym = _symbols(app)
    stop = sym["stop_here"]
    stub = Stub(str(app))
    text = stub.gdb(f"break *{stop:#x}", "continue", "info registers rip rsi",
                    f"x/2xb {stop:#x}",
                    f"set {{char}}{sym['msg']:#x} = 'J'", f"set *(long *){sym['status']:#x} = 7",
                    "stepi", "info registers rip", "set $rsi = 3", "continue")
    assert f"Breakpoint 1, {stop:#018x}" in text, text
    assert re.search(rf"rip\s+{stop:#x}", text) and re.search(r"rsi\s+0x6\b", text), text
    assert f"{stop:#x}:\t0x90\t0x90" in text, text
    assert re.search(rf"rip\s+{stop + 1:#x}", text), text  # one instruction (a nop) further
    assert "exited with code 07" in text, text
    code, out, err = stub.finish()
    assert (code, out) == (7, "Jel"), err


def test_forktree_threads(gdb_tool):
    sym = _symbols(ROOT / "guest_apps/forktree")
    stub = Stub(str(ROOT / "guest_apps/forktree"))
    text = stub.gdb(f"break *{sym['child']:#x}", "continue", "info threads", "delete", "continue")
    assert 'Thread 2 "forktree.1" hit Breakpoint 1' in text, text  # names from qXfer:threads:read
    assert re.search(r'\* 2\s+Thread 2 "forktree\.1" \(forktree\.1, env 2, runnable\)', text), text
    assert re.search(r'3\s+Thread 3 "forktree\.2" \(forktree\.2, env 3, runnable\)', text), text
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert code == 0 and out.count("I am") == 15, err


def test_stepi_through_a_copy_on_write_fault(gdb_tool):
    """A step that faults enters the libOS handler (its entry is the next stop), steps over its
    library calls, returns to the faulting store, and leaves no trap flag behind."""
    child = _symbols(ROOT / "guest_apps/forktree")["child"]
    store = child + 0x11  # mov byte ptr [rdx + rcx], bl: the first write to the child's .data
    stub = Stub(str(ROOT / "guest_apps/forktree"))
    text = stub.gdb(f"break *{child:#x}", "continue", "delete", *["stepi"] * 8, "continue")
    stops = re.findall(r"^(0x[0-9a-f]{16}) in \?\? \(\)$", text, re.M)[1:]  # after the connect's
    assert stops[:3] == [f"{a:#018x}" for a in (child + 7, child + 0xA, store)], text
    assert stops.count(f"{store:#018x}") == 2 and f"{store + 3:#018x}" in stops, text  # retried, then on
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert code == 0 and out.count("I am") == 15, err


def test_fault_stops_with_sigsegv_before_the_report(tmp_path, gdb_tool):
    app = make_app(tmp_path, "fault", FAULT)
    bad = _symbols(app)["bad"]
    stub = Stub(str(app))
    text = stub.gdb("continue", "info registers rip", "info threads", "continue")
    assert "received signal SIGSEGV" in text, text
    assert re.search(rf"rip\s+{bad:#x}", text), text
    assert 'Thread 1 "fault" (fault, env 1, runnable)' in text, text  # still there while gdb looks
    assert "terminated with signal SIGSEGV" in text, text
    code, _, err = stub.finish()
    assert code == 1 and "page fault" in err.lower(), err  # the fault report is still printed


def test_kill(tmp_path, gdb_tool):
    app = make_app(tmp_path, "hello", HELLO)
    stub = Stub(str(app))
    stub.gdb("stepi", "kill")
    code, out, err = stub.finish()
    assert code == 137 and out == "" and "killed by gdb" in err, err


@pytest.mark.parametrize("args, what", [
    (["--gdb-wait"], "--gdb-wait"),
    (["--gdb", "localhost:http"], "PORT must be a number"),
    (["--gdb", "70000"], "not between 0 and 65535"),
    (["--gdb", "nosuchhost.invalid:1234"], "cannot listen on nosuchhost.invalid:1234"),
])
def test_bad_gdb_options(tmp_path, args, what):
    app = make_app(tmp_path, "hello", HELLO)
    r = subprocess.run([sys.executable, "-m", "exo", "boot", str(app), *args], cwd=ROOT, capture_output=True,
                       timeout=TIMEOUT)
    err = r.stderr.decode()
    assert r.returncode == 2 and what in err and "Traceback" not in err and len(err.splitlines()) == 1, err
