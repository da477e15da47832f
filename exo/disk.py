"""Disk multiplexing: block ranges owned by environments (XN-like capabilities).

The exokernel knows nothing of files. It knows which environment may read or
write which sectors, and it checks every request against that: a grant is a
range ``(first sector, number of sectors, writable)`` held in ``Env.disk_grants``.

* The host grants the root ranges (``exo boot --disk IMAGE[:ro]`` gives every
  app the whole disk; ``grant`` below).
* An environment passes on a sub-range of a range it holds to itself or a child
  with ``disk_grant``, never with more rights than it holds; ``DiskGrant.REVOKE``
  takes a range back from a child (and from the child's descendants).
* Children made by ``env_create`` start with a copy of their parent's grants,
  as a Unix child inherits its parent's open file descriptors; a parent that
  wants a child to hold less revokes before making it runnable.

A ``disk_io`` request must lie inside one grant (two adjacent grants do not
combine), and a write needs a writable one. Buffers are checked against the
caller's page tables before the device is touched, so a bad buffer never
leaves a partial write behind. Requests come in batches: a libOS that reads a
whole cluster of blocks, or writes its blocks and then flushes, pays for one
hypercall. The device's write-back cache and crash semantics are in
hw/blockdev.py and docs/disk.md.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from exo.abi import DISK_INFO_SIZE, DISK_REQ_SIZE, SECTOR_SIZE, DiskGrant, DiskOp, Errno
from exo.errors import HypercallError

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel
    from hw.blockdev import BlockDevice

MAX_DISK_SECTORS = 256  # sectors in one read or write request (128 KiB)
MAX_DISK_BATCH = 4096  # requests in one disk_io
MAX_GRANTS = 64  # ranges one environment may hold (the table is the exokernel's memory)

_REQ = struct.Struct("<IIQQQ")
_INFO = struct.Struct("<QQQQ")
assert _REQ.size == DISK_REQ_SIZE and _INFO.size == DISK_INFO_SIZE


# ------------------------------------------------------------------ grants
def grant(env: Env, disk: BlockDevice, sector: int = 0, nsectors: int | None = None, writable: bool = True) -> None:
    """Host side: give ``env`` a root range (the whole disk by default)."""
    if nsectors is None:
        nsectors = disk.sectors - sector
    if not (0 <= sector and 0 < nsectors and sector + nsectors <= disk.sectors):
        raise ValueError(f"range {sector}+{nsectors} is outside the disk's {disk.sectors} sectors")
    _add(env, (sector, nsectors, bool(writable and not disk.readonly)))


def inherit(parent: Env, child: Env) -> None:
    """exofork: the child starts with the parent's ranges (like inherited file descriptors)."""
    child.disk_grants = list(parent.disk_grants)


def covering(env: Env, sector: int, nsectors: int, write: bool) -> tuple[int, int, bool] | None:
    """A grant of ``env`` that contains the whole range (with write rights if ``write``)."""
    end = sector + nsectors
    for g in env.disk_grants:
        if g[0] <= sector and end <= g[0] + g[1] and (g[2] or not write):
            return g
    return None


def _add(env: Env, g: tuple[int, int, bool]) -> None:
    if g in env.disk_grants:
        return
    if len(env.disk_grants) >= MAX_GRANTS:
        raise HypercallError(Errno.ENOSPC, f"environment {env.id} already holds {MAX_GRANTS} disk ranges")
    env.disk_grants.append(g)


def revoke_range(k: Exokernel, env: Env, sector: int, nsectors: int) -> None:
    """Remove [sector, sector+nsectors) from env's grants and its descendants' (splitting ranges)."""
    end = sector + nsectors
    kept = []
    for s, n, w in env.disk_grants:
        e = s + n
        if e <= sector or end <= s:
            kept.append((s, n, w))
            continue
        if s < sector:
            kept.append((s, sector - s, w))
        if end < e:
            kept.append((end, e - end, w))
    env.disk_grants = kept
    for cid in env.children:
        child = k.envs.get(cid)
        if child is not None and child.alive:
            revoke_range(k, child, sector, nsectors)


def _disk(k: Exokernel) -> BlockDevice:
    disk = k.machine.disk
    if disk is None:
        raise HypercallError(Errno.ENODEV, "the machine has no disk")
    return disk


