"""The Ext2 class: mounting, sync, and the public API, on top of the concept modules.

``Ext2`` ties together allocation (alloc.py), inodes and block maps
(inodes.py), directory entries (dirs.py) and the namespace (namespace.py),
one mixin class each, and owns what spans them: mounting reads and checks the
superblock (spec ch. 3, Superblock: magic, revision, block size, feature
flags, counts) and the group descriptor table (Block Group Descriptor Table)
before anything else is read, and ``sync`` writes the dirty blocks, the
superblock and the group descriptors (and their backups in the groups
sparse_super keeps, Superblock: s_feature_ro_compat) and flushes the device.
"""

from __future__ import annotations

import errno
import functools
import stat as st
import time
from collections.abc import Callable
from dataclasses import dataclass

from construct import ConstructError

from ..blockio import BlockIO
from .alloc import Allocation
from .cache import DATA, BlockCache
from .dirs import Directories
from .errors import Ext2Error, _corrupt
from .htree import HashTree
from .inodes import Inodes
from .journal import JOURNAL_INO, Journal
from .layout import (
    COMPAT_HAS_JOURNAL,
    EXT2_MAGIC,
    GROUP_DESC_SIZE,
    INCOMPAT_FILETYPE,
    INCOMPAT_NAMES,
    INCOMPAT_RECOVER,
    NAME_MAX,
    RO_COMPAT_SPARSE_SUPER,
    SUPERBLOCK_OFFSET,
    SUPPORTED_INCOMPAT,
    SUPPORTED_RO_COMPAT,
    GroupDesc,
    Superblock,
    _has_super,
)
from .namespace import Namespace

_SB_INCOMPAT = 0x60  # s_feature_incompat's offset in the superblock


@dataclass(frozen=True)
class Stat:
    """What ``Ext2.stat`` returns: the inode's fields, uid and gid with their high 16 bits joined."""

    ino: int
    mode: int
    size: int
    nlink: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    blocks: int


