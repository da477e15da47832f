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

# A variable written three times, each after a loop of 150k instructions (the writes
# fall in different slices of the default 100k), and read once at the end.
COUNTER = """
section .text
_start:
    mov rcx, 3
again:
    mov rdx, 75000
spin:
    dec rdx
    jnz spin
    lea rax, [rip + counter]
    mov rbx, qword ptr [rax]
load_done:
    add rbx, 1
store:
    mov qword ptr [rax], rbx
after_store:
    nop
    dec rcx
    jnz again
    lea rax, [rip + counter]
    mov rsi, qword ptr [rax]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
section .data
counter: dq 40
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

    def __init__(self, *args: str, stdin: bytes | int = b"", wait: bool = True) -> None:
        """``stdin``: the guest's input, or a file descriptor to read it from (a terminal)."""
        self.proc = subprocess.Popen([sys.executable, "-m", "exo", "boot", *args, "--gdb", "127.0.0.1:0",
                                      *(["--gdb-wait"] if wait else [])], cwd=ROOT,
                                     stdin=stdin if isinstance(stdin, int) else subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=dict(os.environ))
        if not isinstance(stdin, int):
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
        return self.gdb_elf(None, *commands)

    def gdb_elf(self, elf: Path | None, *commands: str) -> str:
        """gdb in batch mode, with the image's ELF file (symbols, lines) when given."""
        cmd = ["gdb", "-batch", "-nx", *([str(elf)] if elf else []), "-ex", "set pagination off",
               "-ex", f"target remote 127.0.0.1:{self.port}"]
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


def _rip(sock: socket.socket) -> int:
    return int.from_bytes(bytes.fromhex(_rsp(sock, b"p10").decode()), "little")


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


# ---------------------------------------------------------------- watchpoints, hbreak, vCont (issue 14)
def test_watch_shows_old_and_new_value_after_the_store(tmp_path, gdb_tool):
    """`watch` stops after the storing instruction (x86 data breakpoints are traps), so gdb reads
    the new value and RIP is the next instruction; the store ran once (the exit status counts)."""
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"watch *(long *){sym['counter']:#x}", "continue", "info registers rip", "continue",
                    "continue", "delete", "continue")
    assert "Hardware watchpoint 1" in text, text
    for old in (40, 41, 42):
        assert f"Old value = {old}\nNew value = {old + 1}\n" in text, text
    assert re.search(rf"rip\s+{sym['after_store']:#x}", text), text
    assert "exited with code 053" in text, text  # 40 + 3: no store ran twice
    code, _, err = stub.finish()
    assert code == 43, err


def test_rwatch_stops_after_the_load(tmp_path, gdb_tool):
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"rwatch *(long *){sym['counter']:#x}", "continue", "info registers rip rbx", "delete", "continue")
    assert "Hardware read watchpoint 1" in text and "Value = 40" in text, text
    assert re.search(rf"rip\s+{sym['load_done']:#x}", text) and re.search(r"rbx\s+0x28\b", text), text
    code, _, err = stub.finish()
    assert code == 43, err


def test_hbreak_on_a_label_and_on_an_exokernel_page(tmp_path, gdb_tool):
    """A hardware breakpoint works where int3 may not be written: the hypercall page."""
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app))
    text = stub.gdb(f"hbreak *{sym['store']:#x}", "continue", "info registers rip", "stepi", "info registers rip",
                    "delete", "hbreak *0x100140", "continue", "info registers rip", "delete", "continue")
    assert f"Hardware assisted breakpoint 1 at {sym['store']:#x}" in text, text
    assert re.search(rf"Breakpoint 1, {sym['store']:#018x}", text), text
    assert re.search(rf"rip\s+{sym['after_store']:#x}", text), text  # stepi from it: one instruction
    assert re.search(r"Breakpoint 2, 0x0000000000100140", text), text  # HC_SCHED_OP's stub
    assert "exited with code 053" in text, text
    code, _, err = stub.finish()
    assert code == 43, err


def test_watchpoint_hits_leave_the_run_unchanged(tmp_path):
    """Stopping at a watchpoint and continuing leaves output and statistics as without gdb: the
    slice goes on after the stop instead of ending there."""
    from test_echo import run_exo

    app = make_app(tmp_path, "counter", COUNTER)
    counter = _symbols(app)["counter"]
    plain = run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"))
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"qSupported:swbreak+;hwbreak+").count(b"+") >= 5
        assert _rsp(s, b"Z2,%x,8" % counter) == b"OK"
        for _ in range(3):
            assert _rsp(s, b"c") == b"T05watch:%x;thread:1;" % counter
        assert _rsp(s, b"c") == b"W2b"
    code, out, err = stub.finish()
    assert (code, out) == (plain.returncode, plain.stdout.decode()) == (43, ""), err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()


