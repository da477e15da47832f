"""Loading an image into an environment: segments, stack, info page, entry state."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import TYPE_CHECKING

from exo.abi import (
    INFO_PAGE,
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
from exo.vm import perm_to_pte
from hw.memory import PAGE_SHIFT, PAGE_SIZE
from hw.regs import Reg

if TYPE_CHECKING:  # the kernel takes an image as data; it never imports the toolchain
    from exo.build.image import Image

# Each environment gets its own copy of its image's pages (no frame is shared between
# environments by the loader), and each copy may never be mapped with more than its
# segment's permission: no writable alias of code or read-only data, no executable data.
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


STACK_PAGES_LINUX = 32  # 128 KiB eager stack for a Linux program (design section 2)
_LINUX_INFO = struct.Struct(f"<{len(LINUX_INFO_FIELDS)}Q")
# auxv tags (Linux include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31


def linux_stack(linux: dict, argv: list[bytes]) -> tuple[bytes, int]:
    """The System V initial process stack (x86-64 psABI 3.4.1; Linux fs/binfmt_elf.c
    create_elf_tables) ending at STACK_TOP: (its bytes, the RSP where argc is).

    From the top: AT_RANDOM's 16 bytes, "x86_64", the argv and envp strings, then, 16-byte
    aligned, argc, argv[], NULL, envp[], NULL, auxv (AT_NULL last). No AT_SYSINFO_EHDR: no vDSO,
    so clock_gettime stays a counted `syscall` on the guest clock.
    """
    envp = list(linux["env"])
    rnd = hashlib.sha256(b"exo-at-random|%d" % linux["seed"]).digest()[:16]
    blobs = [rnd, b"x86_64\0", *(a + b"\0" for a in argv), *(e + b"\0" for e in envp)]
    area = b"".join(blobs)
    base = STACK_TOP - len(area)
    addrs, off = [], base
    for b in blobs:
        addrs.append(off)
        off += len(b)
    argv_va, env_va = addrs[2 : 2 + len(argv)], addrs[2 + len(argv) :]
    aux = [(AT_PHDR, linux["phdr"]), (AT_PHENT, 56), (AT_PHNUM, linux["phnum"]), (AT_PAGESZ, PAGE_SIZE),
           (AT_BASE, 0), (AT_FLAGS, 0), (AT_ENTRY, linux["entry"]), (AT_UID, 0), (AT_EUID, 0), (AT_GID, 0),
           (AT_EGID, 0), (AT_PLATFORM, addrs[1]), (AT_HWCAP, linux["hwcap"]), (AT_CLKTCK, 100), (AT_SECURE, 0),
           (AT_RANDOM, addrs[0]), (AT_HWCAP2, 0), (AT_EXECFN, argv_va[0]), (AT_NULL, 0)]
    words = [len(argv), *argv_va, 0, *env_va, 0, *(x for pair in aux for x in pair)]
    rsp = (base - 8 * len(words)) & ~15
    table = struct.pack(f"<{len(words)}Q", *words)
    return table + bytes(base - rsp - len(table)) + area, rsp


def load_image(k: Exokernel, env: Env, image: Image, argv: list[str]) -> None:
    mem = k.machine.memory
    for seg in image.segments:
        pte = perm_to_pte(seg.perm)
        kind = SEGMENT_KIND[seg.perm & (PERM_R | PERM_W | PERM_X)]
        start = seg.va & ~(PAGE_SIZE - 1)
        end = (seg.va + seg.memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        for va in range(start, end, PAGE_SIZE):
            if env.space.lookup(va) is not None:
                raise ExoUserError(image.name, f"segments {seg.name} overlap at {va:#x}")
            pa = _alloc_page(k, env, va, pte, kind)
            lo = max(seg.va, va)
            hi = min(seg.va + len(seg.data), va + PAGE_SIZE)
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
        mem.write(pa + LINUX_INFO - INFO_PAGE, _LINUX_INFO.pack(
            LINUX_INFO_MAGIC, rsp, image.entry, linux["phdr"], linux["phnum"], 0, linux["brk_start"], 0,
            struct.unpack_from("<Q", stack, 8)[0], linux["seed"]))  # execfn: argv[0]
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
          quota: dict | None = None) -> Env:
    """Create an environment running ``image`` (what `exo boot` does for each app).

    It starts a new tenant; ``quota`` (exo/tenants.py parse_quota) sets its limits
    before the image is loaded, so loading counts against them.
    """
    env = k.create_env(name or image.name)
    if quota:
        k.tenants.apply(env.tenant, quota)
    try:
        load_image(k, env, image, argv or [])
    except HypercallError as e:
        raise ExoUserError(image.name, f"cannot load: {e}") from None
    assert env.status == EnvStatus.RUNNABLE
    return env
