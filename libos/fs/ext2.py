"""A pure-Python ext2 (revision 1) file system library.

Reads and writes the feature set ``mke2fs -t ext2`` produces by default
(ext_attr, resize_inode, dir_index, filetype, sparse_super, large_file) with
1, 2 or 4 KiB blocks.  htree (dir_index) directories are read as the linear
directories they also are; a modified one loses its index flag, which e2fsck
accepts.  The reserved GDT blocks of resize_inode are never touched.

Everything read from disk is bounds-checked: corruption raises
``Ext2Error(errno.EIO, ...)`` with a message naming the structure, never an
IndexError or an endless loop.  Blocks go through a write-back LRU cache;
``sync()`` writes the dirty blocks, superblock and group descriptors and then
flushes the device.
"""

from __future__ import annotations

import errno
import stat as st
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from construct import (
    Array,
    Bytes,
    ConstructError,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32ul,
    Struct,
)

from .blockio import BlockIO

# ----------------------------------------------------------------------------
# On-disk structures

EXT2_MAGIC = 0xEF53
SUPERBLOCK_OFFSET = 1024
ROOT_INO = 2
LINK_MAX = 32000
NAME_MAX = 255
SYMLINK_LOOPS = 40

# feature bits
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_META_BG = 0x0010
INCOMPAT_FLEX_BG = 0x0200
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004

SUPPORTED_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_FLEX_BG
SUPPORTED_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR

INCOMPAT_NAMES = {0x1: "compression", 0x4: "needs_recovery", 0x8: "journal_dev", 0x10: "meta_bg",
                  0x40: "extent", 0x80: "64bit", 0x100: "mmp", 0x400: "ea_inode",
                  0x1000: "dirdata", 0x2000: "metadata_csum_seed", 0x4000: "large_dir",
                  0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold"}

# inode flags
INDEX_FL = 0x1000
EXTENTS_FL = 0x80000

# directory entry file types
FT_UNKNOWN, FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)
_FT_OF_MODE = {st.S_IFREG: FT_REG, st.S_IFDIR: FT_DIR, st.S_IFCHR: FT_CHR, st.S_IFBLK: FT_BLK,
               st.S_IFIFO: FT_FIFO, st.S_IFSOCK: FT_SOCK, st.S_IFLNK: FT_SYMLINK}

Superblock = Struct(
    "s_inodes_count" / Int32ul,
    "s_blocks_count" / Int32ul,
    "s_r_blocks_count" / Int32ul,
    "s_free_blocks_count" / Int32ul,
    "s_free_inodes_count" / Int32ul,
    "s_first_data_block" / Int32ul,
    "s_log_block_size" / Int32ul,
    "s_log_frag_size" / Int32ul,
    "s_blocks_per_group" / Int32ul,
    "s_frags_per_group" / Int32ul,
    "s_inodes_per_group" / Int32ul,
    "s_mtime" / Int32ul,
    "s_wtime" / Int32ul,
    "s_mnt_count" / Int16ul,
    "s_max_mnt_count" / Int16sl,
    "s_magic" / Int16ul,
    "s_state" / Int16ul,
    "s_errors" / Int16ul,
    "s_minor_rev_level" / Int16ul,
    "s_lastcheck" / Int32ul,
    "s_checkinterval" / Int32ul,
    "s_creator_os" / Int32ul,
    "s_rev_level" / Int32ul,
    "s_def_resuid" / Int16ul,
    "s_def_resgid" / Int16ul,
    "s_first_ino" / Int32ul,
    "s_inode_size" / Int16ul,
    "s_block_group_nr" / Int16ul,
    "s_feature_compat" / Int32ul,
    "s_feature_incompat" / Int32ul,
    "s_feature_ro_compat" / Int32ul,
    "s_uuid" / Bytes(16),
    "s_volume_name" / Bytes(16),
    "s_last_mounted" / Bytes(64),
    "s_algorithm_usage_bitmap" / Int32ul,
    "s_prealloc_blocks" / Int8ul,
    "s_prealloc_dir_blocks" / Int8ul,
    "s_reserved_gdt_blocks" / Int16ul,
    "s_journal_uuid" / Bytes(16),
    "s_journal_inum" / Int32ul,
    "s_journal_dev" / Int32ul,
    "s_last_orphan" / Int32ul,
    "s_hash_seed" / Array(4, Int32ul),
    "s_def_hash_version" / Int8ul,
    "s_jnl_backup_type" / Int8ul,
    "s_desc_size" / Int16ul,
    "s_default_mount_opts" / Int32ul,
    "s_first_meta_bg" / Int32ul,
    "s_mkfs_time" / Int32ul,
    "s_jnl_blocks" / Array(17, Int32ul),
    "s_blocks_count_hi" / Int32ul,
    "s_r_blocks_count_hi" / Int32ul,
    "s_free_blocks_hi" / Int32ul,
    "s_min_extra_isize" / Int16ul,
    "s_want_extra_isize" / Int16ul,
    "s_flags" / Int32ul,
    "s_rest" / Bytes(1024 - 356),
)
assert Superblock.sizeof() == 1024

GroupDesc = Struct(
    "bg_block_bitmap" / Int32ul,
    "bg_inode_bitmap" / Int32ul,
    "bg_inode_table" / Int32ul,
    "bg_free_blocks_count" / Int16ul,
    "bg_free_inodes_count" / Int16ul,
    "bg_used_dirs_count" / Int16ul,
    "bg_flags" / Int16ul,
    "bg_reserved" / Bytes(12),
)
GROUP_DESC_SIZE = GroupDesc.sizeof()
assert GROUP_DESC_SIZE == 32

Inode = Struct(
    "i_mode" / Int16ul,
    "i_uid" / Int16ul,
    "i_size" / Int32ul,
    "i_atime" / Int32ul,
    "i_ctime" / Int32ul,
    "i_mtime" / Int32ul,
    "i_dtime" / Int32ul,
    "i_gid" / Int16ul,
    "i_links_count" / Int16ul,
    "i_blocks" / Int32ul,
    "i_flags" / Int32ul,
    "i_osd1" / Int32ul,
    "i_block" / Array(15, Int32ul),
    "i_generation" / Int32ul,
    "i_file_acl" / Int32ul,
    "i_size_high" / Int32ul,
    "i_faddr" / Int32ul,
    "i_frag" / Int8ul,
    "i_fsize" / Int8ul,
    "i_pad1" / Int16ul,
    "i_uid_high" / Int16ul,
    "i_gid_high" / Int16ul,
    "i_reserved2" / Int32ul,
)
INODE_BASE_SIZE = Inode.sizeof()
assert INODE_BASE_SIZE == 128
InodeExtraIsize = Int16ul  # first field after the 128-byte base when s_inode_size > 128

