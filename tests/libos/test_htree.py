"""htree (dir_index) directories against e2fsprogs: the hash, lookups through the index, and
the index kept valid (leaf and node splits, a new level) as names come and go."""

from __future__ import annotations

import errno
import random
import subprocess
import uuid

import pytest
from test_ext2 import dcat, debugfs, fsck_clean, make_image, open_fs

from libos.fs.ext2 import INDEX_FL, Ext2Error
from libos.fs.ext2 import htree as ht
from libos.fs.mkfs import mkfs


def seed_of(img: str) -> str:
    out = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Directory Hash Seed"))


def htree_dump(img: str, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"htree {path}", img], capture_output=True, text=True).stdout


def levels(fs, ino: int) -> int:
    inode = fs._iget(ino)
    return fs._bread(fs._bmap(ino, inode, 0))[ht.ROOT_INFO_AT + 6]


def reads_per_lookup(fs, path: str) -> int:
    """Directory blocks read to find ``path``'s last name (through the index or every block)."""
    parent, name = path.rsplit("/", 1)
    dino = fs.lookup(parent)
    return sum(1 for _ in fs._dir_search(dino, fs._iget(dino), name.encode()))


NAMES = [b"file1", b"abc", b"a", b"x" + b"y" * 70, "\u00e9t\u00e9-\u00fc".encode(), bytes(range(0xC0, 0xFF))]


@pytest.mark.parametrize("version", range(6))
def test_hash_matches_e2fsprogs(tmp_path, version):
    """Every hash version (legacy, half_md4, tea, each signed and unsigned) against debugfs's
    dx_hash, with the image's seed, on ASCII and non-ASCII names."""
    img = make_image(tmp_path, 1024)
    seed = seed_of(img)
    words = [int.from_bytes(uuid.UUID(seed).bytes[i:i + 4], "little") for i in range(0, 16, 4)]
    for n in NAMES:
        cmd = [b"debugfs", b"-R", b"dx_hash -h HASHALG_%d -s %s " % (version, seed.encode()) + n, img.encode()]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        want = int(out.split(b" is ")[1].split()[0], 16)
        assert ht.dirhash(n, version, words) == want, (version, n)


def test_index_made_by_e2fsck_is_used_and_kept(tmp_path):
    img = make_image(tmp_path, 1024, "8M")
    (tmp_path / "e").write_bytes(b"x")
    debugfs(img, "mkdir big", *[f"write {tmp_path / 'e'} big/file-with-a-long-name-{i:04d}" for i in range(300)])
    r = subprocess.run(["e2fsck", "-fyD", img], capture_output=True)
    assert r.returncode in (0, 1), r.stdout
    fs = open_fs(img)
    ino = fs.lookup("/big")
    assert fs._iget(ino).i_flags & INDEX_FL, "e2fsck -D should have indexed the directory"
    blocks = fs._iget(ino).i_size // 1024
    assert blocks > 10
    for i in range(300):
        assert fs.read(fs.lookup(f"/big/file-with-a-long-name-{i:04d}"), 0, 5) == b"x"
    assert reads_per_lookup(fs, "/big/file-with-a-long-name-0077") == 1, "a lookup read more than its leaf"
    with pytest.raises(Ext2Error) as e:
        fs.lookup("/big/absent")
    assert e.value.errno == errno.ENOENT
    for i in range(0, 300, 3):
        fs.unlink(f"/big/file-with-a-long-name-{i:04d}")
    for i in range(400):
        fs.create(f"/big/newcomer-{i:04d}")
    fs.rename("/big/newcomer-0005", "/big/renamed")
    fs.close()
    fsck_clean(img)
    fs = open_fs(img)
    assert fs._iget(ino).i_flags & INDEX_FL, "the index was dropped"
    names = {n for n, _, _ in fs.readdir("/big")}
    want = {f"file-with-a-long-name-{i:04d}" for i in range(300) if i % 3} | {f"newcomer-{i:04d}" for i in range(400)}
    want = want - {"newcomer-0005"} | {"renamed", ".", ".."}
    assert names == want
    for n in want - {".", ".."}:
        assert fs.lookup(f"/big/{n}")
    assert "renamed" in debugfs(img, "ls /big")


