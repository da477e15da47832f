"""Impossible configurations raise MachineConfigError naming the value; no Unicorn error escapes."""

from __future__ import annotations

import io

import pytest
from hw_testkit import RAM, USER_DATA, Guest, Recorder, run_code
from unicorn import UcError

from hw import Machine, MachineConfigError
from hw.cpu import RESERVED_BYTES, VCpu
from hw.memory import PAGE_SIZE, PhysicalMemory
from hw.paging import PTE_P, PTE_U, PTE_W, entry_address, map_page, unmap_page
from hw.traps import TrapKind, Vector


def names(err: pytest.ExceptionInfo, *forms: str) -> None:
    msg = str(err.value)
    assert any(f in msg for f in forms), f"{msg!r} names none of {forms}"


def test_config_error_is_a_value_error() -> None:
    assert issubclass(MachineConfigError, ValueError)


# ------------------------------------------------------------------- RAM
def test_ram_not_a_multiple_of_page_size() -> None:
    with pytest.raises(MachineConfigError) as e:
        PhysicalMemory(4097)
    names(e, "0x1001", "4097")
    assert "page size" in str(e.value)


def test_machine_with_odd_ram_size() -> None:
    with pytest.raises(MachineConfigError) as e:
        Machine(ram_size=12345, stdin=b"", stdout=io.BytesIO())
    names(e, "0x3039", "12345")


@pytest.mark.parametrize("size", [0, -4096, "16M", 4096.0, None])
def test_ram_size_must_be_a_positive_int(size) -> None:
    with pytest.raises(MachineConfigError) as e:
        PhysicalMemory(size)
    names(e, repr(size))


def test_ram_too_small_for_the_machine() -> None:
    with pytest.raises(MachineConfigError) as e:
        Machine(ram_size=RESERVED_BYTES, stdin=b"", stdout=io.BytesIO())
    names(e, f"{RESERVED_BYTES:#x}")


@pytest.mark.parametrize(
    "op",
    [
        lambda m: m.read(RAM - 4, 8),
        lambda m: m.read(-1, 1),
        lambda m: m.read(0, -1),
        lambda m: m.write(RAM, b"x"),
        lambda m: m.write(RAM - 1, b"xy"),
        lambda m: m.zero(RAM - PAGE_SIZE, 2 * PAGE_SIZE),
        lambda m: m.copy(0, RAM - 8, 16),
        lambda m: m.copy(RAM - 8, 0, 16),
        lambda m: m.read_u64(RAM - 4),
        lambda m: m.write_u64(RAM, 1),
        lambda m: m.read_u64(-8),
    ],
)
def test_memory_access_outside_ram(op) -> None:
    mem = PhysicalMemory(RAM)
    with pytest.raises(MachineConfigError) as e:
        op(mem)
    names(e, f"{RAM:#x}")  # the message shows RAM's size next to the bad range
    assert "outside RAM" in str(e.value)


def test_memory_access_at_the_edges_works() -> None:
    mem = PhysicalMemory(RAM)
    mem.write(RAM - 3, b"end")
    assert mem.read(RAM - 3, 3) == b"end"
    mem.write_u64(RAM - 8, 0x0102030405060708)
    assert mem.read_u64(RAM - 8) == 0x0102030405060708
    assert mem.read(RAM, 0) == b""
    mem.copy(0, RAM - 8, 8)
    assert mem.read_u64(0) == 0x0102030405060708
    mem.zero(RAM - 8, 8)
    assert mem.read_u64(RAM - 8) == 0


# ---------------------------------------------------------------- paging
def test_map_page_unaligned_va(machine, alloc) -> None:
    with pytest.raises(MachineConfigError) as e:
        map_page(machine.memory, alloc(), 0x40_0001, alloc(), USER_DATA, alloc)
    names(e, "0x400001")


def test_map_page_unaligned_pa(machine, alloc) -> None:
    with pytest.raises(MachineConfigError) as e:
        map_page(machine.memory, alloc(), 0x40_0000, 0x2_0010, USER_DATA, alloc)
    names(e, "0x20010")


@pytest.mark.parametrize("pa", [RAM, RAM + 0x10_0000, 1 << 40])
def test_map_page_outside_ram(machine, alloc, pa: int) -> None:
    with pytest.raises(MachineConfigError) as e:
        map_page(machine.memory, alloc(), 0x40_0000, pa, USER_DATA, alloc)
    names(e, f"{pa:#x}")


def test_map_page_non_canonical_va(machine, alloc) -> None:
    with pytest.raises(MachineConfigError) as e:
        map_page(machine.memory, alloc(), 0x8000_0000_0000, alloc(), USER_DATA, alloc)
    names(e, "0x800000000000")


