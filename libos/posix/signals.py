"""Signals: dispositions, masks, and delivery to handlers through Linux's rt_sigframe.

Per process (``Process.sig``): handlers, the blocked mask, pending signals, the alternate stack,
by Linux's rules (fork keeps handlers, exec resets handled ones, SIGKILL and SIGSTOP cannot be
caught or blocked). A signal is delivered when its process leaves a system call (the dispatcher
calls ``deliver_pending``): a handler gets Linux's frame on its stack (or the alternate stack):
return address = sa_restorer, ``struct ucontext`` with the registers in ``struct sigcontext``
order and the 512-byte FXSAVE image as fpstate, ``siginfo``; RDI/RSI/RDX = signo, &info, &uc.
``rt_sigreturn`` reads it back. A call that must wait while a deliverable signal is pending
returns -EINTR (or runs again after the handler with SA_RESTART). Default actions: terminate
(the parent sees the signal in wait4's status), ignore (SIGCHLD, SIGURG, SIGWINCH, SIGCONT).
Limits (docs/posix.md): a process that makes no system call (a pure loop) gets its signal at its
next call; stop and continue are not modelled.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.module import GPRS
from libos.posix.system import WouldBlock
from libos.posix.table import EFAULT, EINTR, EINVAL, ESRCH, s32, syscall
from libos.posix.threads import after_call

if TYPE_CHECKING:
    from libos.posix import Posix

NSIG = 64
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGKILL = 1, 2, 3, 4, 5, 6, 7, 8, 9
SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGCHLD, SIGCONT, SIGSTOP = 10, 11, 12, 13, 14, 15, 17, 18, 19
SIGURG, SIGWINCH = 23, 28
SIG_DFL, SIG_IGN = 0, 1
SA_NODEFER, SA_RESETHAND, SA_RESTART, SA_ONSTACK, SA_SIGINFO = 0x40000000, 0x80000000, 0x10000000, 0x08000000, 4
_UNCATCHABLE = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))
IGNORED_BY_DEFAULT = frozenset({SIGCHLD, SIGURG, SIGWINCH, SIGCONT})
_SIGACTION = struct.Struct("<QQQQ")  # struct kernel_sigaction { handler, flags, restorer, mask } (x86-64)
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
SI_USER = 0
CLD_EXITED, CLD_KILLED = 1, 2
_MASK = (1 << 64) - 1
# struct sigcontext (arch/x86/include/uapi/asm/sigcontext.h, 64-bit): the registers in this order,
# then cs/gs/fs/ss (u16 each), err, trapno, oldmask, cr2, fpstate, reserved[8]: 256 bytes.
SIGCONTEXT_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx",
                   "rax", "rcx", "rsp", "rip", "rflags")
UC_MCONTEXT = 40  # offsetof(struct ucontext, uc_mcontext): uc_flags, uc_link, uc_stack (24 bytes)
UC_SIGMASK = UC_MCONTEXT + 256
UCONTEXT_SIZE = UC_SIGMASK + 8 + 128  # + the glibc-sized sigmask tail the kernel leaves (sigset_t is 128 in libc)
FRAME_INFO = 8 + UCONTEXT_SIZE  # struct rt_sigframe { pretcode; ucontext; siginfo }
SIGINFO_SIZE = 128
FRAME_SIZE = FRAME_INFO + SIGINFO_SIZE
FPSTATE_SIZE = 512
SS_ONSTACK, SS_DISABLE = 1, 2


class SignalState:
    """One process's signal dispositions (signo -> (handler, flags, restorer, mask)), masks, pending."""

    def __init__(self) -> None:
        self.actions: dict[int, tuple[int, int, int, int]] = {}
        self.blocked = 0
        self.pending = 0
        self.info: dict[int, tuple[int, int, int]] = {}  # signo -> (code, pid, status) of the pending one
        self.altstack = (0, SS_DISABLE, 0)  # ss_sp, ss_flags, ss_size
        self.saved_mask: int | None = None  # rt_sigsuspend: the mask to restore after the handler

    def fork(self) -> SignalState:
        """The child's: the same dispositions and mask, nothing pending (POSIX fork)."""
        child = SignalState()
        child.actions = dict(self.actions)
        child.blocked = self.blocked
        child.altstack = self.altstack
        return child

    def exec_reset(self) -> None:
        """execve: handled signals go back to their default; ignored ones stay ignored (POSIX)."""
        self.actions = {s: a for s, a in self.actions.items() if a[0] == SIG_IGN}
        self.altstack = (0, SS_DISABLE, 0)

    def action(self, signo: int) -> tuple[int, int, int, int]:
        return self.actions.get(signo, (SIG_DFL, 0, 0, 0))

    def ignored(self, signo: int) -> bool:
        handler = self.action(signo)[0]
        return handler == SIG_IGN or (handler == SIG_DFL and signo in IGNORED_BY_DEFAULT)

    def deliverable(self) -> int:
        """The lowest pending, unblocked signal that does something (0: none)."""
        ready = self.pending & ~self.blocked
        for signo in range(1, NSIG + 1):
            if ready >> (signo - 1) & 1:
                if self.ignored(signo):
                    self.pending &= ~(1 << (signo - 1))  # discarded, as Linux discards an ignored signal
                    continue
                return signo
        return 0


