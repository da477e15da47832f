"""Hypercalls 32-33 (issue 15): env_set_syscall's checks and env_set_fsbase on the live vCPU.

The end-to-end reflection path (a Linux program's `syscall` served by libos/posix) is
tests/posix/test_slice.py; these are the exokernel's own rules, from an assembly guest.
"""

from __future__ import annotations

import pytest
from conftest import boot

# Each check: a call, then `cmp rax, expected; jne fail_N`: the exit status names the first failed check.
CHECKS = """
section .text
_start:
    mov rdi, 0
    mov rsi, SYSCALL_REFLECT
    mov rdx, 0x401000               ; not a library-call slot linked into this env
    call HC_ENV_SET_SYSCALL
    cmp rax, -EINVAL
    jne fail1
    mov rdi, 0
    mov rsi, 7                      ; no such mode
    mov rdx, 0
    call HC_ENV_SET_SYSCALL
    cmp rax, -EINVAL
    jne fail2
    mov rdi, 0
    mov rsi, SYSCALL_HYPERCALL      ; the default, accepted
    mov rdx, 0
    call HC_ENV_SET_SYSCALL
    cmp rax, 0
    jne fail3
    mov rdi, 0
    mov rsi, 5                      ; neither FS nor GS
    mov rdx, 0x1000
    call HC_ENV_SET_FSBASE
    cmp rax, -EINVAL
    jne fail4
    mov rdi, 0
    mov rsi, FSBASE_FS
    mov rdx, 0x800000000000         ; the kernel half: arch_prctl's EPERM
    call HC_ENV_SET_FSBASE
    cmp rax, -EPERM
    jne fail5
    ; a page with 0x2a at 0x300008, FS base 0x300000: fs:[8] reads it in the next instruction
    mov rdi, 0
    mov rsi, 0x300000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rax, 0x300008
    mov qword ptr [rax], 0x2a
    mov rdi, 0
    mov rsi, FSBASE_FS
    mov rdx, 0x300000
    call HC_ENV_SET_FSBASE
    cmp rax, 0
    jne fail6
    xor ecx, ecx                    ; a register base: a bare displacement assembles RIP-relative
    mov rsi, qword ptr fs:[rcx + 8]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
fail1:
    mov rsi, 101
    jmp out
fail2:
    mov rsi, 102
    jmp out
fail3:
    mov rsi, 103
    jmp out
fail4:
    mov rsi, 104
    jmp out
fail5:
    mov rsi, 105
    jmp out
fail6:
    mov rsi, 106
out:
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

ENOSYS_ELSEWHERE = """
section .text
_start:
    mov rdi, 0
    mov rsi, SYSCALL_REFLECT
    mov rdx, 0
    call HC_ENV_SET_SYSCALL
    neg rax
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""


def test_env_set_syscall_and_fsbase_checks(app) -> None:
    b = boot(app("checks", CHECKS))
    env = b.env("checks")
    assert env.fault is None, env.fault
    assert env.exit_status == 0x2A


@pytest.mark.parametrize(("structure", "errno"), [("monolithic", 22), ("xen-pv", 22), ("microkernel", 22)])
def test_reflection_checks_the_slot_under_every_structure(app, structure, errno) -> None:
    """Every structure has a Linux path (exo/structures.py REFLECT_PATH) and checks the slot as
    the exokernel does: 0 is no library-call slot, EINVAL."""
    b = boot(app("other", ENOSYS_ELSEWHERE), structure=structure)
    assert b.env("other").exit_status == errno
