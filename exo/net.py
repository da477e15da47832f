"""Network multiplexing: packet filters, receive rings in the environments' memory, checked sends.

The exokernel knows nothing of TCP or sockets. It knows which app owns which
addresses, which environment has asked for which frames, and it checks every
frame an environment sends (after the exokernel of Engler et al., SOSP'95,
which multiplexed the network with DPF packet filters):

* **Addresses.** The host gives each booted app one MAC and one IPv4 address
  (``assign``); its environments share them (children inherit, as they inherit
  disk grants). ``net_info`` tells the libOS what they are.
* **Filters, not code.** ``net_filter`` installs a declarative filter: an
  ethertype and, for IPv4, optionally a protocol, destination port, source port
  and source address. No guest code runs in the exokernel; a filter can only
  claim frames addressed to its own app (its MAC or broadcast, its IP, ARP
  questions about its IP), so one app cannot read another's traffic. Of an
  app's filters, the most specific match wins (most fields given), ties going
  to the oldest: a per-connection filter beats a per-port one, which beats a
  catch-all. A frame nobody claims is dropped and counted.
* **Rings in the environment's memory.** ``net_attach`` registers a receive
  ring; the exokernel writes each claimed frame into the next slot, checked
  against the environment's page tables like any other write, and only into a
  slot the libOS has given back (status FREE): a full ring drops the frame
  (counted), as a NIC with no free descriptor does. Receiving costs no
  hypercall at all.
* **Checked sends, in bursts.** ``net_send`` takes a batch of frames (one
  hypercall for a burst); each must carry the app's own source MAC, and its
  own IP (IPv4) or sender addresses (ARP).
* **Arrival wakes, or is an upcall.** An environment with nothing to do waits
  in ``net_wait`` until a frame is written into its ring or its deadline (a TCP
  timer) passes. One that is busy when frames arrive is entered at its
  registered arrival handler at the start of its next slice (vector
  UPCALL_NET, a frame on its exception stack, like the timer upcall), so its
  library OS can ACK and wake its waiting threads while another computes.

Idle time: when every environment waits, the virtual clock jumps to the
earliest deadline if no peer outside the process can send (a deterministic
discrete-event run); with tap/user peers it advances with the real time spent
waiting, so the guest's retransmission timers mean what they say.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exo.abi import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EV_NET,
    NET_FILTER_SIZE,
    NET_FRAME_MAX,
    NET_FRAME_MIN,
    NET_GSO_FRAME_MAX,
    NET_INFO_OFFLOAD,
    NET_INFO_SIZE,
    NET_MAX_SLOTS,
    NET_MTU,
    NET_SLOT_CSUM_OK,
    NET_SLOT_FREE,
    NET_SLOT_FULL,
    NET_SLOT_HDR,
    NET_SLOT_SIZE,
    NET_TX_REQ_SIZE,
    PAGE_SIZE,
    EnvStatus,
    Errno,
    NetFilterOp,
)
from exo.errors import HypercallError
from exo.events import WAITING
from hw.net.offload import coalesce

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel
    from hw.nic import Nic

MAX_FILTERS = 256  # per environment (the table is the exokernel's memory)
MAX_TX_BATCH = 256  # frames in one net_send
BROADCAST = b"\xff" * 6
IDLE_WAIT_MAX = 0.5  # seconds one idle wait on external peers lasts at most (Ctrl-C stays responsive)

_INFO = struct.Struct("<6sH4s4s4sIQ")
_FILTER = struct.Struct("<HBBHHII")
_TX = struct.Struct("<QIHxx")


def _tso_frame(frame: bytes, gso: int) -> bool:
    """One IPv4 TCP segment filling the frame (no IP options, not a fragment) whose pieces of
    ``gso`` payload bytes, with their headers, fit the MTU: what TSO may cut (hw/net/offload.py)."""
    return (len(frame) >= 54 and frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 6
            and int.from_bytes(frame[16:18], "big") == len(frame) - 14
            and int.from_bytes(frame[20:22], "big") & 0x3FFF == 0
            and 14 + 20 + (frame[46] >> 4) * 4 + gso <= NET_FRAME_MAX)
_SLOT = struct.Struct("<HHI")
assert _INFO.size == NET_INFO_SIZE and _FILTER.size == NET_FILTER_SIZE and _TX.size == NET_TX_REQ_SIZE
assert _SLOT.size == NET_SLOT_HDR and NET_FRAME_MAX + NET_SLOT_HDR <= NET_SLOT_SIZE


@dataclass(frozen=True)
class Address:
    mac: bytes  # 6 bytes
    ip: bytes  # 4 bytes, network order
    prefix: int = 24
    gateway: bytes = bytes([10, 0, 2, 2])

    @property
    def netmask(self) -> bytes:
        return ((0xFFFF_FFFF << (32 - self.prefix)) & 0xFFFF_FFFF).to_bytes(4, "big")

    @property
    def subnet_broadcast(self) -> bytes:
        ip = int.from_bytes(self.ip, "big")
        return (ip | (0xFFFF_FFFF >> self.prefix)).to_bytes(4, "big")

    def __str__(self) -> str:
        return f"{':'.join(f'{b:02x}' for b in self.mac)} {'.'.join(map(str, self.ip))}/{self.prefix}"


def app_address(index: int) -> Address:
    """The addresses of booted app ``index`` (QEMU user-mode's guest convention: 10.0.2.15 and up)."""
    if not 0 <= index < 200:
        raise ValueError(f"app index {index} outside 0..199")
    return Address(bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + index]), bytes([10, 0, 2, 15 + index]))


