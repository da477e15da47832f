"""The memory libOS module (libos/memory.py): heap, page-fault upcall, copy-on-write fork.

The apps guest_apps/forktree, cowtest and spin are booted with each
implementation (``cow`` and ``eager``: the same binaries); small apps written
here test one mechanism each. Guest code writes its numbers in hex (keystone
reads bare decimal immediates as hex, see tests/exo/test_hostile.py).

Hypercalls per fork (measured below, ``test_hypercalls_per_fork``):

* a program that owns all its frames (the first environment): 6, whatever its
  size: env_create, one mmu_update (a MAP into the child for every page and a
  PROTECT for every writable one), page_alloc (the child's exception stack),
  env_set_upcall, env_set_entry, env_set_status;
* a forked child forking again: 6 + one page_map per page it still shares
  with its ancestors (mmu_update MAP needs the frame's owner: 17 in forktree,
  its code, rodata and the 15 stack pages it never wrote).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, boot

from exo.abi import (
    IMAGE_BASE,
    LIBOS_DATA,
    LIBOS_DATA_STRIDE,
    PAGE_SIZE,
    PERM_COW,
    UXSTACK_TOP,
    EnvStatus,
    Errno,
)
from exo.build.image import build_image
from exo.build.manifest import load_manifest
from exo.frames import EXO, FREE
from exo.libcall import LibFault
from libos.memory import HEAP_OFF, CowMemory, EagerMemory, Memory

IMPLS = ["cow", "eager"]
HEAP_BASE = LIBOS_DATA + 2 * LIBOS_DATA_STRIDE + HEAP_OFF
PTE_W = 0x2
MEM = 2  # the memory module's index (env.modules key)


def guest_app(tmp_path: Path, name: str, impl: str = "cow") -> Path:
    """guest_apps/<name>, linked with memory = impl (a copy when impl is not the manifest's)."""
    src = ROOT / "guest_apps" / name
    if impl == "cow":
        return src
    dst = tmp_path / f"{name}-{impl}"
    shutil.copytree(src, dst)
    toml = dst / "app.toml"
    text = toml.read_text()
    assert 'memory = "cow"' in text
    toml.write_text(text.replace('memory = "cow"', f'memory = "{impl}"'))
    return dst


def libos(impl: str = "cow") -> dict[str, str]:
    return {"memory": impl, "console": "buffered"}


def no_frame_held_by_an_env(k) -> bool:
    return all(o in (FREE, EXO) for o in k.frames.owner)


def clean(b, status: int = 0) -> None:
    assert b.reports == [], [r.render() for r in b.reports]
    for e in b.kernel.envs.values():
        assert e.fault is None, (e.name, e.fault)
        assert e.status == EnvStatus.DEAD and e.exit_status == status, (e.name, e.status, e.exit_status)


def stats(b, env_id: int) -> dict[str, int]:
    return b.kernel.envs[env_id].modules[MEM].stats


def upcalls(b, env_id: int) -> int:
    return b.kernel.acct.by_env[env_id]["upcall"]


def symbols(appdir: Path) -> dict[str, int]:
    from libos.registry import symbols as lib_symbols

    m = load_manifest(appdir)
    return build_image(m, extra_symbols=lib_symbols(set(m.libos))).symbols


EXIT_RAW = """
    mov eax, NR_SCHED_OP        ; a raw syscall: no call, so nothing is pushed on the stack
    mov edi, SCHED_EXIT
    xor esi, esi
    syscall
"""


# ----------------------------------------------------------------- the apps
FORKTREE = "".join(f"{i}: I am '{bin(i)[3:]}'\n" for i in range(1, 16)).encode()


@pytest.mark.parametrize("impl", IMPLS)
def test_forktree(tmp_path, impl) -> None:
    b = boot(guest_app(tmp_path, "forktree", impl))
    assert b.stdout == FORKTREE
    assert len(b.kernel.envs) == 15
    clean(b)
    assert no_frame_held_by_an_env(b.kernel)


COWTEST = (b"child: data=10 heap=20\n"
           b"parent: data=1 heap=2\n"
           b"parent and child see private copies after fork\n")


@pytest.mark.parametrize("impl", IMPLS)
def test_cowtest(tmp_path, impl) -> None:
    b = boot(guest_app(tmp_path, "cowtest", impl))
    assert b.stdout == COWTEST
    clean(b)
    assert no_frame_held_by_an_env(b.kernel)
    assert stats(b, 1)["zero_faults"] == 1  # the parent's heap page
    child = stats(b, 2)
    if impl == "cow":
        assert child["cow_faults"] >= 2 and child["pages_copied"] == 0  # data, heap (and stack) pages
    else:
        assert child["cow_faults"] == 0 and stats(b, 1)["pages_copied"] > 2


SPIN = (b"I am the parent.  Forking the child...\n"
        b"I am the parent.  Running the child...\n"
        b"I am the child.  Spinning...\n"
        b"I am the parent.  Killing the child...\n")


@pytest.mark.parametrize("impl", IMPLS)
def test_spin(tmp_path, impl) -> None:
    b = boot(guest_app(tmp_path, "spin", impl), slice_instructions=10_000)
    assert b.stdout == SPIN
    assert b.reports == []
    parent, child = b.kernel.envs[1], b.kernel.envs[2]
    assert parent.exit_status == 0 and parent.fault is None
    assert child.status == EnvStatus.DEAD and child.fault is None and child.exit_status is None  # destroyed
    # The child spun through whole slices, one per parent yield (8), and was preempted each time.
    assert child.instructions >= 7 * 10_000
    assert b.kernel.acct.by_env[2]["interrupt"] >= 7
    assert b.kernel.acct.hypercalls_of(1)["env_destroy"] == 1
    assert no_frame_held_by_an_env(b.kernel)


# ------------------------------------------------------------ fork semantics
@pytest.fixture
def fork_costs(monkeypatch):
    """(env id, Counter of the hypercalls it made inside that fork) for every fork."""
    costs: list[tuple[int, Counter]] = []
    orig = Memory._fork

    def measured(self):
        acct = self.port._k.acct
        before = acct.hypercalls_of(self.port.env_id)
        rc = orig(self)
        costs.append((self.port.env_id, acct.hypercalls_of(self.port.env_id) - before))
        return rc

    monkeypatch.setattr(Memory, "_fork", measured)
    return costs


OWNED_FORK = Counter({"env_create": 1, "mmu_update": 1, "page_alloc": 1, "env_set_upcall": 1,
                      "env_set_entry": 1, "env_set_status": 1})


def test_hypercalls_per_fork(fork_costs) -> None:
    b = boot(ROOT / "guest_apps" / "forktree")
    assert b.stdout == FORKTREE
    assert len(fork_costs) == 14
    by_env: dict[int, list[Counter]] = {}
    for env_id, cost in fork_costs:
        by_env.setdefault(env_id, []).append(cost)
    # The first environment owns every frame: one batch, 6 hypercalls per fork.
    assert by_env[1] == [OWNED_FORK, OWNED_FORK]
    # Its descendants share 17 pages they do not own (code, rodata, 15 unwritten stack pages).
    for env_id in range(2, 8):
        for cost in by_env[env_id]:
            assert cost == OWNED_FORK + Counter({"page_map": 17}), (env_id, cost)
            assert sum(cost.values()) == 23


def test_fork_falls_back_to_page_map_when_a_map_is_refused(monkeypatch, fork_costs) -> None:
    """Forget which frames were inherited: every MAP of one is refused (EPERM), redone with page_map."""
    orig = Memory._share

    def forgetful(self, child, va, frame, perm, reqs, inherited):
        self.inherited = {}
        return orig(self, child, va, frame, perm, reqs, inherited)

    monkeypatch.setattr(Memory, "_share", forgetful)
    b = boot(ROOT / "guest_apps" / "forktree")
    assert b.stdout == FORKTREE
    clean(b)
    assert no_frame_held_by_an_env(b.kernel)
    for env_id, cost in fork_costs:
        if env_id > 1:  # one refused batch per foreign page, then page_map for it
            assert cost["page_map"] == 17 and cost["mmu_update"] == 1 + 17, (env_id, cost)


def test_cowtest_fork_costs_six_hypercalls(fork_costs) -> None:
    b = boot(ROOT / "guest_apps" / "cowtest")
    assert b.stdout == COWTEST
    assert fork_costs == [(1, OWNED_FORK)]


def test_eager_fork_copies_every_writable_page(tmp_path, fork_costs) -> None:
    b = boot(guest_app(tmp_path, "cowtest", "eager"))
    assert b.stdout == COWTEST
    [(env_id, cost)] = fork_costs
    copied = stats(b, 1)["pages_copied"]
    assert copied == 18  # .data, the heap page, 16 stack pages
    # A frame allocated in the child (page_alloc) and mapped at PFTEMP (page_map) per page.
    assert cost == OWNED_FORK + Counter({"page_alloc": copied, "page_map": copied, "page_unmap": 1})


# The parent forks, then spins; the child writes one .data page and spins. The
# machine is stopped by the watchdog with both alive, to look at their pages.
ONE_WRITE = f"""
section .text
_start:
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child
parent:
    jmp parent
child:
    lea rax, [rip + value]
    mov qword ptr [rax], 0x77
spin:
    jmp spin
failed:
{EXIT_RAW}
section .rodata
ro: dq 0x1234
section .data
value: dq 0x11
"""


@pytest.mark.parametrize("impl", IMPLS)
def test_one_write_after_fork_one_upcall(app, impl) -> None:
    a = app("onewrite", ONE_WRITE, libos=libos(impl))
    sym = symbols(a)
    b = boot(a, slice_instructions=10_000, max_instructions=60_000)
    k = b.kernel
    parent, child = k.envs[1], k.envs[2]
    assert parent.alive and child.alive and b.reports == []
    data = sym["value"] & ~(PAGE_SIZE - 1)
    code = sym["_start"] & ~(PAGE_SIZE - 1)
    rodata = sym["ro"] & ~(PAGE_SIZE - 1)
    # Read-only pages stay shared: one frame, mapped in both.
    for va in (code, rodata):
        pf, _ = parent.space.lookup(va)
        cf, _ = child.space.lookup(va)
        assert pf == cf and k.frames.refs[pf] == 2
    # The written page is private now, with the child's value; the parent's is untouched.
    pf, ppte = parent.space.lookup(data)
    cf, cpte = child.space.lookup(data)
    assert pf != cf
    assert child.port.read_u64(sym["value"]) == 0x77
    assert parent.port.read_u64(sym["value"]) == 0x11
    assert cpte & PTE_W and not cpte & PERM_COW
    if impl == "cow":
        # Exactly one upcall in the child: its one write, to a copy-on-write page.
        assert upcalls(b, 2) == 1 and stats(b, 2)["cow_faults"] == 1
        # The parent's page is still copy-on-write (it has not written since) and now its own.
        assert not ppte & PTE_W and ppte & PERM_COW and k.frames.refs[pf] == 1
    else:
        assert upcalls(b, 2) == 0 and stats(b, 2)["cow_faults"] == 0
        assert ppte & PTE_W and not ppte & PERM_COW


def test_cow_and_eager_same_output_different_costs(tmp_path) -> None:
    runs = {impl: boot(guest_app(tmp_path, "forktree", impl)) for impl in IMPLS}
    assert runs["cow"].stdout == runs["eager"].stdout == FORKTREE
    cow, eager = (runs[i].kernel.acct for i in IMPLS)
    assert cow.transitions["upcall"] > 0 and eager.transitions["upcall"] == 0  # no COW faults, no heap
    assert eager.hypercalls["page_alloc"] > cow.hypercalls["page_alloc"]
    assert eager.transitions["hypercall"] > cow.transitions["hypercall"]


def test_forktree_is_deterministic() -> None:
    runs = [boot(ROOT / "guest_apps" / "forktree") for _ in range(2)]
    a, b = (r.kernel.acct for r in runs)
    assert runs[0].stdout == runs[1].stdout == FORKTREE
    assert a.transitions == b.transitions
    assert a.hypercalls == b.hypercalls
    assert a.by_env == b.by_env
    assert [e.instructions for e in runs[0].kernel.envs.values()] == [
        e.instructions for e in runs[1].kernel.envs.values()]


# A forked child's library calls write into copy-on-write pages: the port's pager breaks them.
READ_AFTER_FORK = f"""
section .text
_start:
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jnz parent
    lea rdi, [rip + line]       ; a .bss page shared copy-on-write with the parent
    mov esi, 0x40
    call LIB_CONSOLE_READLINE
    lea rdi, [rip + fmt]
    lea rsi, [rip + line]
    call LIB_CONSOLE_PRINTF
parent:
    xor edi, edi
    call LIB_CORE_EXIT
failed:
{EXIT_RAW}
section .rodata
fmt: .asciz "child read: %s"
section .bss
line: resb 0x40
"""


def test_library_writes_to_cow_pages(app) -> None:
    a = app("readfork", READ_AFTER_FORK, libos=libos())
    b = boot(a, stdin=b"hello\n")
    assert b.stdout == b"child read: hello\n"
    clean(b)
    assert stats(b, 2)["port_faults"] >= 1


# ---------------------------------------------------------------- the heap
TOUCH = """
NPAGES equ 0x5
section .text
_start:
    mov edi, NPAGES * PAGE_SIZE
    call LIB_MEMORY_SBRK
    test rax, rax
    js failed
    mov rbx, rax                ; the old break: the start of the new pages
    xor r12, r12                ; sum of what was read
    xor ecx, ecx
touch:
    mov rdx, rcx
    shl rdx, 0xc
    add r12, qword ptr [rbx + rdx + 0x8]    ; a read: a demand-zero page appears
    mov qword ptr [rbx + rdx], rcx          ; then a write to it: no fault
    inc rcx
    cmp rcx, NPAGES
    jb touch
    xor ecx, ecx
check:                                      ; every page kept its own value
    mov rdx, rcx
    shl rdx, 0xc
    cmp qword ptr [rbx + rdx], rcx
    jne bad
    inc rcx
    cmp rcx, NPAGES
    jb check
    mov rdi, r12                ; 0 if every page read as zeros
    call LIB_CORE_EXIT
bad:
    mov edi, 0x63
    call LIB_CORE_EXIT
failed:
    neg rax
    mov rdi, rax
    call LIB_CORE_EXIT
"""


@pytest.mark.parametrize("impl", IMPLS)
def test_demand_zero_heap(app, impl) -> None:
    b = boot(app("touch", TOUCH, libos=libos(impl)))
    clean(b)
    assert upcalls(b, 1) == 5
    assert b.kernel.acct.by_env[1]["trap"] == 5
    s = stats(b, 1)
    assert s["zero_faults"] == 5 and s["cow_faults"] == 0 and s["unhandled"] == 0
    assert b.kernel.acct.hypercalls_of(1)["page_alloc"] == 2 + 5  # exception stack, scratch page, heap


HEAP_LIVE = """
section .text
_start:
    mov edi, 0x2 * PAGE_SIZE
    call LIB_MEMORY_MALLOC
    mov rbx, rax
    mov qword ptr [rax], 0x5a5a     ; touches the first page only
    lea rcx, [rip + where]
    mov qword ptr [rcx], rax
spin:
    jmp spin
section .data
where: dq 0
"""


def test_malloc_returns_demand_zero_memory_in_the_heap(app) -> None:
    a = app("heaplive", HEAP_LIVE, libos=libos())
    b = boot(a, max_instructions=30_000)
    env = b.kernel.envs[1]
    p = env.port.read_u64(symbols(a)["where"])
    assert p == HEAP_BASE
    assert env.port.read_u64(p) == 0x5A5A
    assert env.space.lookup(p + PAGE_SIZE) is None  # untouched: not mapped yet
    assert stats(b, 1)["zero_faults"] == 1
    # A library access to the untouched page maps it too (the port's pager), as zeros.
    assert env.port.read(p + PAGE_SIZE, 16) == bytes(16)
    assert env.space.lookup(p + PAGE_SIZE) is not None
    assert stats(b, 1)["port_faults"] == 1


MALLOC = """
section .text
_start:
    mov edi, 0x64
    call LIB_MEMORY_MALLOC
    mov rbx, rax                ; p
    test bl, 0xf
    jnz bad                     ; 16-byte aligned
    mov qword ptr [rbx + 0x58], 0x1
    mov rdi, rbx
    call LIB_MEMORY_FREE
    test rax, rax
    jnz bad
    mov edi, 0x64
    call LIB_MEMORY_MALLOC
    cmp rax, rbx                ; the freed block is reused
    jne bad
    mov rdi, rbx
    call LIB_MEMORY_FREE
    mov rdi, rbx                ; a double free is reported, and ignored
    call LIB_MEMORY_FREE
    cmp rax, -0x16              ; -EINVAL
    jne bad
    xor edi, edi                ; free(0) does nothing
    call LIB_MEMORY_FREE
    test rax, rax
    jnz bad
    xor edi, edi                ; malloc(0): a unique pointer each time
    call LIB_MEMORY_MALLOC
    mov r12, rax
    xor edi, edi
    call LIB_MEMORY_MALLOC
    test rax, rax
    jz bad
    cmp rax, r12
    je bad
    mov rdi, -0x1               ; too big: 0
    call LIB_MEMORY_MALLOC
    test rax, rax
    jnz bad
    xor edi, edi
    call LIB_CORE_EXIT
bad:
    mov edi, 0x1
    call LIB_CORE_EXIT
"""


def test_malloc_free_reuse(app) -> None:
    assert Errno.EINVAL == 0x16
    b = boot(app("malloc", MALLOC, libos=libos()))
    clean(b)
    assert stats(b, 1)["bad_frees"] == 1


class _NoPort:
    """The allocator needs no port until the break goes down (pages to unmap)."""


def test_allocator_first_fit_and_coalescing() -> None:
    m = CowMemory(_NoPort())
    a, b_, c = m.malloc(32), m.malloc(32), m.malloc(32)
    assert (a, b_, c) == (HEAP_BASE, HEAP_BASE + 32, HEAP_BASE + 64)
    assert m.malloc(1) % 16 == 0 and m.malloc(17) % 16 == 0
    m.free(a)
    m.free(b_)
    assert m.free_list == [[a, 64]]  # coalesced
    assert m.malloc(48) == a  # first fit, split
    assert m.free_list == [[a + 48, 16]]
    m.free(c)
    assert m.free_list == [[a + 48, 48]]  # merged with the block before it
    assert m.free(c) == -Errno.EINVAL and m.free(12345) == -Errno.EINVAL
    top = m.brk
    d = m.malloc(64)
    assert d == top and m.brk == top + 64
    m.free(d)  # the top block is free: a bigger request grows it in place
    e = m.malloc(128)
    assert e == d and m.brk == d + 128
    assert m.malloc(1 << 40) == 0
    assert m.sbrk(0) == m.brk
    assert m.sbrk(1 << 40) == -Errno.ENOMEM


def test_fork_copies_the_allocator_state() -> None:
    class Port:
        env_id = 1

    parent = CowMemory(Port())
    p = parent.malloc(64)
    child = parent.fork(Port())
    assert isinstance(child, CowMemory) and parent._child is child
    assert child.used == {p: 64} and child.brk == parent.brk
    child.free(p)
    assert parent.used == {p: 64}  # private, as the heap pages are
    assert EagerMemory.ENTRIES == CowMemory.ENTRIES


SBRK = """
DOWN2 equ -0x2000
DOWN3 equ -0x3000
section .text
_start:
    mov edi, 0x3 * PAGE_SIZE
    call LIB_MEMORY_SBRK
    mov rbx, rax
    mov qword ptr [rbx], 0x1
    mov qword ptr [rbx + 0x2 * PAGE_SIZE], 0x3
    mov rdi, DOWN2                  ; give back the last two pages
    call LIB_MEMORY_SBRK
    cmp rax, rbx
    jbe bad
    mov edi, 0x2 * PAGE_SIZE        ; and take them again: zeros
    call LIB_MEMORY_SBRK
    cmp qword ptr [rbx + 0x2 * PAGE_SIZE], 0x0
    jne bad
    cmp qword ptr [rbx], 0x1
    jne bad
    mov rdi, DOWN3
    call LIB_MEMORY_SBRK
    xor edi, edi
    call LIB_MEMORY_SBRK
    cmp rax, rbx                    ; back at the start of the heap
    jne bad
beyond:
    mov qword ptr [rbx], 0x1        ; above the break: not demand-zero, a fault
bad:
    mov edi, 0x1
    call LIB_CORE_EXIT
"""


def test_sbrk_and_the_break(app) -> None:
    a = app("sbrk", SBRK, libos=libos())
    b = boot(a)
    [report] = b.reports
    assert report.rip == symbols(a)["beyond"]
    assert report.fault_address == HEAP_BASE
    assert stats(b, 1)["zero_faults"] == 3  # two pages, and the third once more
    assert stats(b, 1)["unhandled"] == 1


# -------------------------------------------------------- faults it does not handle
@pytest.mark.parametrize(("bad", "kind"), [
    ("xor eax, eax\n    mov qword ptr [rax], 0x1", "page fault (#PF)"),
    ("lea rax, [rip + ro]\n    mov qword ptr [rax], 0x1", "page fault (#PF)"),
    ("ud2", "invalid opcode (#UD)"),
    ("int3", "breakpoint (#BP)"),
])  # fmt: skip
def test_unhandled_fault_gives_the_standard_report(app, bad, kind) -> None:
    src = f"""
section .text
_start:
    mov rbx, 0xb0b0
    {bad}
after:
{EXIT_RAW}
section .rodata
ro: dq 0x1
"""
    with_mem = app("withmem", src, libos=libos())
    without = app("without", src, libos={"console": "buffered"})
    [r] = boot(with_mem).reports
    [plain] = boot(without).reports
    assert r.kind == plain.kind and r.kind.startswith(kind.split(" (")[0])
    assert r.summary == plain.summary
    assert r.rip == plain.rip and r.instruction == plain.instruction
    assert r.registers["RBX"] == 0xB0B0
    assert {k: v for k, v in r.registers.items() if k not in ("RFLAGS",)} == {
        k: v for k, v in plain.registers.items() if k not in ("RFLAGS",)}


def test_null_write_report_names_the_instruction(app) -> None:
    a = app("null", """
section .text
_start:
    xor eax, eax
null_write:
    mov qword ptr [rax], 0x1
""", libos=libos())
    b = boot(a)
    [r] = b.reports
    env = b.kernel.envs[1]
    assert env.fault == r.summary and env.status == EnvStatus.DEAD
    assert r.rip == symbols(a)["null_write"] and r.symbol == "null_write"
    assert r.instruction == "mov qword ptr [rax], 1"
    assert r.fault_address == 0
    # The handler saw it first, gave up (unregistering itself), and the fault came back.
    assert stats(b, 1)["unhandled"] == 1 and upcalls(b, 1) == 1
    assert b.kernel.acct.by_env[1]["trap"] == 2
    assert env.upcall_entry == 0


def test_exception_stack_and_upcall_are_set_up(app) -> None:
    b = boot(app("idle", "section .text\n_start:\n" + EXIT_RAW, libos=libos()))
    clean(b)
    env = b.kernel.envs[1]
    assert env.upcall_stack == UXSTACK_TOP
    assert env.upcall_entry == CowMemory(_NoPort()).upcall_entry


# ------------------------------------------------------------------ isolation
OWNER = """
section .text
_start:
    mov edi, 0x10
    call LIB_MEMORY_MALLOC
    mov qword ptr [rax], 0x5ec2e7
    lea rcx, [rip + value]
    mov qword ptr [rcx], 0x5ec2e7
spin:
    jmp spin
section .data
value: dq 0
"""

OTHER = """
section .text
_start:
spin:
    jmp spin
section .data
value: dq 0
"""


def test_a_module_cannot_read_another_environments_memory(app) -> None:
    a = app("owner", OWNER, libos=libos())
    o = app("other", OTHER, libos=libos())
    b = boot(a, o, slice_instructions=10_000, max_instructions=40_000)
    owner, other = b.kernel.envs[1], b.kernel.envs[2]
    assert owner.alive and other.alive
    # The heap page exists only in the owner: the other's port cannot reach it.
    assert owner.port.read_u64(HEAP_BASE) == 0x5EC2E7
    assert other.space.lookup(HEAP_BASE) is None
    with pytest.raises(LibFault) as e:
        other.port.read(HEAP_BASE, 8)
    assert e.value.errno == Errno.EFAULT
    with pytest.raises(LibFault):
        other.modules[MEM].port.read(HEAP_BASE, 8)
    # The same address in both: each port sees its own environment's page.
    value = symbols(a)["value"]
    assert value == symbols(o)["value"] > IMAGE_BASE
    assert owner.port.read_u64(value) == 0x5EC2E7
    assert other.port.read_u64(value) == 0
    assert owner.space.lookup(value)[0] != other.space.lookup(value)[0]
