"""Hostile guests: each one is stopped (or refused) while a well-behaved witness finishes.

Every test boots ``hostile, witness``. A guest that breaks a protection rule is
killed with a fault report; a guest that misuses a hypercall only gets a
negative errno back (the misuse guests exit with ``-rax`` as their status).

Guest code writes its numbers in hex (``0x..``) or through ``equ`` constants:
keystone reads bare decimal immediates as hex once a symbol resolver is set,
and turns ``-NAME`` into a memory operand, so negated constants are spelled
``NEG_X equ -X`` (see the xfail tests in test_hypercalls.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, WITNESS, boot

from exo.abi import (
    HYPERCALL_PAGE,
    IMAGE_BASE,
    INFO_PAGE,
    PAGE_SIZE,
    STACK_PAGES,
    STACK_TOP,
    UTRAPFRAME_SIZE,
    EnvStatus,
    Errno,
)
from exo.build.image import build_image
from exo.build.manifest import load_manifest
from exo.hypercalls import BY_NR

KERNEL_VA = 0xFFFF_8000_0000_0000  # start of the upper (kernel) half

# Exit with -rax as the status: a failed hypercall shows up as exit_status == errno.
EXIT_NEG_RAX = """
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

# Exit with a fixed status (a guest that should never get there).
EXIT_WITH = """
    mov rdi, SCHED_EXIT
    mov rsi, {status:#x}
    call HC_SCHED_OP
"""


# ------------------------------------------------------------------ helpers
def symbols(appdir: Path) -> dict[str, int]:
    return build_image(load_manifest(appdir)).symbols


def witness_ok(b, alone: bool = True) -> None:
    w = b.env("witness")
    assert w.fault is None, w.fault
    assert w.exit_status == 0
    assert w.status == EnvStatus.DEAD
    if alone:
        assert b.stdout == b"ok\n"
    else:
        assert b"ok\n" in b.stdout


def report_for(b, env):
    """The one fault report of ``env``, checked for the fields every report has."""
    reps = [r for r in b.reports if r.env_id == env.id]
    assert len(reps) == 1, [r.summary for r in b.reports]
    r = reps[0]
    assert env.fault == r.summary
    assert env.status == EnvStatus.DEAD
    assert env.exit_status is None
    assert r.env_name == env.name
    # RIP is the faulting instruction, or (int3, int n: traps) the one after it.
    assert r.registers["RIP"] in (r.rip, r.rip + len(r.code_bytes))
    assert set(r.registers) >= {"RAX", "RSP", "RIP", "RFLAGS", "R15"}
    text = r.render()
    assert text.startswith(f"exo: environment {env.id} ({env.name}) stopped: {r.kind}")
    assert f"{r.rip:#018x}: {r.instruction}" in text
    return r


def dry_spawn(*apps: Path):
    """Load apps as ``boot`` would, without running anything (to learn frame numbers)."""
    import io

    from exo.kernel import Exokernel
    from exo.loader import spawn
    from hw import Machine

    machine = Machine(32 << 20, stdin=b"", stdout=io.BytesIO())
    k = Exokernel(machine, on_fault=lambda r: None)
    envs = []
    for a in apps:
        m = load_manifest(a)
        envs.append(spawn(k, build_image(m), m.args))
    return k, envs


# ------------------------------------------------------------ fatal faults
# (name, code before the label `bad`, the bad instruction(s), expected fields)
PF_W_NP = (6, "user write of a not-present page")
PF_R_NP = (4, "user read of a not-present page")
PF_W_PROT = (7, "user write of a protected page")


def GP0(mnemonic: str) -> tuple[int, str]:  # noqa: N802 - reads like the other error constants
    return (0, f"privileged instruction {mnemonic}")

