"""ARP (RFC 826): the IPv4 -> Ethernet address cache, with requests, retries and timeouts.

Pure: the cache is given the time (ns) and returns the frames to send.
RFC 1122 2.3.2.1: entries time out (here ENTRY_NS after they were last
confirmed by a packet from that host), a request is retried at most once per
RETRY_NS (flood prevention), and packets for an address being resolved are
queued (RFC 1122 2.3.2.2 asks for at least one; QUEUE_MAX here) and sent when
the reply comes, or dropped after MAX_TRIES unanswered requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libos.net import headers as h

ENTRY_NS = 60_000_000_000  # a resolved entry is trusted this long
RETRY_NS = 1_000_000_000  # one request per second while resolving
MAX_TRIES = 3
QUEUE_MAX = 128  # packets held per address being resolved: the 119 fragments of a 65,507-byte datagram at the 576-byte minimum MTU (RFC 791)
CACHE_MAX = 256


@dataclass(slots=True)
class _Pending:
    packets: list[tuple[int, bytes]] = field(default_factory=list)  # (ethertype, payload)
    tries: int = 0
    next_try: int = 0


class ArpCache:
    def __init__(self, mac: bytes, ip: bytes, stats: dict[str, int]) -> None:
        self.mac, self.ip = mac, ip
        self.stats = stats
        self.entries: dict[bytes, tuple[bytes, int]] = {}  # ip -> (mac, expires)
        self.pending: dict[bytes, _Pending] = {}

    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def lookup(self, ip: bytes, now: int) -> bytes | None:
        e = self.entries.get(ip)
        if e is None:
            return None
        if e[1] <= now:
            del self.entries[ip]
            return None
        return e[0]

    def _request(self, ip: bytes) -> bytes:
        self._count("arp_requests_sent")
        return h.ethernet(h.BROADCAST_MAC, self.mac, h.ETH_P_ARP,
                          h.arp(h.ARP_REQUEST, self.mac, self.ip, bytes(6), ip))

    def resolve(self, ip: bytes, ethertype: int, payload: bytes, now: int) -> list[bytes]:
        """Frames to send for ``payload`` to next hop ``ip``: the frame, or an ARP request (payload queued)."""
        # LAB 6 BEGIN arp-resolve: the frame for a resolved next hop, else queue the packet and send the first ARP request
        mac = self.lookup(ip, now)
        if mac is not None:
            return [h.ethernet(mac, self.mac, ethertype, payload)]
        p = self.pending.get(ip)
        if p is None:
            p = self.pending[ip] = _Pending()
        if len(p.packets) >= QUEUE_MAX:
            self._count("arp_queue_dropped")
        else:
            p.packets.append((ethertype, payload))
        if p.tries == 0:
            p.tries, p.next_try = 1, now + RETRY_NS
            return [self._request(ip)]
        return []
        # LAB 6 END

    def _learn(self, ip: bytes, mac: bytes, now: int) -> list[bytes]:
        # LAB 6 BEGIN arp-learn: record an address's MAC (evicting the oldest if full) and send the packets queued for it
        if ip not in self.entries and len(self.entries) >= CACHE_MAX:
            oldest = min(self.entries, key=lambda k: self.entries[k][1])
            del self.entries[oldest]
        self.entries[ip] = (mac, now + ENTRY_NS)
        p = self.pending.pop(ip, None)
        if p is None:
            return []
        return [h.ethernet(mac, self.mac, et, payload) for et, payload in p.packets]
        # LAB 6 END

    def input(self, payload: bytes, now: int) -> list[bytes]:
        """An ARP packet (the Ethernet payload): the frames to send in answer."""
        if len(payload) < 28:
            self._count("arp_truncated")
            return []
        try:
            a = h.ArpCompiled.parse(payload[:28])
        except Exception:  # noqa: BLE001 - construct's ConstError etc.: not Ethernet/IPv4 ARP
            self._count("arp_unsupported")
            return []
        # LAB 6 BEGIN arp-input: learn from a received ARP packet (RFC 826 'Packet reception') and answer requests for us
        spa, sha = a.spa, a.sha
        if sha == self.mac or spa == self.ip or sha[0] & 1 or spa in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
            self._count("arp_bogus")  # our own address, a multicast sender or no sender: learn nothing
            return []
        out: list[bytes] = []
        # RFC 826 "Packet reception": update an existing entry (merge); add one if we are the target.
        if spa in self.entries or spa in self.pending or a.tpa == self.ip:
            out += self._learn(spa, sha, now)
        if a.tpa == self.ip and a.op == h.ARP_REQUEST:
            self._count("arp_replies_sent")
            out.append(h.ethernet(sha, self.mac, h.ETH_P_ARP, h.arp(h.ARP_REPLY, self.mac, self.ip, sha, spa)))
        return out
        # LAB 6 END

    def timers(self, now: int) -> list[bytes]:
        """Retries due now; addresses that never answered drop their queued packets."""
        # LAB 6 BEGIN arp-retry: resend due ARP requests, once per RETRY_NS, and give up after MAX_TRIES
        out = []
        for ip, p in list(self.pending.items()):
            if p.next_try > now:
                continue
            if p.tries >= MAX_TRIES:
                self._count("arp_unresolved_dropped", len(p.packets))
                del self.pending[ip]
                continue
            p.tries += 1
            p.next_try = now + RETRY_NS
            out.append(self._request(ip))
        return out
        # LAB 6 END

    def next_timer(self) -> int | None:
        return min((p.next_try for p in self.pending.values()), default=None)
