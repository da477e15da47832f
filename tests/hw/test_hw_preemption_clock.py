"""Preemption in both clock modes; the virtual clock counts exactly and deterministically."""

from __future__ import annotations

import io
import threading

import pytest
from hw_testkit import RAM, USER_DATA, FrameAllocator, Guest, Recorder, Watchdog

from hw import Machine
from hw.clock import NS_PER_INSTRUCTION, Clock
from hw.cpu import VCpu
from hw.memory import PAGE_SIZE
from hw.regs import Reg
from hw.timer import SliceTimer
from hw.traps import Trap, Vector

INFINITE = "spin: jmp spin"


def wall_machine(slice_seconds: float = 0.005) -> Machine:
    return Machine(ram_size=RAM, clock="wall", slice_seconds=slice_seconds, stdin=b"", stdout=io.BytesIO())


# ------------------------------------------------------------- virtual mode
@pytest.mark.parametrize("budget", [1, 2, 1000, 123_457])
def test_infinite_loop_preempted_after_exactly_budget(guest: Guest, rec: Recorder, budget: int) -> None:
    guest.load(INFINITE)
    guest.enter()
    cpu = guest.m.cpu
    ex = cpu.run(budget)
    assert (ex.reason, ex.retired, ex.stop_reason) == ("preempted", budget, None)
    assert cpu.retired_total == budget
    assert guest.m.clock.now_ns() == budget * NS_PER_INSTRUCTION
    ex = cpu.run(budget)
    assert (ex.reason, ex.retired) == ("preempted", budget)
    assert cpu.instructions() == 2 * budget
    assert not rec.traps and not rec.syscalls


def test_exact_count_straight_line(guest: Guest, rec: Recorder) -> None:
    guest.load("nop; nop; nop; nop; nop; syscall")
    guest.enter()
    ex = guest.m.cpu.run(1000)
    assert (ex.reason, ex.retired, ex.stop_reason) == ("stopped", 6, "syscall")
    assert guest.m.clock.now_ns() == 6


def test_count_seen_inside_the_handler(guest: Guest) -> None:
    seen = []
    rec = Recorder(on_syscall=lambda cpu: (seen.append(cpu.instructions()), cpu.stop("x")))
    guest.m.cpu.handler = rec
    guest.load("mov eax, 1; add eax, 2; syscall; nop; nop; syscall")
    guest.enter()
    assert guest.m.cpu.run(1000).retired == 3
    assert guest.m.cpu.run(1000).retired == 3
    assert seen == [3, 6]


def test_slice_boundary_at_a_syscall(guest: Guest, rec: Recorder) -> None:
    cpu = guest.m.cpu
    guest.load("nop; nop; nop; nop; nop; syscall")
    guest.enter()
    ex = cpu.run(5)
    assert (ex.reason, ex.retired) == ("preempted", 5)
    assert not rec.syscalls
    ex = cpu.run(1)
    assert (ex.reason, ex.retired, ex.stop_reason) == ("stopped", 1, "syscall")
    guest.enter()
    ex = cpu.run(6)
    assert (ex.reason, ex.retired) == ("stopped", 6)
    assert cpu.retired_total == 12


