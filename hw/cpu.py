"""The vCPU: Unicorn x86-64 in long mode with real paging, rings and traps.

Everything Unicorn gets wrong or leaves implicit is handled here so that the OS
above sees a plain x86-64 CPU (see shared/UNICORN_NOTES.md for the measured
facts behind each rule):

* CPL 3 is entered once through a ring-0 ``iretq`` stub; that context becomes
  the template every guest context is cloned from (writing CS from Python does
  not change the CPL in 64-bit mode).
* Unicorn has no IDT delivery: exceptions, ``int n`` and ``syscall`` arrive in
  hooks. The #PF error code, the "is a software interrupt" flag and the
  "exception in flight" marker live in the saved CPU state; their offsets are
  found by provoking known faults at start-up (``_probe_fault_layout``) and the
  marker is cleared after every fault, or the second fault arrives as a double
  fault and the third stops emulation silently.
* ``in``/``out`` do not fault at CPL 3 in Unicorn: they are reported as I/O
  traps so that the OS can refuse them.
* Hooks are added once and never deleted during a run.
* SSE is enabled and the FPU initialised as a 64-bit OS does (Unicorn's reset leaves
  CR4.OSFXSR clear, so every SSE instruction is #UD, and FCW/MXCSR 0); CPUID hides the
  features a ring-3 guest cannot use here (``_CPUID_HIDE``).
* Retired instructions are read from Unicorn's own counter (``emu_counter`` in
  ``struct uc_struct``, maintained whenever ``emu_start`` runs with count > 0),
  whose offset is probed at start-up as well.
* A stopped context retires nothing more (``_fence``). ``emu_stop`` only ends
  emulation at the next translation-block boundary; a hook called from inside
  a block (``in``/``out``) that stops the CPU would let
  the rest of the block run under the wall clock (under the virtual clock the
  per-instruction count hook stops it at once). The fence saves the context
  at the trap, points CR3 at an empty PML4 so that every load, store and
  segment load left in the block faults instead of retiring, and gives the
  hooks a handler that delivers nothing; the saved context is put back when
  ``emu_start`` returns. ``syscall``, exceptions and ``int n`` end the block
  themselves and need no fence.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
from typing import Protocol

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from hw.errors import MachineConfigError, MachineProbeError
from hw.fpu import Fpu, initial_image
from hw.memory import PAGE_SIZE, PhysicalMemory
from hw.paging import PTE_NX, PTE_P, PTE_U, PTE_W, translate
from hw.regs import GPRS, Reg, Registers
from hw.timer import SliceTimer
from hw.traps import HAS_ERROR_CODE, Trap, TrapKind, Vector, decode_fsw, decode_mxcsr

# --- low physical memory used by the machine itself (like a PC's BIOS area) ---
RESERVED_BYTES = 0x10000  # the OS allocates frames above this
GDT_BASE = 0x1000
_STUB = 0x2000  # ring-0 code: iretq
_STACK = 0x3000  # ring-0 stack for the iretq frame
_USER = 0x4000  # user code page for boot and probes
_PML4, _PDPT, _PD, _PT = 0x5000, 0x6000, 0x7000, 0x8000
_DATA = 0x9000  # user data page (RW, NX) for probes
_RODATA = 0xA000  # user read-only page for probes
_DEAD_ROOT = 0xB000  # an all-zero PML4: nothing is mapped through it (the stop fence)
_SYS_PDPT, _SYS_PD, _SYS_PT = 0xC000, 0xD000, 0xE000  # the system tables' one chain (below)

# Where the CPU finds its descriptor tables: PML4 slot 511 (the top of the kernel half),
# through ONE chain of machine frames (PDPT, PD, PT above) that every address space links
# to (``link_system_tables``; exo/vm.py AddressSpace), so it costs no frame per address
# space. The CPU reads the GDT with supervisor rights on every segment load, iretq and far
# return (SDM Vol. 3A 4.6, implicit supervisor-mode accesses): U=0 keeps ring 3 out (#PF
# with U=1) while the CPU reaches it from every address space. The GDT page is read-only
# and NX: its descriptors' accessed bits are preset, so the CPU never writes them back
# (SDM Vol. 3A 3.4.5.1), and with CR0.WP nothing else can.
SYSTEM_SLOT = 511
GDT_LINEAR = 0xFFFF_FF80_0000_0000 | GDT_BASE  # slot 511, the GDT frame's page number again
SYSTEM_PML4E = _SYS_PDPT | PTE_P | PTE_W  # supervisor only

# GDT (SDM Vol. 3A 3.4.5): null, kernel code (L=1), kernel data, user data, user code (L=1).
# The user selectors are laid out as SYSRET expects: data at STAR+8, code at STAR+16.
SEL_KCODE, SEL_KDATA, SEL_UDATA, SEL_UCODE = 0x08, 0x10, 0x1B, 0x23
_GDT = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF, 0x00AFFB000000FFFF)
GDT_DESCRIPTORS = _GDT  # read-only view for fault reports (exo/report.py explains #GP(selector))

MSR_EFER = 0xC0000080
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_NE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 5
CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
# As a 64-bit OS sets them (SDM Vol. 3A 2.5 and 13.1.3): x87 errors are reported as #MF
# (NE), WAIT honours TS (MP), x87 is not emulated (EM clear); SSE is enabled (OSFXSR) and
# unmasked SIMD floating-point exceptions are #XM, not #UD (OSXMMEXCPT). Without OSFXSR
# every SSE instruction is #UD, and gcc emits SSE for ordinary C (string copies, doubles).
BOOT_CR0 = CR0_PE | CR0_MP | CR0_NE | CR0_WP | CR0_PG
BOOT_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
# The FPU state every context starts with, as Linux's fpstate_init / FNINIT give it
# (SDM Vol. 1 8.1.5 and 10.2.3.1): all x87 and SIMD exceptions masked, round to
# nearest, 64-bit x87 precision. Unicorn's reset leaves both words 0 (all unmasked).
FCW_INIT, MXCSR_INIT = 0x037F, 0x1F80
RFLAGS_IF = 1 << 9

# What an access that Unicorn could not complete was (for the machine-check report).
_MC_ACCESS = {
    UC_ERR_READ_UNMAPPED: ("read", False),
    UC_ERR_WRITE_UNMAPPED: ("write", True),
    UC_ERR_FETCH_UNMAPPED: ("instruction fetch", False),
}

# Floating-point faults: what the CPU state says about them (read once, on the fault path).
_FP_FAULTS = {
    Vector.MF: lambda uc: decode_fsw(uc.reg_read(X.UC_X86_REG_FPSW), uc.reg_read(X.UC_X86_REG_FPCW)),
    Vector.XM: lambda uc: decode_mxcsr(uc.reg_read(X.UC_X86_REG_MXCSR)),
}

# CPUID bits this machine clears, by (leaf, subleaf) and register (SDM Vol. 2A, CPUID, tables
# 3-10, 3-11 and 3-8). Every other bit is the emulated CPU model's own: each feature it
# advertises was run at ring 3 and executes (tests/hw/test_hw_fpu.py, docs/guests.md). These do not:
# XSAVE needs CR4.OSXSAVE and RDFSBASE & co. need CR4.FSGSBASE, which a guest cannot set (#UD);
# RDRAND executes but returns host entropy, which no virtual clock can replay.
_CPUID_HIDE: dict[tuple[int, int], dict[int, int]] = {
    (1, 0): {X.UC_X86_REG_ECX: 1 << 26 | 1 << 30},  # XSAVE, RDRAND
    (7, 0): {X.UC_X86_REG_EBX: 1 << 0},  # FSGSBASE
}
_CPUID_OUT = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)
_CPUID_REG32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX)

# Vectors that ring 3 may raise with `int n` (a real IDT's DPL=3 gates).
DEFAULT_USER_VECTORS = frozenset({Vector.BP, Vector.OF, 0x80})

_ctx_alloc = uclib.uc_context_alloc
_ctx_save = uclib.uc_context_save
_ctx_restore = uclib.uc_context_restore
_ctx_free = uclib.uc_context_free
_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)  # uc_cb_insn_syscall_t
_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)  # uc_cb_hookcode_t


class TrapHandler(Protocol):
    """What the OS implements to receive traps from the vCPU."""

    def syscall(self, cpu: VCpu) -> None:
        """A `syscall` instruction; RIP is at the instruction, execution resumes at RIP+2."""

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        """Any other trap. Stop the CPU, or fix things and return to retry/resume."""

    def code(self, cpu: VCpu, address: int) -> None:
        """Guest code is about to execute ``address`` inside a range given to ``watch_code``.

        The instruction there runs after the call unless the handler stops the
        CPU (then it runs when the CPU is resumed) or writes RIP.
        """


class RunExit:
    """How a slice ended (a plain class: see hw/traps.py on start-up)."""

    __slots__ = ("reason", "retired", "stop_reason")

    def __init__(self, reason: str, retired: int | None, stop_reason: object = None) -> None:
        self.reason = reason  # "stopped" (the OS asked), "preempted" (slice over)
        self.retired = retired  # instructions retired in this slice (None in wall mode)
        self.stop_reason = stop_reason

    def __repr__(self) -> str:
        return f"RunExit(reason={self.reason!r}, retired={self.retired!r}, stop_reason={self.stop_reason!r})"


def link_system_tables(memory: PhysicalMemory, root: int) -> None:
    """Make the descriptor tables reachable (by the CPU only) through the PML4 at ``root``.

    Every address space a context may run in needs this entry, or a segment load,
    ``iretq`` or far return at ring 3 becomes a #PF at the GDT (UNICORN_NOTES trap 11).
    The chain below it is the machine's, shared: freeing an address space must not free it.
    """
    memory.write_u64(root + SYSTEM_SLOT * 8, SYSTEM_PML4E)


class CpuContext:
    """A saved guest CPU state (registers, segments with CPL, FPU) plus its CR3."""

    __slots__ = ("ptr", "cr3", "__weakref__")

    def __init__(self, handle: ctypes.c_void_p) -> None:
        p = ctypes.c_void_p()
        if _ctx_alloc(handle, ctypes.byref(p)) != 0:
            raise MemoryError("uc_context_alloc failed")
        self.ptr = p
        self.cr3 = 0

    def __del__(self) -> None:
        if self.ptr:
            _ctx_free(self.ptr)
            self.ptr = None


class _BootHandler:
    """Handler used before the OS attaches: every trap stops the CPU."""

    def __init__(self) -> None:
        self.traps: list[Trap] = []

    def syscall(self, cpu: VCpu) -> None:
        cpu.stop("syscall")

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        self.traps.append(trap)
        cpu.stop("trap")


class _Fenced:
    """Handler while a stopped context drains its translation block: the OS hears nothing."""

    def syscall(self, cpu: VCpu) -> None:
        pass

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        pass

    def code(self, cpu: VCpu, address: int) -> None:
        pass


_FENCED = _Fenced()


class VCpu:
    """One x86-64 CPU over ``PhysicalMemory``; guest code always runs at CPL 3."""

    link_system_tables = staticmethod(link_system_tables)  # what every OS address space needs

    def __init__(self, memory: PhysicalMemory, clock: str = "virtual", slice_seconds: float = 0.01):
        if clock not in ("virtual", "wall"):
            raise MachineConfigError(f"clock must be 'virtual' or 'wall', got {clock!r}")
        if not isinstance(slice_seconds, (int, float)) or not slice_seconds > 0:
            raise MachineConfigError(f"slice_seconds must be a positive number, got {slice_seconds!r}")
        if memory.size < RESERVED_BYTES + PAGE_SIZE:
            raise MachineConfigError(f"RAM size {memory.size:#x} is too small (need > {RESERVED_BYTES:#x})")
        self.memory = memory
        self.clock_mode = clock
        self.slice_seconds = slice_seconds
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map_ptr(0, memory.size, UC_PROT_ALL, memory.address)
        self._h = self.uc._uch
        self.regs = Registers(self._h)
        self.fpu = Fpu(self._h)  # the live x87/SSE state as an FXSAVE image (thread switches)
        self.handler: TrapHandler = _BootHandler()
        self.user_vectors: frozenset[int] = DEFAULT_USER_VECTORS
        self._stop_reason: object = None
        self._stop_at: int | None = None  # stop_after_instruction: instructions retired at the stop
        self._running = False
        self._budget = 0
        self.retired_total = 0  # instructions retired in completed slices
        self._gpr_reader = self.regs.reader(GPRS)
        self._err_off: int | None = None  # offsets in the context blob, probed
        self._isint_off = 0
        self._oldexc_off = 0
        self._counter_addr = 0  # address of uc->emu_counter, probed
        self._scratch = CpuContext(self._h)
        self._scratch_addr = 0
        self._timer: SliceTimer | None = None  # armed per slice in wall mode (after the probes)
        self._hook_error: BaseException | None = None
        self._watched: tuple[int, int] | None = None
        self._fence_ctx = CpuContext(self._h)  # the context at the trap, while fenced
        self._fenced_handler: TrapHandler | None = None  # the OS's handler, while fenced
        self._cpuid: dict[tuple[int, int], tuple[int, ...]] = {}  # leaves answered by the hook
        self._add_hooks()
        self._boot()
        self.template = CpuContext(self._h)
        self.save(self.template)
        self._probe_fault_layout()
        self._probe_counter()
        self._probe_cpuid()
        self.gpr = self._probe_registers()
        self.rip = self._probe_rip()
        self.restore(self.template)
        self.handler = _BootHandler()
        if clock == "wall":
            self._drop_count_hook()
            self._timer = SliceTimer(self.uc.emu_stop)

    # ------------------------------------------------------------------ boot
    def _boot(self) -> None:
        mem = self.memory
        mem.zero(0, RESERVED_BYTES)
        for i, d in enumerate(_GDT):
            mem.write_u64(GDT_BASE + 8 * i, d)
        mem.write_u64(_SYS_PDPT + ((GDT_LINEAR >> 30) & 511) * 8, _SYS_PD | PTE_P | PTE_W)
        mem.write_u64(_SYS_PD + ((GDT_LINEAR >> 21) & 511) * 8, _SYS_PT | PTE_P | PTE_W)
        mem.write_u64(_SYS_PT + ((GDT_LINEAR >> 12) & 511) * 8, GDT_BASE | PTE_P | PTE_NX)
        link_system_tables(mem, _PML4)
        mem.write_u64(_PML4, _PDPT | PTE_P | PTE_W | PTE_U)
        mem.write_u64(_PDPT, _PD | PTE_P | PTE_W | PTE_U)
        mem.write_u64(_PD, _PT | PTE_P | PTE_W | PTE_U)
        for page in (GDT_BASE, _STUB, _STACK):  # supervisor only
            mem.write_u64(_PT + (page >> 12) * 8, page | PTE_P | PTE_W)
        mem.write_u64(_PT + (_USER >> 12) * 8, _USER | PTE_P | PTE_U)
        mem.write_u64(_PT + (_DATA >> 12) * 8, _DATA | PTE_P | PTE_W | PTE_U | PTE_NX)
        mem.write_u64(_PT + (_RODATA >> 12) * 8, _RODATA | PTE_P | PTE_U | PTE_NX)
        mem.write(_STUB, b"\x48\xcf")  # iretq
        mem.write(_USER, b"\x0f\x05" + b"\x90" * 14)  # syscall; nops
        # iretq frame: RIP, CS, RFLAGS, RSP, SS (SDM Vol. 3A 6.14.3)
        mem.write(_STACK + 0xF00, struct.pack("<5Q", _USER, SEL_UCODE, 0x202, _DATA + 0xFF0, SEL_UDATA))
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_LINEAR, 8 * len(_GDT) - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR3, _PML4)
        uc.reg_write(X.UC_X86_REG_CR4, BOOT_CR4)
        uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
        uc.reg_write(X.UC_X86_REG_CR0, BOOT_CR0)
        uc.reg_write(X.UC_X86_REG_RSP, _STACK + 0xF00)
        try:
            uc.emu_start(_STUB, 0, 0, 1)
        except UcError as e:
            raise MachineProbeError(f"could not enter ring 3 through iretq: {e}") from None
        cs = self.regs.read(Reg.CS)
        if cs != SEL_UCODE or self.regs.read(Reg.RIP) != _USER:
            raise MachineProbeError(f"iretq did not reach ring 3 (CS={cs:#x})")
        for r in GPRS:
            if r not in (Reg.RIP, Reg.RFLAGS, Reg.RSP):
                self.regs.write(r, 0)
        self.regs.write(Reg.RFLAGS, 0x202)
        self.fpu.restore(initial_image(FCW_INIT, MXCSR_INIT))  # also empties every x87 register

    def _run_probe(self, code: bytes, count: int = 100) -> Trap | None:
        self.restore(self.template)
        self.memory.write(_USER, code + b"\x90" * (16 - len(code)))
        self.flush_code()
        boot = _BootHandler()
        self.handler = boot
        self.regs.write(Reg.RIP, _USER)
        self.run(count)
        return boot.traps[-1] if boot.traps else None

    def _probe_fault_layout(self) -> None:
        """Find where this Unicorn build keeps error_code, exception_is_int and old_exception."""
        probes = [  # (code, expected #PF error code)
            (b"\x48\xc7\xc0\x00\x00\x02\x00\x48\xc7\x00\x01\x00\x00\x00", 0x6),  # write, not present
            (b"\x48\xc7\xc0\x00\x10\x00\x00\x48\x8b\x18", 0x5),  # read of a supervisor page
            (b"\x48\xc7\xc0\x00\xa0\x00\x00\x48\xc7\x00\x01\x00\x00\x00", 0x7),  # write to read-only
            (b"\x48\xc7\xc0\x00\x90\x00\x00\xff\xd0", 0x15),  # fetch from an NX page
        ]
        blobs = []
        for code, _ in probes:
            self._run_probe(code)
            blobs.append(self._raw_blob)
        self._run_probe(b"\xcd\x1f")  # int 0x1f: a software interrupt below 32
        soft = self._raw_blob
        size = len(soft)

        # Every 32-bit word at offsets 0, 4, ... below size - 4, unpacked in one call per blob (one
        # struct call per word and blob was 8,000 calls, 3 ms of start-up); the same tests per offset.
        n = len(range(0, size - 4, 4))
        soft_words = struct.unpack_from(f"<{n}i", soft)
        columns = list(zip(*(struct.unpack_from(f"<{n}i", b) for b in blobs)))  # offset -> the blobs' words
        expected = tuple(e for _, e in probes)
        errs = [4 * k for k, col in enumerate(columns) if col == expected]
        isint = [4 * k for k, col in enumerate(columns) if soft_words[k] == 1 and not any(col)]
        oldexc = [4 * k for k, col in enumerate(columns) if soft_words[k] == -1 and col == (14,) * len(blobs)]
        if len(errs) != 1 or not isint or len(oldexc) != 1:
            raise MachineProbeError(
                "this Unicorn build keeps fault state where exo cannot find it "
                f"(error code candidates {errs}, exception marker candidates {oldexc}); "
                "exo is tested with unicorn 2.1.4"
            )
        self._err_off = errs[0]
        # exception_is_int follows error_code in QEMU's CPUX86State; prefer that one.
        self._isint_off = errs[0] + 4 if errs[0] + 4 in isint else isint[0]
        self._oldexc_off = oldexc[0]
        self._scratch_addr = self._scratch.ptr.value
        # A storm of faults must now arrive as #PF every time, never #DF or silence.
        for _ in range(3):
            t = self._run_probe(probes[0][0])
            if t is None or t.vector != Vector.PF or t.error_code != 6:
                raise MachineProbeError(f"clearing the exception marker did not work (got {t})")

    def _probe_counter(self) -> None:
        """Find uc->emu_counter by running known instruction counts up to a syscall."""
        raw = ctypes.string_at
        base = self._h.value
        seen = []
        for nops in (10, 37):
            self.restore(self.template)
            code = b"\x90" * nops + b"\x0f\x05"
            self.memory.write(_USER, code)
            self.flush_code()
            self.handler = _BootHandler()
            self.regs.write(Reg.RIP, _USER)
            self.uc.emu_start(_USER, 0, 0, 1000)
            seen.append(raw(base, 4096))
        cands = [
            o for o in range(0, 4096 - 16, 8)
            if struct.unpack_from("<QQ", seen[0], o) == (11, 1000)
            and struct.unpack_from("<QQ", seen[1], o) == (38, 1000)
        ]  # fmt: skip
        if len(cands) != 1:
            raise MachineProbeError(f"could not find Unicorn's instruction counter (candidates {cands})")
        self._counter_addr = base + cands[0]

    def _probe_cpuid(self) -> None:
        """Run the model's own CPUID for the leaves _CPUID_HIDE edits; the hook answers those."""
        retired = self.retired_total  # (not guest work: leave the machine's count as it was)
        for (leaf, sub), hide in _CPUID_HIDE.items():
            self.restore(self.template)
            self.memory.write(_USER, b"\x0f\xa2\x0f\x05")  # cpuid; syscall
            self.flush_code()
            self.handler = _BootHandler()
            self.regs.write(Reg.RAX, leaf)
            self.regs.write(Reg.RCX, sub)
            self.regs.write(Reg.RIP, _USER)
            self.run(10)
            self._cpuid[(leaf, sub)] = tuple(
                self.uc.reg_read(r) & ~hide.get(r, 0) & 0xFFFF_FFFF for r in _CPUID_REG32
            )
        self.retired_total = retired

    def _probe_registers(self) -> ctypes.Array:
        """Find the live general registers in Unicorn's CPU state and return a view of them.

        A register read through the library costs about 0.5-0.8 us on this kind of
        machine; the state itself (QEMU's ``CPUX86State.regs[16]``, in x86 order
        RAX RCX RDX RBX RSP RBP RSI RDI R8-R15) is plain memory, and inside a hook
        it is what ``uc_reg_read``/``uc_reg_write`` read and write for these
        registers. It is found by loading three marker values and searching the
        memory that pointers in ``struct uc_struct`` lead to (only regions
        /proc/self/maps lists as readable), then checked register by register
        in both directions.
        """
        markers = (0x1122_3344_5566_7788, 0x99AA_BBCC_DDEE_FF01, 0x0BAD_C0FF_EE12_3457)
        for reg, value in zip((Reg.RAX, Reg.RCX, Reg.RDX), markers):
            self.regs.write(reg, value)
        pattern = struct.pack("<3Q", *markers)
        los, his = [], []
        with open("/proc/self/maps") as maps:  # sorted by address; regions never overlap
            for line in maps:
                span, perms = line.split()[:2]
                if perms[0] == "r":
                    lo, hi = (int(x, 16) for x in span.split("-"))
                    los.append(lo)
                    his.append(hi)
        pointers = {p for (p,) in struct.iter_unpack("<Q", ctypes.string_at(self._h.value, 4096))}
        order = (Reg.RAX, Reg.RCX, Reg.RDX, Reg.RBX, Reg.RSP, Reg.RBP, Reg.RSI, Reg.RDI,
                 Reg.R8, Reg.R9, Reg.R10, Reg.R11, Reg.R12, Reg.R13, Reg.R14, Reg.R15)
        tried: set[int] = set()
        # The window after each pointer, inside its readable region: 64 KiB first (uc->cpu leads
        # to the registers about 35 KiB on in unicorn 2.1.4), then 256 KiB. Dozens of pointers lead
        # into one heap, so the windows are merged and each byte searched once (was: one copy and
        # search per pointer, 12 ms of start-up); every candidate is still checked as before.
        for size in (1 << 16, 1 << 18):
            windows = []
            for p in pointers:
                i = bisect.bisect_right(los, p) - 1
                if i >= 0 and p < his[i]:
                    windows.append((p, min(his[i], p + size)))
            spans: list[list[int]] = []
            for lo, hi in sorted(windows):
                if spans and lo <= spans[-1][1]:
                    spans[-1][1] = max(spans[-1][1], hi)
                else:
                    spans.append([lo, hi])
            found = set()
            for lo, hi in spans:
                blob = ctypes.string_at(lo, hi - lo)
                i = blob.find(pattern)
                while i >= 0:
                    if (lo + i) % 8 == 0 and lo + i not in tried:
                        found.add(lo + i)
                    i = blob.find(pattern, i + 1)
            for addr in sorted(found):
                tried.add(addr)
                view = (ctypes.c_uint64 * 16).from_address(addr)
                ok = True
                for i, reg in enumerate(order):
                    self.regs.write(reg, 0x5EED_0000 + i)
                    view[i] = view[i] + 1 if view[i] == 0x5EED_0000 + i else 0
                    if self.regs.read(reg) != 0x5EED_0001 + i:
                        ok = False
                if ok:
                    for reg in order:
                        self.regs.write(reg, 0)
                    return view
                for reg, value in zip((Reg.RAX, Reg.RCX, Reg.RDX), markers):  # markers back for pass 2
                    self.regs.write(reg, value)
        raise MachineProbeError(f"could not find the live registers in Unicorn's CPU state (candidates {len(tried)})")

    def _probe_rip(self) -> ctypes.Array:
        """A view of (RIP, EFLAGS): QEMU's ``CPUX86State.eip`` and ``eflags`` follow ``regs[16]``.

        Read on every guest ``syscall`` by the exokernel to tell a hypercall (RIP in the exo
        region) from a Linux system call to reflect: 0.5 us cheaper than ``uc_reg_read(RIP)``
        (measured over 200,001 hooks: 0.52 us against 1.37 us; docs/posix.md). Checked both ways here, like the registers; EFLAGS there
        lacks the lazily computed arithmetic flags (only IF/DF/system bits are exact).
        """
        view = (ctypes.c_uint64 * 2).from_address(ctypes.addressof(self.gpr) + 16 * 8)
        for value in (0x1234_5000, 0x7FFF_0000_1000):
            self.regs.write(Reg.RIP, value)
            if view[0] != value:
                raise MachineProbeError("could not find RIP after the live registers in Unicorn's CPU state")
        self.regs.write(Reg.RIP, 0)
        return view

    def _drop_count_hook(self) -> None:
        """Leave counted mode once, at start-up, for wall-clock slices (count=0).

        The probes ran with count > 0, which installs Unicorn's instruction-count
        hook; the first ``emu_start`` with count=0 deletes it, and that deletion
        walks the page tables and leaves a phantom fault and the exception marker
        behind (trap 2 in the notes): the guest's next real fault would then
        arrive as a double fault or stop emulation silently. Take that hit here
        on the boot page (nops, then a syscall that stops), then reload the clean
        template.
        """
        self.restore(self.template)
        self.regs.write(Reg.RIP, _USER)
        self.uc.emu_start(_USER, 0, 0, 0)
        self.restore(self.template)

    # -------------------------------------------------------------- contexts
    def new_context(self) -> CpuContext:
        """A fresh CPL-3 context (all general registers zero), cloned from the template."""
        ctx = CpuContext(self._h)
        ctypes.memmove(ctx.ptr.value, self.template.ptr.value, self.context_size)
        return ctx

    @property
    def context_size(self) -> int:
        return uclib.uc_context_size(self._h)

    def save(self, ctx: CpuContext) -> None:
        _ctx_save(self._h, ctx.ptr)
        ctx.cr3 = self.regs.read(Reg.CR3)

    def restore(self, ctx: CpuContext) -> None:
        """Load ``ctx`` and switch to its address space (the CR3 write flushes the TLB)."""
        _ctx_restore(self._h, ctx.ptr)
        if ctx.cr3:
            self.regs.write(Reg.CR3, ctx.cr3)

    def copy_context(self, dst: CpuContext, src: CpuContext) -> None:
        ctypes.memmove(dst.ptr.value, src.ptr.value, self.context_size)
        dst.cr3 = src.cr3

    def context_read(self, ctx: CpuContext, reg: int) -> int:
        """A general register (or RIP/RFLAGS) of a saved context, without loading it."""
        v = ctypes.c_uint64()
        uclib.uc_context_reg_read(ctx.ptr, reg, ctypes.addressof(v))
        return v.value

    def context_write(self, ctx: CpuContext, reg: int, value: int) -> None:
        """Set a general register (or RIP/RFLAGS) of a saved context; not for control registers."""
        if reg in (Reg.CR0, Reg.CR2, Reg.CR3, Reg.CR4, Reg.CS, Reg.SS):
            raise MachineConfigError(f"register {Reg(reg).name} cannot be written in a saved context")
        v = ctypes.c_uint64(value & 0xFFFF_FFFF_FFFF_FFFF)
        uclib.uc_context_reg_write(ctx.ptr, reg, ctypes.addressof(v))

    def read_gprs(self) -> dict[str, int]:
        return dict(zip((r.name for r in GPRS), self._gpr_reader()))

    @property
    def _raw_blob(self) -> bytes:
        return ctypes.string_at(self._scratch.ptr.value, self.context_size)

    # ----------------------------------------------------------- TLB / code
    def flush_tlb(self) -> None:
        """Drop every cached translation (after the OS changed a PTE)."""
        self.regs.write(Reg.CR3, self.regs.read(Reg.CR3))

    def flush_code(self) -> None:
        """Drop translated code after the host wrote to code pages.

        Unicorn does not notice host writes to guest code (trap 4 in the notes);
        ``ctl_flush_tb`` is used rather than ``ctl_remove_cache``, which walks
        the page tables and can leave a phantom fault behind (trap 2).
        """
        self.uc.ctl_flush_tb()

    # ------------------------------------------------------------------ run
    def stop(self, reason: object = "stop") -> None:
        """Called by the OS from a trap handler: end the current slice."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.uc.emu_stop()

    def stop_after_instruction(self, reason: object) -> bool:
        """From a memory hook: end the slice right after the instruction now executing (a data
        breakpoint is a trap, SDM Vol. 3B 17.2.5). Virtual clock only; False under the wall clock.

        ``emu_stop`` from a memory hook leaves RIP at the accessing instruction although it
        completes, so resuming would run it twice (measured: a store hooked once, executed
        again on restart). Lowering Unicorn's instruction limit (``uc->emu_count``, the word
        after the counter) to the count so far stops the CPU at the next instruction's count
        hook instead, which syncs RIP first: the stop a slice's end makes, one instruction early.
        """
        if not self._running or not self._counter_addr or self._timer is not None:
            return False
        done = ctypes.c_uint64.from_address(self._counter_addr).value
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_at = min(done, self._budget)
        ctypes.c_uint64.from_address(self._counter_addr + 8).value = done
        return True

    def raise_from_signal(self, exc: BaseException) -> None:
        """Raise ``exc`` for a signal handler (SIGTERM, Ctrl-C) in the thread that runs the machine.

        A Python signal handler runs between two bytecodes, which during a slice may be inside one
        of Unicorn's callbacks, even before its ``try``: raised there, ctypes prints the exception
        and drops it, and the guest runs on from a half-done hook (seen: a library call's return
        address never popped, then a fault at RIP 0). So during a slice the exception is kept and
        the slice stopped, and run() raises it once emu_start has returned; outside a slice it is
        raised at once."""
        if self._running:
            if self._hook_error is None:
                self._hook_error = exc
            self.uc.emu_stop()
            return
        raise exc

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def instructions(self) -> int:
        """Instructions retired so far, including the slice now running (virtual clock)."""
        if self._running and self._counter_addr:
            live = ctypes.c_uint64.from_address(self._counter_addr).value
            return self.retired_total + min(live, self._budget)
        return self.retired_total

    def run(self, budget: int) -> RunExit:
        """Run the loaded context until the OS stops it or the slice ends.

        Virtual clock: the slice is ``budget`` instructions (exact, deterministic).
        Wall clock: the slice is ``slice_seconds`` of host time.
        """
        if budget <= 0:
            raise MachineConfigError(f"instruction budget must be positive, got {budget}")
        self._stop_reason = None
        self._stop_at = None
        rip = self.regs.read(Reg.RIP)
        wall = self._timer is not None
        count = 0 if wall else budget
        self._budget = budget
        self._running = True
        error: UcError | None = None
        if wall:
            self._timer.arm(self.slice_seconds)
        try:
            self.uc.emu_start(rip, 0, 0, count)
        except UcError as e:
            error = e
        finally:
            self._running = False
            fired = self._timer.disarm() if wall else False
            if self._fenced_handler is not None:
                self._unfence()
        if self._hook_error is not None:
            e, self._hook_error = self._hook_error, None
            raise e
        retired = None
        if not wall:
            counter = ctypes.c_uint64.from_address(self._counter_addr).value if self._counter_addr else 0
            if self._stop_at is not None:
                counter = self._stop_at  # the next instruction was counted, then stopped before it ran
            retired = min(counter, budget)
            self.retired_total += retired
            fired = counter > budget
        if error is not None and self._stop_reason is None:
            self._machine_check(error)
        if self._stop_reason is not None:
            return RunExit("stopped", retired, self._stop_reason)
        if fired:
            return RunExit("preempted", retired)
        # Unicorn returned without a cause: emulation reached address 0 (its
        # `until`), or stopped silently. Report what a CPU would: a fetch fault.
        rip = self.regs.read(Reg.RIP)
        self._deliver(Trap(TrapKind.EXCEPTION, Vector.PF, rip, error_code=0x14, cr2=rip,
                           detail="instruction fetch from an unmapped address"))
        if self._stop_reason is not None:
            return RunExit("stopped", retired, self._stop_reason)
        return RunExit("preempted", retired)

    def _fence(self) -> None:
        """From a hook inside a translation block, after the OS stopped the CPU: retire nothing more.

        ``emu_stop`` takes effect at the next block boundary (UNICORN_NOTES trap 12),
        so the instructions after the trapping one in this block still run. Save
        the context as it is at the trap, switch to an empty PML4 (every memory
        access, store or segment load left in the block is a #PF, which ends the
        block without writing anything) and let the hooks deliver nothing to the
        OS (a ``syscall`` left in the block is not served); ``run`` puts the
        saved context back when ``emu_start`` returns.
        """
        if self._fenced_handler is not None:
            return
        self._fenced_handler = self.handler
        self.handler = _FENCED
        _ctx_save(self._h, self._fence_ctx.ptr)
        self._fence_ctx.cr3 = self.regs.read(Reg.CR3)
        self.regs.write(Reg.CR3, _DEAD_ROOT)  # flushes the TLB: nothing is cached from the old space

    def _unfence(self) -> None:
        self.handler = self._fenced_handler
        self._fenced_handler = None
        self.restore(self._fence_ctx)

    def _machine_check(self, error: UcError) -> None:
        rip = self.regs.read(Reg.RIP)
        # Say what failed in the machine's own words: no Unicorn error code reaches the OS.
        what, write = _MC_ACCESS.get(error.errno, ("access", False))
        self._deliver(Trap(TrapKind.MACHINE_CHECK, Vector.MC, rip, write=write,
                           detail=f"{what} outside physical RAM"))
        if self._stop_reason is None:
            self._stop_reason = "machine-check"

    def _deliver(self, trap: Trap) -> None:
        self.handler.trap(self, trap)

    # ---------------------------------------------------------------- hooks
    def _add_hooks(self) -> None:
        uc = self.uc
        # Added once; never deleted while the machine lives (traps 2 and 6 in the notes).
        # The hot path, `syscall`, is registered with the library directly: the
        # binding would wrap every call in two more Python frames. Exceptions are
        # caught here as the binding does, and raised again by run().
        def on_syscall(_handle: int, _ud: int) -> None:
            try:
                self.handler.syscall(self)
            except BaseException as e:  # noqa: BLE001 - re-raised after emu_start returns
                if self._hook_error is None:
                    self._hook_error = e
                uc.emu_stop()

        self._syscall_cb = _SYSCALL_CB(on_syscall)  # keep alive as long as the engine
        hh = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._h, ctypes.byref(hh), UC_HOOK_INSN, ctypes.cast(self._syscall_cb, ctypes.c_void_p),
                                None, ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(X.UC_X86_INS_SYSCALL))
        if err:
            raise MachineProbeError(f"could not add the syscall hook (unicorn error {err})")
        uc.hook_add(UC_HOOK_INTR, self._hook_intr)
        uc.hook_add(UC_HOOK_INSN, self._hook_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._hook_invalid)
        uc.hook_add(UC_HOOK_INSN, self._hook_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._hook_out, None, 1, 0, X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._hook_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)

    def _hook_intr(self, uc: Uc, intno: int, _ud: object) -> None:
        regs = self.regs
        rip = regs.read(Reg.RIP)
        if intno >= 32:  # only `int n` raises these: no devices interrupt this CPU
            self._software_int(intno, rip, 2)
            return
        _ctx_save(self._h, self._scratch.ptr)
        if self._err_off is None:  # start-up probe: keep the raw state, stop
            self._deliver(Trap(TrapKind.EXCEPTION, intno, rip))
            return
        blob = self._scratch_addr
        if ctypes.c_int32.from_address(blob + self._isint_off).value:
            length = self._int_length(intno, rip)
            self._software_int(intno, rip, length)
            return
        # A real exception: clear the "exception in flight" marker (trap 1).
        ctypes.c_int32.from_address(blob + self._oldexc_off).value = -1
        _ctx_restore(self._h, self._scratch.ptr)
        err = ctypes.c_int32.from_address(blob + self._err_off).value & 0xFFFF_FFFF
        trap = Trap(TrapKind.EXCEPTION, intno, rip)
        if intno in HAS_ERROR_CODE:
            trap.error_code = err
        if intno == Vector.PF:
            trap.cr2 = regs.read(Reg.CR2)
        elif intno in _FP_FAULTS:
            trap.detail = _FP_FAULTS[intno](uc)
        self._deliver(trap)

    def _int_length(self, vector: int, next_rip: int) -> int:
        """Length of the software interrupt instruction that ends at ``next_rip``.

        Only ``int3`` (CC) is one byte; ``int n`` (CD ib) is two, including
        ``int 1``, ``int 3`` and ``int 4`` (``into`` and ``icebp`` do not arrive
        here as software interrupts in 64-bit mode).
        """
        if vector != Vector.BP:
            return 2
        t = translate(self.memory, self.regs.read(Reg.CR3), next_rip - 1)
        if t is not None and self.memory.read(t.pa, 1) == b"\xcc":
            return 1
        return 2

    def _software_int(self, vector: int, next_rip: int, length: int) -> None:
        if vector in self.user_vectors:
            kind = TrapKind.EXCEPTION if vector < 32 else TrapKind.SOFTWARE_INT
            self._deliver(Trap(kind, vector, next_rip, next_rip=next_rip, address=next_rip - length,
                               detail=f"int {vector:#x}"))
            return
        # The gate is DPL 0: the CPU raises #GP with the IDT index as error code
        # (SDM Vol. 3A 6.12.1.1) and reports the `int` instruction itself.
        rip = next_rip - length
        self.regs.write(Reg.RIP, rip)
        self._deliver(Trap(TrapKind.EXCEPTION, Vector.GP, rip, error_code=(vector << 3) | 2,
                           detail=f"int {vector:#x} through a gate ring 3 may not use"))

    def watch_code(self, begin: int, end: int) -> None:
        """Call ``handler.code`` whenever guest code executes in [begin, end).

        A ranged code hook costs nothing while other code runs (shared/UNICORN_NOTES.md).
        Hooks are never removed (traps 2 and 6 in the notes), so add it once, before running.
        """
        if self._watched == (begin, end):
            return  # already watched (a new OS on the same machine)
        if self._watched is not None:
            raise MachineConfigError(f"a code range is already watched ({self._watched[0]:#x}-{self._watched[1]:#x})")
        if not 0 <= begin < end:
            raise MachineConfigError(f"bad code range {begin:#x}-{end:#x}")
        self._watched = (begin, end)

        # Registered with the library directly, like the syscall hook: the binding
        # would add two Python frames to every library call.
        def on_code(_handle: int, address: int, _size: int, _ud: int) -> None:
            try:
                self.handler.code(self, address)
            except BaseException as e:  # noqa: BLE001 - re-raised after emu_start returns
                if self._hook_error is None:
                    self._hook_error = e
                self.uc.emu_stop()

        self._code_cb = _CODE_CB(on_code)
        hh = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._h, ctypes.byref(hh), UC_HOOK_CODE, ctypes.cast(self._code_cb, ctypes.c_void_p),
                                None, ctypes.c_uint64(begin), ctypes.c_uint64(end - 1))
        if err:
            raise MachineProbeError(f"could not add the code hook (unicorn error {err})")

    def _hook_cpuid(self, uc: Uc, _ud: object) -> int:
        """CPUID: the edited leaves from the table (returning 1 skips Unicorn's own), the rest native."""
        leaf = uc.reg_read(X.UC_X86_REG_EAX)
        values = self._cpuid.get((leaf, uc.reg_read(X.UC_X86_REG_ECX) if leaf == 7 else 0))
        if values is None:
            return 0
        for reg, v in zip(_CPUID_OUT, values):  # a 32-bit result zero-extends (SDM Vol. 1 3.4.1.1)
            uc.reg_write(reg, v)
        return 1

    def _hook_sysenter(self, uc: Uc, _ud: object) -> None:
        # Unicorn makes `sysenter` a no-op. A CPU whose IA32_SYSENTER_CS is 0 (this
        # machine never sets it) raises #GP(0) (SDM Vol. 2B, SYSENTER).
        rip = self.regs.read(Reg.RIP)
        self._deliver(Trap(TrapKind.EXCEPTION, Vector.GP, rip, error_code=0,
                           detail="sysenter with IA32_SYSENTER_CS = 0"))

    def _hook_invalid(self, uc: Uc, _ud: object) -> bool:
        rip = self.regs.read(Reg.RIP)
        self._deliver(Trap(TrapKind.EXCEPTION, Vector.UD, rip))
        return True

    def _hook_in(self, uc: Uc, port: int, size: int, _ud: object) -> int:
        rip = self.regs.read(Reg.RIP)
        trap = Trap(TrapKind.IO, Vector.GP, rip, error_code=0, port=port, size=size, write=False)
        self._deliver(trap)
        if self._stop_reason is not None:
            self._fence()  # `in` does not end the block
            return 0
        return trap.value or 0

    def _hook_out(self, uc: Uc, port: int, size: int, value: int, _ud: object) -> None:
        rip = self.regs.read(Reg.RIP)
        self._deliver(Trap(TrapKind.IO, Vector.GP, rip, error_code=0, port=port, size=size,
                           value=value, write=True))
        if self._stop_reason is not None:
            self._fence()  # `out` does not end the block

