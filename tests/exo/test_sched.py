"""CPU multiplexing: round-robin slices, preemption, determinism, blocking, the wall clock.

Under the virtual clock a slice is an exact number of retired instructions, so
these runs are reproducible to the instruction. Numbers in guest code are hex
(see the note in test_hostile.py).
"""

from __future__ import annotations

import pytest
from conftest import WITNESS, boot

from exo.abi import EnvStatus

SLICE = 20_000

SPINNER = """
section .text
_start:
spin:
    inc rax
    jmp spin
"""

YIELD = """
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
"""


def exit_with(status: int) -> str:
    return f"""
    mov rdi, SCHED_EXIT
    mov rsi, {status:#x}
    call HC_SCHED_OP
"""


# The parent shares its text page with child r12 and makes it runnable.
START_CHILD = """
    mov r12, rax
    xor edi, edi
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    test rax, rax
    jnz failed
"""


# ----------------------------------------------------------- round robin
@pytest.mark.parametrize("n", [2, 3])
def test_round_robin_is_fair_between_spinners(app, n: int) -> None:
    apps = [app(f"spin{i}", SPINNER) for i in range(n)]
    total = 10 * n * SLICE
    b = boot(*apps, slice_instructions=SLICE, max_instructions=total)
    counts = [e.instructions for e in b.envs]
    assert all(e.alive and e.status == EnvStatus.RUNNABLE for e in b.envs)
    assert max(counts) - min(counts) <= SLICE
    assert sum(counts) == total
    acct = b.kernel.acct
    assert acct.transitions["interrupt"] == 10 * n  # every slice ended by the timer
    assert acct.transitions["context_switch"] == 10 * n  # and every slice went to the next env
    for e in b.envs:
        assert acct.by_env[e.id]["interrupt"] == 10


def test_witness_finishes_between_two_spinners(app) -> None:
    b = boot(app("spin0", SPINNER), app("witness", WITNESS), app("spin1", SPINNER),
             slice_instructions=SLICE, max_instructions=40 * SLICE)
    w = b.env("witness")
    assert w.exit_status == 0 and w.fault is None and b.stdout == b"ok\n"
    s0, s1 = b.env("spin0"), b.env("spin1")
    assert s0.alive and s1.alive
    assert abs(s0.instructions - s1.instructions) <= SLICE
    assert w.instructions < 200  # it yields: its slices end long before the timer


def test_yield_gives_away_the_rest_of_the_slice(app) -> None:
    yielder = f"""
section .text
_start:
    mov r12, 0x8
again:
{YIELD}
    dec r12
    jnz again
{exit_with(0)}
"""
    b = boot(app("yielder", yielder), app("spinner", SPINNER), slice_instructions=SLICE,
             max_instructions=12 * SLICE)
    y, s = b.env("yielder"), b.env("spinner")
    assert y.exit_status == 0
    assert y.instructions < 200
    assert s.instructions == b.kernel.machine.cpu.retired_total - y.instructions
    assert b.kernel.acct.by_env[y.id]["hypercall"] == 9  # 8 yields and the exit


# ----------------------------------------------------------- determinism
STORM_LITE = """
section .text
_start:
    xor edi, edi
    mov rsi, UXSTACK_TOP - PAGE_SIZE
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    xor edi, edi
    lea rsi, [rip + handler]
    mov rdx, UXSTACK_TOP
    call HC_ENV_SET_UPCALL
    mov rbx, 0x10000000
    mov r12, 0x40
touch:
    mov qword ptr [rbx], rbx
    add rbx, PAGE_SIZE
    dec r12
    jnz touch
    call HC_TIME_NOW
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
handler:
    mov r15, rdi
    mov rsi, qword ptr [r15 + UTF_FAULT_VA]
    xor edi, edi
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rax, qword ptr [r15 + UTF_RSP]
    sub rax, 0x8
    mov rcx, qword ptr [r15 + UTF_RIP]
    mov qword ptr [rax], rcx
    mov rbx, qword ptr [r15 + UTF_RBX]
    mov r12, qword ptr [r15 + UTF_R12]
    mov rsp, rax
    ret
"""

CLOCK_PRINTER = f"""
section .text
_start:
    mov r12, 0x4
again:
    call HC_TIME_NOW
    lea rdi, [rip + now]
    mov qword ptr [rdi], rax
    mov rsi, 0x8
    call HC_CONSOLE_WRITE
    mov rcx, 0x3000
spin:
    dec rcx
    jnz spin
    dec r12
    jnz again
{exit_with(0)}
section .bss
now: resq 0x1
"""


def snapshot(b) -> dict:
    acct = b.kernel.acct
    return {
        "stdout": b.stdout,
        "transitions": dict(acct.transitions),
        "hypercalls": dict(acct.hypercalls),
        "by_env": {k: dict(v) for k, v in acct.by_env.items()},
        "instructions": [(e.name, e.instructions, e.status, e.exit_status, e.fault) for e in b.envs],
        "retired": b.kernel.machine.cpu.retired_total,
    }