@pytest.mark.parametrize("slice_", [1, 3, 7, 64, 10_000])
def test_slicing_does_not_change_the_count_or_result(guest: Guest, rec: Recorder, slice_: int) -> None:
    guest.load("mov rcx, 100; xor eax, eax; again: add rax, rcx; dec rcx; jnz again; syscall")
    guest.enter()
    cpu = guest.m.cpu
    total = slices = 0
    while True:
        ex = cpu.run(slice_)
        total += ex.retired
        slices += 1
        if ex.reason == "stopped":
            break
        assert ex.retired == slice_
    assert total == 2 + 3 * 100 + 1
    assert slices == -(-total // slice_)
    assert rec.syscalls[0]["RAX"] == 5050
    assert cpu.retired_total == total == guest.m.clock.now_ns()


def _workload(seed: int) -> tuple[list, int, list]:
    """A program with faults, preemption and syscalls on a fresh machine."""
    m = Machine(ram_size=RAM, stdin=b"", stdout=io.BytesIO())
    g = Guest(m, FrameAllocator(m.memory))
    clock_at_syscall = []

    def on_trap(cpu: VCpu, t: Trap) -> None:
        assert t.vector == Vector.PF
        g.map(t.cr2 & ~(PAGE_SIZE - 1), USER_DATA)

    def on_syscall(cpu: VCpu) -> None:
        clock_at_syscall.append(m.clock.now_ns())

    rec = Recorder(on_syscall=on_syscall, on_trap=on_trap)
    m.cpu.handler = rec
    g.load(f"""
        mov rdi, 0x1000000
        mov rcx, 300
    again:
        mov qword ptr [rdi], rcx
        imul rax, rcx, {seed}
        add rdi, 0x800
        test rcx, 31
        jnz skip
        syscall
    skip:
        dec rcx
        jnz again
    spin:
        jmp spin
    """)
    g.enter()
    exits = [m.cpu.run(997) for _ in range(5)]
    return [(e.reason, e.retired) for e in exits], m.clock.now_ns(), clock_at_syscall


def test_virtual_clock_is_deterministic_across_machines() -> None:
    first = _workload(7)
    second = _workload(7)
    assert first == second
    exits, now, at_syscall = first
    assert now == sum(r for _, r in exits) == 5 * 997
    assert [r for r, _ in exits] == ["preempted"] * 5
    assert len(at_syscall) == 9  # rcx = 288, 256, ..., 32
    assert at_syscall == sorted(at_syscall)


# ---------------------------------------------------------------- wall mode
def test_wall_clock_preempts_infinite_loop() -> None:
    m = wall_machine()
    g = Guest(m, FrameAllocator(m.memory))
    rec = Recorder()
    m.cpu.handler = rec
    g.load(INFINITE)
    g.enter()
    with Watchdog(m.cpu):
        for _ in range(3):
            ex = m.cpu.run(1)  # the budget does not bound a wall-clock slice
            assert (ex.reason, ex.retired, ex.stop_reason) == ("preempted", None, None)
    assert not rec.traps and not rec.syscalls
    assert m.clock.mode == "wall"


def test_wall_clock_many_tiny_slices() -> None:
    """Slices shorter than emu_start's own start-up: a lost stop must not hang the loop."""
    m = wall_machine(slice_seconds=1e-6)
    g = Guest(m, FrameAllocator(m.memory))
    m.cpu.handler = Recorder()
    g.load(INFINITE)
    with Watchdog(m.cpu, seconds=20) as dog:
        for _ in range(300):
            g.enter()
            assert m.cpu.run(1).reason == "preempted"
            if dog.fired:
                break


def test_wall_clock_handler_stop_wins_and_program_completes() -> None:
    m = wall_machine(slice_seconds=0.05)
    g = Guest(m, FrameAllocator(m.memory))
    rec = Recorder()
    m.cpu.handler = rec
    g.load("mov rcx, 1000; again: dec rcx; jnz again; mov ebx, 1; syscall")
    g.enter()
    ex = m.cpu.run(1)
    assert (ex.reason, ex.retired, ex.stop_reason) == ("stopped", None, "syscall")
    assert rec.syscalls[0]["RBX"] == 1 and rec.syscalls[0]["RCX"] == 0


def test_wall_clock_faults_still_delivered() -> None:
    m = wall_machine()
    g = Guest(m, FrameAllocator(m.memory))
    rec = Recorder()
    m.cpu.handler = rec
    g.load("mov rax, 0x3000000; mov rbx, qword ptr [rax]")
    g.enter()
    for _ in range(3):
        # A slice may end before the fault on a loaded host (the timer is host time): run on.
        for _ in range(100):
            ex = m.cpu.run(1)
            if ex.reason != "preempted":
                break
        assert ex.reason == "stopped"
    assert [(t.vector, t.error_code) for t in rec.traps] == [(Vector.PF, 0x4)] * 3


def test_wall_clock_time_moves_forward() -> None:
    m = wall_machine()
    t0 = m.clock.now_ns()
    g = Guest(m, FrameAllocator(m.memory))
    m.cpu.handler = Recorder()
    g.load(INFINITE)
    g.enter()
    with Watchdog(m.cpu):
        m.cpu.run(1)
    t1 = m.clock.now_ns()
    assert 0 <= t0 <= t1
    assert t1 > t0  # a whole slice of host time passed


def test_wall_clock_fault_storm() -> None:
    """The first wall-clock slice leaves counted mode; faults must still arrive as #PF, N times."""
    m = wall_machine(slice_seconds=1.0)
    g = Guest(m, FrameAllocator(m.memory))

    def skip(cpu: VCpu, t: Trap) -> None:
        assert (t.vector, t.error_code) == (Vector.PF, 0x4), t
        cpu.regs.write(Reg.RIP, t.rip + 3)

    rec = Recorder(on_trap=skip)
    m.cpu.handler = rec
    g.load("mov rcx, 1000; mov rax, 0x3000000; again: mov rbx, qword ptr [rax]; dec rcx; jnz again; syscall")
    g.enter()
    while m.cpu.run(1).reason == "preempted":  # a very slow host may preempt: just resume
        pass
    assert len(rec.traps) == 1000 and len(rec.syscalls) == 1


def test_slice_timer_fires_and_disarms() -> None:
    fired = threading.Event()
    timer = SliceTimer(fired.set)
    timer.arm(0.001)
    assert fired.wait(10)
    assert timer.disarm() is True
    assert timer.disarm() is False
    fired.clear()
    timer.arm(60)
    assert timer.disarm() is False
    assert not fired.is_set()


def test_virtual_clock_is_instructions() -> None:
    count = [0]
    clock = Clock("virtual", lambda: count[0])
    assert clock.now_ns() == 0
    count[0] = 12345
    assert clock.now_ns() == 12345 * NS_PER_INSTRUCTION
