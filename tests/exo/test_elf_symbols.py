"""`exo image APP --elf OUT`: the image as an ELF file whose symbols gdb resolves (docs/debugging.md).

Checked twice: parsed back with exo's own ELF reader, and with the real gdb in batch mode."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, need_tool

from exo.abi import HYPERCALL_STUB_SIZE
from exo.api import build
from exo.build.elf import (
    PF_R,
    PF_W,
    PF_X,
    SHT_NOBITS,
    SHT_PROGBITS,
    STT_FUNC,
    STT_OBJECT,
    ElfSegment,
    build_elf,
    parse_elf,
    read_sections,
    read_symbols,
)
from exo.build.image import predefined_symbols
from exo.cli import main

SECTIONS = """
section .text
_start:
    call outer
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
outer:
    lea rax, [rip + table]
    mov rax, [rax]
    ret
section .rodata
table: dq 42
msg: db "hi", 0
section .data
counter: dq 7
section .bss
buf: resb 64
"""


def _elf(tmp_path, app_dir) -> bytes:
    out = tmp_path / "out.elf"
    assert main(["image", str(app_dir), "--elf", str(out)]) == 0
    return out.read_bytes()


def test_echo_parses_back_with_exos_reader(tmp_path, capsys):
    app = ROOT / "guest_apps" / "echo"
    blob = _elf(tmp_path, app)
    image = build(app).image
    assert "wrote" in capsys.readouterr().err
    elf = parse_elf(blob, "out.elf", user_top=1 << 47, forbidden=(0, 0x10000))
    assert elf.entry == image.entry
    assert [(s.va, s.data, s.memsz) for s in elf.segments] == [(s.va, bytes(s.data), s.memsz) for s in image.segments]
    assert [s.flags for s in elf.segments] == [PF_R | PF_X, PF_R | PF_W]  # .text r-x, .bss rw-
    syms = read_symbols(blob, "out.elf")
    assert set(image.symbols) <= set(syms)
    stub = predefined_symbols()["HC_CONSOLE_READ"]  # the exokernel's stubs: absolute symbols
    assert syms["HC_CONSOLE_READ"] == (stub, HYPERCALL_STUB_SIZE, STT_FUNC)
    done = image.symbols["done"]
    assert syms["read_more"] == (image.symbols["read_more"], done - image.symbols["read_more"], STT_FUNC)
    assert syms["_start"][1] == 0  # shares read_more's address: the later label gets the size
    assert image.symbolize(image.symbols["read_more"] + 12) == "read_more+0xc"  # fault reports agree with gdb
    assert syms["buf"] == (image.symbols["buf"], 4096, STT_OBJECT)


def test_every_section_kind(tmp_path, app):
    d = app("sections", SECTIONS)
    blob = _elf(tmp_path, d)
    image = build(d).image
    secs = {s.name: s for s in read_sections(blob, "out.elf")}
    assert {".text", ".rodata", ".data", ".bss", ".symtab", ".strtab", ".shstrtab"} <= set(secs)
    for seg in image.segments:
        s = secs[seg.name]
        assert s.addr == seg.va and s.type == (SHT_NOBITS if seg.name == ".bss" else SHT_PROGBITS)
        if seg.name != ".bss":
            assert blob[s.offset : s.offset + s.size] == bytes(seg.data)
            assert s.offset % 0x1000 == seg.va % 0x1000
    syms = read_symbols(blob, "out.elf")
    assert syms["outer"][2] == STT_FUNC and syms["table"] == (image.symbols["table"], 8, STT_OBJECT)
    assert syms["msg"][1] == 3 and syms["counter"][2] == STT_OBJECT and syms["buf"][1] == 64


def _gdb(elf, *commands: str) -> str:
    gdb = shutil.which("gdb")
    need_tool(gdb is not None, "gdb is not installed")
    args = [gdb, "-batch", "-nx"]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run([*args, str(elf)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_gdb_resolves_labels_and_disassembles_the_image_bytes(tmp_path):
    app = ROOT / "guest_apps" / "echo"
    _elf(tmp_path, app)
    image = build(app).image
    start, end = image.symbols["read_more"], image.symbols["done"]
    out = _gdb(tmp_path / "out.elf", f"info symbol {start + 12:#x}", "disassemble /r read_more",
               f"info symbol {image.symbols['buf'] + 16:#x}")
    assert "read_more + 12 in section .text" in out
    assert "buf + 16 in section .bss" in out
    assert "Dump of assembler code for function read_more:" in out
    # `disassemble /r` prints each instruction's bytes: together they are the image's, label to label
    shown = b"".join(bytes.fromhex(m.replace(" ", ""))
                     for m in re.findall(r"<\+\d+>:\t((?:[0-9a-f]{2} ?)+) *\t", out))
    text = image.segments[0]
    assert shown == bytes(text.data)[start - text.va : end - text.va]


def test_elf_guest_copies_its_own_file(tmp_path, capsys):
    code = bytes.fromhex("bf02000000be09000000e8")  # mov edi,2; mov esi,9; call ... (never run here)
    blob = build_elf(0x400000, [ElfSegment(0x400000, code + b"\0" * 4, 0x1000, PF_R | PF_X)])
    d = tmp_path / "elfapp"
    d.mkdir()
    (d / "prog").write_bytes(blob)
    (d / "app.toml").write_text('name = "elfapp"\nsources = ["prog"]\n')
    assert _elf(tmp_path, d) == blob
    assert "own ELF" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["missing-dir/x.elf", "."])
def test_bad_out_path_is_one_line(tmp_path, capsys, out):
    status = main(["image", str(ROOT / "guest_apps" / "echo"), "--elf", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert status == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("exo: error: ") and "cannot write the ELF file" in lines[0]


def test_elf_guest_symbols_name_its_fault_report(tmp_path):
    # An ELF guest's own .symtab (as gcc leaves it, here written by exo's writer) names the
    # faulting instruction and its caller in the fault report.
    from conftest import boot
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    from exo.build.elf import ElfSection, label_symbols, write_elf

    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm("call 0x400007\nud2\nxor eax, eax\nmov rax, [rax]", 0x400000)[0])
    text = [ElfSection(".text", 0x400000, code, len(code), PF_R | PF_X)]
    blob = write_elf(0x400000, text, label_symbols({"_start": 0x400000, "crash": 0x400007}, text))
    d = tmp_path / "elfcrash"
    d.mkdir()
    (d / "prog").write_bytes(blob)
    (d / "app.toml").write_text('name = "elfcrash"\nsources = ["prog"]\n')
    (report,) = boot(d).reports
    assert report.symbol == "crash+0x2"
    assert [s for _, s in report.backtrace.frames] == ["_start+0x5"]


def _line_of(path, text: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.strip().startswith(text))


def test_source_lines_of_an_assembly_app(tmp_path):
    from exo.build.image import source_lines

    app = ROOT / "guest_apps" / "echo"
    built = build(app)
    src = app / "echo.s"
    rows = {a: (f, n) for a, f, n in source_lines(built.manifest)}
    call = built.image.symbols["read_more"] + 14  # lea (7) + mov (7), then `call HC_CONSOLE_READ`
    assert rows[call] == (str(src), _line_of(src, "call HC_CONSOLE_READ"))
    assert rows[built.image.symbols["done"]] == (str(src), _line_of(src, "mov rdi, SCHED_EXIT"))
    assert sorted(rows) == list(rows) and all(a < built.image.symbols["buf"] for a in rows)



def test_line_labels_change_no_byte(app):
    # The per-line labels only read addresses back: the code, data and labels are the image's.
    from exo.abi import IMAGE_BASE
    from exo.build.asm import assemble
    from exo.build.image import INCLUDE_DIR, predefined_symbols
    from libos.registry import symbols

    for d in (ROOT / "guest_apps" / "echo", ROOT / "guest_apps" / "primes", app("sections", SECTIONS)):
        m, image, classes = build(d)
        linked = symbols({c.NAME for c in classes})
        a = assemble(m.sources, IMAGE_BASE, [INCLUDE_DIR], {**predefined_symbols(), **linked},
                     display_root=m.root.parent, line_table=True)
        assert [(n, va, bytes(data), size) for n, va, data, size in a.segments] == \
            [(s.name, s.va, bytes(s.data), s.memsz) for s in image.segments]
        assert a.labels == image.symbols and a.lines


def test_gdb_shows_file_and_line(tmp_path):
    app = ROOT / "guest_apps" / "echo"
    _elf(tmp_path, app)
    image = build(app).image
    src = app / "echo.s"
    out = _gdb(tmp_path / "out.elf", f"info line *{image.symbols['read_more'] + 14:#x}")
    assert f'Line {_line_of(src, "call HC_CONSOLE_READ")} of "{src}"' in out


# ------------------------------------------------------------- file:line in reports
C_CRASH = r"""#include "exo.h"
static long *nowhere;

