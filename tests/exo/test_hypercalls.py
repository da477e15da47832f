"""The hypercalls' happy paths, one guest each (their misuse is in test_hostile.py).

Numbers in guest code are hex (see ``test_decimal_immediates_are_decimal``).
Children created with env_create run code shared from the parent's text page;
a child that has no stack makes its hypercalls with a direct ``syscall``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import WITNESS, boot

from exo.abi import INFO_PAGE, PAGE_SIZE, STACK_TOP, EnvStatus, Errno
from exo.build.image import build_image
from exo.build.manifest import load_manifest
from exo.frames import FREE

EXIT_NEG_RAX = """
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""


def exit_with(status: int) -> str:
    return f"""
    mov rdi, SCHED_EXIT
    mov rsi, {status:#x}
    call HC_SCHED_OP
"""


def symbols(appdir: Path) -> dict[str, int]:
    return build_image(load_manifest(appdir)).symbols


def clean_exit(env, status: int = 0) -> None:
    assert env.fault is None, env.fault
    assert env.exit_status == status
    assert env.status == EnvStatus.DEAD


# ------------------------------------------------------------------ simple ones
def test_env_id_returns_the_callers_id(app) -> None:
    src = """
section .text
_start:
    call HC_ENV_ID
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""
    b = boot(app("witness", WITNESS), app("whoami", src))
    env = b.env("whoami")
    assert env.id == 2
    clean_exit(env, 2)


def test_time_now_increases_with_guest_work(app) -> None:
    src = f"""
section .text
_start:
    call HC_TIME_NOW
    lea rbx, [rip + times]
    mov qword ptr [rbx], rax
    mov rcx, 0x1000
spin:
    dec rcx
    jnz spin
    call HC_TIME_NOW
    mov qword ptr [rbx + 0x8], rax
    mov rdi, rbx
    mov rsi, 0x10
    call HC_CONSOLE_WRITE
{exit_with(0)}
section .data
times: dq 0x0, 0x0
"""
    b = boot(app("clock", src))
    clean_exit(b.envs[0])
    t1, t2 = struct.unpack("<QQ", b.stdout)
    assert 0 < t1 < t2
    assert t2 - t1 >= 2 * 0x1000  # virtual clock: one ns per retired instruction


def test_page_alloc_gives_zeroed_writable_memory(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    xor edi, edi
    mov rsi, 0x7ff000
    mov rdx, PERM_R
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    mov rbx, 0x600000               ; every qword is zero, then holds what we write
    mov rcx, 0x200
zero:
    cmp qword ptr [rbx], 0x0
    jne not_zero
    mov qword ptr [rbx], rcx
    add rbx, 0x8
    dec rcx
    jnz zero
    mov rbx, 0x600000
    mov rcx, 0x200
readback:
    cmp qword ptr [rbx], rcx
    jne not_kept
    add rbx, 0x8
    dec rcx
    jnz readback
    mov rbx, 0x7ff000               ; the read-only page reads as zero too
    cmp qword ptr [rbx + 0xff8], 0x0
    jne not_zero
{exit_with(0)}
failed:
{EXIT_NEG_RAX}
not_zero:
{exit_with(0x71)}
not_kept:
{exit_with(0x72)}
"""
    b = boot(app("alloc", src))
    clean_exit(b.envs[0])


