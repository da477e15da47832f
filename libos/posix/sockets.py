"""Sockets: the BSD socket calls on the net libOS module's TCP/IP stack (libos/net, AF_INET).

A Linux program's socket is a descriptor here (``SocketFile``) over a socket of the process's net
module (its own stack: a process is an environment, with the app's one IP address and MAC;
docs/net-stack.md). The net module's sockets are always made non-blocking; whether the program's
call waits is decided here, the posix way: -EAGAIN becomes ``WouldBlock(EV_NET, next TCP timer)``,
so a waiting accept, connect, recv or send can be interrupted by a signal, yields to another
thread, and runs again when a frame arrives or a TCP timer is due (the net module's entries take
in the ring and run the timers each time). read/write/poll/close work on sockets as on any file.

Served: socket (AF_INET, SOCK_STREAM/SOCK_DGRAM, SOCK_NONBLOCK, SOCK_CLOEXEC), bind, listen,
accept, accept4, connect, sendto, recvfrom, sendmsg, recvmsg (gathered and scattered through the
module's own buffer), shutdown, setsockopt (accepted), getsockopt (SO_ERROR, SO_TYPE; others
answer 0), getsockname, getpeername. AF_UNIX and socketpair are -EAFNOSUPPORT.
Limits (docs/posix.md): a socket belongs to the process that made it; a forked child's copy of
the descriptor cannot be used (-EBADF; closing it does nothing), since each process has its own
stack: a forking server that hands a connection to its child does not work here.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import EV_NET, PAGE_SIZE
from libos.posix.files import O_RDWR, POLLERR, POLLHUP, POLLIN, POLLOUT, OpenFile
from libos.posix.system import WouldBlock
from libos.posix.table import EAFNOSUPPORT, EBADF, EFAULT, EINVAL, ENOTSOCK, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

AF_UNIX, AF_INET = 1, 2
SOCK_STREAM, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 1, 2, 0o4000, 0o2000000
MSG_DONTWAIT, MSG_NOSIGNAL = 0x40, 0x4000
EAGAIN, EINPROGRESS, EALREADY, EISCONN, EPIPE = 11, 115, 114, 106, 32
SOL_SOCKET, SO_TYPE, SO_ERROR = 1, 3, 4
IPPROTO_TCP, TCP_NODELAY = 6, 1  # Linux <netinet/tcp.h>
O_NONBLOCK = 0o4000
BUF_PAGE = 48  # the posix module's pages for sendmsg/recvmsg: 16 pages after the disk staging
BUF_PAGES = 16
_MSGHDR = struct.Struct("<QI4xQQQQi4x")  # struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
_IOVEC = struct.Struct("<QQ")


def _net(p: Posix):
    net = p.siblings.get("net")
    if net is None:
        raise _NoNet
    return net


class _NoNet(Exception):
    pass


class SocketFile(OpenFile):
    """A socket descriptor: ``nfd`` is the net module's socket in process ``owner``."""

    wait_mask = EV_NET
    mode = 0o140777  # S_IFSOCK

    def __init__(self, owner: int, nfd: int, stream: bool, flags: int) -> None:
        super().__init__(flags)
        self.owner, self.nfd, self.stream = owner, nfd, stream
        self.connecting = False

    def usable(self, p: Posix) -> bool:
        return p.proc.pid == self.owner  # each process has its own stack (see the module doc)

    def _wait(self, p: Posix, rc: int) -> int:
        """-EAGAIN from the stack: the program's own choice decides, or wait for the network."""
        if rc != -EAGAIN or self.flags & O_NONBLOCK:
            return rc
        stack = _net(p).stack
        raise WouldBlock(EV_NET, (stack.next_timer() or 0) if stack is not None else 0)

    def recv(self, p: Posix, buf: int, n: int, flags: int, sa: int = 0, salen: int = 0) -> int:
        if not self.usable(p):
            return -EBADF
        rc = _net(p).recvfrom(self.nfd, buf, n, flags | MSG_DONTWAIT, sa, salen)
        return rc if flags & MSG_DONTWAIT else self._wait(p, rc)

    def send(self, p: Posix, buf: int, n: int, flags: int, sa: int = 0, salen: int = 0) -> int:
        if not self.usable(p):
            return -EBADF
        net = _net(p)
        rc = net.sendto(self.nfd, buf, n, flags | MSG_DONTWAIT, sa, salen)
        if rc == -EPIPE and not flags & MSG_NOSIGNAL:
            from libos.posix import signals

            signals.send(p, p.proc.pid, signals.SIGPIPE)  # as Linux, unless MSG_NOSIGNAL
        return rc if flags & MSG_DONTWAIT else self._wait(p, rc)

    def read(self, p: Posix, buf: int, n: int) -> int:
        return self.recv(p, buf, n, 0)

    def write(self, p: Posix, buf: int, n: int) -> int:
        return self.send(p, buf, n, 0)

    def poll(self, p: Posix) -> int:
        if not self.usable(p):
            return POLLERR
        net = _net(p)
        if net.stack is None:
            return POLLOUT
        net._pump()  # what arrived, and the timers due: readiness is now
        net._after()
        s = net.socks.get(self.nfd)
        if s is None:
            return POLLERR
        if s.listener is not None:
            return POLLIN if s.listener.queue else 0
        if s.udp is not None:
            return POLLOUT | (POLLIN if s.udp.rx else 0)
        if s.conn is None:
            return POLLOUT if not s.stream else 0
        tcb = s.conn.tcb
        ready = 0
        if tcb.readable or tcb.eof or s.conn.shut_rd:
            ready |= POLLIN
        if tcb.established and tcb.writable:
            ready |= POLLOUT
        if tcb.error is not None:
            ready |= POLLERR | POLLHUP | POLLIN
        elif tcb.eof and s.shut_wr:
            ready |= POLLHUP
        return ready

    def release(self, p: Posix) -> None:
        if self.usable(p) and "net" in p.siblings:
            _net(p).close(self.nfd)

    def stat(self, p: Posix) -> bytes:
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(ino=self.nfd, mode=self.mode)


