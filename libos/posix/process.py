"""Processes: identity, exit, resource limits, the names a process has (prctl, uname), TLS.

fork/vfork/clone, execve and wait4 live here too as they arrive (docs/posix.md).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import (
    EV_CHILD,
    FSBASE_FS,
    FSBASE_GS,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    REAP_EXITED,
    REAP_FAULTED,
    REAP_INFO_SIZE,
    EnvStatus,
    SchedOp,
)
from libos.posix import signals, threads
from libos.posix.signals import SIGKILL, VECTOR_SIGNAL
from libos.posix.system import Process, WouldBlock
from libos.posix.table import EAGAIN, ECHILD, EINVAL, ENOMEM, ENOSYS, EPERM, ESRCH, s32, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

# arch_prctl codes (arch/x86/include/uapi/asm/prctl.h)
_ARCH_SET_GS, _ARCH_SET_FS, _ARCH_GET_FS, _ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
_ARCH_FS = {_ARCH_SET_FS: FSBASE_FS, _ARCH_SET_GS: FSBASE_GS}
_PR_SET_NAME, _PR_GET_NAME = 15, 16
_RLIMIT_STACK, _RLIMIT_NOFILE = 3, 7
_RLIM_INFINITY = (1 << 64) - 1
# uname: fixed, so a run never depends on the host (deterministic); struct utsname has 6 x 65 bytes
UTSNAME = (b"Linux", b"exo", b"6.1.0-exo", b"#1 exo", b"x86_64", b"(none)")


@syscall("getpid")
def sys_getpid(p: Posix, *_: int) -> int:
    return p.proc.pid


@syscall("gettid")
def sys_gettid(p: Posix, *_: int) -> int:
    return threads.tid_of(p.proc)


@syscall("getppid")
def sys_getppid(p: Posix, *_: int) -> int:
    parent = p.system.procs.get(p.proc.ppid)
    return p.proc.ppid if parent is not None and parent.exit_status is None else 0  # an orphan: exo, not init


@syscall("getuid", "geteuid", "getgid", "getegid")
def sys_getuid(p: Posix, *_: int) -> int:
    return 0  # root, as the images' files are owned (docs/posix.md)


@syscall("set_tid_address")
def sys_set_tid_address(p: Posix, tidptr: int, *_: int) -> int:
    p.proc.clear_tid = tidptr
    return threads.tid_of(p.proc)


@syscall("set_robust_list")
def sys_set_robust_list(p: Posix, head: int, ln: int, *_: int) -> int:
    return 0 if ln == 24 else -EINVAL  # sizeof(struct robust_list_head)


@syscall("rseq")
def sys_rseq(p: Posix, *_: int) -> int:
    return -ENOSYS  # glibc and musl carry on without it


@syscall("arch_prctl")
def sys_arch_prctl(p: Posix, code: int, addr: int, *_: int) -> int:
    which = _ARCH_FS.get(code)
    proc = p.proc
    if which is not None:
        rc = p.hc("env_set_fsbase", 0, which, addr)
        if rc == 0:
            if which == FSBASE_FS:
                proc.fs_base = addr
            else:
                proc.gs_base = addr
        return rc
    if code in (_ARCH_GET_FS, _ARCH_GET_GS):
        p.port.write(addr, struct.pack("<Q", proc.fs_base if code == _ARCH_GET_FS else proc.gs_base))
        return 0
    return -EINVAL


@syscall("prctl")
def sys_prctl(p: Posix, option: int, arg2: int, *_: int) -> int:
    if option == _PR_GET_NAME:
        p.port.write(arg2, p.proc.comm.ljust(16, b"\0"))
        return 0
    if option == _PR_SET_NAME:
        p.proc.comm = p.cstr(arg2, 16)[:15]
        return 0
    return -EINVAL


@syscall("prlimit64")
def sys_prlimit64(p: Posix, pid: int, resource: int, new: int, old: int, *_: int) -> int:
    """Limits as Linux reports them; RLIMIT_NOFILE is the app's fds quota (its hard limit), and a
    process may lower its soft limit (never raise it past the quota: EPERM). Others are accepted unchanged."""
    table = p.proc.fds
    if old:
        if resource == _RLIMIT_NOFILE:
            limit = (table.limit, p.system.fd_limit)
        else:
            limit = (8 << 20, _RLIM_INFINITY) if resource == _RLIMIT_STACK else (_RLIM_INFINITY, _RLIM_INFINITY)
        p.port.write(old, struct.pack("<QQ", *limit))
    if new and resource == _RLIMIT_NOFILE:
        soft, hard = struct.unpack("<QQ", p.port.read(new, 16))
        if soft > hard:
            return -EINVAL
        if hard > p.system.fd_limit:
            return -EPERM
        table.limit = soft
    return 0


@syscall("getgroups")
def sys_getgroups(p: Posix, size: int, lst: int, *_: int) -> int:
    """root's one supplementary group, 0 (as `id` shows on Linux for root)."""
    size = s32(size)
    if size < 0:
        return -EINVAL
    if size:
        p.port.write(lst, struct.pack("<I", 0))
    return 1


