"""Lab 2, hidden: the same checks reached through other hypercalls (docs/labs/lab2.md): an IPC
page transfer that adds rights, and the info page made writable."""

from __future__ import annotations

import pytest

WITNESS = "guest_apps/labs/witness"

# Each guest exits with the errno it got (0x64 if the call went through).
IPC_ADD_WRITE = """
; a read-only page of its own, sent writable to the witness (env 2): _check_share must refuse
section .text
_start:
    xor edi, edi
    mov esi, 0x40000000
    mov edx, PERM_R
    call HC_PAGE_ALLOC
    test rax, rax
    jnz broken
    mov edi, 0x2
    xor esi, esi
    mov edx, 0x40000000
    mov r10d, PERM_R | PERM_W
    call HC_IPC_TRY_SEND
    test rax, rax
    jns broken
    neg rax
    mov rsi, rax
    mov edi, SCHED_EXIT
    call HC_SCHED_OP
broken:
    mov edi, SCHED_EXIT
    mov esi, 0x64
    call HC_SCHED_OP
"""

PROTECT_INFO = """
; mmu_update PROTECT of the read-only info page (argc, argv) as writable: its maximum right is R
section .text
_start:
    mov dword ptr [rip + req], MMU_PROTECT
    mov qword ptr [rip + req + 0x8], INFO_PAGE
    mov qword ptr [rip + req + 0x18], PERM_R | PERM_W
    lea rdi, [rip + req]
    mov esi, 0x1
    xor edx, edx
    call HC_MMU_UPDATE
    test rax, rax
    jns broken
    neg rax
    mov rsi, rax
    mov edi, SCHED_EXIT
    call HC_SCHED_OP
broken:
    mov edi, SCHED_EXIT
    mov esi, 0x64
    call HC_SCHED_OP
section .bss
req: resb MMU_REQ_SIZE
"""


def _app(tmp_path, name: str, source: str):
    d = tmp_path / name
    d.mkdir()
    (d / "main.s").write_text(source)
    (d / "app.toml").write_text(f'name = "{name}"\nsources = ["main.s"]\n')
    return d


@pytest.mark.lab(2, points=5)
def test_ipc_send_adds_no_write_right(boot, tmp_path):
    r = boot(_app(tmp_path, "ipc_add_write", IPC_ADD_WRITE), WITNESS, ram_mib=16)
    assert r.exit_status == 1, f"ipc_try_send of a read-only page as writable: exit {r.exit_status}, expected EPERM"
    assert r.stdout == b"witness ok\n"


@pytest.mark.lab(2, points=5)
def test_info_page_stays_read_only(boot, tmp_path):
    r = boot(_app(tmp_path, "protect_info", PROTECT_INFO), WITNESS, ram_mib=16)
    assert r.exit_status == 1, f"PROTECT of the info page as writable: exit {r.exit_status}, expected EPERM"
    assert r.stdout == b"witness ok\n"
