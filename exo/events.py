"""Waiting for events: event_wait, env_reap and env_notify (hypercalls 34, 35, 38).

A libOS that serves blocking calls of its own (a POSIX personality's pipes, wait4, nanosleep,
poll) needs one way to sleep until any of several things happens, and a way to be woken by a
peer. Xen gives a paravirtualised kernel the same pair: SCHEDOP_poll on a set of event channels
with a timeout, and EVTCHNOP_send to notify a peer (Xen interface, xen/include/public/sched.h
and event_channel.h). The sources are what exo has: the mailbox (EV_IPC), console input
(EV_CONSOLE), an ended child (EV_CHILD), the receive ring (EV_NET) and the doorbell (EV_NOTIFY).

An ended child leaves a record for its parent, as Unix's zombies do (its frames are already
free): {id, how, status, vector}; ``env_reap`` takes it. Without it a parent could not tell a
child that exited from one stopped by a fault.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import (
    EV_ALL,
    EV_CHILD,
    EV_CONSOLE,
    EV_IPC,
    EV_NET,
    EV_NOTIFY,
    REAP_DESTROYED,
    REAP_EXITED,
    REAP_FAULTED,
    REAP_INFO_SIZE,
    EnvStatus,
    Errno,
)
from exo.errors import HypercallError

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel

WAITING = "events"  # Env.blocked_on of an environment in event_wait
REAP_RECORD = struct.Struct("<QQqQ")  # struct reap_info { u64 id; u64 how; s64 status; u64 vector; }
assert REAP_RECORD.size == REAP_INFO_SIZE


def ready(k: Exokernel, env: Env, mask: int) -> int:
    """The bits of ``mask`` whose event is there for ``env`` now."""
    r = 0
    if mask & EV_IPC and env.mailbox is not None:
        r |= EV_IPC
    if mask & EV_CONSOLE and k.machine.console.ready():
        r |= EV_CONSOLE
    if mask & EV_CHILD and env.zombies:
        r |= EV_CHILD
    if mask & EV_NET and env.net is not None and env.net.event:
        r |= EV_NET
    if mask & EV_NOTIFY and env.notified:
        r |= EV_NOTIFY
    return r


def signal(k: Exokernel, env: Env, bits: int) -> None:
    """``bits`` happened for ``env``: wake it if it waits in event_wait for one of them."""
    if env.status == EnvStatus.BLOCKED and env.blocked_on == WAITING and env.wait_mask & bits:
        k.make_runnable(env)


def hc_event_wait(k: Exokernel, env: Env, mask: int, deadline: int) -> object:
    if mask & ~EV_ALL:
        raise HypercallError(Errno.EINVAL, f"unknown event bits {mask & ~EV_ALL:#x}")
    if not mask and not deadline:
        raise HypercallError(Errno.EINVAL, "nothing to wait for (no event and no deadline)")
    r = ready(k, env, mask)
    if r:
        env.wait_mask = 0
        if r & EV_NOTIFY:
            env.notified = False  # the doorbell is consumed by the wait that reports it
        if r & EV_NET:
            env.net.event = False  # as net_wait consumes it: the frames are in the ring
        return r
    if deadline and k.machine.clock.now_ns() >= deadline:
        env.wait_mask = 0
        return 0
    env.wait_mask = mask
    if deadline:
        return k.sleep_until(env, deadline, WAITING)  # the virtual clock jumps when nothing else runs
    return k.block_and_retry(env, WAITING)


def hc_env_notify(k: Exokernel, env: Env, envid: int) -> int:
    target = k.envs.get(envid)
    if target is None or not target.alive:
        raise HypercallError(Errno.ESRCH, f"no environment {envid}")
    if target.tenant is not env.tenant:
        raise HypercallError(Errno.EPERM, f"environment {envid} belongs to another app")
    target.notified = True
    signal(k, target, EV_NOTIFY)
    return 0


def hc_env_reap(k: Exokernel, env: Env, envid: int, info: int) -> int:
    env.space.user_chunks(info, REAP_INFO_SIZE, True)  # check before taking the record
    for i, record in enumerate(env.zombies):
        if envid in (0, record[0]):
            env.space.write(info, REAP_RECORD.pack(*record))
            del env.zombies[i]
            return record[0]
    if envid and envid not in env.children:
        raise HypercallError(Errno.ESRCH, f"environment {envid} is not a child of {env.id}")
    raise HypercallError(Errno.ECHILD, "no ended child to reap")


def child_ended(k: Exokernel, env: Env) -> None:
    """``env`` is being reclaimed: leave its record with its parent (if alive) and wake it."""
    parent = k.envs.get(env.parent) if env.parent else None
    if parent is None or not parent.alive or env.orphaned or env.is_server:
        return
    if env.fault is not None:
        record = (env.id, REAP_FAULTED, -1, env.fault_vector)
    elif env.exit_status is not None:
        record = (env.id, REAP_EXITED, env.exit_status, 0)
    else:
        record = (env.id, REAP_DESTROYED, -1, 0)
    parent.zombies.append(record)
    signal(k, parent, EV_CHILD)
