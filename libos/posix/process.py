"""Processes: identity, exit, resource limits, the names a process has (prctl, uname), TLS.

fork/vfork/clone, execve and wait4 live here too as they arrive (docs/posix.md).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import FSBASE_FS, FSBASE_GS, SchedOp
from libos.posix.table import EINVAL, ENOSYS, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

# arch_prctl codes (arch/x86/include/uapi/asm/prctl.h)
_ARCH_SET_GS, _ARCH_SET_FS, _ARCH_GET_FS, _ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
_ARCH_FS = {_ARCH_SET_FS: FSBASE_FS, _ARCH_SET_GS: FSBASE_GS}
_PR_SET_NAME, _PR_GET_NAME = 15, 16
_RLIMIT_STACK = 3
_RLIM_INFINITY = (1 << 64) - 1
# uname: fixed, so a run never depends on the host (deterministic); struct utsname has 6 x 65 bytes
UTSNAME = (b"Linux", b"exo", b"6.1.0-exo", b"#1 exo", b"x86_64", b"(none)")


@syscall("exit_group", "exit")  # exit: one thread per process so far, so it ends the process
def sys_exit_group(p: Posix, status: int, *_: int) -> int:
    for module in p.siblings.values():
        if module is not p:
            module.at_exit()
    p.proc.fds.close_all(p)
    return p.hc("sched_op", SchedOp.EXIT, status & 0xFF)


@syscall("getpid", "gettid")
def sys_getpid(p: Posix, *_: int) -> int:
    return p.proc.pid


@syscall("getppid")
def sys_getppid(p: Posix, *_: int) -> int:
    return p.proc.ppid


@syscall("getuid", "geteuid", "getgid", "getegid")
def sys_getuid(p: Posix, *_: int) -> int:
    return 0  # root, as the images' files are owned (docs/posix.md)


@syscall("set_tid_address")
def sys_set_tid_address(p: Posix, tidptr: int, *_: int) -> int:
    return p.proc.pid


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
    if old:
        limit = (8 << 20, _RLIM_INFINITY) if resource == _RLIMIT_STACK else (_RLIM_INFINITY, _RLIM_INFINITY)
        p.port.write(old, struct.pack("<QQ", *limit))
    return 0


@syscall("uname")
def sys_uname(p: Posix, buf: int, *_: int) -> int:
    p.port.write(buf, b"".join(f.ljust(65, b"\0") for f in UTSNAME))
    return 0


@syscall("readlink")
def sys_readlink(p: Posix, path: int, buf: int, size: int, *_: int) -> int:
    if p.cstr(path) != b"/proc/self/exe":
        return -ENOSYS  # no file system yet (docs/posix.md)
    data = p.proc.exe.encode()[:size]
    p.port.write(buf, data)
    return len(data)
