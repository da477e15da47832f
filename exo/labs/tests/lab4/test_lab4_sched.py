"""Lab 4 (scheduling): user-level thread creation and switch, preemption on the timer upcall, stride.

Every run uses the virtual clock (1 ns per guest instruction, a timer upcall every ``slice``
instructions), so shares and latencies are exact numbers: the tolerances below are the policy's own
bounds (a thread's lag behind its ideal share under stride is at most about one slice), not allowances
for noise. Handout: docs/labs/lab4.md.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import exo
from exo.labs.plugin import expect

# The tree whose exo runs the test: its guest apps come with the tests (a student tree, or the installed
# exo when the grader loads the tests from there), wherever this file was copied from.
ROOT = Path(exo.__file__).resolve().parents[1]
APPS = ROOT / "guest_apps"
LABS = APPS / "labs"
SLICE = 20_000  # instructions (= ns) per slice for the share tests: 600 slices in spinners' 12 ms
DEFAULT_SLICE = 100_000  # exo.kernel.DEFAULT_SLICE: the latency test runs with it
THREADS = {  # guest_apps/threads/README.md
    "rr": "A0 B0 C0 A1 B1 C1 A2 B2 C2 D0 A3 B3 C3 A4 B4 C4 D1 D2 D3 D4 \ndone\n",
    "stride": "A0 B0 C0 C1 B1 C2 C3 B2 A1 C4 B3 B4 A2 A3 A4 D0 D1 D2 D3 D4 \ndone\n",
}


def with_policy(tmp_path: Path, app: Path, policy: str) -> Path:
    """A copy of ``app`` linked with another [libos] sched implementation (the same sources)."""
    d = tmp_path / f"{app.name}-{policy}"
    shutil.copytree(app, d)
    toml = d / "app.toml"
    text, n = re.subn(r'(?m)^sched = "\w+"', f'sched = "{policy}"', toml.read_text())
    assert n == 1
    toml.write_text(text)
    return d


def clean(r) -> None:
    if r.reports:
        pytest.fail("a guest was stopped:\n" + "\n".join(x.render() for x in r.reports), pytrace=False)
    assert r.exit_status == 0, r.stdout.decode(errors="replace")


def numbers(r, pattern: str) -> list[int]:
    m = re.search(pattern, r.stdout.decode(errors="replace"))
    if m is None:
        pytest.fail(f"expected a line matching {pattern!r}, got:\n{r.stdout.decode(errors='replace')}",
                    pytrace=False)
    return [int(x) for x in m.groups()]


# -------------------------------------------------------- create, save, switch
@pytest.mark.lab(4, points=10)
def test_pingpong_takes_turns(boot):
    """Two threads yield to each other (no preemption): strict turns, and join returns their statuses."""
    r = boot(LABS / "lab4_pingpong")
    clean(r)
    assert r.stdout.decode() == ("main: created 1 2\n" + "".join(f"ping {i}\npong {i}\n" for i in range(3))
                                 + "main: joined 3 4\n")


@pytest.mark.lab(4, points=15)
def test_switch_keeps_registers(boot):
    """A thread starts with its argument and a SysV-aligned stack; across switches it keeps rbx, rbp,
    r12-r15 and xmm0-xmm1 (its FPU/SSE state), and so does main across the joins."""
    r = boot(LABS / "lab4_uregs")
    clean(r)
    expect(r.stdout, r"^uregs: thread 1 -> 0$", r"^uregs: thread 2 -> 0$", r"^uregs: main kept its registers$")


# ------------------------------------------------------------------ preemption
@pytest.mark.lab(4, points=15)
def test_threads_round_robin(boot):
    """guest_apps/threads under rr: the CPU hog D is preempted by the timer and takes its turns."""
    r = boot(APPS / "threads")
    clean(r)
    assert r.stdout.decode() == THREADS["rr"]
    assert r.stats["transitions"]["upcall"] >= 10  # D's slices ended in timer upcalls


@pytest.mark.lab(4, points=10)
def test_preemption_shares_equally_under_rr(tmp_path, boot):
    """Three threads that never yield: only the timer upcall switches them, and rr gives each a third
    (within one slice of CPU time: two instructions per count)."""
    r = boot(with_policy(tmp_path, LABS / "lab4_spinners", "rr"), slice=SLICE)
    clean(r)
    counts = numbers(r, r"counts (\d+) (\d+) (\d+)")
    ideal = sum(counts) / 3
    assert all(abs(c - ideal) * 2 <= SLICE for c in counts), counts
    assert sum(counts) * 2 > 12_000_000 * 0.99  # the spinners had all but the main thread's bits


# ---------------------------------------------------------------------- stride
@pytest.mark.lab(4, points=10)
def test_threads_stride_order(tmp_path, boot):
    """guest_apps/threads under stride: C (300 tickets) finishes first, then B, then A; the hog last."""
    r = boot(with_policy(tmp_path, APPS / "threads", "stride"))
    clean(r)
    assert r.stdout.decode() == THREADS["stride"]


@pytest.mark.lab(4, points=20)
def test_stride_shares_follow_tickets(boot):
    """Tickets 100, 200, 300: CPU shares 1/6, 2/6, 3/6, each within one slice of its ideal over 600 slices."""
    r = boot(LABS / "lab4_spinners", slice=SLICE)
    clean(r)
    counts = numbers(r, r"counts (\d+) (\d+) (\d+)")
    total = sum(counts)
    for c, tickets in zip(counts, (100, 200, 300)):
        assert abs(c - total * tickets / 600) * 2 <= SLICE, (counts, tickets)
    assert total * 2 > 12_000_000 * 0.99


@pytest.mark.lab(4, points=10)
def test_stride_no_credit_for_sleeping(boot):
    """B sleeps 4 ms beside A (same tickets), then both count: from B's wake-up on they share equally
    (within two slices), B does not run alone to make up for its sleep."""
    r = boot(LABS / "lab4_wakeshare", slice=SLICE)
    clean(r)
    at_wake, a, b = numbers(r, r"wakeshare: a_at_wake (\d+) a (\d+) b (\d+)")
    assert abs(at_wake * 2 - 4_000_000) <= 2 * SLICE, at_wake  # A ran alone while B slept
    assert abs((a - at_wake) - b) * 2 <= 2 * SLICE, (at_wake, a, b)


@pytest.mark.lab(4, points=10)
def test_stride_wakeup_latency(boot):
    """An interactive thread beside three hogs (equal tickets): stride runs it within two slices of its
    wake-up (rr makes it wait behind all three hogs, about three)."""
    r = boot(LABS / "lab4_latency")
    clean(r)
    total, worst = numbers(r, r"latency: total (\d+) worst (\d+)")
    assert worst <= 2 * DEFAULT_SLICE, worst
    assert total / 20 <= DEFAULT_SLICE, total
