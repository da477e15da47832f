"""A Linux process's memory: the break, mappings, protection (brk, mmap, munmap, mremap, mprotect).

Protection is applied to the page tables (mmu_update PROTECT through the memory module): PROT_READ,
PROT_WRITE and PROT_EXEC as asked, except writable and executable at once, which exo's W^X refuses
(-EACCES); a copy-on-write page asked to be writable stays copy-on-write (its first write copies
it). PROT_NONE pages are unmapped and remembered as a reservation (``Process.guarded``): an
access faults (SIGSEGV, as a guard page should), and a later mprotect gives fresh zeroed pages
there (Linux would keep their old contents; a guard page has none). Anonymous mappings are fresh
zeroed pages. A file mapping is filled from the file when it is made
(eager, not demand-paged): MAP_PRIVATE is then exactly Linux's private copy; a writable MAP_SHARED
mapping is written back to the file at msync, munmap and exit, so another process's read() sees
the change only then (Linux's page cache makes it visible at once: docs/posix.md lists this).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo.abi import PAGE_SIZE, PERM_COW, PERM_R, PERM_W, PERM_X, MmuOp
from libos.posix.files import O_ACCMODE, O_RDONLY, O_WRONLY
from libos.posix.table import EACCES, EBADF, EINVAL, ENODEV, ENOMEM, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

PAGE_MASK = ~(PAGE_SIZE - 1)
BRK_MAX = 1 << 30  # brk may grow 1 GiB past the image (design section 2)
MMAP_TOP = 0x0000_6FFF_0000_0000  # mmap grows down from here, below the libOS data
MMAP_BOTTOM = 0x0000_6000_1000_0000
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
PROT_READ, PROT_WRITE, PROT_EXEC = 0x1, 0x2, 0x4
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


def map_zero(p: Posix, lo: int, hi: int) -> int:
    """Map fresh zeroed pages over [lo, hi) where nothing is mapped; 0 or a negative errno."""
    for va in range(lo & PAGE_MASK, hi, PAGE_SIZE):
        try:
            p.port.read(va, 1)
            continue  # already mapped (the image's last page, an earlier brk)
        except p.port.Fault:
            pass
        rc = p.hc("page_alloc", 0, va, PERM_R | PERM_W)
        if rc < 0:
            return rc
    return 0


def _unmap(p: Posix, lo: int, hi: int) -> None:
    for va in range(lo, hi, PAGE_SIZE):
        p.hc("page_unmap", 0, va)  # an unmapped page is fine, as on Linux


def _place(p: Posix, addr: int, size: int, flags: int) -> int:
    """Where a new mapping of ``size`` bytes goes: MAP_FIXED's address (its old pages dropped,
    as Linux replaces them) or the next free range below the previous mapping."""
    if flags & MAP_FIXED:
        if addr & (PAGE_SIZE - 1):
            return -EINVAL
        write_back(p, addr, addr + size)
        _unmap(p, addr, addr + size)
        return addr
    va = p.proc.mmap_next - size
    if va < MMAP_BOTTOM:
        return -ENOMEM
    p.proc.mmap_next = va
    return va


@syscall("brk")
def sys_brk(p: Posix, addr: int, *_: int) -> int:
    proc = p.proc
    if addr == 0 or addr < proc.brk_start or addr > proc.brk_start + BRK_MAX:
        return proc.brk  # Linux answers a bad brk with the current break
    if addr > proc.brk and map_zero(p, proc.brk, addr) < 0:
        return proc.brk
    proc.brk = addr  # shrinking keeps the pages (allowed: the break is all Linux promises)
    return addr


@syscall("mmap")
def sys_mmap(p: Posix, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
    if length == 0 or length > 1 << 40 or off & (PAGE_SIZE - 1) or not flags & (MAP_SHARED | MAP_PRIVATE):
        return -EINVAL
    size = (length + PAGE_SIZE - 1) & PAGE_MASK
    f = None
    if not flags & MAP_ANONYMOUS:
        f = p.proc.fds.get(fd & 0xFFFF_FFFF)
        if f is None:
            return -EBADF
        if not hasattr(f, "read_at"):
            return -ENODEV  # a pipe or the console cannot be mapped (Linux: ENODEV)
        mode = f.flags & O_ACCMODE
        if mode == O_WRONLY or (flags & MAP_SHARED and prot & PROT_WRITE and mode == O_RDONLY):
            return -EACCES
    if prot & PROT_WRITE and prot & PROT_EXEC:
        return -EACCES  # exo's W^X (docs/posix.md)
    va = _place(p, addr, size, flags)
    if va < 0:
        return va
    if prot & 7 == 0:  # PROT_NONE: a reservation, no pages (a thread stack's guard, address space kept)
        p.proc.guarded.append((va, va + size))
        return va
    # Eager: filled writable, then given the protection asked for.
    if map_zero(p, va, va + size) < 0:
        return -ENOMEM
    if f is not None:
        data = f.read_at(p, off, length)  # past the end of the file the pages stay zero, as on Linux
        if data:
            p.port.write(va, data)
        if flags & MAP_SHARED and prot & PROT_WRITE:
            p.proc.shared_maps.append((va, length, f, off))
    if prot & 7 != PROT_READ | PROT_WRITE:
        rc = sys_mprotect(p, va, size, prot)
        if rc < 0:
            return rc
    return va


def write_back(p: Posix, lo: int, hi: int, keep: bool = False) -> None:
    """Write the shared file mappings overlapping [lo, hi) back to their files (and forget them
    unless ``keep``: msync keeps them mapped)."""
    kept = []
    for m in p.proc.shared_maps:
        va, length, f, off = m
        if va < hi and lo < va + length:
            try:
                f.pwrite_bytes(p, p.port.read(va, length), off)
            except p.port.Fault:
                pass  # unmapped meanwhile: nothing to write
            if not keep:
                continue
        kept.append(m)
    p.proc.shared_maps = kept


@syscall("msync")
def sys_msync(p: Posix, addr: int, length: int, *_: int) -> int:
    if addr & (PAGE_SIZE - 1):
        return -EINVAL
    write_back(p, addr, addr + length, keep=True)
    return 0


@syscall("munmap")
def sys_munmap(p: Posix, addr: int, length: int, *_: int) -> int:
    if addr & (PAGE_SIZE - 1) or length == 0:
        return -EINVAL
    end = (addr + length + PAGE_SIZE - 1) & PAGE_MASK
    write_back(p, addr, end)
    _unmap(p, addr, end)
    # Reservations inside the range are gone; one that straddles it keeps its outer parts.
    kept = []
    for lo, hi in p.proc.guarded:
        kept += [(a, b) for a, b in ((lo, min(hi, addr)), (max(lo, end), hi)) if a < b]
    p.proc.guarded = kept
    return 0


@syscall("mremap")
def sys_mremap(p: Posix, old: int, old_len: int, new_len: int, flags: int, new_addr: int, *_: int) -> int:
    """Shrink in place, or move to a fresh range (MREMAP_MAYMOVE) copying the contents; growing in
    place is refused as when the next pages are taken, so callers (musl's realloc) move or copy."""
    if old & (PAGE_SIZE - 1) or new_len == 0 or flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED):
        return -EINVAL
    old_size = (old_len + PAGE_SIZE - 1) & PAGE_MASK
    new_size = (new_len + PAGE_SIZE - 1) & PAGE_MASK
    if new_size <= old_size and not flags & MREMAP_FIXED:
        _unmap(p, old + new_size, old + old_size)
        return old
    if not flags & MREMAP_MAYMOVE:
        return -ENOMEM
    try:
        data = p.port.read(old, old_size)
    except p.port.Fault:
        return -14  # EFAULT: the old range is not all mapped
    va = _place(p, new_addr, new_size, MAP_FIXED if flags & MREMAP_FIXED else 0)
    if va < 0 or map_zero(p, va, va + new_size) < 0:
        return -ENOMEM
    p.port.write(va, data[: min(old_size, new_size)])
    _unmap(p, old, old + old_size)
    return va


