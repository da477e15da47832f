"""Static ELF64 executables: headers parsed with construct, checked before loading.

Only what a static x86-64 executable needs: the file header (ELF-64 Object File
Format, version 1.5, section 3) and program headers (section 6); PT_LOAD
segments are loaded with their own permissions. Position-independent and
dynamically linked files are refused with a clear message.

The other way: `write_elf` writes an assembled image as an ET_EXEC file with
section headers and a symbol table (``exo image APP --elf OUT``, for gdb and
objdump), and `read_symbols` reads a .symtab back (an ELF guest's names in its
fault reports). docs/debugging.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

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
              user_bottom: int = 0x10000, pie_base: int = 0) -> ElfImage:
    """Parse and check a static ELF64 x86-64 executable; errors name ``name``.

    ``pie_base``: a static-PIE (ET_DYN without PT_INTERP, which relocates itself) is placed there,
    every address shifted by it; 0 refuses ET_DYN (exo's own guests are ET_EXEC)."""
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
    base = 0
    if h.e_type == ET_DYN:
        if not pie_base:
            raise ExoUserError(name, "position-independent or shared ELF (ET_DYN): link with -static -no-pie")
        base = pie_base
    elif h.e_type != ET_EXEC:
        raise ExoUserError(name, f"ELF type {h.e_type} is not an executable (ET_EXEC)")
    if h.e_phentsize != Elf64Phdr.sizeof() or h.e_phnum == 0:
        raise ExoUserError(name, "no usable program headers")
    end = h.e_phoff + h.e_phnum * h.e_phentsize
    if end > len(blob):
        raise ExoUserError(name, f"program headers end at {end:#x}, past the end of the file ({len(blob):#x})")
    segments = []
    for i in range(h.e_phnum):
        ph = Elf64Phdr.parse(blob[h.e_phoff + i * h.e_phentsize :])
        if ph.p_type == PT_INTERP or (ph.p_type == PT_DYNAMIC and not base):
            raise ExoUserError(name, "dynamically linked ELF: guests need static executables")
        if ph.p_type != PT_LOAD or ph.p_memsz == 0:
            continue
        ph.p_vaddr += base  # a static-PIE's addresses are offsets from where it is placed
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
    entry = h.e_entry + base
    if not any(s.va <= entry < s.va + s.memsz and s.flags & PF_X for s in segments):
        raise ExoUserError(name, f"entry point {entry:#x} is not in an executable segment")
    spans = sorted((s.va & ~0xFFF, (s.va + s.memsz + 0xFFF) & ~0xFFF) for s in segments)
    for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ExoUserError(name, f"segments share the page at {b0:#x} (exo maps each segment on its own pages)")
    return ElfImage(entry, segments)


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


# ------------------------------------------------------------ an image as an ELF file, with symbols
# Section header and symbol table entry (ELF-64 Object File Format 1.5, "Sections", "Symbol Table"),
# little-endian, written with struct: the layouts are fixed and need no parser library.
_EHDR = "<4s5B7xHHIQQQIHHHHHH"
_PHDR = "<IIQQQQQQ"
_SHDR = "<IIQQQQIIQQ"
_SYM = "<IBBHQQ"
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STT_OBJECT, STT_FUNC = 1, 2
STB_GLOBAL = 1
SHN_ABS = 0xFFF1
_PAGE = 0x1000  # p_align of every PT_LOAD: exo maps each segment on its own 4 KiB pages


@dataclass
class ElfSection:
    name: str
    va: int
    data: bytes  # empty for SHT_NOBITS
    memsz: int
    flags: int  # PF_R | PF_W | PF_X, as the segment holding it


@dataclass
class ElfSymbol:
    name: str
    value: int
    size: int
    kind: int  # STT_FUNC or STT_OBJECT
    section: str | None  # None: an absolute symbol outside every section


def _strtab(names: list[str]) -> tuple[bytes, dict[str, int]]:
    blob, where = bytearray(b"\0"), {"": 0}
    for n in names:
        if n not in where:
            where[n] = len(blob)
            blob += n.encode() + b"\0"
    return bytes(blob), where


def label_symbols(labels: dict[str, int], sections: list[ElfSection]) -> list[ElfSymbol]:
    """Every label as a symbol: STT_FUNC in an executable section, STT_OBJECT otherwise; its size runs
    to the next label (or its section's end). Of labels sharing an address only the last defined gets
    the size, the others 0: gdb names an address after a sized symbol first (minsyms.c, "keep
    scanning backwards looking for one with a non-zero size"), and `Image.symbolize` picks the same."""
    def home(v: int) -> ElfSection | None:
        return next((s for s in sections if s.va <= v < s.va + s.memsz), None) or \
            next((s for s in sections if v == s.va + s.memsz), None)

    ordered = sorted(enumerate(labels.items()), key=lambda t: (t[1][1], t[0]))
    out = []
    for i, (_, (name, value)) in enumerate(ordered):
        sec = home(value)
        end = sec.va + sec.memsz if sec else value
        nxt = ordered[i + 1][1][1] if i + 1 < len(ordered) else None
        size = max(0, min(end, nxt) - value) if nxt is not None else max(0, end - value)
        kind = STT_FUNC if sec is not None and sec.flags & PF_X else STT_OBJECT
        out.append(ElfSymbol(name, value, size, kind, sec.name if sec else None))
    return out


def write_elf(entry: int, sections: list[ElfSection], symbols: list[ElfSymbol],
              extra: list[tuple[str, bytes]] = ()) -> bytes:
    """An ET_EXEC ELF64 x86-64 file: one PT_LOAD per section (its own pages, as exo maps it), the
    section headers, and .symtab/.strtab/.shstrtab. Segment data sits at file offsets congruent to
    their addresses modulo p_align, as a loadable segment's must be (ELF-64 1.5, "Program Header Table").
    ``extra``: (name, bytes) sections that are not loaded (the DWARF ones)."""
    ehsize, phentsize, shentsize = struct.calcsize(_EHDR), struct.calcsize(_PHDR), struct.calcsize(_SHDR)
    out = bytearray(ehsize + phentsize * len(sections))
    offsets = []
    for s in sections:
        off = len(out)
        off += (s.va - off) % _PAGE  # offset == va (mod page): what loaders and gdb check
        out += b"\0" * (off - len(out)) + s.data
        offsets.append(off)
    index = {s.name: i + 1 for i, s in enumerate(sections)}
    strtab, str_at = _strtab([y.name for y in symbols])
    symtab = bytearray(struct.pack(_SYM, 0, 0, 0, 0, 0, 0))
    for y in symbols:
        shndx = index[y.section] if y.section in index else SHN_ABS
        symtab += struct.pack(_SYM, str_at[y.name], (STB_GLOBAL << 4) | y.kind, 0, shndx, y.value, y.size)
    names = [s.name for s in sections] + [n for n, _ in extra] + [".symtab", ".strtab", ".shstrtab"]
    shstrtab, sh_at = _strtab(names)
    tables = []
    for blob in (*(b for _, b in extra), bytes(symtab), strtab, shstrtab):
        out += b"\0" * (-len(out) % 8)
        tables.append(len(out))
        out += blob
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    shdrs = [struct.pack(_SHDR, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for s, off in zip(sections, offsets):
        flags = SHF_ALLOC | (SHF_WRITE if s.flags & PF_W else 0) | (SHF_EXECINSTR if s.flags & PF_X else 0)
        nobits = not s.data and s.memsz > 0
        shdrs.append(struct.pack(_SHDR, sh_at[s.name], SHT_NOBITS if nobits else SHT_PROGBITS, flags, s.va,
                                 off, s.memsz if nobits else len(s.data), 0, 0, 16 if s.flags & PF_X else 8, 0))
    for (n, blob), off in zip(extra, tables):
        shdrs.append(struct.pack(_SHDR, sh_at[n], SHT_PROGBITS, 0, 0, off, len(blob), 0, 0, 1, 0))
    strndx = len(sections) + len(extra) + 2
    at = tables[len(extra):]
    shdrs.append(struct.pack(_SHDR, sh_at[".symtab"], SHT_SYMTAB, 0, 0, at[0], len(symtab), strndx,
                             1, 8, struct.calcsize(_SYM)))  # sh_info: first non-local symbol (all are global)
    shdrs.append(struct.pack(_SHDR, sh_at[".strtab"], SHT_STRTAB, 0, 0, at[1], len(strtab), 0, 0, 1, 0))
    shdrs.append(struct.pack(_SHDR, sh_at[".shstrtab"], SHT_STRTAB, 0, 0, at[2], len(shstrtab), 0, 0, 1, 0))
    out += b"".join(shdrs)
    phdrs = b"".join(struct.pack(_PHDR, PT_LOAD, s.flags, off, s.va, s.va, len(s.data), s.memsz, _PAGE)
                     for s, off in zip(sections, offsets))
    out[ehsize : ehsize + len(phdrs)] = phdrs
    out[:ehsize] = struct.pack(_EHDR, b"\x7fELF", 2, 1, 1, 0, 0, ET_EXEC, EM_X86_64, 1, entry, ehsize, shoff, 0,
                               ehsize, phentsize, len(sections), shentsize, len(shdrs), len(shdrs) - 1)
    return bytes(out)


class ElfSectionHeader(NamedTuple):
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


def read_sections(blob: bytes, name: str) -> list[ElfSectionHeader]:
    """The section headers, in file order (index 0, the null section, included)."""
    h = Elf64Header.parse(blob)
    n = struct.calcsize(_SHDR)
    if h.e_shoff == 0 or h.e_shnum == 0:
        return []
    if h.e_shentsize != n or h.e_shoff + h.e_shnum * n > len(blob) or h.e_shstrndx >= h.e_shnum:
        raise ExoUserError(name, "section headers are damaged")
    raw = [struct.unpack_from(_SHDR, blob, h.e_shoff + i * n) for i in range(h.e_shnum)]
    names_off = raw[h.e_shstrndx][4]
    return [ElfSectionHeader(_cstr(blob, names_off + r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[9])
            for r in raw]


def _cstr(blob: bytes, at: int) -> str:
    end = blob.find(b"\0", at)
    return blob[at : end if end >= 0 else len(blob)].decode(errors="replace")


def read_symbols(blob: bytes, name: str) -> dict[str, tuple[int, int, int]]:
    """An ELF file's .symtab as {name: (value, size, STT type)}: named function and object symbols
    defined in a section (what a fault report or `exo image --elf` needs)."""
    sections = read_sections(blob, name)
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        return {}
    if (symtab.entsize != struct.calcsize(_SYM) or symtab.offset + symtab.size > len(blob)
            or symtab.link >= len(sections)):
        raise ExoUserError(name, "symbol table is damaged")
    strtab = sections[symtab.link].offset
    out = {}
    for at in range(symtab.offset + symtab.entsize, symtab.offset + symtab.size, symtab.entsize):
        st_name, info, _, shndx, value, size = struct.unpack_from(_SYM, blob, at)
        if st_name and info & 0xF in (STT_OBJECT, STT_FUNC) and shndx:
            out[_cstr(blob, strtab + st_name)] = (value, size, info & 0xF)
    return out


# ------------------------------------------------------------ DWARF line numbers for assembly
# DWARF 3 (dwarf.org, DWARF Debugging Information Format Version 3): one compilation unit (.debug_info,
# 7.5; its abbreviation in .debug_abbrev, 7.5.3) whose DW_AT_stmt_list points at a line-number program
# (.debug_line, 6.2) made of standard opcodes only: set_address, then per row advance_pc,
# advance_line, set_file, copy. gdb reads line tables only through a compilation unit.
DW_TAG_compile_unit = 0x11
DW_AT_name, DW_AT_stmt_list, DW_AT_low_pc, DW_AT_high_pc, DW_AT_language = 0x03, 0x10, 0x11, 0x12, 0x13
DW_FORM_addr, DW_FORM_data2, DW_FORM_data4, DW_FORM_string = 0x01, 0x05, 0x06, 0x08
DW_LANG_Mips_Assembler = 0x8001  # the DWARF 3 language code for assembly (7.12)
DW_LNS_copy, DW_LNS_advance_pc, DW_LNS_advance_line, DW_LNS_set_file = 1, 2, 3, 4
DW_LNE_end_sequence, DW_LNE_set_address = 1, 2
_OPCODE_LENGTHS = bytes([0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1])  # operands of standard opcodes 1-12 (6.2.5.2)


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


def debug_line_sections(rows: list[tuple[int, str, int]], low: int, high: int, name: str) -> list[tuple[str, bytes]]:
    """.debug_abbrev, .debug_info and .debug_line for code rows (address, absolute file path, line),
    sorted by address, all in [low, high)."""
    files = list(dict.fromkeys(f for _, f, _ in rows))
    header = bytes([1, 1, (-5) & 0xFF, 14, 13]) + _OPCODE_LENGTHS  # min insn length, default_is_stmt, line_base, range, opcode_base
    header += b"\0"  # no include directories: file names are absolute
    header += b"".join(f.encode() + b"\0" + _uleb(0) + _uleb(0) + _uleb(0) for f in files) + b"\0"
    prog = bytearray(b"\0" + _uleb(9) + bytes([DW_LNE_set_address]) + struct.pack("<Q", low))
    addr, line, file = low, 1, 1
    for a, f, n in rows:
        if a > addr:
            prog += bytes([DW_LNS_advance_pc]) + _uleb(a - addr)
            addr = a
        if n != line:
            prog += bytes([DW_LNS_advance_line]) + _sleb(n - line)
            line = n
        if files.index(f) + 1 != file:
            file = files.index(f) + 1
            prog += bytes([DW_LNS_set_file]) + _uleb(file)
        prog.append(DW_LNS_copy)
    prog += bytes([DW_LNS_advance_pc]) + _uleb(high - addr) + b"\0" + _uleb(1) + bytes([DW_LNE_end_sequence])
    body = struct.pack("<H", 3) + struct.pack("<I", len(header)) + header + bytes(prog)
    debug_line = struct.pack("<I", len(body)) + body
    abbrev = _uleb(1) + _uleb(DW_TAG_compile_unit) + b"\0" + b"".join(
        _uleb(a) + _uleb(f) for a, f in ((DW_AT_name, DW_FORM_string), (DW_AT_stmt_list, DW_FORM_data4),
                                         (DW_AT_low_pc, DW_FORM_addr), (DW_AT_high_pc, DW_FORM_addr),
                                         (DW_AT_language, DW_FORM_data2), (0, 0))) + b"\0"
    die = _uleb(1) + name.encode() + b"\0" + struct.pack("<IQQH", 0, low, high, DW_LANG_Mips_Assembler)
    info_body = struct.pack("<HIB", 3, 0, 8) + die  # version 3, abbrev offset 0, 8-byte addresses
    return [(".debug_abbrev", abbrev), (".debug_info", struct.pack("<I", len(info_body)) + info_body),
            (".debug_line", debug_line)]
