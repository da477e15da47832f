"""memory: a heap, a user-level page-fault handler, copy-on-write fork, demand-zero pages.

The exokernel has no fork and no pager: it maps frames when asked (page_alloc,
page_map, mmu_update), shows an environment its own page tables read-only (the
UVPT window, exo/abi.py) and hands every #PF to the handler the environment
registered (env_set_upcall). Everything else is here, in the library, as in
JOS's lib/fork.c and lib/pgfault.c.

Entries (the slot order is the guest ABI, shared by both implementations)::

    malloc(size)          16-byte aligned block, 0 when out of heap; malloc(0) is a unique pointer
    free(ptr)             0; free(0) is a no-op; a pointer not from malloc (or freed twice) -> -EINVAL
    fork()                child id in the parent, 0 in the child, negative errno on failure
    sbrk(increment)       the old break (increment may be negative), -ENOMEM outside the heap
    pgfault_upcall(frame) the page-fault handler: the upcall entry (RDI = RSP = the UTrapframe)

Address space of the module (its data area, ``data_base`` = LIBOS_DATA + 2 * 256 MiB)::

    +0                    the "done" counter mmu_update writes, then its 32-byte requests
                          (REQ_PAGES pages; a batch maps only the pages it needs)
    +PFTEMP_OFF           PFTEMP: the scratch mapping a page is copied through
    +64 MiB .. +192 MiB   the heap: demand-zero below the break

The page-fault handler (``pgfault_upcall``; ``start`` maps the exception stack
page below UXSTACK_TOP and registers the entry):

* a write to a present page marked PERM_COW: a fresh frame is allocated at
  PFTEMP, the page copied into it, the frame mapped writable at the faulting
  page and PFTEMP unmapped (page_alloc + one mmu_update: 2 hypercalls);
* a not-present page in the heap below the break: a zeroed page (page_alloc);
* anything else it cannot handle: it unregisters itself (env_set_upcall entry 0) and
  resumes the faulting context, so the fault happens again with no handler and
  the exokernel stops the environment with its standard fault report.

Library code takes no CPU faults: a module that reads or writes user memory
through its port (a console writing its staging page, readline filling a
buffer) would get EFAULT on a copy-on-write or demand-zero page. The module
therefore also installs itself as the port's pager (``LibPort.pager``): the
same two fixes are applied when a library access finds such a page, and the
access is retried. Those are counted in ``stats["port_faults"]``, not as upcalls.

Heap metadata lives in Python state (as a libOS's private memory would): the
break, a dict of allocated blocks ``{address: size}`` and an address-ordered
free list of ``[address, size]`` blocks, first fit, coalesced on free. A block
at the top of the heap that is free grows in place when malloc needs more. An
exofork child gets a copy of that state (``fork`` below), like the heap pages.

fork (``cow``): JOS's fork with batched page-table updates. The walk reads the
page tables top-down through the UVPT window (PML4, PDPT, PD, PT: one 4 KiB
read per table) and visits every present user page (the whole lower half but
the UVPT window: the stack is above it) except the exokernel region (the
exokernel maps it into every child itself), the exception stack (the child
gets its own) and this module's scratch pages. Writable and copy-on-write
pages become read-only + PERM_COW in both; other pages are shared with their
rights. Requests go in batches through mmu_update (MAP into the child, PROTECT
in the parent). MAP needs the frame to belong to the caller or the child: a
child does not own the frames it inherited, so those are mapped with page_map
(one hypercall each). The module remembers which frame it inherited at which
address (a frame number alone would mislead once frames are freed and
reused), and a MAP refused anyway (a page received by IPC) falls back to
page_map too. Then the child gets its exception stack, its upcall entry, its
entry point (the caller's return address, so that it returns from fork with
0) and is made runnable. A fork by a program that owns all its frames costs 6
hypercalls: env_create, mmu_update, page_alloc, env_set_upcall,
env_set_entry, env_set_status; a forked child forking again pays one more
page_map per page it still shares with its ancestors.

fork (``eager``): JOS's dumbfork. Each writable page is copied: a frame is
allocated in the child at the same address (page_alloc), mapped at PFTEMP in
the parent (page_map) and filled; read-only pages are shared as in ``cow``.
No page is copy-on-write afterwards, so neither side takes COW faults, at the
price of 2 hypercalls and a 4 KiB copy per writable page at fork time.

``env_destroy`` is declared too, for programs built on fork that end a child
(JOS spin).
"""

