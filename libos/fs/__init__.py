"""fs: POSIX-like files for a guest, an ext2 file system in the library.

``[libos] fs = "ext2"``. The environment reaches the disk only through the
exokernel's disk hypercalls (``disk_info``, ``disk_io``: block ranges granted to
it, buffers checked against its page tables, a whole cluster of sectors per
hypercall); the file system itself (libos/fs/ext2/) and its block cache run in
the library, on behalf of this one environment.

Entry points (SysV arguments; a negative errno on failure):

    open(path, flags, mode) -> fd        O_RDONLY 0, O_WRONLY 1, O_RDWR 2, O_CREAT 0x40,
                                         O_EXCL 0x80, O_TRUNC 0x200, O_APPEND 0x400 (Linux values)
    read(fd, buf, n) -> bytes read       write(fd, buf, n) -> bytes written
    close(fd)                            lseek(fd, offset, whence) -> new offset (SEEK_SET/CUR/END)
    stat(path, st) / fstat(fd, st)       st: u64 ino, mode, nlink, size, atime, mtime, ctime, blocks
    readdir(path, index, ent) -> 1/0     ent: u64 ino, u64 type, u64 size, char name[256]; index 0
                                         reads the directory, 1, 2... continue that listing
    mkdir(path, mode), rmdir(path), unlink(path), rename(old, new)
    fsync(fd), sync()                    write the cache back and flush the disk: the durability barrier

Data reaches the disk only at fsync, sync or exit (core.exit flushes every
module): a crash before that loses it, as on a real write-back cache.
Timestamps are guest time (virtual clock: deterministic) after a fixed epoch.
Several environments opening the same disk each cache it on their own: writers
are not coordinated (as two hosts mounting one ext2 image).
"""

from __future__ import annotations

import errno as E
import struct

from exo.abi import PAGE_SIZE, PERM_R, PERM_W
from libos.module import DEFAULT_FDS, LibModule, fd_limit, lowest_free_fd

SECTOR = 512
STAGE_PAGES = 16  # 64 KiB of staging pages: up to 128 sectors per disk_io hypercall
REQ = struct.Struct("<IIQQQ")  # the disk_io request layout (docs/disk.md)
EPOCH = 1_767_225_600  # 2026-01-01: guest seconds count from here
O_ACCMODE, O_WRONLY, O_RDWR = 3, 1, 2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0x40, 0x80, 0x200, 0x400
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000


