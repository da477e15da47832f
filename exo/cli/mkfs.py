"""``exo mkfs IMAGE --size N``: an ext2 image made in pure Python (libos/fs/mkfs.py).

``--busybox [PATH]`` makes a root for `exo run --disk` (docs/posix.md): /bin/busybox (the host's
busybox-static, or PATH), a symbolic link for each of its applets where ``busybox --list-full``
puts it (/bin/ls, /usr/bin/awk...), /etc/passwd and /etc/group, /root, /dev, /proc and a
world-writable /tmp; with ``--from DIR`` too, DIR's files are added on top.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="IMAGE --size N[K|M|G] [--from DIR] [--busybox [PATH]] [--block-size N] [-j [--journal-blocks N]]")


def busybox_root(stage: Path, busybox: str) -> None:
    """Fill ``stage`` with a busybox root (see the module's docstring)."""
    from exo.cli.run import stage_root

    try:
        listed = subprocess.run([busybox, "--list-full"], capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemExit(f"exo mkfs: error: {busybox}: cannot list its applets ({e})") from None
    stage_root(stage)
    shutil.copyfile(busybox, stage / "bin" / "busybox")
    (stage / "bin" / "busybox").chmod(0o755)
    for line in listed.decode().split():
        link = stage / line.strip("/")
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    from libos.fs.mkfs import main

    rest = [a for a in args.rest if a != "--"]
    if "--busybox" not in rest:
        return main(rest)
    i = rest.index("--busybox")
    explicit = i + 1 < len(rest) and _is_elf(rest[i + 1])  # `--busybox PATH`, else the host's busybox
    busybox = rest[i + 1] if explicit else shutil.which("busybox")
    del rest[i : i + 1 + explicit]
    if busybox is None:
        print("exo mkfs: error: --busybox: no busybox on PATH (apt-get install busybox-static, or give its path)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        stage = Path(d) / "root"
        busybox_root(stage, busybox)
        if "--from" in rest:  # the user's files on top of the busybox root
            j = rest.index("--from")
            if j + 1 >= len(rest):
                print("exo mkfs: error: --from needs a directory", file=sys.stderr)
                return 2
            shutil.copytree(rest[j + 1], stage, symlinks=True, dirs_exist_ok=True)
            del rest[j : j + 2]
        return main([*rest, "--from", str(stage)])
