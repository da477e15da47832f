"""The pure TCP/IP stack (libos/net/stack.py): two stacks on a fake link, virtual time."""

from __future__ import annotations

import random

import pytest
from netkit import IP_A, IP_B, MAC_A, MAC_B, FaultyLink, Link

from libos.net import headers as h
from libos.net.linux import EADDRINUSE, EMSGSIZE, NetError
from libos.net.stack import Stack

A, B = h.ip_bytes(IP_A), h.ip_bytes(IP_B)


# ------------------------------------------------------------------ headers
def test_checksum_matches_rfc1071_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement sum)
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert h.ones_sum(data) == 0xDDF2
    assert h.checksum(data) == 0x220D
    assert h.checksum(data + (0x220D).to_bytes(2, "big")) == 0


def test_checksum_against_a_per_word_loop():
    rng = random.Random(1)
    for n in list(range(0, 40)) + [1499, 1500, 65535]:
        data = bytes(rng.randrange(256) for _ in range(n))
        s = 0
        padded = data + b"\0" * (n & 1)
        for i in range(0, len(padded), 2):
            s += int.from_bytes(padded[i : i + 2], "big")
            s = (s & 0xFFFF) + (s >> 16)
        assert h.checksum(data) == ~s & 0xFFFF, n
    assert h.checksum(b"\xff\xff") == 0 and h.checksum(b"") == 0xFFFF


def test_struct_and_construct_layouts_agree():
    pkt = h.ipv4(A, B, h.IPPROTO_UDP, h.udp(A, B, 1234, 7, b"hi"), 77, df=True)
    c = h.IPv4Header.parse(pkt)
    s = h.IP.unpack_from(pkt)
    assert (c.version_ihl, c.total_length, c.ident, c.flags_frag, c.ttl, c.proto, c.src, c.dst) == (
        s[0], s[2], s[3], s[4], s[5], s[6], s[8], s[9])
    u = h.UdpHeader.parse(pkt[20:])
    assert (u.sport, u.dport, u.length) == (1234, 7, 10)
    t = h.tcp(A, B, 80, 81, 5, 6, 0x12, 100, b"x", mss=1460)
    tc = h.TcpHeader.parse(t)
    assert (tc.sport, tc.dport, tc.seq, tc.ack, tc.offset >> 4, tc.flags) == (80, 81, 5, 6, 6, 0x12)
    assert h.tcp_mss(t[20:24]) == 1460
    assert h.l4_checksum(A, B, h.IPPROTO_TCP, t) == 0


# ------------------------------------------------------------------ ARP and ICMP
def test_arp_resolves_and_ping_gets_a_reply():
    link = Link()
    link.a.ping(IP_B, 7, 1, b"hello")
    assert link.a.stats["arp_requests_sent"] == 1  # the echo request waits for the ARP reply
    link.deliver()
    assert link.a.echo_replies == [(B, 7, 1, b"hello")]
    assert link.a.arp.lookup(B, link.t) == h.mac_bytes(MAC_B)
    assert link.b.arp.lookup(A, link.t) == h.mac_bytes(MAC_A)  # learnt from the request (RFC 826)
    link.a.ping(IP_B, 7, 2, b"again")
    link.deliver()
    assert link.a.stats["arp_requests_sent"] == 1  # cached now
    assert link.a.echo_replies[-1] == (B, 7, 2, b"again")


def test_arp_retries_then_drops_and_entries_expire():
    link = Link()
    link.drop = lambda side, f: True  # nobody answers
    link.a.ping(IP_B, 1, 1)
    link.run()
    assert link.a.stats["arp_requests_sent"] == 3
    assert link.a.stats["arp_unresolved_dropped"] == 1
    assert link.a.next_timer() is None
    link.drop = None
    link.a.ping(IP_B, 1, 2)
    link.deliver()
    assert link.a.echo_replies
    link.t += 61_000_000_000
    assert link.a.arp.lookup(B, link.t) is None


