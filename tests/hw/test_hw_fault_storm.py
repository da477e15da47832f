"""Fault storms: every fault arrives as itself, never as a double fault or as silence."""

from __future__ import annotations

from hw_testkit import USER_DATA, Guest, Recorder, asm, run_code

from hw.cpu import VCpu
from hw.memory import PAGE_SIZE
from hw.paging import translate
from hw.regs import Reg
from hw.traps import Trap, TrapKind, Vector

N = 1000
HEAP = 0x100_0000


def test_demand_paging_storm(guest: Guest) -> None:
    """A loop touches N fresh pages; the handler maps each on its #PF and the loop finishes."""

    def demand_page(cpu: VCpu, t: Trap) -> None:
        assert t.kind is TrapKind.EXCEPTION and t.vector == Vector.PF, t
        assert HEAP <= t.cr2 < HEAP + N * PAGE_SIZE, hex(t.cr2)
        guest.map(t.cr2 & ~(PAGE_SIZE - 1), USER_DATA)

    rec = Recorder(on_trap=demand_page)
    code = f"""
        mov rcx, {N}
        mov rdi, {HEAP + 8}
    again:
        mov qword ptr [rdi], rcx
        add rdi, {PAGE_SIZE}
        dec rcx
        jnz again
        mov ebx, 0x600D
        syscall
    """
    ex = run_code(guest, code, budget=1_000_000, handler=rec)
    assert (ex.reason, ex.stop_reason) == ("stopped", "syscall")
    assert len(rec.traps) == N
    assert all(t.vector == Vector.PF for t in rec.traps)
    assert not any(t.vector == Vector.DF for t in rec.traps)
    assert [t.cr2 for t in rec.traps] == [HEAP + 8 + i * PAGE_SIZE for i in range(N)]
    assert {t.error_code for t in rec.traps} == {0x6}
    store_rip = rec.traps[0].rip
    assert {t.rip for t in rec.traps} == {store_rip}
    assert rec.syscalls[0]["RBX"] == 0x600D and rec.syscalls[0]["RCX"] == 0
    # every page holds what the loop wrote to it
    for i in range(N):
        tr = translate(guest.mem, guest.cr3, HEAP + 8 + i * PAGE_SIZE)
        assert tr is not None
        assert guest.mem.read_u64(tr.pa) == N - i


def test_same_instruction_faults_n_times(guest: Guest) -> None:
    """The handler skips the faulting load each time: N #PF at one RIP, then the loop ends."""
    load = asm("mov rbx, qword ptr [rax]")

    def skip(cpu: VCpu, t: Trap) -> None:
        assert t.vector == Vector.PF, t
        cpu.regs.write(Reg.RIP, t.rip + len(load))

    rec = Recorder(on_trap=skip)
    code = f"""
        mov rcx, {N}
        mov rax, 0x3000000
    again:
        mov rbx, qword ptr [rax]
        dec rcx
        jnz again
        syscall
    """
    ex = run_code(guest, code, budget=1_000_000, handler=rec)
    assert ex.reason == "stopped"
    assert len(rec.traps) == N
    assert len({t.rip for t in rec.traps}) == 1
    assert {(t.kind, t.vector, t.error_code, t.cr2) for t in rec.traps} == {
        (TrapKind.EXCEPTION, Vector.PF, 0x4, 0x3000000)
    }
    assert rec.syscalls[0]["RCX"] == 0


def test_storm_across_slices(guest: Guest, rec: Recorder) -> None:
    """Each fault stops the slice; the OS fixes RIP and runs again, N times."""
    guest.load("mov rax, 0x3000000; again: mov rbx, qword ptr [rax]; jmp again")
    guest.enter()
    cpu = guest.m.cpu
    for i in range(N):
        ex = cpu.run(100)
        assert (ex.reason, ex.stop_reason) == ("stopped", "trap"), i
        t = rec.traps[-1]
        assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x4, 0x3000000), (i, t)
        cpu.regs.write(Reg.RIP, t.rip + 3)
    assert len(rec.traps) == N


def test_mixed_fault_storm(guest: Guest) -> None:
    """#UD, #GP, #DE, #BP and #PF interleaved: each arrives as itself, repeatedly."""
    body = [
        ("ud2", Vector.UD),
        ("mov rbx, qword ptr [rax]", Vector.PF),
        ("hlt", Vector.GP),
        ("mov rbx, qword ptr [rax]", Vector.PF),
        ("div rcx", Vector.DE),
        ("mov rbx, qword ptr [rax]", Vector.PF),
        ("int 0x0e", Vector.GP),
        ("mov qword ptr [rax], rbx", Vector.PF),
        ("cli", Vector.GP),
        ("mov rbx, qword ptr [rax]", Vector.PF),
    ]
    lengths = {insn: len(asm(insn)) for insn, _ in body}

    def skip(cpu: VCpu, t: Trap) -> None:
        if t.vector == Vector.BP:
            return  # a trap: RIP is already past int3
        insn = body[(len(rec.traps) - 1) % (len(body) + 1)][0]
        cpu.regs.write(Reg.RIP, t.rip + lengths[insn])

    rec = Recorder(on_trap=skip)
    rounds = 50
    loop = "; ".join(insn for insn, _ in body)
    code = f"mov rax, 0x3000000; xor ecx, ecx; mov r8, {rounds}; again: {loop}; int3; dec r8; jnz again; syscall"
    ex = run_code(guest, code, budget=1_000_000, handler=rec)
    assert ex.reason == "stopped" and rec.syscalls
    expected = ([v for _, v in body] + [Vector.BP]) * rounds
    assert [t.vector for t in rec.traps] == expected
    assert Vector.DF not in {t.vector for t in rec.traps}
