"""``exo run --strace``: every completed system call in strace's format, on exo's stderr.

``[pid 3] openat(AT_FDCWD, "/etc/passwd", O_RDONLY) = 3``; a failed call shows ``-1 ENOENT``.
Each line is one ``log`` hypercall, so a traced run counts those too (the guest's own counts are
the same with and without --strace apart from them). Arguments are decoded from a small table
(strings, file descriptors, flags in octal or hex); unlisted calls show their registers in hex.
A call that waits is printed once, when it completes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libos.posix.table import ERRNO_NAMES, SYSCALL_NAMES

if TYPE_CHECKING:
    from libos.posix import Posix

# Argument kinds: d decimal, i a 32-bit int (pid_t, fd), x hex, s string, o octal, f dirfd (AT_FDCWD), v a string vector (argv)
SPEC: dict[str, str] = {
    "read": "dxd", "write": "dsd", "open": "sxo", "close": "d", "stat": "sx", "fstat": "dx", "lstat": "sx",
    "lseek": "ddd", "mmap": "xdxxdx", "mprotect": "xdx", "munmap": "xd", "brk": "x", "ioctl": "dxx",
    "pread64": "dxdd", "pwrite64": "dsdd", "readv": "dxd", "writev": "dxd", "access": "so", "pipe": "x",
    "dup": "d", "dup2": "dd", "dup3": "ddx", "getpid": "", "sendfile": "ddxd", "clone": "xxxxx", "fork": "",
    "vfork": "", "execve": "svx", "exit": "d", "exit_group": "d", "wait4": "ixxx", "kill": "id", "uname": "x",
    "fcntl": "ddx", "getcwd": "xd", "chdir": "s", "readlink": "sxd", "openat": "fsxo", "newfstatat": "fsxx",
    "mkdir": "so", "mkdirat": "fso", "unlink": "s", "unlinkat": "fsx", "rename": "ss", "pipe2": "xx",
    "rt_sigaction": "dxxd", "rt_sigprocmask": "dxxd", "getdents64": "dxd", "nanosleep": "xx",
    "clock_gettime": "dx", "arch_prctl": "xx", "set_tid_address": "x", "prlimit64": "ddxx", "getrandom": "xdx",
}  # fmt: skip
_MAX = 32  # characters of a string shown, as strace's default -s 32


def _arg(p: Posix, kind: str, v: int) -> str:
    if kind == "d":
        v &= 0xFFFF_FFFF_FFFF_FFFF
        return str(v - (1 << 64) if v >> 63 else v)
    if kind == "i":
        v &= 0xFFFF_FFFF
        return str(v - (1 << 32) if v >> 31 else v)
    if kind == "f":
        return "AT_FDCWD" if v & 0xFFFF_FFFF == 0xFFFF_FF9C else str(v)
    if kind == "o":
        return oct(v).replace("0o", "0")
    if kind in "sv" and v:
        try:
            if kind == "v":
                items = []
                while len(items) < 8:
                    ptr = p.port.read_u64(v + 8 * len(items))
                    if not ptr:
                        break
                    items.append(_string(p.cstr(ptr, _MAX + 1)))
                return "[" + ", ".join(items) + "]"
            return _string(p.cstr(v, _MAX + 1))
        except p.port.Fault:
            return hex(v)
    return hex(v) if v else "0" if kind != "s" else "NULL"


def _string(b: bytes) -> str:
    shown = b[:_MAX].decode("latin-1").encode("unicode_escape").decode().replace('"', '\\"')
    return f'"{shown}"' + ("..." if len(b) > _MAX else "")


BEFORE = frozenset({59, 60, 231})  # execve, exit, exit_group: printed as they start ("= ?")


def line(p: Posix, nr: int, args: tuple[int, ...], rc: int | None) -> str:
    name = SYSCALL_NAMES.get(nr, f"syscall_{nr}")
    spec = SPEC.get(name)
    shown = ([_arg(p, k, a) for k, a in zip(spec, args)] if spec is not None
             else [hex(a) for a in args[:3]])
    if rc is None:
        result = "?"
    elif rc < 0 and -rc in ERRNO_NAMES and rc > -4096:
        result = f"-1 {ERRNO_NAMES[-rc]}"
    else:
        result = hex(rc) if name in ("mmap", "brk") else str(rc)
    return f"[pid {p.caller_tid}] {name}({', '.join(shown)}) = {result}"


def trace(p: Posix, nr: int, args: tuple[int, ...], rc: int) -> None:
    """Print one completed call (a write's buffer is read before the call returns: strace shows it too)."""
    try:
        text = line(p, nr, args, rc)
    except Exception as e:  # noqa: BLE001 - tracing must never change what the program sees
        text = f"[pid {p.caller_tid}] {SYSCALL_NAMES.get(nr, nr)}(...) = {rc} (strace: {e})"
    p.log_raw(text)
