"""Address spaces: one set of page tables per environment, built only by the exokernel.

Guests never write page tables: the frames holding them are typed PAGETABLE in
the frame table and are never mapped. Every mapping the exokernel installs is
checked here: the frame must be a NORMAL frame the environment may use, the
address must be in the user half and outside the exokernel-managed region, no
page is ever both writable and executable (W^X), and no mapping gives more than
its frame's maximum right (exo/frames.py MAX_RIGHT). map() and protect() are the
only writers of user page-table entries: every call that maps (the hypercalls,
fork, the loader, libOS linking, the OS structures) goes through them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from exo.abi import (
    EXO_REGION_END,
    HYPERCALL_PAGE,
    PERM_AVAIL,
    PERM_R,
    PERM_VALID,
    PERM_W,
    PERM_X,
    USER_BOTTOM,
    USER_TOP,
    UVPT,
    UVPT_END,
    UVPT_SLOT,
    Errno,
)
from exo.errors import HypercallError
from exo.frames import FrameKind, FrameTable, FrameType, OutOfFrames, over_max_right
from hw.cpu import VCpu
from hw.memory import PAGE_SHIFT, PAGE_SIZE, ZERO_PAGE, PhysicalMemory
from hw.paging import ADDR_MASK, PTE_NX, PTE_P, PTE_U, PTE_W, entry_address, translate

# Virtual range the exokernel manages itself (hypercall page, libOS trampolines, info page).
EXO_REGION = (HYPERCALL_PAGE, EXO_REGION_END)


def perm_to_pte(perm: int) -> int:
    """Guest permission bits (exo/abi.py) to x86 PTE bits; raises EINVAL on bad combinations."""
    # LAB 2 BEGIN perm: refuse (EINVAL) permission bits that are unknown, lack PERM_R, or ask for W and X together
    if perm & ~PERM_VALID or not perm & PERM_R:
        raise HypercallError(Errno.EINVAL, f"bad permission bits {perm:#x}")
    if perm & PERM_W and perm & PERM_X:
        raise HypercallError(Errno.EINVAL, "W^X: a page cannot be writable and executable")
    # LAB 2 STUB
    # LAB 2 END
    pte = PTE_P | PTE_U | (perm & PERM_AVAIL)
    if perm & PERM_W:
        pte |= PTE_W
    if not perm & PERM_X:
        pte |= PTE_NX
    return pte


def pte_to_perm(pte: int) -> int:
    perm = PERM_R | (pte & PERM_AVAIL)
    if pte & PTE_W:
        perm |= PERM_W
    if not pte & PTE_NX:
        perm |= PERM_X
    return perm


def check_user_va(va: int, *, exo: bool = False) -> None:
    """A page address a guest may name: aligned, in the user half, above the low 64 KiB, not exo-managed.

    The low 64 KiB stays the machine's (its boot and probe pages, hw/cpu.py). The
    descriptor tables live in the kernel half (hw/cpu.py GDT_LINEAR), which no
    guest address can name: a guest that could map a page there would write its
    own segment descriptors and call gates.
    """
    # LAB 2 BEGIN user_va: refuse a page address that is unaligned or outside the user half (EINVAL), or in the low 64 KiB, the UVPT window or (unless exo) the exokernel's region (EPERM)
    if va & (PAGE_SIZE - 1) or not 0 <= va < USER_TOP:
        raise HypercallError(Errno.EINVAL, f"bad page address {va:#x}")
    if va < USER_BOTTOM:
        raise HypercallError(Errno.EPERM, f"{va:#x} is in the machine's reserved low 64 KiB")
    if UVPT <= va < UVPT_END:
        raise HypercallError(Errno.EPERM, f"{va:#x} is in the read-only page-table window")
    if not exo and EXO_REGION[0] <= va < EXO_REGION[1]:
        raise HypercallError(Errno.EPERM, f"{va:#x} is in the exokernel-managed region")
    # LAB 2 STUB
    # LAB 2 END


def pte_rights(pte: int) -> int:
    """The PERM_R/W/X rights a user PTE gives (pte_to_perm without the libOS's available bits)."""
    return pte_to_perm(pte) & ~PERM_AVAIL


def check_max_right(ft: FrameTable, frame: int, pte: int) -> None:
    """EPERM if a mapping with ``pte`` would give more than ``frame``'s maximum right (exo/frames.py)."""
    # LAB 2 BEGIN max_right: refuse (EPERM) a mapping whose rights exceed the frame's maximum right (ft.max_right)
    rights = pte_rights(pte)
    if rights & ~ft.max_right[frame]:
        raise HypercallError(Errno.EPERM, over_max_right(ft, frame, rights))
    # LAB 2 STUB
    # LAB 2 END


def _count_wx(ft: FrameTable, frame: int, pte: int, delta: int) -> None:
    if pte & PTE_W:
        ft.wmaps[frame] += delta
    if not pte & PTE_NX:
        ft.xmaps[frame] += delta


def _check_wx(ft: FrameTable, frame: int, pte: int, replaced: int) -> None:
    """W^X per frame: no frame is writable through one mapping and executable through another.

    ``replaced`` is the entry this mapping replaces for the same frame (0 if none).
    """
    # LAB 2 BEGIN wx: refuse (EPERM) a writable mapping of a frame mapped executable elsewhere, and the reverse (ft.wmaps, ft.xmaps)
    w_elsewhere = ft.wmaps[frame] - (1 if replaced & PTE_W else 0)
    x_elsewhere = ft.xmaps[frame] - (1 if replaced and not replaced & PTE_NX else 0)
    if pte & PTE_W and x_elsewhere > 0:
        raise HypercallError(Errno.EPERM, f"W^X: frame {frame:#x} is mapped executable elsewhere")
    if not pte & PTE_NX and w_elsewhere > 0:
        raise HypercallError(Errno.EPERM, f"W^X: frame {frame:#x} is mapped writable elsewhere")
    # LAB 2 STUB
    # LAB 2 END


class SnapshotMap:
    """How an instance maps a snapshot's pages: ``pages`` is [(va, frame, pte flags)] (the rights
    the instance gets), made once per snapshot into what ``AddressSpace.map_snapshot`` writes."""

    def __init__(self, pages: list[tuple[int, int, int]]) -> None:
        by_region: dict[int, list[tuple[int, int, int, int]]] = {}
        for va, frame, flags in pages:
            by_region.setdefault(va >> 21, []).append(((va >> PAGE_SHIFT) & 511, va, frame, flags))
        self.regions: list[tuple[int, bytes, list[tuple[int, int, int, int]]]] = []
        for region, entries in by_region.items():
            image = bytearray(PAGE_SIZE)
            for slot, _, frame, flags in entries:
                image[slot * 8:slot * 8 + 8] = ((frame << PAGE_SHIFT) | (flags & ~ADDR_MASK) | PTE_P).to_bytes(8, "little")
            self.regions.append((region << 21, bytes(image), entries))
        self.frames = [frame for _, frame, _ in pages]
        self.writable = [frame for _, frame, flags in pages if flags & PTE_W]
        self.executable = [frame for _, frame, flags in pages if not flags & PTE_NX]
        self.frame_counts = Counter(self.frames)
        self.flags = {va: flags for va, _, flags in pages}
        self.frame_at = {va: frame for va, frame, _ in pages}


_OWN_KINDS = {FrameKind.STACK, FrameKind.IMAGE_DATA, FrameKind.GUEST}  # a copy keeps such a frame's kind
TLB_ENTRIES = 1024  # translations the exokernel keeps per address space (emptied when full)


class AddressSpace:
    """The page tables of one environment and the frames mapped through them."""

    def __init__(self, frames: FrameTable, owner: int) -> None:
        self.frames = frames
        self.mem: PhysicalMemory = frames.memory
        self.owner = owner
        self.table_frames: list[int] = []
        self.frame_maps: dict[int, int] = {}  # frame -> number of mappings here
        self.pages = 0  # pages mapped
        self._wx_flags: dict[int, int] = {}  # va -> pte flags of writable or executable mappings
        self._frame_at: dict[int, int] = {}  # va -> frame, for those: destroy needs no page-table walk
        # 2 MiB region -> its leaf table's physical address, as map() finds or makes them: mapping
        # the next page of a region needs no walk (tables are freed only by destroy).
        self._leaf_tables: dict[int, int] = {}
        # Copy-on-write pages of an instance started from a snapshot (exo/instances.py): page va ->
        # the PTE flags its own copy gets when it is first written (until then it maps the
        # template's frame read-only). ``flush`` drops the CPU's cached translations of this space
        # when a copy replaces one (set by the kernel).
        self.cow: dict[int, int] = {}
        self.flush: Callable[[], None] = lambda: None
        # The exokernel's own TLB for user-memory access (user_chunks): page -> (frame address,
        # user, writable). Only the methods below change these page tables, and each
        # empties it, so it never holds a stale translation.
        self._tlb: dict[int, tuple[int, bool, bool]] = {}
        self.root = self._alloc_table()
        # The page tables themselves, readable (never writable) by the guest at
        # UVPT through a recursive entry: W=0 there makes every access through
        # the window read-only, NX makes it non-executable (SDM 4.6).
        self.mem.write_u64(self.root + UVPT_SLOT * 8, self.root | PTE_P | PTE_U | PTE_NX)
        # The CPU's descriptor tables (kernel half, supervisor-only, one chain of machine
        # frames shared by every address space: not in table_frames, never freed here).
        VCpu.link_system_tables(self.mem, self.root)

    def _alloc_table(self) -> int:
        try:
            f = self.frames.alloc(self.owner, FrameType.PAGETABLE)
        except OutOfFrames as e:
            raise HypercallError(Errno.ENOMEM, f"no frame for a page table: {e}") from None
        self.table_frames.append(f)
        return f << PAGE_SHIFT

    # ---------------------------------------------------------------- lookups
    def lookup(self, va: int) -> tuple[int, int] | None:
        """(frame, pte flags) mapped at page ``va``, or None."""
        slot = entry_address(self.mem, self.root, va)
        if slot is None:
            return None
        pte = self.mem.read_u64(slot)
        if not pte & PTE_P:
            return None
        return (pte & ADDR_MASK) >> PAGE_SHIFT, pte & ~ADDR_MASK

    def translate(self, va: int):
        return translate(self.mem, self.root, va)

    def may_use(self, frame: int) -> bool:
        return frame in self.frame_maps

    # --------------------------------------------------------------- changes
    def map(self, va: int, frame: int, pte_flags: int) -> None:
        """Map ``frame`` at ``va``, replacing (and releasing) any old mapping."""
        self._tlb.clear()
        if self.cow:
            self.cow.pop(va, None)  # a new mapping replaces a copy-on-write one
        ft = self.frames
        if not ft.valid(frame) or ft.type[frame] != FrameType.NORMAL:
            raise HypercallError(Errno.EPERM, f"frame {frame:#x} is not a normal guest frame")
        m = ft.max_right[frame]  # check_max_right, inlined: map() is on the page_alloc path
        if not m or (pte_flags & PTE_W and not m & PERM_W) or (not pte_flags & PTE_NX and not m & PERM_X):
            check_max_right(ft, frame, pte_flags)
        table = self._leaf_tables.get(va >> 21)
        if table is None:
            slot = entry_address(self.mem, self.root, va, self._alloc_table_pa)
            self._leaf_tables[va >> 21] = slot & ~(PAGE_SIZE - 1)
        else:
            slot = table + ((va >> PAGE_SHIFT) & 511) * 8
        old = self.mem.read_u64(slot)
        same = old & PTE_P and (old & ADDR_MASK) >> PAGE_SHIFT == frame
        _check_wx(ft, frame, pte_flags, old if same else 0)
        _count_wx(ft, frame, pte_flags, +1)
        ft.refs[frame] += 1
        if not pte_flags & PTE_NX:
            ft.code[frame] = 1
        self.frame_maps[frame] = self.frame_maps.get(frame, 0) + 1
        self.mem.write_u64(slot, (frame << PAGE_SHIFT) | (pte_flags & ~ADDR_MASK) | PTE_P)
        self._wx_flags[va] = pte_flags
        self._frame_at[va] = frame
        if old & PTE_P:
            _count_wx(ft, (old & ADDR_MASK) >> PAGE_SHIFT, old, -1)
            self._release((old & ADDR_MASK) >> PAGE_SHIFT)
        else:
            self.pages += 1

    def map_snapshot(self, plan: SnapshotMap) -> None:
        """Map a snapshot's pages (exo/instances.py) into this new address space: each leaf table
        written whole from the plan's image of it, the frame table's counts kept as ``map`` keeps
        them. Each page is mapped by the template with these rights or more (a copy-on-write page
        loses W), so the max-right and W^X checks its mappings passed hold here too. A leaf table
        this space already has (a region shared with the hypercall page) is merged entry by entry."""
        self._tlb.clear()
        ft, mem = self.frames, self.mem
        for region_va, image, entries in plan.regions:
            table = self._leaf_tables.get(region_va >> 21)
            if table is None:
                table = entry_address(mem, self.root, region_va, self._alloc_table_pa) & ~(PAGE_SIZE - 1)
                self._leaf_tables[region_va >> 21] = table
                if mem.read(table, PAGE_SIZE) == ZERO_PAGE:  # a table of its own, still empty: as a whole
                    mem.write(table, image)
                    continue
            for slot, va, _, _ in entries:  # merged into a table in use
                if mem.read_u64(table + slot * 8) & PTE_P:
                    raise HypercallError(Errno.EINVAL, f"{va:#x} is mapped already")
                mem.write(table + slot * 8, image[slot * 8:slot * 8 + 8])
        refs = ft.refs
        for f in plan.frames:
            refs[f] += 1
        for f in plan.writable:
            ft.wmaps[f] += 1
        for f in plan.executable:
            ft.xmaps[f] += 1
            ft.code[f] = 1
        fm = self.frame_maps
        for f, n in plan.frame_counts.items():
            fm[f] = fm.get(f, 0) + n
        self._wx_flags.update(plan.flags)
        self._frame_at.update(plan.frame_at)
        self.pages += len(plan.frames)

    def break_cow(self, va: int) -> bool:
        """Give the copy-on-write page at ``va`` its own copy (True), if it is one. ENOMEM if no frame."""
        page = va & ~(PAGE_SIZE - 1)
        flags = self.cow.pop(page, None)
        if flags is None:
            return False
        shared = self.lookup(page)[0]
        kind = FrameKind(self.frames.kind[shared])
        try:
            copy = self.frames.alloc(self.owner, FrameType.NORMAL, kind=kind if kind in _OWN_KINDS else FrameKind.GUEST)
        except OutOfFrames as e:
            self.cow[page] = flags
            raise HypercallError(Errno.ENOMEM, f"no frame for a copy-on-write page: {e}") from None
        self.mem.write(copy << PAGE_SHIFT, self.mem.read(shared << PAGE_SHIFT, PAGE_SIZE))
        self.map(page, copy, flags)
        self.flush()
        return True

    def _alloc_table_pa(self) -> int:
        return self._alloc_table()

    def protect(self, va: int, pte_flags: int) -> None:
        if self.cow:
            self.break_cow(va)  # the page is its own from now on, whatever rights it gets
        self._tlb.clear()
        slot = entry_address(self.mem, self.root, va)
        pte = self.mem.read_u64(slot) if slot is not None else 0
        if not pte & PTE_P:
            raise HypercallError(Errno.EINVAL, f"nothing is mapped at {va:#x}")
        frame = (pte & ADDR_MASK) >> PAGE_SHIFT
        check_max_right(self.frames, frame, pte_flags)
        _check_wx(self.frames, frame, pte_flags, pte)
        _count_wx(self.frames, frame, pte, -1)
        _count_wx(self.frames, frame, pte_flags, +1)
        self._wx_flags[va] = pte_flags
        self.mem.write_u64(slot, (pte & ADDR_MASK) | (pte_flags & ~ADDR_MASK) | PTE_P)
        if not pte_flags & PTE_NX:
            self.frames.code[frame] = 1

    def unmap(self, va: int) -> bool:
        self._tlb.clear()
        if self.cow:
            self.cow.pop(va, None)
        slot = entry_address(self.mem, self.root, va)
        if slot is None:
            return False
        pte = self.mem.read_u64(slot)
        if not pte & PTE_P:
            return False
        self.mem.write_u64(slot, 0)
        self.pages -= 1
        self._wx_flags.pop(va, None)
        self._frame_at.pop(va, None)
        _count_wx(self.frames, (pte & ADDR_MASK) >> PAGE_SHIFT, pte, -1)
        self._release((pte & ADDR_MASK) >> PAGE_SHIFT)
        return True

    def _release(self, frame: int) -> None:
        n = self.frame_maps[frame] - 1
        if n:
            self.frame_maps[frame] = n
        else:
            del self.frame_maps[frame]
        ft = self.frames
        ft.refs[frame] -= 1
        if ft.refs[frame] == 0:
            ft.free(frame)

    def destroy(self) -> int:
        """Unmap everything and free the page tables; returns frames released."""
        self._tlb.clear()
        released = 0
        frame_at = self._frame_at
        for va, flags in self._wx_flags.items():
            _count_wx(self.frames, frame_at[va], flags, -1)
        self._wx_flags.clear()
        frame_at.clear()
        self._leaf_tables.clear()
        self.cow.clear()
        for frame, n in list(self.frame_maps.items()):
            ft = self.frames
            ft.refs[frame] -= n
            if ft.refs[frame] == 0:
                ft.free(frame)
                released += 1
        self.frame_maps.clear()
        for f in self.table_frames:
            self.frames.free(f)
        released += len(self.table_frames)
        self.table_frames.clear()
        self.pages = 0
        return released

    # ------------------------------------------------- user memory access
    def user_chunks(self, va: int, length: int, write: bool) -> list[tuple[int, int]]:
        """Physical (address, length) pieces of a user buffer, checked as the CPU would.

        Raises EFAULT if any byte is unmapped, not user-accessible or (for
        ``write``) not writable; EINVAL if the range wraps or leaves the user half.
        """
        if length == 0:
            return []
        if va < 0 or va + length > USER_TOP or va + length < va:
            raise HypercallError(Errno.EFAULT, f"buffer {va:#x}+{length:#x} leaves user space")
        out = []
        tlb = self._tlb
        while length:
            page = va >> PAGE_SHIFT
            e = tlb.get(page)
            if e is None:
                t = translate(self.mem, self.root, va)
                if t is None:
                    raise HypercallError(Errno.EFAULT, f"bad user address {va:#x}")
                if len(tlb) >= TLB_ENTRIES:
                    tlb.clear()
                e = tlb[page] = (t.pa - (va & (PAGE_SIZE - 1)), t.user, t.writable)
            if write and not e[2] and self.cow and self.break_cow(va):
                # a copy-on-write page written by the exokernel for the guest: its own copy first
                t = translate(self.mem, self.root, va)
                e = tlb[page] = (t.pa - (va & (PAGE_SIZE - 1)), t.user, t.writable)
            # LAB 2 BEGIN user_mem: refuse (EFAULT) a page the guest itself could not access: supervisor-only, or read-only when the exokernel writes
            if not e[1] or (write and not e[2]):
                raise HypercallError(Errno.EFAULT, f"bad user address {va:#x}")
            # LAB 2 STUB
            # LAB 2 END
            off = va & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            out.append((e[0] + off, n))
            va += n
            length -= n
        return out

    def read(self, va: int, length: int) -> bytes:
        view = self.mem.view
        return b"".join(bytes(view[pa : pa + n]) for pa, n in self.user_chunks(va, length, False))

    def write(self, va: int, data: bytes) -> None:
        view = self.mem.view
        code = self.frames.code
        off = 0
        stale = False
        for pa, n in self.user_chunks(va, len(data), True):
            view[pa : pa + n] = data[off : off + n]
            off += n
            stale = stale or bool(code[pa >> PAGE_SHIFT])
        if stale:
            self.frames.on_code_write()

    def fetch_code(self, va: int, length: int = 15) -> bytes:
        """Up to ``length`` instruction bytes at ``va`` (stops at an unmapped page)."""
        out = b""
        while length > 0:
            t = translate(self.mem, self.root, va)
            if t is None or not t.user:  # a report shows no supervisor-only bytes (the GDT's page)
                break
            n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += self.mem.read(t.pa, n)
            va += n
            length -= n
        return out


def flush_after_unmap(cpu: VCpu) -> None:
    """After removing or narrowing a mapping: the TLB must forget it (as `invlpg` would)."""
    cpu.flush_tlb()
