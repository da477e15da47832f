"""The hypercall ABI: one table, read by the dispatcher, the docs and the guest headers.

A guest makes hypercall ``nr`` with ``call HYPERCALL_PAGE + 32*nr``; the stub
there does ``mov eax, nr; syscall; ret``. Arguments go in RDI, RSI, RDX, R10,
R8 (R10, not RCX, for the fourth: `syscall` clobbers RCX on real hardware, so
Xen and Linux use R10 too). The result comes back in RAX, a negative errno on
failure (exo/abi.py). Every pointer is checked against the caller's page tables
(EFAULT); every environment, frame and page against what the caller may use
(EPERM/ESRCH). The exokernel's code paths for each call are the ``_hc_*``
functions below.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from exo.abi import (
    CONSOLE_INFO_SIZE,
    CONSOLE_RAW,
    CONSOLE_TTY,
    ENV_INFO_SIZE,
    EV_IPC,
    FSBASE_FS,
    FSBASE_GS,
    IPC_INFO_SIZE,
    MMU_REQ_SIZE,
    PAGE_SIZE,
    QUOTA_INFO_SIZE,
    SYSCALL_HYPERCALL,
    SYSCALL_REFLECT,
    USER_TOP,
    EnvStatus,
    Errno,
    IpcFlag,
    MmuOp,
    SchedOp,
)
from exo.disk import hc_disk_grant, hc_disk_info, hc_disk_io
from exo.errors import HypercallError
from exo.events import hc_env_notify, hc_env_reap, hc_event_wait
from exo.events import signal as signal_event
from exo.frames import EXO, FrameType, OutOfFrames
from exo.structures import REFLECT_PATH
from exo.vm import check_max_right, check_user_va, perm_to_pte
from hw.paging import PTE_NX, PTE_W
from hw.regs import GPR_INDEX, Reg

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel

MAX_IO = 1 << 20  # bytes moved by one console call at most (a short count beyond)
MAX_MMU_BATCH = 4096  # requests in one mmu_update


class Hypercall:
    """One row of the table (a plain class, not a dataclass: hw/traps.py says why). Not changed
    after the table is built."""

    __slots__ = ("nr", "name", "args", "returns", "errors", "doc", "impl", "counted", "args_of")

    def __init__(self, nr: int, name: str, args: tuple[str, ...], returns: str, errors: tuple[Errno, ...],
                 doc: str, impl: Callable[..., int], counted: bool = True) -> None:
        self.nr = nr
        self.name = name
        self.args = args
        self.returns = returns
        self.errors = errors
        self.doc = doc
        self.impl = impl
        self.counted = counted  # False: the implementation accounts for itself (svc)
        # args_of(gpr) -> the argument tuple, made once per hypercall (itemgetter is C).
        idx = self.arg_index
        if not idx:
            self.args_of = _no_args
        elif len(idx) == 1:
            i = idx[0]
            self.args_of = lambda g, i=i: (g[i],)
        else:
            self.args_of = operator.itemgetter(*idx)

    def __repr__(self) -> str:
        return f"Hypercall({self.nr}, {self.name!r})"

    @property
    def arg_index(self) -> tuple[int, ...]:
        """Where the arguments sit in VCpu.gpr (RDI, RSI, RDX, R10, R8)."""
        return ARG_INDEX[: len(self.args)]


def _no_args(g) -> tuple:
    return ()


ARG_REGS = (Reg.RDI, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)
ARG_INDEX = tuple(GPR_INDEX[r] for r in ARG_REGS)


def _u(v: int) -> int:
    return v & 0xFFFF_FFFF_FFFF_FFFF


def _length(n: int) -> int:
    if n >= 1 << 63:
        raise HypercallError(Errno.EINVAL, f"negative length {n - (1 << 64)}")
    return n


# ------------------------------------------------------------------ console
def _hc_console_write(k: Exokernel, env: Env, buf: int, length: int) -> int:
    length = min(_length(length), MAX_IO)
    data = env.space.read(buf, length)
    n = k.machine.console.write(data)
    if n < 0:
        raise HypercallError(Errno.EPIPE, "console output closed")
    return n


def _hc_console_error(k: Exokernel, env: Env, buf: int, length: int) -> int:
    length = min(_length(length), MAX_IO)
    data = env.space.read(buf, length)
    n = k.machine.console.write_error(data)
    if n < 0:
        raise HypercallError(Errno.EPIPE, "console error stream closed")
    return n


_CONSOLE_INFO = struct.Struct("<QHHI")
assert _CONSOLE_INFO.size == CONSOLE_INFO_SIZE


def _hc_console_info(k: Exokernel, env: Env, info: int) -> int:
    console = k.machine.console
    flags = (CONSOLE_TTY if console.is_terminal() else 0) | (CONSOLE_RAW if getattr(console, "raw", False) else 0)
    rows, cols = console.window_size()
    env.space.write(info, _CONSOLE_INFO.pack(flags, min(rows, 0xFFFF), min(cols, 0xFFFF), 0))
    return 0


_QUOTA_INFO = struct.Struct("<6Q")
assert _QUOTA_INFO.size == QUOTA_INFO_SIZE


def _hc_quota_info(k: Exokernel, env: Env, info: int) -> int:
    t = env.tenant  # every environment has one (Exokernel.create)
    env.space.write(info, _QUOTA_INFO.pack(t.frames_used, t.frame_limit, t.envs_used, t.env_limit, t.fd_limit,
                                           t.weight))
    return 0


def _hc_console_read(k: Exokernel, env: Env, buf: int, length: int) -> int:
    length = min(_length(length), MAX_IO)
    env.space.user_chunks(buf, length, True)  # check before consuming input
    data = k.machine.console.read(length)
    if data is None:  # interactive and nothing typed yet: block, retry on wake-up
        return k.block_and_retry(env, "console")
    env.space.write(buf, data)
    return len(data)


# ------------------------------------------------------------------- memory
def _hc_page_alloc(k: Exokernel, env: Env, envid: int, va: int, perm: int) -> int:
    target = k.env_for(env, envid)
    check_user_va(va)
    pte = perm_to_pte(perm)
    try:
        frame = k.frames.alloc(target.id, FrameType.NORMAL)
    except OutOfFrames as e:
        raise HypercallError(Errno.ENOMEM, str(e)) from None
    try:
        target.space.map(va, frame, pte)
    except HypercallError:
        k.frames.free(frame)
        raise
    k.flush_if_current(target)
    return 0


def _check_share(k: Exokernel, frame: int, src_pte: int, pte: int) -> None:
    """Sharing a mapped frame (page_map, IPC page transfer) may not add rights.

    Nor exceed the frame's maximum right: checked again here, not only when the
    page is mapped, so that ipc_try_send refuses at once rather than leave a
    message that ipc_recv could never take.
    """
    # LAB 2 BEGIN share: refuse (EPERM) sharing an exokernel frame, exceeding its maximum right, or adding W or X to the source mapping
    if k.frames.owner[frame] == EXO:
        raise HypercallError(Errno.EPERM, "exokernel frames cannot be shared")
    check_max_right(k.frames, frame, pte)
    if pte & PTE_W and not src_pte & PTE_W:
        raise HypercallError(Errno.EPERM, "cannot grant write access to a read-only page")
    if not pte & PTE_NX and src_pte & PTE_NX:
        raise HypercallError(Errno.EPERM, "cannot grant execute access to a non-executable page")
    # LAB 2 STUB
    # LAB 2 END


def _mapped_source(src: Env, srcva: int, dstva: int, perm: int) -> tuple[int, int, int]:
    """page_map's and page_grant's arguments checked: (the frame at srcva in src, its PTE flags,
    the PTE flags perm asks for at dstva)."""
    check_user_va(srcva)
    check_user_va(dstva)
    pte = perm_to_pte(perm)
    if src.space.cow:
        src.space.break_cow(srcva)  # a copy-on-write page is shared as the sender's own (exo/instances.py)
    found = src.space.lookup(srcva)
    if found is None:
        raise HypercallError(Errno.EINVAL, f"nothing mapped at {srcva:#x} in env {src.id}")
    return found[0], found[1], pte


def _hc_page_map(k: Exokernel, env: Env, srcid: int, srcva: int, dstid: int, dstva: int, perm: int) -> int:
    src = k.env_for(env, srcid)
    dst = k.env_for(env, dstid)
    frame, src_pte, pte = _mapped_source(src, srcva, dstva, perm)
    _check_share(k, frame, src_pte, pte)
    dst.space.map(dstva, frame, pte)
    k.flush_if_current(dst)
    return 0


def _hc_page_grant(k: Exokernel, env: Env, dstid: int, srcva: int, dstva: int, perm: int) -> int:
    """L4's grant: the frame mapped at srcva in the caller moves to dstva in dstid, with its ownership
    (charged to dstid's app). Only dstid's pager may grant it pages (the microkernel structure names
    the pager: exo/structures.py), and only a frame it owns and maps once, so that nothing it keeps
    still reaches the page; perm may not add rights. A mapping at dstva is replaced (a copy-on-write
    frame there loses one reference)."""
    dst = k.envs.get(dstid)
    if dst is None or not dst.alive:
        raise HypercallError(Errno.ESRCH, f"no environment {dstid}")
    if dst.pager != env.id:
        raise HypercallError(Errno.EPERM, f"environment {env.id} is not environment {dstid}'s pager")
    frame, src_pte, pte = _mapped_source(env, srcva, dstva, perm)
    if k.frames.owner[frame] != env.id or k.frames.refs[frame] != 1:
        raise HypercallError(Errno.EPERM, f"frame {frame:#x} is not the caller's alone to grant")
    _check_share(k, frame, src_pte, pte)
    try:
        k.frames.transfer(frame, dst.id)
    except OutOfFrames as e:
        raise HypercallError(Errno.ENOMEM, str(e)) from None
    try:
        dst.space.map(dstva, frame, pte)
    except HypercallError:
        k.frames.transfer(frame, env.id)
        raise
    env.space.unmap(srcva)  # the frame's one other reference: the caller keeps nothing
    k.flush_if_current(env)
    k.flush_if_current(dst)
    return 0


def _hc_page_unmap(k: Exokernel, env: Env, envid: int, va: int) -> int:
    target = k.env_for(env, envid)
    check_user_va(va)
    target.space.unmap(va)
    k.flush_if_current(target)
    return 0


_MMU_REQ = struct.Struct("<IIQQQ")


def _hc_mmu_update(k: Exokernel, env: Env, reqs: int, count: int, done_ptr: int) -> int:
    """A batch of page-table updates, each validated; stops at the first bad one.

    MAP names a frame by number: the caller or the target must own it (page_map
    is the way to share a frame one does not own, with no more rights than the
    source mapping has). PROTECT may always take rights away; adding write or
    execute rights needs the same ownership. Neither may exceed the frame's
    maximum right (exo/frames.py MAX_RIGHT: the info page stays read-only).
    """
    if count > MAX_MMU_BATCH:
        raise HypercallError(Errno.EINVAL, f"batch of {count} exceeds {MAX_MMU_BATCH}")
    raw = env.space.read(reqs, count * MMU_REQ_SIZE)
    if done_ptr:
        env.space.user_chunks(done_ptr, 8, True)  # check before applying anything
    done = 0
    error: HypercallError | None = None
    touched = set()
    owner = k.frames.owner
    for i in range(count):
        op, envid, va, frame, perm = _MMU_REQ.unpack_from(raw, i * MMU_REQ_SIZE)
        try:
            target = k.env_for(env, envid)
            check_user_va(va)
            # LAB 2 BEGIN mmu_owner: MAP only a frame the caller or the target owns; PROTECT may add W or X only to such a frame (EPERM)
            if op == MmuOp.MAP:
                pte = perm_to_pte(perm)
                if not k.frames.valid(frame) or owner[frame] not in (env.id, target.id):
                    raise HypercallError(Errno.EPERM, f"frame {frame:#x} is not yours to map (use page_map to share)")
                target.space.map(va, frame, pte)
            elif op == MmuOp.UNMAP:
                target.space.unmap(va)
            elif op == MmuOp.PROTECT:
                pte = perm_to_pte(perm)
                found = target.space.lookup(va)
                if found is None:
                    raise HypercallError(Errno.EINVAL, f"nothing is mapped at {va:#x}")
                old = found[1]
                adds = (pte & PTE_W and not old & PTE_W) or (not pte & PTE_NX and old & PTE_NX)
                if adds and owner[found[0]] not in (env.id, target.id):
                    raise HypercallError(Errno.EPERM, "cannot add rights to a page you do not own")
                target.space.protect(va, pte)
            # LAB 2 STUB
            # if op == MmuOp.MAP:
            #     if not k.frames.valid(frame):
            #         raise HypercallError(Errno.EINVAL, f"no frame {frame:#x}")
            #     target.space.map(va, frame, perm_to_pte(perm))
            # elif op == MmuOp.UNMAP:
            #     target.space.unmap(va)
            # elif op == MmuOp.PROTECT:
            #     if target.space.lookup(va) is None:
            #         raise HypercallError(Errno.EINVAL, f"nothing is mapped at {va:#x}")
            #     target.space.protect(va, perm_to_pte(perm))
            # LAB 2 END
            else:
                raise HypercallError(Errno.EINVAL, f"unknown mmu op {op}")
        except HypercallError as e:
            error = e
            break
        touched.add(target.id)
        done += 1
    for tid in touched:
        k.flush_if_current(k.envs[tid])
    if done_ptr:
        env.space.write(done_ptr, struct.pack("<Q", done))
    if error is not None:
        raise error
    return 0


def _hc_frame_of(k: Exokernel, env: Env, va: int) -> int:
    """The frame number mapped at ``va`` in the caller (for mmu_update MAP requests)."""
    check_user_va(va, exo=True)
    found = env.space.lookup(va & ~0xFFF)
    if found is None:
        raise HypercallError(Errno.EINVAL, f"nothing mapped at {va:#x}")
    return found[0]


# ------------------------------------------------------------- environments
def _hc_env_create(k: Exokernel, env: Env) -> int:
    child = k.exofork(env)
    return child.id


def _hc_env_destroy(k: Exokernel, env: Env, envid: int) -> int:
    target = k.env_for(env, envid)
    k.destroy(target, exit_status=None)
    return 0


def _hc_env_set_status(k: Exokernel, env: Env, envid: int, status: int) -> int:
    target = k.env_for(env, envid)
    if status not in (EnvStatus.RUNNABLE, EnvStatus.NOT_RUNNABLE):
        raise HypercallError(Errno.EINVAL, f"bad status {status}")
    k.set_status(target, EnvStatus(status))
    return 0


def _hc_env_set_upcall(k: Exokernel, env: Env, envid: int, entry: int, stack_top: int) -> int:
    target = k.env_for(env, envid)
    if entry and not 0 < entry < 1 << 47:
        raise HypercallError(Errno.EINVAL, f"bad upcall entry {entry:#x}")
    target.upcall_entry = entry
    target.upcall_stack = stack_top
    return 0


def _hc_env_set_entry(k: Exokernel, env: Env, envid: int, rip: int, rsp: int) -> int:
    target = k.env_for(env, envid)
    if target is env:
        raise HypercallError(Errno.EINVAL, "use a jump, not env_set_entry, on yourself")
    k.set_entry(target, rip, rsp)
    return 0


def _hc_sched_op(k: Exokernel, env: Env, op: int, arg: int) -> int:
    if op == SchedOp.YIELD:
        k.yield_cpu(env)
    elif op == SchedOp.BLOCK:
        k.block(env, "event")
    elif op == SchedOp.EXIT:
        status = arg & 0xFFFF_FFFF
        k.exit(env, status - (1 << 32) if status >= 1 << 31 else status)
    elif op == SchedOp.READY:
        k.ready(env)
    else:
        raise HypercallError(Errno.EINVAL, f"bad sched_op {op}")
    return 0


def _hc_env_id(k: Exokernel, env: Env) -> int:
    return env.id


def _hc_time_now(k: Exokernel, env: Env) -> int:
    return k.machine.clock.now_ns()


_ENV_INFO = struct.Struct("<QQQQ32s")
assert _ENV_INFO.size == ENV_INFO_SIZE


def _hc_env_info(k: Exokernel, env: Env, envid: int, info: int) -> int:
    """Write envid's {id, parent, status, pages, name} at info (exo/abi.py ENV_INFO_SIZE)."""
    # LAB 1 BEGIN env_info.impl: resolve envid (0: self, or a child), check info and write the record
    # Who may be named: the caller or one of its children (Kernel.env_for raises ESRCH or
    # EPERM), as for every call that names an environment; siblings stay invisible.
    target = k.env_for(env, envid)
    name = target.name.encode()[:31]  # always NUL-terminated for a C guest
    record = _ENV_INFO.pack(target.id, target.parent or 0, int(target.status), target.space.pages, name)
    # space.write checks the whole buffer against the caller's page tables (EFAULT) before
    # storing a byte: the exokernel never writes where the guest itself could not.
    env.space.write(info, record)
    return 0
    # LAB 1 STUB
    # raise HypercallError(Errno.ENOSYS, "LAB 1 (env_info.impl): not implemented -- exo/hypercalls.py")
    # LAB 1 END


def _hc_env_set_timer(k: Exokernel, env: Env, envid: int, entry: int) -> int:
    target = k.env_for(env, envid)
    if entry and not 0 < entry < 1 << 47:
        raise HypercallError(Errno.EINVAL, f"bad timer entry {entry:#x}")
    target.timer_entry = entry
    return 0


def _hc_env_set_syscall(k: Exokernel, env: Env, envid: int, mode: int, entry: int) -> int:
    """Route envid's non-exo-region `syscall`s to the library-call slot at entry (issue 15)."""
    target = k.env_for(env, envid)
    if mode == SYSCALL_HYPERCALL:
        target.reflect, target.reflect_va = None, 0
        return 0
    if mode != SYSCALL_REFLECT:
        raise HypercallError(Errno.EINVAL, f"unknown syscall mode {mode}")
    if k.structures is not None and k.structures.name not in REFLECT_PATH:
        # Every structure has a path (exo/structures.py REFLECT_PATH); a new one must add its own.
        raise HypercallError(Errno.ENOSYS, f"syscall reflection has no {k.structures.name} path")
    slot = target.libcalls.get(entry)
    if slot is None:
        raise HypercallError(Errno.EINVAL, f"{entry:#x} is not a library-call slot linked into env {target.id}")
    target.reflect, target.reflect_va = slot, entry
    return 0


# which -> FS_BASE / GS_BASE (the registers arch_prctl sets; WRFSBASE is #UD, hw/cpu.py hides FSGSBASE)
_FSBASE_REGS = {FSBASE_FS: Reg.FS_BASE, FSBASE_GS: Reg.GS_BASE}


def _hc_env_set_fsbase(k: Exokernel, env: Env, envid: int, which: int, base: int) -> int:
    """Set envid's FS or GS base: the live register if it runs, else its saved context."""
    target = k.env_for(env, envid)
    reg = _FSBASE_REGS.get(which)
    if reg is None:
        raise HypercallError(Errno.EINVAL, f"which must be FS (0) or GS (1), not {which}")
    if base >= USER_TOP:
        raise HypercallError(Errno.EPERM, f"base {base:#x} is not a user address (arch_prctl's rule)")
    if target is k.current:
        k.cpu.regs.write(reg, base)
    else:
        k.cpu.context_write(target.ctx, reg, base)
    return 0


# ---------------------------------------------------------------------- IPC
def _hc_ipc_try_send(k: Exokernel, env: Env, envid: int, value: int, srcva: int, perm: int) -> int:
    """Leave one message (a value and optionally a page) in envid's mailbox."""
    target = k.envs.get(envid)
    if target is None or not target.alive:
        raise HypercallError(Errno.ESRCH, f"no environment {envid}")
    if target is env:
        raise HypercallError(Errno.EINVAL, "cannot send to yourself")
    frame = -1
    if srcva:
        check_user_va(srcva)
        pte = perm_to_pte(perm)
        if env.space.cow:
            env.space.break_cow(srcva)  # sent as the sender's own page (exo/instances.py)
        found = env.space.lookup(srcva)
        if found is None:
            raise HypercallError(Errno.EINVAL, f"nothing mapped at {srcva:#x}")
        frame, src_pte = found
        _check_share(k, frame, src_pte, pte)
    if target.mailbox is not None:
        return -Errno.EAGAIN
    if frame >= 0:
        k.frames.refs[frame] += 1  # held by the message until it is received
    target.mailbox = (env.id, value, frame, perm if frame >= 0 else 0)
    if target.ipc_waiting:
        target.ipc_waiting = False
        k.make_runnable(target)
    else:
        signal_event(k, target, EV_IPC)  # a libOS waiting in event_wait with EV_IPC (exo/events.py)
    return 0


def _hc_ipc_recv(k: Exokernel, env: Env, dstva: int, info: int, flags: int) -> object:
    """Take the message in the mailbox: {from, value, perm} at info, the page (if any) at dstva."""
    if dstva:
        check_user_va(dstva)
    env.space.user_chunks(info, IPC_INFO_SIZE, True)
    if env.mailbox is None:
        if flags & IpcFlag.NONBLOCK:
            return -Errno.EAGAIN
        env.ipc_waiting = True
        return k.block_and_retry(env, "ipc")
    sender, value, frame, perm = env.mailbox
    if frame >= 0 and dstva:
        pte = perm_to_pte(perm)
        if info < dstva + PAGE_SIZE and dstva < info + IPC_INFO_SIZE and not pte & PTE_W:
            # info would land in the page being mapped read-only: refuse before taking the
            # message, not after mapping it (found by the ABI fuzzer, docs/security.md).
            raise HypercallError(Errno.EFAULT, f"info {info:#x} lies in the read-only page received at {dstva:#x}")
        env.space.map(dstva, frame, pte)
        k.flush_if_current(env)
    else:
        perm = 0
    if frame >= 0:
        k.release_frame(frame)
    env.mailbox = None
    env.space.write(info, struct.pack("<QQQ", sender, value, perm))
    return 0


# -------------------------------------------------------- OS structures
def _structures(k: Exokernel):
    if k.structures is None:
        raise HypercallError(Errno.ENOSYS, "only under the monolithic, xen-pv and microkernel structures")
    return k.structures


def _hc_svc(k: Exokernel, env: Env) -> object:
    return _structures(k).svc(env)


def _hc_svc_return(k: Exokernel, env: Env) -> object:
    return _structures(k).svc_return(env)


def _hc_svc_reply_wait(k: Exokernel, env: Env, reply: int) -> object:
    if not env.is_server:
        raise HypercallError(Errno.EPERM, "only a server environment may reply")
    return _structures(k).reply_wait(env, reply)


def _hc_log(k: Exokernel, env: Env, buf: int, length: int) -> int:
    """A diagnostic line from the environment's library OS, printed by exo on stderr."""
    length = _length(length)
    if length > 4096:
        raise HypercallError(Errno.EINVAL, f"log line of {length} bytes (4096 at most)")
    text = env.space.read(buf, length).decode("utf-8", "replace").rstrip("\n")
    # One line, no control characters: a guest must not forge exo's own messages.
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    k.on_log(env, text)
    return 0


def _hc_null(k: Exokernel, env: Env, a: int, b: int, c: int, d: int) -> int:
    return (a + b + c + d) & 0x7FFF_FFFF_FFFF_FFFF


# ------------------------------------------------------------------ network (exo/net.py)
def _net(k: Exokernel):
    if k.net is None:
        raise HypercallError(Errno.ENODEV, "the machine has no network interface (exo boot --net)")
    return k.net


def _hc_net_info(k: Exokernel, env: Env, info: int) -> int:
    return _net(k).info(env, info)


def _hc_net_attach(k: Exokernel, env: Env, ring: int, nslots: int, upcall: int) -> int:
    return _net(k).attach(env, ring, nslots, upcall)


def _hc_net_filter(k: Exokernel, env: Env, op: int, arg: int) -> int:
    return _net(k).filter(env, op, arg)


def _hc_net_send(k: Exokernel, env: Env, reqs: int, count: int, done: int) -> int:
    return _net(k).send(env, reqs, count, done)


def _hc_net_wait(k: Exokernel, env: Env, deadline: int) -> object:
    return _net(k).wait(env, deadline)


# ------------------------------------------------------------------ the table
E = Errno
HYPERCALLS: tuple[Hypercall, ...] = (
    Hypercall(0, "console_write", ("buf", "len"), "bytes written", (E.EFAULT, E.EINVAL, E.EPIPE),
              "Write len bytes from buf to the console (at most 1 MiB per call).", _hc_console_write),
    Hypercall(1, "console_read", ("buf", "len"), "bytes read, 0 at end of input", (E.EFAULT, E.EINVAL),
              "Read up to len bytes of console input into buf; blocks until input arrives.",
              _hc_console_read),
    Hypercall(2, "page_alloc", ("envid", "va", "perm"), "0", (E.ESRCH, E.EPERM, E.EINVAL, E.ENOMEM),
              "Map a new zeroed frame at va in envid (0: self, or a child) with perm.", _hc_page_alloc),
    Hypercall(3, "page_map", ("srcenv", "srcva", "dstenv", "dstva", "perm"), "0",
              (E.ESRCH, E.EPERM, E.EINVAL, E.ENOMEM),
              "Map the frame at srcva in srcenv also at dstva in dstenv; perm may not add rights.",
              _hc_page_map),
    Hypercall(4, "page_unmap", ("envid", "va"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Remove the mapping at va in envid (no error if none).", _hc_page_unmap),
    Hypercall(5, "mmu_update", ("reqs", "count", "done"), "0", (E.EFAULT, E.EPERM, E.EINVAL, E.ENOMEM, E.ESRCH),
              "Apply count 32-byte requests {u32 op, u32 envid, u64 va, u64 frame, u64 perm} in order; "
              "stores how many succeeded at done (if not 0).", _hc_mmu_update),
    Hypercall(6, "env_create", (), "child id in the parent, 0 in the child", (E.ENOMEM, E.EAGAIN),
              "Exofork: a child with the caller's registers, an empty address space and status "
              "NOT_RUNNABLE, in the caller's app (its tenant). -EAGAIN: the app is at its environment "
              "quota; -ENOMEM: at its frame quota.", _hc_env_create),
    Hypercall(7, "env_destroy", ("envid",), "0", (E.ESRCH, E.EPERM),
              "Destroy envid (0: self, or a child) and reclaim everything it holds.", _hc_env_destroy),
    Hypercall(8, "env_set_status", ("envid", "status"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Set envid RUNNABLE (1) or NOT_RUNNABLE (2).", _hc_env_set_status),
    Hypercall(9, "env_set_upcall", ("envid", "entry", "stack_top"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Register the libOS upcall handler and its exception stack (entry 0: none).",
              _hc_env_set_upcall),
    Hypercall(10, "sched_op", ("op", "arg"), "0", (E.EINVAL,),
              "YIELD (0) the CPU, BLOCK (1) until an event, EXIT (2) with status arg (a signed 32-bit "
              "value, kept whole in --stats-json; the exo process exits with status & 0xff, as POSIX "
              "exit() does: 256 gives 0), or READY (3): initialised, a snapshot point (`exo serve` starts "
              "each instance here; otherwise it returns 0 at once).", _hc_sched_op),
    Hypercall(11, "env_id", (), "the caller's environment id", (), "Who am I.", _hc_env_id),
    Hypercall(12, "time_now", (), "nanoseconds of guest time", (),
              "The clock device: retired instructions (virtual clock) or host time (wall clock).",
              _hc_time_now),
    Hypercall(13, "env_set_entry", ("envid", "rip", "rsp"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Set where a child that is not running starts (RIP, RSP).", _hc_env_set_entry),
    Hypercall(14, "frame_of", ("va",), "the frame number mapped at va", (E.EINVAL,),
              "Look up the caller's own mapping (for mmu_update MAP requests).", _hc_frame_of),
    Hypercall(15, "null", ("a", "b", "c", "d"), "a+b+c+d (mod 2**63)", (),
              "Does nothing else: the null call of lmbench-style measurements (4 arguments read).",
              _hc_null),
    Hypercall(16, "env_set_timer", ("envid", "entry"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Register an upcall entered at the start of each slice after the environment was preempted "
              "(vector UPCALL_TIMER in the frame): the libOS scheduler's hook (entry 0: none).",
              _hc_env_set_timer),
    Hypercall(17, "ipc_try_send", ("envid", "value", "srcva", "perm"), "0", (E.ESRCH, E.EINVAL, E.EPERM, E.EAGAIN),
              "Leave a value, and the page at srcva (if not 0) with perm, in envid's one-message mailbox; "
              "-EAGAIN if it is full. Wakes envid if it waits in ipc_recv.", _hc_ipc_try_send),
    Hypercall(18, "ipc_recv", ("dstva", "info", "flags"), "0", (E.EFAULT, E.EINVAL, E.EPERM, E.ENOMEM, E.EAGAIN),
              "Take the mailbox's message: {u64 from, u64 value, u64 perm} is written at info and a page sent "
              "with it is mapped at dstva (if not 0). Waits for a message unless flags has NONBLOCK (1).",
              _hc_ipc_recv),
    Hypercall(19, "svc", (), "the service's result", (E.ENOSYS, E.EAGAIN),
              "A service call from a trampoline slot under the monolithic, xen-pv or microkernel structure "
              "(exo/structures.py): arguments in RDI, RSI, RDX, R10, R8, R9; the slot is found from RIP.",
              _hc_svc, counted=False),
    Hypercall(20, "svc_return", (), "the service's result, in the application", (E.ENOSYS, E.EINVAL),
              "xen-pv: the guest kernel returns to the application (Xen's HYPERVISOR_iret).", _hc_svc_return),
    Hypercall(21, "svc_reply_wait", ("reply",), "0 when a request has arrived", (E.ENOSYS, E.EPERM),
              "microkernel: a server replies to its client and waits for the next request (L4 reply_wait).",
              _hc_svc_reply_wait),
    Hypercall(22, "disk_info", ("info",), "0", (E.ENODEV, E.EFAULT),
              "Write {u64 sectors, u64 sector_size (512), u64 readonly (1/0), u64 ranges granted to the caller} "
              "at info (docs/disk.md).", hc_disk_info),
    Hypercall(23, "disk_io", ("reqs", "count", "done"), "0",
              (E.ENODEV, E.EFAULT, E.EPERM, E.EROFS, E.EINVAL),
              "Apply count 32-byte requests {u32 op (READ 0, WRITE 1, FLUSH 2), u32 reserved (0), u64 sector, "
              "u64 nsectors (1-256), u64 buf} in order, each inside one of the caller's granted ranges; stops at "
              "the first bad one and stores how many succeeded at done (if not 0). Writes stay in the device's "
              "cache until a FLUSH.", hc_disk_io),
    Hypercall(24, "disk_grant", ("envid", "sector", "nsectors", "mode"), "0",
              (E.ENODEV, E.ESRCH, E.EPERM, E.EINVAL, E.ENOSPC),
              "Give envid (0: self, or a child) the sectors [sector, sector+nsectors) of a range the caller holds, "
              "READ (0) or WRITE (1), never more than it holds; REVOKE (2) takes them back from envid and its "
              "descendants.", hc_disk_grant),
    Hypercall(25, "log", ("buf", "len"), "0", (E.EFAULT, E.EINVAL),
              "A diagnostic line (at most 4096 bytes) from the library OS, printed by exo on stderr with the "
              "environment's name: how a libOS explains an error it returns (a corrupt file system, say).",
              _hc_log),
    Hypercall(26, "net_info", ("info",), "0", (E.ENODEV, E.ENETDOWN, E.EFAULT),
              "Write {u8 mac[6], u16 mtu, u32 ip, u32 netmask, u32 gateway, u32 reserved, u64 flags} (addresses "
              "in network byte order) at info: the addresses the host gave the caller's app (docs/net.md).",
              _hc_net_info),
    Hypercall(27, "net_attach", ("ring", "nslots", "upcall"), "0", (E.ENODEV, E.ENETDOWN, E.EFAULT, E.EINVAL),
              "Register the receive ring: nslots (a power of two, at most 512) 2048-byte slots {u16 length, "
              "u16 status, u32 filter, frame} at the page-aligned ring, writable by the caller. Claimed frames "
              "are written in slot order into FREE (0) slots and marked FULL (1); a full ring drops. upcall (if "
              "not 0): entered at the start of the environment's next slice, with vector UPCALL_NET on the "
              "exception stack, when frames arrived while it was not in net_wait. nslots 0 detaches.",
              _hc_net_attach),
    Hypercall(28, "net_filter", ("op", "arg"), "ADD: the filter id; REMOVE: 0",
              (E.ENODEV, E.ENETDOWN, E.EFAULT, E.EINVAL, E.EADDRINUSE, E.ENOSPC),
              "ADD (0): install the filter {u16 ethertype, u8 ip_proto, u8 0, u16 dst_port, u16 src_port, "
              "u32 src_ip, u32 0} at arg (0 = any; only frames to the caller's own addresses); REMOVE (1): "
              "remove filter arg. The most specific match of an app wins.", _hc_net_filter),
    Hypercall(29, "net_send", ("reqs", "count", "done"), "0",
              (E.ENODEV, E.ENETDOWN, E.EFAULT, E.EINVAL, E.EMSGSIZE, E.EADDRNOTAVAIL),
              "Transmit count {u64 buf, u64 len} frames (14..1514 bytes, the app's own source MAC and IP) in "
              "order; stops at the first bad one and stores how many were sent at done (if not 0).",
              _hc_net_send),
    Hypercall(30, "net_wait", ("deadline",), "1: a frame arrived; 0: the deadline passed",
              (E.ENODEV, E.EINVAL),
              "Block until a frame has been written into the caller's ring since the last net_wait returned "
              "(at once if one was) or time_now reaches deadline (0: none).", _hc_net_wait),
    # LAB 1 BEGIN env_info.entry: add hypercall 31, env_info(envid, info), to the table; then run python -m exo gen
    Hypercall(31, "env_info", ("envid", "info"), "0", (E.ESRCH, E.EPERM, E.EFAULT),
              "Write {u64 id, u64 parent (0: none), u64 status, u64 pages mapped, char name[32]} of envid "
              "(0: self, or a child) at info (ENV_INFO_SIZE bytes).", _hc_env_info),
    # LAB 1 STUB
    # LAB 1 END
    Hypercall(32, "env_set_syscall", ("envid", "mode", "entry"), "0", (E.ESRCH, E.EPERM, E.EINVAL, E.ENOSYS),
              "mode SYSCALL_REFLECT: a `syscall` of envid whose RIP is outside the exokernel region (a Linux "
              "system call) runs the library-call slot at entry (linked into envid) with (nr, RDI, RSI, RDX, R10, "
              "R8, R9); its result goes to RAX, RCX/R11 as Linux leaves them. SYSCALL_HYPERCALL: every `syscall` is "
              "a hypercall again. Each --structure has its own path (exo/structures.py REFLECT_PATH).", _hc_env_set_syscall),
    Hypercall(33, "env_set_fsbase", ("envid", "which", "base"), "0", (E.ESRCH, E.EPERM, E.EINVAL),
              "Set envid's FS_BASE (which FSBASE_FS) or GS_BASE (FSBASE_GS) to base (< USER_TOP, else EPERM): "
              "the live register if envid is running, else its saved context (arch_prctl ARCH_SET_FS).",
              _hc_env_set_fsbase),
    Hypercall(34, "event_wait", ("mask", "deadline"), "the ready events of mask; 0 when the deadline passed",
              (E.EINVAL,),
              "Block until one of mask is there: EV_IPC (the mailbox holds a message), EV_CONSOLE (console "
              "input or its end), EV_CHILD (an ended child not yet reaped), EV_NET (frames in the receive ring; "
              "consumed, as by net_wait), EV_NOTIFY (the doorbell, env_notify; consumed), or until guest time "
              "deadline (ns, time_now; 0: none). Xen's SCHEDOP_poll (exo/events.py).", hc_event_wait),
    Hypercall(35, "env_reap", ("envid", "info"), "the id of the child whose record was taken",
              (E.ECHILD, E.ESRCH, E.EFAULT),
              "Take the record an ended child (envid; 0: any) left: {u64 id, u64 how (REAP_EXITED, REAP_FAULTED, "
              "REAP_DESTROYED), s64 status (exit status; -1 otherwise), u64 vector (the CPU exception of a "
              "fault)} at info (REAP_INFO_SIZE bytes). ECHILD: none has ended.", hc_env_reap),
    Hypercall(36, "console_error", ("buf", "len"), "bytes written", (E.EFAULT, E.EINVAL, E.EPIPE),
              "Write len bytes at buf to the console's error stream (the host's stderr).", _hc_console_error),
    Hypercall(37, "console_info", ("info",), "0", (E.EFAULT,),
              "Write {u64 flags (CONSOLE_TTY: a terminal; CONSOLE_RAW: in raw mode, the libOS edits lines), "
              "u16 rows, u16 cols, u32 0} at info (CONSOLE_INFO_SIZE bytes).", _hc_console_info),
    Hypercall(38, "env_notify", ("envid",), "0", (E.ESRCH, E.EPERM),
              "Ring envid's doorbell: its next event_wait with EV_NOTIFY returns at once, and one waiting now "
              "wakes (Xen's EVTCHNOP_send). envid must belong to the caller's app (tenant).", hc_env_notify),
    Hypercall(39, "quota_info", ("info",), "0", (E.EFAULT,),
              "Write the caller's app's quotas and use: {u64 frames used, u64 frame limit, u64 environments "
              "live, u64 environment limit, u64 descriptor limit (per environment, RLIMIT_NOFILE), u64 cpu "
              "weight} at info (QUOTA_INFO_SIZE bytes; exo/tenants.py).", _hc_quota_info),
    Hypercall(40, "page_grant", ("dstenv", "srcva", "dstva", "perm"), "0",
              (E.ESRCH, E.EPERM, E.EINVAL, E.ENOMEM),
              "Move the frame mapped at srcva (the caller's alone) to dstva in dstenv, with its ownership; "
              "only dstenv's pager may (L4's grant; the microkernel structure's pager server).",
              _hc_page_grant),
)

BY_NR: dict[int, Hypercall] = {h.nr: h for h in HYPERCALLS}
BY_NAME: dict[str, Hypercall] = {h.name: h for h in HYPERCALLS}
assert len(BY_NR) == len(HYPERCALLS) and all(len(h.args) <= len(ARG_REGS) for h in HYPERCALLS)

