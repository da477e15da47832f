"""Fast register access: the Unicorn shared library called directly.

The Python binding's ``reg_read`` costs about 4 us a register on this kind of
machine (shared/UNICORN_NOTES.md); calling ``uc_reg_read``/``uc_reg_read_batch``
through ctypes with buffers allocated once is 5-10x faster. Everything above
``hw`` uses these accessors, never the binding's.
"""

from __future__ import annotations

import ctypes
import enum
from typing import Callable, Sequence

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

_read1 = uclib.uc_reg_read
_write1 = uclib.uc_reg_write
_read_batch = uclib.uc_reg_read_batch
_write_batch = uclib.uc_reg_write_batch


class Registers:
    """Live registers of one Unicorn engine, read and written without the binding."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self._h = handle
        self._v = ctypes.c_uint64()
        self._vp = ctypes.addressof(self._v)

    def read(self, reg: int) -> int:
        _read1(self._h, reg, self._vp)
        return self._v.value

    def write(self, reg: int, value: int) -> None:
        self._v.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _write1(self._h, reg, self._vp)

    def reader(self, regs: Sequence[int]) -> Callable[[], list[int]]:
        """A function that reads ``regs`` in one library call, buffers preallocated."""
        n = len(regs)
        ids = (ctypes.c_int32 * n)(*regs)
        vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(vals)
        ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        h = self._h

        def read_all() -> list[int]:
            _read_batch(h, ids, ptrs, n)
            return vals[:]

        return read_all

    def writer(self, regs: Sequence[int]) -> Callable[..., None]:
        """A function ``f(*values)`` that writes ``regs`` in one library call."""
        n = len(regs)
        ids = (ctypes.c_int32 * n)(*regs)
        vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(vals)
        ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        h = self._h

        def write_all(*values: int) -> None:
            for i, v in enumerate(values):
                vals[i] = v & 0xFFFF_FFFF_FFFF_FFFF
            _write_batch(h, ids, ptrs, n)

        return write_all
