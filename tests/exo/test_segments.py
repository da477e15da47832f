"""Segments in booted guests, and the shared descriptor-table mapping (issue 11, section 1).

Every address space links the machine's one chain of system tables at PML4 slot
511 (hw/cpu.py link_system_tables): guests load user selectors and continue;
kernel selectors are #GP(selector), explained as such; the GDT's linear address
is a #PF with U=1 for the guest; and destroying address spaces never frees the
shared tables.
"""

from __future__ import annotations

from conftest import WITNESS, boot

from exo.frames import FrameType
from exo.vm import AddressSpace
from hw.cpu import GDT_BASE, GDT_LINEAR, SYSTEM_PML4E, SYSTEM_SLOT
from hw.paging import translate

SEGMENTS_OK = """
section .text
_start:
    mov ax, 0x1b
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    lea rax, [rip + after_iretq]
    mov rcx, rsp
    push 0x1b
    push rcx
    pushfq
    push 0x23
    push rax
    iretq
after_iretq:
    lea rax, [rip + after_retfq]
    push 0x23
    push rax
    retfq
after_retfq:
    lea rdi, [rip + msg]
    mov rsi, 0x8
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
msg: db "segments"
"""


def test_a_guest_loads_user_selectors_and_goes_on(app) -> None:
    b = boot(app("segs", SEGMENTS_OK))
    assert b.reports == [], [r.summary for r in b.reports]
    assert b.stdout == b"segments"
    assert b.envs[0].exit_status == 0


def _one_report(app, name: str, body: str):
    src = f"""
section .text
_start:
    {body}
    mov rdi, SCHED_EXIT
    mov rsi, 0x63
    call HC_SCHED_OP
"""
    b = boot(app(name, src), app("witness", WITNESS))
    assert b.stdout == b"ok\n"
    (r,) = b.reports
    return r


def test_a_kernel_selector_is_gp_selector_and_explained(app) -> None:
    r = _one_report(app, "kseg", "mov ax, 0x10\n    mov ds, ax")
    assert (r.kind, r.error_code, r.error) == ("general protection (#GP)", 0x10, "GDT index 2")
    assert "descriptor 2 has DPL 0" in r.reason


def test_iretq_to_a_kernel_selector_is_gp_not_pf(app) -> None:
    body = ("lea rax, [rip + t]\n    mov rcx, rsp\n    push 0x10\n    push rcx\n    pushfq\n    push 0x08\n"
            "    push rax\n    iretq\nt:\n    nop")
    r = _one_report(app, "kiret", body)
    assert (r.kind, r.error_code) == ("general protection (#GP)", 0x08)
    assert "iretq" in r.instruction


def test_the_guest_cannot_read_the_gdt(app) -> None:
    r = _one_report(app, "gdtread", f"mov rax, {GDT_LINEAR:#x}\n    mov rbx, qword ptr [rax]")
    assert (r.kind, r.fault_address, r.error_code) == ("page fault (#PF)", GDT_LINEAR, 0x5)
    assert r.error == "user read of a protected page"


def test_every_address_space_links_the_one_shared_chain_and_none_frees_it(app) -> None:
    b = boot(app("segs", SEGMENTS_OK))
    k = b.kernel
    mem = k.machine.memory
    spaces = [AddressSpace(k.frames, 999) for _ in range(50)]
    child = k.exofork(k.create_env("parent"))
    for s in [*spaces, child.space]:
        assert mem.read_u64(s.root + SYSTEM_SLOT * 8) == SYSTEM_PML4E
        t = translate(mem, s.root, GDT_LINEAR)
        assert t is not None and t.pa == GDT_BASE and not t.user and not t.writable and not t.executable
    before = mem.read(SYSTEM_PML4E & ~0xFFF, 4096)
    for s in spaces:
        s.destroy()
    # No frame of the chain is in the exokernel's frame table (it starts above the machine's
    # reserved memory), so no destroy can free or reuse it; and its contents are untouched.
    assert (SYSTEM_PML4E & ~0xFFF) < k.machine.reserved_bytes
    assert all(k.frames.type[f] != FrameType.PAGETABLE or f << 12 >= k.machine.reserved_bytes
               for f in range(len(k.frames.type)))
    assert mem.read(SYSTEM_PML4E & ~0xFFF, 4096) == before
    fresh = AddressSpace(k.frames, 1000)
    assert translate(mem, fresh.root, GDT_LINEAR).pa == GDT_BASE


def test_no_hypercall_reaches_the_system_tables(app) -> None:
    """frame_of, page_map, page_unmap and page_alloc refuse the GDT's page and the slot's first page."""
    import pytest

    from exo.abi import PERM_R
    from exo.errors import HypercallError
    from exo.hypercalls import BY_NAME

    b = boot(app("segs", SEGMENTS_OK))
    k = b.kernel
    env = k.create_env("probe")
    slot_start = GDT_LINEAR & ~0x7F_FFFF_FFFF
    for va in (GDT_LINEAR, slot_start):
        for name, args in (("frame_of", (va,)), ("page_unmap", (0, va)), ("page_alloc", (0, va, PERM_R)),
                           ("page_map", (0, 0x40_0000, 0, va, PERM_R))):
            with pytest.raises(HypercallError):
                BY_NAME[name].impl(k, env, *args)
    assert translate(k.machine.memory, env.space.root, GDT_LINEAR).pa == GDT_BASE
