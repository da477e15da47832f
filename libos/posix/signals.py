"""Signals (stub until the signals work lands: docs/posix.md). send() records nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libos.posix import Posix


def send(p: Posix, pid: int, signo: int) -> int:
    """Send ``signo`` to ``pid``; 0 or a negative errno. Not yet delivered (docs/posix.md)."""
    return 0


def deliver_pending(p: Posix, rc: int) -> int:
    """Deliver what is pending to the calling process on its way out of a call; returns RAX."""
    return rc
