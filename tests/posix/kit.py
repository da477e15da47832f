"""Helpers for the posix tests: the outside tools (busybox-static, musl-gcc) and running exo.

busybox and musl-gcc are outside tools: need_tool skips without them, and fails under
EXO_REQUIRE_TOOLS=1 as in CI (.ci/run installs busybox-static and musl-tools).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import need_tool
from test_echo import run_exo

__all__ = ["busybox", "musl", "run_exo"]

BUSYBOX = shutil.which("busybox")


def busybox() -> str:
    """The host's busybox (Debian's busybox-static: a static glibc binary)."""
    need_tool(BUSYBOX is not None, "busybox-static is not installed")
    return BUSYBOX


def musl(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    """``source`` built with ``musl-gcc -static -O2 -g``: the path of the binary."""
    need_tool(shutil.which("musl-gcc") is not None, "musl-tools is not installed")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run(["musl-gcc", "-static", "-O2", "-g", *flags, "-o", str(out), str(src)], check=True)
    return out


DEFAULT_ENV = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin", "HOME": "/root", "TERM": "linux", "LANG": "C"}


def native(argv: list[str], stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The same busybox run on the host with exo's fixed environment (exo/build/linux_app.py DEFAULT_ENV)."""
    return subprocess.run(argv, input=stdin, capture_output=True, env=DEFAULT_ENV, cwd=cwd, timeout=60)


def same_as_native(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run ``argv`` (argv[0] a host path) under `exo run` and natively; assert the same stdout and status."""
    mine = run_exo("run", *argv, stdin=stdin)
    theirs = native(list(argv), stdin)
    assert (mine.stdout, mine.returncode) == (theirs.stdout, theirs.returncode), mine.stderr.decode()
    return mine
