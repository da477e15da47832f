"""The guest assembler: Intel-syntax x86-64 with sections, via keystone.

Keystone assembles one flat block and has no sections, no symbol table and no
line numbers in its errors, so this front end supplies them:

* ``section .text|.rodata|.data|.bss`` split the source; each section gets its
  own pages (code read+execute, rodata read-only, data and bss read+write, NX):
  W^X holds by construction;
* data sections are laid out here (db/dw/dd/dq, .ascii/.asciz, times/resb/
  .space/.align), so their symbols are known before the code is assembled;
* ``NAME equ EXPR`` constants and ``%include "file"``;
* text labels are read back by appending ``.quad label`` for each and slicing
  the values off the end of keystone's output;
* comments start with ``;`` or ``#`` (keystone would treat ``;`` as a statement
  separator: shared/UNICORN_NOTES.md, trap 9);
* errors name the file and line, found by assembling growing prefixes.

Keystone 0.9.2 encodes some absolute memory operands as RIP-relative: address
data with ``lea reg, [rip + label]`` and register-indirect operands.
"""

from __future__ import annotations

import ast
import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from keystone import KS_ARCH_X86, KS_ERR_ASM_SYMBOL_MISSING, KS_MODE_64, Ks, KsError

from exo.errors import ExoUserError

PAGE = 4096
SECTIONS = (".text", ".rodata", ".data", ".bss")
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$@]*)\s*:(?!:)")
_EQU = re.compile(r"^\s*([A-Za-z_][\w.]*)\s+equ\s+(.+)$", re.I)
_DOT_EQU = re.compile(r"^\s*\.(?:equ|set)\s+([A-Za-z_][\w.]*)\s*,\s*(.+)$", re.I)
_INCLUDE = re.compile(r'^\s*[%.]include\s+"([^"]+)"\s*$', re.I)
_SECTION = re.compile(r"^\s*(?:section|\.section)\s+(\S+)", re.I)
_SHORT_SECTION = re.compile(r"^\s*\.(text|data|rodata|bss)\s*$", re.I)
_IGNORED = re.compile(r"^\s*(?:global|extern|\.globl|\.global|bits\s+64|default\s+rel|\.intel_syntax.*)\b", re.I)
_IDENT = re.compile(r"[A-Za-z_.$][\w.$@]*")


@dataclass
class Line:
    file: str
    number: int
    text: str


@dataclass
class Section:
    name: str
    lines: list[Line] = field(default_factory=list)


@dataclass
class Assembled:
    """Sections at their addresses; ``symbols`` maps labels and constants to values."""

    segments: list[tuple[str, int, bytes, int]]  # (section, va, data, memsz)
    symbols: dict[str, int]  # constants and labels
    labels: dict[str, int]  # code and data labels only (for fault reports)
    lines: list[tuple[int, str, int]] = field(default_factory=list)  # (address, file, line) with line_table


def page_up(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def strip_comment(text: str) -> str:
    out = []
    quote = None
    for i, ch in enumerate(text):
        if quote:
            out.append(ch)
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
            out.append(ch)
        elif ch in ";#":
            break
        else:
            out.append(ch)
    return "".join(out).rstrip()


# ------------------------------------------------------------- expressions
_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv, ast.Mod: operator.mod,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift,
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
}  # fmt: skip


def evaluate(expr: str, symbols: dict[str, int], where: Line) -> int:
    """A constant expression: integers (0x.., 0b.., 'c'), symbols, + - * / % << >> | & ^ ~ ( )."""
    text = expr.strip()
    if len(text) == 3 and text[0] == text[2] == "'":
        return ord(text[1])
    py = re.sub(r"\$", "_dollar_", text)
    try:
        tree = ast.parse(py, mode="eval")
    except SyntaxError:
        raise _err(where, f"cannot read the expression {expr.strip()!r}") from None

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in symbols:
                return symbols[node.id]
            raise _err(where, _HINTS.get(node.id) or f"undefined symbol '{node.id}'")
        if isinstance(node, ast.Attribute):  # names with dots: .L1 or a.b
            name = ast.unparse(node)
            if name in symbols:
                return symbols[name]
            raise _err(where, f"undefined symbol '{name}'")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else (~v if isinstance(node.op, ast.Invert) else v)
        raise _err(where, f"cannot evaluate {expr.strip()!r}")

    return ev(tree)


