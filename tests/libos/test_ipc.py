"""The ipc libOS module (libos/ipc.py) and the primes app built on it.

Most tests boot two apps side by side: the first is environment 1 and runs
first, the second is environment 2. Both link ``[libos] ipc`` (and console
for output). The raw hypercalls are tested in tests/exo/test_ipc_hypercalls.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, boot

from exo.abi import PERM_R, PERM_W, EnvStatus, Errno
from exo.frames import EXO, FREE

IMPLS = ["jos", "poll"]
PRIMES = ROOT / "guest_apps" / "primes"


def first_primes(n: int) -> list[int]:
    out: list[int] = []
    k = 2
    while len(out) < n:
        if all(k % p for p in out):
            out.append(k)
        k += 1
    return out


def libos(impl: str = "jos") -> dict[str, str]:
    return {"ipc": impl, "console": "buffered"}


def clean_exit(env, status: int = 0) -> None:
    assert env.fault is None, env.fault
    assert env.exit_status == status
    assert env.status == EnvStatus.DEAD


def no_frame_held_by_an_env(k) -> bool:
    return all(o in (FREE, EXO) for o in k.frames.owner)


EXIT_RAX = """
    mov rdi, rax
    call LIB_CORE_EXIT
"""
EXIT_NEG_RAX = """
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT
"""


def exit_with(status: str) -> str:
    return f"""
    mov rdi, {status}
    call LIB_CORE_EXIT
"""


def send(envid: str, value: str, srcva: str = "0", perm: str = "0", entry: str = "SEND") -> str:
    return f"""
    mov rdi, {envid}
    mov rsi, {value}
    mov rdx, {srcva}
    mov rcx, {perm}
    call LIB_IPC_{entry}
"""


def recv(dstva: str = "0", entry: str = "RECV") -> str:
    """recv(dstva, &from, &perm), then printf("%d from %d perm %d\\n", value, from, perm)."""
    return f"""
    mov rdi, {dstva}
    lea rsi, [rip + from]
    lea rdx, [rip + perm]
    call LIB_IPC_{entry}
    mov rbx, rax
    lea rdi, [rip + fmt]
    mov rsi, rax
    mov rdx, qword ptr [rip + from]
    mov rcx, qword ptr [rip + perm]
    call LIB_CONSOLE_PRINTF
    mov rax, rbx
"""


DATA = """
section .rodata
fmt: db "%d from %d perm %d", 10, 0
section .data
from: dq 0x99
perm: dq 0x99
"""


def src(body: str, data: str = DATA) -> str:
    return f"section .text\n_start:\n{body}\n{data}"


def yields(n: int) -> str:
    return "".join("\n    call LIB_CORE_YIELD_CPU" for _ in range(n)) + "\n"


# ------------------------------------------------------------------- values
RX5 = src(f"""
    mov r12, 5
again:
{recv()}
    dec r12
    jnz again
{exit_with("0")}
""")

TX5 = src(f"""
    mov r12, 10
