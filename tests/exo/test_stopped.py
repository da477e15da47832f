"""After its fault report, a stopped environment executes nothing more (issue 11, section 2).

Each hostile guest traps, and the instructions right after the trap (in the
same translation block) make a ``console_write`` hypercall that would print. Under both clocks nothing may be printed after
the report, no hypercall may be counted for the environment, and the witness
beside it finishes. (A machine check, an access outside RAM, cannot be made
by a guest through exo's page tables; tests/hw/test_hw_stop_fence.py covers
it with a bad PTE.)
"""

from __future__ import annotations

import json

import pytest
from conftest import WITNESS, boot, make_app
from test_echo import run_exo

from exo.abi import EnvStatus

# The data page touched first (present, so the store after the trap cannot fault by itself),
# then the trap, then (same block) a console_write by inline `syscall` and a store. (A store
# between the trap and the `syscall` ended the block by itself in this setting; the
# vCPU-level test checks stores right after each trap.)
HOSTILE = """
section .text
_start:
    lea rcx, [rip + flag]
    mov qword ptr [rcx], 1
    {trap}
    lea rdi, [rip + msg]
    mov esi, 6
    xor eax, eax
    syscall
    mov qword ptr [rcx], 0x43
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
msg: db "after", 10
section .data
flag: dq 0
"""

TRAPS = {
    "out": ("mov al, 1\n    out 0x80, al", "port I/O (out 0x80)"),
    "in": ("in al, 0x60", "port I/O (in 0x60)"),
    "gp-hlt": ("hlt", "general protection (#GP)"),
    "gp-cli": ("cli", "general protection (#GP)"),
    "ud": ("ud2", "invalid opcode (#UD)"),
    "pf": ("mov rax, 0x10\n    mov rax, qword ptr [rax]", "page fault (#PF)"),
    "int-dpl0": ("int 0x30", "general protection (#GP)"),
}


@pytest.mark.parametrize("clock", ["virtual", "wall"])
@pytest.mark.parametrize("kind", list(TRAPS))
def test_a_stopped_environment_prints_nothing_more(tmp_path, kind: str, clock: str) -> None:
    trap, name = TRAPS[kind]
    hostile = make_app(tmp_path, "hostile", HOSTILE.format(trap=trap))
    witness = make_app(tmp_path, "witness", WITNESS)
    copies = 20 if clock == "wall" else 1  # the wall clock is where the race was: many in one boot
    b = boot(*[hostile] * copies, witness, clock=clock, max_instructions=None if clock == "wall" else 50_000_000)
    assert b.stdout == b"ok\n", f"a stopped {kind} guest went on to print: {b.stdout!r}"
    hc = b.kernel.acct._hc
    for env in b.envs[:copies]:
        assert env.status == EnvStatus.DEAD and env.fault is not None and env.fault.startswith(name), env.fault
        assert [r for r in b.reports if r.env_id == env.id][0].kind == name
        assert not [k for k in hc if k[0] == env.id], f"hypercalls counted after the fault: {hc}"
    w = b.env("witness")
    assert w.fault is None and w.exit_status == 0


def test_stats_json_counts_no_hypercall_after_an_out_under_the_wall_clock(tmp_path) -> None:
    """The review's finding, as a user meets it: `exo boot --clock wall --stats-json`."""
    hostile = make_app(tmp_path, "hostile", HOSTILE.format(trap=TRAPS["out"][0]))
    out = tmp_path / "s.json"
    r = run_exo("boot", str(hostile), "--clock", "wall", "--stats-json", str(out), cache=str(tmp_path / "c"))
    assert r.returncode == 1 and r.stdout == b"", r.stdout
    assert r.stderr.count(b"stopped: port I/O (out 0x80)") == 1
    stats = json.loads(out.read_text())
    (env,) = stats["envs"]
    assert env["status"] == "faulted" and env["transitions"]["hypercall"] == 0
    assert stats["hypercalls"] == {}
