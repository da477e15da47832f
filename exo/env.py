"""Environments: the exokernel's protection domains (JOS "envs", Xen "domains")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exo.abi import EnvStatus
from exo.vm import AddressSpace
from hw.cpu import CpuContext


class Env:
    """One environment (a plain class, not a dataclass: hw/traps.py says why)."""

    def __init__(self, id: int, name: str, parent: int | None, space: AddressSpace, ctx: CpuContext) -> None:
        self.id = id
        self.name = name
        self.parent = parent
        self.space = space
        self.ctx = ctx
        self.status: EnvStatus = EnvStatus.NOT_RUNNABLE
        self.upcall_entry: int = 0  # libOS exception/upcall handler (0: none registered)
        self.upcall_stack: int = 0  # top of the exception stack the upcall frame is pushed on
        self.exit_status: int | None = None
        self.fault: str | None = None  # one-line summary when stopped by a fault
        self.allowed: frozenset[str] | None = None  # hypercalls it may make (None: all)
        self.blocked_on: str | None = None
        self.queued: bool = False  # on its tenant's run queue
        self.orphaned: bool = False  # reclaimed with its parent before it was ever started
        self.instructions: int = 0  # retired while this env ran (virtual clock)
        self.children: list[int] = []
        # Its app's Tenant (exo/tenants.py): quotas and CPU share, shared by the whole tree;
        # tenant.id is the booted app (the tree's root environment) it descends from.
        self.tenant: Any = None
        self.wake_at: int = 0  # guest ns a rate-limited environment sleeps until (Exokernel.sleep_until)
        self.argv: list[str] = []
        self.symbolize: Callable[[int], str | None] | None = None  # address -> 'label+0x12'
        self.source_line: Callable[[int], str | None] | None = None  # address -> 'echo.s:12'
        # libOS linking (exo/libcall.py)
        self.port: Any = None  # the LibPort its modules use
        self.libcalls: dict[int, Any] = {}  # slot address -> Entry
        self.modules: dict[int, Any] = {}  # module index -> instance
        self.timer_entry: int = 0  # upcall entry at the start of a slice after preemption (0: none)
        self.interrupted: bool = False  # its last slice ended by the timer
        # Syscall reflection (env_set_syscall): the Entry a `syscall` outside the exo region goes to
        self.reflect: Any = None
        self.reflect_va: int = 0  # its slot address (re-resolved in a forked child)
        self.reflect_rip: int = 0  # return RIP of the reflected call in progress (0: none)
        # Events (exo/events.py): what its event_wait waits for, its doorbell, its ended children
        self.wait_mask: int = 0
        self.notified: bool = False
        self.zombies: list[tuple[int, int, int, int]] = []  # (id, how, status, vector) per ended child
        self.fault_vector: int = 0  # the CPU exception that stopped it (with fault)
        self.retrying: bool = False  # its next hypercall reruns one that had to wait (counted once)
        # Its pager (microkernel structure): the server environment that may grant it pages
        # (page_grant), and whether that pager just refused a fault (the next one is the library's).
        self.pager: int | None = None
        self.pager_refused: bool = False
        self.retry_hypercall: str | None = None  # the same, for a library call that waited in a hypercall
        self.libcall_rsp: int | None = None  # RSP of a library call that entered its slot and has not run yet
        # OS structures (exo/structures.py)
        self.pv_call: Any = None  # xen-pv: the service call bounced to the guest kernel
        self.pv_result: int = 0
        self.pv_reflected: bool = False  # xen-pv: the bounced call is a Linux `syscall` (issue 15)
        self.reply_regs: Any = None  # microkernel POSIX server: the registers its reply sets (ReflectPort)
        self.pv_fault: Any = None  # xen-pv: (handler entry, frame) bounced to the guest kernel
        self.is_server: bool = False  # microkernel: a server environment
        self.request: Any = None  # microkernel server: (client id, entry, args) being served
        self.serving: int | None = None  # microkernel server: the client awaiting its reply
        # IPC (exo/hypercalls.py ipc_*): a one-message mailbox
        self.ipc_waiting: bool = False
        self.mailbox: tuple[int, int, int, int] | None = None  # (from, value, frame or -1, perm)
        # Disk (exo/disk.py): the block ranges it may use, (first sector, count, writable)
        self.disk_grants: list[tuple[int, int, bool]] = []
        # Network (exo/net.py): its receive ring, filters and wait state (None: never used the network)
        self.net: Any = None
        # An instance started from a snapshot (exo/instances.py): forgotten once reclaimed (no
        # record in Exokernel.envs), so that a server starting one per request does not grow.
        self.ephemeral: bool = False
        self.template: int | None = None  # an instance's snapshot template (its counts go there when it ends)

    @property
    def alive(self) -> bool:
        return self.status not in (EnvStatus.DYING, EnvStatus.DEAD, EnvStatus.FREE)

    @property
    def outcome(self) -> str:
        """alive, exited, faulted, destroyed (by its parent or itself), orphaned (never to run again)."""
        if self.alive:
            return "alive"
        if self.fault is not None:
            return "faulted"
        if self.orphaned:
            return "orphaned"
        return "exited" if self.exit_status is not None else "destroyed"

    def exit_summary(self) -> str | int | None:
        if self.fault is not None:
            return "fault"
        return self.exit_status