FAULTS = {
    "write_kernel": ("mov rax, 0xffff800000000000", "mov qword ptr [rax], 0x1",
                     "page fault (#PF)", PF_W_NP, KERNEL_VA, "mov"),
    "read_kernel": ("mov rax, 0xffff800000001000", "mov rbx, qword ptr [rax]",
                    "page fault (#PF)", PF_R_NP, KERNEL_VA + 0x1000, "mov"),
    "write_exo_low_memory": ("mov rax, 0x1000", "mov qword ptr [rax], 0x1",
                             "page fault (#PF)", PF_W_NP, 0x1000, "mov"),
    "write_hypercall_page": ("mov rax, HYPERCALL_PAGE", "mov byte ptr [rax], 0xc3",
                             "page fault (#PF)", PF_W_PROT, HYPERCALL_PAGE, "mov"),
    "write_info_page": ("mov rax, INFO_PAGE", "mov qword ptr [rax], 0x0",
                        "page fault (#PF)", PF_W_PROT, INFO_PAGE, "mov"),
    "write_own_code": ("lea rax, [rip + _start]", "mov byte ptr [rax], 0x90",
                       "page fault (#PF)", PF_W_PROT, IMAGE_BASE, "mov"),
    "out": ("mov al, 0x1", "out 0x80, al", "port I/O (out 0x80)",
            (0, "out to port 0x80: guests may not do port I/O"), None, "out"),
    "out_dx_serial": ("mov dx, 0x3f8\n    mov al, 0x41", "out dx, al", "port I/O (out 0x3f8)",
                      (0, "out to port 0x3f8: guests may not do port I/O"), None, "out"),
    "in": ("", "in al, 0x60", "port I/O (in 0x60)",
           (0, "in from port 0x60: guests may not do port I/O"), None, "in"),
    "hlt": ("", "hlt", "general protection (#GP)", GP0("hlt"), None, "hlt"),
    "mov_cr3": ("xor eax, eax", "mov cr3, rax", "general protection (#GP)", GP0("mov"), None, "cr3"),
    "read_cr0": ("", "mov rax, cr0", "general protection (#GP)", GP0("mov"), None, "cr0"),
    "cli": ("", "cli", "general protection (#GP)", GP0("cli"), None, "cli"),
    "wrmsr": ("mov ecx, 0xc0000080\n    xor eax, eax\n    xor edx, edx", "wrmsr",
              "general protection (#GP)", GP0("wrmsr"), None, "wrmsr"),
    "lgdt": ("lea rax, [rip + _start]", "lgdt [rax]", "general protection (#GP)", GP0("lgdt"), None, "lgdt"),
    "invlpg": ("lea rax, [rip + _start]", "invlpg [rax]", "general protection (#GP)", GP0("invlpg"), None, "invlpg"),
    "int_0x21": ("", "int 0x21", "general protection (#GP)", ((0x21 << 3) | 2, "IDT index 33"), None, "int"),
    "ud2": ("", "ud2", "invalid opcode (#UD)", (None, ""), None, "ud2"),
    "div_zero": ("xor ecx, ecx\n    mov eax, 0x1\n    xor edx, edx", "div rcx",
                 "divide error (#DE)", (None, ""), None, "div"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_stops_hostile_with_report(app, name: str) -> None:
    setup, insn, kind, (code, error), fault_va, mnemonic = FAULTS[name]
    src = f"""
section .text
_start:
    {setup}
bad:
    {insn}
{EXIT_WITH.format(status=0x63)}
"""
    hostile = app(name, src)
    b = boot(hostile, app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env(name))
    assert r.kind == kind
    assert r.rip == symbols(hostile)["bad"]
    assert r.error_code == code
    assert r.error == error
    assert r.fault_address == fault_va
    assert mnemonic in r.instruction
    if kind.startswith("port I/O"):
        assert "port I/O is refused" in r.reason
    elif kind.startswith("general protection"):
        assert ("DPL 0" if code else "privileged instruction") in r.reason
    text = r.render()
    if fault_va is not None:
        assert f"address     {fault_va:#018x}" in text
    if code is not None:
        assert f"error code  {code:#x}" in text


def test_execute_data_page_faults(app) -> None:
    """Data pages are mapped no-execute: jumping into .data is an instruction-fetch #PF."""
    src = f"""
section .text
_start:
    lea rax, [rip + payload]
    call rax
{EXIT_WITH.format(status=0x63)}
section .data
payload: db 0x90, 0x90, 0xc3
"""
    hostile = app("nxdata", src)
    b = boot(hostile, app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("nxdata"))
    payload = symbols(hostile)["payload"]
    assert r.kind == "page fault (#PF)"
    assert (r.rip, r.fault_address, r.error_code) == (payload, payload, 0x15)
    assert r.error == "user instruction fetch of a protected page"
    assert r.instruction == "nop"


def test_jump_to_kernel_address_faults(app) -> None:
    src = f"""
section .text
_start:
    mov rax, 0xffff800000000000
    jmp rax
{EXIT_WITH.format(status=0x63)}
"""
    b = boot(app("jmpk", src), app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("jmpk"))
    assert r.kind == "page fault (#PF)"
    assert (r.rip, r.fault_address) == (KERNEL_VA, KERNEL_VA)
    assert r.error_code & 0x14 == 0x14  # user instruction fetch
    assert "no instruction" in r.instruction


def test_stack_overflow_hits_guard_page(app) -> None:
    src = """
section .text
_start:
    xor eax, eax
bad:
    push rax
    jmp bad
"""
    hostile = app("overflow", src)
    b = boot(hostile, app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("overflow"))
    guard = STACK_TOP - STACK_PAGES * PAGE_SIZE
    assert r.kind == "page fault (#PF)"
    assert r.fault_address == guard - 8
    assert r.error_code == 6
    assert r.rip == symbols(hostile)["bad"]
    assert r.registers["RSP"] == guard


def test_own_page_table_is_not_addressable(app, tmp_path) -> None:
    """Page tables are never mapped: their physical address is just an unmapped virtual
    address, and mmu_update refuses to map a page-table frame (frame_of on a normal page works)."""

    def source(root_pa: int) -> str:
        return f"""
ROOT_PA equ {root_pa:#x}
ROOT_FRAME equ {root_pa >> 12:#x}
NEG_EPERM equ -EPERM
section .text
_start:
    lea rdi, [rip + page]
    call HC_FRAME_OF
    test rax, rax
    jle no_frame
    lea rbx, [rip + req]
    mov dword ptr [rbx], MMU_MAP
    mov dword ptr [rbx + 0x4], 0x0
    mov rax, 0x600000
    mov qword ptr [rbx + 0x8], rax
    mov rax, ROOT_FRAME
    mov qword ptr [rbx + 0x10], rax
    mov qword ptr [rbx + 0x18], PERM_R | PERM_W
    mov rdi, rbx
    mov rsi, 0x1
    lea rdx, [rip + done]
    call HC_MMU_UPDATE
    cmp rax, NEG_EPERM
    jne not_refused
    lea rax, [rip + done]
    cmp qword ptr [rax], 0x0
    jne not_refused
    mov rax, ROOT_PA
bad:
    mov qword ptr [rax], 0x0
{EXIT_WITH.format(status=0x63)}
no_frame:
{EXIT_WITH.format(status=0x51)}
not_refused:
{EXIT_WITH.format(status=0x52)}
section .data
page: times 0x10 dq 0
req: times 0x4 dq 0
done: dq 0x77
"""

    witness = app("witness", WITNESS)
    k, envs = dry_spawn(app("ptw", source(0)), witness)
    root_pa = envs[0].space.root
    hostile = app("ptw", source(root_pa))
    b = boot(hostile, witness)
    witness_ok(b)
    env = b.env("ptw")
    assert env.space.root == root_pa  # the same frame as in the dry run
    r = report_for(b, env)
    assert r.kind == "page fault (#PF)"
    assert (r.fault_address, r.error_code) == (root_pa, 6)
    assert r.rip == symbols(hostile)["bad"]


# --------------------------------------------- hypercall misuse: an errno, not a kill
MISUSE = {
    # console
    "write_kernel_ptr": ("mov rdi, 0xffff800000000000\n    mov rsi, 0x4\n    call HC_CONSOLE_WRITE", Errno.EFAULT),
    "write_unmapped_ptr": ("mov rdi, 0x200000\n    mov rsi, 0x4\n    call HC_CONSOLE_WRITE", Errno.EFAULT),
    "write_runs_off_page": ("lea rdi, [rip + last]\n    mov rsi, 0x3\n    call HC_CONSOLE_WRITE", Errno.EFAULT),
    "write_negative_len": ("lea rdi, [rip + msg]\n    mov rsi, -1\n    call HC_CONSOLE_WRITE", Errno.EINVAL),
    "write_huge_len": ("lea rdi, [rip + msg]\n    mov rsi, 0x10000000000\n    call HC_CONSOLE_WRITE", Errno.EFAULT),
    "write_len_2_63_minus_1": ("lea rdi, [rip + msg]\n    mov rsi, 0x7fffffffffffffff\n    call HC_CONSOLE_WRITE",
                               Errno.EFAULT),
    "read_into_hypercall_page": ("mov rdi, HYPERCALL_PAGE\n    mov rsi, 0x4\n    call HC_CONSOLE_READ", Errno.EFAULT),
    "read_into_code": ("lea rdi, [rip + _start]\n    mov rsi, 0x4\n    call HC_CONSOLE_READ", Errno.EFAULT),
    "read_into_kernel": ("mov rdi, 0xffff800000000000\n    mov rsi, 0x4\n    call HC_CONSOLE_READ", Errno.EFAULT),
    "read_negative_len": ("lea rdi, [rip + buf]\n    mov rsi, -1\n    call HC_CONSOLE_READ", Errno.EINVAL),
    # unknown numbers
    "unknown_999": ("mov rax, 0x3e7\n    syscall", Errno.ENOSYS),
    "unknown_first_free": (f"mov rax, {max(BY_NR) + 1:#x}\n    syscall", Errno.ENOSYS),
    "unknown_minus_1": ("mov rax, -1\n    syscall", Errno.ENOSYS),
    # page_alloc
    "alloc_w_and_x": ("xor edi, edi\n    mov rsi, 0x600000\n    mov rdx, PERM_R | PERM_W | PERM_X\n"
                      "    call HC_PAGE_ALLOC", Errno.EINVAL),
    "alloc_in_exo_region": ("xor edi, edi\n    mov rsi, HYPERCALL_PAGE\n    mov rdx, PERM_R\n"
                            "    call HC_PAGE_ALLOC", Errno.EPERM),
    "alloc_over_info_page": ("xor edi, edi\n    mov rsi, INFO_PAGE\n    mov rdx, PERM_R | PERM_W\n"
                             "    call HC_PAGE_ALLOC", Errno.EPERM),
    "alloc_kernel_va": ("xor edi, edi\n    mov rsi, 0xffff800000000000\n    mov rdx, PERM_R\n"
                        "    call HC_PAGE_ALLOC", Errno.EINVAL),
    "alloc_page_zero": ("xor edi, edi\n    xor esi, esi\n    mov rdx, PERM_R\n    call HC_PAGE_ALLOC", Errno.EPERM),  # the reserved low 64 KiB
    "alloc_unaligned": ("xor edi, edi\n    mov rsi, 0x600010\n    mov rdx, PERM_R\n    call HC_PAGE_ALLOC",
                        Errno.EINVAL),
    "alloc_no_read_perm": ("xor edi, edi\n    mov rsi, 0x600000\n    mov rdx, PERM_W\n    call HC_PAGE_ALLOC",
                           Errno.EINVAL),
    "alloc_unknown_perm_bits": ("xor edi, edi\n    mov rsi, 0x600000\n    mov rdx, 0x10001\n"
                                "    call HC_PAGE_ALLOC", Errno.EINVAL),
    "alloc_in_other_env": ("mov rdi, 0x2\n    mov rsi, 0x600000\n    mov rdx, PERM_R\n    call HC_PAGE_ALLOC",
                           Errno.EPERM),
    "alloc_in_no_env": ("mov rdi, 0x63\n    mov rsi, 0x600000\n    mov rdx, PERM_R\n    call HC_PAGE_ALLOC",
                        Errno.ESRCH),
    # page_map
    "map_unmapped_source": ("xor edi, edi\n    mov rsi, 0x600000\n    xor edx, edx\n    mov r10, 0x700000\n"
                            "    mov r8, PERM_R\n    call HC_PAGE_MAP", Errno.EINVAL),
    "map_hypercall_page_writable": ("xor edi, edi\n    mov rsi, HYPERCALL_PAGE\n    xor edx, edx\n"
                                    "    mov r10, 0x700000\n    mov r8, PERM_R | PERM_W\n    call HC_PAGE_MAP",
                                    Errno.EPERM),
    "map_hypercall_page_readonly": ("xor edi, edi\n    mov rsi, HYPERCALL_PAGE\n    xor edx, edx\n"
                                    "    mov r10, 0x700000\n    mov r8, PERM_R | PERM_X\n    call HC_PAGE_MAP",
                                    Errno.EPERM),
    "map_readonly_as_writable": ("xor edi, edi\n    lea rsi, [rip + msg]\n    xor edx, edx\n    mov r10, 0x700000\n"
                                 "    mov r8, PERM_R | PERM_W\n    call HC_PAGE_MAP", Errno.EPERM),
    "map_data_as_executable": ("xor edi, edi\n    lea rsi, [rip + buf]\n    xor edx, edx\n    mov r10, 0x700000\n"
                               "    mov r8, PERM_R | PERM_X\n    call HC_PAGE_MAP", Errno.EPERM),
    "map_into_exo_region": ("xor edi, edi\n    lea rsi, [rip + buf]\n    xor edx, edx\n    mov r10, LIBOS_PAGE\n"
                            "    mov r8, PERM_R\n    call HC_PAGE_MAP", Errno.EPERM),
    "map_into_other_env": ("xor edi, edi\n    lea rsi, [rip + buf]\n    mov rdx, 0x2\n    mov r10, 0x700000\n"
                           "    mov r8, PERM_R | PERM_W\n    call HC_PAGE_MAP", Errno.EPERM),
    "map_from_other_env": ("mov rdi, 0x2\n    mov rsi, IMAGE_BASE\n    xor edx, edx\n    mov r10, 0x700000\n"
                           "    mov r8, PERM_R\n    call HC_PAGE_MAP", Errno.EPERM),
    # page_unmap
    "unmap_hypercall_page": ("xor edi, edi\n    mov rsi, HYPERCALL_PAGE\n    call HC_PAGE_UNMAP", Errno.EPERM),
    "unmap_in_other_env": ("mov rdi, 0x2\n    mov rsi, IMAGE_BASE\n    call HC_PAGE_UNMAP", Errno.EPERM),
    # mmu_update (see mmu() below for the request)
    "mmu_map_frame_1": ("MMU(MMU_MAP, 0x0, 0x600000, 0x1, PERM_R | PERM_W)", Errno.EPERM),
    "mmu_map_frame_beyond_ram": ("MMU(MMU_MAP, 0x0, 0x600000, 0xffffffff, PERM_R)", Errno.EPERM),
    "mmu_map_free_frame": ("MMU(MMU_MAP, 0x0, 0x600000, 0x1fff, PERM_R)", Errno.EPERM),
    "mmu_map_into_exo_region": ("FRAME(buf)\n    MMU(MMU_MAP, 0x0, LIBOS_PAGE, rax, PERM_R)", Errno.EPERM),
    "mmu_map_hypercall_frame": ("FRAME(HYPERCALL_PAGE)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R | PERM_W)",
                                Errno.EPERM),
    "mmu_protect_hypercall_page": ("MMU(MMU_PROTECT, 0x0, HYPERCALL_PAGE, 0x0, PERM_R | PERM_W)", Errno.EPERM),
    "mmu_unmap_hypercall_page": ("MMU(MMU_UNMAP, 0x0, HYPERCALL_PAGE, 0x0, 0x0)", Errno.EPERM),
    "mmu_in_other_env": ("MMU(MMU_UNMAP, 0x2, IMAGE_BASE, 0x0, 0x0)", Errno.EPERM),
    "mmu_in_no_env": ("MMU(MMU_UNMAP, 0x63, IMAGE_BASE, 0x0, 0x0)", Errno.ESRCH),
    "mmu_unknown_op": ("MMU(0x7, 0x0, 0x600000, 0x0, PERM_R)", Errno.EINVAL),
    "mmu_w_and_x": ("FRAME(buf)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R | PERM_W | PERM_X)", Errno.EINVAL),
    "mmu_reqs_kernel_ptr": ("mov rdi, 0xffff800000000000\n    mov rsi, 0x1\n    xor edx, edx\n"
                            "    call HC_MMU_UPDATE", Errno.EFAULT),
    "mmu_huge_batch": ("lea rdi, [rip + req]\n    mov rsi, 0x1001\n    xor edx, edx\n    call HC_MMU_UPDATE",
                       Errno.EINVAL),
    "mmu_done_readonly": ("lea rdi, [rip + req]\n    xor esi, esi\n    lea rdx, [rip + msg]\n"
                          "    call HC_MMU_UPDATE", Errno.EFAULT),
    # frame_of
    "frame_of_unmapped": ("mov rdi, 0x600000\n    call HC_FRAME_OF", Errno.EINVAL),
    "frame_of_kernel": ("mov rdi, 0xffff800000000000\n    call HC_FRAME_OF", Errno.EINVAL),
    # environments
    "destroy_witness": ("mov rdi, 0x2\n    call HC_ENV_DESTROY", Errno.EPERM),
    "destroy_nonexistent": ("mov rdi, 0x63\n    call HC_ENV_DESTROY", Errno.ESRCH),
    "set_status_of_witness": ("mov rdi, 0x2\n    mov rsi, ENV_NOT_RUNNABLE\n    call HC_ENV_SET_STATUS", Errno.EPERM),
    "set_status_dying": ("xor edi, edi\n    mov rsi, 0x4\n    call HC_ENV_SET_STATUS", Errno.EINVAL),
    "set_entry_of_witness": ("mov rdi, 0x2\n    lea rsi, [rip + _start]\n    mov rdx, STACK_TOP\n"
                             "    call HC_ENV_SET_ENTRY", Errno.EPERM),
    "set_entry_of_self": ("xor edi, edi\n    lea rsi, [rip + _start]\n    mov rdx, STACK_TOP\n"
                          "    call HC_ENV_SET_ENTRY", Errno.EINVAL),
    "set_upcall_of_witness": ("mov rdi, 0x2\n    lea rsi, [rip + _start]\n    mov rdx, UXSTACK_TOP\n"
                              "    call HC_ENV_SET_UPCALL", Errno.EPERM),
    "set_upcall_kernel_entry": ("xor edi, edi\n    mov rsi, 0xffff800000000000\n    mov rdx, UXSTACK_TOP\n"
                                "    call HC_ENV_SET_UPCALL", Errno.EINVAL),
    "sched_op_unknown": ("mov rdi, 0x7\n    xor esi, esi\n    call HC_SCHED_OP", Errno.EINVAL),
}


def expand_macros(body: str) -> str:
    """FRAME(va) -> rax = frame_of(va); MMU(op, env, va, frame, perm) -> one-request mmu_update."""
    out = []
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("FRAME("):
            va = s[len("FRAME(") : -1]
            load = f"lea rdi, [rip + {va}]" if va.islower() else f"mov rdi, {va}"
            out += [f"    {load}", "    call HC_FRAME_OF", "    test rax, rax", "    js exit_rax"]
        elif s.startswith("MMU("):
            op, envid, va, frame, perm = (p.strip() for p in s[len("MMU(") : -1].split(","))
            out += [
                "    lea rbx, [rip + req]",
                f"    mov qword ptr [rbx + 0x10], {frame}" if frame == "rax" else f"    mov rax, {frame}\n"
                "    mov qword ptr [rbx + 0x10], rax",
                f"    mov dword ptr [rbx], {op}",
                f"    mov dword ptr [rbx + 0x4], {envid}",
                f"    mov rax, {va}",
                "    mov qword ptr [rbx + 0x8], rax",
                f"    mov rax, {perm}",
                "    mov qword ptr [rbx + 0x18], rax",
                "    mov rdi, rbx",
                "    mov rsi, 0x1",
                "    lea rdx, [rip + done]",
                "    call HC_MMU_UPDATE",
            ]
        else:
            out.append(line if line.startswith("    ") else "    " + line)
    return "\n".join(out)


def misuse_source(body: str) -> str:
    return f"""
section .text
_start:
{expand_macros(body)}
exit_rax:
{EXIT_NEG_RAX}
section .rodata
msg: db "hi"
section .data
req: times 0x8 dq 0x0
done: dq 0x77
section .bss        ; the last section: nothing is mapped after its one page
buf: resb 0xffe
last: resb 0x2
"""


@pytest.mark.parametrize("name", list(MISUSE))
def test_hypercall_misuse_returns_errno(app, name: str) -> None:
    body, errno = MISUSE[name]
    hostile = app(name.replace("_", "-"), misuse_source(body))
    b = boot(hostile, app("witness", WITNESS), stdin=b"abcd")
    witness_ok(b)  # nothing leaked to the console either
    env = b.envs[0]
    assert b.env("witness").id == 2  # the id the guests name as "another environment"
    assert env.fault is None
    assert b.reports == []
    assert env.exit_status == errno, f"expected -{errno.name}, got {env.exit_status}"


def test_unknown_hypercall_is_counted_by_number(app) -> None:
    b = boot(app("nosys", misuse_source(MISUSE["unknown_999"][0])), app("witness", WITNESS))
    assert b.envs[0].exit_status == Errno.ENOSYS
    assert b.kernel.acct.hypercalls["#999"] == 1


def test_console_read_checks_buffer_before_consuming_input(app) -> None:
    """A refused console_read leaves the input for the next (good) read."""
    body = f"""
NEG_EFAULT equ -EFAULT
    mov rdi, HYPERCALL_PAGE
    mov rsi, 0x4
    call HC_CONSOLE_READ
    cmp rax, NEG_EFAULT
    jne wrong
    lea rdi, [rip + buf]
    mov rsi, 0x10
    call HC_CONSOLE_READ
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
wrong:
{EXIT_WITH.format(status=0x63)}
"""
    b = boot(app("readcheck", misuse_source(body)), app("witness", WITNESS), stdin=b"abcd")
    witness_ok(b)
    assert b.envs[0].exit_status == 4


def test_mmu_update_cannot_map_another_envs_frame(app) -> None:
    """The frame holding the witness's code is not the hostile's to map (EPERM), and the
    witness runs unharmed."""

    def source(frame: int) -> str:
        return misuse_source(f"MMU(MMU_MAP, 0x0, 0x600000, {frame:#x}, PERM_R | PERM_W)")

    witness = app("witness", WITNESS)
    k, envs = dry_spawn(app("steal", source(0)), witness)
    frame = envs[1].space.lookup(IMAGE_BASE)[0]
    assert k.frames.owner[frame] == envs[1].id
    b = boot(app("steal", source(frame)), witness)
    witness_ok(b)
    assert b.envs[0].exit_status == Errno.EPERM
    assert b.envs[0].fault is None


# ------------------------------------------------------------- infinite loop
def test_infinite_loop_is_preempted(app) -> None:
    src = """
section .text
_start:
spin:
    inc rax
    jmp spin
"""
    b = boot(app("spinner", src), app("witness", WITNESS), max_instructions=2_000_000)
    witness_ok(b)
    spinner = b.env("spinner")
    assert spinner.alive and spinner.status == EnvStatus.RUNNABLE
    assert spinner.fault is None and b.reports == []
    assert spinner.instructions >= 1_000_000
    assert b.kernel.acct.transitions["interrupt"] >= 10


def test_jmp_dollar_infinite_loop_is_preempted(app) -> None:
    src = """
section .text
_start:
    jmp $
"""
    b = boot(app("spinner", src), app("witness", WITNESS), max_instructions=2_000_000)
    witness_ok(b)
    spinner = b.env("spinner")
    assert spinner.fault is None
    assert spinner.alive


# ---------------------------------------------------------------- fault storm
def test_fault_storm_without_handler_is_one_kill(app) -> None:
    """No handler: the first fault ends the environment; nothing spins in the kernel."""
    src = """
section .text
_start:
    mov rbx, 0x10000000
touch:
    mov qword ptr [rbx], rbx
    add rbx, 0x1000
    jmp touch
"""
    b = boot(app("storm", src), app("witness", WITNESS))
    witness_ok(b)
    report_for(b, b.env("storm"))
    assert b.kernel.acct.transitions["trap"] == 1
    assert b.kernel.acct.transitions["upcall"] == 0


def test_handler_that_never_fixes_the_fault_is_bounded(app) -> None:
    """A handler that resumes the faulting instruction without fixing it: a fault storm
    that max_instructions bounds; the witness still finishes."""
    src = """
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
bad:
    mov qword ptr [rbx], rbx
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
handler:
    mov rsp, qword ptr [rdi + UTF_RSP]
    jmp qword ptr [rdi + UTF_RIP]
"""
    b = boot(app("storm", src), app("witness", WITNESS), slice_instructions=2_000, max_instructions=20_000)
    witness_ok(b)
    storm = b.env("storm")
    assert storm.alive and storm.fault is None
    acct = b.kernel.acct
    assert acct.transitions["trap"] > 1000
    assert acct.transitions["upcall"] == acct.transitions["trap"]


# ------------------------------------------------- handler at an unmapped address
def test_upcall_entry_unmapped_exhausts_exception_stack(app) -> None:
    """The handler address is not mapped: each fetch fault nests a frame lower on the
    exception stack until none fits; then the env is killed with a report."""
    src = """
section .text
_start:
    xor edi, edi
    mov rsi, UXSTACK_TOP - PAGE_SIZE
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    xor edi, edi
    mov rsi, 0x900000
    mov rdx, UXSTACK_TOP
    call HC_ENV_SET_UPCALL
    ud2
"""
    b = boot(app("nohandler", src), app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("nohandler"))
    assert "upcall frame" in r.reason
    assert (r.rip, r.fault_address) == (0x900000, 0x900000)
    acct = b.kernel.acct
    # Nested frames sit 8 bytes plus the frame (rounded to 16) apart: 176 bytes.
    spacing = (8 + UTRAPFRAME_SIZE + 15) & ~15
    assert acct.transitions["upcall"] == PAGE_SIZE // spacing == 23
    assert acct.transitions["trap"] == acct.transitions["upcall"] + 1


# ------------------------------------------------------------- reported bugs
def test_int3_report_names_the_int3(app) -> None:
    src = """
section .text
_start:
    nop
bad:
    int3
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
"""
    hostile = app("bp", src)
    b = boot(hostile, app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("bp"))
    assert r.kind == "breakpoint (#BP)"
    assert r.instruction == "int3"


def test_sysenter_stops_the_guest(app) -> None:
    src = f"""
section .text
_start:
bad:
    sysenter
{EXIT_WITH.format(status=0x63)}
"""
    hostile = app("sysenter", src)
    b = boot(hostile, app("witness", WITNESS))
    witness_ok(b)
    r = report_for(b, b.env("sysenter"))
    assert r.rip == symbols(hostile)["bad"]


def test_child_cannot_make_parents_readonly_page_writable(app) -> None:
    """exofork shares the parent's info page read-only with the child. The child asks
    mmu_update to map that frame writable elsewhere, then writes through it."""
    src = f"""
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js parent_fail
    mov r12, rax
    ; the child runs this same code: share the text page (R+X) and give it a scratch page
    xor edi, edi
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    test rax, rax
    jnz parent_fail
    mov rdi, r12
    mov rsi, 0x800000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz parent_fail
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    mov r13, 0x10
wait:
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r13
    jnz wait
    ; exit with argc as the status: the loader wrote 1 (just the program name)
    mov rax, INFO_PAGE
    mov rsi, qword ptr [rax]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
parent_fail:
{EXIT_WITH.format(status=0x70)}

child:      ; no stack: direct syscalls only
    mov rdi, INFO_PAGE
    mov eax, NR_FRAME_OF
    syscall
    test rax, rax
    js child_exit
    mov rbx, 0x800000
    mov dword ptr [rbx], MMU_MAP
    mov dword ptr [rbx + 0x4], 0x0
    mov rcx, 0x600000
    mov qword ptr [rbx + 0x8], rcx
    mov qword ptr [rbx + 0x10], rax
    mov qword ptr [rbx + 0x18], PERM_R | PERM_W
    mov rdi, rbx
    mov rsi, 0x1
    xor edx, edx
    mov eax, NR_MMU_UPDATE
    syscall
    test rax, rax
    jnz child_exit
    mov rcx, 0x600000
    mov qword ptr [rcx], 0x2a      ; the parent's argc
child_exit:
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    mov eax, NR_SCHED_OP
    syscall
"""
    b = boot(app("forker", src), app("witness", WITNESS))
    witness_ok(b)
    parent = b.env("forker")
    child = b.kernel.envs[parent.children[0]]
    assert child.fault is None and parent.fault is None
    assert parent.exit_status == 1, "the child rewrote the parent's info page"
    assert child.exit_status == Errno.EPERM


def test_child_cannot_upgrade_a_readonly_grant(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x1
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js parent_fail
    mov r12, rax
    xor edi, edi
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    test rax, rax
    jnz parent_fail
    xor edi, edi                    ; a read-only grant of our page
    mov rsi, 0x600000
    mov rdx, r12
    mov r10, 0x600000
    mov r8, PERM_R
    call HC_PAGE_MAP
    test rax, rax
    jnz parent_fail
    mov rdi, r12
    mov rsi, 0x800000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz parent_fail
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    mov r13, 0x10
wait:
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
    dec r13
    jnz wait
    mov rbx, 0x600000
    mov rsi, qword ptr [rbx]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
parent_fail:
{EXIT_WITH.format(status=0x70)}

child:
    mov rbx, 0x800000
    mov dword ptr [rbx], MMU_PROTECT
    mov dword ptr [rbx + 0x4], 0x0
    mov rcx, 0x600000
    mov qword ptr [rbx + 0x8], rcx
    mov qword ptr [rbx + 0x18], PERM_R | PERM_W
    mov rdi, rbx
    mov rsi, 0x1
    xor edx, edx
    mov eax, NR_MMU_UPDATE
    syscall
    test rax, rax
    jnz child_exit
    mov rcx, 0x600000
    mov qword ptr [rcx], 0x2a
child_exit:
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    mov eax, NR_SCHED_OP
    syscall
"""
    b = boot(app("granter", src), app("witness", WITNESS))
    witness_ok(b)
    parent = b.env("granter")
    child = b.kernel.envs[parent.children[0]]
    assert child.fault is None and parent.fault is None
    assert parent.exit_status == 1, "the child wrote into the parent's page"
    assert child.exit_status == Errno.EPERM


_GATE_SCRIPT = """
import json, sys
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from conftest import boot
b = boot(*sys.argv[1:3], max_instructions=2_000_000)
print(json.dumps({e.name: [e.exit_status, e.fault] for e in b.envs}))
"""


def test_fake_gdt_call_gate_does_not_crash_the_host(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x1000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz refused
    mov rbx, 0x1000
    mov rax, 0x00AF9B000000FFFF     ; GDT[1]: 64-bit ring-0 code
    mov qword ptr [rbx + 0x8], rax
    lea rcx, [rip + ring0]          ; GDT[3..4]: a DPL-3 call gate to 0x08:ring0
    mov rax, rcx
    and rax, 0xffff
    mov rdx, 0x0000EC0000080000
    or rax, rdx
    mov rdx, rcx
    shr rdx, 0x10
    and rdx, 0xffff
    shl rdx, 0x30
    or rax, rdx
    mov qword ptr [rbx + 0x18], rax
    shr rcx, 0x20
    mov qword ptr [rbx + 0x20], rcx
    lea rax, [rip + farptr]
bad:
    lcall [rax]
{EXIT_WITH.format(status=0x55)}
ring0:
{EXIT_WITH.format(status=0x77)}
refused:
{EXIT_NEG_RAX}
section .data
farptr: dd 0x0
    dw 0x1b
"""
    hostile = app("gate", src)
    witness = app("witness", WITNESS)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_GATE_SCRIPT), str(hostile), str(witness), str(ROOT),
         str(ROOT / "tests")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ),
    )
    assert proc.returncode == 0, f"the host process died (status {proc.returncode}): {proc.stderr[-500:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["witness"] == [0, None]
    status, fault = result["gate"]
    assert status != 0x77, "the guest reached ring 0"
    assert fault is not None or status == Errno.EPERM


