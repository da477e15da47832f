"""Paging: what hw.paging says about an address is what guest code experiences."""

from __future__ import annotations

import pytest
from hw_testkit import (
    CODE_VA,
    DATA_VA,
    USER_CODE,
    USER_DATA,
    USER_RODATA,
    FrameAllocator,
    Guest,
    Recorder,
    asm,
    run_code,
)

from hw.errors import MachineConfigError
from hw.memory import PAGE_SIZE
from hw.paging import (
    ADDR_MASK,
    PTE_A,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PTE_U,
    PTE_W,
    entry_address,
    is_canonical,
    map_page,
    table_frames,
    translate,
    unmap_page,
    walk_tables,
)
from hw.regs import Reg
from hw.traps import PF_I, PF_P, PF_U, PF_W, TrapKind, Vector

PROBE_VA = 0x50_0000
SYSCALL = b"\x0f\x05"


def read_probe(va: int) -> str:
    return f"mov rax, {va}; mov rbx, qword ptr [rax]; syscall"


def write_probe(va: int) -> str:
    return f"mov rax, {va}; mov rbx, 0x1122334455667788; mov qword ptr [rax], rbx; syscall"


def exec_probe(va: int) -> str:
    return f"mov rax, {va}; call rax"


def the_fault(rec: Recorder):
    """The single #PF the probe raised, or None if the probe completed."""
    if rec.syscalls:
        assert not rec.traps
        return None
    assert len(rec.traps) == 1, rec.traps
    t = rec.traps[0]
    assert t.kind is TrapKind.EXCEPTION
    assert t.vector == Vector.PF
    return t


def expected_error(tr, access: str) -> int | None:
    """The #PF error code the SDM predicts for a user ``access`` given ``translate``'s answer."""
    bits = PF_U | (PF_W if access == "w" else 0) | (PF_I if access == "x" else 0)
    if tr is None:
        return bits
    if not tr.user or (access == "w" and not tr.writable) or (access == "x" and not tr.executable):
        return bits | PF_P
    return None


PAGE_KINDS = {
    "unmapped": None,
    "user-rw-nx": USER_DATA,
    "user-ro-nx": USER_RODATA,
    "user-rx": USER_CODE,
    "user-rwx": PTE_U | PTE_W,
    "supervisor-rw": PTE_W,
    "supervisor-rx": 0,
}


@pytest.mark.parametrize("access", ["r", "w", "x"])
@pytest.mark.parametrize("kind", list(PAGE_KINDS))
def test_translate_agrees_with_guest(guest: Guest, kind: str, access: str) -> None:
    flags = PAGE_KINDS[kind]
    pa = None
    if flags is not None:
        pa = guest.map(PROBE_VA, flags)
        guest.mem.write(pa, SYSCALL)  # executable content for the fetch probe
    tr = translate(guest.mem, guest.cr3, PROBE_VA + 0x10)
    if flags is None:
        assert tr is None
    else:
        assert tr is not None
        assert tr.pa == pa + 0x10
        assert tr.page_size == PAGE_SIZE
        assert tr.user == bool(flags & PTE_U)
        assert tr.writable == bool(flags & PTE_W)
        assert tr.executable == (not flags & PTE_NX)

    probe = {"r": read_probe, "w": write_probe, "x": exec_probe}[access](PROBE_VA)
    rec = Recorder()
    run_code(guest, probe, handler=rec)
    fault = the_fault(rec)
    want = expected_error(tr, access)
    if want is None:
        assert fault is None
        if access == "x":
            assert rec.syscalls[0]["RIP"] == PROBE_VA
        if access == "w":
            assert guest.mem.read_u64(pa) == 0x1122334455667788
    else:
        assert fault is not None, f"{kind} {access}: expected #PF {want:#x}, probe completed"
        assert fault.error_code == want
        assert fault.cr2 == PROBE_VA


def test_user_read_of_supervisor_page(guest: Guest, rec: Recorder) -> None:
    guest.map(PROBE_VA, PTE_W | PTE_NX)
    guest.load(read_probe(PROBE_VA + 0x18))
    guest.enter()
    ex = guest.m.cpu.run(1000)
    assert ex.reason == "stopped"
    (t,) = rec.traps
    assert (t.kind, t.vector, t.error_code, t.cr2) == (TrapKind.EXCEPTION, Vector.PF, 0x5, PROBE_VA + 0x18)
    # RIP is the faulting load (the second instruction), not the one after it.
    load_rip = CODE_VA + len(guest_asm(f"mov rax, {PROBE_VA + 0x18}"))
    assert t.rip == load_rip
    assert guest.m.cpu.regs.read(Reg.RIP) == load_rip
    assert guest.m.cpu.regs.read(Reg.CR2) == PROBE_VA + 0x18
    assert "user read of a protected page" in t.describe_error()


def guest_asm(src: str) -> bytes:
    return asm(src, CODE_VA)


