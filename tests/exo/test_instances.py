"""Snapshots and instances (exo/instances.py): an app frozen after its initialisation, waiting for
input; instances start where it waited, each with its own copies of what it may write."""

from __future__ import annotations

import io

import pytest
from conftest import make_app

from exo.abi import EnvStatus, Errno
from exo.errors import HypercallError
from exo.hypercalls import BY_NAME
from hw.paging import PTE_W

# Initialises (fills `table` with 'A'..'H': its "configuration"), then waits in ipc_recv for a
# request: a value v. Answers "<table><v>\n" after writing v over the first byte of `table`
# (its own data), so that an instance that saw another's write would print it.
APP = """
section .text
_start:
    lea rdi, [rip + table]
    mov al, 'A'
    mov ecx, 8
fill:
    mov [rdi], al
    inc al
    inc rdi
    dec ecx
    jnz fill
    lea rdi, [rip + hello]
    mov rsi, 2
    call HC_CONSOLE_WRITE            ; initialised (once: the template; no instance says it)
    xor edi, edi
    lea rsi, [rip + info]
    xor edx, edx
    call HC_IPC_RECV                 ; the snapshot is taken here, waiting
    mov rax, [rip + info + 8]        ; the request's value
    lea rdi, [rip + table]
    mov rcx, [rip + table]
    mov [rip + seen], rcx            ; what this instance found, before its own write
    mov [rdi + 8], al
    mov byte ptr [rdi + 9], 10
    mov byte ptr [rdi], al           ; its own write
    lea rdi, [rip + seen]
    mov rsi, 8
    call HC_CONSOLE_WRITE
    lea rdi, [rip + table + 8]
    mov rsi, 2
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
hello: db "I", 10
section .data
table: times 16 db 0
seen: times 8 db 0
info: times 3 dq 0
"""


@pytest.fixture
def template(tmp_path):
    """A booted app run until it waits for its first request."""
    from exo.api import build
    from exo.kernel import Exokernel
    from exo.loader import spawn
    from hw import Machine

    _, image, _ = build(make_app(tmp_path, "zygote", APP))
    out = io.BytesIO()
    k = Exokernel(Machine(256 << 20, stdin=b"", stdout=out), on_fault=lambda r: None)
    env = spawn(k, image, share=True)
    k.run(max_instructions=100_000)
    assert env.status == EnvStatus.BLOCKED and env.blocked_on == "ipc"
    return k, env, out


def _request(k, sender, env, value: int) -> None:
    assert k.dispatch(sender, BY_NAME["ipc_try_send"], (env.id, value, 0, 0)) == 0


def test_instances_start_where_the_template_waited_and_see_only_their_own_writes(template):
    from exo.instances import Snapshot

    k, t, out = template
    snap = Snapshot(k, t)
    a, b, c = (snap.start() for _ in range(3))
    assert len({a.id, b.id, c.id, t.id}) == 4 and a.name == "zygote#1"
    k.run(max_instructions=100_000)  # each re-executes the ipc_recv it was snapshotted in, and waits
    assert all(e.status == EnvStatus.BLOCKED and e.blocked_on == "ipc" for e in (a, b, c))
    for e, v in ((b, ord("x")), (a, ord("y")), (c, ord("z"))):
        _request(k, t, e, v)
        k.run(max_instructions=100_000)
    # every instance found the template's initialised table, not another instance's write
    assert out.getvalue() == b"I\n" b"ABCDEFGHx\n" b"ABCDEFGHy\n" b"ABCDEFGHz\n"
    assert [e.exit_status for e in (a, b, c)] == [0, 0, 0]
    assert t.status == EnvStatus.NOT_RUNNABLE  # the template never runs again
    # and a later instance, started after the others wrote and exited, finds the same
    d = snap.start()
    k.run(max_instructions=100_000)
    _request(k, t, d, ord("w"))
    k.run(max_instructions=100_000)
    assert out.getvalue().endswith(b"ABCDEFGHw\n")


def test_an_instance_copies_a_page_when_it_first_writes_it(template):
    from exo.instances import Snapshot

    k, t, out = template
    snap = Snapshot(k, t)
    free0 = k.frames.free_count
    a = snap.start()
    b = snap.start()
    assert snap.shared_pages >= 2 and snap.private_pages >= 16 + 1  # code, info; stack, data
    private = {va for va, _, _, p in snap.pages if p}
    for e in (a, b):  # at its start an instance owns its page tables only: every page is the template's
        assert set(e.space.cow) == private
        assert all(e.space.lookup(va)[0] == f for va, f, _, _ in snap.pages)
        assert not any(e.space.lookup(va)[1] & PTE_W for va in private)
    assert free0 - k.frames.free_count == len(a.space.table_frames) + len(b.space.table_frames)
    traps0 = k.acct.transitions["trap"]
    k.run(max_instructions=100_000)
    _request(k, t, a, ord("q"))
    k.run(max_instructions=100_000)
    assert out.getvalue() == b"I\nABCDEFGHq\n"
    # a ran: the pages it wrote (its data by the exokernel's ipc_recv, its stack by its own calls)
    # became its own; the rest are still the template's, and b, which only waited, has copied nothing
    # but the stack page its ipc_recv call pushed a return address on
    assert a.exit_status == 0
    assert k.acct.transitions["trap"] > traps0  # the CPU's own writes: a #PF into the exokernel each
    written_by_b = private - set(b.space.cow)
    assert 1 <= len(written_by_b) < len(private)
    for va in written_by_b:
        f, flags = b.space.lookup(va)
        assert k.frames.owner[f] == b.id and flags & PTE_W
    for va in b.space.cow:
        assert k.frames.owner[b.space.lookup(va)[0]] == t.id


