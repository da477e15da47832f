"""Fast register access: the Unicorn shared library called directly.

The Python binding's ``reg_read`` costs about 4 us a register on this kind of
machine (shared/UNICORN_NOTES.md); calling ``uc_reg_read``/``uc_reg_read_batch``
through ctypes with buffers allocated once is 5-10x faster. Everything above
``hw`` uses these accessors, never the binding's.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable, Sequence

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib


class Reg(enum.IntEnum):
    """Register names, valued as Unicorn's register ids."""

    RAX = X.UC_X86_REG_RAX
    RBX = X.UC_X86_REG_RBX
    RCX = X.UC_X86_REG_RCX
    RDX = X.UC_X86_REG_RDX
    RSI = X.UC_X86_REG_RSI
    RDI = X.UC_X86_REG_RDI
    RBP = X.UC_X86_REG_RBP
    RSP = X.UC_X86_REG_RSP
    R8 = X.UC_X86_REG_R8
    R9 = X.UC_X86_REG_R9
    R10 = X.UC_X86_REG_R10
    R11 = X.UC_X86_REG_R11
    R12 = X.UC_X86_REG_R12
    R13 = X.UC_X86_REG_R13
    R14 = X.UC_X86_REG_R14
    R15 = X.UC_X86_REG_R15
    RIP = X.UC_X86_REG_RIP
    RFLAGS = X.UC_X86_REG_RFLAGS
    CS = X.UC_X86_REG_CS
    SS = X.UC_X86_REG_SS
    CR0 = X.UC_X86_REG_CR0
    CR2 = X.UC_X86_REG_CR2
    CR3 = X.UC_X86_REG_CR3
    CR4 = X.UC_X86_REG_CR4
    FS_BASE = X.UC_X86_REG_FS_BASE
    GS_BASE = X.UC_X86_REG_GS_BASE


# The general-purpose state a fault report shows, in the order `info registers` does.
GPRS: tuple[Reg, ...] = (
    Reg.RAX, Reg.RBX, Reg.RCX, Reg.RDX, Reg.RSI, Reg.RDI, Reg.RBP, Reg.RSP,
    Reg.R8, Reg.R9, Reg.R10, Reg.R11, Reg.R12, Reg.R13, Reg.R14, Reg.R15,
    Reg.RIP, Reg.RFLAGS,
)  # fmt: skip

# The library's functions without the binding's argtypes: with arguments that
# are already ctypes objects, a call costs about half as much (0.5-0.8 us here
# against 1.1-1.8 us), and the hypercall path makes two of them.
_lib = ctypes.CDLL(uclib._name)
# Index of each general register in VCpu.gpr (QEMU's CPUX86State.regs, x86 encoding order).
GPR_INDEX: dict[Reg, int] = {
    Reg.RAX: 0, Reg.RCX: 1, Reg.RDX: 2, Reg.RBX: 3, Reg.RSP: 4, Reg.RBP: 5, Reg.RSI: 6, Reg.RDI: 7,
    Reg.R8: 8, Reg.R9: 9, Reg.R10: 10, Reg.R11: 11, Reg.R12: 12, Reg.R13: 13, Reg.R14: 14, Reg.R15: 15,
}  # fmt: skip


def user_rflags(value: int) -> int:
    """RFLAGS as user code may set them (popfq at CPL 3, SDM Vol. 1 3.4.3): the arithmetic flags
    CF PF AF ZF SF DF OF (mask 0xCD5) from ``value``, bit 1 set, and IF on (a context exo loads runs
    with interrupts enabled, as every user context does)."""
    return (value & 0xCD5) | 0x202


_read1 = _lib.uc_reg_read
_write1 = _lib.uc_reg_write
_read_batch = _lib.uc_reg_read_batch
_write_batch = _lib.uc_reg_write_batch
for _f in (_read1, _write1, _read_batch, _write_batch):
    _f.restype = ctypes.c_int


class Registers:
    """Live registers of one Unicorn engine, read and written without the binding."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self._h = ctypes.c_void_p(handle.value)
        self._id = ctypes.c_int(0)
        self._v = ctypes.c_uint64()
        self._vp = ctypes.c_void_p(ctypes.addressof(self._v))

    def read(self, reg: int) -> int:
        self._id.value = reg
        _read1(self._h, self._id, self._vp)
        return self._v.value

    def write(self, reg: int, value: int) -> None:
        self._id.value = reg
        self._v.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _write1(self._h, self._id, self._vp)

    def setter(self, reg: int) -> Callable[[int], None]:
        """A function writing one register with every ctypes object made in advance."""
        rid = ctypes.c_int(int(reg))
        v = ctypes.c_uint64()
        vp = ctypes.c_void_p(ctypes.addressof(v))
        h = self._h

        def set_reg(value: int) -> None:
            v.value = value & 0xFFFF_FFFF_FFFF_FFFF
            _write1(h, rid, vp)

        return set_reg

    def batch(self, regs: Sequence[int]) -> tuple[Callable[[], int], ctypes.Array]:
        """``(read, values)``: ``read()`` refreshes the ctypes array ``values`` in one call.

        The cheapest way to read several registers: no list is built; index
        ``values`` directly.
        """
        n = len(regs)
        ids = (ctypes.c_int32 * n)(*regs)
        vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(vals)
        ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        h, count = self._h, ctypes.c_int(n)

        def read() -> int:
            return _read_batch(h, ids, ptrs, count)

        return read, vals

    def reader(self, regs: Sequence[int]) -> Callable[[], list[int]]:
        """A function that reads ``regs`` in one library call, buffers preallocated."""
        read, vals = self.batch(regs)

        def read_all() -> list[int]:
            read()
            return vals[:]

        return read_all

    def writer(self, regs: Sequence[int]) -> Callable[..., None]:
        """A function ``f(*values)`` that writes ``regs`` in one library call."""
        n = len(regs)
        ids = (ctypes.c_int32 * n)(*regs)
        vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(vals)
        ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        h, count = self._h, ctypes.c_int(n)

        def write_all(*values: int) -> None:
            for i, v in enumerate(values):
                vals[i] = v & 0xFFFF_FFFF_FFFF_FFFF
            _write_batch(h, ids, ptrs, count)

        return write_all
