"""/proc: what `ps`, `free`, `df`, `uptime` and `mount` read, made from the libOS's own state.

Linux's procfs is the kernel describing itself; here the tenant's PosixSystem is the kernel, so
/proc describes the app's processes (fs/proc/array.c's formats): /proc/PID/{stat, status,
cmdline, comm, exe, cwd}, /proc/self (the caller), and /proc/{meminfo, mounts, uptime, loadavg,
version, cpuinfo, stat}. Each file's text is made when it is opened (a snapshot, as a read of
Linux's seq_file is); sizes show as 0, as on Linux. Figures the libOS does not keep (CPU time per
process, page counts) are 0; memory totals are the fixed figures sysinfo gives.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix.files import O_ACCMODE, O_RDONLY, OpenFile
from libos.posix.table import EACCES, ENOENT, syscall

if TYPE_CHECKING:
    from libos.posix import Posix
    from libos.posix.system import Process

S_IFDIR, S_IFREG, S_IFLNK = 0o040000, 0o100000, 0o120000
MEM_KB = 256 << 10  # the machine's RAM as sysinfo reports it (libos/posix/clock.py)
PROC_DEV = 4  # st_dev of /proc: not the disk's


class ProcText(OpenFile):
    """A /proc file: its text, made at open."""

    mode = S_IFREG | 0o444

    def __init__(self, flags: int, data: bytes, ino: int) -> None:
        super().__init__(flags)
        self.data, self.ino = data, ino

    def read(self, p: Posix, buf: int, n: int) -> int:
        chunk = self.data[self.offset:self.offset + n]
        if chunk:
            p.port.write(buf, chunk)
        self.offset += len(chunk)
        return len(chunk)

    def pread(self, p: Posix, buf: int, n: int, off: int) -> int:
        chunk = self.data[off:off + n]
        if chunk:
            p.port.write(buf, chunk)
        return len(chunk)

    def read_at(self, p: Posix, offset: int, n: int) -> bytes:
        return self.data[offset:offset + n]

    def write(self, p: Posix, buf: int, n: int) -> int:
        return -EACCES

    def lseek(self, p: Posix, offset: int, whence: int) -> int:
        new = offset if whence == 0 else self.offset + offset if whence == 1 else len(self.data) + offset
        if new < 0:
            return -22  # EINVAL
        self.offset = new
        return new

    def stat(self, p: Posix) -> bytes:
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(dev=PROC_DEV, ino=self.ino, mode=self.mode, blksize=1024)


class ProcLink(ProcText):
    """/proc/PID/exe, cwd, /proc/self: a symbolic link (readlink answers with its target)."""

    mode = S_IFLNK | 0o777


def _procs(p: Posix) -> list[Process]:
    return sorted((q for q in p.system.procs.values() if q.exit_status is None), key=lambda q: q.pid)


def _stat_line(q: Process) -> bytes:
    # fs/proc/array.c do_task_stat: 52 fields; CPU times and memory counts are not kept: 0.
    threads = len(q.threads.threads) if q.threads is not None else 1
    fields = [q.pid, f"({q.comm.decode('utf-8', 'replace')})", "R", q.ppid, q.pgid, q.sid, 0, -1, 0x400000,
              0, 0, 0, 0, 0, 0, 0, 0, 20, 0, threads, 0, 0, 0, 0] + [0] * 28
    return (" ".join(str(f) for f in fields) + "\n").encode()


def _status(q: Process) -> bytes:
    threads = len(q.threads.threads) if q.threads is not None else 1
    return (f"Name:\t{q.comm.decode('utf-8', 'replace')}\nUmask:\t{q.umask:04o}\nState:\tR (running)\n"
            f"Tgid:\t{q.pid}\nPid:\t{q.pid}\nPPid:\t{q.ppid}\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"
            f"Threads:\t{threads}\n").encode()


def _meminfo(p: Posix) -> bytes:
    return (f"MemTotal:       {MEM_KB:8d} kB\nMemFree:        {MEM_KB // 2:8d} kB\n"
            f"MemAvailable:   {MEM_KB // 2:8d} kB\nBuffers:               0 kB\nCached:                0 kB\n"
            "SwapTotal:             0 kB\nSwapFree:              0 kB\n").encode()


def _mounts(p: Posix) -> bytes:
    ro = p.system.vfs.fs is not None and p.system.vfs.fs.dev.readonly
    return f"/dev/root / ext2 {'ro' if ro else 'rw'} 0 0\nproc /proc proc rw 0 0\n".encode()


def _uptime(p: Posix) -> bytes:
    secs = p.hc("time_now") / 1e9
    return f"{secs:.2f} {secs:.2f}\n".encode()


def _loadavg(p: Posix) -> bytes:
    procs = _procs(p)
    return f"0.00 0.00 0.00 1/{len(procs)} {procs[-1].pid if procs else 0}\n".encode()


def _proc_stat(p: Posix) -> bytes:
    return f"cpu  0 0 0 0 0 0 0 0 0 0\nprocesses {len(_procs(p))}\nprocs_running 1\nprocs_blocked 0\n".encode()


# /proc's own files: name -> the text, made when the file is opened (only that one).
SYSTEM_TEXT = {
    "cpuinfo": lambda p: (b"processor\t: 0\nvendor_id\t: exo\nmodel name\t: exo x86-64 (Unicorn)\ncpu MHz\t\t: 0.000\n"
                          b"flags\t\t: fpu tsc cx8 cmov mmx fxsr sse sse2 syscall lm\n\n"),
    "loadavg": _loadavg,
    "meminfo": _meminfo,
    "mounts": _mounts,
    "stat": _proc_stat,
    "uptime": _uptime,
    "version": lambda p: b"Linux version 6.1.0-exo (exo) #1 exo\n",
}
# /proc/PID's text files: name -> the text for process q.
PID_TEXT = {
    "cmdline": lambda q: b"".join(a + b"\0" for a in q.argv) if q.argv else q.comm + b"\0",
    "comm": lambda q: q.comm + b"\n",
    "stat": _stat_line,
    "status": _status,
}


SYSTEM_FILES = tuple(SYSTEM_TEXT)
PID_FILES = ("cmdline", "comm", "cwd", "exe", "stat", "status")


def canonical(p: Posix, full: str) -> str:
    """/proc/self/... as /proc/PID/... of the caller."""
    if full == "/proc/self" or full.startswith("/proc/self/"):
        return f"/proc/{p.proc.pid}" + full[len("/proc/self"):]
    return full


def open_proc(p: Posix, full: str, flags: int, follow: bool = True) -> OpenFile | int:
    """``full`` (under /proc) opened: a ProcText, a ProcLink, a DirFile, or a negative errno."""
    from libos.posix.vfs import DirFile

    if flags & O_ACCMODE != O_RDONLY:
        return -EACCES
    if full == "/proc/self" and not follow:
        return ProcLink(flags, str(p.proc.pid).encode(), 3)
    full = canonical(p, full)
    parts = full.split("/")[2:]  # after "", "proc"
    if not parts:
        entries = [(".", 1, 2), ("..", 2, 2), ("self", 3, 7)]
        entries += [(name, 10 + i, 1) for i, name in enumerate(SYSTEM_FILES)]
        entries += [(str(q.pid), 1000 + q.pid, 2) for q in _procs(p)]
        return DirFile(flags, "/proc", None, entries)
    if len(parts) == 1 and parts[0] in SYSTEM_TEXT:
        return ProcText(flags, SYSTEM_TEXT[parts[0]](p), 10 + SYSTEM_FILES.index(parts[0]))
    if not parts[0].isdigit():
        return -ENOENT
    q = p.system.procs.get(int(parts[0]))
    if q is None or q.exit_status is not None:
        return -ENOENT
    base = 100_000 + q.pid * 16
    if len(parts) == 1:
        entries = [(".", base, 2), ("..", 1, 2)] + [(n, base + 1 + i, 7 if n in ("cwd", "exe") else 1)
                                                    for i, n in enumerate(PID_FILES)]
        return DirFile(flags, f"/proc/{q.pid}", None, entries)
    if len(parts) != 2 or parts[1] not in PID_FILES:
        return -ENOENT
    name = parts[1]
    ino = base + 1 + PID_FILES.index(name)
    if name == "cwd" and follow:
        return p.system.vfs.open(p, q.cwd, flags)  # the directory itself
    if name in ("exe", "cwd"):
        return ProcLink(flags, (q.exe if name == "exe" else q.cwd).encode("utf-8", "surrogateescape"), ino)
    return ProcText(flags, PID_TEXT[name](q), ino)


def readlink(p: Posix, full: str) -> str | int:
    """The target of a /proc link (self, PID/exe, PID/cwd), or a negative errno."""
    if full == "/proc/self":
        return str(p.proc.pid)
    f = open_proc(p, full, 0, follow=False)
    if isinstance(f, int):
        return f
    if not isinstance(f, ProcLink):
        return -22  # EINVAL: not a link
    return f.data.decode("utf-8", "surrogateescape")


def is_proc(full: str) -> bool:
    return full == "/proc" or full.startswith("/proc/")


# ------------------------------------------------------------ the calls /proc needs beside it
# struct statfs (x86-64): type, bsize, blocks, bfree, bavail, files, ffree, fsid[2], namelen, frsize, flags, spare[4]
_STATFS = struct.Struct("<qqqqqqqiiqqq4q")
EXT2_SUPER_MAGIC, PROC_SUPER_MAGIC = 0xEF53, 0x9FA0
ST_RDONLY = 1


def statfs_bytes(p: Posix, full: str) -> bytes | int:
    if is_proc(full):
        return _STATFS.pack(PROC_SUPER_MAGIC, 4096, 0, 0, 0, 0, 0, 0, 0, 255, 4096, 0, 0, 0, 0, 0)
    fs = p.system.vfs.ext2(p)
    if fs is None:
        return -ENOENT
    sb = fs.sb
    flags = ST_RDONLY if fs.dev.readonly else 0
    return _STATFS.pack(EXT2_SUPER_MAGIC, fs.block_size, sb.s_blocks_count, sb.s_free_blocks_count,
                       max(0, sb.s_free_blocks_count - sb.s_r_blocks_count), sb.s_inodes_count,
                       sb.s_free_inodes_count, 0, 0, 255, fs.block_size, flags, 0, 0, 0, 0)


@syscall("statfs")
def sys_statfs(p: Posix, path: int, buf: int, *_: int) -> int:
    from libos.posix.vfs import Vfs

    full = Vfs.absolute(p, p.cstr(path).decode("utf-8", "surrogateescape"))
    if isinstance(full, int):
        return full
    data = statfs_bytes(p, full)
    if isinstance(data, int):
        return data
    p.port.write(buf, data)
    return 0


@syscall("fstatfs")
def sys_fstatfs(p: Posix, fd: int, buf: int, *_: int) -> int:
    f = p.proc.fds.get(fd)
    if f is None:
        return -9  # EBADF
    path = getattr(f, "path", "/")
    data = statfs_bytes(p, path if isinstance(path, str) else "/")
    if isinstance(data, int):
        return data
    p.port.write(buf, data)
    return 0
