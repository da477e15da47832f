"""The in-process hub: every frame transmitted comes back out of ``recv()``.

The machine has one NIC, shared by every environment; the exokernel delivers
what comes back to the environments whose packet filters claim it, so two
guests in one process talk through this hub. Nothing outside the process is
on this wire (``external = False``): with the virtual clock, a quiet network
never makes the machine wait for real time.
"""

from __future__ import annotations

from hw.net.backend import Inbox


class SwitchBackend:
    external = False

    def __init__(self) -> None:
        self._inbox = Inbox()

    def send(self, frame: bytes) -> None:
        self._inbox.put(bytes(frame))

    def recv(self) -> list[bytes]:
        return self._inbox.drain()

    def pending(self) -> bool:
        return bool(self._inbox)

    def wait(self, timeout: float) -> None:
        self._inbox.wait(timeout)  # nothing else can send: returns at once or after timeout

    def close(self) -> None:
        self._inbox.drain()

    def __repr__(self) -> str:
        return "<SwitchBackend>"
