"""Self-modifying code and code patched by the host both take effect."""

from __future__ import annotations

from hw_testkit import CODE_VA, Guest, Recorder, asm

from hw.cpu import VCpu
from hw.paging import PTE_U, PTE_W
from hw.traps import Vector

WX_VA = 0x45_0000  # the one writable+executable page, for self-modifying code only


def test_guest_patches_a_function_it_already_ran(guest: Guest, rec: Recorder) -> None:
    pa = guest.map(WX_VA, PTE_U | PTE_W)
    guest.mem.write(pa + 0x100, asm("mov eax, 1; ret"))
    code = f"""
        mov rsi, {WX_VA + 0x100}
        call rsi
        mov ebx, eax
        mov byte ptr [rsi + 1], 0x2a
        call rsi
        syscall
    """
    guest.load(code)
    guest.enter()
    ex = guest.m.cpu.run(1000)
    assert ex.reason == "stopped" and not rec.traps
    assert (rec.syscalls[0]["RBX"], rec.syscalls[0]["RAX"]) == (1, 42)
    assert guest.mem.read(pa + 0x101, 1) == b"\x2a"


def test_guest_patches_the_next_instruction(guest: Guest, rec: Recorder) -> None:
    """The patched instruction is in the same translated block as the store."""
    pa = guest.map(WX_VA, PTE_U | PTE_W)
    prefix = asm(f"mov rsi, {WX_VA}; mov byte ptr [rsi + 0x7f], 0x2a", WX_VA)
    imm = len(prefix) + 1  # the immediate of the `mov eax, 1` that follows
    code = asm(f"mov rsi, {WX_VA}; mov byte ptr [rsi + {imm}], 0x2a; mov eax, 1; syscall", WX_VA)
    assert code[len(prefix)] == 0xB8  # mov eax, imm32 directly after the store
    guest.mem.write(pa, code)
    guest.m.cpu.flush_code()
    guest.enter(WX_VA)
    ex = guest.m.cpu.run(1000)
    assert ex.reason == "stopped" and not rec.traps
    assert rec.syscalls[0]["RAX"] == 42


def test_guest_cannot_patch_read_only_code(guest: Guest, rec: Recorder) -> None:
    code_pa = guest.load(f"mov rsi, {CODE_VA}; mov byte ptr [rsi], 0xcc; syscall")
    before = guest.mem.read(code_pa, 16)
    guest.enter()
    guest.m.cpu.run(1000)
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x7, CODE_VA)
    assert guest.mem.read(code_pa, 16) == before


def test_host_patch_between_runs(guest: Guest, rec: Recorder) -> None:
    cpu = guest.m.cpu
    pa = guest.load("mov eax, 1; syscall")
    guest.enter()
    cpu.run(100)
    assert rec.syscalls[-1]["RAX"] == 1
    for value in (2, 0x7F, 0x1234):
        guest.mem.write(pa + 1, value.to_bytes(4, "little"))
        cpu.flush_code()
        guest.enter()
        assert cpu.run(100).reason == "stopped"
        assert rec.syscalls[-1]["RAX"] == value


def test_host_replaces_whole_program(guest: Guest, rec: Recorder) -> None:
    cpu = guest.m.cpu
    pa = guest.load("mov ebx, 3; syscall")
    guest.enter()
    cpu.run(100)
    new = asm("xor ebx, ebx; ud2", CODE_VA)
    guest.mem.write(pa, new + b"\x90" * 8)
    cpu.flush_code()
    guest.enter()
    cpu.run(100)
    (t,) = rec.traps
    assert (t.vector, t.rip) == (Vector.UD, CODE_VA + 2)


def test_host_patch_from_inside_a_handler(guest: Guest) -> None:
    """The OS patches code during a syscall and continues in the same slice."""
    pa = guest.load("syscall; mov eax, 1; syscall")

    def patch_then_stop(cpu: VCpu) -> None:
        if len(rec.syscalls) == 1:
            guest.mem.write(pa + 3, (0x99).to_bytes(4, "little"))  # imm of `mov eax, 1`
            cpu.flush_code()
        else:
            cpu.stop("done")

    rec = Recorder(on_syscall=patch_then_stop)
    guest.m.cpu.handler = rec
    guest.enter()
    ex = guest.m.cpu.run(100)
    assert (ex.reason, ex.stop_reason) == ("stopped", "done")
    assert rec.syscalls[1]["RAX"] == 0x99


def test_same_code_va_in_two_spaces(machine, alloc, rec: Recorder) -> None:
    """Two address spaces with different code at the same VA each run their own."""
    a, b = Guest(machine, alloc), Guest(machine, alloc)
    a.load("mov eax, 0xA; syscall")
    b.load("mov eax, 0xB; syscall")
    for g in (a, b, a, b):
        g.enter()
        machine.cpu.run(100)
    assert [s["RAX"] for s in rec.syscalls] == [0xA, 0xB, 0xA, 0xB]
