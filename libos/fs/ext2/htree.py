"""htree (dir_index) directories: the name hash, and lookups, inserts and splits through the index.

An indexed directory is an ordinary linear directory whose block 0 also holds a
B-tree keyed by a hash of the name (ext4 wiki, "Hash Tree Directories";
e2fsprogs lib/ext2fs/ext2_fs.h, struct ext2_dx_root_info, ext2_dx_entry,
ext2_dx_countlimit):

  block 0     "." (rec_len 12), ".." (rec_len covering the rest of the block),
              then at byte 24 the root info (reserved_zero u32, hash_version,
              info_length = 8, indirect_levels, unused_flags), then at byte 32
              the dx entries: (hash u32, logical block u32) pairs whose first
              hash is replaced by (limit u16, count u16)
  node        (indirect_levels = 1 only) an empty dirent covering the block,
              then the same count/limit and entries from byte 8
  leaves      linear directory blocks; leaf i holds the names whose hash is
              >= entry i's hash and < entry i+1's

An entry's hash with the low bit set means the hash of the previous leaf's last
names continues in this one (a collision split across leaves), so a lookup
reads on while the next leaf starts with its hash (Linux fs/ext4/namei.c,
ext4_htree_next_block). Without the large_dir feature a tree has at most one
level of nodes under the root (EXT4_HTREE_LEVEL_COMPAT = 2).

A linear directory that grows past its first block is indexed (Linux's
make_indexed_dir does the same); a larger linear directory, as ``mke2fs -d``
writes them, stays linear, as under Linux, until ``e2fsck -fD`` indexes it.
Removing a name only changes its leaf; leaves are never merged (Linux neither).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import Ext2Error, _corrupt
from .layout import COMPAT_DIR_INDEX, FT_DIR, INDEX_FL, dirent_size

M32 = 0xFFFFFFFF

# hash versions (e2fsprogs ext2_fs.h EXT2_HASH_*); the *_UNSIGNED ones are the on-disk
# version + 3, chosen when the superblock says names were hashed with unsigned chars
HASH_LEGACY, HASH_HALF_MD4, HASH_TEA = 0, 1, 2
UNSIGNED_OFFSET = 3
FLAGS_SIGNED_HASH, FLAGS_UNSIGNED_HASH = 0x1, 0x2  # s_flags (mke2fs on x86 sets the signed one)
_DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)  # MD4's initial state (RFC 1320)
MAX_LEVELS = 1  # indirect levels without large_dir
COLLISION = 1  # low bit of an index hash: the previous leaf's last hash continues here
BLOCK_MASK = 0x0FFFFFFF  # the dx entry's block: its top bits are reserved (Linux dx_get_block)

_ROOT_INFO = struct.Struct("<IBBBB")  # reserved_zero, hash_version, info_length, indirect_levels, flags
_COUNTLIMIT = struct.Struct("<HH")  # limit, count: in place of the first entry's hash
_DX_ENTRY = struct.Struct("<II")  # hash, block
_DIRENT = struct.Struct("<IHBB")  # inode, rec_len, name_len, file_type
ROOT_INFO_AT = 24  # after "." (12 bytes) and ".." (its first 12)
ROOT_ENTRIES_AT = 32
NODE_ENTRIES_AT = 8  # after the node's empty dirent header


# --- the hash (e2fsprogs lib/ext2fs/dirhash.c, Linux fs/ext4/hash.c) ---

def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & M32


# half-MD4: MD4's three rounds (RFC 1320 section 3.4) over 8 words, as (function, constant,
# [(message word, shift)]) with the target register rotating a, d, c, b
_MD4_ROUNDS = (
    (lambda x, y, z: z ^ (x & (y ^ z)), 0,
     ((0, 3), (1, 7), (2, 11), (3, 19), (4, 3), (5, 7), (6, 11), (7, 19))),
    (lambda x, y, z: ((x & y) + ((x ^ y) & z)) & M32, 0o13240474631,
     ((1, 3), (3, 5), (5, 9), (7, 13), (0, 3), (2, 5), (4, 9), (6, 13))),
    (lambda x, y, z: x ^ y ^ z, 0o15666365641,
     ((3, 3), (7, 9), (2, 11), (6, 15), (1, 3), (5, 9), (0, 11), (4, 15))),
)


def _half_md4(buf: list[int], words: Sequence[int]) -> None:
    v = list(buf)
    for fn, k, steps in _MD4_ROUNDS:
        for step, (w, s) in enumerate(steps):
            t = (0, 3, 2, 1)[step % 4]
            x, y, z = v[(t + 1) % 4], v[(t + 2) % 4], v[(t + 3) % 4]
            v[t] = _rol((v[t] + fn(x, y, z) + words[w] + k) & M32, s)
    for i in range(4):
        buf[i] = (buf[i] + v[i]) & M32


def _tea(buf: list[int], words: Sequence[int]) -> None:
    delta = 0x9E3779B9  # TEA's key schedule constant (Wheeler and Needham, 1994)
    s, b0, b1 = 0, buf[0], buf[1]
    a, b, c, d = words
    for _ in range(16):
        s = (s + delta) & M32
        b0 = (b0 + ((((b1 << 4) + a) ^ (b1 + s) ^ ((b1 >> 5) + b)) & M32)) & M32
        b1 = (b1 + ((((b0 << 4) + c) ^ (b0 + s) ^ ((b0 >> 5) + d)) & M32)) & M32
    buf[0] = (buf[0] + b0) & M32
    buf[1] = (buf[1] + b1) & M32


def _char(c: int, unsigned: bool) -> int:
    return c if unsigned or c < 128 else c - 256


def _str2hashbuf(msg: bytes, num: int, unsigned: bool) -> list[int]:
    """``num`` words from the first ``4 * num`` bytes, padded with the remaining length."""
    pad = len(msg) | len(msg) << 8
    pad = (pad | pad << 16) & M32
    out: list[int] = []
    val = pad
    for i, c in enumerate(msg[:num * 4]):
        val = (_char(c, unsigned) + (val << 8)) & M32
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    return out + [pad] * (num - len(out))


def _legacy(name: bytes, unsigned: bool) -> int:
    h0, h1 = 0x12A3FE2D, 0x37ABE8F9
    for c in name:
        h = (h1 + (h0 ^ ((_char(c, unsigned) * 7152373) & M32))) & M32
        if h & 0x80000000:
            h = (h - 0x7FFFFFFF) & M32
        h1, h0 = h0, h
    return (h0 << 1) & M32


def dirhash(name: bytes, version: int, seed: Sequence[int]) -> int:
    """The major hash of ``name`` under hash ``version`` (0-5) and the superblock's seed."""
    unsigned = version >= UNSIGNED_OFFSET
    base = version - UNSIGNED_OFFSET if unsigned else version
    buf = list(seed) if any(seed) else list(_DEFAULT_SEED)
    if base == HASH_LEGACY:
        h = _legacy(name, unsigned)
    elif base == HASH_HALF_MD4:
        for at in range(0, max(len(name), 1), 32):
            _half_md4(buf, _str2hashbuf(name[at:], 8, unsigned))
        h = buf[1]
    elif base == HASH_TEA:
        for at in range(0, max(len(name), 1), 16):
            _tea(buf, _str2hashbuf(name[at:], 4, unsigned))
        h = buf[0]
    else:
        raise ValueError(f"unknown directory hash version {version}")
    return h & ~1 & M32


