"""sched: user-level threads in one environment, preempted through the timer upcall.

The exokernel picks the environment; libos/sched.py picks the thread: round
robin, stride (shares by tickets) or MLFQ (interactive threads first). All
runs use the virtual clock, so every number below is exact and repeatable.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, boot

from exo.abi import Errno

THREADS = ROOT / "guest_apps" / "threads"

OUTPUT = {
    "rr": b"A0 B0 C0 A1 B1 C1 A2 B2 C2 D0 A3 B3 C3 A4 B4 C4 D1 D2 D3 D4 \ndone\n",
    "stride": b"A0 B0 C0 C1 B1 C2 C3 B2 A1 C4 B3 B4 A2 A3 A4 D0 D1 D2 D3 D4 \ndone\n",
    "mlfq": b"A0 B0 C0 A1 B1 C1 A2 B2 C2 A3 B3 C3 A4 B4 C4 D0 D1 D2 D3 D4 \ndone\n",
}


def threads_app(tmp_path: Path, policy: str) -> Path:
    """guest_apps/threads with another [libos] sched implementation (the same sources)."""
    d = tmp_path / f"threads-{policy}"
    shutil.copytree(THREADS, d)
    toml = d / "app.toml"
    text, n = re.subn(r'(?m)^sched = "rr"', f'sched = "{policy}"', toml.read_text())
    assert n == 1
    toml.write_text(text)
    return d


def sched_of(b):
    return b.envs[0].modules[3]


def order(stdout: bytes) -> list[str]:
    return stdout.split(b"\n")[0].decode().split()


def last_step(out: list[str], letter: str) -> int:
    return max(i for i, s in enumerate(out) if s[0] == letter)


# ----------------------------------------------------------------- the app
@pytest.mark.parametrize("policy", ["rr", "stride", "mlfq"])
def test_threads_app_output_by_policy(tmp_path, policy):
    b = boot(threads_app(tmp_path, policy))
    assert b.reports == []
    assert b.stdout == OUTPUT[policy]
    env = b.envs[0]
    assert env.exit_status == 0  # main exited last with 0: the environment ended with it
    t = b.kernel.acct.transitions
    assert t["interrupt"] >= 10  # D was preempted many times ...
    assert t["upcall"] == t["interrupt"]  # ... and every preemption came back as a timer upcall
    assert sched_of(b).preemptions == t["upcall"]
    out = order(b.stdout)
    assert sorted(out) == sorted(f"{c}{i}" for c in "ABCD" for i in range(5))
    for c in "ABCD":  # each thread's own steps stay in order
        assert [s for s in out if s[0] == c] == [f"{c}{i}" for i in range(5)]


def test_rr_takes_turns_and_interleaves_the_hog(tmp_path):
    out = order(boot(threads_app(tmp_path, "rr")).stdout)
    light = [s for s in out if s[0] != "D"]
    assert light == [f"{c}{i}" for i in range(5) for c in "ABC"]  # strict turns
    assert out.index("D0") < last_step(out, "A")  # the hog progresses among them


def test_stride_favours_tickets(tmp_path):
    out = order(boot(threads_app(tmp_path, "stride")).stdout)
    # C (300 tickets) finishes first, then B (200), then A (100); the hog D waits
    assert last_step(out, "C") < last_step(out, "B") < last_step(out, "A") < out.index("D0")
    assert out != order(OUTPUT["rr"])


def test_mlfq_puts_the_hog_below_the_yielding_threads(tmp_path):
    b = boot(threads_app(tmp_path, "mlfq"))
    out = order(b.stdout)
    assert out[:15] == [f"{c}{i}" for i in range(5) for c in "ABC"]  # round robin on top
    assert out[15:] == [f"D{i}" for i in range(5)]  # D sank after its first slice
    levels = {tid: s["level"] for tid, s in sched_of(b).stats().items()}
    assert levels[4] == 2 and levels[1] == levels[2] == levels[3] == 0


def test_deterministic_under_the_virtual_clock(tmp_path):
    for policy in ("rr", "stride", "mlfq"):
        d = threads_app(tmp_path, policy)
        one, two = boot(d), boot(d)
        assert one.stdout == two.stdout == OUTPUT[policy]
        assert one.kernel.acct.transitions == two.kernel.acct.transitions
        assert one.kernel.acct.hypercalls == two.kernel.acct.hypercalls
        assert one.envs[0].instructions == two.envs[0].instructions
        assert sched_of(one).stats() == sched_of(two).stats()


def test_the_library_schedules_without_ring_transitions(tmp_path):
    """A thread switch is a library call (or a timer upcall): no hypercall is needed for it."""
    b = boot(threads_app(tmp_path, "rr"))
    s = sched_of(b)
    assert s.switches >= 25
    hc = b.kernel.acct.hypercalls
    assert hc["sched_op"] == 1  # only the final exit: the env never gave the CPU away
    assert b.kernel.acct.transitions["context_switch"] == 1  # one environment all along
    assert set(hc) <= {"time_now", "sched_op", "page_alloc", "env_set_timer", "env_set_upcall",
                       "console_write"}


# ------------------------------------------------------------ join, exit, stacks
JOIN = """
section .text
_start:
    lea rdi, [rip + returns]
    mov rsi, 7
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r12, rax
    lea rdi, [rip + exits]
    mov rsi, 9
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r13, rax
    ; join the second first: it is still running, so main blocks until it ends
    mov rdi, r13
    call LIB_SCHED_THREAD_JOIN
    mov r14, rax
    mov rdi, r12
    call LIB_SCHED_THREAD_JOIN      ; already over: returns at once
    mov r15, rax
    lea rdi, [rip + fmt]
    mov rsi, r15
    mov rdx, r14
    lea rcx, [rip + align]
    mov rcx, qword ptr [rcx]
    call LIB_CONSOLE_PRINTF
    mov rdi, 99
    call LIB_SCHED_THREAD_JOIN      ; no such thread
    mov rbx, rax
    call LIB_SCHED_THREAD_SELF
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN      ; itself
    lea rdi, [rip + errs]
    mov rsi, rbx
    mov rdx, rax
    call LIB_CONSOLE_PRINTF
    ; main ends first; the sleeper is the last thread and the env exits with main's 3
    lea rdi, [rip + late]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, 3
    call LIB_SCHED_THREAD_EXIT
    ud2

