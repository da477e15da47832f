"""``VCpu.stop_after_instruction``: from a memory hook, end the slice right after the accessing
instruction (what a data breakpoint needs: a trap, SDM Vol. 3B 17.2.5; exo/gdb watchpoints use it).

The instruction must complete exactly once, RIP must be the next one, the retired count must
count it and nothing more, and a resumed run must go on as if nothing had happened.
"""

from __future__ import annotations

import io

import pytest
from hw_testkit import CODE_VA, DATA_VA, RAM, USER_DATA, FrameAllocator, Guest, Recorder, Watchdog, asm
from unicorn import UC_HOOK_MEM_WRITE

from hw import Machine
from hw.regs import Reg

# Three instructions, the third a read-modify-write of the data page; then three more.
HEAD = f"mov rcx, {DATA_VA}; mov rax, 5; add qword ptr [rcx], rax"
CODE = HEAD + "; mov ebx, 7; nop; syscall"


def _machine(clock: str) -> Machine:
    return Machine(ram_size=RAM, clock=clock, stdin=b"", stdout=io.BytesIO())


def _setup(m: Machine, stop: str):
    g = Guest(m, FrameAllocator(m.memory))
    data = g.map(DATA_VA, USER_DATA)
    g.load(CODE)
    cpu = m.cpu
    rec = Recorder()
    cpu.handler = rec
    calls = []

    def on_write(_uc, _access, address, size, _value, _ud):
        calls.append(address)
        if len(calls) == 1:
            if stop == "after":
                calls.append(cpu.stop_after_instruction("watch"))
            else:
                cpu.stop("watch")

    hh = cpu.uc.hook_add(UC_HOOK_MEM_WRITE, on_write, None, data, data + 7)
    cpu.flush_code()
    g.enter()
    return g, data, rec, calls, hh


def test_stops_after_the_accessing_instruction_and_resumes_exactly() -> None:
    m = _machine("virtual")
    try:
        g, data, rec, calls, hh = _setup(m, "after")
        cpu = m.cpu
        with Watchdog(cpu):
            ex = cpu.run(1000)
            assert calls == [data, True]
            assert (ex.reason, ex.retired, ex.stop_reason) == ("stopped", 3, "watch")
            assert cpu.regs.read(Reg.RIP) == CODE_VA + len(asm(HEAD, CODE_VA))  # the next instruction
            assert m.memory.read_u64(data) == 5  # the add completed
            assert cpu.regs.read(Reg.RBX) != 7  # and nothing after it ran
            ex = cpu.run(1000)
        assert (ex.reason, ex.retired, len(rec.syscalls)) == ("stopped", 3, 1)
        assert m.memory.read_u64(data) == 5  # the add did not run again
        assert cpu.retired_total == 6
        cpu.uc.hook_del(hh)
    finally:
        m.close()


def test_emu_stop_from_a_memory_hook_leaves_rip_at_the_access() -> None:
    """The Unicorn behaviour that makes stop_after_instruction necessary: after ``emu_stop`` in a
    memory hook the instruction completes but RIP stays on it, so a resumed run repeats it."""
    m = _machine("virtual")
    try:
        g, data, rec, calls, hh = _setup(m, "emu_stop")
        cpu = m.cpu
        with Watchdog(cpu):
            cpu.run(1000)
            assert cpu.regs.read(Reg.RIP) == CODE_VA + len(asm(HEAD.rsplit(";", 1)[0], CODE_VA))
            cpu.run(1000)
        assert m.memory.read_u64(data) == 10  # the add ran twice
        cpu.uc.hook_del(hh)
    finally:
        m.close()


@pytest.mark.parametrize("clock", ["wall"])
def test_refused_without_the_instruction_counter(clock: str) -> None:
    m = _machine(clock)
    try:
        g, data, rec, calls, hh = _setup(m, "after")
        with Watchdog(m.cpu):
            m.cpu.run(1000)
        assert calls[:2] == [data, False]  # the wall clock has no counter to stop at
        assert len(rec.syscalls) == 1 and m.memory.read_u64(data) == 5
        m.cpu.uc.hook_del(hh)
    finally:
        m.close()
