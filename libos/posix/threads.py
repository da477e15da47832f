"""Threads: clone(CLONE_VM|CLONE_THREAD) and futex, as user-level threads of one process.

A Linux thread shares its process's address space; an exo environment is one address space and
one vCPU context, so a process's threads are contexts the libOS switches inside its environment
(M:1, as the first exokernel libOSes and GNU Pth did): each thread's registers, FPU image
(``port.fpu_save``), FS base (the TLS pointer, set with the hypercall env_set_fsbase) and
clear-child-tid address are kept here while another runs. The exokernel schedules the
environment; this module schedules its threads:

* ``futex(FUTEX_WAIT)`` on a word that still holds the expected value blocks the thread; another
  runnable thread runs (``port.resume``). ``FUTEX_WAKE`` makes up to N waiters runnable, first
  come first woken. A wait with a timeout ends with -ETIMEDOUT at its deadline (guest time).
* A thread whose call would block (a pipe read, wait4, nanosleep) while another thread can run
  is parked: it runs that call again when it is next scheduled, so one thread's wait does not
  stop the others. When no thread can run, the environment waits (event_wait) in the current
  thread's call, with the earliest futex deadline; whatever wakes it makes every parked thread
  runnable again.
* ``exit`` of a thread clears and wakes its clear-child-tid word (pthread_join waits on it) and
  runs another thread; the last thread's ``exit`` ends the process, as ``exit_group`` does.
* ``sched_yield`` runs the next runnable thread.

Limits (docs/posix.md): threads switch only at those calls, not on a timer, so a thread that
spins on memory another thread must change never sees the change; a signal is handled by the
thread that is running; a fork copies only the calling thread.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exo.abi import FSBASE_FS
from libos.posix.system import WouldBlock
from libos.posix.table import EAGAIN, EFAULT, EINVAL, ENOSYS, ETIMEDOUT, syscall

if TYPE_CHECKING:
    from libos.posix import Posix
    from libos.posix.system import Process

FUTEX_WAIT, FUTEX_WAKE, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE = 0, 1, 3, 4
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD = 0x100, 0x200, 0x400, 0x800, 0x10000
CLONE_SETTLS, CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x80000, 0x100000, 0x200000, 0x1000000
FIRST_TID = 100_000  # thread ids above every environment id a run makes (pids are env ids)
_MASK = (1 << 64) - 1


@dataclass
class Thread:
    tid: int
    regs: dict[str, int] | None = None  # saved context (None: it is the running thread)
    fpu: bytes = b""
    fs_base: int = 0
    clear_tid: int = 0
    futex: int = 0  # the word it waits on (0: not waiting on a futex)
    deadline: int = 0  # guest ns at which its futex wait times out (0: none)
    parked: bool = False  # its call would have blocked: it runs that call again when scheduled
    wait_mask: int = 0  # a parked call's events and deadline: the environment waits for them too
    wait_deadline: int = 0


@dataclass
class ThreadGroup:
    """A process's threads; ``current`` runs, the others are saved here."""

    current: int
    threads: dict[int, Thread] = field(default_factory=dict)
    runq: deque = field(default_factory=deque)  # tids ready to run, in order

    def others(self) -> list[Thread]:
        return [t for tid, t in self.threads.items() if tid != self.current]


def group(p: Posix) -> ThreadGroup | None:
    return p.proc.threads


def tid_of(proc: Process) -> int:
    return proc.threads.current if proc.threads is not None else proc.pid


# ------------------------------------------------------------ switching
def _save_current(p: Posix, g: ThreadGroup, regs: dict[str, int]) -> None:
    t = g.threads[g.current]
    t.regs = regs
    t.fpu = p.port.fpu_save()
    t.fs_base, t.clear_tid = p.proc.fs_base, p.proc.clear_tid


def _run(p: Posix, g: ThreadGroup, t: Thread) -> None:
    """Load thread ``t`` into the environment and resume it."""
    g.current = t.tid
    proc = p.proc
    if t.fs_base != proc.fs_base:
        p.hc("env_set_fsbase", 0, FSBASE_FS, t.fs_base)
    proc.fs_base, proc.clear_tid = t.fs_base, t.clear_tid
    if t.fpu:
        p.port.fpu_restore(t.fpu)
    regs, t.regs = t.regs, None
    main = t.tid == proc.pid
    p.port.trace_thread(0 if main else t.tid, "main" if main else f"thread {t.tid}")  # its calls' track
    p.port.resume(regs)


