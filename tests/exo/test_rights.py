"""Maximum rights (exo/frames.py MAX_RIGHT): no mapping of a frame ever gives more than its kind allows.

Each frame gets its maximum right when it is allocated: the info page R, the
hypercall, trampoline and structure pages R|X, an image's code R|X, read-only
data R, data and stacks R|W, page_alloc'd memory anything (W^X per frame).
Every call that maps (page_map, mmu_update MAP and PROTECT, ipc page transfer,
mappings into a forked child) is refused with -EPERM above it; the guest gets
the errno and keeps running, beside a witness that finishes.

The guests use test_hostile.py's FRAME()/MMU() macros; ``OK`` after a step
stops the guest with status 0x70 if that step did not return 0, so that only
the last step's errno is the exit status.
"""

from __future__ import annotations

import pytest
from conftest import WITNESS, boot
from test_hostile import EXIT_NEG_RAX, EXIT_WITH, expand_macros, symbols, witness_ok

from exo.abi import (
    INFO_PAGE,
    LIBOS_PAGE,
    PAGE_SIZE,
    PERM_R,
    PERM_W,
    PERM_X,
    STACK_PAGES,
    STACK_TOP,
    UVPML4,
    UVPT,
    UVPT_SLOT,
    EnvStatus,
    Errno,
)
from exo.errors import HypercallError
from exo.frames import MAX_RIGHT, FrameKind, FrameType
from exo.vm import perm_to_pte

STEP_FAILED = 0x70
LOWEST_STACK_PAGE = STACK_TOP - STACK_PAGES * PAGE_SIZE  # never touched by these guests
UVPT_ROOT_ENTRY = UVPML4 + UVPT_SLOT * 8  # the recursive PML4 entry: the root page table's frame


def expand(body: str) -> str:
    """test_hostile's macros, plus OK (stop with STEP_FAILED unless rax == 0)."""
    body = "\n".join("    test rax, rax\n    jnz step_failed" if s.strip() == "OK" else s
                     for s in body.splitlines())
    return expand_macros(body)


def rights_source(body: str) -> str:
    return f"""
NEG_EPERM equ -EPERM
section .text
_start:
{expand(body)}
exit_rax:
{EXIT_NEG_RAX}
step_failed:
{EXIT_WITH.format(status=STEP_FAILED)}
.balign 0x1000
spare:                      ; a second code page, never executed (its frame is only mapped X)
    ret
section .rodata
msg: db "hi"
section .data
req: times 0x8 dq 0x0
done: dq 0x77
section .bss
.balign 0x1000
buf: resb 0x1000
"""


# Steps that give the guest a page-table frame number (the UVPT window), or unmap a page of
# its own image after making a read-only alias at 0x700000 (which keeps the frame alive: a frame
# is freed with its last mapping), so that W^X per frame does not refuse first.
PT_FRAME = f"""
    mov rax, {UVPT_ROOT_ENTRY:#x}
    mov rax, qword ptr [rax]
    shl rax, 0xc
    shr rax, 0x18               ; bits 12..51: the frame number
"""


def pte_frame(va: int) -> str:
    """rax = the frame mapped at ``va``, read from the UVPT window (no frame_of: a guest linking
    libOS modules may only make its modules' hypercalls, and the memory module's exclude frame_of)."""
    return f"""
    mov rax, {UVPT + (va >> 12) * 8:#x}
    mov rax, qword ptr [rax]
    shl rax, 0xc
    shr rax, 0x18
"""


UNMAP_SPARE_KEEP_FRAME = """
    FRAME(spare)
    mov r13, rax
    MMU(MMU_MAP, 0x0, 0x700000, r13, PERM_R)
OK
    xor edi, edi
    lea rsi, [rip + spare]
    call HC_PAGE_UNMAP
OK
"""
UNMAP_BUF_KEEP_FRAME = """
    FRAME(buf)
    mov r13, rax
    MMU(MMU_MAP, 0x0, 0x700000, r13, PERM_R)
OK
    xor edi, edi
    lea rsi, [rip + buf]
    call HC_PAGE_UNMAP
OK
"""
UNMAP_STACK_KEEP_FRAME = f"""
    mov rdi, {LOWEST_STACK_PAGE:#x}
    call HC_FRAME_OF
    test rax, rax
    js exit_rax
    mov r13, rax
    MMU(MMU_MAP, 0x0, 0x700000, r13, PERM_R)
OK
    xor edi, edi
    mov rsi, {LOWEST_STACK_PAGE:#x}
    call HC_PAGE_UNMAP
OK
"""
ALIAS_INFO_R = """
    FRAME(INFO_PAGE)
    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R)
OK
"""
FORK = """
    call HC_ENV_CREATE
    test rax, rax
    jle step_failed
    mov r12, rax                ; the child (never made runnable)
"""
RW = "PERM_R | PERM_W"
RX = "PERM_R | PERM_X"


