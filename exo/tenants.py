"""Tenants: one per booted app, so that no app can starve another.

Every environment belongs to the tenant of the booted app it descends from
(children are charged to their app, however deep the tree). A tenant holds the
quotas that cover all of its environments together:

* **frames**: physical frames owned by its environments, page tables included.
  Counted where frames are handed out and given back (exo/frames.py ``alloc``/
  ``free``), so the count is exact and costs one dict lookup per frame. Over the
  limit, the allocation fails and the guest gets -ENOMEM.
* **envs**: live environments. Over the limit, ``env_create`` gets -EAGAIN
  (as Linux ``fork`` does at RLIMIT_NPROC).
* **cpu**: a weight. The exokernel's scheduler (exo/kernel.py ``_pick``) is a
  weighted round robin over tenants: on its turn a tenant gets ``weight`` slices
  worth of instructions (the last slice is cut to what is left of the turn, so
  no deficit carries over as in Shreedhar and Varghese's DRR, SIGCOMM'95, where
  a packet may overrun its quantum), spent round robin over its own runnable
  environments, so an app with 1,000 runnable
  environments gets no more CPU than an app with one. A yield ends the turn (it
  ended the slice before tenants); an IPC hand-off to a microkernel server runs
  inside the caller's turn and never starts one.
* **fds**: open descriptors each environment of the app may hold (Linux's
  RLIMIT_NOFILE, per process). Descriptors are the libOS's, not the exokernel's:
  the libOS reads its limit with the ``quota_info`` hypercall and answers -EMFILE
  past it (libos/posix/files.py, libos/net, libos/fs), as getrlimit reports it.
* **disk** and **net**: token buckets, bytes/s and operations/s with a burst,
  as Firecracker's rate limiters (src/vmm/src/rate_limiter/mod.rs: a
  ``RateLimiter`` holds a bandwidth and an ops ``TokenBucket``; when a request
  finds too few tokens the device stops taking requests from the queue until a
  timer has refilled them: the request is delayed, never failed). Here the
  environment blocks until the bucket holds enough tokens, in guest time (the
  virtual clock jumps there when nothing else can run).

Defaults (``fair_frames``, used when apps are booted: exo/api.py ``spawn_apps``): each app gets
the free frames at boot divided by the number of apps, 1,024 environments,
1,024 descriptors, weight 1, and no rate limit. ``exo boot --quota`` and an app's ``[quota]``
table change them (docs/architecture.md).

Reading usage and limits (the fuzzer's "quotas hold" check, --stats):
``env.tenant.frames_used <= .frame_limit``, ``.envs_used <= .env_limit``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from exo.abi import DEFAULT_FDS
from exo.record import Record

DEFAULT_ENVS = 1024  # live environments per app (JOS has a global NENV of 1024)
MAX_FDS = 1 << 20  # Linux's fs.nr_open default: the most RLIMIT_NOFILE may be raised to
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1000
NS = 1_000_000_000


class TokenBucket:
    """``rate`` tokens per second of guest time, holding at most ``burst`` (Firecracker's TokenBucket).

    Integer arithmetic in nanoseconds, so the same guest sees the same delays.
    """

    def __init__(self, rate: int, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else rate  # one second's worth, Firecracker's usual size
        self.tokens = self.burst
        self._t = 0  # guest ns of the last refill
        self._frac = 0  # token fractions (tokens * 1e9) carried between refills

    def refill(self, now: int) -> None:
        if now > self._t:
            gained = (now - self._t) * self.rate + self._frac
            self.tokens = min(self.burst, self.tokens + gained // NS)
            self._frac = gained % NS if self.tokens < self.burst else 0
            self._t = now


class RateLimit(Record):
    """bytes/s and ops/s buckets of one device (either may be None: not limited)."""
    _FIELDS = ('bytes', 'ops', 'delays', 'delayed_ns')

    def __init__(self, bytes: TokenBucket | None = None, ops: TokenBucket | None = None, delays: int = 0,
                 delayed_ns: int = 0) -> None:
        self.bytes = bytes
        self.ops = ops
        self.delays = delays  # times a request had to wait
        self.delayed_ns = delayed_ns  # guest time spent waiting, in all

    def wait_ns(self, nbytes: int, nops: int, now: int) -> int:
        """0: the request may go now (its tokens are taken); otherwise how long to wait first."""
        wait = 0
        if self.bytes is not None:
            self.bytes.refill(now)
        if self.ops is not None:
            self.ops.refill(now)
        # Take from both or neither: check first.
        for bucket, n in ((self.bytes, nbytes), (self.ops, nops)):
            if bucket is not None and n:
                need = min(n, bucket.burst)
                if bucket.tokens < need:
                    wait = max(wait, -(-((need - bucket.tokens) * NS - bucket._frac) // bucket.rate))
        if wait:
            self.delays += 1
            self.delayed_ns += wait
            return max(1, wait)
        for bucket, n in ((self.bytes, nbytes), (self.ops, nops)):
            if bucket is not None and n:
                bucket.tokens -= n
        return 0

    def describe(self) -> str:
        parts = []
        if self.bytes is not None:
            parts.append(f"{self.bytes.rate} bytes/s")
        if self.ops is not None:
            parts.append(f"{self.ops.rate} ops/s")
        return ", ".join(parts) or "unlimited"


class Tenant:
    """One app's quotas, use and CPU share (a plain class: exo/record.py says why)."""

    def __init__(self, id: int, name: str, frame_limit: int, env_limit: int = DEFAULT_ENVS,
                 weight: int = DEFAULT_WEIGHT, fd_limit: int = DEFAULT_FDS, disk: RateLimit | None = None, net: RateLimit | None = None,
                 system: bool = False, frames_used: int = 0, frames_peak: int = 0, envs_used: int = 0,
                 instructions: int = 0, frame_refusals: int = 0, env_refusals: int = 0,
                 runq: deque | None = None, in_ring: bool = False) -> None:
        self.id = id  # the id of the app's first environment
        self.name = name
        self.frame_limit = frame_limit
        self.env_limit = env_limit
        self.weight = weight
        self.fd_limit = fd_limit
        self.disk = disk
        self.net = net
        self.system = system  # the exokernel's own (microkernel servers): not a booted app
        self.net_app = id  # whose network address its environments use (exo/net.py): its own, but
        # a tenant exo serve starts instances in for another app (--tenant) uses that app's
        self.frames_used = frames_used
        self.frames_peak = frames_peak  # the most it held at once
        self.envs_used = envs_used
        self.instructions = instructions  # retired by its environments (virtual clock)
        self.frame_refusals = frame_refusals  # allocations refused by its frame quota
        self.env_refusals = env_refusals  # env_create refused by its environment quota
        # Scheduling (exo/kernel.py): its runnable environments, and whether it waits for a turn.
        self.runq = deque() if runq is None else runq
        self.in_ring = in_ring

    @property
    def frames_exhausted(self) -> str:
        return f"frame quota of app '{self.name}' exhausted: {self.frames_used} of {self.frame_limit} frames"

    def usage(self) -> dict[str, Any]:
        """Use against quota, for --stats and --stats-json (docs/stats.md)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "system": self.system,
            "frames": {"used": self.frames_used, "peak": self.frames_peak, "limit": self.frame_limit,
                       "refused": self.frame_refusals},
            "envs": {"used": self.envs_used, "limit": self.env_limit, "refused": self.env_refusals},
            "cpu": {"weight": self.weight, "instructions": self.instructions},
            "fds": {"limit": self.fd_limit},
        }
        for dev in ("disk", "net"):
            lim: RateLimit | None = getattr(self, dev)
            out[dev] = None if lim is None else {
                "limit": lim.describe(), "delays": lim.delays, "delayed_ns": lim.delayed_ns}
        return out


class QuotaError(ValueError):
    """A bad quota specification (the CLI and the manifest turn it into a one-line error)."""


# key -> (what it sets, parser). Sizes accept K/M/G suffixes (powers of 1024).
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _count(text: str, what: str) -> int:
    t = text.strip().lower()
    unit = t[-1:] if t[-1:] in ("k", "m", "g") else ""
    digits = t[: len(t) - len(unit)]
    if not digits.isdigit():
        raise QuotaError(f"{what}: {text!r} is not a whole number")
    return int(digits) * _SUFFIX[unit]


def _rate(text: str, what: str) -> tuple[int, int | None]:
    """``N[/s]`` or ``N/s:BURST``: a rate per second and an optional burst."""
    t = text.strip()
    burst = None
    if ":" in t:
        t, b = t.split(":", 1)
        burst = _count(b, f"{what} burst")
        if burst <= 0:
            raise QuotaError(f"{what} burst must be positive")
    t = t.removesuffix("/s")
    n = _count(t, what)
    if n <= 0:
        raise QuotaError(f"{what} must be positive, got {text!r}")
    return n, burst


QUOTA_KEYS = ("frames", "envs", "fds", "cpu", "disk", "disk_ops", "net", "net_ops")


def parse_quota(items: dict[str, Any]) -> dict[str, Any]:
    """Validate {key: value} (from ``--quota`` text or an app.toml ``[quota]`` table).

    Returns {key: int or (rate, burst)}; raises QuotaError with one line.
    """
    out: dict[str, Any] = {}
    for key, raw in items.items():
        if key not in QUOTA_KEYS:
            raise QuotaError(f"unknown quota '{key}' (known: {', '.join(QUOTA_KEYS)})")
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise QuotaError(f"quota {key} must be a number or a string, not {type(raw).__name__}")
        text = str(raw)
        if key in ("frames", "envs", "fds", "cpu"):
            n = _count(text, key)
            if n <= 0:
                raise QuotaError(f"quota {key} must be positive, got {text!r}")
            if key == "cpu" and n > MAX_WEIGHT:
                raise QuotaError(f"cpu weight {n} is above {MAX_WEIGHT}")
            if key == "fds" and n > MAX_FDS:
                raise QuotaError(f"fds {n} is above {MAX_FDS} (Linux's fs.nr_open)")
            out[key] = n
        else:
            out[key] = _rate(text, key)
    return out


def parse_quota_option(spec: str) -> tuple[str, dict[str, Any]]:
    """``APP:frames=N,envs=N,fds=N,cpu=W,disk=BYTES/s,net=BYTES/s`` -> (app, parsed quota)."""
    app, sep, rest = spec.partition(":")
    if not sep or not app or not rest:
        raise QuotaError(f"{spec!r}: expected APP:KEY=VALUE[,KEY=VALUE...]")
    items: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise QuotaError(f"{spec!r}: '{part}' is not KEY=VALUE")
        if key.strip() in items:
            raise QuotaError(f"{spec!r}: {key.strip()} given twice")
        items[key.strip()] = value.strip()
    return app, parse_quota(items)


class Tenants:
    """All tenants of a kernel: the per-owner index the frame table charges through."""

    def __init__(self, total_frames: int) -> None:
        self.by_id: dict[int, Tenant] = {}
        self.by_owner: dict[int, Tenant] = {}  # env id -> its tenant (exo/frames.py charges frames here)
        self.total_frames = total_frames

    def new(self, eid: int, name: str, *, system: bool = False) -> Tenant:
        t = Tenant(eid, name, self.total_frames, system=system)
        self.by_id[eid] = t
        return t

    def __getitem__(self, key: int | str) -> Tenant:
        """By the id of the app's first environment, or by the app's name."""
        if isinstance(key, int):
            return self.by_id[key]
        for t in self.by_id.values():
            if t.name == key:
                return t
        raise KeyError(key)

    def __iter__(self):
        return iter(self.by_id.values())

    def apps(self) -> list[Tenant]:
        return [t for t in self.by_id.values() if not t.system]

    def apply(self, tenant: Tenant, quota: dict[str, Any]) -> None:
        """Set the limits in a parsed quota (parse_quota) on ``tenant``."""
        for key, value in quota.items():
            if key == "frames":
                tenant.frame_limit = value
            elif key == "envs":
                tenant.env_limit = value
            elif key == "fds":
                tenant.fd_limit = value
            elif key == "cpu":
                tenant.weight = value
            else:
                dev, _, kind = key.partition("_")
                lim = getattr(tenant, dev) or RateLimit()
                setattr(lim, "ops" if kind else "bytes", TokenBucket(*value))
                setattr(tenant, dev, lim)

    @staticmethod
    def fair_frames(quotas: list[dict[str, Any]], free_frames: int) -> int:
        """The frame quota of each app that sets none: an equal part of what the others leave.

        Frames set explicitly are taken off the top; the rest of the free frames
        at boot is split evenly among the apps that set none (one app alone gets
        them all, as before tenants).
        """
        fixed = sum(q["frames"] for q in quotas if "frames" in q)
        rest = sum(1 for q in quotas if "frames" not in q)
        share = (free_frames - fixed) // max(1, rest)
        if rest and share < 1:
            raise QuotaError(f"frame quotas of {fixed} frames leave nothing of the {free_frames} free frames "
                             f"for the {rest} app(s) with no frame quota")
        return share
