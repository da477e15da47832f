"""README's quick start and CI run the same test command; the main job works as written."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s*(python .+|pip .+|printf .+)$", quick, re.M)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in _readme_commands()


def test_readme_boot_command_works():
    boot = next(c for c in _readme_commands() if "exo boot guest_apps/echo" in c)
    boot = boot.split("&&")[-1].strip()  # the install step has been done by the test run
    r = subprocess.run(["bash", "-c", boot], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"hello, exo\n"
