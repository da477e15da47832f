"""Hypercalls 34-38 (issue 15): event_wait, env_reap, console_error, console_info, env_notify.

Assembly guests exercise the exokernel's rules; the POSIX personality's use of them (pipes,
wait4, nanosleep) is tested under tests/posix.
"""

from __future__ import annotations

import io
import struct

from conftest import boot


def boot_with_fork(app_dir):
    """Boot an app that links the memory module for its fork but makes raw hypercalls too: a guest
    linked with libOS modules may only make the ones they declare, so the test lifts that."""
    from exo.api import build, spawn_apps
    from exo.kernel import Exokernel
    from hw import Machine

    machine = Machine(32 << 20, clock="virtual", stdin=b"", stdout=io.BytesIO())
    kernel = Exokernel(machine, on_fault=lambda report: None)
    envs = spawn_apps(kernel, [build(app_dir)])
    envs[0].allowed = None
    kernel.env_create_hooks.append(lambda parent, child: setattr(child, "allowed", None))
    kernel.run(max_instructions=5_000_000)
    return envs[0]

# The parent forks a child that waits for its doorbell, rings it, then waits for the child's end
# and reaps it: the exit status is checked field by field (a failed check exits with 100+N).
NOTIFY_AND_REAP = """
section .bss
info: resb 64
section .text
_start:
    call LIB_MEMORY_FORK            ; copy-on-write fork, the child runnable (libos/memory.py)
    test rax, rax
    jz child
    mov r12, rax                    ; the child's id
    mov qword ptr [rip + info], 0   ; a write breaks copy-on-write: hypercalls do not page in
    mov rdi, 0
    lea rsi, [rip + info]
    call HC_ENV_REAP                ; nothing ended yet
    cmp rax, -ECHILD
    jne fail1
    mov rdi, r12
    call HC_ENV_NOTIFY
    cmp rax, 0
    jne fail2
    mov rdi, EV_CHILD
    mov rsi, 0
    call HC_EVENT_WAIT              ; blocks until the child has exited
    cmp rax, EV_CHILD
    jne fail3
    mov rdi, 0
    lea rsi, [rip + info]
    call HC_ENV_REAP
    cmp rax, r12
    jne fail4
    lea rax, [rip + info]
    cmp qword ptr [rax + 8], REAP_EXITED
    jne fail5
    cmp qword ptr [rax + 16], 16    ; the child's status: what its event_wait returned (EV_NOTIFY)
    jne fail6
    mov rdi, r12
    lea rsi, [rip + info]
    call HC_ENV_REAP                ; taken already
    cmp rax, -ECHILD
    jne fail7
    mov rdi, 0x3F
    mov rsi, 0
    call HC_EVENT_WAIT              ; unknown bits
    cmp rax, -EINVAL
    jne fail8
    mov rdi, 0
    call HC_ENV_NOTIFY              ; no environment 0
    cmp rax, -ESRCH
    jne fail9
    mov rdi, SCHED_EXIT
    mov rsi, 0
    call HC_SCHED_OP
child:
    mov rdi, EV_NOTIFY
    mov rsi, 0
    call HC_EVENT_WAIT
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail1:
    mov rsi, 101
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail2:
    mov rsi, 102
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail3:
    mov rsi, 103
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail4:
    mov rsi, 104
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail5:
    mov rsi, 105
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail6:
    mov rsi, 106
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail7:
    mov rsi, 107
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail8:
    mov rsi, 108
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail9:
    mov rsi, 109
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

# event_wait with only a deadline 5 ms of guest time ahead: returns 0, and time has passed it
# (under the virtual clock the clock jumps: nothing else runs).
DEADLINE = """
section .text
_start:
    call HC_TIME_NOW
    lea r12, [rax + 5000000]
    mov rdi, 0
    mov rsi, r12
    call HC_EVENT_WAIT
    mov r13, rax
    call HC_TIME_NOW
    cmp rax, r12
    jb early
    mov rsi, r13
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
early:
    mov rsi, 99
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

# A child that faults (a null dereference): the parent's record says FAULTED with vector 14 (#PF).
REAP_FAULT = """
section .bss
info: resb 64
section .text
_start:
    call LIB_MEMORY_FORK
    test rax, rax
    jz child
    mov qword ptr [rip + info], 0
    mov rdi, EV_CHILD
    mov rsi, 0
    call HC_EVENT_WAIT
    mov rdi, 0
    lea rsi, [rip + info]
    call HC_ENV_REAP
    lea rax, [rip + info]
    mov rsi, qword ptr [rax + 8]
    shl rsi, 8
    or rsi, qword ptr [rax + 24]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
child:
    xor eax, eax
    mov rax, [rax]
"""

ERROR_AND_INFO = """
section .data
msg: db "to stderr", 10
section .bss
info: resb 16
section .text
_start:
    lea rdi, [rip + msg]
    mov rsi, 10
    call HC_CONSOLE_ERROR
    lea rdi, [rip + info]
    call HC_CONSOLE_INFO
    lea rax, [rip + info]
    mov rsi, [rax]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""


def test_notify_wakes_a_waiting_child_and_reap_takes_its_record(app) -> None:
    env = boot_with_fork(app("notify", NOTIFY_AND_REAP, libos={"memory": "cow"}))
    assert env.fault is None, env.fault
    assert env.exit_status == 0


def test_event_wait_deadline_jumps_the_virtual_clock(app) -> None:
    b = boot(app("deadline", DEADLINE))
    assert b.env("deadline").exit_status == 0


def test_reap_reports_a_faulted_child_with_its_vector(app) -> None:
    env = boot_with_fork(app("reapfault", REAP_FAULT, libos={"memory": "cow"}))
    assert env.fault is None, env.fault
    assert env.exit_status == (1 << 8) | 14  # REAP_FAULTED, #PF


def test_console_error_goes_to_the_error_stream_and_info_says_not_a_terminal(app, capfd) -> None:
    b = boot(app("errinfo", ERROR_AND_INFO))
    assert b.env("errinfo").exit_status == 0  # flags: not a terminal (test output is captured)
    assert b.stdout == b""
    assert capfd.readouterr().err == "to stderr\n"


def test_reap_record_layout() -> None:
    from exo.abi import REAP_INFO_SIZE
    from exo.events import REAP_RECORD

    assert struct.calcsize("<QQqQ") == REAP_RECORD.size == REAP_INFO_SIZE == 32