class DiskIO:
    """The granted disk as a BlockIO for the ext2 library, through the disk hypercalls.

    The file system reads and writes one block at a time; this layer turns that
    into few hypercalls: writes wait here until ``flush`` (or until a batch is
    full) and then go out as one ``disk_io`` carrying up to BATCH_SECTORS
    sectors, and a read that misses fetches that many sectors ahead into a
    small read-ahead buffer.
    """

    sector_size = SECTOR

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        # The port of whoever mounted the disk: the environment itself, or (microkernel
        # structure) the file server. The staging pages and the disk are its own.
        self.port = port = fs.port
        info = fs.stage
        rc = port.hypercall("disk_info", info)
        if rc < 0:
            raise OSError(-rc, "no disk (boot with --disk IMAGE)")
        self.sectors, _size, self.readonly, _ranges = struct.unpack("<4Q", port.read(info, 32))
        self.requests = fs.stage + PAGE_SIZE  # request array on its own page
        self.batch = fs.BATCH_SECTORS
        self.pending: dict[int, bytes] = {}  # sector -> data, written at the next flush
        self.ahead: dict[int, bytes] = {}  # sector -> data read ahead (while writes are pending)
        self.chunk: tuple[int, bytes] = (0, b"")  # (first sector, data) read ahead, no write pending

    def _io(self, reqs: list[tuple[int, int, int, bytes | None]]) -> None:
        """One disk_io hypercall: (op, sector, count, data) requests, each at most one staging page."""
        port = self.port
        bufs = self.fs.stage + 2 * PAGE_SIZE
        packed = []
        for i, (op, sector, count, data) in enumerate(reqs):
            buf = bufs + i * PAGE_SIZE
            if data is not None:
                port.write(buf, data)
            packed.append(REQ.pack(op, 0, sector, count, buf))
        port.write(self.requests, b"".join(packed))
        rc = port.hypercall("disk_io", self.requests, len(reqs), 0)
        if rc < 0:
            raise OSError(-rc, f"disk_io failed at sector {reqs[0][1]}")

    def read(self, sector: int, count: int) -> bytes:
        if not self.pending:
            # Nothing waiting to be written: the disk is current. Serve from the last chunk read
            # ahead, else read a new chunk (at least a batch) straight into one buffer.
            start, chunk = self.chunk
            if start <= sector and sector + count <= start + len(chunk) // SECTOR:
                return chunk[(sector - start) * SECTOR:(sector - start + count) * SECTOR]
            n = min(max(count, self.batch), self.sectors - sector)
            data = self._read_direct(sector, n)
            if n > count:
                self.chunk = (sector, data)
            return data[:count * SECTOR]
        out = bytearray()
        for s in range(sector, sector + count):
            data = self.pending.get(s) or self.ahead.get(s)
            if data is None:
                self._read_ahead(s, sector + count - s)
                data = self.ahead[s]
            out += data
        return bytes(out)

    def _read_direct(self, sector: int, count: int) -> bytes:
        """A long read (a run of file blocks) with nothing waiting to be written: straight
        from the disk, a batch per disk_io hypercall, past the per-sector read-ahead."""
        per = PAGE_SIZE // SECTOR
        bufs = self.fs.stage + 2 * PAGE_SIZE
        out = bytearray()
        s, end = sector, sector + count
        while s < end:
            reqs = []
            while s < end and len(reqs) < self.batch // per:
                k = min(per, end - s)
                reqs.append((0, s, k, None))
                s += k
            self._io(reqs)
            for i, (_op, _s, k, _d) in enumerate(reqs):
                out += self.port.read(bufs + i * PAGE_SIZE, k * SECTOR)
        return bytes(out)

    def _read_ahead(self, sector: int, want: int) -> None:
        n = max(want, self.batch) if self.batch > PAGE_SIZE // SECTOR else want
        n = min(n, self.sectors - sector, self.batch)
        per = PAGE_SIZE // SECTOR
        reqs = [(0, s, min(per, sector + n - s), None) for s in range(sector, sector + n, per)]
        self._io(reqs)
        if len(self.ahead) > 4 * self.batch:
            self.ahead.clear()
        bufs = self.fs.stage + 2 * PAGE_SIZE
        for i, (_op, s, k, _d) in enumerate(reqs):
            data = self.port.read(bufs + i * PAGE_SIZE, k * SECTOR)
            for j in range(k):
                self.ahead[s + j] = data[j * SECTOR : (j + 1) * SECTOR]

    def write(self, sector: int, data: bytes) -> None:
        self.chunk = (0, b"")  # (it may hold the old contents)
        for j in range(len(data) // SECTOR):
            chunk = bytes(data[j * SECTOR : (j + 1) * SECTOR])
            self.pending[sector + j] = chunk
            if sector + j in self.ahead:
                self.ahead[sector + j] = chunk
        if len(self.pending) >= self.batch:
            self._write_pending()

    def _write_pending(self) -> None:
        per = PAGE_SIZE // SECTOR
        runs: list[tuple[int, int, int, bytes | None]] = []
        for s in sorted(self.pending):
            last = runs[-1] if runs else None
            if last and last[1] + last[2] == s and last[2] < per:
                runs[-1] = (1, last[1], last[2] + 1, last[3] + self.pending[s])
            else:
                runs.append((1, s, 1, self.pending[s]))
        self.pending.clear()
        group = self.batch // per
        for i in range(0, len(runs), group):
            self._io(runs[i : i + group])

    def flush(self) -> None:
        if self.pending:
            self._write_pending()
        self._io([(2, 0, 0, None)])


class _File:
    __slots__ = ("ino", "pos", "flags")

    def __init__(self, ino: int, flags: int) -> None:
        self.ino, self.pos, self.flags = ino, 0, flags


class FileSystem(LibModule):
    NAME = "fs"
    IMPL = "ext2"
    INDEX = 5
    ENTRIES = ("open", "read", "write", "close", "lseek", "stat", "fstat", "readdir", "mkdir", "rmdir",
               "unlink", "rename", "fsync", "sync")
    HYPERCALLS = frozenset({"disk_info", "disk_io", "page_alloc", "time_now", "log", "quota_info"})
    DOC = "POSIX-like files on an ext2 disk, file system and block cache in the library"
    BATCH_SECTORS = (STAGE_PAGES - 2) * PAGE_SIZE // SECTOR  # one disk_io hypercall moves up to 112 sectors

    def __init__(self, port) -> None:
        super().__init__(port)
        self._fs = None  # the mounted Ext2, on first use
        self._unmountable = None  # why the disk could not be mounted (found once, then answered at once)
        self.files: dict[int, _File] = {}
        self.fd_limit = DEFAULT_FDS  # the app's fds quota, read at mount
        # readdir's cursor: (path, generation, entries) of the directory being listed, so listing
        # N entries reads the directory once, not N times (issue 16); any change drops it.
        self._listing: tuple[str, int, list] | None = None
        self._generation = 0  # bumped by every call that may change the file system

    @property
    def stage(self) -> int:
        return self.data_base

    def _clock(self) -> int:
        return EPOCH + max(0, self.hc("time_now")) // 1_000_000_000

    def _mount(self):
        if self._fs is None:
            if self._unmountable is not None:
                raise self._unmountable
            from libos.fs.ext2 import Ext2

            for i in range(STAGE_PAGES):
                self.ensure_page(self.stage + i * PAGE_SIZE, PERM_R | PERM_W)
            from libos.fs.ext2 import Ext2Error

            dev = DiskIO(self)
            try:
                self._fs = Ext2.open(dev, clock=self._clock)
            except Ext2Error as e:
                self.log(f"cannot mount the disk: {e}")
                self._unmountable = e
                raise
            self._fs.dev = dev
            self.fd_limit = fd_limit(self.port, self.stage)
        return self._fs

    def _call(self, fn, *args, modifies: bool = False):
        """Run a file-system operation: its result, or a negative errno."""
        from libos.fs.ext2 import Ext2Error

        try:
            if modifies:
                self._generation += 1  # a listing in progress is read again (readdir)
                if self._mount().dev.readonly:
                    return -E.EROFS  # refused now, not lost at the next sync
            return fn(*args)
        except Ext2Error as e:
            if e.errno == E.EIO and self._fs is not None:  # a damaged disk: say what is wrong
                self.log(str(e))
            return -e.errno
        except OSError as e:
            return -(e.errno or E.EIO)
        except self.port.Fault as e:  # a bad pointer from the guest
            return -e.errno

    def _path(self, va: int) -> str:
        return self.port.read_cstr(va, 4096).decode("utf-8", "surrogateescape")

    # --------------------------------------------------------------- files
    def open(self, path: int, flags: int, mode: int) -> int:
        name = self._path(path)

        def do() -> int:
            fs = self._mount()
            try:
                ino = fs.lookup(name, follow=True)  # open follows a final symlink, as POSIX does
                if flags & O_CREAT and flags & O_EXCL:
                    return -E.EEXIST
            except Exception as e:  # noqa: BLE001 - only "not found" may be created
                if getattr(e, "errno", None) != E.ENOENT or not flags & O_CREAT:
                    raise
                ino = fs.create(name, (mode or 0o644) & 0o7777)
            st = fs.stat(ino)
            if (st.mode & S_IFMT) == S_IFDIR and flags & O_ACCMODE:
                return -E.EISDIR
            if flags & O_TRUNC and flags & O_ACCMODE:
                fs.truncate(ino, 0)
            fd = lowest_free_fd(self.files, 3, self.fd_limit - 3)  # 0-2 are the console's
            if fd < 0:
                return -E.EMFILE
            self.files[fd] = _File(ino, flags)
            return fd

        return self._call(do, modifies=bool(flags & (O_ACCMODE | O_CREAT | O_TRUNC)))

    def _file(self, fd: int) -> _File | None:
        return self.files.get(fd)

    def read(self, fd: int, buf: int, n: int) -> int:
        f = self._file(fd)
        if f is None or (f.flags & O_ACCMODE) == O_WRONLY:
            return -E.EBADF

        def do() -> int:
            data = self._mount().read(f.ino, f.pos, min(n, 1 << 20))
            self.port.write(buf, data)
            f.pos += len(data)
            return len(data)

        return self._call(do)

    def write(self, fd: int, buf: int, n: int) -> int:
        f = self._file(fd)
        if f is None or (f.flags & O_ACCMODE) == 0:
            return -E.EBADF

        def do() -> int:
            fs = self._mount()
            if f.flags & O_APPEND:
                f.pos = fs.stat(f.ino).size
            wrote = fs.write(f.ino, f.pos, self.port.read(buf, min(n, 1 << 20)))
            f.pos += wrote
            return wrote

        return self._call(do, modifies=True)

    def close(self, fd: int) -> int:
        return 0 if self.files.pop(fd, None) is not None else -E.EBADF

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        f = self._file(fd)
        if f is None:
            return -E.EBADF
        offset -= (offset >> 63) << 64  # signed
        base = {0: 0, 1: f.pos}.get(whence)
        if whence == 2:
            base = self._call(lambda: self._mount().stat(f.ino).size)
        if base is None or base < 0 or base + offset < 0:
            return -E.EINVAL
        f.pos = base + offset
        return f.pos

    def _put_stat(self, st, va: int) -> None:
        self.port.write(va, struct.pack("<8Q", st.ino, st.mode, st.nlink, st.size, st.atime, st.mtime,
                                        st.ctime, st.blocks))

    def stat(self, path: int, st: int) -> int:
        name = self._path(path)
        return self._call(lambda: self._put_stat(self._mount().stat(name, follow=True), st) or 0)

    def fstat(self, fd: int, st: int) -> int:
        f = self._file(fd)
        if f is None:
            return -E.EBADF
        return self._call(lambda: self._put_stat(self._mount().stat(f.ino), st) or 0)

    def readdir(self, path: int, index: int, ent: int) -> int:
        name = self._path(path)

        def do() -> int:
            fs = self._mount()
            cached = self._listing
            if cached is not None and cached[0] == name and cached[1] == self._generation and index:
                entries = cached[2]  # the next entry of the listing in progress: no re-read
            else:
                entries = [e for e in fs.readdir(name) if e[0] not in (".", "..")]
                self._listing = (name, self._generation, entries)
            if index >= len(entries):
                self._listing = None
                return 0
            ename, ino, ftype = entries[index]
            size = fs.stat(ino).size
            raw = ename.encode("utf-8", "surrogateescape")[:255]
            self.port.write(ent, struct.pack("<3Q", ino, ftype, size) + raw + b"\0")
            return 1

        return self._call(do)

    def mkdir(self, path: int, mode: int) -> int:
        name = self._path(path)
        return self._call(lambda: self._mount().mkdir(name, (mode or 0o755) & 0o7777) and 0, modifies=True)

    def rmdir(self, path: int) -> int:
        name = self._path(path)
        return self._call(lambda: self._mount().rmdir(name) or 0, modifies=True)

    def unlink(self, path: int) -> int:
        name = self._path(path)
        return self._call(lambda: self._mount().unlink(name) or 0, modifies=True)

    def rename(self, old: int, new: int) -> int:
        a, b = self._path(old), self._path(new)
        return self._call(lambda: self._mount().rename(a, b) or 0, modifies=True)

    def fsync(self, fd: int) -> int:
        if fd not in self.files:
            return -E.EBADF
        return self.sync()

    def sync(self) -> int:
        if self._fs is None:
            return 0
        return self._call(lambda: self._fs.sync() or 0)

    def at_exit(self) -> None:
        """Unmount: sync, and a journaled file system is marked clean (Ext2.close)."""
        if self._fs is not None:
            self._call(lambda: self._fs.close() or 0)

    def fork(self, port):
        self.sync()  # the child mounts afresh: the disk must hold what the parent wrote
        clone = super().fork(port)
        clone._fs = None
        clone._unmountable = None
        clone.files = {}
        return clone


class UnbatchedFileSystem(FileSystem):
    """The same, with one 4 KiB cluster per disk_io hypercall: to measure what batching saves."""

    IMPL = "ext2-unbatched"
    DOC = "as ext2, but one 4 KiB request per disk_io hypercall (for measurements)"
    BATCH_SECTORS = PAGE_SIZE // SECTOR
