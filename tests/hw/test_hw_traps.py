"""Every kind of trap reaches the handler with the vector, RIP, CR2 and error code a CPU gives."""

from __future__ import annotations

import pytest
from hw_testkit import CODE_VA, DATA_VA, USER_DATA, Guest, Recorder, asm, run_code

from hw.cpu import VCpu
from hw.regs import Reg
from hw.traps import Trap, TrapKind, Vector


def only_trap(rec: Recorder) -> Trap:
    assert len(rec.traps) == 1, rec.traps
    return rec.traps[0]


def offset_of(prefix: str) -> int:
    """Address of the instruction that follows ``prefix`` when code starts at CODE_VA."""
    return CODE_VA + len(asm(prefix, CODE_VA)) if prefix else CODE_VA


# ---------------------------------------------------------------- syscall
def test_syscall_reaches_handler_at_the_instruction(guest: Guest) -> None:
    seen = []

    def on_syscall(cpu: VCpu) -> None:
        seen.append((cpu.regs.read(Reg.RIP), cpu.regs.read(Reg.RAX)))
        cpu.regs.write(Reg.RAX, 100 + len(seen))  # a return value

    rec = Recorder(on_syscall=on_syscall)
    code = "mov eax, 7; syscall; mov rbx, rax; mov eax, 8; syscall; mov rcx, rax; int3"
    ex = run_code(guest, code, handler=rec)
    assert ex.reason == "stopped"
    first = offset_of("mov eax, 7")
    second = offset_of("mov eax, 7; syscall; mov rbx, rax; mov eax, 8")
    assert seen == [(first, 7), (second, 8)]
    t = only_trap(rec)  # the int3 after both syscalls: execution continued after each
    assert t.vector == Vector.BP
    regs = guest.m.cpu.read_gprs()
    assert (regs["RBX"], regs["RCX"]) == (101, 102)


def test_syscall_stop_resumes_after_it(guest: Guest, rec: Recorder) -> None:
    ex = run_code(guest, "syscall; mov ebx, 1; syscall")
    assert (ex.reason, ex.stop_reason) == ("stopped", "syscall")
    assert guest.m.cpu.regs.read(Reg.RIP) == CODE_VA + 2
    ex = guest.m.cpu.run(100)
    assert ex.reason == "stopped"
    assert rec.syscalls[1]["RBX"] == 1
    assert rec.syscalls[1]["RIP"] == offset_of("syscall; mov ebx, 1")


def test_syscall_redirect(guest: Guest) -> None:
    """The OS redirects a syscall by writing target-2 to RIP (documented Unicorn rule)."""
    target = offset_of("syscall; mov ebx, 1")

    def redirect(cpu: VCpu) -> None:
        if len(rec.syscalls) == 1:
            cpu.regs.write(Reg.RIP, target - 2)
        else:
            cpu.stop("done")

    rec = Recorder(on_syscall=redirect)
    run_code(guest, "syscall; mov ebx, 1; syscall", handler=rec)
    assert rec.syscalls[1]["RBX"] == 0
    assert rec.syscalls[1]["RIP"] == target


# ------------------------------------------------------- software interrupts
def test_int80_is_a_software_interrupt(guest: Guest, rec: Recorder) -> None:
    run_code(guest, "mov eax, 3; int 0x80; mov ebx, 1; syscall")
    t = only_trap(rec)
    after = offset_of("mov eax, 3; int 0x80")
    assert (t.kind, t.vector, t.rip, t.next_rip, t.error_code) == (TrapKind.SOFTWARE_INT, 0x80, after, after, None)
    assert "int 0x80" in t.name


def test_int80_resumes_at_next_rip(guest: Guest) -> None:
    rec = Recorder(on_trap=lambda cpu, t: cpu.regs.write(Reg.RAX, 42))
    run_code(guest, "int 0x80; mov rbx, rax; syscall", handler=rec)
    assert len(rec.traps) == 1
    assert rec.syscalls[0]["RBX"] == 42


