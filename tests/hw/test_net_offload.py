"""TSO and GRO in the NIC (hw/net/offload.py), and through the exokernel and the libOS end to end."""

from __future__ import annotations

import random

import pytest

from hw.net import offload
from hw.net import packets as pk

SRC, DST = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
ETH = bytes.fromhex("525500000202") + bytes.fromhex("525400123456") + b"\x08\x00"


def frame(seq: int, data: bytes, flags: int = 0x10, ack: int = 77, window: int = 500, ident: int = 1) -> bytes:
    return ETH + pk.ipv4(SRC, DST, pk.PROTO_TCP, pk.tcp(SRC, DST, 5000, 80, seq, ack, flags, window, data), ident)


@pytest.mark.parametrize("size,mss", [(20_000, 1460), (65_000, 1448), (1460, 1460), (3000, 536)])
def test_segment_cuts_at_the_mss_with_valid_headers(size, mss):
    data = random.Random(size).randbytes(size)
    big = frame(1000, data, flags=0x10 | 0x08 | 0x01, ident=40)  # ACK PSH FIN
    parts = offload.segment(big, mss)
    assert len(parts) == -(-size // mss)
    got = b""
    for i, p in enumerate(parts):
        f = pk.parse(p)
        assert f is not None, "a piece's checksums do not verify"
        assert f.seq == (1000 + i * mss) and len(f.payload) == min(mss, size - i * mss)
        last = i == len(parts) - 1
        assert bool(f.flags & 0x01) == last and bool(f.flags & 0x08) == last and f.flags & 0x10
        assert int.from_bytes(p[18:20], "big") == 40 + i  # IP identification
        got += f.payload
    assert got == data


def test_coalesce_merges_one_flow_in_order_and_stops_where_it_must():
    data = random.Random(1).randbytes(10 * 1460)
    parts = offload.segment(frame(1000, data, flags=0x18), 1460)
    out = offload.coalesce(parts)
    assert len(out) == 1
    merged, verified, originals = out[0]
    assert verified and originals == parts and merged[54:] == data and merged[47] & 0x08  # PSH kept
    assert pk.checksum(merged[14:34]) == 0  # the IP header is rewritten whole
    # A gap, another flow, a pure ACK and a PSH in the middle each end a run.
    gap = offload.segment(frame(1000, data[:2920]), 1460) + offload.segment(frame(1000 + 4380, data[:1460]), 1460)
    assert [len(o[2]) for o in offload.coalesce(gap)] == [2, 1]
    other = frame(1000 + 1460, data[:1460], window=501)  # a different window: another run
    assert [len(o[2]) for o in offload.coalesce([parts[0], other])] == [1, 1]
    ack = frame(1000, b"")
    assert [o[1] for o in offload.coalesce([ack])] == [False]  # not data: not checked, passed on
    pushed = frame(1000, data[:1460], flags=0x18)
    follow = frame(2460, data[1460:2920])
    assert [len(o[2]) for o in offload.coalesce([pushed, follow])] == [1, 1]


def test_coalesce_passes_a_corrupt_segment_through_unverified():
    data = bytes(2920)
    a, b = offload.segment(frame(1000, data), 1460)
    bad = bytearray(b)
    bad[-1] ^= 0xFF
    out = offload.coalesce([a, bytes(bad)])
    assert [(len(o[2]), o[1]) for o in out] == [(1, True), (1, False)]  # the guest's stack drops it


def test_tso_and_gro_between_two_guests_on_the_switch(tmp_path):
    """tcp_echo and nettest over the switch: the senders merge segments (TSO), the wire (pcap)
    carries only MTU-sized frames, and receivers get merged runs (GRO); 1 MiB echoes intact."""
    from conftest import boot

    from benchmarks.guest import app_with_args
    from hw.net.pcap import read_pcap

    server = app_with_args(tmp_path, "tcp_echo", ["1"])
    client = app_with_args(tmp_path, "nettest", ["tcp", "10.0.2.15", "7", str(1 << 20)])
    pcap = tmp_path / "wire.pcap"
    b = boot(server, client, net="switch", max_instructions=None, pcap=str(pcap))
    assert [e.exit_status for e in b.envs] == [0, 0], [e.fault for e in b.envs]
    assert b.stdout.startswith(b"tcp: 1048576 bytes echoed intact")
    mods = [m for e in b.envs for m in (e.modules.values() if isinstance(e.modules, dict) else e.modules)]
    stacks = [m.stack for m in mods if getattr(m, "stack", None) is not None]
    assert len(stacks) == 2
    assert sum(s.stats.get("tso_merged", 0) for s in stacks) > 100
    assert b.kernel.net.stats["coalesced"] > 100
    frames = read_pcap(str(pcap))
    assert frames and max(len(f) for _t, f in frames) <= 1514
