"""Path names and the namespace: resolution; create, mkdir, symlink, link, unlink, rmdir, rename.

Paths are absolute and walked from the root directory (inode 2, one of the
reserved inodes: spec ch. 3, Inode Table) one entry at a time.  Symbolic links
in the middle of a path are followed (the last one only when asked), at most
SYMLINK_LOOPS deep (40 as Linux's MAXSYMLINKS, include/linux/namei.h).  Link
counts stay what e2fsck expects: a directory is linked by its name, its own
'.' and each subdirectory's '..' (ch. 2 "Definitions", Directories); LINK_MAX
is Linux's EXT2_LINK_MAX (fs/ext2/ext2.h).
"""

from __future__ import annotations

import errno
import os
import stat as st

from .errors import Ext2Error, _corrupt
from .layout import (
    FT_DIR,
    LINK_MAX,
    NAME_MAX,
    ROOT_INO,
    SYMLINK_LOOPS,
)


class Namespace:
    """Mixed into ``Ext2`` (fs.py); edits directories through ``Directories`` (dirs.py)."""

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
                if not target:  # an empty symlink leads nowhere: Linux's ENOENT (fs/namei.c), not its directory
                    raise Ext2Error(errno.ENOENT, f"empty symbolic link: {'/' + '/'.join(parts[:i + 1])}")
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

    def lookup(self, path: str, follow: bool = False) -> int:
        """Inode number of ``path`` (symlinks in the middle are followed; the last one if ``follow``)."""
        return self._resolve(path, follow)

    def _make(self, path: str, mode: int) -> tuple[int, object, int, object, bytes]:
        self._check_writable()
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        if self._dir_find(dino, dinode, name) is not None:
            raise Ext2Error(errno.EEXIST, f"file exists: {path}")
        ino, inode = self._new_inode(dino, mode)
        return ino, inode, dino, dinode, name

    def _link_in(self, ino: int, inode: object, dino: int, dinode: object, name: bytes) -> None:
        """Write a new inode and enter it in its directory; if the entry cannot be made (a full
        disk, say), the inode and its blocks are given back. The caller writes ``dinode``."""
        self._iput(ino, inode)
        try:
            self._dir_insert(dino, dinode, name, ino, inode.i_mode)
        except Ext2Error:
            self._release_inode(ino, inode)
            raise

    def _new_node(self, path: str, mode: int, i_block: dict[int, int] | None = None) -> int:
        """A new inode of ``mode`` (its i_block words set from ``i_block``) entered at ``path``."""
        ino, inode, dino, dinode, name = self._make(path, mode)
        for i, word in (i_block or {}).items():
            inode.i_block[i] = word
        self._link_in(ino, inode, dino, dinode, name)
        self._iput(dino, dinode)
        return ino

    def create(self, path: str, mode: int = 0o644) -> int:
        return self._new_node(path, st.S_IFREG | (mode & 0o7777))

    def mknod(self, path: str, mode: int, rdev: int = 0) -> int:
        """A FIFO, socket, or character or block device node (``mode`` carries its type). A device
        number is kept in i_block as Linux's ext2 does (fs/ext2/inode.c ext2_write_inode): the old
        16-bit encoding in i_block[0] when major and minor fit a byte each, else the new one in
        i_block[1]."""
        kind = st.S_IFMT(mode)
        if kind not in (st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK):
            raise Ext2Error(errno.EINVAL, f"mknod of a {oct(kind)} node: only devices, FIFOs and sockets")
        words = {}
        if kind in (st.S_IFCHR, st.S_IFBLK):
            major, minor = os.major(rdev), os.minor(rdev)
            if major < 256 and minor < 256:
                words[0] = (major << 8) | minor
            else:
                words[1] = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
        return self._new_node(path, kind | (mode & 0o7777), words)

    def mkdir(self, path: str, mode: int = 0o755) -> int:
        self._check_writable()
        parts = self._split(path)
        if not parts or parts[-1] in (".", ".."):  # "/" or "d/.": a directory that exists (Linux: EEXIST,
            self.lookup(path)  # which `mkdir -p /a/b` expects for "/"); ENOENT if it does not
            raise Ext2Error(errno.EEXIST, f"file exists: {path}")
        dino, name = self._parent(path)
        dinode = self._live_inode(dino)
        if self._dir_find(dino, dinode, name) is not None:
            raise Ext2Error(errno.EEXIST, f"file exists: {path}")
        if dinode.i_links_count >= LINK_MAX:
            raise Ext2Error(errno.EMLINK, f"too many links to the parent of {path}")
        # LAB 5 BEGIN mkdir: give the new directory its first block with '.' and '..', link it in its parent, fix link counts
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
        self._link_in(ino, inode, dino, dinode, name)
        dinode.i_links_count += 1
        self._iput(dino, dinode)
        return ino
        # LAB 5 END

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
        self._dir_insert(dino, dinode, name, ino, inode.i_mode)
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
        self._link_in(ino, inode, dino, dinode, name)
        self._iput(dino, dinode)
        return ino

    def readlink(self, path: str) -> str:
        ino = self._resolve(path) if isinstance(path, str) else self._ino(path)
        inode = self._live_inode(ino)
        if not st.S_ISLNK(inode.i_mode):
            raise Ext2Error(errno.EINVAL, f"not a symbolic link: {path}")
        return self._readlink_ino(ino, inode)

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
            self._dir_insert(ndino, ndinode, nname, ino, inode.i_mode)
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
