"""Classic libpcap capture files: a writer for the NIC and a small reader.

Format (https://wiki.wireshark.org/Development/LibpcapFileFormat): a 24-byte
global header {magic 0xa1b2c3d4, version 2.4, thiszone 0, sigfigs 0, snaplen,
linktype}, then per packet a 16-byte record header {ts_sec, ts_usec,
incl_len, orig_len} and the bytes. We write little-endian, microsecond
timestamps, LINKTYPE_ETHERNET (1). The reader also takes big-endian files and
the nanosecond variant (magic 0xa1b23c4d) that tcpdump can write.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import BinaryIO

from hw.errors import MachineConfigError

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """Appends frames to a new capture file; safe to call from several threads."""

    def __init__(self, path: str | os.PathLike[str], *, snaplen: int = SNAPLEN) -> None:
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.frames = 0
        self._lock = threading.Lock()
        try:
            self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise MachineConfigError(f"pcap: cannot write {self.path}: {e.strerror}") from None
        self._f.write(_GLOBAL.pack(MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self._f.flush()

    def write(self, frame: bytes, ts: float | None = None) -> None:
        """Record one frame, stamped ``ts`` (seconds since the epoch; now by default)."""
        if ts is None:
            ts = time.time()
        usec_total = int(round(ts * 1_000_000))
        sec, usec = divmod(usec_total, 1_000_000)
        data = frame[: self.snaplen]
        with self._lock:
            if self._f is None:
                return
            self._f.write(_RECORD.pack(sec, usec, len(data), len(frame)) + bytes(data))
            self._f.flush()  # a crash or Ctrl-C keeps every frame recorded so far
            self.frames += 1

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def read_pcap(path: str | os.PathLike[str]) -> list[tuple[float, bytes]]:
    """Every record of a capture file as (timestamp in seconds, bytes); ValueError if malformed."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_pcap(data, os.fspath(path))


def parse_pcap(data: bytes, name: str = "pcap") -> list[tuple[float, bytes]]:
    if len(data) < _GLOBAL.size:
        raise MachineConfigError(f"{name}: too short for a pcap header ({len(data)} bytes)")
    for endian in "<>":
        magic = struct.unpack_from(endian + "I", data)[0]
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        raise MachineConfigError(f"{name}: not a classic pcap file (magic {data[:4].hex()})")
    scale = 1e-6 if magic == MAGIC_US else 1e-9
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise MachineConfigError(f"{name}: link type {linktype} is not Ethernet (1)")
    rec = struct.Struct(endian + "IIII")
    out: list[tuple[float, bytes]] = []
    off = _GLOBAL.size
    while off < len(data):
        if off + rec.size > len(data):
            raise MachineConfigError(f"{name}: truncated record header at offset {off}")
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += rec.size
        if off + incl > len(data):
            raise MachineConfigError(f"{name}: truncated record at offset {off - rec.size}")
        out.append((sec + frac * scale, data[off : off + incl]))
        off += incl
    return out
