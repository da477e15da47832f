"""Solution regions: the code a lab removes, marked in the reference sources themselves.

A region is a run of lines between two marker comments, in the comment syntax of its file::

    # LAB N BEGIN pick: pick the next runnable thread      (Python; N is the lab's number)
    ...the reference solution...
    # LAB N END

``; LAB N ...`` in guest assembly and ``// LAB N ...`` in C take the same form. Optionally the
region ends with a stub of its own, written as comments after a ``LAB N STUB`` line; without one, the
stub is the language's default (`default_stub`): Python raises ``NotImplementedError`` naming the
lab, the exercise and the file; assembly and C print that message on the console and exit with
status `STUB_EXIT`. Cutting a tree for lab N stubs every region of lab N and later and keeps the
solution of earlier labs (`cut`); the reference tree keeps them all and stays the complete solution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exo.errors import ExoUserError

STUB_EXIT = 99  # the exit status of a guest that reached a stub: not a status any app uses

# File suffix -> comment prefix. Every language a lab touches is here.
COMMENT = {".py": "#", ".s": ";", ".asm": ";", ".inc": ";", ".c": "//", ".h": "//"}

_MARK = re.compile(r"^(?P<indent>[ \t]*)(?P<prefix>#|;|//)[ \t]*LAB[ \t]+(?P<n>\d+)[ \t]+"
                   r"(?P<kind>BEGIN|STUB|END)\b[ \t]*(?P<rest>.*?)\s*$")
_BEGIN_REST = re.compile(r"^(?P<id>[A-Za-z0-9_.\-]+)[ \t]*:[ \t]*(?P<what>\S.*)$")


@dataclass(frozen=True)
class Region:
    lab: int
    id: str
    what: str  # the exercise, as the student reads it
    path: str  # relative to the tree's root, as the stub names it
    begin: int  # 0-based line numbers of the BEGIN, STUB (or None) and END markers
    stub: int | None
    end: int
    indent: str

    @property
    def message(self) -> str:
        return f"LAB {self.lab} ({self.id}): {self.what} -- {self.path}"


def find(text: str, path: str) -> list[Region]:
    """The regions in one file's text; a malformed marker is an ExoUserError naming file and line."""
    prefix = COMMENT.get(Path(path).suffix)
    regions: list[Region] = []
    open_: dict | None = None
    for i, line in enumerate(text.splitlines()):
        m = _MARK.match(line)
        if m is None:
            continue
        where = f"{path}:{i + 1}"
        if prefix is None or m["prefix"] != prefix:
            raise ExoUserError(where, f"a LAB marker must use this file's comment syntax ({prefix or 'none known'})")
        n, kind = int(m["n"]), m["kind"]
        if kind == "BEGIN":
            if open_ is not None:
                raise ExoUserError(where, f"LAB {n} BEGIN inside the region opened at line {open_['begin'] + 1}")
            r = _BEGIN_REST.match(m["rest"])
            if r is None:
                raise ExoUserError(where, "expected 'LAB N BEGIN id: what the student does'")
            open_ = {"lab": n, "id": r["id"], "what": r["what"], "begin": i, "stub": None, "indent": m["indent"]}
            continue
        if open_ is None:
            raise ExoUserError(where, f"LAB {n} {kind} without a BEGIN")
        if n != open_["lab"]:
            raise ExoUserError(where, f"LAB {n} {kind} closes the LAB {open_['lab']} region of line {open_['begin'] + 1}")
        if kind == "STUB":
            if open_["stub"] is not None:
                raise ExoUserError(where, "a second STUB in one region")
            open_["stub"] = i
        else:
            regions.append(Region(path=path, end=i, **open_))
            open_ = None
    if open_ is not None:
        raise ExoUserError(f"{path}:{open_['begin'] + 1}", f"LAB {open_['lab']} BEGIN without an END")
    return regions


def _label(region: Region) -> str:
    return "labstub_" + re.sub(r"\W", "_", f"{region.lab}_{region.id}_{region.begin}")


def default_stub(region: Region) -> list[str]:
    """The lines that stand in for a region without a STUB of its own."""
    ind, msg = region.indent, region.message
    suffix = Path(region.path).suffix
    if suffix == ".py":
        return [f"{ind}raise NotImplementedError({msg!r})"]
    quoted = msg.replace("\\", "\\\\").replace('"', '\\"')
    if suffix in (".c", ".h"):
        return [f'{ind}{{ static const char m_[] = "{quoted}\\n"; exo_console_write((long)m_, sizeof m_ - 1); '
                f"exo_sched_op(SCHED_EXIT, {STUB_EXIT}); }}"]
    lab = _label(region)
    # The message goes in .data (the assembler takes data only there); a region is code, in .text.
    return ["section .data",
            f"{lab}_msg:",
            f'{ind}db "{quoted}", 10',
            "section .text",
            f"{ind}lea rdi, [rip + {lab}_msg]",
            f"{ind}mov esi, {len(msg.encode()) + 1}",
            f"{ind}call HC_CONSOLE_WRITE",
            f"{ind}mov edi, SCHED_EXIT",
            f"{ind}mov esi, {STUB_EXIT}",
            f"{ind}call HC_SCHED_OP"]


def _uncomment(line: str, prefix: str) -> str:
    m = re.match(rf"^([ \t]*){re.escape(prefix)} ?(.*)$", line)
    return m[1] + m[2] if m else line


@dataclass(frozen=True)
class Piece:
    """A run of lines of a cut file: text outside every region (``region`` None), or what one
    region became (its solution for an earlier lab, its stub otherwise)."""

    region: Region | None
    lines: tuple[str, ...]  # with their line ends, as the cut file has them


def pieces(text: str, path: str, lab: int) -> list[Piece]:
    """`cut`, piece by piece: where each region's text lies in the cut file (``lab new --from``
    finds a student's code for a region by lining these up with the student's file)."""
    lines = text.splitlines(keepends=True)
    eol = "\n"
    out: list[Piece] = []
    pos = 0
    prefix = COMMENT.get(Path(path).suffix, "#")
    for r in find(text, path):
        out.append(Piece(None, tuple(lines[pos:r.begin])))
        if r.lab < lab:
            body = lines[r.begin + 1:r.stub if r.stub is not None else r.end]
        elif r.stub is not None:
            body = [_uncomment(s.rstrip("\r\n"), prefix) + eol for s in lines[r.stub + 1:r.end]]
        else:
            body = [s + eol for s in default_stub(r)]
        out.append(Piece(r, tuple(body)))
        pos = r.end + 1
    out.append(Piece(None, tuple(lines[pos:])))
    return out


def cut(text: str, path: str, lab: int) -> str:
    """The file as the student tree of ``lab`` has it: regions of ``lab`` and later stubbed, earlier
    ones with their solution and without markers."""
    return "".join(line for piece in pieces(text, path, lab) for line in piece.lines)


def strip_markers(text: str, path: str) -> str:
    """The reference solution without any marker (what a tree past every lab has)."""
    return cut(text, path, lab=10**9)
