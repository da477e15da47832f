"""Address spaces and CPU contexts: CR3 switches isolate, save/restore round-trips."""

from __future__ import annotations

import pytest
from hw_testkit import CODE_VA, DATA_VA, USER_DATA, FrameAllocator, Guest, Recorder

from hw.cpu import SEL_UCODE, SEL_UDATA
from hw.errors import MachineConfigError
from hw.paging import translate
from hw.regs import GPRS, Reg
from hw.traps import Vector

# Read the shared VA into RBX, stop; then add RAX to it, store it back, stop.
SHARED_CODE = f"""
    mov rsi, {DATA_VA}
    mov rbx, qword ptr [rsi]
    syscall
    add rbx, rax
    mov qword ptr [rsi], rbx
    mov rbx, qword ptr [rsi]
    syscall
"""


def make_space(machine, alloc: FrameAllocator, value: int) -> tuple[Guest, int]:
    g = Guest(machine, alloc)
    g.load(SHARED_CODE)
    pa = g.map(DATA_VA, USER_DATA)
    machine.memory.write_u64(pa, value)
    return g, pa


def test_same_va_different_frames(machine, alloc: FrameAllocator, rec: Recorder) -> None:
    a, pa_a = make_space(machine, alloc, 0xAAAA)
    b, pa_b = make_space(machine, alloc, 0xBBBB)
    assert pa_a != pa_b
    assert translate(machine.memory, a.cr3, DATA_VA).pa == pa_a
    assert translate(machine.memory, b.cr3, DATA_VA).pa == pa_b
    cpu = machine.cpu

    a.enter(rax=1)
    assert cpu.run(1000).reason == "stopped"
    assert rec.syscalls[-1]["RBX"] == 0xAAAA
    cpu.save(a.ctx)
    assert a.ctx.cr3 == a.cr3

    b.enter(rax=2)
    assert cpu.run(1000).reason == "stopped"
    assert rec.syscalls[-1]["RBX"] == 0xBBBB
    cpu.save(b.ctx)

    # Back to A: it resumes after its syscall with its own RAX, writes only its frame.
    cpu.restore(a.ctx)
    assert cpu.regs.read(Reg.CR3) == a.cr3
    assert cpu.run(1000).reason == "stopped"
    assert rec.syscalls[-1]["RBX"] == 0xAAAB
    assert rec.syscalls[-1]["RIP"] == rec.syscalls[0]["RIP"] + 2 + 3 + 3 + 3
    assert machine.memory.read_u64(pa_a) == 0xAAAB
    assert machine.memory.read_u64(pa_b) == 0xBBBB
    cpu.save(a.ctx)

    cpu.restore(b.ctx)
    assert cpu.run(1000).reason == "stopped"
    assert rec.syscalls[-1]["RBX"] == 0xBBBD
    assert machine.memory.read_u64(pa_a) == 0xAAAB
    assert machine.memory.read_u64(pa_b) == 0xBBBD


def test_page_mapped_in_one_space_only(machine, alloc: FrameAllocator, rec: Recorder) -> None:
    a, _ = make_space(machine, alloc, 5)
    b = Guest(machine, alloc)
    b.load(SHARED_CODE)  # no data page in B
    a.enter()
    machine.cpu.run(1000)
    assert rec.syscalls[-1]["RBX"] == 5
    # A's translation may be cached; the switch to B must not let B see it.
    b.enter()
    machine.cpu.run(1000)
    (t,) = rec.traps
    assert (t.vector, t.error_code, t.cr2) == (Vector.PF, 0x4, DATA_VA)


def test_new_context_is_ring3_and_zeroed(machine) -> None:
    cpu = machine.cpu
    ctx = cpu.new_context()
    cpu.restore(ctx)
    assert cpu.regs.read(Reg.CS) == SEL_UCODE
    assert cpu.regs.read(Reg.CS) & 3 == 3
    assert cpu.regs.read(Reg.SS) == SEL_UDATA
    gprs = cpu.read_gprs()
    for r in GPRS:
        if r not in (Reg.RIP, Reg.RSP, Reg.RFLAGS):
            assert gprs[r.name] == 0, r.name
    assert gprs["RFLAGS"] & 0x200  # interrupts enabled, as after the boot iretq


