"""Static ELF64 executables: headers parsed with construct, checked before loading.

Only what a static x86-64 executable needs: the file header (ELF-64 Object File
Format, version 1.5, section 3) and program headers (section 6); PT_LOAD
segments are loaded with their own permissions. Position-independent and
dynamically linked files are refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import Bytes, Const, ConstructError, Int16ul, Int32ul, Int64ul, Struct

from exo.errors import ExoUserError

ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
PF_X, PF_W, PF_R = 1, 2, 4

Elf64Header = Struct(
    "magic" / Const(b"\x7fELF"),
    "ei_class" / Bytes(1),
    "ei_data" / Bytes(1),
    "ei_version" / Bytes(1),
    "ei_pad" / Bytes(9),
    "e_type" / Int16ul,
    "e_machine" / Int16ul,
    "e_version" / Int32ul,
    "e_entry" / Int64ul,
    "e_phoff" / Int64ul,
    "e_shoff" / Int64ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)

Elf64Phdr = Struct(
    "p_type" / Int32ul,
    "p_flags" / Int32ul,
    "p_offset" / Int64ul,
    "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul,
    "p_filesz" / Int64ul,
    "p_memsz" / Int64ul,
    "p_align" / Int64ul,
)


@dataclass
class ElfSegment:
    va: int
    data: bytes
    memsz: int
    flags: int  # PF_R | PF_W | PF_X


@dataclass
class ElfImage:
    entry: int
    segments: list[ElfSegment]


def parse_elf(blob: bytes, name: str, *, user_top: int, forbidden: tuple[int, int],
              user_bottom: int = 0x10000) -> ElfImage:
    """Parse and check a static ELF64 x86-64 executable; errors name ``name``."""
    if len(blob) < Elf64Header.sizeof():
        raise ExoUserError(name, f"too short for an ELF header ({len(blob)} bytes)")
    try:
        h = Elf64Header.parse(blob)
    except ConstructError:
        raise ExoUserError(name, "not an ELF file (bad magic)") from None
    if h.ei_class != b"\x02":
        raise ExoUserError(name, "not a 64-bit ELF file (ELFCLASS64 expected)")
    if h.ei_data != b"\x01":
        raise ExoUserError(name, "not a little-endian ELF file")
    if h.e_machine != EM_X86_64:
        raise ExoUserError(name, f"ELF machine {h.e_machine} is not x86-64 (62)")
    if h.e_type == ET_DYN:
        raise ExoUserError(name, "position-independent or shared ELF (ET_DYN): link with -static -no-pie")
    if h.e_type != ET_EXEC:
        raise ExoUserError(name, f"ELF type {h.e_type} is not an executable (ET_EXEC)")
    if h.e_phentsize != Elf64Phdr.sizeof() or h.e_phnum == 0:
        raise ExoUserError(name, "no usable program headers")
    end = h.e_phoff + h.e_phnum * h.e_phentsize
    if end > len(blob):
        raise ExoUserError(name, f"program headers end at {end:#x}, past the end of the file ({len(blob):#x})")
    segments = []
    for i in range(h.e_phnum):
        ph = Elf64Phdr.parse(blob[h.e_phoff + i * h.e_phentsize :])
        if ph.p_type in (PT_INTERP, PT_DYNAMIC):
            raise ExoUserError(name, "dynamically linked ELF: guests need static executables")
        if ph.p_type != PT_LOAD or ph.p_memsz == 0:
            continue
        where = f"segment {i} at {ph.p_vaddr:#x}"
        if ph.p_filesz > ph.p_memsz:
            raise ExoUserError(name, f"{where}: file size {ph.p_filesz:#x} exceeds memory size {ph.p_memsz:#x}")
        if ph.p_offset + ph.p_filesz > len(blob):
            raise ExoUserError(name, f"{where}: data runs past the end of the file")
        if ph.p_vaddr < user_bottom or ph.p_vaddr + ph.p_memsz > user_top or ph.p_vaddr + ph.p_memsz < ph.p_vaddr:
            raise ExoUserError(name, f"{where}: outside user space")
        if ph.p_vaddr < forbidden[1] and ph.p_vaddr + ph.p_memsz > forbidden[0]:
            raise ExoUserError(name, f"{where}: overlaps the exokernel region {forbidden[0]:#x}-{forbidden[1]:#x}")
        if ph.p_flags & PF_W and ph.p_flags & PF_X:
            raise ExoUserError(name, f"{where}: both writable and executable (W^X): link with -z separate-code")
        data = blob[ph.p_offset : ph.p_offset + ph.p_filesz]
        segments.append(ElfSegment(ph.p_vaddr, data, ph.p_memsz, ph.p_flags))
    if not segments:
        raise ExoUserError(name, "no loadable segments")
    if not any(s.va <= h.e_entry < s.va + s.memsz and s.flags & PF_X for s in segments):
        raise ExoUserError(name, f"entry point {h.e_entry:#x} is not in an executable segment")
    spans = sorted((s.va & ~0xFFF, (s.va + s.memsz + 0xFFF) & ~0xFFF) for s in segments)
    for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ExoUserError(name, f"segments share the page at {b0:#x} (exo maps each segment on its own pages)")
    return ElfImage(h.e_entry, segments)


def build_elf(entry: int, segments: list[ElfSegment]) -> bytes:
    """A minimal static ELF64 executable (for tests and tools)."""
    phoff = Elf64Header.sizeof()
    offset = phoff + Elf64Phdr.sizeof() * len(segments)
    headers, payload = [], b""
    for s in segments:
        headers.append(Elf64Phdr.build(dict(p_type=PT_LOAD, p_flags=s.flags, p_offset=offset + len(payload),
                                             p_vaddr=s.va, p_paddr=s.va, p_filesz=len(s.data),
                                             p_memsz=s.memsz, p_align=0x1000)))
        payload += s.data
    header = Elf64Header.build(dict(ei_class=b"\x02", ei_data=b"\x01", ei_version=b"\x01", ei_pad=b"\0" * 9,
                                    e_type=ET_EXEC, e_machine=EM_X86_64, e_version=1, e_entry=entry,
                                    e_phoff=phoff, e_shoff=0, e_flags=0, e_ehsize=phoff,
                                    e_phentsize=Elf64Phdr.sizeof(), e_phnum=len(segments),
                                    e_shentsize=0, e_shnum=0, e_shstrndx=0))
    return header + b"".join(headers) + payload