def state(p: Posix) -> SignalState:
    if p.proc.sig is None:
        p.proc.sig = SignalState()
    return p.proc.sig


def send(p: Posix, pid: int, signo: int, code: int = SI_USER, status: int = 0) -> int:
    """Make ``signo`` pending for ``pid`` (sender: the caller) and wake it; 0 or -ESRCH."""
    target = p.system.procs.get(pid)
    if target is None or target.exit_status is not None:
        return -ESRCH
    if target.sig is None:
        target.sig = SignalState()
    if signo:
        st = target.sig
        if st.ignored(signo) and signo != SIGKILL:
            return 0
        st.pending |= 1 << (signo - 1)
        st.info[signo] = (code, p.proc.pid, status)
        p.system.wake(p, pid)  # a waiting call re-runs and sees it
    return 0


def child_code(wstatus: int) -> tuple[int, int]:
    """A wait status word as siginfo tells it: (CLD_KILLED, the signal) or (CLD_EXITED, the code)."""
    killed = wstatus & 0x7F
    return (CLD_KILLED, killed) if killed else (CLD_EXITED, wstatus >> 8 & 0xFF)


def interrupting(p: Posix) -> bool:
    """A call about to wait: is there a signal that must interrupt it?"""
    st = p.proc.sig
    return st is not None and st.deliverable() != 0


def deliver_pending(p: Posix, rc: int, restart_nr: int | None = None) -> int:
    """Deliver the pending signals on the way out of a call that returned ``rc``; returns RAX.

    ``restart_nr``: the call was interrupted while waiting; with SA_RESTART it runs again after
    the handler (Linux's -ERESTARTSYS), else it returns -EINTR."""
    st = p.proc.sig
    if st is None:
        return rc
    signo = st.deliverable()
    if not signo:
        return rc
    st.pending &= ~(1 << (signo - 1))
    handler, flags = st.action(signo)[:2]
    code, sender, status = st.info.pop(signo, (SI_USER, 0, 0))
    if handler == SIG_DFL:
        from libos.posix.process import terminate

        return terminate(p, signo, 128 + signo)  # its default action ends it (wait4 sees the signal)
    regs = after_call(p, rc)  # where the program resumes: after its `syscall`, with rc
    if restart_nr is not None and flags & SA_RESTART:
        regs["rip"] -= 2  # the `syscall` again, with its number back in RAX (-ERESTARTSYS)
        regs["rax"], regs["rcx"] = restart_nr, regs["rip"]
    info = struct.pack("<iiiiiIi", signo, 0, code, 0, sender, 0, status)
    return _enter_handler(p, signo, regs, info)


# How a CPU exception shows as a signal: Linux's trap handlers (arch/x86/kernel/traps.c: #PF, #GP,
# #SS, #NP, #TS -> SIGSEGV, #UD -> SIGILL, #DE/#MF/#XM -> SIGFPE, #BP/#DB -> SIGTRAP, #AC -> SIGBUS).
VECTOR_SIGNAL = {14: SIGSEGV, 13: SIGSEGV, 6: SIGILL, 0: SIGFPE, 16: SIGFPE, 19: SIGFPE, 3: SIGTRAP, 1: SIGTRAP,
                 17: SIGBUS, 12: SIGSEGV, 11: SIGSEGV, 10: SIGSEGV}
SEGV_MAPERR, SEGV_ACCERR, SI_KERNEL = 1, 2, 0x80


def deliver_fault(p: Posix, vector: int, error_code: int, fault_va: int, regs: dict[str, int]) -> bool:
    """A CPU exception the pager could not serve: run the program's handler for its signal.

    True when a handler was entered (the faulting instruction runs again when it returns, as on
    Linux); False when the signal has no handler or is blocked: then the exokernel stops the
    process with its fault report and wait4 reports the signal (VECTOR_SIGNAL)."""
    st = p.proc.sig if p.proc is not None else None
    signo = VECTOR_SIGNAL.get(vector)
    if st is None or signo is None or signo == SIGKILL:
        return False
    handler = st.action(signo)[0]
    if handler in (SIG_DFL, SIG_IGN) or st.blocked >> (signo - 1) & 1:
        return False  # Linux forces the default action for a blocked or ignored synchronous fault
    code = (SEGV_ACCERR if error_code & 1 else SEGV_MAPERR) if vector == 14 else SI_KERNEL
    addr = fault_va if vector == 14 else regs["rip"]
    info = struct.pack("<iiiiQ", signo, 0, code, 0, addr)
    return _enter_handler(p, signo, dict(regs), info) == 0