@syscall("setgroups", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid")
def sys_setids(p: Posix, *_: int) -> int:
    return 0  # everyone is root here: the change is accepted (docs/posix.md)


@syscall("sched_getaffinity")
def sys_sched_getaffinity(p: Posix, pid: int, size: int, mask: int, *_: int) -> int:
    """One CPU, CPU 0 (the machine has one vCPU): the mask's first byte is 1; the size written."""
    if size < 8 or size & 7:
        return -EINVAL
    p.port.write(mask, b"\x01" + bytes(7))
    return 8


@syscall("getrlimit")
def sys_getrlimit(p: Posix, resource: int, old: int, *_: int) -> int:
    return sys_prlimit64(p, 0, resource, 0, old)


@syscall("setrlimit")
def sys_setrlimit(p: Posix, resource: int, new: int, *_: int) -> int:
    return sys_prlimit64(p, 0, resource, new, 0)


@syscall("sched_yield")
def sys_sched_yield(p: Posix, *_: int) -> int:
    if threads.yield_thread(p):
        return 0  # another thread of the process runs (libos/posix/threads.py)
    p.hc("sched_op", SchedOp.YIELD, 0)  # the other processes run first, as the kernel's yield does
    return 0


@syscall("uname")
def sys_uname(p: Posix, buf: int, *_: int) -> int:
    p.port.write(buf, b"".join(f.ljust(65, b"\0") for f in UTSNAME))
    return 0


# ------------------------------------------------------------ fork, exit, wait
# clone flags (include/uapi/linux/sched.h)
CLONE_VM, CLONE_VFORK, CLONE_PARENT_SETTID = 0x100, 0x4000, 0x100000
CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x200000, 0x1000000
WNOHANG = 1
# How a fault shows to the parent (a machine check, a libOS error, shows as SIGKILL): signals.py.
_REAP = struct.Struct("<QQqQ")  # exo/abi.py REAP_INFO_SIZE: {id, how, status, vector}


def fork_process(p: Posix, flags: int, stack: int, ptid: int, ctid: int) -> int:
    """A new process: a copy-on-write copy of the caller (the memory module's fork machinery)."""
    mem = p.siblings.get("memory")
    if mem is None:
        return -ENOSYS  # a Linux program links memory = "cow" (exo/build/linux_app.py)
    p._child = mem._child = None
    child = p.hc("env_create")  # the child resumes after this `syscall` with RAX 0
    if child < 0:
        return -EAGAIN
    clone, mclone = p._child, mem._child
    try:
        rc = mem._copy_address_space(child, mclone)
        if rc >= 0:
            rc = p.hc("page_alloc", child, mem.uxstack_top - PAGE_SIZE, PERM_R | PERM_W)
        if rc >= 0:
            rc = p.hc("env_set_upcall", child, mem.upcall_entry, mem.uxstack_top)
        if rc >= 0 and stack:
            rc = p.hc("env_set_entry", child, p.port.regs()["rip"] + 2, stack)
    except p.port.Fault as e:
        rc = -e.errno
    if rc < 0:
        p.hc("env_destroy", child)
        return -ENOMEM if rc == -ENOMEM else -EAGAIN
    parent = p.proc
    proc = Process(pid=child, ppid=parent.pid, fds=parent.fds.fork(), pgid=parent.pgid, sid=parent.sid,
                   cwd=parent.cwd, umask=parent.umask, comm=parent.comm, exe=parent.exe, argv=list(parent.argv),
                   brk_start=parent.brk_start, brk=parent.brk, mmap_next=parent.mmap_next,
                   fs_base=parent.fs_base, gs_base=parent.gs_base, execs=parent.execs)
    proc.sig = parent.sig.fork() if parent.sig is not None else None
    proc.guarded = list(parent.guarded)
    clone.proc = proc
    parent.stage_ready = False  # its staging pages are copy-on-write now (libos/posix/vfs.py)
    p.system.procs[child] = proc
    tid = struct.pack("<i", child)
    if flags & CLONE_PARENT_SETTID and ptid:
        p.port.write(ptid, tid)
    if flags & CLONE_CHILD_SETTID and ctid:
        clone.port.write(ctid, tid)  # in the child's memory (its own copy-on-write copy)
    if flags & CLONE_CHILD_CLEARTID:
        proc.clear_tid = ctid
    p.hc("env_set_status", child, EnvStatus.RUNNABLE)
    return child


@syscall("fork", "vfork")
def sys_fork(p: Posix, *_: int) -> int:
    # vfork is a copy-on-write fork here: the parent does not wait for the child's exec (the same
    # results for every program that uses vfork as POSIX allows; docs/posix.md).
    return fork_process(p, 0, 0, 0, 0)


@syscall("clone")
def sys_clone(p: Posix, flags: int, stack: int, ptid: int, ctid: int, tls: int, *_: int) -> int:
    if flags & CLONE_VM and not flags & CLONE_VFORK:
        return threads.clone_thread(p, flags, stack, ptid, ctid, tls)
    return fork_process(p, flags, 0 if flags & CLONE_VFORK else stack, ptid, ctid)


def terminate(p: Posix, wstatus: int, code: int) -> int:
    """End the calling process: flush, close its descriptors, record ``wstatus`` (the word wait4
    reports: ``status << 8`` for an exit, the signal number for a kill) and exit with ``code``.
    The parent learns it from the exokernel (EV_CHILD, env_reap) once the environment is gone."""
    proc = p.proc
    for module in p.siblings.values():
        if module is not p:
            module.at_exit()
    from libos.posix.mm import write_back

    write_back(p, 0, 1 << 64)  # its writable shared file mappings reach the file
    proc.fds.close_all(p)
    if all(q is proc or q.exit_status is not None for q in p.system.procs.values()):
        p.system.vfs.unmount(p)  # the last process: what it and the others wrote reaches the disk
    proc.exit_status = wstatus
    if proc.clear_tid:
        try:
            p.port.write(proc.clear_tid, bytes(4))
        except p.port.Fault:
            pass
    if proc.ppid in p.system.procs:  # SIGCHLD: the parent's handler (a shell's `wait`) learns of it
        signals.send(p, proc.ppid, signals.SIGCHLD, *signals.child_code(wstatus))
    return p.hc("sched_op", SchedOp.EXIT, code & 0xFF)


@syscall("exit_group")
def sys_exit_group(p: Posix, status: int, *_: int) -> int:
    return terminate(p, (status & 0xFF) << 8, status)


@syscall("exit")
def sys_exit(p: Posix, status: int, *_: int) -> int:
    """One thread ends (libos/posix/threads.py); the last one's exit ends the process."""
    rc = threads.exit_thread(p, status)
    return terminate(p, (status & 0xFF) << 8, status) if rc is None else rc


def _scratch(p: Posix) -> int:
    va = p.data_base + PAGE_SIZE  # the posix module's own page for hypercall records
    p.ensure_page(va)
    # A write through the port breaks copy-on-write after a fork (the memory module's pager):
    # the exokernel checks the record's page is writable and does not page in for a hypercall.
    p.port.write(va, bytes(REAP_INFO_SIZE))
    return va


def _collect(p: Posix) -> None:
    """Take every ended child's record from the exokernel: its wait status becomes available."""
    procs = p.system.procs
    info = _scratch(p)
    while p.hc("env_reap", 0, info) > 0:
        cid, how, status, vector = _REAP.unpack(p.port.read(info, _REAP.size))
        child = procs.get(cid)
        if child is None:
            continue
        if how == REAP_EXITED:
            child.wait_status = child.exit_status if child.exit_status is not None else (status & 0xFF) << 8
        elif how == REAP_FAULTED:
            child.wait_status = VECTOR_SIGNAL.get(vector, SIGKILL)
        else:
            child.wait_status = SIGKILL


def _matches(proc: Process, who: int, caller: Process) -> bool:
    if who > 0:
        return proc.pid == who
    if who == 0:
        return proc.pgid == caller.pgid
    if who == -1:
        return True
    return proc.pgid == -who


def _ended_child(p: Posix, who: int) -> Process | int | None:
    """The first ended child matching ``who`` (wait4's pid argument), None if none has ended
    yet, -ECHILD if there is no such child."""
    me = p.proc
    _collect(p)
    kids = sorted((c for c in p.system.procs.values() if c.ppid == me.pid and _matches(c, who, me)),
                  key=lambda c: c.pid)
    if not kids:
        return -ECHILD
    return next((c for c in kids if c.wait_status is not None), None)


@syscall("wait4")
def sys_wait4(p: Posix, pid: int, status: int, options: int, rusage: int, *_: int) -> int:
    c = _ended_child(p, s32(pid))
    if isinstance(c, int):
        return c
    if c is not None:
        if status:
            p.port.write(status, struct.pack("<i", c.wait_status))
        if rusage:
            p.port.write(rusage, bytes(144))  # struct rusage: no accounting yet
        del p.system.procs[c.pid]
        return c.pid
    if options & WNOHANG:
        return 0
    raise WouldBlock(EV_CHILD)


P_ALL, P_PID, P_PGID = 0, 1, 2
WNOWAIT = 0x0100_0000


@syscall("waitid")
def sys_waitid(p: Posix, idtype: int, ident: int, infop: int, options: int, *_: int) -> int:
    """wait4's search by (idtype, id), the child described in a siginfo (CLD_EXITED or CLD_KILLED)."""
    who = {P_ALL: -1, P_PID: s32(ident), P_PGID: -s32(ident) if s32(ident) else 0}.get(idtype)
    if who is None or (idtype == P_PID and who <= 0):
        return -EINVAL
    c = _ended_child(p, who)
    if isinstance(c, int):
        return c
    if c is not None:
        how, value = signals.child_code(c.wait_status)
        if infop:
            info = struct.pack("<iiiiiIi", signals.SIGCHLD, 0, how, 0, c.pid, 0, value)
            p.port.write(infop, info.ljust(128, b"\0"))
        if not options & WNOWAIT:
            del p.system.procs[c.pid]
        return 0
    if options & WNOHANG:
        if infop:
            p.port.write(infop, bytes(128))  # si_pid 0: nothing has ended yet
        return 0
    raise WouldBlock(EV_CHILD)


@syscall("getpgrp")
def sys_getpgrp(p: Posix, *_: int) -> int:
    return p.proc.pgid


@syscall("getpgid")
def sys_getpgid(p: Posix, pid: int, *_: int) -> int:
    proc = p.system.procs.get(s32(pid)) if s32(pid) else p.proc
    return -ESRCH if proc is None else proc.pgid


@syscall("getsid")
def sys_getsid(p: Posix, pid: int, *_: int) -> int:
    proc = p.system.procs.get(s32(pid)) if s32(pid) else p.proc
    return -ESRCH if proc is None else proc.sid


@syscall("setpgid")
def sys_setpgid(p: Posix, pid: int, pgid: int, *_: int) -> int:
    proc = p.system.procs.get(s32(pid)) if s32(pid) else p.proc
    if proc is None:
        return -ESRCH
    proc.pgid = s32(pgid) or proc.pid
    return 0


@syscall("setsid")
def sys_setsid(p: Posix, *_: int) -> int:
    proc = p.proc
    if proc.pgid == proc.pid:
        return -EPERM  # already a group leader (Linux's rule)
    proc.sid = proc.pgid = proc.pid
    return proc.pid
