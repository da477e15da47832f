"""Malformed frames of every kind are dropped and counted; the stack never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netkit import IP_A, IP_B, MAC_A, MAC_B

from libos.net import headers as h
from libos.net.stack import Stack

A, B = h.ip_bytes(IP_A), h.ip_bytes(IP_B)
MA, MB = h.mac_bytes(MAC_A), h.mac_bytes(MAC_B)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def host() -> tuple[Stack, list[bytes]]:
    sent: list[bytes] = []
    s = Stack(MAC_B, IP_B, "255.255.255.0", "10.0.2.2", transmit=sent.extend, now=lambda: 5_000_000_000)
    s.udp_bind(7)
    s.tcp_listen(80, 4)
    s.arp.entries[A] = (MA, 1 << 62)
    return s, sent


def valid_frames() -> list[bytes]:
    eth = lambda et, p: h.ethernet(MB, MA, et, p)  # noqa: E731
    ip = lambda proto, p: eth(h.ETH_P_IP, h.ipv4(A, B, proto, p, 3))  # noqa: E731
    frag = bytearray(ip(h.IPPROTO_UDP, h.udp(A, B, 1, 7, bytes(64))))
    frag[20:22] = (h.IP_MF | 0).to_bytes(2, "big")
    frag[24:26] = b"\0\0"
    frag[24:26] = h.checksum(bytes(frag[14:34])).to_bytes(2, "big")
    return [
        eth(h.ETH_P_ARP, h.arp(h.ARP_REQUEST, MA, A, bytes(6), B)),
        ip(h.IPPROTO_ICMP, h.icmp(h.ICMP_ECHO, 0, b"\0\1\0\1", b"ping")),
        ip(h.IPPROTO_UDP, h.udp(A, B, 1, 7, b"payload")),
        ip(h.IPPROTO_UDP, h.udp(A, B, 1, 9, b"closed")),
        ip(h.IPPROTO_TCP, h.tcp(A, B, 1000, 80, 1, 0, 0x02, 1000, mss=1460)),
        ip(h.IPPROTO_TCP, h.tcp(A, B, 1000, 81, 1, 0, 0x02, 1000)),
        ip(h.IPPROTO_TCP, h.tcp(A, B, 1000, 80, 1, 5, 0x18, 1000, b"data")),
        bytes(frag),
    ]


VALID = valid_frames()


def assert_quiet(s: Stack) -> None:
    assert s.stats.get("input_errors", 0) == 0, s.last_error


def test_valid_frames_are_accepted():
    s, sent = host()
    for f in VALID:
        s.input(f)
    assert_quiet(s)
    assert s.stats["udp_delivered"] == 1 and s.stats["icmp_echo_answered"] == 1
    assert s.stats["arp_replies_sent"] == 1 and s.stats["icmp_port_unreachable_sent"] == 1


@SETTINGS
@given(st.binary(max_size=1600))
def test_random_bytes(data):
    s, _ = host()
    s.input(data)
    s.input(MB + MA + b"\x08\x00" + data)
    s.input(MB + MA + b"\x08\x06" + data)
    assert_quiet(s)


@SETTINGS
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)), max_size=8))
def test_mutated_valid_frames(frame, flips):
    s, _ = host()
    f = bytearray(frame)
    for pos, val in flips:
        if pos < len(f):
            f[pos] = val
    s.input(bytes(f))
    assert_quiet(s)


@SETTINGS
@given(st.sampled_from(VALID), st.integers(0, 200))
def test_truncated(frame, cut):
    s, _ = host()
    s.input(frame[: max(0, len(frame) - cut)])
    assert_quiet(s)


def fix_ip_checksum(f: bytearray) -> bytes:
    f[24:26] = b"\0\0"
    ihl = (f[14] & 0xF) * 4
    if len(f) >= 14 + ihl:
        f[24:26] = h.checksum(bytes(f[14 : 14 + ihl])).to_bytes(2, "big")
    return bytes(f)


@SETTINGS
@given(st.sampled_from(VALID[1:]), st.integers(0, 15), st.integers(0, 0xFFFF))
def test_impossible_ihl_and_total_length(frame, ihl, total):
    s, _ = host()
    f = bytearray(frame)
    f[14] = 0x40 | ihl
    f[16:18] = total.to_bytes(2, "big")
    s.input(fix_ip_checksum(f))  # a correct header checksum: the lengths themselves must be checked
    assert_quiet(s)
    if ihl < 5 or total < ihl * 4 or total > len(frame) - 14:
        assert s.stats.get("ip_bad_header", 0) + s.stats.get("ip_truncated", 0) >= 1


@SETTINGS
@given(st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_impossible_udp_length(length, payload):
    s, _ = host()
    seg = bytearray(h.udp(A, B, 1, 7, payload))
    seg[4:6] = length.to_bytes(2, "big")
    seg[6:8] = b"\0\0"  # no checksum: the length alone decides
    s.input(h.ethernet(MB, MA, h.ETH_P_IP, h.ipv4(A, B, h.IPPROTO_UDP, bytes(seg), 1)))
    assert_quiet(s)
    if length < 8 or length > len(seg):
        assert s.stats["udp_bad_length"] == 1 and "udp_delivered" not in s.stats


@SETTINGS
@given(st.integers(0, 15), st.integers(0, 255), st.binary(max_size=60))
def test_impossible_tcp_data_offset(offset, flags, payload):
    s, _ = host()
    seg = bytearray(h.tcp(A, B, 1000, 80, 1, 0, 0, 1000, payload))
    seg[12] = offset << 4
    seg[13] = flags
    seg[16:18] = b"\0\0"
    seg[16:18] = h.l4_checksum(A, B, h.IPPROTO_TCP, bytes(seg)).to_bytes(2, "big")
    s.input(h.ethernet(MB, MA, h.ETH_P_IP, h.ipv4(A, B, h.IPPROTO_TCP, bytes(seg), 1)))
    assert_quiet(s)
    if offset < 5 or offset * 4 > len(seg):
        assert s.stats["tcp_bad_offset"] == 1


@SETTINGS
@given(st.sampled_from(VALID[1:]), st.integers(1, 0xFFFF))
def test_bad_checksums_are_counted(frame, delta):
    s, _ = host()
    f = bytearray(frame)
    pos = 34 + {h.IPPROTO_ICMP: 2, h.IPPROTO_UDP: 6, h.IPPROTO_TCP: 16}[f[23]]
    if f[20] & 0x20:  # the fragment: spoil the IP header checksum instead
        pos = 24
    old = int.from_bytes(f[pos : pos + 2], "big")
    new = (old + delta) & 0xFFFF
    if {old, new} == {0, 0xFFFF} or (f[23] == h.IPPROTO_UDP and new == 0):
        return  # the same one's complement value, or "no UDP checksum"
    f[pos : pos + 2] = new.to_bytes(2, "big")
    s.input(bytes(f))
    assert_quiet(s)
    assert any(k.endswith("bad_checksum") for k in s.stats), s.stats
