"""The file namespace of a Linux process: the disk's ext2 file system, /dev, and /proc (procfs.py).

One ``Vfs`` per tenant (PosixSystem.vfs), over ONE mounted ``Ext2`` (libos/fs/ext2): a shell and
the children it forks see each other's files at once, as processes of one kernel do (the ``fs``
module mounts per environment and cannot). Each operation runs through the CALLING process's
port: its disk grant, its staging pages (in the posix module's data region), its hypercalls.
`exo run` without --disk gives a fresh scratch ext2 disk holding /tmp, /etc, /root and the
program (exo/build/linux_app.py), so every process has a real file system.

Paths are made absolute against the cwd (or a directory descriptor) and normalised lexically;
symbolic links inside the file system are followed by the ext2 library. ``/dev`` is served
here (null, zero, full, random, urandom, tty); ``/proc/self/exe`` reads back the program path.
"""

from __future__ import annotations

import posixpath
import struct
from typing import TYPE_CHECKING

from exo.abi import PAGE_SIZE, PERM_R, PERM_W
from libos.posix.files import O_ACCMODE, O_RDONLY, O_WRONLY, POLLIN, POLLOUT, Console, OpenFile
from libos.posix.procfs import is_proc
from libos.posix.table import EBADF, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR

if TYPE_CHECKING:
    from libos.posix import Posix

O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_NONBLOCK = 0o100, 0o200, 0o1000, 0o2000, 0o4000
O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC, O_PATH = 0o200000, 0o400000, 0o2000000, 0o10000000
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o170000, 0o040000, 0o100000, 0o120000, 0o020000
AT_FDCWD = -100
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
EPOCH = 1_767_225_600  # guest seconds count from 2026-01-01, as libos/fs (libos/fs/__init__.py EPOCH)
STAGE_PAGES = 16  # the staging pages of one disk_io (libos/fs/__init__.py STAGE_PAGES)
STAGE_OFF = 16 * PAGE_SIZE  # in the posix module's data region, past its scratch pages
_DT = {S_IFDIR: 4, S_IFREG: 8, S_IFLNK: 10, S_IFCHR: 2, 0o010000: 1, 0o140000: 12, 0o060000: 6}
_DIRENT = struct.Struct("<QqHB")  # struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; name }


