"""sched: user-level threads inside one environment, preempted by the exokernel's timer upcall.

The exokernel decides which environment runs; this library decides which of
the environment's threads runs. Everything here is library code: a thread
switch is a library call (or an upcall) that loads another saved register set
with ``port.resume``, which user code could do with a `mov`/`jmp` sequence of
its own. No privilege is involved.

Entries (the slot order is the guest ABI, shared by every implementation):

* ``thread_create(fn, arg, tickets)`` -> tid (> 0), or -EINVAL (fn 0, tickets
  above 2**20) / -ENOMEM (no stack). The thread starts at ``fn`` with RDI =
  arg on its own stack; returning from ``fn`` exits the thread with RAX as its
  status (the return address is the ``thread_return`` slot). ``tickets`` is
  used by ``stride`` (0: the default 100) and ignored by the others.
* ``thread_yield()`` -> 0: give the CPU to the next thread the policy picks
  (perhaps the caller again).
* ``thread_exit(status)``: the calling thread ends (never returns). When the
  last thread has ended the environment exits, with thread 0's status, after
  every module's ``at_exit`` (console output is flushed): ``core.exit``.
* ``thread_join(tid)`` -> the status of ``tid`` once it has ended (at once if it
  has); -ESRCH for no such thread, -EINVAL for joining oneself.
* ``thread_sleep(ns)`` -> 0: not runnable until ``time_now`` has advanced by
  ``ns``. When no thread can run but some sleep, the environment runs an idle
  loop that gives the CPU to other environments (``sched_op YIELD``) and looks
  again after each short spin (IDLE_SPIN iterations, about 2 * IDLE_SPIN ns).
* ``thread_self()`` -> the caller's tid (the main program is thread 0).
* ``mutex_lock(addr)`` / ``mutex_unlock(addr)`` -> 0: a mutex is a u64 in guest
  memory, 0 when unlocked, ``owner tid + 1`` when locked. A contended lock
  blocks the thread (no spinning); unlock hands the mutex straight to the
  first waiter (FIFO), so nobody starves. Locking a mutex one holds: -EBUSY;
  unlocking one held by another thread (or nobody): -EPERM.
* ``timer_upcall(frame)``: the exokernel's timer upcall (``env_set_timer``),
  entered with the UTrapframe of the preempted context at the start of the
  environment's next slice. Not for guest code.
* ``thread_return()``, ``idle()``: where a thread's ``fn`` returns to, and the
  idle loop's call. Not for guest code.

Blocking for sibling modules (the ``net`` module uses it): ``block_restart(reason)``
parks the calling thread with its registers as they were when the current
library call was entered (RIP is the call's slot), so that when it is woken
the whole call runs again (library calls are restartable), and dispatches
another thread. ``wake(reason)`` / ``wake_all(pred)`` make parked threads
runnable again (``pred(reason)`` says which). When no thread can run, the idle
loop asks each sibling with an ``idle_wait(deadline, runnable)`` hook to take
in events and, if ``runnable()`` is still false, to wait for them in the
exokernel until ``deadline`` (the earliest sleeper's wake time, 0: none); the
hook's wait may raise Blocked, so the idle call runs again when woken. Parked
threads keep the environment from blocking for good.

Preemption: ``start()`` registers ``timer_upcall`` with ``env_set_timer``. The
exokernel pushes the timer frame on the exception stack registered with
``env_set_upcall``. The rule with the memory module: **if ``memory`` is linked
it owns ``env_set_upcall`` (its fault handler and the exception stack, which it
must register in its ``start()``; sched uses that stack and never calls
``env_set_upcall``, nor may it); otherwise sched maps its own one-page exception
stack and registers it with entry 0 (no fault handler: faults still end the
environment).** A timer upcall that finds the interrupted context on the
exception stack (inside a fault handler) resumes it at once: no thread switch
in an upcall handler.

Threads are many-to-one: a library call that waits in the exokernel (console
input, a blocking ``ipc_recv``) stops every thread of the environment until it
is woken, as with any user-level thread package. A join or lock cycle that
leaves no thread runnable or sleeping blocks the environment for good
(``sched_op BLOCK``: the exokernel reports it as blocked forever).

Time: every decision reads ``time_now`` (virtual clock: 1 ns per retired
instruction). A thread is charged the time from its dispatch to its switch; a
thread preempted at a slice end is charged until its environment's next slice
starts, which includes other environments' slices in between (every preempted
thread pays that alike). Only the integer registers and RFLAGS are switched:
threads must not keep SSE state across a switch.

Policies (``[libos] sched = ...``):

* ``rr``: one FIFO queue. A woken thread (sleep over, join/lock granted) joins
  the tail before the thread that was just preempted.
* ``stride``: ``stride = 2**20 // tickets``; a thread's ``pass`` grows by
  ``stride * ns used``; the runnable thread with the smallest pass runs (ties:
  lowest tid). A new or woken thread starts at no less than the pass of the
  thread dispatched last, so sleeping earns no credit. CPU shares of busy
  threads are proportional to their tickets.
* ``mlfq``: three levels, 0 the highest; FIFO within a level. A thread
  preempted by the timer (it used a whole slice) counts one preemption at its
  level; after ``MLFQ_ALLOT[level]`` = 1, 2 preemptions at levels 0, 1 it
  moves down one level (level 2 is the floor). A thread that yields, sleeps or
  blocks before its slice ends stays at its level, and its count is kept (so a
  thread cannot stay on top by yielding just before each slice ends). Every
  ``MLFQ_BOOST_NS`` = 5,000,000 ns (50 default slices) every thread moves back
  to level 0 with a fresh count (no starvation; a CPU-bound thread that turned
  interactive recovers). Interactive threads therefore run first when they
  wake, CPU hogs take what is left.
"""