@pytest.mark.parametrize("vector", [0x0E, 0x0D, 0x08, 0x00, 0x01, 0x03, 0x20, 0x81, 0xFF])
def test_int_n_through_a_kernel_gate_is_gp(guest: Guest, rec: Recorder, vector: int) -> None:
    """`int n` to a DPL-0 gate from ring 3: #GP(n*8+2) at the `int`, not the exception n."""
    if vector == 0x03:
        guest.m.cpu.user_vectors = frozenset({0x80})
    ex = run_code(guest, f"nop; int {vector:#x}; syscall")
    assert ex.reason == "stopped"
    t = only_trap(rec)
    assert (t.kind, t.vector, t.error_code) == (TrapKind.EXCEPTION, Vector.GP, (vector << 3) | 2)
    assert t.rip == CODE_VA + 1
    assert t.cr2 is None
    assert guest.m.cpu.regs.read(Reg.RIP) == CODE_VA + 1
    assert t.describe_error() == f"IDT index {vector}"


def test_int3_is_breakpoint_with_next_rip(guest: Guest, rec: Recorder) -> None:
    run_code(guest, "nop; int3; syscall")
    t = only_trap(rec)
    assert (t.kind, t.vector, t.rip, t.next_rip) == (TrapKind.EXCEPTION, Vector.BP, CODE_VA + 2, CODE_VA + 2)


def test_int3_through_a_kernel_gate(guest: Guest, rec: Recorder) -> None:
    guest.m.cpu.user_vectors = frozenset({0x80})
    run_code(guest, "nop; int3; syscall")
    t = only_trap(rec)
    assert (t.vector, t.error_code, t.rip) == (Vector.GP, (3 << 3) | 2, CODE_VA + 1)


def test_user_vectors_are_configurable(guest: Guest, rec: Recorder) -> None:
    guest.m.cpu.user_vectors = frozenset({0x81})
    run_code(guest, "int 0x81; int 0x80")
    assert only_trap(rec).kind is TrapKind.SOFTWARE_INT
    assert rec.traps[0].vector == 0x81
    guest.m.cpu.run(100)
    t = rec.traps[1]
    assert (t.vector, t.error_code, t.rip) == (Vector.GP, 0x402, CODE_VA + 2)


# ----------------------------------------------------------- faults
@pytest.mark.parametrize(
    "code, skip",
    [
        ("ud2", 2),
        ("vmcall", 3),
        (bytes.fromhex("0f0b"), 2),  # ud2 by bytes
        (bytes.fromhex("0f01c1"), 3),  # vmcall by bytes
        (bytes.fromhex("ce"), 1),  # `into` is invalid in 64-bit mode
    ],
)
def test_invalid_opcodes_are_ud(guest: Guest, code, skip: int) -> None:
    def skip_it(cpu: VCpu, t: Trap) -> None:
        cpu.regs.write(Reg.RIP, t.rip + skip)

    rec = Recorder(on_trap=skip_it)
    body = asm(code, CODE_VA) if isinstance(code, str) else code
    guest.load(asm("nop", CODE_VA) + body + asm("mov ebx, 9; syscall"))
    guest.m.cpu.handler = rec
    guest.enter()
    ex = guest.m.cpu.run(100)
    assert ex.reason == "stopped"
    t = only_trap(rec)
    assert (t.kind, t.vector, t.rip, t.error_code) == (TrapKind.EXCEPTION, Vector.UD, CODE_VA + 1, None)
    assert rec.syscalls[0]["RBX"] == 9


def test_ud_retried_if_handler_does_not_move_rip(guest: Guest) -> None:
    rec = Recorder(on_trap=lambda cpu, t: None)
    ex = run_code(guest, "ud2; syscall", budget=50, handler=rec)
    assert ex.reason == "preempted"
    assert not rec.syscalls
    assert len(rec.traps) == 50
    assert {(t.vector, t.rip) for t in rec.traps} == {(Vector.UD, CODE_VA)}


