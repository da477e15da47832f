"""Static ELF64 guests: real gcc output, hand-built files, and malformed ones."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT, boot, need_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo.abi import EXO_REGION_END, HYPERCALL_PAGE, USER_TOP
from exo.build.elf import PF_R, PF_W, PF_X, ElfSegment, build_elf, parse_elf
from exo.errors import ExoUserError

C_GUEST = r"""
#include "exo.h"
static const char msg[] = "hello from C, env ";
static char buf[64];
__attribute__((force_align_arg_pointer)) void _start(void) {
    int n = 0;
    for (const char *p = msg; *p; p++) buf[n++] = *p;
    buf[n++] = (char)('0' + exo_env_id());
    buf[n++] = '\n';
    exo_console_write((long)buf, n);
    exo_sched_op(SCHED_EXIT, 3);
}
"""


def _app(d, blob: bytes, name: str = "elfapp"):
    d.mkdir(parents=True, exist_ok=True)
    (d / "prog").write_bytes(blob)
    (d / "app.toml").write_text(f'name = "{name}"\nsources = ["prog"]\n')
    return d


def test_gcc_static_executable_boots(tmp_path):
    gcc = shutil.which("gcc")
    need_tool(gcc is not None, "gcc is not installed")
    need_tool(shutil.which("make") is not None, "make is not installed")
    (tmp_path / "hello.c").write_text(C_GUEST)
    mk = ROOT / "guest_apps" / "include" / "guest.mk"  # the one C guest recipe
    subprocess.run(["make", "-s", "-f", str(mk), "-C", str(tmp_path), "hello"], check=True)
    out = tmp_path / "app" / "prog"
    out.parent.mkdir()
    (tmp_path / "hello").rename(out)
    (tmp_path / "app" / "app.toml").write_text('name = "helloc"\nsources = ["prog"]\n')
    b = boot(tmp_path / "app")
    assert b.stdout == b"hello from C, env 1\n"
    assert b.envs[0].exit_status == 3 and not b.reports


def _exit9(at: int) -> bytes:
    """Print the 3 bytes at 0x500000, then sched_op(EXIT, 9)."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    enc, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(
        "mov rdi, 0x500000\nmov rsi, 3\ncall 0x100000\nmov rdi, 2\nmov esi, 9\ncall 0x100140", at)
    return bytes(enc)


def test_handmade_elf_with_data_segment(tmp_path):
    code = _exit9(0x401000)
    data = b"hi\n"  # in a data segment whose bss part is zero-filled
    blob = build_elf(0x401000, [ElfSegment(0x401000, code, len(code), PF_R | PF_X),
                                ElfSegment(0x500000, data, 0x2000, PF_R | PF_W)])
    image = parse_elf(blob, "x", user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))
    assert [s.memsz for s in image.segments] == [len(code), 0x2000]
    b = boot(_app(tmp_path / "a", blob))
    assert b.stdout == b"hi\n"
    assert b.envs[0].exit_status == 9 and not b.reports


def _ok_segments():
    return [ElfSegment(0x401000, b"\x90" * 16, 16, PF_R | PF_X)]


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda b: b[:30], "too short"),
        (lambda b: b"\x7fELG" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x01" + b[5:], "64-bit"),
        (lambda b: b[:5] + b"\x02" + b[6:], "little-endian"),
        (lambda b: b[:16] + (3).to_bytes(2, "little") + b[18:], "ET_DYN"),
        (lambda b: b[:16] + (1).to_bytes(2, "little") + b[18:], "not an executable"),
        (lambda b: b[:18] + (3).to_bytes(2, "little") + b[20:], "not x86-64"),
        (lambda b: b[:32] + (0x10000).to_bytes(8, "little") + b[40:], "past the end of the file"),
    ],
)
def test_malformed_headers(mutate, problem):
    blob = mutate(build_elf(0x401000, _ok_segments()))
    with pytest.raises(ExoUserError, match=problem):
        parse_elf(blob, "prog", user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))


@pytest.mark.parametrize(
    "segments, entry, problem",
    [
        ([ElfSegment(0x401000, b"\x90", 1, PF_R | PF_W | PF_X)], 0x401000, "W\\^X"),
        ([ElfSegment(0x401000, b"\x90" * 4, 2, PF_R | PF_X)], 0x401000, "exceeds memory size"),
        ([ElfSegment(0x401000, b"\x90", 1, PF_R)], 0x401000, "not in an executable segment"),
        ([ElfSegment(0x100000, b"\x90", 1, PF_R | PF_X)], 0x100000, "exokernel region"),
        ([ElfSegment(0x0, b"\x90", 1, PF_R | PF_X)], 0x0, "outside user space"),
        ([ElfSegment(0x7FFF_FFFF_F000, b"\x90", 0x2000, PF_R | PF_X)], 0x7FFF_FFFF_F000, "outside user space"),
        ([ElfSegment(0x401000, b"\x90", 0x10, PF_R | PF_X), ElfSegment(0x401800, b"\0", 8, PF_R | PF_W)],
         0x401000, "share the page"),
    ],
)
def test_bad_segments(segments, entry, problem):
    with pytest.raises(ExoUserError, match=problem):
        parse_elf(build_elf(entry, segments), "prog", user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_fuzzed_elf_gives_a_clear_error_or_an_image(tail, pos, junk):
    blob = bytearray(build_elf(0x401000, _ok_segments()) + tail)
    blob[pos : pos + len(junk)] = junk
    try:
        parse_elf(bytes(blob), "prog", user_top=USER_TOP, forbidden=(HYPERCALL_PAGE, EXO_REGION_END))
    except ExoUserError as e:
        assert str(e).startswith("prog: ")
