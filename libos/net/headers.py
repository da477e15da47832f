"""Wire formats: Ethernet II, ARP, IPv4, ICMP, UDP, TCP, and the Internet checksum.

The layouts are declared once with ``construct`` (the project's declared
dependency for binary formats): they are the reference, used to build and
parse the cold packets (ARP) and checked against the hot-path parsers in the
tests. The per-frame path (Ethernet, IPv4, ICMP, UDP, TCP headers) uses
``struct`` instead: measured on CPython 3.11, a compiled construct parse of
the 20-byte IPv4 header takes about 5.6 us, ``struct.unpack_from`` 0.25 us;
at several headers per frame that was the stack's largest cost.

Addresses are kept as ``bytes`` (6 for a MAC, 4 for an IPv4 address), as
they appear on the wire.
"""

from __future__ import annotations

import struct

from construct import Bytes, Const, Int8ub, Int16ub, Int32ub, Struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
BROADCAST_MAC = b"\xff" * 6
ETH_HLEN, IP_HLEN, UDP_HLEN, TCP_HLEN, ICMP_HLEN = 14, 20, 8, 20, 8
IP_DF, IP_MF, IP_OFFMASK = 0x4000, 0x2000, 0x1FFF  # RFC 791 3.1: flags and fragment offset
ARP_REQUEST, ARP_REPLY = 1, 2
ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO = 0, 3, 8
ICMP_PORT_UNREACH = 3  # RFC 792 destination unreachable code 3

# ------------------------------------------------------------ the declared layouts (construct)
EthernetHeader = Struct("dst" / Bytes(6), "src" / Bytes(6), "ethertype" / Int16ub)
# RFC 826, for Ethernet (htype 1) and IPv4 (ptype 0x0800) only.
ArpPacket = Struct(
    "htype" / Const(1, Int16ub), "ptype" / Const(ETH_P_IP, Int16ub),
    "hlen" / Const(6, Int8ub), "plen" / Const(4, Int8ub), "op" / Int16ub,
    "sha" / Bytes(6), "spa" / Bytes(4), "tha" / Bytes(6), "tpa" / Bytes(4),
)  # fmt: skip
ArpCompiled = ArpPacket.compile()
# RFC 791 3.1 (version and IHL in one byte; flags and fragment offset in one u16).
IPv4Header = Struct(
    "version_ihl" / Int8ub, "tos" / Int8ub, "total_length" / Int16ub, "ident" / Int16ub,
    "flags_frag" / Int16ub, "ttl" / Int8ub, "proto" / Int8ub, "checksum" / Int16ub,
    "src" / Bytes(4), "dst" / Bytes(4),
)  # fmt: skip
IcmpHeader = Struct("type" / Int8ub, "code" / Int8ub, "checksum" / Int16ub, "rest" / Int32ub)  # RFC 792
UdpHeader = Struct("sport" / Int16ub, "dport" / Int16ub, "length" / Int16ub, "checksum" / Int16ub)  # RFC 768
# RFC 9293 3.1 (data offset in the high nibble of one byte, the flags in the next).
TcpHeader = Struct(
    "sport" / Int16ub, "dport" / Int16ub, "seq" / Int32ub, "ack" / Int32ub,
    "offset" / Int8ub, "flags" / Int8ub, "window" / Int16ub, "checksum" / Int16ub, "urgent" / Int16ub,
)  # fmt: skip

# ------------------------------------------------------------ the hot-path equivalents (struct)
ETH = struct.Struct("!6s6sH")
IP = struct.Struct("!BBHHHBBH4s4s")
ICMP = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence (echo; "rest" for others)
UDP = struct.Struct("!HHHH")
TCP = struct.Struct("!HHIIBBHHH")
PSEUDO = struct.Struct("!4s4sBBH")  # RFC 768 / RFC 9293 3.1 pseudo-header


# ------------------------------------------------------------ the Internet checksum (RFC 1071)
def ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of ``data`` (an odd length is padded with a zero byte).

    RFC 1071 2(1): the sum is the value of the big-endian words modulo 0xFFFF
    (2**16 == 1 mod 0xFFFF: the end-around carry), with 0xFFFF, not 0, for
    any non-zero input. One bignum conversion and division in C: about 4 us for
    a full frame, against 20 us summing an array('H').
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    s = n % 0xFFFF
    return s if s or not n else 0xFFFF