from __future__ import annotations

import struct
from collections import deque

from exo.abi import (
    LIBCALL_SLOT,
    LIBOS_PAGE,
    MMU_REQ_SIZE,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    PERM_X,
    UPCALL_TIMER,
    UXSTACK_TOP,
    Errno,
    MmuOp,
    SchedOp,
)
from libos.module import GPRS, LibModule, read_upcall_frame

DEFAULT_TICKETS = 100
MAX_TICKETS = 1 << 20
STRIDE1 = 1 << 20
MLFQ_LEVELS = 3
MLFQ_ALLOT = (1, 2)  # timer preemptions a thread may take at levels 0, 1 before moving down
MLFQ_BOOST_NS = 5_000_000
IDLE_TID = 999_999  # the idle loop's track in a trace (thread ids count up from 1)
IDLE_SPIN = 2000  # iterations of the idle loop between two looks at the sleepers

# This module's data region (data_base + ...): unmapped pages are guards.
UXSTACK_OFF = 0x2000  # one-page exception stack [0x1000, 0x2000) when memory is not linked
IDLE_STACK_OFF = 0x4000  # one page [0x3000, 0x4000): the idle loop's stack (its bottom: mmu scratch)
IDLE_CODE_OFF = 0x5000  # one read+execute page: the idle loop
STACKS_OFF = 0x10_0000  # thread stacks: STACK_SLOT bytes each, the top STACK_PAGES mapped
STACK_SLOT = 0x1_0000
STACK_PAGES = 4  # 16 KiB per thread; the rest of its slot is an unmapped guard
MAX_STACK_SLOTS = 4000

_MMU_REQ = struct.Struct("<IIQQQ")
_MASK = 0xFFFF_FFFF_FFFF_FFFF

RUNNABLE, RUNNING, SLEEPING, BLOCKED, DONE = "runnable", "running", "sleeping", "blocked", "done"


class Thread:
    __slots__ = ("tid", "state", "ctx", "tickets", "stride", "pass_", "level", "ticks", "wake",
                 "joiners", "status", "slot", "dispatched", "cpu_ns", "blocked_on", "fpu")

    def __init__(self, tid: int, tickets: int, slot: int | None) -> None:
        self.tid = tid
        self.state = RUNNABLE
        self.ctx: dict[str, int] | None = None  # saved registers while not running
        self.tickets = tickets
        self.stride = STRIDE1 // tickets
        self.pass_ = 0
        self.level = 0
        self.ticks = 0  # timer preemptions at the current MLFQ level
        self.wake = 0  # SLEEPING: runnable again at this time
        self.joiners: list[Thread] = []
        self.status = 0
        self.slot = slot  # stack slot (None: thread 0 runs on the program's stack)
        self.dispatched = 0  # time it last started running
        self.cpu_ns = 0  # time charged to it in all
        self.blocked_on: int | str | None = None
        self.fpu: bytes | None = None  # saved x87/SSE state (an FXSAVE image) while not running