returns:                        ; rdi = 7: returns it as the status
    mov rax, rsp
    and rax, 15                 ; SysV: rsp % 16 == 8 at a function's entry
    lea rcx, [rip + align]
    mov qword ptr [rcx], rax
    mov rax, rdi
    ret

exits:                          ; rdi = 9: thread_exit(9) after yielding a few times
    push rdi
    call LIB_SCHED_THREAD_YIELD
    call LIB_SCHED_THREAD_YIELD
    pop rdi
    call LIB_SCHED_THREAD_EXIT
    ud2

late:
    mov rdi, 50000
    call LIB_SCHED_THREAD_SLEEP
    lea rdi, [rip + bye]
    call LIB_CONSOLE_PRINTF
    mov rax, 42
    ret

section .rodata
fmt: db "joined %d %d align %d", 10, 0
errs: db "errors %ld %ld", 10, 0
bye: db "late thread done", 10, 0
section .data
align: dq 0xff
"""


@pytest.mark.parametrize("policy", ["rr", "stride", "mlfq"])
def test_join_returns_the_status(app, policy):
    b = boot(app("join", JOIN, libos={"sched": policy, "console": "buffered"}))
    assert b.reports == []
    assert b.stdout == (b"joined 7 9 align 8\n"
                        + f"errors {-Errno.ESRCH} {-Errno.EINVAL}\n".encode()
                        + b"late thread done\n")
    assert b.envs[0].exit_status == 3
    stats = sched_of(b).stats()
    assert [stats[t]["state"] for t in sorted(stats)] == ["done"] * 4


def test_stack_guard_page_stops_an_overflowing_thread(app):
    src = """
section .text
_start:
    lea rdi, [rip + deep]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN
    mov rdi, 0
    call LIB_CORE_EXIT
deep:
    push rax                    ; recurse without end: 16 KiB of stack, then the guard
    call deep
"""
    b = boot(app("deep", src, libos={"sched": "rr"}))
    assert len(b.reports) == 1
    assert b.envs[0].fault is not None and "deep" in b.reports[0].render()


def test_bad_arguments(app):
    src = """
section .text
_start:
    xor edi, edi                ; fn 0
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r12, rax
    lea rdi, [rip + _start]
    xor esi, esi
    mov rdx, 0x100001           ; more than 2**20 tickets
    call LIB_SCHED_THREAD_CREATE
    mov r13, rax
    lea rdi, [rip + fmt]
    mov rsi, r12
    mov rdx, r13
    call LIB_CONSOLE_PRINTF
    call LIB_SCHED_THREAD_SELF
    mov rdi, rax
    call LIB_CORE_EXIT
