"""OS structures: the same guest binary, its service calls reaching the services four ways.

A guest asks for an OS service with a plain ``call`` to a libOS entry point
(``LIB_<MODULE>_<ENTRY>``). What the 16-byte trampoline slot there holds, and
so which instructions the guest really executes, depends on the structure the
machine was booted with (``exo boot --structure``):

``exokernel``   ``ret``. The library runs in the caller's protection domain
                (a code hook on the slot runs the Python module): no ring
                transition; the library makes hypercalls only for protected
                resources.
``monolithic``  ``mov r10, rcx; mov eax, NR_SVC; syscall; ret``: a trap into a
                service running in the kernel. The service's own accesses to
                the console, memory, ... are kernel-internal calls: they are
                checked as before but are not ring transitions.
``xen-pv``      the same ``syscall``, taken by the hypervisor, which bounces it
                to the paravirtualised guest kernel's entry (an upcall), where
                the service runs and makes real hypercalls for privileged
                work; the guest kernel returns to the application with an
                ``svc_return`` hypercall (Xen's HYPERVISOR_iret).
``microkernel`` the same ``syscall`` is an IPC call to a server environment
                that runs the service (a context switch), which replies and
                waits for the next request with another ``syscall`` (a second
                context switch back to the client), L4-style call/reply_wait.
                The server reaches the client's buffers as a kernel IPC copy
                would; its own buffers live in its own address space.

Ring crossings per event kind (docs/experiments.md): hypercall and syscall 2
(enter and leave), trap 1, upcall 1, interrupt 2, context switch 0 (it happens
inside the kernel), library call and kernel-internal call 0. So a service call
costs 0 crossings under exokernel (plus 2 per hypercall its library makes), 2
under monolithic, 4 under xen-pv (trap into the hypervisor, bounce upcall,
svc_return hypercall; plus 2 per hypercall of the guest kernel) and 4 under
microkernel (ipc_call and the server's reply_wait) with 2 context switches.

A Linux program's own `syscall`s (the posix personality, issue 15) take the same four paths
(REFLECT_PATH below): reflected in its domain, served in ring 0, bounced to the guest kernel,
or an IPC to the POSIX server, which acts with capabilities over its client (ReflectPort).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo.abi import LIBCALL_CODE, LIBOS_DATA, LIBOS_DATA_STRIDE, LIBOS_END, LIBOS_PAGE, EnvStatus, Errno
from exo.errors import HypercallError
from exo.frames import EXO, FrameKind, FrameType
from hw.memory import PAGE_SHIFT, PAGE_SIZE
from hw.paging import PTE_NX, PTE_P, PTE_U, PTE_W
from hw.regs import GPR_INDEX, Reg, user_rflags

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel

STRUCTURES = ("exokernel", "monolithic", "xen-pv", "microkernel")
CROSSINGS = {"hypercall": 2, "syscall": 2, "reflect": 2, "trap": 1, "upcall": 1, "interrupt": 2,
             "context_switch": 0, "libcall": 0, "kcall": 0}  # fmt: skip


# The transitions one Linux system call (a reflected `syscall`, issue 15) takes per structure:
# exokernel: the exokernel redirects it to the libOS in the caller's domain (Aegis/Xok trap
# redirection: one `reflect`, in and out); monolithic: a system call served in ring 0;
# xen-pv: Xen takes the `syscall` and bounces it to the guest kernel's callback, which returns
# with HYPERVISOR_iret (svc_return, counted as its hypercall); microkernel: an IPC call to a POSIX
# server environment, which serves it with capabilities over its client (ReflectPort) and
# replies (seL4's UnknownSyscall fault IPC, whose reply may set the caller's registers).
REFLECT_PATH: dict[str, tuple[str, ...]] = {
    "exokernel": ("reflect",),
    "monolithic": ("syscall",),
    "xen-pv": ("trap", "upcall"),
    "microkernel": (),  # an ipc_call hypercall to the POSIX server, counted as such (ipc_reflected)
}


def crossings(transitions: dict[str, int]) -> int:
    """Ring crossings implied by transition counts."""
    return sum(CROSSINGS.get(k, 0) * n for k, n in transitions.items())

# The structure page: the last trampoline page (index 14) holds the Xen-PV guest
# kernel's entry and the microkernel servers' loop.
STRUCT_PAGE = LIBOS_END - PAGE_SIZE
GK_ENTRY = STRUCT_PAGE  # xen-pv: the service runs here (code hook), then svc_return
GK_FAULT = STRUCT_PAGE + 0x80  # xen-pv: the guest kernel's fault handler runs here, then svc_return
SERVER_LOOP = STRUCT_PAGE + 0x100  # microkernel: reply_wait; dispatch; jmp loop
SERVER_DISPATCH = SERVER_LOOP + 10  # the `nop` after the reply_wait syscall
SERVER_STACK_TOP = 0x0000_7FFF_FFF0_0000
_MASK = 0xFFFF_FFFF_FFFF_FFFF
FAULT_REPLY: dict[str, int] = {}  # reply_regs of a pager's reply: the client's registers stay as they are
SVC_ARGS = tuple(GPR_INDEX[r] for r in (Reg.RDI, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8, Reg.R9))


def slot_code(structure: str, nr_svc: int) -> bytes:
    """What one trampoline slot holds under ``structure``."""
    if structure == "exokernel":
        return LIBCALL_CODE  # a library call (exo/libcall.py)
    # mov r10, rcx (the 4th argument: `syscall` clobbers RCX); mov eax, NR_SVC; syscall; ret
    return b"\x49\x89\xca" + b"\xb8" + nr_svc.to_bytes(4, "little") + b"\x0f\x05" + b"\xc3"


SVC_SYSCALL_OFFSET = 8  # where the `syscall` sits in a slot


def struct_page(nr_return: int, nr_reply_wait: int) -> bytes:
    page = bytearray(b"\xcc" * PAGE_SIZE)
    gk = b"\x90" + b"\xb8" + nr_return.to_bytes(4, "little") + b"\x0f\x05"  # nop(hooked); mov eax; syscall
    page[0 : len(gk)] = gk
    page[GK_FAULT - STRUCT_PAGE : GK_FAULT - STRUCT_PAGE + len(gk)] = gk
    # loop: mov rdi, rax; mov eax, NR_REPLY_WAIT; syscall; nop(hooked dispatch); jmp loop
    loop = b"\x48\x89\xc7" + b"\xb8" + nr_reply_wait.to_bytes(4, "little") + b"\x0f\x05" + b"\x90" + b"\xeb\xf3"
    off = SERVER_LOOP - STRUCT_PAGE
    page[off : off + len(loop)] = loop
    assert loop[10] == 0x90 and SERVER_DISPATCH - STRUCT_PAGE == off + 10
    return bytes(page)


class ServerPort:
    """The port a microkernel server uses while serving one client.

    Hypercalls are the server's own; the module's private region (LIBOS_DATA) is
    the server's memory; any other address is the client's buffer, reached as a
    kernel IPC copy would reach it.
    """

    def __init__(self, server_port, client_port, index: int) -> None:
        self.server, self.client = server_port, client_port
        self.Fault = client_port.Fault
        # Only the served module's own region is the server's; every other address
        # (the client's heap, stack, image) is the client's.
        self.lo = LIBOS_DATA + index * LIBOS_DATA_STRIDE
        self.hi = self.lo + LIBOS_DATA_STRIDE

    @property
    def env_id(self) -> int:
        return self.client.env_id

    def trace_thread(self, tid: int, name: str) -> None:
        self.client.trace_thread(tid, name)  # the client's threads are switched

    def _side(self, va: int):
        return self.server if self.lo <= va < self.hi else self.client

    def hypercall(self, name: str, *args: int) -> int:
        return self.server.hypercall(name, *args)

    def read(self, va: int, n: int) -> bytes:
        return self._side(va).read(va, n)

    def write(self, va: int, data: bytes) -> None:
        self._side(va).write(va, data)

    def read_u64(self, va: int) -> int:
        return self._side(va).read_u64(va)

    def write_u64(self, va: int, value: int) -> None:
        self._side(va).write_u64(va, value)

    def read_cstr(self, va: int, limit: int = 4096) -> bytes:
        return self._side(va).read_cstr(va, limit)

    def regs(self):
        raise RuntimeError("a microkernel server cannot see its client's registers")

    def resume(self, regs) -> None:
        raise RuntimeError("a microkernel server cannot switch its client's threads")

    def return_address(self):
        raise RuntimeError("a microkernel server has no client call frame")


class ReflectPort(ServerPort):
    """What the POSIX server uses while it serves one client's Linux call (microkernel structure).

    A microkernel's POSIX server holds the capabilities of the processes it serves: to their
    memory (read and written as a kernel IPC copy would: every address is the client's, since the
    process state is the libOS's own), to their address spaces and children (a hypercall the
    server makes acts on the client: Mach's task port, seL4's TCB and VSpace capabilities), to
    their registers (the reply to seL4's UnknownSyscall fault sets them: fork, execve and signal
    delivery need that). The hypercalls are counted as the server's. One that must wait makes the
    client wait, with its call run again when woken, so one process waiting in wait4 does not
    stop the server from serving the others.
    """

    def __init__(self, k: Exokernel, server: Env, client: Env) -> None:
        super().__init__(k.libs.port(server), k.libs.port(client), 0)
        self.k, self.server_env, self.client_env = k, server, client
        self.resumed = False
        self.new_regs: dict[str, int] | None = None

    def _side(self, va: int):
        return self.client  # the client's memory, all of it (ServerPort keeps the module's region)

    def hypercall(self, name: str, *args: int) -> int:
        from exo.hypercalls import BY_NAME

        k, client = self.k, self.client_env
        h = BY_NAME[name]
        if client.allowed is not None and name not in client.allowed:
            return -Errno.EPERM
        if client.retry_hypercall == name:
            client.retry_hypercall = None  # the call that made the client wait, run again: counted once
        else:
            k.acct.hypercall(self.server_env.id, name)
        try:
            result = h.impl(k, client, *args)
        except HypercallError as e:
            return -e.errno
        if result is k.RETRY:
            from exo.libcall import Blocked

            # The client, not the server, waits: its `syscall` runs again when it is woken, and
            # the server takes the next request meanwhile (server_dispatch sees RETRY).
            client.retry_hypercall = name
            raise Blocked(name)
        return result

    def regs(self) -> dict[str, int]:
        """The client's registers at its `syscall` (from its saved context)."""
        cpu, ctx = self.k.cpu, self.client_env.ctx
        out = {r.name.lower(): cpu.context_read(ctx, r) for r in GPR_INDEX}
        out["rip"] = self.client_env.reflect_rip - 2
        out["rflags"] = cpu.context_read(ctx, Reg.RFLAGS)
        return out

    def resume(self, regs: dict[str, int]) -> None:
        """The reply sets the client's registers (execve, a signal handler, another thread)."""
        self.resumed = True
        self.new_regs = dict(regs)

    def _with_client(self, fn):
        """Run ``fn`` with the client's context loaded (its FPU state lives in the saved context)."""
        cpu = self.k.cpu
        mine = cpu.new_context()
        cpu.save(mine)
        cpu.restore(self.client_env.ctx)
        try:
            return fn()
        finally:
            cpu.save(self.client_env.ctx)
            cpu.restore(mine)

    def fpu_save(self) -> bytes:
        return self._with_client(self.k.cpu.fpu.save)

    def fpu_restore(self, image: bytes) -> None:
        self._with_client(lambda: self.k.cpu.fpu.restore(image))

    def return_address(self):
        raise RuntimeError("a POSIX server's client made a `syscall`, not a call")


