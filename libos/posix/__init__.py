"""posix: a Linux personality for unmodified static x86-64 Linux programs (issue 15, docs/posix.md).

The program's `syscall` instructions are not hypercalls: the posix module registers its
``syscall`` entry with ``env_set_syscall`` in `start`, and the exokernel reflects every
`syscall` whose RIP is outside the exo region to it, in the same protection domain
(Aegis/Xok trap redirection). `syscall` dispatches on the Linux number through the handler table
the concept modules fill (``table.syscall``) and returns what RAX gets (a negative errno on
failure), as Linux's entry code does.

The package, one concept per module: table (numbers, errno, the registry), system (the tenant's
shared state, Process, WouldBlock), files (descriptors and the file calls), process (identity,
exit, fork/exec/wait), mm (brk, mmap), clock (time, randomness). Anything unregistered is
-ENOSYS, named once on exo's stderr.
"""

from __future__ import annotations

import struct

from exo.abi import (
    EV_CONSOLE,
    EV_NOTIFY,
    LIBCALL_SLOT,
    LIBOS_PAGE,
    LINUX_INFO,
    LINUX_INFO_FIELDS,
    LINUX_INFO_MAGIC,
    LINUX_STRACE,
    PAGE_SIZE,
    SYSCALL_REFLECT,
)
from libos.module import LibModule, fd_limit
from libos.posix import (  # noqa: F401 - each registers its handlers
    clock,
    descriptors,
    exec,
    files,
    fscalls,
    mm,
    pipes,
    poll,
    process,
    procfs,
    signals,
    sockets,
    strace,
    threads,
    tty,
)
from libos.posix.system import PosixSystem, Process, WouldBlock
from libos.posix.table import EINTR, ENOSYS, HANDLERS, SYSCALL_NAMES
from libos.posix.vfs import Vfs

_LINUX_INFO = struct.Struct(f"<{len(LINUX_INFO_FIELDS)}Q")


