"""VCpu.gpr: the live register file found by the start-up probe, read and written as memory."""

from __future__ import annotations

from hw_testkit import Guest, Recorder, run_code

from hw.regs import GPR_INDEX, Reg


def test_guest_values_are_visible_in_a_hook(guest: Guest) -> None:
    seen = {}

    def look(cpu):
        seen.update({r: cpu.gpr[i] for r, i in GPR_INDEX.items()})
        cpu.stop("done")

    code = "\n".join(f"mov {r.name.lower()}, {0x1000 + i}" for i, r in enumerate(GPR_INDEX) if r != Reg.RSP)
    run_code(guest, code + "\nsyscall", handler=Recorder(on_syscall=look))
    for i, r in enumerate(GPR_INDEX):
        if r != Reg.RSP:
            assert seen[r] == 0x1000 + i, r.name
    assert seen[Reg.RSP] == guest.m.cpu.regs.read(Reg.RSP)


def test_writes_in_a_hook_reach_the_guest(guest: Guest) -> None:
    calls = []

    def answer(cpu):
        calls.append(cpu.gpr[GPR_INDEX[Reg.RDI]])
        if len(calls) == 1:
            cpu.gpr[GPR_INDEX[Reg.RAX]] = 41  # as a hypercall result
            cpu.gpr[GPR_INDEX[Reg.R10]] = 0xFFFF_FFFF_FFFF_FFFF
        else:
            cpu.stop("done")

    run_code(guest, "mov rdi, 7\nsyscall\nlea rdi, [rax + 1]\nadd rdi, r10\nsyscall",
             handler=Recorder(on_syscall=answer))
    assert calls == [7, 41]  # 41 + 1 + (-1)


def test_view_and_library_agree_after_context_switch(guest: Guest, machine, alloc) -> None:
    cpu = machine.cpu
    other = Guest(machine, alloc)
    guest.enter(rbx=0xAAAA)
    cpu.save(guest.ctx)
    other.enter(rbx=0xBBBB)
    assert cpu.gpr[GPR_INDEX[Reg.RBX]] == 0xBBBB
    cpu.restore(guest.ctx)
    assert cpu.gpr[GPR_INDEX[Reg.RBX]] == 0xAAAA == cpu.regs.read(Reg.RBX)