@dataclass(frozen=True)
class Filter:
    id: int
    env: int
    app: int  # the booted app (tree root) whose frames it may claim
    ethertype: int
    ip_proto: int
    dst_port: int
    src_port: int
    src_ip: bytes  # 4 bytes, b"\0\0\0\0" = any

    @property
    def spec(self) -> tuple:
        return (self.ethertype, self.ip_proto, self.dst_port, self.src_port, self.src_ip)

    @property
    def specificity(self) -> int:
        return 1 + (self.ip_proto != 0) + (self.dst_port != 0) + (self.src_port != 0) + (self.src_ip != b"\0\0\0\0")


@dataclass
class NetPort:
    """An environment's side of the network: its ring and what it waits for."""

    ring: int = 0
    nslots: int = 0
    prod: int = 0  # the next slot the exokernel writes
    event: bool = False  # a frame was written since the last net_wait returned
    upcall_entry: int = 0  # the libOS's arrival handler (0: none)
    upcall_pending: bool = False  # frames arrived while it was not waiting: enter the handler
    deadline: int = 0  # net_wait's deadline while blocked (0: none)
    filters: list[int] = field(default_factory=list)
    # An instance of a snapshot (exo/instances.py): the template's environment id. The template's
    # filters are its by inheritance (its libOS holds their ids); the front end that serves the
    # template (``steer``) decides which instance each frame they claim goes to.
    template: int = 0