again:
{send("1", "r12")}
    test rax, rax
    jnz failed
    inc r12
    cmp r12, 15
    jne again
{exit_with("0")}
failed:
{EXIT_NEG_RAX}
""")


@pytest.mark.parametrize("impl", IMPLS)
def test_values_arrive_in_order_with_their_sender(app, impl: str) -> None:
    """tx sends 10..14 back to back: each send waits while the one-message mailbox is full."""
    b = boot(app("rx", RX5, libos=libos(impl)), app("tx", TX5, libos=libos(impl)))
    rx, tx = b.envs
    clean_exit(rx)
    clean_exit(tx)
    assert b.stdout == b"".join(b"%d from 2 perm 0\n" % v for v in range(10, 15))
    acct = b.kernel.acct
    sends = acct.hypercalls_of(tx.id)["ipc_try_send"]
    assert sends > 5  # the mailbox was full at times: the sender tried again after yielding
    again = boot(app("rx", RX5, libos=libos(impl)), app("tx", TX5, libos=libos(impl)))
    assert again.stdout == b.stdout
    assert again.kernel.acct.transitions == acct.transitions
    assert again.kernel.acct.hypercalls == acct.hypercalls


def test_blocking_and_polling_receivers_count_differently(app) -> None:
    """jos waits in the exokernel (an ipc_recv that blocks, rerun when woken); poll asks with
    NONBLOCK and yields. Same messages, exact and deterministic counts."""
    counts = {}
    for impl in IMPLS:
        b = boot(app("rx", RX5, libos=libos(impl)), app("tx", TX5, libos=libos(impl)))
        rx, tx = b.envs
        counts[impl] = (b.kernel.acct.hypercalls_of(rx.id), b.kernel.acct.hypercalls_of(tx.id))
    jos_rx, jos_tx = counts["jos"]
    poll_rx, poll_tx = counts["poll"]
    # Each receive that found the mailbox empty cost jos one blocked ipc_recv, poll one
    # ipc_recv (-EAGAIN) and one yield: so poll makes as many ipc_recv and more sched_op.
    assert jos_rx["ipc_recv"] == 5  # a receive that waits in the kernel is counted once
    assert poll_rx["ipc_recv"] > jos_rx["ipc_recv"]  # every empty poll is a hypercall
    assert jos_rx["sched_op"] == 1  # exit only
    assert poll_rx["sched_op"] == 1 + (poll_rx["ipc_recv"] - 5)
    assert jos_tx == poll_tx


def test_blocked_receiver_wakes_once_per_message(app) -> None:
    """rx waits before each message; tx yields between sends, so the mailbox is never full."""
    tx = src(f"""
    mov r12, 1
again:
{send("1", "r12")}
    test rax, rax
    jnz failed
{yields(1)}
    inc r12
    cmp r12, 6
    jne again
{exit_with("0")}
failed:
{EXIT_NEG_RAX}
""")
    b = boot(app("rx", RX5, libos=libos()), app("tx", tx, libos=libos()))
    rx, t = b.envs
    clean_exit(rx)
    clean_exit(t)
    assert b.stdout == b"".join(b"%d from 2 perm 0\n" % v for v in range(1, 6))
    acct = b.kernel.acct
    assert acct.hypercalls_of(rx.id)["ipc_recv"] == 5  # one each: a wait and its rerun count once
    assert acct.hypercalls_of(t.id)["ipc_try_send"] == 5  # never full
    assert acct.hypercalls_of(rx.id)["page_alloc"] == 2  # once each: the ipc info page, the console's


def test_try_send_on_full_mailbox_and_try_recv_on_empty(app) -> None:
    tx = src(f"""
{send("2", "7", entry="TRY_SEND")}
    test rax, rax
    jnz failed
{send("2", "8", entry="TRY_SEND")}
    cmp rax, -11
    jne failed
{exit_with("0")}
failed:
{exit_with("0x70")}
""")
    rx = src(f"""
{recv(entry="TRY_RECV")}
{recv(entry="TRY_RECV")}
{EXIT_NEG_RAX}
""")
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    t, r = b.envs
    clean_exit(t)
    clean_exit(r, Errno.EAGAIN)
    # The first message arrived; the empty mailbox gave -EAGAIN with from and perm cleared.
    assert b.stdout == b"7 from 1 perm 0\n-11 from 0 perm 0\n"
    assert b.kernel.acct.hypercalls_of(r.id)["sched_op"] == 1  # never waited: exit only


def test_sender_and_perm_entries(app) -> None:
    tx = src(send("2", "0x2a") + EXIT_RAX)
    rx = src("""
    xor edi, edi
    xor esi, esi
    xor edx, edx
    call LIB_IPC_RECV
    mov rbx, rax
    call LIB_IPC_SENDER
    shl rax, 8
    or rbx, rax
    call LIB_IPC_PERM
    shl rax, 16
    or rbx, rax
    mov rdi, rbx
    call LIB_CORE_EXIT
