"""Lab 4, an instructor's extra check (not shipped with the student tree): stride shares for other
tickets than the ones the student saw (50, 50, 200: 1/6, 1/6, 4/6), each within one slice."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import exo

# The tree whose exo runs the test: its guest apps come with the tests (a student tree, or the installed
# exo when the grader loads the tests from there), wherever this file was copied from.
ROOT = Path(exo.__file__).resolve().parents[1]
SLICE = 20_000


@pytest.mark.lab(4, points=10)
def test_stride_shares_for_other_tickets(tmp_path, boot):
    d = tmp_path / "spinners-50-50-200"
    shutil.copytree(ROOT / "guest_apps" / "labs" / "lab4_spinners", d)
    src = d / "spinners.s"
    text, n = re.subn(r"(?m)^tickets: dq 100, 200, 300$", "tickets: dq 50, 50, 200", src.read_text())
    assert n == 1
    src.write_text(text)
    r = boot(d, slice=SLICE)
    assert r.reports == [] and r.exit_status == 0, [x.render() for x in r.reports]
    counts = [int(x) for x in re.search(rb"counts (\d+) (\d+) (\d+)", r.stdout).groups()]
    total = sum(counts)
    for c, tickets in zip(counts, (50, 50, 200)):
        assert abs(c - total * tickets / 300) * 2 <= SLICE, (counts, tickets)
