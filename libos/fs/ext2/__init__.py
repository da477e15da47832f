"""A pure-Python ext2 (revision 1) file system library.

Reads and writes the feature set ``mke2fs -t ext2`` produces by default
(ext_attr, resize_inode, dir_index, filetype, sparse_super, large_file) with
1, 2 or 4 KiB blocks, and ext3's (has_journal: journal.py).  htree (dir_index)
directories are searched and changed through their index (htree.py).  The
reserved GDT blocks of resize_inode are never touched.

Everything read from disk is bounds-checked: corruption raises
``Ext2Error(errno.EIO, ...)`` with a message naming the structure, never an
IndexError or an endless loop.  Blocks go through a write-back LRU cache;
``sync()`` writes the dirty blocks, superblock and group descriptors and then
flushes the device.

One module per concept, each citing the sections of the ext2 spec (Dave
Poirier, "The Second Extended File System: Internal Layout") it implements:

  layout.py     on-disk structures and constants (superblock, group descriptor,
                inode, directory entry, xattr header; feature bits)
  errors.py     Ext2Error and the corruption error
  cache.py      the write-back LRU block cache in front of the BlockIO
  alloc.py      block and inode bitmaps, free counts in descriptors and superblock
  inodes.py     the inode table, block maps (direct/indirect), read/write/truncate
  dirs.py       directory entries: list, find, add, remove, retarget
  htree.py      the htree index of large directories: name hash, lookup, insert, split
  namespace.py  path resolution and create/mkdir/symlink/link/unlink/rmdir/rename
  journal.py    ext3's journal (JBD2): replay at mount, one ordered-mode transaction per sync
  fs.py         the Ext2 class tying them: mount, stat, sync, statfs

This package re-exports the names the old single module had, so
``from libos.fs.ext2 import Ext2, Ext2Error, ...`` keeps working.
"""

from __future__ import annotations

from .cache import BlockCache
from .errors import Ext2Error, _corrupt
from .fs import Ext2, Stat
from .layout import (
    _FT_OF_MODE,
    COMPAT_DIR_INDEX,
    COMPAT_DIR_PREALLOC,
    COMPAT_EXT_ATTR,
    COMPAT_HAS_JOURNAL,
    COMPAT_IMAGIC_INODES,
    COMPAT_RESIZE_INODE,
    DIRENT_HEADER,
    EXT2_MAGIC,
    EXTENTS_FL,
    FT_BLK,
    FT_CHR,
    FT_DIR,
    FT_FIFO,
    FT_REG,
    FT_SOCK,
    FT_SYMLINK,
    FT_UNKNOWN,
    GROUP_DESC_SIZE,
    INCOMPAT_FILETYPE,
    INCOMPAT_FLEX_BG,
    INCOMPAT_META_BG,
    INCOMPAT_NAMES,
    INCOMPAT_RECOVER,
    INDEX_FL,
    INODE_BASE_SIZE,
    LINK_MAX,
    NAME_MAX,
    RO_COMPAT_BTREE_DIR,
    RO_COMPAT_LARGE_FILE,
    RO_COMPAT_SPARSE_SUPER,
    ROOT_INO,
    SUPERBLOCK_OFFSET,
    SUPPORTED_INCOMPAT,
    SUPPORTED_RO_COMPAT,
    SYMLINK_LOOPS,
    XATTR_MAGIC,
    DirEntryHeader,
    GroupDesc,
    Inode,
    InodeExtraIsize,
    Superblock,
    XattrHeader,
    _has_super,
    dirent_size,
)

__all__ = [
    "COMPAT_DIR_INDEX", "COMPAT_DIR_PREALLOC", "COMPAT_EXT_ATTR", "COMPAT_HAS_JOURNAL", "COMPAT_IMAGIC_INODES",
    "COMPAT_RESIZE_INODE", "DIRENT_HEADER", "EXT2_MAGIC", "EXTENTS_FL", "FT_BLK", "FT_CHR", "FT_DIR", "FT_FIFO",
    "FT_REG", "FT_SOCK", "FT_SYMLINK", "FT_UNKNOWN", "GROUP_DESC_SIZE", "INCOMPAT_FILETYPE", "INCOMPAT_FLEX_BG",
    "INCOMPAT_META_BG", "INCOMPAT_NAMES", "INCOMPAT_RECOVER", "INDEX_FL", "INODE_BASE_SIZE", "LINK_MAX",
    "NAME_MAX", "RO_COMPAT_BTREE_DIR", "RO_COMPAT_LARGE_FILE", "RO_COMPAT_SPARSE_SUPER", "ROOT_INO",
    "SUPERBLOCK_OFFSET", "SUPPORTED_INCOMPAT", "SUPPORTED_RO_COMPAT", "SYMLINK_LOOPS", "XATTR_MAGIC",
    "BlockCache", "DirEntryHeader", "Ext2", "Ext2Error", "GroupDesc", "Inode", "InodeExtraIsize", "Stat",
    "Superblock", "XattrHeader", "dirent_size",
    # package-private, for libos/fs/mkfs.py and the modules above
    "_FT_OF_MODE", "_corrupt", "_has_super",
]
