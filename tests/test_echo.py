"""guest_apps/echo through the real command line: byte-exact, deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

ECHO = str(ROOT / "guest_apps" / "echo")


def run_exo(*args: str, stdin: bytes = b"", cache: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cache:
        env["EXO_CACHE_DIR"] = cache
    return subprocess.run([sys.executable, "-m", "exo", *args], input=stdin, capture_output=True,
                          cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a\nb\n", id="text"),
        pytest.param(bytes(range(256)) * 3 + b"\0\0end\0", id="binary-with-NULs"),
        pytest.param(b"", id="empty"),
        pytest.param(b"no newline at the end", id="no-final-newline"),
    ],
)
def test_echo_is_byte_exact(data, tmp_path):
    r = run_exo("boot", ECHO, stdin=data, cache=str(tmp_path))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data
    assert r.stderr == b""


def test_echo_one_mebibyte(tmp_path):
    data = os.urandom(1 << 20)
    r = run_exo("boot", ECHO, stdin=data, cache=str(tmp_path))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data


def test_stats_json_is_deterministic(tmp_path):
    data = b"hello\x00world\n" * 1000
    runs = []
    for i in range(2):
        out = tmp_path / f"stats{i}.json"
        r = run_exo("boot", ECHO, "--stats-json", str(out), stdin=data, cache=str(tmp_path))
        assert r.returncode == 0 and r.stdout == data
        runs.append(json.loads(out.read_text()))
    assert runs[0] == runs[1]
    s = runs[0]
    reads = -(-len(data) // 4096) + 1  # full buffers, then the read that sees end of input
    assert s["hypercalls"] == {"console_read": reads, "console_write": reads - 1, "sched_op": 1}
    assert s["transitions"]["hypercall"] == 2 * reads
    assert s["transitions"]["trap"] == 0
    assert s["guest_instructions"] > 0
    assert s["envs"] == [{"id": 1, "name": "echo", "parent": None, "exit": 0, "status": "exited", "fault": None,
                          "instructions": s["guest_instructions"], "transitions": s["envs"][0]["transitions"]}]


def test_second_boot_uses_the_image_cache(tmp_path):
    from exo.build.image import build_image
    from exo.build.manifest import load_manifest

    os.environ["EXO_CACHE_DIR"] = str(tmp_path)
    m = load_manifest(ECHO)
    first = build_image(m)
    second = build_image(m)
    assert not first.from_cache and second.from_cache
    assert first.segments == [type(s)(s.name, s.va, s.data, s.memsz, s.perm) for s in second.segments]
    assert first.symbols == second.symbols and first.entry == second.entry


@pytest.mark.parametrize("damage", [b"", b"\x00garbage", b"[1, 2]", b"\xfa\x08segments"])
def test_a_damaged_cached_image_is_reassembled(tmp_path, monkeypatch, damage):
    from exo.build.image import build_image
    from exo.build.manifest import load_manifest

    monkeypatch.setenv("EXO_CACHE_DIR", str(tmp_path))
    m = load_manifest(ECHO)
    good = build_image(m)
    (cached,) = (tmp_path / "images").iterdir()
    cached.write_bytes(damage)  # torn by a crash, or written by something else
    again = build_image(m)
    assert not again.from_cache and again.segments == good.segments
    assert build_image(m).from_cache  # and cached again


def test_wall_clock_echo(tmp_path):
    r = run_exo("boot", "--clock", "wall", ECHO, stdin=b"wall\n", cache=str(tmp_path))
    assert r.returncode == 0 and r.stdout == b"wall\n"


def test_stats_table_goes_to_stderr(tmp_path):
    r = run_exo("boot", "--stats", ECHO, stdin=b"x", cache=str(tmp_path))
    assert r.stdout == b"x"
    assert b"hypercall" in r.stderr and b"console_read" in r.stderr


def test_interactive_echo_answers_each_line_as_typed(tmp_path):
    """On a terminal, input is not buffered up: each line comes back before the next is typed."""
    import pty
    import select

    master, slave = pty.openpty()
    env = dict(os.environ, EXO_CACHE_DIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-m", "exo", "boot", ECHO], stdin=slave, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(slave)
    try:
        for line in (b"first\n", b"second\n"):
            os.write(master, line)
            got = b""
            while not got.endswith(line):
                ready, _, _ = select.select([p.stdout], [], [], 60)
                assert ready, f"no echo of {line!r} (got {got!r})"
                got += os.read(p.stdout.fileno(), 4096)
            assert got == line
        os.write(master, b"\x04")  # Ctrl-D: end of input
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