def service(p: Posix, mask: int, deadline: int) -> tuple[int, int]:
    """Before the process waits for anything: let its stack take in frames and run its timers
    (ACK a FIN, retransmit) and have the wait also end for the next frame or TCP timer, as a
    kernel's stack runs whatever its processes wait for. Returns the wait's mask and deadline."""
    net = p.siblings.get("net")
    if net is None or net.stack is None:
        return mask, deadline
    net._pump()
    net._after()
    timer = net.stack.next_timer()
    if timer and (not deadline or timer < deadline):
        deadline = timer
    return mask | EV_NET, deadline


def _sock(p: Posix, fd: int) -> SocketFile | int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    if not isinstance(f, SocketFile):
        return -ENOTSOCK
    if not f.usable(p):
        return -EBADF
    return f


def _install(p: Posix, f: SocketFile, flags: int) -> int:
    fd = p.proc.fds.alloc(f, cloexec=bool(flags & SOCK_CLOEXEC))
    if fd < 0:
        _net(p).close(f.nfd)
    return fd


def _guard(fn):
    """A socket call in a process whose app has no net module: -EAFNOSUPPORT."""
    def call(p: Posix, *args: int) -> int:
        try:
            return fn(p, *args)
        except _NoNet:
            return -EAFNOSUPPORT
    call.__name__, call.__doc__ = fn.__name__, fn.__doc__
    return call


@syscall("socket")
@_guard
def sys_socket(p: Posix, domain: int, type_: int, protocol: int, *_: int) -> int:
    if domain != AF_INET:
        return -EAFNOSUPPORT  # AF_UNIX, AF_INET6, netlink...: not served (docs/posix.md)
    kind = type_ & 0xF
    net = _net(p)
    nfd = net.socket(kind | SOCK_NONBLOCK)
    if nfd < 0:
        return nfd
    net.set_nodelay(nfd, False)  # Nagle on, as a Linux socket starts (TCP_NODELAY turns it off)
    return _install(p, SocketFile(p.proc.pid, nfd, kind == SOCK_STREAM, O_RDWR | (type_ & SOCK_NONBLOCK)), type_)


@syscall("socketpair")
def sys_socketpair(p: Posix, *_: int) -> int:
    return -EAFNOSUPPORT  # AF_UNIX is not served