class Posix(LibModule):
    NAME = "posix"
    IMPL = "linux"
    INDEX = 8  # trampoline page 8 (7 is the example module's): design section 0
    ENTRIES = ("syscall",)
    LOCAL = frozenset({"syscall"})
    HYPERCALLS = frozenset({"env_set_syscall", "env_set_fsbase", "console_write", "console_read", "page_alloc",
                            "page_unmap", "sched_op", "time_now", "env_id", "log", "event_wait", "env_notify", "env_reap",
                            "console_error", "console_info", "env_create", "env_set_status", "env_set_entry",
                            "env_set_upcall", "env_destroy", "mmu_update", "disk_info", "disk_io",
                            "quota_info"})
    DOC = "syscall(nr, a0..a5): a Linux system call reflected by the exokernel (docs/posix.md)"
    SYSCALL_NAMES = SYSCALL_NAMES  # read by the kernel for --stats-json and traces

    def __init__(self, port) -> None:
        super().__init__(port)
        self.info: dict[str, int] = {}
        self.system: PosixSystem | None = None  # shared by the tenant's processes
        self.proc: Process | None = None  # this environment's process
        self._child: Posix | None = None  # the clone made for the last env_create (fork_process)
        self.strace = False  # exo run --strace (linux_info.flags)
        self.caller_tid = 0  # --strace: the thread whose call is being served

    def fork(self, port) -> Posix:
        clone = super().fork(port)  # the same PosixSystem: one process table per tenant
        clone.proc = None  # the fork call gives the child its Process (process.py)
        self._child = clone
        return clone

    def start(self) -> None:
        info = dict(zip(LINUX_INFO_FIELDS, _LINUX_INFO.unpack(self.port.read(LINUX_INFO, _LINUX_INFO.size))))
        if info["magic"] != LINUX_INFO_MAGIC:
            return  # not started by the Linux loader: `syscall`s stay hypercalls
        self.info = info
        self.system = PosixSystem(seed=info["seed"])
        self.system.vfs = Vfs()
        self.strace = bool(info["flags"] & LINUX_STRACE)
        pid = self.hc("env_id")
        exe = self.cstr(info["execfn"])
        cwd = self.cstr(info["cwd"]).decode("utf-8", "surrogateescape") if info["cwd"] else "/"
        fds = tty.open_terminal(self, pid) or files.console_fds()  # a terminal when exo's console is one
        fds.limit = self.system.fd_limit = fd_limit(self.port, self.data_base + tty.IO_PAGE * PAGE_SIZE)
        self.proc = Process(pid=pid, ppid=0, pgid=pid, sid=pid, fds=fds, cwd=cwd,
                            comm=exe.rsplit(b"/", 1)[-1][:15], exe=exe.decode("utf-8", "surrogateescape"),
                            brk_start=info["brk_start"], brk=info["brk_start"], mmap_next=mm.MMAP_TOP)
        self.system.procs[pid] = self.proc
        self.proc.argv = self._initial_argv(info["rsp"])  # /proc/PID/cmdline
        slot = LIBOS_PAGE + self.INDEX * PAGE_SIZE + self.ENTRIES.index("syscall") * LIBCALL_SLOT
        self.hc("env_set_syscall", 0, SYSCALL_REFLECT, slot)

    # ------------------------------------------------------------ dispatch
    def syscall(self, nr: int, a0: int, a1: int, a2: int, a3: int, a4: int, a5: int) -> int:
        """One Linux system call: RAX's value (negative errno). The exokernel calls it (Exokernel.reflect)."""
        fn = HANDLERS.get(nr)
        if fn is None:
            warned = self.system.warned
            if nr not in warned:  # once per number and tenant: a program probing a call is not flooded
                warned.add(nr)
                self.log(f"{SYSCALL_NAMES.get(nr, f'syscall #{nr}')} is not implemented (-ENOSYS)")
            return -ENOSYS
        args = (a0, a1, a2, a3, a4, a5)
        proc = self.proc
        if self.strace:
            self.caller_tid = threads.tid_of(proc) if proc is not None else 0  # a switch changes it
            if nr in strace.BEFORE:
                self.log_raw(strace.line(self, nr, args, None))  # exit never returns; execve replaces the memory
        if proc is not None and proc.waiting:  # the environment's wait is over: parked threads retry
            proc.waiting = False
            threads.woken(self)
        rc = -EINTR  # woken three times with nothing to do: the caller retries, as after a signal
        for _ in range(3):
            try:
                rc = fn(self, a0, a1, a2, a3, a4, a5)
            except WouldBlock as w:
                terminal = self.system.tty
                if terminal is not None and not terminal.hangup:
                    terminal.pump(self)  # typed input first: a Ctrl-C becomes a signal for the foreground
                    w.mask |= EV_CONSOLE  # and any wait ends when more is typed
                if signals.interrupting(self):  # a signal is due: the wait ends with EINTR (or restarts)
                    self.proc.pending_deadline = None
                    rc = -EINTR
                    if self.strace:
                        strace.trace(self, nr, args, rc)
                    return signals.deliver_pending(self, rc, restart_nr=nr)
                if threads.park(self, nr, w.mask, w.deadline):
                    return rc  # another thread of the process runs; this one retries the call later
                # Blocks (raises Blocked: the `syscall` runs again from the start when woken) unless
                # an event is already pending; then the call is tried again at once. With threads,
                # the wait also ends for what the parked ones wait for (libos/posix/threads.py).
                mask, deadline = sockets.service(self, *threads.wait_for(self, w.mask, w.deadline))
                self.proc.waiting = True
                self.hc("event_wait", mask | EV_NOTIFY, deadline)
                self.proc.waiting = False
                threads.woken(self)
                continue
            break
        if self.strace and nr not in strace.BEFORE:
            strace.trace(self, nr, args, rc)
        if self.port.resumed or self.proc is None or self.proc.exit_status is not None:
            return rc  # the call loaded another context itself (execve, rt_sigreturn) or ended the process
        return signals.deliver_pending(self, rc)

    def _initial_argv(self, rsp: int) -> list[bytes]:
        """argv from the System V stack the loader wrote (argc, then the argv pointers)."""
        try:
            argc = self.port.read_u64(rsp)
            return [self.cstr(self.port.read_u64(rsp + 8 * (i + 1))) for i in range(min(argc, 4096))]
        except self.port.Fault:
            return []

    def fault(self, f: dict[str, int], regs: dict[str, int]) -> bool:
        """A fault the pager could not serve: the program's handler for its signal, if it has one."""
        if self.proc is None:
            return False
        return signals.deliver_fault(self, f["vector"], f["error_code"], f["fault_va"], regs)

    # ------------------------------------------------------------ helpers for the handlers
    def cstr(self, va: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string of the process's memory (without the NUL)."""
        out = b""
        while len(out) < limit:
            chunk = self.port.read(va + len(out), min(64, PAGE_SIZE - ((va + len(out)) % PAGE_SIZE)))
            i = chunk.find(b"\0")
            if i >= 0:
                return out + chunk[:i]
            out += chunk
        return out

    def writable(self, va: int, n: int) -> None:
        """Make [va, va+n) writable before a hypercall stores there: the exokernel checks the pages
        and does not page in for a hypercall, so a copy-on-write page (after fork) or a demand-zero
        one is faulted in through the port's pager first, as the CPU would for the program."""
        port = self.port
        end = va + n
        page = va & ~(PAGE_SIZE - 1)
        while page < end:
            at = max(page, va)
            port.write(at, port.read(at, 1))  # rewrite one byte: the pager breaks copy-on-write
            page += PAGE_SIZE

    def log_raw(self, text: str) -> None:
        """One line on the console's error stream, as it is (strace output)."""
        va = self.data_base + 2 * PAGE_SIZE
        self.ensure_page(va)
        data = (text + "\n").encode("utf-8", "replace")[:PAGE_SIZE]
        self.port.write(va, data)
        self.hc("console_error", va, len(data))
