"""The journal: JBD2, ext3's and ext4's, so that a crash at any point leaves the metadata whole.

On-disk format (every field big-endian), as Linux include/linux/jbd2.h and e2fsprogs
lib/ext2fs/kernel-jbd.h define it. The journal is a file (inode 8, ``s_journal_inum``) whose
block 0 is the journal superblock and whose blocks ``s_first`` .. ``s_maxlen - 1`` are a
circular log of transactions, each:

* one or more **descriptor** blocks (header type 1): a tag per logged block, naming the file
  system block it is a copy of (the first tag is followed by the 16-byte UUID, later ones set
  SAME_UUID; the last sets LAST_TAG), each followed in the log by the copies it describes. A
  copy whose first four bytes are the magic number is stored with them zeroed and its tag
  flagged ESCAPE, so no copy can pass for a header;
* optional **revoke** blocks (type 5): blocks freed by this transaction whose copies in earlier
  transactions must not be replayed (their block may hold file data now);
* one **commit** block (type 2). A transaction counts only if its commit reached the disk.

Recovery is jbd2's three passes (fs/jbd2/recovery.c ``do_one_pass``): SCAN from ``s_start``
for transactions with consecutive sequence numbers from ``s_sequence`` up to the first
without a commit; REVOKE collects the revoke records; REPLAY writes each committed copy to its
block unless a revoke of a later or the same transaction covers it. ``s_start == 0`` means
the journal is empty (clean).

This library writes its transactions the simple way (docs/fs.md "Crashes"): one transaction
per sync, always from ``s_first``, checkpointed in place at once, after which the journal is
marked empty again, so nothing older than the last transaction is ever in the log and it
needs no revoke records of its own (it reads and obeys those Linux or e2fsck wrote).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator

from .errors import Ext2Error

MAGIC = 0xC03B3998  # "the first 4 bytes of /dev/random" (jbd2.h)
DESCRIPTOR, COMMIT, SUPERBLOCK_V1, SUPERBLOCK_V2, REVOKE = 1, 2, 3, 4, 5
FLAG_ESCAPE, FLAG_SAME_UUID, FLAG_DELETED, FLAG_LAST_TAG = 1, 2, 4, 8
INCOMPAT_REVOKE, INCOMPAT_64BIT, INCOMPAT_ASYNC_COMMIT = 0x1, 0x2, 0x4
INCOMPAT_CSUM_V2, INCOMPAT_CSUM_V3, INCOMPAT_FAST_COMMIT = 0x8, 0x10, 0x20
# What this library replays and writes: no checksums (csum v2/v3 need crc32c over every block;
# mke2fs turns them on only with metadata_csum, which ext2 here does not support either).
SUPPORTED_INCOMPAT = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT
JOURNAL_INO = 8  # EXT2_JOURNAL_INO

_HEADER = struct.Struct(">III")  # h_magic, h_blocktype, h_sequence
# journal_superblock_t up to s_nr_users: s_blocksize, s_maxlen, s_first (0x0C), s_sequence,
# s_start (0x18), s_errno (0x20), s_feature_compat, s_feature_incompat, s_feature_ro_compat
# (0x24), s_uuid (0x30), s_nr_users (0x40). s_users[16 * 48] starts at 0x100.
_SB = struct.Struct(">IIIIIiIII16sI")
_SB_OFF = _HEADER.size
_COMMIT_TIME = struct.Struct(">QI")  # h_commit_sec, h_commit_nsec at 0x30 of a commit block
_COMMIT_TIME_OFF = 0x30
SB_SIZE = 1024  # the journal superblock's defined bytes (the rest of block 0 is unused)


def default_blocks(fs_blocks: int) -> int:
    """The journal size mke2fs picks for a file system of ``fs_blocks`` blocks (e2fsprogs
    lib/ext2fs/mkjournal.c ``ext2fs_default_journal_size``, 1.47): none below 2,048 blocks."""
    if fs_blocks < 2048:
        return 0
    for limit, size in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192), (4096 * 1024, 16384),
                        (8192 * 1024, 32768), (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if fs_blocks < limit:
            return size
    return 262144


def new_superblock(block_size: int, maxlen: int, uuid: bytes) -> bytes:
    """Block 0 of an empty journal as mke2fs -j writes it: v2, no features, s_first 1,
    s_sequence 1, s_start 0 (empty), the file system's UUID, one user (s_users[0] left zero,
    as for a journal inside the file system)."""
    buf = bytearray(block_size)
    _HEADER.pack_into(buf, 0, MAGIC, SUPERBLOCK_V2, 0)
    _SB.pack_into(buf, _SB_OFF, block_size, maxlen, 1, 1, 0, 0, 0, 0, 0, uuid, 1)
    return bytes(buf)


class Journal:
    """An ext3 journal on a mounted file system.

    ``phys(n)`` maps block ``n`` of the journal file to a device block (the journal inode's block
    map); ``read(bno)``, ``write(bno, data)`` and ``flush()`` reach the device directly, not
    through the block cache: the journal's blocks are ordered by flushes of their own.
    """

    def __init__(self, phys: Callable[[int], int], read: Callable[[int], bytes],
                 write: Callable[[int, bytes], None], flush: Callable[[], None], block_size: int,
                 blocks: int) -> None:
        self.phys, self.read, self.write, self.flush = phys, read, write, flush
        self.block_size = block_size
        raw = bytearray(read(phys(0)))
        magic, btype, _seq = _HEADER.unpack_from(raw, 0)
        if magic != MAGIC or btype not in (SUPERBLOCK_V1, SUPERBLOCK_V2):
            raise Ext2Error(errno.EIO, f"journal (inode {JOURNAL_INO}): bad superblock magic {magic:#x} "
                                       f"or type {btype}")
        (bsize, self.maxlen, self.first, self.sequence, self.start, _errno, self.compat,
         self.incompat, _ro, self.uuid, _users) = _SB.unpack_from(raw, _SB_OFF)
        if btype == SUPERBLOCK_V1:
            self.compat = self.incompat = 0
        if bsize != block_size:
            raise Ext2Error(errno.EIO, f"journal block size {bsize} is not the file system's {block_size}")
        if not 1 <= self.first < self.maxlen <= blocks:
            raise Ext2Error(errno.EIO, f"journal: bad log bounds first {self.first}, maxlen {self.maxlen} "
                                       f"(the journal file has {blocks} blocks)")
        if self.start and not self.first <= self.start < self.maxlen:
            raise Ext2Error(errno.EIO, f"journal: log start {self.start} outside {self.first}..{self.maxlen - 1}")
        self._sb = raw
        self.tag_bytes = self._tag_bytes()
        self.commits = 0  # transactions written (for tests and --stats)
        self.replayed = 0  # blocks written back by recovery at mount

    # ------------------------------------------------------------------ format
    def _tag_bytes(self) -> int:
        """journal_tag_bytes() of jbd2.h: 8, 12 with 64bit, +2 with csum v2; 16 with csum v3."""
        if self.incompat & INCOMPAT_CSUM_V3:
            return 16
        n = 12 + (2 if self.incompat & INCOMPAT_CSUM_V2 else 0)
        return n if self.incompat & INCOMPAT_64BIT else n - 4

    @property
    def writable(self) -> bool:
        """Whether this library may write transactions to it (no feature it cannot keep)."""
        return not self.incompat & ~SUPPORTED_INCOMPAT

    @property
    def features(self) -> str:
        names = {INCOMPAT_REVOKE: "revoke", INCOMPAT_64BIT: "64bit", INCOMPAT_ASYNC_COMMIT: "async_commit",
                 INCOMPAT_CSUM_V2: "csum_v2", INCOMPAT_CSUM_V3: "csum_v3", INCOMPAT_FAST_COMMIT: "fast_commit"}
        return ", ".join(n for bit, n in names.items() if self.incompat & bit) or "none"

    def _wrap(self, pos: int) -> int:
        return pos if pos < self.maxlen else pos - (self.maxlen - self.first)

    def _block(self, pos: int) -> bytes:
        return self.read(self.phys(pos))

    def _tags(self, buf: bytes) -> Iterator[tuple[int, int]]:
        """(file system block, flags) of each tag of a descriptor block."""
        off = _HEADER.size
        tb = self.tag_bytes
        end = len(buf) - (4 if self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) else 0)  # the tail
        while off + tb <= end:
            if self.incompat & INCOMPAT_CSUM_V3:
                lo, flags, hi = struct.unpack_from(">III", buf, off)
            else:
                lo, _csum, flags = struct.unpack_from(">IHH", buf, off)
                hi = struct.unpack_from(">I", buf, off + 8)[0] if self.incompat & INCOMPAT_64BIT else 0
            yield (hi << 32 | lo if self.incompat & INCOMPAT_64BIT else lo), flags
            off += tb
            if not flags & FLAG_SAME_UUID:
                off += 16
            if flags & FLAG_LAST_TAG:
                return

    def _revoked(self, buf: bytes) -> Iterator[int]:
        count = min(struct.unpack_from(">I", buf, _HEADER.size)[0], len(buf))
        size = 8 if self.incompat & INCOMPAT_64BIT else 4
        for off in range(_HEADER.size + 4, count - size + 1, size):
            yield int.from_bytes(buf[off:off + size], "big")

    # ------------------------------------------------------------------ recovery
    def _walk(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(position, type, sequence, block) of each log block from s_start that continues the
        log, stopping at the first that does not: the SCAN pass's view of the log."""
        pos, seq = self.start, self.sequence
        for _ in range(self.maxlen):  # a log never holds more blocks than the journal
            buf = self._block(pos)
            magic, btype, bseq = _HEADER.unpack_from(buf, 0)
            if magic != MAGIC or bseq != seq:
                return
            yield pos, btype, seq, buf
            if btype == DESCRIPTOR:
                pos = self._wrap(pos + 1 + sum(1 for _ in self._tags(buf)))
            elif btype == COMMIT:
                seq += 1
                pos = self._wrap(pos + 1)
            elif btype == REVOKE:
                pos = self._wrap(pos + 1)
            else:
                return

    def recover(self) -> dict[int, bytes]:
        """The committed transactions' blocks, {file system block: contents}, the last copy of
        each, revokes obeyed; and ``self.sequence`` becomes the next transaction's number.
        Nothing is written: the caller writes them in place (or only caches them, read-only)."""
        if not self.start:
            return {}
        end = self.sequence
        for _pos, btype, seq, _buf in self._walk():  # pass SCAN: where the committed log ends
            if btype == COMMIT:
                end = seq + 1
        revoked: dict[int, int] = {}
        for _pos, btype, seq, buf in self._walk():  # pass REVOKE
            if seq >= end:
                break
            if btype == REVOKE:
                for b in self._revoked(buf):
                    revoked[b] = max(seq, revoked.get(b, -1))
        out: dict[int, bytes] = {}
        for pos, btype, seq, buf in self._walk():  # pass REPLAY
            if seq >= end:
                break
            if btype != DESCRIPTOR:
                continue
            at = pos
            for bno, flags in self._tags(buf):
                at = self._wrap(at + 1)
                if revoked.get(bno, -1) >= seq:
                    continue
                data = bytearray(self._block(at))
                if flags & FLAG_ESCAPE:
                    data[0:4] = MAGIC.to_bytes(4, "big")
                out[bno] = bytes(data)
        self.sequence = end
        return out

    # ------------------------------------------------------------------ writing
    def _write_sb(self, start: int) -> None:
        self.start = start
        struct.pack_into(">II", self._sb, 0x18, self.sequence, start)  # s_sequence, s_start
        self.write(self.phys(0), bytes(self._sb))

    def mark_empty(self) -> None:
        """s_start = 0: nothing to replay (written, not flushed: the caller's next flush)."""
        self._write_sb(0)

    @property
    def capacity(self) -> int:
        """The most blocks one transaction may log: the log, less its descriptors and commit."""
        per = max(1, (self.block_size - _HEADER.size - 16) // self.tag_bytes)
        room = self.maxlen - self.first - 1  # the commit block
        return room - -(-room // (per + 1))

    def commit(self, blocks: list[tuple[int, bytes]], when: int) -> None:
        """Log ``blocks`` [(file system block, contents)] as one transaction and commit it:
        the superblock (s_start) and the log, a flush, the commit block, a flush. Afterwards
        the transaction survives a crash; the caller then writes the blocks in place."""
        if len(blocks) > self.capacity:
            raise ValueError(f"{len(blocks)} blocks do not fit a journal of {self.capacity}")
        if not self.writable:
            raise Ext2Error(errno.EROFS, f"journal features {self.features} cannot be written here")
        seq, bs, tb = self.sequence, self.block_size, self.tag_bytes
        pos = self.first
        self._write_sb(self.first)
        i = 0
        while i < len(blocks):
            desc = bytearray(bs)
            _HEADER.pack_into(desc, 0, MAGIC, DESCRIPTOR, seq)
            off, first, last, copies = _HEADER.size, True, 0, []
            while i < len(blocks) and off + tb + (16 if first else 0) <= bs:
                bno, data = blocks[i]
                flags = 0 if first else FLAG_SAME_UUID
                copy = bytes(data)
                if copy[:4] == MAGIC.to_bytes(4, "big"):
                    copy = bytes(4) + copy[4:]
                    flags |= FLAG_ESCAPE
                struct.pack_into(">IHH", desc, off, bno & 0xFFFFFFFF, 0, flags)
                if self.incompat & INCOMPAT_64BIT:
                    struct.pack_into(">I", desc, off + 8, bno >> 32)
                last = off
                off += tb
                if first:
                    desc[off:off + 16] = self.uuid
                    off += 16
                    first = False
                copies.append(copy)
                i += 1
            desc[last + 7] |= FLAG_LAST_TAG  # t_flags' low byte (big-endian u16 at +6)
            self.write(self.phys(pos), bytes(desc))
            pos += 1
            for copy in copies:
                self.write(self.phys(pos), copy)
                pos += 1
        self.flush()  # the log (and the data the caller wrote before) before the commit block
        rec = bytearray(bs)
        _HEADER.pack_into(rec, 0, MAGIC, COMMIT, seq)
        _COMMIT_TIME.pack_into(rec, _COMMIT_TIME_OFF, when, 0)
        self.write(self.phys(pos), bytes(rec))
        self.flush()  # committed
        self.sequence = seq + 1
        self.commits += 1