""")
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    clean_exit(b.envs[0])
    clean_exit(b.envs[1], 0x2A | 1 << 8)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_destinations(app, impl: str) -> None:
    """Nonexistent and dead environments: -ESRCH at once (send does not wait); oneself: -EINVAL."""
    sender = src(f"""
{send("0x63", "1")}
    cmp rax, -3
    jne failed
{send("1", "1")}
    cmp rax, -3
    jne failed
{send("2", "1")}
    cmp rax, -22
    jne failed
{exit_with("0")}
failed:
{exit_with("0x70")}
""")
    b = boot(app("gone", src(exit_with("0")), libos=libos(impl)), app("sender", sender, libos=libos(impl)))
    clean_exit(b.envs[0])
    clean_exit(b.envs[1])
    assert b.kernel.acct.hypercalls_of(2)["ipc_try_send"] == 3


def test_bad_result_pointer_loses_no_message(app) -> None:
    """recv with an unwritable from pointer fails with -EFAULT before it takes the message."""
    tx = src(send("2", "0x33") + EXIT_RAX)
    rx = src(f"""
    xor edi, edi
    lea rsi, [rip + fmt]            ; read-only
    xor edx, edx
    call LIB_IPC_RECV
    cmp rax, -14
    jne failed
{recv()}
{exit_with("0")}
failed:
{exit_with("0x70")}
""")
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    clean_exit(b.envs[0])
    clean_exit(b.envs[1])
    assert b.stdout == b"51 from 1 perm 0\n"


# -------------------------------------------------------------------- pages
PAGE_DATA = DATA + """
section .bss
page: resb 4096                     ; page aligned: the section starts a page
"""


def page_sender(perm: int) -> str:
    return src(f"""
    lea rbx, [rip + page]
    mov qword ptr [rbx + 0x8], 0x5a5a
    lea r12, [rip + page]
{send("2", "9", "r12", f"{perm:#x}")}
    test rax, rax
    jnz failed
{yields(3)}
    mov rdi, qword ptr [rbx + 0x10]     ; what the receiver wrote, if it could
    call LIB_CORE_EXIT
failed:
{EXIT_NEG_RAX}
""", PAGE_DATA)


PAGE_RECEIVER = src(f"""
{recv("0x700000")}
    mov rbx, 0x700000
    mov r12, qword ptr [rbx + 0x8]      ; the sender's data
    mov qword ptr [rbx + 0x10], 0x6b
probe:
    mov rdi, r12
    call LIB_CORE_EXIT
