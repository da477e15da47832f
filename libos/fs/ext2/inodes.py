"""Inodes and block maps: the inode table, direct and indirect blocks, file data.

Inode ``ino`` is entry ``(ino - 1) % inodes_per_group`` of the inode table of
group ``(ino - 1) // inodes_per_group`` (spec ch. 3: Inode Table, Locating an
Inode); only its 128-byte base is parsed, and a new inode of a larger inode
size gets i_extra_isize.  ``i_block`` holds 12 direct block pointers, then a
single, a double and a triple indirect block of ``block_size / 4`` pointers
each (Inode Table, i_block); a zero pointer is a hole.  Also here: the 64-bit
size of a regular file (i_size_high, large_file), fast symlinks (a target
under 60 bytes kept in i_block: ch. 2 "Definitions", Symbolic Links), freeing
an inode's data and extended-attribute block when its last link goes, and the
public ``read``, ``write`` and ``truncate`` of file data.
"""

from __future__ import annotations

import errno
import stat as st
import struct

from .errors import Ext2Error, _corrupt
from .layout import (
    EXTENTS_FL,
    INODE_BASE_SIZE,
    RO_COMPAT_LARGE_FILE,
    XATTR_MAGIC,
    InodeExtraIsize,
    XattrHeader,
    build_inode,
    parse_inode,
)

READ_RUN_MAX = 256  # blocks per device read of a run (the disk library cuts it into hypercalls)


class Inodes:
    """Mixed into ``Ext2`` (fs.py); allocates through ``Allocation`` (alloc.py)."""

    def _check_ptr(self, ino: int, p: int) -> int:
        if p and not self.first_data_block <= p < self.blocks_count:
            raise _corrupt(f"inode {ino} points outside the disk (block {p})")
        return p

    def _inode_loc(self, ino: int) -> tuple[int, int]:
        if not 1 <= ino <= self.inodes_count:
            raise _corrupt(f"inode number {ino} out of range (1..{self.inodes_count})")
        g, idx = divmod(ino - 1, self.inodes_per_group)
        blk, off = divmod(idx * self.inode_size, self.block_size)
        return self.groups[g].bg_inode_table + blk, off

    def _iget(self, ino: int):
        bno, off = self._inode_loc(ino)
        buf = self._bread(bno)
        return parse_inode(buf[off:off + INODE_BASE_SIZE])

    def _iput(self, ino: int, inode) -> None:
        bno, off = self._inode_loc(ino)
        buf = self._bread(bno)
        buf[off:off + INODE_BASE_SIZE] = build_inode(inode)
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
        inode = parse_inode(bytes(INODE_BASE_SIZE))
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

    def _bmap(self, ino: int, inode, lblk: int, alloc: bool = False, goal: int = 0) -> int:
        """Physical block of logical block ``lblk`` (0 for a hole unless ``alloc``)."""
        # LAB 5 BEGIN bmap: map a file's logical block through its direct and indirect pointers, allocating if asked
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
        # LAB 5 END

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
        if (end - 1) // bs >= self.max_blocks:
            raise _corrupt(f"inode {ino} has size {size} beyond the largest mappable file")
        out = bytearray()
        lblk, last = offset // bs, (end - 1) // bs
        while lblk <= last:
            # Physically consecutive blocks not in the cache are read from the device at once
            # (a large sequential read was one cache lookup, and a miss, per block).
            p = self._bmap(ino, inode, lblk)
            n = 1
            if not p:
                data: bytes | bytearray = bytes(bs)
            elif self.cache.cached(p):
                data = self._bread(p)
            else:
                while lblk + n <= last and n < READ_RUN_MAX:
                    q = self._bmap(ino, inode, lblk + n)
                    if q != p + n or self.cache.cached(q):
                        break
                    n += 1
                data = self.cache.read_run(p, n) if n > 1 else self._bread(p)
            lo = offset - lblk * bs if lblk * bs < offset else 0
            hi = min(n * bs, end - lblk * bs)
            out += memoryview(data)[lo:hi]
            lblk += n
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
                self._dwrite(p, buf)
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
                    self._dwrite(p, buf)
        self._set_size(inode, size)
        inode.i_mtime = inode.i_ctime = self.clock()
        self._iput(ino, inode)
