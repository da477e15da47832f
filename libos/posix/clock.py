"""Time and randomness: guest time from the exokernel's clock, seeded bytes (deterministic)."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING

from libos.posix.table import syscall

if TYPE_CHECKING:
    from libos.posix import Posix


@syscall("clock_gettime")
def sys_clock_gettime(p: Posix, clock: int, tp: int, *_: int) -> int:
    ns = p.hc("time_now")  # guest time: the virtual clock under --clock virtual
    p.port.write(tp, struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
    return 0


@syscall("getrandom")
def sys_getrandom(p: Posix, buf: int, n: int, flags: int, *_: int) -> int:
    """Bytes from SHA-256(seed, counter): the same every run with the same --seed."""
    n = min(n, 1 << 20)
    system = p.system
    out = bytearray()
    while len(out) < n:
        system.rng_counter += 1
        out += hashlib.sha256(b"exo-getrandom|%d|%d" % (system.seed, system.rng_counter)).digest()
    p.port.write(buf, bytes(out[:n]))
    return n