# --- the tree ---

@dataclass
class _Node:
    """One index block (the root or a node) and the entry a search chose in it."""

    lblk: int
    bno: int
    buf: bytearray
    base: int  # offset of the count/limit header (= entry 0)
    limit: int
    count: int
    at: int = 0

    def hash(self, i: int) -> int:
        return 0 if i == 0 else _DX_ENTRY.unpack_from(self.buf, self.base + 8 * i)[0]

    def block(self, i: int) -> int:
        return _DX_ENTRY.unpack_from(self.buf, self.base + 8 * i)[1] & BLOCK_MASK

    def entries(self) -> list[tuple[int, int]]:
        return [(self.hash(i), self.block(i)) for i in range(self.count)]

    def set_entries(self, entries: list[tuple[int, int]]) -> None:
        self.count = len(entries)
        for i, (h, b) in enumerate(entries):
            _DX_ENTRY.pack_into(self.buf, self.base + 8 * i, h, b)
        _COUNTLIMIT.pack_into(self.buf, self.base, self.limit, self.count)

    def search(self, h: int) -> int:
        """The last entry whose hash is <= ``h`` (entry 0 covers everything below entry 1's)."""
        lo, hi, found = 1, self.count - 1, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.hash(mid) <= h:
                found, lo = mid, mid + 1
            else:
                hi = mid - 1
        return found


Entry = tuple[int, bytes, int]  # inode, name, file type