section .rodata
fmt: db "%ld %ld", 10, 0
"""
    b = boot(app("bad", src, libos={"sched": "rr", "console": "buffered"}))
    assert b.stdout == f"{-Errno.EINVAL} {-Errno.EINVAL}\n".encode()
    assert b.envs[0].exit_status == 0  # thread_self of the main program


def test_a_join_cycle_blocks_the_environment_for_good(app):
    """main holds a mutex and joins a thread that waits for it: nothing can run again."""
    src = """
section .text
_start:
    lea rdi, [rip + lock]
    call LIB_SCHED_MUTEX_LOCK
    lea rdi, [rip + taker]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN
    xor edi, edi
    call LIB_CORE_EXIT
taker:
    lea rdi, [rip + lock]
    call LIB_SCHED_MUTEX_LOCK
    ret
section .data
lock: dq 0
"""
    b = boot(app("cycle", src, libos={"sched": "rr"}))
    env = b.envs[0]
    assert env.alive and "blocked forever" in (env.fault or "")
    assert [s["state"] for s in sched_of(b).stats().values()] == ["blocked", "blocked"]


# ------------------------------------------------------------------- mutex
MUTEX = """
N equ 300
section .text
_start:
    lea rdi, [rip + adder]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r12, rax
    lea rdi, [rip + adder]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov r13, rax
    mov rdi, r12
    call LIB_SCHED_THREAD_JOIN
    mov rdi, r13
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + fmt]
    lea rsi, [rip + counter]
    mov rsi, qword ptr [rsi]
    lea rdx, [rip + lock]
    mov rdx, qword ptr [rdx]
    call LIB_CONSOLE_PRINTF
    ; misuse: unlock a free mutex, lock one twice
    lea rdi, [rip + lock]
    call LIB_SCHED_MUTEX_UNLOCK
    mov rbx, rax
    lea rdi, [rip + lock]
    call LIB_SCHED_MUTEX_LOCK
    lea rdi, [rip + lock]
    call LIB_SCHED_MUTEX_LOCK
    lea rdi, [rip + errs]
    mov rsi, rbx
    mov rdx, rax
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT

adder:
    push rbx
    mov rbx, N
again:
    ENTER_CS
    lea rcx, [rip + counter]
    mov rax, qword ptr [rcx]    ; read ...
    mov rdx, 400
dawdle:                         ; ... take a while (the timer may strike here) ...
    dec rdx
    jnz dawdle
    inc rax
    mov qword ptr [rcx], rax    ; ... write back
    LEAVE_CS
    dec rbx
    jnz again
    pop rbx
    xor eax, eax
    ret

section .rodata
fmt: db "counter %ld lock %ld", 10, 0
errs: db "errors %ld %ld", 10, 0
section .data
counter: dq 0
lock: dq 0
"""
LOCKED = {"ENTER_CS": "lea rdi, [rip + lock]\n    call LIB_SCHED_MUTEX_LOCK",
          "LEAVE_CS": "lea rdi, [rip + lock]\n    call LIB_SCHED_MUTEX_UNLOCK"}
UNLOCKED = {"ENTER_CS": "nop", "LEAVE_CS": "nop"}


def mutex_src(calls: dict[str, str]) -> str:
    src = MUTEX
    for k, v in calls.items():
        src = src.replace(k, v)
    return src


@pytest.mark.parametrize("policy", ["rr", "stride", "mlfq"])
def test_mutex_excludes(app, policy):
    n = 300
    b = boot(app("mutex", mutex_src(LOCKED), libos={"sched": policy, "console": "buffered"}),
             slice_instructions=5_000)
    assert b.reports == []
    lines = b.stdout.decode().splitlines()
    assert lines[0] == f"counter {2 * n} lock 0"  # exactly 2N, and left unlocked
    assert lines[1] == f"errors {-Errno.EPERM} {-Errno.EBUSY}"
    t = b.kernel.acct.transitions
    assert t["upcall"] > 50  # preempted often, also inside the critical section
    # contended locks blocked the thread (a switch), they did not spin: few instructions
    assert b.envs[0].instructions < 2 * n * 1000


def test_without_the_mutex_updates_are_lost(app):
    """The same program without lock calls: preemption inside the critical section loses updates."""
    b = boot(app("race", mutex_src(UNLOCKED), libos={"sched": "rr", "console": "buffered"}),
             slice_instructions=5_000)
    counter = int(b.stdout.split()[1])
    assert counter < 2 * 300


# ------------------------------------------------------------------- sleep
SLEEP = """
section .text
_start:
    BUSY_THREAD
    call LIB_CORE_TIME_NS
    mov r12, rax
    mov rdi, 500000
    call LIB_SCHED_THREAD_SLEEP
    call LIB_CORE_TIME_NS
    sub rax, r12
    lea rdi, [rip + fmt]
    mov rsi, rax
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
busy:
    jmp busy
