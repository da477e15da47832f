"""Snapshots and instances (exo/instances.py): an app frozen after its initialisation, waiting for
input; instances start where it waited, each with its own copies of what it may write."""

from __future__ import annotations

import io

import pytest
from conftest import make_app

from exo.abi import EnvStatus, Errno
from exo.errors import HypercallError
from exo.hypercalls import BY_NAME

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
    assert out.getvalue() == b"ABCDEFGHx\n" b"ABCDEFGHy\n" b"ABCDEFGHz\n"
    assert [e.exit_status for e in (a, b, c)] == [0, 0, 0]
    assert t.status == EnvStatus.NOT_RUNNABLE  # the template never runs again
    # and a later instance, started after the others wrote and exited, finds the same
    d = snap.start()
    k.run(max_instructions=100_000)
    _request(k, t, d, ord("w"))
    k.run(max_instructions=100_000)
    assert out.getvalue().endswith(b"ABCDEFGHw\n")


def test_an_instance_shares_read_only_pages_and_copies_the_rest(template):
    from exo.instances import Snapshot

    k, t, _ = template
    snap = Snapshot(k, t)
    free0 = k.frames.free_count
    a = snap.start()
    b = snap.start()
    per = (free0 - k.frames.free_count) / 2
    assert snap.shared_pages >= 2 and snap.private_pages >= 16 + 1  # code, info; stack, data
    for va, frame, _, private in snap.pages:
        fa, fb = a.space.lookup(va)[0], b.space.lookup(va)[0]
        if private:
            assert len({fa, fb, frame}) == 3 and k.frames.owner[fa] == a.id
        else:
            assert fa == fb == frame
    assert per >= snap.private_pages  # its copies, and its page tables


def test_starting_and_destroying_ten_thousand_instances_returns_every_frame(template):
    from exo.instances import Snapshot

    k, t, _ = template
    snap = Snapshot(k, t)
    free0 = k.frames.free_count
    for _ in range(100):
        live = [snap.start() for _ in range(100)]
        for e in live:
            k.destroy(e, 0)
    assert snap.started == 10_000 and k.frames.free_count == free0
    snap.release()
    assert not t.alive


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
    t.tenant.frame_limit = t.tenant.frames_used + 5  # not enough for another instance's copies
    frames = k.frames.free_count
    with pytest.raises(HypercallError, match="cannot start an instance"):
        snap.start()
    assert k.frames.free_count == frames  # the half-built instance gave back what it got


def test_a_running_environment_cannot_be_snapshotted(template):
    from exo.instances import Snapshot

    k, t, _ = template
    snap = Snapshot(k, t)
    k.destroy(t, 0)
    with pytest.raises(HypercallError, match="cannot be snapshotted"):
        Snapshot(k, t)
    assert snap.template is t


def test_a_networked_app_is_refused_with_a_reason():
    from conftest import ROOT

    from exo.api import System
    from exo.instances import Snapshot

    with System([str(ROOT / "guest_apps" / "udp_echo")], net="switch") as s:
        s.run(max_instructions=200_000)  # bound, waiting for a datagram
        env = s.envs[0]
        assert env.alive and env.net is not None
        with pytest.raises(HypercallError, match="network interface") as e:
            Snapshot(s.kernel, env)
        assert e.value.errno == Errno.EOPNOTSUPP and env.status == EnvStatus.BLOCKED  # left as it was
