"""The terminal: fds 0-2 and /dev/tty when exo's console is a terminal (Linux drivers/tty/n_tty.c).

`exo run` on a terminal puts the host's terminal in raw input mode (hw/console.py ``enter_raw``;
console_info says CONSOLE_RAW), so this module is the line discipline, as the kernel's n_tty is:
with ICANON, input is edited (VERASE, VKILL, VWERASE) and handed to read() a line at a time, VEOF
ends input; ECHO echoes it; with ISIG, VINTR (Ctrl-C) and VQUIT (Ctrl-\\) are not input but SIGINT
and SIGQUIT for the foreground process group; ICRNL turns Enter's CR into NL. TCGETS/TCSETS*
read and set those flags (programs like busybox's line editor switch ICANON, ECHO and ISIG off and
do it themselves), TIOCGPGRP/TIOCSPGRP the foreground group (a shell's job control),
TIOCGWINSZ the window (isatty() in musl is that ioctl). Output processing is the host
terminal's (OPOST stays on there): c_oflag is kept but not applied.

Input is taken from the console when a process of the app looks at the terminal or waits for
anything (``pump``: the dispatcher calls it before each wait, and every wait also wakes on
console input), so Ctrl-C reaches a foreground `sleep` while its shell waits in wait4. A process
that computes without making a call sees its signal at its next call (docs/posix.md).
When the console is a terminal the host did not let go of (CONSOLE_RAW clear: an embedding),
input arrives already edited and echoed, and is passed through as it comes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from exo.abi import CONSOLE_INFO_SIZE, CONSOLE_RAW, CONSOLE_TTY, EV_CONSOLE, PAGE_SIZE
from libos.posix.files import O_RDWR, O_WRONLY, POLLIN, POLLOUT, Console, FdTable
from libos.posix.system import WouldBlock
from libos.posix.table import EFAULT, ENOTTY

if TYPE_CHECKING:
    from libos.posix import Posix

# struct termios as TCGETS copies it (include/uapi/asm-generic/termbits.h): four tcflag_t,
# c_line, c_cc[19].
TERMIOS = struct.Struct("<IIIIB19s")
ICRNL, INLCR, IGNCR, ISTRIP, IXON = 0o400, 0o100, 0o200, 0o40, 0o2000
OPOST, ONLCR = 0o1, 0o4
B38400, CS8, CREAD, HUPCL = 0o17, 0o60, 0o200, 0o2000
ISIG, ICANON, ECHO, ECHOE, ECHOK, ECHONL, NOFLSH = 0o1, 0o2, 0o10, 0o20, 0o40, 0o100, 0o200
ECHOCTL, ECHOKE, IEXTEN = 0o1000, 0o4000, 0o100000
VINTR, VQUIT, VERASE, VKILL, VEOF, VTIME, VMIN, VSWTC, VSTART, VSTOP, VSUSP, VEOL = range(12)
VREPRINT, VDISCARD, VWERASE, VLNEXT, VEOL2 = 12, 13, 14, 15, 16
# Linux's defaults for a new terminal (include/linux/tty.h INIT_C_CC, tty_std_termios).
DEFAULT_CC = bytes([3, 0x1C, 0x7F, 0x15, 4, 0, 1, 0, 0x11, 0x13, 0x1A, 0, 0x12, 0x0F, 0x17, 0x16, 0, 0, 0])
DEFAULT_MODE = (ICRNL | IXON, OPOST | ONLCR, B38400 | CS8 | CREAD | HUPCL,
                ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN)
TCGETS, TCSETS, TCSETSW, TCSETSF, TCSBRK, TCXONC, TCFLSH = 0x5401, 0x5402, 0x5403, 0x5404, 0x5409, 0x540A, 0x540B
TIOCSCTTY, TIOCGPGRP, TIOCSPGRP, TIOCGWINSZ, TIOCSWINSZ, FIONREAD = 0x540E, 0x540F, 0x5410, 0x5413, 0x5414, 0x541B
TIOCNOTTY, TIOCGSID = 0x5422, 0x5429
SIGINT, SIGQUIT = 2, 3
IO_PAGE = 3  # the posix module's data page for terminal input and echo (after its scratch pages)


class Tty:
    """One terminal, shared by the app's processes (PosixSystem.tty)."""

    def __init__(self, raw: bool, rows: int, cols: int, sid: int) -> None:
        self.raw = raw  # exo let go of the host's line discipline: this one runs
        self.iflag, self.oflag, self.cflag, self.lflag = DEFAULT_MODE
        self.cc = bytearray(DEFAULT_CC)
        self.rows, self.cols = rows, cols
        self.sid = sid
        self.fg = sid  # the foreground process group
        self.edit = bytearray()  # the line being typed (ICANON)
        self.lines: list[bytes] = []  # complete lines read() may take (ICANON); b"" is an end of input
        self.ready = bytearray()  # bytes read() may take (no ICANON)
        self.hangup = False  # the console's input ended

    # ------------------------------------------------------------ input
    def pump(self, p: Posix) -> None:
        """Take what the console has and run it through the line discipline."""
        if self.hangup:
            return
        va = p.data_base + IO_PAGE * PAGE_SIZE
        while p.hc("event_wait", EV_CONSOLE, 1) & EV_CONSOLE:  # deadline 1 ns: a poll, never a wait
            _page(p, va)
            n = p.hc("console_read", va, 512)
            if n <= 0:
                self.hangup = True
                return
            self.feed(p, p.port.read(va, n))

    def feed(self, p: Posix, data: bytes) -> None:
        if not self.raw:  # the host edited and echoed it
            if self.lflag & ICANON:
                self.lines += data.splitlines(keepends=True)
            else:
                self.ready += data
            return
        echo = bytearray()
        cc = self.cc
        for c in data:
            if self.iflag & ISTRIP:
                c &= 0x7F
            if c == 13 and self.iflag & IGNCR:
                continue
            if c == 13 and self.iflag & ICRNL:
                c = 10
            elif c == 10 and self.iflag & INLCR:
                c = 13
            if self.lflag & ISIG and c and c in (cc[VINTR], cc[VQUIT]):
                if not self.lflag & NOFLSH:
                    self.edit.clear()
                    self.lines.clear()
                    self.ready.clear()
                if self.lflag & ECHO:
                    echo += _ctl(c, self.lflag) + b"\n"
                self._flush_echo(p, echo)
                echo.clear()
                self.signal(p, SIGINT if c == cc[VINTR] else SIGQUIT)
                continue
            if self.lflag & ICANON:
                if c in (cc[VERASE], 8):
                    if self.edit:
                        self.edit.pop()
                        if self.lflag & ECHO:
                            echo += b"\b \b"
                    continue
                if c == cc[VKILL]:
                    if self.lflag & ECHO:
                        echo += b"\b \b" * len(self.edit)
                    self.edit.clear()
                    continue
                if c == cc[VWERASE] and self.lflag & IEXTEN:
                    word = len(self.edit.rstrip(b" ")) - len(self.edit.rstrip(b" ").rsplit(b" ", 1)[-1])
                    if self.lflag & ECHO:
                        echo += b"\b \b" * (len(self.edit) - word)
                    del self.edit[word:]
                    continue
                if c == cc[VEOF]:
                    self.lines.append(bytes(self.edit))  # b"" when the line is empty: end of input
                    self.edit.clear()
                    continue
                self.edit.append(c)
                if self.lflag & ECHO or (c == 10 and self.lflag & ECHONL):
                    echo += _ctl(c, self.lflag)
                if c == 10 or (c and c in (cc[VEOL], cc[VEOL2])):
                    self.lines.append(bytes(self.edit))
                    self.edit.clear()
            else:
                self.ready.append(c)
                if self.lflag & ECHO:
                    echo += _ctl(c, self.lflag)
        self._flush_echo(p, echo)

    def _flush_echo(self, p: Posix, echo: bytes) -> None:
        if echo:
            va = p.data_base + IO_PAGE * PAGE_SIZE
            _page(p, va)
            p.port.write(va, bytes(echo[:PAGE_SIZE]))
            p.hc("console_write", va, min(len(echo), PAGE_SIZE))

    def signal(self, p: Posix, signo: int) -> None:
        from libos.posix import signals

        for pid in sorted(q.pid for q in p.system.procs.values() if q.pgid == self.fg and q.exit_status is None):
            signals.send(p, pid, signo)

    def available(self) -> int:
        return sum(len(x) for x in self.lines) if self.lflag & ICANON else len(self.ready)

    def take(self, n: int) -> bytes | None:
        """Up to ``n`` bytes for read(); None when it must wait."""
        if self.lflag & ICANON:
            if not self.lines:
                return b"" if self.hangup else None
            line = self.lines[0]
            if len(line) > n:
                self.lines[0] = line[n:]
                return line[:n]
            self.lines.pop(0)
            return line
        if not self.ready:
            vmin, vtime = self.cc[VMIN], self.cc[VTIME]
            return b"" if self.hangup or (vmin == 0 and vtime == 0) else None
        out = bytes(self.ready[:n])
        del self.ready[:n]
        return out


