"""The block device: a raw image file on the host, 512-byte sectors, a write-back cache.

Like a real drive with its write cache enabled, ``write`` only puts sectors in
the cache (reads see them at once); ``flush`` is the one durability barrier: it
writes the dirty sectors to the image in sector order and ``os.fsync``\\ s it.
``close`` does **not** flush: closing the device models the machine losing
power, so whatever was written since the last flush is lost, and a file system
above that forgets to flush shows it on the next boot.

Fault injection (``fail_after=N``): after N writes since the last flush, every
further write is silently dropped (the power failed between the N-th write and
the next one) and ``crashed`` is set; it stays set, and writes stay dropped,
for the life of the device. ``fail_at=N`` fails the same way at the N-th write of the
device's life (writes 0..N-1 are accepted), so a sweep over N reaches every point of a
run, whatever its flushes. A later ``flush`` still writes what was accepted
before the failure, so the image ends up with a prefix of the writes: the crash
states a file system must survive. Reads after the failure see the accepted
data only.

Bad images (missing, unreadable, empty, not a whole number of sectors) raise
MachineConfigError naming the file. Out-of-range sectors, partial sectors and
writes to a read-only device also raise MachineConfigError: the exokernel
validates every request first, so reaching those is a bug above the machine.

The device is synchronous (a request completes before the call returns), so
``poll`` never has anything for the OS.
"""

from __future__ import annotations

import os
from pathlib import Path

from hw.errors import MachineConfigError

SECTOR_SIZE = 512


