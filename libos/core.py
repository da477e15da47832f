"""core: linked into every environment that links any module: exit, identity, time, yield."""

from __future__ import annotations

from exo.abi import SchedOp
from libos.module import LibModule


class Core(LibModule):
    NAME = "core"
    IMPL = "default"
    INDEX = 0
    ENTRIES = ("exit", "env_id", "yield_cpu", "time_ns", "null", "strerror")
    HYPERCALLS = frozenset({"sched_op", "env_id", "time_now", "page_alloc"})
    # Kernel-interface stubs: in every OS structure these run in the caller and make
    # the hypercall themselves. `null` is a service that does nothing: the null call.
    LOCAL = frozenset({"exit", "env_id", "yield_cpu", "time_ns", "strerror"})
    DOC = "exit(status) flushes every module, then ends the environment; null() is the null service call"

    def exit(self, status: int) -> int:
        for module in self.siblings.values():
            if module is not self:
                module.at_exit()
        return self.hc("sched_op", SchedOp.EXIT, status)

    def env_id(self) -> int:
        return self.hc("env_id")

    def yield_cpu(self) -> int:
        return self.hc("sched_op", SchedOp.YIELD, 0)

    def time_ns(self) -> int:
        return self.hc("time_now")

    def null(self) -> int:
        return 0

    def strerror(self, err: int) -> int:
        """A pointer to a NUL-terminated message for errno ``err`` (either sign), as C's strerror."""
        import os

        err = abs(err - (1 << 64) if err >= 1 << 63 else err)
        va = self.data_base
        self.ensure_page(va)
        self.port.write(va, os.strerror(err).encode()[:200] + b"\0")
        return va