def test_arp_reply_only_for_our_address():
    link = Link()
    req = h.ethernet(h.BROADCAST_MAC, h.mac_bytes(MAC_A), h.ETH_P_ARP,
                     h.arp(h.ARP_REQUEST, h.mac_bytes(MAC_A), A, bytes(6), h.ip_bytes("10.0.2.99")))
    link.b.input(req, link.t)
    assert not link.queues["a"]


def test_packets_to_another_subnet_go_to_the_gateway():
    sent = []
    s = Stack(MAC_A, IP_A, "255.255.255.0", "10.0.2.2", transmit=sent.extend, now=lambda: 0)
    s.ping("8.8.8.8", 1, 1)
    arp = h.ArpPacket.parse(sent[0][14:])
    assert arp.tpa == h.ip_bytes("10.0.2.2")


# ------------------------------------------------------------------ UDP
def test_udp_echo():
    link = Link()
    sa = link.a.udp_bind(0)
    sb = link.b.udp_bind(7)
    assert sa.port == 49152
    link.a.udp_sendto(sa, b"ping", B, 7)
    link.deliver()
    data, src = sb.recvfrom()
    assert (data, src) == (b"ping", (A, 49152))
    link.b.udp_sendto(sb, data.upper(), *src)
    link.deliver()
    assert sa.recvfrom() == (b"PING", (B, 7))
    with pytest.raises(NetError) as e:
        link.b.udp_bind(7)
    assert e.value.errno == EADDRINUSE
    with pytest.raises(NetError) as e:
        link.a.udp_sendto(sa, bytes(65_508), B, 7)  # IPv4's limit is 65,507 bytes of UDP data
    assert e.value.errno == EMSGSIZE
    link.a.udp_sendto(sa, bytes(1472), B, 7)  # exactly the MTU: one unfragmented packet
    assert len(link.queues["b"]) == 1 and not link.a.stats.get("ip_fragments_sent")
    link.deliver()
    assert sb.recvfrom()[0] == bytes(1472)


