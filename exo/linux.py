"""The Linux process ABI as pure data and functions: the initial stack and a static ELF's load plan.

Both the exokernel's loader (the first process, exo/loader.py) and the posix libOS (`execve`,
libos/posix/exec.py) build a Linux process from a program file, so the rules live here once, with
no machine and no exokernel state: like exo/abi.py, libos may import this module.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from exo.abi import PAGE_SIZE, STACK_TOP

# auxv tags (Linux include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h)
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31
# ELF (System V gABI, ch. 5): program header types and flags
PT_LOAD, PT_INTERP = 1, 3
PF_X, PF_W, PF_R = 1, 2, 4
# AT_HWCAP: CPUID.1:EDX as exo's CPU answers it on the development host (hw/cpu.py _cpuid; measured
# 0x178bfbff; docs/posix.md); glibc reads it only for its string-function choice.
HWCAP = 0x178B_FBFF
STACK_PAGES_LINUX = 32  # 128 KiB eager stack for a Linux program (docs/posix.md)


def linux_stack(linux: dict, argv: list[bytes]) -> tuple[bytes, int]:
    """The System V initial process stack (x86-64 psABI 3.4.1; Linux fs/binfmt_elf.c
    create_elf_tables) ending at STACK_TOP: (its bytes, the RSP where argc is).

    ``linux``: env (list of bytes), seed, phdr, phnum, entry, hwcap. From the top: AT_RANDOM's 16
    bytes, "x86_64", the argv and envp strings, then, 16-byte aligned, argc, argv[], NULL, envp[],
    NULL, auxv (AT_NULL last). No AT_SYSINFO_EHDR: no vDSO, so clock_gettime stays a counted
    `syscall` on the guest clock.
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
           (AT_RANDOM, addrs[0]), (AT_HWCAP2, 0), (AT_EXECFN, argv_va[0] if argv_va else 0), (AT_NULL, 0)]
    words = [len(argv), *argv_va, 0, *env_va, 0, *(x for pair in aux for x in pair)]
    rsp = (base - 8 * len(words)) & ~15
    table = struct.pack(f"<{len(words)}Q", *words)
    return table + bytes(base - rsp - len(table)) + area, rsp


class Load(NamedTuple):
    """One PT_LOAD: ``filesz`` bytes of the file at ``offset`` go to ``va``, zeros up to ``memsz``."""

    va: int
    offset: int
    filesz: int
    memsz: int
    flags: int  # PF_R | PF_W | PF_X


# Where a static-PIE (ET_DYN, no PT_INTERP) is placed: Linux's ELF_ET_DYN_BASE on x86-64 without
# address randomisation, 2/3 of the 47-bit user space (arch/x86/include/asm/elf.h), the base gdb
# shows for a PIE run with ASLR off. The program relocates itself (glibc's _dl_relocate_static_pie,
# musl's _dlstart) from its PT_DYNAMIC.
PIE_BASE = 0x5555_5555_4000


class LoadPlan(NamedTuple):
    entry: int
    loads: list[Load]
    phdr: int  # AT_PHDR: the address of the program headers (in the LOAD that covers e_phoff)
    phnum: int


class NotExecutable(ValueError):
    """The file is not a static x86-64 ELF executable exo can run; the message says why."""


def load_plan(blob: bytes) -> LoadPlan:
    """The load plan of a static ET_EXEC x86-64 ELF (what `execve` maps): NotExecutable otherwise.

    The exokernel's loader checks much more (exo/build/elf.py: W^X, one segment per page, the exo
    region); a program that passed them there passes here, and a file that fails here is refused
    by `execve` with -ENOEXEC, as Linux does for what its binfmt handlers do not take."""
    if blob[:4] != b"\x7fELF":
        raise NotExecutable("not an ELF file")
    if len(blob) < 64 or blob[4] != 2 or blob[5] != 1:
        raise NotExecutable("not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", blob, 16)
    if e_type not in (2, 3) or e_machine != 62:  # ET_EXEC or ET_DYN (a static-PIE), EM_X86_64
        raise NotExecutable("not a static x86-64 executable (ET_EXEC or static-PIE, EM_X86_64)")
    base = PIE_BASE if e_type == 3 else 0
    entry, phoff = struct.unpack_from("<QQ", blob, 24)
    entry += base
    phentsize, phnum = struct.unpack_from("<HH", blob, 54)
    if phentsize != 56 or phoff + phnum * 56 > len(blob):
        raise NotExecutable("program headers outside the file")
    loads, phdr = [], 0
    for i in range(phnum):
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", blob,
                                                                                         phoff + 56 * i)
        if p_type == PT_INTERP:
            raise NotExecutable("dynamically linked")
        if p_type != PT_LOAD:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > len(blob) or p_vaddr % PAGE_SIZE != p_offset % PAGE_SIZE:
            raise NotExecutable(f"a bad PT_LOAD at {p_vaddr:#x}")
        loads.append(Load(p_vaddr + base, p_offset, p_filesz, p_memsz, p_flags))
        if p_offset <= phoff and phoff + phnum * 56 <= p_offset + p_filesz:
            phdr = p_vaddr + base + phoff - p_offset
    if not loads:
        raise NotExecutable("nothing to load")
    return LoadPlan(entry, loads, phdr, phnum)
