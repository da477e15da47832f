"""Lab 3, an instructor's extra checks (not shipped with the student tree).

Forks by forked children (the JOS prime sieve: each filter forks the next, so a child forks pages
it only inherited, which it may not map by frame number and must pass on with page_map), and the
eager fork (JOS dumbfork) on the same walk.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import exo

# The tree whose exo runs the test: its guest apps come with the tests (a student tree, or the installed
# exo when the grader loads the tests from there), wherever this file was copied from.
ROOT = Path(exo.__file__).resolve().parents[1]
APPS = ROOT / "guest_apps"


def first_primes(n: int) -> list[int]:
    out: list[int] = []
    k = 2
    while len(out) < n:
        if all(k % p for p in out):
            out.append(k)
        k += 1
    return out


@pytest.mark.lab(3, points=10)
def test_prime_sieve_forks_from_forked_children(boot):
    r = boot(APPS / "primes")
    assert r.reports == [], [x.render() for x in r.reports]
    assert [int(x) for x in r.stdout.split()] == first_primes(100)
    assert len(r.stats["envs"]) == 101 and all(e["exit"] == 0 for e in r.stats["envs"])


@pytest.mark.lab(3, points=5)
def test_eager_fork_gives_the_same_isolation(tmp_path, boot):
    d = tmp_path / "cowiso-eager"
    shutil.copytree(APPS / "labs" / "lab3_cowiso", d)
    toml = d / "app.toml"
    toml.write_text(re.sub(r'(?m)^memory = "cow"', 'memory = "eager"', toml.read_text()))
    r = boot(d)
    assert r.reports == [], [x.render() for x in r.reports]
    assert r.stdout == (b"child: sees the values of fork time\nchild: own writes kept\nparent: private\n")
    child = r.stats["envs"][1]
    assert child["transitions"]["upcall"] == 0  # every writable page was copied at fork: no COW fault
