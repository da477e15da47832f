"""Lab 6 (network): ARP, IPv4 and UDP in the libOS stack, graded over the in-process switch.

Two guests share one machine's switch (app 0 is 10.0.2.15, app 1 is 10.0.2.16: exo/net.py): the
stop-and-wait echo of guest_apps/labs/stopwait, server and client. Both run the student's stack, so
the tests also read the frames that crossed the wire (``pcap``) with a parser of their own: a stack
that is wrong in the same way at both ends still gets no points for the wire format. Loss,
duplication and reordering come from the NIC's seeded fault injection (hw/net/faults.py) under the
virtual clock, so every run, and every score, is the same each time. For IPv4 reassembly the grader
is itself a host on the wire (`Peer`): it puts hand-made frames (an ARP request, fragments) on the
switch and reads the answers from the capture.

Extra credit (not part of the 100): TCP's retransmission timeout, graded by the TCP echo over a lossy
wire (the test marked ``extra=True``; its points count on top of the lab's 100).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

import exo
from exo.api import System
from exo.labs.plugin import expect

ROOT = Path(exo.__file__).resolve().parents[1]  # the tree being graded (the grader runs a copy of this file)
STOPWAIT = ROOT / "guest_apps" / "labs" / "stopwait"
BUDGET = 400_000_000
SERVER, CLIENT = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 16])
SERVER_MAC, CLIENT_MAC = bytes.fromhex("525400123456"), bytes.fromhex("525400123457")  # exo/net.py app_address
BROADCAST = b"\xff" * 6
LOSSY = "loss=0.1,dup=0.05,reorder=0.1,seed=1"


# ---------------------------------------------------------------- the wire, read independently
def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(time in s, frame) of each record of a little-endian classic pcap file (LINKTYPE_ETHERNET)."""
    data = path.read_bytes()
    magic, _maj, _min, _tz, _sig, _snap, link = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and link == 1, "not a little-endian Ethernet pcap"
    frames, off = [], 24
    while off < len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, off)
        frames.append((sec + usec / 1e6, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return frames


def inet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words (0 if data verifies)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def arp_frames(frames):
    """(time, dst MAC, src MAC, op, sha, spa, tha, tpa) of each ARP frame."""
    out = []
    for t, f in frames:
        if len(f) >= 42 and f[12:14] == b"\x08\x06":
            htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", f, 14)
            assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4), f"ARP for other than Ethernet/IPv4: {f.hex()}"
            out.append((t, f[0:6], f[6:12], op, f[22:28], f[28:32], f[32:38], f[38:42]))
    return out


def ipv4_frames(frames):
    """(src MAC, IPv4 header fields dict, payload) of each IPv4 frame, checking what every one must be."""
    out = []
    for _t, f in frames:
        if f[12:14] != b"\x08\x00":
            continue
        ip = f[14:]
        vihl, _tos, total, ident, frag, ttl, proto, _c, src, dst = struct.unpack_from("!BBHHHBBH4s4s", ip)
        assert vihl == 0x45, f"version/IHL {vihl:#x}, expected 0x45 (IPv4, 20-byte header)"
        assert 20 <= total <= len(ip), f"total length {total} with {len(ip)} bytes on the wire"
        assert inet_checksum(ip[:20]) == 0, f"bad IPv4 header checksum in {ip[:20].hex()}"
        assert frag & 0x3FFF == 0, "a fragment: the stack never fragments what it sends"
        assert ttl == 64, f"TTL {ttl}, expected 64 (RFC 1122 3.2.1.7, the stack's TTL)"
        out.append((f[6:12], dict(total=total, ident=ident, proto=proto, src=src, dst=dst), ip[20:total]))
    return out


# ---------------------------------------------------------------- running the two guests
def with_args(app: Path, tmp_path: Path, name: str, *args: str) -> Path:
    """A copy of APP whose app.toml passes ARGS (each app of a run gets its own)."""
    d = tmp_path / name
    shutil.copytree(app, d)
    toml = d / "app.toml"
    quoted = ", ".join(f'"{a}"' for a in args)
    toml.write_text(toml.read_text().replace("[libos]", f"args = [{quoted}]\n\n[libos]"))
    return d


def echo(boot, tmp_path: Path, n: int, *, port: int = 7, faults: str | None = None):
    """The stopwait server (app 0, port 7) and a client sending N datagrams to PORT; returns the run and
    the frames on the wire."""
    pcap = tmp_path / "wire.pcap"
    r = boot(with_args(STOPWAIT, tmp_path, "server", "server", "7", "3000"),
             with_args(STOPWAIT, tmp_path, "client", "client", "10.0.2.15", str(port), str(n)),
             net="switch", net_faults=faults, pcap=str(pcap), max_instructions=BUDGET)
    no_faults(r)
    return r, read_pcap(pcap)


def no_faults(r) -> None:
    """Fail with the fault reports (readable) if a guest was stopped by one."""
    if r.reports:
        pytest.fail("; ".join(f"{rep.env_name}: {rep.kind}: {rep.error or rep.reason}" for rep in r.reports)
                    + f"\nconsole:\n{r.stdout.decode(errors='replace')}", pytrace=False)


class Peer:
    """The grader as a host on the switch (10.0.2.99): frames it builds itself go on the wire, and
    what the guest sends back is read from the capture. The guest is udp_echo (app 0, 10.0.2.15)."""

    MAC, IP = bytes.fromhex("02000000aa01"), bytes([10, 0, 2, 99])
    PORT = 5555

    def __init__(self, tmp_path: Path, datagrams: int) -> None:
        self.pcap = tmp_path / "wire.pcap"
        self.system = System([with_args(ROOT / "guest_apps" / "udp_echo", tmp_path, "server", str(datagrams))],
                             net="switch", pcap=str(self.pcap))

    def _eth(self, dst: bytes, ethertype: int, payload: bytes) -> bytes:
        return dst + self.MAC + struct.pack("!H", ethertype) + payload

    def arp_request(self) -> bytes:
        """Who has 10.0.2.15? Tell 10.0.2.99: the server answers, and learns us (RFC 826)."""
        return self._eth(BROADCAST, 0x0806, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, self.MAC, self.IP,
                                                        bytes(6), SERVER))

    def udp(self, data: bytes) -> bytes:
        """A UDP datagram (header and data) to port 7, with its checksum."""
        seg = struct.pack("!HHHH", self.PORT, 7, 8 + len(data), 0) + data
        pseudo = self.IP + SERVER + struct.pack("!BBH", 0, 17, len(seg))
        return seg[:6] + struct.pack("!H", inet_checksum(pseudo + seg)) + seg[8:]

    def fragment(self, payload: bytes, ident: int, offset: int, more: bool) -> bytes:
        """One IPv4 fragment of a UDP datagram: PAYLOAD is the piece at byte OFFSET."""
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, (0x2000 if more else 0) | offset // 8,
                          64, 17, 0, self.IP, SERVER)
        hdr = hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]
        return self._eth(SERVER_MAC, 0x0800, hdr + payload)

    def fragments(self, data: bytes, ident: int, size: int = 512) -> list[bytes]:
        seg = self.udp(data)
        return [self.fragment(seg[o:o + size], ident, o, o + size < len(seg)) for o in range(0, len(seg), size)]

    def run(self, frames: list[bytes]) -> list[bytes]:
        """Boot the server, put FRAMES on the wire, run until it is done (or waits for nothing more);
        the UDP payloads it sent us, in order (every frame it sent is checked as ipv4_frames does)."""
        s = self.system
        try:
            s.run(BUDGET)
            for f in frames:
                s.nic.backend.send(f)
            r = s.run(BUDGET)
        finally:
            s.close()
        no_faults(r)
        wire = read_pcap(self.pcap)
        arps = arp_frames(wire)
        assert arps and arps[0][1:] == (self.MAC, SERVER_MAC, 2, SERVER_MAC, SERVER, self.MAC, self.IP), \
            "the server did not answer the grader's ARP request (10.0.2.99 asks who has 10.0.2.15)"
        out = []
        for mac, ip, payload in ipv4_frames(wire):
            assert (mac, ip["src"], ip["dst"], ip["proto"]) == (SERVER_MAC, SERVER, self.IP, 17), ip
            sport, dport, length, _c = struct.unpack_from("!HHHH", payload)
            assert (sport, dport, length) == (7, self.PORT, len(payload)), (sport, dport, length)
            out.append(payload[8:])
        return out