""")


@pytest.mark.parametrize("perm", [PERM_R, PERM_R | PERM_W])
def test_page_transfer(app, perm: int) -> None:
    b = boot(app("tx", page_sender(perm), libos=libos()), app("rx", PAGE_RECEIVER, libos=libos()))
    t, r = b.envs
    assert b.stdout == b"9 from 1 perm %d\n" % perm
    if perm & PERM_W:
        clean_exit(r, 0x5A5A)  # it read the sender's data...
        clean_exit(t, 0x6B)  # ...and the sender sees its write: one frame, shared
        assert b.reports == []
    else:
        [rep] = b.reports  # a read-only grant cannot be written
        assert rep.kind == "page fault (#PF)"
        assert (rep.fault_address, rep.error_code) == (0x700010, 7)
        assert r.fault == rep.summary
        clean_exit(t, 0)
    assert no_frame_held_by_an_env(b.kernel)


@pytest.mark.parametrize(("what", "errno"), [("rodata", Errno.EPERM), ("unaligned", Errno.EINVAL)])
def test_cannot_grant_more_rights_than_held(app, what: str, errno: Errno) -> None:
    """A read-only page sent writable: -EPERM (and send does not retry)."""
    srcva = "r12" if what == "rodata" else "r13"
    tx = src(f"""
    lea r12, [rip + fmt]                ; the rodata page: read-only
    lea r13, [rip + perm]                ; 8 bytes into the data page: not aligned
{send("2", "1", srcva, "PERM_R | PERM_W")}
{EXIT_NEG_RAX}
""")
    rx = src(recv(entry="TRY_RECV") + EXIT_NEG_RAX)
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    clean_exit(b.envs[0], errno)
    clean_exit(b.envs[1], Errno.EAGAIN)  # nothing was sent
    assert b.kernel.acct.hypercalls_of(1)["ipc_try_send"] == 1


@pytest.mark.parametrize("receives", [False, True])
def test_receiver_dying_with_a_page_in_its_mailbox_releases_the_frame(app, receives: bool) -> None:
    """tx sends a page of its bss and exits; rx exits without receiving it (or after receiving it).
    Either way no frame is left to any environment: free_count is the same in both runs."""
    tx = src(f"""
    lea rbx, [rip + page]
    mov qword ptr [rbx], 0x1
{send("2", "1", "rbx", "PERM_R")}
{EXIT_NEG_RAX}
""", PAGE_DATA)
    body = recv("0x700000") if receives else ""
    rx = src(f"""
{yields(2)}
{body}
{exit_with("0")}
""")
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    k = b.kernel
    clean_exit(b.envs[0])
    clean_exit(b.envs[1])
    assert not k.alive()
    assert no_frame_held_by_an_env(k)
    assert b.stdout == (b"1 from 1 perm 1\n" if receives else b"")
    free = {}
    for rcv in (False, True):
        body = recv("0x700000") if rcv else ""
        run = boot(app("tx", tx, libos=libos()), app("rx", src(yields(2) + body + exit_with("0")), libos=libos()))
        free[rcv] = run.kernel.frames.free_count
    assert free[False] == free[True] == k.frames.free_count


def test_message_in_flight_holds_its_frame(app) -> None:
    """While nobody has received it, the message alone keeps the sender's page alive."""
    tx = src(f"""
    lea rbx, [rip + page]
    mov qword ptr [rbx], 0x1
{send("2", "1", "rbx", "PERM_R")}
{EXIT_NEG_RAX}
""", PAGE_DATA)
    rx = src("""
    mov rdi, SCHED_BLOCK                ; wait for something else: never receives
    xor esi, esi
    call HC_SCHED_OP
""")
    b = boot(app("tx", tx, libos=libos()), app("rx", rx, libos=libos()))
    k = b.kernel
    t, r = b.envs
    clean_exit(t)
    frame = r.mailbox[2]
    assert k.frames.refs[frame] == 1 and k.frames.owner[frame] == t.id
    baseline = k.frames.free_count
    held = sum(1 for o in k.frames.owner if o == r.id)
    k.destroy(r, exit_status=None)
    assert k.frames.free_count == baseline + held + 1
    assert no_frame_held_by_an_env(k)


def test_ipc_declares_only_what_it_uses(app) -> None:
    src_ = """
section .text
_start:
    call HC_ENV_CREATE
    mov rdi, rax
    neg rdi
    call LIB_CORE_EXIT
"""
    b = boot(app("greedy", src_, libos={"ipc": "jos"}))
    clean_exit(b.envs[0], Errno.EPERM)
    allowed = b.envs[0].allowed
    assert {"ipc_try_send", "ipc_recv", "sched_op", "page_alloc"} <= allowed
    assert not allowed & {"env_create", "page_map", "page_unmap", "mmu_update", "console_write", "env_destroy"}


