"""hello: a libOS module in a package of its own, the worked example of docs/libos.md.

One library call, ``greet(name)``: writes ``hello, <name>`` and a newline on the
console and returns how many greetings this environment has made. Two
implementations share the module's guest ABI (INDEX and ENTRIES): ``plain`` and
``shout`` (upper case).
"""

from __future__ import annotations

from exo.abi import PAGE_SIZE
from libos.module import LibModule


class Hello(LibModule):
    NAME = "hello"  # the [libos] key in app.toml
    IMPL = "plain"
    # The trampoline page, and so the guest's call addresses (LIB_HELLO_GREET): fixed for the module,
    # part of its ABI. 0..6 are exo's own modules; 7..14 are free (libos/link.py checks that two
    # linked modules never share one).
    INDEX = 7
    ENTRIES = ("greet",)  # slot 0: LIB_HELLO_GREET = 0x101000 + 7 * 0x1000 + 0 * 16
    # The only hypercalls this module may make for the app (any other returns -EPERM).
    HYPERCALLS = frozenset({"console_write", "page_alloc"})
    DOC = "greet(name) writes 'hello, <name>' and a newline; returns the number of greetings so far"

    def __init__(self, port) -> None:
        super().__init__(port)
        self.greetings = 0  # per environment: an exofork child starts with a copy

    def text(self, name: bytes) -> bytes:
        return b"hello, " + name + b"\n"

    def greet(self, name: int) -> int:
        """``name``: a NUL-terminated string in the app's memory (read through the port)."""
        data = self.text(self.port.read_cstr(name))[:PAGE_SIZE]
        page = self.data_base  # this module's own region of the app's address space
        self.ensure_page(page)
        self.port.write(page, data)
        rc = self.hc("console_write", page, len(data))
        if rc < 0:
            return rc  # the exokernel's -errno, as the guest expects
        self.greetings += 1
        return self.greetings


class Shout(Hello):
    IMPL = "shout"

    def text(self, name: bytes) -> bytes:
        return super().text(name).upper()
