"""The IPC hypercalls, raw (no libOS): ipc_try_send and ipc_recv with their one-message mailbox.

Most tests boot two apps side by side: the first gets environment id 1, the
second id 2, and the first runs first (round robin). Numbers in guest code
are hex, negated constants are spelled ``NEG_X equ -X`` (test_hostile.py).
"""

from __future__ import annotations

import struct

import pytest
from conftest import boot

from exo.abi import PAGE_SIZE, PERM_R, PERM_W, EnvStatus, Errno
from exo.frames import FREE

CONSTS = """
NEG_EAGAIN equ -EAGAIN
NEG_ESRCH equ -ESRCH
NEG_EPERM equ -EPERM
NEG_EINVAL equ -EINVAL
NEG_EFAULT equ -EFAULT
NONBLOCK equ 0x1  ; IpcFlag.NONBLOCK (not among the predefined constants)
"""


def exit_with(status: str) -> str:
    return f"""
    mov rdi, SCHED_EXIT
    mov rsi, {status}
    call HC_SCHED_OP
"""


EXIT_NEG_RAX = """
    mov rsi, rax
    neg rsi
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
"""

YIELD = """
    mov rdi, SCHED_YIELD
    xor esi, esi
    call HC_SCHED_OP
"""


def send(envid: str, value: str, srcva: str = "0x0", perm: str = "0x0") -> str:
    return f"""
    mov rdi, {envid}
    mov rsi, {value}
    mov rdx, {srcva}
    mov r10, {perm}
    call HC_IPC_TRY_SEND
"""


def recv(dstva: str = "0x0", flags: str = "0x0") -> str:
    return f"""
    mov rdi, {dstva}
    lea rsi, [rip + info]
    mov rdx, {flags}
    call HC_IPC_RECV
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


INFO = """
section .data
info: dq 0x0, 0x0, 0x0
"""

# The receiver's info buffer, written out: {from, value, perm}.
WRITE_INFO = """
    lea rdi, [rip + info]
    mov rsi, 0x18
    call HC_CONSOLE_WRITE
