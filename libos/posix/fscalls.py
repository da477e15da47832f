"""The path calls: open, stat, directories, links, renames, modes and owners, times, cwd.

Each resolves its path through the tenant's Vfs (libos/posix/vfs.py) and runs one operation of the
shared ext2 file system for the calling process; a failure is the ext2 library's errno.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix import procfs
from libos.posix.files import O_ACCMODE, O_RDONLY
from libos.posix.table import (
    EBADF,
    EFAULT,
    EINVAL,
    ENAMETOOLONG,
    ENOENT,
    ENOTDIR,
    ERANGE,
    EROFS,
    s32,
    syscall,
)
from libos.posix.vfs import (
    AT_FDCWD,
    EPOCH,
    O_CLOEXEC,
    DirFile,
    RegFile,
    Vfs,
    call,
    stat_of,
)

if TYPE_CHECKING:
    from libos.posix import Posix

AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x1000
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_STATX = struct.Struct("<IIQIIIHHQQQQ")  # statx's head: mask, blksize, attributes, nlink, uid, gid, mode, pad, ino, size, blocks, attributes_mask


def _path(p: Posix, va: int) -> str | int:
    if not va:
        return -EFAULT
    try:
        raw = p.cstr(va, 4097)
    except p.port.Fault:
        return -EFAULT
    if len(raw) > 4095:
        return -ENAMETOOLONG
    return raw.decode("utf-8", "surrogateescape")


def _resolve(p: Posix, dirfd: int, va: int) -> str | int:
    path = _path(p, va)
    if isinstance(path, int):
        return path
    return Vfs.absolute(p, path, s32(dirfd))


def _fs(p: Posix):
    return p.system.vfs.ext2(p)


def _op(p: Posix, fn) -> int:
    fs = _fs(p)
    if fs is None:
        return -ENOENT
    rc = call(p, lambda: fn(fs))
    return 0 if rc is None else rc


def _mut(p: Posix, fn) -> int:
    """An operation that changes the file system: EROFS on a read-only disk before anything moves."""
    fs = _fs(p)
    if fs is None:
        return -ENOENT
    if fs.dev.readonly:
        return -EROFS
    rc = call(p, lambda: fn(fs))
    return 0 if rc is None else rc


# ------------------------------------------------------------ open
def _open(p: Posix, dirfd: int, va: int, flags: int, mode: int) -> int:
    path = _path(p, va)
    if isinstance(path, int):
        return path
    if p.system.vfs.ext2(p) is not None and p.system.vfs.fs.dev.readonly and (flags & O_ACCMODE != O_RDONLY
                                                                             or flags & 0o100):
        full = Vfs.absolute(p, path, s32(dirfd))
        if isinstance(full, str) and not full.startswith("/dev/"):
            return -EROFS
    f = p.system.vfs.open(p, path, flags, mode, s32(dirfd))
    if isinstance(f, int):
        return f
    return p.proc.fds.alloc(f, bool(flags & O_CLOEXEC))


@syscall("openat")
def sys_openat(p: Posix, dirfd: int, path: int, flags: int, mode: int, *_: int) -> int:
    return _open(p, dirfd, path, flags, mode)


@syscall("open")
def sys_open(p: Posix, path: int, flags: int, mode: int, *_: int) -> int:
    return _open(p, AT_FDCWD, path, flags, mode)


@syscall("creat")
def sys_creat(p: Posix, path: int, mode: int, *_: int) -> int:
    return _open(p, AT_FDCWD, path, 0o1101, mode)  # O_CREAT | O_WRONLY | O_TRUNC


# ------------------------------------------------------------ stat
def _stat(p: Posix, dirfd: int, va: int, buf: int, flags: int) -> int:
    if flags & AT_EMPTY_PATH and va and not p.cstr(va, 1):
        f = p.proc.fds.get(s32(dirfd))
        if f is None:
            return -EBADF
        p.port.write(buf, f.stat(p))
        return 0
    full = _resolve(p, dirfd, va)
    if isinstance(full, int):
        return full
    f = p.system.vfs.open(p, full, 0o10000000 | (0o400000 if flags & AT_SYMLINK_NOFOLLOW else 0))  # O_PATH
    if isinstance(f, int):
        if f == -40 and flags & AT_SYMLINK_NOFOLLOW:  # a symlink itself (lstat)
            return _op(p, lambda fs: p.port.write(buf, stat_of(fs.stat(full), fs.block_size)))
        return f
    try:
        p.port.write(buf, f.stat(p))
    except p.port.Fault:
        return -EFAULT
    return 0


@syscall("newfstatat")
def sys_newfstatat(p: Posix, dirfd: int, path: int, buf: int, flags: int, *_: int) -> int:
    return _stat(p, dirfd, path, buf, flags)


@syscall("stat")
def sys_stat(p: Posix, path: int, buf: int, *_: int) -> int:
    return _stat(p, AT_FDCWD, path, buf, 0)


@syscall("lstat")
def sys_lstat(p: Posix, path: int, buf: int, *_: int) -> int:
    return _stat(p, AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW)


@syscall("statx")
def sys_statx(p: Posix, dirfd: int, path: int, flags: int, mask: int, buf: int, *_: int) -> int:
    # Built from struct stat (include/uapi/linux/stat.h struct statx): the basic fields.
    scratch = p.data_base + 3 * 4096  # a scratch page of the posix module
    p.ensure_page(scratch)
    p.writable(scratch, 144)
    rc = _stat(p, dirfd, path, scratch, flags)
    if rc < 0:
        return rc
    (dev, ino, nlink, mode, uid, gid, _, rdev, size, blksize, blocks,
     at, atn, mt, mtn, ct, ctn, *_r) = struct.unpack("<QQQIIIIQqqqqqqqqqqqq", p.port.read(scratch, 144))
    head = struct.pack("<IIQIIIHHQQQQ", 0x7FF, blksize, 0, nlink, uid, gid, mode, 0, ino, size, blocks, 0)
    times = b"".join(struct.pack("<qIi", s, n, 0) for s, n in ((at, atn), (0, 0), (ct, ctn), (mt, mtn)))
    devs = struct.pack("<IIII", rdev >> 8, rdev & 0xFF, dev >> 8, dev & 0xFF)
    p.port.write(buf, (head + times + devs).ljust(256, b"\0"))
    return 0


@syscall("access")
def sys_access(p: Posix, path: int, mode: int, *_: int) -> int:
    return sys_faccessat(p, AT_FDCWD, path, mode)


@syscall("faccessat", "faccessat2")
def sys_faccessat(p: Posix, dirfd: int, va: int, mode: int, *_: int) -> int:
    # Root may read and write anything; existence is what is checked (execute bits: not yet).
    full = _resolve(p, dirfd, va)
    if isinstance(full, int):
        return full
    f = p.system.vfs.open(p, full, 0o10000000)
    return f if isinstance(f, int) else 0


# ------------------------------------------------------------ directories
@syscall("getdents64")
def sys_getdents64(p: Posix, fd: int, buf: int, n: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    if not isinstance(f, DirFile):
        return -ENOTDIR
    return f.getdents64(p, buf, n)


@syscall("mkdirat")
def sys_mkdirat(p: Posix, dirfd: int, path: int, mode: int, *_: int) -> int:
    full = _resolve(p, dirfd, path)
    return full if isinstance(full, int) else _mut(p, lambda fs: fs.mkdir(full, mode & ~p.proc.umask & 0o7777) and 0)


@syscall("mkdir")
def sys_mkdir(p: Posix, path: int, mode: int, *_: int) -> int:
    return sys_mkdirat(p, AT_FDCWD, path, mode)


@syscall("rmdir")
def sys_rmdir(p: Posix, path: int, *_: int) -> int:
    full = _resolve(p, AT_FDCWD, path)
    return full if isinstance(full, int) else _mut(p, lambda fs: fs.rmdir(full))


@syscall("unlinkat")
def sys_unlinkat(p: Posix, dirfd: int, path: int, flags: int, *_: int) -> int:
    full = _resolve(p, dirfd, path)
    if isinstance(full, int):
        return full
    return _mut(p, lambda fs: fs.rmdir(full) if flags & AT_REMOVEDIR else fs.unlink(full))


@syscall("unlink")
def sys_unlink(p: Posix, path: int, *_: int) -> int:
    return sys_unlinkat(p, AT_FDCWD, path, 0)


@syscall("renameat2", "renameat")
def sys_renameat(p: Posix, olddir: int, old: int, newdir: int, new: int, flags: int = 0, *_: int) -> int:
    a, b = _resolve(p, olddir, old), _resolve(p, newdir, new)
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return _mut(p, lambda fs: fs.rename(a, b))


@syscall("rename")
def sys_rename(p: Posix, old: int, new: int, *_: int) -> int:
    return sys_renameat(p, AT_FDCWD, old, AT_FDCWD, new, 0)


@syscall("linkat")
def sys_linkat(p: Posix, olddir: int, old: int, newdir: int, new: int, *_: int) -> int:
    a, b = _resolve(p, olddir, old), _resolve(p, newdir, new)
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return _mut(p, lambda fs: fs.link(a, b))


@syscall("link")
def sys_link(p: Posix, old: int, new: int, *_: int) -> int:
    return sys_linkat(p, AT_FDCWD, old, AT_FDCWD, new)


@syscall("symlinkat")
def sys_symlinkat(p: Posix, target: int, dirfd: int, path: int, *_: int) -> int:
    t = _path(p, target)
    full = _resolve(p, dirfd, path)
    if isinstance(t, int):
        return t
    if isinstance(full, int):
        return full
    return _mut(p, lambda fs: fs.symlink(t, full) and 0)


@syscall("symlink")
def sys_symlink(p: Posix, target: int, path: int, *_: int) -> int:
    return sys_symlinkat(p, target, AT_FDCWD, path)


@syscall("readlinkat")
def sys_readlinkat(p: Posix, dirfd: int, path: int, buf: int, size: int, *_: int) -> int:
    full = _resolve(p, dirfd, path)
    if isinstance(full, int):
        return full
    if procfs.is_proc(full):
        target = procfs.readlink(p, full)
        if isinstance(target, int):
            return target
    else:
        target = _op(p, lambda fs: fs.readlink(full))
        if isinstance(target, int):
            return target
    if not 0 < size:
        return -EINVAL
    data = target.encode("utf-8", "surrogateescape")[:size]
    p.port.write(buf, data)
    return len(data)


@syscall("readlink")
def sys_readlink(p: Posix, path: int, buf: int, size: int, *_: int) -> int:
    return sys_readlinkat(p, AT_FDCWD, path, buf, size)


@syscall("chdir")
def sys_chdir(p: Posix, path: int, *_: int) -> int:
    full = _resolve(p, AT_FDCWD, path)
    if isinstance(full, int):
        return full
    f = p.system.vfs.open(p, full, 0o200000)  # O_DIRECTORY
    if isinstance(f, int):
        return f
    p.proc.cwd = full
    return 0


@syscall("fchdir")
def sys_fchdir(p: Posix, fd: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    if not isinstance(f, DirFile):
        return -ENOTDIR
    p.proc.cwd = f.path
    return 0


@syscall("getcwd")
def sys_getcwd(p: Posix, buf: int, size: int, *_: int) -> int:
    path = p.proc.cwd.encode("utf-8", "surrogateescape") + b"\0"
    if size < len(path):
        return -ERANGE
    p.port.write(buf, path)
    return len(path)


@syscall("umask")
def sys_umask(p: Posix, mask: int, *_: int) -> int:
    old, p.proc.umask = p.proc.umask, mask & 0o777
    return old


# ------------------------------------------------------------ modes, owners, times, sizes
def _target(p: Posix, dirfd: int, va: int) -> str | int:
    return _resolve(p, dirfd, va)


@syscall("fchmodat")
def sys_fchmodat(p: Posix, dirfd: int, path: int, mode: int, *_: int) -> int:
    full = _target(p, dirfd, path)
    return full if isinstance(full, int) else _mut(p, lambda fs: fs.chmod(full, mode & 0o7777))


@syscall("chmod")
def sys_chmod(p: Posix, path: int, mode: int, *_: int) -> int:
    return sys_fchmodat(p, AT_FDCWD, path, mode)


def _file_ino(p: Posix, fd: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    ino = getattr(f, "ino", None)
    return -EINVAL if ino is None else ino


@syscall("fchmod")
def sys_fchmod(p: Posix, fd: int, mode: int, *_: int) -> int:
    ino = _file_ino(p, fd)
    return ino if ino < 0 else _mut(p, lambda fs: fs.chmod(ino, mode & 0o7777))


@syscall("fchownat")
def sys_fchownat(p: Posix, dirfd: int, path: int, uid: int, gid: int, flags: int, *_: int) -> int:
    full = _target(p, dirfd, path)
    if isinstance(full, int):
        return full
    return _mut(p, lambda fs: _chown(fs, full, uid, gid))


def _chown(fs, what, uid: int, gid: int) -> None:
    st = fs.stat(what, follow=True)
    uid, gid = uid & 0xFFFF_FFFF, gid & 0xFFFF_FFFF
    fs.chown(what, st.uid if uid == 0xFFFF_FFFF else uid, st.gid if gid == 0xFFFF_FFFF else gid)


@syscall("chown", "lchown")
def sys_chown(p: Posix, path: int, uid: int, gid: int, *_: int) -> int:
    return sys_fchownat(p, AT_FDCWD, path, uid, gid, 0)


@syscall("fchown")
def sys_fchown(p: Posix, fd: int, uid: int, gid: int, *_: int) -> int:
    ino = _file_ino(p, fd)
    return ino if ino < 0 else _mut(p, lambda fs: _chown(fs, ino, uid, gid))


@syscall("utimensat")
def sys_utimensat(p: Posix, dirfd: int, path: int, times: int, flags: int, *_: int) -> int:
    if path:
        what = _target(p, dirfd, path)
    else:
        what = _file_ino(p, s32(dirfd))
    if isinstance(what, int) and what < 0:
        return what
    now = EPOCH + p.hc("time_now") // 1_000_000_000
    if times:
        (a, an), (m, mn) = struct.iter_unpack("<qq", p.port.read(times, 32))
        atime = None if an == UTIME_OMIT else now if an == UTIME_NOW else a
        mtime = None if mn == UTIME_OMIT else now if mn == UTIME_NOW else m
    else:
        atime = mtime = now
    return _mut(p, lambda fs: fs.set_times(what, atime, mtime))


@syscall("truncate")
def sys_truncate(p: Posix, path: int, length: int, *_: int) -> int:
    full = _target(p, AT_FDCWD, path)
    return full if isinstance(full, int) else _mut(p, lambda fs: fs.truncate(fs.lookup(full, follow=True), length))


@syscall("ftruncate")
def sys_ftruncate(p: Posix, fd: int, length: int, *_: int) -> int:
    ino = _file_ino(p, fd)
    return ino if ino < 0 else _mut(p, lambda fs: fs.truncate(ino, length))


@syscall("fsync", "fdatasync")
def sys_fsync(p: Posix, fd: int, *_: int) -> int:
    if p.proc.fds.get(fd) is None:
        return -EBADF
    return p.system.vfs.sync(p)


@syscall("sync")
def sys_sync(p: Posix, *_: int) -> int:
    p.system.vfs.sync(p)
    return 0


@syscall("pread64")
def sys_pread64(p: Posix, fd: int, buf: int, n: int, off: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    return f.pread(p, buf, n, off) if isinstance(f, RegFile) else -29  # ESPIPE


@syscall("pwrite64")
def sys_pwrite64(p: Posix, fd: int, buf: int, n: int, off: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -EBADF
    return f.pwrite(p, buf, n, off) if isinstance(f, RegFile) else -29


@syscall("fadvise64")
def sys_fadvise64(p: Posix, *_: int) -> int:
    return 0  # advice only