@syscall("bind")
@_guard
def sys_bind(p: Posix, fd: int, sa: int, salen: int, *_: int) -> int:
    f = _sock(p, fd)
    return f if isinstance(f, int) else _net(p).bind(f.nfd, sa, salen)


@syscall("listen")
@_guard
def sys_listen(p: Posix, fd: int, backlog: int, *_: int) -> int:
    f = _sock(p, fd)
    return f if isinstance(f, int) else _net(p).listen(f.nfd, backlog)


@syscall("accept")
def sys_accept(p: Posix, fd: int, sa: int, salen: int, *_: int) -> int:
    return sys_accept4(p, fd, sa, salen, 0)


@syscall("accept4")
@_guard
def sys_accept4(p: Posix, fd: int, sa: int, salen: int, flags: int, *_: int) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    if flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC):
        return -EINVAL
    nfd = f._wait(p, _net(p).accept(f.nfd, sa, salen))
    if nfd < 0:
        return nfd
    return _install(p, SocketFile(p.proc.pid, nfd, True, O_RDWR | (flags & SOCK_NONBLOCK)), flags)


@syscall("connect")
@_guard
def sys_connect(p: Posix, fd: int, sa: int, salen: int, *_: int) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    rc = _net(p).connect(f.nfd, sa, salen)
    if not f.stream:
        return rc
    if rc == -EINPROGRESS or (rc == -EALREADY and f.connecting):
        if f.flags & O_NONBLOCK:
            f.connecting = False
            return rc
        f.connecting = True
        stack = _net(p).stack
        raise WouldBlock(EV_NET, stack.next_timer() or 0)  # runs again: -EISCONN once connected
    if rc == -EISCONN and f.connecting:
        f.connecting = False
        return 0  # the handshake this call waited for is done
    f.connecting = False
    return rc


@syscall("sendto")
@_guard
def sys_sendto(p: Posix, fd: int, buf: int, n: int, flags: int, sa: int, salen: int) -> int:
    f = _sock(p, fd)
    return f if isinstance(f, int) else f.send(p, buf, n, flags, sa, salen)


@syscall("recvfrom")
@_guard
def sys_recvfrom(p: Posix, fd: int, buf: int, n: int, flags: int, sa: int, salen: int) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    return f.recv(p, buf, n, flags, sa, salen)


def _iov(p: Posix, msg: int) -> tuple[tuple, list[tuple[int, int]]] | int:
    try:
        hdr = _MSGHDR.unpack(p.port.read(msg, _MSGHDR.size))
        iov, cnt = hdr[2], hdr[3]
        if cnt > 1024:
            return -EINVAL
        vec = [_IOVEC.unpack(p.port.read(iov + 16 * i, 16)) for i in range(cnt)]
    except p.port.Fault:
        return -EFAULT
    return hdr, vec


def _buffer(p: Posix) -> int:
    va = p.data_base + BUF_PAGE * PAGE_SIZE
    for i in range(BUF_PAGES):
        p.ensure_page(va + i * PAGE_SIZE)
    p.writable(va, BUF_PAGES * PAGE_SIZE)
    return va


def _msg(p: Posix, fd: int, msg: int) -> tuple[SocketFile, int, int, list[tuple[int, int]]] | int:
    """sendmsg/recvmsg's socket, msg_name, msg_namelen and iovecs, or a negative errno."""
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    got = _iov(p, msg)
    if isinstance(got, int):
        return got
    (name, namelen, *_rest), vec = got
    return f, name, namelen, vec


@syscall("sendmsg")
@_guard
def sys_sendmsg(p: Posix, fd: int, msg: int, flags: int, *_: int) -> int:
    got = _msg(p, fd, msg)
    if isinstance(got, int):
        return got
    f, name, namelen, vec = got
    try:
        data = b"".join(p.port.read(base, ln) for base, ln in vec if ln)[: BUF_PAGES * PAGE_SIZE]
    except p.port.Fault:
        return -EFAULT
    va = _buffer(p)
    p.port.write(va, data)  # one datagram, or one stretch of the stream, from one buffer
    return f.send(p, va, len(data), flags, name, namelen)


