"""A static x86-64 Linux program as an exo app: its image (segments, start-up facts), linking the posix libOS.

`exo run PROGRAM ARGS` (exo/cli/run.py) boots what `linux_app` returns. The ELF checks are
exo's own (exo/build/elf.py parse_elf: static ET_EXEC, W^X, one segment per page), plus the
Linux-specific refusals below, each one line naming the file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from exo.abi import EXO_REGION_END, HYPERCALL_PAGE, PERM_R, PERM_W, PERM_X, USER_TOP
from exo.build.elf import PF_W, PF_X, parse_elf, read_symbols
from exo.build.image import Image, Segment
from exo.build.manifest import Manifest
from exo.errors import ExoUserError
from exo.linux import HWCAP, PIE_BASE

# The environment a Linux program gets: fixed, never the host's (deterministic runs).
DEFAULT_ENV = (b"PATH=/bin:/sbin:/usr/bin:/usr/sbin", b"HOME=/root", b"TERM=linux", b"LANG=C")
_PT_INTERP = 3
_STT_FUNC = 2


def _refuse_linux_only(blob: bytes, name: str) -> None:
    """What parse_elf would report less helpfully for a Linux program."""
    if blob[:2] == b"#!":
        line = blob.split(b"\n", 1)[0][:80].decode(errors="replace")
        raise ExoUserError(name, f"a script ({line}): run its interpreter, e.g. exo run /bin/busybox sh FILE")
    if blob[:4] != b"\x7fELF":
        raise ExoUserError(name, "not an ELF executable")
    if blob[4:5] == b"\x01":
        raise ExoUserError(name, "32-bit ELF: exo runs x86-64 (ELFCLASS64) binaries only")
    if len(blob) >= 64:
        phoff, = struct.unpack_from("<Q", blob, 32)
        phentsize, phnum = struct.unpack_from("<HH", blob, 54)
        for i in range(phnum):
            at = phoff + i * phentsize
            if at + 56 > len(blob):
                break
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", blob, at)
            if p_type == _PT_INTERP:
                interp = blob[p_offset : p_offset + p_filesz].rstrip(b"\0").decode(errors="replace")
                raise ExoUserError(name, f"dynamically linked (interpreter {interp}): link statically (-static)")


def _phdr_va(blob: bytes, phoff: int, phnum: int) -> int:
    """AT_PHDR: where a PT_LOAD segment maps the program headers (glibc finds PT_TLS through it)."""
    phentsize, = struct.unpack_from("<H", blob, 54)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", blob, phoff + i * phentsize)
        if p_type == 1 and p_offset <= phoff and phoff + phnum * phentsize <= p_offset + p_filesz:  # PT_LOAD
            return p_vaddr + phoff - p_offset
    return 0  # not mapped: a program that needs it fails as it would on Linux without AT_PHDR


def linux_app(program: str | Path, argv: list[str], *, seed: int = 0, env: tuple[bytes, ...] = DEFAULT_ENV,
              flags: int = 0, blob: bytes | None = None, cwd: bytes = b"/"):
    """``(manifest, image)`` for a static Linux ``program`` run with ``argv`` (after argv[0]); the manifest
    links the posix libOS (``exo.api.App(manifest, image, resolve_libos(manifest))`` boots it)."""
    path = Path(program)
    if blob is None:  # else: read from a disk image by the caller (exo run --disk IMAGE /bin/sh)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise ExoUserError(str(program), f"cannot read: {e.strerror}") from None
    name = str(program)
    _refuse_linux_only(blob, name)
    elf = parse_elf(blob, name, user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END), pie_base=PIE_BASE)
    base = PIE_BASE if struct.unpack_from("<H", blob, 16)[0] == 3 else 0  # ET_DYN: a static-PIE
    segments = [Segment(f"load{i}", s.va, s.data, s.memsz,
                        PERM_R | (PERM_W if s.flags & PF_W else 0) | (PERM_X if s.flags & PF_X else 0))
                for i, s in enumerate(elf.segments)]
    phoff, = struct.unpack_from("<Q", blob, 32)
    phnum, = struct.unpack_from("<H", blob, 56)
    phdr = _phdr_va(blob, phoff, phnum)
    phdr = phdr + base if phdr else 0  # 0: the headers are not mapped
    try:
        symbols = {n: v + base for n, (v, _, t) in read_symbols(blob, name).items() if t == _STT_FUNC}
    except ExoUserError:
        symbols = {}  # stripped or damaged: reports show addresses
    image = Image(path.name, elf.entry, segments, symbols)
    end = max(s.va + s.memsz for s in elf.segments)
    image.linux = {"path": name.encode(), "env": env, "seed": seed, "phdr": phdr, "phnum": phnum,
                   "entry": elf.entry, "brk_start": (end + 0xFFF) & ~0xFFF, "hwcap": HWCAP, "file": blob, "flags": flags, "cwd": cwd}
    manifest = Manifest(path, path.name, [path], libos={"memory": "cow", "posix": "linux", "net": "tcpip"}, args=list(argv))
    return manifest, image