def _ctl(c: int, lflag: int) -> bytes:
    """How a typed byte is echoed: a control character as ^X with ECHOCTL (not TAB or NL)."""
    if lflag & ECHOCTL and (c < 32 and c not in (9, 10) or c == 127):
        return b"^" + bytes([c ^ 0x40])
    return bytes([c])


def _page(p: Posix, va: int) -> None:
    p.ensure_page(va)
    p.writable(va, 1)  # a forked child's copy-on-write page: its own before the hypercall writes it


class TtyFile(Console):
    """fds 0-2 and /dev/tty on a terminal: reads through the line discipline, writes to the console."""

    wait_mask = EV_CONSOLE
    mode = 0o020620  # a character device, crw--w----, as /dev/pts/N

    def __init__(self, tty: Tty, flags: int = O_RDWR, error: bool = False) -> None:
        super().__init__(flags, error)
        self.tty = tty

    def read(self, p: Posix, buf: int, n: int) -> int:
        if not n:
            return 0
        self.tty.pump(p)
        data = self.tty.take(min(n, 1 << 16))
        if data is None:
            raise WouldBlock(EV_CONSOLE)
        try:
            p.port.write(buf, data)
        except p.port.Fault:
            return -EFAULT
        return len(data)

    def poll(self, p: Posix) -> int:
        self.tty.pump(p)
        return POLLOUT | (POLLIN if self.tty.available() or self.tty.hangup else 0)

    def stat(self, p: Posix) -> bytes:
        from libos.posix.descriptors import stat_bytes

        return stat_bytes(ino=3, mode=self.mode, rdev=(136 << 8) | 0)  # /dev/pts/0: major 136

    def ioctl(self, p: Posix, req: int, arg: int) -> int:
        fn = IOCTLS.get(req & 0xFFFF_FFFF)
        if fn is None:
            return -ENOTTY
        try:
            return fn(self.tty, p, arg)
        except p.port.Fault:
            return -EFAULT