@syscall("recvmsg")
@_guard
def sys_recvmsg(p: Posix, fd: int, msg: int, flags: int, *_: int) -> int:
    got = _msg(p, fd, msg)
    if isinstance(got, int):
        return got
    f, name, namelen, vec = got
    va = _buffer(p)
    name_va = va + BUF_PAGES * PAGE_SIZE - 32  # the sender's address, then its length, at the end
    lenptr = name_va + 24
    want = min(sum(ln for _, ln in vec), BUF_PAGES * PAGE_SIZE - 32)
    if name:
        p.port.write(lenptr, struct.pack("<I", 16))
        rc = f.recv(p, va, want, flags, name_va, lenptr)
    else:
        rc = f.recv(p, va, want, flags)
    if rc < 0:
        return rc
    data = p.port.read(va, rc)
    at = 0
    for base, ln in vec:
        if at >= rc:
            break
        p.port.write(base, data[at : at + ln])
        at += ln
    if name:
        n = struct.unpack("<I", p.port.read(lenptr, 4))[0]
        p.port.write(name, p.port.read(name_va, min(n, namelen, 16)))
        p.port.write(msg + 8, struct.pack("<I", n))
    p.port.write(msg + 40, struct.pack("<Q", 0))  # msg_controllen: no ancillary data
    p.port.write(msg + 48, struct.pack("<i", 0))  # msg_flags
    return rc


@syscall("shutdown")
@_guard
def sys_shutdown(p: Posix, fd: int, how: int, *_: int) -> int:
    f = _sock(p, fd)
    return f if isinstance(f, int) else _net(p).shutdown(f.nfd, how)


@syscall("setsockopt")
@_guard
def sys_setsockopt(p: Posix, fd: int, level: int, name: int, val: int, vlen: int, *_: int) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    if level == IPPROTO_TCP and name == TCP_NODELAY:
        if vlen < 4:
            return -EINVAL
        try:
            on = struct.unpack("<i", p.port.read(val, 4))[0] != 0
        except p.port.Fault:
            return -EFAULT
        return _net(p).set_nodelay(f.nfd, on)
    return 0  # SO_REUSEADDR, SO_KEEPALIVE...: accepted (docs/posix.md)


@syscall("getsockopt")
@_guard
def sys_getsockopt(p: Posix, fd: int, level: int, name: int, val: int, lenp: int, *_: int) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    value = 0
    s = _net(p).socks.get(f.nfd)
    if level == IPPROTO_TCP and name == TCP_NODELAY:
        value = int(s is not None and s.nodelay)
    elif level == SOL_SOCKET and name == SO_TYPE:
        value = SOCK_STREAM if f.stream else SOCK_DGRAM
    elif level == SOL_SOCKET and name == SO_ERROR:
        err = s.conn.tcb.error if s is not None and s.conn is not None else None
        value = err or 0
    try:
        p.port.write(val, struct.pack("<i", value))
        p.port.write(lenp, struct.pack("<I", 4))
    except p.port.Fault:
        return -EFAULT
    return 0


def _name(p: Posix, fd: int, sa: int, salen: int, peer: bool) -> int:
    f = _sock(p, fd)
    if isinstance(f, int):
        return f
    net = _net(p)
    s = net.socks.get(f.nfd)
    if s is None or net.stack is None:
        return -EBADF
    if peer:
        if s.conn is not None:
            addr, port = s.conn.remote
        elif s.udp is not None and s.udp.peer is not None:
            addr, port = s.udp.peer
        else:
            return -107  # ENOTCONN
    else:
        addr, port = (net.stack.ip if s.port else b"\0\0\0\0"), s.port
    try:
        net._put_sockaddr(sa, salen, addr, port)
    except OSError:
        return -EFAULT
    except p.port.Fault:
        return -EFAULT
    return 0


@syscall("getsockname")
@_guard
def sys_getsockname(p: Posix, fd: int, sa: int, salen: int, *_: int) -> int:
    return _name(p, fd, sa, salen, peer=False)


@syscall("getpeername")
@_guard
def sys_getpeername(p: Posix, fd: int, sa: int, salen: int, *_: int) -> int:
    return _name(p, fd, sa, salen, peer=True)
