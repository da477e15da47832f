"""Segments as a CPU does them at CPL 3 (issue 11, section 1; SDM Vol. 3A 5.5, 6.15).

The GDT is reachable through every address space at a kernel-half linear address
(hw/cpu.py GDT_LINEAR, supervisor-only): user selectors load, kernel selectors
and selectors past the GDT give #GP(selector), a null SS gives #GP(0), and the
guest itself cannot read or write the GDT (#PF with U=1). Before, every
descriptor load at ring 3 was a #PF at 0x1000 + selector.
"""

from __future__ import annotations

import pytest
from hw_testkit import Guest, Recorder, run_code
from unicorn import x86_const as X

from hw.cpu import GDT_LINEAR, SEL_UCODE, SEL_UDATA
from hw.traps import PF_P, PF_U, PF_W, TrapKind, Vector

# Legal ring-3 code: (code, segment register that then holds 0x1b, or None); each goes on
# to `mov ebx, 7; syscall`.
DS, ES, FS, GS, SS = (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS, X.UC_X86_REG_SS)
LEGAL = {
    "mov ds": ("mov ax, 0x1b; mov ds, ax", DS),
    "mov es fs gs": ("mov ax, 0x1b; mov es, ax; mov fs, ax; mov gs, ax", GS),
    "mov ss": ("mov ax, 0x1b; mov ss, ax", SS),
    "mov ds from memory": ("push 0x1b; mov ds, word ptr [rsp]; pop rax", DS),
    "pop-style via a register": ("push 0x1b; pop rax; mov es, ax", ES),
    "null into ds": ("xor eax, eax; mov ds, ax", None),
    "user code into fs (readable code)": ("mov ax, 0x23; mov fs, ax", None),
    "iretq to 0x23": ("lea rax, [rip + t]; mov rcx, rsp; push 0x1b; push rcx; pushfq; push 0x23; push rax; "
                      "iretq; t: nop", SS),
    "retfq to 0x23": ("lea rax, [rip + t]; push 0x23; push rax; retfq; t: nop", None),
}

# Illegal: (code, error code). The CPU's error code is the selector's index and TI bit.
ILLEGAL = {
    "kernel data into ds": ("mov ax, 0x10; mov ds, ax", 0x10),
    "kernel code into es": ("mov ax, 0x08; mov es, ax", 0x08),
    "kernel data into ss": ("mov ax, 0x10; mov ss, ax", 0x10),
    "past the GDT limit": ("mov ax, 0x30; mov fs, ax", 0x30),
    "LDT selector (none exists)": ("mov ax, 0x1f; mov gs, ax", 0x1C),
    "null into ss": ("xor eax, eax; mov ss, ax", 0),
    "user code into ss": ("mov ax, 0x23; mov ss, ax", 0x20),
    "iretq to kernel code": ("lea rax, [rip + t]; mov rcx, rsp; push 0x10; push rcx; pushfq; push 0x08; push rax; "
                             "iretq; t: nop", 0x08),
    "iretq with a kernel ss": ("lea rax, [rip + t]; mov rcx, rsp; push 0x13; push rcx; pushfq; push 0x23; "
                               "push rax; iretq; t: nop", 0x10),
    "retfq to kernel code": ("lea rax, [rip + t]; push 0x08; push rax; retfq; t: nop", 0x08),
    "retfq to a data selector": ("lea rax, [rip + t]; push 0x1b; push rax; retfq; t: nop", 0x18),
    "retfq past the GDT": ("lea rax, [rip + t]; push 0x33; push rax; retfq; t: nop", 0x30),
}


@pytest.mark.parametrize("name", list(LEGAL))
def test_legal_segment_loads_work_and_continue(guest: Guest, rec: Recorder, name: str) -> None:
    code, seg = LEGAL[name]
    ex = run_code(guest, code + "; mov ebx, 7; syscall")
    assert ex.reason == "stopped"
    assert rec.traps == [], [(t.name, t.error_code, t.cr2) for t in rec.traps]
    assert rec.syscalls and rec.syscalls[0]["RBX"] == 7
    uc = guest.m.cpu.uc
    assert uc.reg_read(X.UC_X86_REG_CS) == SEL_UCODE
    if seg is not None:
        assert uc.reg_read(seg) == SEL_UDATA


@pytest.mark.parametrize("name", list(ILLEGAL))
def test_illegal_segment_loads_are_gp_selector(guest: Guest, rec: Recorder, name: str) -> None:
    code, error = ILLEGAL[name]
    run_code(guest, code + "; mov ebx, 7; syscall")
    (t,) = rec.traps
    assert (t.kind, t.vector, t.error_code) == (TrapKind.EXCEPTION, Vector.GP, error), (t.name, t.error_code, t.cr2)
    assert rec.syscalls == []


@pytest.mark.parametrize("insn, error", [("mov rbx, qword ptr [rax]", PF_P | PF_U),
                                         ("mov qword ptr [rax], rbx", PF_P | PF_U | PF_W),
                                         ("jmp rax", PF_P | PF_U | (1 << 4))])
def test_the_guest_cannot_touch_the_gdt(guest: Guest, rec: Recorder, insn: str, error: int) -> None:
    run_code(guest, f"mov rax, {GDT_LINEAR:#x}; {insn}")
    (t,) = rec.traps
    assert (t.vector, t.cr2, t.error_code) == (Vector.PF, GDT_LINEAR, error)