@pytest.mark.parametrize("insn", ["div rcx", "idiv ecx", "div cl"])
def test_divide_by_zero(guest: Guest, rec: Recorder, insn: str) -> None:
    prefix = "mov eax, 10; xor edx, edx; xor ecx, ecx"
    run_code(guest, f"{prefix}; {insn}; syscall")
    t = only_trap(rec)
    assert (t.kind, t.vector, t.rip, t.error_code) == (TrapKind.EXCEPTION, Vector.DE, offset_of(prefix), None)
    assert t.name == "divide error (#DE)"


def test_divide_overflow_is_de(guest: Guest, rec: Recorder) -> None:
    prefix = "mov eax, 0; mov edx, 5; mov ecx, 2"
    run_code(guest, f"{prefix}; div ecx")  # quotient does not fit in 32 bits
    t = only_trap(rec)
    assert (t.vector, t.rip) == (Vector.DE, offset_of(prefix))


@pytest.mark.parametrize(
    "insn",
    [
        "hlt",
        "mov cr3, rax",
        "mov rax, cr3",
        "mov cr0, rax",
        "wrmsr",
        "rdmsr",
        "cli",
        "sti",
        "invlpg [rsi]",
        "lgdt [rsi]",
        "lidt [rsi]",
        "wbinvd",
    ],
)
def test_privileged_instruction_at_cpl3_is_gp0(guest: Guest, rec: Recorder, insn: str) -> None:
    guest.map(DATA_VA, USER_DATA)
    prefix = f"mov rsi, {DATA_VA}; mov ecx, 0xC0000080"
    ex = run_code(guest, f"{prefix}; {insn}; syscall")
    assert ex.reason == "stopped"
    assert not rec.syscalls
    t = only_trap(rec)
    assert (t.kind, t.vector, t.error_code, t.rip) == (TrapKind.EXCEPTION, Vector.GP, 0, offset_of(prefix))
    assert t.describe_error().startswith("no selector")
    assert guest.m.cpu.regs.read(Reg.CS) & 3 == 3  # still ring 3


# ------------------------------------------------------------------ port I/O
@pytest.mark.parametrize(
    "setup, insn, port, size, value",
    [
        ("mov al, 0x41", "out 0x10, al", 0x10, 1, 0x41),
        ("mov dx, 0x3F8; mov al, 0", "out dx, al", 0x3F8, 1, 0),
        ("mov dx, 0x1F0; mov ax, 0xBEEF", "out dx, ax", 0x1F0, 2, 0xBEEF),
        ("mov dx, 0xCF8; mov eax, 0x80001234", "out dx, eax", 0xCF8, 4, 0x80001234),
    ],
)
def test_out_is_an_io_trap(guest: Guest, rec: Recorder, setup, insn, port, size, value) -> None:
    run_code(guest, f"{setup}; {insn}; syscall")
    t = only_trap(rec)
    assert t.kind is TrapKind.IO
    assert (t.port, t.size, t.value, t.write, t.rip) == (port, size, value, True, offset_of(setup))
    assert t.name == f"port I/O (out {port:#x})"


@pytest.mark.parametrize(
    "setup, insn, port, size",
    [
        ("nop", "in al, 0x60", 0x60, 1),
        ("mov dx, 0x3F8", "in al, dx", 0x3F8, 1),
        ("mov dx, 0x1F0", "in ax, dx", 0x1F0, 2),
        ("mov dx, 0xCFC", "in eax, dx", 0xCFC, 4),
    ],
)
def test_in_is_an_io_trap(guest: Guest, rec: Recorder, setup, insn, port, size) -> None:
    run_code(guest, f"{setup}; {insn}; syscall")
    t = only_trap(rec)
    assert t.kind is TrapKind.IO
    assert (t.port, t.size, t.value, t.write, t.rip) == (port, size, None, False, offset_of(setup))


