"""console: formatted and buffered output, line input.

Implementations: ``buffered`` (stdio-like: output is kept until a newline, a
full buffer, a read, an explicit flush or exit) and ``direct`` (every call is
one console_write hypercall). Both stage bytes in a page of the environment's
own memory and hand that page to the hypercall, as a library in the guest
would: the exokernel checks the pointer against the page tables like any other.
"""

from __future__ import annotations

import re

from exo.abi import PAGE_SIZE
from libos.module import LibModule

_SPEC = re.compile(rb"%([-0#]*)(\d*)(l{0,2}|z)([diuxXpsc%])")


def format_printf(fmt: bytes, args: list[int], read_cstr) -> bytes:
    """C printf for %d %i %u %x %X %p %s %c %% with flags '-', '0', '#', width and l/ll/z."""
    out = bytearray()
    pos = 0
    ai = 0

    def arg() -> int:
        nonlocal ai
        v = args[ai] if ai < len(args) else 0
        ai += 1
        return v

    for m in _SPEC.finditer(fmt):
        out += fmt[pos : m.start()]
        pos = m.end()
        flag, width, size, conv = m.group(1), m.group(2), m.group(3), m.group(4)
        if conv == b"%":
            out += b"%"
            continue
        v = arg()
        if conv in b"di":
            bits = 64 if size else 32
            v &= (1 << bits) - 1
            if v >= 1 << (bits - 1):
                v -= 1 << bits
            text = str(v).encode()
        elif conv == b"u":
            text = str(v & ((1 << (64 if size else 32)) - 1)).encode()
        elif conv in b"xX":
            text = format(v & ((1 << (64 if size else 32)) - 1), "x").encode()
            text = text.upper() if conv == b"X" else text
            if b"#" in flag and v:
                text = (b"0X" if conv == b"X" else b"0x") + text
        elif conv == b"p":
            text = b"0x" + format(v & 0xFFFF_FFFF_FFFF_FFFF, "x").encode()
        elif conv == b"c":
            text = bytes([v & 0xFF])
        else:  # %s
            text = read_cstr(v) if v else b"(null)"
        w = int(width) if width else 0
        if len(text) < w:
            pad = (b"0" if b"0" in flag and b"-" not in flag and conv not in b"sc" else b" ") * (w - len(text))
            if b"-" in flag:
                text = text + b" " * (w - len(text))
            elif pad[:1] == b"0" and text[:1] == b"-":
                text = b"-" + pad + text[1:]
            else:
                text = pad + text
        out += text
    out += fmt[pos:]
    return bytes(out)


class Console(LibModule):
    NAME = "console"
    INDEX = 1
    ENTRIES = ("write", "putc", "puts", "printf", "flush", "readline", "read")
    HYPERCALLS = frozenset({"console_write", "console_read", "page_alloc"})
    BUFFERED = True

    def __init__(self, port) -> None:
        super().__init__(port)
        self.out = bytearray()  # pending output (buffered implementation)
        self.inbuf = bytearray()  # input read ahead of the current line

    # The staging page: output is copied here and written with one hypercall.
    @property
    def _stage(self) -> int:
        return self.data_base

    def _emit(self, data: bytes) -> int:
        self.ensure_page(self._stage)
        for i in range(0, len(data), PAGE_SIZE):
            chunk = data[i : i + PAGE_SIZE]
            self.port.write(self._stage, chunk)
            rc = self.hc("console_write", self._stage, len(chunk))
            if rc < 0:
                return rc
        return len(data)

    def _out(self, data: bytes) -> int:
        if not self.BUFFERED:
            return self._emit(data)
        self.out += data
        if len(self.out) >= PAGE_SIZE or b"\n" in data:
            rc = self.flush()
            if rc < 0:
                return rc
        return len(data)

    # ---------------------------------------------------------------- entries
    def write(self, buf: int, length: int) -> int:
        return self._out(self.port.read(buf, length)) if length else 0

    def putc(self, c: int) -> int:
        return self._out(bytes([c & 0xFF]))

    def puts(self, s: int) -> int:
        return self._out(self.port.read_cstr(s) + b"\n")

    def printf(self, fmt: int, a1: int, a2: int, a3: int, a4: int, a5: int) -> int:
        text = format_printf(self.port.read_cstr(fmt), [a1, a2, a3, a4, a5], self.port.read_cstr)
        rc = self._out(text)
        return len(text) if rc >= 0 else rc

    def flush(self) -> int:
        if not self.out:
            return 0
        data = bytes(self.out)
        self.out.clear()
        return self._emit(data)

    def _fill(self, want: int) -> int:
        """Read more input into inbuf; 0 at end of input. May raise Blocked (retried)."""
        self.ensure_page(self._stage + PAGE_SIZE)
        n = self.hc("console_read", self._stage + PAGE_SIZE, min(want, PAGE_SIZE))
        if n > 0:
            self.inbuf += self.port.read(self._stage + PAGE_SIZE, n)
        return n

    def readline(self, buf: int, size: int) -> int:
        """Read one line (with its newline) into buf, NUL-terminated; bytes read, 0 at end of input."""
        if size <= 1:
            return 0
        self.flush()  # a prompt must be visible before the program waits for its answer
        while b"\n" not in self.inbuf[: size - 1] and len(self.inbuf) < size - 1:
            n = self._fill(size - 1 - len(self.inbuf))
            if n <= 0:
                break
        i = self.inbuf.find(b"\n", 0, size - 1)
        line = bytes(self.inbuf[: i + 1] if i >= 0 else self.inbuf[: size - 1])
        self.port.write(buf, line + b"\0")
        del self.inbuf[: len(line)]
        return len(line)

    def read(self, buf: int, length: int) -> int:
        """Up to length bytes of input (what has arrived, or a whole buffer from a pipe)."""
        self.flush()
        if not self.inbuf and length:
            self._fill(length)
        data = bytes(self.inbuf[:length])
        del self.inbuf[: len(data)]
        self.port.write(buf, data)
        return len(data)

    def at_exit(self) -> None:
        self.flush()

    def freeze(self) -> None:
        self.flush()  # the template's unflushed output, printed once (as fork does)

    def fork(self, port):
        self.flush()  # unflushed output must not be printed twice (the classic stdio-fork bug)
        clone = super().fork(port)
        clone.out = bytearray()
        clone.inbuf = bytearray(self.inbuf)
        return clone


class BufferedConsole(Console):
    IMPL = "buffered"
    DOC = "output kept until a newline, a full page, a read, flush or exit"


class DirectConsole(Console):
    IMPL = "direct"
    BUFFERED = False
    DOC = "every output call is one console_write hypercall"