class Vfs:
    def __init__(self) -> None:
        self.fs = None  # the mounted Ext2, on first use
        self.dio = None
        self.absent = False  # no disk: only /dev and the program itself

    # ------------------------------------------------------------ the shared mount
    def ext2(self, p: Posix):
        """The mounted file system, acting for ``p`` (None when exo runs without a disk)."""
        if self.absent:
            return None
        _stage(p)
        if self.fs is None:
            from libos.fs import DiskIO
            from libos.fs.ext2 import Ext2, Ext2Error

            holder = _Stage(p)
            try:
                self.dio = DiskIO(holder)
            except OSError:
                self.absent = True
                return None
            try:
                self.fs = Ext2.open(self.dio, clock=lambda: EPOCH + max(0, p.hc("time_now")) // 1_000_000_000)
            except Ext2Error as e:
                p.log(f"cannot mount the disk: {e}")
                self.absent = True
                return None
            self.fs.dev = self.dio
            self.holder = holder
        self.holder.p = p
        self.dio.port = p.port  # this operation's disk I/O is the caller's
        return self.fs

    def sync(self, p: Posix) -> int:
        fs = self.ext2(p)
        if fs is None:
            return 0
        return call(p, fs.sync)

    def unmount(self, p: Posix) -> int:
        """The last process is ending: write everything back and mark the file system clean."""
        if self.fs is None or self.absent:
            return 0
        fs = self.ext2(p)
        return call(p, fs.close)

    # ------------------------------------------------------------ paths
    @staticmethod
    def absolute(p: Posix, path: str, dirfd: int = AT_FDCWD) -> str | int:
        if not path:
            return -ENOENT
        if path.startswith("/"):
            base = "/"
        elif dirfd in (AT_FDCWD, AT_FDCWD & 0xFFFF_FFFF):
            base = p.proc.cwd
        else:
            d = p.proc.fds.get(dirfd)
            if d is None:
                return -EBADF
            if not isinstance(d, DirFile):
                return -ENOTDIR
            base = d.path
        return posixpath.normpath(posixpath.join(base, path)).replace("//", "/")

    def open(self, p: Posix, path: str, flags: int, mode: int = 0, dirfd: int = AT_FDCWD) -> OpenFile | int:
        full = self.absolute(p, path, dirfd)
        if isinstance(full, int):
            return full
        if full in ("/dev/tty", "/dev/console") and p.system.tty is not None:
            from libos.posix.tty import TtyFile

            return TtyFile(p.system.tty, flags)  # the controlling terminal (libos/posix/tty.py)
        if is_proc(full):
            from libos.posix.procfs import open_proc

            return open_proc(p, full, flags, follow=not flags & O_NOFOLLOW)
        dev = DEVICES.get(full)
        if dev is not None:
            return dev(flags)
        if full == "/dev" or full.startswith("/dev/"):
            return DirFile(flags, full, None, []) if full == "/dev" else -ENOENT
        fs = self.ext2(p)
        if fs is None:
            return -ENOENT
        return call(p, lambda: self._open(p, fs, full, flags, mode))

    def _open(self, p: Posix, fs, full: str, flags: int, mode: int) -> OpenFile | int:
        from libos.fs.ext2 import Ext2Error

        try:
            ino = fs.lookup(full, follow=not flags & O_NOFOLLOW)
            if flags & O_CREAT and flags & O_EXCL:
                return -17  # EEXIST
        except Ext2Error as e:
            if e.errno != ENOENT or not flags & O_CREAT:
                raise
            ino = fs.create(full, (mode & ~p.proc.umask) & 0o7777)
        st = fs.stat(ino)
        kind = st.mode & S_IFMT
        if kind == S_IFLNK:  # O_NOFOLLOW on a link
            return -40 if not flags & O_PATH else RegFile(flags, full, ino)  # ELOOP
        if kind == S_IFDIR:
            if flags & O_ACCMODE != O_RDONLY:
                return -EISDIR
            return DirFile(flags, full, ino, None)
        if flags & O_DIRECTORY:
            return -ENOTDIR
        if flags & O_TRUNC and flags & O_ACCMODE != O_RDONLY and kind == S_IFREG:
            fs.truncate(ino, 0)
        return RegFile(flags, full, ino)


def call(p: Posix, fn):
    """Run a file-system operation: its result, or a negative errno (Ext2Error, a failed disk)."""
    from libos.fs.ext2 import Ext2Error

    try:
        return fn()
    except Ext2Error as e:
        if e.errno == EIO:
            p.log(str(e))
        return -e.errno
    except OSError as e:
        return -(e.errno or EIO)


class _Stage:
    """What DiskIO needs of its owner: the port and the staging pages (the calling process's)."""

    def __init__(self, p: Posix) -> None:
        self.p = p
        self.BATCH_SECTORS = (STAGE_PAGES - 2) * PAGE_SIZE // 512

    @property
    def port(self):
        return self.p.port

    @property
    def stage(self) -> int:
        return self.p.data_base + STAGE_OFF


def _stage(p: Posix) -> None:
    """Map the staging pages in the caller and make them writable (after a fork they are
    copy-on-write, and the exokernel does not page in for disk_io)."""
    proc = p.proc
    if proc.stage_ready:
        return
    base = p.data_base + STAGE_OFF
    for i in range(STAGE_PAGES):
        p.ensure_page(base + i * PAGE_SIZE, PERM_R | PERM_W)
    p.writable(base, STAGE_PAGES * PAGE_SIZE)
    proc.stage_ready = True


def stat_of(st, blksize: int = 1024) -> bytes:
    from libos.posix.descriptors import stat_bytes

    return stat_bytes(dev=0x801, ino=st.ino, nlink=st.nlink, mode=st.mode, uid=st.uid, gid=st.gid,
                      size=st.size, blksize=blksize, blocks=st.blocks, atime=st.atime * 1_000_000_000,
                      mtime=st.mtime * 1_000_000_000, ctime=st.ctime * 1_000_000_000)


class RegFile(OpenFile):
    """A file of the ext2 file system (regular, or a symlink opened with O_PATH)."""

    def __init__(self, flags: int, path: str, ino: int) -> None:
        super().__init__(flags)
        self.path, self.ino = path, ino

    def _fs(self, p: Posix):
        return p.system.vfs.ext2(p)

    def read(self, p: Posix, buf: int, n: int) -> int:
        if self.flags & O_ACCMODE == O_WRONLY:
            return -EBADF
        rc = self.pread(p, buf, n, self.offset)
        if rc > 0:
            self.offset += rc
        return rc

    def pread(self, p: Posix, buf: int, n: int, off: int) -> int:
        fs = self._fs(p)
        data = call(p, lambda: fs.read(self.ino, off, min(n, 1 << 20)))
        if isinstance(data, int):
            return data
        try:
            p.port.write(buf, data)
        except p.port.Fault:
            return -14
        return len(data)

    def write(self, p: Posix, buf: int, n: int) -> int:
        if self.flags & O_ACCMODE == O_RDONLY:
            return -EBADF
        fs = self._fs(p)
        if self.flags & O_APPEND:
            st = call(p, lambda: fs.stat(self.ino))
            if isinstance(st, int):
                return st
            self.offset = st.size
        rc = self.pwrite(p, buf, n, self.offset)
        if rc > 0:
            self.offset += rc
        return rc

    def pwrite(self, p: Posix, buf: int, n: int, off: int) -> int:
        try:
            data = p.port.read(buf, min(n, 1 << 20))
        except p.port.Fault:
            return -14
        return self.pwrite_bytes(p, data, off)

    def lseek(self, p: Posix, offset: int, whence: int) -> int:
        if whence == SEEK_SET:
            new = offset
        elif whence == SEEK_CUR:
            new = self.offset + offset
        elif whence == SEEK_END:
            st = call(p, lambda: self._fs(p).stat(self.ino))
            if isinstance(st, int):
                return st
            new = st.size + offset
        else:
            return -EINVAL
        if new < 0:
            return -EINVAL
        self.offset = new
        return new

    def stat(self, p: Posix) -> bytes:
        fs = self._fs(p)
        st = call(p, lambda: fs.stat(self.ino))
        return stat_of(st, fs.block_size) if not isinstance(st, int) else super().stat(p)

    def read_at(self, p: Posix, offset: int, n: int) -> bytes:
        fs = self._fs(p)
        return fs.read(self.ino, offset, n)

    def pwrite_bytes(self, p: Posix, data: bytes, off: int) -> int:
        """Write ``data`` at ``off`` (a shared mapping's write-back): bytes written or a negative errno."""
        fs = self._fs(p)
        return call(p, lambda: fs.write(self.ino, off, data))

    def file_size(self, p: Posix) -> int:
        return self._fs(p).stat(self.ino).size


class DirFile(OpenFile):
    """A directory opened for getdents64 (and as a dirfd for the *at calls)."""

    mode = S_IFDIR | 0o755

    def __init__(self, flags: int, path: str, ino: int | None, entries: list | None) -> None:
        super().__init__(flags)
        self.path, self.ino = path, ino
        self.entries = entries  # a snapshot at the first getdents64: the cursor is an index into it

    def read(self, p: Posix, buf: int, n: int) -> int:
        return -EISDIR

    def lseek(self, p: Posix, offset: int, whence: int) -> int:
        if whence != SEEK_SET or offset < 0:
            return -EINVAL
        self.offset = offset
        if offset == 0:
            self.entries = None if self.ino is not None else self.entries
        return offset

    def getdents64(self, p: Posix, buf: int, n: int) -> int:
        if self.entries is None:
            if self.ino is None:
                self.entries = []
            else:
                fs = p.system.vfs.ext2(p)
                listed = call(p, lambda: fs.readdir(self.ino))
                if isinstance(listed, int):
                    return listed
                self.entries = [(name, ino, ftype) for name, ino, ftype in listed]
        if self.ino is None and not self.entries:  # /dev
            self.entries = [(".", 1, 2), ("..", 1, 2)] + [(k[5:], 100 + i, 3) for i, k in enumerate(DEVICES)]
        out = bytearray()
        while self.offset < len(self.entries):
            name, ino, ftype = self.entries[self.offset]
            raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
            reclen = (_DIRENT.size + len(raw) + 1 + 7) & ~7
            if len(out) + reclen > n:
                break
            dtype = {1: 8, 2: 4, 3: 2, 4: 6, 5: 1, 6: 12, 7: 10}.get(ftype, 0)  # ext2 file type -> DT_*
            out += _DIRENT.pack(ino, self.offset + 1, reclen, dtype) + raw + b"\0" * (reclen - _DIRENT.size - len(raw))
            self.offset += 1
        if not out and self.offset < len(self.entries):
            return -EINVAL  # the buffer cannot hold one entry
        if out:
            p.port.write(buf, bytes(out))
        return len(out)

    def stat(self, p: Posix) -> bytes:
        if self.ino is None:
            return super().stat(p)
        fs = p.system.vfs.ext2(p)
        st = call(p, lambda: fs.stat(self.ino))
        return stat_of(st, fs.block_size) if not isinstance(st, int) else super().stat(p)


class Device(OpenFile):
    """A character device of /dev; ``rdev`` as Linux numbers it (Documentation/admin-guide/devices.txt)."""

    rdev = 0

    def stat(self, p: Posix) -> bytes:
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(dev=5, ino=self.rdev, mode=S_IFCHR | 0o666, rdev=self.rdev)

    def lseek(self, p: Posix, offset: int, whence: int) -> int:
        return 0

    def poll(self, p: Posix) -> int:
        return POLLIN | POLLOUT


class Null(Device):
    rdev = (1 << 8) | 3

    def read(self, p: Posix, buf: int, n: int) -> int:
        return 0

    def write(self, p: Posix, buf: int, n: int) -> int:
        return n


class Zero(Device):
    rdev = (1 << 8) | 5

    def read(self, p: Posix, buf: int, n: int) -> int:
        n = min(n, 1 << 20)
        p.port.write(buf, bytes(n))
        return n

    def write(self, p: Posix, buf: int, n: int) -> int:
        return n


class Full(Zero):
    rdev = (1 << 8) | 7

    def write(self, p: Posix, buf: int, n: int) -> int:
        return -28  # ENOSPC


class Random(Device):
    rdev = (1 << 8) | 9

    def read(self, p: Posix, buf: int, n: int) -> int:
        from libos.posix.clock import sys_getrandom

        return sys_getrandom(p, buf, n, 0)

    def write(self, p: Posix, buf: int, n: int) -> int:
        return n


def _tty(flags: int) -> OpenFile:
    return Console(flags)


DEVICES = {"/dev/null": Null, "/dev/zero": Zero, "/dev/full": Full, "/dev/random": Random,
           "/dev/urandom": Random, "/dev/tty": _tty, "/dev/console": _tty}
