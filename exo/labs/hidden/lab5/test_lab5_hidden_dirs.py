"""Lab 5, hidden: a directory of several blocks, thinned out and refilled.

debugfs makes /many with 120 entries with long names (five 1 KiB blocks); one rm removes every other
one (each removal merges an entry into the record before it, in every block); mkdir and cp then put new
names into the gaps. e2fsck must find the directory exactly consistent and ls must list the survivors
and the new names.
"""

from __future__ import annotations

import subprocess

import pytest

from exo.labs.tests.lab5.test_lab5_fs import MOTD, fsck, make_image, names, tool

N = 120


def name(i: int) -> str:
    return f"a-file-with-a-rather-long-name-{i:03d}"


@pytest.mark.lab(5, points=10)
def test_directory_of_several_blocks_thinned_and_refilled(boot, tmp_path):
    img = make_image(tmp_path)
    cmds = tmp_path / "cmds"
    cmds.write_text("mkdir /many\n" + "".join(f"write {tmp_path / 'motd'} /many/{name(i)}\n" for i in range(N)))
    subprocess.run(["debugfs", "-w", "-f", str(cmds), str(img)], capture_output=True, check=True)
    tool(boot, img, "rm", *(f"/many/{name(i)}" for i in range(0, N, 2)))
    tool(boot, img, "mkdir", *(f"/many/d{i:02d}" for i in range(30)))
    tool(boot, img, "cp", "/etc/motd", "/many/last")
    fsck(img)
    listed = names(tool(boot, img, "ls", "/many").stdout)
    want = {name(i) for i in range(1, N, 2)} | {f"d{i:02d}/" for i in range(30)} | {"last"}
    assert sorted(listed) == sorted(want)
    assert tool(boot, img, "cat", "/many/last").stdout == MOTD
