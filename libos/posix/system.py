"""The state posix shares between the processes of one tenant, and one process's own state.

Every process (one exo environment) has its own ``Posix`` module instance; the instances of one
booted program's tree hold the same ``PosixSystem`` (``LibModule.fork`` copies the reference), so
the process table, the file system, pipes and the terminal are one object, as in a kernel. The
exokernel still decides what each environment may touch: every access to user memory and every
hypercall goes through the calling process's own port (design: docs/posix.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from libos.posix import Posix
    from libos.posix.files import FdTable


class WouldBlock(Exception):
    """Raised by a call that must wait: the dispatcher waits with ``event_wait(mask | EV_NOTIFY,
    deadline)`` and the `syscall` runs again from the start when the environment is woken, so a
    handler must raise it before it changes anything (exo/abi.py EV_* for the mask bits)."""

    def __init__(self, mask: int, deadline: int = 0) -> None:
        super().__init__(mask, deadline)
        self.mask = mask
        self.deadline = deadline  # guest ns (time_now); 0: none


@dataclass(eq=False)
class Process:
    """One Linux process: one exo environment (pid = its env id)."""

    pid: int
    ppid: int
    fds: FdTable
    pgid: int = 0
    sid: int = 0
    cwd: str = "/"
    umask: int = 0o022
    comm: bytes = b""  # prctl(PR_SET_NAME), /proc/PID/comm: at most 15 bytes
    exe: str = ""  # the program's path (/proc/self/exe)
    argv: list[bytes] = field(default_factory=list)
    brk_start: int = 0
    brk: int = 0
    mmap_next: int = 0
    fs_base: int = 0
    gs_base: int = 0
    sig: Any = None  # SignalState (libos/posix/signals.py)
    exit_status: int | None = None  # set at exit: the wait status word wait4 reports
    wait_status: int | None = None  # set when its environment is gone (env_reap): wait4 may take it
    execs: int = 0  # execve calls so far (AT_RANDOM differs per exec)
    clear_tid: int = 0  # CLONE_CHILD_CLEARTID / set_tid_address: written 0 at exit
    stage_ready: bool = False  # its disk staging pages are mapped and writable (libos/posix/vfs.py)
    pending_deadline: tuple | None = None  # (call, guest-ns deadline) of a timed wait being re-executed
    shared_maps: list = field(default_factory=list)  # writable MAP_SHARED file mappings (libos/posix/mm.py)
    guarded: list = field(default_factory=list)  # PROT_NONE reservations [(lo, hi)] (libos/posix/mm.py)
    threads: Any = None  # ThreadGroup once it has a second thread (libos/posix/threads.py)
    waiting: bool = False  # its environment is in event_wait: parked threads retry when it wakes


class PosixSystem:
    """One tenant's Linux world: processes, the file system, the terminal, randomness, tracing."""

    def __init__(self, seed: int = 0) -> None:
        self.procs: dict[int, Process] = {}
        self.vfs: Any = None  # the mount table (libos/posix/vfs.py)
        self.tty: Any = None  # the terminal on fds 0-2 (libos/posix/tty.py)
        self.seed = seed
        self.fd_limit = 1024  # the app's fds quota (quota_info at start): RLIMIT_NOFILE's hard limit
        self.rng_counter = 0
        self.strace: TextIO | None = None  # --strace: every call, strace's format (libos/posix/strace.py)
        self.warned: set[int] = set()  # unimplemented calls already named in the log, per tenant
        self.tids: dict[int, int] = {}  # thread id -> its process's pid (threads after the first)
        self.next_tid = 0  # the last thread id given (libos/posix/threads.py FIRST_TID)

    def wake(self, caller: Posix, pid: int) -> None:
        """Ring ``pid``'s doorbell (env_notify) so its event_wait returns: a pipe got data, a child
        exec'd, a signal arrived. The hypercall is the caller's, through its own port."""
        if pid != caller.proc.pid and pid in self.procs:
            caller.hc("env_notify", pid)
        elif pid == caller.proc.pid and caller.proc.threads is not None:
            from libos.posix.threads import woken

            woken(caller)  # a thread of the caller's own process may wait for it: it retries its call