# ---------------------------------------------------------------- the graded tests
@pytest.mark.lab(6, points=10)
def test_arp_request_and_reply(boot, tmp_path):
    """arp-resolve, arp-input, arp-learn: the client asks who has 10.0.2.15 once, the server answers,
    learns the client from the request (so it never asks), and the datagrams then flow."""
    r, frames = echo(boot, tmp_path, 3)
    arps = arp_frames(frames)
    assert arps, "no ARP frame on the wire"
    _t, dst, src, op, sha, spa, tha, tpa = arps[0]
    assert (dst, src, op) == (BROADCAST, CLIENT_MAC, 1), "the first frame must be the client's broadcast ARP request"
    assert (sha, spa, tpa) == (CLIENT_MAC, CLIENT, SERVER), "ARP request: wrong sender or target"
    assert len(arps) == 2, f"{len(arps)} ARP frames; expected one request and one reply"
    _t, dst, src, op, sha, spa, tha, tpa = arps[1]
    assert (dst, src, op) == (CLIENT_MAC, SERVER_MAC, 2), "the second ARP frame must be the server's reply to the client"
    assert (sha, spa, tha, tpa) == (SERVER_MAC, SERVER, CLIENT_MAC, CLIENT), "ARP reply: wrong addresses"
    expect(r.stdout, r"^stopwait: 3 datagrams echoed intact, 0 resent")


