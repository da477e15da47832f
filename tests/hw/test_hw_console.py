"""The console device: exact reads, EOF, byte-exact output; the device bus."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from hw.console import ConsoleDevice
from hw.device import DeviceBus

DATA = bytes(range(256)) * 3 + b"\x00end\x00"  # NULs, high bytes, no line structure


def drain(con: ConsoleDevice, n: int) -> list[bytes]:
    chunks = []
    while True:
        c = con.read(n)
        assert c is not None
        if c == b"":
            return chunks
        chunks.append(c)


@pytest.mark.parametrize("n", [1, 7, 100, 4096])
def test_bytes_input_read_in_exact_chunks(n: int) -> None:
    con = ConsoleDevice(stdin=DATA, stdout=io.BytesIO())
    assert not con.interactive
    assert con.poll()
    chunks = drain(con, n)
    assert b"".join(chunks) == DATA
    assert [len(c) for c in chunks[:-1]] == [n] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= n
    assert con.bytes_in == len(DATA)
    assert con.read(n) == b""  # EOF stays EOF
    assert con.read(1) == b""
    assert con.poll()  # EOF is something for the OS to see


def test_empty_and_none_stdin_are_eof() -> None:
    for stdin in (b"", None):
        con = ConsoleDevice(stdin=stdin, stdout=io.BytesIO())
        assert con.read(10) == b""
        assert con.wait_input(0.0)


def test_read_zero_or_negative_returns_empty_without_consuming() -> None:
    con = ConsoleDevice(stdin=b"abc", stdout=io.BytesIO())
    assert con.read(0) == b""
    assert con.read(-5) == b""
    assert con.read(10) == b"abc"


def test_bytearray_input() -> None:
    con = ConsoleDevice(stdin=bytearray(b"xyz"), stdout=io.BytesIO())
    assert con.read(2) == b"xy"
    assert con.read(2) == b"z"
    assert con.read(2) == b""


def test_pipe_input_is_read_deterministically() -> None:
    """However the writer chunks the data, read(n) returns n bytes until EOF."""
    r, w = os.pipe()

    def feed() -> None:
        for i in range(0, len(DATA), 5):
            os.write(w, DATA[i : i + 5])
            if i % 100 == 0:
                time.sleep(0.001)
        os.close(w)

    t = threading.Thread(target=feed)
    t.start()
    try:
        con = ConsoleDevice(stdin=r, stdout=io.BytesIO())
        assert not con.interactive
        chunks = drain(con, 64)
    finally:
        t.join()
        os.close(r)
    assert b"".join(chunks) == DATA
    assert [len(c) for c in chunks] == [64] * (len(DATA) // 64) + [len(DATA) % 64]
    assert con.read(64) == b""


def test_file_input(tmp_path) -> None:
    p = tmp_path / "in.bin"
    p.write_bytes(DATA)
    with open(p, "rb") as f:
        con = ConsoleDevice(stdin=f.fileno(), stdout=io.BytesIO())
        assert [len(c) for c in drain(con, 500)] == [500, len(DATA) - 500]


def test_output_to_bytesio_is_byte_exact() -> None:
    out = io.BytesIO()
    con = ConsoleDevice(stdin=None, stdout=out)
    assert con.write(b"\x00\x01\xff") == 3
    assert con.write(b"") == 0
    assert con.write(DATA) == len(DATA)
    assert out.getvalue() == b"\x00\x01\xff" + DATA
    assert con.bytes_out == 3 + len(DATA)


def test_output_to_a_file_object(tmp_path) -> None:
    p = tmp_path / "out.bin"
    with open(p, "wb") as f:
        con = ConsoleDevice(stdin=None, stdout=f)
        con.write(DATA)
        assert p.read_bytes() == DATA  # flushed at once


def test_output_to_a_pipe_fd() -> None:
    r, w = os.pipe()
    try:
        con = ConsoleDevice(stdin=None, stdout=w)
        assert con.write(b"a\x00b") == 3
        assert os.read(r, 100) == b"a\x00b"
    finally:
        os.close(r)
        os.close(w)


def test_closed_reader_gives_minus_one() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        con = ConsoleDevice(stdin=None, stdout=w)
        assert con.write(b"lost") == -1
        assert con.output_closed
        assert con.write(b"more") == -1
        assert con.bytes_out == 0
    finally:
        os.close(w)


def test_closed_file_object_gives_minus_one() -> None:
    out = io.BytesIO()
    out.close()
    con = ConsoleDevice(stdin=None, stdout=out)
    assert con.write(b"x") == -1
    assert con.output_closed


def test_terminal_input_does_not_block() -> None:
    master, slave = os.openpty()
    try:
        con = ConsoleDevice(stdin=slave, stdout=io.BytesIO())
        assert con.interactive
        assert con.read(10) is None  # nothing typed yet
        os.write(master, b"hi\n")
        assert con.wait_input(10.0)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            chunk = con.read(10)
            if chunk is None:
                con.wait_input(0.1)
                continue
            got += chunk
        assert got == b"hi\n"
        os.close(master)  # hang-up: the reader thread sees end of input and exits
        master = -1
        deadline = time.monotonic() + 10
        while con.read(10) is None and time.monotonic() < deadline:
            con.wait_input(0.1)
        assert con.read(10) == b""
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)


def test_machine_console_and_bus(machine) -> None:
    assert "console" in machine.devices
    assert machine.devices["console"] is machine.console
    assert list(machine.devices) == [machine.console]
    assert machine.console.read(1) == b""  # the fixture gives empty stdin
    with pytest.raises(ValueError, match="console"):
        machine.devices.attach(ConsoleDevice(stdin=None, stdout=io.BytesIO()))
    with pytest.raises(KeyError):
        machine.devices["disk"]


def test_device_bus_close_closes_every_device() -> None:
    closed = []

    class Dev:
        def __init__(self, name: str) -> None:
            self.name = name

        def poll(self) -> bool:
            return False

        def close(self) -> None:
            closed.append(self.name)

    bus = DeviceBus()
    bus.attach(Dev("a"))
    bus.attach(Dev("b"))
    assert "a" in bus and "c" not in bus
    bus.close()
    assert closed == ["a", "b"]


def _read_all(con: ConsoleDevice, want: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(want) and time.monotonic() < deadline:
        chunk = con.read(4096)
        if chunk is None:
            con.wait_input(0.1)
            continue
        got += chunk
    return got


def _tty_read(fd: int, timeout: float = 10.0) -> bytes:
    """What someone else in the process (pdb) reads from the terminal; b"" if nothing came."""
    import select

    return os.read(fd, 4096) if select.select([fd], [], [], timeout)[0] else b""


def _type(master: int, slave: int, con: ConsoleDevice, line: bytes) -> None:
    """Type ``line`` and wait until the terminal has it (a pty passes input on asynchronously: a line
    still in flight when the release comes is typed after it, as on a real terminal)."""
    import fcntl
    import struct
    import termios

    os.write(master, line)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with con._cv:
            if con._data.endswith(line):
                return
        if struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0" * 4))[0]:
            return
        time.sleep(0.001)
    raise AssertionError(f"{line!r} never reached the terminal")


def test_a_released_terminal_is_left_to_someone_else() -> None:
    """release_terminal (pdb at a breakpoint): lines typed before are the guest's, lines typed while
    released are left in the terminal for the other reader, and the guest gets the terminal back."""
    master, slave = os.openpty()
    con = ConsoleDevice(stdin=slave, stdout=io.BytesIO())
    try:
        _type(master, slave, con, b"one\ntwo\n")  # typed before: possibly unread when the release comes
        con.release_terminal()
        assert _read_all(con, b"one\ntwo\n") == b"one\ntwo\n"
        os.write(master, b"p x\n")
        assert _tty_read(slave) == b"p x\n"  # the debugger's command reached the debugger
        assert con.read(10) is None and not con.poll()
        con.release_terminal()  # nested (pdb within pdb): one reclaim is not enough
        con.reclaim_terminal()
        os.write(master, b"c\n")
        assert _tty_read(slave) == b"c\n"
        con.reclaim_terminal()
        os.write(master, b"three\n")
        assert _read_all(con, b"three\n") == b"three\n"
        assert con.bytes_in == len(b"one\ntwo\nthree\n")
    finally:
        con.close()
        os.close(master)
        os.close(slave)


def test_release_and_reclaim_many_times_while_typing() -> None:
    """No lost line, no deadlock, whatever the reader was doing when asked to park."""
    master, slave = os.openpty()
    con = ConsoleDevice(stdin=slave, stdout=io.BytesIO())
    sent = b""
    try:
        for i in range(200):
            line = b"%d\n" % i
            _type(master, slave, con, line)
            sent += line
            con.release_terminal()  # returns only once the reader has taken the line and parked
            with con._cv:
                assert con._data.endswith(line)
            con.reclaim_terminal()
        assert _read_all(con, sent) == sent
    finally:
        con.close()
        os.close(master)
        os.close(slave)


def test_close_stops_the_terminal_reader() -> None:
    """After a run, an embedding's REPL on the same terminal keeps what is typed."""
    master, slave = os.openpty()
    con = ConsoleDevice(stdin=slave, stdout=io.BytesIO())
    try:
        reader = con._reader_thread
        con.close()
        assert not reader.is_alive()
        os.write(master, b"for the REPL\n")
        assert _tty_read(slave) == b"for the REPL\n"
        con.release_terminal()  # harmless once the reader has gone
        con.reclaim_terminal()
    finally:
        os.close(master)
        os.close(slave)


def test_release_is_a_no_op_without_a_terminal() -> None:
    con = ConsoleDevice(stdin=b"abc", stdout=io.BytesIO())
    con.release_terminal()
    con.reclaim_terminal()
    con.close()
    assert con.read(10) == b"abc"