section .rodata
fmt: db "slept %ld", 10, 0
"""


def slept(stdout: bytes) -> int:
    m = re.match(rb"slept (\d+)\n", stdout)
    assert m, stdout
    return int(m.group(1))


@pytest.mark.parametrize("policy", ["rr", "stride", "mlfq"])
def test_sleep_alone_idles_until_the_time(app, policy):
    """Nothing else to run: the idle loop spins (giving the CPU away) and looks again."""
    src = SLEEP.replace("BUSY_THREAD", "")
    b = boot(app("sleep", src, libos={"sched": policy, "console": "buffered"}))
    assert b.reports == []
    ns = slept(b.stdout)
    assert 500_000 <= ns < 500_000 + 10_000  # woken within a couple of idle spins
    assert b.kernel.acct.hypercalls["sched_op"] > 50  # the idle loop yielded the CPU each spin


def test_sleep_beside_a_busy_thread_wakes_at_the_next_slice(app):
    src = SLEEP.replace("BUSY_THREAD", """
    lea rdi, [rip + busy]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE""")
    b = boot(app("sleepbusy", src, libos={"sched": "rr", "console": "buffered"}))
    ns = slept(b.stdout)
    assert 500_000 <= ns <= 500_000 + 100_000  # the busy thread is preempted at the next slice end
    assert b.kernel.acct.transitions["upcall"] >= 5


def test_sleep_yields_to_other_environments(app):
    """A sleeping environment gives its slices away: another environment runs meanwhile."""
    sleeper = app("sleeper", SLEEP.replace("BUSY_THREAD", ""), libos={"sched": "rr", "console": "buffered"})
    counter = app("counter", """
section .text
_start:
    mov rbx, 100
loop:
    mov rcx, 10000
spin:
    dec rcx
    jnz spin
    dec rbx
    jnz loop
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
section .rodata
msg: db "counted", 10, 0
""", libos={"console": "buffered"})
    b = boot(sleeper, counter)
    assert b.reports == []
    assert b.stdout.endswith(b"counted\n")
    ns = slept(b.stdout[: -len(b"counted\n")])
    assert 500_000 <= ns <= 500_000 + 100_000  # noticed after the counter's slice at most
    sleeper_env, counter_env = b.envs
    # the sleeping environment spent only a few idle spins of the 500,000 ns: the counter had the rest
    assert sleeper_env.instructions < 50_000
    assert counter_env.instructions > 2_000_000


# ------------------------------------------------------------ stride shares
SHARES = """
section .text
_start:
    xor ebx, ebx
make:
    lea rdi, [rip + spinner]
    lea rsi, [rip + counts]
    lea rsi, [rsi + rbx*8]
    lea rdx, [rip + tickets]
    mov rdx, qword ptr [rdx + rbx*8]
    call LIB_SCHED_THREAD_CREATE
    inc rbx
    cmp rbx, 3
    jne make
    mov rdi, RUN_NS
    call LIB_SCHED_THREAD_SLEEP
    lea rdi, [rip + fmt]
    lea rax, [rip + counts]
    mov rsi, qword ptr [rax]
    mov rdx, qword ptr [rax + 8]
    mov rcx, qword ptr [rax + 16]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT
spinner:                        ; rdi = its counter: count forever
    inc qword ptr [rdi]
    jmp spinner
