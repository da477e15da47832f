"""Lab 5 (file system): the ext2 library's block map, allocation and directories, graded by guests.

Each test makes an ext2 image with e2fsprogs (mke2fs, debugfs: the student's code does not make the
image it is graded on), boots the file tools of guest_apps/ on it under the virtual clock, checks their
console output, and then checks the image with ``e2fsck -fn``: a file system that reads back right but
has a wrong bitmap, free count, link count or directory record gets no points. Without e2fsprogs the
tests fail (they do not skip): a missing tool must not give points.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import exo
from exo.labs.plugin import expect, need_tool

ROOT = Path(exo.__file__).resolve().parents[1]  # the tree being graded (the grader runs a copy of this file)
APPS = ROOT / "guest_apps"
BIG = bytes(range(256)) * 1200  # 300 KiB: past the 12 direct and 256 single-indirect 1 KiB blocks
MOTD = b"Welcome to exo!\n"
BUDGET = 300_000_000


def need(*tools: str) -> None:
    """A tool the grading needs (e2fsprogs): the test skips (0 points) where it is missing, and
    fails under EXO_REQUIRE_TOOLS=1 (CI)."""
    missing = [t for t in tools if shutil.which(t) is None]
    need_tool(not missing, f"{', '.join(missing)} not installed (e2fsprogs): the file system cannot be graded")


def debugfs(img: Path, *commands: str, write: bool = False) -> str:
    out = ""
    for c in commands:
        r = subprocess.run(["debugfs", *(["-w"] if write else []), "-R", c, str(img)],
                           capture_output=True, text=True, check=True)
        out += r.stdout
    return out


def fsck(img: Path) -> None:
    """``e2fsck -fn``: the image must be exactly consistent (exit status 0, nothing to fix)."""
    r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"e2fsck -fn found problems (exit {r.returncode}):\n{r.stdout}{r.stderr}", pytrace=False)


def make_image(tmp_path: Path) -> Path:
    """An 8 MiB ext2 image (1 KiB blocks) with /etc/motd, /big and lost+found, made by e2fsprogs."""
    need("mke2fs", "debugfs", "e2fsck")
    img = tmp_path / "disk.img"
    img.write_bytes(b"")  # (mke2fs says it creates the file otherwise, even with -q)
    subprocess.run(["mke2fs", "-q", "-t", "ext2", "-b", "1024", "-F", str(img), "8M"], check=True)
    (tmp_path / "motd").write_bytes(MOTD)
    (tmp_path / "big").write_bytes(BIG)
    debugfs(img, "mkdir /etc", f"write {tmp_path / 'motd'} /etc/motd", f"write {tmp_path / 'big'} /big", write=True)
    return img


def names(ls_output: bytes) -> list[str]:
    """The names in ls's output (lines of 'SIZE NAME', directories with a '/')."""
    return [line.split(maxsplit=1)[1] for line in ls_output.decode().splitlines()]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path)


def tool(boot, img: Path, app: str, *args: str):
    """Boot guest_apps/APP with ARGS on the image; it must exit 0 without a fault report."""
    r = boot(APPS / app, disk=str(img), args=list(args), max_instructions=BUDGET)
    if r.reports or r.exit_status != 0:
        why = "; ".join(f"{rep.kind}: {rep.error or rep.reason}" for rep in r.reports) or f"exit status {r.exit_status}"
        pytest.fail(f"{app} {' '.join(args)}: {why}\nconsole:\n{r.stdout.decode(errors='replace')}", pytrace=False)
    return r


@pytest.mark.lab(5, points=10)
def test_read_direct_blocks(boot, image):
    """bmap: a one-block file, through a direct pointer."""
    assert tool(boot, image, "cat", "/etc/motd").stdout == MOTD


@pytest.mark.lab(5, points=10)
def test_read_indirect_blocks(boot, image):
    """bmap: a 300 KiB file, through the single and double indirect blocks."""
    out = tool(boot, image, "cat", "/big").stdout
    assert len(out) == len(BIG), f"read {len(out)} bytes of {len(BIG)}"
    first = next((i for i, (a, b) in enumerate(zip(out, BIG)) if a != b), None)
    assert first is None, f"byte {first} (file block {first // 1024}) differs"


@pytest.mark.lab(5, points=15)
def test_overwrite_allocates_and_frees_blocks(boot, image, tmp_path):
    """balloc, bfree, bmap allocating: cp onto an existing file truncates it (its block is freed) and
    writes 300 blocks (and the indirect blocks that map them); no inode or directory entry changes."""
    tool(boot, image, "cp", "/big", "/etc/motd")
    fsck(image)
    dumped = tmp_path / "motd.out"
    debugfs(image, f"dump /etc/motd {dumped}")
    assert dumped.read_bytes() == BIG, "the copy read back by debugfs differs"
    assert tool(boot, image, "cat", "/etc/motd").stdout == BIG


@pytest.mark.lab(5, points=15)
def test_create_file(boot, image, tmp_path):
    """ialloc, dir-add: cp to a new name makes an inode and a directory entry."""
    tool(boot, image, "cp", "/etc/motd", "/etc/issue")
    tool(boot, image, "cp", "/etc/motd", "/hello")
    fsck(image)
    expect(tool(boot, image, "ls", "/etc").stdout, r"^ +16 motd$", r"^ +16 issue$")
    assert "hello" in debugfs(image, "ls /")
    assert tool(boot, image, "cat", "/hello").stdout == MOTD


@pytest.mark.lab(5, points=15)
def test_mkdir(boot, image):
    """mkdir, dir-add: nested directories with '.' and '..', the right link counts (e2fsck checks them)."""
    tool(boot, image, "mkdir", "/home", "/home/user", "/home/guest")
    tool(boot, image, "cp", "/etc/motd", "/home/user/motd")
    fsck(image)
    expect(tool(boot, image, "ls", "/home").stdout, r"^ +\d+ user/$", r"^ +\d+ guest/$")
    assert "Links: 4" in debugfs(image, "stat /home")  # its name, its '.', two subdirectories' '..'
    assert tool(boot, image, "cat", "/home/user/motd").stdout == MOTD


@pytest.mark.lab(5, points=15)
def test_rm_frees_inode_blocks_and_entry(boot, image):
    """dir-remove, ifree, bfree: removing files gives back their inode and every block."""
    free_before = debugfs(image, "stats").split("Free blocks:")[1].split()[0]
    tool(boot, image, "cp", "/etc/motd", "/etc/a")
    tool(boot, image, "cp", "/etc/motd", "/etc/b")
    tool(boot, image, "rm", "/etc/a", "/big")  # one entry in the middle of a block, one at the end
    fsck(image)
    assert names(tool(boot, image, "ls", "/etc").stdout) == ["motd", "b"]
    assert "big" not in names(tool(boot, image, "ls").stdout)
    free_after = debugfs(image, "stats").split("Free blocks:")[1].split()[0]
    # /big's 300 data blocks and 3 indirect blocks came back; /etc/b holds one block.
    assert int(free_after) == int(free_before) + 303 - 1, (free_before, free_after)


@pytest.mark.lab(5, points=20)
def test_fsstress(boot, image):
    """Everything: fsstress creates, writes, renames and removes files and directories and verifies them."""
    r = tool(boot, image, "fsstress")
    expect(r.stdout, r"^fsstress: 48 written, 24 renamed, 16 removed, 32 verified, checksum ")
    assert b"FAILURES" not in r.stdout
    fsck(image)
