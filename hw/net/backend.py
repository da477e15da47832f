"""What every network backend provides, and the thread-safe inbox most of them use."""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class Backend(Protocol):
    external: bool  # peers outside this process: idle time is real time

    def send(self, frame: bytes) -> None:
        """Put one frame on the wire (never blocks; a frame the wire cannot take is dropped)."""

    def recv(self) -> list[bytes]:
        """Every frame that has arrived, in arrival order; never blocks."""

    def pending(self) -> bool:
        """True when ``recv()`` would return frames."""

    def wait(self, timeout: float) -> None:
        """Sleep until a frame arrives or ``timeout`` seconds pass."""

    def close(self) -> None:
        """Stop threads, close fds and sockets."""


class Inbox:
    """Frames for the guest, filled by any thread and drained by the machine's thread."""

    def __init__(self, limit: int = 4096) -> None:
        self._q: deque[bytes] = deque()
        self._cv = threading.Condition()
        self.limit = limit  # a guest that never reads must not make the host run out of memory
        self.dropped = 0

    def put(self, frame: bytes) -> None:
        with self._cv:
            if len(self._q) >= self.limit:
                self.dropped += 1
                return
            self._q.append(frame)
            self._cv.notify_all()

    def drain(self) -> list[bytes]:
        with self._cv:
            out = list(self._q)
            self._q.clear()
            return out

    def __bool__(self) -> bool:
        return bool(self._q)

    def wait(self, timeout: float) -> None:
        with self._cv:
            if not self._q and timeout > 0:
                self._cv.wait(timeout)

    def wake(self) -> None:
        """Wake a waiter without a frame (close)."""
        with self._cv:
            self._cv.notify_all()