class NetMux:
    """The exokernel's network multiplexer over the machine's NIC."""

    def __init__(self, kernel: Exokernel, nic: Nic) -> None:
        self.k = kernel
        self.nic = nic
        self.apps: dict[int, Address] = {}  # app (tree root env id) -> its addresses
        self.by_mac: dict[bytes, int] = {}
        self.filters: dict[int, Filter] = {}
        self._app_filters: dict[int, list[Filter]] = {}  # app -> its filters, oldest first
        self._next_filter = 1
        self.stats = {"rx": 0, "delivered": 0, "unclaimed": 0, "malformed": 0, "ring_full": 0,
                      "tx": 0, "tx_refused": 0, "tx_delayed": 0, "coalesced": 0}
        # Front ends (exo/serve.py), by the template environment whose filters they serve:
        # ``steer(filter, frame)`` names the instances a frame those filters claimed goes to, and
        # ``sent(env, frame)`` sees each frame one of its instances sends (connection tracking).
        self.front_ends: dict[int, Any] = {}
        self.tickers: list[Callable[[], None]] = []  # called at every pump (a front end's timers)
        kernel.env_reclaim_hooks.append(self.detach)

    # ------------------------------------------------------------ addresses
    def assign(self, env: Env, address: Address) -> None:
        """Host side: ``env`` (a booted app) and its descendants use ``address``."""
        if address.mac in self.by_mac:
            raise ValueError(f"MAC {address} is already assigned")
        self.apps[env.id] = address
        self.by_mac[address.mac] = env.id
        self._app_filters[env.id] = []

    def app_of(self, env: Env) -> int:
        return env.tenant.net_app

    def address(self, env: Env) -> Address:
        addr = self.apps.get(self.app_of(env))
        if addr is None:
            raise HypercallError(Errno.ENETDOWN, f"environment {env.id}'s app has no network address")
        return addr

    def _port(self, env: Env) -> NetPort:
        if env.net is None:
            env.net = NetPort()
        return env.net

    # ----------------------------------------------------------- hypercalls
    def info(self, env: Env, va: int) -> int:
        a = self.address(env)
        env.space.write(va, _INFO.pack(a.mac, NET_MTU, a.ip, a.netmask, a.gateway, 0, NET_INFO_OFFLOAD))
        return 0

    def attach(self, env: Env, ring: int, nslots: int, upcall: int = 0) -> int:
        self.address(env)
        port = self._port(env)
        if nslots == 0:
            port.ring = port.nslots = port.upcall_entry = 0
            return 0
        if upcall and not 0 < upcall < 1 << 47:
            raise HypercallError(Errno.EINVAL, f"bad upcall entry {upcall:#x}")
        if nslots > NET_MAX_SLOTS or nslots & (nslots - 1):
            raise HypercallError(Errno.EINVAL, f"{nslots} slots (a power of two, 1 to {NET_MAX_SLOTS})")
        if ring & (PAGE_SIZE - 1):
            raise HypercallError(Errno.EINVAL, f"ring {ring:#x} is not page-aligned")
        env.space.user_chunks(ring, nslots * NET_SLOT_SIZE, True)  # writable user memory, all of it
        port.ring, port.nslots, port.prod = ring, nslots, 0
        port.upcall_entry = upcall
        return 0

    def filter(self, env: Env, op: int, arg: int) -> int:
        app = self.app_of(env)
        self.address(env)
        port = self._port(env)
        if op == NetFilterOp.REMOVE:
            f = self.filters.get(arg)
            if f is not None and f.env == port.template:
                return 0  # the template's, inherited: it stays, for the template's other instances
            if f is None or f.env != env.id:
                raise HypercallError(Errno.EINVAL, f"environment {env.id} holds no filter {arg}")
            self._remove(f)
            port.filters.remove(f.id)
            return 0
        if op != NetFilterOp.ADD:
            raise HypercallError(Errno.EINVAL, f"bad net_filter op {op}")
        ethertype, proto, reserved, dport, sport, src_ip, reserved2 = _FILTER.unpack(env.space.read(arg, NET_FILTER_SIZE))
        if reserved or reserved2:
            raise HypercallError(Errno.EINVAL, "reserved filter fields must be 0")
        if ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_ARP):
            raise HypercallError(Errno.EINVAL, f"ethertype {ethertype:#06x} (only IPv4 0x0800 and ARP 0x0806)")
        if ethertype == ETHERTYPE_ARP and (proto or dport or sport or src_ip):
            raise HypercallError(Errno.EINVAL, "an ARP filter has no protocol, ports or source address")
        if (dport or sport) and proto not in (6, 17):
            raise HypercallError(Errno.EINVAL, "ports need ip_proto TCP (6) or UDP (17)")
        if len(port.filters) >= MAX_FILTERS:
            raise HypercallError(Errno.ENOSPC, f"environment {env.id} already holds {MAX_FILTERS} filters")
        f = Filter(self._next_filter, env.id, app, ethertype, proto, dport, sport, src_ip.to_bytes(4, "little"))
        for other in self._app_filters[app]:
            if other.spec == f.spec:
                if other.env == env.id or other.env == port.template:
                    return other.id  # the same filter again: idempotent
                raise HypercallError(Errno.EADDRINUSE, f"environment {other.env} already holds this filter")
        self._next_filter += 1
        self.filters[f.id] = f
        self._app_filters[app].append(f)
        port.filters.append(f.id)
        return f.id

    def _remove(self, f: Filter) -> None:
        del self.filters[f.id]
        self._app_filters[f.app].remove(f)

    def detach(self, env: Env) -> None:
        """The environment is gone: its filters and ring go with it."""
        port = env.net
        if port is None:
            return
        for fid in list(port.filters):
            f = self.filters.get(fid)
            if f is not None:
                self._remove(f)
        env.net = None

    def send(self, env: Env, reqs: int, count: int, done_ptr: int) -> object:
        addr = self.address(env)
        if count > MAX_TX_BATCH:
            raise HypercallError(Errno.EINVAL, f"batch of {count} frames exceeds {MAX_TX_BATCH}")
        raw = env.space.read(reqs, count * NET_TX_REQ_SIZE)
        if done_ptr:
            env.space.user_chunks(done_ptr, 8, True)
        limit = env.tenant.net
        if limit is not None:
            # The app's token buckets (exo/tenants.py): over its rate the whole batch waits, in
            # guest time, and is then sent (Firecracker delays a rate-limited TX queue, never drops).
            nbytes = sum(min(_TX.unpack_from(raw, i * NET_TX_REQ_SIZE)[1], NET_GSO_FRAME_MAX) for i in range(count))
            now = self.k.machine.clock.now_ns()
            wait = limit.wait_ns(nbytes, count, now)
            if wait:
                self.stats["tx_delayed"] += 1
                return self.k.sleep_until(env, now + wait, "net rate")
        sent = 0
        error: HypercallError | None = None
        port_template = env.net.template if env.net is not None else 0
        for i in range(count):
            buf, length, gso = _TX.unpack_from(raw, i * NET_TX_REQ_SIZE)
            try:
                most = NET_GSO_FRAME_MAX if gso else NET_FRAME_MAX
                if not NET_FRAME_MIN <= length <= most:
                    raise HypercallError(Errno.EMSGSIZE, f"frame {i}: {length} bytes ({NET_FRAME_MIN}..{most})")
                frame = env.space.read(buf, length)
                self._check_source(frame, addr, i)
                if length > NET_FRAME_MAX and not _tso_frame(frame, gso):
                    raise HypercallError(Errno.EINVAL, f"frame {i}: a {length}-byte frame with segment size {gso} "
                                         "must be one IPv4 TCP segment whose pieces fit the MTU")
            except HypercallError as e:
                error = e
                self.stats["tx_refused"] += 1
                break
            if port_template and port_template in self.front_ends:
                self.front_ends[port_template].sent(env, frame)
            self.nic.transmit(frame, gso)
            if self.nic.external and (frame[0:6] == BROADCAST or frame[0:6] in self.by_mac):
                self.deliver(frame)  # another app of this machine: the host's wire will not hand it back
            sent += 1
        self.stats["tx"] += sent
        if done_ptr:
            env.space.write(done_ptr, sent.to_bytes(8, "little"))
        self.pump()  # a hub (switch) hands the frames back at once: deliver them now
        if error is not None:
            raise error
        return 0

    @staticmethod
    def _check_source(frame: bytes, addr: Address, i: int) -> None:
        if frame[6:12] != addr.mac:
            raise HypercallError(Errno.EADDRNOTAVAIL, f"frame {i}: source MAC is not the app's {addr}")
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETHERTYPE_IPV4:
            if len(frame) < 34 or frame[26:30] != addr.ip:
                raise HypercallError(Errno.EADDRNOTAVAIL, f"frame {i}: IPv4 source is not the app's {addr}")
        elif ethertype == ETHERTYPE_ARP:
            if len(frame) < 42 or frame[22:28] != addr.mac or frame[28:32] != addr.ip:
                raise HypercallError(Errno.EADDRNOTAVAIL, f"frame {i}: ARP sender is not the app's {addr}")
        else:
            raise HypercallError(Errno.EINVAL, f"frame {i}: ethertype {ethertype:#06x} (only IPv4 and ARP)")

    def wait(self, env: Env, deadline: int) -> object:
        port = env.net
        if port is None or not port.nslots:
            raise HypercallError(Errno.EINVAL, "no receive ring attached (net_attach)")
        if port.event:
            port.event = False
            port.deadline = 0
            return 1
        if deadline and self.k.machine.clock.now_ns() >= deadline:
            port.deadline = 0
            return 0
        port.deadline = deadline
        return self.k.block_and_retry(env, "net")

    # -------------------------------------------------------------- delivery
    def pump(self) -> int:
        """Deliver every frame the NIC has received, runs of one TCP flow merged (GRO); how many."""
        for tick in self.tickers:
            tick()
        if self.k.halting:  # a ticker stopped the run (a template is ready): frames wait for the front end
            return 0
        frames = self.nic.receive()
        for f, verified, parts in coalesce(frames):
            if len(parts) > 1:
                self.stats["coalesced"] += len(parts)
            self.deliver(f, verified, parts)
        return len(frames)

    def deliver(self, frame: bytes, verified: bool = False, parts: list[bytes] | None = None) -> None:
        self.stats["rx"] += 1
        n = len(frame)
        if n < 14 or n > NET_GSO_FRAME_MAX:
            self.stats["malformed"] += 1
            return
        dst = frame[0:6]
        if dst == BROADCAST:
            sender = self.by_mac.get(frame[6:12])
            apps = [a for a in self.apps if a != sender]  # not back to the sender
        else:
            app = self.by_mac.get(dst)
            apps = [app] if app is not None else []
        claimed = False
        for app in apps:
            f = self._match(app, frame)
            if f is not None:
                claimed = True
                front = self.front_ends.get(f.env)
                if front is None:
                    self._write(self.k.envs.get(f.env), f, frame, verified, parts)
                else:
                    for env in front.steer(f, frame):
                        self._write(env, f, frame, verified, parts)
        if not claimed:
            self.stats["unclaimed"] += 1

    def _match(self, app: int, frame: bytes) -> Filter | None:
        addr = self.apps[app]
        ethertype = int.from_bytes(frame[12:14], "big")
        proto = sport = dport = 0
        src_ip = b""
        if ethertype == ETHERTYPE_ARP:
            if len(frame) < 42 or frame[38:42] != addr.ip:  # the ARP target is not this app
                return None
        elif ethertype == ETHERTYPE_IPV4:
            if len(frame) < 34:
                return None
            dst_ip = frame[30:34]
            if dst_ip != addr.ip and dst_ip != b"\xff\xff\xff\xff" and dst_ip != addr.subnet_broadcast:
                return None
            proto = frame[23]
            src_ip = frame[26:30]
            ihl = (frame[14] & 0xF) * 4
            first_fragment = int.from_bytes(frame[20:22], "big") & 0x1FFF == 0
            if proto in (6, 17) and first_fragment and ihl >= 20 and len(frame) >= 14 + ihl + 4:
                sport = int.from_bytes(frame[14 + ihl : 16 + ihl], "big")
                dport = int.from_bytes(frame[16 + ihl : 18 + ihl], "big")
        else:
            return None
        best: Filter | None = None
        for f in self._app_filters.get(app, ()):
            if f.ethertype != ethertype:
                continue
            if f.ip_proto and f.ip_proto != proto:
                continue
            if f.dst_port and f.dst_port != dport:
                continue
            if f.src_port and f.src_port != sport:
                continue
            if f.src_ip != b"\0\0\0\0" and f.src_ip != src_ip:
                continue
            if best is None or f.specificity > best.specificity:
                best = f
        return best

    @staticmethod
    def _slots_free(space: object, port: object, at: int, k: int) -> bool:
        try:
            return all(_SLOT.unpack(space.read(port.ring + (at + j) * NET_SLOT_SIZE, NET_SLOT_HDR))[1]
                       == NET_SLOT_FREE for j in range(k))
        except HypercallError:
            return False

    def inject(self, env: Env, frame: bytes, f: Filter | None = None) -> None:
        """Put ``frame`` in ``env``'s receive ring as if it had arrived, claimed by ``f`` (None: by
        no filter; a front end's replayed ARP or a reset it hands an instance: exo/serve.py)."""
        self._write(env, f, frame)

    def _write(self, env: Env | None, f: Filter | None, frame: bytes, verified: bool = False,
               parts: list[bytes] | None = None) -> None:
        port = env.net if env is not None and env.alive else None
        if port is None or not port.nslots:
            self.stats["ring_full"] += 1
            return
        k = (NET_SLOT_HDR + len(frame) + NET_SLOT_SIZE - 1) // NET_SLOT_SIZE  # slots it spans
        at = port.prod & (port.nslots - 1)
        space = env.space
        if k > 1 and at + k > port.nslots:
            # A large frame never wraps round the ring's end: an empty frame (length 0) tells the
            # libOS to go on at slot 0, where the frame goes if the slots there are free.
            if k > port.nslots or not self._slots_free(space, port, 0, k):
                self.stats["ring_full"] += 1
                return
            try:
                if not self._slots_free(space, port, at, 1):
                    self.stats["ring_full"] += 1
                    return
                space.write(port.ring + at * NET_SLOT_SIZE, _SLOT.pack(0, NET_SLOT_FULL, 0))
            except HypercallError:
                self.stats["ring_full"] += 1
                return
            port.prod += port.nslots - at
            at = 0
        slot = port.ring + at * NET_SLOT_SIZE
        try:
            for j in range(k):
                _, status, _ = _SLOT.unpack(space.read(slot + j * NET_SLOT_SIZE, NET_SLOT_HDR))
                if status != NET_SLOT_FREE:
                    self.stats["ring_full"] += 1
                    return
            space.write(slot + NET_SLOT_HDR, frame)
            space.write(slot, _SLOT.pack(len(frame), NET_SLOT_FULL | (NET_SLOT_CSUM_OK if verified else 0),
                                         f.id if f is not None else 0))
        except HypercallError:  # the libOS unmapped or write-protected its own ring
            self.stats["ring_full"] += 1
            return
        port.prod += k
        port.event = True
        self.stats["delivered"] += 1
        if env.status == EnvStatus.BLOCKED and (env.blocked_on == "net" or _events_waiter(env)):
            self.k.make_runnable(env)
        elif port.upcall_entry:
            port.upcall_pending = True  # it is busy: announce the arrival when it next runs

    # ------------------------------------------------------------- the idle loop
    def waiters(self) -> list[Env]:
        return [e for e in self.k.live_envs.values()
                if e.status == EnvStatus.BLOCKED and (e.blocked_on == "net" or _events_waiter(e))]

    def wake_expired(self, waiters: list[Env], now: int) -> None:
        for e in waiters:
            if e.net is not None and e.net.deadline and e.net.deadline <= now:
                self.k.make_runnable(e)

    def idle(self, waiters: list[Env], deadline: int | None = None) -> bool:
        """Nothing is runnable but ``waiters`` wait for the network: wait; False if nothing can wake them.
        ``deadline``: another environment's (a sleeper's) guest time to wait until at most."""
        clock = self.k.machine.clock
        self.nic.idle()  # frames held back for reordering go out now
        if self.pump():
            return True
        deadlines = [e.net.deadline for e in waiters if e.net is not None and e.net.deadline]
        if deadline is not None:
            deadlines.append(deadline)
        earliest = min(deadlines) if deadlines else None
        now = clock.now_ns()
        if earliest is not None and earliest <= now:
            return True
        if self.nic.external:
            timeout = IDLE_WAIT_MAX if earliest is None else min(IDLE_WAIT_MAX, (earliest - now) / 1e9)
            t0 = time.monotonic_ns()
            self.nic.wait(timeout)
            if clock.mode == "virtual":
                clock.advance(time.monotonic_ns() - t0)
            return True
        if earliest is None:
            return False  # no peer outside and no timer: nothing can ever wake them
        if clock.mode == "virtual":
            clock.advance(earliest - now)
        else:
            time.sleep((earliest - now) / 1e9)
        return True


def _events_waiter(env: Env) -> bool:
    """``env`` waits in event_wait with EV_NET in its mask (exo/events.py)."""
    return env.blocked_on == WAITING and bool(env.wait_mask & EV_NET)