@pytest.mark.parametrize("frame, shown", [(0x2_0008, "0x20008"), (RAM, f"{RAM:#x}")])
def test_bad_page_table_frame(machine, alloc, frame: int, shown: str) -> None:
    cr3 = alloc()
    with pytest.raises(MachineConfigError) as e:
        map_page(machine.memory, cr3, 0x40_0000, alloc(), USER_DATA, lambda: frame)
    names(e, shown)


def test_unmap_unaligned(machine, alloc) -> None:
    with pytest.raises(MachineConfigError) as e:
        unmap_page(machine.memory, alloc(), 0x40_0800)
    names(e, "0x400800")


def test_entry_address_without_allocator(machine, alloc) -> None:
    assert entry_address(machine.memory, alloc(), 0x40_0000) is None


# -------------------------------------------------------------- the vCPU
def test_bogus_clock() -> None:
    with pytest.raises(MachineConfigError) as e:
        VCpu(PhysicalMemory(RAM), clock="bogus")
    names(e, "'bogus'")
    with pytest.raises(MachineConfigError) as e:
        Machine(ram_size=RAM, clock="sundial", stdin=b"", stdout=io.BytesIO())
    names(e, "'sundial'")


@pytest.mark.parametrize("seconds", [0, -0.5, float("nan"), "0.01"])
def test_bad_slice_seconds(seconds) -> None:
    with pytest.raises(MachineConfigError) as e:
        Machine(ram_size=RAM, clock="wall", slice_seconds=seconds, stdin=b"", stdout=io.BytesIO())
    names(e, repr(seconds))


@pytest.mark.parametrize("budget", [0, -1])
def test_run_needs_a_positive_budget(machine, budget: int) -> None:
    with pytest.raises(MachineConfigError) as e:
        machine.cpu.run(budget)
    names(e, str(budget))


# ----------------------------------------------- no Unicorn error escapes
OUTSIDE_VA = 0x50_0000


def _map_outside_ram(guest: Guest, flags: int) -> None:
    """A PTE the OS got wrong: it points past the end of RAM."""
    slot = entry_address(guest.mem, guest.cr3, OUTSIDE_VA, guest.alloc)
    guest.mem.write_u64(slot, (RAM + 0x10_0000) | PTE_P | flags)


@pytest.mark.parametrize(
    "code, what, write",
    [
        (f"mov rax, {OUTSIDE_VA}; mov rbx, qword ptr [rax]", "read", False),
        (f"mov rax, {OUTSIDE_VA}; mov qword ptr [rax], rbx", "write", True),
        (f"mov rax, {OUTSIDE_VA}; jmp rax", "instruction fetch", False),
    ],
)
def test_access_outside_ram_is_a_machine_check(guest: Guest, rec: Recorder, code, what, write) -> None:
    _map_outside_ram(guest, PTE_U | PTE_W)
    try:
        ex = run_code(guest, code)
    except UcError as e:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"a Unicorn error escaped: {e!r}")
    assert ex.reason == "stopped"
    (t,) = rec.traps
    assert (t.kind, t.vector, t.write) == (TrapKind.MACHINE_CHECK, Vector.MC, write)
    assert t.detail == f"{what} outside physical RAM"
    assert "UC_" not in t.detail
    assert t.name == "machine check (#MC)"


def test_machine_check_stops_even_if_handler_does_not(guest: Guest) -> None:
    _map_outside_ram(guest, PTE_U | PTE_W)
    rec = Recorder(on_trap=lambda cpu, t: None)
    ex = run_code(guest, f"mov rax, {OUTSIDE_VA}; mov rbx, qword ptr [rax]", handler=rec)
    assert (ex.reason, ex.stop_reason) == ("stopped", "machine-check")
    assert [t.kind for t in rec.traps] == [TrapKind.MACHINE_CHECK]
    # and the machine still works afterwards
    rec2 = Recorder()
    ex = run_code(guest, "mov ebx, 1; syscall", handler=rec2)
    assert ex.reason == "stopped" and rec2.syscalls[0]["RBX"] == 1


def test_page_table_outside_ram_is_not_present(guest: Guest, rec: Recorder) -> None:
    """A PDPT entry pointing past RAM: the walk finds nothing, the guest gets #PF."""
    pml4e = guest.mem.read_u64(guest.cr3)
    pdpt = pml4e & ~0xFFF & ((1 << 52) - 1)
    guest.mem.write_u64(pdpt + 8, (RAM + 0x20_0000) | PTE_P | PTE_W | PTE_U)  # VA 1 GiB..2 GiB
    ex = run_code(guest, "mov rax, 0x40000000; mov rbx, qword ptr [rax]")
    assert ex.reason == "stopped"
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x4, 0x4000_0000)
