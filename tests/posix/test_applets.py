"""Busybox applets under `exo run --disk`, compared byte for byte with the same busybox run natively.

Each case runs in a fresh copy of one input tree: natively in a host directory, under exo on an
ext2 image made from the same tree (libos.fs.mkfs), both with cwd = the tree's `w` directory and
exo's fixed environment plus TZ=UTC0. The image has 4 KiB blocks, as the host's file system, so
directory sizes and du's block counts agree. stdout and the exit status must be equal; cases that change
files print the result (cat, ls) so the comparison covers the files too.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from kit import DEFAULT_ENV, busybox, run_exo

from libos.fs.mkfs import mkfs

MTIME = 1_767_225_600 + 86_400 * 40  # 2026-02-10, fixed: ls -l and stat print it

LINES = "".join(f"line {i} {'abc'[i % 3]}\n" for i in range(1, 41))
TREE = {
    "w/a.txt": LINES,
    "w/b.txt": "pear\napple\nfig\napple\nkiwi\n",
    "w/nums": "".join(f"{n}\n" for n in (5, 3, 11, 3, 8, 1)),
    "w/csv": "a,b,c\n1,2,3\n4,5,6\n",
    "w/sub/c.txt": "in a subdirectory\n",
    "w/sub/deeper/d.txt": "deep\n",
    "w/data.bin": bytes(range(256)) * 4,
    "w/words": "alpha beta\ngamma\n",
    "w/old.txt": "one\ntwo\nthree\n",
    "w/new.txt": "one\n2\nthree\nfour\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",  # ls -l names owners from it (the host has root too)
    "etc/group": "root:x:0:\n",
}

CASES = {
    "echo": "echo hello world",
    "cat": "cat a.txt b.txt",
    "ls": "ls",
    "ls-l": "ls -l a.txt b.txt nums",
    "wc": "wc a.txt b.txt",
    "sort": "sort b.txt",
    "sort-n": "sort -n nums",
    "uniq": "sort b.txt | uniq -c",
    "head": "head -n 3 a.txt",
    "tail": "tail -n 2 a.txt",
    "cut": "cut -d, -f2 csv",
    "tr": "tr a-z A-Z < b.txt",
    "grep": "grep -n 'line 1' a.txt",
    "grep-missing": "grep nothing-here a.txt",
    "sed": "sed -n '2,4p;s/apple/APPLE/p' b.txt",
    "awk": "awk -F, 'NR>1 {s+=$3} END {print s}' csv",
    "md5sum": "md5sum a.txt data.bin",
    "sha256sum": "sha256sum a.txt data.bin",
    "seq": "seq 2 3 20",
    "dd": "dd if=data.bin of=out.bin bs=100 count=3 2>/dev/null; wc -c out.bin",
    "cp": "cp a.txt copy.txt && cmp a.txt copy.txt && ls",
    "mv": "mv b.txt moved.txt && ls && cat moved.txt",
    "rm": "rm a.txt && ls",
    "mkdir-rmdir": "mkdir -p x/y/z && ls -R x && rmdir x/y/z x/y x && ls",
    "ln": "ln -s a.txt link && ln b.txt hard && readlink link && cat link | head -1 && ls -l hard | cut -c1-11",
    "touch": "touch -d '2026-03-01 12:00:00' new && ls -l new",
    "stat": "stat -c '%n %s %a %F' a.txt sub",
    "find": "find . -name '*.txt' | sort",
    "xargs": "find sub -type f | sort | xargs cat",
    "od": "od -A x -t x1z data.bin | head -3",
    "hexdump": "hexdump -C csv",
    "base64": "base64 words && base64 words | base64 -d",
    "expr": "expr 6 \\* 7",
    "test": "test -f a.txt && test ! -d a.txt && echo yes",
    "printf": "printf '%05d|%-4s|%x\\n' 42 ab 255",
    "env": "env | grep -v ^PWD= | sort",
    "true": "true",
    "false": "false",
    "sleep": "sleep 1 && echo awake",
    "yes-head": "yes | head -n 3",
    "tar": "tar cf t.tar sub && tar tf t.tar | sort && rm -r sub && tar xf t.tar && cat sub/c.txt",
    "gzip": "gzip -c a.txt > a.gz && gunzip -c a.gz | md5sum",
    "diff": "diff old.txt new.txt",
    "basename-dirname": "basename /x/y/z.txt .txt; dirname /x/y/z.txt",
    "cmp": "cmp old.txt new.txt",
    "fold": "fold -w 7 words",
    "nl": "nl b.txt",
    "rev": "rev words",
    "du": "du -s sub",
}


def _tree(root) -> None:
    for name, data in TREE.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data.encode() if isinstance(data, str) else data)
    for f in sorted(root.rglob("*"), reverse=True):
        f.chmod(0o755 if f.is_dir() else 0o644)
        os.utime(f, (MTIME, MTIME), follow_symlinks=False)


@pytest.mark.parametrize("script", CASES.values(), ids=CASES.keys())
def test_applet_same_as_native(tmp_path, script):
    bb = busybox()
    host, stage = tmp_path / "host", tmp_path / "stage"
    _tree(host)
    _tree(stage)
    image = tmp_path / "root.img"
    mkfs(image, 16 << 20, block_size=4096, from_dir=stage, clock=lambda: MTIME, uuid=bytes(16))
    env = {**DEFAULT_ENV, "TZ": "UTC0"}
    native = subprocess.run([bb, "sh", "-c", script], capture_output=True, env=env, cwd=host / "w", timeout=60)
    mine = run_exo("run", "--disk", str(image), "--cwd", "/w", "--env", "TZ=UTC0", bb, "sh", "-c", script)
    assert (mine.stdout.decode(errors="replace"), mine.returncode) == \
        (native.stdout.decode(errors="replace"), native.returncode), mine.stderr.decode()


def test_at_least_forty_applets() -> None:
    applets = {s.split()[0] for s in CASES.values()} | {"gunzip", "uniq", "cmp", "readlink", "rmdir", "ln"}
    assert len(applets) >= 40
    assert shutil.which  # the table is the list plus a few


def test_image_is_clean_after_writes(tmp_path):
    e2fsck = shutil.which("e2fsck")
    from conftest import need_tool

    need_tool(e2fsck is not None, "e2fsprogs is not installed")
    stage = tmp_path / "stage"
    _tree(stage)
    image = tmp_path / "root.img"
    mkfs(image, 16 << 20, from_dir=stage, clock=lambda: MTIME, uuid=bytes(16))
    r = run_exo("run", "--disk", str(image), "--cwd", "/w", busybox(), "sh", "-c",
                "mkdir -p n/m && seq 5000 > n/m/big && cp a.txt n/ && rm b.txt && ln -s a.txt s && mv csv n/ "
                "&& mkdir -p /w/n/abs/path")  # an absolute -p walks from "/": mkdir("/") must be EEXIST
    assert r.returncode == 0, r.stderr
    check = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # ... and the writes are there: the last process to end writes the file system back (a
    # Linux program's writes were lost when nothing called sync, and the image stayed "clean").
    listing = subprocess.run(["debugfs", "-R", "ls -p /w/n", str(image)], capture_output=True, text=True).stdout
    assert "/m/" in listing and "/a.txt/" in listing and "/csv/" in listing and "/abs/" in listing, listing
    big = subprocess.run(["debugfs", "-R", "cat /w/n/m/big", str(image)], capture_output=True).stdout
    assert big == b"".join(b"%d\n" % i for i in range(1, 5001))
