"""The user backend's TCP against an awkward guest: sequence and buffer bookkeeping under stress.

A scripted guest (``AwkwardGuest``) echoes every byte it accepts and does what
a legal but unhelpful peer may do: accepts only a prefix of a segment (a
partial ACK), changes and shrinks its window, closes it for a while (zero
window), sends its data in pieces out of order, overlapping each other and
duplicated, and repeats ACKs. The same guest drives the pure engine
(usertcp.GatewayTcp, simulated time, with loss and reordering both ways) and
the whole backend through a real host socket. Both directions are compared by
SHA-256: any skipped, repeated or shifted byte fails.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time

import pytest
from netpeer import pattern  # bytes with no short period: a shifted block cannot match by accident
from test_net_kit import ACK, PSH, SYN, arp, eth, parse, tcp
from test_net_user import G_MAC, GW, G, host_port, is_tcp, to_gw, user  # noqa: F401 - user: fixture

from hw.net.usertcp import GatewayTcp

MOD = 1 << 32
MSS = 1460


def sha(b: bytes | bytearray) -> str:
    return hashlib.sha256(b).hexdigest()


def unwrap(wire: int, near: int) -> int:
    d = (wire - near) % MOD
    return near + (d - MOD if d >= MOD // 2 else d)


class AwkwardGuest:
    """The guest's end of one connection: an echo server with legal but awkward habits.

    Sequence numbers are unbounded here and wrapped to 32 bits on the wire.
    Segments are tuples ``(seq, ack, flags, window, payload)`` with wire values.
    """

    def __init__(self, rnd: random.Random, iss: int, gw_syn_seq: int, now: float, stalls: float = 0.01,
                 partial: float = 0.25, resizes: float = 0.03) -> None:  # fmt: skip
        self.r = rnd
        self.stalls = stalls  # the chance, per output(), that the application stops reading for a while
        self.partial = partial  # the chance that a segment is accepted only in part
        self.resizes = resizes  # the chance, per output(), that the receive buffer changes size
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss + 1
        self.rcv_nxt = gw_syn_seq + 1
        self.out = bytearray()  # echo data from snd_una: unacknowledged, then unsent
        self.peer_right = self.snd_una  # the gateway's window edge
        self.cap = 65535  # our receive buffer: its size changes (the window shrinks too)
        self.held = 0  # accepted bytes the application has not read yet
        self.stall_until = 0.0  # the application does not read until then: the window closes
        self.progress_at = now
        self.need_ack = False
        self.got = bytearray()  # every byte accepted, in order

    def window(self) -> int:
        return max(0, min(65535, self.cap - self.held))

    def input(self, seq: int, ack: int, flags: int, window: int, payload: bytes, now: float) -> None:
        if flags & ACK:
            a = unwrap(ack, self.snd_una)
            if self.snd_una <= a <= self.snd_max:
                if a > self.snd_una:
                    del self.out[: a - self.snd_una]
                    self.snd_una = a
                    self.snd_nxt = max(self.snd_nxt, a)
                    self.progress_at = now
                self.peer_right = a + window
        if not payload:
            return
        self.need_ack = True
        s = unwrap(seq, self.rcv_nxt)
        if s <= self.rcv_nxt < s + len(payload):
            part = payload[self.rcv_nxt - s :]
            take = min(len(part), self.window())
            if take > 1 and self.r.random() < self.partial:
                take = self.r.randint(1, take - 1)  # keep only a prefix: the rest must come again
            self.got += part[:take]
            self.out += part[:take]
            self.held += take
            self.rcv_nxt += take

    def _seg(self, seq: int, payload: bytes = b"") -> tuple[int, int, int, int, bytes]:
        flags = ACK | (PSH if payload else 0)
        return (seq % MOD, self.rcv_nxt % MOD, flags, self.window(), bytes(payload))

    def output(self, now: float) -> list[tuple[int, int, int, int, bytes]]:
        r = self.r
        before = self.window()
        if now >= self.stall_until:  # the application reads some, or stops reading for a while
            if r.random() < self.stalls:
                self.stall_until = now + r.uniform(0.05, 0.4)
            elif self.held:
                self.held -= r.randint(0, self.held)
            if r.random() < self.resizes:
                self.cap = r.choice((65535, 65535, 30000, 8192, 1000))
        if self.window() > before:
            self.need_ack = True  # a window update
        segs = []
        data_end = self.snd_una + len(self.out)
        if self.snd_max > self.snd_una and now - self.progress_at > 0.3:
            self.snd_nxt = self.snd_una  # our timeout: go back N (a zero window gets a 1-byte probe)
            self.progress_at = now
            if self.peer_right <= self.snd_una:
                segs.append(self._seg(self.snd_una, self.out[:1]))
                self.snd_nxt = self.snd_una + 1
        elif self.snd_max == self.snd_una < data_end and self.peer_right <= self.snd_una:
            if now - self.progress_at > 0.3:  # persist: probe the gateway's zero window
                segs.append(self._seg(self.snd_una, self.out[:1]))
                self.snd_nxt = self.snd_max = self.snd_una + 1
                self.progress_at = now
        pieces = []
        right = min(data_end, self.peer_right)
        while self.snd_nxt < right and len(pieces) < 12:
            n = min(r.randint(1, MSS), right - self.snd_nxt)
            pieces.append((self.snd_nxt, n))
            self.snd_nxt += n
        self.snd_max = max(self.snd_max, self.snd_nxt)
        for s, n in list(pieces):
            if r.random() < 0.15:  # an overlapping copy, starting earlier and ending later
                s2 = max(self.snd_una, s - r.randint(0, 300))
                e2 = min(self.snd_max, s + n + r.randint(0, 300), s2 + MSS)
                pieces.append((s2, e2 - s2))
            if r.random() < 0.05:
                pieces.append((s, n))  # a duplicate
        if r.random() < 0.3:
            r.shuffle(pieces)  # out of order
        for s, n in pieces:
            off = s - self.snd_una
            segs.append(self._seg(s, self.out[off : off + n]))
        if self.need_ack and not segs or r.random() < 0.03:
            segs.append(self._seg(self.snd_nxt))  # an ACK, sometimes a duplicate one
        self.need_ack = False
        return segs


@pytest.mark.parametrize(("seed", "loss"), [(1, 0.0), (2, 0.0), (3, 0.05), (4, 0.05)])
def test_gateway_tcp_echo_with_an_awkward_guest(seed: int, loss: float) -> None:
    """The pure engine, 1 MiB echoed (both ways), sequence numbers wrapping early on both sides."""
    r = random.Random(seed)
    n = 1 << 20
    data = pattern(n, seed)
    now = 0.0
    gw = GatewayTcp(iss=MOD - 3000, now=now)
    syn = gw.output(now)[0]
    guest = AwkwardGuest(r, MOD - 7000, syn.seq, now)
    gw.input(guest.iss % MOD, (syn.seq + 1) % MOD, SYN | ACK, 65535, b"", MSS, now)
    sent, back, host_stall = 0, bytearray(), 0.0
    while len(back) < n and now < 120:
        now += 0.005
        if sent < n:
            sent += gw.send(data[sent : sent + r.randint(1, 100_000)])
        if now >= host_stall and gw.to_host:
            if r.random() < 0.01:
                host_stall = now + r.uniform(0.05, 0.4)  # the host stops reading: the gateway's window closes
            else:
                k = r.randint(1, len(gw.to_host))
                back += gw.to_host[:k]
                gw.consumed(k)
        down = gw.output(now)
        if r.random() < 0.2:
            r.shuffle(down)
        for o in down:
            if r.random() >= loss:
                guest.input(o.seq, o.ack, o.flags, o.window, o.payload, now)
        up = guest.output(now)
        for seq, ack, flags, window, payload in up:
            if r.random() >= loss:
                gw.input(seq, ack, flags, window, payload, None, now)
        assert gw.error is None
    assert len(guest.got) >= len(back)
    assert sha(guest.got[:n]) == sha(data), "gateway -> guest stream differs"
    assert sha(back) == sha(data), f"guest -> gateway stream differs ({len(back)} bytes back)"


def test_user_backend_echo_1mib_with_an_awkward_guest(user) -> None:  # noqa: F811 - the fixture
    """1 MiB through a real host socket, echoed by the awkward guest over the backend's frames."""
    nic = user("user,hostfwd=tcp::0-:80")
    n = 1 << 20
    data = pattern(n, 9)
    client = socket.create_connection(("127.0.0.1", host_port(nic)), timeout=10)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = random.Random(11)
    guest: AwkwardGuest | None = None
    back = bytearray()
    errors: list[str] = []

    def host_send() -> None:
        try:
            client.sendall(data)
        except OSError as e:
            errors.append(str(e))

    def host_recv() -> None:
        try:
            while len(back) < n:
                chunk = client.recv(r.choice((100, 4096, 65536)))
                if not chunk:
                    return
                back.extend(chunk)
        except OSError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=f, daemon=True) for f in (host_send, host_recv)]
    for t in threads:
        t.start()
    port = 0
    end = time.monotonic() + 30
    try:
        while len(back) < n and time.monotonic() < end and not errors:
            nic.wait(0.002)
            now = time.monotonic()
            for f in nic.receive():
                p = parse(f)
                if p.etype == 0x0806 and p.arp_op == 1 and p.tpa == G:
                    nic.transmit(eth(p.src, G_MAC, 0x0806, arp(2, G_MAC, G, p.sha, p.spa)))
                elif is_tcp(p) and p.ok:
                    if p.flags & SYN:
                        if guest is None:
                            port = p.sport
                            guest = AwkwardGuest(
                                r, 5000, p.seq, now, stalls=0.001, partial=0.05, resizes=0.003
                            )
                        nic.transmit(to_gw(6, tcp(G, GW, 80, port, guest.iss, p.seq + 1, SYN | ACK, mss=MSS)))
                    elif guest is not None:
                        guest.input(p.seq, p.ack, p.flags, p.window, p.data, now)
            if guest is not None:
                for seq, ack, flags, window, payload in guest.output(now):
                    nic.transmit(to_gw(6, tcp(G, GW, 80, port, seq, ack, flags, payload, window)))
        assert not errors, errors
        assert guest is not None and len(back) == n, f"stuck at {len(back)} bytes"
        assert sha(guest.got[:n]) == sha(data), "host -> guest stream differs"
        assert sha(back) == sha(data), "guest -> host stream differs"
        assert nic.backend.stats["bad_frames"] == 0
    finally:
        client.close()
        for t in threads:
            t.join(2)
