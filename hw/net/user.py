"""``user[,hostfwd=...]``: an unprivileged, QEMU-like network with a gateway and port forwarding.

The wire holds the guests and one gateway, 10.0.2.2 (MAC 52:55:0a:00:02:02),
as in QEMU's user-mode networking. The gateway

* answers ARP requests for 10.0.2.2 (RFC 826) and learns each guest's MAC from
  its ARP and IPv4 frames, or asks for it with an ARP request when it must send
  to a guest it has not heard from yet;
* answers ICMP echo requests to 10.0.2.2 (RFC 792);
* forwards host ports to guest ports, with QEMU's option syntax
  ``hostfwd=PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` (PROTO tcp or udp,
  default tcp; HOSTADDR default 127.0.0.1; GUESTADDR default 10.0.2.15; a
  HOSTPORT of 0 takes any free port, see ``forwards``). Several may be given.

  UDP: each datagram a host peer sends to HOSTPORT reaches the guest port from
  10.0.2.2:P, P a port chosen for that host peer; what the guest sends back to
  10.0.2.2:P goes to that host peer.

  TCP: each connection accepted on HOSTPORT becomes a TCP connection from
  10.0.2.2:P (P ephemeral) to the guest port, run by the gateway's own small
  TCP (usertcp.py); bytes are copied both ways, a FIN becomes a shutdown of
  the host socket's write side and back, an RST from the guest resets the host
  connection, a reset host connection sends the guest an RST. A TCP segment to
  10.0.2.2 that belongs to no connection gets an RST (RFC 9293 3.10.7.1).

Frames that fail a checksum are dropped (and counted), like those the gateway
has no use for (other destinations: there is no outbound NAT). Datagrams travel whole up to
IPv4's 65,507 bytes of data: the guest's fragments are reassembled (defrag.py, with limits
against fragment floods) before they are forwarded, and a host datagram larger than the MTU
reaches the guest as IP fragments (RFC 791), which the guest's stack reassembles.

One background thread does all the work: it owns the sockets (``selectors``),
the gateway state and the TCP timers. ``send`` only queues the guest's frame
and wakes it; frames for the guest go into a thread-safe inbox that ``recv``
drains and ``wait`` sleeps on.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from hw.errors import MachineConfigError
from hw.net import packets as pk
from hw.net.backend import Inbox
from hw.net.defrag import Defragmenter
from hw.net.usertcp import ACK, FIN, RST, SYN, GatewayTcp

GATEWAY_IP = socket.inet_aton("10.0.2.2")
GATEWAY_MAC = bytes.fromhex("52550a000202")
NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
DEFAULT_GUEST = "10.0.2.15"
DEFAULT_HOST = "127.0.0.1"
UDP_MAX_PAYLOAD = 65535 - 20 - 8  # IPv4's largest UDP datagram; above the MTU it goes as fragments
PORTS = range(49152, 65536)  # the gateway's ephemeral ports (RFC 6335 6)
ARP_RETRY = 1.0
PENDING_MAX = 64  # packets held per guest address while its MAC is unknown
UDP_FLOWS_MAX = 4096
FORMAT = "PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT"
_HOSTFWD = re.compile(r"^(tcp|udp)?:([^:]*):([0-9]+)-([^:]*):([0-9]+)$")


@dataclass
class HostFwd:
    proto: str
    host_addr: str
    host_port: int  # after binding: the port actually bound (0 asks for any)
    guest_addr: str
    guest_port: int
    sock: socket.socket | None = field(default=None, repr=False)


def parse_hostfwd(text: str) -> HostFwd:
    bad = f"user: hostfwd {text!r} is not {FORMAT}"
    m = _HOSTFWD.match(text)
    if not m:
        raise MachineConfigError(bad)
    proto, haddr, hport, gaddr, gport = m.groups()
    haddr = haddr or DEFAULT_HOST
    gaddr = gaddr or DEFAULT_GUEST
    try:
        ipaddress.IPv4Address(haddr)
    except ValueError:
        raise MachineConfigError(f"user: hostfwd {text!r}: host address {haddr!r} is not an IPv4 address") from None
    try:
        g = ipaddress.IPv4Address(gaddr)
    except ValueError:
        raise MachineConfigError(f"user: hostfwd {text!r}: guest address {gaddr!r} is not an IPv4 address") from None
    if g not in NETWORK or g in (NETWORK.network_address, NETWORK.broadcast_address) or g.packed == GATEWAY_IP:
        raise MachineConfigError(f"user: hostfwd {text!r}: guest address {gaddr} is not a guest's in {NETWORK}")
    hp, gp = int(hport), int(gport)
    if hp > 65535:
        raise MachineConfigError(f"user: hostfwd {text!r}: host port {hp} is not 0..65535")
    if not 1 <= gp <= 65535:
        raise MachineConfigError(f"user: hostfwd {text!r}: guest port {gp} is not 1..65535")
    return HostFwd(proto or "tcp", haddr, hp, gaddr, gp)


def parse_spec(spec: str) -> list[HostFwd]:
    """``user[,hostfwd=...]...`` -> the forwards; MachineConfigError (a ValueError) if bad."""
    name, *opts = spec.split(",")
    if name.strip() != "user":
        raise MachineConfigError(f"user: {spec!r} does not start with 'user'")
    out = []
    for opt in opts:
        key, eq, val = opt.strip().partition("=")
        if key != "hostfwd" or not eq:
            raise MachineConfigError(f"user: unknown option {opt.strip()!r} (expected hostfwd={FORMAT})")
        out.append(parse_hostfwd(val.strip()))
    return out


def _bind(fwd: HostFwd) -> None:
    kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        if fwd.proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers, not listeners
        s.bind((fwd.host_addr, fwd.host_port))
        if fwd.proto == "tcp":
            s.listen(64)
        s.setblocking(False)
    except OSError as e:
        s.close()
        where = f"{fwd.host_addr}:{fwd.host_port}"
        if e.errno == errno.EADDRINUSE:
            raise MachineConfigError(f"user: host port {where} ({fwd.proto}) is in use") from None
        raise MachineConfigError(f"user: cannot listen on {where} ({fwd.proto}): {e.strerror}") from None
    fwd.sock = s
    fwd.host_port = s.getsockname()[1]


class _Conn:
    """One forwarded TCP connection: the host socket and the gateway's TCP toward the guest."""

    def __init__(self, sock: socket.socket, tcp: GatewayTcp, guest_ip: bytes, guest_port: int, gw_port: int) -> None:
        self.sock: socket.socket | None = sock
        self.tcp = tcp
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.gw_port = gw_port
        self.host_eof = False
        self.shut_wr = False
        self.events = 0


