"""Pipes (pipe, pipe2): a 64 KiB buffer shared by a read end and a write end.

One ``Pipe`` object serves every process of the tenant that holds an end (PosixSystem is one
Python object per app, as a kernel's pipe_inode_info is one per pipe). A reader of an empty pipe
with writers, or a writer of a full one, waits (WouldBlock: event_wait on its doorbell) and the
other side rings it (env_notify) when it changes the pipe. No reader left: the writer gets EPIPE
(and SIGPIPE, once signals are delivered); no writer left: the reader gets end of file.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from libos.posix import signals
from libos.posix.files import O_RDONLY, O_WRONLY, POLLERR, POLLHUP, POLLIN, POLLOUT, OpenFile
from libos.posix.system import WouldBlock
from libos.posix.table import EAGAIN, EFAULT, EINVAL, EPIPE, syscall

if TYPE_CHECKING:
    from libos.posix import Posix

PIPE_SIZE = 65536  # Linux's default pipe capacity (16 pages; pipe(7))
PIPE_BUF = 4096  # writes up to this size are atomic (pipe(7))
O_NONBLOCK, O_CLOEXEC = 0o4000, 0o2000000
FIONREAD = 0x541B
SIGPIPE = 13


class Pipe:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.readers = 0
        self.writers = 0
        self.waiting: set[int] = set()  # pids in event_wait for this pipe

    def wake(self, p: Posix) -> None:
        for pid in sorted(self.waiting):  # sorted: the same order every run
            p.system.wake(p, pid)
        self.waiting.clear()

    def wait(self, p: Posix) -> WouldBlock:
        self.waiting.add(p.proc.pid)
        return WouldBlock(0)  # the dispatcher adds EV_NOTIFY: the other side's env_notify


class PipeEnd(OpenFile):
    """One end; ``stat`` shows a FIFO (S_IFIFO)."""

    mode = 0o010600

    def __init__(self, pipe: Pipe, flags: int) -> None:
        super().__init__(flags)
        self.pipe = pipe
        self.reading = flags & 3 == O_RDONLY
        if self.reading:
            pipe.readers += 1
        else:
            pipe.writers += 1

    def read(self, p: Posix, buf: int, n: int) -> int:
        if not self.reading:
            return super().read(p, buf, n)
        pipe = self.pipe
        if n == 0:
            return 0
        if not pipe.buf:
            if pipe.writers == 0:
                return 0
            if self.flags & O_NONBLOCK:
                return -EAGAIN
            raise pipe.wait(p)
        data = bytes(pipe.buf[:n])
        try:
            p.port.write(buf, data)
        except p.port.Fault:
            return -EFAULT
        del pipe.buf[: len(data)]
        pipe.wake(p)
        return len(data)

    def write(self, p: Posix, buf: int, n: int) -> int:
        if self.reading:
            return super().write(p, buf, n)
        pipe = self.pipe
        if pipe.readers == 0:
            signals.send(p, p.proc.pid, SIGPIPE)
            return -EPIPE
        if n == 0:
            return 0
        room = PIPE_SIZE - len(pipe.buf)
        if room == 0 or (n <= PIPE_BUF and room < n):  # small writes are atomic: all or wait
            if self.flags & O_NONBLOCK:
                return -EAGAIN
            raise pipe.wait(p)
        # A blocking write larger than the room returns short (the caller's loop writes the rest):
        # a call re-executed after a wait must not have consumed anything (docs/posix.md).
        try:
            data = p.port.read(buf, min(n, room))
        except p.port.Fault:
            return -EFAULT
        pipe.buf += data
        pipe.wake(p)
        return len(data)

    def poll(self, p: Posix) -> int:
        pipe = self.pipe
        if self.reading:
            return (POLLIN if pipe.buf else 0) | (POLLHUP if pipe.writers == 0 else 0)
        return (POLLOUT if len(pipe.buf) < PIPE_SIZE else 0) | (POLLERR if pipe.readers == 0 else 0)

    def ioctl(self, p: Posix, req: int, arg: int) -> int:
        if req == FIONREAD:
            p.port.write(arg, struct.pack("<i", len(self.pipe.buf)))
            return 0
        return super().ioctl(p, req, arg)

    def release(self, p: Posix) -> None:
        if self.reading:
            self.pipe.readers -= 1
        else:
            self.pipe.writers -= 1
        self.pipe.wake(p)


@syscall("pipe")
def sys_pipe(p: Posix, fds: int, *_: int) -> int:
    return sys_pipe2(p, fds, 0)


@syscall("pipe2")
def sys_pipe2(p: Posix, fds: int, flags: int, *_: int) -> int:
    if flags & ~(O_NONBLOCK | O_CLOEXEC):
        return -EINVAL
    pipe = Pipe()
    r, w = PipeEnd(pipe, O_RDONLY | (flags & O_NONBLOCK)), PipeEnd(pipe, O_WRONLY | (flags & O_NONBLOCK))
    table = p.proc.fds
    rfd = table.alloc(r, bool(flags & O_CLOEXEC))
    if rfd < 0:
        return rfd
    wfd = table.alloc(w, bool(flags & O_CLOEXEC))
    if wfd < 0:
        table.close(p, rfd)
        return wfd
    try:
        p.port.write(fds, struct.pack("<ii", rfd, wfd))
    except p.port.Fault:
        table.close(p, rfd)
        table.close(p, wfd)
        return -EFAULT
    return 0
