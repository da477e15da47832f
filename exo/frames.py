"""The physical frame table: who owns each 4 KiB frame of RAM, and how it is used.

Every frame is free, owned by the exokernel (the machine's low memory and its
own structures), or owned by one environment. Page-table frames are typed so
that they are never mapped into any address space: a guest can change its
page tables only through the validated hypercalls (exo/hypercalls.py).

Every frame also has a maximum right, fixed when it is allocated from its kind
(MAX_RIGHT below) and reset when it is freed: no mapping of the frame, in any
address space and through any call, may have more (exo/vm.py AddressSpace.map
and protect refuse it with EPERM). It is a second cap, independent of who owns
the frame: the info page belongs to its environment, yet no alias of it is
ever writable or executable.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable

from exo.abi import PERM_R, PERM_W, PERM_X
from hw.memory import PAGE_SHIFT, PhysicalMemory

FREE = -1
EXO = 0  # owner id of the exokernel itself; environments are numbered from 1
SHARED = -2  # owned by no environment: an image's read-only pages, mapped by its instances (exo/images.py)


class FrameType(enum.IntEnum):
    FREE = 0
    NORMAL = 1  # guest data or code
    PAGETABLE = 2  # never mapped, never writable by guests
    EXO = 3  # exokernel-private: never user-accessible


class FrameKind(enum.IntEnum):
    """What a frame was allocated for; it fixes the frame's maximum right (MAX_RIGHT)."""

    FREE = 0
    GUEST = 1  # page_alloc: ordinary memory, any rights (W^X still holds per frame, exo/vm.py)
    IMAGE_CODE = 2  # a loaded image's code (exo/loader.py copies the image into each environment)
    IMAGE_RODATA = 3  # a loaded image's read-only data
    IMAGE_DATA = 4  # a loaded image's data and bss
    STACK = 5  # an initial stack (loader) or a server stack (exo/structures.py): no executable stacks
    INFO = 6  # the info page (argc, argv): documented read-only (exo/abi.py INFO_PAGE)
    HYPERCALL = 7  # the hypercall page, shared by every environment
    TRAMPOLINE = 8  # a libOS module's trampoline page, shared (exo/libcall.py)
    STRUCT = 9  # the OS-structure page, shared (exo/structures.py)
    PAGETABLE = 10  # never mapped (FrameType.PAGETABLE)
    EXO = 11  # exokernel-private, never mapped (FrameType.EXO)


# The one table of maximum rights (PERM_* bits of exo/abi.py; PERM_R is implied by any mapping).
# Shared code pages are R|X: their bytes are the exokernel's, and every environment executes them.
RX = PERM_R | PERM_X
MAX_RIGHT: dict[FrameKind, int] = {
    FrameKind.FREE: 0,
    FrameKind.GUEST: PERM_R | PERM_W | PERM_X,
    FrameKind.IMAGE_CODE: RX,
    FrameKind.IMAGE_RODATA: PERM_R,
    FrameKind.IMAGE_DATA: PERM_R | PERM_W,
    FrameKind.STACK: PERM_R | PERM_W,
    FrameKind.INFO: PERM_R,
    FrameKind.HYPERCALL: RX,
    FrameKind.TRAMPOLINE: RX,
    FrameKind.STRUCT: RX,
    FrameKind.PAGETABLE: 0,
    FrameKind.EXO: 0,
}
assert set(MAX_RIGHT) == set(FrameKind)

# The kind a frame gets when alloc() is not told one.
DEFAULT_KIND = {FrameType.NORMAL: FrameKind.GUEST, FrameType.PAGETABLE: FrameKind.PAGETABLE,
                FrameType.EXO: FrameKind.EXO}


def rights_str(rights: int) -> str:
    """PERM bits as "RWX" letters ("-" for none)."""
    return "".join(c for c, b in (("R", PERM_R), ("W", PERM_W), ("X", PERM_X)) if rights & b) or "-"


