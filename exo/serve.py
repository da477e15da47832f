"""A front end that hands each new network flow to an instance of a snapshot (``exo serve``, issue 17).

The app boots once and initialises; where it is ready to serve (``sched_op(READY)``, or the first
time it waits for the network with a port open) it becomes a snapshot's template
(exo/instances.py). From then on the template's packet filters (exo/net.py) claim the app's frames
as before, but the network multiplexer asks this front end which instance each one goes to:

* **A flow** is a TCP connection or a UDP exchange, keyed by (protocol, source address, source
  port, destination port). A new one (a TCP SYN, any UDP datagram) is given an instance: a fresh one
  from the snapshot (``per_request``) or one of a pool of long-lived ones (round robin or the one
  with the fewest flows: ``balance``). Its later frames go to the same instance.
* **Its end** is seen, not asked for: the front end tracks each TCP connection's FINs and their
  acknowledgements, and its resets, in both directions (as a stateful firewall's connection
  tracking does; RFC 9293 3.6 for when a connection is closed). When both FINs are acknowledged
  or a reset went either way, or the instance exits, or nothing passed for ``idle_timeout``
  seconds of guest time, the flow is over; per request, its instance is destroyed with it. So an
  instance can hold nothing of a previous request: it started from the template, which never ran
  after its snapshot, and its writes were copies of its own (copy-on-write).
* **Capacity.** At most ``max_instances`` instances live at once (and each tenant's quotas bound
  its own: ``--tenant``). A new flow beyond that waits in a queue of ``backlog`` flows (its frames
  held, eight at most) and is started when an instance ends; beyond the queue it is dropped and
  counted as refused (a TCP client gets a reset at once: never a crash, never a hang). So is a flow
  no instance could ever take (its tenant's quota or the RAM cannot hold one). An instance that
  faults or exhausts a quota is stopped alone (its report as usual); its open connections are reset
  so that their clients do not hang, and the next flow gets a fresh instance.
* **Neighbours.** No instance may be running when the gateway asks, by ARP, who has the app's
  address: the front end answers for it, as a load balancer answers for its virtual address. Each
  neighbour's latest ARP frame is kept and replayed into a new instance before its first frame, so
  that it knows the gateway's hardware address as its predecessors did (network state, not a
  request's data). ARP frames are delivered to every live instance; other frames no flow claims
  (ICMP, IP fragments after the first) go to the oldest live instance, or are dropped when none is.

Tenants (``--tenant NAME:MATCH,QUOTA...``): flows that match (the forward's host port, the
destination port, or the source network: under user networking the host peer's address, as the
gateway saw it, since every flow reaches the guest from 10.0.2.2) get instances in a tenant of their
own, with its own quotas, that uses the app's network address (exo/tenants.py ``net_app``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exo.abi import ETHERTYPE_ARP, ETHERTYPE_IPV4, EnvStatus
from exo.errors import ExoUserError, HypercallError
from exo.events import WAITING
from exo.frames import OutOfFrames
from exo.instances import Snapshot
from exo.tenants import QuotaError, parse_quota
from hw.net import packets as pk

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel
    from exo.net import Filter
    from exo.tenants import Tenant

SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
RST_WINDOW = 1 << 20  # how far from the expected sequence number a peer's reset may be and still count
HELD_FRAMES = 8  # frames kept per queued flow (a SYN and its retries, a few datagrams)
ARP_NEIGHBOURS = 16  # neighbours whose latest ARP frame is kept
SERVED_LOG = 100_000  # (flow, instance) pairs kept for `served`
BALANCES = ("rr", "least")
_MATCH_KEYS = ("hostport", "port", "src")


def _after(a: int, b: int) -> bool:
    """Sequence number ``a`` is at or after ``b`` (RFC 9293 3.4: arithmetic modulo 2**32)."""
    return (a - b) & 0xFFFF_FFFF < 1 << 31


@dataclass
class TenantRule:
    """``--tenant NAME:MATCH,...,QUOTA,...``: the flows it matches, the quotas of their instances."""

    name: str
    hostport: int | None = None  # the forward's HOSTPORT (user networking)
    port: int | None = None  # the guest port the flow is for
    src: ipaddress.IPv4Network | None = None  # where it comes from
    quota: dict[str, Any] = field(default_factory=dict)

    def matches(self, host_port: int | None, port: int, src: str) -> bool:
        if self.hostport is not None and self.hostport != host_port:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.src is not None:
            try:
                return ipaddress.IPv4Address(src) in self.src
            except ValueError:
                return False
        return True


def parse_tenant(spec: str) -> TenantRule:
    """``gold:hostport=8080,envs=8,frames=4000`` -> a TenantRule (ExoUserError naming --tenant)."""
    name, sep, rest = spec.partition(":")
    if not sep or not name or not rest:
        raise ExoUserError("--tenant", f"{spec!r}: give NAME:MATCH,QUOTA... (MATCH: hostport=N, port=N or "
                                       "src=CIDR; QUOTA as --quota takes it, e.g. envs=8,frames=4000)")
    rule = TenantRule(name)
    quota: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise ExoUserError("--tenant", f"{spec!r}: {item!r} is not KEY=VALUE")
        try:
            if key in ("hostport", "port"):
                n = int(value)
                if not 0 < n < 65536:
                    raise ValueError
                setattr(rule, key, n)
            elif key == "src":
                rule.src = ipaddress.IPv4Network(value, strict=False)
            else:
                quota[key] = value
        except ValueError:
            raise ExoUserError("--tenant", f"{spec!r}: bad {key} {value!r}") from None
    if rule.hostport is None and rule.port is None and rule.src is None:
        raise ExoUserError("--tenant", f"{spec!r}: matches every flow: give hostport=, port= or src=")
    try:
        rule.quota = parse_quota(quota)
    except QuotaError as e:
        raise ExoUserError("--tenant", f"{spec!r}: {e}") from None
    return rule


class Flow:
    """One TCP connection or UDP exchange and the instance serving it (a plain class: the hot path)."""

    __slots__ = ("key", "env", "last", "peer_mac", "peer_fin", "guest_fin", "peer_fin_acked",
                 "guest_fin_acked", "guest_nxt", "peer_nxt")

    def __init__(self, key: tuple, env: Env, now: int, peer_mac: bytes) -> None:
        self.key = key  # (proto, peer ip, peer port, our port)
        self.env = env
        self.last = now
        self.peer_mac = peer_mac
        self.peer_fin: int | None = None  # the sequence number after the peer's FIN
        self.guest_fin: int | None = None
        self.peer_fin_acked = False
        self.guest_fin_acked = False
        self.guest_nxt: int | None = None  # the next sequence number the instance would send
        self.peer_nxt: int | None = None

    @property
    def closed(self) -> bool:
        return self.peer_fin_acked and self.guest_fin_acked


def _tcp_fields(frame: bytes) -> tuple[int, int, int, int]:
    """(seq, ack, flags, end) of an IPv4 TCP frame (one _ports accepted): ``end`` is the sequence
    number after the segment, its SYN and FIN counting one each (RFC 9293 3.4)."""
    ihl = (frame[14] & 0xF) * 4
    t = 14 + ihl
    seq = int.from_bytes(frame[t + 4:t + 8], "big")
    ack = int.from_bytes(frame[t + 8:t + 12], "big")
    flags = frame[t + 13]
    n = max(0, int.from_bytes(frame[16:18], "big") - ihl - (frame[t + 12] >> 4) * 4)
    return seq, ack, flags, (seq + n + bool(flags & SYN) + bool(flags & FIN)) & 0xFFFF_FFFF


def _tcp_frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int,
               seq: int, ack: int, flags: int) -> bytes:
    """A TCP segment with no data, in its IPv4 packet and Ethernet frame (the front end's resets)."""
    seg = pk.tcp(src, dst, sport, dport, seq, ack, flags, 0)
    return pk.ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, pk.ipv4(src, dst, 6, seg))


