"""IPv4 fragment reassembly (RFC 791 3.2, with RFC 815's bookkeeping idea).

Fragments are grouped by (source, destination, protocol, identification)
(RFC 791 3.2). Each datagram keeps its fragments' [first, last) ranges: a
fragment that overlaps data already held is dropped (RFC 791 lets the later
copy overwrite; overlaps are how "teardrop" style attacks and ambiguous
reassembly start, RFC 1858 / RFC 5722 in spirit, so the first copy wins and an
exact duplicate from the network is harmless). Since ranges never overlap the
datagram is complete when the bytes held equal the length given by the last
fragment (the one with MF clear), without RFC 815's hole list.

Limits: a datagram may not grow beyond 65,535 bytes; one is dropped
TIMEOUT_NS after its first fragment (RFC 1122 3.3.2 recommends 60-120 s,
Linux uses 30 s); at most MAX_DATAGRAMS are in reassembly and MAX_BYTES held in
all, the oldest being dropped to make room (memory exhaustion by fragments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIMEOUT_NS = 30_000_000_000
MAX_DATAGRAMS = 64
MAX_BYTES = 256 * 1024
MAX_DATAGRAM = 65_535 - 20  # the payload of the largest IPv4 datagram (20-byte header)

Key = tuple[bytes, bytes, int, int]


@dataclass(slots=True)
class _Datagram:
    expires: int
    parts: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    held: int = 0
    total: int | None = None  # payload length, once the last fragment is in


class Reassembler:
    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.datagrams: dict[Key, _Datagram] = {}  # in arrival order of their first fragment
        self.bytes_held = 0

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def _drop(self, key: Key, why: str) -> None:
        d = self.datagrams.pop(key)
        self.bytes_held -= d.held
        self._count(why)

    def add(self, key: Key, offset: int, more: bool, data: bytes, now: int) -> bytes | None:
        """One fragment (offset in bytes): the whole payload once complete, else None."""
        # LAB 6 BEGIN reassemble: hold a fragment (refusing bad, overlapping or inconsistent ones within the limits), return the whole payload once complete
        end = offset + len(data)
        if end > MAX_DATAGRAM or (more and (not data or len(data) % 8)):
            self._count("frag_bad")  # RFC 791: all but the last fragment carry a multiple of 8 bytes
            return None
        d = self.datagrams.get(key)
        if d is None:
            while self.datagrams and (len(self.datagrams) >= MAX_DATAGRAMS
                                      or self.bytes_held + len(data) > MAX_BYTES):
                self._drop(next(iter(self.datagrams)), "frag_evicted")
            d = self.datagrams[key] = _Datagram(now + TIMEOUT_NS)
        elif self.bytes_held + len(data) > MAX_BYTES:
            self._count("frag_memory")
            return None
        if not more:
            if (d.total is not None and d.total != end) or any(o + len(p) > end for o, p in d.parts.items()):
                self._count("frag_inconsistent")
                return None
            d.total = end
        elif d.total is not None and end > d.total:
            self._count("frag_inconsistent")
            return None
        for o, p in d.parts.items():
            if o < end and offset < o + len(p):
                self._count("frag_duplicate" if (o == offset and p == data) else "frag_overlap")
                return None
        d.parts[offset] = data
        d.held += len(data)
        self.bytes_held += len(data)
        if d.total is None or d.held != d.total:
            return None
        del self.datagrams[key]
        self.bytes_held -= d.held
        self._count("frag_reassembled")
        return b"".join(d.parts[o] for o in sorted(d.parts))
        # LAB 6 END

    def timers(self, now: int) -> None:
        for key in [k for k, d in self.datagrams.items() if d.expires <= now]:
            self._drop(key, "frag_timeout")

    def next_timer(self) -> int | None:
        return min((d.expires for d in self.datagrams.values()), default=None)