def _err(line: Line, problem: str) -> ExoUserError:
    return ExoUserError(f"{line.file}:{line.number}", problem)


# ------------------------------------------------------------------ reading
def read_sources(paths: list[Path], include_dirs: list[Path], display_root: Path | None = None):
    """Split sources into sections, collect ``equ`` constants, follow includes."""
    sections = {name: Section(name) for name in SECTIONS}
    consts: dict[str, tuple[str, Line]] = {}
    seen: list[Path] = []

    def show(p: Path) -> str:
        """The path as the user can open it: relative to the working directory if below it."""
        rel = os.path.relpath(p)
        return str(p) if rel.startswith("..") else rel

    def read(path: Path, current: str, depth: int) -> str:
        if depth > 16:
            raise ExoUserError(show(path), "includes nested more than 16 deep")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ExoUserError(show(path), "not a text file (assembly sources must be UTF-8)") from None
        except OSError as e:
            raise ExoUserError(show(path), f"cannot read: {e.strerror}") from None
        seen.append(path)
        for number, raw in enumerate(text.splitlines(), 1):
            line = Line(show(path), number, raw)
            code = strip_comment(raw)
            if not code.strip() or _IGNORED.match(code):
                continue
            m = _INCLUDE.match(code)
            if m:
                for d in [path.parent, *include_dirs]:
                    if (d / m.group(1)).is_file():
                        current = read(d / m.group(1), current, depth + 1)
                        break
                else:
                    raise _err(line, f"include file {m.group(1)!r} not found")
                continue
            m = _SECTION.match(code) or _SHORT_SECTION.match(code)
            if m:
                name = m.group(1).lower()
                name = name if name.startswith(".") else "." + name
                if name not in sections:
                    raise _err(line, f"unknown section {name!r} (use .text, .rodata, .data or .bss)")
                current = name
                continue
            m = _EQU.match(code) or _DOT_EQU.match(code)
            if m and not ("$" in m.group(2) and current != ".text"):
                consts[m.group(1)] = (m.group(2), line)
                continue
            # `len equ $ - msg` stays in its data section: `$` is a position there.
            sections[current].lines.append(Line(line.file, number, code))
        return current

    current = ".text"
    for p in paths:
        current = read(p, current, 0)
    return sections, consts, seen


# ---------------------------------------------------------------- data layout
_DATA_DIRECTIVES = {
    "db": 1, ".byte": 1, "dw": 2, ".word": 2, ".short": 2, ".2byte": 2,
    "dd": 4, ".long": 4, ".int": 4, ".4byte": 4, "dq": 8, ".quad": 8, ".8byte": 8,
}  # fmt: skip
_RESERVE = {"resb": 1, "resw": 2, "resd": 4, "resq": 8}


def _split_operands(text: str) -> list[str]:
    out, cur, quote = [], [], None
    for i, ch in enumerate(text):
        if quote:
            cur.append(ch)
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == ",":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _string(lit: str, line: Line) -> bytes:
    try:
        value = ast.literal_eval(lit if lit[0] == '"' else '"' + lit[1:-1].replace('"', '\\"') + '"')
    except (SyntaxError, ValueError):
        raise _err(line, f"bad string literal {lit}") from None
    return value.encode("latin-1") if isinstance(value, str) else value


class _DataItem:
    __slots__ = ("line", "offset", "size", "values", "raw")

    def __init__(self, line: Line, offset: int, size: int, values: list[str] | None, raw: bytes | None):
        self.line, self.offset, self.size, self.values, self.raw = line, offset, size, values, raw


