"""The clock device: guest time in nanoseconds.

``virtual``: time is retired guest instructions, one instruction counted as one
nanosecond (a 1 GHz CPU retiring one instruction a cycle: a modelled rate, not a
measured one), plus the time the OS spent idle waiting for a timer or a
frame (``advance``: exo/net.py). The same guest and input always see the same
times when no peer outside the process is involved.
``wall``: host monotonic time since the machine was built.
"""

from __future__ import annotations

import time
from collections.abc import Callable

NS_PER_INSTRUCTION = 1


class Clock:
    def __init__(self, mode: str, instructions: Callable[[], int]) -> None:
        self.mode = mode
        self._instructions = instructions
        self._boot = time.monotonic_ns()
        self._idle_ns = 0  # virtual: time that passed while every environment waited (exo/net.py)

    def now_ns(self) -> int:
        if self.mode == "virtual":
            return self._instructions() * NS_PER_INSTRUCTION + self._idle_ns
        return time.monotonic_ns() - self._boot

    def at(self, instructions: int) -> int:
        """now_ns() when ``instructions`` is the count of retired instructions (read once by a caller
        that needs both)."""
        if self.mode == "virtual":
            return instructions * NS_PER_INSTRUCTION + self._idle_ns
        return time.monotonic_ns() - self._boot

    def advance(self, ns: int) -> None:
        """Virtual clock: ``ns`` passed with no instruction retired (the OS idled until a timer)."""
        if self.mode == "virtual" and ns > 0:
            self._idle_ns += ns