class BlockDevice:
    name = "disk"
    sector_size = SECTOR_SIZE

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False, fail_after: int | None = None,
                 fail_at: int | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if fail_after is not None and fail_after < 0:
            raise MachineConfigError(f"{self.path}: fail_after must be >= 0, got {fail_after}")
        if fail_at is not None and fail_at < 0:
            raise MachineConfigError(f"{self.path}: fail_at must be >= 0, got {fail_at}")
        self.fail_after = fail_after
        self.fail_at = fail_at  # the power fails at the N-th write of the device's life (0-based)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError:
            raise MachineConfigError(f"{self.path}: no such disk image") from None
        except IsADirectoryError:
            raise MachineConfigError(f"{self.path}: is a directory, not a disk image") from None
        except OSError as e:
            mode = "reading" if readonly else "reading and writing"
            raise MachineConfigError(f"{self.path}: cannot open the disk image for {mode}: {e.strerror}") from None
        try:
            self._lock(readonly)
            size = os.fstat(self._fd).st_size
            if size == 0:
                raise MachineConfigError(f"{self.path}: the disk image is empty")
            if size % SECTOR_SIZE:
                raise MachineConfigError(
                    f"{self.path}: the disk image size {size} is not a multiple of {SECTOR_SIZE}-byte sectors")
        except MachineConfigError:
            os.close(self._fd)
            self._fd = None
            raise
        self.sectors = size // SECTOR_SIZE
        self._dirty: dict[int, bytes] = {}  # sector -> contents not yet on the image
        # hold_flushes(): sector -> contents flushed but kept in memory, not yet on the image
        self._held: dict[int, bytes] | None = None
        self._unflushed = 0  # writes accepted since the last flush
        self.crashed = False
        # statistics
        self.reads = 0
        self.writes = 0
        self.flushes = 0
        self.sectors_read = 0
        self.sectors_written = 0  # accepted into the cache
        self.sectors_flushed = 0  # written to the image by flush
        self.dropped_writes = 0  # lost to fault injection

    def _lock(self, readonly: bool) -> None:
        """One writer per image: an advisory lock on the file (flock), exclusive when it is opened
        writable, shared when read-only, so a second exo process on the same image gets a one-line
        error instead of both writing it and one's work being lost (readers may share)."""
        import fcntl

        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            what = "is being written by another process" if readonly else "is in use by another process"
            raise MachineConfigError(f"{self.path}: the disk image {what} (it is locked); wait for it "
                                     "to finish") from None
        except OSError:
            pass  # a file system without locks (some network mounts): as before, unlocked

    # ---------------------------------------------------------------- checks
    def _check(self, sector: int, count: int) -> None:
        if self._fd is None:
            raise MachineConfigError(f"{self.path}: the disk is closed")
        if count <= 0 or sector < 0 or sector + count > self.sectors:
            raise MachineConfigError(
                f"{self.path}: sectors {sector}+{count} are outside the disk's {self.sectors} sectors")

    # -------------------------------------------------------------- requests
    def read(self, sector: int, count: int) -> bytes:
        """``count`` sectors from ``sector``: the cached copy of a dirty sector, else the image's."""
        self._check(sector, count)
        data = bytearray(os.pread(self._fd, count * SECTOR_SIZE, sector * SECTOR_SIZE))
        if len(data) != count * SECTOR_SIZE:  # the image shrank under us
            raise MachineConfigError(f"{self.path}: short read at sector {sector}")
        for layer in (self._held, self._dirty):  # the newer layer last
            if layer:
                for s in range(sector, sector + count):
                    d = layer.get(s)
                    if d is not None:
                        off = (s - sector) * SECTOR_SIZE
                        data[off : off + SECTOR_SIZE] = d
        self.reads += 1
        self.sectors_read += count
        return bytes(data)

    def write(self, sector: int, data: bytes) -> bool:
        """Put whole sectors in the write-back cache; False if fault injection dropped them."""
        if len(data) % SECTOR_SIZE or not data:
            raise MachineConfigError(f"{self.path}: a write of {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR_SIZE
        self._check(sector, count)
        if self.readonly:
            raise MachineConfigError(f"{self.path}: the disk is read-only")
        self.writes += 1
        if self.crashed or (self.fail_after is not None and self._unflushed >= self.fail_after) \
                or (self.fail_at is not None and self.writes > self.fail_at):
            self.crashed = True
            self.dropped_writes += 1
            return False
        self._unflushed += 1
        view = memoryview(bytes(data))
        for i in range(count):
            self._dirty[sector + i] = bytes(view[i * SECTOR_SIZE : (i + 1) * SECTOR_SIZE])
        self.sectors_written += count
        return True

    def flush(self) -> int:
        """Write the dirty sectors to the image in sector order, then fsync: the durability barrier.

        Returns the number of sectors written. Contiguous dirty sectors go out
        in one ``pwrite`` each.
        """
        if self._fd is None:
            raise MachineConfigError(f"{self.path}: the disk is closed")
        self.flushes += 1
        dirty = self._dirty
        n = len(dirty)
        if self.readonly:
            return 0
        if self._held is not None:
            self._held.update(dirty)  # durable for the guest; on the image at release_flushes()
            dirty.clear()
            self._unflushed = 0
            self.sectors_flushed += n
            return n
        self._write_sectors(dirty)
        dirty.clear()
        self._unflushed = 0
        self.sectors_flushed += n
        return n

    def hold_flushes(self) -> None:
        """From now on ``flush`` keeps what it makes durable in memory (reads see it) instead of
        writing the image, until ``release_flushes``. For a debugger that re-executes the past
        from forked copies of the machine (exo/gdb/history.py): the image is one file shared by
        every copy, so a re-executed read must not see a flush made later in the first run."""
        if self._held is None:
            self._held = {}

    def release_flushes(self) -> int:
        """Write what was flushed while held to the image (then fsync); the number of sectors."""
        held, self._held = self._held, None
        if not held or self._fd is None or self.readonly:
            return 0
        self._write_sectors(held)
        return len(held)

    def _write_sectors(self, sectors: dict[int, bytes]) -> None:
        """``sectors`` to the image in sector order, contiguous runs in one ``pwrite`` each; fsync."""
        order = sorted(sectors)
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and order[j] == order[j - 1] + 1:
                j += 1
            chunk = b"".join(sectors[s] for s in order[i:j])
            os.pwrite(self._fd, chunk, order[i] * SECTOR_SIZE)
            i = j
        os.fsync(self._fd)

    # ----------------------------------------------------------- the device
    @property
    def dirty_sectors(self) -> int:
        """Sectors in the cache that a crash would lose."""
        return len(self._dirty)

    def stats(self) -> dict[str, int | bool]:
        return {
            "sectors": self.sectors, "reads": self.reads, "writes": self.writes, "flushes": self.flushes,
            "sectors_read": self.sectors_read, "sectors_written": self.sectors_written,
            "sectors_flushed": self.sectors_flushed, "dirty_sectors": len(self._dirty),
            "dropped_writes": self.dropped_writes, "crashed": self.crashed,
        }  # fmt: skip

    def poll(self) -> bool:
        return False  # synchronous: every request has completed when its call returns

    def close(self) -> None:
        """Release the image WITHOUT flushing: unflushed writes are lost, as in a power failure
        (what was flushed while held, ``hold_flushes``, is written)."""
        if self._held is not None:
            self.release_flushes()
        self._dirty.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        ro = " ro" if self.readonly else ""
        return f"<BlockDevice {self.path} {self.sectors} sectors{ro}>"
