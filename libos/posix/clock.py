"""Time and randomness: guest time from the exokernel's clock, seeded bytes (deterministic)."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING

from libos.posix.table import syscall
from libos.posix.vfs import EPOCH

if TYPE_CHECKING:
    from libos.posix import Posix


# The wall clocks (CLOCK_REALTIME, _COARSE, _ALARM, TAI) start at the file system's epoch,
# 2026-01-01 (libos/posix/vfs.py EPOCH), so dates and file times agree and every run gives the same;
# the others (MONOTONIC, BOOTTIME, the CPU-time clocks) count guest time from boot.
WALL_CLOCKS = frozenset({0, 5, 8, 11})


def now_ns(p: Posix, clock: int = 0) -> int:
    """Clock ``clock`` now, in ns of guest time (the virtual clock under --clock virtual)."""
    ns = p.hc("time_now")
    return ns + EPOCH * 1_000_000_000 if clock in WALL_CLOCKS else ns


@syscall("clock_gettime")
def sys_clock_gettime(p: Posix, clock: int, tp: int, *_: int) -> int:
    ns = now_ns(p, clock)
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


_TIMESPEC = struct.Struct("<qq")
TIMER_ABSTIME = 1


def _sleep(p: Posix, key: tuple, ns: int | None, absolute: int | None = None) -> int:
    from libos.posix.poll import deadline_for, done
    from libos.posix.system import WouldBlock

    if absolute is not None:
        p.proc.pending_deadline = (key, absolute)
    deadline = deadline_for(p, key, ns if absolute is None else 0)
    if p.hc("time_now") >= deadline:
        done(p)
        return 0
    raise WouldBlock(0, deadline)  # guest time: the virtual clock jumps when nothing else runs


@syscall("nanosleep")
def sys_nanosleep(p: Posix, req: int, rem: int, *_: int) -> int:
    sec, nsec = _TIMESPEC.unpack(p.port.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return -22  # EINVAL
    return _sleep(p, ("nanosleep", req), sec * 1_000_000_000 + nsec)


@syscall("clock_nanosleep")
def sys_clock_nanosleep(p: Posix, clock: int, flags: int, req: int, rem: int, *_: int) -> int:
    sec, nsec = _TIMESPEC.unpack(p.port.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return -22
    ns = sec * 1_000_000_000 + nsec
    if flags & TIMER_ABSTIME:
        ns -= now_ns(p, clock) - p.hc("time_now")  # the deadline in guest time
        return _sleep(p, ("clock_nanosleep", req), None, absolute=ns)
    return _sleep(p, ("clock_nanosleep", req), ns)


@syscall("gettimeofday")
def sys_gettimeofday(p: Posix, tv: int, tz: int, *_: int) -> int:
    ns = now_ns(p)
    if tv:
        p.port.write(tv, _TIMESPEC.pack(ns // 1_000_000_000, ns % 1_000_000_000 // 1000))
    return 0


@syscall("time")
def sys_time(p: Posix, tloc: int, *_: int) -> int:
    t = now_ns(p) // 1_000_000_000
    if tloc:
        p.port.write(tloc, struct.pack("<q", t))
    return t


@syscall("clock_getres")
def sys_clock_getres(p: Posix, clock: int, res: int, *_: int) -> int:
    if res:
        p.port.write(res, _TIMESPEC.pack(0, 1))  # guest time counts in ns
    return 0


@syscall("sysinfo")
def sys_sysinfo(p: Posix, info: int, *_: int) -> int:
    # struct sysinfo (x86-64, 112 bytes): uptime, loads[3], totalram, freeram, sharedram, bufferram,
    # totalswap, freeswap, procs (u16), pad, totalhigh, freehigh, mem_unit (u32). Fixed figures
    # (256 MiB of RAM, as --ram's default), so programs that size buffers by them run the same.
    up = p.hc("time_now") // 1_000_000_000
    data = struct.pack("<q3Q6QHHxxxxQQI", up, 0, 0, 0, 256 << 20, 128 << 20, 0, 0, 0, 0,
                       len(p.system.procs), 0, 0, 0, 1)
    p.port.write(info, data.ljust(112, b"\0"))
    return 0
