"""Guest images: the bytes to load, where, with which permissions; built once and cached.

An assembled image is cached under ``$EXO_CACHE_DIR`` (default
``~/.cache/exo``), keyed by a hash of the manifest, every assembly file of the
app and of the shared include directory, and the ABI; a second boot loads the
cached image instead of reassembling.

This is on every boot's start-up path, so it imports little: the cache file is
``marshal`` data (built in: json and base64 cost 1.5 ms of imports) and the key
is hashed with the interpreter's own SHA-256 (``_sha256``; ``hashlib`` loads
OpenSSL first, about 3 ms). Same key, same image; only the encoding is lean.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Callable
from pathlib import Path

from exo.abi import EXO_REGION_END, HYPERCALL_PAGE, IMAGE_BASE, PERM_R, PERM_W, PERM_X, USER_TOP
from exo.build import sha256
from exo.build.manifest import Manifest
from exo.errors import ExoUserError
from exo.record import Record

CACHE_VERSION = 3  # 3: marshal instead of JSON

INCLUDE_DIR = Path(__file__).resolve().parents[2] / "guest_apps" / "include"


class Segment(Record):
    _FIELDS = ('name', 'va', 'data', 'memsz', 'perm')

    def __init__(self, name: str, va: int, data: bytes, memsz: int, perm: int) -> None:
        self.name = name
        self.va = va
        self.data = data
        self.memsz = memsz
        self.perm = perm



class Image(Record):
    _FIELDS = ('name', 'entry', 'segments', 'symbols', 'from_cache')

    def __init__(self, name: str, entry: int, segments: list[Segment], symbols: dict[str, int] | None = None,
                 from_cache: bool = False) -> None:
        self.name = name
        self.entry = entry
        self.segments = segments
        self.symbols = {} if symbols is None else symbols
        self.from_cache = from_cache
        # address -> "file:line" (`build_image` sets it; read on a fault only: exo/build/lines.py)
        self.line_of: Callable[[int], str | None] | None = None

    @property
    def size(self) -> int:
        return sum(s.memsz for s in self.segments)

    def symbolize(self, addr: int) -> str | None:
        """``label+0x12`` for an address in the image (for fault reports). Of labels at one address
        the last defined names it (the innermost, as in ``_start: read_more:``), as gdb does with
        the ELF `elf_file` writes (`exo.build.elf.label_symbols`)."""
        best = None
        for name, value in self.symbols.items():
            if value <= addr and (best is None or value >= best[1]):
                if any(s.va <= value < s.va + s.memsz for s in self.segments):
                    best = (name, value)
        if best is None or not any(s.va <= addr < s.va + s.memsz for s in self.segments):
            return None
        off = addr - best[1]
        return f"{best[0]}+{off:#x}" if off else best[0]


_SECTION_PERMS = {".text": PERM_R | PERM_X, ".rodata": PERM_R, ".data": PERM_R | PERM_W, ".bss": PERM_R | PERM_W}


def predefined_symbols() -> dict[str, int]:
    """Constants every assembly source may use: the ABI (see docs/abi.md)."""
    from exo.build.guest_iface import asm_constants

    return asm_constants()


def _cache_dir() -> Path:
    return Path(os.environ.get("EXO_CACHE_DIR") or Path.home() / ".cache" / "exo") / "images"


def _cache_key(m: Manifest, extra: dict[str, int]) -> str:
    h = sha256()
    h.update(repr(sorted(extra.items())).encode())
    h.update(f"exo-image-v{CACHE_VERSION}".encode())
    h.update((Path(__file__).parent / "asm.py").read_bytes())  # a new assembler rebuilds
    h.update(m.path.read_bytes())
    from exo.build.guest_iface import asm_constants

    h.update(repr(sorted(asm_constants().items())).encode())
    files = set(m.sources)
    for d in (m.root, INCLUDE_DIR):
        if d.is_dir():
            files.update(p for p in d.iterdir() if p.suffix in (".s", ".asm", ".S", ".inc"))
    for f in sorted(files):
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _load_cached(path: Path) -> Image | None:
    try:
        d = marshal.loads(path.read_bytes())
        segs = [Segment(s["name"], s["va"], s["data"], s["memsz"], s["perm"]) for s in d["segments"]]
        return Image(d["name"], d["entry"], segs, d["symbols"], from_cache=True)
    except (OSError, ValueError, EOFError, KeyError, TypeError):  # a torn or foreign file: reassemble
        return None


def _store(path: Path, image: Image) -> None:
    d = {
        "name": image.name, "entry": image.entry, "symbols": image.symbols,
        "segments": [{"name": s.name, "va": s.va, "data": bytes(s.data),
                      "memsz": s.memsz, "perm": s.perm} for s in image.segments],
    }  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            marshal.dump(d, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next boot an assembly


def build_image(m: Manifest, use_cache: bool = True, extra_symbols: dict[str, int] | None = None,
                hints: dict[str, str] | None = None) -> Image:
    """The app's image. ``extra_symbols`` (the linked libOS entry points) are predefined for
    assembly; ``hints`` explain symbols the app may not use (modules it does not link)."""
    if m.is_elf:
        image = _elf_image(m)
        src = m.sources[0]
        image.line_of = _Lines(lambda: _elf_rows(src))
        return image
    extra = dict(extra_symbols or {})
    image = _asm_image(m, use_cache, extra, hints)
    image.line_of = _Lines(lambda: source_lines(m, extra, hints))
    return image


class _Lines:
    """``addr -> "file:line"``, its table read on the first call (a fault report), then kept."""

    __slots__ = ("load", "table")

    def __init__(self, load: Callable[[], list]) -> None:
        self.load = load
        self.table = None

    def __call__(self, addr: int) -> str | None:
        if self.table is None:
            from exo.build.lines import table_or_empty

            self.table = table_or_empty(self.load)
        return self.table.lookup(addr)


def _elf_rows(src: Path) -> list:
    from exo.build.lines import elf_rows

    return elf_rows(src)


def _asm_image(m: Manifest, use_cache: bool, extra: dict[str, int], hints: dict[str, str] | None) -> Image:
    key = _cache_key(m, extra)
    cached_path = _cache_dir() / f"{key}.marshal"
    if use_cache:
        cached = _load_cached(cached_path)
        if cached is not None:
            return cached
    from exo.build.asm import assemble

    asm = assemble(m.sources, IMAGE_BASE, [INCLUDE_DIR], {**predefined_symbols(), **extra},
                   display_root=m.root.parent, hints=hints)
    if m.entry not in asm.symbols:
        raise ExoUserError(str(m.path), f"entry label '{m.entry}' is not defined in the sources")
    segs = [Segment(name, va, data, memsz, _SECTION_PERMS[name]) for name, va, data, memsz in asm.segments]
    image = Image(m.name, asm.symbols[m.entry], segs, asm.labels)
    if use_cache:
        _store(cached_path, image)
    return image


def _elf_image(m: Manifest) -> Image:
    from exo.build.elf import PF_W, PF_X, parse_elf

    src = m.sources[0]
    elf = parse_elf(src.read_bytes(), str(src), user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))
    segs = []
    for s in elf.segments:
        perm = PERM_R | (PERM_W if s.flags & PF_W else 0) | (PERM_X if s.flags & PF_X else 0)
        segs.append(Segment("elf", s.va, s.data, s.memsz, perm))
    return Image(m.name, elf.entry, segs, _elf_symbols(src))


def _elf_symbols(src: Path) -> dict[str, int]:
    """The function and object symbols of an ELF guest's .symtab, for fault reports; none if it was
    stripped or its section headers are damaged (they do not matter for loading it)."""
    from exo.build.elf import read_symbols

    try:
        return {name: value for name, (value, _, _) in read_symbols(src.read_bytes(), str(src)).items()}
    except (ExoUserError, OSError):
        return {}


def source_lines(m: Manifest, extra_symbols: dict[str, int] | None = None,
                 hints: dict[str, str] | None = None) -> list[tuple[int, str, int]]:
    """(address, absolute source path, line) of every code line of an assembly app: assembled again
    with a label per line (never on a boot's path, never cached), for `elf_file`'s DWARF."""
    from exo.build.asm import assemble

    if m.is_elf:
        return []
    asm = assemble(m.sources, IMAGE_BASE, [INCLUDE_DIR], {**predefined_symbols(), **(extra_symbols or {})},
                   display_root=m.root.parent, hints=hints, line_table=True)
    return [(a, os.path.abspath(f), n) for a, f, n in asm.lines]


def elf_file(image: Image, lines: list[tuple[int, str, int]] | None = None) -> bytes:
    """The image as an ET_EXEC ELF64 file for gdb, objdump or readelf: one PT_LOAD and one section
    per segment, every label a symbol (``exo image APP --elf OUT``, docs/debugging.md). The
    hypercall stubs the exokernel maps are absolute symbols too (``call 0x100020 <HC_CONSOLE_READ>``).
    ``lines`` (`source_lines`): DWARF line numbers, so gdb shows file:line."""
    from exo.abi import HYPERCALL_STUB_SIZE, PAGE_SIZE
    from exo.build.elf import (
        PF_R,
        PF_W,
        PF_X,
        STT_FUNC,
        ElfSection,
        ElfSymbol,
        debug_line_sections,
        label_symbols,
        write_elf,
    )

    sections = [ElfSection(s.name, s.va, bytes(s.data), s.memsz,
                           (PF_R if s.perm & PERM_R else 0) | (PF_W if s.perm & PERM_W else 0)
                           | (PF_X if s.perm & PERM_X else 0)) for s in image.segments]
    stubs = [ElfSymbol(name, value, HYPERCALL_STUB_SIZE, STT_FUNC, None)
             for name, value in predefined_symbols().items()
             if name.startswith("HC_") and HYPERCALL_PAGE <= value < HYPERCALL_PAGE + PAGE_SIZE]
    extra = []
    text = next((s for s in sections if s.flags & PF_X), None)
    if lines and text is not None:
        extra = debug_line_sections(lines, text.va, text.va + text.memsz, image.name)
    return write_elf(image.entry, sections, label_symbols(image.symbols, sections) + stubs, extra)