section .rodata
tickets: dq 100, 200, 300
fmt: db "%ld %ld %ld", 10, 0
section .bss
counts: resq 3
"""


def test_stride_cpu_shares_follow_tickets(app):
    slice_ns = 20_000
    run_ns = 600 * slice_ns  # 600 slices
    b = boot(app("shares", SHARES.replace("RUN_NS", str(run_ns)), libos={"sched": "stride", "console": "buffered"}),
             slice_instructions=slice_ns)
    assert b.reports == []
    counts = [int(x) for x in b.stdout.split()]
    total = sum(counts)
    assert total > run_ns // 3  # two instructions per count: the spinners had nearly all the CPU
    for got, tickets in zip(counts, (100, 200, 300)):
        share = got / total
        assert abs(share - tickets / 600) <= 0.05 * tickets / 600, (counts, share)
    cpu = [sched_of(b).stats()[tid]["cpu_ns"] for tid in (1, 2, 3)]
    for got, tickets in zip(cpu, (100, 200, 300)):
        assert abs(got / sum(cpu) - tickets / 600) <= 0.05 * tickets / 600, cpu
    assert b.kernel.acct.transitions["upcall"] >= 590
    print(f"stride shares: {[round(c / total, 4) for c in counts]} (tickets 1/6, 2/6, 3/6), cpu_ns {cpu}")


def test_rr_shares_equally(app):
    """The same program under rr: tickets are ignored, every spinner gets a third."""
    slice_ns = 20_000
    b = boot(app("rrshares", SHARES.replace("RUN_NS", str(300 * slice_ns)), libos={"sched": "rr", "console": "buffered"}),
             slice_instructions=slice_ns)
    counts = [int(x) for x in b.stdout.split()]
    for got in counts:
        assert abs(got / sum(counts) - 1 / 3) < 0.02


# -------------------------------------------------------------- MLFQ latency
LATENCY = """
ROUNDS equ 20
NAP equ 20000
section .text
_start:
    xor ebx, ebx
hogs:
    lea rdi, [rip + hog]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    inc rbx
    cmp rbx, HOGS
    jne hogs
    lea rdi, [rip + interactive]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN
    lea rdi, [rip + fmt]
    lea rax, [rip + total]
    mov rsi, qword ptr [rax]
    lea rax, [rip + worst]
    mov rdx, qword ptr [rax]
    call LIB_CONSOLE_PRINTF
    xor edi, edi
    call LIB_CORE_EXIT          ; ends the hogs too

hog:
    jmp hog

interactive:                    ; ROUNDS times: nap, and measure how late it woke
    push rbx
    push r12
    mov rbx, ROUNDS
nap:
    mov rcx, 3000               ; a little work between naps
work:
    dec rcx
    jnz work
    call LIB_CORE_TIME_NS
    mov r12, rax
    mov rdi, NAP
    call LIB_SCHED_THREAD_SLEEP
    call LIB_CORE_TIME_NS
    sub rax, r12
    sub rax, NAP                ; latency: past the requested wake-up time
    lea rcx, [rip + total]
    add qword ptr [rcx], rax
    lea rcx, [rip + worst]
    cmp rax, qword ptr [rcx]
    jbe not_worse
    mov qword ptr [rcx], rax
not_worse:
    dec rbx
    jnz nap
    pop r12
    pop rbx
    xor eax, eax
    ret
section .rodata
fmt: db "%ld %ld", 10, 0
section .data
total: dq 0
worst: dq 0
"""


def latency(app, policy: str, hogs: int) -> tuple[float, int, object]:
    b = boot(app(f"lat-{policy}-{hogs}", LATENCY.replace("HOGS", str(hogs)),
                 libos={"sched": policy, "console": "buffered"}))
    assert b.reports == []
    total, worst = (int(x) for x in b.stdout.split())
    return total / 20, worst, b


def test_mlfq_keeps_an_interactive_thread_responsive_beside_cpu_hogs(app):
    slice_ns = 100_000
    mlfq_mean, mlfq_worst, b = latency(app, "mlfq", 3)
    rr_mean, rr_worst, _ = latency(app, "rr", 3)
    print(f"wake-up latency (3 hogs): mlfq mean {mlfq_mean:.0f} ns worst {mlfq_worst} ns; "
          f"rr mean {rr_mean:.0f} ns worst {rr_worst} ns")
    # MLFQ: the hogs sank; the interactive thread runs at the very next slice boundary
    assert mlfq_worst <= slice_ns
    # RR: it queues behind the hogs, a slice each
    assert rr_mean > 2 * mlfq_mean
    assert rr_worst > 2 * slice_ns
    levels = sched_of(b).stats()
    assert [levels[t]["level"] for t in (1, 2, 3)] == [2, 2, 2]  # the hogs
    assert levels[4]["level"] == 0  # the interactive thread never used a whole slice


def test_mlfq_with_a_single_hog(app):
    mean, worst, b = latency(app, "mlfq", 1)
    assert worst <= 100_000
    assert b.kernel.acct.transitions["upcall"] >= 20


BOOST = """
ROUNDS equ 40
NAP equ 20000
section .text
_start:
    xor ebx, ebx