def test_starting_and_destroying_ten_thousand_instances_returns_every_frame(template):
    from exo.instances import Snapshot

    k, t, _ = template
    snap = Snapshot(k, t)
    free0, records, owners = k.frames.free_count, len(k.envs), len(k.tenants.by_owner)
    for _ in range(100):
        live = [snap.start() for _ in range(100)]
        assert len(k.envs) == records + 100
        for e in live:
            k.destroy(e, 0)
    assert snap.started == 10_000 and k.frames.free_count == free0
    assert len(k.envs) == records and len(k.live_envs) == 1  # ended instances leave no record behind
    # ...nor an owner entry, nor counts of their own: those are the template's now, the totals kept
    assert len(k.tenants.by_owner) == owners
    totals = k.acct.transitions
    by_env = k.acct.by_env
    assert set(by_env) == set(k.envs) and sum(sum(c.values()) for c in by_env.values()) == sum(totals.values())
    before = by_env[t.id]["context_switch"]
    ran = [snap.start() for _ in range(3)]
    k.run(max_instructions=100_000)  # each runs (to its waiting call again): a context switch each
    for e in ran:
        k.destroy(e, 0)
    assert k.acct.by_env[t.id]["context_switch"] == before + 3 and set(k.acct.by_env) == set(k.envs)
    snap.release()
    assert not t.alive
    with pytest.raises(HypercallError, match="released") as e:
        snap.start()  # and nothing is left half-made
    assert e.value.errno == Errno.EINVAL and k.frames.free_count >= free0 and len(k.live_envs) == 0


def test_the_app_quota_bounds_its_instances_and_a_refusal_is_clear(template):
    from exo.instances import Snapshot

    k, t, _ = template
    t.tenant.env_limit = 3  # the template and two instances
    snap = Snapshot(k, t)
    snap.start()
    snap.start()
    with pytest.raises(HypercallError) as e:
        snap.start()
    assert e.value.errno == Errno.EAGAIN and "env quota" in str(e.value)
    t.tenant.env_limit = 100
    t.tenant.frame_limit = t.tenant.frames_used  # not even for another instance's page tables
    frames = k.frames.free_count
    with pytest.raises(HypercallError):
        snap.start()
    assert k.frames.free_count == frames  # the half-built instance gave back what it got


def test_an_ended_environment_or_a_child_cannot_be_snapshotted(template):
    from exo.instances import Snapshot

    k, t, _ = template
    child = k.create_env("child", t)  # a child: its parent could run it again under its instances
    with pytest.raises(HypercallError, match="is a child of") as e:
        Snapshot(k, child)
    assert e.value.errno == Errno.EPERM
    snap = Snapshot(k, t)
    k.destroy(t, 0)
    with pytest.raises(HypercallError, match="cannot be snapshotted"):
        Snapshot(k, t)
    assert snap.template is t


def test_sharing_a_copy_on_write_page_shares_the_instances_own_copy(template):
    from exo.abi import PERM_R, PERM_W
    from exo.instances import Snapshot

    k, t, _ = template
    snap = Snapshot(k, t)
    a = snap.start()
    va = next(va for va, _, flags, private in snap.pages if private and va < 0x1000_0000)  # its .data
    tframe = t.space.lookup(va)[0]
    assert va in a.space.cow
    assert k.dispatch(a, BY_NAME["page_map"], (0, va, 0, 0x6000_0000, PERM_R | PERM_W)) == 0
    mine = a.space.lookup(va)[0]
    assert va not in a.space.cow and mine != tframe and k.frames.owner[mine] == a.id
    assert a.space.lookup(0x6000_0000)[0] == mine  # the alias is of its own copy, writable
    assert t.space.lookup(va)[0] == tframe  # the template's page is untouched


def test_a_copy_on_write_fault_with_no_frame_left_stops_that_instance_alone(template):
    from exo.instances import Snapshot

    k, t, out = template
    snap = Snapshot(k, t)
    a = snap.start()
    t.tenant.frame_limit = t.tenant.frames_used  # its first write will find no frame for the copy
    k.run(max_instructions=100_000)
    assert a.fault is not None and "user write of a protected page" in a.fault, a.fault
    report = next(r for r in k.reports if r.env_id == a.id)
    assert "out of memory for its copy of a copy-on-write page" in report.render()
    assert not a.alive and t.status == EnvStatus.NOT_RUNNABLE
    t.tenant.frame_limit += 100
    b = snap.start()  # the next instance is fine
    k.run(max_instructions=100_000)
    _request(k, t, b, ord("r"))
    k.run(max_instructions=100_000)
    assert out.getvalue() == b"I\nABCDEFGHr\n" and b.exit_status == 0
