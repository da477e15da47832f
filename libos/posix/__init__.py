"""posix: a Linux personality for unmodified static x86-64 Linux programs (issue 15, docs/posix.md).

The program's `syscall` instructions are not hypercalls: the posix module registers its
``syscall`` entry with ``env_set_syscall`` in `start`, and the exokernel reflects every
`syscall` whose RIP is outside the exo region to it, in the same protection domain
(Aegis/Xok trap redirection). `syscall` dispatches on the Linux number through a table and
returns what RAX gets (a negative errno on failure), as Linux's entry code does.

This is the first slice: one process, console output, brk, anonymous mmap, TLS through
``env_set_fsbase`` and the identity and start-up calls glibc and musl make. Anything else is
-ENOSYS, named once on exo's stderr.
"""

from __future__ import annotations

import hashlib
import struct

from exo.abi import (
    FSBASE_FS,
    FSBASE_GS,
    LIBCALL_SLOT,
    LIBOS_PAGE,
    LINUX_INFO,
    LINUX_INFO_FIELDS,
    LINUX_INFO_MAGIC,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    SYSCALL_REFLECT,
    SchedOp,
)
from libos.module import LibModule
from libos.posix.table import EBADF, EINVAL, ENOMEM, ENOSYS, ENOTTY, SYSCALL_NAMES

_PAGE_MASK = ~(PAGE_SIZE - 1)
# arch_prctl codes (arch/x86/include/uapi/asm/prctl.h)
_ARCH_SET_GS, _ARCH_SET_FS, _ARCH_GET_FS, _ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
_ARCH_FS = {_ARCH_SET_FS: FSBASE_FS, _ARCH_SET_GS: FSBASE_GS}
# ioctl requests on the console (include/uapi/asm-generic/ioctls.h)
_TCGETS, _TIOCGWINSZ = 0x5401, 0x5413
_PR_SET_NAME, _PR_GET_NAME = 15, 16
_BRK_MAX = 1 << 30  # brk may grow 1 GiB past the image (design section 2)
MMAP_TOP = 0x0000_6FFF_0000_0000  # anonymous mmap grows down from here, below the libOS data
MMAP_BOTTOM = 0x0000_6000_1000_0000
_RLIMIT_STACK = 3
_RLIM_INFINITY = (1 << 64) - 1
# uname: fixed, so a run never depends on the host (deterministic); struct utsname has 6 x 65 bytes
_UTSNAME = (b"Linux", b"exo", b"6.1.0-exo", b"#1 exo", b"x86_64", b"(none)")
_LINUX_INFO = struct.Struct(f"<{len(LINUX_INFO_FIELDS)}Q")


