"""What the CPU hands the kernel when guest code traps.

Vector numbers and error-code bits follow the Intel SDM Vol. 3A, chapter 6
("Interrupt and Exception Handling"), table 6-1, and section 4.7
("Page-Fault Exceptions") for the #PF error code.
"""

from __future__ import annotations

import enum


class Vector(enum.IntEnum):
    DE = 0  # divide error
    DB = 1
    NMI = 2
    BP = 3  # breakpoint (int3)
    OF = 4  # overflow (into)
    BR = 5
    UD = 6  # invalid opcode (also vmcall: Unicorn has no VMX)
    NM = 7
    DF = 8  # double fault
    TS = 10
    NP = 11
    SS = 12
    GP = 13  # general protection
    PF = 14  # page fault
    MF = 16
    AC = 17
    MC = 18  # machine check: used for accesses outside physical RAM
    XM = 19


VECTOR_NAMES = {
    Vector.DE: "divide error (#DE)",
    Vector.DB: "debug (#DB)",
    Vector.NMI: "NMI",
    Vector.BP: "breakpoint (#BP)",
    Vector.OF: "overflow (#OF)",
    Vector.BR: "bound range (#BR)",
    Vector.UD: "invalid opcode (#UD)",
    Vector.NM: "device not available (#NM)",
    Vector.DF: "double fault (#DF)",
    Vector.TS: "invalid TSS (#TS)",
    Vector.NP: "segment not present (#NP)",
    Vector.SS: "stack fault (#SS)",
    Vector.GP: "general protection (#GP)",
    Vector.PF: "page fault (#PF)",
    Vector.MF: "x87 FP error (#MF)",
    Vector.AC: "alignment check (#AC)",
    Vector.MC: "machine check (#MC)",
    Vector.XM: "SIMD FP error (#XM)",
}

# Exceptions that push an error code (SDM Vol. 3A table 6-1).
HAS_ERROR_CODE = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC})

# #PF error-code bits (SDM Vol. 3A, figure 4-12).
PF_P = 1 << 0  # 0: not present; 1: protection violation
PF_W = 1 << 1  # 0: read; 1: write
PF_U = 1 << 2  # 0: supervisor mode; 1: user mode
PF_RSVD = 1 << 3  # reserved bit set in a paging entry
PF_I = 1 << 4  # instruction fetch
PF_PK = 1 << 5  # protection key


class TrapKind(enum.Enum):
    EXCEPTION = "exception"  # a CPU exception (vector < 32)
    SOFTWARE_INT = "int"  # `int n` through a gate the guest may use
    IO = "io"  # `in`/`out`: Unicorn does not fault them at CPL 3
    MACHINE_CHECK = "machine-check"  # the emulator could not complete an access


def decode_pf_error(code: int) -> str:
    """A human reading of a #PF error code, e.g. 'user write to a present page'."""
    who = "user" if code & PF_U else "supervisor"
    if code & PF_I:
        what = "instruction fetch"
    elif code & PF_W:
        what = "write"
    else:
        what = "read"
    where = "a protected page" if code & PF_P else "a not-present page"
    extra = ", reserved bit set" if code & PF_RSVD else ""
    return f"{who} {what} of {where}{extra}"


def decode_gp_error(code: int) -> str:
    """#GP error code: 0, or a selector/IDT index (SDM 6.13 "Error Code")."""
    if code == 0:
        return "no selector (privileged instruction or bad operand)"
    table = "IDT" if code & 2 else ("LDT" if code & 4 else "GDT")
    return f"{table} index {code >> 3}{' (external)' if code & 1 else ''}"


# The six floating-point exception conditions, in the bit order shared by the x87 status
# word, its control word's masks, and MXCSR's flags (SDM Vol. 1 8.1.3, 8.1.5, 10.2.3).
FP_EXCEPTIONS = (
    ("IE", "invalid operation"),
    ("DE", "denormal operand"),
    ("ZE", "zero divide"),
    ("OE", "overflow"),
    ("UE", "underflow"),
    ("PE", "precision"),
)


