"""Loading an image into an environment: segments, stack, info page, entry state."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from exo.abi import (
    BOOTFILE,
    BOOTFILE_MAX,
    INFO_PAGE,
    LINUX_CWD,
    LINUX_CWD_MAX,
    LINUX_INFO,
    LINUX_INFO_FIELDS,
    LINUX_INFO_MAGIC,
    PERM_R,
    PERM_W,
    PERM_X,
    STACK_PAGES,
    STACK_TOP,
    EnvStatus,
)
from exo.env import Env
from exo.errors import ExoUserError, HypercallError
from exo.frames import FrameKind, FrameType, OutOfFrames
from exo.kernel import Exokernel
from exo.linux import STACK_PAGES_LINUX, linux_stack
from exo.vm import perm_to_pte
from hw.memory import PAGE_SHIFT, PAGE_SIZE
from hw.regs import Reg

if TYPE_CHECKING:  # the kernel takes an image as data; it never imports the toolchain
    from exo.build.image import Image

# Each environment gets its own copy of its image's pages, unless it is loaded as an instance
# (``share``): then the image's code and read-only data are loaded once and mapped by every
# instance (exo/images.py), and only its writable data and bss are its own. No page may ever be
# mapped with more than its segment's permission: no writable alias of code or read-only data,
# no executable data.
SEGMENT_KIND = {
    PERM_R | PERM_X: FrameKind.IMAGE_CODE,
    PERM_R: FrameKind.IMAGE_RODATA,
    PERM_R | PERM_W: FrameKind.IMAGE_DATA,
}


def _alloc_page(k: Exokernel, env: Env, va: int, pte: int, kind: FrameKind) -> int:
    try:
        frame = k.frames.alloc(env.id, FrameType.NORMAL, kind=kind)
    except OutOfFrames as e:
        raise ExoUserError(env.name, f"out of memory while loading: {e}") from None
    env.space.map(va, frame, pte)
    return frame << PAGE_SHIFT


_LINUX_INFO = struct.Struct(f"<{len(LINUX_INFO_FIELDS)}Q")


def load_image(k: Exokernel, env: Env, image: Image, argv: list[str], share: bool = False) -> None:
    """Load ``image`` into ``env`` with ``argv`` and make it runnable at the image's entry.

    ``share``: map the image's read-only pages from the frames every instance of this ``Image``
    shares (exo/images.py) rather than copy them. The instance cannot tell: the pages are
    read-only either way. It cannot make them its own (mmu_update maps and adds rights only to
    frames it owns), and one environment's copies stay its own to alias (tests/exo/test_rights.py)."""
    mem = k.machine.memory
    for seg in image.segments:
        pte = perm_to_pte(seg.perm)
        kind = SEGMENT_KIND[seg.perm & (PERM_R | PERM_W | PERM_X)]
        start = seg.va & ~(PAGE_SIZE - 1)
        end = (seg.va + seg.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        shared = share and not seg.perm & PERM_W
        for va in range(start, end, PAGE_SIZE):
            if env.space.lookup(va) is not None:
                raise ExoUserError(image.name, f"segments {seg.name} overlap at {va:#x}")
            lo = max(seg.va, va)
            hi = min(seg.va + len(seg.data), va + PAGE_SIZE)
            if shared:
                # The page's bytes from its offset in the page (a segment may start inside it).
                data = bytes(lo - va) + seg.data[lo - seg.va : hi - seg.va] if hi > lo else b""
                try:
                    frame = k.images.page(image, va, kind, data)
                except OutOfFrames as e:
                    raise ExoUserError(env.name, f"out of memory while loading: {e}") from None
                env.space.map(va, frame, pte)
                continue
            pa = _alloc_page(k, env, va, pte, kind)
            if hi > lo:
                mem.write(pa + (lo - va), seg.data[lo - seg.va : hi - seg.va])
    linux = getattr(image, "linux", None)  # a Linux program (exo/build/linux_app.py): its own stack
    stack_pte = perm_to_pte(PERM_R | PERM_W)
    for i in range(1, (STACK_PAGES_LINUX if linux else STACK_PAGES) + 1):
        _alloc_page(k, env, STACK_TOP - i * PAGE_SIZE, stack_pte, FrameKind.STACK)
    # Info page: u64 argc, u64 argv[argc + 1], then the NUL-terminated strings.
    # os.fsencode: an argument the host passed as bytes that are not UTF-8 (`-- $'\xff'`) reaches
    # the guest as those bytes (Python decoded it with surrogateescape, PEP 383), as on Linux.
    args = [os.fsencode(a) for a in [image.name, *argv]]
    table = 8 + 8 * (len(args) + 1)
    blob = bytearray()
    ptrs = []
    for a in args:
        ptrs.append(INFO_PAGE + table + len(blob))
        blob += a + b"\0"
    info = len(args).to_bytes(8, "little") + b"".join(p.to_bytes(8, "little") for p in ptrs) + bytes(8) + blob
    if len(info) > (LINUX_INFO - INFO_PAGE if linux else PAGE_SIZE):
        raise ExoUserError(image.name, f"arguments too long ({len(info)} bytes; one page holds {PAGE_SIZE})")
    pa = _alloc_page(k, env, INFO_PAGE, perm_to_pte(PERM_R), FrameKind.INFO)
    mem.write(pa, info)
    k.cpu.flush_code()
    cpu = k.cpu
    cpu.context_write(env.ctx, Reg.RIP, image.entry)
    if linux:
        # Linux's ELF entry state: RSP at argc of the System V initial stack, RDX 0 (no atexit
        # function from a dynamic loader), every other register 0.
        stack, rsp = linux_stack(linux, [os.fsencode(a) for a in [linux["path"], *argv]])
        if STACK_TOP - rsp > STACK_PAGES_LINUX * PAGE_SIZE // 2:
            raise ExoUserError(image.name, f"arguments and environment too long ({STACK_TOP - rsp} bytes)")
        env.space.write(rsp, stack)
        # The program file, read-only at BOOTFILE: what execve("/proc/self/exe") loads again and the
        # no-disk root's copy of the program (docs/posix.md). Frames the env may never make writable.
        blob = linux.get("file", b"")
        if len(blob) > BOOTFILE_MAX:
            raise ExoUserError(image.name, f"program file too large ({len(blob)} bytes; at most {BOOTFILE_MAX})")
        for off in range(0, len(blob), PAGE_SIZE):
            fpa = _alloc_page(k, env, BOOTFILE + off, perm_to_pte(PERM_R), FrameKind.IMAGE_RODATA)
            mem.write(fpa, blob[off : off + PAGE_SIZE])
        mem.write(pa + LINUX_INFO - INFO_PAGE, _LINUX_INFO.pack(
            LINUX_INFO_MAGIC, rsp, image.entry, linux["phdr"], linux["phnum"], 0, linux["brk_start"], len(blob),
            struct.unpack_from("<Q", stack, 8)[0], linux["seed"], linux.get("flags", 0), LINUX_CWD))  # execfn: argv[0]
        cwd = linux.get("cwd", b"/")
        if len(cwd) >= LINUX_CWD_MAX:
            raise ExoUserError(image.name, f"working directory too long ({len(cwd)} bytes)")
        mem.write(pa + LINUX_CWD - INFO_PAGE, cwd + b"\0")
        cpu.context_write(env.ctx, Reg.RSP, rsp)
    else:
        cpu.context_write(env.ctx, Reg.RSP, STACK_TOP)
        cpu.context_write(env.ctx, Reg.RDI, len(args))
        cpu.context_write(env.ctx, Reg.RSI, INFO_PAGE + 8)
    env.argv = [os.fsdecode(a) for a in args]
    env.symbolize = image.symbolize
    env.source_line = getattr(image, "line_of", None)  # an Image from elsewhere may not have one
    k.make_runnable(env)


def spawn(k: Exokernel, image: Image, argv: list[str] | None = None, name: str | None = None,
          quota: dict | None = None, share: bool = False) -> Env:
    """Create an environment running ``image`` (what `exo boot` does for each app).

    It starts a new tenant; ``quota`` (exo/tenants.py parse_quota) sets its limits
    before the image is loaded, so loading counts against them. ``share``: an instance,
    mapping the image's read-only pages shared with the other instances (load_image).
    """
    env = k.create_env(name or image.name)
    if quota:
        k.tenants.apply(env.tenant, quota)
    try:
        load_image(k, env, image, argv or [], share=share)
    except HypercallError as e:
        raise ExoUserError(image.name, f"cannot load: {e}") from None
    assert env.status == EnvStatus.RUNNABLE
    return env