def test_vcont_steps_and_thread_list_xml(tmp_path):
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        supported = _rsp(s, b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
        for feature in (b"qXfer:threads:read+", b"swbreak+", b"hwbreak+", b"vContSupported+"):
            assert feature in supported.split(b";"), supported
        assert _rsp(s, b"vCont?") == b"vCont;c;C;s;S"
        assert _rsp(s, b"vCont;s:1;c") == b"T05thread:1;"
        assert _rip(s) == sym["again"]
        assert _rsp(s, b"vCont;S05") == b"T05thread:1;"  # a step with a signal (dropped), default thread
        assert _rip(s) == sym["spin"]
        xml = _rsp(s, b"qXfer:threads:read::0,fff")
        assert xml == (b'l<?xml version="1.0"?><threads><thread id="1" name="counter">counter, env 1, runnable'
                       b"</thread></threads>"), xml
        assert _rsp(s, b"qXfer:threads:read::5,4") == b"m" + xml[6:10]  # a piece: more to come
        assert _rsp(s, b"Z0,%x,1" % sym["store"]) == b"OK"
        assert _rsp(s, b"c") == b"T05swbreak:;thread:1;"  # negotiated: the reason is given
        assert _rsp(s, b"z0,%x,1" % sym["store"]) == b"OK"
        assert _rsp(s, b"Z1,%x,1" % sym["after_store"]) == b"OK"
        assert _rsp(s, b"vCont;c") == b"T05hwbreak:;thread:1;"
        assert _rip(s) == sym["after_store"]
        assert _rsp(s, b"z1,%x,1" % sym["after_store"]) == b"OK"
        assert _rsp(s, b"vCont;c:1") == b"W2b"
    code, _, err = stub.finish()
    assert code == 43, err


@pytest.mark.parametrize("packet, reply", [
    (b"vCont;x", b"E01"),  # no such action
    (b"vCont;s:zz", b"E01"),  # thread not hex
    (b"vCont;s:63", b"E01"),  # no environment 0x63
    (b"vCont;Cxy", b"E01"),  # signal not hex
    (b"vCont;", b"E01"),
    (b"vCont", b""),  # not a packet we know: "unsupported"
    (b"Z2,401000", b"E01"),  # no length
    (b"Z2,401000,0", b"E01"),  # empty
    (b"Z2,401000,2000", b"E01"),  # more than a page
    (b"Z2,10,8", b"E01"),  # unmapped
    (b"Z1,zz,1", b"E01"),
    (b"Z9,401000,1", b""),  # no such type
    (b"z3,401000,8", b"OK"),  # removing what is not there
    (b"qXfer:threads:read:x:0,10", b"E00"),
    (b"qXfer:threads:read::zz", b"E01"),
])
def test_malformed_debug_packets_get_errors(tmp_path, packet, reply):
    app = make_app(tmp_path, "counter", COUNTER)
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, packet) == reply
        assert _rsp(s, b"c") == b"W2b"  # and the machine runs on, unharmed
    code, _, err = stub.finish()
    assert code == 43 and "Traceback" not in err, err


def test_fifth_debug_slot_is_refused(tmp_path):
    """x86 has four debug address registers (DR0-DR3): Z1-Z4 share four slots; more is an error,
    which gdb reports as "Could not insert hardware watchpoint"."""
    app = make_app(tmp_path, "counter", COUNTER)
    counter = _symbols(app)["counter"]
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        for i, kind in enumerate((2, 3, 4, 1)):
            assert _rsp(s, b"Z%d,%x,1" % (kind, counter + i if kind != 1 else 0x400000)) == b"OK"
        assert _rsp(s, b"Z2,%x,1" % (counter + 5)) == b"E01"
        assert _rsp(s, b"z2,%x,1" % counter) == b"OK"
        assert _rsp(s, b"Z2,%x,1" % (counter + 5)) == b"OK"  # a freed slot is usable again
        s.sendall(frame(b"k"))
    code, _, err = stub.finish()
    assert code == 137, err


