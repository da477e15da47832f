"""The exokernel: environments, protection, CPU multiplexing, traps and upcalls.

It decides who may use what (frames, pages, the console) and who runs when;
everything else is library code in the guest. The vCPU calls ``syscall`` and
``trap`` below (the hw.cpu.TrapHandler interface); the scheduler loop is ``run``.

Reading order for the hypercall path: hw/cpu.py ``_hook_syscall`` ->
``Exokernel.syscall`` here -> the table and ``_hc_*`` in exo/hypercalls.py.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from exo.abi import (
    EV_CONSOLE,
    EXO_REGION_END,
    HYPERCALL_PAGE,
    HYPERCALL_STUB_SIZE,
    LIBCALL_HOOKED,
    LIBCALL_SLOT,
    LIBOS_END,
    LIBOS_PAGE,
    UPCALL_NET,
    UPCALL_TIMER,
    UTRAPFRAME_SIZE,
    EnvStatus,
    Errno,
)
from exo.accounting import Accounting
from exo.env import Env
from exo.errors import HypercallError
from exo.events import WAITING, child_ended
from exo.frames import EXO, FrameKind, FrameTable, FrameType
from exo.hypercalls import BY_NAME, BY_NR, HYPERCALLS
from exo.images import SharedImages
from exo.libcall import LibFault, LibraryTable
from exo.report import FaultReport, backtrace, build_report, stuck_reason
from exo.structures import REFLECT_PATH, Structures, slot_code
from exo.tenants import DEFAULT_ENVS, Tenant, Tenants
from exo.vm import EXO_REGION, AddressSpace
from hw.cpu import VCpu
from hw.machine import Machine
from hw.memory import PAGE_SHIFT, PAGE_SIZE
from hw.paging import PTE_P, PTE_U
from hw.regs import GPR_INDEX, GPRS, Reg
from hw.traps import Trap, TrapKind, Vector

if TYPE_CHECKING:
    from exo.net import NetMux

DEFAULT_SLICE = 100_000  # instructions per time slice under the virtual clock
# Live environments one booted app (its tree of descendants) may hold by default: its
# tenant's env quota (exo/tenants.py); a fork bomb gets -EAGAIN beyond it.
MAX_ENVS_PER_APP = DEFAULT_ENVS
RATE_WAITS = frozenset({"disk rate", "net rate", WAITING})  # what an environment in sleep_until waits for
UPCALL_VECTORS = frozenset({Vector.PF, Vector.DE, Vector.UD, Vector.BP})
_RETRY = object()
_KEEP = object()  # a hypercall that set RAX and RIP itself (or leaves them to someone else)
_MASK = 0xFFFF_FFFF_FFFF_FFFF
_RSP_INDEX = GPR_INDEX[Reg.RSP]


def hypercall_page() -> bytes:
    """32-byte stubs: ``mov eax, nr; syscall; ret``, padded with int3."""
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for h in HYPERCALLS:
        stub = b"\xb8" + h.nr.to_bytes(4, "little") + b"\x0f\x05\xc3"
        page[h.nr * HYPERCALL_STUB_SIZE : h.nr * HYPERCALL_STUB_SIZE + len(stub)] = stub
    return bytes(page)


class Exokernel:
    RETRY = _RETRY
    KEEP = _KEEP

    def __init__(
        self,
        machine: Machine,
        *,
        slice_instructions: int = DEFAULT_SLICE,
        on_fault: Callable[[FaultReport], None] | None = None,
        structure: str = "exokernel",
    ) -> None:
        self.machine = machine
        self.cpu: VCpu = machine.cpu
        self.frames = FrameTable(machine.memory, machine.reserved_bytes)
        self.images = SharedImages(self.frames)  # read-only image pages, one copy for all instances
        self.frames.on_code_write = self.cpu.flush_code
        self.acct = Accounting()
        self.envs: dict[int, Env] = {}
        # The environments not yet reclaimed: what scheduling scans (self.envs keeps the dead ones for
        # their exit status and reports, and grows with every instance a server ever started).
        self.live_envs: dict[int, Env] = {}
        # One tenant per booted app (exo/tenants.py): quotas over all its environments, and
        # the unit the scheduler shares the CPU between (``_next_env``).
        self.tenants = Tenants(self.frames.free_count)
        self.frames.tenant_of = self.tenants.by_owner
        self.ring: deque[Tenant] = deque()  # tenants with runnable environments, waiting for a turn
        self._turn: Tenant | None = None  # whose turn it is
        self._turn_left = 0  # instructions (virtual clock) or slices (wall clock) left in the turn
        self._handoff: Tenant | None = None  # wake_first: its first environment runs next
        # Blocked until env.wake_at (guest ns): a rate limit's delay. A dict used as an ordered set:
        # an environment made runnable early reruns its call and sleeps again, and must not be added twice.
        self.sleepers: dict[Env, None] = {}
        self.current: Env | None = None
        self._live: Env | None = None  # whose state is loaded in the vCPU
        self._next_id = 1
        self.slice_instructions = slice_instructions
        self.reports: list[FaultReport] = []
        self.on_fault = on_fault or self._print_report
        self.on_log: Callable[[Env, str], None] = self._print_log
        # sched_op(READY): an app says it has initialised (exo/serve.py snapshots it there). True:
        # the caller takes the environment, which waits; None or False: the call returns at once.
        self.on_ready: Callable[[Env], bool] | None = None
        self._halt = False  # halt(): run() returns at its next scheduling decision
        self.halted = False  # the last run() ended by halt()
        self.env_create_hooks: list[Callable[[Env, Env], None]] = []  # (parent, child)
        self.env_reclaim_hooks: list[Callable[[Env], None]] = []  # an environment's resources go
        regs = self.cpu.regs
        self._gpr = self.cpu.gpr  # live general registers (memory, no library call)
        self._rip = self.cpu.rip  # live (RIP, EFLAGS), the same way
        self._hc_counts = self.acct._hc  # the accounting's hot counter, updated inline by syscall()
        self._read_gprs = regs.reader(GPRS)
        # The hypercall page: one exokernel frame, mapped read+execute everywhere.
        self.hypercall_frame = self.frames.alloc(EXO, FrameType.NORMAL, kind=FrameKind.HYPERCALL)
        self.frames.refs[self.hypercall_frame] = 1  # the exokernel's own reference
        machine.memory.write(self.hypercall_frame << PAGE_SHIFT, hypercall_page())
        self.cpu.flush_code()
        self.cpu.handler = self
        self.structure = structure
        self.structure_slot = slot_code(structure, BY_NAME["svc"].nr)
        self.structures: Structures | None = None
        if structure != "exokernel":
            self.structures = Structures(self, structure, BY_NAME["svc_return"].nr, BY_NAME["svc_reply_wait"].nr)
        self.libs = LibraryTable(self)
        self.net: NetMux | None = None
        if machine.nic is not None:  # imported only for a machine with a NIC (start-up: issue 12)
            from exo.net import NetMux

            self.net = NetMux(self, machine.nic)

    # ------------------------------------------------------------ environments
    def create_env(self, name: str, parent: Env | None = None, *, system: bool = False,
                   tenant: Tenant | None = None) -> Env:
        """A new environment with only the hypercall page mapped, NOT_RUNNABLE.

        With no parent it starts a new tenant (a booted app; ``system``: the
        exokernel's own, a microkernel server); a child joins its parent's tenant,
        or ``tenant`` (an instance served for another tenant: exo/serve.py).
        """
        eid = self._next_id
        if parent is not None:
            tenant = tenant or parent.tenant
            if tenant.envs_used >= tenant.env_limit:
                tenant.env_refusals += 1
                raise HypercallError(Errno.EAGAIN, f"env quota of app '{tenant.name}' exhausted: "
                                                   f"{tenant.envs_used} of {tenant.env_limit} environments")
        else:
            tenant = self.tenants.new(eid, name, system=system)
        self.tenants.by_owner[eid] = tenant  # before its first frame: page tables are charged too
        space = AddressSpace(self.frames, eid)
        self._next_id += 1
        ctx = self.cpu.new_context()
        ctx.cr3 = space.root
        env = Env(eid, name, parent.id if parent else None, space, ctx)
        env.tenant = tenant
        space.flush = lambda: self.flush_if_current(env)  # a copy-on-write page got its copy
        try:
            self.map_exo_page(env, HYPERCALL_PAGE, self.hypercall_frame, PTE_P | PTE_U)  # R+X
        except HypercallError:
            space.destroy()  # out of frames for its page tables: give back what it got
            raise
        tenant.envs_used += 1
        self.envs[eid] = env
        self.live_envs[eid] = env
        if parent is not None:
            parent.children.append(eid)
            env.allowed = parent.allowed
        self.acct.add_env(eid)
        return env

    def new_tenant(self, name: str, like: Tenant) -> Tenant:
        """A tenant with no environment yet, using ``like``'s network address (exo serve --tenant):
        its id is taken from the environment ids, so that no environment or tenant shares it."""
        t = self.tenants.new(self._next_id, name)
        self._next_id += 1
        t.net_app = like.net_app
        return t

    def map_exo_page(self, env: Env, va: int, frame: int, pte: int) -> None:
        """Map an exokernel-provided page (hypercall, libOS, info page) into ``env``."""
        env.space.map(va, frame, pte)

    def exofork(self, parent: Env) -> Env:
        """env_create: the child gets the caller's registers (RAX=0) and nothing else."""
        for va in list(parent.space.cow):  # a forking instance's pages become its own first: a libOS
            parent.space.break_cow(va)    # fork shares or copies what it sees, and sees them read-only
        child = self.create_env(f"{parent.name}.{len(parent.children) + 1}", parent)
        cpu = self.cpu
        cr3 = child.ctx.cr3
        if parent is self._live:
            cpu.save(child.ctx)  # the live state is the parent's, at its `syscall`
        else:  # a microkernel POSIX server forks its client: the client's saved state
            cpu.copy_context(child.ctx, parent.ctx)
        child.ctx.cr3 = cr3
        # After the caller's `syscall`: the vCPU's RIP is at it, unless a Linux call is being served
        # elsewhere (the xen-pv guest kernel's entry), whose return RIP the env keeps.
        cpu.context_write(child.ctx, Reg.RIP, parent.reflect_rip or cpu.regs.read(Reg.RIP) + 2)
        cpu.context_write(child.ctx, Reg.RAX, 0)
        child.argv = list(parent.argv)
        child.symbolize = parent.symbolize  # the same image: reports name its labels too
        child.source_line = parent.source_line
        try:
            for va in range(EXO_REGION[0], EXO_REGION[1], PAGE_SIZE):
                found = parent.space.lookup(va)
                if found and va != HYPERCALL_PAGE:
                    child.space.map(va, found[0], found[1])
        except HypercallError:
            self._reclaim(child)
            raise
        for index, instance in parent.modules.items():
            clone = instance.fork(self.libs.port(child))  # the library's state, for the child
            self.libs.link(child, index, clone, clone.entries(), clone.hypercalls)
        child.timer_entry = parent.timer_entry
        if parent.reflect is not None:  # its own clone's slot, relinked above
            child.reflect, child.reflect_va = child.libcalls.get(parent.reflect_va), parent.reflect_va
        child.disk_grants = list(parent.disk_grants)  # inherited, like open file descriptors (exo/disk.py)
        for hook in self.env_create_hooks:
            hook(parent, child)
        return child

    def env_for(self, caller: Env, envid: int) -> Env:
        """Resolve an envid argument: 0 or the caller itself, or one of its children."""
        if envid == 0 or envid == caller.id:
            return caller
        env = self.envs.get(envid)
        if env is None or not env.alive:
            raise HypercallError(Errno.ESRCH, f"no environment {envid}")
        if env.parent != caller.id:
            raise HypercallError(Errno.EPERM, f"environment {envid} is not a child of {caller.id}")
        return env

    def flush_if_current(self, env: Env) -> None:
        if env is self._live:
            self.cpu.flush_tlb()

    def release_frame(self, frame: int) -> None:
        """Drop a reference held outside any address space (an IPC message in flight)."""
        self.frames.refs[frame] -= 1
        if self.frames.refs[frame] == 0:
            self.frames.free(frame)

    def set_entry(self, env: Env, rip: int, rsp: int) -> None:
        self.cpu.context_write(env.ctx, Reg.RIP, rip)
        self.cpu.context_write(env.ctx, Reg.RSP, rsp)

    def set_status(self, env: Env, status: EnvStatus) -> None:
        env.status = status
        env.blocked_on = None
        if status == EnvStatus.RUNNABLE and env is not self.current:
            self._enqueue(env)

    def _enqueue(self, env: Env) -> None:
        """Put ``env`` at the tail of its tenant's run queue, once; the tenant waits for a turn."""
        if not env.queued:
            env.queued = True
            t = env.tenant
            t.runq.append(env)
            if not t.in_ring and t is not self._turn:
                t.in_ring = True
                self.ring.append(t)

    def wake_first(self, env: Env) -> None:
        """Make ``env`` runnable and run it next (an IPC hand-off: the time it runs is spent
        from the turn of the tenant running now, as L4 donates the caller's time slice)."""
        env.status = EnvStatus.RUNNABLE
        env.blocked_on = None
        t = env.tenant
        if env.queued:
            t.runq.remove(env)
        env.queued = True
        t.runq.appendleft(env)
        if not t.in_ring and t is not self._turn:
            t.in_ring = True
            self.ring.append(t)
        self._handoff = t

    def sleep_until(self, env: Env, wake_at: int, what: str) -> object:
        """Block ``env`` until guest time ``wake_at`` (ns), then rerun its hypercall (a rate limit)."""
        env.wake_at = wake_at
        self.sleepers[env] = None
        return self.block_and_retry(env, what)

    def make_runnable(self, env: Env) -> None:
        self.set_status(env, EnvStatus.RUNNABLE)

    # -------------------------------------------------------- giving up the CPU
    def yield_cpu(self, env: Env) -> None:
        self.cpu.stop("yield")

    def block(self, env: Env, what: str) -> None:
        env.status = EnvStatus.BLOCKED
        env.blocked_on = what
        if env is self.current:
            self.cpu.stop("block")

    def block_and_retry(self, env: Env, what: str) -> object:
        """Block; the hypercall (or the library call that made it) runs again when woken."""
        self.block(env, what)
        return _RETRY

    def ready(self, env: Env) -> None:
        """sched_op(READY): ``env`` has initialised. Whoever asked (``on_ready``) takes it from here,
        the environment waiting meanwhile; with nobody asking it just goes on."""
        if self.on_ready is not None and self.on_ready(env):
            self.block(env, "ready")

    def halt(self) -> None:
        """Make ``run`` return at its next scheduling decision (within a slice; from any thread:
        a server's Ctrl-C or its last request). The environments stay as they are."""
        self._halt = True

    @property
    def halting(self) -> bool:
        """halt() was asked and run() has not returned yet."""
        return self._halt

    def exit(self, env: Env, status: int) -> None:
        env.exit_status = status
        self.destroy(env, exit_status=status)

    def destroy(self, env: Env, exit_status: int | None) -> None:
        if exit_status is not None:
            env.exit_status = exit_status
        if self.acct.tracer is not None:
            self.acct.tracer.env_ended(env.id)  # its open calls end here (an exit never returns)
        if env is self.current:
            env.status = EnvStatus.DYING
            self.cpu.stop("exit")
        else:
            self._reclaim(env)

    def _reclaim(self, env: Env) -> None:
        child_ended(self, env)  # its record for the parent's env_reap (exo/events.py)
        env.tenant.envs_used -= 1
        self.frames.refused.pop(env.id, None)
        if env.mailbox is not None and env.mailbox[2] >= 0:
            self.release_frame(env.mailbox[2])
        env.mailbox = None
        for hook in self.env_reclaim_hooks:
            hook(env)
        env.space.destroy()
        env.status = EnvStatus.DEAD
        self.live_envs.pop(env.id, None)
        if env.ephemeral:  # an instance: nothing asks for its record once it is gone
            self.envs.pop(env.id, None)
            self.tenants.by_owner.pop(env.id, None)  # it owns no frame now
            if env.template is not None:
                self.acct.fold(env.id, env.template)
            env.modules, env.libcalls, env.port = {}, {}, None
        env.queued = False
        # A child left NOT_RUNNABLE (never started, or paused) can never run
        # again: only its parent may make it runnable. Give its frames back too.
        for cid in env.children:
            child = self.envs.get(cid)
            if child is not None and child.status == EnvStatus.NOT_RUNNABLE:
                child.orphaned = True
                self._reclaim(child)
        if self._live is env:
            self._live = None
        env.ctx = None  # type: ignore[assignment]  # frees the Unicorn context

    @staticmethod
    def source_line(env: Env, rip: int) -> str | None:
        """``file:line`` of the code at ``rip`` in ``env``'s image, where its sources or DWARF say."""
        return env.source_line(rip) if env.source_line is not None else None

    def symbol(self, env: Env, rip: int) -> str | None:
        """A name for ``rip`` in ``env``: its image's label+offset, else a hypercall stub or a
        library call slot on a page the exokernel maps, else None."""
        symbol = env.symbolize(rip) if env.symbolize else None
        if symbol is not None:
            return symbol
        if HYPERCALL_PAGE <= rip < HYPERCALL_PAGE + PAGE_SIZE:
            nr, off = divmod(rip - HYPERCALL_PAGE, HYPERCALL_STUB_SIZE)
            return f"hypercall stub {BY_NR[nr].name}{f'+{off:#x}' if off else ''}" if nr in BY_NR else None
        if LIBOS_PAGE <= rip < LIBOS_END:
            entry = env.libcalls.get(rip - rip % LIBCALL_SLOT)
            off = rip % LIBCALL_SLOT
            return f"library call {entry.name}{f'+{off:#x}' if off else ''}" if entry else None
        return None

    def kill(self, env: Env, trap: Trap, reason: str = "", kind: str | None = None) -> None:
        """Stop ``env`` with a fault report; every other environment keeps running."""
        code = env.space.fetch_code(trap.insn_address)
        regs = dict(zip((r.name for r in GPRS), self._read_gprs()))
        where = self.symbol(env, trap.insn_address)
        refused = self.frames.refused.get(env.id)
        if refused is not None and self._still_short(env):
            # A frame was refused to it and it is still short: that is most likely why it faulted
            # (a copy-on-write or demand-zero fault its pager could not serve, libos/memory.py).
            reason = f"{reason}; {refused}" if reason else refused
        report = build_report(env.id, env.name, trap, code, regs, reason, where)
        report.backtrace = backtrace(env.space, regs["RBP"], regs["RSP"], lambda a: self.symbol(env, a))
        if env.source_line is not None:  # read from the image's sources or DWARF on a fault only
            report.line = env.source_line(trap.insn_address)
            # A return address is after its call: the call's line is the byte before it (as gdb does).
            report.backtrace.lines = [env.source_line(a - 1) for a, _ in report.backtrace.frames]
        if kind is not None:
            report.kind = kind
        env.fault = report.summary
        env.fault_vector = int(trap.vector)
        self.reports.append(report)
        self.on_fault(report)
        self.destroy(env, exit_status=None)

    def abort(self, env: Env, what: str, detail: str, reason: str | None = None) -> None:
        """Stop ``env`` because its library OS failed (a bug in a module, not a CPU fault)."""
        trap = Trap(TrapKind.MACHINE_CHECK, Vector.MC, self.cpu.regs.read(Reg.RIP), detail=detail)
        self.kill(env, trap, detail if reason is None else reason, kind=what)

    def _still_short(self, env: Env) -> bool:
        t = env.tenant
        return t.frames_used >= t.frame_limit or self.frames.free_count == 0

    @staticmethod
    def _print_log(env: Env, text: str) -> None:
        sys.stderr.write(f"exo: environment {env.id} ({env.name}): {text}\n")
        sys.stderr.flush()

    @staticmethod
    def _print_report(report: FaultReport) -> None:
        sys.stderr.write(report.render() + "\n")
        sys.stderr.flush()

    # ------------------------------------------------------------- the vCPU's calls
    def syscall(self, cpu: VCpu) -> None:
        """A hypercall: number in RAX, arguments in RDI, RSI, RDX, R10, R8; result in RAX."""
        env = self.current
        if env.reflect is not None and not HYPERCALL_PAGE <= self._rip[0] < EXO_REGION_END:
            return self.reflect(env)
        g = self._gpr
        h = BY_NR.get(g[0])
        if h is None:
            self.acct.hypercall(env.id, f"#{g[0]}")
            g[0] = -Errno.ENOSYS & _MASK
            return
        allowed = env.allowed
        if not env.retrying and h.counted and self.acct.tracer is None and (allowed is None or h.name in allowed):
            # The common case, inlined (dispatch() is the general path): count, run, answer.
            key = (env.id, h.name)
            hc = self._hc_counts
            hc[key] = hc.get(key, 0) + 1
            try:
                result = h.impl(self, env, *h.args_of(g))
            except HypercallError as e:
                result = -e.errno
        else:
            rerun, env.retrying = env.retrying, False  # a retried hypercall is counted once
            result = self.dispatch(env, h, h.args_of(g), count=h.counted and not rerun, guest=rerun)
        if result is _RETRY:
            # Run the `syscall` again when woken: Unicorn adds 2 to RIP after this hook.
            env.retrying = True
            cpu.regs.write(Reg.RIP, cpu.regs.read(Reg.RIP) - 2)
        elif result is not _KEEP:
            g[0] = result & _MASK

    def reflect(self, env: Env) -> None:
        """A Linux `syscall` (RIP outside the exo region) of an env that asked for reflection.

        Redirected to the libOS entry registered with env_set_syscall, in the same protection
        domain (Aegis/Xok trap redirection): ``entry(nr, rdi, rsi, rdx, r10, r8, r9)`` returns RAX.
        RCX and R11 are set as Linux's SYSCALL entry leaves them (return RIP, RFLAGS; Unicorn
        does not do it before the hook: shared UNICORN_NOTES trap 5; docs/posix.md).
        """
        g = self._gpr
        rip = self._rip[0]
        nr = g[0]
        structure = self.structures.name if self.structures is not None else "exokernel"
        tr = self.acct.tracer
        if not env.retrying or tr is not None:
            name = getattr(getattr(env.reflect.fn, "__self__", None), "SYSCALL_NAMES", {}).get(nr) or f"#{nr}"
            if not env.retrying:  # a call re-executed after a wait is counted once
                self.acct.reflect(env.id, name, REFLECT_PATH[structure])
        env.retrying = False
        args = (nr, g[7], g[6], g[2], g[10], g[8], g[9])
        if tr is not None:  # the call's span, closed when it answers (under xen-pv and microkernel: later)
            tr.service_begin(env.id, name, args[1:])
        if structure == "xen-pv":
            self.structures.bounce_reflected(env, args, rip)  # to the guest kernel; it returns by svc_return
            return
        if structure == "microkernel":
            self.structures.ipc_reflected(env, args, rip)  # to the POSIX server; it replies
            return
        env.reflect_rip = rip + 2
        port = env.port or self.libs.port(env)
        port.kernel_mode = structure == "monolithic"  # served in ring 0: its resource uses are kcalls
        try:
            result = self.libs.run_entry(env, env.reflect, args, count=False)
        finally:
            port.kernel_mode = False
            env.reflect_rip = 0
        if result is _RETRY:
            if env.alive:
                env.retrying = True
                self.cpu.regs.write(Reg.RIP, rip - 2)  # Unicorn adds 2 after the hook: the `syscall` runs again
        elif env.port.resumed:
            if env.alive:  # the entry loaded another context (execve, a signal): Unicorn adds 2 to RIP
                self.cpu.regs.write(Reg.RIP, self._rip[0] - 2)
        elif result is not _KEEP and env.alive:
            g[0] = (result or 0) & _MASK
            g[1] = rip + 2
            g[11] = self._rip[1]
        if tr is not None and result is not _RETRY:
            tr.service_end(env.id, None if result is _KEEP or env.port.resumed else result)

    def dispatch(self, env: Env, h, args, count: bool = True, kernel: bool = False,
                 guest: bool | None = None) -> object:
        """Account, check and run hypercall ``h`` for ``env``: its result, RETRY or KEEP.

        Guest `syscall`s and libOS modules (exo/libcall.py) both come through here.
        ``kernel``: a service inside the kernel (monolithic structure) uses the
        resource: checked the same way, counted as a ``kcall``, not a transition.
        ``guest``: the guest's own `syscall` (True when it is the retry of one that
        waited): a trace keeps such a call's span open while it waits.
        """
        tr = self.acct.tracer  # with a tracer, the call is a span in the trace, not an instant
        if kernel:
            self.acct.count("kcall", env.id, h.name, trace=tr is None)
        elif count:
            self.acct.hypercall(env.id, h.name, trace=tr is None)
        if tr is not None:
            span = tr.hypercall("kcall" if kernel else "hypercall", env.id, h.name, h.args, args, rerun=bool(guest))
        if not kernel and env.allowed is not None and h.name not in env.allowed:
            result = -Errno.EPERM
        else:
            try:
                result = h.impl(self, env, *args)
            except HypercallError as e:
                result = -e.errno
        if tr is not None:
            tr.hypercall_done(span, None if result is _KEEP else result, waits=result is _RETRY,
                              counted=count or kernel, keep=guest is not None)
        return result

    def code(self, cpu: VCpu, address: int) -> None:
        """Guest code entered a libOS trampoline slot: a library call."""
        env = self.current
        try:
            self.libs.call(env, address)
        except (HypercallError, LibFault) as e:  # a guest's bad state must not stop the exokernel
            if env.alive:
                self.abort(env, "library call failed", str(e))

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        env = self.current
        if env.space.cow and trap.vector == 14 and (trap.error_code or 0) & 3 == 3 and self._cow_fault(env, trap):
            return
        handled = trap.kind is TrapKind.EXCEPTION and env.upcall_entry and trap.vector in UPCALL_VECTORS
        if handled and self.structures is not None and self.structures.fault(env, trap):
            return  # the structure's own fault path (monolithic in-kernel pager, xen-pv bounce)
        self.acct.count("trap", env.id, trap.name)
        if handled:
            resume = trap.rip if trap.next_rip is None else trap.next_rip
            if self._upcall(env, env.upcall_entry, trap.vector, trap.error_code or 0, trap.cr2 or 0, resume,
                            trap.name):
                return
            self.kill(env, trap, "the upcall frame could not be pushed on the exception stack")
            return
        reason = ""
        if trap.kind is TrapKind.IO:
            reason = "port I/O is refused: devices are reached through hypercalls"
        # A #GP is explained by its cause in the report (exo/report.py GP_CAUSES).
        self.kill(env, trap, reason)

    def _cow_fault(self, env: Env, trap: Trap) -> bool:
        """A write to a copy-on-write page of an instance (exo/instances.py): it gets its own copy and
        the instruction runs again. A trap into the exokernel and back, counted as one."""
        try:
            if not env.space.break_cow(trap.cr2 or 0):
                return False
        except HypercallError as e:
            self.acct.count("trap", env.id, trap.name)
            self.kill(env, trap, f"out of memory for its copy of a copy-on-write page ({e.detail})")
            return True
        self.acct.count("trap", env.id, trap.name)
        self.cpu.regs.write(Reg.RIP, trap.rip)
        return True

    def push_frame(self, env: Env, vector: int, error: int, fault_va: int, rip: int) -> int | None:
        """Write a UTrapframe of the live context on ``env``'s exception stack; its address."""
        g = self._read_gprs()
        rsp = g[7]
        top = env.upcall_stack
        if top - PAGE_SIZE <= rsp < top:  # already on the exception stack: nest below
            frame = (rsp - 8 - UTRAPFRAME_SIZE) & ~0xF
        else:
            frame = (top - UTRAPFRAME_SIZE) & ~0xF
        if frame < top - PAGE_SIZE:
            # The exception stack is one page (JOS's UXSTACK). Nesting below it, even into
            # mapped memory, would restart at its top and a handler that faults at once would
            # loop forever with no instruction retired (no slice ever ends): found by exo fuzz.
            return None
        # vector, error_code, fault_va, rax rbx rcx rdx rsi rdi rbp r8..r15, rip, rflags, rsp
        values = [vector, error, fault_va, *g[0:7], *g[8:16], rip, g[17], rsp]
        data = b"".join((v & _MASK).to_bytes(8, "little") for v in values)
        try:
            env.space.write(frame, data)
        except HypercallError:
            return None
        return frame

    def _upcall(self, env: Env, entry: int, vector: int, error: int, fault_va: int, rip: int,
                name: str) -> bool:
        """Push a UTrapframe on the exception stack and enter the libOS handler (JOS style).

        The frame holds the interrupted context (``rip`` is where it resumes); the
        handler gets RSP = RDI = the frame and returns to that context itself.
        """
        if (LIBOS_PAGE <= rip < LIBOS_END and rip & (LIBCALL_SLOT - 1) == LIBCALL_HOOKED
                and env.libcall_rsp == self._gpr[_RSP_INDEX]):
            # Interrupted between entering a library-call slot and the call running: the
            # context resumes by entering the slot afresh (it may resume after other
            # threads' calls, which note their own entries: exo/libcall.py).
            rip -= LIBCALL_HOOKED
        frame = self.push_frame(env, vector, error, fault_va, rip)
        if frame is None:
            return False
        regs = self.cpu.regs
        regs.write(Reg.RSP, frame)
        regs.write(Reg.RDI, frame)
        regs.write(Reg.RIP, entry)
        self.acct.count("upcall", env.id, name)
        return True

    # ------------------------------------------------------------------ scheduling
    def _pick(self) -> Env | None:
        console = self.machine.console
        net = self.net
        while True:
            if self._halt:
                self._halt = False
                self.halted = True
                return None
            waiting = [e for e in self.live_envs.values() if e.status == EnvStatus.BLOCKED
                       and (e.blocked_on == "console" or e.blocked_on == WAITING and e.wait_mask & EV_CONSOLE)]
            if waiting and console.poll():
                for e in waiting:
                    self.make_runnable(e)
            net_waiting = []
            serving = False  # a front end (exo/serve.py) waits for new flows: the network can wake us
            if net is not None:
                net.pump()  # frames from the wire: into the rings of the environments that claim them
                if self._halt:  # a front end's ticker asked (exo/serve.py)
                    continue
                net_waiting = net.waiters()
                if net_waiting:
                    net.wake_expired(net_waiting, self.machine.clock.now_ns())
                serving = bool(net.front_ends) and net.nic.external
            if self.sleepers:
                self._wake_sleepers(idle=False)
            env = self._next_env()
            if env is not None:
                return env
            if self.sleepers:
                if (net_waiting or serving) and net.nic.external:
                    # A peer outside may send before the first sleeper's deadline (a posix process
                    # waits in event_wait with EV_NET and its next TCP timer): wait in real time, as
                    # net_wait does, instead of jumping the virtual clock over the host's reply.
                    net.idle(net_waiting, min(e.wake_at for e in self.sleepers))
                    self._wake_sleepers(idle=False)
                    continue
                self._wake_sleepers(idle=True, console_waiting=bool(waiting))
                continue
            if waiting:
                console.wait_input(0.02 if net_waiting else 0.5)
                continue
            if (net_waiting or serving) and net.idle(net_waiting):
                continue
            return None

    @staticmethod
    def _first_runnable(t: Tenant) -> Env | None:
        q = t.runq
        while q:
            env = q.popleft()
            env.queued = False
            if env.status == EnvStatus.RUNNABLE:
                return env
        return None

    def _next_env(self) -> Env | None:
        """Weighted round robin over tenants, round robin inside each (exo/tenants.py).

        A turn is ``weight`` slices worth of instructions (virtual clock; slices on the
        wall clock), spent on the tenant's runnable environments in turn; it ends early
        when one yields (as a yield ended its slice before tenants) or none is left.
        """
        h = self._handoff
        if h is not None:
            self._handoff = None
            # Only inside a turn with time left: a hand-off never starts a turn, so two apps
            # handing the CPU to each other cannot keep a third from its turn.
            if self._turn is not None and self._turn_left > 0:
                env = self._first_runnable(h)
                if env is not None:
                    return env
        t = self._turn
        if t is not None:
            if self._turn_left > 0:
                env = self._first_runnable(t)
                if env is not None:
                    return env
            self._turn = None
            if t.runq and not t.in_ring:
                t.in_ring = True
                self.ring.append(t)
        ring = self.ring
        while ring:
            t = ring.popleft()
            t.in_ring = False
            env = self._first_runnable(t)
            if env is not None:
                self._turn, self._turn_left = t, t.weight * self.slice_instructions
                return env
        return None

    def _wake_sleepers(self, idle: bool, console_waiting: bool = False) -> None:
        """Wake the environments whose delay is over; ``idle`` (nothing else can run): wait for the first.

        ``console_waiting``: someone also waits for console input; on the wall clock that input may
        come before the first deadline (a Ctrl-C for a sleeping program), so the wait is for either."""
        clock = self.machine.clock
        now = clock.now_ns()
        # Still asleep: a parent may have made one runnable early (it then reran its call).
        self.sleepers = {e: None for e in self.sleepers if e.alive and e.status == EnvStatus.BLOCKED
                         and e.blocked_on in RATE_WAITS}
        if idle and self.sleepers:
            first = min(e.wake_at for e in self.sleepers)
            if first > now:
                if clock.mode == "virtual":
                    clock.advance(first - now)  # nothing runs meanwhile: guest time jumps (as exo/net.py idles)
                elif console_waiting:
                    if self.machine.console.wait_input((first - now) / 1e9):
                        return  # typed input: _pick wakes its waiters; the sleepers sleep on
                else:
                    time.sleep((first - now) / 1e9)
                now = clock.now_ns()
        keep = {}
        for e in self.sleepers:
            if e.wake_at <= now:
                self.make_runnable(e)
            else:
                keep[e] = None
        self.sleepers = keep

    def run(self, max_instructions: int | None = None) -> None:
        """Run environments (tenants in turn, round robin inside each: ``_next_env``) until none is
        runnable (or the watchdog fires)."""
        cpu = self.cpu
        total = 0
        self.watchdog_fired = False
        self.halted = False
        virtual = self.machine.clock.mode == "virtual"
        while True:
            budget = self.slice_instructions
            if max_instructions is not None:
                if total >= max_instructions:
                    self.watchdog_fired = True
                    break
                budget = min(budget, max_instructions - total)  # stop exactly at the limit
            env = self._pick()
            if env is None:
                break
            if virtual:
                budget = min(budget, self._turn_left)
            if env is not self._live:
                if self._live is not None and self._live.alive:
                    cpu.save(self._live.ctx)
                cpu.restore(env.ctx)
                self._live = env
                self.acct.count("context_switch", env.id, env.name)
            self.current = env
            if env.net is not None and env.net.upcall_pending:
                # Frames arrived while it was busy: its libOS takes them in now (exo/net.py). A
                # timer upcall that is also due waits for the next slice.
                env.net.upcall_pending = False
                if not self._upcall(env, env.net.upcall_entry, UPCALL_NET, 0, 0, cpu.regs.read(Reg.RIP), "net"):
                    env.net.upcall_entry = 0  # no usable exception stack: frames wait for its next call
            elif env.interrupted and env.timer_entry:
                # A new slice after preemption: the libOS scheduler decides which thread runs.
                env.interrupted = False
                if not self._upcall(env, env.timer_entry, UPCALL_TIMER, 0, 0, cpu.regs.read(Reg.RIP), "timer"):
                    env.timer_entry = 0  # no usable exception stack: run on without it
            ex = cpu.run(budget)
            self.current = None
            retired = ex.retired or 0
            env.instructions += retired
            env.tenant.instructions += retired
            total += retired
            # The turn's use: instructions under the virtual clock, a whole slice under the wall clock.
            self._turn_left -= retired if virtual else self.slice_instructions
            if ex.stop_reason == "yield":
                self._turn_left = 0
            if env.status == EnvStatus.DYING:
                self._reclaim(env)
                continue
            if ex.reason == "preempted":
                self.acct.count("interrupt", env.id, "timer")
                env.interrupted = True
            if env.status == EnvStatus.RUNNABLE:
                self._enqueue(env)
        for env in list(self.live_envs.values()):
            if env.is_server and env.alive:
                self._reclaim(env)  # a microkernel server outlives no client
            elif env.alive and not (self.watchdog_fired or self.halted) and (why := stuck_reason(env)) is not None:
                env.fault = why  # blocked forever, or NOT_RUNNABLE with nobody left to change that

    # ----------------------------------------------------------------- queries
    def alive(self) -> list[Env]:
        return [e for e in self.live_envs.values() if e.alive]
