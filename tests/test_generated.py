"""docs/abi.md and the guest include files are generated from the hypercall table."""

from __future__ import annotations

from exo.build.guest_iface import OUTPUTS, asm_constants
from exo.hypercalls import HYPERCALLS


def test_generated_files_match_the_code():
    stale = [str(p) for p, render in OUTPUTS.items() if not p.exists() or p.read_text() != render()]
    assert not stale, f"run `python -m exo gen`: stale {stale}"


def test_every_hypercall_is_documented_and_has_a_stub_address():
    c = asm_constants()
    text = next(render() for p, render in OUTPUTS.items() if p.name == "abi.md")
    for h in HYPERCALLS:
        assert f"`{h.name}`" in text
        assert c[f"HC_{h.name.upper()}"] == 0x100000 + 32 * h.nr


def test_libos_headers_match_the_registry():
    from libos.registry import outputs

    stale = [str(p) for p, render in outputs().items() if not p.exists() or p.read_text() != render()]
    assert not stale, f"run `python -m exo gen`: stale {stale}"


def test_the_experiment_tables_match_the_code_and_the_results():
    """docs/experiments.md's slot table is the code's slot bytes disassembled, and its results
    table is the committed JSON (issue 18: it had drifted, saying the exokernel slot was `ret`)."""
    from benchmarks import experiment_doc

    assert experiment_doc.DOC.read_text() == experiment_doc.render(), "run `python -m exo gen`"
    slots = experiment_doc.slots_table()
    assert "| exokernel | `jmp 2; jmp qword ptr [rsp - 8]` |" in slots
    assert "`mov r10, rcx; mov eax, NR_SVC; syscall; ret`" in slots
    assert "| microkernel |" in slots and "and 2 context switches" in slots
