"""x86-64 4-level page tables living in emulated physical memory.

The vCPU walks these same tables on every guest access; the helpers here let
the OS layer build them and check guest pointers against them with the same
rules the hardware applies (Intel SDM Vol. 3A, section 4.5 "4-level paging"
and section 4.6 "Access rights"):

* a user-mode access needs U/S=1 at every level of the walk;
* a write needs R/W=1 at every level (for user mode always, for supervisor
  mode when CR0.WP=1, which this machine sets);
* an instruction fetch is refused if XD (bit 63) is set at any level
  (EFER.NXE is set by this machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from hw.errors import MachineConfigError
from hw.memory import PAGE_SIZE, PhysicalMemory

PTE_P = 1 << 0  # present
PTE_W = 1 << 1  # writable
PTE_U = 1 << 2  # user accessible
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5  # accessed (set by the CPU)
PTE_D = 1 << 6  # dirty (set by the CPU)
PTE_PS = 1 << 7  # large page (in a PDPTE or PDE)
PTE_G = 1 << 8
PTE_AVAIL = 0x7 << 9  # bits 9-11 are ignored by the CPU: free for the OS
PTE_NX = 1 << 63  # execute disable

ADDR_MASK = 0x000F_FFFF_FFFF_F000
USER_TOP = 0x0000_8000_0000_0000  # first non-canonical address of the lower half

LEVEL_SHIFTS = (39, 30, 21, 12)  # PML4, PDPT, PD, PT
LEVEL_NAMES = ("PML4", "PDPT", "PD", "PT")

AllocTable = Callable[[], int]


class Translation(NamedTuple):
    """What the hardware concludes for one virtual address (a tuple: defining it costs far less
    start-up than a frozen dataclass)."""

    va: int
    pa: int
    user: bool
    writable: bool
    executable: bool
    page_size: int


def is_canonical(va: int) -> bool:
    """Bits 63..47 must all equal bit 47 (SDM 3.3.7.1)."""
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def _check_page_aligned(what: str, value: int) -> None:
    if value & (PAGE_SIZE - 1):
        raise MachineConfigError(f"{what} {value:#x} is not aligned to {PAGE_SIZE:#x}")


def translate(mem: PhysicalMemory, cr3: int, va: int) -> Translation | None:
    """Walk the tables at ``cr3`` for ``va``; None if not present."""
    if not is_canonical(va):
        return None
    table = cr3 & ADDR_MASK
    user = writable = True
    nx = False
    read = mem.read_u64
    for level, shift in enumerate(LEVEL_SHIFTS):
        entry = read(table + ((va >> shift) & 511) * 8)
        if not entry & PTE_P:
            return None
        user = user and bool(entry & PTE_U)
        writable = writable and bool(entry & PTE_W)
        nx = nx or bool(entry & PTE_NX)
        if level == 3 or (level in (1, 2) and entry & PTE_PS):
            size = 1 << shift
            base = entry & ADDR_MASK & ~(size - 1)
            return Translation(va, base | (va & (size - 1)), user, writable, not nx, size)
        table = entry & ADDR_MASK
    raise AssertionError("unreachable")


def entry_address(
    mem: PhysicalMemory, cr3: int, va: int, alloc_table: AllocTable | None = None
) -> int | None:
    """Physical address of the PT entry (level-1 slot) for ``va``.

    Missing intermediate tables are created with ``alloc_table`` (which must
    return a zeroed, page-aligned physical frame) or, without it, None is
    returned. Intermediate entries are P|W|U: the leaf decides the rights,
    which is how Linux and xv6 set them too.
    """
    table = cr3 & ADDR_MASK
    for shift in LEVEL_SHIFTS[:3]:
        slot = table + ((va >> shift) & 511) * 8
        entry = mem.read_u64(slot)
        if not entry & PTE_P:
            if alloc_table is None:
                return None
            new = alloc_table()
            _check_page_aligned("page-table frame", new)
            mem.check(new, PAGE_SIZE)
            mem.write_u64(slot, new | PTE_P | PTE_W | PTE_U)
            entry = mem.read_u64(slot)
        elif entry & PTE_PS:
            raise MachineConfigError(f"virtual address {va:#x} lies in a large page")
        table = entry & ADDR_MASK
    return table + ((va >> 12) & 511) * 8


def map_page(
    mem: PhysicalMemory, cr3: int, va: int, pa: int, flags: int, alloc_table: AllocTable
) -> None:
    """Map the 4 KiB page at ``va`` to frame ``pa`` with ``flags`` (P is implied)."""
    _check_page_aligned("virtual address", va)
    _check_page_aligned("physical address", pa)
    if not is_canonical(va):
        raise MachineConfigError(f"virtual address {va:#x} is not canonical")
    mem.check(pa, PAGE_SIZE)
    slot = entry_address(mem, cr3, va, alloc_table)
    assert slot is not None
    mem.write_u64(slot, (pa & ADDR_MASK) | (flags & ~ADDR_MASK) | PTE_P)


def unmap_page(mem: PhysicalMemory, cr3: int, va: int) -> int | None:
    """Clear the mapping of ``va``; return the frame it pointed to, if any.

    The caller must flush the TLB (``VCpu.flush_tlb``) before guest code runs
    again, as on real hardware (``invlpg``).
    """
    _check_page_aligned("virtual address", va)
    slot = entry_address(mem, cr3, va)
    if slot is None:
        return None
    entry = mem.read_u64(slot)
    mem.write_u64(slot, 0)
    return entry & ADDR_MASK if entry & PTE_P else None


def walk_tables(mem: PhysicalMemory, cr3: int) -> list[tuple[int, int, int, int]]:
    """Every present 4 KiB leaf under ``cr3`` as (va, pa, flags, pte_address).

    Also yields nothing for large pages (this machine's OS does not use them).
    """
    out = []
    root = cr3 & ADDR_MASK
    read = mem.read_u64
    for i4 in range(256):  # lower (user) half only
        e4 = read(root + i4 * 8)
        if not e4 & PTE_P or e4 & ADDR_MASK == root:  # skip a recursive (self) entry
            continue
        t3 = e4 & ADDR_MASK
        for i3 in range(512):
            e3 = read(t3 + i3 * 8)
            if not e3 & PTE_P or e3 & PTE_PS:
                continue
            t2 = e3 & ADDR_MASK
            for i2 in range(512):
                e2 = read(t2 + i2 * 8)
                if not e2 & PTE_P or e2 & PTE_PS:
                    continue
                t1 = e2 & ADDR_MASK
                for i1 in range(512):
                    e1 = read(t1 + i1 * 8)
                    if e1 & PTE_P:
                        va = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12)
                        out.append((va, e1 & ADDR_MASK, e1 & ~ADDR_MASK, t1 + i1 * 8))
    return out


def table_frames(mem: PhysicalMemory, cr3: int) -> list[int]:
    """Every page-table frame reachable from ``cr3`` (lower half), root included."""
    frames = [cr3 & ADDR_MASK]
    read = mem.read_u64
    pending = [(cr3 & ADDR_MASK, 0)]
    while pending:
        table, level = pending.pop()
        limit = 256 if level == 0 else 512
        if level == 3:
            continue
        for i in range(limit):
            e = read(table + i * 8)
            if e & PTE_P and not e & PTE_PS and e & ADDR_MASK != cr3 & ADDR_MASK:
                frames.append(e & ADDR_MASK)
                pending.append((e & ADDR_MASK, level + 1))
    return frames