def _idle_code(idle_entry: int) -> bytes:
    """mov ecx, IDLE_SPIN; 1: dec ecx; jnz 1b; mov rax, idle_entry; call rax; jmp 0"""
    code = b"\xb9" + IDLE_SPIN.to_bytes(4, "little")  # 0: mov ecx, imm32
    code += b"\xff\xc9\x75\xfc"  # 5: dec ecx; 7: jnz 5
    code += b"\x48\xb8" + idle_entry.to_bytes(8, "little")  # 9: mov rax, imm64
    code += b"\xff\xd0"  # 19: call rax
    code += b"\xeb" + ((0 - (len(code) + 2)) & 0xFF).to_bytes(1, "little")  # 21: jmp 0
    return code


class Scheduler(LibModule):
    NAME = "sched"
    INDEX = 3
    ENTRIES = ("thread_create", "thread_yield", "thread_exit", "thread_join", "thread_sleep",
               "thread_self", "mutex_lock", "mutex_unlock", "timer_upcall", "thread_return", "idle")
    # User-level threads are library code under every OS structure (exo/structures.py).
    LOCAL = frozenset(ENTRIES)
    HYPERCALLS = frozenset({"time_now", "sched_op", "page_alloc", "mmu_update", "env_set_timer",
                            "env_set_upcall"})

    def __init__(self, port) -> None:
        super().__init__(port)
        main = Thread(0, DEFAULT_TICKETS, None)
        main.state = RUNNING
        self.threads: dict[int, Thread] = {0: main}
        self.cur: Thread | None = main  # None: the idle loop runs
        self.next_tid = 1
        self.free_slots: list[int] = []
        self.next_slot = 0
        self.waiters: dict[int, deque[Thread]] = {}  # mutex address -> blocked threads
        self.idle_ready = False
        self.parked: dict[int, object] = {}  # tid -> reason: blocked in a sibling's call (block_restart)
        self.switches = 0  # thread switches (for tests and curiosity)
        self.preemptions = 0  # timer upcalls that found a thread running
        self._init_policy()

    # ------------------------------------------------------------ the policy
    def _init_policy(self) -> None:
        raise NotImplementedError

    def _add(self, t: Thread) -> None:
        """t is runnable now (new, woken, yielded or preempted)."""
        raise NotImplementedError

    def _pick(self, now: int) -> Thread | None:
        """Remove and return the thread to run next (None: nothing is runnable)."""
        raise NotImplementedError

    def _charge(self, t: Thread, used: int, preempted: bool) -> None:
        """t stops running after ``used`` ns; ``preempted``: the timer ended its slice."""

    def _woken(self, t: Thread) -> None:
        """t was sleeping or blocked and is about to be added."""

    # ------------------------------------------------------------- linking
    @property
    def hypercalls(self) -> frozenset[str]:
        if "memory" in self.siblings:  # the memory module owns env_set_upcall
            return self.HYPERCALLS - {"env_set_upcall"}
        return self.HYPERCALLS

    def _slot_address(self, name: str) -> int:
        return LIBOS_PAGE + self.INDEX * PAGE_SIZE + self.ENTRIES.index(name) * LIBCALL_SLOT

    @property
    def uxstack_top(self) -> int:
        """The exception stack the timer frame is pushed on (see the module doc for the rule)."""
        mem = self.siblings.get("memory")
        if mem is not None:
            return getattr(mem, "uxstack_top", UXSTACK_TOP)
        return self.data_base + UXSTACK_OFF

    def start(self) -> None:
        if "memory" not in self.siblings:
            top = self.data_base + UXSTACK_OFF
            self.ensure_page(top - PAGE_SIZE)
            self._check(self.hc("env_set_upcall", 0, 0, top), "env_set_upcall")
        self._check(self.hc("env_set_timer", 0, self._slot_address("timer_upcall")), "env_set_timer")
        self.threads[0].dispatched = self.hc("time_now")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise self.port.Fault(Errno(-rc), f"sched: {what} failed")

    def fork(self, port):
        """The exofork child has one thread: the one that forked, keeping its tid."""
        clone = super().fork(port)
        me = self.cur if self.cur is not None else self.threads[0]
        t = Thread(me.tid, me.tickets, me.slot)
        t.state = RUNNING
        clone.threads = {me.tid: t}
        clone.cur = t
        clone.waiters = {}
        clone.parked = {}
        clone.free_slots = list(self.free_slots)
        clone._init_policy()
        return clone

    # ----------------------------------------------------------- the machinery
    def _now(self) -> int:
        return self.hc("time_now")

    def _save_return(self, rax: int = 0) -> dict[str, int]:
        """The caller's context, continuing after this library call with RAX = rax."""
        regs = self.port.regs()
        regs["rip"], regs["rsp"] = self.port.return_address()
        regs["rax"] = rax
        return regs

    def _stop_current(self, now: int, state: str, ctx: dict[str, int] | None, preempted: bool = False) -> Thread:
        """The running thread stops running: save its context, charge it, give it ``state``."""
        # LAB 4 BEGIN save: charge the running thread for its time and save its context (registers and FPU state)
        t = self.cur
        assert t is not None
        used = max(0, now - t.dispatched)
        t.cpu_ns += used
        self._charge(t, used, preempted)
        t.ctx = ctx
        if state != DONE:  # its XMM/x87 registers and MXCSR/FCW are part of its context
            t.fpu = self.port.fpu_save()
        t.state = state
        if state == RUNNABLE:
            self._add(t)
        return t
        # LAB 4 END

    def _make_runnable(self, t: Thread) -> None:
        t.state = RUNNABLE
        t.blocked_on = None
        self._woken(t)
        self._add(t)

    def _wake_sleepers(self, now: int) -> None:
        sleepers = sorted((t for t in self.threads.values() if t.state == SLEEPING and t.wake <= now),
                          key=lambda t: (t.wake, t.tid))
        for t in sleepers:
            self._make_runnable(t)

    def _dispatch(self, now: int) -> None:
        """Run the next thread (the idle loop if none is runnable). Never returns to the caller."""
        self._wake_sleepers(now)
        t = self._pick(now)
        prev = self.cur
        if t is None:
            self.cur = None
            self._run_idle()
            if not any(x.state == SLEEPING for x in self.threads.values()) and not self.parked:
                # Every thread waits for another (a join or lock cycle): nothing can ever run.
                # Block for good: the exokernel reports the environment as blocked forever.
                self.hc("sched_op", SchedOp.BLOCK, 0)
            return
        self.port.trace_thread(t.tid, "main" if t.tid == 0 else f"thread {t.tid}")  # its calls' track
        # LAB 4 BEGIN switch: make the picked thread the running one and load its saved context (FPU state too)
        if t is not prev:
            self.switches += 1
        t.state = RUNNING
        t.dispatched = now
        self.cur = t
        ctx, t.ctx = t.ctx, None
        fpu, t.fpu = t.fpu, None
        if fpu is not None and t is not prev:  # (the same thread again: its state is still live)
            self.port.fpu_restore(fpu)
        self.port.resume(ctx)
        # LAB 4 END

    def _run_idle(self) -> None:
        self.port.trace_thread(IDLE_TID, "idle")
        if not self.idle_ready:
            self._setup_idle()
        regs = dict.fromkeys(GPRS, 0)
        regs["rip"] = self.data_base + IDLE_CODE_OFF
        regs["rsp"] = self.data_base + IDLE_STACK_OFF
        regs["rflags"] = 0x202
        self.port.resume(regs)

    def _setup_idle(self) -> None:
        """Map the idle loop: written into a fresh page, then made read+execute (W^X)."""
        self.ensure_page(self.data_base + IDLE_STACK_OFF - PAGE_SIZE)
        code_va = self.data_base + IDLE_CODE_OFF
        self.ensure_page(code_va)
        self.port.write(code_va, _idle_code(self._slot_address("idle")))
        req = self.data_base + IDLE_STACK_OFF - PAGE_SIZE  # the idle stack's bottom: scratch
        self.port.write(req, _MMU_REQ.pack(MmuOp.PROTECT, 0, code_va, 0, PERM_R | PERM_X))
        assert _MMU_REQ.size == MMU_REQ_SIZE
        self._check(self.hc("mmu_update", req, 1, 0), "mmu_update (idle code)")
        self.idle_ready = True

    def _stack_for(self) -> int | None:
        """A stack slot with its pages mapped (None: out of slots or memory)."""
        if self.free_slots:
            return self.free_slots.pop()
        if self.next_slot >= MAX_STACK_SLOTS:
            return None
        slot = self.next_slot
        top = self._stack_top(slot)
        for i in range(1, STACK_PAGES + 1):
            rc = self.hc("page_alloc", 0, top - i * PAGE_SIZE, PERM_R | PERM_W)
            if rc < 0:
                return None
        self.next_slot += 1
        return slot

    def _stack_top(self, slot: int) -> int:
        return self.data_base + STACKS_OFF + (slot + 1) * STACK_SLOT

    def _end_thread(self, t: Thread, status: int) -> None:
        t.state = DONE
        t.status = status
        t.ctx = None
        if t.slot is not None:
            self.free_slots.append(t.slot)  # nothing runs on it any more: reusable at once
            t.slot = None
        for j in t.joiners:
            j.ctx["rax"] = status & _MASK
            self._make_runnable(j)
        t.joiners = []

    # ------------------------------------------------------------------ entries
    def thread_create(self, fn: int, arg: int, tickets: int) -> int:
        if fn == 0 or fn >= 1 << 47:
            return -Errno.EINVAL
        tickets = tickets or DEFAULT_TICKETS
        if tickets > MAX_TICKETS:
            return -Errno.EINVAL
        # LAB 4 BEGIN create: give the new thread a stack and a first context that enters fn(arg) and returns to thread_return
        slot = self._stack_for()
        if slot is None:
            return -Errno.ENOMEM
        top = self._stack_top(slot)
        self.port.write_u64(top - 8, self._slot_address("thread_return"))  # fn's return address
        t = Thread(self.next_tid, tickets, slot)
        self.next_tid += 1
        t.ctx = dict.fromkeys(GPRS, 0)
        t.ctx.update(rip=fn, rdi=arg, rsp=top - 8, rflags=0x202)  # rsp % 16 == 8 at entry (SysV)
        t.fpu = self.port.fpu_save()  # it inherits its creator's FPU state, as a Linux clone() does
        self.threads[t.tid] = t
        self._woken(t)
        self._add(t)
        return t.tid
        # LAB 4 END

    def thread_yield(self) -> int:
        if self.cur is None:
            return 0
        now = self._now()
        self._stop_current(now, RUNNABLE, self._save_return())
        self._dispatch(now)
        return 0

    def thread_exit(self, status: int) -> int:
        t = self.cur
        if t is None:
            return -Errno.EINVAL
        status = status & 0xFFFF_FFFF
        status = status - (1 << 32) if status >= 1 << 31 else status
        if all(x.state == DONE for x in self.threads.values() if x is not t):
            # The last thread: the environment ends with thread 0's status. The thread stays
            # current while the modules' at_exit run: one that must wait (net lingering until
            # its data is acknowledged) makes this whole call run again when woken.
            main = self.threads.get(0, t)  # (an exofork child may not have a thread 0)
            rc = self._exit_env(status if main is t else main.status)
            t.state, t.status, t.ctx, self.cur = DONE, status, None, None
            return rc
        now = self._now()
        self._stop_current(now, DONE, None)
        self._end_thread(t, status)
        self.cur = None
        self._dispatch(now)
        return 0

    def thread_return(self) -> int:
        """fn returned here (by `ret`, not `call`): RAX is its status."""
        return self.thread_exit(self.port.regs()["rax"])

    def _exit_env(self, status: int) -> int:
        core = self.siblings.get("core")
        if core is not None:
            return core.exit(status)
        return self.hc("sched_op", SchedOp.EXIT, status)

    def thread_join(self, tid: int) -> int:
        me = self.cur
        target = self.threads.get(tid)
        if target is None or me is None:
            return -Errno.ESRCH
        if target is me:
            return -Errno.EINVAL
        if target.state == DONE:
            return target.status
        now = self._now()
        self._stop_current(now, BLOCKED, self._save_return())
        me.blocked_on = f"join {tid}"
        target.joiners.append(me)
        self._dispatch(now)
        return 0

    def thread_sleep(self, ns: int) -> int:
        if self.cur is None:
            return 0
        now = self._now()
        if ns >= 1 << 63:
            ns = 0
        t = self._stop_current(now, SLEEPING, self._save_return())
        t.wake = now + ns
        self._dispatch(now)
        return 0

    def thread_self(self) -> int:
        return self.cur.tid if self.cur is not None else -Errno.ESRCH

    def mutex_lock(self, addr: int) -> int:
        me = self.cur
        if me is None:
            return -Errno.EINVAL
        owner = self.port.read_u64(addr)
        if owner == 0:
            self.port.write_u64(addr, me.tid + 1)
            return 0
        if owner == me.tid + 1:
            return -Errno.EBUSY
        now = self._now()
        self._stop_current(now, BLOCKED, self._save_return())
        me.blocked_on = addr
        self.waiters.setdefault(addr, deque()).append(me)
        self._dispatch(now)
        return 0

    def mutex_unlock(self, addr: int) -> int:
        me = self.cur
        if me is None or self.port.read_u64(addr) != me.tid + 1:
            return -Errno.EPERM
        q = self.waiters.get(addr)
        if q:
            nxt = q.popleft()
            if not q:
                del self.waiters[addr]
            self.port.write_u64(addr, nxt.tid + 1)  # handed over: it returns from mutex_lock owning it
            self._make_runnable(nxt)
        else:
            self.port.write_u64(addr, 0)
        return 0

    def timer_upcall(self, frame: int) -> int:
        # LAB 4 BEGIN preempt: on the timer upcall, put the preempted thread back as runnable and dispatch the next one
        f, ctx = read_upcall_frame(self.port, frame)
        if f["vector"] != UPCALL_TIMER:
            return -Errno.EINVAL
        top = self.uxstack_top
        if top - PAGE_SIZE <= ctx["rsp"] < top:  # preempted inside an upcall handler: no switch there
            self.port.resume(ctx)
            return 0
        now = self._now()
        if self.cur is not None:  # (None: the idle loop was preempted; it starts afresh)
            self.preemptions += 1
            self._wake_sleepers(now)  # they woke during the slice: ahead of the preempted thread
            self._stop_current(now, RUNNABLE, ctx, preempted=True)
        self._dispatch(now)
        return 0
        # LAB 4 END

    def idle(self) -> int:
        """Called by the idle loop after each spin: run a thread that woke, or wait for events
        through a sibling's idle_wait hook, or give the CPU away."""
        now = self._now()
        self._wake_sleepers(now)
        if self._runnable():
            self._dispatch(now)
            return 0
        for hook in self._idle_hooks():
            deadline = min((t.wake for t in self.threads.values() if t.state == SLEEPING), default=0)
            if hook(deadline, self._runnable):  # may raise Blocked: this call runs again when woken
                now = self._now()
                self._wake_sleepers(now)
                if self._runnable():
                    self._dispatch(now)
                return 0
        self.hc("sched_op", SchedOp.YIELD, 0)
        return 0

    def _idle_hooks(self) -> list:
        return [m.idle_wait for m in self.siblings.values() if m is not self and hasattr(m, "idle_wait")]

    # ------------------------------------------------- blocking for sibling modules
    def block_restart(self, reason: object) -> None:
        """Park the calling thread inside the current library call and run another one.

        Its saved context is the registers at the call's entry (RIP is the slot),
        so when ``wake``/``wake_all`` makes it runnable the call runs again from
        the start. The caller must have consumed nothing, and must return at once
        (its result is never seen: another context has been loaded).
        """
        me = self.cur
        if me is None:
            raise RuntimeError("block_restart outside a thread")
        now = self._now()
        self._stop_current(now, BLOCKED, self.port.regs())
        me.blocked_on = reason
        self.parked[me.tid] = reason
        self._dispatch(now)

    def wake(self, reason: object) -> int:
        """Make the threads parked with ``reason`` runnable; how many."""
        return self.wake_all(lambda r: r == reason)

    def wake_all(self, pred) -> int:
        """Make the parked threads whose reason satisfies ``pred`` runnable (in tid order); how many."""
        woken = [tid for tid, r in sorted(self.parked.items(), key=lambda kv: kv[0]) if pred(r)]
        for tid in woken:
            del self.parked[tid]
            self._make_runnable(self.threads[tid])
        return len(woken)

    def _runnable(self) -> bool:
        return any(t.state == RUNNABLE for t in self.threads.values())

    # ------------------------------------------------------------- inspection
    def stats(self) -> dict[int, dict[str, int | str]]:
        """Per thread: state, CPU ns charged, tickets, MLFQ level (for tests and tools)."""
        return {t.tid: {"state": t.state, "cpu_ns": t.cpu_ns, "tickets": t.tickets, "level": t.level}
                for t in self.threads.values()}


