"""net: BSD-like sockets over a TCP/IP stack in the library (``[libos] net = "tcpip"``).

The exokernel only multiplexes the NIC (exo/net.py): it writes the frames
this environment's filters claim into a receive ring in the environment's own
memory, checks and transmits the frames it is handed, and lets it wait for the
next frame. Everything else, ARP to TCP, runs here on behalf of this one
environment (libos/net/stack.py; docs/net-stack.md).

Entries (the slot order is the guest ABI; Linux values; errors are negative
errno values; ``sockaddr_in`` is Linux's 16 bytes {u16 family = 2, u16 port
(network order), u32 address (network order), 8 zero bytes}):

    socket(type) -> fd                SOCK_STREAM 1, SOCK_DGRAM 2, | SOCK_NONBLOCK 0x800
    bind(fd, sa, salen) -> 0          listen(fd, backlog) -> 0
    accept(fd, sa_out, salen_ptr) -> new fd         connect(fd, sa, salen) -> 0
    send(fd, buf, len, flags) -> bytes              recv(fd, buf, len, flags) -> bytes (0: EOF)
    sendto(fd, buf, len, flags, sa, salen) -> bytes
    recvfrom(fd, buf, len, flags, sa_out, salen_ptr) -> bytes
    close(fd) -> 0                    shutdown(fd, how) -> 0

Blocking: accept, connect, send (when the send buffer is full: a blocking send
returns as soon as it has taken some bytes, so it may take fewer than asked),
recv and recvfrom wait unless the socket is non-blocking or ``flags`` has
MSG_DONTWAIT (-EAGAIN; a non-blocking connect gives -EINPROGRESS). A call that
waits consumes nothing first and runs again from the start when woken
(restartable library calls, exo/libcall.py). With the ``sched`` module linked
only the calling thread waits (``sched.block_restart``; sched's idle loop
waits in ``net_wait`` through ``idle_wait`` below); without it the call waits
in ``net_wait`` itself, until the next TCP timer at the latest.

Batching: every frame the stack transmits during one library call leaves in
one ``net_send`` hypercall; received frames cost no hypercall (the ring is
read directly). At exit, connections are closed and the environment lingers
until each one's data and FIN have been acknowledged, or TCP gave up on it
(ETIMEDOUT after Tcb.ORPHAN_RETRIES timeouts), but at most LINGER_MAX_NS;
connections still unfinished then are reset (docs/net-stack.md, "Exit").
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

from exo.abi import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    LIBCALL_SLOT,
    LIBOS_PAGE,
    NET_FRAME_MAX,
    NET_FRAME_MIN,
    NET_GSO_FRAME_MAX,
    NET_INFO_OFFLOAD,
    NET_SLOT_CSUM_OK,
    NET_SLOT_FULL,
    NET_SLOT_HDR,
    NET_SLOT_SIZE,
    PAGE_SIZE,
    UPCALL_NET,
    NetFilterOp,
)
from libos.module import DEFAULT_FDS, LibModule, fd_limit, lowest_free_fd, read_upcall_frame
from libos.net import linux as L
from libos.net.headers import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from libos.net.linux import NetError
from libos.net.stack import DATAGRAM_MAX, Stack
from libos.net.tcp import Tcb

RING_OFF = 0x1_0000  # the receive ring: RING_SLOTS * NET_SLOT_SIZE bytes, page-aligned
# One connection's 64 KiB window is 45 full segments in flight towards us; 64 slots dropped a
# third of the frames with 50 busy connections (a review's measurement). 256 slots: 512 KiB.
RING_SLOTS = 256
TX_OFF = 0x10_0000  # transmit staging: frames packed back to back, pages mapped as needed
TX_BATCH = 128  # frames per net_send (the exokernel takes up to 256)
TX_BYTES = 512 * 1024  # and at most this much staged per net_send (TSO frames are up to 64 KiB)
SCRATCH_OFF = 0  # net_info, filter structs
TXREQ_OFF = 0x1000  # the net_send request array (TX_BATCH * 16 bytes)
FIRST_FD = 3
# Longest the environment lingers at exit: as long as TCP itself keeps an orphaned connection
# that makes no progress ((ORPHAN_RETRIES + 1) timeouts of at most RTO_MAX: 9 minutes of guest
# time). TCP's own limit ends a vanished peer's connection sooner (about 100 s from a 200 ms
# RTO); this cap only ends one that makes progress but never finishes (a zero window forever).
LINGER_MAX_NS = Tcb.orphan_lifetime_ns()
_INFO = struct.Struct("<6sH4s4s4sIQ")
_FILTER = struct.Struct("<HBBHHII")
_SLOT = struct.Struct("<HHI")
_SA = struct.Struct("<H2s4s8x")  # sockaddr_in: family (host order), port and address (network order)
_DONE_STATES = frozenset({"FIN_WAIT_2", "TIME_WAIT", "CLOSED"})


class Sock:
    """One fd: a UDP socket, a listening TCP socket, or a TCP connection (or not yet any)."""

    __slots__ = ("stream", "nonblock", "port", "udp", "listener", "conn", "connecting", "shut_wr",
                 "filter_spec", "nodelay")

    def __init__(self, stream: bool, nonblock: bool) -> None:
        self.stream = stream
        self.nonblock = nonblock
        self.port = 0  # bound local port (0: not bound)
        self.udp = None
        self.listener = None
        self.conn = None
        self.connecting = False  # a blocking connect is waiting for the handshake
        self.shut_wr = False
        self.filter_spec: tuple | None = None  # the filter this socket holds a reference to
        # TCP_NODELAY: native sockets send at once (their API has no setsockopt); the posix
        # personality turns Nagle on for Linux programs, as Linux does, unless they set it.
        self.nodelay = True


def _entry(fn: Callable[..., int]) -> Callable[..., int]:
    """A socket call: bring the network up, take in what arrived, run, send what it produced in one burst."""

    @functools.wraps(fn)
    def call(self: Net, *args: int) -> int:
        if not self._up():
            return -L.ENETDOWN
        try:
            self._pump()
            return fn(self, *args)
        except NetError as e:
            return -e.errno
        finally:
            self._after()

    return call


class Net(LibModule):
    NAME = "net"
    IMPL = "tcpip"
    INDEX = 6
    ENTRIES = ("socket", "bind", "listen", "accept", "connect", "send", "recv", "sendto", "recvfrom",
               "close", "shutdown", "arrival_upcall")
    # Socket calls take each OS structure's service path (exo/structures.py: the stack in the
    # kernel, in the Xen guest kernel, or in a network server). The arrival upcall stays a library
    # entry: the exokernel's upcall into the environment (only with sched linked).
    LOCAL = frozenset({"arrival_upcall"})
    # Under the microkernel structure the network server acts with capabilities over its client:
    # the NIC (its address, filters and receive ring, in the client's memory) is the client's, and
    # a thread the call parks is the client's (exo/structures.py _serve_with_capabilities).
    SERVER_CAPABILITIES = True
    HYPERCALLS = frozenset({"net_info", "net_attach", "net_filter", "net_send", "net_wait", "time_now",
                            "page_alloc", "log", "sched_op", "quota_info"})
    DOC = "sockets (TCP, UDP) over a TCP/IP stack in the library; frames through the exokernel's NIC ring"

    def __init__(self, port: Any) -> None:
        super().__init__(port)
        self._reset()

    def _reset(self) -> None:
        self.stack: Stack | None = None
        self.down = 0  # errno once bringing the network up failed
        self.socks: dict[int, Sock] = {}
        self.fd_limit = DEFAULT_FDS  # the app's fds quota, read when the network comes up
        self.filters: dict[tuple, list[int]] = {}  # spec -> [filter id, references]
        self.closing: list[tuple[Any, tuple | None]] = []  # closed connections still finishing
        self.rx_next = 0
        self.tx_pages = 0
        self.txq: list[bytes] = []
        self.t = 0
        self.sends = 0  # net_send hypercalls made (for tests and the docs)
        self.upcalls = 0  # arrival upcalls taken
        self.linger_until: int | None = None

    def fork(self, port: Any) -> Net:
        """An exofork child starts with no sockets and brings its own ring up on first use."""
        clone = super().fork(port)
        clone._reset()
        return clone

    # ------------------------------------------------------------ bringing it up
    def _up(self) -> bool:
        if self.stack is not None:
            return True
        if self.down:
            return False
        base = self.data_base
        for off in (SCRATCH_OFF, TXREQ_OFF):
            self.ensure_page(base + off)
        info = base + SCRATCH_OFF
        rc = self.hc("net_info", info)
        if rc < 0:
            self.down = -rc
            self.log(f"no network (net_info: errno {-rc}): boot with --net")
            return False
        mac, mtu, ip, mask, gw, _r, _flags = _INFO.unpack(self.port.read(info, _INFO.size))
        self.fd_limit = fd_limit(self.port, info)
        for off in range(0, RING_SLOTS * NET_SLOT_SIZE, PAGE_SIZE):
            self.ensure_page(base + RING_OFF + off)
        for i in range(RING_SLOTS):  # every slot free (an exofork child's copy may hold its parent's frames)
            self.port.write(base + RING_OFF + i * NET_SLOT_SIZE, bytes(NET_SLOT_HDR))
        # With threads (sched), arrival is an upcall: the stack ACKs and wakes waiting threads
        # while another computes. (sched or memory owns the exception stack it is pushed on.)
        upcall = self._slot("arrival_upcall") if "sched" in self.siblings else 0
        rc = self.hc("net_attach", base + RING_OFF, RING_SLOTS, upcall)
        if rc < 0:
            self.down = -rc
            self.log(f"net_attach failed: errno {-rc}")
            return False
        self.t = self.hc("time_now")
        self.stack = Stack(mac, ip, mask, gw, mtu, self._queue, self._now)
        self.stack.tso = bool(_flags & NET_INFO_OFFLOAD)  # hw/net/offload.py: send up to 64 KiB at once
        # A Linux program's processes each have a stack and share the app's address: what one
        # sends to that address and has no socket for may be another process's (libos/posix/sockets.py).
        self.stack.share_host = "posix" in self.siblings
        # ARP and ICMP for this host, and every IPv4 frame no more specific filter claims
        # (fragments after the first carry no ports; segments to closed ports get a reset).
        # Another environment of the same app may hold these already: then it answers them.
        for spec in ((ETHERTYPE_ARP, 0, 0), (ETHERTYPE_IPV4, IPPROTO_ICMP, 0), (ETHERTYPE_IPV4, 0, 0)):
            try:
                self._filter_ref(spec)
            except NetError:
                pass
        return True

    def _now(self) -> int:  # the stack's clock (a method, not a closure: a clone's is its own)
        return self.t

    def start(self) -> None:
        """Nothing at link time: the network comes up on the first socket call (apps may never use it)."""

    def _slot(self, name: str) -> int:
        return LIBOS_PAGE + self.INDEX * PAGE_SIZE + self.ENTRIES.index(name) * LIBCALL_SLOT

    def arrival_upcall(self, frame: int) -> int:
        """The exokernel's arrival upcall (net_attach): frames came while the environment was busy.

        Take them in (ACKs and window updates go out, threads waiting in socket
        calls become runnable), then resume the interrupted context. Not for guest code.
        """
        f, ctx = read_upcall_frame(self.port, frame)
        if f["vector"] != UPCALL_NET:
            return -L.EINVAL
        if self.stack is not None:
            self.upcalls += 1
            self._pump()
            self._after()
        self.port.resume(ctx)
        return 0

    # ------------------------------------------------------------ filters
    def _filter_ref(self, spec: tuple[int, int, int]) -> None:
        ent = self.filters.get(spec)
        if ent is not None:
            ent[1] += 1
            return
        va = self.data_base + SCRATCH_OFF + 0x100
        ethertype, proto, dport = spec
        self.port.write(va, _FILTER.pack(ethertype, proto, 0, dport, 0, 0, 0))
        rc = self.hc("net_filter", NetFilterOp.ADD, va)
        if rc < 0:
            raise NetError(-rc, f"net_filter {spec}")
        self.filters[spec] = [rc, 1]

    def _filter_unref(self, spec: tuple | None) -> None:
        ent = self.filters.get(spec) if spec is not None else None
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] == 0:
            del self.filters[spec]
            self.hc("net_filter", NetFilterOp.REMOVE, ent[0])

    def _hold(self, s: Sock, proto: int, port: int) -> None:
        spec = (ETHERTYPE_IPV4, proto, port)
        self._filter_ref(spec)
        s.filter_spec = spec

    # ------------------------------------------------------------ frames in and out
    def _pump(self) -> None:
        """Feed the stack every frame in the ring (in order, each slot given back), then run due timers."""
        self.t = self.hc("time_now")
        stack = self.stack
        ring = self.data_base + RING_OFF
        read, write = self.port.read, self.port.write
        taken = 0
        while taken < RING_SLOTS:
            at = self.rx_next % RING_SLOTS
            slot = ring + at * NET_SLOT_SIZE
            length, status, _fid = _SLOT.unpack(read(slot, NET_SLOT_HDR))
            if status & 0xFF != NET_SLOT_FULL:
                break
            if length == 0:  # the next frame did not fit before the ring's end: it is at slot 0
                write(slot + 2, b"\0\0")
                self.rx_next += RING_SLOTS - at
                taken += RING_SLOTS - at
                continue
            # A merged (GRO) frame spans the slots after its first; never past the ring's end.
            k = min((NET_SLOT_HDR + length + NET_SLOT_SIZE - 1) // NET_SLOT_SIZE, RING_SLOTS - at)
            if NET_FRAME_MIN <= length <= NET_GSO_FRAME_MAX and NET_SLOT_HDR + length <= k * NET_SLOT_SIZE:
                stack.input(read(slot + NET_SLOT_HDR, length), self.t, verified=bool(status & NET_SLOT_CSUM_OK))
            else:
                stack.count("ring_bad_length")
            for j in range(k):
                write(slot + j * NET_SLOT_SIZE + 2, b"\0\0")
            self.rx_next += k
            taken += k
        nt = stack.next_timer()
        if nt is not None and nt <= self.t:
            stack.poll(self.t)

    def _queue(self, frames: list[bytes]) -> None:
        self.txq.extend(frames)

    def _flush(self) -> None:
        """Everything the stack transmitted: one net_send per TX_BATCH frames."""
        while self.txq:
            n, nbytes = 0, 0
            while n < min(TX_BATCH, len(self.txq)) and (n == 0 or nbytes + len(self.txq[n]) <= TX_BYTES):
                nbytes += len(self.txq[n])
                n += 1
            batch, self.txq = self.txq[:n], self.txq[n:]
            base = self.data_base + TX_OFF
            blob = b"".join(batch)
            need = (len(blob) + PAGE_SIZE - 1) // PAGE_SIZE
            while self.tx_pages < need:
                self.ensure_page(base + self.tx_pages * PAGE_SIZE)
                self.tx_pages += 1
            reqs, off = [], 0
            for f in batch:
                gso = self.stack.gso_size(f) if len(f) > NET_FRAME_MAX else 0
                reqs.append(struct.pack("<QIHxx", base + off, len(f), gso))
                off += len(f)
            self.port.write(base, blob)
            self.port.write(self.data_base + TXREQ_OFF, b"".join(reqs))
            rc = self.hc("net_send", self.data_base + TXREQ_OFF, len(batch), 0)
            self.sends += 1
            if rc < 0:
                self.stack.count("tx_refused")

    def _after(self) -> None:
        """End of a call (or before waiting): send, free finished connections' filters, wake threads."""
        if self.stack is None:
            return
        self._flush()
        for item in list(self.closing):
            conn, spec = item
            if conn.tcb.finished or self.stack.conns.get(conn.key) is not conn:
                self.closing.remove(item)
                self._filter_unref(spec)
        sched = self.siblings.get("sched")
        if sched is not None and hasattr(sched, "wake_all"):
            sched.wake_all(self._wakes)

    def _wakes(self, reason: object) -> bool:
        """sched's predicate: may the thread blocked with ``reason`` make progress now?"""
        if not (isinstance(reason, tuple) and len(reason) == 3 and reason[0] == "net"):
            return False
        _, fd, what = reason
        s = self.socks.get(fd)
        if s is None:
            return True  # closed by another thread: it will see EBADF
        if what == "accept":
            return s.listener is None or s.listener.readable
        if what == "recv":  # data or an end (Tcb.readable: the peer's FIN, an error), or shutdown(SHUT_RD)
            return (s.udp.readable if s.udp is not None else
                    s.conn is None or s.conn.shut_rd or s.conn.tcb.readable)
        if what == "send":
            return s.conn is None or s.conn.tcb.writable or s.conn.tcb.error is not None
        if what == "connect":
            return s.conn is None or s.conn.tcb.established or s.conn.tcb.error is not None
        return True

    def _block(self, fd: int, s: Sock, flags: int, what: str) -> int | None:
        """The call cannot go on: -EAGAIN (non-blocking), 0 (this thread was switched away: the
        call runs again when woken; the result is never seen), or None (woken here: look again)."""
        if s.nonblock or flags & L.MSG_DONTWAIT:
            return -L.EAGAIN
        sched = self.siblings.get("sched")
        if sched is not None and hasattr(sched, "block_restart") and sched.cur is not None:
            self._after()
            sched.block_restart(("net", fd, what))
            return 0
        self._after()
        self.hc("net_wait", self.stack.next_timer() or 0)  # raises Blocked: the call runs again
        self._pump()
        return None

    def idle_wait(self, deadline: int, runnable: Callable[[], bool]) -> bool:
        """sched's idle loop: take in frames and run timers; if still no thread can run, wait in
        net_wait until a frame or ``deadline`` (0: none) or the next TCP timer. False: the network
        is not up (sched idles its own way)."""
        if self.stack is None:
            return False
        self._pump()
        self._after()
        if runnable():
            return True
        nt = self.stack.next_timer()
        if nt is not None and (deadline == 0 or nt < deadline):
            deadline = nt
        self.hc("net_wait", deadline)  # raises Blocked: the idle call runs again when woken
        self._pump()
        self._after()
        return True

    # ------------------------------------------------------------ helpers
    def _sock(self, fd: int) -> Sock:
        s = self.socks.get(fd)
        if s is None:
            raise NetError(L.EBADF)
        return s

    def _sockaddr(self, sa: int, salen: int) -> tuple[bytes, int]:
        if salen < _SA.size or salen > 128:
            raise NetError(L.EINVAL)
        family, port, addr = _SA.unpack(self.port.read(sa, _SA.size))
        if family != L.AF_INET:
            raise NetError(L.EAFNOSUPPORT)
        return addr, int.from_bytes(port, "big")

    def _put_sockaddr(self, sa_out: int, salen_ptr: int, addr: bytes, port: int) -> None:
        if not sa_out:
            return
        if not salen_ptr:
            raise NetError(L.EFAULT)
        n = int.from_bytes(self.port.read(salen_ptr, 4), "little")
        if n >= 1 << 31:
            raise NetError(L.EINVAL)
        data = _SA.pack(L.AF_INET, port.to_bytes(2, "big"), addr)
        self.port.write(sa_out, data[: min(n, _SA.size)])
        self.port.write(salen_ptr, _SA.size.to_bytes(4, "little"))

    def _local(self, addr: bytes) -> bytes:
        """0.0.0.0 and 127.0.0.0/8 are this host (looped back inside the stack)."""
        return self.stack.ip if addr == b"\0\0\0\0" or addr[0] == 127 else addr

    def _tcp_port_used(self, port: int) -> bool:
        return self.stack.tcp_port_used(port) or any(
            s.stream and s.port == port for s in self.socks.values())

    def _bind_port(self, s: Sock, port: int) -> None:
        """Give ``s`` local ``port`` (0: the next ephemeral one), and for UDP its socket and filter."""
        stack = self.stack
        if s.stream:
            if port == 0:
                port = stack.ephemeral(self._tcp_port_used)
            elif self._tcp_port_used(port):
                raise NetError(L.EADDRINUSE)
            s.port = port
            return
        u = stack.udp_bind(port)
        try:
            self._hold(s, IPPROTO_UDP, u.port)
        except NetError:
            stack.udp_close(u)
            raise
        s.udp, s.port = u, u.port

    def _read_buf(self, buf: int, n: int) -> bytes:
        return self.port.read(buf, n) if n else b""

    # ------------------------------------------------------------ entries
    @_entry
    def socket(self, type: int) -> int:  # noqa: A002 - the C name
        kind, flags = type & 0xF, type & ~0xF
        if flags & ~(L.SOCK_NONBLOCK | L.SOCK_CLOEXEC) or kind not in (L.SOCK_STREAM, L.SOCK_DGRAM):
            return -L.EINVAL
        fd = lowest_free_fd(self.socks, FIRST_FD, self.fd_limit)
        if fd < 0:
            return -L.EMFILE
        self.socks[fd] = Sock(kind == L.SOCK_STREAM, bool(flags & L.SOCK_NONBLOCK))
        return fd

    @_entry
    def bind(self, fd: int, sa: int, salen: int) -> int:
        s = self._sock(fd)
        addr, port = self._sockaddr(sa, salen)
        if s.port:
            return -L.EINVAL
        if self._local(addr) != self.stack.ip:  # any, ours, or 127.0.0.0/8 (one address: it acts as any)
            return -L.EADDRNOTAVAIL
        self._bind_port(s, port)
        return 0

    @_entry
    def listen(self, fd: int, backlog: int) -> int:
        s = self._sock(fd)
        if not s.stream:
            return -L.EOPNOTSUPP
        if s.conn is not None:
            return -L.EINVAL
        backlog = backlog - (1 << 64) if backlog >= 1 << 63 else backlog
        if s.listener is not None:
            s.listener.backlog = max(1, min(backlog, 128))
            return 0
        if not s.port:
            self._bind_port(s, 0)
        lst = self.stack.tcp_listen(s.port, backlog)
        try:
            self._hold(s, IPPROTO_TCP, s.port)
        except NetError:
            self.stack.tcp_close_listener(lst)
            raise
        s.listener = lst
        return 0

    @_entry
    def set_nodelay(self, fd: int, on: bool) -> int:
        """TCP_NODELAY for socket ``fd`` (the posix personality's setsockopt; Python callers only)."""
        s = self.socks.get(fd)
        if s is None:
            return -L.EBADF
        s.nodelay = on
        if s.conn is not None:
            s.conn.tcb.nodelay = on
        return 0

    def accept(self, fd: int, sa_out: int, salen_ptr: int) -> int:
        s = self._sock(fd)
        if s.listener is None:
            return -L.EINVAL
        while True:
            lst = s.listener
            if lst.queue:
                nfd = lowest_free_fd(self.socks, FIRST_FD, self.fd_limit)
                if nfd < 0:
                    return -L.EMFILE
                conn = lst.queue[0]
                self._put_sockaddr(sa_out, salen_ptr, *conn.remote)  # may fault: nothing taken yet
                self.stack.tcp_accept(lst)
                ns = Sock(True, False)
                ns.port, ns.conn, ns.nodelay = s.port, conn, s.nodelay  # inherited, as on Linux
                conn.tcb.nodelay = s.nodelay
                self._hold(ns, IPPROTO_TCP, s.port)
                self.socks[nfd] = ns
                return nfd
            rc = self._block(fd, s, 0, "accept")
            if rc is not None:
                return rc

    @_entry
    def connect(self, fd: int, sa: int, salen: int) -> int:
        s = self._sock(fd)
        addr, port = self._sockaddr(sa, salen)
        addr = self._local(addr)
        if not s.stream:
            if not s.port:
                self._bind_port(s, 0)
            if port == 0:
                return -L.EINVAL
            s.udp.peer = (addr, port)
            return 0
        if s.listener is not None:
            return -L.EINVAL
        if s.conn is None:
            if not s.port:
                self._bind_port(s, 0)
            if (addr, port, s.port) in self.stack.conns:
                return -L.EADDRNOTAVAIL
            self._hold(s, IPPROTO_TCP, s.port)
            try:
                s.conn = self.stack.tcp_connect(addr, port, s.port)
                s.conn.tcb.nodelay = s.nodelay
            except NetError:
                self._filter_unref(s.filter_spec)
                s.filter_spec = None
                raise
            if s.nonblock:
                return -L.EINPROGRESS
            s.connecting = True
        elif not s.connecting:
            tcb = s.conn.tcb
            if tcb.error is not None:
                return self._failed_connect(s)
            return -L.EISCONN if tcb.established else -L.EALREADY
        while True:
            tcb = s.conn.tcb
            if tcb.error is not None or (tcb.state == "CLOSED" and not tcb.established):
                return self._failed_connect(s)
            if tcb.established:
                s.connecting = False
                return 0
            rc = self._block(fd, s, 0, "connect")
            if rc is not None:
                return rc

    def _failed_connect(self, s: Sock) -> int:
        """The handshake failed: report why once; the socket may connect again."""
        err = s.conn.tcb.error or L.ECONNREFUSED
        s.conn, s.connecting = None, False
        self._filter_unref(s.filter_spec)
        s.filter_spec = None
        return -err

    def _send(self, fd: int, s: Sock, buf: int, n: int, flags: int, dst: tuple[bytes, int] | None) -> int:
        if not s.stream:
            if dst is None:
                if s.udp is None or s.udp.peer is None:
                    return -L.EDESTADDRREQ
                dst = s.udp.peer
            if n > DATAGRAM_MAX:
                return -L.EMSGSIZE
            if not s.port:
                self._bind_port(s, 0)
            return self.stack.udp_sendto(s.udp, self._read_buf(buf, n), *dst)
        if s.conn is None:
            return -L.ENOTCONN
        if s.shut_wr:
            return -L.EPIPE
        if n == 0:
            return 0
        while True:
            tcb = s.conn.tcb
            if tcb.error is not None:
                return -tcb.error
            if tcb.state in ("CLOSED", "TIME_WAIT", "LAST_ACK", "CLOSING", "FIN_WAIT_1", "FIN_WAIT_2"):
                return -L.EPIPE
            if tcb.writable:
                took = self.stack.tcp_send(s.conn, self._read_buf(buf, min(n, 1 << 16)))
                if took:
                    return took
            rc = self._block(fd, s, flags, "send")
            if rc is not None:
                return rc

    def _recv(self, fd: int, s: Sock, buf: int, n: int, flags: int, sa_out: int, salen_ptr: int) -> int:
        if flags & L.MSG_PEEK:
            return -L.EOPNOTSUPP
        while True:
            if not s.stream:
                if s.udp is not None and s.udp.rx:
                    data, (addr, port) = s.udp.rx[0]
                    if n:
                        self.port.write(buf, data[:n])  # may fault: nothing taken yet
                    self._put_sockaddr(sa_out, salen_ptr, addr, port)
                    s.udp.rx.popleft()
                    return min(n, len(data))
            else:
                conn = s.conn
                if conn is None:
                    return -L.ENOTCONN
                if conn.shut_rd or n == 0:
                    return 0
                data = self.stack.tcp_recv(conn, min(n, 1 << 20)) if conn.tcb.readable else b""
                if data:
                    self.port.write(buf, data)
                    self._put_sockaddr(sa_out, salen_ptr, *conn.remote)
                    return len(data)
                if conn.tcb.eof:
                    return 0
                if conn.tcb.error is not None:
                    return -conn.tcb.error
            rc = self._block(fd, s, flags, "recv")
            if rc is not None:
                return rc

    @_entry
    def send(self, fd: int, buf: int, len: int, flags: int) -> int:  # noqa: A002 - the C name
        return self._send(fd, self._sock(fd), buf, len, flags, None)

    @_entry
    def recv(self, fd: int, buf: int, len: int, flags: int) -> int:  # noqa: A002
        return self._recv(fd, self._sock(fd), buf, len, flags, 0, 0)

    @_entry
    def sendto(self, fd: int, buf: int, len: int, flags: int, sa: int, salen: int) -> int:  # noqa: A002
        s = self._sock(fd)
        dst = None
        if sa and not s.stream:
            addr, port = self._sockaddr(sa, salen)
            if port == 0:
                return -L.EINVAL
            dst = (self._local(addr), port)
        return self._send(fd, s, buf, len, flags, dst)

    @_entry
    def recvfrom(self, fd: int, buf: int, len: int, flags: int, sa_out: int, salen_ptr: int) -> int:  # noqa: A002
        return self._recv(fd, self._sock(fd), buf, len, flags, sa_out, salen_ptr)

    @_entry
    def close(self, fd: int) -> int:
        s = self.socks.pop(fd, None)
        if s is None:
            return -L.EBADF
        self._close(s)
        return 0

    def _close(self, s: Sock) -> None:
        if s.udp is not None:
            self.stack.udp_close(s.udp)
        elif s.listener is not None:
            self.stack.tcp_close_listener(s.listener)
        elif s.conn is not None:
            if not s.shut_wr:
                self.stack.tcp_close(s.conn)
            s.conn.tcb.orphan()  # no fd reaches it any more: TCP's orphan retry limit applies
            self.closing.append((s.conn, s.filter_spec))  # the filter stays until the close is over
            return
        self._filter_unref(s.filter_spec)

    @_entry
    def shutdown(self, fd: int, how: int) -> int:
        s = self._sock(fd)
        if how not in (L.SHUT_RD, L.SHUT_WR, L.SHUT_RDWR):
            return -L.EINVAL
        if not s.stream:
            return 0 if s.udp is not None and s.udp.peer is not None else -L.ENOTCONN
        if s.conn is None:
            return -L.ENOTCONN
        if how in (L.SHUT_RD, L.SHUT_RDWR):
            s.conn.shut_rd = True
        if how in (L.SHUT_WR, L.SHUT_RDWR) and not s.shut_wr:
            s.shut_wr = True
            self.stack.tcp_close(s.conn)
        return 0

    # ------------------------------------------------------------ exit
    def at_exit(self) -> None:
        """Close every socket, then linger until every closed connection has its data and FIN
        acknowledged or TCP has given up on it, as a kernel keeps sending for a process that is
        gone (RFC 9293 3.6: the data sent before a CLOSE is still delivered reliably). At most
        LINGER_MAX_NS: what is still unfinished then is reset, so the peer is not left waiting."""
        if self.stack is None:
            return
        self._pump()
        sched = self.siblings.get("sched")
        # The last thread's thread_exit cannot run again after a wait: no lingering there.
        linger = sched is None or getattr(sched, "cur", None) is not None
        for fd in sorted(self.socks):
            self._close(self.socks.pop(fd))
        self._after()
        if self.linger_until is None:
            self.linger_until = self.t + LINGER_MAX_NS
        while linger and (busy := self._unfinished()):
            if self.t >= self.linger_until:
                self.log(f"exit: {len(busy)} connection(s) still unfinished after "
                         f"{LINGER_MAX_NS // 1_000_000_000} s of lingering: reset")
                for conn in busy:
                    self.stack.tcp_abort(conn)
                self._after()
                return
            nt = self.stack.next_timer()
            self.hc("net_wait", min(nt, self.linger_until) if nt else self.linger_until)  # may raise Blocked
            self._pump()
            self._after()

    def _unfinished(self) -> list[Any]:
        """Closed connections whose data or FIN the peer has not acknowledged, and TCP still trying."""
        return [c for c, _ in self.closing if c.tcb.error is None and c.tcb.state not in _DONE_STATES]

    def stats(self) -> dict[str, int]:
        out = dict(self.stack.stats) if self.stack is not None else {}
        out["net_send_calls"] = self.sends
        return out