# ------------------------------------------------------------- resource hogs
def test_memory_hog_gets_enomem_and_everything_comes_back(app) -> None:
    src = f"""
section .text
_start:
    mov rbx, 0x10000000
more:
    xor edi, edi
    mov rsi, rbx
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    add rbx, PAGE_SIZE
    test rax, rax
    jz more
{EXIT_NEG_RAX}
"""
    b = boot(app("hog", src), app("witness", WITNESS), ram_mib=1)
    witness_ok(b)
    hog = b.env("hog")
    assert hog.exit_status == Errno.ENOMEM and hog.fault is None
    k = b.kernel
    reserved = k.machine.reserved_bytes // PAGE_SIZE
    assert k.frames.free_count == len(k.frames.owner) - reserved - 1  # all but the hypercall page


FORK_BOMB = """
section .text
_start:
    call HC_ENV_CREATE
    test rax, rax
    jg _start
    jz child
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
child:                              ; (never made runnable)
    ud2
"""


def test_fork_bomb_gets_enomem(app) -> None:
    b = boot(app("bomb", FORK_BOMB), app("witness", WITNESS), ram_mib=1)
    witness_ok(b)
    bomb = b.env("bomb")
    assert bomb.exit_status == Errno.ENOMEM and bomb.fault is None
    assert len(bomb.children) > 10


def test_fork_bomb_leaks_no_frames(app) -> None:
    b = boot(app("bomb", FORK_BOMB), app("witness", WITNESS), ram_mib=1)
    witness_ok(b)
    k = b.kernel
    owners = {o for o in k.frames.owner if o > 0}
    assert owners <= set(k.envs), f"frames owned by unknown envs {sorted(owners - set(k.envs))}"
