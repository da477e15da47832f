"""Upcalls: #PF, #DE, #UD and #BP go to the libOS handler with a UTrapframe; the rest kill.

The handlers below print their frame (168 raw bytes) and the frame's address
(8 bytes) on the console, so the test reads back exactly what the exokernel
pushed. Numbers in guest code are hex: see the note in test_hostile.py.
"""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import WITNESS, boot

from exo.abi import PAGE_SIZE, STACK_TOP, UTRAPFRAME_FIELDS, UTRAPFRAME_SIZE, UXSTACK_TOP, EnvStatus
from exo.build.image import build_image
from exo.build.manifest import load_manifest

SETUP_UPCALL = """
    xor edi, edi
    mov rsi, UXSTACK_TOP - PAGE_SIZE
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz setup_failed
    xor edi, edi
    lea rsi, [rip + handler]
    mov rdx, UXSTACK_TOP
    call HC_ENV_SET_UPCALL
    test rax, rax
    jnz setup_failed
"""

SETUP_FAILED = """
setup_failed:
    mov rdi, SCHED_EXIT
    mov rsi, 0x5e
    call HC_SCHED_OP
"""

# Known values in every register before the exception (RSP stays at STACK_TOP).
LOAD_REGS = """
    mov rax, 0xa0a0
    mov rbx, 0xb0b0
    mov rcx, 0xc0c0
    mov rdx, 0xd0d0
    mov rsi, 0x5151
    mov rdi, 0xd1d1
    mov rbp, 0xbbbb
    mov r8, 0x8888
    mov r9, 0x9999
    mov r10, 0x1010
    mov r11, 0x1111
    mov r12, 0x1212
    mov r13, 0x1313
    mov r14, 0x1414
    mov r15, 0x1515
"""
LOADED = {"rax": 0xA0A0, "rbx": 0xB0B0, "rcx": 0xC0C0, "rdx": 0xD0D0, "rsi": 0x5151, "rdi": 0xD1D1,
          "rbp": 0xBBBB, "r8": 0x8888, "r9": 0x9999, "r10": 0x1010, "r11": 0x1111, "r12": 0x1212,
          "r13": 0x1313, "r14": 0x1414, "r15": 0x1515}

# Print the frame and its address, then (vector 3 only) fault again inside the
# handler, else exit with the vector as status.
PRINTING_HANDLER = """
handler:
    lea rax, [rip + frame_addr]
    mov qword ptr [rax], rdi
    mov rsi, UTRAPFRAME_SIZE
    call HC_CONSOLE_WRITE
    lea rdi, [rip + frame_addr]
    mov rsi, 0x8
    call HC_CONSOLE_WRITE
    cmp qword ptr [rsp + UTF_VECTOR], NEST_ON
    jne handler_exit
nested_bad:
    ud2
handler_exit:
    mov rsi, qword ptr [rsp + UTF_VECTOR]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

FIRST_FRAME = (UXSTACK_TOP - UTRAPFRAME_SIZE) & ~0xF


def symbols(appdir: Path) -> dict[str, int]:
    return build_image(load_manifest(appdir)).symbols


def frames(out: bytes) -> list[tuple[int, dict[str, int]]]:
    """(frame address, fields) for each frame a PRINTING_HANDLER wrote."""
    step = UTRAPFRAME_SIZE + 8
    assert len(out) % step == 0, out
    result = []
    for off in range(0, len(out), step):
        values = struct.unpack_from(f"<{len(UTRAPFRAME_FIELDS)}Q", out, off)
        (addr,) = struct.unpack_from("<Q", out, off + UTRAPFRAME_SIZE)
        result.append((addr, dict(zip(UTRAPFRAME_FIELDS, values))))
    return result


def exception_app(app, name: str, before: str, bad: str, nest_on: int = 0x100) -> Path:
    return app(name, f"""