def layout_data(section: Section, consts: dict[str, int], bss: bool):
    """Sizes and label offsets of a data section; values are emitted later."""
    offset = 0
    labels: dict[str, int] = {}
    items: list[_DataItem] = []
    for line in section.lines:
        text = line.text
        m = _EQU.match(text) or _DOT_EQU.match(text)
        if m:  # only differences of positions in this section are meaningful
            consts[m.group(1)] = evaluate(m.group(2), {**consts, **labels, "_dollar_": offset}, line)
            continue
        m = _LABEL.match(text)
        while m:
            labels[m.group(1)] = offset
            text = text[m.end() :]
            m = _LABEL.match(text)
        text = text.strip()
        if not text:
            continue
        repeat = 1
        tm = re.match(r"^times\s+(.+?)\s+((?:d[bwdq]|res[bwdq])\b.*)$", text, re.I)
        if tm:
            repeat = evaluate(tm.group(1), consts, line)
            text = tm.group(2)
        word, _, rest = text.partition(" ")
        word = word.lower()
        rest = rest.strip()
        if word in _DATA_DIRECTIVES:
            if bss:
                raise _err(line, ".bss holds no initial data: use resb/resq or .space")
            size = _DATA_DIRECTIVES[word]
            ops = _split_operands(rest)
            if not ops:
                raise _err(line, f"{word} needs at least one value")
            total = 0
            for op in ops:
                if op[0] in "\"'" and size == 1 and not (len(op) == 3 and op[0] == "'"):
                    total += len(_string(op, line))
                else:
                    total += size
            items.append(_DataItem(line, offset, size, ops * repeat, None))
            offset += total * repeat
        elif word in (".ascii", ".asciz", ".string"):
            if bss:
                raise _err(line, ".bss holds no initial data")
            data = b"".join(_string(op, line) + (b"\0" if word != ".ascii" else b"") for op in _split_operands(rest))
            items.append(_DataItem(line, offset, 1, None, data * repeat))
            offset += len(data) * repeat
        elif word in _RESERVE or word in (".space", ".zero", ".skip"):
            ops = _split_operands(rest)
            if not ops:
                raise _err(line, f"{word} needs a count")
            n = evaluate(ops[0], consts, line) * _RESERVE.get(word, 1) * repeat
            fill = evaluate(ops[1], consts, line) if len(ops) > 1 else 0
            if n < 0:
                raise _err(line, f"negative size {n}")
            if not bss:
                items.append(_DataItem(line, offset, 1, None, bytes([fill & 0xFF]) * n))
            offset += n
        elif word in (".align", ".balign", "align"):
            a = evaluate(rest, consts, line)
            if a <= 0 or a & (a - 1):
                raise _err(line, f"alignment {a} is not a power of two")
            pad = (-offset) % a
            if not bss:
                items.append(_DataItem(line, offset, 1, None, b"\0" * pad))
            offset += pad
        else:
            raise _err(line, f"'{word}' is not a data directive (code belongs in section .text)")
    return labels, items, offset


def emit_data(items: list[_DataItem], size: int, symbols: dict[str, int]) -> bytes:
    out = bytearray(size)
    for it in items:
        if it.raw is not None:
            out[it.offset : it.offset + len(it.raw)] = it.raw
            continue
        pos = it.offset
        for op in it.values:
            if op[0] in "\"'" and it.size == 1 and not (len(op) == 3 and op[0] == "'"):
                s = _string(op, it.line)
                out[pos : pos + len(s)] = s
                pos += len(s)
                continue
            v = evaluate(op, symbols, it.line)
            if not -(1 << (8 * it.size - 1)) <= v < 1 << (8 * it.size):
                raise _err(it.line, f"value {v} does not fit in {it.size} byte(s)")
            out[pos : pos + it.size] = (v & ((1 << (8 * it.size)) - 1)).to_bytes(it.size, "little")
            pos += it.size
    return bytes(out)


# ------------------------------------------------------------------ the text
_ks = Ks(KS_ARCH_X86, KS_MODE_64)
_TEXT_END = "__exo_text_end"
_LINE = "__exo_line_"


_ks_diag = Ks(KS_ARCH_X86, KS_MODE_64)  # only for diagnosing errors: it carries a resolver


def _ks_asm(text: str, base: int, resolve=None) -> bytes:
    """Keystone, with two of its traps avoided (keystone issues #481, #538, #571):

    * a ``sym_resolver`` switches the default radix to 16 (``mov rsi, 42``
      becomes 0x42) and miscomputes PC-relative fixups to resolved symbols (off
      by 4), so real assembly never uses one; symbols are either labels in the
      same text or constants substituted as numbers (``_substitute``);
    * only the error path (``_text_error``) uses a resolver, on its own engine,
      to learn which symbol is missing or which line fails.
    """
    if resolve is None:
        encoding, _ = _ks.asm(text, base)
    else:
        _ks_diag.sym_resolver = resolve
        encoding, _ = _ks_diag.asm(text, base)
    return bytes(encoding or b"")