def checksum(data: bytes, initial: int = 0) -> int:
    """The Internet checksum of ``data``: 0 when verifying data that carries a correct one."""
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The one's complement sum of the UDP/TCP pseudo-header (RFC 768; RFC 9293 3.1)."""
    return ones_sum(PSEUDO.pack(src, dst, 0, proto, length))


def l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes) -> int:
    """Checksum of a UDP or TCP segment with its pseudo-header (0 when verifying a correct one)."""
    return checksum(segment, pseudo_sum(src, dst, proto, len(segment)))


# ------------------------------------------------------------ building
def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return ETH.pack(dst, src, ethertype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, *, ttl: int = 64,
         df: bool = False) -> bytes:
    """An IPv4 packet with a 20-byte header (no options) and its header checksum."""
    # LAB 6 BEGIN ip-header: build the 20-byte IPv4 header (RFC 791 3.1) with its header checksum
    hdr = IP.pack(0x45, 0, IP_HLEN + len(payload), ident & 0xFFFF, IP_DF if df else 0, ttl, proto, 0, src, dst)
    c = checksum(hdr)
    return hdr[:10] + c.to_bytes(2, "big") + hdr[12:] + payload
    # LAB 6 END


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    """An IPv4 packet (20-byte header, DF clear) as fragments of at most ``mtu`` bytes (RFC 791
    3.2, "An Example Fragmentation Procedure"): each carries a copy of the header with its own
    total length and checksum, a multiple of 8 payload bytes but the last, MF on all but the
    last, the offset in 8-byte units."""
    step = (mtu - IP_HLEN) & ~7
    payload = packet[IP_HLEN:]
    out = []
    for off in range(0, len(payload), step):
        piece = payload[off:off + step]
        flags = (IP_MF if off + step < len(payload) else 0) | off >> 3
        hdr = bytearray(packet[:IP_HLEN])
        hdr[2:4] = (IP_HLEN + len(piece)).to_bytes(2, "big")
        hdr[6:8] = flags.to_bytes(2, "big")
        hdr[10:12] = b"\0\0"
        hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
        out.append(bytes(hdr) + piece)
    return out


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    # LAB 6 BEGIN udp-header: build the UDP header (RFC 768) with the checksum over the pseudo-header
    n = UDP_HLEN + len(payload)
    seg = UDP.pack(sport, dport, n, 0) + payload
    c = l4_checksum(src, dst, IPPROTO_UDP, seg) or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    return seg[:6] + c.to_bytes(2, "big") + seg[8:]
    # LAB 6 END


def tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
        payload: bytes = b"", mss: int | None = None, options: bytes = b"") -> bytes:
    """A TCP segment; ``mss``: with the MSS option (RFC 9293 3.7.1; kind 2, length 4), then
    ``options`` (tcp_options: a multiple of 4 bytes)."""
    opts = (b"" if mss is None else struct.pack("!BBH", 2, 4, mss)) + options
    off = (TCP_HLEN + len(opts)) // 4
    seg = TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags, min(window, 0xFFFF), 0, 0)
    seg += opts + payload
    c = l4_checksum(src, dst, IPPROTO_TCP, seg)
    return seg[:16] + c.to_bytes(2, "big") + seg[18:]


def icmp(type_: int, code: int, rest: bytes, payload: bytes) -> bytes:
    """An ICMP message: ``rest`` is the 4 bytes after the checksum (id/seq, or unused)."""
    msg = bytes((type_, code, 0, 0)) + rest + payload
    c = checksum(msg)
    return msg[:2] + c.to_bytes(2, "big") + msg[4:]


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return ArpCompiled.build({"op": op, "sha": sha, "spa": spa, "tha": tha, "tpa": tpa})