def page_map(srcenv: str, srcva: str, dstenv: str, dstva: str, perm: str) -> str:
    return f"""
    mov rdi, {srcenv}
    mov rsi, {srcva}
    mov rdx, {dstenv}
    mov r10, {dstva}
    mov r8, {perm}
    call HC_PAGE_MAP
"""


def ipc_send(envid: str, srcva: str, perm: str) -> str:
    return f"""
    mov rdi, {envid}
    mov rsi, 0x1
    mov rdx, {srcva}
    mov r10, {perm}
    call HC_IPC_TRY_SEND
"""


# (frame kind, mapping path) -> guest body; every one must end in -EPERM. Those marked
# "hole" returned 0 before maximum rights existed (each was a wider alias of a page).
REFUSED = {
    # the info page: the environment's own frame, documented read-only
    "info-mmu-map-rw": (f"FRAME(INFO_PAGE)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RW})", "hole"),
    "info-mmu-map-rx": (f"FRAME(INFO_PAGE)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RX})", "hole"),
    "info-mmu-protect-rw": (ALIAS_INFO_R + f"    MMU(MMU_PROTECT, 0x0, 0x600000, 0x0, {RW})", "hole"),
    "info-mmu-protect-rx": (ALIAS_INFO_R + f"    MMU(MMU_PROTECT, 0x0, 0x600000, 0x0, {RX})", "hole"),
    "info-mmu-remap-rw": (ALIAS_INFO_R + f"    FRAME(INFO_PAGE)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RW})",
                          "hole"),
    "info-page-map-rw": (ALIAS_INFO_R + page_map("0x0", "0x600000", "0x0", "0x700000", RW), ""),
    "info-ipc-send-w": (ALIAS_INFO_R + ipc_send("0x2", "0x600000", RW), ""),
    "info-fork-mmu-map-rw": (FORK + f"    FRAME(INFO_PAGE)\n    MMU(MMU_MAP, r12d, 0x600000, rax, {RW})",
                             "hole"),
    "info-fork-page-map-rw": (FORK + ALIAS_INFO_R + page_map("0x0", "0x600000", "r12", "0x600000", RW), ""),
    # the hypercall page and a libOS trampoline page: exokernel frames, R|X
    "hypercall-mmu-map-rw": (f"FRAME(HYPERCALL_PAGE)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RW})", ""),
    "hypercall-ipc-send": (ipc_send("0x2", "HYPERCALL_PAGE", RX), ""),
    "trampoline-mmu-map-rw": (pte_frame(LIBOS_PAGE) + f"    MMU(MMU_MAP, 0x0, 0x600000, rax, {RW})", ""),
    "trampoline-mmu-map-rx": (pte_frame(LIBOS_PAGE) + f"    MMU(MMU_MAP, 0x0, 0x600000, rax, {RX})", ""),
    "trampoline-page-map": (page_map("0x0", "LIBOS_PAGE", "0x0", "0x600000", RX), ""),
    # a page-table frame, found through the read-only UVPT window
    "pagetable-mmu-map-r": (PT_FRAME + "    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R)", ""),
    "pagetable-fork-mmu-map-r": (FORK + PT_FRAME + "    MMU(MMU_MAP, r12d, 0x600000, rax, PERM_R)", ""),
    # the image's code (R|X), read-only data (R) and bss (R|W), and a stack page (R|W)
    "code-mmu-map-rw": (UNMAP_SPARE_KEEP_FRAME + f"    MMU(MMU_MAP, 0x0, 0x600000, r13, {RW})", "hole"),
    "code-fork-mmu-map-rw": (FORK + UNMAP_SPARE_KEEP_FRAME + f"    MMU(MMU_MAP, r12d, 0x600000, r13, {RW})",
                             "hole"),
    "rodata-mmu-map-rw": (f"FRAME(msg)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RW})", "hole"),
    "rodata-mmu-map-rx": (f"FRAME(msg)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, {RX})", "hole"),
    "rodata-mmu-protect-rw": (f"FRAME(msg)\n    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R)\nOK\n"
                              f"    MMU(MMU_PROTECT, 0x0, 0x600000, 0x0, {RW})", "hole"),
    "rodata-ipc-send-w": (ipc_send("0x2", "msg", RW).replace("mov rdx, msg", "lea rdx, [rip + msg]"), ""),
    "rodata-fork-page-map-rw": (FORK + page_map("0x0", "msg", "r12", "0x600000", RW)
                                .replace("mov rsi, msg", "lea rsi, [rip + msg]"), ""),
    "bss-mmu-map-rx": (UNMAP_BUF_KEEP_FRAME + f"    MMU(MMU_MAP, 0x0, 0x600000, r13, {RX})", "hole"),
    "stack-mmu-map-rx": (UNMAP_STACK_KEEP_FRAME + f"    MMU(MMU_MAP, 0x0, 0x600000, r13, {RX})", "hole"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_mapping_above_the_max_right_is_eperm(app, name: str) -> None:
    body, _ = REFUSED[name]
    # A guest linking libOS modules may make only its modules' hypercalls: the memory module's
    # include mmu_update and page_map (and its trampoline page is mapped).
    libos = {"memory": "cow"} if name.startswith("trampoline") else {}
    guest = app(name, rights_source(body), libos=libos)
    b = boot(guest, app("witness", WITNESS))
    witness_ok(b)
    env = b.envs[0]
    assert env.fault is None, env.fault
    assert b.reports == []
    assert env.exit_status == Errno.EPERM, f"expected -EPERM, got {env.exit_status:#x}"


def test_legal_aliases_within_the_max_right_still_work(app) -> None:
    """An R alias of the info page reads argc; an R|X alias of a code page runs; a page_alloc'd frame goes
    RW -> RX -> RW (W^X per frame, no max right below RWX); an R alias of rodata is given to a child."""
    body = f"""
    FRAME(INFO_PAGE)
    MMU(MMU_MAP, 0x0, 0x600000, rax, PERM_R)
OK
    mov rax, 0x600000
    cmp qword ptr [rax], 0x3        ; argc: the name and two arguments
    jne step_failed
    FRAME(spare)
    MMU(MMU_MAP, 0x0, 0x700000, rax, {RX})
OK
    mov rax, 0x700000
    call rax                        ; the alias of `spare` executes its ret
    xor edi, edi
    mov rsi, 0x800000
    mov rdx, {RW}
    call HC_PAGE_ALLOC
OK
    mov rax, 0x800000
    mov byte ptr [rax], 0xc3        ; ret
    MMU(MMU_PROTECT, 0x0, 0x800000, 0x0, {RX})
OK
    mov rax, 0x800000
    call rax
    MMU(MMU_PROTECT, 0x0, 0x800000, 0x0, {RW})
OK
{FORK}
    FRAME(msg)
    MMU(MMU_MAP, r12d, 0x600000, rax, PERM_R)
OK
    xor eax, eax
"""
    guest = app("legal", rights_source(body), args=["a", "b"])
    b = boot(guest, app("witness", WITNESS))
    witness_ok(b)
    env = b.envs[0]
    assert env.fault is None, env.fault
    assert env.exit_status == 0


def _frames_of_every_kind(app) -> tuple[object, dict[FrameKind, int]]:
    """A kernel that booted an app linking a libOS module, under the monolithic structure (so it
    has trampoline and structure pages), with a second app loaded: one frame of each kind."""
    guest = app("kinds", rights_source("xor eax, eax"), libos={"console": "direct"})
    b = boot(guest, structure="monolithic")
    k = b.kernel
    from exo.build.image import build_image
    from exo.build.manifest import load_manifest
    from exo.loader import spawn

    env = spawn(k, build_image(load_manifest(guest)), [])
    syms = symbols(guest)

    def at(va: int) -> int:
        return env.space.lookup(va & ~0xFFF)[0]

    return k, {
        FrameKind.IMAGE_CODE: at(syms["spare"]), FrameKind.IMAGE_RODATA: at(syms["msg"]),
        FrameKind.IMAGE_DATA: at(syms["buf"]), FrameKind.STACK: at(STACK_TOP - PAGE_SIZE),
        FrameKind.INFO: at(INFO_PAGE), FrameKind.HYPERCALL: k.hypercall_frame,
        FrameKind.TRAMPOLINE: next(iter(k.libs._frames.values())), FrameKind.STRUCT: k.structures.page_frame,
        FrameKind.PAGETABLE: env.space.root >> 12, FrameKind.EXO: 0,
    }


def test_max_right_of_each_frame_kind_is_fixed_at_allocation_and_cleared_at_free(app) -> None:
    k, frames = _frames_of_every_kind(app)
    ft = k.frames
    for kind, frame in frames.items():
        assert (FrameKind(ft.kind[frame]), ft.max_right[frame]) == (kind, MAX_RIGHT[kind])
    assert MAX_RIGHT[FrameKind.INFO] == PERM_R
    assert MAX_RIGHT[FrameKind.HYPERCALL] == MAX_RIGHT[FrameKind.TRAMPOLINE] == PERM_R | PERM_X
    # page_alloc'd frames: any right, W^X per frame; freed frames: none.
    f = ft.alloc(1)
    assert (ft.kind[f], ft.max_right[f]) == (FrameKind.GUEST, PERM_R | PERM_W | PERM_X)
    ft.free(f)
    assert (ft.kind[f], ft.max_right[f]) == (FrameKind.FREE, 0)
    # A frame that is never mapped has no rights, whatever kind it is asked for.
    g = ft.alloc(1, FrameType.PAGETABLE, kind=FrameKind.GUEST)
    assert ft.max_right[g] == 0
    ft.free(g)


@pytest.mark.parametrize("kind", [FrameKind.INFO, FrameKind.IMAGE_CODE, FrameKind.IMAGE_RODATA,
                                  FrameKind.IMAGE_DATA, FrameKind.STACK, FrameKind.HYPERCALL,
                                  FrameKind.TRAMPOLINE, FrameKind.STRUCT], ids=lambda k: k.name.lower())
def test_the_choke_point_refuses_without_any_ownership_check(app, kind: FrameKind) -> None:
    """AddressSpace.map and protect check the max right themselves: a second cap, whoever asks
    (the hypercalls check ownership before them; the exokernel's own paths do not)."""
    k, frames = _frames_of_every_kind(app)
    frame = frames[kind]
    limit = k.frames.max_right[frame]
    over = [p for p in (PERM_R | PERM_W, PERM_R | PERM_X) if p & ~limit]
    assert over
    other = k.create_env("other")
    refs = k.frames.refs[frame]
    for perm in over:
        with pytest.raises(HypercallError) as e:
            other.space.map(0x600000, frame, perm_to_pte(perm))
        assert e.value.errno == Errno.EPERM
        assert f"frame {frame:#x} (" in str(e.value) and "at most" in str(e.value)
    assert other.space.lookup(0x600000) is None and k.frames.refs[frame] == refs
    other.space.map(0x600000, frame, perm_to_pte(PERM_R))  # within the max right: allowed
    for perm in over:
        with pytest.raises(HypercallError) as e:
            other.space.protect(0x600000, perm_to_pte(perm))
        assert e.value.errno == Errno.EPERM
    assert other.space.lookup(0x600000)[1] == perm_to_pte(PERM_R)


def test_error_message_names_the_frame_kind() -> None:
    import io

    from exo.kernel import Exokernel
    from hw import Machine

    k = Exokernel(Machine(8 << 20, stdin=b"", stdout=io.BytesIO()), on_fault=lambda r: None)
    env = k.create_env("t")
    f = k.frames.alloc(env.id, FrameType.NORMAL, kind=FrameKind.INFO)
    with pytest.raises(HypercallError) as e:
        env.space.map(0x600000, f, perm_to_pte(PERM_R | PERM_W))
    assert str(e.value).endswith(f"frame {f:#x} (info frame) may be mapped R at most, not RW")


def test_environment_status_after_refusals_is_clean(app) -> None:
    """A guest refused many times in a row keeps running and exits normally (no fault report)."""
    body = "\n".join([REFUSED["info-mmu-map-rw"][0], "    cmp rax, NEG_EPERM\n    jne step_failed"] * 20)
    body += "\n    xor eax, eax"
    b = boot(app("again", rights_source(body)), app("witness", WITNESS))
    witness_ok(b)
    env = b.envs[0]
    assert env.fault is None and env.exit_status == 0 and env.status == EnvStatus.DEAD


def test_the_trampoline_guests_name_the_trampoline_frame(app) -> None:
    """The UVPT read the trampoline cases use gives the core module's trampoline frame (so their
    -EPERM is about that frame, not a wrong number)."""
    body = pte_frame(LIBOS_PAGE) + "    mov rsi, rax\n    mov rdi, SCHED_EXIT\n    call HC_SCHED_OP"
    b = boot(app("tramp", rights_source(body), libos={"memory": "cow"}))
    assert b.envs[0].exit_status == b.kernel.libs._frames[0]
    assert b.kernel.frames.kind[b.kernel.libs._frames[0]] == FrameKind.TRAMPOLINE


@pytest.mark.parametrize("perm", ["PERM_R", "PERM_R | PERM_W", "PERM_R | PERM_X"])
def test_another_apps_frame_is_refused_at_any_right(app, perm: str) -> None:
    """A frame number of the witness (learned from a dry run: allocation is deterministic) cannot be
    mapped, into the guest or its child, at any right: the ownership check, in front of the max right."""
    from test_hostile import dry_spawn

    witness = app("witness", WITNESS)

    def source(frame: int) -> str:
        return rights_source(f"""
    MMU(MMU_MAP, 0x0, 0x600000, {frame:#x}, {perm})
    cmp rax, NEG_EPERM
    jne exit_rax
{FORK}
    MMU(MMU_MAP, r12d, 0x600000, {frame:#x}, {perm})
""")

    _, (_, w) = dry_spawn(app("thief", source(0)), witness)
    frames = [w.space.lookup(va)[0] for va in (symbols(witness)["_start"], symbols(witness)["msg"] & ~0xFFF)]
    for frame in frames:
        b = boot(app("thief", source(frame)), witness)
        witness_ok(b)
        t = b.env("thief")
        assert t.fault is None and t.exit_status == Errno.EPERM


def _check_space(space) -> list[str]:
    """Every mapping of ``space`` within its frame's max right (the invariant the fuzzer checks too)."""
    from exo.frames import rights_str
    from exo.vm import pte_rights

    ft = space.frames
    bad = [f"frame {f:#x} mapped but max right 0 (kind {FrameKind(ft.kind[f]).name})"
           for f in space.frame_maps if not ft.max_right[f]]
    for va, flags in space._wx_flags.items():  # every writable or executable mapping
        frame, pte = space.lookup(va)  # the live entry (the CPU may have set its accessed/dirty bits)
        assert pte_rights(pte) == pte_rights(flags)
        if pte_rights(pte) & ~ft.max_right[frame]:
            bad.append(f"{va:#x}: {rights_str(pte_rights(pte))} > {rights_str(ft.max_right[frame])}")
    return bad


@pytest.mark.parametrize("name", ["forktree", "cowtest", "threads"])
def test_no_mapping_exceeds_its_frames_max_right_in_real_apps(monkeypatch, name: str) -> None:
    """fork (cow), copy-on-write faults, demand-zero heaps and the scheduler's idle code (written, then made
    R|X) all stay within the max rights: checked on every address space just before it is destroyed."""
    from conftest import ROOT

    from exo.vm import AddressSpace

    seen: list[int] = []
    bad: list[str] = []
    destroy = AddressSpace.destroy

    def checked(self):
        seen.append(len(self._wx_flags))
        bad.extend(_check_space(self))
        return destroy(self)

    monkeypatch.setattr(AddressSpace, "destroy", checked)
    b = boot(ROOT / "guest_apps" / name)
    assert all(e.fault is None and e.exit_status == 0 for e in b.envs)
    assert seen and sum(seen) > 0 and bad == []


def test_an_exokernel_frame_that_may_be_mapped_must_name_its_kind():
    """The exokernel's normal frames are shared into every address space: without a kind one would
    default to GUEST (RWX), so a new exokernel page that forgot its kind is refused, not made writable."""
    from exo.abi import PERM_W
    from exo.frames import EXO, FrameKind, FrameType
    from exo.kernel import Exokernel
    from hw import Machine

    ft = Exokernel(Machine(16 << 20), on_fault=lambda r: None).frames
    free = ft.free_count
    with pytest.raises(AssertionError, match="needs a kind"):
        ft.alloc(EXO, FrameType.NORMAL)
    assert ft.free_count == free  # nothing was taken
    f = ft.alloc(EXO, FrameType.NORMAL, kind=FrameKind.TRAMPOLINE)
    assert not ft.max_right[f] & PERM_W
    assert ft.alloc(EXO, FrameType.EXO) and ft.alloc(1, FrameType.NORMAL)  # the other defaults stand
