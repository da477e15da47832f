"""Lab 1, hidden: env_info on names that do not fit and on a child that is gone (docs/labs/lab1.md)."""

from __future__ import annotations

import struct

import pytest

NAME = "lab1_hidden_a_name_longer_than_31_bytes"
GUEST = """
; env_info(0) into rec, then a child is created and destroyed and env_info(child) is asked;
; writes rec (ENV_INFO_SIZE bytes) and the second call's rax.
section .text
_start:
    xor edi, edi
    lea rsi, [rip + rec]
    call HC_ENV_INFO
    test rax, rax
    jnz failed
    call HC_ENV_CREATE
    test rax, rax
    jz failed                   ; the child never runs
    js failed
    mov rbx, rax
    mov rdi, rax
    call HC_ENV_DESTROY
    mov rdi, rbx
    lea rsi, [rip + scratch]
    call HC_ENV_INFO
    mov qword ptr [rip + rax_out], rax
    lea rdi, [rip + rec]
    mov esi, ENV_INFO_SIZE + 0x8
    call HC_CONSOLE_WRITE
    mov edi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
failed:
    mov edi, SCHED_EXIT
    mov esi, 0x1
    call HC_SCHED_OP
section .bss
rec: resb ENV_INFO_SIZE
rax_out: resb 0x8
scratch: resb ENV_INFO_SIZE
"""


@pytest.mark.lab(1, points=10)
def test_env_info_long_name_and_dead_child(boot, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.s").write_text(GUEST)
    (app / "app.toml").write_text(f'name = "{NAME}"\nsources = ["main.s"]\n')
    r = boot(app)
    assert r.exit_status == 0 and not r.reports, (r.exit_status, [x.summary for x in r.reports])
    ident, parent, status, pages, name = struct.unpack_from("<QQQQ32s", r.stdout)
    assert (ident, parent, status) == (1, 0, 1)
    assert name == NAME.encode()[:31] + b"\0", f"the name must be cut to 31 bytes and NUL-terminated: {name!r}"
    (rax,) = struct.unpack_from("<q", r.stdout, 64)
    assert rax == -3, f"env_info of a destroyed child: {rax}, expected -ESRCH"
