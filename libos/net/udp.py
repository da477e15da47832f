"""UDP sockets (RFC 768): a bound port and a queue of received datagrams."""

from __future__ import annotations

from collections import deque

RX_MAX = 128  # datagrams queued per socket before new ones are dropped (as a full socket buffer)

Address = tuple[bytes, int]  # (IPv4 address as 4 bytes, port)


class UdpSocket:
    __slots__ = ("port", "rx", "peer", "closed", "dropped")

    def __init__(self, port: int) -> None:
        self.port = port
        self.rx: deque[tuple[bytes, Address]] = deque()
        self.peer: Address | None = None  # connect(): the default destination and the only source accepted
        self.closed = False
        self.dropped = 0

    def deliver(self, data: bytes, src: Address) -> bool:
        """A datagram for this socket: False if it was dropped (queue full, or not from the peer)."""
        if self.peer is not None and src != self.peer:
            return False
        if len(self.rx) >= RX_MAX:
            self.dropped += 1
            return False
        self.rx.append((data, src))
        return True

    @property
    def readable(self) -> bool:
        return bool(self.rx)

    def recvfrom(self) -> tuple[bytes, Address] | None:
        return self.rx.popleft() if self.rx else None