# TCP option kinds (IANA "TCP Option Kind Numbers"): RFC 7323 (window scale, timestamps),
# RFC 2018 (SACK permitted, SACK)
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WSCALE, TCPOPT_SACK_OK, TCPOPT_SACK, TCPOPT_TS = 0, 1, 2, 3, 4, 5, 8
_TS = struct.Struct("!BBBBII")  # NOP, NOP, kind 8, length 10, TSval, TSecr (RFC 7323 appendix A layout)


def tcp_options(wscale: int | None = None, sack_ok: bool = False, ts: tuple[int, int] | None = None,
                sacks: tuple[tuple[int, int], ...] = ()) -> bytes:
    """The options after MSS, NOP-padded to 4-byte words as Linux lays them out: [NOP NOP TS]
    [NOP NOP SACK-permitted | NOP WS] [NOP NOP SACK blocks]."""
    out = b""
    if ts is not None:
        out += _TS.pack(TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TS, 10, ts[0] & 0xFFFFFFFF, ts[1] & 0xFFFFFFFF)
    if sack_ok:
        out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK_OK, 2))
    if wscale is not None:
        out += bytes((TCPOPT_NOP, TCPOPT_WSCALE, 3, wscale))
    if sacks:
        out += bytes((TCPOPT_NOP, TCPOPT_NOP, TCPOPT_SACK, 2 + 8 * len(sacks)))
        out += b"".join(struct.pack("!II", a & 0xFFFFFFFF, b & 0xFFFFFFFF) for a, b in sacks)
    return out


class TcpOptions:
    """The options of one segment that the engine uses (absent ones None / False / empty)."""

    __slots__ = ("mss", "wscale", "sack_ok", "ts", "sacks")

    def __init__(self) -> None:
        self.mss: int | None = None
        self.wscale: int | None = None
        self.sack_ok = False
        self.ts: tuple[int, int] | None = None
        self.sacks: tuple[tuple[int, int], ...] = ()


def parse_tcp_options(options: bytes) -> TcpOptions:
    """MSS, window scale, SACK-permitted, SACK blocks and timestamps from a TCP options field
    (RFC 9293 3.2: kinds 0 and 1 are one byte, the others kind, length, data). A malformed
    field ends the parse: what was read before it stands, as Linux's tcp_parse_options does."""
    o = TcpOptions()
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        length = options[i + 1]
        if length < 2 or i + length > n:
            break
        body = options[i + 2:i + length]
        if kind == TCPOPT_MSS and length == 4:
            o.mss = int.from_bytes(body, "big")
        elif kind == TCPOPT_WSCALE and length == 3:
            o.wscale = min(body[0], 14)  # RFC 7323 2.3: a shift over 14 is taken as 14
        elif kind == TCPOPT_SACK_OK and length == 2:
            o.sack_ok = True
        elif kind == TCPOPT_TS and length == 10:
            o.ts = struct.unpack("!II", body)
        elif kind == TCPOPT_SACK and length >= 10 and (length - 2) % 8 == 0:
            o.sacks = tuple(struct.unpack_from("!II", body, k) for k in range(0, length - 2, 8))
        i += length
    return o


def tcp_mss(options: bytes) -> int | None:
    """The MSS option's value in a TCP options field, None if absent or malformed (RFC 9293 3.2)."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:  # end of option list
            return None
        if kind == 1:  # no-operation
            i += 1
            continue
        if i + 1 >= n:
            return None
        length = options[i + 1]
        if length < 2 or i + length > n:
            return None
        if kind == 2 and length == 4:
            return int.from_bytes(options[i + 2 : i + 4], "big")
        i += length
    return None


def ip_str(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)


def ip_bytes(addr: str | bytes | int) -> bytes:
    """An IPv4 address as 4 bytes, from dotted text, 4 bytes, or an int (host order)."""
    if isinstance(addr, bytes):
        if len(addr) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, not {len(addr)}")
        return addr
    if isinstance(addr, int):
        return addr.to_bytes(4, "big")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError(f"not an IPv4 address: {addr!r}")
    return bytes(int(p) for p in parts)


def mac_bytes(addr: str | bytes) -> bytes:
    if isinstance(addr, bytes):
        if len(addr) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(addr)}")
        return addr
    b = bytes.fromhex(addr.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {addr!r}")
    return b
