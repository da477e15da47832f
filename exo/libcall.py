"""Library calls: entering a linked libOS module without a ring transition.

Each libOS module kind has one trampoline page in the exokernel-managed region
(``LIBOS_PAGE + 0x1000 * index``), mapped read+execute into the environments
that link it. Entry ``k`` is the 16-byte slot at offset ``16 * k``. The vCPU
watches execution in this range (one ranged code hook, ``VCpu.watch_code``):
when guest code ``call``s a slot, the module's Python code runs on behalf of
that environment with the arguments of the SysV calling convention (RDI, RSI,
RDX, RCX, R8, R9), RAX receives the result, and the slot returns to the caller.
No privilege changes hands, so it is counted as a ``libcall``, not as a ring
transition.

A slot is ``jmp short $+2; jmp qword ptr [rsp-8]`` (abi.LIBCALL_CODE), and the
call runs at most once per entry, whenever the vCPU stops: the hook at the
slot's first instruction notes the entry (its RSP); the hook at the second
runs the call only for a noted entry, then pops the return address itself,
which the `jmp [rsp-8]` takes. A stop that lands inside or right after that
hook (the OS stopping the vCPU from the call, the instruction budget, or the
wall-clock timer's thread, which can come at any moment) leaves RIP at the
second instruction, the start of its translation block (Unicorn restores RIP
to it): resumed there, the hook finds no noted entry and the `jmp` just
returns. (With a plain ``ret`` slot such stops re-ran the call: measured, one
duplicate call per wall-clock timer interrupt.)

A module instance sees its environment only through a ``LibPort``: user memory
through that environment's page tables (EFAULT otherwise), its registers while
it runs, and hypercalls through the same dispatcher, validation and accounting
as a `syscall` from guest code. A library call that must wait (a hypercall
answered "retry") stops the vCPU with RIP still at the slot, so the whole call
runs again when the environment is woken: library calls are restartable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from exo.abi import LIBCALL_CODE, LIBCALL_HOOKED, LIBCALL_SLOT, LIBOS_END, LIBOS_PAGE, USER_TOP, Errno
from exo.errors import HypercallError
from exo.frames import EXO, FrameKind, FrameType
from exo.hypercalls import BY_NAME
from exo.report import raised_at
from exo.structures import GK_ENTRY as STRUCT_GK_ENTRY
from exo.structures import GK_FAULT as STRUCT_GK_FAULT
from exo.structures import SERVER_DISPATCH as STRUCT_SERVER_DISPATCH
from hw.errors import MachineConfigError
from hw.memory import PAGE_SHIFT, PAGE_SIZE
from hw.paging import PTE_P, PTE_U
from hw.regs import GPR_INDEX, Reg, user_rflags

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel

MAX_MODULES = (LIBOS_END - LIBOS_PAGE) // PAGE_SIZE
SLOTS_PER_PAGE = PAGE_SIZE // LIBCALL_SLOT
# SysV AMD64 integer argument registers, as indices into VCpu.gpr.
LIBCALL_ARGS = tuple(GPR_INDEX[r] for r in (Reg.RDI, Reg.RSI, Reg.RDX, Reg.RCX, Reg.R8, Reg.R9))
# Every environment that links modules may still end itself and ask who it is.
BASE_HYPERCALLS = frozenset({"sched_op", "env_id", "svc", "svc_return"})
_MASK = 0xFFFF_FFFF_FFFF_FFFF
_RSP = GPR_INDEX[Reg.RSP]


class Blocked(Exception):
    """Raised through a library call that must wait: the call is run again when woken."""


class LibFault(Exception):
    """A library call was given a bad pointer (or a hypercall it made failed fatally)."""

    def __init__(self, errno: Errno, detail: str = "") -> None:
        super().__init__(detail or errno.name)
        self.errno = errno


class Entry(NamedTuple):
    """One library entry point. libOS modules build their own objects of this shape
    (libos/module.py): exo needs only the attributes, and libos never imports exo."""

    slot: int
    name: str  # "module.entry", as counted and traced
    fn: Callable[..., int | None]
    nargs: int
    routed: bool = True  # False: a plain library call under every OS structure (kernel-interface stubs)


def entry_address(index: int, slot: int) -> int:
    return LIBOS_PAGE + index * PAGE_SIZE + slot * LIBCALL_SLOT


class LibPort:
    """One environment as its libOS modules see it."""

    Fault = LibFault  # so that modules can catch it without importing exo

    def __init__(self, kernel: Exokernel, env: Env) -> None:
        self._k = kernel
        self._env = env
        self.resumed = False  # set when a library call loaded another context itself
        # The libOS's pager for library code (installed by a memory module). Guest
        # code that touches a copy-on-write or demand-zero page takes a #PF that the
        # libOS handles; library code reads and writes through this port instead, so
        # an access that finds a page not present (or read-only, for a write) calls
        # pager(page_va, write) first, as the CPU would raise the fault: if it returns
        # True (it mapped the page), the access is tried again.
        self.pager: Callable[[int, bool], bool] | None = None
        self._paging = False
        self.kernel_mode = False  # monolithic structure: the service runs inside the kernel
        self.capture = False  # xen-pv guest kernel: resume() is kept for its svc_return
        self.captured: dict[str, int] | None = None

    @property
    def env_id(self) -> int:
        return self._env.id

    def trace_thread(self, tid: int, name: str) -> None:
        """Name the user-level thread that runs from now on (a libOS scheduler's switch), so that a
        trace puts its calls on their own track (exo/trace.py). No transition, no effect untraced."""
        tr = self._k.acct.tracer
        if tr is not None:
            tr.set_thread(self._env.id, tid, name)

    # ------------------------------------------------------------ hypercalls
    def hypercall(self, name: str, *args: int) -> int:
        """Make hypercall ``name``; returns its result (negative errno on failure).

        Raises Blocked when the call must wait: let it propagate, and the library
        call is retried from the start when the environment is woken.
        """
        env = self._env
        # A library call that had to wait runs again from the start and makes the
        # same hypercall again: count it once, as for a retried `syscall`.
        rerun = env.retry_hypercall == name
        env.retry_hypercall = None
        result = self._k.dispatch(env, BY_NAME[name], args, count=not rerun, kernel=self.kernel_mode, guest=rerun)
        if result is self._k.RETRY:
            env.retry_hypercall = name
            raise Blocked(name)
        return result

    # ------------------------------------------------------------- memory
    def read(self, va: int, n: int) -> bytes:
        try:
            return self._env.space.read(va, n)
        except HypercallError as e:
            if e.errno != Errno.EFAULT or not self._page_in(va, n, False):
                raise LibFault(e.errno, e.detail) from None
        try:
            return self._env.space.read(va, n)
        except HypercallError as e:
            raise LibFault(e.errno, e.detail) from None

    def write(self, va: int, data: bytes) -> None:
        try:
            self._env.space.write(va, data)
            return
        except HypercallError as e:
            if e.errno != Errno.EFAULT or not self._page_in(va, len(data), True):
                raise LibFault(e.errno, e.detail) from None
        try:
            self._env.space.write(va, data)
        except HypercallError as e:
            raise LibFault(e.errno, e.detail) from None

    def _page_in(self, va: int, n: int, write: bool) -> bool:
        """Ask the pager for each page of [va, va+n) the access cannot use; True if all were fixed."""
        if self.pager is None or self._paging or n <= 0 or va < 0 or va + n > USER_TOP:
            return False
        space = self._env.space
        self._paging = True  # the pager's own accesses (page-table reads) do not page in
        try:
            for page in range(va & ~(PAGE_SIZE - 1), va + n, PAGE_SIZE):
                t = space.translate(page)
                if (t is None or not t.user or (write and not t.writable)) and not self.pager(page, write):
                    return False
        finally:
            self._paging = False
        return True

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def write_u64(self, va: int, value: int) -> None:
        self.write(va, (value & _MASK).to_bytes(8, "little"))

    def read_cstr(self, va: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string (without the NUL), at most ``limit`` bytes."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.read(va + len(out), min(64, PAGE_SIZE - ((va + len(out)) & (PAGE_SIZE - 1))))
            i = chunk.find(b"\0")
            if i >= 0:
                return bytes(out + chunk[:i])
            out += chunk
        raise LibFault(Errno.EINVAL, f"string at {va:#x} longer than {limit} bytes")

    # ------------------------------------------------------------ registers
    def _check_running(self) -> None:
        if self._k.current is not self._env:
            raise RuntimeError(f"environment {self._env.id} is not running")

    def regs(self) -> dict[str, int]:
        """The environment's registers now (during one of its library calls or upcalls)."""
        self._check_running()
        cpu = self._k.cpu
        g = cpu.gpr
        out = {r.name.lower(): g[i] for r, i in GPR_INDEX.items()}
        rip = cpu.regs.read(Reg.RIP)
        if self._env.reflect_rip:
            rip = self._env.reflect_rip - 2  # serving a Linux call: the program's `syscall` (any structure)
        elif LIBOS_PAGE <= rip < LIBOS_END and rip & (LIBCALL_SLOT - 1) == LIBCALL_HOOKED:
            rip -= LIBCALL_HOOKED  # inside a library call: resuming this context enters the slot afresh
        out["rip"] = rip
        out["rflags"] = cpu.regs.read(Reg.RFLAGS)
        return out

    def resume(self, regs: dict[str, int]) -> None:
        """Continue the environment in another user context (a thread switch, an upcall return).

        User-level code can load every one of these registers itself; this is
        what a libOS's assembly stub would do, no privilege is involved.
        """
        self._check_running()
        self.resumed = True
        if self.capture:
            self.captured = dict(regs)
            return
        self.apply(regs)

    def apply(self, regs: dict[str, int], rip_bias: int = 0) -> None:
        """Load ``regs`` into the vCPU (``rip_bias``: -2 inside a `syscall` hook)."""
        cpu = self._k.cpu
        g = cpu.gpr
        for r, i in GPR_INDEX.items():
            g[i] = regs[r.name.lower()] & _MASK
        cpu.regs.write(Reg.RFLAGS, user_rflags(regs.get("rflags", 0x202)))
        cpu.regs.write(Reg.RIP, regs["rip"] + rip_bias)

    def fpu_save(self) -> bytes:
        """The environment's x87/SSE state now: the 512-byte image ``fxsave`` would store.

        Like resume(), nothing a user-level library could not do itself (``fxsave``
        is unprivileged); a thread switch keeps one per thread. Only thread switches
        call it: a library call does not touch the guest's vector registers.
        """
        self._check_running()
        return self._k.cpu.fpu.save()

    def fpu_restore(self, image: bytes) -> None:
        """Load an image from fpu_save() (``fxrstor``); a malformed one is -EINVAL."""
        self._check_running()
        try:
            self._k.cpu.fpu.restore(image)
        except MachineConfigError as e:
            raise LibFault(Errno.EINVAL, str(e)) from None

    def return_address(self) -> tuple[int, int]:
        """(where the current library call returns to, the caller's RSP after the return)."""
        rsp = self._k.cpu.gpr[GPR_INDEX[Reg.RSP]]
        return self.read_u64(rsp), rsp + 8


class LibraryTable:
    """The trampoline pages, which environment links which module instance, and dispatch."""

    def __init__(self, kernel: Exokernel) -> None:
        self.k = kernel
        self._frames: dict[int, int] = {}  # module index -> trampoline frame
        self.names: dict[int, str] = {}  # module index -> name, for fault reports
        kernel.cpu.watch_code(LIBOS_PAGE, LIBOS_END)

    def port(self, env: Env) -> LibPort:
        if env.port is None:
            env.port = LibPort(self.k, env)
        return env.port

    def _frame(self, index: int, entries: list[Entry]) -> int:
        f = self._frames.get(index)
        if f is None:
            f = self.k.frames.alloc(EXO, FrameType.NORMAL, kind=FrameKind.TRAMPOLINE)
            self.k.frames.refs[f] = 1  # the exokernel's own reference: never freed
            page = bytearray(b"\xcc" * PAGE_SIZE)  # int3 between slots: a stray jump traps
            local = {e.slot for e in entries if not getattr(e, "routed", True)}
            for slot in range(SLOTS_PER_PAGE):
                code = LIBCALL_CODE if slot in local else self.k.structure_slot
                page[slot * LIBCALL_SLOT : slot * LIBCALL_SLOT + len(code)] = code
            self.k.machine.memory.write(f << PAGE_SHIFT, bytes(page))
            self.k.cpu.flush_code()
            self._frames[index] = f
        return f

    def link(self, env: Env, index: int, instance: object, entries: list[Entry],
             hypercalls: frozenset[str]) -> None:
        """Map module ``index``'s trampoline page into ``env`` and route its slots to ``entries``."""
        if not 0 <= index < MAX_MODULES:
            raise ValueError(f"module index {index} outside 0..{MAX_MODULES - 1}")
        va = LIBOS_PAGE + index * PAGE_SIZE
        env.space.map(va, self._frame(index, entries), PTE_P | PTE_U)  # read + execute
        for e in entries:
            env.libcalls[va + e.slot * LIBCALL_SLOT] = e
        env.modules[index] = instance
        env.allowed = (env.allowed or BASE_HYPERCALLS) | hypercalls
        if self.k.structures is not None:
            self.k.structures.map_into(env)
        self.k.flush_if_current(env)

    # ---------------------------------------------------------------- dispatch
    def call(self, env: Env, address: int) -> None:
        """The code hook: guest code reached ``address`` in the trampoline range."""
        st = self.k.structures
        if st is not None:
            # Only in the state the structure put the environment in; a guest that
            # jumps here by itself just runs the page's instructions (and faults).
            if address == STRUCT_GK_ENTRY and env.pv_call is not None and env.pv_call[0] is not None:
                st.guest_kernel_entry(env)
            elif address == STRUCT_GK_FAULT and env.pv_fault is not None:
                st.guest_kernel_fault(env)
            elif address == STRUCT_SERVER_DISPATCH and env.is_server and env.request is not None:
                st.server_dispatch(env)
        if address & (LIBCALL_SLOT - 1) == LIBCALL_HOOKED:
            entry = env.libcalls.get(address - LIBCALL_HOOKED)
            if entry is None or env.libcall_rsp != self.k.cpu.gpr[_RSP]:
                return  # resumed after the call ran (its `jmp` returns), or not a library-call slot
            env.libcall_rsp = None
        else:
            entry = env.libcalls.get(address)
            if entry is None:
                return  # not an entry point: the int3 there traps and reports it
            if st is not None and entry.routed:
                return  # another structure: the slot's own instructions make the call
            env.libcall_rsp = self.k.cpu.gpr[_RSP]  # a call enters the slot: run it at LIBCALL_HOOKED
            return
        cpu = self.k.cpu
        g = cpu.gpr
        result = self.run_entry(env, entry, [g[i] for i in LIBCALL_ARGS[: entry.nargs]] if entry.nargs else ())
        port = env.port
        if result is self.k.RETRY:
            env.libcall_rsp = g[_RSP]  # it runs again when the environment is woken
            return
        if port.resumed or not env.alive:
            return
        g[0] = (result or 0) & _MASK
        if cpu.stop_requested:
            try:
                port.return_address()
            except LibFault:
                # The caller's stack is not readable: the return itself would fault.
                self.k.abort(env, "bad stack at a library call", f"RSP {g[_RSP]:#x} is not readable")
                return
        g[_RSP] += 8  # pop the return address: the slot's `jmp qword ptr [rsp-8]` takes it

    def _run_traced(self, env: Env, entry: Entry, args, tr) -> object:
        """run_entry with a span in the trace: the call's arguments and result (or that it waited)."""
        self.k.acct.count("libcall", env.id, entry.name, trace=False)
        span = tr.resume_libcall(env.id, entry.name) or \
            tr.begin("libcall", env.id, entry.name, {f"a{i}": v for i, v in enumerate(args)})
        result = self.run_entry(env, entry, args, count=False)
        if result is self.k.RETRY and env.alive:
            tr.libcall_waits(span)  # the call runs again from the start when woken: one span, waits included
            return result
        port = env.port
        tr.libcall_done(span, None if port is not None and port.resumed else result)
        return result

    def run_entry(self, env: Env, entry: Entry, args: list[int], count: bool = True) -> object:
        """Run a module entry for ``env``: its result, or RETRY (the vCPU was stopped to wait)."""
        tr = self.k.acct.tracer
        if tr is not None and count:
            return self._run_traced(env, entry, args, tr)
        if count:
            self.k.acct.count("libcall", env.id, entry.name)
        port = env.port or self.port(env)
        port.resumed = False
        try:
            return entry.fn(*args)
        except Blocked:
            self.k.cpu.stop("libcall-blocked")  # RIP stays put: the call runs again
            return self.k.RETRY
        except LibFault as e:
            return -e.errno
        except Exception as e:  # noqa: BLE001 - a module's bug must not take the exokernel down
            # The exception and where in the module it was raised (not the message twice).
            where = raised_at(e)
            detail = f"{type(e).__name__}: {e}" + (f", {where}" if where else "")
            self.k.abort(env, f"libOS error in {entry.name}", detail,
                         reason="a bug in the libOS module's Python code: only this environment is stopped")
            return self.k.RETRY