class HashTree:
    """Mixed into ``Ext2`` (fs.py) beside ``Directories`` (dirs.py), which calls it for indexed
    directories."""

    def _dx_enabled(self) -> bool:
        return bool(self.sb.s_feature_compat & COMPAT_DIR_INDEX)

    def _dx_indexed(self, dinode) -> bool:
        return bool(dinode.i_flags & INDEX_FL) and self._dx_enabled()

    def _dx_version(self, on_disk: int) -> int:
        if on_disk <= HASH_TEA and self.sb.s_flags & FLAGS_UNSIGNED_HASH:
            return on_disk + UNSIGNED_OFFSET
        return on_disk

    def _dx_hash(self, version: int, name: bytes) -> int:
        return dirhash(name, version, self.sb.s_hash_seed)

    def _dx_read(self, dino: int, dinode, lblk: int, what: str) -> tuple[int, bytearray]:
        nblocks = dinode.i_size // self.block_size
        if lblk >= nblocks:
            raise _corrupt(f"directory inode {dino}: htree {what} points at block {lblk}, past its end "
                           f"({nblocks} blocks)")
        bno = self._bmap(dino, dinode, lblk)
        if bno == 0:
            raise _corrupt(f"directory inode {dino} has a hole at block {lblk}")
        return bno, self._bread(bno)

    def _dx_node(self, dino: int, lblk: int, bno: int, buf: bytearray, base: int) -> _Node:
        limit, count = _COUNTLIMIT.unpack_from(buf, base)
        if limit != (self.block_size - base) // 8 or not 1 <= count <= limit:
            raise _corrupt(f"directory inode {dino}: htree block {lblk} has count {count}, limit {limit}")
        return _Node(lblk, bno, buf, base, limit, count)

    def _dx_root(self, dino: int, dinode) -> tuple[_Node, int, int]:
        """The root node, the hash version and the number of node levels under it."""
        bno, buf = self._dx_read(dino, dinode, 0, "root")
        zero, version, info_len, levels, _flags = _ROOT_INFO.unpack_from(buf, ROOT_INFO_AT)
        _i, dot_len, _n, _t = _DIRENT.unpack_from(buf, 0)
        _i, dotdot_len, _n, _t = _DIRENT.unpack_from(buf, 12)
        if (dot_len != 12 or dotdot_len != self.block_size - 12 or zero or info_len != 8
                or version > HASH_TEA or levels > MAX_LEVELS):
            raise _corrupt(f"directory inode {dino}: bad htree root (hash version {version}, "
                           f"info length {info_len}, levels {levels})")
        return self._dx_node(dino, 0, bno, buf, ROOT_ENTRIES_AT), self._dx_version(version), levels

    def _dx_descend(self, dino: int, dinode, parent: _Node) -> _Node:
        lblk = parent.block(parent.at)
        bno, buf = self._dx_read(dino, dinode, lblk, "node")
        ino, rec_len, _n, _t = _DIRENT.unpack_from(buf, 0)
        if ino or rec_len != self.block_size:
            raise _corrupt(f"directory inode {dino}: htree node {lblk} does not start with an empty entry")
        return self._dx_node(dino, lblk, bno, buf, NODE_ENTRIES_AT)

    def _dx_probe(self, dino: int, dinode, name: bytes) -> tuple[list[_Node], int, int]:
        """The path from the root to the leaf that holds ``name``'s hash: (nodes, hash, version)."""
        root, version, levels = self._dx_root(dino, dinode)
        h = self._dx_hash(version, name)
        path = [root]
        root.at = root.search(h)
        for _ in range(levels):
            node = self._dx_descend(dino, dinode, path[-1])
            node.at = node.search(h)
            path.append(node)
        return path, h, version

    def _dx_next(self, dino: int, dinode, path: list[_Node]) -> int | None:
        """Move ``path`` to the next leaf and return its index hash (None after the last leaf)."""
        i = len(path) - 1
        while path[i].at + 1 >= path[i].count:
            if i == 0:
                return None
            i -= 1
        path[i].at += 1
        h = path[i].hash(path[i].at)
        for j in range(i + 1, len(path)):
            path[j] = self._dx_descend(dino, dinode, path[j - 1])
        return h

    def _dx_leaves(self, dino: int, dinode, name: bytes) -> Iterator[tuple[int, bytearray]]:
        """The leaf blocks that can hold ``name``: its hash's leaf and the leaves a collision
        continues into."""
        path, h, _v = self._dx_probe(dino, dinode, name)
        while True:
            yield self._dx_read(dino, dinode, path[-1].block(path[-1].at), "entry")
            nxt = self._dx_next(dino, dinode, path)
            if nxt is None or not nxt & COLLISION or nxt & ~COLLISION != h:
                return

    # --- changing an indexed directory ---

    def _dx_live(self, dino: int, bno: int, buf: bytearray) -> list[Entry]:
        return [(ino, bytes(buf[off + 8:off + 8 + nl]), ft)
                for off, ino, _rl, nl, ft in self._entries(dino, bno, buf) if ino]

    def _dx_entry(self, ino: int, rec_len: int, name: bytes, ft: int) -> bytes:
        """An entry's bytes, as dirs.py's _pack_entry lays them out, without construct (this runs
        for every name moved in a split)."""
        if self.filetype:
            return _DIRENT.pack(ino, rec_len, len(name), ft) + name
        return _DIRENT.pack(ino, rec_len, len(name) & 0xFF, len(name) >> 8) + name

    def _dx_pack(self, entries: Sequence[Entry]) -> bytearray:
        """A leaf holding ``entries``, the last one's rec_len reaching the end of the block."""
        bs = self.block_size
        buf = bytearray(bs)
        off = 0
        for i, (ino, name, ft) in enumerate(entries):
            size = dirent_size(len(name))
            raw = self._dx_entry(ino, bs - off if i == len(entries) - 1 else size, name, ft)
            buf[off:off + len(raw)] = raw
            off += size
        if not entries:
            buf[:8] = _DIRENT.pack(0, bs, 0, 0)
        return buf

    def _dx_place(self, dino: int, bno: int, buf: bytearray, entry: Entry) -> bool:
        """Put ``entry`` in a leaf's free space (a free entry or a live one's slack) in place."""
        ino, name, ft = entry
        need = dirent_size(len(name))
        for off, eino, rl, nl, _ft in self._entries(dino, bno, buf):
            used = dirent_size(nl) if eino else 0
            if rl - used >= need:
                if eino:
                    buf[off + 4:off + 6] = used.to_bytes(2, "little")
                raw = self._dx_entry(ino, rl - used, name, ft)
                buf[off + used:off + used + len(raw)] = raw
                self._bwrite(bno, buf)
                return True
        return False

    def _dx_split(self, hashed: list[tuple[int, Entry]]) -> list[tuple[int, list[Entry]]]:
        """Cut entries sorted by hash into leaves that each fit a block, halving by size as
        Linux's do_split does: [(index hash, entries)], the first index hash being 0."""
        def size(part: list[tuple[int, Entry]]) -> int:
            return sum(dirent_size(len(e[1])) for _h, e in part)

        def cut(part: list[tuple[int, Entry]]) -> list[list[tuple[int, Entry]]]:
            if size(part) <= self.block_size or len(part) < 2:
                return [part]
            half, acc, s = size(part) / 2, 0, 0
            while s < len(part) - 1 and acc + dirent_size(len(part[s][1][1])) <= half:
                acc += dirent_size(len(part[s][1][1]))
                s += 1
            s = max(s, 1)
            return cut(part[:s]) + cut(part[s:])

        parts = cut(hashed)
        out = [(0, [e for _h, e in parts[0]])]
        for prev, part in zip(parts, parts[1:], strict=False):
            h = part[0][0]
            out.append((h | (COLLISION if prev[-1][0] == h else 0), [e for _h, e in part]))
        return out

    def _dx_grow(self, dino: int, dinode, goal: int) -> tuple[int, int]:
        """Append a block to the directory: (logical, physical)."""
        lblk = dinode.i_size // self.block_size
        bno = self._bmap(dino, dinode, lblk, alloc=True, goal=goal)
        dinode.i_size += self.block_size
        return lblk, bno

    def _dx_add(self, dino: int, dinode, name: bytes, ino: int, mode: int) -> None:
        """Enter ``name`` in its leaf, splitting the leaf (and a full node) when it has no room."""
        bs = self.block_size
        path, h, version = self._dx_probe(dino, dinode, name)
        bottom = path[-1]
        leaf_bno, leaf = self._dx_read(dino, dinode, bottom.block(bottom.at), "entry")
        new = (ino, name, self._ft(mode))
        if self._dx_place(dino, leaf_bno, leaf, new):
            return
        entries = self._dx_live(dino, leaf_bno, leaf) + [new]
        if sum(dirent_size(len(e[1])) for e in entries) <= bs:  # room, but in pieces: compact
            self._bwrite(leaf_bno, self._dx_pack(entries))
            return
        grow_root = bottom.count == bottom.limit and len(path) == 1
        split_node = bottom.count == bottom.limit and len(path) > 1
        if split_node and path[0].count == path[0].limit:
            raise Ext2Error(errno.ENOSPC, f"directory inode {dino}: its htree index is full")
        # the blocks first, so that running out of space changes nothing
        old_size = dinode.i_size
        try:
            new_leaf = self._dx_grow(dino, dinode, leaf_bno + 1)
            new_node = self._dx_grow(dino, dinode, leaf_bno + 2) if grow_root or split_node else None
        except Ext2Error:
            self._free_data(dino, dinode, old_size // bs)
            dinode.i_size = old_size
            raise
        if new_node is not None:
            nlblk, nbno = new_node
            nbuf = bytearray(bs)
            nbuf[:8] = _DIRENT.pack(0, bs, 0, 0)
            node = _Node(nlblk, nbno, nbuf, NODE_ENTRIES_AT, (bs - NODE_ENTRIES_AT) // 8, 0)
            moved = bottom.entries()
            if grow_root:  # the root's entries move down into a node; the root points at it
                node.set_entries(moved)
                node.at = bottom.at
                bottom.set_entries([(0, nlblk)])
                bottom.at = 0
                info = bottom.buf[ROOT_INFO_AT:ROOT_ENTRIES_AT]
                info[6] = 1  # indirect_levels
                bottom.buf[ROOT_INFO_AT:ROOT_ENTRIES_AT] = info
                self._bwrite(bottom.bno, bottom.buf)
                path.append(node)
            else:  # the node's upper half moves to the new node, entered in the root
                half = bottom.count // 2
                node.set_entries(moved[half:])
                bottom.set_entries(moved[:half])
                root = path[0]
                root.set_entries(root.entries()[:root.at + 1] + [(moved[half][0], nlblk)]
                                 + root.entries()[root.at + 1:])
                self._bwrite(root.bno, root.buf)
                if bottom.at >= half:
                    self._bwrite(bottom.bno, bottom.buf)
                    node.at = bottom.at - half
                    path[-1] = node
                else:
                    self._bwrite(nbno, nbuf)
            bottom = path[-1]
        hashed = sorted(((self._dx_hash(version, e[1]), e) for e in entries), key=lambda p: p[0])
        halves = self._dx_split(hashed)
        # A leaf held at most a block and a name adds at most 263 bytes, so halving by size
        # gives two parts of at most a block each (for blocks of 1 KiB and more).
        assert len(halves) == 2, "an htree leaf split into more than two"
        (_h0, low), (h2, high) = halves
        lblk, bno = new_leaf
        self._bwrite(leaf_bno, self._dx_pack(low))
        self._bwrite(bno, self._dx_pack(high))
        listed = bottom.entries()
        bottom.set_entries(listed[:bottom.at + 1] + [(h2, lblk)] + listed[bottom.at + 1:])
        self._bwrite(bottom.bno, bottom.buf)

    def _dx_build(self, dino: int, dinode) -> None:
        """Index a two-block linear directory (one that has just grown past its first block):
        block 0 becomes the root, the names go to leaves in hash order."""
        bs = self.block_size
        blocks = list(self._dir_blocks(dino, dinode))
        if len(blocks) != 2:
            return
        entries = [e for bno, buf in blocks for e in self._dx_live(dino, bno, buf)]
        if len(entries) < 2 or entries[0][1] != b"." or entries[1][1] != b"..":
            return  # not a directory Linux would index either; it stays linear
        version = self.sb.s_def_hash_version if self.sb.s_def_hash_version <= HASH_TEA else HASH_HALF_MD4
        hv = self._dx_version(version)
        hashed = sorted(((self._dx_hash(hv, e[1]), e) for e in entries[2:]), key=lambda p: p[0])
        leaves = self._dx_split(hashed)
        homes = [bno for bno, _buf in blocks[1:]]
        old_size = dinode.i_size
        try:
            while len(homes) < len(leaves):
                homes.append(self._dx_grow(dino, dinode, homes[-1] + 1)[1])
        except Ext2Error:
            self._free_data(dino, dinode, old_size // bs)
            dinode.i_size = old_size
            return  # no room for the index: the directory stays linear, as it was
        for home, (_h, part) in zip(homes, leaves, strict=False):
            self._bwrite(home, self._dx_pack(part))
        index = [(h, i + 1) for i, (h, _part) in enumerate(leaves)]
        root = bytearray(bs)
        (dot_ino, _n, _f), (dotdot_ino, _n2, _f2) = entries[0], entries[1]
        ft = FT_DIR if self.filetype else 0
        root[0:9] = self._dx_entry(dot_ino, 12, b".", ft)
        root[12:22] = self._dx_entry(dotdot_ino, bs - 12, b"..", ft)
        _ROOT_INFO.pack_into(root, ROOT_INFO_AT, 0, version, 8, 0, 0)
        node = _Node(0, blocks[0][0], root, ROOT_ENTRIES_AT, (bs - ROOT_ENTRIES_AT) // 8, 0)
        node.set_entries(index)
        self._bwrite(blocks[0][0], root)
        dinode.i_flags |= INDEX_FL