class Posix(LibModule):
    NAME = "posix"
    IMPL = "linux"
    INDEX = 8  # trampoline page 8 (7 is the example module's): design section 0
    ENTRIES = ("syscall",)
    LOCAL = frozenset({"syscall"})
    HYPERCALLS = frozenset({"env_set_syscall", "env_set_fsbase", "console_write", "console_read", "page_alloc",
                            "page_unmap", "sched_op", "time_now", "env_id", "log"})
    DOC = "syscall(nr, a0..a5): a Linux system call reflected by the exokernel (docs/posix.md)"
    SYSCALL_NAMES = SYSCALL_NAMES  # read by the kernel for --stats-json and traces

    def __init__(self, port) -> None:
        super().__init__(port)
        self.info: dict[str, int] = {}
        self.execfn = b""
        self.brk_start = self.brk = 0
        self.mmap_next = MMAP_TOP
        self.fs_base = self.gs_base = 0
        self.rng_counter = 0
        self.comm = b""
        self.warned: set[int] = set()
        self.pid = 0  # the env id, asked once (a getpid loop makes no hypercall)
        self.table = {nr: getattr(self, f"sys_{name}") for nr, name in SYSCALL_NAMES.items()
                      if hasattr(self, f"sys_{name}")}

    def fork(self, port):
        clone = super().fork(port)
        clone.table = {nr: getattr(clone, f.__name__) for nr, f in self.table.items()}
        clone.warned = set(self.warned)
        clone.pid = 0  # the child's own id, asked on first use
        return clone

    def start(self) -> None:
        info = dict(zip(LINUX_INFO_FIELDS, _LINUX_INFO.unpack(self.port.read(LINUX_INFO, _LINUX_INFO.size))))
        if info["magic"] != LINUX_INFO_MAGIC:
            return  # not started by the Linux loader: `syscall`s stay hypercalls
        self.info = info
        self.execfn = self._cstr(info["execfn"])
        self.comm = self.execfn.rsplit(b"/", 1)[-1][:15]
        self.brk_start = self.brk = info["brk_start"]
        slot = LIBOS_PAGE + self.INDEX * PAGE_SIZE + self.ENTRIES.index("syscall") * LIBCALL_SLOT
        self.hc("env_set_syscall", 0, SYSCALL_REFLECT, slot)

    # ------------------------------------------------------------ dispatch
    def syscall(self, nr: int, a0: int, a1: int, a2: int, a3: int, a4: int, a5: int) -> int:
        """One Linux system call: RAX's value (negative errno). The exokernel calls it (Exokernel.reflect)."""
        fn = self.table.get(nr)
        if fn is None:
            if nr not in self.warned:  # once per number: a program probing a call is not flooded
                self.warned.add(nr)
                self.log(f"{SYSCALL_NAMES.get(nr, f'syscall #{nr}')} is not implemented (-ENOSYS)")
            return -ENOSYS
        return fn(a0, a1, a2, a3, a4, a5)

    # ------------------------------------------------------------ helpers
    def _cstr(self, va: int, limit: int = 4096) -> bytes:
        out = b""
        while len(out) < limit:
            chunk = self.port.read(va + len(out), min(64, PAGE_SIZE - ((va + len(out)) % PAGE_SIZE)))
            i = chunk.find(b"\0")
            if i >= 0:
                return out + chunk[:i]
            out += chunk
        return out

    def _map_zero(self, lo: int, hi: int) -> int:
        """Map fresh zeroed pages over [lo, hi) where nothing is mapped; 0 or a negative errno."""
        for va in range(lo & _PAGE_MASK, hi, PAGE_SIZE):
            try:
                self.port.read(va, 1)
                continue  # already mapped (the image's last page, an earlier brk)
            except self.port.Fault:
                pass
            rc = self.hc("page_alloc", 0, va, PERM_R | PERM_W)
            if rc < 0:
                return rc
        return 0

    def _out(self, fd: int, buf: int, n: int) -> int:
        if fd not in (1, 2):  # stderr shares the console until console_error exists (docs/posix.md)
            return -EBADF
        return self.hc("console_write", buf, n) if n else 0

    # ------------------------------------------------------------ files (the console only, for now)
    def sys_write(self, fd: int, buf: int, n: int, *_: int) -> int:
        return self._out(fd, buf, n)

    def sys_writev(self, fd: int, iov: int, cnt: int, *_: int) -> int:
        if not 0 <= cnt <= 1024:  # UIO_MAXIOV
            return -EINVAL
        total = 0
        for base, ln in struct.iter_unpack("<QQ", self.port.read(iov, 16 * cnt) if cnt else b""):
            rc = self._out(fd, base, ln)
            if rc < 0:
                return rc if total == 0 else total
            total += rc
        return total

    def sys_read(self, fd: int, buf: int, n: int, *_: int) -> int:
        if fd != 0:
            return -EBADF
        return self.hc("console_read", buf, n) if n else 0

    def sys_ioctl(self, fd: int, req: int, arg: int, *_: int) -> int:
        # The console is not a terminal yet (no termios, no window size): what Linux answers
        # for a pipe, so programs print as they do into one.
        return -ENOTTY if fd in (0, 1, 2) else -EBADF

    # ------------------------------------------------------------ process
    def sys_exit_group(self, status: int, *_: int) -> int:
        for module in self.siblings.values():
            if module is not self:
                module.at_exit()
        return self.hc("sched_op", SchedOp.EXIT, status & 0xFF)

    sys_exit = sys_exit_group  # one thread per process so far: exit ends the process

    def sys_getpid(self, *_: int) -> int:
        if not self.pid:
            self.pid = self.hc("env_id")
        return self.pid

    sys_gettid = sys_getpid

    def sys_getppid(self, *_: int) -> int:
        return 0  # started by exo, as init's parent

    def sys_getuid(self, *_: int) -> int:
        return 0

    sys_geteuid = sys_getgid = sys_getegid = sys_getuid

    def sys_set_tid_address(self, tidptr: int, *_: int) -> int:
        return self.sys_getpid()

    def sys_set_robust_list(self, head: int, ln: int, *_: int) -> int:
        return 0 if ln == 24 else -EINVAL  # sizeof(struct robust_list_head)

    def sys_rseq(self, *_: int) -> int:
        return -ENOSYS  # glibc and musl carry on without it

    def sys_arch_prctl(self, code: int, addr: int, *_: int) -> int:
        which = _ARCH_FS.get(code)
        if which is not None:
            rc = self.hc("env_set_fsbase", 0, which, addr)
            if rc == 0:
                if which == FSBASE_FS:
                    self.fs_base = addr
                else:
                    self.gs_base = addr
            return rc
        if code in (_ARCH_GET_FS, _ARCH_GET_GS):
            self.port.write(addr, struct.pack("<Q", self.fs_base if code == _ARCH_GET_FS else self.gs_base))
            return 0
        return -EINVAL

    def sys_prctl(self, option: int, arg2: int, *_: int) -> int:
        if option == _PR_GET_NAME:
            self.port.write(arg2, self.comm.ljust(16, b"\0"))
            return 0
        if option == _PR_SET_NAME:
            self.comm = self._cstr(arg2, 16)[:15]
            return 0
        return -EINVAL

    def sys_prlimit64(self, pid: int, resource: int, new: int, old: int, *_: int) -> int:
        if old:
            limit = (8 << 20, _RLIM_INFINITY) if resource == _RLIMIT_STACK else (_RLIM_INFINITY, _RLIM_INFINITY)
            self.port.write(old, struct.pack("<QQ", *limit))
        return 0

    def sys_uname(self, buf: int, *_: int) -> int:
        self.port.write(buf, b"".join(f.ljust(65, b"\0") for f in _UTSNAME))
        return 0

    def sys_readlink(self, path: int, buf: int, size: int, *_: int) -> int:
        if self._cstr(path) != b"/proc/self/exe":
            return -ENOSYS  # no file system yet (docs/posix.md)
        data = self.execfn[:size]
        self.port.write(buf, data)
        return len(data)

    # ------------------------------------------------------------ memory
    def sys_brk(self, addr: int, *_: int) -> int:
        if addr == 0 or addr < self.brk_start or addr > self.brk_start + _BRK_MAX:
            return self.brk  # Linux answers a bad brk with the current break
        if addr > self.brk and self._map_zero(self.brk, addr) < 0:
            return self.brk
        self.brk = addr  # shrinking keeps the pages (allowed: the break is all Linux promises)
        return addr

    def sys_mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
        MAP_ANONYMOUS, MAP_FIXED = 0x20, 0x10
        if not flags & MAP_ANONYMOUS:
            return -ENOSYS  # file mappings need the file system (docs/posix.md)
        if length == 0:
            return -EINVAL
        size = (length + PAGE_SIZE - 1) & _PAGE_MASK
        if flags & MAP_FIXED:
            if addr & (PAGE_SIZE - 1):
                return -EINVAL
            va = addr
        else:
            va = self.mmap_next - size
            if va < MMAP_BOTTOM:
                return -ENOMEM
            self.mmap_next = va
        # Eager and writable (W^X: never executable); mprotect is accepted without narrowing yet.
        rc = self._map_zero(va, va + size)
        return -ENOMEM if rc < 0 else va

    def sys_munmap(self, addr: int, length: int, *_: int) -> int:
        if addr & (PAGE_SIZE - 1) or length == 0:
            return -EINVAL
        for va in range(addr, addr + length, PAGE_SIZE):
            self.hc("page_unmap", 0, va)  # an unmapped page is fine, as on Linux
        return 0

    def sys_mprotect(self, *_: int) -> int:
        return 0  # accepted, not applied (RELRO stays writable): docs/posix.md

    # ------------------------------------------------------------ time and randomness
    def sys_clock_gettime(self, clock: int, tp: int, *_: int) -> int:
        ns = self.hc("time_now")  # guest time: the virtual clock under --clock virtual
        self.port.write(tp, struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
        return 0

    def sys_getrandom(self, buf: int, n: int, flags: int, *_: int) -> int:
        """Bytes from SHA-256(seed, pid-free counter): the same every run with the same --seed."""
        n = min(n, 1 << 20)
        out = bytearray()
        while len(out) < n:
            self.rng_counter += 1
            out += hashlib.sha256(b"exo-getrandom|%d|%d" % (self.info.get("seed", 0), self.rng_counter)).digest()
        self.port.write(buf, bytes(out[:n]))
        return n