def _guarded(p: Posix, va: int) -> bool:
    return any(lo <= va < hi for lo, hi in p.proc.guarded)


@syscall("mprotect")
def sys_mprotect(p: Posix, addr: int, length: int, prot: int, *_: int) -> int:
    if addr & (PAGE_SIZE - 1) or prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | 0x0300_0000):
        return -EINVAL  # (PROT_GROWSDOWN/UP accepted and ignored)
    prot &= 7
    if prot & PROT_WRITE and prot & PROT_EXEC:
        return -EACCES  # exo's W^X (docs/posix.md)
    mem = p.siblings.get("memory")
    if mem is None or not length:
        return 0
    from libos.memory import pte_perm

    end = (addr + length + PAGE_SIZE - 1) & PAGE_MASK
    pages = [(va, mem._pte(va)) for va in range(addr, end, PAGE_SIZE)]
    if any(not pte & 1 and not _guarded(p, va) for va, pte in pages):
        return -ENOMEM  # part of the range is not mapped, as Linux answers
    want = PERM_R | (PERM_W if prot & PROT_WRITE else 0) | (PERM_X if prot & PROT_EXEC else 0)
    reqs = []
    for va, pte in pages:
        if not prot:
            if pte & 1:
                reqs.append((MmuOp.UNMAP, 0, va, 0, 0))
            continue
        if not pte & 1:  # a reserved page becomes accessible: a fresh zeroed one
            rc = p.hc("page_alloc", 0, va, want)
            if rc < 0:
                return -ENOMEM
            continue
        perm = want
        if pte_perm(pte) & PERM_COW and want & PERM_W:
            perm = (want & ~PERM_W) | PERM_COW  # stays copy-on-write: its first write copies it
        if perm != pte_perm(pte):
            reqs.append((MmuOp.PROTECT, 0, va, 0, perm))
    if not prot:
        p.proc.guarded.append((addr, end))
    rc, _ = mem._mmu(reqs) if reqs else (0, 0)
    return -ENOMEM if rc < 0 else 0


@syscall("madvise")
def sys_madvise(p: Posix, *_: int) -> int:
    return 0  # advice only; MADV_DONTNEED's zeroing is not modelled (docs/posix.md)
