"""A tiny hand-written packet kit for the network tests: build and parse Ethernet, ARP,
IPv4, ICMP, UDP and TCP with checksums (RFC 1071). Independent of hw/net's own code on
purpose, so the backends are checked against a second implementation. No tests here."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

BCAST = b"\xff" * 6


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def ip(s: str) -> bytes:
    return socket.inet_aton(s)


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    f = dst + src + struct.pack("!H", etype) + payload
    return f + bytes(max(0, 60 - len(f)))  # pad to the Ethernet minimum


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 1, ttl: int = 64) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def icmp_echo(ident: int, seq: int, data: bytes, typ: int = 8) -> bytes:
    h = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + data
    return h[:2] + struct.pack("!H", csum(h)) + h[4:]


def l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    return csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def udp(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    h = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = l4_csum(src, dst, 17, h) or 0xFFFF
    return h[:6] + struct.pack("!H", c) + h[8:]


FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
        data: bytes = b"", window: int = 65535, mss: int | None = None) -> bytes:  # fmt: skip
    opts = struct.pack("!BBH", 2, 4, mss) if mss is not None else b""
    off = (20 + len(opts)) // 4
    h = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags,
                    window, 0, 0) + opts + data  # fmt: skip
    c = l4_csum(src, dst, 6, h)
    return h[:16] + struct.pack("!H", c) + h[18:]


@dataclass
class Pkt:
    """A parsed frame: the fields the tests look at."""

    dst: bytes
    src: bytes
    etype: int
    arp_op: int = 0
    sha: bytes = b""
    spa: bytes = b""
    tha: bytes = b""
    tpa: bytes = b""
    ip_src: bytes = b""
    ip_dst: bytes = b""
    proto: int = 0
    icmp_type: int = -1
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 0
    mss: int | None = None
    data: bytes = b""
    ok: bool = True  # every checksum verified


def parse(f: bytes) -> Pkt:
    """The frame's fields; ``ok`` is False when a checksum fails or the frame is malformed."""
    try:
        return _parse(f)
    except (IndexError, struct.error, ValueError):
        return Pkt(f[0:6], f[6:12], -1, ok=False)


def _parse(f: bytes) -> Pkt:
    p = Pkt(f[0:6], f[6:12], struct.unpack("!H", f[12:14])[0])
    if p.etype == 0x0806:
        _, _, _, _, p.arp_op = struct.unpack("!HHBBH", f[14:22])
        p.sha, p.spa, p.tha, p.tpa = f[22:28], f[28:32], f[32:38], f[38:42]
        return p
    if p.etype != 0x0800:
        return p
    ihl = (f[14] & 0xF) * 4
    total = struct.unpack("!H", f[16:18])[0]
    iph = f[14 : 14 + ihl]
    body = f[14 + ihl : 14 + total]
    p.proto, p.ip_src, p.ip_dst = iph[9], iph[12:16], iph[16:20]
    p.ok = csum(iph) == 0
    if p.proto == 1:
        p.icmp_type = body[0]
        p.data = body[8:]
        p.ok &= csum(body) == 0
    elif p.proto == 17:
        p.sport, p.dport = struct.unpack("!HH", body[:4])
        p.data = body[8:]
        p.ok &= body[6:8] == b"\0\0" or l4_csum(p.ip_src, p.ip_dst, 17, body) == 0
    elif p.proto == 6:
        p.sport, p.dport, p.seq, p.ack, off, p.flags, p.window = struct.unpack("!HHIIBBH", body[:16])
        doff = (off >> 4) * 4
        opts = body[20:doff]
        i = 0
        while i < len(opts) and opts[i] != 0:
            if opts[i] == 1:
                i += 1
                continue
            if opts[i] == 2:
                p.mss = struct.unpack("!H", opts[i + 2 : i + 4])[0]
            i += opts[i + 1]
        p.data = body[doff:]
        p.ok &= l4_csum(p.ip_src, p.ip_dst, 6, body) == 0
    return p