@pytest.mark.lab(6, points=15)
def test_udp_echo(boot, tmp_path):
    """ip-output, ip-input, udp-header, udp-input: 20 datagrams of 5 to 1,404 bytes echoed intact."""
    r, _frames = echo(boot, tmp_path, 20)
    expect(r.stdout, r"^stopwait: 20 datagrams echoed intact, 0 resent, 0 stale echoes$",
           r"^stopwait server: 20 datagrams echoed$")
    assert r.exit_status == 0 and not r.stuck


@pytest.mark.lab(6, points=15)
def test_ipv4_and_udp_on_the_wire(boot, tmp_path):
    """ip-header, udp-header, ip-output: every packet read back by an independent parser: IPv4 header
    and checksum, addresses, identification, UDP length, ports and checksum over the pseudo-header."""
    _r, frames = echo(boot, tmp_path, 20)
    packets = ipv4_frames(frames)
    assert len(packets) == 40, f"{len(packets)} IPv4 packets; expected 20 datagrams and 20 echoes"
    idents: dict[bytes, list[int]] = {}
    for mac, ip, payload in packets:
        assert ip["proto"] == 17, f"protocol {ip['proto']}, expected UDP (17)"
        assert (mac, ip["src"], ip["dst"]) in ((CLIENT_MAC, CLIENT, SERVER), (SERVER_MAC, SERVER, CLIENT))
        idents.setdefault(ip["src"], []).append(ip["ident"])
        sport, dport, length, csum = struct.unpack_from("!HHHH", payload)
        assert length == len(payload), f"UDP length {length} in an IP payload of {len(payload)} bytes"
        pseudo = ip["src"] + ip["dst"] + struct.pack("!BBH", 0, 17, length)
        assert csum != 0 and inet_checksum(pseudo + payload) == 0, "bad UDP checksum (RFC 768 pseudo-header)"
        ports = (sport, dport) if ip["src"] == CLIENT else (dport, sport)
        assert ports[1] == 7 and 49152 <= ports[0] <= 65535, f"ports {sport} -> {dport}"
    for src, ids in idents.items():
        assert len(set(ids)) == len(ids), f"{'.'.join(map(str, src))} reused an IP identification"


@pytest.mark.lab(6, points=10)
def test_port_unreachable(boot, tmp_path):
    """udp-input: a datagram to a port nobody has bound gets ICMP port unreachable (RFC 1122 3.2.2.1)
    quoting its IP header and first 8 bytes; the client gives up after its tries."""
    r, frames = echo(boot, tmp_path, 1, port=9)
    expect(r.stdout, r"^stopwait: FAILED: no echo of datagram 0")
    icmps = [(ip, p) for _m, ip, p in ipv4_frames(frames) if ip["proto"] == 1]
    sent = [p for _m, ip, p in ipv4_frames(frames) if ip["proto"] == 17]
    assert icmps, "no ICMP message on the wire"
    # The server lives 3 s (its idle limit) and the client resends every 300 ms: 10 answers at least.
    assert len(icmps) >= 10, f"{len(icmps)} ICMP messages for {len(sent)} datagrams to a closed port"
    ip, msg = icmps[0]
    assert (ip["src"], ip["dst"]) == (SERVER, CLIENT)
    assert msg[:2] == b"\x03\x03" and inet_checksum(msg) == 0, f"not a valid port unreachable: {msg[:8].hex()}"
    quoted = msg[8:]
    assert quoted[12:20] == CLIENT + SERVER and quoted[20:24] == sent[0][:4], "the quoted datagram is not the one sent"


