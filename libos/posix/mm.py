"""A Linux process's memory: the break, anonymous mappings, protection (brk, mmap, munmap, mprotect)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo.abi import PAGE_SIZE, PERM_R, PERM_W
from libos.posix.table import EINVAL, ENOMEM, ENOSYS, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

PAGE_MASK = ~(PAGE_SIZE - 1)
BRK_MAX = 1 << 30  # brk may grow 1 GiB past the image (design section 2)
MMAP_TOP = 0x0000_6FFF_0000_0000  # anonymous mmap grows down from here, below the libOS data
MMAP_BOTTOM = 0x0000_6000_1000_0000
MAP_FIXED, MAP_ANONYMOUS = 0x10, 0x20


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
    if not flags & MAP_ANONYMOUS:
        return -ENOSYS  # file mappings need the file system (docs/posix.md)
    if length == 0:
        return -EINVAL
    size = (length + PAGE_SIZE - 1) & PAGE_MASK
    proc = p.proc
    if flags & MAP_FIXED:
        if addr & (PAGE_SIZE - 1):
            return -EINVAL
        va = addr
    else:
        va = proc.mmap_next - size
        if va < MMAP_BOTTOM:
            return -ENOMEM
        proc.mmap_next = va
    # Eager and writable (W^X: never executable); mprotect is accepted without narrowing yet.
    rc = map_zero(p, va, va + size)
    return -ENOMEM if rc < 0 else va


@syscall("munmap")
def sys_munmap(p: Posix, addr: int, length: int, *_: int) -> int:
    if addr & (PAGE_SIZE - 1) or length == 0:
        return -EINVAL
    for va in range(addr, addr + length, PAGE_SIZE):
        p.hc("page_unmap", 0, va)  # an unmapped page is fine, as on Linux
    return 0


@syscall("mprotect")
def sys_mprotect(p: Posix, *_: int) -> int:
    return 0  # accepted, not applied (RELRO stays writable): docs/posix.md
