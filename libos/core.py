"""core: linked into every environment that links any module: exit, identity, time, yield."""

from __future__ import annotations

from exo.abi import SchedOp
from libos.module import LibModule


class Core(LibModule):
    NAME = "core"
    IMPL = "default"
    INDEX = 0
    ENTRIES = ("exit", "env_id", "yield_cpu", "time_ns")
    HYPERCALLS = frozenset({"sched_op", "env_id", "time_now"})
    DOC = "exit(status) flushes every module, then ends the environment"

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
