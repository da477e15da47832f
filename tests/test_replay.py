"""Record and replay (`exo boot --record FILE` / `--replay FILE`, issue 14 item 4; exo/replay/).

A recorded run is replayed byte-exactly: the same console output, the same stats JSON, the same
trace (all but its ``host_ns``, the host's time). What makes a recording worth having is input
whose arrival depends on the host: typed on a terminal while the guests run, or frames from a peer
outside the process. Refusals are one line and exit 2. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_app
from test_breakpoint import TIMEOUT, Terminal, _spawn, _stop
from test_cli import _one_line_error
from test_echo import run_exo

from exo.replay import Event, Journal
from exo.replay.journal import ADVANCE, NET_RX, POLL, READ

ECHO = str(ROOT / "guest_apps" / "echo")

# Prints a dot every ROUND iterations, DOTS times, then exits: it computes while input is typed for
# the echo guest booted beside it, so where the input arrives (in instructions) is up to the host.
TICKER = """
    DOTS equ 60
    ROUND equ 400000
    section .text
    _start:
        mov r12, DOTS
    again:
        mov rcx, ROUND
    spin:
        dec rcx
        jnz spin
        lea rdi, [rip + dot]
        mov rsi, 1
        call HC_CONSOLE_WRITE
        dec r12
        jnz again
        mov rdi, SCHED_EXIT
        xor esi, esi
        call HC_SCHED_OP
    section .rodata
    dot: db "."
"""


def _boot(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return run_exo("boot", *args, stdin=stdin)


def _trace(path: Path) -> list[dict]:
    """The trace without host time (the one field a replay cannot give again)."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for e in events:
        e.pop("host_ns", None)
    return events


def _same_run(tmp_path: Path, recorded: str, replayed: str, out: bytes) -> None:
    assert Path(tmp_path / f"{recorded}.out").read_bytes() == out
    assert json.loads((tmp_path / f"{recorded}.json").read_text()) == json.loads((tmp_path / f"{replayed}.json").read_text())
    assert _trace(tmp_path / f"{recorded}.jsonl") == _trace(tmp_path / f"{replayed}.jsonl")


def _outputs(tmp_path: Path, name: str) -> list[str]:
    return ["--stats-json", str(tmp_path / f"{name}.json"), "--trace", str(tmp_path / f"{name}.jsonl")]


def test_an_interactive_run_replays_byte_exactly(tmp_path):
    """Lines typed on a terminal while another guest computes: the replay needs no terminal and
    gives the same interleaving of output, the same counts and the same trace."""
    ticker = make_app(tmp_path, "ticker", TICKER, libos={"console": "direct"})
    rec = tmp_path / "run.rec"
    apps = [ECHO, str(ticker)]
    tty = Terminal()
    out = open(tmp_path / "rec.out", "wb")
    proc = _spawn([sys.executable, "-m", "exo", "boot", *apps, "--record", str(rec), *_outputs(tmp_path, "rec")],
                  dict(os.environ), stdin=tty.slave, stdout=out, stderr=subprocess.PIPE)
    try:
        def shown(what: bytes) -> None:
            deadline = time.monotonic() + TIMEOUT
            while what not in (tmp_path / "rec.out").read_bytes():
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "rec.out").read_bytes()
                time.sleep(0.01)

        shown(b".")
        tty.type(b"first line\n")
        shown(b"first line\n")
        tty.type(b"second\n")
        shown(b"second\n")
        tty.type(b"\x04")  # Ctrl-D: end of input
        assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read()
    finally:
        _stop(proc)
        tty.close()
        out.close()
    recorded = (tmp_path / "rec.out").read_bytes()
    assert recorded.replace(b".", b"") == b"first line\nsecond\n" and recorded.count(b".") == 60
    journal = Journal.load(rec)
    reads = [e.data for e in journal.events if e.kind == READ]
    assert reads == [b"first line\n", b"second\n", b""]  # as typed, then end of input
    assert any(e.kind == POLL for e in journal.events)  # the echo guest waited and the input woke it
    r = _boot(*apps, "--replay", str(rec), *_outputs(tmp_path, "rep"))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == recorded
    _same_run(tmp_path, "rec", "rep", recorded)