@pytest.mark.parametrize("size,mtu", [(1473, 1500), (3000, 1500), (65_507, 1500), (65_507, 576), (5000, 9000)])
def test_large_udp_datagrams_go_as_fragments(size, mtu):
    """Over the MTU, a datagram leaves as RFC 791 fragments (MF on all but the last, payloads of
    a multiple of 8 bytes, each frame within the MTU) and the peer reassembles it."""
    link = Link(mtu)
    sa, sb = link.a.udp_bind(0), link.b.udp_bind(7)
    data = random.Random(size).randbytes(size)
    link.a.udp_sendto(sa, data, B, 7)
    link.deliver()
    frames = [f for f in link.sent["a"] if f[12:14] == b"\x08\x00"]
    if size + 28 <= mtu:
        assert len(frames) == 1
    else:
        assert len(frames) == -(-(size + 8) // ((mtu - 20) & ~7))
        offsets = []
        for i, f in enumerate(frames):
            ip = f[14:]
            total, flags = int.from_bytes(ip[2:4], "big"), int.from_bytes(ip[6:8], "big")
            assert total <= mtu and h.checksum(ip[:20]) == 0
            assert bool(flags & h.IP_MF) == (i < len(frames) - 1) and not flags & h.IP_DF
            assert i == len(frames) - 1 or (total - 20) % 8 == 0
            offsets.append((flags & h.IP_OFFMASK) * 8)
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert link.b.stats["frag_reassembled"] == 1
    assert sb.recvfrom() == (data, (A, sa.port))


def test_large_ping_is_answered_in_fragments():
    link = Link()
    link.a.ping(B, 7, 1, bytes(range(256)) * 12)  # 3,072 bytes, as `ping -s 3072`
    link.deliver()
    assert link.a.echo_replies[-1] == (B, 7, 1, bytes(range(256)) * 12)
    assert link.b.stats["ip_fragments_sent"] == 3 and link.a.stats["frag_reassembled"] == 1


def test_udp_to_a_closed_port_gets_port_unreachable():
    link = Link()
    sa = link.a.udp_bind(5000)
    link.a.udp_sendto(sa, b"anyone?", B, 9)
    link.deliver()
    assert link.b.stats["icmp_port_unreachable_sent"] == 1
    assert link.a.stats["icmp_unreachable_3"] == 1
    msg = [f for f in link.sent["b"] if f[12:14] == b"\x08\x00"][-1][34:]
    assert msg[0:2] == b"\x03\x03"
    assert msg[8:28][12:20] == A + B  # the quoted IP header ...
    assert int.from_bytes(msg[28:30], "big") == 5000  # ... and the first 8 bytes (the UDP header)


def test_udp_to_a_broadcast_gets_no_icmp_error():
    link = Link()
    sa = link.a.udp_bind(5000)
    link.a.udp_sendto(sa, b"all", h.ip_bytes("10.0.2.255"), 9)
    link.deliver()
    assert link.b.stats["udp_no_port"] == 1 and "icmp_port_unreachable_sent" not in link.b.stats


def test_loopback_to_own_address():
    link = Link()
    s1, s2 = link.a.udp_bind(1), link.a.udp_bind(2)
    link.a.udp_sendto(s1, b"me", A, 2)
    assert s2.recvfrom() == (b"me", (A, 1))
    assert not link.queues["b"]


# ------------------------------------------------------------------ IP reassembly
def fragments(payload: bytes, ident: int, size: int, src=A, dst=B, proto=h.IPPROTO_UDP) -> list[bytes]:
    """payload (a UDP datagram) as IPv4 fragments carrying ``size`` bytes each (a multiple of 8)."""
    out = []
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        more = off + size < len(payload)
        hdr = bytearray(h.IP.pack(0x45, 0, 20 + len(chunk), ident, (h.IP_MF if more else 0) | off // 8, 64,
                                  proto, 0, src, dst))
        hdr[10:12] = h.checksum(bytes(hdr)).to_bytes(2, "big")
        out.append(h.ethernet(h.mac_bytes(MAC_B), h.mac_bytes(MAC_A), h.ETH_P_IP, bytes(hdr) + chunk))
    return out


def big_datagram(n: int, dport: int = 7) -> bytes:
    return h.udp(A, B, 4000, dport, bytes(i % 251 for i in range(n)))


def test_reassembly_in_order_out_of_order_and_duplicated():
    link = Link()
    sock = link.b.udp_bind(7)
    dgram = big_datagram(4000)
    frags = fragments(dgram, 1, 1480)
    for f in frags:
        link.b.input(f, link.t)
    assert sock.recvfrom()[0] == dgram[8:]
    rng = random.Random(3)
    frags = fragments(dgram, 2, 512)
    frags += frags[:3]  # network duplicates
    rng.shuffle(frags)
    for f in frags:
        link.b.input(f, link.t)
    assert sock.recvfrom()[0] == dgram[8:]
    assert not sock.rx and link.b.stats["frag_reassembled"] == 2
    assert link.b.reasm.bytes_held == 0


def test_overlapping_fragments_are_dropped():
    link = Link()
    sock = link.b.udp_bind(7)
    dgram = big_datagram(2000)
    frags = fragments(dgram, 9, 1024)  # [0,1024) and [1024,2008)
    evil = fragments(b"\xee" * 1024, 9, 1024)[0]  # 1024 bytes at offset 0 with MF ...
    evil = bytearray(evil)
    evil[14 + 6 : 14 + 8] = (h.IP_MF | 64).to_bytes(2, "big")  # ... moved to offset 512: overlaps both
    evil[24:26] = b"\0\0"
    evil[24:26] = h.checksum(bytes(evil[14:34])).to_bytes(2, "big")
    link.b.input(frags[0], link.t)
    link.b.input(bytes(evil), link.t)
    link.b.input(frags[1], link.t)
    assert link.b.stats["frag_overlap"] == 1
    assert sock.recvfrom()[0] == dgram[8:]  # the first copy won


def test_reassembly_times_out_and_memory_is_bounded():
    link = Link()
    link.b.udp_bind(7)
    dgram = big_datagram(3000)
    link.b.input(fragments(dgram, 5, 1480)[0], link.t)
    assert link.b.reasm.bytes_held == 1480
    assert link.b.next_timer() == link.t + 30_000_000_000
    link.b.poll(link.t + 30_000_000_000)
    assert link.b.stats["frag_timeout"] == 1 and link.b.reasm.bytes_held == 0
    for ident in range(500):  # first fragments only: never complete
        link.b.input(fragments(dgram, ident, 1480)[0], link.t)
    assert len(link.b.reasm.datagrams) <= 64 and link.b.reasm.bytes_held <= 256 * 1024
    assert link.b.stats["frag_evicted"] > 0


# ------------------------------------------------------------------ TCP
def tcp_frame(sport, dport, seq, ack, flags, payload=b"") -> bytes:
    seg = h.tcp(A, B, sport, dport, seq, ack, flags, 1000, payload)
    return h.ethernet(h.mac_bytes(MAC_B), h.mac_bytes(MAC_A), h.ETH_P_IP, h.ipv4(A, B, h.IPPROTO_TCP, seg, 1))


def sent_tcp(link: Link, side: str) -> list[tuple]:
    out = []
    for f in link.sent[side]:
        if f[12:14] == b"\x08\x00" and f[23] == h.IPPROTO_TCP:
            out.append(h.TCP.unpack_from(f, 34))
    return out


def test_rst_for_segments_to_no_socket():
    link = Link()
    link.b.arp.entries[A] = (h.mac_bytes(MAC_A), 1 << 62)
    link.b.input(tcp_frame(4000, 80, 1000, 0, 0x02, b""), link.t)  # SYN to a closed port
    sport, dport, seq, ack, _o, flags, *_ = sent_tcp(link, "b")[-1]
    assert (sport, dport, seq, ack, flags) == (80, 4000, 0, 1001, 0x14)  # RST|ACK, ack = SEG.SEQ + 1
    link.b.input(tcp_frame(4000, 80, 1000, 777, 0x10, b"data"), link.t)  # an ACK: <SEQ=SEG.ACK><RST>
    sport, dport, seq, ack, _o, flags, *_ = sent_tcp(link, "b")[-1]
    assert (seq, flags) == (777, 0x04)
    n = len(sent_tcp(link, "b"))
    link.b.input(tcp_frame(4000, 80, 1000, 777, 0x04), link.t)  # a RST is never answered
    assert len(sent_tcp(link, "b")) == n
    assert link.b.stats["tcp_resets_sent"] == 2


def test_iss_is_deterministic_and_keyed_by_the_tuple():
    from libos.net.tcpconn import iss

    assert iss(A, 1, B, 2, 0) == iss(A, 1, B, 2, 0)
    assert iss(A, 1, B, 2, 0) != iss(A, 1, B, 3, 0)
    assert iss(A, 1, B, 2, 4000) == (iss(A, 1, B, 2, 0) + 1) & 0xFFFFFFFF  # M: a 4 us clock


def test_tcp_connect_to_a_closed_port_is_refused():
    link = Link()
    conn = link.a.tcp_connect(IP_B, 80)
    link.run(lambda: conn.tcb.error is not None)
    assert conn.tcb.error == 111  # ECONNREFUSED


def test_tcp_echo_of_one_mebibyte():
    link = Link()
    lst = link.b.tcp_listen(7, 4)
    client = link.a.tcp_connect(IP_B, 7)
    link.run(lambda: lst.readable)
    server = link.b.tcp_accept(lst)
    assert client.tcb.established and server.tcb.established
    data = random.Random(5).randbytes(1 << 20)
    sent = echoed = 0
    got = bytearray()
    for _ in range(100_000):
        if sent < len(data):
            sent += link.a.tcp_send(client, data[sent : sent + 65536])
        while server.tcb.readable and not server.tcb.eof:
            chunk = link.b.tcp_recv(server, 65536)
            if not chunk:
                break
            echoed += len(chunk)
            pending = chunk
            while pending:
                n = link.b.tcp_send(server, pending)
                pending = pending[n:]
                if n == 0:
                    link.deliver()
        got += link.a.tcp_recv(client, 1 << 20)
        if len(got) == len(data):
            break
        if not link.deliver():
            t = link.a.next_timer() or link.b.next_timer()
            if t is not None:
                link.t = max(link.t, t)
                link.a.poll(link.t)
                link.b.poll(link.t)
    assert bytes(got) == data
    link.a.tcp_close(client)
    link.run(lambda: server.tcb.eof)
    link.b.tcp_close(server)
    link.run(lambda: client.tcb.finished and server.tcb.finished)
    assert not link.a.conns and not link.b.conns


def test_tcp_over_a_lossy_link_runs_on_the_stack_timers():
    link = Link()
    rng = random.Random(11)
    link.drop = lambda side, f: f[12:14] == b"\x08\x00" and rng.random() < 0.1  # IPv4 only: ARP resolves
    lst = link.b.tcp_listen(9, 1)
    client = link.a.tcp_connect(IP_B, 9)
    link.run(lambda: lst.readable)
    server = link.b.tcp_accept(lst)
    data = random.Random(2).randbytes(64 * 1024)
    sent = 0
    got = bytearray()
    while len(got) < len(data):
        if sent < len(data):
            sent += link.a.tcp_send(client, data[sent : sent + 8192])
        more = sent < len(data)
        link.run(lambda more=more: server.tcb.readable or (more and client.tcb.writable), 60_000_000_000)
        got += link.b.tcp_recv(server, 1 << 20)
    assert bytes(got) == data
    assert link.a.stats["tcp_segments_sent"] > len(data) // 1460  # retransmissions happened


def test_echo_through_a_closed_window_over_a_lossy_reordering_wire_keeps_moving():
    # The server's app reads only what it can echo, so its receive window closes while the
    # client still has data outstanding. The client's ACKs of the echo must stay acceptable to a
    # closed window (seq at its right edge, Linux's tcp_acceptable_seq): with seq = SND.MAX they
    # were dropped with their ACK (RFC 9293 3.10.7.4), and this run took 409 s of guest time, in
    # RTO backoffs up to 60 s, instead of 8 s.
    link = FaultyLink(seed=3)
    lst = link.b.tcp_listen(7, 4)
    client = link.a.tcp_connect(IP_B, 7)
    link.run(lambda: lst.readable)
    server = link.b.tcp_accept(lst)
    data = random.Random(3).randbytes(1 << 20)
    start, sent, pending, got = link.t, 0, b"", bytearray()
    while len(got) < len(data):
        if sent < len(data):
            sent += link.a.tcp_send(client, data[sent:sent + 65536])
        if not pending and server.tcb.readable:
            pending = link.b.tcp_recv(server, 65536)
        if pending:
            pending = pending[link.b.tcp_send(server, pending):]
        got += link.a.tcp_recv(client, 1 << 20)
        if not link.deliver():
            link.release()
            if link.deliver():
                continue
            link.t = max(link.t, min(t for t in (link.a.next_timer(), link.b.next_timer()) if t is not None))
            link.a.poll(link.t)
            link.b.poll(link.t)
        assert link.t - start < 60 * 10**9, f"1 MiB not echoed in 60 s of guest time: {len(got)} bytes"
    assert bytes(got) == data
