"""Instances of one image share its read-only pages (exo/images.py, exo/loader.py share=True):
counted through the frame table, never writable, each instance's data its own, every frame back
when the last instance goes."""

from __future__ import annotations

import io

import pytest
from conftest import YIELDS, make_app

from exo.abi import PERM_R, PERM_W
from exo.errors import HypercallError
from exo.frames import SHARED, FrameKind
from exo.vm import perm_to_pte

# Each instance adds 1 to its own counter in .data and prints it, yields a few times so that the
# instances interleave, prints it again and exits. With an argument it first writes to its own
# code page: a protection fault (the page is read/execute at most), for it alone.
INSTANCE = """
section .text
_start:
    cmp rdi, 1
    je run
    lea rax, [rip + _start]
    mov byte ptr [rax], 0x90        ; write the code page: #PF, a protection violation
run:
    lea rax, [rip + counter]
    add byte ptr [rax], 1
    call say
""" + YIELDS.format(n=3) + """
    call say
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
say:
    lea rdi, [rip + counter]
    mov rsi, 1
    call HC_CONSOLE_WRITE
    ret
section .rodata
pad: times 5000 db 7               ; two pages of read-only data
section .data
counter: db "0"
"""


@pytest.fixture
def kernel_and_image(tmp_path):
    from exo.api import build
    from exo.kernel import Exokernel
    from hw import Machine

    _, image, _ = build(make_app(tmp_path, "inst", INSTANCE))
    out = io.BytesIO()
    k = Exokernel(Machine(64 << 20, stdin=b"", stdout=out), on_fault=lambda r: None)
    return k, image, out


def _ro_pages(image) -> list[int]:
    from hw.memory import PAGE_SIZE

    out = []
    for seg in image.segments:
        if not seg.perm & PERM_W:
            out += range(seg.va & ~(PAGE_SIZE - 1), (seg.va + seg.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), PAGE_SIZE)
    return out


def test_instances_map_the_same_read_only_frames_and_pay_only_for_their_own(kernel_and_image):
    from exo.loader import spawn

    k, image, _ = kernel_and_image
    ro = _ro_pages(image)
    assert len(ro) >= 3  # code and two pages of rodata
    free0 = k.frames.free_count
    a = spawn(k, image, share=True)
    one = free0 - k.frames.free_count  # shared pages + a's own
    b = spawn(k, image, share=True)
    own = one - len(ro)
    assert free0 - k.frames.free_count == len(ro) + 2 * own  # the second instance paid only for its own
    c = spawn(k, image, share=True)
    assert free0 - k.frames.free_count == len(ro) + 3 * own
    assert k.images.frames_held == len(ro) == k.images.pages_of(image)
    for va in ro:
        frames = {e.space.lookup(va)[0] for e in (a, b, c)}
        assert len(frames) == 1
        f = frames.pop()
        assert k.frames.owner[f] == SHARED and k.frames.refs[f] == 3
        assert k.frames.kind[f] in (FrameKind.IMAGE_CODE, FrameKind.IMAGE_RODATA)
    rw = next(seg for seg in image.segments if seg.perm & PERM_W)
    data = [e.space.lookup(rw.va & ~0xFFF)[0] for e in (a, b, c)]
    assert len(set(data)) == 3 and all(k.frames.owner[f] == e.id for f, e in zip(data, (a, b, c)))
    # an environment loaded the usual way copies every page
    d = spawn(k, image)
    assert all(d.space.lookup(va)[0] != a.space.lookup(va)[0] for va in ro)


def test_a_shared_page_can_never_be_mapped_writable(kernel_and_image):
    from exo.loader import spawn

    k, image, _ = kernel_and_image
    a = spawn(k, image, share=True)
    va = _ro_pages(image)[0]
    f = a.space.lookup(va)[0]
    with pytest.raises(HypercallError, match="at most"):
        a.space.map(0x600000, f, perm_to_pte(PERM_R | PERM_W))
    with pytest.raises(HypercallError, match="at most"):
        a.space.protect(va, perm_to_pte(PERM_R | PERM_W))