def test_register_values_survive_save_restore(machine, alloc: FrameAllocator) -> None:
    cpu = machine.cpu
    regs = [r for r in GPRS if r is not Reg.RFLAGS] + [Reg.FS_BASE, Reg.GS_BASE]
    a, b = Guest(machine, alloc), Guest(machine, alloc)
    values = {}
    for n, g in enumerate((a, b)):
        cpu.restore(g.ctx)
        vals = {r: (0x1111_0000_0000_0000 * (n + 1)) + 0x100 * i + 7 for i, r in enumerate(regs)}
        vals[Reg.RIP] = CODE_VA + 0x40 * (n + 1)
        vals[Reg.FS_BASE] = 0x7000_0000 + n
        vals[Reg.GS_BASE] = 0x7100_0000 + n
        for r, v in vals.items():
            cpu.regs.write(r, v)
        cpu.regs.write(Reg.RFLAGS, 0x202 | (n and 0x1))  # CF in B only
        cpu.save(g.ctx)
        values[n] = vals
    for n, g in ((0, a), (1, b), (0, a)):
        cpu.restore(g.ctx)
        assert cpu.regs.read(Reg.CR3) == g.cr3
        for r, v in values[n].items():
            assert cpu.regs.read(r) == v, (n, r.name)
        assert cpu.regs.read(Reg.RFLAGS) & 0x1 == n
        assert cpu.regs.read(Reg.CS) == SEL_UCODE


def test_copy_context(machine, alloc: FrameAllocator) -> None:
    cpu = machine.cpu
    a = Guest(machine, alloc)
    cpu.restore(a.ctx)
    cpu.regs.write(Reg.R12, 0x1234)
    cpu.save(a.ctx)
    clone = cpu.new_context()
    cpu.copy_context(clone, a.ctx)
    assert clone.cr3 == a.cr3
    cpu.restore(cpu.new_context())
    assert cpu.regs.read(Reg.R12) == 0
    cpu.restore(clone)
    assert cpu.regs.read(Reg.R12) == 0x1234
    assert cpu.regs.read(Reg.CR3) == a.cr3


def test_restored_context_runs_with_its_registers(machine, alloc: FrameAllocator, rec: Recorder) -> None:
    g = Guest(machine, alloc)
    g.load("add rax, rbx; imul rax, rcx; syscall")
    cpu = machine.cpu
    g.enter(rax=3, rbx=4, rcx=5)
    cpu.save(g.ctx)
    cpu.restore(cpu.new_context())  # clobber the live state
    cpu.regs.write(Reg.RAX, 999)
    cpu.restore(g.ctx)
    assert cpu.run(100).reason == "stopped"
    assert rec.syscalls[0]["RAX"] == 35


def test_registers_batch_reader_writer(machine) -> None:
    regs = machine.cpu.regs
    names = [Reg.RAX, Reg.RBX, Reg.R8, Reg.R15, Reg.RIP, Reg.RSP]
    values = [0, 1, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0x40_1234, 0x7F_0FF8]
    write = regs.writer(names)
    read = regs.reader(names)
    write(*values)
    assert read() == values
    assert [regs.read(r) for r in names] == values
    write(*[v ^ 0x5A5A for v in values])
    assert read() == [v ^ 0x5A5A for v in values]
    regs.write(Reg.RAX, -1)  # stored as two's complement
    assert read()[0] == 0xFFFF_FFFF_FFFF_FFFF
    write(-2, 0, 0, 0, 0, 0)
    assert regs.read(Reg.RAX) == 0xFFFF_FFFF_FFFF_FFFE
    gprs = machine.cpu.read_gprs()
    assert list(gprs) == [r.name for r in GPRS]
    assert gprs["RAX"] == 0xFFFF_FFFF_FFFF_FFFE


def test_context_read_write_without_loading(machine, alloc: FrameAllocator, rec: Recorder) -> None:
    cpu = machine.cpu
    g = Guest(machine, alloc)
    g.load("add rax, rbx; syscall")
    g.enter(rax=1, rbx=2)
    cpu.save(g.ctx)
    other = cpu.new_context()
    cpu.restore(other)  # the live state is someone else's
    assert cpu.context_read(g.ctx, Reg.RAX) == 1
    assert cpu.context_read(g.ctx, Reg.RIP) == CODE_VA
    cpu.context_write(g.ctx, Reg.RBX, 40)
    cpu.context_write(g.ctx, Reg.RAX, -1)
    assert cpu.context_read(g.ctx, Reg.RAX) == 0xFFFF_FFFF_FFFF_FFFF
    cpu.context_write(g.ctx, Reg.RAX, 2)
    assert cpu.regs.read(Reg.RBX) == 0  # the live registers were not touched
    cpu.restore(g.ctx)
    cpu.run(100)
    assert rec.syscalls[0]["RAX"] == 42


def test_context_write_refuses_control_registers(machine) -> None:
    ctx = machine.cpu.new_context()
    for reg in (Reg.CR3, Reg.CS):
        with pytest.raises(MachineConfigError, match=reg.name):
            machine.cpu.context_write(ctx, reg, 0)
