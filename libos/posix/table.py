"""x86-64 Linux system call numbers and the errno values posix returns.

Numbers: Linux arch/x86/entry/syscalls/syscall_64.tbl (the 64-bit ABI column). Only the calls
posix serves or names in its logs are listed; an unlisted number shows as ``#nr``.
"""

from __future__ import annotations

SYSCALL_NAMES: dict[int, str] = {
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 6: "lstat", 7: "poll",
    8: "lseek", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
    14: "rt_sigprocmask", 15: "rt_sigreturn", 16: "ioctl", 17: "pread64", 18: "pwrite64", 19: "readv",
    20: "writev", 21: "access", 22: "pipe", 24: "sched_yield", 28: "madvise", 32: "dup", 33: "dup2",
    35: "nanosleep", 39: "getpid", 40: "sendfile", 41: "socket", 56: "clone", 57: "fork", 58: "vfork",
    59: "execve", 60: "exit", 61: "wait4", 62: "kill", 63: "uname", 72: "fcntl", 79: "getcwd",
    80: "chdir", 89: "readlink", 96: "gettimeofday", 97: "getrlimit", 99: "sysinfo", 102: "getuid",
    104: "getgid", 107: "geteuid", 108: "getegid", 109: "setpgid", 110: "getppid", 111: "getpgrp",
    112: "setsid", 157: "prctl", 158: "arch_prctl", 186: "gettid", 201: "time", 202: "futex",
    217: "getdents64", 218: "set_tid_address", 228: "clock_gettime", 230: "clock_nanosleep",
    231: "exit_group", 257: "openat", 262: "newfstatat", 273: "set_robust_list", 293: "pipe2",
    302: "prlimit64", 318: "getrandom", 334: "rseq",
}  # fmt: skip
NR = {name: nr for nr, name in SYSCALL_NAMES.items()}

# Linux errno values (include/uapi/asm-generic/errno-base.h, errno.h)
EBADF, EFAULT, EINVAL, ENOTTY, ERANGE, ENOSYS, ENOMEM = 9, 14, 22, 25, 34, 38, 12
