"""A pure-Python mkfs for ext2 (revision 1), for users without e2fsprogs.

    python -m exo mkfs IMAGE --size 64M [--from DIR] [--block-size N]

Writes the group layout (sparse_super backups, bitmaps, inode tables), the root
directory and lost+found, then copies a host directory tree (files, directories,
symlinks, hard links) through the ext2 library.  Features: filetype,
sparse_super, large_file, and with ``--journal`` (``-j``) has_journal: an ext3
journal (JBD2) in inode 8, sized as mke2fs sizes it; no resize inode, no htree.
The images pass ``e2fsck -fn``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import stat as st
import struct
import sys
import time
import uuid as uuidlib
from collections.abc import Callable

from .blockio import FileBlockIO
from .ext2 import (
    COMPAT_DIR_INDEX,
    COMPAT_HAS_JOURNAL,
    EXT2_MAGIC,
    FT_DIR,
    GROUP_DESC_SIZE,
    INCOMPAT_FILETYPE,
    RO_COMPAT_LARGE_FILE,
    RO_COMPAT_SPARSE_SUPER,
    ROOT_INO,
    DirEntryHeader,
    Ext2,
    Ext2Error,
    GroupDesc,
    Inode,
    InodeExtraIsize,
    Superblock,
    _has_super,
)
from .ext2.htree import FLAGS_SIGNED_HASH, HASH_HALF_MD4
from .ext2.journal import JOURNAL_INO, default_blocks, new_superblock

FIRST_INO = 11
MIN_BLOCKS = 64


class MkfsError(Exception):
    pass


def _layout(size_bytes: int, bs: int, inode_ratio: int, inode_size: int) -> dict:
    fdb = 1 if bs == 1024 else 0
    bpg = 8 * bs
    blocks = size_bytes // bs
    if blocks > 2**32 - 1:
        raise MkfsError(f"image too large for ext2 with {bs}-byte blocks")
    per_block = bs // inode_size
    for _ in range(4):
        if blocks < MIN_BLOCKS:
            raise MkfsError(f"image too small: {size_bytes} bytes (at least {MIN_BLOCKS * bs} with {bs}-byte blocks)")
        ngroups = (blocks - fdb + bpg - 1) // bpg
        want = max(16, blocks * bs // inode_ratio)
        ipg = (want + ngroups - 1) // ngroups
        step = max(8, per_block)
        max_ipg = min(8 * bs, (bpg // 2) * per_block) // step * step
        ipg = min((ipg + step - 1) // step * step, max_ipg)
        itb = ipg // per_block
        gdt = (ngroups * GROUP_DESC_SIZE + bs - 1) // bs
        last = blocks - fdb - (ngroups - 1) * bpg
        overhead_last = (1 + gdt if _has_super(ngroups - 1, True) else 0) + 2 + itb
        if ngroups > 1 and last < overhead_last + 50:
            blocks -= last  # a runt last group is not worth its metadata (as mke2fs does)
            continue
        if last < overhead_last + 4:
            raise MkfsError(f"image too small: {size_bytes} bytes")
        return dict(fdb=fdb, bpg=bpg, blocks=blocks, ngroups=ngroups, ipg=ipg, itb=itb, gdt=gdt)
    raise MkfsError("cannot lay out the file system")  # pragma: no cover


def mkfs(path: str | os.PathLike, size_bytes: int, block_size: int | None = None,
         from_dir: str | os.PathLike | None = None, inode_ratio: int | None = None,
         clock: Callable[[], int] = lambda: int(time.time()), inode_size: int = 256,
         label: str = "", uuid: bytes | None = None, journal: bool = False,
         journal_blocks: int | None = None, timestamp: int | None = None) -> None:
    """Write an ext2 file system of ``size_bytes`` to ``path`` (created or overwritten); with
    ``journal``, an ext3 one (``journal_blocks``: its size, default mke2fs's).

    ``timestamp`` (seconds since the epoch) makes the image reproducible: it is the time of
    every change mkfs makes, and copied files' times are clamped to it, their access time set to
    their modification time (reading the tree must not change the next image), as the
    reproducible-builds SOURCE_DATE_EPOCH convention asks. With ``uuid`` fixed too, the same
    files give the same bytes."""
    if timestamp is not None:
        if not 0 <= timestamp < 1 << 32:
            raise MkfsError(f"timestamp {timestamp} is outside ext2's 32-bit seconds")
        clock = lambda: timestamp  # noqa: E731 - the file system's clock
    if block_size is None:
        block_size = 1024 if size_bytes < 512 << 20 else 4096
    if block_size not in (1024, 2048, 4096):
        raise MkfsError(f"bad block size {block_size} (1024, 2048 or 4096)")
    if inode_size not in (128, 256, 512, 1024) or inode_size > block_size:
        raise MkfsError(f"bad inode size {inode_size}")
    if inode_ratio is None:
        inode_ratio = 4096 if size_bytes < 512 << 20 else 16384
    if inode_ratio < 1024:
        raise MkfsError(f"inode ratio {inode_ratio} too small (at least 1024)")
    if from_dir is not None and not os.path.isdir(from_dir):
        raise MkfsError(f"--from {os.fspath(from_dir)!r} is not a directory")
    bs = block_size
    lay = _layout(size_bytes, bs, inode_ratio, inode_size)
    if journal:
        journal_blocks = journal_blocks or default_blocks(lay["blocks"])
        if not 1024 <= journal_blocks <= lay["blocks"] // 2:
            raise MkfsError(f"a journal of {journal_blocks} blocks does not fit {lay['blocks']} blocks "
                            f"(at least 1024 blocks, at most half the file system; mke2fs makes none "
                            f"below 2048 blocks)")
    fdb, bpg, blocks, ngroups, ipg, itb, gdt = (lay[k] for k in ("fdb", "bpg", "blocks", "ngroups", "ipg",
                                                                 "itb", "gdt"))
    now = clock()
    uuid = uuid if uuid is not None else os.urandom(16)

    # group layout
    groups = []
    total_free = 0
    for g in range(ngroups):
        start = fdb + g * bpg
        nblocks = min(bpg, blocks - start)
        meta = start + (1 + gdt if _has_super(g, True) else 0)
        groups.append(dict(start=start, nblocks=nblocks, bb=meta, ib=meta + 1, it=meta + 2,
                           used=meta + 2 + itb - start))
    # the root directory's block: the first data block of group 0
    root_blk = groups[0]["start"] + groups[0]["used"]
    groups[0]["used"] += 1

    with open(path, "wb") as f:
        f.truncate(blocks * bs)

        def put(bno: int, data: bytes, off: int = 0) -> None:
            f.seek(bno * bs + off)
            f.write(data)

        gds = []
        for g, grp in enumerate(groups):
            free_blocks = grp["nblocks"] - grp["used"]
            free_inodes = ipg - (FIRST_INO - 1 if g == 0 else 0)
            total_free += free_blocks
            gds.append(dict(bg_block_bitmap=grp["bb"], bg_inode_bitmap=grp["ib"], bg_inode_table=grp["it"],
                            bg_free_blocks_count=free_blocks, bg_free_inodes_count=free_inodes,
                            bg_used_dirs_count=1 if g == 0 else 0, bg_flags=0, bg_reserved=bytes(12)))
            bbm = bytearray(bs)
            for i in range(grp["used"]):
                bbm[i >> 3] |= 1 << (i & 7)
            for i in range(grp["nblocks"], 8 * bs):  # padding past the end of the disk
                bbm[i >> 3] |= 1 << (i & 7)
            put(grp["bb"], bytes(bbm))
            ibm = bytearray(bs)
            for i in range(FIRST_INO - 1 if g == 0 else 0):
                ibm[i >> 3] |= 1 << (i & 7)
            for i in range(ipg, 8 * bs):
                ibm[i >> 3] |= 1 << (i & 7)
            put(grp["ib"], bytes(ibm))
        sb = dict(
            s_inodes_count=ipg * ngroups, s_blocks_count=blocks, s_r_blocks_count=blocks * 5 // 100,
            s_free_blocks_count=total_free, s_free_inodes_count=ipg * ngroups - (FIRST_INO - 1),
            s_first_data_block=fdb, s_log_block_size=bs.bit_length() - 11, s_log_frag_size=bs.bit_length() - 11,
            s_blocks_per_group=bpg, s_frags_per_group=bpg, s_inodes_per_group=ipg, s_mtime=0, s_wtime=now,
            s_mnt_count=0, s_max_mnt_count=-1, s_magic=EXT2_MAGIC, s_state=1, s_errors=1, s_minor_rev_level=0,
            s_lastcheck=now, s_checkinterval=0, s_creator_os=0, s_rev_level=1, s_def_resuid=0, s_def_resgid=0,
            s_first_ino=FIRST_INO, s_inode_size=inode_size, s_block_group_nr=0, s_feature_compat=COMPAT_DIR_INDEX,
            s_feature_incompat=INCOMPAT_FILETYPE,
            s_feature_ro_compat=RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE,
            s_uuid=uuid, s_volume_name=label.encode()[:16].ljust(16, b"\0"), s_last_mounted=bytes(64),
            s_algorithm_usage_bitmap=0, s_prealloc_blocks=0, s_prealloc_dir_blocks=0, s_reserved_gdt_blocks=0,
            s_journal_uuid=bytes(16), s_journal_inum=0, s_journal_dev=0, s_last_orphan=0,
            # dir_index as mke2fs sets it: half_md4, chars hashed signed (x86), a seed (mke2fs draws
            # a random one; this one comes from the UUID, so a fixed --uuid gives the same image)
            s_hash_seed=list(struct.unpack("<4I", hashlib.sha256(b"exo dir hash seed" + uuid).digest()[:16])),
            s_def_hash_version=HASH_HALF_MD4, s_jnl_backup_type=0, s_desc_size=0, s_default_mount_opts=0,
            s_first_meta_bg=0, s_mkfs_time=now, s_jnl_blocks=[0] * 17, s_blocks_count_hi=0,
            s_r_blocks_count_hi=0, s_free_blocks_hi=0,
            s_min_extra_isize=32 if inode_size > 128 else 0, s_want_extra_isize=32 if inode_size > 128 else 0,
            s_flags=FLAGS_SIGNED_HASH, s_rest=bytes(1024 - 356),
        )
        gdt_raw = b"".join(GroupDesc.build(gd) for gd in gds)
        for g, grp in enumerate(groups):
            if not _has_super(g, True):
                continue
            sb["s_block_group_nr"] = g
            if g == 0 and bs > 1024:
                put(0, Superblock.build(sb), 1024)
            else:
                put(grp["start"], Superblock.build(sb))
            put(grp["start"] + 1, gdt_raw)

        # root directory: inode 2 and one block with '.' and '..'
        inode = Inode.parse(bytes(128))
        inode.i_mode = st.S_IFDIR | 0o755
        inode.i_size = bs
        inode.i_atime = inode.i_ctime = inode.i_mtime = now
        inode.i_links_count = 2
        inode.i_blocks = bs // 512
        inode.i_block[0] = root_blk
        raw = Inode.build(inode)
        if inode_size > 128:
            raw += InodeExtraIsize.build(32)
        it_off = (ROOT_INO - 1) * inode_size
        put(groups[0]["it"], raw, it_off)
        dirblk = bytearray(bs)
        dirblk[:12] = DirEntryHeader.build(dict(inode=ROOT_INO, rec_len=12, name_len=1, file_type=FT_DIR)) + b".\0\0\0"
        dirblk[12:24] = DirEntryHeader.build(dict(inode=ROOT_INO, rec_len=bs - 12, name_len=2,
                                                  file_type=FT_DIR)) + b"..\0\0"
        put(root_blk, bytes(dirblk))

    dev = FileBlockIO(path)
    try:
        fs = Ext2.open(dev, clock=clock)
        fs.mkdir("/lost+found", 0o700)
        if journal:
            _add_journal(fs, journal_blocks, uuid, now)
        if from_dir is not None:
            _copy_tree(fs, os.fspath(from_dir), "/", {}, timestamp)
        fs.sync()
    finally:
        dev.close()


def _add_journal(fs: Ext2, nblocks: int, uuid: bytes, now: int) -> None:
    """Inode 8 as an empty JBD2 journal of ``nblocks`` blocks, and the superblock's pointers to it
    (has_journal, s_journal_inum, and s_jnl_blocks: a copy of the inode's block map and size,
    which e2fsck uses when inode 8 is damaged; e2fsprogs lib/ext2fs/mkjournal.c)."""
    inode = fs._iget(JOURNAL_INO)
    inode.i_mode = st.S_IFREG | 0o600
    inode.i_links_count = 1
    inode.i_atime = inode.i_ctime = inode.i_mtime = now
    prev = 0
    for n in range(nblocks):
        prev = fs._bmap(JOURNAL_INO, inode, n, alloc=True, goal=prev + 1 if prev else 0)
    fs._set_size(inode, nblocks * fs.block_size)
    fs._iput(JOURNAL_INO, inode)
    fs._bwrite(fs._bmap(JOURNAL_INO, inode, 0), bytearray(new_superblock(fs.block_size, nblocks, uuid)))
    sb = fs.sb
    sb.s_feature_compat |= COMPAT_HAS_JOURNAL
    sb.s_journal_inum = JOURNAL_INO
    sb.s_jnl_backup_type = 1  # EXT3_JNL_BACKUP_BLOCKS
    sb.s_jnl_blocks = [*inode.i_block[:15], inode.i_size_high, inode.i_size]
    fs._sb_dirty = fs._backups_dirty = True


def _times(s: os.stat_result, clamp: int | None) -> tuple[int, int]:
    """(atime, mtime) to give a copied inode: the host's, or with ``clamp`` (a reproducible
    image) the modification time, no later than it, for both."""
    if clamp is None:
        return int(s.st_atime), int(s.st_mtime)
    t = min(int(s.st_mtime), clamp)
    return t, t


def _copy_tree(fs: Ext2, host: str, dest: str, links: dict, clamp: int | None = None) -> None:
    with os.scandir(host) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        target = dest.rstrip("/") + "/" + e.name
        s = e.stat(follow_symlinks=False)
        if st.S_ISLNK(s.st_mode):
            fs.symlink(os.readlink(e.path), target)
        elif st.S_ISDIR(s.st_mode):
            ino = fs.mkdir(target, s.st_mode & 0o7777)
            _copy_tree(fs, e.path, target, links, clamp)
            fs.set_times(ino, *_times(s, clamp))
        elif st.S_ISREG(s.st_mode):
            key = (s.st_dev, s.st_ino)
            if s.st_nlink > 1 and key in links:
                fs.link(links[key], target)
                continue
            ino = fs.create(target, s.st_mode & 0o7777)
            _copy_data(fs, ino, e.path, s.st_size)
            fs.set_times(ino, *_times(s, clamp))
            if s.st_nlink > 1:
                links[key] = target
        elif st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode) or st.S_ISFIFO(s.st_mode) or st.S_ISSOCK(s.st_mode):
            ino = fs.mknod(target, s.st_mode, s.st_rdev)  # as mke2fs -d makes them
            fs.set_times(ino, *_times(s, clamp))


def _copy_data(fs: Ext2, ino: int, path: str, size: int) -> None:
    """A host file's contents, sparse: a block of zeros is left a hole, as mke2fs -d does
    (misc/create_inode.c copy_file_chunk skips zero blocks), so a sparse file stays sparse."""
    bs = fs.block_size
    with open(path, "rb") as f:
        off = 0
        while chunk := f.read(1 << 20):
            n, pos = len(chunk), 0
            while pos < n:
                if chunk.count(0, pos, pos + bs) == min(bs, n - pos):  # a block of zeros: a hole
                    pos += bs
                    continue
                end = pos + bs
                while end < n and chunk.count(0, end, end + bs) != min(bs, n - end):
                    end += bs
                piece = chunk[pos:end]
                if fs.write(ino, off + pos, piece) != len(piece):
                    raise Ext2Error(errno.ENOSPC, f"no space left on the image for {path}")
                pos = end
            off += n
    if size:
        fs.truncate(ino, size)  # a file that ends in a hole still has its full size


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1 << (10 * ("KMGT".index(t[-1]) + 1))
        t = t[:-1]
    try:
        n = int(t)
    except ValueError:
        raise MkfsError(f"bad size {text!r} (use e.g. 64M, 512K, 1G)") from None
    if n <= 0:
        raise MkfsError(f"bad size {text!r}: must be positive")
    return n * mult


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise MkfsError(message)


def _reproducible(timestamp: str | None, text_uuid: str | None, label: str,
                  size: str) -> tuple[int | None, bytes | None]:
    """--timestamp (else SOURCE_DATE_EPOCH, https://reproducible-builds.org/specs/source-date-epoch/)
    and --uuid as mkfs takes them. A fixed timestamp without --uuid gives a UUID derived from it
    (and the label and size), so that the same command and files make the same image."""
    source = "--timestamp"
    if timestamp is None and os.environ.get("SOURCE_DATE_EPOCH"):
        timestamp, source = os.environ["SOURCE_DATE_EPOCH"], "SOURCE_DATE_EPOCH"
    when = None
    if timestamp is not None:
        if not timestamp.strip().isdigit() or int(timestamp) >= 1 << 32:
            raise MkfsError(f"{source} {timestamp!r} is not a time in seconds since 1970 (0..4294967295)")
        when = int(timestamp)
    raw: bytes | None = None
    if text_uuid is not None:
        try:
            raw = uuidlib.UUID(text_uuid).bytes
        except ValueError:
            raise MkfsError(f"--uuid {text_uuid!r} is not a UUID") from None
    elif when is not None:
        raw = uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"exo-mkfs:{when}:{label}:{size}").bytes
    return when, raw


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="exo mkfs", description="Make an ext2 file system image (pure Python).")
    p.add_argument("image", help="image file to create")
    p.add_argument("--force", action="store_true", help="overwrite an existing non-empty file")
    p.add_argument("--size", required=True, help="image size, e.g. 64M (suffixes K, M, G)")
    p.add_argument("--from", dest="from_dir", metavar="DIR", help="copy this host directory into the image")
    p.add_argument("--block-size", type=int, default=None, help="1024, 2048 or 4096 (default: by size)")
    p.add_argument("--inode-ratio", type=int, default=None, help="bytes per inode")
    p.add_argument("--label", default="", help="volume label")
    p.add_argument("-j", "--journal", action="store_true",
                   help="add an ext3 journal (crash consistency: docs/fs.md), as mke2fs -j")
    p.add_argument("--journal-blocks", type=int, default=None, metavar="N",
                   help="with -j: the journal's size in blocks (default: as mke2fs, 1024 below 32768 blocks)")
    p.add_argument("--uuid", default=None, help="the file system's UUID (default: random, or derived from "
                   "the timestamp when one is fixed)")
    p.add_argument("--timestamp", default=None, metavar="SECONDS",
                   help="make a reproducible image: this time for every change, copied files' times clamped "
                   "to it (default: $SOURCE_DATE_EPOCH when set)")
    try:
        a = p.parse_args(argv)
        timestamp, fs_uuid = _reproducible(a.timestamp, a.uuid, a.label, a.size)
        size = parse_size(a.size)
        if not a.force and os.path.isfile(a.image) and os.path.getsize(a.image) > 0:
            raise MkfsError(f"{a.image} exists and is not empty (use --force to overwrite it)")
        if a.journal_blocks is not None and not a.journal:
            raise MkfsError("--journal-blocks needs --journal")
        mkfs(a.image, size, block_size=a.block_size, from_dir=a.from_dir, inode_ratio=a.inode_ratio,
             label=a.label, journal=a.journal, journal_blocks=a.journal_blocks, uuid=fs_uuid,
             timestamp=timestamp)
    except MkfsError as e:
        print(f"exo mkfs: error: {e}", file=sys.stderr)
        return 2
    except Ext2Error as e:
        hint = " (image too small for --from?)" if e.errno == errno.ENOSPC else ""
        print(f"exo mkfs: error: {e.message}{hint}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"exo mkfs: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    print(f"{a.image}: {'ext3 (journal)' if a.journal else 'ext2'}, {size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
