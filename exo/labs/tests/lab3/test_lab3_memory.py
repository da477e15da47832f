"""Lab 3 (user-level memory): the libOS page-fault handler, the demand-zero heap and copy-on-write fork.

Each test boots guest apps through the public API under the virtual clock (the ``boot`` fixture), so
every count below is exact: the same submission always gets the same score. Handout: docs/labs/lab3.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import exo
from exo.labs.plugin import expect

# The tree whose exo runs the test: its guest apps come with the tests (a student tree, or the installed
# exo when the grader loads the tests from there), wherever this file was copied from.
ROOT = Path(exo.__file__).resolve().parents[1]
APPS = ROOT / "guest_apps"
LABS = APPS / "labs"
FORKTREE = "".join(f"{i}: I am '{bin(i)[3:]}'\n" for i in range(1, 16)).encode()
HEAP_PAGES = 64  # guest_apps/labs/lab3_heapzero and lab3_cowiso


def envs(r) -> dict[str, list[dict]]:
    """The run's environments by app name, in creation order (a forked child is named "app.N")."""
    out: dict[str, list[dict]] = {}
    for e in r.stats["envs"]:
        out.setdefault(e["name"].split(".")[0], []).append(e)
    return out


def no_reports(r) -> None:
    if r.reports:
        pytest.fail("a guest was stopped:\n" + "\n".join(x.render() for x in r.reports), pytrace=False)


# ------------------------------------------------------------------------- fork
@pytest.mark.lab(3, points=15)
def test_forktree(boot):
    """JOS forktree: 15 environments, each a copy-on-write child of its parent, printed breadth first;
    the same run twice gives the same output and the same counts."""
    r = boot(APPS / "forktree")
    no_reports(r)
    assert r.stdout == FORKTREE, r.stdout.decode(errors="replace")
    assert len(r.stats["envs"]) == 15
    assert all(e["exit"] == 0 for e in r.stats["envs"]), r.stats["envs"]
    again = boot(APPS / "forktree")
    assert again.stdout == r.stdout
    assert again.stats["hypercalls"] == r.stats["hypercalls"]
    assert again.stats["envs"] == r.stats["envs"]


@pytest.mark.lab(3, points=10)
def test_cowtest(boot):
    """A .data word and a heap word written by the child after fork stay the parent's in the parent."""
    r = boot(APPS / "cowtest")
    no_reports(r)
    expect(r.stdout, r"^child: data=10 heap=20$", r"^parent: data=1 heap=2$",
           r"^parent and child see private copies after fork$")
    assert r.exit_status == 0


@pytest.mark.lab(3, points=10, extra=True)
def test_extra_cowtest_through_a_pager_server(boot):
    """Under the microkernel structure the faults go to a pager server, which grants the client its
    pages (page_grant): the same program, the same private copies, every fault served by the pager."""
    r = boot(APPS / "cowtest", structure="microkernel")
    no_reports(r)
    expect(r.stdout, r"^child: data=10 heap=20$", r"^parent: data=1 heap=2$",
           r"^parent and child see private copies after fork$")
    assert r.exit_status == 0
    assert r.stats["hypercalls"].get("page_grant", 0) >= 4, r.stats["hypercalls"]


# ------------------------------------------------------------------ demand zero
@pytest.mark.lab(3, points=15)
def test_heap_demand_zero(boot):
    """malloc'd pages read as zero on first touch and keep what is written to them."""
    r = boot(LABS / "lab3_heapzero")
    no_reports(r)
    expect(r.stdout, rf"^heap: {HEAP_PAGES} pages read as zero$",
           rf"^heap: sum of page indexes {sum(range(HEAP_PAGES))}$")
    assert r.exit_status == 0


@pytest.mark.lab(3, points=10)
def test_heap_is_lazy(boot):
    """One fault per heap page touched, the first time only (read then written: one fault), and none
    for the block the guest never touches: the heap is mapped on demand, not at malloc."""
    r = boot(LABS / "lab3_heapzero")
    no_reports(r)
    [env] = envs(r)["lab3_heapzero"]
    assert env["exit"] == 0
    assert env["transitions"]["upcall"] == HEAP_PAGES, env["transitions"]
    assert env["transitions"]["trap"] == HEAP_PAGES, env["transitions"]
    # exception stack + mmu_update scratch page + one frame per touched page, nothing for the other block
    assert r.stats["hypercalls"]["page_alloc"] == HEAP_PAGES + 3, r.stats["hypercalls"]


