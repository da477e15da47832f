"""poll, ppoll, select, pselect6: which descriptors are ready, or wait until one is (or a timeout).

Readiness is each open file's ``poll(p)`` mask; nothing ready means WouldBlock on the union of
the files' wake-up events and the timeout as a guest-time deadline. A call re-executed after the
wait must keep its first deadline, so the deadline is remembered per process with the call's
arguments (``deadline_for``), as Linux's restart block keeps the remaining time.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix.files import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI
from libos.posix.system import WouldBlock
from libos.posix.table import EFAULT, EINVAL, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

_POLLFD = struct.Struct("<ihh")  # struct pollfd { int fd; short events; short revents; }
_TIMESPEC = struct.Struct("<qq")


def deadline_for(p: Posix, key: tuple, timeout_ns: int | None) -> int:
    """The guest-time deadline of a waiting call (0: none), the same for its re-executions."""
    proc = p.proc
    if timeout_ns is None:
        proc.pending_deadline = None
        return 0
    if proc.pending_deadline is not None and proc.pending_deadline[0] == key:
        return proc.pending_deadline[1]
    deadline = p.hc("time_now") + max(timeout_ns, 0)
    proc.pending_deadline = (key, deadline)
    return deadline


def done(p: Posix) -> None:
    p.proc.pending_deadline = None


def _wait(p: Posix, files: list, key: tuple, timeout_ns: int | None) -> None:
    """Nothing ready: wait for any of ``files`` to change, or the deadline; returns if it has passed."""
    deadline = deadline_for(p, key, timeout_ns)
    if deadline and p.hc("time_now") >= deadline:
        done(p)
        return
    mask = 0
    for f in files:
        mask |= f.wait_mask
    raise WouldBlock(mask, deadline)


def _poll(p: Posix, fds: int, nfds: int, timeout_ns: int | None, key: tuple) -> int:
    if nfds > 1024:
        return -EINVAL
    try:
        entries = [list(_POLLFD.unpack_from(p.port.read(fds + 8 * i, 8))) for i in range(nfds)]
    except p.port.Fault:
        return -EFAULT
    ready, files = 0, []
    for e in entries:
        fd, events = e[0], e[1]
        if fd < 0:
            e[2] = 0
            continue
        f = p.proc.fds.get(fd)
        if f is None:
            e[2] = POLLNVAL
        else:
            e[2] = f.poll(p) & (events | POLLERR | POLLHUP | POLLNVAL)
            files.append(f)
        ready += bool(e[2])
    if not ready and timeout_ns != 0:
        _wait(p, files, key, timeout_ns)
    done(p)
    p.port.write(fds, b"".join(_POLLFD.pack(*e) for e in entries))
    return ready


@syscall("poll")
def sys_poll(p: Posix, fds: int, nfds: int, timeout: int, *_: int) -> int:
    ms = timeout & 0xFFFF_FFFF
    ms = ms - (1 << 32) if ms >> 31 else ms
    return _poll(p, fds, nfds, None if ms < 0 else ms * 1_000_000, ("poll", fds, nfds, timeout))


@syscall("ppoll")
def sys_ppoll(p: Posix, fds: int, nfds: int, tsp: int, sigmask: int, *_: int) -> int:
    if tsp:
        sec, nsec = _TIMESPEC.unpack(p.port.read(tsp, 16))
        timeout = sec * 1_000_000_000 + nsec
    else:
        timeout = None
    return _poll(p, fds, nfds, timeout, ("ppoll", fds, nfds, tsp))


_READ, _WRITE = POLLIN | POLLHUP | POLLERR, POLLOUT | POLLERR


def _select(p: Posix, n: int, sets: tuple[int, int, int], timeout_ns: int | None, key: tuple) -> int:
    if not 0 <= n <= 1024:
        return -EINVAL
    words = (n + 63) // 64
    try:
        bits = [int.from_bytes(p.port.read(s, 8 * words), "little") if s else 0 for s in sets]
    except p.port.Fault:
        return -EFAULT
    out = [0, 0, 0]
    files = []
    for fd in range(n):
        want = [(b >> fd) & 1 for b in bits]
        if not any(want):
            continue
        f = p.proc.fds.get(fd)
        if f is None:
            return -9  # EBADF
        files.append(f)
        r = f.poll(p)
        for i, mask in enumerate((_READ, _WRITE, POLLPRI)):
            if want[i] and r & mask:
                out[i] |= 1 << fd
    ready = sum(bin(o).count("1") for o in out)
    if not ready and timeout_ns != 0:
        _wait(p, files, key, timeout_ns)
    done(p)
    for s, o in zip(sets, out):
        if s:
            p.port.write(s, o.to_bytes(8 * words, "little"))
    return ready


@syscall("select")
def sys_select(p: Posix, n: int, rd: int, wr: int, ex: int, tvp: int, *_: int) -> int:
    timeout = None
    if tvp:
        sec, usec = _TIMESPEC.unpack(p.port.read(tvp, 16))
        timeout = sec * 1_000_000_000 + usec * 1000
    return _select(p, n, (rd, wr, ex), timeout, ("select", n, rd, wr, ex, tvp))


@syscall("pselect6")
def sys_pselect6(p: Posix, n: int, rd: int, wr: int, ex: int, tsp: int, *_: int) -> int:
    timeout = None
    if tsp:
        sec, nsec = _TIMESPEC.unpack(p.port.read(tsp, 16))
        timeout = sec * 1_000_000_000 + nsec
    return _select(p, n, (rd, wr, ex), timeout, ("pselect6", n, rd, wr, ex, tsp))
