"""Signals: each process's dispositions and mask (rt_sigaction, rt_sigprocmask, sigaltstack).

What is here: the state Linux keeps per process, kept by the same rules (a handler survives fork,
exec resets handled signals to their default, SIGKILL and SIGSTOP cannot be caught or blocked), so
programs that install handlers (every shell does) run. Not yet: delivery to handlers and the
signal frame; ``send`` and ``deliver_pending`` are the interface the rest of posix calls
(docs/posix.md).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix.table import EFAULT, EINVAL, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

NSIG = 64
SIGKILL, SIGSTOP = 9, 19
SIG_DFL, SIG_IGN = 0, 1
_UNCATCHABLE = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))
_SIGACTION = struct.Struct("<QQQQ")  # struct kernel_sigaction { handler, flags, restorer, mask } (x86-64)
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2


class SignalState:
    """One process's signal dispositions (signo -> (handler, flags, restorer, mask)) and blocked mask."""

    def __init__(self) -> None:
        self.actions: dict[int, tuple[int, int, int, int]] = {}
        self.blocked = 0
        self.pending = 0
        self.altstack = (0, 2, 0)  # ss_sp, ss_flags (SS_DISABLE), ss_size

    def fork(self) -> SignalState:
        """The child's: the same dispositions and mask, nothing pending (POSIX fork)."""
        child = SignalState()
        child.actions = dict(self.actions)
        child.blocked = self.blocked
        return child

    def exec_reset(self) -> None:
        """execve: handled signals go back to their default; ignored ones stay ignored (POSIX)."""
        self.actions = {s: a for s, a in self.actions.items() if a[0] == SIG_IGN}
        self.altstack = (0, 2, 0)


def state(p: Posix) -> SignalState:
    if p.proc.sig is None:
        p.proc.sig = SignalState()
    return p.proc.sig


def send(p: Posix, pid: int, signo: int) -> int:
    """Send ``signo`` to ``pid``: recorded as pending; delivery is not there yet (docs/posix.md)."""
    target = p.system.procs.get(pid)
    if target is None:
        return -3  # ESRCH
    if target.sig is None:
        target.sig = SignalState()
    target.sig.pending |= 1 << (signo - 1)
    return 0


def deliver_pending(p: Posix, rc: int) -> int:
    """Deliver what is pending on the way out of a call; returns RAX (delivery: not yet)."""
    return rc


@syscall("rt_sigaction")
def sys_rt_sigaction(p: Posix, signo: int, act: int, oldact: int, sigsetsize: int, *_: int) -> int:
    if not 1 <= signo <= NSIG or sigsetsize != 8:
        return -EINVAL
    st = state(p)
    old = st.actions.get(signo, (SIG_DFL, 0, 0, 0))
    try:
        new = _SIGACTION.unpack(p.port.read(act, _SIGACTION.size)) if act else None
        if new is not None and signo in (SIGKILL, SIGSTOP):
            return -EINVAL
        if oldact:
            p.port.write(oldact, _SIGACTION.pack(*old))
    except p.port.Fault:
        return -EFAULT
    if new is not None:
        st.actions[signo] = (new[0], new[1], new[2], new[3] & ~_UNCATCHABLE)
    return 0


@syscall("rt_sigprocmask")
def sys_rt_sigprocmask(p: Posix, how: int, nset: int, oset: int, sigsetsize: int, *_: int) -> int:
    if sigsetsize != 8:
        return -EINVAL
    st = state(p)
    try:
        if oset:
            p.port.write(oset, struct.pack("<Q", st.blocked))
        if nset:
            mask = p.port.read_u64(nset) & ~_UNCATCHABLE
            if how == SIG_BLOCK:
                st.blocked |= mask
            elif how == SIG_UNBLOCK:
                st.blocked &= ~mask
            elif how == SIG_SETMASK:
                st.blocked = mask
            else:
                return -EINVAL
    except p.port.Fault:
        return -EFAULT
    return 0


@syscall("sigaltstack")
def sys_sigaltstack(p: Posix, ss: int, old: int, *_: int) -> int:
    st = state(p)
    try:
        if old:
            p.port.write(old, struct.pack("<QiiQ", st.altstack[0], st.altstack[1], 0, st.altstack[2]))
        if ss:
            sp, flags, _, size = struct.unpack("<QiiQ", p.port.read(ss, 24))
            st.altstack = (sp, flags, size)
    except p.port.Fault:
        return -EFAULT
    return 0
