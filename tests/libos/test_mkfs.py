"""The pure-Python mkfs: images pass e2fsck -fn and carry a host tree that debugfs reads back."""

from __future__ import annotations

import os
import shutil
import stat as st
import subprocess

import pytest
from conftest import need_tool

from libos.fs.blockio import FileBlockIO
from libos.fs.ext2 import Ext2, Ext2Error
from libos.fs.mkfs import MkfsError, main, mkfs, parse_size

CLOCK = 1_700_000_000


def need_e2fsprogs() -> None:
    need_tool(all(shutil.which(t) for t in ("debugfs", "e2fsck")), "e2fsprogs is not installed")


def fsck_clean(img: str) -> str:
    r = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def debugfs_r(img: str, cmd: str) -> bytes:
    return subprocess.run(["debugfs", "-R", cmd, img], capture_output=True, check=True).stdout


def make_tree(root, bs: int) -> dict[str, bytes]:
    files = {
        "hello.txt": b"hello, ext2\n",
        "empty": b"",
        "docs/readme.md": b"# readme\n" * 50,
        "docs/deep/er/big.bin": bytes((i * 31 + (i >> 9)) & 0xFF for i in range((12 + bs // 4 + 3) * bs + 17)),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "emptydir").mkdir()
    os.symlink("hello.txt", root / "short-link")
    os.symlink("/docs/deep/er/" + "../" * 30 + "big.bin", root / "long-link")
    os.link(root / "hello.txt", root / "docs" / "hard")
    os.chmod(root / "docs" / "readme.md", 0o600)
    return files


@pytest.mark.parametrize("bs", [1024, 4096])
def test_mkfs_from_dir_passes_fsck_and_debugfs_reads_it(tmp_path, bs):
    need_e2fsprogs()
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src, bs)
    img = str(tmp_path / "fs.img")
    mkfs(img, 16 << 20, block_size=bs, from_dir=str(src), clock=lambda: CLOCK)
    fsck_clean(img)
    for rel, data in files.items():
        assert debugfs_r(img, f"cat /{rel}") == data, rel
    out = debugfs_r(img, "stat /short-link").decode()
    assert 'Fast link dest: "hello.txt"' in out
    assert b"lost+found" in debugfs_r(img, "ls /")
    assert b"Links: 2" in debugfs_r(img, "stat /hello.txt")
    fs = Ext2.open(FileBlockIO(img), clock=lambda: CLOCK)
    assert fs.lookup("/docs/hard") == fs.lookup("/hello.txt")
    assert fs.readlink("/long-link").endswith("big.bin")
    assert st.S_IMODE(fs.stat("/docs/readme.md").mode) == 0o600
    assert fs.readdir("/emptydir") == [(".", fs.lookup("/emptydir"), 2), ("..", 2, 2)]
    # the library keeps writing into a mkfs image cleanly
    fs.rename("/docs", "/emptydir/docs")
    fs.unlink("/hello.txt")
    fs.sync()
    fsck_clean(img)


@pytest.mark.parametrize("size,bs", [(20 << 20, 1024), ((8192 * 2 + 30) * 1024, 1024), (40 << 20, 4096),
                                     (200 << 10, 1024)])
def test_mkfs_layouts_pass_fsck(tmp_path, size, bs):
    """Several groups (with sparse_super backups), a runt last group, a tiny image."""
    need_e2fsprogs()
    img = str(tmp_path / "fs.img")
    mkfs(img, size, block_size=bs, clock=lambda: CLOCK)
    fsck_clean(img)
    fs = Ext2.open(FileBlockIO(img), clock=lambda: CLOCK)
    ino = fs.create("/data")
    n = min(fs.statfs()["free_blocks"] // 2, 3000) * bs
    assert fs.write(ino, 0, b"z" * n) == n
    for i in range(20):
        fs.mkdir(f"/d{i}")
    fs.sync()
    fsck_clean(img)


def test_mkfs_pure_python_roundtrip_and_determinism(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = make_tree(src, 1024)
    a, b = str(tmp_path / "a.img"), str(tmp_path / "b.img")
    for img in (a, b):
        # The image records each file's access time, and the first mkfs reading the tree moves
        # it (relatime, whenever atime <= mtime): the same inputs means the same times, so set them.
        for p in [src, *src.rglob("*")]:
            os.utime(p, (CLOCK - 7, CLOCK - 9), follow_symlinks=False)
        mkfs(img, 4 << 20, from_dir=str(src), clock=lambda: CLOCK, uuid=bytes(16))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), "same inputs and clock: same image"
    fs = Ext2.open(FileBlockIO(a))
    for rel, data in files.items():
        assert fs.read(fs.lookup("/" + rel), 0, len(data) + 10) == data
    assert fs.stat("/hello.txt").nlink == 2
    assert fs.stat("/hello.txt").mtime == int(os.stat(src / "hello.txt").st_mtime) == CLOCK - 9
    assert fs.stat("/lost+found").ino == 11


def test_mkfs_too_small_for_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"\x01" * (200 << 10))  # not zeros: those would stay a hole
    with pytest.raises(Ext2Error):
        mkfs(str(tmp_path / "x.img"), 128 << 10, from_dir=str(src))
    with pytest.raises(MkfsError):
        mkfs(str(tmp_path / "y.img"), 10 << 10)


def test_parse_size():
    assert parse_size("64M") == 64 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("1G") == 1 << 30
    assert parse_size("2MiB") == 2 << 20
    assert parse_size("4096") == 4096
    for bad in ("", "M", "-1M", "12Q", "0"):
        with pytest.raises(MkfsError):
            parse_size(bad)


def test_main(tmp_path, capsys):
    img = str(tmp_path / "cli.img")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("cli\n")
    assert main([img, "--size", "4M", "--from", str(src), "--block-size", "1024"]) == 0
    fs = Ext2.open(FileBlockIO(img))
    assert fs.read(fs.lookup("/f"), 0, 100) == b"cli\n"
    capsys.readouterr()
    for argv in ([img, "--size", "12Q"], [img], [img, "--size", "4M", "--block-size", "512"],
                 [img, "--size", "4M", "--from", str(tmp_path / "missing")], [img, "--size", "1K"],
                 [str(tmp_path / "no" / "such" / "dir" / "x.img"), "--size", "4M"], [img, "--bogus"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("exo mkfs: error:") and err.count("\n") == 1, err


def _special_tree(root) -> list[str]:
    """Sparse and zero-filled files, a FIFO, a socket and (as root) device nodes."""
    import socket

    root.mkdir()
    with open(root / "sparse", "wb") as f:
        f.seek(10 << 20)
        f.write(b"x")
    (root / "zeros").write_bytes(bytes(100_000))
    (root / "mixed").write_bytes(b"a" * 5000 + bytes(20_000) + b"b" * 3000)
    os.mkfifo(root / "fifo")
    names = ["sparse", "zeros", "mixed", "fifo", "sock"]
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock"))
    s.close()
    if os.geteuid() == 0:  # device nodes need CAP_MKNOD: CI runs as root
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
        os.mknod(root / "wide", 0o20600, os.makedev(300, 70000))  # the new 32-bit encoding
        os.mknod(root / "disk", 0o60600, os.makedev(8, 1))
        names += ["null", "wide", "disk"]
    return names


def test_mkfs_from_dir_matches_mke2fs_d_for_holes_and_special_files(tmp_path):
    """Issue 16: a block of zeros stays a hole and FIFOs, sockets and device nodes are made, so
    each inode's type, block count and device number equal what `mke2fs -d` makes of the same tree."""
    need_e2fsprogs()
    need_tool(shutil.which("mke2fs") is not None, "e2fsprogs (mke2fs) is not installed")
    tree = tmp_path / "tree"
    names = _special_tree(tree)
    mine, theirs = str(tmp_path / "exo.img"), str(tmp_path / "mke2fs.img")
    mkfs(mine, 32 << 20, block_size=1024, from_dir=tree)
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "1024", "-d", str(tree), "-F", theirs, "32M"],
                   check=True, capture_output=True)
    fsck = subprocess.run(["e2fsck", "-fn", mine], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout.decode()

    def facts(img: str, name: str) -> list[str]:
        out = debugfs_r(img, f"stat /{name}").decode()
        return [line.split("Flags")[0].split("Inode:")[-1].split(maxsplit=1)[-1].strip() if "Type" in line
                else line.strip() for line in out.splitlines()
                if "Type:" in line or "Blockcount" in line or "major/minor" in line]

    for name in names:
        assert facts(mine, name) == facts(theirs, name), name
    for name in ("sparse", "zeros", "mixed"):
        assert debugfs_r(mine, f"cat /{name}") == (tree / name).read_bytes(), name
    assert "Blockcount: 0" in debugfs_r(mine, "stat /zeros").decode()


def _tree(root):
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"alpha\n" * 100)
    (root / "b.bin").write_bytes(bytes(range(256)) * 40)
    os.utime(root / "b.bin", (1_800_000_000, 1_900_000_000))  # mtime after the timestamp: clamped
    return root


def test_reproducible_images_from_timestamp_and_uuid(tmp_path, monkeypatch, capsys):
    """The same files, --timestamp and --uuid give byte-identical images, even after the files
    were read in between (atimes changed); SOURCE_DATE_EPOCH alone does too (the UUID then comes
    from it); without either two images differ. Bad values are one-line errors."""
    src = _tree(tmp_path / "src")
    args = ["--size", "4M", "--from", str(src), "--timestamp", "1700000000",
            "--uuid", "12345678-1234-5678-1234-567812345678"]
    assert main([str(tmp_path / "a.img"), *args]) == 0
    for p in src.rglob("*"):
        if p.is_file():
            p.read_bytes()
            os.utime(p, (1_750_000_000, os.stat(p).st_mtime))  # a later access time
    assert main([str(tmp_path / "b.img"), *args]) == 0
    a, b = (tmp_path / "a.img").read_bytes(), (tmp_path / "b.img").read_bytes()
    assert a == b
    fs = Ext2.open(FileBlockIO(str(tmp_path / "a.img")), readonly=True)
    assert bytes(fs.sb.s_uuid).hex() == "12345678123456781234567812345678"
    assert fs.sb.s_mkfs_time == 1_700_000_000
    st_b = fs.stat("/b.bin")
    assert st_b.mtime == st_b.atime == 1_700_000_000  # clamped to the timestamp
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    assert main([str(tmp_path / "c.img"), "--size", "4M", "--from", str(src)]) == 0
    assert main([str(tmp_path / "d.img"), "--size", "4M", "--from", str(src)]) == 0
    assert (tmp_path / "c.img").read_bytes() == (tmp_path / "d.img").read_bytes()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert main([str(tmp_path / "e.img"), "--size", "4M", "--from", str(src)]) == 0
    assert (tmp_path / "e.img").read_bytes() != (tmp_path / "c.img").read_bytes()
    capsys.readouterr()
    for bad, words in ((["--uuid", "not-a-uuid"], "--uuid 'not-a-uuid' is not a UUID"),
                       (["--timestamp", "yesterday"], "--timestamp 'yesterday' is not a time"),
                       (["--timestamp", str(1 << 32)], "is not a time")):
        assert main([str(tmp_path / "x.img"), "--size", "4M", *bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "-5")
    assert main([str(tmp_path / "y.img"), "--size", "4M"]) == 2
    assert "SOURCE_DATE_EPOCH '-5' is not a time" in capsys.readouterr().err
