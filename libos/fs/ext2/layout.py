"""ext2 on-disk layout: superblock, group descriptor, inode, directory entry, constants.

The byte layouts (construct Structs) and constants of ext2 revision 1, from
Dave Poirier, "The Second Extended File System: Internal Layout"
(https://www.nongnu.org/ext2-doc/ext2.html): ch. 3 "Disk Organization"
(Superblock, Block Group Descriptor Table, Inode Table), ch. 4 "Directory
Structure" (Linked Directories) and the Extended Attributes chapter (the
header of an xattr block), as in Linux's fs/ext2/ext2.h and e2fsprogs'
lib/ext2fs/ext2_fs.h.  No file system logic lives here: the mount checks are
in fs.py, the rest in the concept modules beside this one.
"""

from __future__ import annotations

import stat as st
import struct

from construct import Array, Bytes, Container, Int8ul, Int16sl, Int16ul, Int32ul, ListContainer, Struct

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

# The same 128 bytes as one struct format, for the inode reads and writes on every path walk:
# construct's parse and build of Inode cost about 100 us each, 8 per create of a file.
_INODE_FMT = struct.Struct("<2H5I2H3I15I4I2B3HI")
_INODE_FIELDS = [c.name for c in Inode.subcons]
assert _INODE_FMT.size == INODE_BASE_SIZE


def parse_inode(raw: bytes) -> Container:
    """``Inode.parse`` (the same Container, i_block a list of 15), without construct."""
    v = _INODE_FMT.unpack_from(raw)
    return Container(zip(_INODE_FIELDS, v[:12] + (ListContainer(v[12:27]),) + v[27:], strict=True))


def build_inode(inode) -> bytes:
    """``Inode.build``, without construct."""
    v = [inode[f] for f in _INODE_FIELDS]
    return _INODE_FMT.pack(*v[:12], *v[12], *v[13:])
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
    """Bytes a directory entry with a name of ``name_len`` bytes needs: header and name, rounded
    up to 4 (ch. 4, Linked Directories: rec_len is a multiple of 4)."""
    return (DIRENT_HEADER + name_len + 3) & ~3


def _has_super(group: int, sparse: bool) -> bool:
    """Whether ``group`` holds a superblock and descriptor table copy: every group, or with
    sparse_super only groups 0, 1 and powers of 3, 5 and 7 (ch. 3, Superblock:
    s_feature_ro_compat, EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER)."""
    if not sparse or group <= 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False
