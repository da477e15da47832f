"""Source lines of guest code: ``address -> "file:line"`` for fault reports and the watchdog.

Two sources, both read only when a report needs a line (never on a boot's path):

* an assembly app: its sources assembled again with a label per line (`image.source_lines`,
  the rows `exo image --elf` writes as DWARF);
* an ELF guest: its own DWARF line table (``.debug_line``, DWARF 2-5, as gcc ``-g`` writes it),
  decoded with pyelftools. Why a dependency: the line-number program has three header layouts
  (v2-3, v4, v5 with its entry formats and string forms) and gcc emits all of them depending on
  the version and flags; pyelftools decodes every one and is the library gdb-adjacent Python tools
  use. A stripped binary, or one whose debug sections are damaged, simply has no lines.

A row covers the addresses from its own to the next row's (DWARF's rule, DWARF 5 6.2.2): the line
of an address is the last row at or below it, unless an end-of-sequence row comes first.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable

Rows = list[tuple[int, str | None, int]]  # (address, file, line); file None: end of a sequence


class LineTable:
    """Looks addresses up in a sorted row list."""

    def __init__(self, rows: Rows) -> None:
        rows = sorted(rows, key=lambda r: (r[0], r[1] is not None))  # an end row before a start at one address
        self._addrs = [a for a, _, _ in rows]
        self._rows = rows

    def __len__(self) -> int:
        return sum(1 for _, f, _ in self._rows if f is not None)

    def lookup(self, addr: int) -> str | None:
        """``"file:line"`` of the code at ``addr``, or None where no row covers it."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        _, file, line = self._rows[i]
        if file is None:
            return None
        return f"{_display(file)}:{line}"


def _display(path: str) -> str:
    """A path as a student reads it: relative to the working directory when under it."""
    if not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel


def table_or_empty(load: Callable[[], Rows]) -> LineTable:
    """The table of ``load()``'s rows; an empty one if they cannot be read (a report must still come out)."""
    try:
        return LineTable(load())
    except Exception:  # noqa: BLE001 - any failure to read lines only costs the report its lines
        return LineTable([])


def elf_rows(path: str | os.PathLike[str]) -> Rows:
    """The rows of an ELF file's DWARF line programs; [] when it has none (or they are damaged)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    rows: Rows = []
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return []
            dwarf = elf.get_dwarf_info()
            for cu in dwarf.iter_CUs():
                program = dwarf.line_program_for_CU(cu)
                if program is None:
                    continue
                files = _file_names(program, cu)
                for entry in program.get_entries():
                    state = entry.state
                    if state is None:
                        continue
                    if state.end_sequence:
                        rows.append((state.address, None, 0))
                    else:
                        rows.append((state.address, files.get(state.file), state.line))
    except (ELFError, OSError, KeyError, IndexError, ValueError, AssertionError):
        return []
    return [r for r in rows if r[1] is not None or r[2] == 0]


def _file_names(program, cu) -> dict[int, str]:
    """File index -> path. DWARF 5 numbers files from 0 (entry 0 is the compilation's primary
    file); earlier versions from 1 (DWARF 5 6.2.4 item 20; DWARF 4 6.2.4 item 15)."""
    header = program.header
    version = header["version"]
    dirs = [_str(d) for d in header["include_directory"]]
    top = cu.get_top_DIE()
    comp_dir = _str(top.attributes["DW_AT_comp_dir"].value) if "DW_AT_comp_dir" in top.attributes else ""
    base = 0 if version >= 5 else 1
    out = {}
    for i, fe in enumerate(header["file_entry"]):
        name = _str(fe.name)
        d = fe.dir_index
        if version >= 5:  # directory 0 is the compilation's; the others are relative to it
            first = dirs[0] if dirs else comp_dir
            path = os.path.join(first, dirs[d] if 0 < d < len(dirs) else "", name)
        else:  # directories from 1, relative to the compilation directory; 0 is that directory
            path = os.path.join(comp_dir, dirs[d - 1] if 0 < d <= len(dirs) else "", name)
        out[i + base] = os.path.normpath(path)
    return out


def _str(v: bytes | str) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
