"""The x87/SSE state of the live vCPU as an FXSAVE image, read and written in one call each.

The image is the 512-byte 64-bit FXSAVE layout (SDM Vol. 1 10.5.1, table 10-2):
FCW at 0, FSW at 2, the abridged tag byte at 4, FOP at 6, FIP at 8, FDP at 16,
MXCSR at 24, MXCSR_MASK at 28, ST(0)-ST(7) at 32 + 16*i (80 bits each), XMM0-15 at
160 + 16*i. It is what user code gets from ``fxsave`` (an unprivileged instruction),
so a library OS may keep one per user thread.

Unicorn's registers differ from that layout in two ways, fixed up here:
``UC_X86_REG_FP0..7`` are the physical registers R0-R7, while FXSAVE stores the stack
order ST(i) = R[(TOP + i) mod 8] (TOP is FSW bits 11-13); and ``UC_X86_REG_FPTAG`` is the
full 2-bit-per-register tag word, while FXSAVE keeps one bit per physical register
(1 = not empty; SDM Vol. 1 10.5.1.1). Every register is read and written with one
``uc_reg_read_batch``/``uc_reg_write_batch`` call straight into a buffer at its
FXSAVE offset (the binding's per-register calls cost about 4 us each).
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import x86_const as X

from hw.errors import MachineConfigError
from hw.regs import _lib

FXSAVE_SIZE = 512
MXCSR_MASK = 0xFFFF  # the MXCSR bits this CPU supports (FXSAVE offset 28): DAZ included
_FTW_FULL = 464  # scratch for the full tag word, in the image's software-available area
_FP_OFF, _XMM_OFF = 32, 160

# (Unicorn register, offset in the image); sizes are Unicorn's: 2, 2, 2, 2, 8, 8, 4, 10, 16.
_LAYOUT = (
    [(X.UC_X86_REG_FPCW, 0), (X.UC_X86_REG_FPSW, 2), (X.UC_X86_REG_FPTAG, _FTW_FULL), (X.UC_X86_REG_FOP, 6),
     (X.UC_X86_REG_FIP, 8), (X.UC_X86_REG_FDP, 16), (X.UC_X86_REG_MXCSR, 24)]
    + [(X.UC_X86_REG_FP0 + i, _FP_OFF + 16 * i) for i in range(8)]
    + [(X.UC_X86_REG_XMM0 + i, _XMM_OFF + 16 * i) for i in range(16)]
)  # fmt: skip


def initial_image(fcw: int, mxcsr: int) -> bytes:
    """The state after FNINIT with ``fcw`` and ``mxcsr`` loaded: every x87 register empty."""
    img = bytearray(FXSAVE_SIZE)
    struct.pack_into("<H", img, 0, fcw)
    struct.pack_into("<II", img, 24, mxcsr, MXCSR_MASK)
    return bytes(img)


class Fpu:
    """FXSAVE/FXRSTOR of the live vCPU state, done by the host."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self._buf = (ctypes.c_uint8 * FXSAVE_SIZE)()
        base = ctypes.addressof(self._buf)
        n = len(_LAYOUT)
        self._args = (ctypes.c_void_p(handle.value), (ctypes.c_int32 * n)(*(r for r, _ in _LAYOUT)),
                      (ctypes.c_void_p * n)(*(base + off for _, off in _LAYOUT)), ctypes.c_int(n))

    def save(self) -> bytes:
        """The live state as an FXSAVE image."""
        buf = self._buf
        ctypes.memset(buf, 0, FXSAVE_SIZE)
        _lib.uc_reg_read_batch(*self._args)
        full = buf[_FTW_FULL] | buf[_FTW_FULL + 1] << 8
        buf[_FTW_FULL] = buf[_FTW_FULL + 1] = 0  # (scratch, not part of the image)
        buf[28], buf[29] = MXCSR_MASK & 0xFF, MXCSR_MASK >> 8
        # Unicorn's ldmxcsr keeps reserved bits a CPU would refuse with #GP (measured); they
        # change nothing in its SSE, so the image drops them and restore() can always load it.
        buf[26] = buf[27] = 0
        top = buf[3] >> 3 & 7
        if full == 0xFFFF and top == 0:  # the x87 stack is empty (code that only uses SSE): as read
            return bytes(buf)
        raw = bytearray(buf)
        if top:
            phys = raw[_FP_OFF : _FP_OFF + 128]
            rot = 16 * top
            raw[_FP_OFF : _FP_OFF + 128] = phys[rot:] + phys[:rot]  # ST(i) = R[(TOP + i) mod 8]
        raw[4] = sum(1 << i for i in range(8) if full >> (2 * i) & 3 != 3)
        return bytes(raw)

    def restore(self, image: bytes) -> None:
        """Load an FXSAVE image into the live vCPU (what ``fxrstor`` would do).

        As FXRSTOR, it refuses MXCSR bits outside MXCSR_MASK (the CPU gives #GP;
        SDM Vol. 1 10.5.1.2).
        """
        if len(image) != FXSAVE_SIZE:
            raise MachineConfigError(f"an FXSAVE image is {FXSAVE_SIZE} bytes, got {len(image)}")
        mxcsr = int.from_bytes(image[24:28], "little")
        if mxcsr & ~MXCSR_MASK:
            raise MachineConfigError(f"MXCSR {mxcsr:#x} sets reserved bits (mask {MXCSR_MASK:#x})")
        top, tags = image[3] >> 3 & 7, image[4]
        if top:
            raw = bytearray(image)
            st = raw[_FP_OFF : _FP_OFF + 128]
            rot = 16 * (8 - top)
            raw[_FP_OFF : _FP_OFF + 128] = st[rot:] + st[:rot]  # R[(TOP + i) mod 8] = ST(i)
            image = bytes(raw)
        buf = self._buf
        ctypes.memmove(buf, image, FXSAVE_SIZE)
        # Unicorn only distinguishes empty (3) from the rest, which it recomputes from the value.
        full = 0xFFFF if tags == 0 else sum(0 if tags >> i & 1 else 3 << (2 * i) for i in range(8))
        buf[_FTW_FULL], buf[_FTW_FULL + 1] = full & 0xFF, full >> 8
        _lib.uc_reg_write_batch(*self._args)