"""


def src(body: str, data: str = INFO) -> str:
    return f"{CONSTS}\nsection .text\n_start:\n{body}\n{data}"


def clean_exit(env, status: int = 0) -> None:
    assert env.fault is None, env.fault
    assert env.exit_status == status
    assert env.status == EnvStatus.DEAD


def infos(stdout: bytes) -> list[tuple[int, int, int]]:
    return [struct.unpack_from("<QQQ", stdout, i) for i in range(0, len(stdout), 24)]


def all_frames_free(k) -> bool:
    reserved = k.machine.reserved_bytes // PAGE_SIZE
    return k.frames.free_count == len(k.frames.owner) - reserved - 1  # all but the hypercall page


# ------------------------------------------------------------------- values
def test_value_passing_and_a_blocked_receiver_wakes(app) -> None:
    """rx (id 1) runs first and waits in ipc_recv; tx (id 2) sends; rx wakes with {2, value, 0}."""
    rx = src(f"""
{recv()}
    test rax, rax
    jnz failed
{WRITE_INFO}
{exit_with("0x0")}
failed:
{EXIT_NEG_RAX}
""")
    tx = src(f"""
{send("0x1", "0x1234abcd")}
{EXIT_NEG_RAX}
""")
    b = boot(app("rx", rx), app("tx", tx))
    r, t = b.envs
    clean_exit(r)
    clean_exit(t)
    assert infos(b.stdout) == [(t.id, 0x1234ABCD, 0)]
    acct = b.kernel.acct
    # It waited (the `syscall` is made again when woken; a retried hypercall is counted once).
    assert acct.hypercalls_of(r.id)["ipc_recv"] == 1
    assert acct.by_env[r.id]["context_switch"] == 2  # ran, waited, ran again when woken
    assert acct.hypercalls_of(t.id)["ipc_try_send"] == 1
    again = boot(app("rx", rx), app("tx", tx))
    assert again.stdout == b.stdout
    assert again.kernel.acct.transitions == acct.transitions


def test_message_left_before_the_receiver_asks(app) -> None:
    """The mailbox keeps a message for a receiver that has not called ipc_recv yet."""
    tx = src(f"""
{send("0x2", "0x77")}
{EXIT_NEG_RAX}
""")
    rx = src(f"""
{recv()}
    test rax, rax
    jnz failed
{WRITE_INFO}
{exit_with("0x0")}
failed:
{EXIT_NEG_RAX}
""")
    b = boot(app("tx", tx), app("rx", rx))
    t, r = b.envs
    clean_exit(t)
    clean_exit(r)
    assert infos(b.stdout) == [(1, 0x77, 0)]
    assert b.kernel.acct.hypercalls_of(r.id)["ipc_recv"] == 1
    assert b.kernel.acct.by_env[r.id]["context_switch"] == 1  # it never waited


def test_full_mailbox_is_eagain_and_nonblocking_recv_on_empty_is_eagain(app) -> None:
    tx = src(f"""
{send("0x2", "0x1")}
    test rax, rax
    jnz failed
{send("0x2", "0x2")}
    cmp rax, NEG_EAGAIN
    jne failed
{exit_with("0x0")}
failed:
{exit_with("0x70")}
""")
    rx = src(f"""
{recv(flags="NONBLOCK")}
    test rax, rax
    jnz failed
{WRITE_INFO}
{recv(flags="NONBLOCK")}
    cmp rax, NEG_EAGAIN
    jne failed
{exit_with("0x0")}
failed:
{exit_with("0x70")}
""")
    b = boot(app("tx", tx), app("rx", rx))
    t, r = b.envs
    clean_exit(t)
    clean_exit(r)
    assert infos(b.stdout) == [(1, 1, 0)]  # the first message; the second was refused


def test_bad_destinations(app) -> None:
    """Nonexistent (ESRCH), dead (ESRCH) and oneself (EINVAL)."""
    first = src(exit_with("0x0"))
    second = src(f"""
{send("0x63", "0x1")}
    cmp rax, NEG_ESRCH
    jne failed
{send("0x1", "0x1")}
    cmp rax, NEG_ESRCH
    jne failed
{send("0x2", "0x1")}
    cmp rax, NEG_EINVAL
    jne failed
{exit_with("0x0")}
failed:
{exit_with("0x70")}
""")
    b = boot(app("gone", first), app("sender", second))
    clean_exit(b.envs[0])
    clean_exit(b.envs[1])


def test_recv_with_a_bad_info_pointer_keeps_the_message(app) -> None:
    tx = src(f"""
{send("0x2", "0x55")}
{EXIT_NEG_RAX}
""")
    rx = src(f"""
    xor edi, edi
    mov rsi, 0x600000               ; unmapped
    xor edx, edx
    call HC_IPC_RECV
    cmp rax, NEG_EFAULT
    jne failed
    xor edi, edi
    lea rsi, [rip + ro]             ; read-only
    xor edx, edx
    call HC_IPC_RECV
    cmp rax, NEG_EFAULT
    jne failed
    mov rdi, 0x600800               ; dstva not page aligned
    lea rsi, [rip + info]
    xor edx, edx
    call HC_IPC_RECV
    cmp rax, NEG_EINVAL
    jne failed
{recv()}
    test rax, rax
    jnz failed
{WRITE_INFO}
{exit_with("0x0")}
failed:
{exit_with("0x70")}
""", INFO + "section .rodata\nro: dq 0x0, 0x0, 0x0\n")
    b = boot(app("tx", tx), app("rx", rx))
    clean_exit(b.envs[0])
    clean_exit(b.envs[1])
    assert infos(b.stdout) == [(1, 0x55, 0)]


def test_blocked_receiver_without_sender_is_reported(app) -> None:
    b = boot(app("lonely", src(recv() + exit_with("0x0"))))
    env = b.envs[0]
    assert env.status == EnvStatus.BLOCKED and env.alive
    assert env.fault is not None and "waiting for ipc" in env.fault


# -------------------------------------------------------------------- pages
PAGE_SENDER = f"""
{alloc("0x600000")}
    mov rbx, 0x600000
    mov qword ptr [rbx + 0x8], 0x5a5a
{{send}}
    test rax, rax
    jnz failed
{YIELD}
{YIELD}
    mov rsi, qword ptr [rbx + 0x10]     ; what the receiver wrote (if it could)
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{EXIT_NEG_RAX}
"""


def page_receiver(write: bool) -> str:
    poke = """
    mov qword ptr [rbx + 0x10], 0x6b
