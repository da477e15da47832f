"""TCP segmentation offload (TSO) and receive coalescing (GRO): the NIC, not the guest, deals in
MTU-sized segments.

A real NIC (and virtio-net, which QEMU gives its guests) lets the OS hand it one large TCP
segment with a segment size and cuts it into MTU-sized frames on the wire (Linux: "TSO" /
"GSO", Documentation/networking/segmentation-offloads.rst); on receive it merges consecutive
segments of one flow into one large one before the OS sees them ("GRO"), after checking
their checksums. Per-frame work in the guest (and here, per-frame Python) then happens once
per up to 64 KiB instead of once per 1,460 bytes.

``segment`` is the transmit side: RFC 9293's rules for cutting a stream into segments (each
with the first's header, its own sequence number, IP identification, lengths and
checksums; PSH and FIN only on the last). ``coalesce`` is the receive side, with the
conditions Linux's tcp_gro_receive applies: IPv4 without options or fragmentation, the same
addresses, ports, ACK number, window and TCP options, the next sequence number, only ACK
(and PSH on the last) set, data in every segment, and a checksum that verifies; anything
else ends the run and passes through unchanged.
"""

from __future__ import annotations

import struct

from hw.net import packets as pk

_IP = struct.Struct("!BBHHHBBH4s4s")
MERGE_MAX = 65_535 - 14  # a merged frame's length fits the ring slot's u16 (exo/abi.py NET_SLOT)
_ACK, _PSH = 0x10, 0x08


def _tcp_checksum(src: bytes, dst: bytes, seg: bytes | bytearray | memoryview) -> int:
    pseudo = src + dst + struct.pack("!BBH", 0, pk.PROTO_TCP, len(seg))  # RFC 9293 3.1
    return pk.checksum(seg, 0xFFFF - pk.checksum(pseudo))  # the pseudo-header's sum, added in


def segment(frame: bytes, mss: int) -> list[bytes]:
    """An Ethernet/IPv4/TCP frame whose payload exceeds ``mss`` as frames of ``mss`` payload
    bytes each (the last shorter)."""
    ihl = (frame[14] & 0xF) * 4
    tcp_at = 14 + ihl
    doff = (frame[tcp_at + 12] >> 4) * 4
    data_at = tcp_at + doff
    payload = memoryview(frame)[data_at:]
    if len(payload) <= mss:
        return [frame]
    eth, ip_hdr, tcp_hdr = frame[:14], bytearray(frame[14:tcp_at]), bytearray(frame[tcp_at:data_at])
    src, dst = bytes(ip_hdr[12:16]), bytes(ip_hdr[16:20])
    ident = int.from_bytes(ip_hdr[4:6], "big")
    seq = int.from_bytes(tcp_hdr[4:8], "big")
    flags = tcp_hdr[13]
    out = []
    for i, off in enumerate(range(0, len(payload), mss)):
        piece = payload[off:off + mss]
        last = off + mss >= len(payload)
        ip_hdr[2:4] = (ihl + doff + len(piece)).to_bytes(2, "big")
        ip_hdr[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
        ip_hdr[10:12] = b"\0\0"
        ip_hdr[10:12] = pk.checksum(ip_hdr).to_bytes(2, "big")
        tcp_hdr[4:8] = ((seq + off) & 0xFFFFFFFF).to_bytes(4, "big")
        tcp_hdr[13] = flags if last else flags & ~(0x01 | _PSH)  # FIN and PSH end the stream's last piece
        tcp_hdr[16:18] = b"\0\0"
        seg = bytes(tcp_hdr) + piece
        c = _tcp_checksum(src, dst, seg)
        out.append(eth + bytes(ip_hdr) + seg[:16] + c.to_bytes(2, "big") + seg[18:])
    return out


def _key(frame: bytes) -> tuple | None:
    """(flow, seq, payload length, header length) of a frame GRO may merge, else None."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[14] != 0x45:
        return None
    _v, _tos, total, _id, frag, _ttl, proto, _c, src, dst = _IP.unpack_from(frame, 14)
    if proto != pk.PROTO_TCP or frag & 0x3FFF or 14 + total > len(frame) or total < 40:
        return None
    doff = (frame[46] >> 4) * 4
    flags = frame[47]
    if doff < 20 or 20 + doff > total or flags & ~(_ACK | _PSH) or not flags & _ACK:
        return None
    plen = total - 20 - doff
    if plen <= 0:
        return None
    # flow: MACs, addresses, ports, ACK number, window and options must all match
    flow = (frame[0:12], src, dst, frame[34:38], frame[42:46], frame[48:50], frame[54:34 + doff])
    return flow, int.from_bytes(frame[38:42], "big"), plen, 34 + doff


def coalesce(frames: list[bytes]) -> list[tuple[bytes, bool, list[bytes]]]:
    """The frames, runs of consecutive TCP segments of one flow merged: (frame, checksums
    verified, the original frames). A merged frame's TCP checksum field is not valid (the NIC
    verified every part); the guest is told so and does not check it."""
    out: list[tuple[bytes, bool, list[bytes]]] = []
    run: list[tuple[bytes, int, int]] = []  # (frame, header end, payload length)
    flow: tuple | None = None
    nxt = size = 0

    def flush() -> None:
        if len(run) == 1:
            out.append((run[0][0], True, [run[0][0]]))
        elif run:
            first, hdr_end, _n = run[0]
            body = b"".join(f[h:h + n] for f, h, n in run)
            ip_hdr = bytearray(first[14:34])
            ip_hdr[2:4] = (hdr_end - 14 + len(body)).to_bytes(2, "big")
            ip_hdr[10:12] = b"\0\0"
            ip_hdr[10:12] = pk.checksum(ip_hdr).to_bytes(2, "big")
            tcp_hdr = bytearray(first[34:hdr_end])
            tcp_hdr[13] = run[-1][0][47]  # PSH if the last had it
            out.append((first[:14] + bytes(ip_hdr) + bytes(tcp_hdr) + body, True, [f for f, _h, _n in run]))
        run.clear()

    for f in frames:
        k = _key(f)
        if k is not None and _tcp_checksum(k[0][1], k[0][2], f[34:k[3] + k[2]]) != 0:
            k = None  # corrupt: passes through unchanged; the guest's stack drops and counts it
        if k is None:
            flush()
            flow = None
            out.append((f, False, [f]))
            continue
        fl, seq, plen, hdr_end = k
        if not (run and fl == flow and seq == nxt and not run[-1][0][47] & _PSH and size + plen <= MERGE_MAX):
            flush()
            flow, size = fl, hdr_end
        run.append((f, hdr_end, plen))
        nxt = (seq + plen) & 0xFFFFFFFF
        size += plen
    flush()
    return out
