"""Helpers for the ``hw`` tests: an assembler, a frame allocator, a recording
trap handler and a small address-space builder (fixtures are in conftest.py).

The module has a name of its own (not ``conftest``) so that test files can
import it whatever other test directories exist."""

from __future__ import annotations

import threading
from collections.abc import Callable

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from hw import Machine
from hw.cpu import RESERVED_BYTES, VCpu, link_system_tables
from hw.memory import PAGE_SIZE, PhysicalMemory
from hw.paging import PTE_NX, PTE_U, PTE_W, map_page
from hw.regs import Reg
from hw.traps import Trap

RAM = 16 << 20

# Virtual layout used by the Guest helper (all far from the machine's own low pages).
CODE_VA = 0x40_0000
DATA_VA = 0x60_0000
STACK_VA = 0x7F_0000  # one page; RSP starts at its top
STACK_TOP = STACK_VA + PAGE_SIZE

USER_CODE = PTE_U  # present, user, read-only, executable
USER_DATA = PTE_U | PTE_W | PTE_NX  # present, user, writable, not executable
USER_RODATA = PTE_U | PTE_NX

_KS = Ks(KS_ARCH_X86, KS_MODE_64)


def asm(src: str, addr: int = 0) -> bytes:
    """Assemble Intel-syntax x86-64 (``;`` or newlines separate statements) for ``addr``."""
    encoding, _ = _KS.asm(src, addr)
    assert encoding, f"keystone produced nothing for {src!r}"
    return bytes(encoding)


class FrameAllocator:
    """Bump allocator of zeroed 4 KiB physical frames above the machine's reserved area."""

    def __init__(self, mem: PhysicalMemory, start: int = RESERVED_BYTES) -> None:
        self.mem = mem
        self.next = start

    def __call__(self) -> int:
        pa = self.next
        self.next += PAGE_SIZE
        self.mem.zero(pa, PAGE_SIZE)
        return pa


class Recorder:
    """A TrapHandler that records every event.

    By default every syscall and trap stops the CPU. ``on_syscall`` /
    ``on_trap`` replace that behaviour (they are called after recording).
    """

    def __init__(
        self,
        on_syscall: Callable[[VCpu], None] | None = None,
        on_trap: Callable[[VCpu, Trap], None] | None = None,
    ) -> None:
        self.syscalls: list[dict[str, int]] = []
        self.traps: list[Trap] = []
        self.on_syscall = on_syscall
        self.on_trap = on_trap

    def syscall(self, cpu: VCpu) -> None:
        self.syscalls.append(cpu.read_gprs())
        if self.on_syscall is not None:
            self.on_syscall(cpu)
        else:
            cpu.stop("syscall")

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        self.traps.append(trap)
        if self.on_trap is not None:
            self.on_trap(cpu, trap)
        else:
            cpu.stop("trap")


class Guest:
    """One user address space on a machine: its own PML4, a stack page, helpers to load code."""

    def __init__(self, m: Machine, alloc: FrameAllocator) -> None:
        self.m = m
        self.mem = m.memory
        self.alloc = alloc
        self.cr3 = alloc()
        link_system_tables(self.mem, self.cr3)  # the CPU's descriptor tables, as every OS address space has
        self.ctx = m.cpu.new_context()
        self.ctx.cr3 = self.cr3
        self.stack_pa = self.map(STACK_VA, USER_DATA)

    def map(self, va: int, flags: int, pa: int | None = None) -> int:
        """Map ``va`` (to a fresh zeroed frame unless ``pa`` is given); return the frame."""
        if pa is None:
            pa = self.alloc()
        map_page(self.mem, self.cr3, va, pa, flags, self.alloc)
        return pa

    def load(self, code: str | bytes, va: int = CODE_VA, flags: int = USER_CODE) -> int:
        """Map fresh frames at ``va`` holding ``code`` (assembled at ``va`` if a string)."""
        data = asm(code, va) if isinstance(code, str) else code
        first = None
        for off in range(0, max(len(data), 1), PAGE_SIZE):
            pa = self.map(va + off, flags)
            self.mem.write(pa, data[off : off + PAGE_SIZE])
            first = pa if first is None else first
        self.m.cpu.flush_code()
        assert first is not None
        return first

    def enter(self, rip: int = CODE_VA, **regs: int) -> None:
        """Load this address space's context on the vCPU and set RIP, RSP and ``regs``."""
        cpu = self.m.cpu
        cpu.restore(self.ctx)
        cpu.regs.write(Reg.RIP, rip)
        cpu.regs.write(Reg.RSP, STACK_TOP)
        for name, value in regs.items():
            cpu.regs.write(Reg[name.upper()], value)


def run_code(
    guest: Guest, code: str, budget: int = 100_000, handler: Recorder | None = None, **regs: int
):
    """Load ``code`` at CODE_VA, enter it with ``regs`` and run one slice."""
    guest.load(code)
    if handler is not None:
        guest.m.cpu.handler = handler
    guest.enter(**regs)
    return guest.m.cpu.run(budget)


class Watchdog:
    """Stop a runaway vCPU after ``seconds`` so that a lost preemption fails a test instead of hanging it.

    Use as a context manager around wall-clock runs. Once it has fired it keeps
    stopping the vCPU until the block ends, and the block then fails.
    """

    def __init__(self, cpu: VCpu, seconds: float = 30.0) -> None:
        self.cpu = cpu
        self.seconds = seconds
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.fired = True
        while not self._done.wait(0.05):
            self.cpu.uc.emu_stop()

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        assert not self.fired, "the vCPU ran away: a wall-clock preemption was lost"
