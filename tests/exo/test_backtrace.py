"""Backtraces in fault reports: the rbp chain, and a marked stack-scan guess without one."""

from __future__ import annotations

from conftest import boot

from exo.report import MAX_FRAMES

EXIT = """
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
"""

NESTED = f"""
section .text
_start:
    call outer
{EXIT}
outer:
    push rbp
    mov rbp, rsp
    call middle
    pop rbp
    ret
middle:
    push rbp
    mov rbp, rsp
    lea rax, [rip + inner]
    call rax                ; an indirect call: FF /2
    pop rbp
    ret
inner:
    push rbp
    mov rbp, rsp
    xor eax, eax
    mov rax, [rax]          ; #PF at 0
    pop rbp
    ret
"""


def _report(app, name: str, source: str):
    b = boot(app(name, source))
    (report,) = b.reports
    return report, b.kernel


def test_rbp_chain_names_the_callers_in_order(app):
    report, _ = _report(app, "nested", NESTED)
    bt = report.backtrace
    assert not bt.guessed
    assert [s for _, s in bt.frames] == ["middle+0xd", "outer+0x9", "_start+0x5"]
    text = report.render()
    assert "backtrace (rbp chain)" in text and "guess" not in text
    lines = text.splitlines()
    at = lines.index("  backtrace (rbp chain)")
    assert "inner+0x6" in lines[at + 1] and "middle+0xd" in lines[at + 2] and "_start+0x5" in lines[at + 4]


def test_garbage_rbp_falls_back_to_a_marked_stack_scan(app):
    report, kernel = _report(app, "garbage", f"""
section .text
_start:
    call outer
{EXIT}
outer:
    call inner
    ret
inner:
    mov rbp, 0x4141414141414141   ; not canonical
    lea rax, [rip + not_after_call]
    push rax                      ; code, but not after a call: the scan must skip it
    push 0x1234                   ; not code at all
    xor eax, eax
not_after_call:
    mov rax, [rax]
""")
    bt = report.backtrace
    assert bt.guessed
    assert [s for _, s in bt.frames] == ["outer+0x5", "_start+0x5"]
    text = report.render()
    assert "backtrace (guess: stack scan" in text
    assert text.count("(guess: stack scan)") == 2


def test_a_self_pointing_rbp_stops_the_walk(app):
    # [rbp] == rbp: a chain that does not climb the stack stops after the one frame it proves.
    report, _ = _report(app, "loop", f"""
section .text
_start:
    call outer
{EXIT}
outer:
    call inner
    ret
inner:
    sub rsp, 8
    mov [rsp], rsp
    mov rbp, rsp
    xor eax, eax
    mov rax, [rax]
""")
    assert not report.backtrace.guessed
    assert [s for _, s in report.backtrace.frames] == ["outer+0x5"]


def test_deep_recursion_is_bounded(app):
    report, _ = _report(app, "deep", f"""
section .text
_start:
    mov ecx, 40
    call recurse
{EXIT}
recurse:
    push rbp
    mov rbp, rsp
    dec ecx
    jz bottom
    call recurse
    pop rbp
    ret
bottom:
    ud2
""")
    frames = report.backtrace.frames
    assert len(frames) == MAX_FRAMES - 1 and {s for _, s in frames} == {"recurse+0xd"}


def test_unmapped_rbp_and_empty_stack(app):
    # rbp canonical but unmapped, and nothing above rsp that follows a call: no caller, no crash.
    report, kernel = _report(app, "bare", """
section .text
_start:
    mov rbp, 0x7000000000
    mov rsp, 0x7000000000
    xor eax, eax
    mov rax, [rax]
""")
    assert report.backtrace.guessed and report.backtrace.frames == []
    assert "(no caller found)" in report.render()