def test_page_alloc_over_a_mapping_replaces_it(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x1
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    mov rsi, qword ptr [rbx]        ; a new zeroed frame (the old one was released)
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{exit_with(0x70)}
"""
    b = boot(app("realloc", src))
    clean_exit(b.envs[0], 0)


def test_page_unmap_then_access_faults(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x1        ; the translation is now cached in the TLB
    xor edi, edi
    mov rsi, 0x600000
    call HC_PAGE_UNMAP
    test rax, rax
    jnz failed
    xor edi, edi
    mov rsi, 0x600000
    call HC_PAGE_UNMAP              ; nothing there any more: still 0
    test rax, rax
    jnz failed
bad:
    mov rax, qword ptr [rbx]
{exit_with(0x63)}
failed:
{EXIT_NEG_RAX}
"""
    a = app("unmap", src)
    b = boot(a, app("witness", WITNESS))
    assert b.stdout == b"ok\n"
    [r] = b.reports
    assert r.kind == "page fault (#PF)"
    assert (r.fault_address, r.error_code) == (0x600000, 4)
    assert r.rip == symbols(a)["bad"]
    assert b.env("unmap").fault == r.summary


def test_page_map_aliases_within_one_env(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    mov rbx, 0x600000
    mov qword ptr [rbx + 0x10], 0x5a
    xor edi, edi
    mov rsi, 0x600000
    xor edx, edx
    mov r10, 0x900000
    mov r8, PERM_R
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
    mov rcx, 0x900000
    mov qword ptr [rbx + 0x18], 0x6b    ; a write through one name...
    mov rsi, qword ptr [rcx + 0x10]
    add rsi, qword ptr [rcx + 0x18]     ; ...is seen through the other
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{EXIT_NEG_RAX}
"""
    b = boot(app("alias", src))
    clean_exit(b.envs[0], 0x5A + 0x6B)


# ---------------------------------------------------------------- mmu_update
def mmu_req(i: int, op: str, va: str, frame: str = "0x0", perm: str = "0x0") -> str:
    off = i * 0x20
    store_frame = (f"    mov qword ptr [rbx + {off + 0x10:#x}], {frame}" if frame.startswith("r")
                   else f"    mov rax, {frame}\n    mov qword ptr [rbx + {off + 0x10:#x}], rax")
    return f"""
    lea rbx, [rip + reqs]
    mov dword ptr [rbx + {off:#x}], {op}
    mov dword ptr [rbx + {off + 4:#x}], 0x0
    mov rax, {va}
    mov qword ptr [rbx + {off + 8:#x}], rax
{store_frame}
    mov rax, {perm}
    mov qword ptr [rbx + {off + 0x18:#x}], rax
"""


def alloc(va: str, perm: str = "PERM_R | PERM_W") -> str:
    return f"""
    xor edi, edi
    mov rsi, {va}
    mov rdx, {perm}
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
"""


MMU_PROLOGUE = f"""
section .text
_start:
{alloc("0x600000")}
{alloc("0x602000")}
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x5a5a
    mov rbx, 0x602000
    mov qword ptr [rbx], 0x7b7b
    mov rdi, 0x600000
    call HC_FRAME_OF
    test rax, rax
    js failed
    mov r12, rax
"""

MMU_DATA = """
section .data
reqs: times 0x10 dq 0x0
done: dq 0x99
"""


@pytest.mark.parametrize("probe", ["read_unmapped", "write_protected"])
def test_mmu_update_batch_applies_map_protect_unmap(app, probe: str) -> None:
    """MAP frame(A) at B read-only, PROTECT A read-only, UNMAP C: done = 3; B reads A's data,
    then a read of C or a write to A faults."""
    tail = {
        "read_unmapped": "mov rbx, 0x602000\nprobe:\n    mov rax, qword ptr [rbx]",
        "write_protected": "mov rbx, 0x600000\nprobe:\n    mov qword ptr [rbx], rax",
    }[probe]
    src = f"""
{MMU_PROLOGUE}
{mmu_req(0, "MMU_MAP", "0x601000", "r12", "PERM_R")}
{mmu_req(1, "MMU_PROTECT", "0x600000", perm="PERM_R")}
{mmu_req(2, "MMU_UNMAP", "0x602000")}
    lea rdi, [rip + reqs]
    mov rsi, 0x3
    lea rdx, [rip + done]
    call HC_MMU_UPDATE
    test rax, rax
    jnz failed
    lea rdi, [rip + done]
    mov rsi, 0x8
    call HC_CONSOLE_WRITE
    mov rbx, 0x601000
    cmp qword ptr [rbx], 0x5a5a
    jne failed
    mov rbx, 0x600000
    cmp qword ptr [rbx], 0x5a5a     ; still readable after PROTECT
    jne failed
    {tail}
{exit_with(0x63)}
failed:
{exit_with(0x70)}
{MMU_DATA}
"""
    a = app("mmu", src)
    b = boot(a)
    assert struct.unpack("<Q", b.stdout) == (3,)
    [r] = b.reports
    assert r.kind == "page fault (#PF)"
    assert r.rip == symbols(a)["probe"]
    if probe == "read_unmapped":
        assert (r.fault_address, r.error_code) == (0x602000, 4)
    else:
        assert (r.fault_address, r.error_code) == (0x600000, 7)


def test_mmu_update_stops_at_first_bad_request(app) -> None:
    src = f"""
{MMU_PROLOGUE}
{mmu_req(0, "MMU_MAP", "0x601000", "r12", "PERM_R")}
{mmu_req(1, "MMU_MAP", "0x603000", "0x1", "PERM_R")}
{mmu_req(2, "MMU_UNMAP", "0x600000")}
    lea rdi, [rip + reqs]
    mov rsi, 0x3
    lea rdx, [rip + done]
    call HC_MMU_UPDATE
    mov r13, rax
    lea rdi, [rip + done]
    mov rsi, 0x8
    call HC_CONSOLE_WRITE
    mov rbx, 0x601000               ; the first request was applied
    cmp qword ptr [rbx], 0x5a5a
    jne failed
    mov rbx, 0x600000               ; the third was not
    cmp qword ptr [rbx], 0x5a5a
    jne failed
    mov rax, r13
{EXIT_NEG_RAX}
failed:
{exit_with(0x70)}
{MMU_DATA}
"""
    b = boot(app("mmupart", src))
    assert struct.unpack("<Q", b.stdout) == (1,)
    clean_exit(b.envs[0], Errno.EPERM)


# ------------------------------------------------------------- environments
# The parent shares its text page (R+X) and rodata page (R) with child r12.
SHARE_WITH_CHILD = """
    xor edi, edi
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
    xor edi, edi
    lea rsi, [rip + msg]
    mov rdx, r12
    lea r10, [rip + msg]
    mov r8, PERM_R
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
"""

YIELD = """
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
"""

CHILD_PRINTS_AND_EXITS = """
child:                              ; RAX = 0 here; no stack: direct syscalls
    lea rdi, [rip + msg]
    mov rsi, MSG_LEN
    mov eax, NR_CONSOLE_WRITE
    syscall
    mov rdi, SCHED_EXIT
    xor esi, esi
    mov eax, NR_SCHED_OP
    syscall
"""


def test_env_create_returns_child_id_and_zero_in_child(app) -> None:
    src = f"""
MSG_LEN equ 6
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall                         ; the child resumes right after this, with RAX = 0
    test rax, rax
    jz child
    js failed
    mov r12, rax
{SHARE_WITH_CHILD}
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    test rax, rax
    jnz failed
{YIELD}
    mov rsi, r12                    ; exit with the child's id
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{exit_with(0x70)}
{CHILD_PRINTS_AND_EXITS}
section .rodata
msg: db "child", 10
"""
    b = boot(app("parent", src))
    parent = b.env("parent")
    [cid] = parent.children
    child = b.kernel.envs[cid]
    clean_exit(parent, cid)
    clean_exit(child, 0)
    assert child.parent == parent.id and child.name == "parent.1"
    assert b.stdout == b"child\n"


def test_env_set_entry_starts_child_on_its_own_stack(app) -> None:
    """The parent gives the child a stack page with page_alloc(child, ...) and sets its
    RIP/RSP with env_set_entry; the child then uses ordinary `call HC_*`."""
    src = f"""
section .text
_start:
    call HC_ENV_CREATE
    test rax, rax
    jle failed                      ; (the child never returns here: its entry is reset)
    mov r12, rax
{SHARE_WITH_CHILD}
    mov rdi, r12
    mov rsi, STACK_TOP - PAGE_SIZE
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    mov rdi, r12
    lea rsi, [rip + child_main]
    mov rdx, STACK_TOP
    call HC_ENV_SET_ENTRY
    test rax, rax
    jnz failed
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    test rax, rax
    jnz failed
{YIELD}
{exit_with(0)}
failed:
{exit_with(0x70)}

child_main:
    call say                        ; uses the stack
    call HC_ENV_ID
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
say:
    lea rdi, [rip + msg]
    mov rsi, 0x11
    call HC_CONSOLE_WRITE
    ret
section .rodata
msg: db "hello from child", 10
"""
    b = boot(app("spawner", src))
    parent = b.env("spawner")
    clean_exit(parent, 0)
    [cid] = parent.children
    clean_exit(b.kernel.envs[cid], cid)
    assert b.stdout == b"hello from child\n"


def test_page_map_shares_a_page_between_parent_and_child(app) -> None:
    src = f"""
section .text
_start:
{alloc("0x600000")}
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x50
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
    mov r12, rax
{SHARE_WITH_CHILD}
    xor edi, edi
    mov rsi, 0x600000
    mov rdx, r12
    mov r10, 0x600000
    mov r8, PERM_R | PERM_W
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    mov r13, 0x20
wait:
{YIELD}
    mov rbx, 0x600000
    cmp qword ptr [rbx + 0x8], 0x0
    jne answered
    dec r13
    jnz wait
{exit_with(0x71)}
answered:
    mov rsi, qword ptr [rbx + 0x8]
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{exit_with(0x70)}

child:
    mov rbx, 0x600000
    mov rax, qword ptr [rbx]        ; what the parent wrote...
    add rax, 0x1
    mov qword ptr [rbx + 0x8], rax  ; ...and an answer it will read
    mov rdi, SCHED_EXIT
    xor esi, esi
    mov eax, NR_SCHED_OP
    syscall
section .rodata
msg: db "unused"
"""
    b = boot(app("sharer", src))
    parent = b.env("sharer")
    clean_exit(parent, 0x51)
    clean_exit(b.kernel.envs[parent.children[0]], 0)


def reclaim_source(destroy: bool) -> str:
    destroy_code = """
    mov rdi, r12
    call HC_ENV_DESTROY
    test rax, rax
    jnz failed
    mov rdi, r12
    call HC_ENV_DESTROY             ; it is gone now
    cmp rax, NEG_ESRCH
    jne failed
""" if destroy else ""
    return f"""
NPAGES equ 5
NEG_ESRCH equ -ESRCH
section .text
_start:
    call HC_ENV_CREATE              ; the child is never made runnable
    test rax, rax
    jle failed
    mov r12, rax
    mov rbx, 0x600000
    mov r13, NPAGES
more:
    mov rdi, r12
    mov rsi, rbx
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    add rbx, PAGE_SIZE
    dec r13
    jnz more
{destroy_code}
    mov rdi, SCHED_BLOCK            ; stay alive (holding our own frames) until the end
    xor esi, esi
    call HC_SCHED_OP
failed:
{exit_with(0x70)}
"""


def test_env_destroy_reclaims_the_childs_frames(app) -> None:
    kept = boot(app("keeper", reclaim_source(destroy=False)))
    gone = boot(app("keeper", reclaim_source(destroy=True)))
    results = []
    for b in (kept, gone):
        parent = b.env("keeper")
        assert parent.exit_status is None and parent.alive
        assert parent.fault is not None and "blocked forever" in parent.fault
        [cid] = parent.children
        owned = sum(1 for o in b.kernel.frames.owner if o == cid)
        results.append((b.kernel.envs[cid], owned, b.kernel.frames.free_count))
    (child_kept, owned_kept, free_kept), (child_gone, owned_gone, free_gone) = results
    assert child_kept.status == EnvStatus.NOT_RUNNABLE
    assert owned_kept == 5 + len(child_kept.space.table_frames)  # the pages and its page tables
    assert child_gone.status == EnvStatus.DEAD and child_gone.exit_status is None
    assert owned_gone == 0
    assert child_gone.space.table_frames == [] and child_gone.space.pages == 0
    assert free_gone - free_kept == owned_kept


def test_destroyed_runnable_child_never_runs(app) -> None:
    src = f"""
MSG_LEN equ 6
section .text
_start:
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
    mov r12, rax
{SHARE_WITH_CHILD}
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
    mov rdi, r12
    call HC_ENV_DESTROY
    test rax, rax
    jnz failed
{YIELD}
{exit_with(0)}
failed:
{exit_with(0x70)}
{CHILD_PRINTS_AND_EXITS}
section .rodata
msg: db "child", 10
"""
    b = boot(app("killer", src))
    parent = b.env("killer")
    clean_exit(parent, 0)
    child = b.kernel.envs[parent.children[0]]
    assert child.status == EnvStatus.DEAD and child.instructions == 0
    assert b.stdout == b""


def test_everything_is_freed_when_all_envs_end(app) -> None:
    b = boot(app("keeper", reclaim_source(destroy=True).replace("mov rdi, SCHED_BLOCK", "mov rdi, SCHED_EXIT")),
             app("witness", WITNESS))
    k = b.kernel
    assert not k.alive()
    in_use = [f for f, o in enumerate(k.frames.owner) if o != FREE]
    reserved = k.machine.reserved_bytes // PAGE_SIZE
    assert in_use == [*range(reserved), k.hypercall_frame]  # the machine's and the hypercall page
    assert k.frames.free_count == len(k.frames.owner) - reserved - 1
    assert k.frames.refs[k.hypercall_frame] == 1


def test_env_destroy_self(app) -> None:
    src = f"""
section .text
_start:
    xor edi, edi
    call HC_ENV_DESTROY
{exit_with(0x63)}
"""
    b = boot(app("selfdestroy", src), app("witness", WITNESS))
    env = b.env("selfdestroy")
    assert env.status == EnvStatus.DEAD and env.exit_status is None and env.fault is None
    assert b.reports == [] and b.stdout == b"ok\n"


# ----------------------------------------------------------------- sched_op
@pytest.mark.parametrize(("operand", "status"), [("0x0", 0), ("0x2a", 42), ("-1", -1), ("0xffffffff", -1),
                                                 ("0x7fffffff", 0x7FFFFFFF)])
def test_sched_op_exit_status(app, operand: str, status: int) -> None:
    src = f"""
section .text
_start:
    mov rdi, SCHED_EXIT
    mov rsi, {operand}
    call HC_SCHED_OP
    ud2
"""
    b = boot(app("exiter", src))
    clean_exit(b.envs[0], status)
    assert b.reports == []


def test_decimal_immediates_are_decimal(app) -> None:
    src = """
section .text
_start:
    mov rdi, SCHED_EXIT
    mov rsi, 42
    call HC_SCHED_OP
"""
    b = boot(app("decimal", src))
    clean_exit(b.envs[0], 42)


def test_negated_constant_is_an_immediate(app) -> None:
    src = f"""
section .text
_start:
    mov rdi, 0x2
    call HC_ENV_DESTROY             ; not our child: -EPERM
    cmp rax, -EPERM
    jne wrong
{exit_with(0)}
wrong:
{exit_with(0x70)}
"""
    b = boot(app("negconst", src), app("witness", WITNESS))
    clean_exit(b.env("negconst"), 0)


def test_yield_interleaves_deterministically(app) -> None:
    def printer(letter: str) -> str:
        return f"""
section .text
_start:
    mov r12, 0x3
again:
    lea rdi, [rip + letter]
    mov rsi, 0x1
    call HC_CONSOLE_WRITE
{YIELD}
    dec r12
    jnz again
{exit_with(0)}
section .rodata
letter: db "{letter}"
"""

    apps = [app(name, printer(letter)) for name, letter in (("alpha", "A"), ("beta", "B"), ("gamma", "C"))]
    first = boot(*apps)
    second = boot(*apps)
    assert first.stdout == second.stdout == b"ABCABCABC"
    assert first.kernel.acct.transitions == second.kernel.acct.transitions
    for env in first.envs:
        clean_exit(env, 0)


def test_console_read_echo(app) -> None:
    src = f"""
section .text
_start:
more:
    lea rdi, [rip + buf]
    mov rsi, 0x3
    call HC_CONSOLE_READ
    test rax, rax
    jz eof
    js failed
    mov rsi, rax
    lea rdi, [rip + buf]
    call HC_CONSOLE_WRITE
    jmp more
eof:
{exit_with(0)}
failed:
{EXIT_NEG_RAX}
section .bss
buf: resb 0x10
"""
    b = boot(app("echo", src), stdin=b"hello, exo\n")
    clean_exit(b.envs[0], 0)
    assert b.stdout == b"hello, exo\n"
    assert b.kernel.acct.hypercalls["console_read"] == 5  # 4 reads of <= 3 bytes, then end of input


def test_sched_block_without_waker_is_reported(app) -> None:
    src = """
section .text
_start:
    mov rdi, SCHED_BLOCK
    xor esi, esi
    call HC_SCHED_OP
    ud2
"""
    b = boot(app("sleeper", src), app("witness", WITNESS))
    env = b.env("sleeper")
    assert b.stdout == b"ok\n"
    assert env.status == EnvStatus.BLOCKED and env.alive
    assert env.fault is not None and "blocked forever" in env.fault
    assert b.reports == []


def test_initial_state_argc_argv_and_stack(app) -> None:
    """At entry RDI = argc, RSI = argv (in the info page) and RSP = STACK_TOP."""
    src = f"""
section .text
_start:
    lea rbx, [rip + regs]
    mov qword ptr [rbx], rdi
    mov qword ptr [rbx + 0x8], rsi
    mov qword ptr [rbx + 0x10], rsp
    mov rax, qword ptr [rsi]
    mov qword ptr [rbx + 0x18], rax
    mov rdi, rbx
    mov rsi, 0x20
    call HC_CONSOLE_WRITE
{exit_with(0)}
section .data
regs: times 0x4 dq 0x0
"""
    b = boot(app("entry", src, args=["one", "two"]))
    argc, argv, rsp, argv0 = struct.unpack("<4Q", b.stdout)
    assert argc == 3 and rsp == STACK_TOP
    assert argv == INFO_PAGE + 8
    assert INFO_PAGE < argv0 < INFO_PAGE + PAGE_SIZE


def test_console_write_is_capped_at_1_mib(app) -> None:
    src = """
section .text
_start:
    lea rdi, [rip + big]
    mov rsi, 0x100100
    call HC_CONSOLE_WRITE
    mov rsi, rax
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
section .bss
big: resb 0x100100
"""
    b = boot(app("big", src))
    clean_exit(b.envs[0], 1 << 20)  # a short count
    assert b.stdout == bytes(1 << 20)


def test_code_read_from_console_runs(app) -> None:
    """Run `mov eax, 0x11; ret` written by the guest, then read `mov eax, 0x22; ret` over it
    with console_read and run it again: status 0x1122 expected."""
    src = f"""
section .text
_start:
{alloc("0x600000")}
    mov rbx, 0x600000
    mov byte ptr [rbx], 0xb8
    mov dword ptr [rbx + 0x1], 0x11
    mov byte ptr [rbx + 0x5], 0xc3
    mov rsi, PERM_R | PERM_X
    call protect
    call rbx
    mov r14, rax
    mov rsi, PERM_R | PERM_W
    call protect
    mov rdi, 0x600000
    mov rsi, 0x6
    call HC_CONSOLE_READ
    cmp rax, 0x6
    jne failed
    mov rsi, PERM_R | PERM_X
    call protect
    call rbx
    mov rsi, rax
    shl r14, 0x8
    or rsi, r14
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
protect:                            ; mmu_update PROTECT 0x600000 to perm rsi
    push rbx
{mmu_req(0, "MMU_PROTECT", "0x600000", perm="rsi")}
    lea rdi, [rip + reqs]
    mov rsi, 0x1
    xor edx, edx
    call HC_MMU_UPDATE
    pop rbx
    test rax, rax
    jnz failed
    ret
failed:
{exit_with(0x70)}
{MMU_DATA}
"""
    b = boot(app("loader", src), stdin=bytes.fromhex("b822000000c3"))
    clean_exit(b.envs[0], 0x1122)


def test_the_exokernels_translation_cache_never_outlives_a_mapping_change():
    """AddressSpace keeps translations for user-memory access: every change to the page tables empties it."""
    import pytest as _pytest

    from exo.errors import HypercallError
    from exo.frames import FrameType
    from exo.kernel import Exokernel
    from hw import Machine
    from hw.paging import PTE_NX, PTE_P, PTE_U, PTE_W

    k = Exokernel(Machine(8 << 20), on_fault=lambda r: None)
    env = k.create_env("t")
    space = env.space
    va = 0x5000_0000
    a, b = (k.frames.alloc(env.id, FrameType.NORMAL) for _ in range(2))
    space.map(va, a, PTE_P | PTE_U | PTE_W | PTE_NX)
    space.write(va, b"first")
    space.map(va, b, PTE_P | PTE_U | PTE_W | PTE_NX)  # another frame at the same address
    space.write(va, b"second")
    assert k.machine.memory.read(a << 12, 5) == b"first" and k.machine.memory.read(b << 12, 6) == b"second"
    space.protect(va, PTE_P | PTE_U | PTE_NX)  # read-only now
    assert space.read(va, 6) == b"second"
    with _pytest.raises(HypercallError):
        space.write(va, b"x")
    space.unmap(va)
    with _pytest.raises(HypercallError):
        space.read(va, 1)