probe:
""" if write else ""
    return src(f"""
{recv("0x700000")}
    test rax, rax
    jnz failed
{WRITE_INFO}
    mov rbx, 0x700000
    mov rsi, qword ptr [rbx + 0x8]      ; the sender's data
{poke}
    mov rdi, SCHED_EXIT
    call HC_SCHED_OP
failed:
{exit_with("0x70")}
""")


@pytest.mark.parametrize("perm", [PERM_R, PERM_R | PERM_W])
def test_page_transfer(app, perm: int) -> None:
    tx = src(PAGE_SENDER.format(send=send("0x2", "0x9", "0x600000", f"{perm:#x}")))
    b = boot(app("tx", tx), app("rx", page_receiver(write=True)))
    t, r = b.envs
    assert infos(b.stdout) == [(t.id, 9, perm)]
    if perm & PERM_W:
        clean_exit(r, 0x5A5A)
        clean_exit(t, 0x6B)  # the same frame: the sender sees the receiver's write
        assert b.reports == []
    else:
        [rep] = b.reports  # a read-only grant cannot be written
        assert rep.kind == "page fault (#PF)"
        assert (rep.fault_address, rep.error_code) == (0x700010, 7)
        assert r.fault == rep.summary
        clean_exit(t, 0)
    assert all_frames_free(b.kernel)


def test_page_dropped_when_the_receiver_names_no_dstva(app) -> None:
    tx = src(PAGE_SENDER.format(send=send("0x2", "0x9", "0x600000", "PERM_R")))
    rx = src(f"""
{recv()}
    test rax, rax
    jnz failed
{WRITE_INFO}
    mov rbx, 0x700000
    mov rax, qword ptr [rbx]            ; nothing was mapped
{exit_with("0x0")}
failed:
{exit_with("0x70")}
""")
    b = boot(app("tx", tx), app("rx", rx))
    t, r = b.envs
    assert infos(b.stdout) == [(t.id, 9, 0)]  # perm 0: no page arrived
    [rep] = b.reports
    assert rep.fault_address == 0x700000 and r.fault == rep.summary
    assert all_frames_free(b.kernel)


@pytest.mark.parametrize(("mapping", "srcva", "perm", "errno"), [
    ("PERM_R", "0x600000", "PERM_R | PERM_W", Errno.EPERM),  # more rights than the sender has
    ("PERM_R | PERM_W", "0x600000", "PERM_R | PERM_X", Errno.EPERM),  # execute on an NX page
    ("PERM_R | PERM_W", "0x600000", "PERM_R | PERM_W | PERM_X", Errno.EINVAL),  # W^X
    ("PERM_R | PERM_W", "0x600000", "0x0", Errno.EINVAL),  # no read permission
    ("PERM_R | PERM_W", "0x601000", "PERM_R", Errno.EINVAL),  # nothing mapped there
    ("PERM_R | PERM_W", "0x600800", "PERM_R", Errno.EINVAL),  # not page aligned
    ("PERM_R | PERM_W", "HYPERCALL_PAGE", "PERM_R", Errno.EPERM),  # the exokernel's page
])
def test_page_send_refused(app, mapping: str, srcva: str, perm: str, errno: Errno) -> None:
    tx = src(f"""
{alloc("0x600000", mapping)}
{send("0x2", "0x1", srcva, perm)}
{EXIT_NEG_RAX}
failed:
{exit_with("0x70")}
""")
    rx = src(f"""
{recv(flags="NONBLOCK")}
{EXIT_NEG_RAX}
""")
    b = boot(app("tx", tx), app("rx", rx))
    t, r = b.envs
    clean_exit(t, errno)
    clean_exit(r, Errno.EAGAIN)  # nothing was left in the mailbox


# ------------------------------------------------------- frames in flight
def mailbox_page_src(receiver_exits: bool) -> tuple[str, str]:
    """tx sends a page to rx, unmaps its own mapping and exits: the message holds the last reference."""
    tx = src(f"""
{alloc("0x600000")}
    mov rbx, 0x600000
    mov qword ptr [rbx], 0x1
{send("0x2", "0x1", "0x600000", "PERM_R")}
    test rax, rax
    jnz failed
    xor edi, edi
    mov rsi, 0x600000
    call HC_PAGE_UNMAP
{exit_with("0x0")}
failed:
{EXIT_NEG_RAX}
""")
    end = exit_with("0x0") if receiver_exits else """
    mov rdi, SCHED_BLOCK
    xor esi, esi
    call HC_SCHED_OP