def test_in_value_supplied_by_handler(guest: Guest) -> None:
    def supply(cpu: VCpu, t: Trap) -> None:
        t.value = 0x5A

    rec = Recorder(on_trap=supply)
    run_code(guest, "mov eax, 0xFFFFFFFF; in al, 0x60; syscall", handler=rec)
    assert rec.syscalls[0]["RAX"] == 0xFFFFFF5A


# ------------------------------------------------------- bad jumps
@pytest.mark.parametrize("how", ["jmp", "call"])
@pytest.mark.parametrize("target", [0x90_0000, 0x0])
def test_transfer_to_unmapped_address(guest: Guest, rec: Recorder, how: str, target: int) -> None:
    ex = run_code(guest, f"mov rax, {target}; {how} rax")
    assert ex.reason == "stopped"
    t = only_trap(rec)
    assert (t.kind, t.vector, t.error_code, t.cr2, t.rip) == (TrapKind.EXCEPTION, Vector.PF, 0x14, target, target)
    assert guest.m.cpu.regs.read(Reg.RIP) == target


def test_start_at_address_zero(guest: Guest, rec: Recorder) -> None:
    guest.enter(rip=0)
    ex = guest.m.cpu.run(100)
    assert ex.reason == "stopped"
    t = only_trap(rec)
    assert (t.vector, t.error_code, t.cr2, t.rip) == (Vector.PF, 0x14, 0, 0)


def test_trap_into_supervisor_code_page(guest: Guest, rec: Recorder) -> None:
    """The machine's own low pages are not in a fresh address space, and would be supervisor anyway."""
    run_code(guest, "mov rax, 0x2000; jmp rax")
    t = only_trap(rec)
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x14, 0x2000)


def test_handler_exception_propagates_and_machine_survives(guest: Guest) -> None:
    def boom(cpu: VCpu) -> None:
        raise RuntimeError("handler bug")

    rec = Recorder(on_syscall=boom)
    with pytest.raises(RuntimeError, match="handler bug"):
        run_code(guest, "syscall", handler=rec)
    rec2 = Recorder()
    ex = run_code(guest, "mov ebx, 5; syscall", handler=rec2)
    assert ex.reason == "stopped"
    assert rec2.syscalls[0]["RBX"] == 5


def test_trap_names_and_descriptions() -> None:
    from hw.traps import decode_gp_error, decode_pf_error

    assert decode_pf_error(0x4) == "user read of a not-present page"
    assert decode_pf_error(0x7) == "user write of a protected page"
    assert decode_pf_error(0x15) == "user instruction fetch of a protected page"
    assert decode_pf_error(0x2) == "supervisor write of a not-present page"
    assert decode_pf_error(0xD) == "user read of a protected page, reserved bit set"
    assert decode_gp_error(0) == "no selector (privileged instruction or bad operand)"
    assert decode_gp_error(0x72) == "IDT index 14"
    assert decode_gp_error(0x18) == "GDT index 3"
    assert decode_gp_error(0x1D) == "LDT index 3 (external)"
    assert Trap(TrapKind.EXCEPTION, Vector.PF, 0).name == "page fault (#PF)"
    assert Trap(TrapKind.EXCEPTION, 9, 0).name == "vector 9"
    assert Trap(TrapKind.IO, Vector.GP, 0, port=0x60, write=False).name == "port I/O (in 0x60)"
    assert Trap(TrapKind.EXCEPTION, Vector.UD, 0).describe_error() == ""


def test_first_stop_reason_wins(guest: Guest) -> None:
    flags = []

    def stop_twice(cpu: VCpu) -> None:
        flags.append(cpu.stop_requested)
        cpu.stop("first")
        cpu.stop("second")
        flags.append(cpu.stop_requested)

    rec = Recorder(on_syscall=stop_twice)
    ex = run_code(guest, "syscall; ud2", handler=rec)
    assert (ex.reason, ex.stop_reason) == ("stopped", "first")
    assert flags == [False, True]
    assert not rec.traps  # the stop took effect before the next instruction