from __future__ import annotations

import inspect
import struct

from exo.abi import (
    EXO_REGION_END,
    HYPERCALL_PAGE,
    LIBCALL_SLOT,
    LIBOS_PAGE,
    MMU_REQ_SIZE,
    PAGE_SIZE,
    PERM_AVAIL,
    PERM_COW,
    PERM_R,
    PERM_W,
    PERM_X,
    UVPD,
    UVPDPT,
    UVPML4,
    UVPT,
    UVPT_SLOT,
    UXSTACK_TOP,
    EnvStatus,
    Errno,
    MmuOp,
)
from libos.module import LibModule, read_upcall_frame

MiB = 1 << 20
REQ_PAGES = 4  # mmu_update's done counter and request buffer
REQ_OFF = 64  # the requests follow the done counter
REQS_PER_BATCH = (REQ_PAGES * PAGE_SIZE - REQ_OFF) // MMU_REQ_SIZE  # 510
PFTEMP_OFF = REQ_PAGES * PAGE_SIZE
HEAP_OFF = 64 * MiB
HEAP_SIZE = 128 * MiB
ALIGN = 16

# x86 page-table entry bits (read through the UVPT window) and #PF error-code bits.
_PTE_P, _PTE_W, _PTE_U = 0x1, 0x2, 0x4
_PTE_NX = 1 << 63
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_PF_P, _PF_W, _PF_I = 0x1, 0x2, 0x10
_VEC_BP, _VEC_PF = 3, 14
_MASK = (1 << 64) - 1

_REQ = struct.Struct("<IIQQQ")
_TABLE = struct.Struct("<512Q")


def pte_perm(pte: int) -> int:
    """The PERM_* bits of a page-table entry (what page_map / mmu_update take)."""
    perm = PERM_R | (pte & PERM_AVAIL)
    if pte & _PTE_W:
        perm |= PERM_W
    if not pte & _PTE_NX:
        perm |= PERM_X
    return perm


