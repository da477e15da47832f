"""Allocation: the block and inode bitmaps and the free counts that mirror them.

A group's block bitmap has one bit per block of the group, its inode bitmap one
bit per inode (spec ch. 3: Block Bitmap, Inode Bitmap).  Each allocation or
free also updates the group's descriptor (bg_free_blocks_count,
bg_free_inodes_count, bg_used_dirs_count: Block Group Descriptor Table) and
the superblock's totals, and marks both dirty for ``sync``.  The policy is
Linux's fs/ext2 balloc.c/ialloc.c simplified: a block goes at or after a goal
(the file's previous block, else the start of its inode's group), an inode in
its parent's group, else in the next group that has one free.
"""

from __future__ import annotations

import errno

from .errors import Ext2Error, _corrupt


class Allocation:
    """Mixed into ``Ext2`` (fs.py), which holds the superblock ``sb``, the descriptors
    ``groups``, the geometry and the block access ``_bread``/``_bwrite``."""

    def _group_start(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def _group_nblocks(self, g: int) -> int:
        return min(self.blocks_per_group, self.blocks_count - self._group_start(g))

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
        # LAB 5 BEGIN balloc: find a free block near the goal in the block bitmaps, mark it used and update the free counts
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
        # LAB 5 END

    def _free_block(self, inode, bno: int) -> None:
        # LAB 5 BEGIN bfree: clear a block's bit in its group's bitmap and give it back to the free counts
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
        # LAB 5 END

    def _alloc_inode(self, parent: int, is_dir: bool) -> int:
        # LAB 5 BEGIN ialloc: find a free inode (parent's group first) in the inode bitmaps, mark it used, update the counts
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
        # LAB 5 END

    def _free_inode(self, ino: int, is_dir: bool) -> None:
        # LAB 5 BEGIN ifree: clear an inode's bit in its group's bitmap and give it back to the free counts
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
        # LAB 5 END
