"""The GDB Remote Serial Protocol packet layer (gdb manual, Appendix E "Overview").

A packet is ``$data#cc``: ``cc`` is the sum of the data bytes modulo 256 in two hex digits.
The receiver answers ``+`` (good) or ``-`` (bad checksum: send it again) unless no-ack mode
was agreed (QStartNoAckMode). A lone 0x03 byte outside a packet is an interrupt (Ctrl-C).
In binary data (``X``) and replies, ``}`` escapes the next byte, XORed with 0x20. This
module never raises on bad input: a bad checksum is NAKed, a packet over the size limit
is dropped with a NAK, stray bytes between packets are ignored.
"""

from __future__ import annotations

from collections import deque

PACKET_SIZE = 0x4000  # what qSupported announces (PacketSize): the largest packet we accept
ESCAPE, INTERRUPT = 0x7D, 0x03
_MUST_ESCAPE = frozenset(b"$#}*")  # '*' starts run-length encoding: never send it raw


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(data: bytes) -> bytes:
    """``data`` (already escaped where needed) as a packet on the wire."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in _MUST_ESCAPE:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Binary data of an ``X`` packet: ``}`` x means x ^ 0x20. A trailing lone ``}`` is dropped."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class Decoder:
    """Feed bytes as they arrive; take out events: ("packet", data), ("interrupt", None),
    ("ack", None), ("nak", None). ``replies`` collects what must be written back (acks)."""

    _IDLE, _DATA, _SUM1, _SUM2 = range(4)

    def __init__(self, max_size: int = PACKET_SIZE) -> None:
        self.max_size = max_size
        self.ack = True  # False after QStartNoAckMode
        self.events: deque[tuple[str, bytes | None]] = deque()
        self.replies = bytearray()
        self.bad_packets = 0  # checksum mismatches and oversized packets, for tests and stats
        self._state = self._IDLE
        self._buf = bytearray()
        self._sum = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        for b in data:
            st = self._state
            if st == self._IDLE:
                if b == 0x24:  # '$'
                    self._state, self._overflow = self._DATA, False
                    self._buf.clear()
                elif b == INTERRUPT:
                    self.events.append(("interrupt", None))
                elif b == 0x2B:  # '+'
                    self.events.append(("ack", None))
                elif b == 0x2D:  # '-'
                    self.events.append(("nak", None))
                # anything else between packets is line noise: ignored
            elif st == self._DATA:
                if b == 0x23:  # '#'
                    self._state = self._SUM1
                    self._sum.clear()
                elif b == 0x24:  # '$' inside a packet: the sender restarted it
                    self._buf.clear()
                    self._overflow = False
                elif len(self._buf) >= self.max_size:
                    self._overflow = True
                else:
                    self._buf.append(b)
            else:
                self._sum.append(b)
                if st == self._SUM1:
                    self._state = self._SUM2
                else:
                    self._state = self._IDLE
                    self._finish()

    def _finish(self) -> None:
        data = bytes(self._buf)
        try:
            good = int(self._sum.decode("ascii"), 16) == checksum(data)
        except (UnicodeDecodeError, ValueError):
            good = False
        if self._overflow or (self.ack and not good):
            self.bad_packets += 1
            if self.ack:
                self.replies += b"-"
            return
        if self.ack:
            self.replies += b"+"
        self.events.append(("packet", data))

    @property
    def mid_packet(self) -> bool:
        """A packet has started and not ended (a disconnect now loses it)."""
        return self._state != self._IDLE
