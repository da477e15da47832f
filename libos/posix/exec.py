"""execve: replace the calling process's image with a program file (Linux fs/exec.c, in the libOS).

The program's bytes come from the BOOTFILE region (the file `exo run` was given, mapped read-only
by the loader) for ``/proc/self/exe`` and the program's own path: busybox runs its applets by
re-executing itself. Everything user-visible is replaced: every page but the exokernel's region,
the libOS modules' data, the exception stack and BOOTFILE is unmapped; the segments are mapped and
filled, the System V stack written, TLS cleared, close-on-exec descriptors closed, and the
process resumes at the new entry point (``port.resume``) with Linux's ELF entry state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo.abi import (
    BOOTFILE,
    BOOTFILE_MAX,
    FSBASE_FS,
    FSBASE_GS,
    LIBOS_DATA,
    LIBOS_DATA_STRIDE,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    PERM_X,
    STACK_TOP,
    MmuOp,
)
from exo.linux import HWCAP, PF_W, PF_X, STACK_PAGES_LINUX, NotExecutable, linux_stack, load_plan
from libos.module import GPRS
from libos.posix.mm import MMAP_TOP
from libos.posix.table import E2BIG, EACCES, EFAULT, ENOENT, ENOEXEC, ENOSYS, syscall
from libos.posix.vfs import RegFile, call

if TYPE_CHECKING:
    from libos.posix import Posix

_MAX_ARGS = 4096  # strings in argv + envp (Linux's limit is by size: ARG_MAX 2 MiB; ours fits the stack)
_LIBOS_END = LIBOS_DATA + 16 * LIBOS_DATA_STRIDE


def bootfile(p: Posix) -> bytes:
    """The program file `exo run` started (read-only at BOOTFILE); b"" if none was mapped."""
    n = p.info.get("bootfile_len", 0)
    return p.port.read(BOOTFILE, min(n, BOOTFILE_MAX)) if n else b""


def _strings(p: Posix, va: int) -> list[bytes] | int:
    """A NULL-terminated array of string pointers (argv, envp); -EFAULT or -E2BIG."""
    out: list[bytes] = []
    if not va:
        return out
    try:
        while len(out) < _MAX_ARGS:
            ptr = p.port.read_u64(va + 8 * len(out))
            if not ptr:
                return out
            out.append(p.cstr(ptr, 128 * 1024))
    except p.port.Fault:
        return -EFAULT
    return -E2BIG


def _keep(va: int, bootfile_len: int) -> bool:
    """Pages execve leaves: the libOS modules' data and the program file (the exo region, the
    exception stack and the memory module's own pages are never listed by user_pages)."""
    return LIBOS_DATA <= va < _LIBOS_END or BOOTFILE <= va < BOOTFILE + bootfile_len


def _program(p: Posix, path: bytes) -> bytes | int:
    own = p.proc.exe.encode("utf-8", "surrogateescape")
    if path in (b"/proc/self/exe", own) or path == b"/proc/%d/exe" % p.proc.pid:
        return bootfile(p)
    vfs = p.system.vfs
    if vfs is None:
        return -ENOENT  # no file system yet: only the program itself (docs/posix.md)
    f = vfs.open(p, path.decode("utf-8", "surrogateescape"), 0)
    if isinstance(f, int):
        return f
    try:
        if not isinstance(f, RegFile):
            return -EACCES
        return call(p, lambda: f.read_at(p, 0, f.file_size(p)))
    finally:
        f.release(p)


@syscall("execve")
def sys_execve(p: Posix, path: int, argv: int, envp: int, *_: int) -> int:
    try:
        name = p.cstr(path)
    except p.port.Fault:
        return -EFAULT
    args = _strings(p, argv)
    if isinstance(args, int):
        return args
    env = _strings(p, envp)
    if isinstance(env, int):
        return env
    blob = _program(p, name)
    if isinstance(blob, int):
        return blob
    try:
        plan = load_plan(blob)
    except NotExecutable as e:
        if blob[:2] == b"#!":
            return -ENOSYS  # scripts need the file system to find their interpreter (docs/posix.md)
        p.log(f"execve {name.decode(errors='replace')}: {e} (-ENOEXEC)")
        return -ENOEXEC
    return _replace_image(p, plan, blob, args or [name], env)


def _replace_image(p: Posix, plan, blob: bytes, argv: list[bytes], envp: list[bytes]) -> int:
    mem = p.siblings["memory"]
    proc = p.proc
    # The point of no return: from here a failure can only end the process (as Linux's exec does
    # after flush_old_exec: the old image is gone).
    from libos.posix.mm import write_back

    write_back(p, 0, 1 << 64)  # the old image's shared file mappings reach their files first
    keep_len = p.info.get("bootfile_len", 0)
    gone = [va for va, _ in mem.user_pages() if not _keep(va, keep_len)]
    rc, _ = mem._mmu([(MmuOp.UNMAP, 0, va, 0, 0) for va in gone])
    mem.inherited = {va: f for va, f in mem.inherited.items() if _keep(va, keep_len)}
    end = 0
    protect = []
    for load in plan.loads:
        lo = load.va & ~(PAGE_SIZE - 1)
        hi = (load.va + load.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        for va in range(lo, hi, PAGE_SIZE):
            rc = rc if rc < 0 else p.hc("page_alloc", 0, va, PERM_R | PERM_W)
        if rc < 0:
            break
        data = blob[load.offset : load.offset + load.filesz]
        if data:
            p.port.write(load.va, data)
        if not load.flags & PF_W:
            final = PERM_R | (PERM_X if load.flags & PF_X else 0)
            protect += [(MmuOp.PROTECT, 0, va, 0, final) for va in range(lo, hi, PAGE_SIZE)]
        end = max(end, hi)
    if rc >= 0 and protect:
        rc, _ = mem._mmu(protect)
    for i in range(1, STACK_PAGES_LINUX + 1):
        rc = rc if rc < 0 else p.hc("page_alloc", 0, STACK_TOP - i * PAGE_SIZE, PERM_R | PERM_W)
    if rc < 0:
        from libos.posix.process import terminate

        p.log(f"execve: out of memory while loading ({rc}): the process ends")
        return terminate(p, 9, 128 + 9)  # as Linux kills a process whose exec failed late (SIGKILL)
    proc.execs += 1
    seed = p.system.seed * 1_000_003 + proc.pid * 1009 + proc.execs  # AT_RANDOM: per process and exec
    stack, rsp = linux_stack({"env": envp, "seed": seed, "phdr": plan.phdr, "phnum": plan.phnum,
                              "entry": plan.entry, "hwcap": HWCAP}, argv)
    p.port.write(rsp, stack)
    for which in (FSBASE_FS, FSBASE_GS):
        p.hc("env_set_fsbase", 0, which, 0)
    proc.fs_base = proc.gs_base = 0
    proc.guarded = []
    if proc.threads is not None:  # the other threads end (Linux de_thread); the caller keeps the pid
        for tid in proc.threads.threads:
            p.system.tids.pop(tid, None)
        proc.threads = None
    proc.brk_start = proc.brk = end
    proc.mmap_next = MMAP_TOP
    proc.argv = list(argv)
    proc.comm = argv[0].rsplit(b"/", 1)[-1][:15] if argv else b""
    proc.fds.close_on_exec(p)
    if proc.sig is not None:
        proc.sig.exec_reset()
    regs = dict.fromkeys(GPRS, 0)
    regs.update(rip=plan.entry, rsp=rsp, rflags=0x202)
    p.port.resume(regs)
    return 0