def test_each_instance_writes_its_own_data_and_a_faulting_one_stops_alone(kernel_and_image):
    from exo.loader import spawn

    k, image, out = kernel_and_image
    envs = [spawn(k, image, share=True), spawn(k, image, ["bad"], share=True), spawn(k, image, share=True)]
    k.run(max_instructions=1_000_000)
    # each good instance saw its own counter go from 0 to 1, whatever the others did
    assert out.getvalue() == b"1111"
    assert [e.exit_status for e in (envs[0], envs[2])] == [0, 0]
    bad = envs[1]
    assert bad.fault is not None and "user write of a protected page" in bad.fault, bad.fault
    assert k.images.frames_held == 0  # every instance gone: the shared pages went with the last


def test_destroying_ten_thousand_instances_returns_every_frame(kernel_and_image):
    from exo.loader import spawn

    k, image, _ = kernel_and_image
    free0 = k.frames.free_count
    live = []
    for _ in range(10_000):
        live.append(spawn(k, image, share=True))
        if len(live) == 100:  # a hundred resident at a time, then gone
            assert k.images.frames_held == len(_ro_pages(image))
            for e in live:
                k.destroy(e, 0)
            live.clear()
    assert k.frames.free_count == free0 and k.images.frames_held == 0


def test_the_density_benchmark_counts_resident_instances_by_the_frame_table():
    # benchmarks/density.py's resident row: its frame figures are exact (its RSS is measured, not judged)
    from benchmarks.density import resident

    r = resident(50, from_snapshot=False)
    assert r["shared_frames"] == 2  # the idle app's code page and its rodata page, once for all 50
    own = (r["frames"] - r["shared_frames"]) / 50
    assert own == int(own) and own >= 16 + 1  # its stack and info page at least, each its own
    r = resident(50)  # from a snapshot: the stack page its ipc_recv wrote, and its page tables
    own = r["frames"] / 50
    assert own == int(own) and 2 <= own <= 12  # (9 today: 7 page tables, 2 stack pages)


def test_guest_ram_above_4_gib_works_where_the_host_has_it(tmp_path):
    """Issue 17 part 5: --ram may exceed 4 GiB. Every frame of this run lies above 4 GiB (the frame
    table is told to hand out frames from 5 GiB up), and the guest and its page tables work there."""
    from exo.api import build, host_ram_mib
    from exo.kernel import Exokernel
    from exo.loader import spawn
    from hw import Machine

    if host_ram_mib() < 6144:
        pytest.skip("this host has less than 6 GiB of RAM")  # a property of the machine, not a missing tool
    _, image, _ = build(make_app(tmp_path, "high", INSTANCE))
    out = io.BytesIO()
    k = Exokernel(Machine(6144 << 20, stdin=b"", stdout=out), on_fault=lambda r: None)
    k.frames._untouched = max(k.frames._untouched, (5 << 30) >> 12)  # (the frames below stay unused)
    envs = [spawn(k, image, share=True) for _ in range(2)]
    assert all(f << 12 >= 5 << 30 for e in envs for f in [*e.space.table_frames, *e.space.frame_maps]
               if k.frames.owner[f] != 0)
    k.run(max_instructions=1_000_000)
    assert out.getvalue() == b"1111" and [e.exit_status for e in envs] == [0, 0]


def test_more_ram_than_the_host_has_is_a_clear_error(tmp_path):
    from test_echo import run_exo

    from exo.api import host_ram_mib

    app = make_app(tmp_path, "inst", INSTANCE)
    r = run_exo("boot", str(app), "--ram", str(host_ram_mib() + 1), cache=str(tmp_path / "c"))
    assert r.returncode == 2 and b"this host's RAM" in r.stderr and b"Traceback" not in r.stderr