class Structures:
    """The non-exokernel service paths; exo/libcall.py handles the exokernel one."""

    def __init__(self, kernel: Exokernel, name: str, nr_return: int, nr_reply_wait: int) -> None:
        if name not in STRUCTURES:
            raise ValueError(f"unknown structure {name!r} (choose: {', '.join(STRUCTURES)})")
        self.k = kernel
        self.name = name
        self.servers: dict[int, Env] = {}  # module index -> server environment (microkernel)
        self.waiting: dict[int, list[int]] = {}  # server id -> clients whose Linux call found it busy
        f = kernel.frames.alloc(EXO, FrameType.NORMAL, kind=FrameKind.STRUCT)
        kernel.frames.refs[f] = 1
        kernel.machine.memory.write(f << PAGE_SHIFT, struct_page(nr_return, nr_reply_wait))
        self.page_frame = f

    # ---------------------------------------------------------------- linking
    def map_into(self, env: Env) -> None:
        env.space.map(STRUCT_PAGE, self.page_frame, PTE_P | PTE_U)

    def server_for(self, index: int, name: str, client: Env) -> Env:
        """The server environment of module ``index`` (microkernel), made on first use."""
        server = self.servers.get(index)
        if server is not None and server.alive:
            return server
        k = self.k
        server = k.create_env(f"{name}-server", system=True)  # shared by every app: no app's tenant
        self.map_into(server)
        for va in range(SERVER_STACK_TOP - 4 * PAGE_SIZE, SERVER_STACK_TOP, PAGE_SIZE):
            frame = k.frames.alloc(server.id, FrameType.NORMAL, kind=FrameKind.STACK)
            server.space.map(va, frame, PTE_P | PTE_U | PTE_W | PTE_NX)
        k.cpu.context_write(server.ctx, Reg.RIP, SERVER_LOOP)
        k.cpu.context_write(server.ctx, Reg.RSP, SERVER_STACK_TOP)
        server.is_server = True
        server.disk_grants = list(client.disk_grants)  # it serves its clients' disk ranges
        self.servers[index] = server
        k.make_runnable(server)  # it runs to its first reply_wait and waits there
        return server

    # ------------------------------------------------------------- svc (trap)
    def svc(self, env: Env) -> object:
        """The `syscall` in a trampoline slot: RIP is at it."""
        k = self.k
        cpu = k.cpu
        rip = cpu.regs.read(Reg.RIP)
        slot = rip - SVC_SYSCALL_OFFSET
        entry = env.libcalls.get(slot)
        if entry is None or self.name == "exokernel":
            raise HypercallError(Errno.ENOSYS, "svc outside a service trampoline")
        g = cpu.gpr
        args = [g[i] for i in SVC_ARGS[: entry.nargs]]
        tr = k.acct.tracer
        if tr is not None:  # the call's span (exo/trace.py), closed when it answers
            tr.service_begin(env.id, entry.name, args)
        if self.name == "monolithic":
            k.acct.count("syscall", env.id, entry.name)
            result = self._run(env, entry, args, kernel_mode=True)
            if tr is not None and result is not k.RETRY:
                tr.service_end(env.id, None if env.port.resumed else result)
            if result is not k.RETRY and env.port.resumed:
                # The call switched the environment's threads (sched parked the caller: libos/sched.py
                # block_restart), as a kernel switches to another thread when one sleeps in it; the
                # other thread's registers are loaded. Unicorn adds 2 to RIP after this hook.
                if env.alive:
                    cpu.regs.write(Reg.RIP, cpu.regs.read(Reg.RIP) - 2)
                return k.KEEP
            return result
        if self.name == "xen-pv":
            k.acct.count("trap", env.id, "syscall:" + entry.name)  # user -> hypervisor (no direct return)
            env.pv_call = (entry, args, rip + 2)
            cpu.regs.write(Reg.RIP, GK_ENTRY - 2)  # Unicorn adds 2 after the hook
            k.acct.count("upcall", env.id, "bounce:" + entry.name)  # hypervisor -> guest kernel
            return k.KEEP
        # microkernel: an IPC call to the module's server
        index = ((slot & ~(PAGE_SIZE - 1)) - LIBOS_PAGE) // PAGE_SIZE
        server = self.server_for(index, entry.name.split(".")[0], env)
        if server.request is not None:  # serving another client's call: this one comes back later
            self.waiting.setdefault(server.id, []).append(env.id)
            cpu.regs.write(Reg.RIP, rip - 2)  # Unicorn adds 2 after the hook: the `syscall` again
            k.block(env, "ipc_call")
            return k.KEEP
        k.acct.hypercall(env.id, "ipc_call")
        if tr is not None:
            tr.flow_out(env.id, server.id, "call")
        env.reflect_rip = rip + 2  # where the reply returns to; a parked thread resumes at rip
        server.request = (env.id, entry, args)
        env.status = EnvStatus.BLOCKED
        env.blocked_on = "ipc_call"
        k.wake_first(server)
        cpu.stop("ipc_call")
        return k.KEEP  # the reply sets the client's RAX

    def _run(self, env: Env, entry, args: list[int], kernel_mode: bool) -> object:
        port = self.k.libs.port(env)
        port.kernel_mode = kernel_mode
        try:
            return self.k.libs.run_entry(env, entry, args, count=False)
        finally:
            port.kernel_mode = False

    # ------------------------------------------------------------ page faults
    def fault(self, env: Env, trap) -> bool:
        """A fault the environment's library handles, taken the structure's way; False: not ours.

        monolithic: the kernel's own pager handles it in ring 0 (a trap in and a
        return out: counted as one ``syscall``; its page mapping is a ``kcall``).
        xen-pv: the trap goes to the hypervisor, is bounced to the guest kernel's
        handler (an upcall), which maps the page by hypercall and returns with
        ``svc_return``. exokernel and microkernel keep the exokernel's path (an
        upcall into the application's own library pager).
        """
        if self.name == "microkernel":
            return self._fault_to_pager(env, trap)
        if self.name not in ("monolithic", "xen-pv"):
            return False
        entry = env.libcalls.get(env.upcall_entry)
        if entry is None:
            return False
        k = self.k
        resume = trap.rip if trap.next_rip is None else trap.next_rip
        frame = k.push_frame(env, trap.vector, trap.error_code or 0, trap.cr2 or 0, resume)
        if frame is None:
            return False
        g = k.cpu.gpr
        if self.name == "monolithic":
            k.acct.count("syscall", env.id, "fault:" + trap.name)
            result = self._run(env, entry, [frame], kernel_mode=True)
            if result is k.RETRY:
                return True  # stopped: the instruction faults again when the env runs
            return True
        k.acct.count("trap", env.id, trap.name)  # into the hypervisor
        k.acct.count("upcall", env.id, "bounce:" + trap.name)  # to the guest kernel's handler
        env.pv_fault = (entry, frame)
        g[GPR_INDEX[Reg.RSP]] = frame
        g[GPR_INDEX[Reg.RDI]] = frame
        k.cpu.regs.write(Reg.RIP, GK_FAULT)
        return True

    def _fault_to_pager(self, env: Env, trap) -> bool:
        """microkernel: a page fault becomes an IPC to the environment's pager server (L4: the
        kernel sends the fault to the faulting thread's pager on its behalf), if its handler's
        module offers one (``pager_fault``, libos/memory.py). The pager maps a page it allocated
        into the client with page_grant (only the pager may) and replies; the client then runs the
        faulting instruction again. A fault the pager refuses goes, once, the exokernel's way: to
        the environment's own handler, which reports it (or delivers a signal)."""
        if env.pager_refused:
            env.pager_refused = False
            return False
        entry = env.libcalls.get(env.upcall_entry)
        instance = getattr(entry.fn, "__self__", None) if entry is not None else None
        if trap.vector != 14 or not hasattr(instance, "pager_fault"):  # #PF, served by a pager module
            return False
        k = self.k
        server = self.server_for(instance.INDEX, instance.NAME, env)
        env.pager = server.id  # the structure names each client's pager (L4: its creator does)
        k.cpu.regs.write(Reg.RIP, trap.rip)  # resumed at the faulting instruction, which runs again
        if server.request is not None:  # serving another request: the fault happens again later
            self.waiting.setdefault(server.id, []).append(env.id)
            k.block(env, "ipc_call")
            return True
        k.acct.count("trap", env.id, trap.name)  # into the kernel, which sends the fault IPC
        if k.acct.tracer is not None:
            k.acct.tracer.flow_out(env.id, server.id, "call")
        err = trap.error_code or 0
        server.request = (env.id, instance, [trap.cr2 or 0, bool(err & 2), bool(err & 1)], "fault")
        k.block(env, "ipc_call")
        k.wake_first(server)
        return True

    def _serve_fault(self, server: Env, client: Env, instance, args: list) -> None:
        """The pager server runs the client's memory module (its own hypercalls, its own scratch
        page: ServerPort) to serve one fault; the reply resumes the client."""
        k = self.k
        saved = instance.port
        instance.port = ServerPort(k.libs.port(server), k.libs.port(client), instance.INDEX)
        try:
            served = bool(instance.pager_fault(*args, client.id))
        except (instance.port.Fault, HypercallError):
            served = False
        except Exception as e:  # noqa: BLE001 - a module's bug must not take the exokernel down
            k.abort(client, "libOS error in the pager", f"{type(e).__name__}: {e}",
                    reason="a bug in the libOS module's Python code: only this environment is stopped")
            served = False
        finally:
            instance.port = saved
        server.request = None
        server.serving = client.id
        server.reply_regs = FAULT_REPLY
        client.pager_refused = not served
        k.cpu.gpr[0] = 0 if served else -Errno.EFAULT & _MASK

    def guest_kernel_fault(self, env: Env) -> None:
        """Code hook at GK_FAULT: the guest kernel's pager runs; its resume waits for svc_return."""
        entry, frame = env.pv_fault
        port = self.k.libs.port(env)
        port.capture = True
        try:
            result = self.k.libs.run_entry(env, entry, [frame], count=False)
        finally:
            port.capture = False
        if result is self.k.RETRY:
            return
        env.pv_fault = None
        env.pv_call = (None, None, None)

    # --------------------------------------------------------- xen-pv guest kernel
    def bounce_reflected(self, env: Env, args: tuple[int, ...], rip: int) -> None:
        """xen-pv: a Linux `syscall` (RIP at it) taken by the hypervisor and bounced to the guest
        kernel's syscall callback (Xen's PV syscall path); the guest kernel returns with svc_return."""
        env.pv_call = (env.reflect, args, rip + 2)
        env.pv_reflected = True
        self.k.cpu.regs.write(Reg.RIP, GK_ENTRY - 2)  # Unicorn adds 2 after the hook

    def guest_kernel_entry(self, env: Env) -> None:
        """Code hook at GK_ENTRY: the guest kernel runs the service, then svc_return."""
        entry, args, ret = env.pv_call
        port = self.k.libs.port(env)
        # The registers the service sees are the application's at its `syscall` (where a thread the
        # guest kernel parks resumes: the call runs again), and a context it loads (a thread switch,
        # execve, a signal handler) is what svc_return returns to, as the guest kernel's iret would.
        env.reflect_rip = ret
        port.capture = True
        try:
            result = self._run(env, entry, args, kernel_mode=False)
        finally:
            env.reflect_rip = 0
            port.capture = False
        if result is self.k.RETRY:
            port.captured = None
            return  # the vCPU stopped at GK_ENTRY: the guest kernel runs again when woken
        env.pv_result = result
        # Served: should the vCPU stop before the `nop` (the wall-clock timer's thread can, at any
        # moment), resuming at GK_ENTRY must not serve the call again (exo/libcall.py says why).
        env.pv_call = (None, None, env.pv_call[2])

    def svc_return(self, env: Env) -> object:
        """xen-pv: the guest kernel's iret back to the application."""
        if env.pv_call is None:
            raise HypercallError(Errno.EINVAL, "svc_return outside a bounced service call")
        _entry, _args, ret = env.pv_call
        env.pv_call = None
        reflected, env.pv_reflected = env.pv_reflected, False
        port = self.k.libs.port(env)
        if self.k.acct.tracer is not None:  # the call's span ends with the guest kernel's iret
            self.k.acct.tracer.service_end(env.id, None if port.captured is not None else env.pv_result)
        if port.captured is not None:  # the guest kernel loaded another context (a fault handler's
            regs, port.captured = port.captured, None  # return, execve, a signal handler)
            port.apply(regs, rip_bias=-2)  # Unicorn adds 2 to RIP after this hook
            return self.k.KEEP
        if not env.alive:
            return self.k.KEEP
        self.k.cpu.regs.write(Reg.RIP, ret - 2)  # Unicorn adds 2 after the hook
        if reflected:  # Linux's sysret state: RCX = return RIP, R11 = RFLAGS (as Exokernel.reflect)
            g = self.k.cpu.gpr
            g[GPR_INDEX[Reg.RCX]] = ret
            g[GPR_INDEX[Reg.R11]] = self.k.cpu.regs.read(Reg.RFLAGS)
        return env.pv_result

    # ------------------------------------------------------- microkernel server
    def ipc_reflected(self, env: Env, args: tuple[int, ...], rip: int) -> None:
        """A Linux `syscall` (RIP at it) under the microkernel structure: an IPC call to the
        POSIX server; the client waits for the reply (ReflectPort, server_dispatch)."""
        k = self.k
        entry = env.reflect
        instance = entry.fn.__self__
        server = self.server_for(instance.INDEX, instance.NAME, env)
        if server.request is not None:  # serving another client's call: this one comes back later
            self.waiting.setdefault(server.id, []).append(env.id)
            env.retrying = True
            k.cpu.regs.write(Reg.RIP, rip - 2)  # Unicorn adds 2 after the hook: the `syscall` again
            k.block(env, "ipc_call")
            return
        k.acct.hypercall(env.id, "ipc_call")
        if k.acct.tracer is not None:
            k.acct.tracer.flow_out(env.id, server.id, "call")
        server.request = (env.id, entry, list(args), True)
        env.reflect_rip = rip + 2
        env.status = EnvStatus.BLOCKED
        env.blocked_on = "ipc_call"
        k.wake_first(server)
        k.cpu.stop("ipc_call")

    def reply_wait(self, server: Env, reply: int) -> object:
        k = self.k
        if server.serving is not None:
            client = k.envs.get(server.serving)
            server.serving = None
            new_regs, server.reply_regs = server.reply_regs, None
            if client is not None and client.alive and client.blocked_on == "ipc_call":
                cpu = k.cpu
                if new_regs is FAULT_REPLY:
                    pass  # a pager's reply: the client runs its faulting instruction again, as it was
                elif new_regs is not None:  # the reply sets every register (a Linux call's new context)
                    for r in GPR_INDEX:
                        cpu.context_write(client.ctx, r, new_regs[r.name.lower()])
                    cpu.context_write(client.ctx, Reg.RIP, new_regs["rip"])
                    cpu.context_write(client.ctx, Reg.RFLAGS, user_rflags(new_regs.get("rflags", 0x202)))
                else:
                    cpu.context_write(client.ctx, Reg.RAX, reply)
                    if client.reflect_rip:  # Linux's sysret state: RCX = return RIP, R11 = RFLAGS
                        cpu.context_write(client.ctx, Reg.RCX, client.reflect_rip)
                        cpu.context_write(client.ctx, Reg.R11, cpu.context_read(client.ctx, Reg.RFLAGS))
                client.reflect_rip = 0
                tr = k.acct.tracer
                if tr is not None:  # the reply's arrow, and the end of the client's call
                    tr.flow_out(server.id, client.id, "reply")
                    tr.flow_in(client.id, "reply")
                    tr.service_end(client.id, reply if new_regs is None else None)
                k.wake_first(client)
                k.cpu.stop("ipc_reply")
        for cid in self.waiting.pop(server.id, []):  # clients that found the server busy call again
            c = k.envs.get(cid)
            if c is not None and c.alive and c.blocked_on == "ipc_call" and c.status == EnvStatus.BLOCKED:
                k.make_runnable(c)
        if server.request is None:
            return k.block_and_retry(server, "ipc_request")
        return 0

    def _serve_reflected(self, server: Env, client: Env, entry, args: list[int]) -> None:
        """Serve one Linux call for ``client`` (see ReflectPort); reply, or let the client wait."""
        k = self.k
        g = k.cpu.gpr
        instance = entry.fn.__self__
        saved = instance.port
        port = instance.port = ReflectPort(k, server, client)
        try:
            result = k.libs.run_entry(client, entry, args, count=False)  # RETRY: the client waits
        finally:
            instance.port = saved
        server.request = None
        if result is k.RETRY or not client.alive:
            # The client waits (its call runs again when woken: RIP back at its `syscall`, the
            # number in RAX), or it ended (exit, a libOS error): no reply.
            if client.alive:
                k.cpu.context_write(client.ctx, Reg.RIP, client.reflect_rip - 2)
                k.cpu.context_write(client.ctx, Reg.RAX, args[0])
                client.reflect_rip = 0
                client.retrying = True
            g[0] = 0
            return
        server.serving = client.id
        server.reply_regs = port.new_regs if port.resumed else None
        g[0] = (result or 0) & _MASK


    def _serve_with_capabilities(self, server: Env, client: Env, entry, args: list[int]) -> None:
        """Serve a call of a module whose server holds capabilities over its client (net: the
        client's NIC, its memory, where the receive ring is, and its registers), as the POSIX
        server does (ReflectPort): every module of the client runs on that port meanwhile, so the
        thread library can park the calling thread and the reply switches the client to another
        (an L4 reply that sets the registers). A call that must wait makes the client, not the
        server, wait: its `syscall` runs again when it is woken."""
        k = self.k
        g = k.cpu.gpr
        port = ReflectPort(k, server, client)
        saved = [(m, m.port) for m in client.modules.values()]
        for m, _ in saved:
            m.port = port
        try:
            result = k.libs.run_entry(client, entry, args, count=False)  # RETRY: the client waits
        finally:
            for m, p in saved:
                m.port = p
        server.request = None
        if result is k.RETRY or not client.alive:
            if client.alive:  # back at its `syscall` (RAX still holds NR_SVC): the call runs again
                k.cpu.context_write(client.ctx, Reg.RIP, client.reflect_rip - 2)
                client.reflect_rip = 0
            g[0] = 0
            return
        server.serving = client.id
        server.reply_regs = port.new_regs if port.resumed else None
        g[0] = (result or 0) & _MASK

    def server_dispatch(self, server: Env) -> None:
        """Code hook at SERVER_DISPATCH: serve the pending request."""
        k = self.k
        client_id, entry, args, *reflected = server.request
        client = k.envs.get(client_id)
        g = k.cpu.gpr
        if k.acct.tracer is not None:
            k.acct.tracer.flow_in(server.id, "call")
        if client is None or not client.alive:
            server.request = None
            g[0] = -Errno.ESRCH & _MASK
            return
        if reflected == ["fault"]:
            self._serve_fault(server, client, entry, args)
            return
        if reflected:
            self._serve_reflected(server, client, entry, args)
            return
        instance = entry.fn.__self__
        if getattr(instance, "SERVER_CAPABILITIES", False):
            self._serve_with_capabilities(server, client, entry, args)
            return
        index = instance.INDEX
        lo = LIBOS_DATA + index * LIBOS_DATA_STRIDE
        if any(lo <= a < lo + LIBOS_DATA_STRIDE for a in args):
            # A client pointer into the server's private region (its staging buffers,
            # which hold other clients' data): refused, as an address the client does not own.
            server.request = None
            server.serving = client_id
            g[0] = -Errno.EFAULT & _MASK
            return
        saved, saved_grants = instance.port, server.disk_grants
        instance.port = ServerPort(k.libs.port(server), k.libs.port(client), index)
        server.disk_grants = list(client.disk_grants)  # the server acts with its client's disk rights
        try:
            result = k.libs.run_entry(client, entry, args, count=False)
        finally:
            instance.port = saved
            server.disk_grants = saved_grants
        if result is k.RETRY:
            return  # stopped at the dispatch `nop`: served again when woken
        server.request = None
        server.serving = client_id
        g[0] = (result or 0) & _MASK