def test_a_piped_run_replays_without_its_input(tmp_path):
    data = os.urandom(50_000) + b"end"
    rec = str(tmp_path / "pipe.rec")
    r = _boot(ECHO, "--record", rec, *_outputs(tmp_path, "a"), stdin=data)
    assert r.returncode == 0 and r.stdout == data, r.stderr.decode()
    (tmp_path / "a.out").write_bytes(r.stdout)
    r = _boot(ECHO, *_outputs(tmp_path, "plain"), stdin=data)
    _same_run(tmp_path, "a", "plain", data)  # recording changes nothing the guest sees, nor a count
    r = _boot(ECHO, "--replay", rec, *_outputs(tmp_path, "b"), stdin=b"other input, never read")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data
    _same_run(tmp_path, "a", "b", data)


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_run_with_a_peer_outside_replays(tmp_path):
    """udp_echo over user forwarding: the frames come from a host socket (and the idle clock advances
    by the host time spent waiting for them); the replay has neither and does the same."""
    port = _free_udp_port()
    apps = [str(ROOT / "guest_apps" / "udp_echo"), "--net", f"user,hostfwd=udp:127.0.0.1:{port}-:7"]
    rec = str(tmp_path / "net.rec")
    proc = subprocess.Popen([sys.executable, "-m", "exo", "boot", *apps, "--record", rec, *_outputs(tmp_path, "a"),
                             "--", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        got = []
        deadline = time.monotonic() + TIMEOUT
        for i in range(3):
            msg = f"datagram {i}".encode()
            while True:  # until the guest is up and answers (a datagram before that is lost)
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
                s.sendto(msg, ("127.0.0.1", port))
                try:
                    reply = s.recv(2048)
                except TimeoutError:
                    continue
                got.append(reply)
                break
        s.close()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert got == [b"datagram 0", b"datagram 1", b"datagram 2"]
    (tmp_path / "a.out").write_bytes(out)
    kinds = {e.kind for e in Journal.load(rec).events}
    assert NET_RX in kinds and ADVANCE in kinds  # frames, and host time spent waiting for them
    r = _boot(*apps, "--replay", rec, *_outputs(tmp_path, "b"), "--", "3")
    assert r.returncode == 0, r.stderr.decode()
    assert b"exo: net:" not in r.stderr  # no forwarding announced: the replay closed its ports
    assert r.stdout == out
    _same_run(tmp_path, "a", "b", out)


@pytest.fixture
def piped(tmp_path) -> str:
    rec = str(tmp_path / "p.rec")
    r = _boot(ECHO, "--record", rec, stdin=b"hello\n")
    assert r.returncode == 0, r.stderr.decode()
    return rec


def test_replay_refuses_other_options(piped):
    line = _one_line_error(_boot(ECHO, "--replay", piped, "--slice", "5000"))
    assert line == "exo: error: --replay: the recording was made with --slice (not given); this run has 5000"
    line = _one_line_error(_boot(ECHO, "--replay", piped, "--", "extra"))
    assert "the guest arguments" in line


def test_replay_refuses_another_image(piped, tmp_path):
    other = make_app(tmp_path, "echo", TICKER, libos={"console": "direct"})  # same name, other code
    line = _one_line_error(_boot(str(other), "--replay", piped))
    assert line == "exo: error: --replay: app 'echo' is not the image that was recorded (rebuilt from changed sources?)"


def test_replay_refuses_a_changed_disk_and_never_writes_it(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512 * 8))
    rec = str(tmp_path / "d.rec")
    r = _boot(ECHO, "--disk", str(disk), "--record", rec, stdin=b"x")
    assert r.returncode == 0, r.stderr.decode()
    r = _boot(ECHO, "--disk", str(disk), "--replay", rec)
    assert r.returncode == 0 and r.stdout == b"x", r.stderr.decode()
    copy = tmp_path / "copy.img"
    copy.write_bytes(disk.read_bytes())
    r = _boot(ECHO, "--disk", str(copy), "--replay", rec)  # the disk is its contents, wherever it is
    assert r.returncode == 0 and r.stdout == b"x", r.stderr.decode()
    line = _one_line_error(_boot(ECHO, "--disk", f"{copy}:ro", "--replay", rec))
    assert line == "exo: error: --replay: the recording was made with --disk rw; this run has ro"
    disk.write_bytes(b"\1" + bytes(512 * 8 - 1))
    line = _one_line_error(_boot(ECHO, "--disk", str(disk), "--replay", rec))
    assert line.startswith("exo: error: --replay: the disk changed since the recording: replay needs it as it was")
    line = _one_line_error(_boot(ECHO, "--replay", rec))
    assert "--disk" in line


def test_replay_refuses_a_truncated_or_foreign_file(piped, tmp_path):
    raw = Path(piped).read_bytes()
    cut = tmp_path / "cut.rec"
    for n in (5, 20, len(raw) - 1, len(raw) - 30):
        cut.write_bytes(raw[:n])
        line = _one_line_error(_boot(ECHO, "--replay", str(cut)))
        assert line.startswith(f"exo: error: {cut}: ") and ("truncated" in line or "not an exo recording" in line), line
    line = _one_line_error(_boot(ECHO, "--replay", str(ROOT / "README.md")))
    assert line == f"exo: error: {ROOT / 'README.md'}: not an exo recording (it does not start with EXOREPLAY)"


def test_the_wall_clock_is_refused(piped, tmp_path):
    for opt, path in (("--record", str(tmp_path / "w.rec")), ("--replay", piped)):
        line = _one_line_error(_boot(ECHO, "--clock", "wall", opt, path))
        assert line.startswith(f"exo: error: {opt}: needs --clock virtual"), line


def test_record_and_replay_together_are_refused(piped, tmp_path):
    line = _one_line_error(_boot(ECHO, "--record", str(tmp_path / "x.rec"), "--replay", piped))
    assert line == "exo: error: --replay: record or replay, not both in one run"


def test_a_divergence_names_where(piped, tmp_path):
    """A journal whose first console read was a network frame: the replay stops at that call."""
    j = Journal.load(piped)
    first = next(i for i, e in enumerate(j.events) if e.kind == READ)
    e = j.events[first]
    j.events[first] = Event(NET_RX, e.seq, e.instructions, e.idle_ns, b"")
    bad = tmp_path / "bad.rec"
    bad.write_bytes(j.to_bytes())
    line = _one_line_error(_boot(ECHO, "--replay", str(bad)))
    assert line.startswith(f"exo: error: --replay: replay diverged at instruction {e.instructions}, call {e.seq}: "
                           f"the guest read the console, the recording has a network frame at instruction "
                           f"{e.instructions}, call {e.seq}"), line
    # An event the replay passes without consuming it (the recording read later than the replay does).
    j = Journal.load(piped)
    e = j.events[first]
    j.events[first] = e._replace(seq=e.seq + 1000)
    bad.write_bytes(j.to_bytes())
    line = _one_line_error(_boot(ECHO, "--replay", str(bad)))
    assert "replay diverged at instruction" in line and "the recording has console input" in line, line
    # The same call, consumed at another point of the run (the recording's guest had run one more instruction).
    j = Journal.load(piped)
    e = j.events[first]
    j.events[first] = e._replace(instructions=e.instructions + 1)
    bad.write_bytes(j.to_bytes())
    line = _one_line_error(_boot(ECHO, "--replay", str(bad)))
    assert line.endswith(f"the guest read the console, the recording has console input at instruction "
                         f"{e.instructions + 1}, call {e.seq}"), line
    # A recording that ended (end of input) while this replay waits for more input.
    j = Journal.load(piped)
    j.events = [e for e in j.events if not (e.kind == READ and e.data == b"")]
    bad.write_bytes(j.to_bytes())
    line = _one_line_error(_boot(ECHO, "--replay", str(bad)))
    assert ": every guest waited for console input, the recording has the end of the run at" in line, line


def test_the_journal_round_trips_through_bytes():
    j = Journal({"exo": "x", "apps": [], "options": {}, "disk": None},
                [Event(READ, 3, 100, 0, b"abc"), Event(POLL, 4, 120, 7), Event(255, 9, 130, 7, b"exit")])
    again = Journal.from_bytes(j.to_bytes())
    assert again.events == j.events and again.header == j.header


def _recorded_echo(data: bytes) -> tuple[Journal, bytes, dict]:
    from exo.api import System
    from exo.replay import install

    with System([ECHO], stdin=data) as s:
        tape = install(s, Journal({}))
        s.run()
        tape.finish("exit")
        return Journal.from_bytes(tape.journal.to_bytes()), s.stdout, s.stats()


def test_a_replay_goes_live_where_the_journal_ends_and_can_mute_what_was_shown():
    """What reverse execution needs: re-execute a prefix from the journal without showing its
    output again, then go on with the real devices, recording."""
    from exo.api import System
    from exo.replay import install

    journal, out, _ = _recorded_echo(b"hello")
    assert out == b"hello" and [e.data for e in journal.events if e.kind == READ] == [b"hello", b""]
    del journal.events[1:]  # only the first read: as if the run had been stopped there
    with System([ECHO], stdin=b" world") as s:  # the real console has what comes after
        tape = install(s, journal, replay=True, go_live=True, mute_bytes=3)
        s.run()
        tape.finish("exit")
        assert s.stdout == b"lo world"  # "hel" was shown once already
        assert tape.went_live_at is not None and tape.went_live_at > journal.events[0].instructions
        assert [e.data for e in tape.journal.events if e.kind == READ] == [b"hello", b" world", b""]
        live = s.stats()
    assert live["envs"][0]["exit"] == 0
    # Two reads and two writes: "hello" from the journal, " world" from the real console, then its end.
    assert live["hypercalls"] == {"console_read": 3, "console_write": 2, "sched_op": 1}


def test_without_go_live_a_replay_past_its_end_says_so(tmp_path):
    """A recording of a run interrupted while a guest waited for typed input replays up to there."""
    rec = tmp_path / "cut.rec"
    tty = Terminal()
    proc = _spawn([sys.executable, "-m", "exo", "boot", ECHO, "--record", str(rec)], dict(os.environ),
                  stdin=tty.slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tty.type(b"typed\n")
        assert proc.stdout.read(6) == b"typed\n"
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT) == 143
    finally:
        _stop(proc)
        tty.close()
    assert Journal.load(rec).end.data == b"interrupted"
    r = _boot(ECHO, "--replay", str(rec))
    assert r.returncode == 130 and r.stdout == b"typed\n", r.stderr.decode()
    assert r.stderr.decode().endswith("(the recorded run was interrupted there)\n")


def test_a_replay_under_gdb(piped):
    """The recorded run, debugged: gdb steps it and lets it go on; the output is the recording's."""
    import re
    import select
    import shutil

    from conftest import need_tool

    need_tool(shutil.which("gdb") is not None, "gdb is not installed")
    proc = subprocess.Popen([sys.executable, "-m", "exo", "boot", ECHO, "--replay", piped, "--gdb", "127.0.0.1:0",
                             "--gdb-wait"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        err = b""
        deadline = time.monotonic() + TIMEOUT
        while not re.search(rb"listening on 127\.0\.0\.1:(\d+)", err):
            assert time.monotonic() < deadline and proc.poll() is None, err.decode()
            if select.select([proc.stderr], [], [], 1)[0]:
                err += os.read(proc.stderr.fileno(), 4096)
        port = re.search(rb"listening on 127\.0\.0\.1:(\d+)", err).group(1).decode()
        r = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}", "-ex", "stepi 3",
                            "-ex", "info registers rip", "-ex", "continue"], capture_output=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        text = r.stdout.decode() + r.stderr.decode()
        assert "0x0000000000400000 in" in text and re.search(r"rip\s+0x", text) and "exited normally" in text, text
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == b"hello\n"


def test_a_run_that_writes_its_disk_replays_from_a_copy_and_never_writes_it(tmp_path):
    """mkdir writes and flushes the disk: the image the recording started from is kept as a copy;
    replays from the copy run on a private copy of it, so the copy stays as it was (replayable again)."""
    disk, orig = tmp_path / "disk.img", tmp_path / "orig.img"
    r = run_exo("mkfs", str(disk), "--size", "1M")
    assert r.returncode == 0, r.stderr.decode()
    orig.write_bytes(disk.read_bytes())
    mkdir = str(ROOT / "guest_apps" / "mkdir")
    rec = str(tmp_path / "m.rec")
    r = _boot(mkdir, "--disk", str(disk), "--record", rec, *_outputs(tmp_path, "a"), "--", "/newdir")
    assert r.returncode == 0, r.stderr.decode()
    (tmp_path / "a.out").write_bytes(r.stdout)
    assert disk.read_bytes() != orig.read_bytes()  # the run wrote it
    line = _one_line_error(_boot(mkdir, "--disk", str(disk), "--replay", rec, "--", "/newdir"))
    assert "the disk changed since the recording" in line
    kept = orig.read_bytes()
    for name in ("b", "c"):
        r = _boot(mkdir, "--disk", str(orig), "--replay", rec, *_outputs(tmp_path, name), "--", "/newdir")
        assert r.returncode == 0, r.stderr.decode()
        _same_run(tmp_path, "a", name, r.stdout)
        assert orig.read_bytes() == kept


def test_a_run_over_the_switch_replays(tmp_path):
    """Two guests and the in-process switch (tests/exo/test_net.py's sender and receiver): the frames
    are journaled as received and the replay's counts, output and trace are the recording's."""
    from tests.exo.test_net import IP0, IP1, MAC0, MAC1, RX, tx_source, udp_frame

    rx = make_app(tmp_path, "rx", RX)
    tx = make_app(tmp_path, "tx", tx_source(udp_frame(MAC1, MAC0, IP1, IP0, 7, b"over the switch\n")))
    rec = str(tmp_path / "sw.rec")
    r = _boot(str(rx), str(tx), "--net", "switch", "--record", rec, *_outputs(tmp_path, "a"))
    assert r.returncode == 0 and r.stdout == b"A1\nover the switch\n", r.stderr.decode()
    (tmp_path / "a.out").write_bytes(r.stdout)
    assert any(e.kind == NET_RX for e in Journal.load(rec).events)
    r = _boot(str(rx), str(tx), "--net", "switch", "--replay", rec, *_outputs(tmp_path, "b"))
    assert r.returncode == 0, r.stderr.decode()
    _same_run(tmp_path, "a", "b", r.stdout)