# --------------------------------------------------------------- with fork
FORK_PINGPONG = src(f"""
    call LIB_CORE_ENV_ID
    mov r15, rax                        ; the parent's id, inherited by the child
{recv(entry="TRY_RECV")}                ; nothing yet (-EAGAIN), but the info page is now mapped
    call LIB_MEMORY_FORK
    test rax, rax
    js failed
    jz child
    mov r14, rax
{send("r14", "0x77")}                   ; the child's first message
    test rax, rax
    jnz failed
{recv()}                                ; after the fork: the info page is copy-on-write now
    mov rdi, rax
    call LIB_CORE_EXIT
child:
{recv()}
    lea rsi, [rax + 0x100]
{send("r15", "rsi")}
{EXIT_NEG_RAX}
failed:
{EXIT_NEG_RAX}
""")


def test_send_and_recv_across_fork(app) -> None:
    """A receive after a fork works in both: the parent's info page became copy-on-write
    (fixed up or replaced), the child maps its own."""
    b = boot(app("pingpong", FORK_PINGPONG, libos={**libos(), "memory": "cow"}))
    k = b.kernel
    parent = b.envs[0]
    [cid] = parent.children
    clean_exit(parent, 0x177)
    clean_exit(k.envs[cid], 0)
    assert b.stdout == f"-11 from 0 perm 0\n119 from {parent.id} perm 0\n375 from {cid} perm 0\n".encode()
    assert no_frame_held_by_an_env(k)


# ------------------------------------------------------------------- primes
def pipeline_messages(n: int) -> int:
    """Messages the primes pipeline delivers: each number travels until the filter of its
    smallest prime factor (2..541), then the 0 goes through every filter."""
    primes = first_primes(n)
    total = 0
    for k in range(2, primes[-1] + 1):
        total += next(i for i, p in enumerate(primes) if k % p == 0) + 1
    return total + n


def test_primes_prints_the_first_100_primes() -> None:
    b = boot(PRIMES, max_instructions=None)
    assert b.stdout.decode().split("\n") == [str(p) for p in first_primes(100)] + [""]
    k = b.kernel
    assert b.reports == []
    assert not k.alive()
    envs = list(k.envs.values())
    assert len(envs) == 1 + 100  # the generator and one filter per prime
    for env in envs:
        clean_exit(env, 0)
    assert no_frame_held_by_an_env(k)
    h = k.acct.hypercalls
    delivered = pipeline_messages(100)
    assert delivered == 5945
    yields_ = h["sched_op"] - len(envs)  # all but the exits: a send that found the mailbox full
    assert h["ipc_try_send"] == delivered + yields_
    assert h["ipc_recv"] >= delivered


def test_primes_is_deterministic() -> None:
    first = boot(PRIMES, max_instructions=None)
    second = boot(PRIMES, max_instructions=None)
    assert first.stdout == second.stdout
    assert first.kernel.acct.transitions == second.kernel.acct.transitions
    assert first.kernel.acct.hypercalls == second.kernel.acct.hypercalls
    assert [e.instructions for e in first.kernel.envs.values()] == [
        e.instructions for e in second.kernel.envs.values()]


def test_primes_with_the_polling_ipc(tmp_path: Path) -> None:
    """The same binary linked with ipc = "poll": the same output, more hypercalls (every
    filter stays on the run queue and asks again each time it runs)."""
    app_dir = tmp_path / "primes"
    shutil.copytree(PRIMES, app_dir)
    toml = app_dir / "app.toml"
    toml.write_text(toml.read_text().replace('ipc = "jos"', 'ipc = "poll"'))
    poll = boot(app_dir, max_instructions=None)
    jos = boot(PRIMES, max_instructions=None)
    assert poll.stdout == jos.stdout
    assert all(e.exit_status == 0 and e.fault is None for e in poll.kernel.envs.values())
    hp, hj = poll.kernel.acct.hypercalls, jos.kernel.acct.hypercalls
    assert hp["ipc_try_send"] >= pipeline_messages(100)
    assert hp["ipc_recv"] > hj["ipc_recv"] and hp["sched_op"] > hj["sched_op"]