def _fp_conditions(flags: int, masks: int) -> str:
    """The raised conditions among the 6 flag bits, unmasked ones (those that fault) first."""
    raised = [(i, short, long) for i, (short, long) in enumerate(FP_EXCEPTIONS) if flags >> i & 1]
    unmasked = [f"{long} ({short})" for i, short, long in raised if not masks >> i & 1]
    masked = [f"{long} ({short}, masked)" for i, short, long in raised if masks >> i & 1]
    return ", ".join(unmasked + masked) or "no exception flag set"


def decode_fsw(fsw: int, fcw: int) -> str:
    """An x87 #MF: the status word's raised conditions against the control word's masks.

    #MF is delivered for a flag set in FSW whose mask bit in FCW is clear (SDM Vol. 1 8.7);
    FSW.SF (bit 6) with IE means a stack overflow or underflow rather than a bad operand.
    """
    text = _fp_conditions(fsw & 0x3F, fcw & 0x3F)
    if fsw & (1 << 6) and fsw & 1:
        text += "; stack " + ("overflow" if fsw & (1 << 9) else "underflow")
    return f"FSW {fsw:#06x} FCW {fcw:#06x}: {text}"


def decode_mxcsr(mxcsr: int) -> str:
    """A #XM: MXCSR's raised flags (bits 0-5) against its masks (bits 7-12) (SDM Vol. 1 11.5.1)."""
    return f"MXCSR {mxcsr:#06x}: {_fp_conditions(mxcsr & 0x3F, mxcsr >> 7 & 0x3F)}"


# Plain classes, not dataclasses, here and in the modules `exo boot` imports: a dataclass costs
# 0.3-0.6 ms of start-up to define (it compiles generated code), and start-up is measured
# against `import unicorn` (docs/performance.md).
_TRAP_FIELDS = ("kind", "vector", "rip", "error_code", "cr2", "next_rip", "address", "port", "size", "value",
                "write", "detail", "extra")


class Trap:
    """One trap, with what a real CPU would give the kernel.

    ``rip`` is the address the CPU reports: the faulting instruction for faults
    (#PF, #GP, #UD, #DE), the next instruction for traps (`int n`, `int3`).
    """

    __slots__ = _TRAP_FIELDS

    def __init__(self, kind: TrapKind, vector: int, rip: int, error_code: int | None = None,
                 cr2: int | None = None, next_rip: int | None = None, address: int | None = None,
                 port: int | None = None, size: int | None = None, value: int | None = None,
                 write: bool = False, detail: str = "", extra: dict | None = None) -> None:
        self.kind = kind
        self.vector = vector
        self.rip = rip
        self.error_code = error_code
        self.cr2 = cr2  # #PF: the faulting linear address
        self.next_rip = next_rip  # software interrupts: where execution resumes
        self.address = address  # the trapping instruction, when ``rip`` is past it (int n)
        self.port = port  # I/O
        self.size = size  # I/O operand size in bytes
        self.value = value  # `out`: the value written
        self.write = write  # I/O direction (`out`) or MC access kind
        self.detail = detail
        self.extra = {} if extra is None else extra

    def __repr__(self) -> str:
        return "Trap(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in _TRAP_FIELDS) + ")"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Trap:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _TRAP_FIELDS)

    __hash__ = None  # type: ignore[assignment]  (mutable, as the dataclass was)

    @property
    def insn_address(self) -> int:
        """Where the instruction that trapped starts."""
        return self.rip if self.address is None else self.address

    @property
    def name(self) -> str:
        if self.kind is TrapKind.IO:
            return f"port I/O ({'out' if self.write else 'in'} {self.port:#x})"
        if self.kind is TrapKind.SOFTWARE_INT:
            return f"software interrupt int {self.vector:#x}"
        try:
            return VECTOR_NAMES[Vector(self.vector)]
        except ValueError:
            return f"vector {self.vector}"

    def describe_error(self) -> str:
        if self.error_code is None:
            return ""
        if self.vector == Vector.PF and self.kind is TrapKind.EXCEPTION:
            return decode_pf_error(self.error_code)
        if self.vector == Vector.GP:
            return decode_gp_error(self.error_code)
        return ""