def over_max_right(ft: FrameTable, frame: int, rights: int) -> str | None:
    """Why ``rights`` (PERM bits) exceed ``frame``'s maximum right, or None if they do not."""
    limit = ft.max_right[frame]
    if not rights & ~limit:
        return None
    kind = FrameKind(ft.kind[frame]).name.lower().replace("_", " ")
    return f"frame {frame:#x} ({kind} frame) may be mapped {rights_str(limit)} at most, not {rights_str(rights)}"


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
        # Maximum right (PERM_R|PERM_W|PERM_X bits) and kind of each frame: fixed by alloc(), reset by free().
        self.max_right = array("b", [0]) * n
        self.kind = array("b", [FrameKind.FREE]) * n
        # Frames ever mapped executable. The host writing one (a hypercall that
        # fills a buffer, zeroing a reused frame) must drop Unicorn's translated
        # code, which notices guest writes to code but not host writes.
        self.code = bytearray(n)
        # Live writable and executable mappings of each frame, in all address
        # spaces: W^X holds per frame, not only per mapping (exo/vm.py).
        self.wmaps = array("i", [0]) * n
        self.xmaps = array("i", [0]) * n
        self.on_code_write: Callable[[], None] = lambda: None
        self.on_shared_free: Callable[[int], None] = lambda f: None  # exo/images.py forgets the page
        # Owner id -> its tenant (exo/tenants.py): every frame is charged to its owner's app
        # when handed out and given back when freed. refused: owner -> why its last allocation
        # was refused, for the fault report of an environment that then faults.
        self.tenant_of: dict = {}
        self.refused: dict[int, str] = {}
        first = (reserved_bytes + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
        self.owner[:first] = array("i", [EXO]) * first
        self.type[:first] = array("b", [FrameType.EXO]) * first
        self.kind[:first] = array("b", [FrameKind.EXO]) * first
        # Hand out low frames first: a deterministic order keeps runs reproducible. Frames never
        # handed out are those from `_untouched` up (a list of all 65,536 frames of 256 MiB took
        # 1-6 ms of every boot); freed frames are reused first, most recently freed first.
        self._untouched = first
        self._freed: list[int] = []
        # Freed frames that were once mapped executable: handed out last, so that one flush of
        # Unicorn's translated code (a few ms, and every translation is made again) serves them all
        # (an instance per request frees such a page each time: its libOS's idle loop).
        self._freed_code: list[int] = []

    @property
    def free_count(self) -> int:
        return len(self._freed) + len(self._freed_code) + len(self.owner) - self._untouched

    def free_list(self) -> list[int]:
        """Every free frame, the next one handed out last (the fuzzer's invariants read it)."""
        return [*self._freed_code, *range(len(self.owner) - 1, self._untouched - 1, -1), *self._freed]

    def alloc(self, owner: int, ftype: FrameType = FrameType.NORMAL, *, kind: FrameKind | None = None) -> int:
        """A zeroed frame for ``owner``; returns its frame number.

        ``kind`` fixes the frame's maximum right (MAX_RIGHT) until it is freed;
        by default GUEST for a normal frame, none for page tables and exokernel frames.
        A normal frame the exokernel owns is shared into address spaces (hypercall,
        trampoline, structure pages) and must name its kind: GUEST would let it be mapped RWX.
        """
        t = self.tenant_of.get(owner)
        if t is not None and t.frames_used >= t.frame_limit:
            t.frame_refusals += 1
            why = self.refused[owner] = t.frames_exhausted
            raise QuotaExceeded(why)
        if not self._freed and self._untouched == len(self.owner) and not self._freed_code:
            why = self.refused[owner] = f"guest RAM exhausted: all {len(self.owner)} frames in use"
            raise OutOfFrames(why)
        if t is not None:
            t.frames_used += 1
            if t.frames_used > t.frames_peak:
                t.frames_peak = t.frames_used
        if kind is None or ftype != FrameType.NORMAL:  # a frame that is never mapped has no rights
            if owner == EXO and ftype == FrameType.NORMAL:
                raise AssertionError("an exokernel frame that may be mapped needs a kind (its maximum right)")
            kind = DEFAULT_KIND[ftype]
        if self._freed:
            f = self._freed.pop()
        elif self._untouched < len(self.owner):
            f = self._untouched
            self._untouched += 1
        else:  # only frames that held code are left: one flush for all of them
            self.on_code_write()
            for g in self._freed_code:
                self.code[g] = 0
            self._freed, self._freed_code = self._freed_code, []
            f = self._freed.pop()
        self.owner[f] = owner
        self.type[f] = ftype
        self.kind[f] = kind
        self.max_right[f] = MAX_RIGHT[kind]
        self.refs[f] = 0
        self.memory.zero(f << PAGE_SHIFT, 1 << PAGE_SHIFT)
        if self.code[f]:
            self.code[f] = 0
            self.on_code_write()
        return f

    def transfer(self, f: int, owner: int) -> None:
        """Give frame ``f`` to ``owner`` (page_grant): charged to the new owner's app, given back
        to the old one's; refused (QuotaExceeded) when the new owner's app is at its quota."""
        old = self.tenant_of.get(self.owner[f])
        t = self.tenant_of.get(owner)
        if t is not old:
            if t is not None:
                if t.frames_used >= t.frame_limit:
                    t.frame_refusals += 1
                    why = self.refused[owner] = t.frames_exhausted
                    raise QuotaExceeded(why)
                t.frames_used += 1
                t.frames_peak = max(t.frames_peak, t.frames_used)
            if old is not None:
                old.frames_used -= 1
        self.owner[f] = owner

    def free(self, f: int) -> None:
        if self.type[f] == FrameType.FREE:
            raise AssertionError(f"double free of frame {f:#x}")
        owner = self.owner[f]
        t = self.tenant_of.get(owner)
        if t is not None:
            t.frames_used -= 1
        elif owner == SHARED:
            self.on_shared_free(f)
        self.owner[f] = FREE
        self.type[f] = FrameType.FREE
        self.kind[f] = FrameKind.FREE
        self.max_right[f] = 0
        self.refs[f] = 0
        self.wmaps[f] = self.xmaps[f] = 0
        (self._freed_code if self.code[f] else self._freed).append(f)

    def valid(self, f: int) -> bool:
        return 0 <= f < len(self.owner)

    def usage(self) -> dict[str, int]:
        counts = {t.name.lower(): 0 for t in FrameType}
        for t in self.type:
            counts[FrameType(t).name.lower()] += 1
        return counts
