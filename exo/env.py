"""Environments: the exokernel's protection domains (JOS "envs", Xen "domains")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exo.abi import EnvStatus
from exo.vm import AddressSpace
from hw.cpu import CpuContext


@dataclass(eq=False)
class Env:
    id: int
    name: str
    parent: int | None
    space: AddressSpace
    ctx: CpuContext
    status: EnvStatus = EnvStatus.NOT_RUNNABLE
    upcall_entry: int = 0  # libOS exception/upcall handler (0: none registered)
    upcall_stack: int = 0  # top of the exception stack the upcall frame is pushed on
    exit_status: int | None = None
    fault: str | None = None  # one-line summary when stopped by a fault
    allowed: frozenset[str] | None = None  # hypercalls it may make (None: all)
    blocked_on: str | None = None
    queued: bool = False  # on its tenant's run queue
    orphaned: bool = False  # reclaimed with its parent before it was ever started
    instructions: int = 0  # retired while this env ran (virtual clock)
    children: list[int] = field(default_factory=list)
    # Its app's Tenant (exo/tenants.py): quotas and CPU share, shared by the whole tree;
    # tenant.id is the booted app (the tree's root environment) it descends from.
    tenant: Any = None
    wake_at: int = 0  # guest ns a rate-limited environment sleeps until (Exokernel.sleep_until)
    argv: list[str] = field(default_factory=list)
    symbolize: Callable[[int], str | None] | None = None  # address -> 'label+0x12'
    # libOS linking (exo/libcall.py)
    port: Any = None  # the LibPort its modules use
    libcalls: dict[int, Any] = field(default_factory=dict)  # slot address -> Entry
    modules: dict[int, Any] = field(default_factory=dict)  # module index -> instance
    timer_entry: int = 0  # upcall entry at the start of a slice after preemption (0: none)
    interrupted: bool = False  # its last slice ended by the timer
    retrying: bool = False  # its next hypercall reruns one that had to wait (counted once)
    retry_hypercall: str | None = None  # the same, for a library call that waited in a hypercall
    libcall_rsp: int | None = None  # RSP of a library call that entered its slot and has not run yet
    # OS structures (exo/structures.py)
    pv_call: Any = None  # xen-pv: the service call bounced to the guest kernel
    pv_result: int = 0
    pv_fault: Any = None  # xen-pv: (handler entry, frame) bounced to the guest kernel
    is_server: bool = False  # microkernel: a server environment
    request: Any = None  # microkernel server: (client id, entry, args) being served
    serving: int | None = None  # microkernel server: the client awaiting its reply
    # IPC (exo/hypercalls.py ipc_*): a one-message mailbox
    ipc_waiting: bool = False
    mailbox: tuple[int, int, int, int] | None = None  # (from, value, frame or -1, perm)
    # Disk (exo/disk.py): the block ranges it may use, (first sector, count, writable)
    disk_grants: list[tuple[int, int, bool]] = field(default_factory=list)
    # Network (exo/net.py): its receive ring, filters and wait state (None: never used the network)
    net: Any = None

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
