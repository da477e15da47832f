"""File descriptors and open files: the descriptor table, the file protocol, and the file calls.

An ``OpenFile`` is an open file description (POSIX): dup and fork share it, with its offset and
status flags; the descriptor table maps small integers to (OpenFile, close-on-exec). Every kind of
file (console, regular file, directory, pipe, device, socket) is an OpenFile subclass, so read,
write, poll and ioctl dispatch without an if-chain on the kind.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import DEFAULT_FDS
from libos.posix.system import WouldBlock
from libos.posix.table import EBADF, EFAULT, EINVAL, EMFILE, ENOTTY, ESPIPE, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR = 3, 0, 1, 2
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20


class OpenFile:
    """An open file description. Methods take the calling process's ``Posix`` instance ``p`` (its
    port reaches its memory) and return a count or a negative errno; a call that must wait raises
    ``WouldBlock`` before it consumes anything."""

    wait_mask = 0  # event_wait bits besides the doorbell that may make poll() change (EV_CONSOLE, EV_NET)
    mode = 0o020620  # st_mode for fstat: a character device unless a kind says otherwise

    def __init__(self, flags: int = O_RDWR) -> None:
        self.flags = flags
        self.offset = 0
        self.refs = 0  # descriptors (in every process) that refer to it

    def read(self, p: Posix, buf: int, n: int) -> int:
        return -EBADF if self.flags & O_ACCMODE == O_WRONLY else -EINVAL

    def write(self, p: Posix, buf: int, n: int) -> int:
        return -EBADF if self.flags & O_ACCMODE == O_RDONLY else -EINVAL

    def lseek(self, p: Posix, offset: int, whence: int) -> int:
        return -ESPIPE

    def ioctl(self, p: Posix, req: int, arg: int) -> int:
        return -ENOTTY

    def poll(self, p: Posix) -> int:
        """The ready events now (POLLIN | POLLOUT | POLLHUP ...)."""
        return POLLIN | POLLOUT

    def release(self, p: Posix) -> None:
        """The last descriptor referring to it was closed."""

    def stat(self, p: Posix) -> bytes:
        """Its struct stat (fstat)."""
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(ino=id(self) & 0xFFFF_FFFF, mode=self.mode)


class Console(OpenFile):
    """The exo console as fds 0, 1, 2 before a terminal takes them (libos/posix/tty.py)."""

    def __init__(self, flags: int = O_RDWR, error: bool = False) -> None:
        super().__init__(flags)
        self.error = error  # fd 2: the console's error stream (console_error), the host's stderr

    def read(self, p: Posix, buf: int, n: int) -> int:
        if not n:
            return 0
        try:
            p.writable(buf, min(n, 1 << 20))
        except p.port.Fault:
            return -EFAULT
        return p.hc("console_read", buf, n)

    def stat(self, p: Posix) -> bytes:
        # What a program sees natively when exo's own stdin/stdout are not a terminal: a pipe
        # (S_IFIFO), so programs buffer and choose as they do in a pipeline; a terminal is the
        # tty's business (libos/posix/tty.py).
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(ino=2 + self.error, mode=0o010600)

    def write(self, p: Posix, buf: int, n: int) -> int:
        return p.hc("console_error" if self.error else "console_write", buf, n) if n else 0


class FdTable:
    """One process's descriptors: fd -> [OpenFile, close-on-exec]."""

    def __init__(self, limit: int = DEFAULT_FDS) -> None:
        self.slots: dict[int, list] = {}
        self.limit = limit  # RLIMIT_NOFILE's soft limit: the app's fds quota, or lower (setrlimit)

    def get(self, fd: int) -> OpenFile | None:
        slot = self.slots.get(fd)
        return slot[0] if slot else None

    def install(self, fd: int, f: OpenFile, cloexec: bool = False) -> int:
        """Put ``f`` at ``fd`` (which the caller closed first)."""
        f.refs += 1
        self.slots[fd] = [f, cloexec]
        return fd

    def alloc(self, f: OpenFile, cloexec: bool = False, lowest: int = 0) -> int:
        """The lowest free descriptor >= ``lowest`` for ``f``, or -EMFILE."""
        fd = lowest
        while fd in self.slots:
            fd += 1
        if fd >= self.limit:
            return -EMFILE
        return self.install(fd, f, cloexec)

    def close(self, p: Posix, fd: int) -> int:
        slot = self.slots.pop(fd, None)
        if slot is None:
            return -EBADF
        f = slot[0]
        f.refs -= 1
        if f.refs == 0:
            f.release(p)
        return 0

    def fork(self) -> FdTable:
        """The child's table: the same open file descriptions (POSIX fork)."""
        child = FdTable(self.limit)
        for fd, (f, cloexec) in self.slots.items():
            child.install(fd, f, cloexec)
        return child

    def close_on_exec(self, p: Posix) -> None:
        for fd in [fd for fd, (_, cloexec) in self.slots.items() if cloexec]:
            self.close(p, fd)

    def close_all(self, p: Posix) -> None:
        for fd in list(self.slots):
            self.close(p, fd)


def console_fds() -> FdTable:
    """fds 0, 1 and 2 of the first process: the console."""
    t = FdTable()
    t.install(0, Console(O_RDONLY))
    t.install(1, Console(O_WRONLY))
    t.install(2, Console(O_WRONLY, error=True))
    return t


# ------------------------------------------------------------ the calls
@syscall("read")
def sys_read(p: Posix, fd: int, buf: int, n: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    return -EBADF if f is None else f.read(p, buf, n)


@syscall("write")
def sys_write(p: Posix, fd: int, buf: int, n: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    return -EBADF if f is None else f.write(p, buf, n)


def _iov(p: Posix, iov: int, cnt: int) -> list[tuple[int, int]] | int:
    if not 0 <= cnt <= 1024:  # UIO_MAXIOV
        return -EINVAL
    return list(struct.iter_unpack("<QQ", p.port.read(iov, 16 * cnt))) if cnt else []


def _vectored(p: Posix, fd: int, iov: int, cnt: int, writing: bool) -> int:
    """readv/writev: each buffer in turn until one comes up short. A wait before anything moved
    waits; after some bytes moved, the call returns what moved (a short count, as Linux does)."""
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    vec = _iov(p, iov, cnt)
    if isinstance(vec, int):
        return vec
    op = f.write if writing else f.read
    total = 0
    for base, ln in vec:
        if not ln:
            continue
        try:
            rc = op(p, base, ln)
        except WouldBlock:
            if total == 0:
                raise
            break
        if rc < 0:
            return rc if total == 0 else total
        total += rc
        if rc < ln:
            break
    return total


@syscall("writev")
def sys_writev(p: Posix, fd: int, iov: int, cnt: int, *_: int) -> int:
    return _vectored(p, fd, iov, cnt, writing=True)


@syscall("readv")
def sys_readv(p: Posix, fd: int, iov: int, cnt: int, *_: int) -> int:
    return _vectored(p, fd, iov, cnt, writing=False)


@syscall("close")
def sys_close(p: Posix, fd: int, *_: int) -> int:
    return p.proc.fds.close(p, fd)


@syscall("ioctl")
def sys_ioctl(p: Posix, fd: int, req: int, arg: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    return -EBADF if f is None else f.ioctl(p, req, arg)
