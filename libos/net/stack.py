"""A pure TCP/IP stack for one host: Ethernet, ARP, IPv4, ICMP, UDP and TCP sockets.

No exokernel here: a Stack is given its addresses, a ``transmit(frames)``
callback and a clock ``now()`` (ns), is fed received frames with ``input``,
and is driven by ``poll`` when ``next_timer()`` has passed. libos/net/__init__.py
connects it to the exokernel's NIC ring; the tests join two stacks with a
list. Every frame that cannot be used (truncated, bad checksum, impossible
lengths, not for this host) is dropped and counted in ``stats``; ``input``
never raises.

A UDP datagram or ICMP message larger than the MTU is sent as IPv4 fragments
(``ip_send``; up to 65,507 bytes of data, IPv4's limit); TCP sets DF and keeps
its segments within the MSS. Received fragments are reassembled
(libos/net/ip.py). Packets to the host's own address are looped back inside
the stack whole (no frame leaves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from libos.net import headers as h
from libos.net import icmp
from libos.net.arp import ArpCache
from libos.net.ip import Reassembler
from libos.net.linux import (
    EADDRINUSE,
    EADDRNOTAVAIL,
    EINVAL,
    EMSGSIZE,
    ENETUNREACH,
    NetError,
)
from libos.net.tcpconn import (
    ACK,
    EPHEMERAL_FIRST,
    EPHEMERAL_LAST,
    RST,
    SYN,
    Listener,
    TcpConn,
    iss,
    reset_for,
    segment_bytes,
)
from libos.net.udp import UdpSocket

TTL = 64  # RFC 1700 / RFC 1122 3.2.1.7 default
DATAGRAM_MAX = 65_535 - h.IP_HLEN - h.UDP_HLEN  # 65,507: the most data one IPv4 datagram carries (UDP, ICMP echo)
LOOP_MAX = 10_000  # looped-back packets handled per call: a reset ping-pong cannot hang the host


def _tcp_module():
    """libos/net/tcp.py (helper A's engine), imported when TCP is first used."""
    from libos.net import tcp

    return tcp


TSO_MAX = 65_535 - h.IP_HLEN - h.TCP_HLEN - 40  # payload of one TSO segment (IPv4's limit, options)


def _tso_merge(segs: list, mss: int) -> list:
    """Runs of full-sized data segments that follow each other (as one ``output`` sends a
    window's worth) as one large segment, for the NIC to cut again (TSO): the same ACK,
    window and timestamps; PSH and FIN may only end a run."""
    out: list = []
    for seg in segs:
        prev = out[-1] if out else None
        if (prev is not None and seg.payload and prev.payload and not seg.flags & (SYN | RST)
                and prev.flags == ACK and len(prev.payload) % mss == 0 and not prev.sacks and not seg.sacks
                and seg.seq == (prev.seq + len(prev.payload)) & 0xFFFFFFFF and seg.ack == prev.ack
                and seg.window == prev.window and seg.ts == prev.ts
                and len(prev.payload) + len(seg.payload) <= TSO_MAX):
            out[-1] = type(seg)(prev.sport, prev.dport, prev.seq, prev.ack, seg.flags, prev.window,
                                prev.payload + seg.payload, ts=prev.ts)
        else:
            out.append(seg)
    return out


class Stack:
    def __init__(self, mac: bytes | str, ip: bytes | str, netmask: bytes | str, gateway: bytes | str,
                 mtu: int = 1500, transmit: Callable[[list[bytes]], None] | None = None,
                 now: Callable[[], int] | None = None) -> None:
        self.mac = h.mac_bytes(mac)
        self.ip = h.ip_bytes(ip)
        self.netmask = h.ip_bytes(netmask)
        self.gateway = h.ip_bytes(gateway)
        self.mtu = mtu
        self.mss = mtu - h.IP_HLEN - h.TCP_HLEN
        self.tso = False  # the NIC cuts large TCP segments (hw/net/offload.py): send up to 64 KiB at once
        self._verified = False  # the frame being input had its checksums verified by the NIC
        self._transmit = transmit or (lambda frames: None)
        self._now = now or time.monotonic_ns
        self.stats: dict[str, int] = {}
        self.arp = ArpCache(self.mac, self.ip, self.stats)
        self.reasm = Reassembler(self.stats)
        self.udp: dict[int, UdpSocket] = {}
        # Other stacks answer for this host's address too (a Linux app's processes: libos/posix):
        # looped-back packets no socket here takes go out on the wire for them (flush).
        self.share_host = False
        self.conns: dict[tuple[bytes, int, int], TcpConn] = {}
        self.listeners: dict[int, Listener] = {}
        self.echo_replies: list[tuple[bytes, int, int, bytes]] = []  # (from, id, seq, data), for ping
        self.ident = 0
        self.next_ephemeral = EPHEMERAL_FIRST
        self._out: list[bytes] = []
        self._loop: list[bytes] = []
        self.last_error = ""
        self._mask = int.from_bytes(self.netmask, "big")
        net = int.from_bytes(self.ip, "big") & self._mask
        self._broadcasts = {b"\xff\xff\xff\xff", (net | (~self._mask & 0xFFFFFFFF)).to_bytes(4, "big")}

    # ---------------------------------------------------------------- plumbing
    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def now(self) -> int:
        return self._now()

    def flush(self) -> None:
        """Loop back packets to ourselves, then hand every frame queued by this operation to transmit."""
        n = 0
        while self._loop and n < LOOP_MAX:
            packet = self._loop.pop(0)
            n += 1
            if self._for_a_sibling(packet):
                # No socket of this stack takes it: another environment of the same host (app)
                # may (two processes of one Linux program, each with its own stack, talking over
                # the host's address): it goes out to our own MAC, and the exokernel's filters
                # hand it to the environment that claimed the port (exo/net.py).
                for piece in (h.fragment(packet, self.mtu) if len(packet) > self.mtu else [packet]):
                    self._out.append(h.ethernet(self.mac, self.mac, h.ETH_P_IP, piece))
                continue
            self._guarded(self._ip_input, packet, self.now())
        if self._loop:
            self.count("loopback_dropped", len(self._loop))
            self._loop.clear()
        if self._out:
            frames, self._out = self._out, []
            self._transmit(frames)

    def _for_a_sibling(self, packet: bytes) -> bool:
        """A looped-back TCP or UDP packet no socket here would take (see flush)."""
        if len(packet) < 24 or packet[9] not in (h.IPPROTO_TCP, h.IPPROTO_UDP) or not self.share_host:
            return False
        ihl = (packet[0] & 0xF) * 4
        if len(packet) < ihl + 4:
            return False
        sport, dport = int.from_bytes(packet[ihl:ihl + 2], "big"), int.from_bytes(packet[ihl + 2:ihl + 4], "big")
        if packet[9] == h.IPPROTO_UDP:
            return dport not in self.udp
        return (packet[12:16], sport, dport) not in self.conns and dport not in self.listeners

    def _same_subnet(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") ^ int.from_bytes(self.ip, "big")) & self._mask == 0

    def ip_output(self, dst: bytes, proto: int, payload: bytes, now: int, *, df: bool = False) -> None:
        """Send one IPv4 packet (never fragmented: callers keep within the MTU)."""
        # LAB 6 BEGIN ip-output: build the IPv4 packet and route it: to ourselves, broadcast, or ARP for the next hop
        self.ident = (self.ident + 1) & 0xFFFF
        packet = h.ipv4(self.ip, dst, proto, payload, self.ident, ttl=TTL, df=df)
        self.count("ip_sent")
        if dst == self.ip:
            self._loop.append(packet)
            return
        if dst in self._broadcasts:
            self._out.append(h.ethernet(h.BROADCAST_MAC, self.mac, h.ETH_P_IP, packet))
            return
        hop = dst if self._same_subnet(dst) else self.gateway
        self._out += self.arp.resolve(hop, h.ETH_P_IP, packet, now)
        # LAB 6 END

    def ip_send(self, dst: bytes, proto: int, payload: bytes, now: int) -> None:
        """Send ``payload`` to ``dst``: one packet (``ip_output``) when it fits the MTU or stays
        in this host, else the packet's fragments (headers.fragment), each routed as a packet."""
        if h.IP_HLEN + len(payload) <= self.mtu or dst == self.ip:
            self.ip_output(dst, proto, payload, now)
            return
        self.ident = (self.ident + 1) & 0xFFFF
        pieces = h.fragment(h.ipv4(self.ip, dst, proto, payload, self.ident, ttl=TTL), self.mtu)
        self.count("ip_sent")
        self.count("ip_fragments_sent", len(pieces))
        if dst in self._broadcasts:
            self._out += [h.ethernet(h.BROADCAST_MAC, self.mac, h.ETH_P_IP, p) for p in pieces]
            return
        hop = dst if self._same_subnet(dst) else self.gateway
        for p in pieces:
            self._out += self.arp.resolve(hop, h.ETH_P_IP, p, now)

    # ---------------------------------------------------------------- input
    def input(self, frame: bytes, now: int | None = None, verified: bool = False) -> None:
        """One received Ethernet frame (``verified``: the NIC checked its TCP checksum, which a
        merged frame no longer has). Anything unusable is dropped and counted; never raises."""
        now = self.now() if now is None else now
        self._verified = verified
        try:
            self._guarded(self._eth_input, bytes(frame), now)
        finally:
            self._verified = False
        self.flush()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a stack bug must not take the host down: count it
            self.count("input_errors")
            self.last_error = f"{type(e).__name__}: {e}"

    def _eth_input(self, frame: bytes, now: int) -> None:
        self.count("rx_frames")
        if len(frame) < h.ETH_HLEN:
            self.count("eth_truncated")
            return
        dst, _src, ethertype = h.ETH.unpack_from(frame)
        if dst != self.mac and dst != h.BROADCAST_MAC:
            self.count("eth_not_for_us")
            return
        if ethertype == h.ETH_P_ARP:
            self._out += self.arp.input(frame[h.ETH_HLEN:], now)
        elif ethertype == h.ETH_P_IP:
            self._ip_input(frame[h.ETH_HLEN:], now)
        else:
            self.count("eth_unknown_type")

    def _ip_input(self, packet: bytes, now: int) -> None:
        # LAB 6 BEGIN ip-input: validate a received IPv4 header (RFC 791, RFC 1122 3.2.1), reassemble, hand it to its protocol
        if len(packet) < h.IP_HLEN:
            self.count("ip_truncated")
            return
        vihl, _tos, total, ident, frag, _ttl, proto, _c, src, dst = h.IP.unpack_from(packet)
        hlen = (vihl & 0xF) * 4
        if vihl >> 4 != 4 or hlen < h.IP_HLEN or total < hlen or total > len(packet):
            self.count("ip_bad_header")
            return
        if h.checksum(packet[:hlen]):
            self.count("ip_bad_checksum")
            return
        broadcast = dst in self._broadcasts
        if dst != self.ip and not broadcast:
            self.count("ip_not_for_us")
            return
        if src in self._broadcasts or src[0] >= 224:
            self.count("ip_bad_source")
            return
        header, payload = packet[:hlen], packet[hlen:total]  # options skipped; Ethernet padding cut
        if frag & (h.IP_MF | h.IP_OFFMASK):
            whole = self.reasm.add((src, dst, proto, ident), (frag & h.IP_OFFMASK) * 8, bool(frag & h.IP_MF),
                                   payload, now)
            if whole is None:
                return
            payload = whole
        self.count("ip_received")
        if proto == h.IPPROTO_TCP:
            self._tcp_input(src, dst, header, payload, broadcast, now)
        elif proto == h.IPPROTO_UDP:
            self._udp_input(src, dst, header, payload, broadcast, now)
        elif proto == h.IPPROTO_ICMP:
            self._icmp_input(src, payload, broadcast, now)
        else:
            self.count("ip_unknown_protocol")  # (RFC 1122 3.2.2.1 would send protocol unreachable)
        # LAB 6 END

    # ---------------------------------------------------------------- ICMP
    def _icmp_input(self, src: bytes, msg: bytes, broadcast: bool, now: int) -> None:
        if len(msg) < h.ICMP_HLEN:
            self.count("icmp_truncated")
            return
        if h.checksum(msg):
            self.count("icmp_bad_checksum")
            return
        type_, code, _c, ident, seq = h.ICMP.unpack_from(msg)
        if type_ == h.ICMP_ECHO:
            if broadcast:
                self.count("icmp_broadcast_echo_ignored")  # RFC 1122 3.2.2.6 lets a host ignore these
                return
            self.count("icmp_echo_answered")
            self.ip_send(src, h.IPPROTO_ICMP, icmp.echo_reply(msg), now)
        elif type_ == h.ICMP_ECHO_REPLY:
            self.count("icmp_echo_replies")
            self.echo_replies.append((src, ident, seq, msg[8:]))
            del self.echo_replies[:-64]
        elif type_ == h.ICMP_UNREACH:
            self.count(f"icmp_unreachable_{code}")
        else:
            self.count("icmp_other")

    def ping(self, dst: bytes | str, ident: int, seq: int, data: bytes = b"") -> None:
        """Send an ICMP echo request; replies are appended to ``echo_replies``."""
        if len(data) > DATAGRAM_MAX:
            raise NetError(EMSGSIZE)
        rest = ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
        self.ip_send(h.ip_bytes(dst), h.IPPROTO_ICMP, h.icmp(h.ICMP_ECHO, 0, rest, data), self.now())
        self.flush()

    # ---------------------------------------------------------------- UDP
    def _udp_input(self, src: bytes, dst: bytes, header: bytes, seg: bytes, broadcast: bool, now: int) -> None:
        # LAB 6 BEGIN udp-input: check a datagram's length and checksum, deliver it to its port or answer port unreachable
        if len(seg) < h.UDP_HLEN:
            self.count("udp_truncated")
            return
        sport, dport, length, csum = h.UDP.unpack_from(seg)
        if length < h.UDP_HLEN or length > len(seg):
            self.count("udp_bad_length")
            return
        seg = seg[:length]
        if csum and h.l4_checksum(src, dst, h.IPPROTO_UDP, seg):  # RFC 768: 0 means no checksum
            self.count("udp_bad_checksum")
            return
        sock = self.udp.get(dport)
        if sock is None:
            self.count("udp_no_port")
            if icmp.may_answer_with_error(src, broadcast):
                self.count("icmp_port_unreachable_sent")
                self.ip_output(src, h.IPPROTO_ICMP, icmp.port_unreachable(header, seg), now)
            return
        if sock.deliver(seg[h.UDP_HLEN:], (src, sport)):
            self.count("udp_delivered")
        else:
            self.count("udp_socket_dropped")
        # LAB 6 END

    def _free_udp_port(self) -> int:
        return self.ephemeral(lambda p: p in self.udp)

    def ephemeral(self, used: Callable[[int], bool]) -> int:
        """The next free port of 49152..65535, in order (deterministic, RFC 6056 3.3.1's simple counter)."""
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        for _ in range(span):
            p = self.next_ephemeral
            self.next_ephemeral = EPHEMERAL_FIRST + (p + 1 - EPHEMERAL_FIRST) % span
            if not used(p):
                return p
        raise NetError(EADDRINUSE, "no free ephemeral port")

    def udp_bind(self, port: int = 0) -> UdpSocket:
        if not 0 <= port <= 0xFFFF:
            raise NetError(EINVAL)
        if port == 0:
            port = self._free_udp_port()
        elif port in self.udp:
            raise NetError(EADDRINUSE)
        sock = self.udp[port] = UdpSocket(port)
        return sock

    def udp_close(self, sock: UdpSocket) -> None:
        sock.closed = True
        if self.udp.get(sock.port) is sock:
            del self.udp[sock.port]

    def udp_sendto(self, sock: UdpSocket, data: bytes, dst: bytes, dport: int) -> int:
        if len(data) > DATAGRAM_MAX:
            raise NetError(EMSGSIZE)
        if not 0 < dport <= 0xFFFF or dst == b"\0\0\0\0":
            raise NetError(EINVAL if dport else EADDRNOTAVAIL)
        self.count("udp_sent")
        self.ip_send(dst, h.IPPROTO_UDP, h.udp(self.ip, dst, sock.port, dport, data), self.now())
        self.flush()
        return len(data)

    # ---------------------------------------------------------------- TCP
    def _tcp_input(self, src: bytes, dst: bytes, header: bytes, seg: bytes, broadcast: bool, now: int) -> None:
        if len(seg) < h.TCP_HLEN:
            self.count("tcp_truncated")
            return
        sport, dport, seq, ack, off, flags, window, _c, _urg = h.TCP.unpack_from(seg)
        doff = (off >> 4) * 4
        if doff < h.TCP_HLEN or doff > len(seg):
            self.count("tcp_bad_offset")
            return
        if broadcast or sport == 0 or dport == 0:
            self.count("tcp_bad_address")  # RFC 9293 3.10.7.2: no connection from a broadcast
            return
        if not self._verified and h.l4_checksum(src, dst, h.IPPROTO_TCP, seg):
            self.count("tcp_bad_checksum")
            return
        payload = seg[doff:]
        key = (src, sport, dport)
        conn = self.conns.get(key)
        lst = self.listeners.get(dport)
        if conn is not None or (lst is not None and flags & (SYN | ACK | RST) == SYN):
            tcp = _tcp_module()  # (no connection or listener can exist without it)
            segment = tcp.Segment(sport, dport, seq, ack, flags, window, payload)
            if doff > h.TCP_HLEN:
                o = h.parse_tcp_options(seg[h.TCP_HLEN:doff])
                segment.ts, segment.sacks = o.ts, o.sacks
                if flags & SYN:
                    segment.mss, segment.wscale, segment.sack_ok = o.mss, o.wscale, o.sack_ok
        if conn is not None:
            self.count("tcp_segments")
            conn.tcb.input(segment, now)
            self._tcp_out(conn, now)
            return
        if lst is not None and flags & (SYN | ACK | RST) == SYN:
            if lst.full:
                self.count("tcp_syn_backlog_full")  # dropped: the peer retransmits its SYN
                return
            self.count("tcp_syn_accepted")
            tcb = tcp.Tcb.accept_syn(segment, iss=iss(self.ip, dport, src, sport, now), now=now, mss=self.mss)
            conn = self.conns[key] = TcpConn(key, tcb, lst)
            lst.pending.add(conn)
            self._tcp_out(conn, now)
            return
        # RFC 9293 3.10.7.1 (no connection) and 3.10.7.2 (LISTEN: an ACK gets a reset too).
        self.count("tcp_no_socket")
        rst = reset_for(sport, dport, seq, ack, flags, len(payload))
        if rst is not None:
            self.count("tcp_resets_sent")
            self.ip_output(src, h.IPPROTO_TCP, h.tcp(self.ip, src, *rst, 0), now, df=True)

    def _tcp_out(self, conn: TcpConn, now: int) -> None:
        """Transmit what the Tcb wants to send, then move it along its life (accept queue, freed)."""
        tcb = conn.tcb
        rip = conn.key[0]
        segs = tcb.output(now)
        self.count("tcp_segments_sent", len(segs))
        if self.tso and len(segs) > 1:
            n = len(segs)
            segs = _tso_merge(segs, tcb.eff_mss)
            if len(segs) < n:
                self.count("tso_merged", n - len(segs))
        for seg in segs:
            self.ip_output(rip, h.IPPROTO_TCP, segment_bytes(self.ip, rip, seg), now, df=True)
        lst = conn.listener
        if lst is not None and not conn.queued:
            if tcb.established and tcb.error is None:
                lst.pending.discard(conn)
                if lst.closed:
                    tcb.abort(now)
                    conn.listener = None
                    self._tcp_out(conn, now)
                    return
                conn.queued = True
                lst.queue.append(conn)
            elif tcb.error is not None or tcb.state == "CLOSED" or tcb.finished:
                lst.pending.discard(conn)  # failed before it was established: nobody will accept it
                conn.listener = None
        if tcb.finished and self.conns.get(conn.key) is conn:
            del self.conns[conn.key]

    def gso_size(self, frame: bytes) -> int:
        """The segment size to cut a large TCP frame of ours at: its connection's MSS."""
        ihl = (frame[14] & 0xF) * 4
        sport = int.from_bytes(frame[14 + ihl:16 + ihl], "big")
        dport = int.from_bytes(frame[16 + ihl:18 + ihl], "big")
        conn = self.conns.get((frame[30:34], dport, sport))
        return conn.tcb.eff_mss if conn is not None else self.mss - 12

    def tcp_port_used(self, port: int) -> bool:
        return port in self.listeners or any(k[2] == port for k in self.conns)

    def tcp_listen(self, port: int, backlog: int) -> Listener:
        if not 0 <= port <= 0xFFFF:
            raise NetError(EINVAL)
        if port == 0:
            port = self.ephemeral(self.tcp_port_used)
        elif port in self.listeners:
            raise NetError(EADDRINUSE)
        lst = self.listeners[port] = Listener(port, backlog)
        return lst

    def tcp_accept(self, lst: Listener) -> TcpConn | None:
        """The oldest established connection not yet accepted (None: none)."""
        if not lst.queue:
            return None
        conn = lst.queue.popleft()
        conn.listener = None
        conn.queued = False
        return conn

    def tcp_close_listener(self, lst: Listener) -> None:
        """Stop listening: connections not yet accepted are reset (as Linux does)."""
        lst.closed = True
        if self.listeners.get(lst.port) is lst:
            del self.listeners[lst.port]
        now = self.now()
        for conn in list(lst.pending) + list(lst.queue):
            conn.listener = None
            conn.tcb.abort(now)
            self._tcp_out(conn, now)
        lst.pending.clear()
        lst.queue.clear()
        self.flush()

    def tcp_connect(self, dst: bytes | str, dport: int, lport: int = 0) -> TcpConn:
        dst = h.ip_bytes(dst)
        if not 0 < dport <= 0xFFFF or dst == b"\0\0\0\0" or dst in self._broadcasts or dst[0] >= 224:
            raise NetError(ENETUNREACH if dport else EINVAL)
        if lport == 0:
            lport = self.ephemeral(self.tcp_port_used)
        elif (dst, dport, lport) in self.conns:
            raise NetError(EADDRNOTAVAIL)
        now = self.now()
        tcb = _tcp_module().Tcb.connect(lport, dport, iss=iss(self.ip, lport, dst, dport, now), now=now,
                                        mss=self.mss)
        conn = self.conns[(dst, dport, lport)] = TcpConn((dst, dport, lport), tcb)
        self._tcp_out(conn, now)
        self.flush()
        return conn

    def tcp_send(self, conn: TcpConn, data: bytes) -> int:
        now = self.now()
        n = conn.tcb.send(data, now)
        self._tcp_out(conn, now)
        self.flush()
        return n

    def tcp_recv(self, conn: TcpConn, n: int) -> bytes:
        now = self.now()
        data = conn.tcb.recv(n)
        self._tcp_out(conn, now)  # the window opened: the Tcb may want to say so
        self.flush()
        return data

    def tcp_close(self, conn: TcpConn) -> None:
        now = self.now()
        conn.tcb.close(now)
        self._tcp_out(conn, now)
        self.flush()

    def tcp_abort(self, conn: TcpConn) -> None:
        now = self.now()
        conn.tcb.abort(now)
        self._tcp_out(conn, now)
        self.flush()

    # ---------------------------------------------------------------- timers
    def next_timer(self) -> int | None:
        """The absolute time (ns) the stack must be polled at, None if nothing is timed."""
        times = [t for t in (self.arp.next_timer(), self.reasm.next_timer()) if t is not None]
        for conn in self.conns.values():
            t = conn.tcb.next_timer()
            if t is not None:
                times.append(t)
        return min(times, default=None)

    def poll(self, now: int | None = None) -> None:
        """Run every timer that has expired (ARP retries, reassembly timeouts, TCP timers)."""
        now = self.now() if now is None else now
        try:
            self._out += self.arp.timers(now)
            self.reasm.timers(now)
            for conn in list(self.conns.values()):
                t = conn.tcb.next_timer()
                if t is not None and t <= now:
                    self._tcp_out(conn, now)
        finally:
            self.flush()

    def info(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "udp": sorted(self.udp), "listeners": sorted(self.listeners),
                "conns": len(self.conns)}