class RoundRobin(Scheduler):
    IMPL = "rr"
    DOC = "round-robin: one FIFO queue of runnable threads"

    def _init_policy(self) -> None:
        self.queue: deque[Thread] = deque()

    def _add(self, t: Thread) -> None:
        self.queue.append(t)

    def _pick(self, now: int) -> Thread | None:
        return self.queue.popleft() if self.queue else None


class Stride(Scheduler):
    IMPL = "stride"
    DOC = "stride scheduling: CPU shares proportional to tickets (pass += stride * ns used)"

    def _init_policy(self) -> None:
        self.ready: list[Thread] = []
        self.global_pass = 0  # the pass of the thread dispatched last

    def _add(self, t: Thread) -> None:
        self.ready.append(t)

    # LAB 4 BEGIN stride: stride scheduling: charge pass by stride * ns used, run the smallest pass, no credit for sleeping
    def _woken(self, t: Thread) -> None:
        t.pass_ = max(t.pass_, self.global_pass)  # no credit for time spent not runnable

    def _charge(self, t: Thread, used: int, preempted: bool) -> None:
        t.pass_ += t.stride * used

    def _pick(self, now: int) -> Thread | None:
        if not self.ready:
            return None
        t = min(self.ready, key=lambda x: (x.pass_, x.tid))
        self.ready.remove(t)
        self.global_pass = t.pass_
        return t
    # LAB 4 STUB
    # def _woken(self, t: Thread) -> None:
    #     """t was sleeping or blocked (or is new) and is about to be added: what may its pass be?"""
    #     raise NotImplementedError("LAB 4 (stride): a woken thread's pass -- libos/sched.py Stride._woken")
    #
    # def _charge(self, t: Thread, used: int, preempted: bool) -> None:
    #     """t ran for ``used`` ns: advance its pass."""
    #     raise NotImplementedError("LAB 4 (stride): charge the pass -- libos/sched.py Stride._charge")
    #
    # def _pick(self, now: int) -> Thread | None:
    #     """Remove and return the runnable thread with the smallest pass (ties: lowest tid)."""
    #     raise NotImplementedError("LAB 4 (stride): pick the smallest pass -- libos/sched.py Stride._pick")
    # LAB 4 END


class Mlfq(Scheduler):
    IMPL = "mlfq"
    DOC = "multi-level feedback queue: 3 levels, demotion after whole slices, periodic boost"

    def _init_policy(self) -> None:
        self.levels: list[deque[Thread]] = [deque() for _ in range(MLFQ_LEVELS)]
        self.last_boost = 0

    def _add(self, t: Thread) -> None:
        self.levels[t.level].append(t)

    def _charge(self, t: Thread, used: int, preempted: bool) -> None:
        if preempted and t.level < MLFQ_LEVELS - 1:
            t.ticks += 1
            if t.ticks >= MLFQ_ALLOT[t.level]:
                t.level += 1
                t.ticks = 0

    def _pick(self, now: int) -> Thread | None:
        if now - self.last_boost >= MLFQ_BOOST_NS:
            self._boost(now)
        for q in self.levels:
            if q:
                return q.popleft()
        return None

    def _boost(self, now: int) -> None:
        self.last_boost = now
        queued = [t for q in self.levels for t in q]
        for q in self.levels:
            q.clear()
        for t in self.threads.values():
            t.level = 0
            t.ticks = 0
        self.levels[0].extend(queued)