@pytest.mark.parametrize("bs", [1024, 4096])
def test_directory_growing_past_a_block_is_indexed(tmp_path, bs):
    img = make_image(tmp_path, bs, "16M")
    fs = open_fs(img)
    fs.mkdir("/d", 0o755)
    rng = random.Random(bs)
    names = [f"n{i}-" + "z" * rng.randrange(0, 60) for i in range(bs // 8)]
    for n in names:
        fs.create(f"/d/{n}")
    ino = fs.lookup("/d")
    assert fs._iget(ino).i_flags & INDEX_FL
    fs.close()
    fsck_clean(img)
    dump = htree_dump(img, "/d")
    assert "Root node dump" in dump and "Hash Version: 1" in dump
    listed = debugfs(img, "ls -l /d")
    assert all(n in listed for n in names)


def test_root_full_grows_a_level(tmp_path):
    """1 KiB blocks and long names: more than 124 leaves, so the root's entries move down into a
    node, and that node later splits; e2fsck checks every hash range."""
    img = make_image(tmp_path, 1024, "32M")
    fs = open_fs(img)
    fs.mkdir("/d", 0o755)
    names = [f"{i:05d}-" + "long" * 12 for i in range(3000)]
    for n in names:
        fs.create(f"/d/{n}")
    ino = fs.lookup("/d")
    assert levels(fs, ino) == 1
    root = fs._dx_root(ino, fs._iget(ino))[0]
    assert root.count >= 2, "the node under the root never split"
    for n in names[::7]:
        assert fs.lookup(f"/d/{n}")
    assert reads_per_lookup(fs, f"/d/{names[1234]}") == 1
    fs.close()
    fsck_clean(img)
    assert "Indirect levels: 1" in htree_dump(img, "/d")


def test_hash_collisions_continue_into_the_next_leaf(tmp_path, monkeypatch):
    """With a hash of 3 bits, many names share a hash and leaves split inside a run of one hash
    (the index entry then has its low "continued" bit set); every name is still found, including
    after removals."""
    monkeypatch.setattr(ht, "dirhash", lambda name, version, seed: (sum(name) % 8) << 28)
    img = make_image(tmp_path, 1024, "8M")
    fs = open_fs(img)
    fs.mkdir("/d", 0o755)
    names = [f"collide-{i:04d}-padding-padding" for i in range(600)]
    for n in names:
        fs.create(f"/d/{n}")
    ino = fs.lookup("/d")
    root = fs._dx_root(ino, fs._iget(ino))[0]
    hashes = [h for h, _b in root.entries()]
    assert any(h & ht.COLLISION for h in hashes), "no split fell inside a run of one hash"
    for n in names:
        assert fs.lookup(f"/d/{n}")
    for n in names[::2]:
        fs.unlink(f"/d/{n}")
    for n in names[1::2]:
        assert fs.lookup(f"/d/{n}")
    with pytest.raises(Ext2Error):
        fs.lookup(f"/d/{names[0]}")


def test_unsigned_hash_flag_and_non_ascii_names(tmp_path):
    """A superblock saying names were hashed with unsigned chars (images made on ARM): names
    with bytes over 0x7f hash differently, and e2fsck (-D indexes them) and exo must agree."""
    img = make_image(tmp_path, 1024, "8M")
    debugfs(img, "ssv flags 2")  # EXT2_FLAGS_UNSIGNED_HASH
    (tmp_path / "e").write_bytes(b"x")
    names = [f"\u00e9l\u00e8ve-{i:03d}-\u00fc\u00df" for i in range(120)]
    debugfs(img, "mkdir u", *[f"write {tmp_path / 'e'} u/{n}" for n in names])
    r = subprocess.run(["e2fsck", "-fyD", img], capture_output=True)
    assert r.returncode in (0, 1), r.stdout
    fs = open_fs(img)
    assert fs._dx_version(1) == ht.HASH_HALF_MD4 + ht.UNSIGNED_OFFSET
    for n in names:
        assert fs.lookup(f"/u/{n}")
    for i in range(100):
        fs.create(f"/u/\u00e5-{i}")
    fs.close()
    fsck_clean(img)


def test_corrupt_index_is_a_clear_error(tmp_path):
    img = make_image(tmp_path, 1024, "8M")
    fs = open_fs(img)
    fs.mkdir("/d", 0o755)
    for i in range(100):
        fs.create(f"/d/name-{i:03d}")
    ino = fs.lookup("/d")
    root = fs._bmap(ino, fs._iget(ino), 0)
    fs.close()
    with open(img, "r+b") as f:
        f.seek(root * 1024 + ht.ROOT_ENTRIES_AT)
        f.write((999).to_bytes(2, "little"))  # limit
    fs = open_fs(img)
    with pytest.raises(Ext2Error) as e:
        fs.lookup("/d/name-050")
    assert e.value.errno == errno.EIO and f"directory inode {ino}" in str(e.value) and "limit 999" in str(e.value)


def test_full_disk_while_splitting_changes_nothing(tmp_path):
    img = make_image(tmp_path, 1024, "2M")
    fs = open_fs(img)
    fs.mkdir("/d", 0o755)
    n = 0
    with pytest.raises(Ext2Error) as e:
        while True:
            fs.create(f"/d/entry-with-a-long-name-{n:05d}")
            n += 1
            if n % 50 == 0:
                fs.write(fs.create(f"/pad{n}"), 0, b"p" * 40 * 1024)
    assert e.value.errno in (errno.ENOSPC,), e.value
    fs.close()
    fsck_clean(img)
    fs = open_fs(img)
    for i in range(n):
        assert fs.lookup(f"/d/entry-with-a-long-name-{i:05d}")


def test_exo_mkfs_indexes_large_directories(tmp_path):
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    for i in range(500):
        (src / "many" / f"f{i}").write_bytes(b"%d" % i)
    img = tmp_path / "m.img"
    mkfs(img, 8 << 20, from_dir=src, uuid=bytes(range(16)), clock=lambda: 1_700_000_000)
    fsck_clean(str(img))
    out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    assert "dir_index" in out and "signed_directory_hash" in out and "half_md4" in out
    assert "Root node dump" in htree_dump(str(img), "/many")
    assert dcat(str(img), "/many/f321") == b"321"
