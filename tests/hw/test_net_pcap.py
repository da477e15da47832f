"""pcap files: written by the NIC, read back by our reader and by tshark."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from conftest import need_tool

from hw.net.pcap import PcapWriter, parse_pcap, read_pcap


def frames() -> list[bytes]:
    head = bytes.fromhex("ffffffffffff525400123456") + b"\x08\x06"
    return [head + bytes([i]) * (46 + i * 7) for i in range(10)]


def write(path, fs) -> None:
    w = PcapWriter(path)
    for i, f in enumerate(fs):
        w.write(f, ts=1_700_000_000 + i + 0.25)
    w.close()


def test_written_then_read_back(tmp_path) -> None:
    p = tmp_path / "x.pcap"
    write(p, frames())
    raw = p.read_bytes()
    assert struct.unpack("<IHHiIII", raw[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    got = read_pcap(p)
    assert [f for _, f in got] == frames()
    assert [round(t, 6) for t, _ in got] == [1_700_000_000 + i + 0.25 for i in range(10)]


def test_tshark_reads_it(tmp_path) -> None:
    tshark = shutil.which("tshark")
    need_tool(tshark is not None, "tshark is not installed")
    p = tmp_path / "x.pcap"
    write(p, frames())
    r = subprocess.run([tshark, "-r", str(p), "-T", "fields", "-e", "frame.len", "-e", "eth.src"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [int(n) for n, _ in rows] == [len(f) for f in frames()]
    assert {s for _, s in rows} == {"52:54:00:12:34:56"}


def test_the_reader_rejects_damaged_files() -> None:
    with pytest.raises(ValueError, match="too short"):
        parse_pcap(b"\xd4\xc3\xb2\xa1")
    with pytest.raises(ValueError, match="not a classic pcap"):
        parse_pcap(bytes(24))
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    with pytest.raises(ValueError, match="truncated record"):
        parse_pcap(hdr + struct.pack("<IIII", 0, 0, 100, 100) + b"x" * 10)
    big = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 3, 500_000_000, 2, 2) + b"ab"
    assert parse_pcap(big) == [(3.5, b"ab")]  # big-endian, nanoseconds


def test_an_unwritable_path_is_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"pcap: cannot write .*nodir/x.pcap: No such file"):
        PcapWriter(tmp_path / "nodir" / "x.pcap")