"""
    rx = src(f"""
{YIELD}
{end}
""")
    return tx, rx


def test_receiver_dying_with_a_page_in_its_mailbox_releases_the_frame(app) -> None:
    tx, rx = mailbox_page_src(receiver_exits=True)
    b = boot(app("tx", tx), app("rx", rx))
    k = b.kernel
    assert not k.alive()
    assert all_frames_free(k)
    assert all(o == FREE for o in k.frames.owner[k.hypercall_frame + 1:])


def test_message_holds_its_frame_until_the_receiver_is_destroyed(app) -> None:
    tx, rx = mailbox_page_src(receiver_exits=False)
    b = boot(app("tx", tx), app("rx", rx))
    k = b.kernel
    t, r = b.envs
    clean_exit(t)
    assert r.alive and r.mailbox is not None
    frame = r.mailbox[2]
    assert k.frames.refs[frame] == 1 and k.frames.owner[frame] == t.id  # only the message holds it
    before = k.frames.free_count
    mine = sum(1 for o in k.frames.owner if o == r.id)
    k.destroy(r, exit_status=None)
    assert k.frames.free_count == before + mine + 1
    assert all_frames_free(k)


# --------------------------------------------------------- parent and child
def test_child_made_by_hand_sends_to_its_parent(app) -> None:
    """A child made with env_create/page_alloc/env_set_entry sends its id + 1; the parent blocks for it."""
    parent = src(f"""
    call HC_ENV_CREATE
    test rax, rax
    jle failed
    mov r12, rax
    xor edi, edi                    ; share the text page (R+X)
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    test rax, rax
    jnz failed
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
{recv()}
    test rax, rax
    jnz failed
{WRITE_INFO}
{exit_with("0x0")}
failed:
{EXIT_NEG_RAX}

child_main:
    call HC_ENV_ID
    lea rsi, [rax + 0x1]
    mov rdi, 0x1
    xor edx, edx
    xor r10, r10
    call HC_IPC_TRY_SEND
{EXIT_NEG_RAX}
""")
    b = boot(app("parent", parent))
    p = b.envs[0]
    [cid] = p.children
    clean_exit(p)
    clean_exit(b.kernel.envs[cid])
    assert infos(b.stdout) == [(cid, cid + 1, 0)]


def test_destroyed_waiting_receiver_cannot_be_sent_to(app) -> None:
    """A parent destroys its child while the child waits in ipc_recv: sending to it is then ESRCH."""
    parent = src(f"""
    mov eax, NR_ENV_CREATE
    syscall
    test rax, rax
    jz child
    js failed
    mov r12, rax
    xor edi, edi
    lea rsi, [rip + _start]
    mov rdx, r12
    lea r10, [rip + _start]
    mov r8, PERM_R | PERM_X
    call HC_PAGE_MAP
    mov rdi, r12                    ; a page for the child's info buffer
    mov rsi, STACK_TOP - PAGE_SIZE
    mov rdx, PERM_R | PERM_W
    call HC_PAGE_ALLOC
    test rax, rax
    jnz failed
    mov rdi, r12
    mov rsi, ENV_RUNNABLE
    call HC_ENV_SET_STATUS
{YIELD}
    mov rdi, r12
    call HC_ENV_DESTROY
    test rax, rax
    jnz failed
{send("r12", "0x1")}
{EXIT_NEG_RAX}
failed:
{exit_with("0x70")}

child:                              ; no stack: direct syscalls; it waits for good
    xor edi, edi
    mov rsi, STACK_TOP - 0x18
    xor edx, edx
    mov eax, NR_IPC_RECV
    syscall
    ud2
""")
    b = boot(app("parent", parent))
    p = b.envs[0]
    clean_exit(p, Errno.ESRCH)
    child = b.kernel.envs[p.children[0]]
    assert child.status == EnvStatus.DEAD and child.fault is None
    assert all_frames_free(b.kernel)