def after_call(p: Posix, rc: int) -> dict[str, int]:
    """The running thread's context as it returns from its `syscall` with ``rc``."""
    regs = p.port.regs()
    regs["rip"] += 2
    regs["rax"] = rc & _MASK
    regs["rcx"], regs["r11"] = regs["rip"], regs["rflags"]
    return regs


def _pick(p: Posix, g: ThreadGroup) -> Thread | None:
    now = None
    for t in g.others():  # futex waits whose time is up end with -ETIMEDOUT
        if t.futex and t.deadline:
            now = p.hc("time_now") if now is None else now
            if now >= t.deadline:
                t.futex = t.deadline = 0
                t.regs["rax"] = -ETIMEDOUT & _MASK
                g.runq.append(t.tid)
    while g.runq:
        tid = g.runq.popleft()
        t = g.threads.get(tid)
        if t is not None and tid != g.current and not t.futex and not t.parked:
            return t
    return None


def switch_away(p: Posix, regs: dict[str, int]) -> bool:
    """The running thread stops here (its context ``regs``): run another. False if none can run."""
    g = group(p)
    if g is None:
        return False
    nxt = _pick(p, g)
    if nxt is None:
        return False
    _save_current(p, g, regs)
    _run(p, g, nxt)
    return True


def park(p: Posix, nr: int, mask: int, deadline: int) -> bool:
    """The running thread's call ``nr`` would block (until an event of ``mask`` or ``deadline``):
    run another thread if one can run; the parked one runs the call again when the environment is
    next woken. False: no other thread can run, the environment must wait (``wait_for``)."""
    g = group(p)
    if g is None or not g.runq:
        return False
    me = g.threads[g.current]
    regs = p.port.regs()  # at its `syscall`, which runs again
    regs["rax"] = nr
    me.parked, me.wait_mask, me.wait_deadline = True, mask, deadline
    if switch_away(p, regs):
        return True
    me.parked, me.wait_mask, me.wait_deadline = False, 0, 0
    return False


def wait_for(p: Posix, mask: int, deadline: int) -> tuple[int, int]:
    """What the environment waits for when no thread can run: the running thread's call's events
    and deadline, every parked call's, and the futex waits' deadlines."""
    g = group(p)
    if g is None:
        return mask, deadline
    deadlines = [deadline] if deadline else []
    for t in g.others():
        if t.parked:
            mask |= t.wait_mask
            deadlines += [t.wait_deadline] if t.wait_deadline else []
        elif t.futex and t.deadline:
            deadlines.append(t.deadline)
    return mask, min(deadlines) if deadlines else 0


def woken(p: Posix) -> None:
    """The environment's wait ended (something happened): parked threads try their calls again."""
    g = group(p)
    if g is None:
        return
    for t in g.others():
        if t.parked:
            t.parked, t.wait_mask, t.wait_deadline = False, 0, 0
            g.runq.append(t.tid)


def yield_thread(p: Posix) -> bool:
    """sched_yield: the next runnable thread runs, this one goes to the back of the queue."""
    g = group(p)
    if g is None or not g.runq:
        return False
    g.runq.append(g.current)
    if switch_away(p, after_call(p, 0)):
        return True
    g.runq.pop()
    return False


