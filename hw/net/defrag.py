"""IPv4 reassembly for the user backend's gateway: a guest's fragmented datagram becomes one frame.

The guest's stack sends a UDP datagram or ICMP message larger than the MTU as
fragments (RFC 791 3.2); the gateway forwards whole datagrams to host sockets,
so it puts them back together first. Fragments are grouped by (source,
destination, protocol, identification) (RFC 791 3.2). A fragment that overlaps
data already held, or disagrees with the datagram's known length, throws the
whole datagram away (RFC 5722 makes the same choice for IPv6: overlaps are how
reassembly attacks start). Limits against fragment floods: a datagram waits at
most TIMEOUT seconds for its fragments (Linux's ipfrag_time is 30 s), at most
MAX_DATAGRAMS are in reassembly and MAX_BYTES held in all (the oldest datagram
is dropped to make room), and no datagram may exceed IPv4's 65,535 bytes.

The guest's own stack has a reassembler too (libos/net/ip.py); this one lives
in hw, which may not import the library OS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hw.net import packets as pk

TIMEOUT = 30.0
MAX_DATAGRAMS = 64
MAX_BYTES = 256 * 1024
_IP = struct.Struct("!BBHHHBBH4s4s")
MF, OFFMASK = 0x2000, 0x1FFF


@dataclass
class _Datagram:
    started: float
    header: bytes  # the first fragment's Ethernet header
    parts: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    held: int = 0
    total: int | None = None  # payload length, once the last fragment is in


class Defragmenter:
    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.datagrams: dict[tuple[bytes, bytes, int, int], _Datagram] = {}  # oldest first
        self.bytes_held = 0

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _drop(self, key: tuple[bytes, bytes, int, int], why: str) -> None:
        d = self.datagrams.pop(key)
        self.bytes_held -= d.held
        self._count(why)

    def push(self, frame: bytes, now: float) -> bytes | None:
        """``frame`` itself when it is not an IPv4 fragment; None while its datagram is incomplete
        (or the fragment was refused); the whole datagram as one frame once it is complete."""
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return frame
        vihl, _tos, total, ident, frag, _ttl, proto, _c, src, dst = _IP.unpack_from(frame, 14)
        if not frag & (MF | OFFMASK):
            return frame
        ihl = (vihl & 0xF) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or 14 + total > len(frame) or pk.checksum(frame[14:14 + ihl]):
            return frame  # malformed: parse() drops and counts it
        self._count("fragments")
        for key in [k for k, d in self.datagrams.items() if now - d.started > TIMEOUT]:
            self._drop(key, "frag_timeout")
        offset, more, data = (frag & OFFMASK) * 8, bool(frag & MF), frame[14 + ihl:14 + total]
        end = offset + len(data)
        key = (src, dst, proto, ident)
        if end > 65_535 - ihl or (more and (not data or len(data) % 8)):
            self._count("frag_bad")
            return None
        d = self.datagrams.get(key)
        if d is None:
            while len(self.datagrams) >= MAX_DATAGRAMS:
                self._drop(next(iter(self.datagrams)), "frag_evicted")
            d = self.datagrams[key] = _Datagram(now, frame[:14])
        while self.bytes_held + len(data) > MAX_BYTES:
            oldest = next(iter(self.datagrams))
            self._drop(oldest, "frag_evicted")
            if oldest == key:
                return None
        if (not more and d.total not in (None, end)) or (d.total is not None and end > d.total) \
                or (not more and any(o + len(p) > end for o, p in d.parts.items())) \
                or any(o < end and offset < o + len(p) for o, p in d.parts.items()):
            self._drop(key, "frag_overlap")
            return None
        if not more:
            d.total = end
        d.parts[offset] = data
        d.held += len(data)
        self.bytes_held += len(data)
        if d.total is None or d.held != d.total:
            return None
        del self.datagrams[key]
        self.bytes_held -= d.held
        self._count("reassembled")
        return d.header + pk.ipv4(src, dst, proto, b"".join(d.parts[o] for o in sorted(d.parts)), ident)
