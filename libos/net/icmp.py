"""ICMP (RFC 792): echo replies (ping) and the port-unreachable error for UDP.

RFC 1122 3.2.2: no ICMP error about an ICMP error, a broadcast or multicast
datagram, or a datagram whose source is not a unicast host; the error quotes
the offending IP header and at least its first 8 data bytes (RFC 792: exactly
8, which is what is sent here).
"""

from __future__ import annotations

from libos.net import headers as h


def echo_reply(msg: bytes) -> bytes:
    """The reply to a checked echo request: same identifier, sequence and data (RFC 792 "Echo")."""
    return h.icmp(h.ICMP_ECHO_REPLY, 0, msg[4:8], msg[8:])


def port_unreachable(ip_header: bytes, data: bytes) -> bytes:
    return h.icmp(h.ICMP_UNREACH, h.ICMP_PORT_UNREACH, bytes(4), ip_header + data[:8])


def may_answer_with_error(src: bytes, dst_is_broadcast: bool) -> bool:
    """RFC 1122 3.2.2: never about broadcasts, or to a non-unicast source."""
    return not dst_is_broadcast and src[0] < 224 and src not in (b"\0\0\0\0", b"\xff\xff\xff\xff")
