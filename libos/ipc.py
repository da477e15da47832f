"""ipc: message passing between environments, JOS style (lib/ipc.c).

A message is one 64-bit value and, optionally, one page. The exokernel gives
each environment a one-message mailbox (exo/hypercalls.py): ``ipc_try_send``
leaves a message there or answers -EAGAIN when it is full, ``ipc_recv`` takes
it, writing ``{u64 from, u64 value, u64 perm}`` to an info buffer in the
receiver's memory and mapping the page (if one was sent) at ``dstva``. This
module is the library around those two hypercalls:

* ``send(envid, value, srcva, perm)``: try until the mailbox has room, giving
  the CPU away between tries (JOS ``ipc_send``); 0 or a negative errno.
  ``srcva`` 0 sends no page.
* ``recv(dstva, from_ptr, perm_ptr)``: wait for a message; returns its value
  and stores the sender and the page's permissions (0: no page arrived) at
  the pointers that are not 0 (JOS ``ipc_recv``). ``dstva`` 0 refuses a page.
* ``try_send`` / ``try_recv``: the same without waiting (-EAGAIN).
* ``sender()``, ``perm()``: the sender and page permissions of the last
  message received (JOS's ``thisenv->env_ipc_from``), for guests that would
  rather not pass pointers.

As in JOS, a value is returned in RAX like an error is: a negative value is
indistinguishable from a negative errno, so send non-negative values (or use
the pointers/``sender()`` to tell).

Implementations: ``jos`` waits in the exokernel (``ipc_recv`` blocks the
receiver until a sender wakes it); ``poll`` never blocks there, it asks with
NONBLOCK and yields the CPU between tries (more hypercalls, same results).

Waiting inside a library call: a blocking ``ipc_recv`` makes the whole
library call run again when the receiver is woken (exo/libcall.py ``Blocked``),
and a sender (or a polling receiver) that must wait yields the CPU and resumes
itself at the library entry point (``port.resume`` with RIP at the slot, as
user code could with a jump), so the call is simply made again the next time
it runs. Nothing is consumed before a message is there, so nothing is lost
when a call is rerun. The entries are ``LOCAL``: under every OS structure
they stay library calls in the caller, which the mailbox belongs to.
"""

from __future__ import annotations

import struct

from exo.abi import IPC_INFO_SIZE, PERM_R, PERM_W, Errno, IpcFlag, SchedOp
from libos.module import LibModule

_INFO = struct.Struct("<QQQ")


class Ipc(LibModule):
    NAME = "ipc"
    INDEX = 4
    ENTRIES = ("send", "recv", "try_send", "try_recv", "sender", "perm")
    HYPERCALLS = frozenset({"ipc_try_send", "ipc_recv", "sched_op", "page_alloc"})
    # Kernel-interface stubs around the exokernel's IPC: plain library calls in the
    # caller under every OS structure (exo/structures.py). A service server could not
    # send or receive on its client's behalf: the mailbox and the sender id are the
    # caller's own.
    LOCAL = frozenset(ENTRIES)
    BLOCKING = True  # recv waits in the exokernel (jos) or polls (poll)

    def __init__(self, port) -> None:
        super().__init__(port)
        self._fresh_info = False  # map a new info page without looking (an exofork child)
        self.last_from = 0
        self.last_perm = 0

    def fork(self, port) -> Ipc:
        clone = super().fork(port)
        # The child gets a private info page of its own (never a copy-on-write or
        # shared one: the exokernel writes it, and it must not be the parent's).
        clone._fresh_info = True
        clone.last_from = clone.last_perm = 0
        return clone

    # ---------------------------------------------------------------- helpers
    @property
    def _info(self) -> int:
        """Where ipc_recv writes {from, value, perm}: the first page of the module's data area.

        The exokernel writes it, so it must be mapped writable when ipc_recv runs:
        a fork since the last receive may have made it read-only (copy-on-write).
        A test write finds out; a page that is missing or cannot be written is
        replaced by a fresh one (its old contents do not matter). An exofork child
        maps a fresh page without looking: the parent's is not its own.
        """
        va = self.data_base
        if not self._fresh_info:
            try:
                self.port.write(va, bytes(IPC_INFO_SIZE))
                return va
            except self.port.Fault:
                pass
        rc = self.hc("page_alloc", 0, va, PERM_R | PERM_W)
        if rc < 0:
            raise self.port.Fault(Errno(-rc), f"cannot map the ipc info page at {va:#x}")
        self._fresh_info = False
        return va

    def _again(self) -> int:
        """Give the CPU away, then make the current library call again when this env next runs."""
        self.hc("sched_op", SchedOp.YIELD, 0)
        self.port.resume(self.port.regs())  # RIP is the entry point: the call is made again
        return 0

    def _store(self, ptr: int, value: int) -> None:
        if ptr:
            self.port.write_u64(ptr, value)

    def _take(self, dstva: int, from_ptr: int, perm_ptr: int, flags: int) -> int:
        # Check the result pointers first: a message is never taken and then lost.
        self._store(from_ptr, 0)
        self._store(perm_ptr, 0)
        info = self._info
        rc = self.hc("ipc_recv", dstva, info, flags)  # may raise Blocked: the call is rerun
        if rc < 0:
            return rc
        sender, value, perm = _INFO.unpack(self.port.read(info, IPC_INFO_SIZE))
        self.last_from, self.last_perm = sender, perm
        self._store(from_ptr, sender)
        self._store(perm_ptr, perm)
        return value

    # ---------------------------------------------------------------- entries
    def send(self, envid: int, value: int, srcva: int, perm: int) -> int:
        rc = self.hc("ipc_try_send", envid, value, srcva, perm)
        if rc == -Errno.EAGAIN:
            return self._again()
        return rc

    def try_send(self, envid: int, value: int, srcva: int, perm: int) -> int:
        return self.hc("ipc_try_send", envid, value, srcva, perm)

    def recv(self, dstva: int, from_ptr: int, perm_ptr: int) -> int:
        if self.BLOCKING:
            return self._take(dstva, from_ptr, perm_ptr, 0)
        rc = self._take(dstva, from_ptr, perm_ptr, IpcFlag.NONBLOCK)
        if rc == -Errno.EAGAIN:
            return self._again()
        return rc

    def try_recv(self, dstva: int, from_ptr: int, perm_ptr: int) -> int:
        return self._take(dstva, from_ptr, perm_ptr, IpcFlag.NONBLOCK)

    def sender(self) -> int:
        return self.last_from

    def perm(self) -> int:
        return self.last_perm


class JosIpc(Ipc):
    IMPL = "jos"
    DOC = "recv waits in the exokernel (ipc_recv blocks); send retries with yield while the mailbox is full"


class PollIpc(Ipc):
    IMPL = "poll"
    BLOCKING = False
    DOC = "recv never blocks in the exokernel: it polls with NONBLOCK and yields between tries"