NEST_ON equ {nest_on:#x}
section .text
_start:
{SETUP_UPCALL}
    {before}
{LOAD_REGS}
bad:
    {bad}
after:
    mov rdi, SCHED_EXIT
    mov rsi, 0x63
    call HC_SCHED_OP
{PRINTING_HANDLER}
{SETUP_FAILED}
section .data
frame_addr: dq 0x0
""")


def check_frame(fields: dict[str, int], vector: int, rip: int, error_code: int = 0, fault_va: int = 0) -> None:
    assert fields["vector"] == vector
    assert fields["rip"] == rip
    assert fields["error_code"] == error_code
    assert fields["fault_va"] == fault_va
    assert fields["rsp"] == STACK_TOP
    assert fields["rflags"] & 0x202 == 0x202  # reserved bit 1 and IF
    for reg, value in LOADED.items():
        assert fields[reg] == value, reg


# ----------------------------------------------------------- each vector
def test_ud_goes_to_handler(app) -> None:
    a = exception_app(app, "ud", "", "ud2")
    b = boot(a)
    env = b.envs[0]
    assert env.fault is None and b.reports == []
    assert env.exit_status == 6
    [(addr, f)] = frames(b.stdout)
    assert addr == FIRST_FRAME
    check_frame(f, 6, symbols(a)["bad"])
    assert b.kernel.acct.transitions["upcall"] == 1


def test_bp_goes_to_handler_with_next_rip(app) -> None:
    a = exception_app(app, "bp", "", "int3")
    b = boot(a)
    assert b.envs[0].exit_status == 3
    [(addr, f)] = frames(b.stdout)
    assert addr == FIRST_FRAME
    check_frame(f, 3, symbols(a)["after"])  # int3 is a trap: execution resumes after it
    assert symbols(a)["after"] == symbols(a)["bad"] + 1


def test_de_goes_to_handler(app) -> None:
    a = exception_app(app, "de", "", "div r12\n    nop", nest_on=0x100)
    # r12 = 0x1212, rdx:rax = 0xd0d0:0xa0a0 -> the quotient overflows 64 bits: #DE
    b = boot(a)
    assert b.envs[0].exit_status == 0
    [(_, f)] = frames(b.stdout)
    check_frame(f, 0, symbols(a)["bad"])


def test_pf_goes_to_handler_with_fault_address(app) -> None:
    a = exception_app(app, "pf", "", "mov qword ptr [rbx + 0x10], rax", nest_on=0x100)
    b = boot(a)
    assert b.envs[0].exit_status == 14
    [(_, f)] = frames(b.stdout)
    check_frame(f, 14, symbols(a)["bad"], error_code=6, fault_va=0xB0B0 + 0x10)


def test_fault_inside_handler_nests_below(app) -> None:
    """#BP in the program, then #UD in the handler: the second frame sits below the first."""
    a = exception_app(app, "nest", "", "int3", nest_on=3)
    b = boot(a)
    assert b.envs[0].exit_status == 6
    (addr1, f1), (addr2, f2) = frames(b.stdout)
    check_frame(f1, 3, symbols(a)["after"])
    assert addr1 == FIRST_FRAME
    assert f2["vector"] == 6
    assert f2["rip"] == symbols(a)["nested_bad"]
    assert f2["rsp"] == addr1  # the handler's stack was the first frame
    assert addr2 == (addr1 - 8 - UTRAPFRAME_SIZE) & ~0xF
    assert UXSTACK_TOP - PAGE_SIZE <= addr2 < addr1
    assert b.kernel.acct.transitions["upcall"] == 2


# ----------------------------------------------------- what never goes to it
def test_gp_and_io_are_never_upcalls(app) -> None:
    for name, bad, kind in (("gp", "hlt", "general protection (#GP)"), ("io", "out 0x80, al", "port I/O (out 0x80)")):
        a = exception_app(app, name, "", bad)
        b = boot(a, app("witness", WITNESS))
        assert b.stdout == b"ok\n"
        env = b.env(name)
        [r] = b.reports
        assert r.kind == kind
        assert r.rip == symbols(a)["bad"]
        assert env.fault == r.summary and env.status == EnvStatus.DEAD
        assert b.kernel.acct.transitions["upcall"] == 0


def test_entry_zero_unregisters_the_handler(app) -> None:
    a = exception_app(app, "unreg", "xor edi, edi\n    xor esi, esi\n    xor edx, edx\n    call HC_ENV_SET_UPCALL",
                      "ud2")
    b = boot(a)
    [r] = b.reports
    assert r.kind == "invalid opcode (#UD)"
    assert r.rip == symbols(a)["bad"]
    assert b.stdout == b""
    assert b.kernel.acct.transitions["upcall"] == 0


# ------------------------------------------------ an exception stack that is not there
def test_unmapped_exception_stack_kills_with_report(app) -> None:
    src = """
section .text
_start:
    xor edi, edi
    lea rsi, [rip + handler]
    mov rdx, UXSTACK_TOP
    call HC_ENV_SET_UPCALL
bad:
    ud2
handler:
    mov rdi, SCHED_EXIT
    mov rsi, 0x63
    call HC_SCHED_OP
"""
    a = app("nostack", src)
    b = boot(a, app("witness", WITNESS))
    assert b.stdout == b"ok\n" and b.env("witness").exit_status == 0
    env = b.env("nostack")
    [r] = b.reports
    assert r.env_id == env.id
    assert r.kind == "invalid opcode (#UD)"
    assert r.rip == symbols(a)["bad"] and r.instruction == "ud2"
    assert "upcall frame" in r.reason
    assert "upcall frame" in r.render()
    assert env.fault == r.summary and env.exit_status is None
    assert b.kernel.acct.transitions["upcall"] == 0


def test_read_only_exception_stack_kills_with_report(app) -> None:
    src = """
section .text
_start:
    xor edi, edi
    mov rsi, UXSTACK_TOP - PAGE_SIZE
    mov rdx, PERM_R
    call HC_PAGE_ALLOC
    xor edi, edi
    lea rsi, [rip + handler]
    mov rdx, UXSTACK_TOP
    call HC_ENV_SET_UPCALL
bad:
    int3
handler:
    mov rdi, SCHED_EXIT
    mov rsi, 0x63
    call HC_SCHED_OP
"""
    b = boot(app("rostack", src), app("witness", WITNESS))
    assert b.stdout == b"ok\n"
    [r] = b.reports
    assert r.kind == "breakpoint (#BP)"
    assert "upcall frame" in r.reason
    assert b.env("rostack").exit_status is None


def test_kernel_exception_stack_kills_with_report(app) -> None:
    src = """
section .text
_start:
    xor edi, edi
    lea rsi, [rip + handler]
    mov rdx, 0xffff800000001000
    call HC_ENV_SET_UPCALL
    test rax, rax
    jnz refused
    mov rbx, 0x600000
bad:
    mov rax, qword ptr [rbx]
handler:
    mov rdi, SCHED_EXIT
    mov rsi, 0x63
    call HC_SCHED_OP
refused:
    mov rdi, SCHED_EXIT
    mov rsi, 0x64
    call HC_SCHED_OP
"""
    a = app("kstack", src)
    b = boot(a, app("witness", WITNESS))
    assert b.stdout == b"ok\n"
    [r] = b.reports
    assert r.kind == "page fault (#PF)" and r.fault_address == 0x600000
    assert r.rip == symbols(a)["bad"]
    assert "upcall frame" in r.reason


# ------------------------------------------------------- resuming and the storm
def test_handler_resumes_after_int3(app) -> None:
    """The handler restores RSP from the frame and jumps to the saved RIP (after int3)."""
    src = f"""
section .text
_start:
{SETUP_UPCALL}
    mov r12, 0x3
again:
    int3
    dec r12
    jnz again
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
handler:
    mov r12, qword ptr [rdi + UTF_R12]
    mov rsp, qword ptr [rdi + UTF_RSP]
    jmp qword ptr [rdi + UTF_RIP]
{SETUP_FAILED}
"""
    b = boot(app("resume", src))
    env = b.envs[0]
    assert env.exit_status == 0 and env.fault is None
    assert b.kernel.acct.transitions["upcall"] == 3
    assert b.kernel.acct.by_env[env.id]["upcall"] == 3


STORM = f"""
PAGES equ 1000
BASE equ 0x10000000
PAGE_MASK equ ~(PAGE_SIZE - 1)
section .text
_start:
{SETUP_UPCALL}
    mov rbx, BASE
    mov r12, PAGES
touch:
    mov qword ptr [rbx], rbx        ; faults: the handler maps the page, then this runs again
    cmp qword ptr [rbx], rbx
    jne wrong
    add rbx, PAGE_SIZE
    dec r12
    jnz touch
    mov rbx, BASE                   ; read everything back, no faults now
    mov r12, PAGES
check:
    cmp qword ptr [rbx], rbx
    jne wrong
    add rbx, PAGE_SIZE
    dec r12
    jnz check
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
wrong:
    mov rdi, SCHED_EXIT
    mov rsi, 0x77
    call HC_SCHED_OP

handler:                            ; rdi = rsp = the UTrapframe
    mov r15, rdi
    cmp qword ptr [r15 + UTF_VECTOR], 0xe
    jne wrong
    mov rsi, qword ptr [r15 + UTF_FAULT_VA]
    and rsi, PAGE_MASK
    xor edi, edi
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz wrong
    mov rax, qword ptr [r15 + UTF_RSP]  ; push the saved rip on the trap-time stack
    sub rax, 0x8
    mov rcx, qword ptr [r15 + UTF_RIP]
    mov qword ptr [rax], rcx
    mov rbx, qword ptr [r15 + UTF_RBX]
    mov r12, qword ptr [r15 + UTF_R12]
    mov rsp, rax                    ; restore rsp last
    ret
{SETUP_FAILED}
"""


def test_fault_storm_of_1000_page_faults(app) -> None:
    b = boot(app("storm", STORM), app("witness", WITNESS))
    assert b.stdout == b"ok\n" and b.env("witness").exit_status == 0
    env = b.env("storm")
    assert env.fault is None and b.reports == []
    assert env.exit_status == 0
    acct = b.kernel.acct
    assert acct.transitions["upcall"] == 1000
    assert acct.transitions["trap"] == 1000
    assert acct.by_env[env.id]["trap"] == 1000
    assert acct.hypercalls["page_alloc"] == 1001  # the exception stack, then one per fault