def _page_up(va: int) -> int:
    return (va + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Memory(LibModule):
    NAME = "memory"
    INDEX = 2
    ENTRIES = ("malloc", "free", "fork", "sbrk", "pgfault_upcall")
    # Memory management is the application's own business in every OS structure
    # exo models: the heap, fork and the fault handler stay library code
    # (exo/structures.py routes only the services that other structures put elsewhere).
    LOCAL = frozenset(ENTRIES)
    HYPERCALLS = frozenset({
        "page_alloc", "page_map", "page_unmap", "mmu_update", "page_grant",
        "env_create", "env_set_entry", "env_set_status", "env_set_upcall",
        "env_destroy",  # for fork-based programs that end a child (spin)
    })  # fmt: skip

    def __init__(self, port) -> None:
        super().__init__(port)
        self.heap_base = self.data_base + HEAP_OFF
        self.heap_end = self.heap_base + HEAP_SIZE
        self.brk = self.heap_base
        self.used: dict[int, int] = {}  # allocated block -> size
        self.free_list: list[list[int]] = []  # [address, size], address order, coalesced
        self.inherited: dict[int, int] = {}  # va -> frame mapped there at fork: not ours to MAP
        self._scratch: set[int] = set()  # scratch pages mapped in this environment
        self._child: Memory | None = None  # the clone made for the last env_create
        self.stats = self._new_stats()

    @staticmethod
    def _new_stats() -> dict[str, int]:
        return {"upcalls": 0, "cow_faults": 0, "zero_faults": 0, "port_faults": 0, "unhandled": 0,
                "forks": 0, "pages_shared": 0, "pages_copied": 0, "bad_frees": 0}

    # ------------------------------------------------------------- set-up
    @property
    def upcall_entry(self) -> int:
        return LIBOS_PAGE + self.INDEX * PAGE_SIZE + self.ENTRIES.index("pgfault_upcall") * LIBCALL_SLOT

    @property
    def uxstack_top(self) -> int:
        """The exception stack (one page below it): fault frames, and sched's timer frames."""
        return UXSTACK_TOP

    @property
    def pftemp(self) -> int:
        return self.data_base + PFTEMP_OFF

    def start(self) -> None:
        rc = self.hc("page_alloc", 0, self.uxstack_top - PAGE_SIZE, PERM_R | PERM_W)
        if rc < 0:
            raise self.port.Fault(Errno(-rc), "cannot map the exception stack")
        self.hc("env_set_upcall", 0, self.upcall_entry, self.uxstack_top)
        self._scratch_page(self.data_base)  # mmu_update's buffer, used by the first fork or fault
        self.port.pager = self._pager

    # --------------------------------------------------------- page tables
    def _pte(self, va: int) -> int:
        """The page-table entry of ``va`` (0 if not mapped), read top-down through UVPT."""
        read = self.port.read_u64
        if not read(UVPML4 + (va >> 39) * 8) & _PTE_P:
            return 0
        if not read(UVPDPT + (va >> 30) * 8) & _PTE_P:
            return 0
        if not read(UVPD + (va >> 21) * 8) & _PTE_P:
            return 0
        return read(UVPT + (va >> 12) * 8)

    def _table(self, va: int) -> tuple[int, ...]:
        return _TABLE.unpack(self.port.read(va, PAGE_SIZE))

    def _skip(self, va: int) -> bool:
        return (HYPERCALL_PAGE <= va < EXO_REGION_END or va == self.uxstack_top - PAGE_SIZE
                or self.data_base <= va < self.heap_base)

    def user_pages(self) -> list[tuple[int, int]]:
        """(va, pte) of every present user page that fork passes on, in address order."""
        out = []
        pml4 = self._table(UVPML4)
        for i in range(256):  # the user half; the stack is above the UVPT slot
            if i == UVPT_SLOT or not pml4[i] & _PTE_P:
                continue
            pdpt = self._table(UVPDPT + i * PAGE_SIZE)
            for j in range(512):
                if not pdpt[j] & _PTE_P:
                    continue
                ij = (i << 9) | j
                pd = self._table(UVPD + ij * PAGE_SIZE)
                for k in range(512):
                    if not pd[k] & _PTE_P:
                        continue
                    ijk = (ij << 9) | k
                    pt = self._table(UVPT + ijk * PAGE_SIZE)
                    for m in range(512):
                        pte = pt[m]
                        if pte & _PTE_P and pte & _PTE_U:
                            va = ((ijk << 9) | m) << 12
                            if not self._skip(va):
                                out.append((va, pte))
        return out

    def _scratch_page(self, va: int) -> None:
        if va not in self._scratch:
            self.ensure_page(va)
            self._scratch.add(va)

    def _mmu(self, reqs: list[tuple[int, int, int, int, int]]) -> tuple[int, int]:
        """Send ``reqs`` to mmu_update in batches: (0 or the negative errno, how many were applied)."""
        done_ptr = self.data_base
        buf = self.data_base + REQ_OFF
        applied = 0
        for start in range(0, len(reqs), REQS_PER_BATCH):
            batch = reqs[start : start + REQS_PER_BATCH]
            for p in range(0, REQ_OFF + len(batch) * MMU_REQ_SIZE, PAGE_SIZE):
                self._scratch_page(self.data_base + p)
            self.port.write(buf, b"".join(_REQ.pack(*r) for r in batch))
            rc = self.hc("mmu_update", buf, len(batch), done_ptr)
            if rc < 0:
                return rc, applied + self.port.read_u64(done_ptr)
            applied += len(batch)
        return 0, applied

    # ------------------------------------------------------------ faults
    def _handle(self, va: int, write: bool, present: bool) -> bool:
        """Fix what a user access to ``va`` lacks: a copy-on-write or demand-zero page."""
        # LAB 3 BEGIN handle: tell a copy-on-write write and a demand-zero heap access from other faults, and fix them
        page = va & ~(PAGE_SIZE - 1)
        if present:
            if not write:
                return False
            pte = self._pte(page)
            if not pte & _PTE_P or pte & _PTE_W or not pte & PERM_COW:
                return False
            return self._break_cow(page, pte)
        if self.heap_base <= page < _page_up(self.brk) and not self._pte(page) & _PTE_P:
            if self.hc("page_alloc", 0, page, PERM_R | PERM_W) < 0:
                return False
            self.stats["zero_faults"] += 1
            return True
        return False
        # LAB 3 END

    def _break_cow(self, page: int, pte: int) -> bool:
        """JOS pgfault: copy through PFTEMP into a fresh frame, map it writable at ``page``."""
        # LAB 3 BEGIN cow_copy: copy the page through PFTEMP into a fresh frame and map that frame writable at the page
        tmp = self.pftemp
        if self.hc("page_alloc", 0, tmp, PERM_R | PERM_W) < 0:
            return False
        frame = (self._pte(tmp) & _ADDR_MASK) >> 12
        self.port.write(tmp, self.port.read(page, PAGE_SIZE))
        perm = (pte_perm(pte) & ~(PERM_COW | PERM_X)) | PERM_W
        rc, _ = self._mmu([(MmuOp.MAP, 0, page, frame, perm), (MmuOp.UNMAP, 0, tmp, 0, 0)])
        if rc < 0:
            self.hc("page_unmap", 0, tmp)
            return False
        self.stats["cow_faults"] += 1
        return True
        # LAB 3 END

    def pager_fault(self, va: int, write: bool, present: bool, client: int) -> bool:
        """Serve a fault of environment ``client`` as its pager server (the microkernel structure,
        exo/structures.py): the same decision as the library's handler (_handle), but the page is a
        fresh frame in the server's own space (at PFTEMP, its private region), zeroed or filled with
        the copy-on-write page's contents (read from the client, as a kernel IPC copy would), and
        moved to the client with page_grant, L4's grant: only the client's pager may."""
        # LAB 3 BEGIN pager: as the client's pager server, make handle's decisions, fill a fresh page at PFTEMP in your own space and page_grant it to the client
        page = va & ~(PAGE_SIZE - 1)
        pte = self._pte(page)  # the client's page tables (UVPT), read-only to it and to us
        if present:
            if not write or not pte & _PTE_P or pte & _PTE_W or not pte & PERM_COW:
                return False
            perm = (pte_perm(pte) & ~(PERM_COW | PERM_X)) | PERM_W
        elif self.heap_base <= page < _page_up(self.brk) and not pte & _PTE_P:
            perm = PERM_R | PERM_W
        else:
            return False
        tmp = self.pftemp
        if self.hc("page_alloc", 0, tmp, PERM_R | PERM_W) < 0:
            return False
        if present:
            self.port.write(tmp, self.port.read(page, PAGE_SIZE))
        if self.hc("page_grant", client, tmp, page, perm) < 0:
            self.hc("page_unmap", 0, tmp)
            return False
        self.stats["cow_faults" if present else "zero_faults"] += 1
        return True
        # LAB 3 END

    def _pager(self, va: int, write: bool) -> bool:
        """LibPort's pager: a library access found ``va`` not present or (write) read-only."""
        present = bool(self._pte(va & ~(PAGE_SIZE - 1)) & _PTE_P)
        if self._handle(va, write, present):
            self.stats["port_faults"] += 1
            return True
        return False

    def pgfault_upcall(self, frame: int) -> int:
        """The upcall entry: handle the fault and resume the interrupted context (JOS _pgfault_upcall)."""
        self.stats["upcalls"] += 1
        # LAB 3 BEGIN pgfault: decode the UTrapframe, fix a #PF the library can serve (else unregister the handler), resume
        f, regs = read_upcall_frame(self.port, frame)
        err = f["error_code"]
        try:
            handled = (f["vector"] == _VEC_PF and not err & _PF_I
                       and self._handle(f["fault_va"], bool(err & _PF_W), bool(err & _PF_P)))
        except self.port.Fault:
            handled = False
        if not handled and any(m.fault(f, regs) for m in self.siblings.values() if m is not self):
            return 0  # a sibling took it (posix: the program's SIGSEGV handler runs)
        if not handled:
            # Not ours: with no handler registered the fault happens again, and the
            # exokernel reports it and stops the environment as it would without us.
            # (The stack stays registered: timer upcalls, libos/sched.py, use it too.)
            self.stats["unhandled"] += 1
            self.hc("env_set_upcall", 0, 0, self.uxstack_top)
        regs["rip"] = self._restart_rip(f)
        self.port.resume(regs)
        # LAB 3 END
        return 0

    def _restart_rip(self, f: dict[str, int]) -> int:
        """Where the interrupted context resumes: the faulting instruction, which runs again. A
        breakpoint is a trap (SDM Vol. 3A 6.5): its frame holds the next instruction, so step back
        over the int3 (or int 3) to have it trap again with no handler."""
        rip = f["rip"]
        if f["vector"] == _VEC_BP:
            if self._code_at(rip - 1, 1) == b"\xcc":
                return rip - 1
            if self._code_at(rip - 2, 2) == b"\xcd\x03":
                return rip - 2
        return rip

    def _code_at(self, va: int, n: int) -> bytes:
        try:
            return self.port.read(va, n)
        except self.port.Fault:
            return b""

    # ---------------------------------------------------------------- heap
    def sbrk(self, increment: int) -> int:
        if increment >= 1 << 63:
            increment -= 1 << 64
        old = self.brk
        new = old + increment
        if not self.heap_base <= new <= self.heap_end:
            return -Errno.ENOMEM
        if increment < 0:
            self._release_above(new)
        self.brk = new
        return old

    def _release_above(self, new: int) -> None:
        """The break goes down: drop free blocks above it and unmap the pages it leaves."""
        kept = []
        for a, s in self.free_list:
            if a < new:
                kept.append([a, min(s, new - a)])
        self.free_list = kept
        reqs = [(MmuOp.UNMAP, 0, va, 0, 0) for va in range(_page_up(new), _page_up(self.brk), PAGE_SIZE)
                if self._pte(va) & _PTE_P]
        if reqs:
            self._mmu(reqs)

    def malloc(self, size: int) -> int:
        if size > HEAP_SIZE:
            return 0
        n = max(ALIGN, (size + ALIGN - 1) & ~(ALIGN - 1))
        fl = self.free_list
        for i, (a, s) in enumerate(fl):
            if s >= n:
                if s == n:
                    del fl[i]
                else:
                    fl[i] = [a + n, s - n]
                self.used[a] = n
                return a
        if fl and fl[-1][0] + fl[-1][1] == self.brk:  # grow the free block at the top
            a, s = fl[-1]
            if self.sbrk(n - s) < 0:
                return 0
            fl.pop()
        else:
            a = self.sbrk(n)
            if a < 0:
                return 0
        self.used[a] = n
        return a

    def free(self, ptr: int) -> int:
        if ptr == 0:
            return 0
        n = self.used.pop(ptr, None)
        if n is None:  # never allocated, or freed twice: reported, otherwise ignored
            self.stats["bad_frees"] += 1
            return -Errno.EINVAL
        fl = self.free_list
        i = 0
        while i < len(fl) and fl[i][0] < ptr:
            i += 1
        fl.insert(i, [ptr, n])
        if i + 1 < len(fl) and ptr + n == fl[i + 1][0]:  # merge with the next block
            fl[i][1] += fl.pop(i + 1)[1]
        if i > 0 and fl[i - 1][0] + fl[i - 1][1] == ptr:  # and with the previous one
            fl[i - 1][1] += fl.pop(i)[1]
        return 0

    # ---------------------------------------------------------------- fork
    def fork(self, port=None):  # signature (self): the library entry takes no argument
        """The library call fork(); called with a port, LibModule's clone for an exofork child.

        The two roles share the name: the entry point is the guest ABI's ``fork``,
        and the exokernel calls ``instance.fork(port)`` inside env_create.
        """
        if port is not None:
            return self._clone(port)
        return self._fork()

    fork.__signature__ = inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)])

    def _clone(self, port) -> Memory:
        """This module's state for an exofork child: a copy of the heap metadata."""
        clone = super().fork(port)
        clone.used = dict(self.used)
        clone.free_list = [list(b) for b in self.free_list]
        clone.inherited = {}  # filled in by the fork that created the child
        clone._scratch = set()  # the child maps its own scratch pages
        clone._child = None
        clone.stats = self._new_stats()
        port.pager = clone._pager
        self._child = clone
        return clone

    def _fork(self) -> int:
        # LAB 3 BEGIN fork: create the child, give it the address space, an exception stack, the upcall and an entry; start it
        self._child = None
        child = self.hc("env_create")
        if child < 0:
            return child
        clone = self._child
        try:
            rc = self._copy_address_space(child, clone)
            if rc >= 0:
                rc = self.hc("page_alloc", child, self.uxstack_top - PAGE_SIZE, PERM_R | PERM_W)
            if rc >= 0:
                rc = self.hc("env_set_upcall", child, self.upcall_entry, self.uxstack_top)
            if rc >= 0:
                ret, rsp = self.port.return_address()
                rc = self.hc("env_set_entry", child, ret, rsp)
            if rc >= 0:
                rc = self.hc("env_set_status", child, EnvStatus.RUNNABLE)
        except self.port.Fault as e:
            rc = -e.errno
        if rc < 0:
            self.hc("env_destroy", child)
            return rc
        self.stats["forks"] += 1
        return child
        # LAB 3 END

    def _copy_address_space(self, child: int, clone: Memory | None) -> int:
        """Give ``child`` every page fork passes on; 0 or a negative errno."""
        reqs: list[tuple[int, int, int, int, int]] = []
        inherited: dict[int, int] = {}
        # LAB 3 BEGIN walk: pass on each user page: writable and copy-on-write ones private (_private), the others shared (_share)
        for va, pte in self.user_pages():
            frame = (pte & _ADDR_MASK) >> 12
            perm = pte_perm(pte)
            if perm & (PERM_W | PERM_COW):
                rc = self._private(child, va, frame, perm, reqs, inherited)
            else:
                rc = self._share(child, va, frame, perm, reqs, inherited)
            if rc < 0:
                return rc
        # LAB 3 END
        rc = self._apply(reqs, inherited)
        if clone is not None:
            clone.inherited = inherited
        return rc

    def _share(self, child, va, frame, perm, reqs, inherited) -> int:
        """Map the parent's frame into the child (MAP in the batch if ours, else page_map)."""
        inherited[va] = frame
        self.stats["pages_shared"] += 1
        if self.inherited.get(va) == frame:
            return self.hc("page_map", 0, va, child, va, perm)
        reqs.append((MmuOp.MAP, child, va, frame, perm))
        return 0

    def _private(self, child, va, frame, perm, reqs, inherited) -> int:
        """A page each side must see its own copy of: copy-on-write in both."""
        # LAB 3 BEGIN duppage: map the page copy-on-write into the child, then make the parent's copy-on-write too
        cow = (perm & ~PERM_W) | PERM_COW
        rc = self._share(child, va, frame, cow, reqs, inherited)
        if rc >= 0 and perm & PERM_W:
            reqs.append((MmuOp.PROTECT, 0, va, 0, cow))
        return rc
        # LAB 3 END

    def _apply(self, reqs, inherited) -> int:
        """Run the batch; a MAP refused for ownership is redone with page_map, then the rest."""
        while reqs:
            rc, done = self._mmu(reqs)
            if rc >= 0:
                return 0
            op, envid, va, frame, perm = reqs[done]
            if op != MmuOp.MAP or rc != -Errno.EPERM:
                return rc
            rc = self.hc("page_map", 0, va, envid, va, perm)
            if rc < 0:
                return rc
            self.inherited[va] = frame  # not ours after all (a page received by IPC)
            reqs = reqs[done + 1 :]
        return 0



class CowMemory(Memory):
    IMPL = "cow"
    DOC = "fork shares every page, writable ones copy-on-write; demand-zero heap"


class EagerMemory(Memory):
    IMPL = "eager"
    DOC = "fork copies every writable page at once (JOS dumbfork); demand-zero heap"

    def _private(self, child, va, frame, perm, reqs, inherited) -> int:
        """A fresh frame in the child at ``va``, filled through PFTEMP in the parent."""
        own = (perm & ~(PERM_COW | PERM_X)) | PERM_W
        rc = self.hc("page_alloc", child, va, own)
        if rc >= 0:
            rc = self.hc("page_map", child, va, 0, self.pftemp, PERM_R | PERM_W)
        if rc < 0:
            return rc
        self.port.write(self.pftemp, self.port.read(va, PAGE_SIZE))
        self.stats["pages_copied"] += 1
        return 0

    def _copy_address_space(self, child: int, clone: Memory | None) -> int:
        rc = super()._copy_address_space(child, clone)
        self.hc("page_unmap", 0, self.pftemp)
        return rc