def _tcgets(t: Tty, p: Posix, arg: int) -> int:
    p.port.write(arg, TERMIOS.pack(t.iflag, t.oflag, t.cflag, t.lflag, 0, bytes(t.cc)))
    return 0


def _tcsets(flush: bool):
    def fn(t: Tty, p: Posix, arg: int) -> int:
        t.iflag, t.oflag, t.cflag, lflag, _line, cc = TERMIOS.unpack(p.port.read(arg, TERMIOS.size))
        if t.lflag & ICANON and not lflag & ICANON and t.edit:  # a half-typed line becomes input
            t.ready += t.edit
            t.edit.clear()
        if not t.lflag & ICANON and lflag & ICANON and t.ready:  # typed ahead: its lines become lines
            typed = bytes(t.ready)
            t.ready.clear()
            *whole, rest = typed.split(b"\n")
            t.lines += [line + b"\n" for line in whole]
            t.edit += rest
        t.lflag, t.cc = lflag, bytearray(cc)
        if flush:
            t.edit.clear()
            t.lines.clear()
            t.ready.clear()
        return 0
    return fn


def _int_out(value: Callable[[Tty], int]) -> Callable[[Tty, Posix, int], int]:
    def fn(t: Tty, p: Posix, arg: int) -> int:
        p.port.write(arg, struct.pack("<i", value(t)))
        return 0
    return fn


def _set_fg(t: Tty, p: Posix, arg: int) -> int:
    t.fg = struct.unpack("<i", p.port.read(arg, 4))[0]
    return 0


def _get_winsize(t: Tty, p: Posix, arg: int) -> int:
    p.port.write(arg, struct.pack("<HHHH", t.rows, t.cols, 0, 0))
    return 0


def _set_winsize(t: Tty, p: Posix, arg: int) -> int:
    t.rows, t.cols = struct.unpack("<HH", p.port.read(arg, 4))
    return 0


def _flush(t: Tty, p: Posix, arg: int) -> int:
    if arg in (0, 2):  # TCIFLUSH, TCIOFLUSH: what was typed and not read is dropped
        t.edit.clear()
        t.lines.clear()
        t.ready.clear()
    return 0


IOCTLS = {
    TCGETS: _tcgets, TCSETS: _tcsets(False), TCSETSW: _tcsets(False), TCSETSF: _tcsets(True),
    TIOCGPGRP: _int_out(lambda t: t.fg), TIOCSPGRP: _set_fg, TIOCGSID: _int_out(lambda t: t.sid),
    TIOCGWINSZ: _get_winsize, TIOCSWINSZ: _set_winsize, FIONREAD: _int_out(lambda t: t.available()),
    TCFLSH: _flush, TCSBRK: lambda t, p, a: 0, TCXONC: lambda t, p, a: 0,
    TIOCSCTTY: lambda t, p, a: 0, TIOCNOTTY: lambda t, p, a: 0,
}


def open_terminal(p: Posix, pid: int) -> FdTable | None:
    """The first process's fds 0-2 when the console is a terminal (console_info), else None."""
    va = p.data_base + IO_PAGE * PAGE_SIZE
    _page(p, va)
    if p.hc("console_info", va) < 0:
        return None
    flags, rows, cols, _ = struct.unpack("<QHHI", p.port.read(va, CONSOLE_INFO_SIZE))
    if not flags & CONSOLE_TTY:
        return None
    tty = p.system.tty = Tty(raw=bool(flags & CONSOLE_RAW), rows=rows, cols=cols, sid=pid)
    t = FdTable()
    t.install(0, TtyFile(tty, O_RDWR))
    t.install(1, TtyFile(tty, O_RDWR))
    t.install(2, TtyFile(tty, O_WRONLY, error=True))
    return t
