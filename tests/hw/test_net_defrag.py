"""The user backend's IPv4 reassembly (hw/net/defrag.py): whole datagrams back, floods bounded."""

from __future__ import annotations

import random

from hw.net import defrag
from hw.net import packets as pk

SRC, DST = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
ETH = pk.BROADCAST + bytes(6) + b"\x08\x00"


def frags(payload: bytes, ident: int, mtu: int = 1500) -> list[bytes]:
    return [ETH + p for p in pk.ipv4_fragments(SRC, DST, pk.PROTO_UDP, payload, ident, mtu)]


def datagram(n: int, seed: int = 1) -> bytes:
    return pk.udp(SRC, DST, 7, 9, random.Random(seed).randbytes(n))


def test_not_a_fragment_passes_through():
    d = defrag.Defragmenter({})
    [one] = frags(datagram(100), 1)
    assert d.push(one, 0.0) is one
    assert d.push(b"\x00" * 20, 0.0) == b"\x00" * 20  # not IPv4 at all: parse() will drop it


def test_in_order_shuffled_and_interleaved_datagrams_come_back_whole():
    stats: dict[str, int] = {}
    d = defrag.Defragmenter(stats)
    a, b = datagram(65_507 - 8, 1), datagram(5000, 2)
    fa, fb = frags(a, 1), frags(b, 2)
    order = fa + fb
    random.Random(3).shuffle(order)
    out = [w for f in order if (w := d.push(f, 0.0)) is not None]
    assert len(out) == 2
    for whole in out:
        p = pk.parse(whole)
        assert p is not None and p.payload in (a[8:], b[8:])
    assert stats["reassembled"] == 2 and d.bytes_held == 0 and not d.datagrams


def test_overlap_and_inconsistent_length_drop_the_datagram():
    stats: dict[str, int] = {}
    d = defrag.Defragmenter(stats)
    f = frags(datagram(4000), 5)
    assert d.push(f[0], 0.0) is None
    bad = bytearray(f[1])
    bad[14 + 6:14 + 8] = (0x2000 | 1).to_bytes(2, "big")  # offset 8: overlaps the first
    bad[14 + 10:14 + 12] = b"\0\0"
    bad[14 + 10:14 + 12] = pk.checksum(bytes(bad[14:34])).to_bytes(2, "big")
    assert d.push(bytes(bad), 0.0) is None
    assert stats["frag_overlap"] == 1 and not d.datagrams
    for x in f[1:]:  # what is left can never complete
        assert d.push(x, 0.0) is None


def test_timeout_and_memory_bounds():
    stats: dict[str, int] = {}
    d = defrag.Defragmenter(stats)
    for ident in range(defrag.MAX_DATAGRAMS + 10):  # first fragments only: a flood that never completes
        d.push(frags(datagram(3000, ident), ident)[0], 0.0)
    assert len(d.datagrams) <= defrag.MAX_DATAGRAMS and d.bytes_held <= defrag.MAX_BYTES
    assert stats["frag_evicted"] == 10
    late = frags(datagram(3000, 99), 999)
    d.push(late[0], defrag.TIMEOUT + 1)
    assert stats["frag_timeout"] == defrag.MAX_DATAGRAMS and len(d.datagrams) == 1
    assert d.push(late[1], defrag.TIMEOUT + 1) is None and d.push(late[2], defrag.TIMEOUT + 1) is not None