def _ports(frame: bytes) -> tuple[int, int, int] | None:
    """(proto, source port, destination port) of a first IPv4 TCP/UDP fragment, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    proto = frame[23]
    ihl = (frame[14] & 0xF) * 4
    if proto not in (6, 17) or int.from_bytes(frame[20:22], "big") & 0x1FFF or len(frame) < 14 + ihl + 4:
        return None
    if proto == 6 and len(frame) < 14 + ihl + 20:
        return None
    return proto, int.from_bytes(frame[14 + ihl:16 + ihl], "big"), int.from_bytes(frame[16 + ihl:18 + ihl], "big")


class FrontEnd:
    """Serve ``snapshot``'s template's flows with its instances (see the module's docstring)."""

    def __init__(self, k: Exokernel, snapshot: Snapshot, *, per_request: bool = True, instances: int = 1,
                 balance: str = "rr", max_instances: int = 64, idle_timeout: float = 10.0, backlog: int = 128,
                 tenants: list[TenantRule] = ()) -> None:
        if k.net is None:
            raise ExoUserError("--net", "exo serve needs a network: --net user,hostfwd=... or tap:IFNAME")
        if balance not in BALANCES:
            raise ExoUserError("--balance", f"{balance!r} is not one of {', '.join(BALANCES)}")
        if max_instances <= 0 or instances <= 0 or backlog < 0 or idle_timeout <= 0:
            raise ExoUserError("exo serve", "--max-instances, --instances and --idle-timeout must be positive")
        if tenants and not per_request:
            raise ExoUserError("--tenant", "tenants get instances of their own: it needs --per-request")
        self.k, self.net, self.snapshot = k, k.net, snapshot
        t = snapshot.template
        self.template = t
        self.addr = self.net.address(t)
        self.per_request, self.balance = per_request, balance
        self.max_instances, self.backlog = max_instances, backlog
        self.idle_ns = int(idle_timeout * 1e9)
        self.origin = getattr(self.net.nic.backend, "origin", None)  # user networking: the host peer
        self.rules: list[tuple[TenantRule, Tenant]] = []
        for rule in tenants:
            tenant = k.new_tenant(rule.name, t.tenant)
            k.tenants.apply(tenant, rule.quota)
            self.rules.append((rule, tenant))
        self.flows: dict[tuple, Flow] = {}
        self.live: dict[int, Env] = {}  # instance id -> instance, oldest first
        self.load: dict[int, int] = {}  # instance id -> its flows
        self.pool: list[Env] = []  # long-lived instances
        self._rr = 0
        self.queue: dict[tuple, list[tuple[Filter, bytes]]] = {}  # flows waiting for an instance
        self.arp: dict[bytes, bytes] = {}  # neighbour IPv4 -> its latest ARP frame
        self._ours: set[int] = set()  # instances the front end is destroying (not faults)
        self._dirty = False  # an instance ended: the queue may move, the pool may need one
        self._next_check = 0
        self.served: deque[tuple[tuple, int]] = deque(maxlen=SERVED_LOG)  # (flow, instance id)
        self.stats = {"flows": 0, "started": 0, "ended": 0, "faulted": 0, "queued": 0, "refused": 0,
                      "start_refused": 0, "idle_closed": 0, "resets_sent": 0, "arp_answered": 0,
                      "stray": 0, "peak_live": 0}
        self.last_refusal = ""
        self._said: set[str] = set()
        self.on_refusal: Callable[[str], None] = lambda why: None  # exo serve prints it (once per reason)
        self.net.front_ends[t.id] = self
        self.net.tickers.append(self.tick)
        k.env_reclaim_hooks.append(self._ended)
        if not per_request:
            for _ in range(instances):
                env = self._start(t.tenant)
                if env is None:
                    raise ExoUserError("--instances", f"cannot start {instances} instances: {self.last_refusal}")
                self.pool.append(env)

    # ------------------------------------------------------------ instances
    def _start(self, tenant: Tenant) -> Env | None:
        try:
            env = self.snapshot.start(tenant=tenant)
        except (HypercallError, OutOfFrames) as e:
            self.stats["start_refused"] += 1
            self.last_refusal = e.detail if isinstance(e, HypercallError) else str(e)
            return None
        self.live[env.id] = env
        self.load[env.id] = 0
        self.stats["started"] += 1
        self.stats["peak_live"] = max(self.stats["peak_live"], len(self.live))
        for frame in self.arp.values():  # what its predecessors knew of the neighbours
            self.net.inject(env, frame)
        return env

    def _tenant_for(self, key: tuple) -> Tenant:
        if self.rules:
            proto, src, sport, dport = key
            origin = self.origin(proto, sport, dport) if self.origin is not None else None
            peer = origin[0] if origin else socket.inet_ntoa(src)
            host_port = origin[2] if origin else None
            for rule, tenant in self.rules:
                if rule.matches(host_port, dport, peer):
                    return tenant
        return self.template.tenant

    def _place(self, key: tuple, frame: bytes) -> Env | None:
        """The instance a new flow goes to (None: none can take it now)."""
        if self.per_request:
            if len(self.live) >= self.max_instances:
                self.last_refusal = f"{len(self.live)} instances live (--max-instances {self.max_instances})"
                return None
            return self._start(self._tenant_for(key))
        pool = [e for e in self.pool if e.alive]
        if not pool:
            return None
        if self.balance == "least":
            return min(pool, key=lambda e: self.load[e.id])
        self._rr += 1
        return pool[self._rr % len(pool)]

    def _open(self, key: tuple, env: Env, frame: bytes) -> Flow:
        flow = Flow(key, env, self.k.machine.clock.now_ns(), frame[6:12])
        if key[0] == 6:  # the SYN: what the peer sends next, should the flow be reset before it does
            flow.peer_nxt = _tcp_fields(frame)[3]
        self.flows[key] = flow
        self.load[env.id] += 1
        self.stats["flows"] += 1
        self.served.append((key, env.id))
        return flow

    def _close(self, flow: Flow) -> None:
        self.flows.pop(flow.key, None)
        env = flow.env
        n = self.load.get(env.id)
        if n is None:
            return
        self.load[env.id] = n - 1
        if self.per_request and n == 1 and env.alive:
            self._ours.add(env.id)
            self.k.destroy(env, exit_status=0)

    def _ended(self, env: Env) -> None:
        """Reclaim hook: an instance ended (its flows closed, it exited, or it was stopped)."""
        if self.live.pop(env.id, None) is None:
            return
        self.load.pop(env.id, None)
        self.stats["ended"] += 1
        if env.id not in self._ours and env.fault is not None:
            self.stats["faulted"] += 1
        self._ours.discard(env.id)
        for flow in [f for f in self.flows.values() if f.env is env]:
            self.flows.pop(flow.key, None)
            if flow.key[0] == 6 and not flow.closed:
                self._reset(flow)  # its client would wait for an answer that cannot come
        self._dirty = True

    # ------------------------------------------------------------ frames
    def steer(self, f: Filter, frame: bytes) -> list[Env]:
        """The instances a frame the template's filter ``f`` claimed goes to (exo/net.py deliver)."""
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETHERTYPE_ARP:
            return self._arp(frame)
        ports = _ports(frame) if ethertype == ETHERTYPE_IPV4 else None
        if ports is None:  # ICMP, a later fragment: the oldest instance answers
            return [next(iter(self.live.values()))] if self.live else []
        proto, sport, dport = ports
        key = (proto, frame[26:30], sport, dport)
        flow = self.flows.get(key)
        if flow is not None:
            flow.last = self.k.machine.clock.now_ns()
            if proto == 6 and not self._peer_segment(flow, frame):
                return []
            return [flow.env]
        held = self.queue.get(key)
        if held is not None:
            if len(held) < HELD_FRAMES:
                held.append((f, frame))
            return []
        if proto == 6 and _tcp_fields(frame)[2] & (SYN | ACK | RST) != SYN:
            self.stats["stray"] += 1  # a segment of no flow we know (its instance has gone)
            return []
        env = self._place(key, frame)
        if env is None:
            if self._may_wait(key) and len(self.queue) < self.backlog:
                self.queue[key] = [(f, frame)]
                self.stats["queued"] += 1
            else:
                self._refuse(key, frame)
            return []
        self._open(key, env, frame)
        return [env]

    def _may_wait(self, key: tuple) -> bool:
        """Whether a flow no instance can take now may get one later: an instance of its kind will
        end (the instance cap, or its tenant's quota with instances of the tenant running). With
        none running, a start refused for lack of frames or of a quota would be refused forever."""
        if not self.per_request:
            return any(e.alive for e in self.pool)  # none left and none could start: never
        if len(self.live) >= self.max_instances:
            return True
        tenant = self._tenant_for(key)
        return any(e.tenant is tenant for e in self.live.values())

    def _refuse(self, key: tuple, frame: bytes) -> None:
        """Drop a new flow, saying why once per reason; a TCP client gets a reset (RFC 9293 3.10.7.1:
        the answer to a SYN for a connection that cannot be), not a wait until it gives up."""
        self.stats["refused"] += 1
        if self.last_refusal and self.last_refusal not in self._said:
            self._said.add(self.last_refusal)
            self.on_refusal(f"flow refused: {self.last_refusal}")
        if key[0] == 6:  # a RST that acknowledges its SYN (RFC 9293 3.10.7.1)
            _, peer_ip, peer_port, port = key
            a = self.addr
            self.net.nic.transmit(_tcp_frame(a.mac, frame[6:12], a.ip, peer_ip, port, peer_port,
                                             0, _tcp_fields(frame)[3], RST | ACK))
            self.stats["resets_sent"] += 1

    def _peer_segment(self, flow: Flow, frame: bytes) -> bool:
        """Track a segment from the peer; False when it ended the flow (nobody to deliver it to)."""
        seq, ack, flags, end = _tcp_fields(frame)
        if flags & RST:
            # Only a reset near what the instance expects ends the flow (RFC 5961 3: one far off
            # the window is a blind guess); the instance's TCP judges it exactly.
            if flow.peer_nxt is None or _after(seq + RST_WINDOW, flow.peer_nxt) and _after(flow.peer_nxt + RST_WINDOW, seq):
                self._close(flow)
            return flow.env.alive
        flow.peer_nxt = end
        if flags & FIN:
            flow.peer_fin = flow.peer_nxt
        if flags & ACK and flow.guest_fin is not None and _after(ack, flow.guest_fin):
            flow.guest_fin_acked = True
        if flow.closed:
            self._close(flow)
            return flow.env.alive
        return True

    def sent(self, env: Env, frame: bytes) -> None:
        """A frame an instance sends (exo/net.py send, after its checks)."""
        ports = _ports(frame)
        if ports is None:
            return
        proto, sport, dport = ports
        flow = self.flows.get((proto, frame[30:34], dport, sport))
        if flow is None or flow.env is not env:
            return
        flow.last = self.k.machine.clock.now_ns()
        if proto != 6:
            return
        _, ack, flags, nxt = _tcp_fields(frame)
        if flow.guest_nxt is None or _after(nxt, flow.guest_nxt):
            flow.guest_nxt = nxt
        if flags & RST:
            self._close(flow)
            return
        if flags & FIN:
            flow.guest_fin = nxt
        if flags & ACK and flow.peer_fin is not None and _after(ack, flow.peer_fin):
            flow.peer_fin_acked = True
        if flow.closed:
            self._close(flow)

    def _arp(self, frame: bytes) -> list[Env]:
        if len(frame) < 42:
            return []
        spa = frame[28:32]
        if spa not in self.arp and len(self.arp) >= ARP_NEIGHBOURS:
            del self.arp[next(iter(self.arp))]
        self.arp[spa] = frame
        if int.from_bytes(frame[20:22], "big") == 1 and not self.live:  # a request nobody can answer
            a = self.addr
            reply = pk.ethernet(frame[22:28], a.mac, ETHERTYPE_ARP, pk.arp(2, a.mac, a.ip, frame[22:28], spa))
            self.net.nic.transmit(reply)
            self.stats["arp_answered"] += 1
        return list(self.live.values())

    def _reset(self, flow: Flow) -> None:
        """Reset the peer's side of ``flow`` (RFC 9293 3.10.7: RST with the sequence it expects)."""
        if flow.peer_nxt is None:
            return
        _, peer_ip, peer_port, port = flow.key
        a = self.addr
        if flow.guest_nxt is not None:
            seq, ack, flags = flow.guest_nxt, 0, RST
        else:  # it never answered the SYN: a RST that acknowledges it (3.10.7.3)
            seq, ack, flags = 0, flow.peer_nxt, RST | ACK
        self.net.nic.transmit(_tcp_frame(a.mac, flow.peer_mac, a.ip, peer_ip, port, peer_port, seq, ack, flags))
        self.stats["resets_sent"] += 1

    # ------------------------------------------------------------ timers
    def tick(self) -> None:
        """At every pump of the network (each scheduling decision): start what waits, expire the idle."""
        if self._dirty:
            self._dirty = False
            self._refill()
            self._drain()
        now = self.k.machine.clock.now_ns()
        if now < self._next_check:
            return
        self._next_check = now + self.idle_ns // 4
        self._refill()  # a replacement that could not start before (frames since given back)
        if self.queue:
            self._drain()
        for flow in [f for f in self.flows.values() if now - f.last >= self.idle_ns]:
            self.stats["idle_closed"] += 1
            if flow.key[0] == 6:
                self._reset(flow)
                if not self.per_request:
                    self._reset_instance_side(flow)  # a long-lived instance must let it go too
            if self.per_request and flow.env.alive:
                self.load[flow.env.id] = 1  # it goes, whatever else it holds
            self._close(flow)

    def _refill(self) -> None:
        """Long-lived: start a replacement for each instance that ended."""
        if self.per_request:
            return
        for i, env in enumerate(self.pool):
            if not env.alive:
                new = self._start(self.template.tenant)
                if new is not None:
                    self.pool[i] = new

    def _reset_instance_side(self, flow: Flow) -> None:
        """Hand the instance a reset from the peer for ``flow``, with the sequence number its TCP
        expects (RFC 9293 3.10.7.4: a RST in the window ends the connection)."""
        if flow.peer_nxt is None or not flow.env.alive:
            return
        _, peer_ip, peer_port, port = flow.key
        a = self.addr
        self.net.inject(flow.env, _tcp_frame(flow.peer_mac, a.mac, peer_ip, a.ip, peer_port, port,
                                             flow.peer_nxt, 0, RST))

    def _drain(self) -> None:
        for key in list(self.queue):
            env = self._place(key, b"")
            if env is None:
                if self.per_request and len(self.live) >= self.max_instances:
                    return
                if not self._may_wait(key):  # nothing of its tenant left to end: it never would start
                    _, frame = self.queue.pop(key)[0]
                    self._refuse(key, frame)
                continue
            held = self.queue.pop(key)
            self._open(key, env, held[0][1])
            for f, frame in held:
                self.net.inject(env, frame, f)

    def close(self) -> None:
        """Stop serving: the template's frames go to the template again (which never runs), the
        live instances run on as environments of their own."""
        self.net.front_ends.pop(self.template.id, None)
        if self.tick in self.net.tickers:
            self.net.tickers.remove(self.tick)
        if self._ended in self.k.env_reclaim_hooks:
            self.k.env_reclaim_hooks.remove(self._ended)

    # ------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        out = dict(self.stats)
        out["live"] = len(self.live)
        out["flows_open"] = len(self.flows)
        out["queue"] = len(self.queue)
        out["mode"] = "per-request" if self.per_request else f"{len(self.pool)} instances ({self.balance})"
        out["tenants"] = {t.name: t.usage() for _, t in self.rules}
        return out


def ready_env(k: Exokernel, env: Env) -> bool:
    """``env`` is at its snapshot point: it called sched_op(READY), or it waits for the network
    holding a filter for a port (it listens or has bound one)."""
    if not env.alive or env.status != EnvStatus.BLOCKED:
        return False
    if env.blocked_on == "ready":
        return True
    if env.blocked_on != "net" and not (env.blocked_on == WAITING and env.net is not None):
        return False
    net = k.net
    return env.net is not None and any(net.filters[i].dst_port for i in env.net.filters if i in net.filters)


def wait_until_ready(k: Exokernel, env: Env, max_instructions: int = 2_000_000_000) -> None:
    """Run until ``env`` reaches its snapshot point (ExoUserError if it ends or never does)."""
    def check() -> None:
        if ready_env(k, env) or not env.alive:
            k.halt()

    def take(e: Env) -> bool:
        if e is not env:
            return False  # another environment's READY (a child of the app): it goes on
        k.halt()
        return True

    k.on_ready = take
    k.net.tickers.append(check)
    try:
        k.run(max_instructions=max_instructions if k.machine.clock.mode == "virtual" else None)
    finally:
        k.net.tickers.remove(check)
        k.on_ready = None
    if not ready_env(k, env):
        why = env.fault or (f"it ended with status {env.exit_status}" if not env.alive else
                            "it never waited for a connection (no sched_op(READY), no port open)")
        raise ExoUserError(env.name, f"cannot be served: {why}")