def test_write_to_read_only_user_page(guest: Guest, rec: Recorder) -> None:
    pa = guest.map(PROBE_VA, USER_RODATA)
    guest.mem.write(pa + 8, b"\xaa" * 8)
    run_code(guest, write_probe(PROBE_VA + 8))
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x7, PROBE_VA + 8)
    assert t.rip == CODE_VA + len(guest_asm(f"mov rax, {PROBE_VA + 8}; mov rbx, 0x1122334455667788"))
    assert guest.mem.read(pa + 8, 8) == b"\xaa" * 8  # nothing was written


def test_write_to_not_present_page(guest: Guest, rec: Recorder) -> None:
    run_code(guest, write_probe(PROBE_VA + 0x7F8))
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x6, PROBE_VA + 0x7F8)
    assert "user write of a not-present page" in t.describe_error()


def test_read_of_not_present_page(guest: Guest, rec: Recorder) -> None:
    run_code(guest, read_probe(PROBE_VA))
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x4, PROBE_VA)


def test_fetch_from_nx_page(guest: Guest, rec: Recorder) -> None:
    pa = guest.map(PROBE_VA, USER_DATA)
    guest.mem.write(pa, SYSCALL)
    run_code(guest, exec_probe(PROBE_VA))
    assert not rec.syscalls
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2, t.rip) == (Vector.PF, 0x15, PROBE_VA, PROBE_VA)
    assert "user instruction fetch of a protected page" in t.describe_error()


def test_legal_read_and_write_reach_the_physical_frame(guest: Guest, rec: Recorder) -> None:
    pa = guest.map(DATA_VA, USER_DATA)
    guest.mem.write_u64(pa + 0x100, 0xDEAD_BEEF_CAFE_F00D)
    code = f"""
        mov rsi, {DATA_VA}
        mov rax, qword ptr [rsi + 0x100]
        mov rbx, 0x0102030405060708
        mov qword ptr [rsi + 0x208], rbx
        mov dword ptr [rsi + 0xFFC], 0x7ABBCCDD
        syscall
    """
    ex = run_code(guest, code)
    assert ex.reason == "stopped" and not rec.traps
    assert rec.syscalls[0]["RAX"] == 0xDEAD_BEEF_CAFE_F00D
    assert guest.mem.read_u64(pa + 0x208) == 0x0102030405060708
    assert guest.mem.read(pa + 0xFFC, 4) == bytes.fromhex("DDCCBB7A")


def test_user_stack_push_pop(guest: Guest, rec: Recorder) -> None:
    code = "mov rax, 0x55; push rax; push 0x66; pop rbx; pop rcx; syscall"
    run_code(guest, code)
    s = rec.syscalls[0]
    assert (s["RBX"], s["RCX"]) == (0x66, 0x55)


def test_unmap_then_flush_tlb_faults(guest: Guest, rec: Recorder) -> None:
    pa = guest.map(DATA_VA, USER_DATA)
    guest.mem.write_u64(pa, 77)
    cpu = guest.m.cpu
    guest.load(read_probe(DATA_VA) + "; " + read_probe(DATA_VA))
    guest.enter()
    assert cpu.run(1000).reason == "stopped"
    assert rec.syscalls[-1]["RBX"] == 77  # the translation is now cached in the TLB
    assert unmap_page(guest.mem, guest.cr3, DATA_VA) == pa
    assert translate(guest.mem, guest.cr3, DATA_VA) is None
    cpu.flush_tlb()
    assert cpu.run(1000).reason == "stopped"
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x4, DATA_VA)
    assert unmap_page(guest.mem, guest.cr3, DATA_VA) is None  # already gone
    assert unmap_page(guest.mem, guest.cr3, 0x7000_0000_0000) is None  # no tables at all


def test_remap_to_another_frame_after_flush(guest: Guest, rec: Recorder) -> None:
    first = guest.map(DATA_VA, USER_DATA)
    second = guest.alloc()
    guest.mem.write_u64(first, 1)
    guest.mem.write_u64(second, 2)
    cpu = guest.m.cpu
    guest.load(read_probe(DATA_VA) + "; " + read_probe(DATA_VA))
    guest.enter()
    cpu.run(1000)
    map_page(guest.mem, guest.cr3, DATA_VA, second, USER_DATA, guest.alloc)
    cpu.flush_tlb()
    cpu.run(1000)
    assert [s["RBX"] for s in rec.syscalls] == [1, 2]


def _pde_address(guest: Guest, va: int) -> int:
    pml4e = guest.mem.read_u64(guest.cr3 + ((va >> 39) & 511) * 8)
    pdpte = guest.mem.read_u64((pml4e & ADDR_MASK) + ((va >> 30) & 511) * 8)
    return (pdpte & ADDR_MASK) + ((va >> 21) & 511) * 8