# ---------------------------------------------------------------- copy on write
@pytest.mark.lab(3, points=10)
def test_cow_child_sees_fork_time(boot):
    """The child sees every .bss and heap page as it was at fork, not the parent's later write,
    and keeps its own writes."""
    r = boot(LABS / "lab3_cowiso")
    no_reports(r)
    expect(r.stdout, r"^child: sees the values of fork time$", r"^child: own writes kept$")


@pytest.mark.lab(3, points=10)
def test_cow_parent_private(boot):
    """None of the child's writes reaches the parent, and the parent's own write after fork stays."""
    r = boot(LABS / "lab3_cowiso")
    no_reports(r)
    expect(r.stdout, r"^child: own writes kept$", r"^parent: private$")
    assert r.exit_status == 0
    assert [e["exit"] for e in envs(r)["lab3_cowiso"]] == [0, 0]


@pytest.mark.lab(3, points=10)
def test_cow_is_lazy(boot):
    """fork copies no page: the child takes a copy-on-write fault for each page it writes (three,
    plus its stack), the parent for the one it writes, and no fresh frame is spent on the 64 heap
    pages nobody writes after fork (an eager copy spends 64 more)."""
    r = boot(LABS / "lab3_cowiso")
    no_reports(r)
    expect(r.stdout, r"^parent: private$")
    parent, child = envs(r)["lab3_cowiso"]
    assert 3 <= child["transitions"]["upcall"] <= 6, child["transitions"]
    # the parent: one demand-zero fault per heap page before fork, then its own copy-on-write faults
    assert HEAP_PAGES + 1 <= parent["transitions"]["upcall"] <= HEAP_PAGES + 4, parent["transitions"]
    assert r.stats["hypercalls"]["page_alloc"] <= HEAP_PAGES + 16, r.stats["hypercalls"]


# ------------------------------------------------------------------ bad faults
def stopped_beside_witness(boot, app: str):
    """Boot ``app`` with the witness: ``app`` must be stopped by one fault report, the witness must
    finish. Returns the report."""
    r = boot(LABS / app, LABS / "lab3_witness")
    expect(r.stdout, r"^witness: still running$")
    e = envs(r)
    assert e["lab3_witness"][0]["exit"] == 0, e["lab3_witness"]
    assert len(r.reports) == 1, [x.render() for x in r.reports]
    [report] = r.reports
    assert report.env_name == app, report.render()
    assert e[app][0]["status"] != "exited", e[app]
    return report


@pytest.mark.lab(3, points=10)
def test_rodata_write_is_reported(boot):
    """A write to read-only .rodata is not the handler's to fix: the exokernel stops the guest with the
    standard page-fault report at the faulting instruction, registers intact; the witness runs on."""
    report = stopped_beside_witness(boot, "lab3_badwrite")
    assert report.kind == "page fault (#PF)", report.render()
    assert report.symbol == "ro_write", report.render()
    assert report.error == "user write of a protected page", report.render()
    assert report.fault_address == 0x401000, report.render()  # `constant`: the first .rodata page
    assert report.registers["RBX"] == 0xBAD, report.render()


@pytest.mark.lab(3, points=10)
def test_beyond_break_is_reported(boot):
    """Demand-zero stops at the break: a read above it is stopped with the standard report."""
    report = stopped_beside_witness(boot, "lab3_beyondbrk")
    assert report.kind == "page fault (#PF)", report.render()
    assert report.symbol == "beyond", report.render()
    assert report.error == "user read of a not-present page", report.render()
    # the heap's base (LIBOS_DATA + 2 * 256 MiB + 64 MiB) + two pages: the page after a 0x1800-byte block
    assert report.fault_address == 0x7000_2400_2000, report.render()
