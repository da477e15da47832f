"""The hello module, tested as its users meet it: an app that links it, booted by `exo boot`.

Run with exo and this package installed side by side (``pip install -e .`` here), or
with both on PYTHONPATH: ``python -m pytest tests``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "guest" / "hello"


def boot(app: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXO_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "exo", "boot", str(app)], capture_output=True,
                          stdin=subprocess.DEVNULL, env=env, timeout=120)


def variant(tmp_path: Path, old: str, new: str) -> Path:
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    toml = app / "app.toml"
    toml.write_text(toml.read_text().replace(old, new))
    return app


def test_an_app_that_links_hello_greets(tmp_path: Path) -> None:
    r = boot(APP, tmp_path)
    assert r.stdout == b"hello, exo\nhello, again\n", r.stderr.decode()
    assert r.returncode == 0  # the module counted both greetings


def test_the_shout_implementation_runs_the_same_binary(tmp_path: Path) -> None:
    r = boot(variant(tmp_path, 'hello = "plain"', 'hello = "shout"'), tmp_path)
    assert (r.stdout, r.returncode) == (b"HELLO, EXO\nHELLO, AGAIN\n", 0), r.stderr.decode()


def test_an_app_that_does_not_link_hello_is_told_how(tmp_path: Path) -> None:
    r = boot(variant(tmp_path, 'hello = "plain"', 'console = "buffered"'), tmp_path)
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert b"calls hello.greet, but the app does not link the hello module" in r.stderr
    assert b'"plain", "shout"' in r.stderr


def test_an_unknown_implementation_names_the_choices(tmp_path: Path) -> None:
    r = boot(variant(tmp_path, 'hello = "plain"', 'hello = "whisper"'), tmp_path)
    assert r.returncode == 2 and b"module 'hello' has no implementation 'whisper' (choose: plain, shout)" in r.stderr