@pytest.mark.lab(6, points=20)
def test_udp_over_a_lossy_reordering_wire(boot, tmp_path):
    """Everything, under seeded loss, duplication and reordering: 60 datagrams all come back intact
    (the client resends what was lost), and the wire stays well formed."""
    r, frames = echo(boot, tmp_path, 60, faults=LOSSY)
    nic = r.stats["net"]["nic"]
    assert nic["lost"] and nic["duplicated"] and nic["reordered"], nic
    expect(r.stdout, r"^stopwait: 60 datagrams echoed intact, [1-9]\d* resent")
    assert r.exit_status == 0 and not r.stuck
    ipv4_frames(frames)


@pytest.mark.lab(6, points=10)
def test_arp_retry_after_a_lost_request(boot, tmp_path):
    """arp-retry: the client's first ARP request is lost (this seed drops it); the stack resends it
    RETRY_NS (1 s) later, the queued datagram leaves when the reply comes, and the echo completes."""
    r, frames = echo(boot, tmp_path, 5, faults="loss=0.5,seed=3")
    requests = [a for a in arp_frames(frames) if a[3] == 1]
    assert requests, "no ARP request reached the wire"
    assert requests[0][0] >= 1.0, f"the first ARP request on the wire at {requests[0][0]:.3f} s: not a retry"
    expect(r.stdout, r"^stopwait: 5 datagrams echoed intact")
    assert r.exit_status == 0


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


@pytest.mark.lab(6, points=10)
def test_fragments_reassembled(boot, tmp_path):
    """reassemble: a 1,200-byte datagram in three fragments, the last first: one echo of the whole."""
    peer = Peer(tmp_path, 1)
    data = pattern(1200, 1)
    first, second, last = peer.fragments(data, ident=77)
    echoes = peer.run([peer.arp_request(), last, first, second])
    assert echoes == [data], f"{len(echoes)} echoes; expected one of the reassembled datagram"


@pytest.mark.lab(6, points=10)
def test_duplicate_and_overlapping_fragments(boot, tmp_path):
    """reassemble: exact duplicate fragments are harmless, and a fragment overlapping data already
    held (other bytes: a teardrop) is dropped, the first copy winning (RFC 1858, docs/net-stack.md):
    all three datagrams are echoed once each, intact."""
    peer = Peer(tmp_path, 3)
    a, b, c = pattern(1200, 2), pattern(1200, 3), pattern(900, 4)  # three, three and two fragments
    fa, fb, fc = peer.fragments(a, ident=1), peer.fragments(b, ident=2), peer.fragments(c, ident=3)
    forged = bytes(x ^ 0xFF for x in peer.udp(b)[256:768])
    overlap = peer.fragment(forged, 2, 256, True)  # over the end of b's first fragment and its second
    # (A duplicate that came after its datagram was complete would start a new one: IP does not
    # remember datagrams, so the duplicates here come before the last fragment.)
    echoes = peer.run([peer.arp_request(), fa[0], fa[1], fa[0], fb[0], overlap, fb[1], fb[2], fa[1], fa[2], *fc])
    # b is complete before a (a's last fragment comes after b's): the echoes come in that order.
    assert echoes == [b, a, c], f"echoes of {[len(e) for e in echoes]} bytes; expected three, intact"


@pytest.mark.lab(6, points=10, extra=True)
def test_extra_tcp_retransmission(boot, tmp_path):
    """Extra credit, tcp-rto: 100 KB through the TCP echo over a lossy wire needs retransmission timeouts."""
    r = boot(with_args(ROOT / "guest_apps" / "tcp_echo", tmp_path, "server", "1"),
             with_args(ROOT / "guest_apps" / "nettest", tmp_path, "client", "tcp", "10.0.2.15", "7", "100000"),
             net="switch",
             net_faults="loss=0.08,reorder=0.05,seed=2", max_instructions=BUDGET)
    no_faults(r)
    expect(r.stdout, r"tcp: 100000 bytes echoed intact")
    assert r.exit_status == 0