def test_two_runs_are_identical(app) -> None:
    apps = [app("spinner", SPINNER), app("witness", WITNESS), app("storm", STORM_LITE),
            app("clock", CLOCK_PRINTER)]
    first = snapshot(boot(*apps, slice_instructions=5_000, max_instructions=200_000))
    second = snapshot(boot(*apps, slice_instructions=5_000, max_instructions=200_000))
    assert first == second
    assert first["transitions"]["upcall"] == 0x40
    assert first["transitions"]["interrupt"] > 10
    assert b"ok\n" in first["stdout"] and len(first["stdout"]) == 3 + 4 * 8


# ----------------------------------------------------------- blocking and waking
def test_blocked_child_is_woken_by_parent(app) -> None:
    src = f"""
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
{START_CHILD}
{YIELD}
{YIELD}
    mov rdi, r12                    ; the child is blocked now: wake it
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    test rax, rax
    jnz failed
{exit_with(0)}
failed:
{exit_with(0x70)}

child:                              ; no stack: direct syscalls
    mov rdi, SCHED_BLOCK
    xor esi, esi
    mov eax, NR_SCHED_OP
    syscall
    mov rdi, SCHED_EXIT             ; runs only once woken
    mov rsi, 0x2a
    mov eax, NR_SCHED_OP
    syscall
"""
    b = boot(app("waker", src))
    parent = b.env("waker")
    assert parent.exit_status == 0
    child = b.kernel.envs[parent.children[0]]
    assert child.exit_status == 0x2A and child.fault is None


def test_parent_can_pause_a_spinning_child(app) -> None:
    src = f"""
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
{START_CHILD}
{YIELD}
{YIELD}
    mov rdi, r12
    mov rsi, ENV_NOT_RUNNABLE
    call HC_ENV_SET_STATUS
    test rax, rax
    jnz failed
{exit_with(0)}
failed:
{exit_with(0x70)}
child:
    inc rax
    jmp child
"""
    b = boot(app("pauser", src), slice_instructions=SLICE, max_instructions=100 * SLICE)
    parent = b.env("pauser")
    assert parent.exit_status == 0
    child = b.kernel.envs[parent.children[0]]
    # Paused, then orphaned: no one may make it runnable again, so its frames are reclaimed.
    assert not child.alive and child.status == EnvStatus.DEAD and child.orphaned
    assert child.fault is None and child.exit_status is None
    assert child.instructions == 2 * SLICE  # the two slices the parent yielded to it
    assert b.kernel.machine.cpu.retired_total < 100 * SLICE  # the run ended: nothing runnable


def test_self_not_runnable_then_woken_is_queued_once(app) -> None:
    """The child makes itself NOT_RUNNABLE and keeps running until its slice ends (as in
    JOS); the parent makes it RUNNABLE again. From then on both spin: fair shares expected."""
    src = f"""
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
{START_CHILD}
{YIELD}
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
parent_spin:
    inc rax
    jmp parent_spin
failed:
{exit_with(0x70)}
child:
    xor edi, edi
    mov rsi, ENV_NOT_RUNNABLE
    mov eax, NR_ENV_SET_STATUS
    syscall
child_spin:
    inc rax
    jmp child_spin
"""
    b = boot(app("parent", src), slice_instructions=SLICE, max_instructions=40 * SLICE)
    parent = b.env("parent")
    child = b.kernel.envs[parent.children[0]]
    assert parent.alive and child.alive
    assert abs(parent.instructions - child.instructions) <= SLICE


# ----------------------------------------------------------- the wall clock
LONG_SPIN = """
section .text
_start:
    mov rcx, 0x1400000              ; about 20 million iterations
spin:
    dec rcx
    jnz spin
    mov rdi, SCHED_EXIT
    mov rsi, 0x7
    call HC_SCHED_OP
"""


def test_wall_clock_preempts_a_long_loop(app) -> None:
    b = boot(app("spinner", LONG_SPIN), app("witness", WITNESS), clock="wall")
    w, s = b.env("witness"), b.env("spinner")
    assert b.stdout == b"ok\n" and w.exit_status == 0
    assert s.exit_status == 7 and s.fault is None
    acct = b.kernel.acct
    assert acct.transitions["context_switch"] > 2
    assert acct.by_env[s.id]["interrupt"] >= 1  # its first slice was cut by the timer


def test_wall_clock_preempts_an_infinite_loop(app) -> None:
    """A child that would spin for a very long time is preempted by the timer, so the
    parent gets the CPU back and destroys it (a loop that is not preempted would run to
    its end and exit 7 first, and the destroy would then fail)."""
    src = f"""
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
{START_CHILD}
{YIELD}
{YIELD}
{YIELD}
    mov rdi, r12
    call HC_ENV_DESTROY
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{exit_with(0x70)}
child:
    mov rcx, 0x40000000
child_spin:
    dec rcx
    jnz child_spin
    mov rdi, SCHED_EXIT
    mov rsi, 0x7
    mov eax, NR_SCHED_OP
    syscall
"""
    b = boot(app("destroyer", src), clock="wall")
    parent = b.env("destroyer")
    child = b.kernel.envs[parent.children[0]]
    assert parent.exit_status == 0 and parent.fault is None
    assert child.status == EnvStatus.DEAD and child.exit_status is None
    assert b.kernel.acct.by_env[child.id]["interrupt"] >= 3
