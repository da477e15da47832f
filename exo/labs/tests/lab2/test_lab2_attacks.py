"""Lab 2 graded tests: attack guests the exokernel must refuse (an errno) or stop (a fault report)
while a witness guest on the same machine finishes untouched (docs/labs/lab2.md).

Each test boots ``lab2_attack NAME`` first and ``witness`` second on a 16 MiB machine (the
attack guest's frame scan covers all of it). lab2_attack exits with the errno it got back, or
BROKEN (0x64) when the hypercall did what it must not do (guest_apps/labs/lab2_attack/attack.s).
"""

from __future__ import annotations

import pytest

ATTACK = "guest_apps/labs/lab2_attack"
WITNESS = "guest_apps/labs/witness"
BUDGET = 20_000_000  # instructions: an attack and the witness take well under 1M

EPERM, EFAULT, EINVAL = 1, 14, 22
BROKEN, TOO_STRICT, SETUP_FAILED = 0x64, 0x61, 0x62
WHY = {BROKEN: "BROKEN: the hypercall did what it must not do", TOO_STRICT: "the checks refuse every frame",
       SETUP_FAILED: "an honest hypercall the attack needs was refused", None: "no exit (stopped?)"}


def attack(boot, name: str):
    r = boot(ATTACK, WITNESS, args=[name], ram_mib=16, max_instructions=BUDGET)
    witness = next(e for e in r.stats["envs"] if e["name"] == "witness")
    assert witness["status"] == "exited" and witness["exit"] == 0 and r.stdout.endswith(b"witness ok\n"), \
        f"the witness did not finish untouched: {witness['status']}, exit {witness['exit']}, output {r.stdout!r}"
    return r


def refused(boot, name: str, errno: int) -> None:
    r = attack(boot, name)
    got = r.exit_status
    assert got == errno, f"{name}: expected the errno {errno}, got {WHY.get(got, f'exit status {got}')}" \
        + "".join(f"\n{x.summary}" for x in r.reports)
    assert not r.reports


# ----------------------------------------------------------------- exercise user_va
@pytest.mark.parametrize("name, errno", [
    pytest.param("map_exo_region", EPERM, id="map_exo_region", marks=pytest.mark.lab(2, points=5)),   # the hypercall page: a guest would replace the exokernel's code
    pytest.param("map_low", EPERM, id="map_low", marks=pytest.mark.lab(2, points=4)),          # the machine's low 64 KiB
    pytest.param("map_kernel", EINVAL, id="map_kernel", marks=pytest.mark.lab(2, points=4)),      # the upper (kernel) half
    pytest.param("map_uvpt", EPERM, id="map_uvpt", marks=pytest.mark.lab(2, points=4)),         # the read-only page-table window
    pytest.param("map_unaligned", EINVAL, id="map_unaligned", marks=pytest.mark.lab(2, points=3)),
])
def test_page_addresses(boot, name, errno):
    refused(boot, name, errno)


# -------------------------------------------------------------------- exercise perm
@pytest.mark.parametrize("name, errno", [
    pytest.param("perm_wx", EINVAL, id="perm_wx", marks=pytest.mark.lab(2, points=6)),         # W and X in one mapping
    pytest.param("perm_bad_bits", EINVAL, id="perm_bad_bits", marks=pytest.mark.lab(2, points=4)),   # writable without readable; an undefined bit
])
def test_permission_bits(boot, name, errno):
    refused(boot, name, errno)


# ------------------------------------------------------------------- exercise share
@pytest.mark.parametrize("name, errno", [
    pytest.param("share_add_write", EPERM, id="share_add_write", marks=pytest.mark.lab(2, points=8)),  # page_map of a read-only page, writable
    pytest.param("share_add_exec", EPERM, id="share_add_exec", marks=pytest.mark.lab(2, points=7)),   # page_map of a no-execute page, executable
])
def test_sharing_adds_no_rights(boot, name, errno):
    refused(boot, name, errno)


# ---------------------------------------------------------------------- exercise wx
@pytest.mark.parametrize("name, errno", [
    pytest.param("wx_alias", EPERM, id="wx_alias", marks=pytest.mark.lab(2, points=8)),         # one frame writable at one address, executable at another
    pytest.param("wx_alias_rev", EPERM, id="wx_alias_rev", marks=pytest.mark.lab(2, points=7)),
])
def test_wx_across_mappings(boot, name, errno):
    refused(boot, name, errno)


# --------------------------------------------------------------- exercise max_right
@pytest.mark.lab(2, points=10)
def test_read_only_data_stays_read_only(boot):
    """mmu_update PROTECT of the image's .rodata as writable is refused; the guest's own write
    after that is stopped with a fault report, and the witness goes on."""
    from exo.api import build

    r = attack(boot, "protect_rodata")
    assert r.exit_status != BROKEN, "PROTECT made .rodata writable and the write went through"
    (rep,) = r.reports
    page = build(ATTACK).image.symbols["rodata_page"]
    assert rep.env_name == "lab2_attack" and rep.kind == "page fault (#PF)"
    assert rep.fault_address == page and rep.error == "user write of a protected page", rep.render()


# --------------------------------------------------------------- exercise mmu_owner
@pytest.mark.lab(2, points=8)
def test_no_mapping_of_frames_one_does_not_own(boot):
    """mmu_update MAP of every frame number in turn: the witness's page (its secret) is not
    reachable, and the guest's own frames still are."""
    refused(boot, "mmu_steal", EPERM)


@pytest.mark.lab(2, points=7)
def test_no_write_right_on_a_page_received_read_only(boot):
    """The witness sends its page read-only (ipc_try_send); PROTECT may not make it writable."""
    refused(boot, "mmu_protect_shared", EPERM)


# ---------------------------------------------------------------- exercise user_mem
@pytest.mark.parametrize("name, errno", [
    pytest.param("console_read_code", EFAULT, id="console_read_code", marks=pytest.mark.lab(2, points=5)),        # the exokernel writing into read+execute code
    pytest.param("console_read_pagetable", EFAULT, id="console_read_pagetable", marks=pytest.mark.lab(2, points=6)),   # ... into the read-only page-table window
    pytest.param("mmu_done_readonly", EFAULT, id="mmu_done_readonly", marks=pytest.mark.lab(2, points=4)),        # ... mmu_update's count into .rodata
])
def test_user_pointers(boot, name, errno):
    refused(boot, name, errno)