def test_ctrl_c_while_every_guest_waits_for_input(tmp_path):
    """On a terminal, the kernel sleeps in the console's wait while every guest is blocked on
    input; Ctrl-C must stop the machine then too, not when the next key is pressed."""
    import pty

    master, slave = pty.openpty()
    stub = Stub(str(ROOT / "guest_apps/echo"), stdin=slave)
    os.close(slave)
    with socket.create_connection(("127.0.0.1", stub.port), timeout=10) as s:
        s.sendall(frame(b"c"))
        assert s.recv(1) == b"+"
        time.sleep(0.5)  # the guest is blocked in console_read by now
        s.sendall(b"\x03")
        assert _rsp(s, None) == b"T02thread:1;"
        assert _rsp(s, b"qThreadExtraInfo,1") == b"echo, env 1, blocked on console".hex().encode()
        assert _rsp(s, b"D") == b"OK"
    os.write(master, b"typed\n\x04")  # a line, then end of input (^D)
    code, out, err = stub.finish()
    os.close(master)
    assert (code, out) == (0, "typed\n"), err


def test_watchpoint_follows_memory_into_forked_children_and_keeps_the_schedule(tmp_path):
    """A watchpoint watches the memory behind the address (Unicorn's memory hooks match physical
    addresses): forktree's children read `depth` from their parent's frame until their first
    write copies it, so `rwatch depth` stops in them too. Each stop is served inside the slice,
    so the schedule (context switches, output order) and every count stay those of a plain run;
    ending the slice at the stop would let the next environment run first."""
    from test_echo import run_exo

    app = ROOT / "guest_apps/forktree"
    depth = _symbols(app)["depth"]
    plain = run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"))
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"))
    threads = []
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z3,%x,8" % depth) == b"OK"
        while (reply := _rsp(s, b"c")).startswith(b"T05rwatch:%x;" % depth):
            threads.append(int(re.search(rb"thread:([0-9a-f]+);", reply).group(1), 16))
        assert reply == b"W00", reply
    code, out, err = stub.finish()
    assert (code, out) == (plain.returncode, plain.stdout.decode()), err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()
    assert threads == [1, 1, 2, 3], threads  # the root's two reads, then each child's first, from the root's frame


def test_watch_follows_a_copy_on_write_copy(tmp_path, gdb_tool):
    """`watch depth` set in a forked child while its .data is still the parent's (shared,
    copy-on-write): the child's first store copies the page, and the watchpoint moves to the
    copy with it (Target.follow), so the child's own write to depth is the one reported."""
    elf = tmp_path / "forktree.elf"
    subprocess.run([sys.executable, "-m", "exo", "image", str(ROOT / "guest_apps/forktree"), "--elf", str(elf)],
                   cwd=ROOT, check=True, capture_output=True, timeout=TIMEOUT)
    stub = Stub(str(ROOT / "guest_apps/forktree"))
    text = stub.gdb_elf(elf, "break child", "continue", "watch *(long *)&depth", "continue", "delete", "continue")
    assert 'Thread 2 "forktree.1" hit Hardware watchpoint 2: *(long *)&depth' in text, text
    assert "Old value = 0\nNew value = 1\n" in text, text
    assert re.search(r"child \(\) at .*forktree\.s:53", text), text  # after `mov qword ptr [rax], rcx` (line 52)
    code, out, err = stub.finish()
    assert code == 0 and out.count("I am") == 15, err


def test_step_over_a_watched_store_reports_the_watchpoint(tmp_path):
    """A single step whose instruction hits a watchpoint stops once, after it, saying both (on
    x86 one #DB sets DR6.BS and the watchpoint's bit): gdb then shows the new value."""
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z0,%x,1" % sym["store"]) == b"OK"
        assert _rsp(s, b"c") == b"T05thread:1;"
        assert _rsp(s, b"z0,%x,1" % sym["store"]) == b"OK"
        assert _rsp(s, b"Z2,%x,8" % sym["counter"]) == b"OK"
        assert _rsp(s, b"vCont;s:1;c") == b"T05watch:%x;thread:1;" % sym["counter"]
        assert _rip(s) == sym["after_store"]
        assert _rsp(s, b"vCont;s:1;c") == b"T05thread:1;"  # the next step: a nop, nothing watched
        assert _rsp(s, b"z2,%x,8" % sym["counter"]) == b"OK"
        assert _rsp(s, b"c") == b"W2b"
    code, _, err = stub.finish()
    assert code == 43, err


