"""Lab 1 graded tests: guests in assembly and C, a hypercall added through the ABI table, and a
guest fixed by reading its fault reports (docs/labs/lab1.md).

Guest paths are relative to the tree being graded (run from its root), so a student tree is
graded on its own guests and exokernel.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from exo.labs.plugin import expect, need_tool

WC = "guest_apps/labs/lab1_wc"
ENVINFO = "guest_apps/labs/lab1_envinfo"
ENVINFO_C = "guest_apps/labs/lab1_envinfo_c"
FAULT = "guest_apps/labs/lab1_fault"
WITNESS = "guest_apps/labs/witness"

EPERM, ESRCH, EFAULT = 1, 3, 14
RUNNABLE, NOT_RUNNABLE = 1, 2
ENV_INFO = struct.Struct("<QQQQ32s")  # exo/abi.py ENV_INFO_SIZE


def wc_of(data: bytes) -> str:
    """What wc(1) prints for data: lines, words, bytes."""
    lines = data.count(b"\n")
    return f"{lines} {len(data.split())} {len(data)}\n"


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# ------------------------------------------------------------------ wc (assembly)
@pytest.mark.lab(1, points=10)
def test_wc_counts_one_line(boot):
    r = boot(WC, stdin=b"hello exo world\n")
    assert r.stdout.decode() == "1 3 16\n" and r.exit_status == 0 and not r.reports


@pytest.mark.lab(1, points=5)
def test_wc_empty_input(boot):
    r = boot(WC, stdin=b"")
    assert r.stdout.decode() == "0 0 0\n" and r.exit_status == 0


@pytest.mark.lab(1, points=10)
def test_wc_every_kind_of_space(boot):
    data = b"  one\ttwo\r\nthree\x0bfour\x0cfive\n\n six  seven"  # no newline at the end
    r = boot(WC, stdin=data)
    assert r.stdout.decode() == wc_of(data) == "3 7 39\n"


@pytest.mark.lab(1, points=10)
def test_wc_input_longer_than_one_read(boot):
    rng = random.Random(1)  # seeded: the same input every run
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(1, 12))) for _ in range(6000)]
    data = b"".join(w + rng.choice([b" ", b"\n", b"\t", b"  "]) for w in words)
    assert len(data) > 3 * 4096  # several console_read calls; words cross the buffer's end
    r = boot(WC, stdin=data)
    assert r.stdout.decode() == wc_of(data)


# ------------------------------------------------------------- the env_info hypercall
def envinfo_results(boot) -> dict:
    """Boot lab1_envinfo with a sibling (the witness) and decode what it wrote (see envinfo.s)."""
    r = boot(ENVINFO, WITNESS)
    assert r.exit_status == 0 and not r.reports, (r.exit_status, [x.summary for x in r.reports])
    out = r.stdout
    assert out.endswith(b"witness ok\n"), out
    pos = 0

    def u64() -> int:
        nonlocal pos
        pos += 8
        return struct.unpack_from("<Q", out, pos - 8)[0]

    def record() -> tuple:
        nonlocal pos
        pos += ENV_INFO.size
        rec = ENV_INFO.unpack_from(out, pos - ENV_INFO.size)
        return rec[:4] + (rec[4].rstrip(b"\0").decode(errors="replace"),)

    res: dict = {}
    res["self_rax"], res["self"] = _signed(u64()), record()
    res["byid_rax"], res["byid"] = _signed(u64()), record()
    for key in ("nobody", "sibling", "unmapped", "offtop"):
        res[key] = _signed(u64())
    res["canary"] = u64()
    res["child_id"] = u64()
    res["child_rax"], res["child"] = _signed(u64()), record()
    assert out[pos:] == b"witness ok\n", out[pos:]
    return res


def image_pages(app: str) -> int:
    """Pages an app's environment has mapped at start: its image, stack, info and hypercall pages."""
    from exo.abi import PAGE_SIZE, STACK_PAGES
    from exo.api import build

    segs = build(app).image.segments
    return sum(-(-s.memsz // PAGE_SIZE) for s in segs) + STACK_PAGES + 2


@pytest.mark.lab(1, points=10)
def test_env_info_describes_the_caller(boot):
    res = envinfo_results(boot)
    assert res["self_rax"] == 0, f"env_info(0, buf) returned {res['self_rax']}"
    assert res["self"] == (1, 0, RUNNABLE, image_pages(ENVINFO), "lab1_envinfo")


@pytest.mark.lab(1, points=5)
def test_env_info_names_by_id(boot):
    res = envinfo_results(boot)
    assert (res["byid_rax"], res["byid"]) == (0, res["self"]), "env_info(env_id(), buf) must be env_info(0, buf)"
    assert res["nobody"] == -ESRCH, f"env_info(99): {res['nobody']}, expected -ESRCH"
    assert res["sibling"] == -EPERM, f"env_info(sibling): {res['sibling']}, expected -EPERM (not a child)"


@pytest.mark.lab(1, points=10)
def test_env_info_checks_the_buffer(boot):
    res = envinfo_results(boot)
    assert res["unmapped"] == -EFAULT, f"env_info(0, 0x10): {res['unmapped']}, expected -EFAULT"
    assert res["offtop"] == -EFAULT, f"a buffer running off the stack's top: {res['offtop']}, expected -EFAULT"
    assert res["canary"] == 0x5A5A5A5A5A5A5A5A, "a refused env_info wrote part of its record"


@pytest.mark.lab(1, points=5)
def test_env_info_describes_a_child(boot):
    res = envinfo_results(boot)
    cid, parent = res["child_id"], res["self"][0]
    assert res["child_rax"] == 0, f"env_info(child): {res['child_rax']}"
    ident, par, status, pages, name = res["child"]
    assert (ident, par, status) == (cid, parent, NOT_RUNNABLE)
    assert 0 < pages < res["self"][3] and name.startswith("lab1_envinfo")


# ------------------------------------------------------------------- the C guest
def build_c(tmp_path: Path) -> Path:
    """Build lab1_envinfo_c from the tree's source with the shared recipe, in a copy of the app."""
    need_tool(shutil.which("gcc") is not None and shutil.which("make") is not None,
              "gcc and make are needed to build the C guest")
    app = tmp_path / "lab1_envinfo_c"
    shutil.copytree(ENVINFO_C, app, ignore=shutil.ignore_patterns("envinfo"))
    mk = Path("guest_apps/include/guest.mk").resolve()
    p = subprocess.run(["make", "-s", "-f", str(mk), "-C", str(app), "envinfo"], capture_output=True, text=True)
    if p.returncode:
        pytest.fail(f"the C guest does not build:\n{p.stdout}{p.stderr}", pytrace=False)
    return app


@pytest.mark.lab(1, points=15)
def test_c_guest_prints_env_info(boot, tmp_path):
    r = boot(build_c(tmp_path))
    pages = image_pages(str(tmp_path / "lab1_envinfo_c"))
    expect(r.stdout, rf"^env 1 \(lab1_envinfo_c\): parent 0, status 1, {pages} pages$",
           r"^env 2 \(lab1_envinfo_c\.1\): parent 1, status 2, [1-9]\d* pages$",
           r"^env 99: error -3$")
    assert r.exit_status == 0 and not r.reports


# ------------------------------------------------------------ reading fault reports
@pytest.mark.lab(1, points=10)
def test_fault_guest_shouts(boot):
    r = boot(FAULT)
    expect(r.stdout, r"^HELLO FROM LAB 1, ENV 1!$")
    assert all("lab1_fault" in x.render() and "write" not in x.error for x in r.reports), \
        "still faults writing the greeting: " + "; ".join(x.summary for x in r.reports)


@pytest.mark.lab(1, points=10)
def test_fault_guest_runs_clean(boot):
    r = boot(FAULT)
    assert not r.reports, "\n".join(x.render() for x in r.reports)
    assert r.stdout == b"HELLO FROM LAB 1, ENV 1!\nbye\n" and r.exit_status == 0