hogs:
    lea rdi, [rip + hog]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    inc rbx
    cmp rbx, 3
    jne hogs
    lea rdi, [rip + convert]
    xor esi, esi
    xor edx, edx
    call LIB_SCHED_THREAD_CREATE
    mov rdi, rax
    call LIB_SCHED_THREAD_JOIN
    xor ebx, ebx
show:                           ; one latency per line
    lea rdi, [rip + fmt]
    lea rax, [rip + lat]
    mov rsi, qword ptr [rax + rbx*8]
    call LIB_CONSOLE_PRINTF
    inc rbx
    cmp rbx, ROUNDS
    jne show
    xor edi, edi
    call LIB_CORE_EXIT

hog:
    jmp hog

convert:                        ; first a CPU-bound phase (5 slices), then interactive
    push rbx
    push r12
    mov rcx, 250000
crunch:
    dec rcx
    jnz crunch
    xor ebx, ebx
nap:
    call LIB_CORE_TIME_NS
    mov r12, rax
    mov rdi, NAP
    call LIB_SCHED_THREAD_SLEEP
    call LIB_CORE_TIME_NS
    sub rax, r12
    sub rax, NAP
    lea rcx, [rip + lat]
    mov qword ptr [rcx + rbx*8], rax
    inc rbx
    cmp rbx, ROUNDS
    jne nap
    pop r12
    pop rbx
    xor eax, eax
    ret
section .rodata
fmt: db "%ld", 10, 0
section .bss
lat: resq ROUNDS
"""


def test_mlfq_boost_restores_a_thread_that_turned_interactive(app):
    """A thread that sank to the bottom during a CPU-bound phase waits behind the hogs when it
    turns interactive, until the periodic boost (MLFQ_BOOST_NS) puts everyone back on top:
    then the hogs sink again after one slice and it stays."""
    from libos.sched import MLFQ_BOOST_NS

    b = boot(app("boost", BOOST, libos={"sched": "mlfq", "console": "buffered"}))
    assert b.reports == []
    lat = [int(x) for x in b.stdout.split()]
    slice_ns = 100_000
    assert min(lat[:5]) > slice_ns  # at the bottom level, behind the hogs in turn
    assert max(lat[-10:]) <= slice_ns  # boosted: on top again, run at the next slice boundary
    stats = sched_of(b).stats()
    assert stats[4]["level"] == 0 and [stats[t]["level"] for t in (1, 2, 3)] == [2, 2, 2]
    assert b.envs[0].instructions > MLFQ_BOOST_NS  # a boost did happen meanwhile


# ------------------------------------------------------------------ upcalls
def test_a_single_threaded_program_resumes_after_each_timer_upcall(app):
    src = """
section .text
_start:
    mov rbx, 50
outer:
    mov rcx, 10000
inner:
    dec rcx
    jnz inner
    dec rbx
    jnz outer
    lea rdi, [rip + msg]
    call LIB_CONSOLE_PRINTF
    mov rdi, 5
    call LIB_SCHED_THREAD_EXIT
section .rodata
msg: db "alone", 10, 0
"""
    b = boot(app("alone", src, libos={"sched": "rr", "console": "buffered"}))
    assert b.stdout == b"alone\n"
    assert b.envs[0].exit_status == 5
    t = b.kernel.acct.transitions
    assert t["upcall"] == t["interrupt"] == 10  # 1,000,000 instructions, 100,000 per slice
    assert sched_of(b).switches == 0


def test_hypercalls_are_least_privilege(app):
    b = boot(app("lp", "section .text\n_start:\n    call HC_ENV_CREATE\n    mov rsi, rax\n    neg rsi\n"
                       "    mov rdi, SCHED_EXIT\n    call HC_SCHED_OP\n", libos={"sched": "rr"}))
    assert b.envs[0].exit_status == Errno.EPERM


def test_with_the_memory_module_linked_preemption_still_works(tmp_path):
    """The memory module owns env_set_upcall (its fault handler and exception stack); sched
    only registers the timer and uses that stack."""
    d = threads_app(tmp_path, "rr")
    toml = d / "app.toml"
    toml.write_text(toml.read_text() + 'memory = "' + next(iter(
        __import__("libos.registry").registry.MODULES["memory"])) + '"\n')
    b = boot(d)
    assert b.stdout == OUTPUT["rr"]
    t = b.kernel.acct.transitions
    assert t["upcall"] >= t["interrupt"] >= 10
