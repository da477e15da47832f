"""Descriptor calls: dup, dup2, dup3, fcntl, fstat (the open file description's own facts)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix.table import EBADF, EFAULT, EINVAL, EMFILE, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

O_CLOEXEC = 0o2000000
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW = 0, 1, 2, 3, 4, 5, 6, 7
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1
_SETFL_MASK = 0o2000 | 0o4000  # O_APPEND | O_NONBLOCK: what F_SETFL may change (fcntl(2))
# struct stat on x86-64 (arch/x86/include/uapi/asm/stat.h): 144 bytes
STAT = struct.Struct("<QQQIIIIQqqqqqqqqqqqq")
assert STAT.size == 144


def stat_bytes(*, dev: int = 0, ino: int = 0, nlink: int = 1, mode: int = 0, uid: int = 0, gid: int = 0,
               rdev: int = 0, size: int = 0, blksize: int = 4096, blocks: int = 0, atime: int = 0,
               mtime: int = 0, ctime: int = 0) -> bytes:
    """A struct stat; times in ns."""
    def ts(ns: int) -> tuple[int, int]:
        return ns // 1_000_000_000, ns % 1_000_000_000

    return STAT.pack(dev, ino, nlink, mode, uid, gid, 0, rdev, size, blksize, blocks,
                     *ts(atime), *ts(mtime), *ts(ctime), 0, 0, 0)


def _dup_to(p: Posix, old: int, new: int, cloexec: bool) -> int:
    table = p.proc.fds
    f = table.get(old)
    if f is None:
        return -EBADF
    if not 0 <= new < table.limit:
        return -EBADF
    if new == old:
        return new
    f.refs += 1  # hold it while the target is closed (it may be the same description)
    if table.get(new) is not None:
        table.close(p, new)
    table.install(new, f, cloexec)
    f.refs -= 1
    return new


@syscall("dup")
def sys_dup(p: Posix, fd: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    return -EBADF if f is None else p.proc.fds.alloc(f)


@syscall("dup2")
def sys_dup2(p: Posix, old: int, new: int, *_: int) -> int:
    return _dup_to(p, old, new, False)


@syscall("dup3")
def sys_dup3(p: Posix, old: int, new: int, flags: int, *_: int) -> int:
    if flags & ~O_CLOEXEC or old == new:
        return -EINVAL
    return _dup_to(p, old, new, bool(flags & O_CLOEXEC))


@syscall("fcntl")
def sys_fcntl(p: Posix, fd: int, cmd: int, arg: int, *_: int) -> int:
    table = p.proc.fds
    slot = table.slots.get(fd)
    if slot is None:
        return -EBADF
    f = slot[0]
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        if arg >= table.limit:
            return -EINVAL
        rc = table.alloc(f, cmd == F_DUPFD_CLOEXEC, lowest=arg)
        return -EMFILE if rc == -EMFILE else rc
    if cmd == F_GETFD:
        return FD_CLOEXEC if slot[1] else 0
    if cmd == F_SETFD:
        slot[1] = bool(arg & FD_CLOEXEC)
        return 0
    if cmd == F_GETFL:
        return f.flags
    if cmd == F_SETFL:
        f.flags = (f.flags & ~_SETFL_MASK) | (arg & _SETFL_MASK)
        return 0
    if cmd in (F_GETLK, F_SETLK, F_SETLKW):
        return 0  # one machine, advisory locks always granted (docs/posix.md)
    return -EINVAL


@syscall("fstat")
def sys_fstat(p: Posix, fd: int, buf: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    try:
        p.port.write(buf, f.stat(p))
    except p.port.Fault:
        return -EFAULT
    return 0


@syscall("lseek")
def sys_lseek(p: Posix, fd: int, offset: int, whence: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    if offset >= 1 << 63:
        offset -= 1 << 64
    return f.lseek(p, offset, whence)


@syscall("sendfile")
def sys_sendfile(p: Posix, out_fd: int, in_fd: int, offset: int, count: int, *_: int) -> int:
    src, dst = p.proc.fds.get(in_fd), p.proc.fds.get(out_fd)
    if src is None or dst is None:
        return -EBADF
    send = getattr(src, "sendfile", None)
    # Linux takes only a source that can be mapped (a regular file); callers fall back to
    # read/write on EINVAL (busybox's cat does).
    return -EINVAL if send is None else send(p, dst, offset, count)