# ------------------------------------------------------------ the calls
def clone_thread(p: Posix, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    """clone(CLONE_VM|CLONE_THREAD|...): a new thread of this process; it returns 0 on ``stack``."""
    if not flags & CLONE_THREAD or not flags & CLONE_SIGHAND or not stack:
        return -EINVAL if not stack else -ENOSYS  # CLONE_VM without a thread: a vfork-like process
    proc = p.proc
    if proc.threads is None:
        proc.threads = ThreadGroup(current=proc.pid, threads={proc.pid: Thread(proc.pid)})
    g = proc.threads
    system = p.system
    system.next_tid = max(system.next_tid, FIRST_TID) + 1
    tid = system.next_tid
    regs = after_call(p, 0)
    regs["rsp"] = stack
    t = Thread(tid, regs=regs, fpu=p.port.fpu_save(), fs_base=tls if flags & CLONE_SETTLS else proc.fs_base,
               clear_tid=ctid if flags & CLONE_CHILD_CLEARTID else 0)
    try:
        if flags & CLONE_PARENT_SETTID and ptid:
            p.port.write(ptid, struct.pack("<i", tid))
        if flags & CLONE_CHILD_SETTID and ctid:
            p.port.write(ctid, struct.pack("<i", tid))
    except p.port.Fault:
        return -EFAULT
    g.threads[tid] = t
    g.runq.append(tid)
    system.tids[tid] = proc.pid
    return tid


def exit_thread(p: Posix, status: int) -> int | None:
    """``exit`` of one thread: None if it was the last (the process ends), else it never returns."""
    g = group(p)
    if g is None or len(g.threads) == 1:
        return None
    proc = p.proc
    if proc.clear_tid:
        try:
            p.port.write(proc.clear_tid, bytes(4))
        except p.port.Fault:
            pass
        _wake(g, proc.clear_tid, 1 << 30)
    gone = g.threads.pop(g.current)
    p.system.tids.pop(gone.tid, None)
    nxt = _pick(p, g)
    if nxt is None:
        # Every other thread waits on a futex no running thread can wake: the process would hang
        # on Linux too. Keep the environment waiting on the earliest deadline (or for a signal).
        g.threads[gone.tid] = gone  # it stays current until another can run; its exit runs again
        raise WouldBlock(0, 0)
    _run(p, g, nxt)
    return 0


def _wake(g: ThreadGroup, addr: int, n: int) -> int:
    woken_n = 0
    for t in list(g.threads.values()):
        if woken_n >= n:
            break
        if t.futex == addr and t.regs is not None:
            t.futex = t.deadline = 0
            t.regs["rax"] = 0
            g.runq.append(t.tid)
            woken_n += 1
    return woken_n


def _timeout(p: Posix, cmd: int, uaddr: int, utime: int, flags: int) -> int | None:
    """The deadline in guest ns of a futex wait (None: no timeout), the same when it runs again."""
    from libos.posix.poll import deadline_for

    if not utime:
        deadline_for(p, ("futex", uaddr), None)
        return None
    sec, nsec = struct.unpack("<qq", p.port.read(utime, 16))
    ns = sec * 1_000_000_000 + nsec
    if cmd == FUTEX_WAIT:
        return deadline_for(p, ("futex", uaddr, utime), ns)  # relative, as FUTEX_WAIT takes it
    from libos.posix.clock import now_ns

    clock = 0 if flags & FUTEX_CLOCK_REALTIME else 1
    return ns - (now_ns(p, clock) - p.hc("time_now"))  # FUTEX_WAIT_BITSET: absolute on its clock


@syscall("futex")
def sys_futex(p: Posix, uaddr: int, op: int, val: int, utime: int, uaddr2: int, val3: int) -> int:
    cmd = op & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    g = group(p)
    if cmd in (FUTEX_WAKE, FUTEX_WAKE_BITSET):
        return _wake(g, uaddr, val & 0xFFFF_FFFF) if g is not None else 0
    if cmd in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
        if g is None:
            return 0
        if cmd == FUTEX_CMP_REQUEUE and p.port.read_u64(uaddr) & 0xFFFF_FFFF != val3 & 0xFFFF_FFFF:
            return -EAGAIN
        n = _wake(g, uaddr, val & 0xFFFF_FFFF)
        for t in g.threads.values():  # the rest wait on uaddr2 now (utime holds the count)
            if t.futex == uaddr:
                t.futex = uaddr2
                n += 1
        return n
    if cmd not in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        return -ENOSYS
    try:
        word = struct.unpack("<I", p.port.read(uaddr, 4))[0]
    except p.port.Fault:
        return -EFAULT
    if word != val & 0xFFFF_FFFF:
        return -EAGAIN
    deadline = _timeout(p, cmd, uaddr, utime, op)
    if deadline is not None and p.hc("time_now") >= deadline:
        return -ETIMEDOUT
    if g is None:
        # One thread: nobody in this process can wake it; another process sharing the word could
        # not either (memory is never shared between processes here). Sleep out the timeout.
        raise WouldBlock(0, deadline or 0)  # without a deadline: blocked for good, as on Linux
    regs = after_call(p, 0)
    me = g.threads[g.current]
    me.futex, me.deadline = uaddr, deadline or 0
    if switch_away(p, regs):
        return 0
    me.futex = me.deadline = 0
    # No other thread can run: the environment waits in this call, which runs again when it is
    # woken (a signal, a deadline of this or another thread): the word is looked at again then.
    raise WouldBlock(0, deadline or 0)