def _range(disk: BlockDevice, sector: int, nsectors: int, limit: int | None = None) -> None:
    if nsectors == 0 or (limit is not None and nsectors > limit):
        raise HypercallError(Errno.EINVAL, f"{nsectors} sectors (1 to {limit or disk.sectors} per request)")
    if sector >= disk.sectors or nsectors > disk.sectors - sector:
        raise HypercallError(Errno.EINVAL, f"sectors {sector}+{nsectors} are outside the disk's {disk.sectors}")


# ------------------------------------------------------------- hypercalls
def hc_disk_info(k: Exokernel, env: Env, info: int) -> int:
    disk = _disk(k)
    env.space.write(info, _INFO.pack(disk.sectors, SECTOR_SIZE, int(disk.readonly), len(env.disk_grants)))
    return 0


def hc_disk_io(k: Exokernel, env: Env, reqs: int, count: int, done_ptr: int) -> object:
    """A batch of read/write/flush requests, each checked, applied in order; stops at the first bad one."""
    disk = _disk(k)
    if count > MAX_DISK_BATCH:
        raise HypercallError(Errno.EINVAL, f"batch of {count} exceeds {MAX_DISK_BATCH}")
    raw = env.space.read(reqs, count * DISK_REQ_SIZE)
    if done_ptr:
        env.space.user_chunks(done_ptr, 8, True)  # check before applying anything
    limit = env.tenant.disk
    if limit is not None:
        # The app's token buckets (exo/tenants.py): over its rate the whole batch waits in guest
        # time, then runs (Firecracker's block device stops taking requests until refilled).
        nbytes = 0
        for i in range(count):
            op, _, _, nsectors, _ = _REQ.unpack_from(raw, i * DISK_REQ_SIZE)
            if op in (DiskOp.READ, DiskOp.WRITE):
                nbytes += min(nsectors, MAX_DISK_SECTORS) * SECTOR_SIZE
        now = k.machine.clock.now_ns()
        wait = limit.wait_ns(nbytes, count, now)
        if wait:
            return k.sleep_until(env, now + wait, "disk rate")
    space = env.space
    done = 0
    error: HypercallError | None = None
    for i in range(count):
        op, reserved, sector, nsectors, buf = _REQ.unpack_from(raw, i * DISK_REQ_SIZE)
        try:
            if reserved:
                raise HypercallError(Errno.EINVAL, f"request {i}: reserved field is {reserved:#x}, not 0")
            if op == DiskOp.FLUSH:
                if not env.disk_grants:
                    raise HypercallError(Errno.EPERM, f"environment {env.id} holds no disk range")
                disk.flush()
            elif op in (DiskOp.READ, DiskOp.WRITE):
                write = op == DiskOp.WRITE
                _range(disk, sector, nsectors, MAX_DISK_SECTORS)
                if covering(env, sector, nsectors, False) is None:
                    raise HypercallError(Errno.EPERM, f"sectors {sector}+{nsectors} are not granted to env {env.id}")
                if write and disk.readonly:
                    raise HypercallError(Errno.EROFS, "the disk is read-only")
                if write and covering(env, sector, nsectors, True) is None:
                    raise HypercallError(Errno.EPERM, f"sectors {sector}+{nsectors} are granted read-only")
                length = nsectors * SECTOR_SIZE
                if write:
                    disk.write(sector, space.read(buf, length))  # EFAULT before the disk sees anything
                else:
                    space.user_chunks(buf, length, True)
                    space.write(buf, disk.read(sector, nsectors))
            else:
                raise HypercallError(Errno.EINVAL, f"request {i}: unknown disk op {op}")
        except HypercallError as e:
            error = e
            break
        done += 1
    if done_ptr:
        space.write(done_ptr, struct.pack("<Q", done))
    if error is not None:
        raise error
    return 0


def hc_disk_grant(k: Exokernel, env: Env, envid: int, sector: int, nsectors: int, mode: int) -> int:
    disk = _disk(k)
    target = k.env_for(env, envid)
    if mode not in tuple(DiskGrant):
        raise HypercallError(Errno.EINVAL, f"bad disk_grant mode {mode}")
    _range(disk, sector, nsectors)
    if mode == DiskGrant.REVOKE:
        revoke_range(k, target, sector, nsectors)
        return 0
    writable = mode == DiskGrant.WRITE
    if covering(env, sector, nsectors, writable) is None:
        what = "read-write" if writable else "readable"
        raise HypercallError(Errno.EPERM, f"sectors {sector}+{nsectors} are not {what} by env {env.id}")
    if target is not env:
        _add(target, (sector, nsectors, writable))
    return 0