class UserBackend:
    takes_large_frames = True  # the gateway is the guest's TCP peer: TSO frames need no cutting (hw/nic.py)
    external = True

    @classmethod
    def from_spec(cls, spec: str) -> UserBackend:
        return cls(parse_spec(spec))

    def __init__(self, forwards: list[HostFwd]) -> None:
        self.forwards = forwards
        try:
            for f in forwards:
                _bind(f)
        except BaseException:
            for f in forwards:
                if f.sock is not None:
                    f.sock.close()
            raise
        self._inbox = Inbox()
        self._guest_frames: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for f in forwards:
            self._sel.register(f.sock, selectors.EVENT_READ, ("listen" if f.proto == "tcp" else "udp", f))
        self._arp: dict[bytes, bytes] = {}  # guest IPv4 -> MAC
        self._pending: dict[bytes, list[bytes]] = {}  # guest IPv4 -> IP packets waiting for its MAC
        self._arp_asked: dict[bytes, float] = {}
        self._conns: dict[tuple[bytes, int, int], _Conn] = {}  # (guest ip, guest port, gateway port)
        self._udp_by_peer: dict[tuple[int, tuple[str, int]], int] = {}  # (forward, host peer) -> gw port
        self._udp_by_port: dict[int, tuple[HostFwd, tuple[str, int]]] = {}
        self._tcp_origin: dict[tuple[int, int], tuple[str, int, int]] = {}  # (guest port, gw port) -> (host peer, its port, HOSTPORT)
        self._next_port = PORTS.start
        self._ident = 0
        self._stop = False
        self.stats = {"bad_frames": 0, "ignored": 0, "arp_replies": 0, "pings": 0, "udp_in": 0,
                      "udp_out": 0, "udp_dropped": 0, "tcp_accepted": 0, "tcp_resets_sent": 0,
                      "tcp_retransmits": 0}  # fmt: skip
        self._defrag = Defragmenter(self.stats)  # the guest's IP fragments, put back together
        self._thread = threading.Thread(target=self._run, name="exo-net-user", daemon=True)
        self._thread.start()

    # ------------------------------------------------------- machine thread
    def send(self, frame: bytes) -> None:
        with self._lock:
            idle = not self._guest_frames
            self._guest_frames.append(bytes(frame))
        if idle:  # the thread takes every queued frame when it wakes: one wake-up per burst
            self._wakeup()

    def recv(self) -> list[bytes]:
        return self._inbox.drain()

    def pending(self) -> bool:
        return bool(self._inbox)

    def wait(self, timeout: float) -> None:
        self._inbox.wait(timeout)

    def close(self) -> None:
        if self._stop:
            return
        self._stop = True
        self._wakeup()
        self._thread.join(5.0)
        for c in list(self._conns.values()):
            self._close_host(c, reset=True)
        for f in self.forwards:
            if f.sock is not None:
                f.sock.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        self._inbox.wake()

    def origin(self, proto: int, gw_port: int, guest_port: int) -> tuple[str, int, int] | None:
        """Where the flow the gateway runs from ``gw_port`` to ``guest_port`` comes from: (the host peer's address,
        its port, the forward's HOSTPORT); None if no forwarded flow uses that port. For exo serve's
        tenants (the guest sees every flow come from 10.0.2.2). Reads two dicts the network thread
        writes: a flow is entered before its first frame reaches the guest."""
        if proto == pk.PROTO_TCP:
            return self._tcp_origin.get((guest_port, gw_port))
        flow = self._udp_by_port.get(gw_port)
        return None if flow is None else (flow[1][0], flow[1][1], flow[0].host_port)

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (already woken) or closed
            pass

    def __repr__(self) -> str:
        fw = ",".join(f"hostfwd={f.proto}:{f.host_addr}:{f.host_port}-{f.guest_addr}:{f.guest_port}"
                      for f in self.forwards)  # fmt: skip
        return f"<UserBackend user{',' if fw else ''}{fw}>"

    # ---------------------------------------------------- background thread
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # close() stops this thread right after the guest's last send(): what the guest
            # handed over is still in _guest_frames and must reach the host (a udp_echo's last
            # echo was lost this way), so it is delivered before the sockets close.
            self._from_guest_frames(time.monotonic())

    def _from_guest_frames(self, now: float) -> None:
        with self._lock:
            frames = list(self._guest_frames)
            self._guest_frames.clear()
        for f in frames:
            try:
                self._from_guest(f, now)
            except OSError:
                pass
        for c in list(self._conns.values()):
            self._pump(c, now)

    def _loop(self) -> None:
        while not self._stop:
            now = time.monotonic()
            timers = [t for c in self._conns.values() if (t := c.tcp.next_timer()) is not None]
            timeout = max(0.0, min(timers) - now) if timers else None
            try:
                events = self._sel.select(timeout)
            except OSError:
                return
            if self._stop:
                return
            now = time.monotonic()
            for key, mask in events:
                kind, obj = key.data
                try:
                    if kind == "wake":
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    elif kind == "listen":
                        self._accept(obj, now)
                    elif kind == "udp":
                        self._udp_from_host(obj)
                    elif kind == "conn":
                        self._host_io(obj, mask, now)
                except OSError:
                    pass
            self._from_guest_frames(now)

    # frames to the guest
    def _to_guest(self, dst_ip: bytes, proto: int, payload: bytes) -> None:
        self._ident = (self._ident + 1) & 0xFFFF
        # A host datagram larger than the link's MTU goes as IP fragments (the guest reassembles).
        pkts = pk.ipv4_fragments(GATEWAY_IP, dst_ip, proto, payload, self._ident)
        mac = self._arp.get(dst_ip)
        if mac is not None:
            for pkt in pkts:
                self._inbox.put(pk.ethernet(mac, GATEWAY_MAC, pk.ETH_IPV4, pkt))
            return
        q = self._pending.setdefault(dst_ip, [])
        for pkt in pkts:
            if len(q) < PENDING_MAX:
                q.append(pkt)
        now = time.monotonic()
        if now - self._arp_asked.get(dst_ip, -1e9) >= ARP_RETRY:
            self._arp_asked[dst_ip] = now
            req = pk.arp(1, GATEWAY_MAC, GATEWAY_IP, bytes(6), dst_ip)
            self._inbox.put(pk.ethernet(pk.BROADCAST, GATEWAY_MAC, pk.ETH_ARP, req))

    def _learn(self, ip: bytes, mac: bytes) -> None:
        if mac[0] & 1 or ipaddress.IPv4Address(ip) not in NETWORK or ip == GATEWAY_IP:
            return  # multicast/broadcast source or not on our wire
        self._arp[ip] = mac
        for pkt in self._pending.pop(ip, []):
            self._inbox.put(pk.ethernet(mac, GATEWAY_MAC, pk.ETH_IPV4, pkt))

    # frames from the guest
    def _from_guest(self, frame: bytes, now: float) -> None:
        whole = self._defrag.push(frame, now)
        if whole is None:
            return  # a fragment of a datagram not yet complete (or refused: counted)
        p = pk.parse(whole)
        if p is None:
            self.stats["bad_frames"] += 1  # corrupt or malformed
            return
        if p.dst != GATEWAY_MAC and p.dst != pk.BROADCAST:
            self.stats["ignored"] += 1
            return
        if p.ethertype == pk.ETH_ARP:
            if p.spa != bytes(4):
                self._learn(p.spa, p.sha)
            if p.op == 1 and p.tpa == GATEWAY_IP:
                rep = pk.arp(2, GATEWAY_MAC, GATEWAY_IP, p.sha, p.spa)
                self._inbox.put(pk.ethernet(p.sha, GATEWAY_MAC, pk.ETH_ARP, rep))
                self.stats["arp_replies"] += 1
            return
        if p.ip_dst != GATEWAY_IP:
            self.stats["ignored"] += 1  # no outbound NAT
            return
        self._learn(p.ip_src, p.src)
        if p.proto == pk.PROTO_ICMP:
            if p.icmp_type == 8 and p.icmp_code == 0:  # echo request -> echo reply (RFC 792)
                self._to_guest(p.ip_src, pk.PROTO_ICMP, pk.icmp(0, 0, p.payload))
                self.stats["pings"] += 1
        elif p.proto == pk.PROTO_UDP:
            self._udp_from_guest(p)
        elif p.proto == pk.PROTO_TCP:
            self._tcp_from_guest(p, now)

    # ------------------------------------------------------------------ UDP
    def _alloc_port(self, in_use) -> int:
        for _ in range(len(PORTS)):
            port = self._next_port
            self._next_port = port + 1 if port + 1 < PORTS.stop else PORTS.start
            if not in_use(port):
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free gateway port")

    def _udp_from_host(self, fwd: HostFwd) -> None:
        for _ in range(64):  # a batch, then let the others run
            try:
                data, peer = fwd.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            self.stats["udp_in"] += 1
            if len(data) > UDP_MAX_PAYLOAD:
                self.stats["udp_dropped"] += 1  # cannot happen over IPv4 (65,507 bytes at most)
                continue
            key = (id(fwd), peer)
            port = self._udp_by_peer.get(key)
            if port is None:
                port = self._alloc_port(lambda p: p in self._udp_by_port)
                if len(self._udp_by_peer) >= UDP_FLOWS_MAX:  # forget the oldest flow
                    old_key = next(iter(self._udp_by_peer))
                    self._udp_by_port.pop(self._udp_by_peer.pop(old_key), None)
                self._udp_by_peer[key] = port
                self._udp_by_port[port] = (fwd, peer)
            gip = socket.inet_aton(fwd.guest_addr)
            self._to_guest(gip, pk.PROTO_UDP, pk.udp(GATEWAY_IP, gip, port, fwd.guest_port, data))

    def _udp_from_guest(self, p: pk.Frame) -> None:
        flow = self._udp_by_port.get(p.dport)
        if flow is None:
            self.stats["ignored"] += 1
            return
        fwd, peer = flow
        if p.ip_src != socket.inet_aton(fwd.guest_addr) or p.sport != fwd.guest_port:
            self.stats["ignored"] += 1
            return
        try:
            fwd.sock.sendto(p.payload, peer)
            self.stats["udp_out"] += 1
        except OSError:
            self.stats["udp_dropped"] += 1

    # ------------------------------------------------------------------ TCP
    def _accept(self, fwd: HostFwd, now: float) -> None:
        try:
            sock, peer = fwd.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        gip = socket.inet_aton(fwd.guest_addr)
        port = self._alloc_port(lambda p: (gip, fwd.guest_port, p) in self._conns)
        iss = int.from_bytes(os.urandom(4), "big")  # unpredictable, as RFC 6528 wants
        c = _Conn(sock, GatewayTcp(iss=iss, now=now), gip, fwd.guest_port, port)
        self._conns[(gip, fwd.guest_port, port)] = c
        self._tcp_origin[(fwd.guest_port, port)] = (peer[0], peer[1], fwd.host_port)
        self._sel.register(sock, selectors.EVENT_READ, ("conn", c))
        c.events = selectors.EVENT_READ
        self.stats["tcp_accepted"] += 1
        self._pump(c, now)

    def _tcp_from_guest(self, p: pk.Frame, now: float) -> None:
        c = self._conns.get((p.ip_src, p.sport, p.dport))
        if c is None:
            if not p.flags & RST:  # RFC 9293 3.10.7.1: reset anything for a connection that does not exist
                if p.flags & ACK:
                    seq, ack, flags = p.ack, 0, RST
                else:
                    seq = 0
                    ack = (p.seq + len(p.payload) + (1 if p.flags & SYN else 0) + (1 if p.flags & FIN else 0))
                    flags = RST | ACK
                seg = pk.tcp(GATEWAY_IP, p.ip_src, p.dport, p.sport, seq, ack, flags, 0)
                self._to_guest(p.ip_src, pk.PROTO_TCP, seg)
                self.stats["tcp_resets_sent"] += 1
            return
        c.tcp.input(p.seq, p.ack, p.flags, p.window, p.payload, p.mss, now, p.wscale)

    def _host_io(self, c: _Conn, mask: int, now: float) -> None:
        if c.sock is None:
            return
        try:
            if mask & selectors.EVENT_READ and not c.host_eof:
                room = c.tcp.send_space
                if room > 0:
                    data = c.sock.recv(min(room, 65536))
                    if data:
                        c.tcp.send(data)
                    else:
                        c.host_eof = True
                        c.tcp.shutdown()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            c.tcp.abort()  # the host peer reset: reset the guest
            self._close_host(c, reset=True)

    def _pump(self, c: _Conn, now: float) -> None:
        """Move bytes to the host, send what TCP has due, close what is done."""
        t = c.tcp
        if c.sock is not None and t.to_host:
            try:
                n = c.sock.send(t.to_host)
                t.consumed(n)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                t.abort()
                self._close_host(c, reset=True)
        if c.sock is not None and t.peer_fin and not t.to_host and not c.shut_wr:
            c.shut_wr = True
            try:
                c.sock.shutdown(socket.SHUT_WR)  # the guest's FIN, passed on
            except OSError:
                pass
        before = t.retransmits
        for seg in t.output(now):
            mss = seg.mss
            raw = pk.tcp(GATEWAY_IP, c.guest_ip, c.gw_port, c.guest_port, seg.seq, seg.ack, seg.flags,
                         seg.window, seg.payload, mss, seg.wscale)  # fmt: skip
            self._to_guest(c.guest_ip, pk.PROTO_TCP, raw)
        self.stats["tcp_retransmits"] += t.retransmits - before
        if c.sock is not None:
            if t.error is not None:
                self._close_host(c, reset=True)  # refused, reset or timed out: reset the host peer
            elif t.state in ("LINGER", "CLOSED") and not t.to_host:
                self._close_host(c, reset=False)
            else:
                want = (selectors.EVENT_READ if not c.host_eof and t.send_space > 0 else 0) | (
                    selectors.EVENT_WRITE if t.to_host else 0)  # fmt: skip
                if want != c.events:
                    if c.events and want:
                        self._sel.modify(c.sock, want, ("conn", c))
                    elif want:
                        self._sel.register(c.sock, want, ("conn", c))
                    else:
                        self._sel.unregister(c.sock)
                    c.events = want
        if t.finished and c.sock is None:
            if self._conns.pop((c.guest_ip, c.guest_port, c.gw_port), None) is not None:
                self._tcp_origin.pop((c.guest_port, c.gw_port), None)

    def _close_host(self, c: _Conn, *, reset: bool) -> None:
        if c.sock is None:
            return
        if c.events:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError, OSError):
                pass
            c.events = 0
        if reset:  # SO_LINGER 0: close() sends an RST, as the guest's RST did (or a failure)
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        c.sock.close()
        c.sock = None