def _enter_handler(p: Posix, signo: int, regs: dict[str, int], info: bytes) -> int:
    """Push Linux's rt_sigframe for ``regs`` (the interrupted context) and resume at the handler."""
    st = p.proc.sig
    handler, flags, restorer, mask = st.action(signo)
    old_mask = st.saved_mask if st.saved_mask is not None else st.blocked
    st.saved_mask = None
    sp = regs["rsp"]
    ss_sp, ss_flags, ss_size = st.altstack
    if flags & SA_ONSTACK and not ss_flags & SS_DISABLE and not ss_sp <= sp < ss_sp + ss_size:
        sp = ss_sp + ss_size
    else:
        sp -= 128  # the System V red zone below RSP belongs to the interrupted code
    fp = (sp - FPSTATE_SIZE) & ~63
    frame = ((fp - FRAME_SIZE) & ~15) - 8  # (RSP + 8) 16-aligned at the handler, as after a call
    mcontext = struct.pack("<18Q", *(regs[r] & _MASK for r in SIGCONTEXT_REGS))
    mcontext += struct.pack("<HHHH5Q", 0x33, 0, 0, 0x2B, 0, 0, old_mask, 0, fp) + bytes(64)
    uc = struct.pack("<QQQiiQ", 0, 0, ss_sp, ss_flags, 0, ss_size) + mcontext + struct.pack("<Q", old_mask)
    uc = uc.ljust(UCONTEXT_SIZE, b"\0")
    try:
        p.port.write(fp, p.port.fpu_save())
        p.port.write(frame, struct.pack("<Q", restorer) + uc + info.ljust(SIGINFO_SIZE, b"\0"))
    except p.port.Fault:
        from libos.posix.process import terminate

        return terminate(p, SIGSEGV, 128 + SIGSEGV)  # no room for the frame: Linux forces SIGSEGV
    st.blocked |= mask & ~_UNCATCHABLE
    if not flags & SA_NODEFER:
        st.blocked |= 1 << (signo - 1)
    if flags & SA_RESETHAND:
        st.actions.pop(signo, None)
    new = dict.fromkeys(GPRS, 0)
    new.update(rip=handler, rsp=frame, rdi=signo, rsi=frame + FRAME_INFO, rdx=frame + 8, rflags=regs["rflags"])
    p.port.resume(new)
    return 0


@syscall("rt_sigreturn")
def sys_rt_sigreturn(p: Posix, *_: int) -> int:
    """Back from a handler: its `ret` popped pretcode, so RSP is the frame + 8 (at the ucontext)."""
    st = state(p)
    uc = p.port.regs()["rsp"]
    try:
        raw = p.port.read(uc, UC_SIGMASK + 8)
        values = struct.unpack_from("<18Q", raw, UC_MCONTEXT)
        fp = struct.unpack_from("<Q", raw, UC_MCONTEXT + 152 + 32)[0]
        mask = struct.unpack_from("<Q", raw, UC_SIGMASK)[0]
        image = p.port.read(fp, FPSTATE_SIZE) if fp else None
    except p.port.Fault:
        from libos.posix.process import terminate

        return terminate(p, SIGSEGV, 128 + SIGSEGV)
    regs = dict(zip(SIGCONTEXT_REGS, values))
    st.blocked = mask & ~_UNCATCHABLE
    if image is not None:
        p.port.fpu_restore(image)
    p.port.resume(regs)
    return 0


def _targets(p: Posix, pid: int) -> list[int]:
    procs = p.system.procs
    if pid > 0:
        pid = p.system.tids.get(pid, pid)  # a thread id: its process (the running thread handles it)
        return [pid] if pid in procs else []
    if pid == 0:
        return sorted(q.pid for q in procs.values() if q.pgid == p.proc.pgid and q.exit_status is None)
    if pid == -1:
        return sorted(q.pid for q in procs.values() if q.pid != 1 and q.exit_status is None)
    return sorted(q.pid for q in procs.values() if q.pgid == -pid and q.exit_status is None)


@syscall("kill")
def sys_kill(p: Posix, pid: int, signo: int, *_: int) -> int:
    if not 0 <= signo <= NSIG:
        return -EINVAL
    targets = _targets(p, s32(pid))
    if not targets:
        return -ESRCH
    for t in targets:
        send(p, t, signo)
    return 0


@syscall("tgkill")
def sys_tgkill(p: Posix, tgid: int, tid: int, signo: int, *_: int) -> int:
    return sys_kill(p, tid, signo)


@syscall("tkill")
def sys_tkill(p: Posix, tid: int, signo: int, *_: int) -> int:
    return sys_kill(p, tid, signo)


@syscall("rt_sigsuspend")
def sys_rt_sigsuspend(p: Posix, mask: int, size: int, *_: int) -> int:
    st = state(p)
    new = p.port.read_u64(mask) & ~_UNCATCHABLE
    old = st.blocked
    st.blocked = new
    if st.deliverable():
        st.saved_mask = old  # the handler's frame restores it (rt_sigreturn)
        return -EINTR
    st.blocked = old
    raise WouldBlock(0)


@syscall("pause")
def sys_pause(p: Posix, *_: int) -> int:
    if state(p).deliverable():
        return -EINTR
    raise WouldBlock(0)


@syscall("rt_sigpending")
def sys_rt_sigpending(p: Posix, out: int, *_: int) -> int:
    st = state(p)
    p.port.write(out, struct.pack("<Q", st.pending & st.blocked))
    return 0


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
