"""A stopped context retires nothing more (issue 11, section 2).

``emu_stop`` from a hook takes effect at the next translation-block boundary
(UNICORN_NOTES trap 12): under the wall clock the instructions after an
``out`` or a write outside RAM used to run on, and a ``syscall`` among them
reached the OS. Each trap kind here is followed, in the same block, by a store
the test can see, a register write and a ``syscall``: after the trap the OS
must hear nothing more, memory must be unchanged and the context must be the
one at the trap (RIP at the trapping instruction), under both clocks.
"""

from __future__ import annotations

import io

import pytest
from hw_testkit import CODE_VA, DATA_VA, RAM, USER_DATA, FrameAllocator, Guest, Recorder, Watchdog, asm
from test_hw_bad_input import OUTSIDE_VA, _map_outside_ram

from hw import Machine
from hw.paging import PTE_U, PTE_W
from hw.regs import Reg
from hw.traps import TrapKind, Vector

# After the trap: a store to the data page, a register write and a syscall, none of which may happen.
AFTER = f"mov rcx, {DATA_VA}; mov qword ptr [rcx], 0x42; mov ebx, 7; syscall; mov qword ptr [rcx + 8], 0x43; syscall"

# trap kind -> (instruction(s) that trap, expected (kind, vector), error code)
CASES = {
    "out": ("mov al, 1; out 0x80, al", (TrapKind.IO, Vector.GP), 0),
    "in": ("in al, 0x80", (TrapKind.IO, Vector.GP), 0),
    "out-dx": ("mov dx, 0x3f8; out dx, al", (TrapKind.IO, Vector.GP), 0),
    "gp-hlt": ("hlt", (TrapKind.EXCEPTION, Vector.GP), 0),
    "gp-cli": ("cli", (TrapKind.EXCEPTION, Vector.GP), 0),
    "ud": ("ud2", (TrapKind.EXCEPTION, Vector.UD), None),
    "pf": ("mov rax, 0x20000000; mov rbx, qword ptr [rax]", (TrapKind.EXCEPTION, Vector.PF), 4),
    "int-dpl0": ("int 0x30", (TrapKind.EXCEPTION, Vector.GP), (0x30 << 3) | 2),
    "mc-write": (f"mov rax, {OUTSIDE_VA}; mov qword ptr [rax], rbx", (TrapKind.MACHINE_CHECK, Vector.MC), None),
    "mc-read": (f"mov rax, {OUTSIDE_VA}; mov rbx, qword ptr [rax]", (TrapKind.MACHINE_CHECK, Vector.MC), None),
}


@pytest.fixture(params=["virtual", "wall"])
def clocked(request):
    m = Machine(ram_size=RAM, clock=request.param, stdin=b"", stdout=io.BytesIO())
    yield m
    m.close()


def _trapping_insn(code: str) -> int:
    """Address of the last instruction of ``code`` (the one that traps) when loaded at CODE_VA."""
    parts = [p for p in code.split(";") if p.strip()]
    return CODE_VA + len(asm(";".join(parts[:-1]), CODE_VA)) if len(parts) > 1 else CODE_VA


@pytest.mark.parametrize("name", list(CASES))
def test_a_stopped_context_retires_nothing_more(clocked: Machine, name: str) -> None:
    code, (kind, vector), err = CASES[name]
    alloc = FrameAllocator(clocked.memory)
    g = Guest(clocked, alloc)
    data = g.map(DATA_VA, USER_DATA)
    _map_outside_ram(g, PTE_U | PTE_W)
    g.load(code + "; " + AFTER)
    cpu = clocked.cpu
    rec = Recorder()
    cpu.handler = rec
    at = _trapping_insn(code)
    # The wall clock is where the race was: repeat it, in one machine, so a lost fence shows up.
    rounds = 200 if clocked.cpu.clock_mode == "wall" else 1
    with Watchdog(cpu):
        for i in range(rounds):
            g.enter(rbx=0x1111)
            ex = cpu.run(1_000_000)
            assert ex.reason == "stopped", (i, ex)
            assert len(rec.traps) == i + 1, (i, rec.traps)
            t = rec.traps[-1]
            assert (t.kind, t.vector) == (kind, vector)
            if err is not None:
                assert t.error_code == err
            assert t.insn_address == at
            assert rec.syscalls == [], f"round {i}: a syscall after the {name} trap reached the OS"
            assert clocked.memory.read(data, 16) == bytes(16), f"round {i}: a store after the {name} trap retired"
            assert cpu.regs.read(Reg.RBX) != 7, f"round {i}: an instruction after the {name} trap retired"
            assert cpu.regs.read(Reg.CR3) == g.cr3
            assert cpu.regs.read(Reg.RIP) == at, f"round {i}: the context moved past the {name} trap"
    # The machine still works afterwards: the next context runs and its syscall is heard.
    g.load("mov ebx, 5; syscall")
    g.enter()
    cpu.run(1000)
    assert rec.syscalls and rec.syscalls[-1]["RBX"] == 5


class _CodeStopper(Recorder):
    """Stops the CPU from the code hook (as a failed library call does: exo/libcall.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[int] = []

    def code(self, cpu, address: int) -> None:
        self.codes.append(address)
        cpu.stop("libcall-abort")


@pytest.mark.parametrize("clocked", ["wall"], indirect=True)
def test_a_stop_from_the_code_hook_retires_nothing_more(clocked: Machine) -> None:
    """The library-call path: Unicorn checks for a stop right after a code hook (translate.c, check_exit_request)."""
    g = Guest(clocked, FrameAllocator(clocked.memory))
    data = g.map(DATA_VA, USER_DATA)
    watched = CODE_VA + 0x1000
    g.load("jmp rax", CODE_VA)
    g.load(AFTER, watched)
    cpu = clocked.cpu
    cpu.watch_code(watched, watched + 1)
    rec = _CodeStopper()
    cpu.handler = rec
    with Watchdog(cpu):
        for i in range(200):
            g.enter(rax=watched)
            assert cpu.run(1_000_000).reason == "stopped"
            assert len(rec.codes) == i + 1 and rec.syscalls == []
            assert clocked.memory.read(data, 16) == bytes(16)
            assert cpu.regs.read(Reg.RIP) == watched
