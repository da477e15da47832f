"""The block cache: an LRU write-back cache of ext2 blocks in front of a BlockIO.

Block ``b`` is bytes ``b * block_size`` to ``(b + 1) * block_size`` of the
device (spec ch. 2 "Definitions", Blocks), i.e. ``block_size / sector_size``
sectors.  An access outside the disk is corruption and a device error is EIO.
Dirty blocks are written back on ``flush`` in the phases their writers gave them (1 first, a
device flush as the barrier before the next phase: libos/fs/ext2/fs.py says which blocks go
when), in block order within a phase; evicting a dirty block writes back every block of an
earlier phase first, so eviction never breaks that order.

With a journal (journal.py) the file system takes the dirty blocks itself at a sync
(``take_dirty``) and only file data (phase ``DATA``) may be written in place before its
transaction commits: eviction then keeps dirty metadata in the cache (``pin_metadata``), which
grows past its capacity until the next sync, rather than write a block the journal has not
committed.
"""

from __future__ import annotations

import errno
from collections import OrderedDict

from ..blockio import BlockIO
from .errors import Ext2Error, _corrupt

DATA = 0  # the phase of a regular file's data block (journaled file systems: written in place, not logged)


class BlockCache:
    """An LRU write-back cache of file system blocks (bytearrays)."""

    def __init__(self, dev: BlockIO, block_size: int, capacity: int, nblocks: int) -> None:
        self.dev = dev
        self.block_size = block_size
        self.capacity = max(8, capacity)
        self.nblocks = nblocks
        self.spb = block_size // dev.sector_size
        self._blocks: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty: set[int] = set()
        self._phase: dict[int, int] = {}  # dirty block -> the phase it is written back in
        self.hits = self.misses = self.writebacks = self.barriers = 0
        self.pin_metadata = False  # a journal: dirty blocks of phases other than DATA stay until a sync

    def _check(self, bno: int) -> None:
        if not 0 <= bno < self.nblocks:
            raise _corrupt(f"access to block {bno} outside the disk ({self.nblocks} blocks)")

    def get(self, bno: int) -> bytearray:
        buf = self._blocks.get(bno)
        if buf is not None:
            self.hits += 1
            self._blocks.move_to_end(bno)
            return buf
        self.misses += 1
        buf = bytearray(self.read_raw(bno))
        self._insert(bno, buf)
        return buf

    def put(self, bno: int, buf: bytearray, phase: int = 3) -> None:
        """Store ``buf`` as block ``bno`` and mark it dirty, to be written back in ``phase``."""
        self._check(bno)
        if len(buf) != self.block_size:
            raise ValueError("block of the wrong size")
        if bno in self._blocks:
            self._blocks[bno] = buf
            self._blocks.move_to_end(bno)
        else:
            self._insert(bno, buf)
        self._dirty.add(bno)
        self._phase[bno] = phase

    def _insert(self, bno: int, buf: bytearray) -> None:
        self._blocks[bno] = buf
        if self.pin_metadata:
            self._evict_unpinned()
            return
        while len(self._blocks) > self.capacity:
            old = next(iter(self._blocks))
            if old in self._dirty:
                ph = self._phase[old]
                if any(self._phase[b] < ph for b in self._dirty):
                    self.flush()  # what must reach the disk before it, first (in order)
                else:
                    self._write(old, self._blocks[old])
                    self._dirty.discard(old)
                    del self._phase[old]
            self._blocks.popitem(last=False)

    def _evict_unpinned(self) -> None:
        """Journaled: evict the least recently used clean or data blocks; dirty metadata stays."""
        excess = len(self._blocks) - self.capacity
        if excess <= 0:
            return
        victims = []
        for old in self._blocks:
            if old not in self._dirty or self._phase[old] == DATA:
                victims.append(old)
                if len(victims) == excess:
                    break
        for old in victims:
            if old in self._dirty:
                self._write(old, self._blocks[old])
                self._dirty.discard(old)
                del self._phase[old]
            del self._blocks[old]

    def take_dirty(self) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """(data blocks, metadata blocks), each [(block, contents)] in block order, now clean:
        a journaled sync writes the first in place and logs the second."""
        data, meta = [], []
        for bno in sorted(self._dirty):
            (data if self._phase[bno] == DATA else meta).append((bno, bytes(self._blocks[bno])))
        self._dirty.clear()
        self._phase.clear()
        return data, meta

    def read_raw(self, bno: int) -> bytes:
        """Block ``bno`` from the device, past the cache (the journal's own blocks)."""
        self._check(bno)
        try:
            data = self.dev.read(bno * self.spb, self.spb)
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot read block {bno}: {e}") from e
        if len(data) != self.block_size:
            raise Ext2Error(errno.EIO, f"short read of block {bno}")
        return bytes(data)

    def read_run(self, bno: int, n: int) -> bytes:
        """Blocks ``bno`` .. ``bno + n - 1``, none of them cached, from the device in one read,
        then cached as ``get`` would (a file read again is served from the cache: the ring-
        transition experiment's file workload counts on it)."""
        self._check(bno)
        self._check(bno + n - 1)
        try:
            data = self.dev.read(bno * self.spb, n * self.spb)
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot read blocks {bno}..{bno + n - 1}: {e}") from e
        if len(data) != n * self.block_size:
            raise Ext2Error(errno.EIO, f"short read of blocks {bno}..{bno + n - 1}")
        data = bytes(data)
        bs = self.block_size
        self.misses += n
        for i in range(n):
            self._insert(bno + i, bytearray(data[i * bs:(i + 1) * bs]))
        return data

    def cached(self, bno: int) -> bool:
        return bno in self._blocks

    def write_raw(self, bno: int, data: bytes) -> None:
        """Write ``data`` to block ``bno`` now; a cached copy becomes ``data`` (clean)."""
        self._check(bno)
        self._write(bno, data)
        if bno in self._blocks:
            self._blocks[bno] = bytearray(data)
            self._dirty.discard(bno)
            self._phase.pop(bno, None)

    def device_flush(self) -> None:
        self.barriers += 1
        try:
            self.dev.flush()
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot flush the device: {e}") from e

    def _write(self, bno: int, buf: bytes | bytearray) -> None:
        self.writebacks += 1
        try:
            self.dev.write(bno * self.spb, bytes(buf))
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot write block {bno}: {e}") from e

    def flush(self) -> None:
        """Write back every dirty block, phase by phase, a device flush between two phases."""
        phases = sorted(set(self._phase.values()))
        for i, ph in enumerate(phases):
            for bno in sorted(b for b in self._dirty if self._phase[b] == ph):
                self._write(bno, self._blocks[bno])
            if i + 1 < len(phases):
                self.device_flush()
        self._dirty.clear()
        self._phase.clear()

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)
