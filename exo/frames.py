"""The physical frame table: who owns each 4 KiB frame of RAM, and how it is used.

Every frame is free, owned by the exokernel (the machine's low memory and its
own structures), or owned by one environment. Page-table frames are typed so
that they are never mapped into any address space: a guest can change its
page tables only through the validated hypercalls (exo/hypercalls.py).
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable

from hw.memory import PAGE_SHIFT, PhysicalMemory

FREE = -1
EXO = 0  # owner id of the exokernel itself; environments are numbered from 1


class FrameType(enum.IntEnum):
    FREE = 0
    NORMAL = 1  # guest data or code
    PAGETABLE = 2  # never mapped, never writable by guests
    EXO = 3  # exokernel-private: never user-accessible


class OutOfFrames(Exception):
    """No frame for this allocation: guest RAM is full, or (QuotaExceeded) the owner's app is at its quota."""


class QuotaExceeded(OutOfFrames):
    pass


class FrameTable:
    def __init__(self, memory: PhysicalMemory, reserved_bytes: int) -> None:
        self.memory = memory
        n = memory.frames
        self.owner = array("i", [FREE]) * n
        self.refs = array("i", [0]) * n  # mappings of this frame in all address spaces
        self.type = array("b", [FrameType.FREE]) * n
        # Frames ever mapped executable. The host writing one (a hypercall that
        # fills a buffer, zeroing a reused frame) must drop Unicorn's translated
        # code, which notices guest writes to code but not host writes.
        self.code = bytearray(n)
        # Live writable and executable mappings of each frame, in all address
        # spaces: W^X holds per frame, not only per mapping (exo/vm.py).
        self.wmaps = array("i", [0]) * n
        self.xmaps = array("i", [0]) * n
        self.on_code_write: Callable[[], None] = lambda: None
        # Owner id -> its tenant (exo/tenants.py): every frame is charged to its owner's app
        # when handed out and given back when freed. refused: owner -> why its last allocation
        # was refused, for the fault report of an environment that then faults.
        self.tenant_of: dict = {}
        self.refused: dict[int, str] = {}
        first = (reserved_bytes + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
        for f in range(first):
            self.owner[f] = EXO
            self.type[f] = FrameType.EXO
        # Hand out low frames first: a deterministic order keeps runs reproducible.
        self._free = list(range(n - 1, first - 1, -1))

    @property
    def free_count(self) -> int:
        return len(self._free)

    def alloc(self, owner: int, ftype: FrameType = FrameType.NORMAL) -> int:
        """A zeroed frame for ``owner``; returns its frame number."""
        t = self.tenant_of.get(owner)
        if t is not None and t.frames_used >= t.frame_limit:
            t.frame_refusals += 1
            why = self.refused[owner] = t.frames_exhausted
            raise QuotaExceeded(why)
        if not self._free:
            why = self.refused[owner] = f"guest RAM exhausted: all {len(self.owner)} frames in use"
            raise OutOfFrames(why)
        if t is not None:
            t.frames_used += 1
            if t.frames_used > t.frames_peak:
                t.frames_peak = t.frames_used
        f = self._free.pop()
        self.owner[f] = owner
        self.type[f] = ftype
        self.refs[f] = 0
        self.memory.zero(f << PAGE_SHIFT, 1 << PAGE_SHIFT)
        if self.code[f]:
            self.code[f] = 0
            self.on_code_write()
        return f

    def free(self, f: int) -> None:
        if self.type[f] == FrameType.FREE:
            raise AssertionError(f"double free of frame {f:#x}")
        t = self.tenant_of.get(self.owner[f])
        if t is not None:
            t.frames_used -= 1
        self.owner[f] = FREE
        self.type[f] = FrameType.FREE
        self.refs[f] = 0
        self.wmaps[f] = self.xmaps[f] = 0
        self._free.append(f)

    def valid(self, f: int) -> bool:
        return 0 <= f < len(self.owner)

    def usage(self) -> dict[str, int]:
        counts = {t.name.lower(): 0 for t in FrameType}
        for t in self.type:
            counts[FrameType(t).name.lower()] += 1
        return counts