_WORD = re.compile(r"(?<![\w.$@])([A-Za-z_][\w.@]*)(?![\w.$@])")
_HERE = re.compile(r"(?<![\w.$@])\$(?![\w.$@])")


def _substitute(line: str, consts: dict[str, int]) -> str:
    """Constants become numbers (hex) outside string literals.

    Keystone reads a negated symbol (``cmp rax, -EPERM``) as a memory operand,
    so constants must never reach it as names.
    """
    out, pos = [], 0
    for m in re.finditer(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'", line):
        out.append(_WORD.sub(lambda w: _num(consts, w.group(1)), line[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_WORD.sub(lambda w: _num(consts, w.group(1)), line[pos:]))
    return "".join(out)


def _num(consts: dict[str, int], name: str) -> str:
    v = consts.get(name)
    if v is None:
        return name
    return f"{v:#x}" if v >= 0 else f"-{-v:#x}"


def _text_labels(lines: list[Line]) -> list[str]:
    labels = []
    for line in lines:
        text = line.text
        m = _LABEL.match(text)
        while m:
            if not m.group(1).isdigit():
                labels.append(m.group(1))
            text = text[m.end() :]
            m = _LABEL.match(text)
    return labels


def _text_error(prefix: str, lines: list[Line], base: int, error: KsError, missing: list[str],
                original: list[Line]):
    if missing:
        name = missing[0]
        pat = re.compile(rf"(?<![\w.$]){re.escape(name)}(?![\w.$])")
        for line in original:
            if pat.search(line.text):
                return _err(line, _HINTS.get(name) or f"undefined symbol '{name}'")
        return ExoUserError(lines[0].file if lines else "?", f"undefined symbol '{name}'")

    def lenient(sym, value):
        value[0] = 0
        return True

    lo, hi = 1, len(lines)  # the shortest failing prefix ends at the bad line
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            _ks_asm(prefix + "\n".join(ln.text for ln in lines[:mid]), base, lenient)
            lo = mid + 1
        except KsError:
            hi = mid
    bad = original[lo - 1] if original else Line("?", 0, "")
    message = str(error).split(" (KS_ERR")[0]
    return _err(bad, f"{message.lower()}: {bad.text.strip()}")


def _silent_drop(body_lines: list[str], base: int, original: list[Line]) -> ExoUserError:
    """Keystone returns no bytes and no error for some statements it cannot encode (a size
    keyword without ``ptr``: ``mov qword [rax], 1``), dropping the whole text. Find the first
    line that does it: the shortest prefix that, followed by a ``nop``, assembles to nothing."""
    def lenient(sym, value):
        value[0] = 0
        return True

    def empty(k: int) -> bool:
        try:
            return not _ks_asm("\n".join(body_lines[:k]) + "\nnop", base, lenient)
        except KsError:
            return False

    lo, hi = 1, len(body_lines)
    while lo < hi:
        mid = (lo + hi) // 2
        if empty(mid):
            hi = mid
        else:
            lo = mid + 1
    bad = original[lo - 1] if original else Line("?", 0, "")
    return _err(bad, f"the assembler cannot encode this (write 'qword ptr [...]' for a sized memory operand): "
                     f"{bad.text.strip()}")


def assemble_text(lines: list[Line], base: int, consts: dict[str, int],
                  data_layout: list[tuple[str, dict[str, int], int]],
                  line_table: bool = False) -> tuple[bytes, dict[str, int]]:
    """Assemble the code at ``base`` (page aligned) followed by a zero-filled shadow of
    the data sections that carries their labels, so that RIP-relative references
    to data are resolved by keystone itself; returns the code and every label.
    ``line_table``: also a label ``__exo_line_I`` at the start of line I (read back like
    the others; only `exo image --elf` asks, for DWARF line numbers)."""
    labels = _text_labels(lines)
    dup = {name for name in labels if labels.count(name) > 1}
    data_labels = [name for _, lab, _ in data_layout for name in lab]
    for name in labels:
        if name in consts or name in data_labels:
            dup.add(name)
    if dup:
        name = sorted(dup)[0]
        where = [ln for ln in lines if re.match(rf"^\s*{re.escape(name)}\s*:", ln.text)][-1]
        raise _err(where, f"label '{name}' is defined more than once")
    prefix = ""
    body_lines = []
    for i, ln in enumerate(lines):
        text = _substitute(ln.text, consts)
        if _HERE.search(text):  # `$` is this instruction's address: keystone drops it silently
            here = f"__exo_here_{i}"
            text = f"{here}: " + _HERE.sub(here, text)
        if line_table:
            text = f"{_LINE}{i}: {text}"
        body_lines.append(text)
    shadow = [f"{_TEXT_END}:"]
    for _name, lab, size in data_layout:
        if not size:
            continue
        shadow.append(".balign 0x1000")
        pos = 0
        for label, off in sorted(lab.items(), key=lambda kv: kv[1]):
            if off > pos:
                shadow.append(f".skip {off - pos:#x}")
                pos = off
            shadow.append(f"{label}:")
        if size > pos:
            shadow.append(f".skip {size - pos:#x}")
    every = [*labels, *data_labels, _TEXT_END, *(f"{_LINE}{i}" for i in range(len(lines) if line_table else 0))]
    trailer = "".join(f"\n.quad {name}" for name in every)
    missing: list[str] = []

    def record(sym, value):
        missing.append(sym.decode())
        return False

    body = "\n".join(body_lines)
    source = body + "\n" + "\n".join(shadow) + trailer
    try:
        out = _ks_asm(source, base)
    except KsError as e:
        if e.errno == KS_ERR_ASM_SYMBOL_MISSING:
            try:
                _ks_asm(source, base, record)
            except KsError:
                pass
        shown = [Line(ln.file, ln.number, t) for ln, t in zip(lines, body_lines)]
        raise _text_error(prefix, shown, base, e, missing, lines) from None
    n = 8 * len(every)
    if len(out) < n:  # keystone gave up on a statement without an error (e.g. `mov qword [0], 1`)
        raise _silent_drop(body_lines, base, lines)
    tail = out[len(out) - n :]
    values = {name: int.from_bytes(tail[8 * i : 8 * i + 8], "little") for i, name in enumerate(every)}
    text_len = values.pop(_TEXT_END) - base
    return out[:text_len], values


_HINTS: Mapping[str, str] = {}  # symbol -> what to say when it is undefined (set per assembly)


def assemble(paths: list[Path], base: int, include_dirs: list[Path], predefined: dict[str, int],
             display_root: Path | None = None, hints: Mapping[str, str] | None = None,
             line_table: bool = False) -> Assembled:
    """Assemble ``paths``; ``hints`` explains known-but-unavailable symbols (e.g. an unlinked module).
    ``line_table``: also the address of every code line (`Assembled.lines`)."""
    global _HINTS
    _HINTS = hints if hints is not None else {}  # kept, not copied: libos computes a hint only for a symbol that is missing
    sections, raw_consts, _ = read_sources(paths, include_dirs, display_root)
    consts = dict(predefined)
    pending = dict(raw_consts)
    while pending:  # constants may refer to each other in any order
        progress = False
        for name, (expr, line) in list(pending.items()):
            try:
                consts[name] = evaluate(expr, consts, line)
            except ExoUserError:
                continue
            del pending[name]
            progress = True
        if not progress:
            name, (expr, line) = next(iter(pending.items()))
            consts[name] = evaluate(expr, consts, line)  # raises with the reason
    layouts = {name: layout_data(sections[name], consts, name == ".bss") for name in SECTIONS[1:]}
    text_lines = sections[".text"].lines
    if not text_lines:
        raise ExoUserError(str(paths[0]) if paths else "?", "no code: section .text is empty")
    code, labels = assemble_text(text_lines, base, consts,
                                 [(name, layouts[name][0], layouts[name][2]) for name in SECTIONS[1:]], line_table)
    rows = []
    if line_table:  # a line that made bytes: its address, file and number
        starts = [labels.pop(f"{_LINE}{i}") for i in range(len(text_lines))] + [base + len(code)]
        rows = [(a, ln.file, ln.number) for a, b, ln in zip(starts, starts[1:], text_lines) if b > a]
    symbols = {**consts, **labels}
    segments = [(".text", base, code, len(code))]
    addr = page_up(base + len(code))
    for name in SECTIONS[1:]:
        _labels, items, size = layouts[name]
        if size:
            data = b"" if name == ".bss" else emit_data(items, size, symbols)
            segments.append((name, addr, data, size))
            addr = page_up(addr + size)
    return Assembled(segments, symbols, labels, rows)