__attribute__((noinline)) long poke(long v) {
    nowhere[1] = v;
    return v + 1;
}

__attribute__((force_align_arg_pointer)) void _start(void) {
    long r = poke(7);
    exo_sched_op(SCHED_EXIT, (int)r);
}
"""


def _gcc_app(tmp_path, source: str, strip: bool = False, cflags: str = ""):
    need_tool(shutil.which("gcc") is not None and shutil.which("make") is not None, "gcc or make is not installed")
    (tmp_path / "crash.c").write_text(source)
    mk = ROOT / "guest_apps" / "include" / "guest.mk"
    subprocess.run(["make", "-s", "-f", str(mk), "-C", str(tmp_path), "crash", f"EXTRA_CFLAGS={cflags}"], check=True)
    if strip:
        need_tool(shutil.which("strip") is not None, "strip (binutils) is not installed")
        subprocess.run(["strip", "--strip-debug", str(tmp_path / "crash")], check=True)
    d = tmp_path / "app"
    d.mkdir()
    (tmp_path / "crash").rename(d / "prog")
    (d / "app.toml").write_text('name = "crash"\nsources = ["prog"]\n')
    return d


@pytest.mark.parametrize("dwarf", ["", "-gdwarf-4"])  # gcc 12's default is DWARF 5; 4 numbers files from 1
def test_c_guest_fault_report_names_the_source_line(tmp_path, dwarf):
    # guest.mk compiles with -g: the report reads the binary's own DWARF line table.
    from conftest import boot

    (report,) = boot(_gcc_app(tmp_path, C_CRASH, cflags=dwarf)).reports
    src = str(tmp_path / "crash.c")
    assert report.symbol == "poke"
    assert report.line == f"{src}:5"  # `nowhere[1] = v;`
    assert report.backtrace.lines and report.backtrace.lines[0] == f"{src}:10"  # the call in _start
    text = report.render()
    assert f"in poke at {src}:5" in text and f"at {src}:10" in text
    r = subprocess.run([sys.executable, "-m", "exo", "image", str(tmp_path / "app")], capture_output=True, text=True)
    assert f"(_start at {src}:" in r.stdout.splitlines()[0]


def test_stripped_c_guest_has_symbols_but_no_lines(tmp_path):
    from conftest import boot

    (report,) = boot(_gcc_app(tmp_path, C_CRASH, strip=True)).reports
    assert report.symbol == "poke" and report.line is None
    assert " at " not in report.render().splitlines()[3]


def test_damaged_debug_line_costs_only_the_line(tmp_path):
    # A .debug_line whose bytes are garbage: the report comes out, without a line.
    from conftest import boot

    d = _gcc_app(tmp_path, C_CRASH)
    blob = bytearray((d / "prog").read_bytes())
    (off, size), = [(s.offset, s.size) for s in read_sections(bytes(blob), "prog") if s.name == ".debug_line"]
    blob[off:off + size] = b"\xff" * size
    (d / "prog").write_bytes(bytes(blob))
    (report,) = boot(d).reports
    assert report.symbol == "poke" and report.line is None


def test_assembly_fault_and_watchdog_name_the_source_line(tmp_path, app):
    from conftest import boot

    src = "section .text\n_start:\n    xor eax, eax\n    mov rax, [rax]\n"
    (report,) = boot(app("asmcrash", src)).reports
    assert report.line is not None and report.line.endswith("asmcrash/main.s:4")
    spin = ROOT / "guest_apps" / "spin"
    r = subprocess.run([sys.executable, "-m", "exo", "boot", str(spin), "--max-instructions", "100000"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    line = _line_of(spin / "spin.s", "jmp forever")
    assert f"(forever at guest_apps/spin/spin.s:{line}): jmp" in r.stderr


def test_committed_c_guests_have_lines_relative_to_the_project():
    # guest.mk maps the guest_apps folder to `guest_apps` (-ffile-prefix-map): rebuilt anywhere,
    # the binary is the same, and its lines read as paths from the project root.
    from exo.build.lines import LineTable, elf_rows

    prog = ROOT / "guest_apps" / "httpd" / "httpd"
    table = LineTable(elf_rows(prog))
    entry = parse_elf(prog.read_bytes(), "httpd", user_top=1 << 47, forbidden=(0, 0)).entry
    line = table.lookup(entry)
    assert line is not None and line.startswith("guest_apps/httpd/httpd.c:"), line
