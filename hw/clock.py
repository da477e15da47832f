"""The clock device: guest time in nanoseconds.

``virtual``: time is retired guest instructions, one instruction counted as one
nanosecond (a 1 GHz CPU retiring one instruction a cycle: a modelled rate, not a
measured one). The same guest and input always see the same times.
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

    def now_ns(self) -> int:
        if self.mode == "virtual":
            return self._instructions() * NS_PER_INSTRUCTION
        return time.monotonic_ns() - self._boot
