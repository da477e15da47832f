"""TCP as the stack sees it: connections keyed by their 4-tuple, listeners with accept queues,
initial sequence numbers (RFC 6528), and the reset for segments to no socket (RFC 9293 3.10.7.1).

The TCP engine itself (the state machine, retransmission, windows) is the
pure ``Tcb`` of libos/net/tcp.py; this file is the glue around it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from libos.net import headers as h

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
EPHEMERAL_FIRST, EPHEMERAL_LAST = 49152, 65535  # RFC 6335 6: the dynamic ports
ISS_KEY = b"exo: fixed RFC 6528 key"  # RFC 6528 3 asks for a secret: fixed so runs repeat; see docs
BACKLOG_MAX = 128

Key = tuple[bytes, int, int]  # (remote ip, remote port, local port); the local address is the stack's


def iss(local_ip: bytes, lport: int, remote_ip: bytes, rport: int, now_ns: int) -> int:
    """RFC 6528 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey), M a 4 us clock."""
    data = local_ip + lport.to_bytes(2, "big") + remote_ip + rport.to_bytes(2, "big")
    f = int.from_bytes(hashlib.blake2s(data, key=ISS_KEY, digest_size=4).digest(), "big")
    return (now_ns // 4000 + f) & 0xFFFF_FFFF


class TcpConn:
    """One connection: its 4-tuple and its Tcb; ``listener`` until accepted (None for connect)."""

    __slots__ = ("key", "tcb", "listener", "queued", "shut_rd")

    def __init__(self, key: Key, tcb: Any, listener: Listener | None = None) -> None:
        self.key = key
        self.tcb = tcb
        self.listener = listener
        self.queued = False  # in its listener's accept queue
        self.shut_rd = False

    @property
    def remote(self) -> tuple[bytes, int]:
        return self.key[0], self.key[1]

    @property
    def lport(self) -> int:
        return self.key[2]


class Listener:
    """A listening port: connections being set up, and those established but not yet accepted."""

    __slots__ = ("port", "backlog", "pending", "queue", "closed")

    def __init__(self, port: int, backlog: int) -> None:
        self.port = port
        self.backlog = max(1, min(backlog, BACKLOG_MAX))
        self.pending: set[TcpConn] = set()  # SYN_RECEIVED
        self.queue: deque[TcpConn] = deque()  # established, for accept()
        self.closed = False

    @property
    def full(self) -> bool:
        return len(self.pending) + len(self.queue) >= self.backlog

    @property
    def readable(self) -> bool:
        return bool(self.queue)


def reset_for(sport: int, dport: int, seq: int, ack: int, flags: int, seg_len: int) -> tuple | None:
    """RFC 9293 3.10.7.1: the reset answering a segment to no connection, as
    (sport, dport, seq, ack, flags) from our side; None for a segment that is a reset itself."""
    if flags & RST:
        return None
    if flags & ACK:
        return (dport, sport, ack, 0, RST)
    seg_len += (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return (dport, sport, 0, (seq + seg_len) & 0xFFFF_FFFF, RST | ACK)


def segment_bytes(src: bytes, dst: bytes, seg: Any) -> bytes:
    """A tcp.Segment as TCP header + payload, with its checksum."""
    return h.tcp(src, dst, seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window, seg.payload,
                 seg.mss, h.tcp_options(seg.wscale, seg.sack_ok, seg.ts, seg.sacks))
