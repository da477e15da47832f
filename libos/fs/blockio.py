"""Block devices for the ext2 library: a protocol and two simple implementations.

A device is a flat array of ``sectors`` sectors of ``sector_size`` bytes.  The
file system reads and writes whole sectors; ``flush`` makes writes durable.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlockIO(Protocol):
    sector_size: int
    sectors: int

    def read(self, sector: int, count: int) -> bytes: ...

    def write(self, sector: int, data: bytes) -> None: ...

    def flush(self) -> None: ...


def _check_range(dev: BlockIO, sector: int, count: int) -> None:
    if sector < 0 or count < 0 or sector + count > dev.sectors:
        raise OSError(f"I/O outside the device: sectors {sector}..{sector + count} of {dev.sectors}")


class FileBlockIO:
    """A raw image file as a block device (a trailing partial sector is ignored)."""

    sector_size: int = 512

    def __init__(self, path: str | os.PathLike, readonly: bool = False, sector_size: int = 512) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self.sector_size = sector_size
        self._f = open(self.path, "rb" if readonly else "r+b")  # noqa: SIM115 - closed by close()
        self._f.seek(0, os.SEEK_END)
        self.sectors = self._f.tell() // sector_size

    def read(self, sector: int, count: int) -> bytes:
        _check_range(self, sector, count)
        self._f.seek(sector * self.sector_size)
        data = self._f.read(count * self.sector_size)
        if len(data) != count * self.sector_size:
            raise OSError(f"short read at sector {sector}")
        return data

    def write(self, sector: int, data: bytes) -> None:
        if self.readonly:
            raise OSError("device is read-only")
        if len(data) % self.sector_size:
            raise ValueError("write of a partial sector")
        _check_range(self, sector, len(data) // self.sector_size)
        self._f.seek(sector * self.sector_size)
        self._f.write(data)

    def flush(self) -> None:
        self._f.flush()
        if not self.readonly:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    def __enter__(self) -> FileBlockIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryBlockIO:
    """A block device in a bytearray (tests, fuzzing)."""

    sector_size: int = 512

    def __init__(self, data: bytes | bytearray, sector_size: int = 512) -> None:
        self.data = bytearray(data)
        self.sector_size = sector_size
        self.sectors = len(self.data) // sector_size
        self.flushes = 0

    def read(self, sector: int, count: int) -> bytes:
        _check_range(self, sector, count)
        start = sector * self.sector_size
        return bytes(self.data[start:start + count * self.sector_size])

    def write(self, sector: int, data: bytes) -> None:
        if len(data) % self.sector_size:
            raise ValueError("write of a partial sector")
        _check_range(self, sector, len(data) // self.sector_size)
        start = sector * self.sector_size
        self.data[start:start + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1