DirEntryHeader = Struct(
    "inode" / Int32ul,
    "rec_len" / Int16ul,
    "name_len" / Int8ul,
    "file_type" / Int8ul,
)
DIRENT_HEADER = DirEntryHeader.sizeof()

XattrHeader = Struct(
    "h_magic" / Int32ul,
    "h_refcount" / Int32ul,
    "h_blocks" / Int32ul,
    "h_hash" / Int32ul,
    "h_reserved" / Bytes(16),
)
XATTR_MAGIC = 0xEA020000


def dirent_size(name_len: int) -> int:
    return (DIRENT_HEADER + name_len + 3) & ~3


def _has_super(group: int, sparse: bool) -> bool:
    if not sparse or group <= 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False


# ----------------------------------------------------------------------------
# Errors and results


class Ext2Error(Exception):
    """A file system error; ``errno`` is an ``errno`` code (EIO for corruption)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"{errno.errorcode.get(err, err)}: {message}")
        self.errno = err
        self.message = message


def _corrupt(message: str) -> Ext2Error:
    return Ext2Error(errno.EIO, f"corrupt file system: {message}")


@dataclass(frozen=True)
class Stat:
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


# ----------------------------------------------------------------------------
# Block cache


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
        self.hits = self.misses = self.writebacks = 0

    def _check(self, bno: int) -> None:
        if not 0 <= bno < self.nblocks:
            raise _corrupt(f"access to block {bno} outside the disk ({self.nblocks} blocks)")

    def get(self, bno: int) -> bytearray:
        buf = self._blocks.get(bno)
        if buf is not None:
            self.hits += 1
            self._blocks.move_to_end(bno)
            return buf
        self._check(bno)
        self.misses += 1
        try:
            data = self.dev.read(bno * self.spb, self.spb)
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot read block {bno}: {e}") from e
        if len(data) != self.block_size:
            raise Ext2Error(errno.EIO, f"short read of block {bno}")
        buf = bytearray(data)
        self._insert(bno, buf)
        return buf

    def put(self, bno: int, buf: bytearray) -> None:
        """Store ``buf`` as block ``bno`` and mark it dirty."""
        self._check(bno)
        if len(buf) != self.block_size:
            raise ValueError("block of the wrong size")
        if bno in self._blocks:
            self._blocks[bno] = buf
            self._blocks.move_to_end(bno)
        else:
            self._insert(bno, buf)
        self._dirty.add(bno)

    def _insert(self, bno: int, buf: bytearray) -> None:
        self._blocks[bno] = buf
        while len(self._blocks) > self.capacity:
            old, obuf = self._blocks.popitem(last=False)
            if old in self._dirty:
                self._write(old, obuf)
                self._dirty.discard(old)

    def _write(self, bno: int, buf: bytearray) -> None:
        self.writebacks += 1
        try:
            self.dev.write(bno * self.spb, bytes(buf))
        except (OSError, ValueError) as e:
            raise Ext2Error(errno.EIO, f"cannot write block {bno}: {e}") from e

    def flush(self) -> None:
        for bno in sorted(self._dirty):
            self._write(bno, self._blocks[bno])
        self._dirty.clear()

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)


# ----------------------------------------------------------------------------
# The file system


class Ext2:
    def __init__(self, dev: BlockIO, cache_blocks: int = 1024,
                 clock: Callable[[], int] = lambda: int(time.time()), readonly: bool = False) -> None:
        self.dev = dev
        self.clock = clock
        self.readonly = readonly or bool(getattr(dev, "readonly", False))
        try:
            self._mount(cache_blocks)
        except ConstructError as e:  # pragma: no cover - sizes are checked before parsing
            raise _corrupt(f"unparsable metadata: {e}") from e

    @classmethod
    def open(cls, dev: BlockIO, cache_blocks: int = 1024, **kwargs: object) -> Ext2:
        return cls(dev, cache_blocks, **kwargs)  # type: ignore[arg-type]

    # -- mounting -----------------------------------------------------------

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
        if incompat:
            names = [INCOMPAT_NAMES.get(1 << i, hex(1 << i)) for i in range(32) if incompat >> i & 1]
            raise Ext2Error(errno.EINVAL, f"unsupported incompatible features: {', '.join(names)}")
        if sb.s_feature_ro_compat & ~SUPPORTED_RO_COMPAT:
            self.readonly = True  # e.g. metadata_csum, huge_file: readable but we cannot keep them valid
        if sb.s_feature_compat & COMPAT_HAS_JOURNAL:
            self.readonly = True
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
        P = self.ptrs_per_block
        self.max_blocks = 12 + P + P * P + P * P * P
        self.max_file_size = min(self.max_blocks * bs, (2**32 - 1) * 512 // bs * bs, 2**63)

    # -- low-level block helpers ---------------------------------------------

    def _bread(self, bno: int) -> bytearray:
        return self.cache.get(bno)

    def _bwrite(self, bno: int, buf: bytearray) -> None:
        self._check_writable()
        self.cache.put(bno, buf)

    def _check_writable(self) -> None:
        if self.readonly:
            raise Ext2Error(errno.EROFS, "file system is mounted read-only")

    def _check_ptr(self, ino: int, p: int) -> int:
        if p and not self.first_data_block <= p < self.blocks_count:
            raise _corrupt(f"inode {ino} points outside the disk (block {p})")
        return p

    def _group_start(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def _group_nblocks(self, g: int) -> int:
        return min(self.blocks_per_group, self.blocks_count - self._group_start(g))

    # -- inodes -------------------------------------------------------------

    def _inode_loc(self, ino: int) -> tuple[int, int]:
        if not 1 <= ino <= self.inodes_count:
            raise _corrupt(f"inode number {ino} out of range (1..{self.inodes_count})")
        g, idx = divmod(ino - 1, self.inodes_per_group)
        blk, off = divmod(idx * self.inode_size, self.block_size)
        return self.groups[g].bg_inode_table + blk, off

    def _iget(self, ino: int):
        bno, off = self._inode_loc(ino)
        buf = self._bread(bno)
        return Inode.parse(bytes(buf[off:off + INODE_BASE_SIZE]))

    def _iput(self, ino: int, inode) -> None:
        bno, off = self._inode_loc(ino)
        buf = self._bread(bno)
        buf[off:off + INODE_BASE_SIZE] = Inode.build(inode)
        self._bwrite(bno, buf)

    def _size(self, inode) -> int:
        if st.S_ISREG(inode.i_mode):
            return inode.i_size | inode.i_size_high << 32
        return inode.i_size

    def _set_size(self, inode, size: int) -> None:
        inode.i_size = size & 0xFFFFFFFF
        if st.S_ISREG(inode.i_mode):
            inode.i_size_high = size >> 32
            if size >= 2**31 and not self.sb.s_feature_ro_compat & RO_COMPAT_LARGE_FILE:
                self.sb.s_feature_ro_compat |= RO_COMPAT_LARGE_FILE
                self._sb_dirty = self._backups_dirty = True

    def _sectors_per_block(self) -> int:
        return self.block_size // 512

    def _is_fast_symlink(self, inode) -> bool:
        if not st.S_ISLNK(inode.i_mode):
            return False
        data_blocks = inode.i_blocks - (self._sectors_per_block() if inode.i_file_acl else 0)
        return data_blocks == 0

    def _live_inode(self, ino: int):
        inode = self._iget(ino)
        if inode.i_links_count == 0 or inode.i_mode == 0:
            raise _corrupt(f"inode {ino} is referenced but not in use")
        if inode.i_flags & EXTENTS_FL:
            raise Ext2Error(errno.EINVAL, f"inode {ino} uses extents (ext4), which ext2 cannot read")
        return inode

    # -- block mapping --------------------------------------------------------

    def _bmap(self, ino: int, inode, lblk: int, alloc: bool = False, goal: int = 0) -> int:
        """Physical block of logical block ``lblk`` (0 for a hole unless ``alloc``)."""
        P = self.ptrs_per_block
        if lblk < 12:
            p = self._check_ptr(ino, inode.i_block[lblk])
            if p == 0 and alloc:
                p = self._alloc_block(ino, inode, goal)
                inode.i_block[lblk] = p
            return p
        lblk -= 12
        for level in (1, 2, 3):
            span = P ** level
            if lblk < span:
                break
            lblk -= span
        else:
            raise Ext2Error(errno.EFBIG, f"file too large (inode {ino})")
        slot = 11 + level
        p = self._check_ptr(ino, inode.i_block[slot])
        if p == 0:
            if not alloc:
                return 0
            p = self._alloc_block(ino, inode, goal, zero=True)
            inode.i_block[slot] = p
        while level > 0:
            span = P ** (level - 1)
            idx, lblk = divmod(lblk, span)
            buf = self._bread(p)
            q = self._check_ptr(ino, int.from_bytes(buf[idx * 4:idx * 4 + 4], "little"))
            if q == 0:
                if not alloc:
                    return 0
                q = self._alloc_block(ino, inode, goal or p + 1, zero=level > 1)
                buf = self._bread(p)
                buf[idx * 4:idx * 4 + 4] = q.to_bytes(4, "little")
                self._bwrite(p, buf)
            p = q
            level -= 1
        return p

    # -- allocation -----------------------------------------------------------

    def _bitmap_find(self, buf: bytearray, start: int, limit: int) -> int:
        """First clear bit in ``buf`` at or after ``start`` and below ``limit`` (or -1)."""
        i = start
        while i < limit:
            byte = buf[i >> 3]
            if byte == 0xFF:
                i = (i | 7) + 1
                continue
            if not byte >> (i & 7) & 1:
                return i
            i += 1
        return -1

    def _alloc_block(self, ino: int, inode, goal: int = 0, zero: bool = True) -> int:
        self._check_writable()
        if not goal or not self.first_data_block <= goal < self.blocks_count:
            goal = self._group_start((ino - 1) // self.inodes_per_group)
        g0 = (goal - self.first_data_block) // self.blocks_per_group
        for k in range(self.ngroups):
            g = (g0 + k) % self.ngroups
            gd = self.groups[g]
            if gd.bg_free_blocks_count == 0:
                continue
            start = goal - self._group_start(g) if k == 0 else 0
            buf = self._bread(gd.bg_block_bitmap)
            bit = self._bitmap_find(buf, start, self._group_nblocks(g))
            if bit < 0 and start:
                bit = self._bitmap_find(buf, 0, start)
            if bit < 0:
                continue
            buf[bit >> 3] |= 1 << (bit & 7)
            self._bwrite(gd.bg_block_bitmap, buf)
            gd.bg_free_blocks_count -= 1
            self.sb.s_free_blocks_count -= 1
            self._gd_dirty = self._sb_dirty = True
            bno = self._group_start(g) + bit
            if bno <= self.first_data_block or bno >= self.blocks_count:
                raise _corrupt(f"block bitmap of group {g} offers block {bno}")
            if zero:
                self._bwrite(bno, bytearray(self.block_size))
            inode.i_blocks += self._sectors_per_block()
            return bno
        raise Ext2Error(errno.ENOSPC, "no free blocks left on the device")

    def _free_block(self, inode, bno: int) -> None:
        g, bit = divmod(bno - self.first_data_block, self.blocks_per_group)
        if not 0 <= g < self.ngroups:
            raise _corrupt(f"freeing block {bno} outside the disk")
        gd = self.groups[g]
        buf = self._bread(gd.bg_block_bitmap)
        if not buf[bit >> 3] >> (bit & 7) & 1:
            raise _corrupt(f"freeing block {bno}, which is already free")
        buf[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
        self._bwrite(gd.bg_block_bitmap, buf)
        gd.bg_free_blocks_count += 1
        self.sb.s_free_blocks_count += 1
        self._gd_dirty = self._sb_dirty = True
        if inode is not None:
            inode.i_blocks = max(0, inode.i_blocks - self._sectors_per_block())

    def _alloc_inode(self, parent: int, is_dir: bool) -> int:
        self._check_writable()
        g0 = (parent - 1) // self.inodes_per_group
        for k in range(self.ngroups):
            g = (g0 + k) % self.ngroups
            gd = self.groups[g]
            if gd.bg_free_inodes_count == 0:
                continue
            buf = self._bread(gd.bg_inode_bitmap)
            start = self.sb.s_first_ino - 1 if g == 0 else 0
            bit = self._bitmap_find(buf, start, self.inodes_per_group)
            if bit < 0:
                continue
            buf[bit >> 3] |= 1 << (bit & 7)
            self._bwrite(gd.bg_inode_bitmap, buf)
            gd.bg_free_inodes_count -= 1
            if is_dir:
                gd.bg_used_dirs_count += 1
            self.sb.s_free_inodes_count -= 1
            self._gd_dirty = self._sb_dirty = True
            return g * self.inodes_per_group + bit + 1
        raise Ext2Error(errno.ENOSPC, "no free inodes left on the device")

    def _free_inode(self, ino: int, is_dir: bool) -> None:
        g, bit = divmod(ino - 1, self.inodes_per_group)
        gd = self.groups[g]
        buf = self._bread(gd.bg_inode_bitmap)
        if not buf[bit >> 3] >> (bit & 7) & 1:
            raise _corrupt(f"freeing inode {ino}, which is already free")
        buf[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
        self._bwrite(gd.bg_inode_bitmap, buf)
        gd.bg_free_inodes_count += 1
        if is_dir and gd.bg_used_dirs_count:
            gd.bg_used_dirs_count -= 1
        self.sb.s_free_inodes_count += 1
        self._gd_dirty = self._sb_dirty = True

    def _new_inode(self, parent: int, mode: int, uid: int = 0, gid: int = 0) -> tuple[int, object]:
        ino = self._alloc_inode(parent, st.S_ISDIR(mode))
        now = self.clock()
        bno, off = self._inode_loc(ino)
        buf = self._bread(bno)
        buf[off:off + self.inode_size] = bytes(self.inode_size)
        if self.inode_size > INODE_BASE_SIZE:
            extra = min(32, self.inode_size - INODE_BASE_SIZE)
            buf[off + 128:off + 130] = InodeExtraIsize.build(extra)
        self._bwrite(bno, buf)
        inode = Inode.parse(bytes(INODE_BASE_SIZE))
        inode.i_mode = mode
        inode.i_uid, inode.i_uid_high = uid & 0xFFFF, uid >> 16
        inode.i_gid, inode.i_gid_high = gid & 0xFFFF, gid >> 16
        inode.i_atime = inode.i_ctime = inode.i_mtime = now
        inode.i_links_count = 1
        return ino, inode

    def _release_inode(self, ino: int, inode) -> None:
        """Free the blocks and the inode whose last link went away."""
        if not self._is_fast_symlink(inode):
            self._free_data(ino, inode, 0)
        else:
            inode.i_block = [0] * 15
        if inode.i_file_acl:
            self._release_xattr_block(ino, inode)
        inode.i_links_count = 0
        inode.i_dtime = self.clock() or 1
        inode.i_size = inode.i_size_high = 0
        self._iput(ino, inode)
        self._free_inode(ino, st.S_ISDIR(inode.i_mode))

    def _release_xattr_block(self, ino: int, inode) -> None:
        bno = self._check_ptr(ino, inode.i_file_acl)
        buf = self._bread(bno)
        hdr = XattrHeader.parse(bytes(buf[:32]))
        inode.i_file_acl = 0
        if hdr.h_magic == XATTR_MAGIC and hdr.h_refcount > 1:
            hdr.h_refcount -= 1
            buf[:32] = XattrHeader.build(hdr)
            self._bwrite(bno, buf)
            inode.i_blocks = max(0, inode.i_blocks - self._sectors_per_block())
        else:
            self._free_block(inode, bno)

    # -- freeing data blocks --------------------------------------------------

    def _ptrs(self, ino: int, bno: int) -> list[int]:
        ptrs = list(struct.unpack(f"<{self.ptrs_per_block}I", self._bread(bno)))
        for p in ptrs:
            self._check_ptr(ino, p)
        return ptrs

    def _free_tree(self, ino: int, inode, bno: int, level: int) -> None:
        if level > 0:
            for p in self._ptrs(ino, bno):
                if p:
                    self._free_tree(ino, inode, p, level - 1)
        self._free_block(inode, bno)

    def _free_partial(self, ino: int, inode, bno: int, level: int, keep: int) -> None:
        """Free the blocks at logical index >= ``keep`` below the indirect block ``bno``."""
        span = self.ptrs_per_block ** (level - 1)
        ptrs = self._ptrs(ino, bno)
        changed = False
        for i, p in enumerate(ptrs):
            if p == 0:
                continue
            start = i * span
            if start >= keep:
                self._free_tree(ino, inode, p, level - 1)
                ptrs[i] = 0
                changed = True
            elif keep < start + span and level > 1:
                self._free_partial(ino, inode, p, level - 1, keep - start)
        if changed:
            self._bwrite(bno, bytearray(struct.pack(f"<{len(ptrs)}I", *ptrs)))

    def _free_data(self, ino: int, inode, keep: int) -> None:
        """Free all data blocks of ``inode`` from logical block ``keep`` on."""
        P = self.ptrs_per_block
        for i in range(min(keep, 12), 12):
            p = self._check_ptr(ino, inode.i_block[i])
            if p:
                self._free_block(inode, p)
                inode.i_block[i] = 0
        base = 12
        for level, slot in ((1, 12), (2, 13), (3, 14)):
            span = P ** level
            p = self._check_ptr(ino, inode.i_block[slot])
            if p:
                if keep <= base:
                    self._free_tree(ino, inode, p, level)
                    inode.i_block[slot] = 0
                elif keep < base + span:
                    self._free_partial(ino, inode, p, level, keep - base)
            base += span

    # -- path resolution ------------------------------------------------------

    def _split(self, path: str) -> list[str]:
        if not isinstance(path, str) or not path.startswith("/"):
            raise Ext2Error(errno.EINVAL, f"path must be absolute: {path!r}")
        parts = [p for p in path.split("/") if p]
        for p in parts:
            if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise Ext2Error(errno.ENAMETOOLONG, f"file name too long: {p[:32]}...")
        return parts

    def _resolve(self, path: str, follow: bool = False) -> int:
        return self._walk(ROOT_INO, self._split(path), follow, [0])

    def _walk(self, start: int, parts: list[str], follow: bool, depth: list[int]) -> int:
        ino = start
        for i, name in enumerate(parts):
            inode = self._live_inode(ino)
            if not st.S_ISDIR(inode.i_mode):
                raise Ext2Error(errno.ENOTDIR, f"not a directory: {name!r}'s parent (inode {ino})")
            child = self._dir_find(ino, inode, name.encode("utf-8", "surrogateescape"))
            if child is None:
                raise Ext2Error(errno.ENOENT, f"no such file or directory: {'/' + '/'.join(parts[:i + 1])}")
            cinode = self._live_inode(child)
            last = i == len(parts) - 1
            if st.S_ISLNK(cinode.i_mode) and (not last or follow):
                depth[0] += 1
                if depth[0] > SYMLINK_LOOPS:
                    raise Ext2Error(errno.ELOOP, "too many levels of symbolic links")
                target = self._readlink_ino(child, cinode)
                tparts = [p for p in target.split("/") if p]
                child = self._walk(ROOT_INO if target.startswith("/") else ino, tparts, True, depth)
            ino = child
        return ino

    def _parent(self, path: str) -> tuple[int, bytes]:
        parts = self._split(path)
        if not parts:
            raise Ext2Error(errno.EINVAL, "the root directory has no parent entry")
        name = parts[-1]
        if name in (".", ".."):
            raise Ext2Error(errno.EINVAL, f"invalid final path component {name!r}")
        dino = self._walk(ROOT_INO, parts[:-1], True, [0])
        dinode = self._live_inode(dino)
        if not st.S_ISDIR(dinode.i_mode):
            raise Ext2Error(errno.ENOTDIR, f"not a directory: {'/' + '/'.join(parts[:-1])}")
        return dino, name.encode("utf-8", "surrogateescape")

    def _ino(self, path_or_ino: str | int, follow: bool = False) -> int:
        if isinstance(path_or_ino, int):
            if not 1 <= path_or_ino <= self.inodes_count:
                raise Ext2Error(errno.EINVAL, f"inode number {path_or_ino} out of range")
            return path_or_ino
        return self._resolve(path_or_ino, follow)

    # -- directories ----------------------------------------------------------

    def _dir_blocks(self, ino: int, inode):
        """Yield (physical block, buffer) of each block of directory ``ino``."""
        bs = self.block_size
        size = inode.i_size
        if size % bs:
            raise _corrupt(f"directory inode {ino} has size {size}, not a multiple of the block size")
        if size // 512 > inode.i_blocks:
            raise _corrupt(f"directory inode {ino} has size {size} but only {inode.i_blocks * 512} bytes "
                           "allocated")
        for lblk in range(size // bs):
            p = self._bmap(ino, inode, lblk)
            if p == 0:
                raise _corrupt(f"directory inode {ino} has a hole at block {lblk}")
            yield p, self._bread(p)

    def _entries(self, ino: int, bno: int, buf: bytearray):
        """Yield (offset, inode, rec_len, name_len, file_type) for each entry in a directory block."""
        bs = self.block_size
        off = 0
        while off < bs:
            if off + DIRENT_HEADER > bs:
                raise _corrupt(f"directory inode {ino}, block {bno}: entry header at {off} crosses the block")
            e = DirEntryHeader.parse(bytes(buf[off:off + DIRENT_HEADER]))
            name_len = e.name_len if self.filetype else e.name_len | e.file_type << 8
            if e.rec_len < DIRENT_HEADER or e.rec_len % 4 or off + e.rec_len > bs:
                raise _corrupt(f"directory inode {ino}, block {bno}: bad rec_len {e.rec_len} at offset {off}")
            if e.inode and name_len + DIRENT_HEADER > e.rec_len:
                raise _corrupt(f"directory inode {ino}, block {bno}: name_len {name_len} exceeds rec_len "
                               f"{e.rec_len} at offset {off}")
            if e.inode > self.inodes_count:
                raise _corrupt(f"directory inode {ino}, block {bno}: entry at offset {off} points outside "
                               f"the disk (inode {e.inode})")
            yield off, e.inode, e.rec_len, name_len, (e.file_type if self.filetype else 0)
            off += e.rec_len

    def _dir_find(self, dino: int, dinode, name: bytes) -> int | None:
        n = len(name)
        for bno, buf in self._dir_blocks(dino, dinode):
            for off, ino, _rl, nl, _ft in self._entries(dino, bno, buf):
                if ino and nl == n and buf[off + 8:off + 8 + n] == name:
                    return ino
        return None

    def _dir_list(self, dino: int, dinode) -> list[tuple[str, int, int]]:
        out = []
        for bno, buf in self._dir_blocks(dino, dinode):
            for off, ino, _rl, nl, ft in self._entries(dino, bno, buf):
                if ino:
                    out.append((bytes(buf[off + 8:off + 8 + nl]).decode("utf-8", "surrogateescape"), ino, ft))
        return out

    def _ft(self, mode: int) -> int:
        return _FT_OF_MODE.get(st.S_IFMT(mode), FT_UNKNOWN) if self.filetype else 0

    def _pack_entry(self, ino: int, rec_len: int, name: bytes, ft: int) -> bytes:
        hdr = DirEntryHeader.build(dict(inode=ino, rec_len=rec_len, name_len=len(name) & 0xFF,
                                        file_type=ft if self.filetype else len(name) >> 8))
        return hdr + name

    def _touch_dir(self, dino: int, dinode) -> None:
        now = self.clock()
        dinode.i_mtime = dinode.i_ctime = now
        dinode.i_flags &= ~INDEX_FL  # a modified htree directory becomes a plain linear one

    def _dir_add(self, dino: int, dinode, name: bytes, ino: int, mode: int) -> None:
        """Add entry ``name`` -> ``ino`` to directory ``dino`` (the caller writes ``dinode`` back)."""
        if len(name) > NAME_MAX:
            raise Ext2Error(errno.ENAMETOOLONG, "file name too long")
        self._check_writable()
        need = dirent_size(len(name))
        ft = self._ft(mode)
        last = 0
        for bno, buf in self._dir_blocks(dino, dinode):
            last = bno
            for off, eino, rl, nl, _ft in self._entries(dino, bno, buf):
                if eino == 0 and rl >= need:
                    buf[off:off + need] = self._pack_entry(ino, rl, name, ft).ljust(need, b"\0")
                    self._bwrite(bno, buf)
                    self._touch_dir(dino, dinode)
                    return
                used = dirent_size(nl)
                if eino and rl - used >= need:
                    buf[off + 4:off + 6] = Int16ul.build(used)
                    buf[off + used:off + used + need] = self._pack_entry(ino, rl - used, name, ft).ljust(need, b"\0")
                    self._bwrite(bno, buf)
                    self._touch_dir(dino, dinode)
                    return
        lblk = dinode.i_size // self.block_size
        bno = self._bmap(dino, dinode, lblk, alloc=True, goal=last + 1 if last else 0)
        buf = bytearray(self.block_size)
        entry = self._pack_entry(ino, self.block_size, name, ft)
        buf[:len(entry)] = entry
        self._bwrite(bno, buf)
        dinode.i_size += self.block_size
        self._touch_dir(dino, dinode)

    def _dir_remove(self, dino: int, dinode, name: bytes) -> int:
        """Remove entry ``name`` from directory ``dino``; return its inode number."""
        self._check_writable()
        n = len(name)
        for bno, buf in self._dir_blocks(dino, dinode):
            prev = None
            for off, ino, rl, nl, _ft in self._entries(dino, bno, buf):
                if ino and nl == n and buf[off + 8:off + 8 + n] == name:
                    if prev is None:
                        buf[off:off + 4] = bytes(4)
                    else:
                        prl = int.from_bytes(buf[prev + 4:prev + 6], "little")
                        buf[prev + 4:prev + 6] = Int16ul.build(prl + rl)
                    self._bwrite(bno, buf)
                    self._touch_dir(dino, dinode)
                    return ino
                prev = off
        raise Ext2Error(errno.ENOENT, f"no entry {name.decode('utf-8', 'surrogateescape')!r} in directory")

    def _dir_set(self, dino: int, dinode, name: bytes, ino: int, mode: int) -> None:
        """Point the existing entry ``name`` at ``ino``."""
        n = len(name)
        for bno, buf in self._dir_blocks(dino, dinode):
            for off, eino, _rl, nl, _ft in self._entries(dino, bno, buf):
                if eino and nl == n and buf[off + 8:off + 8 + n] == name:
                    buf[off:off + 4] = ino.to_bytes(4, "little")
                    if self.filetype:
                        buf[off + 7] = self._ft(mode)
                    self._bwrite(bno, buf)
                    self._touch_dir(dino, dinode)
                    return
        raise Ext2Error(errno.ENOENT, "entry vanished")

    def _dir_is_empty(self, dino: int, dinode) -> bool:
        for bno, buf in self._dir_blocks(dino, dinode):
            for off, ino, _rl, nl, _ft in self._entries(dino, bno, buf):
                if ino and bytes(buf[off + 8:off + 8 + nl]) not in (b".", b".."):
                    return False
        return True

    # ------------------------------------------------------------------------
    # Public API

    def lookup(self, path: str, follow: bool = False) -> int:
        """Inode number of ``path`` (symlinks in the middle are followed; the last one if ``follow``)."""
        return self._resolve(path, follow)

    def stat(self, path_or_ino: str | int, follow: bool = False) -> Stat:
        ino = self._ino(path_or_ino, follow)
        i = self._live_inode(ino)
        return Stat(ino=ino, mode=i.i_mode, size=self._size(i), nlink=i.i_links_count,
                    uid=i.i_uid | i.i_uid_high << 16, gid=i.i_gid | i.i_gid_high << 16,
                    atime=i.i_atime, mtime=i.i_mtime, ctime=i.i_ctime, blocks=i.i_blocks)

    def read(self, ino: int, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise Ext2Error(errno.EINVAL, "negative offset or length")
        inode = self._live_inode(self._ino(ino))
        if st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.EISDIR, f"inode {ino} is a directory")
        if self._is_fast_symlink(inode):
            data = self._readlink_ino(ino, inode).encode("utf-8", "surrogateescape")
            return data[offset:offset + n]
        size = self._size(inode)
        end = min(size, offset + n)
        if offset >= end:
            return b""
        bs = self.block_size
        out = bytearray()
        pos = offset
        while pos < end:
            lblk, boff = divmod(pos, bs)
            take = min(bs - boff, end - pos)
            if lblk >= self.max_blocks:
                raise _corrupt(f"inode {ino} has size {size} beyond the largest mappable file")
            p = self._bmap(ino, inode, lblk)
            if p:
                out += self._bread(p)[boff:boff + take]
            else:
                out += bytes(take)
            pos += take
        if not self.readonly and (inode.i_atime < inode.i_mtime or inode.i_atime < inode.i_ctime):
            inode.i_atime = self.clock()
            self._iput(ino, inode)
        return bytes(out)

    def write(self, ino: int, offset: int, data: bytes) -> int:
        self._check_writable()
        if offset < 0:
            raise Ext2Error(errno.EINVAL, "negative offset")
        inode = self._live_inode(self._ino(ino))
        if st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.EISDIR, f"inode {ino} is a directory")
        if not st.S_ISREG(inode.i_mode):
            raise Ext2Error(errno.EINVAL, f"inode {ino} is not a regular file")
        if not data:
            return 0
        if offset + len(data) > self.max_file_size:
            raise Ext2Error(errno.EFBIG, f"file too large: {offset + len(data)} bytes "
                                         f"(max {self.max_file_size})")
        bs = self.block_size
        size = self._size(inode)
        pos, done, prev = offset, 0, 0
        mv = memoryview(data)
        try:
            while done < len(data):
                lblk, boff = divmod(pos, bs)
                take = min(bs - boff, len(data) - done)
                p = self._bmap(ino, inode, lblk)
                if p == 0:
                    p = self._bmap(ino, inode, lblk, alloc=True, goal=prev + 1 if prev else 0)
                    buf = bytearray(bs)
                else:
                    buf = bytearray(bs) if take == bs else self._bread(p)
                buf[boff:boff + take] = mv[done:done + take]
                self._bwrite(p, buf)
                prev = p
                pos += take
                done += take
        except Ext2Error as e:
            if e.errno != errno.ENOSPC or done == 0:
                self._iput(ino, inode)  # keep the blocks already allocated accounted for
                raise
        if pos > size:
            self._set_size(inode, pos)
        inode.i_mtime = inode.i_ctime = self.clock()
        self._iput(ino, inode)
        return done

    def truncate(self, ino: int, size: int) -> None:
        self._check_writable()
        if size < 0:
            raise Ext2Error(errno.EINVAL, "negative size")
        if size > self.max_file_size:
            raise Ext2Error(errno.EFBIG, f"file too large: {size} bytes")
        ino = self._ino(ino)
        inode = self._live_inode(ino)
        if st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.EISDIR, f"inode {ino} is a directory")
        if not st.S_ISREG(inode.i_mode):
            raise Ext2Error(errno.EINVAL, f"inode {ino} is not a regular file")
        bs = self.block_size
        old = self._size(inode)
        if size < old:
            keep = (size + bs - 1) // bs
            self._free_data(ino, inode, keep)
            if size % bs:
                p = self._bmap(ino, inode, size // bs)
                if p:
                    buf = self._bread(p)
                    buf[size % bs:] = bytes(bs - size % bs)
                    self._bwrite(p, buf)
        self._set_size(inode, size)
        inode.i_mtime = inode.i_ctime = self.clock()
        self._iput(ino, inode)

    def _make(self, path: str, mode: int) -> tuple[int, object, int, object, bytes]:
        self._check_writable()
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        if self._dir_find(dino, dinode, name) is not None:
            raise Ext2Error(errno.EEXIST, f"file exists: {path}")
        ino, inode = self._new_inode(dino, mode)
        return ino, inode, dino, dinode, name

    def create(self, path: str, mode: int = 0o644) -> int:
        ino, inode, dino, dinode, name = self._make(path, st.S_IFREG | (mode & 0o7777))
        self._iput(ino, inode)
        try:
            self._dir_add(dino, dinode, name, ino, inode.i_mode)
        except Ext2Error:
            self._release_inode(ino, inode)
            raise
        self._iput(dino, dinode)
        return ino

    def mkdir(self, path: str, mode: int = 0o755) -> int:
        self._check_writable()
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        if self._dir_find(dino, dinode, name) is not None:
            raise Ext2Error(errno.EEXIST, f"file exists: {path}")
        if dinode.i_links_count >= LINK_MAX:
            raise Ext2Error(errno.EMLINK, f"too many links to the parent of {path}")
        ino, inode = self._new_inode(dino, st.S_IFDIR | (mode & 0o7777))
        try:
            bno = self._bmap(ino, inode, 0, alloc=True)
        except Ext2Error:
            inode.i_links_count = 0
            self._release_inode(ino, inode)
            raise
        bs = self.block_size
        buf = bytearray(bs)
        dot = self._pack_entry(ino, 12, b".", FT_DIR if self.filetype else 0)
        dotdot = self._pack_entry(dino, bs - 12, b"..", FT_DIR if self.filetype else 0)
        buf[:len(dot)] = dot
        buf[12:12 + len(dotdot)] = dotdot
        self._bwrite(bno, buf)
        inode.i_size = bs
        inode.i_links_count = 2
        self._iput(ino, inode)
        try:
            self._dir_add(dino, dinode, name, ino, inode.i_mode)
        except Ext2Error:
            self._release_inode(ino, inode)
            raise
        dinode.i_links_count += 1
        self._iput(dino, dinode)
        return ino

    def unlink(self, path: str) -> None:
        self._check_writable()
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        ino = self._dir_find(dino, dinode, name)
        if ino is None:
            raise Ext2Error(errno.ENOENT, f"no such file or directory: {path}")
        inode = self._live_inode(ino)
        if st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.EISDIR, f"is a directory: {path}")
        self._dir_remove(dino, dinode, name)
        self._iput(dino, dinode)
        self._drop_link(ino, inode)

    def _drop_link(self, ino: int, inode) -> None:
        inode.i_links_count -= 1
        inode.i_ctime = self.clock()
        if inode.i_links_count == 0:
            self._release_inode(ino, inode)
        else:
            self._iput(ino, inode)

    def rmdir(self, path: str) -> None:
        self._check_writable()
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        ino = self._dir_find(dino, dinode, name)
        if ino is None:
            raise Ext2Error(errno.ENOENT, f"no such file or directory: {path}")
        inode = self._live_inode(ino)
        if not st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.ENOTDIR, f"not a directory: {path}")
        if not self._dir_is_empty(ino, inode):
            raise Ext2Error(errno.ENOTEMPTY, f"directory not empty: {path}")
        self._dir_remove(dino, dinode, name)
        if dinode.i_links_count > 1:
            dinode.i_links_count -= 1
        self._iput(dino, dinode)
        inode.i_links_count = 1
        self._drop_link(ino, inode)

    def link(self, existing: str, new: str) -> None:
        self._check_writable()
        ino = self._resolve(existing)
        inode = self._live_inode(ino)
        if st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.EPERM, f"hard link to a directory: {existing}")
        if inode.i_links_count >= LINK_MAX:
            raise Ext2Error(errno.EMLINK, f"too many links: {existing}")
        dino, name = self._parent(new)
        dinode = self._live_inode(dino)
        if self._dir_find(dino, dinode, name) is not None:
            raise Ext2Error(errno.EEXIST, f"file exists: {new}")
        self._dir_add(dino, dinode, name, ino, inode.i_mode)
        self._iput(dino, dinode)
        inode = self._iget(ino)  # dinode may share the block, but re-read for safety
        inode.i_links_count += 1
        inode.i_ctime = self.clock()
        self._iput(ino, inode)

    def symlink(self, target: str, path: str) -> int:
        data = target.encode("utf-8", "surrogateescape")
        if not data or len(data) >= self.block_size:
            raise Ext2Error(errno.ENAMETOOLONG if data else errno.ENOENT, "bad symlink target length")
        ino, inode, dino, dinode, name = self._make(path, st.S_IFLNK | 0o777)
        if len(data) < 60:
            raw = data.ljust(60, b"\0")
            inode.i_block = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 60, 4)]
        else:
            try:
                bno = self._bmap(ino, inode, 0, alloc=True)
            except Ext2Error:
                self._release_inode(ino, inode)
                raise
            buf = bytearray(self.block_size)
            buf[:len(data)] = data
            self._bwrite(bno, buf)
        inode.i_size = len(data)
        self._iput(ino, inode)
        try:
            self._dir_add(dino, dinode, name, ino, inode.i_mode)
        except Ext2Error:
            self._release_inode(ino, inode)
            raise
        self._iput(dino, dinode)
        return ino

    def _readlink_ino(self, ino: int, inode) -> str:
        size = inode.i_size
        if self._is_fast_symlink(inode):
            if size >= 60:
                raise _corrupt(f"fast symlink inode {ino} has size {size}")
            raw = b"".join(int(p).to_bytes(4, "little") for p in inode.i_block)[:size]
        else:
            if size >= self.block_size or size == 0:
                raise _corrupt(f"symlink inode {ino} has size {size}")
            p = self._bmap(ino, inode, 0)
            if p == 0:
                raise _corrupt(f"symlink inode {ino} has no data block")
            raw = bytes(self._bread(p)[:size])
        return raw.decode("utf-8", "surrogateescape")

    def readlink(self, path: str) -> str:
        ino = self._resolve(path) if isinstance(path, str) else self._ino(path)
        inode = self._live_inode(ino)
        if not st.S_ISLNK(inode.i_mode):
            raise Ext2Error(errno.EINVAL, f"not a symbolic link: {path}")
        return self._readlink_ino(ino, inode)

    def readdir(self, path_or_ino: str | int) -> list[tuple[str, int, int]]:
        ino = self._ino(path_or_ino, follow=True)
        inode = self._live_inode(ino)
        if not st.S_ISDIR(inode.i_mode):
            raise Ext2Error(errno.ENOTDIR, f"not a directory: {path_or_ino}")
        return self._dir_list(ino, inode)

    def rename(self, old: str, new: str) -> None:
        self._check_writable()
        odino, oname = self._parent(old)
        odinode = self._live_inode(odino)
        ino = self._dir_find(odino, odinode, oname)
        if ino is None:
            raise Ext2Error(errno.ENOENT, f"no such file or directory: {old}")
        inode = self._live_inode(ino)
        is_dir = st.S_ISDIR(inode.i_mode)
        ndino, nname = self._parent(new)
        if is_dir:  # refuse to move a directory below itself
            cur, steps = ndino, 0
            while True:
                if cur == ino:
                    raise Ext2Error(errno.EINVAL, f"cannot move {old} into its own subdirectory {new}")
                if cur == ROOT_INO:
                    break
                steps += 1
                if steps > self.inodes_count:
                    raise _corrupt("directory '..' chain does not reach the root")
                cinode = self._live_inode(cur)
                up = self._dir_find(cur, cinode, b"..")
                if up is None:
                    raise _corrupt(f"directory inode {cur} has no '..' entry")
                cur = up
        ndinode = self._live_inode(ndino)
        target = self._dir_find(ndino, ndinode, nname)
        if target == ino:
            return  # both names are links to the same inode: nothing to do
        moved = is_dir and ndino != odino
        if target is not None:
            tinode = self._live_inode(target)
            tdir = st.S_ISDIR(tinode.i_mode)
            if tdir and not is_dir:
                raise Ext2Error(errno.EISDIR, f"is a directory: {new}")
            if is_dir and not tdir:
                raise Ext2Error(errno.ENOTDIR, f"not a directory: {new}")
            if tdir and not self._dir_is_empty(target, tinode):
                raise Ext2Error(errno.ENOTEMPTY, f"directory not empty: {new}")
            self._dir_set(ndino, ndinode, nname, ino, inode.i_mode)
            if tdir:
                ndinode.i_links_count -= 1  # the replaced directory's '..' is gone
                tinode.i_links_count = 1
            self._iput(ndino, ndinode)
            self._drop_link(target, tinode)
        else:
            if moved and ndinode.i_links_count >= LINK_MAX:
                raise Ext2Error(errno.EMLINK, f"too many links to the parent of {new}")
            self._dir_add(ndino, ndinode, nname, ino, inode.i_mode)
            self._iput(ndino, ndinode)
        odinode = self._live_inode(odino)
        self._dir_remove(odino, odinode, oname)
        if moved:
            odinode.i_links_count -= 1
        self._iput(odino, odinode)
        inode = self._live_inode(ino)
        if moved:
            self._dir_set(ino, inode, b"..", ndino, st.S_IFDIR)
        inode.i_ctime = self.clock()
        self._iput(ino, inode)
        if moved:
            ndinode = self._live_inode(ndino)
            ndinode.i_links_count += 1
            self._iput(ndino, ndinode)

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

    # -- superblock, descriptors, sync ----------------------------------------

    def _write_super_and_gdt(self, group: int) -> None:
        bs = self.block_size
        start = self._group_start(group)
        if group == 0 and bs > 1024:
            sb_blk, sb_off = 0, SUPERBLOCK_OFFSET
        else:
            sb_blk, sb_off = start, 0
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
        """Write back dirty blocks, the superblock and the group descriptors; flush the device."""
        if not self.readonly:
            if self._sb_dirty or self._gd_dirty:
                self.sb.s_wtime = self.clock()
                self._write_super_and_gdt(0)
                if self._backups_dirty:
                    for g in range(1, self.ngroups):
                        if _has_super(g, self.sparse):
                            self._write_super_and_gdt(g)
                self._sb_dirty = self._gd_dirty = self._backups_dirty = False
            self.cache.flush()
        self.dev.flush()

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
        self.sync()
