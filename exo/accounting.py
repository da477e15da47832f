"""Counting every ring transition, per environment and in total.

Kinds (docs/stats.md): ``hypercall`` (guest -> exokernel through `syscall`),
``trap`` (an exception or refused instruction), ``upcall`` (exokernel -> libOS
handler), ``interrupt`` (a slice ended by the timer), ``context_switch`` (the
vCPU changed environment), ``libcall`` (a library call: no ring transition, but
counted so that OS structures can be compared).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

KINDS = ("hypercall", "trap", "upcall", "interrupt", "context_switch", "libcall")


class Accounting:
    def __init__(self) -> None:
        self.transitions: Counter[str] = Counter({k: 0 for k in KINDS})
        self.hypercalls: Counter[str] = Counter()
        self.by_env: dict[int, Counter[str]] = {}
        # Optional observer (the tracer of the instrumentation issue): called as
        # tracer(kind, env_id, name). None costs one attribute test per event.
        self.tracer: Callable[[str, int, str], None] | None = None

    def env_counter(self, env_id: int) -> Counter[str]:
        c = self.by_env.get(env_id)
        if c is None:
            c = self.by_env[env_id] = Counter()
        return c

    def count(self, kind: str, env_id: int, name: str = "") -> None:
        self.transitions[kind] += 1
        self.env_counter(env_id)[kind] += 1
        if self.tracer is not None:
            self.tracer(kind, env_id, name)

    def hypercall(self, env_id: int, name: str) -> None:
        self.transitions["hypercall"] += 1
        self.hypercalls[name] += 1
        c = self.by_env.get(env_id)
        if c is None:
            c = self.env_counter(env_id)
        c["hypercall"] += 1
        if self.tracer is not None:
            self.tracer("hypercall", env_id, name)