def test_watchpoints_are_refused_under_the_wall_clock(tmp_path):
    app = make_app(tmp_path, "counter", COUNTER)
    sym = _symbols(app)
    stub = Stub(str(app), "--clock", "wall")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z2,%x,8" % sym["counter"]) == b"E01"
        assert _rsp(s, b"Z1,%x,1" % sym["after_store"]) == b"OK"  # a code hook needs no counter
        assert _rsp(s, b"c") == b"T05thread:1;"
        assert _rip(s) == sym["after_store"]
        assert _rsp(s, b"z1,%x,1" % sym["after_store"]) == b"OK"
        assert _rsp(s, b"c") == b"W2b"
    code, _, err = stub.finish()
    assert code == 43 and "watchpoints need the virtual clock" in err, err


def test_hbreak_hits_and_steps_leave_the_counts_unchanged(tmp_path):
    """gdb continues from a breakpoint by removing it, stepping and putting it back; the step
    restarts the instruction the code hook had already counted, which is taken back."""
    from test_echo import run_exo

    app = make_app(tmp_path, "counter", COUNTER)
    store = _symbols(app)["store"]
    run_exo("boot", str(app), "--stats-json", str(tmp_path / "plain.json"))
    stub = Stub(str(app), "--stats-json", str(tmp_path / "gdb.json"))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=TIMEOUT) as s:
        assert _rsp(s, b"Z1,%x,1" % store) == b"OK"
        for _ in range(3):
            assert _rsp(s, b"vCont;c") == b"T05thread:1;"
            assert _rsp(s, b"z1,%x,1" % store) == b"OK"
            assert _rsp(s, b"vCont;s:1;c") == b"T05thread:1;"
            assert _rsp(s, b"Z1,%x,1" % store) == b"OK"
        assert _rsp(s, b"vCont;c") == b"W2b"
    code, _, err = stub.finish()
    assert code == 43, err
    assert (tmp_path / "plain.json").read_text() == (tmp_path / "gdb.json").read_text()


def test_stepi_in_another_thread_lets_the_stopped_one_run(gdb_tool):
    """`thread 3; stepi` sends vCont;s:3;c: environment 3 steps one instruction when the scheduler
    runs it; environment 2, stopped at the breakpoint, runs on meanwhile (forks 4 and 5, exits)."""
    sym = _symbols(ROOT / "guest_apps/forktree")
    stub = Stub(str(ROOT / "guest_apps/forktree"))
    text = stub.gdb(f"break *{sym['child']:#x}", "continue", "delete", "thread 3", "p/x $pc", "stepi", "p/x $pc",
                    "info threads", "continue")
    pcs = [int(x, 16) for x in re.findall(r"^\$[12] = (0x[0-9a-f]+)$", text, re.M)]
    assert len(pcs) == 2 and pcs[1] == pcs[0] + 3, text  # one instruction: test rax, rax (3 bytes)
    assert re.search(r"\* 3\s+Thread 3 \"forktree\.2\"", text) and "Thread 4" in text and "Thread 2 " not in text.split("$2")[1], text
    assert "exited normally" in text, text
    code, out, err = stub.finish()
    assert code == 0 and out.count("I am") == 15, err


SSE_APP = """
section .text
_start:
    mov rax, 0x1122334455667788
    movq xmm3, rax
marked:
    movhlps xmm4, xmm3
    movq rbx, xmm4
    mov rdi, SCHED_EXIT
    mov rsi, rbx
    call HC_SCHED_OP
"""


def test_sse_registers_read_and_written(tmp_path, gdb_tool):
    # The org.gnu.gdb.i386.sse feature: gdb shows and changes xmm registers and MXCSR (C at -O2 keeps
    # values there). The guest exits with xmm3's high half, which only gdb's write can have set.
    app = make_app(tmp_path, "sse", SSE_APP)
    stub = Stub(str(app))
    text = stub.gdb(f"break *{_symbols(app)['marked']:#x}", "continue", "p/x $xmm3.v2_int64", "p $mxcsr",
                    "set var $xmm3.v2_int64[1] = 5", "p/x $xmm3.uint128", "info registers fs_base", "continue")
    assert "{0x1122334455667788, 0x0}" in text, text
    assert "[ IM DM ZM OM UM PM ]" in text, text  # 0x1f80: every exception masked, as at reset
    assert "0x51122334455667788" in text, text
    assert re.search(r"^fs_base\s+0x0\s", text, re.M), text  # the segments feature after SSE still reads
    code, _, err = stub.finish()
    assert code == 5, err
