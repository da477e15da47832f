"""What every libOS module is: entry points on a trampoline page, declared hypercalls, state.

A module instance belongs to one environment. It sees that environment only
through its port (``exo/libcall.py`` ``LibPort``): user memory through the
environment's page tables, its registers while it runs, and the hypercalls the
module declares in ``HYPERCALLS`` (any other returns -EPERM). libos imports
nothing of exo but the ABI constants (``exo.abi``), checked in CI.
"""

from __future__ import annotations

import copy
import inspect
import struct
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

from exo.abi import (
    DEFAULT_FDS,
    LIBOS_DATA,
    LIBOS_DATA_STRIDE,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    QUOTA_INFO_SIZE,
    UTRAPFRAME_FIELDS,
    UTRAPFRAME_SIZE,
)

# The general registers of a user context, as LibPort.regs/resume name them.
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
_UTRAPFRAME = struct.Struct(f"<{len(UTRAPFRAME_FIELDS)}Q")


def read_upcall_frame(port: Any, frame: int) -> tuple[dict[str, int], dict[str, int]]:
    """The UTrapframe the exokernel pushed at ``frame``: (its fields by name, the interrupted
    context as ``port.resume`` takes it: the general registers, rip and rflags)."""
    f = dict(zip(UTRAPFRAME_FIELDS, _UTRAPFRAME.unpack(port.read(frame, UTRAPFRAME_SIZE))))
    ctx = {r: f[r] for r in GPRS}
    ctx["rip"], ctx["rflags"] = f["rip"], f["rflags"]
    return f, ctx


QUOTA_FIELDS = ("frames_used", "frame_limit", "envs_used", "env_limit", "fd_limit", "cpu_weight")
_QUOTA = struct.Struct(f"<{len(QUOTA_FIELDS)}Q")
assert _QUOTA.size == QUOTA_INFO_SIZE


def fd_limit(port: Any, va: int) -> int:
    """The app's descriptor quota (per environment, Linux's RLIMIT_NOFILE), asked of the exokernel
    with quota_info; ``va`` is a writable scratch page of the module (the record is written there)."""
    if port.hypercall("quota_info", va) < 0:
        return DEFAULT_FDS
    return dict(zip(QUOTA_FIELDS, _QUOTA.unpack(port.read(va, _QUOTA.size))))["fd_limit"]


def lowest_free_fd(taken: dict[int, Any], first: int, limit: int) -> int:
    """The lowest descriptor >= ``first`` not in ``taken``; -1 when ``taken`` holds ``limit``
    already (EMFILE), as the fs and net modules give them out."""
    if len(taken) >= limit:
        return -1
    fd = first
    while fd in taken:
        fd += 1
    return fd


class Entry(NamedTuple):
    slot: int
    name: str  # "module.entry"
    fn: Callable[..., int | None]
    nargs: int
    routed: bool = True  # False: a plain library call whatever the OS structure (exo/structures.py)


_VARARGS, _VARKEYWORDS = 0x04, 0x08  # CPython's code flags (inspect.CO_VARARGS, CO_VARKEYWORDS)


def entry_nargs(fn: Callable[..., Any]) -> int:
    """How many parameters ``inspect.signature(fn)`` lists, read from the code object when nothing
    overrides the signature: inspect.signature costs ~0.1-0.5 ms a call, a few ms per boot."""
    func = getattr(fn, "__func__", fn)
    if hasattr(func, "__signature__") or hasattr(func, "__wrapped__") or not hasattr(func, "__code__"):
        return len(inspect.signature(fn).parameters)
    code = func.__code__
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & _VARARGS) + bool(code.co_flags & _VARKEYWORDS)
    return n - (fn is not func)  # a bound method: self is not a parameter


_NARGS: dict[tuple[type, str], int] = {}  # (module class, entry) -> its parameters (instances link often)


class LibModule:
    NAME: ClassVar[str]  # the [libos] key: "console"
    IMPL: ClassVar[str]  # the implementation: "buffered"
    INDEX: ClassVar[int]  # trampoline page: fixed per module, shared by its implementations
    ENTRIES: ClassVar[tuple[str, ...]]  # entry points; the position is the slot (the guest ABI)
    HYPERCALLS: ClassVar[frozenset[str]] = frozenset()
    LOCAL: ClassVar[frozenset[str]] = frozenset()  # entries that stay library calls in every structure
    DOC: ClassVar[str] = ""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.siblings: dict[str, LibModule] = {}  # the other modules linked into the same env

    # -------------------------------------------------------------- linking
    @property
    def hypercalls(self) -> frozenset[str]:
        return self.HYPERCALLS

    def entries(self) -> list[Entry]:
        out = []
        own = self.__dict__
        for slot, name in enumerate(self.ENTRIES):
            fn = getattr(self, name)
            key = (type(self), name)
            nargs = _NARGS.get(key) if name not in own else None
            if nargs is None:  # the class's method's parameters: the same for every instance of it
                nargs = entry_nargs(fn)
                if name not in own:
                    _NARGS[key] = nargs
            out.append(Entry(slot, f"{self.NAME}.{name}", fn, nargs, name not in self.LOCAL))
        return out

    def fork(self, port: Any) -> LibModule:
        """This module's state for an exofork child (the child's memory is the parent's copy)."""
        clone = copy.copy(self)
        clone.port = port
        clone.siblings = {}
        return clone

    def freeze(self) -> None:
        """Called once when the environment becomes a snapshot's template (exo/instances.py), just
        before its state is copied for the instances: do what must not happen once per instance
        (print buffered output). The state must be picklable to copy fast (or is deep-copied)."""

    def start(self) -> None:
        """Called once when the environment is linked, before it runs."""

    def at_exit(self) -> None:
        """Called by core.exit before the environment ends (flush buffers)."""

    def fault(self, f: dict[str, int], regs: dict[str, int]) -> bool:
        """A CPU exception the pager could not serve (``f``: the UTrapframe's fields, ``regs``: the
        faulting context). True when this module took it over (posix: the program's signal
        handler); the memory module asks its siblings before it lets the exokernel stop the env."""
        return False

    # -------------------------------------------------------------- helpers
    @property
    def data_base(self) -> int:
        """This module's own region of the environment's address space."""
        return LIBOS_DATA + self.INDEX * LIBOS_DATA_STRIDE

    def ensure_page(self, va: int, perm: int = PERM_R | PERM_W) -> None:
        """Map a zeroed page at ``va`` unless something is mapped there already."""
        try:
            self.port.read(va, 1)
        except self.port.Fault:
            rc = self.port.hypercall("page_alloc", 0, va & ~(PAGE_SIZE - 1), perm)
            if rc < 0:
                raise self.port.Fault(-rc, f"cannot map the {self.NAME} module's page at {va:#x}") from None

    def hc(self, name: str, *args: int) -> int:
        return self.port.hypercall(name, *args)

    def log(self, text: str) -> None:
        """Explain something on exo's stderr (the module must declare the ``log`` hypercall)."""
        va = self.data_base + LIBOS_DATA_STRIDE - PAGE_SIZE  # the last page of this module's region
        self.ensure_page(va)
        data = f"{self.NAME}: {text}".encode()[:PAGE_SIZE]
        self.port.write(va, data)
        self.hc("log", va, len(data))