class Ext2(Namespace, Directories, HashTree, Inodes, Allocation):
    """An ext2 file system mounted on a BlockIO (what it supports: libos/fs/ext2/__init__.py)."""

    def __init__(self, dev: BlockIO, cache_blocks: int = 1024,
                 clock: Callable[[], int] = lambda: int(time.time()), readonly: bool = False) -> None:
        self.dev = dev
        self.clock = clock
        self.readonly = readonly or bool(getattr(dev, "readonly", False))
        self.journal: Journal | None = None
        try:
            self._mount(cache_blocks)
            if self.sb.s_feature_compat & COMPAT_HAS_JOURNAL:
                self._open_journal(cache_blocks)
        except ConstructError as e:  # pragma: no cover - sizes are checked before parsing
            raise _corrupt(f"unparsable metadata: {e}") from e

    @classmethod
    def open(cls, dev: BlockIO, cache_blocks: int = 1024, **kwargs: object) -> Ext2:
        return cls(dev, cache_blocks, **kwargs)  # type: ignore[arg-type]

    def _mount(self, cache_blocks: int) -> None:
        dev = self.dev
        ss = getattr(dev, "sector_size", 512)
        if ss <= 0 or 1024 % ss and ss % 1024:
            raise Ext2Error(errno.EINVAL, f"unsupported sector size {ss}")
        dev_bytes = dev.sectors * ss
        if dev_bytes < 2048:
            raise Ext2Error(errno.EINVAL, f"device too small for ext2 ({dev_bytes} bytes): not an ext2 image")
        first = SUPERBLOCK_OFFSET // ss if ss <= 1024 else 0
        count = max(1, 1024 // ss)
        try:
            raw = dev.read(first, count)
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot read the superblock: {e}") from e
        if ss > 1024:
            raw = raw[SUPERBLOCK_OFFSET:SUPERBLOCK_OFFSET + 1024]
        if len(raw) < 1024:
            raise Ext2Error(errno.EIO, "short read of the superblock")
        sb = Superblock.parse(bytes(raw[:1024]))
        if sb.s_magic != EXT2_MAGIC:
            raise Ext2Error(errno.EINVAL, f"bad magic 0x{sb.s_magic:04x} (expected 0xef53): not an ext2 file system")
        if sb.s_rev_level != 1:
            raise Ext2Error(errno.EINVAL, f"unsupported ext2 revision {sb.s_rev_level} (only revision 1)")
        if sb.s_log_block_size > 2:
            raise Ext2Error(errno.EINVAL, f"unsupported block size 2^{10 + sb.s_log_block_size} "
                                          "(1, 2 or 4 KiB)")
        bs = 1024 << sb.s_log_block_size
        if bs % ss:
            raise Ext2Error(errno.EINVAL, f"block size {bs} is not a multiple of the sector size {ss}")
        incompat = sb.s_feature_incompat & ~SUPPORTED_INCOMPAT
        if sb.s_feature_compat & COMPAT_HAS_JOURNAL:
            incompat &= ~INCOMPAT_RECOVER  # needs_recovery: the journal is replayed below
        if incompat:
            names = [INCOMPAT_NAMES.get(1 << i, hex(1 << i)) for i in range(32) if incompat >> i & 1]
            raise Ext2Error(errno.EINVAL, f"unsupported incompatible features: {', '.join(names)}")
        if sb.s_feature_ro_compat & ~SUPPORTED_RO_COMPAT:
            self.readonly = True  # e.g. metadata_csum, huge_file: readable but we cannot keep them valid
        fdb = 1 if bs == 1024 else 0
        if sb.s_first_data_block != fdb:
            raise _corrupt(f"first data block is {sb.s_first_data_block}, expected {fdb}")
        bpg, ipg = sb.s_blocks_per_group, sb.s_inodes_per_group
        if not 8 <= bpg <= 8 * bs or bpg % 8:
            raise _corrupt(f"bad blocks per group {bpg}")
        if not 8 <= ipg <= 8 * bs:
            raise _corrupt(f"bad inodes per group {ipg}")
        isz = sb.s_inode_size
        if isz < 128 or isz > bs or isz & (isz - 1):
            raise _corrupt(f"bad inode size {isz}")
        if (ipg * isz) % bs:
            raise _corrupt(f"inode table of {ipg} inodes does not fill whole blocks")
        if sb.s_blocks_count <= fdb + 1:
            raise _corrupt(f"bad blocks count {sb.s_blocks_count}")
        ngroups = (sb.s_blocks_count - fdb + bpg - 1) // bpg
        if sb.s_inodes_count != ngroups * ipg:
            raise _corrupt(f"inodes count {sb.s_inodes_count} != {ngroups} groups * {ipg} inodes per group")
        if sb.s_blocks_count * bs > dev_bytes:
            raise Ext2Error(errno.EIO, f"image truncated: the superblock says {sb.s_blocks_count} blocks of "
                                       f"{bs} bytes but the device holds only {dev_bytes} bytes")
        if not 11 <= sb.s_first_ino < sb.s_inodes_count:
            raise _corrupt(f"bad first inode {sb.s_first_ino}")
        gdt_blocks = (ngroups * GROUP_DESC_SIZE + bs - 1) // bs
        if fdb + 1 + gdt_blocks > sb.s_blocks_count:
            raise _corrupt("group descriptor table does not fit on the disk")
        if sb.s_reserved_gdt_blocks > bs // 4:
            raise _corrupt(f"bad reserved GDT blocks {sb.s_reserved_gdt_blocks}")

        self.sb = sb
        self.block_size = bs
        self.first_data_block = fdb
        self.blocks_count = sb.s_blocks_count
        self.inodes_count = sb.s_inodes_count
        self.blocks_per_group = bpg
        self.inodes_per_group = ipg
        self.inode_size = isz
        self.ngroups = ngroups
        self.gdt_blocks = gdt_blocks
        self.ptrs_per_block = bs // 4
        self.filetype = bool(sb.s_feature_incompat & INCOMPAT_FILETYPE)
        self.sparse = bool(sb.s_feature_ro_compat & RO_COMPAT_SPARSE_SUPER)
        self.cache = BlockCache(dev, bs, cache_blocks, self.blocks_count)
        self._sb_dirty = False
        self._gd_dirty = False
        self._backups_dirty = False

        self.groups = []
        itb = ipg * isz // bs
        for g in range(ngroups):
            blk, off = divmod(g * GROUP_DESC_SIZE, bs)
            buf = self.cache.get(fdb + 1 + blk)
            gd = GroupDesc.parse(bytes(buf[off:off + GROUP_DESC_SIZE]))
            for what, b, n in (("block bitmap", gd.bg_block_bitmap, 1), ("inode bitmap", gd.bg_inode_bitmap, 1),
                               ("inode table", gd.bg_inode_table, itb)):
                if b <= fdb or b + n > self.blocks_count:
                    raise _corrupt(f"group {g}: {what} at block {b} is outside the disk "
                                   f"({self.blocks_count} blocks)")
            if gd.bg_free_inodes_count > ipg or gd.bg_free_blocks_count > bpg:
                raise _corrupt(f"group {g}: bad free counts in the group descriptor")
            self.groups.append(gd)
        # Write ordering (issue 16; there is no journal): the blocks written back at a sync go in
        # three phases with a flush (the durability barrier) between them, so a power cut at any
        # point never leaves metadata pointing at a block that did not arrive: 1. blocks allocated
        # since the last sync (new data, indirect and directory blocks: what inodes will point
        # at), 2. inode tables and bitmaps, 3. the rest (directories' existing blocks, whose new
        # entries point at inodes, the group descriptors, the superblock).
        self._tables = set()
        for gd in self.groups:
            self._tables.update((gd.bg_block_bitmap, gd.bg_inode_bitmap))
            self._tables.update(range(gd.bg_inode_table, gd.bg_inode_table + itb))
        self._fresh: set[int] = set()
        # Blocks freed since the last sync are not handed out again before it: the metadata on
        # the disk may still point at them (a removed directory's block), and new data written
        # there first would corrupt what a crash leaves (ext3 keeps a freed block until the
        # transaction that freed it commits: jbd2's b_committed_data).
        self._held: set[int] = set()
        self._depth = 0  # nesting of public operations (_operation)
        P = self.ptrs_per_block
        self.max_blocks = 12 + P + P * P + P * P * P
        self.max_file_size = min(self.max_blocks * bs, (2**32 - 1) * 512 // bs * bs, 2**63)

    def _bread(self, bno: int) -> bytearray:
        return self.cache.get(bno)

    def _bwrite(self, bno: int, buf: bytearray) -> None:
        self._check_writable()
        self.cache.put(bno, buf, 1 if bno in self._fresh else 2 if bno in self._tables else 3)

    def _dwrite(self, bno: int, buf: bytearray) -> None:
        """A regular file's data block. Journaled, it goes in place before the transaction that
        points at it commits (ordered mode) and is not logged; otherwise as any block."""
        if self.journal is None:
            self._bwrite(bno, buf)
            return
        self._check_writable()
        self.cache.put(bno, buf, DATA)

    def _free_block(self, inode, bno: int) -> None:
        super()._free_block(inode, bno)
        self._held.add(bno)

    def _alloc_block(self, ino: int, inode, goal: int = 0, zero: bool = True) -> int:
        skipped = []
        try:
            while True:
                bno = super()._alloc_block(ino, inode, goal, zero=False)
                if bno not in self._held:
                    break
                skipped.append(bno)  # freed since the last sync: not yet (see _held)
                goal = bno + 1
        finally:
            for b in skipped:
                Allocation._free_block(self, inode, b)
        self._fresh.add(bno)  # written back before anything that points at it (see __init__)
        if zero:
            self._bwrite(bno, bytearray(self.block_size))  # zeroed as a fresh block: phase 1
        return bno

    def _check_writable(self) -> None:
        if self.readonly:
            raise Ext2Error(errno.EROFS, "file system is mounted read-only")

    def stat(self, path_or_ino: str | int, follow: bool = False) -> Stat:
        ino = self._ino(path_or_ino, follow)
        i = self._live_inode(ino)
        return Stat(ino=ino, mode=i.i_mode, size=self._size(i), nlink=i.i_links_count,
                    uid=i.i_uid | i.i_uid_high << 16, gid=i.i_gid | i.i_gid_high << 16,
                    atime=i.i_atime, mtime=i.i_mtime, ctime=i.i_ctime, blocks=i.i_blocks)

    def set_times(self, path_or_ino: str | int, atime: int | None = None, mtime: int | None = None) -> None:
        ino = self._ino(path_or_ino, follow=True)
        inode = self._live_inode(ino)
        if atime is not None:
            inode.i_atime = atime
        if mtime is not None:
            inode.i_mtime = mtime
        inode.i_ctime = self.clock()
        self._iput(ino, inode)

    def chmod(self, path_or_ino: str | int, mode: int) -> None:
        ino = self._ino(path_or_ino, follow=True)
        inode = self._live_inode(ino)
        inode.i_mode = st.S_IFMT(inode.i_mode) | (mode & 0o7777)
        inode.i_ctime = self.clock()
        self._iput(ino, inode)

    def chown(self, path_or_ino: str | int, uid: int, gid: int) -> None:
        ino = self._ino(path_or_ino, follow=True)
        inode = self._live_inode(ino)
        inode.i_uid, inode.i_uid_high = uid & 0xFFFF, (uid >> 16) & 0xFFFF
        inode.i_gid, inode.i_gid_high = gid & 0xFFFF, (gid >> 16) & 0xFFFF
        inode.i_ctime = self.clock()
        self._iput(ino, inode)

    def _super_at(self, group: int) -> tuple[int, int]:
        """(block, offset) of ``group``'s superblock copy: the primary is 1024 bytes into the
        disk, block 0 itself with blocks larger than 1 KiB (spec ch. 3, Superblock)."""
        if group == 0 and self.block_size > 1024:
            return 0, SUPERBLOCK_OFFSET
        return self._group_start(group), 0

    def _write_super_and_gdt(self, group: int) -> None:
        bs = self.block_size
        sb_blk, sb_off = self._super_at(group)
        self.sb.s_block_group_nr = group
        buf = self._bread(sb_blk)
        buf[sb_off:sb_off + 1024] = Superblock.build(self.sb)
        self._bwrite(sb_blk, buf)
        self.sb.s_block_group_nr = 0
        if self._gd_dirty or group:
            raw = b"".join(GroupDesc.build(gd) for gd in self.groups)
            for i in range(self.gdt_blocks):
                buf = self._bread(sb_blk + 1 + i)
                chunk = raw[i * bs:(i + 1) * bs]
                buf[:len(chunk)] = chunk
                self._bwrite(sb_blk + 1 + i, buf)

    def sync(self) -> None:
        """Write back dirty blocks, the superblock and the group descriptors; flush the device.
        Journaled, they are one transaction (``_commit``)."""
        if not self.readonly:
            if self._sb_dirty or self._gd_dirty:
                self.sb.s_wtime = self.clock()
                self._write_super_and_gdt(0)
                if self._backups_dirty:
                    for g in range(1, self.ngroups):
                        if _has_super(g, self.sparse):
                            self._write_super_and_gdt(g)
                self._sb_dirty = self._gd_dirty = self._backups_dirty = False
            if self.journal is not None:
                self._commit()
            else:
                self.cache.flush()
            self._fresh.clear()
            self._held.clear()
        self.dev.flush()

    # ------------------------------------------------------------------ the journal
    def _open_journal(self, cache_blocks: int, replayed: bool = False) -> None:
        """Find the journal (inode 8), replay what it committed, and journal from now on."""
        sb = self.sb
        needs = bool(sb.s_feature_incompat & INCOMPAT_RECOVER)
        if sb.s_journal_inum != JOURNAL_INO or sb.s_journal_dev:
            if needs and not replayed:
                raise Ext2Error(errno.EINVAL, "the file system needs recovery from an external journal: "
                                              "run e2fsck")
            self.readonly = True  # an external journal: this library cannot keep it
            return
        inode = self._iget(JOURNAL_INO)
        if not st.S_ISREG(inode.i_mode):
            raise _corrupt(f"journal inode {JOURNAL_INO} is not a regular file")
        nblocks = self._size(inode) // self.block_size
        mapped: dict[int, int] = {}

        def phys(n: int) -> int:
            b = mapped.get(n)
            if b is None:
                if not 0 <= n < nblocks:
                    raise _corrupt(f"journal block {n} beyond its {nblocks} blocks")
                b = self._bmap(JOURNAL_INO, inode, n)
                if not b:
                    raise _corrupt(f"journal block {n} is a hole")
                mapped[n] = b
            return b

        c = self.cache
        j = Journal(phys, c.read_raw, c.write_raw, c.device_flush, self.block_size, nblocks)
        if (needs or j.start) and not replayed:
            blocks = j.recover()
            if self.readonly:  # replayed in memory only, as Linux does on a read-only device
                self.dev = _Replayed(self.dev, blocks, self.block_size)
            else:
                for bno in sorted(blocks):
                    c.write_raw(bno, blocks[bno])
                c.device_flush()
                j.mark_empty()
                c.device_flush()
                self._patch_recover(False)
                c.device_flush()
            self._mount(cache_blocks)  # the superblock and descriptors may have been replayed
            self._open_journal(cache_blocks, replayed=True)
            self.journal.replayed = len(blocks)
            return
        self.journal = j
        if not j.writable:
            self.readonly = True
        if not self.readonly:
            c.pin_metadata = True
            # needs_recovery is set while the file system is in use, as Linux's ext3 sets it at
            # mount: in memory now (so every superblock this writes carries it), on the disk at
            # the first transaction, and cleared on the disk by close().
            self.sb.s_feature_incompat |= INCOMPAT_RECOVER
            self._commit_at = max(8, min(j.capacity, c.capacity) // 2)

    def _disk_incompat(self) -> tuple[int, int, bytearray]:
        """The primary superblock's s_feature_incompat as on the disk (not the cache's copy):
        (its value, its block, the block's bytes)."""
        blk, off = self._super_at(0)
        buf = bytearray(self.cache.read_raw(blk))
        return int.from_bytes(buf[off + _SB_INCOMPAT:off + _SB_INCOMPAT + 4], "little"), blk, buf

    def _recover_on_disk(self) -> bool:
        return bool(self._disk_incompat()[0] & INCOMPAT_RECOVER)

    def _patch_recover(self, on: bool) -> None:
        """Set or clear needs_recovery in the superblock on the disk, changing nothing else."""
        flags, blk, buf = self._disk_incompat()
        flags = flags | INCOMPAT_RECOVER if on else flags & ~INCOMPAT_RECOVER
        off = self._super_at(0)[1] + _SB_INCOMPAT
        buf[off:off + 4] = flags.to_bytes(4, "little")
        self.cache._write(blk, buf)

    def _commit(self) -> None:
        """A journaled sync (ordered mode): file data in place, the metadata as one transaction
        (split only if it outgrows the journal), then each block in place, then the journal empty.

        Order on the disk: needs_recovery (the first time), flush; data + the log, flush; the
        commit block, flush (journal.py); the blocks in place (checkpoint), flush; the journal
        superblock says empty (flushed by sync's last flush)."""
        c, j = self.cache, self.journal
        data, meta = c.take_dirty()
        for bno, buf in data:
            c._write(bno, buf)
        if not meta:
            return
        if not self._recover_on_disk():  # read each time: another mount (a forked child's) may clear it
            self._patch_recover(True)
            c.device_flush()
        cap = j.capacity
        for i in range(0, len(meta), cap):
            part = meta[i:i + cap]
            j.commit(part, self.clock())
            for bno, buf in part:
                c._write(bno, buf)
            c.device_flush()
            j.mark_empty()

    fsync = sync

    def statfs(self) -> dict:
        return {
            "block_size": self.block_size,
            "blocks": self.blocks_count,
            "free_blocks": self.sb.s_free_blocks_count,
            "avail_blocks": max(0, self.sb.s_free_blocks_count - self.sb.s_r_blocks_count),
            "inodes": self.inodes_count,
            "free_inodes": self.sb.s_free_inodes_count,
            "name_max": NAME_MAX,
            "groups": self.ngroups,
            "volume_name": bytes(self.sb.s_volume_name).rstrip(b"\0").decode("utf-8", "replace"),
        }

    def close(self) -> None:
        """Sync, and mark the file system clean (unmount): a journaled one no longer needs recovery."""
        self.sync()
        if self.journal is not None and not self.readonly and self._recover_on_disk():
            self._patch_recover(False)
            self.dev.flush()


def _operation(fn: Callable) -> Callable:
    """A public call that changes the file system. A journal's transactions end between such
    calls, never inside one: when the outermost returns and more blocks are dirty than half the
    journal (or the cache) holds, they are committed."""

    @functools.wraps(fn)
    def op(self: Ext2, *args: object, **kwargs: object) -> object:
        self._depth += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if (not self._depth and self.journal is not None and not self.readonly
                    and self.cache.dirty_count > self._commit_at):
                self.sync()

    return op


for _name in ("create", "mknod", "mkdir", "unlink", "rmdir", "link", "symlink", "rename", "write", "truncate",
              "set_times", "chmod", "chown"):
    setattr(Ext2, _name, _operation(getattr(Ext2, _name)))


class _Replayed:
    """A read-only device with a journal's committed blocks laid over it."""

    readonly = True

    def __init__(self, dev: BlockIO, blocks: dict[int, bytes], block_size: int) -> None:
        self.dev = dev
        self.blocks = blocks
        self.sectors = dev.sectors
        self.sector_size = getattr(dev, "sector_size", 512)
        self.spb = block_size // self.sector_size

    def read(self, sector: int, count: int) -> bytes:
        data = bytearray(self.dev.read(sector, count))
        ss, spb = self.sector_size, self.spb
        for b in range(sector // spb, (sector + count - 1) // spb + 1):
            block = self.blocks.get(b)
            if block is None:
                continue
            lo, hi = max(sector, b * spb), min(sector + count, (b + 1) * spb)
            data[(lo - sector) * ss:(hi - sector) * ss] = block[(lo - b * spb) * ss:(hi - b * spb) * ss]
        return bytes(data)

    def write(self, sector: int, data: bytes) -> None:
        raise OSError(errno.EROFS, "read-only device")

    def flush(self) -> None:
        pass