@pytest.mark.parametrize(
    "clear, set_, probe, error",
    [
        (PTE_U, 0, read_probe, 0x5),  # U/S=0 in the PD: supervisor page for the whole walk
        (PTE_W, 0, write_probe, 0x7),  # R/W=0 in the PD: read-only
        (0, PTE_NX, exec_probe, 0x15),  # XD in the PD: no execution below it
    ],
)
def test_rights_are_checked_at_every_level(guest: Guest, rec: Recorder, clear, set_, probe, error) -> None:
    pa = guest.map(PROBE_VA, PTE_U | PTE_W)  # the leaf allows everything
    guest.mem.write(pa, SYSCALL)
    pde = _pde_address(guest, PROBE_VA)
    guest.mem.write_u64(pde, (guest.mem.read_u64(pde) & ~clear) | set_)
    tr = translate(guest.mem, guest.cr3, PROBE_VA)
    assert tr is not None
    assert (tr.user, tr.writable, tr.executable) == (not clear & PTE_U, not clear & PTE_W, not set_ & PTE_NX)
    guest.load(probe(PROBE_VA), va=0x20_0000)  # keep the code outside the altered PD's range
    guest.enter(0x20_0000)
    guest.m.cpu.run(1000)
    assert not rec.syscalls
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, error, PROBE_VA)


def test_large_page(guest: Guest, rec: Recorder) -> None:
    va = 0x2000_0000
    frame = guest.mem.size - (2 << 20)  # a 2 MiB aligned frame the allocator will not reach
    guest.mem.write_u64(frame + 0x12_3450, 0xABCDEF)
    slot = entry_address(guest.mem, guest.cr3, va, guest.alloc)  # creates PML4/PDPT/PD
    assert slot is not None
    pde = _pde_address(guest, va)
    guest.mem.write_u64(pde, frame | PTE_P | PTE_U | PTE_W | PTE_PS | PTE_NX)
    tr = translate(guest.mem, guest.cr3, va + 0x12_3450)
    assert tr is not None
    assert (tr.pa, tr.page_size, tr.user, tr.executable) == (frame + 0x12_3450, 2 << 20, True, False)
    run_code(guest, read_probe(va + 0x12_3450))
    assert rec.syscalls[0]["RBX"] == 0xABCDEF
    with pytest.raises(MachineConfigError, match="large page"):
        map_page(guest.mem, guest.cr3, va + PAGE_SIZE, guest.alloc(), USER_DATA, guest.alloc)


def test_accessed_and_dirty_bits(guest: Guest, rec: Recorder) -> None:
    read_pa = guest.map(DATA_VA, USER_DATA)
    write_pa = guest.map(DATA_VA + PAGE_SIZE, USER_DATA)
    guest.map(DATA_VA + 2 * PAGE_SIZE, USER_DATA)
    run_code(guest, read_probe(DATA_VA) + "; " + write_probe(DATA_VA + PAGE_SIZE))
    assert len(rec.syscalls) == 1  # stopped at the first syscall
    guest.m.cpu.run(1000)
    leaves = {va: (pa, flags) for va, pa, flags, _ in walk_tables(guest.mem, guest.cr3)}
    assert leaves[DATA_VA][0] == read_pa
    assert leaves[DATA_VA][1] & (PTE_A | PTE_D) == PTE_A
    assert leaves[DATA_VA + PAGE_SIZE][0] == write_pa
    assert leaves[DATA_VA + PAGE_SIZE][1] & (PTE_A | PTE_D) == PTE_A | PTE_D
    assert leaves[DATA_VA + 2 * PAGE_SIZE][1] & (PTE_A | PTE_D) == 0


def test_walk_tables_and_table_frames(machine, alloc: FrameAllocator) -> None:
    mem = machine.memory
    cr3 = alloc()
    pages = {0x1000: USER_CODE, 0x40_0000: USER_DATA, 0x40_1000: USER_RODATA, 0x7FFF_FFFF_F000: USER_DATA}
    frames = {}
    for va, flags in pages.items():
        frames[va] = alloc()
        map_page(mem, cr3, va, frames[va], flags, alloc)
    leaves = walk_tables(mem, cr3)
    assert [va for va, *_ in leaves] == sorted(pages)
    for va, pa, flags, pte in leaves:
        assert pa == frames[va]
        assert flags == pages[va] | PTE_P
        assert mem.read_u64(pte) == pa | flags
        assert pte == entry_address(mem, cr3, va)
    # root + (PDPT, PD, PT) for the low pages (0x1000 and 0x40_0000 share PDPT and PD) + 3 for the top page
    tables = table_frames(mem, cr3)
    assert tables[0] == cr3
    assert len(tables) == len(set(tables)) == 1 + 3 + 1 + 3
    assert not set(tables) & set(frames.values())


def test_canonical_addresses() -> None:
    assert is_canonical(0)
    assert is_canonical(0x7FFF_FFFF_FFFF)
    assert not is_canonical(0x8000_0000_0000)
    assert not is_canonical(0xFFFF_7FFF_FFFF_FFFF)
    assert is_canonical(0xFFFF_8000_0000_0000)
    assert is_canonical(0xFFFF_FFFF_FFFF_FFFF)


def test_non_canonical_access_is_gp_not_pf(guest: Guest, rec: Recorder) -> None:
    assert translate(guest.mem, guest.cr3, 0x8000_0000_0000) is None
    run_code(guest, read_probe(0x8000_0000_0000))
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.GP, 0, None)
