"""Cost-model arithmetic, sources and the generated docs (exo/costmodel.py)."""

from __future__ import annotations

import pytest

from exo import costmodel
from exo.accounting import KINDS, Accounting
from exo.costmodel import PROFILES, CostProfile, model, model_all, render_markdown, report


def _profile(**over) -> CostProfile:
    cycles = {k: 10 * (i + 1) for i, k in enumerate(KINDS)}  # 10, 20, 30, ...
    sources = {k: f"test source for {k}" for k in KINDS}
    args = dict(name="test", description="a test profile", cycles=cycles, sources=sources)
    args.update(over)
    return CostProfile(**args)


# ------------------------------------------------------------------ arithmetic
def test_counts_times_constants_per_kind_and_total():
    p = _profile()
    counts = {k: i + 2 for i, k in enumerate(KINDS)}  # 2, 3, 4, ...
    m = model(counts, p)
    assert m["profile"] == "test"
    assert m["by_kind"] == {k: counts[k] * p.cycles[k] for k in KINDS}
    assert m["total"] == sum(counts[k] * p.cycles[k] for k in KINDS)
    assert m["hypercalls"] == {}


def test_hand_computed_native_run():
    counts = {"hypercall": 10, "trap": 2, "upcall": 2, "interrupt": 1, "context_switch": 3, "libcall": 5}
    p = PROFILES["native-syscall"]
    m = model(counts, p)
    assert m["by_kind"]["hypercall"] == 10 * p.cycles["hypercall"]
    assert m["total"] == (10 * p.cycles["hypercall"] + 2 * p.cycles["trap"] + 2 * p.cycles["upcall"]
                          + p.cycles["interrupt"] + 3 * p.cycles["context_switch"] + 5 * p.cycles["libcall"])


def test_zero_and_missing_counts_cost_nothing():
    for p in PROFILES.values():
        for counts in ({}, {k: 0 for k in KINDS}):
            m = model(counts, p)
            assert m["total"] == 0
            assert m["by_kind"] == {k: 0 for k in KINDS}


def test_every_kind_is_reported_even_when_absent():
    m = model({"hypercall": 1}, _profile())
    assert list(m["by_kind"]) == list(KINDS)
    assert m["total"] == m["by_kind"]["hypercall"] == 10


def test_unknown_kind_is_rejected_not_ignored():
    with pytest.raises(ValueError, match="unknown transition kinds"):
        model({"hypercall": 1, "vmexit": 3}, _profile())


def test_per_operation_averages_are_allowed():
    from exo.costmodel import PROFILES, model

    p = PROFILES["native-syscall"]
    assert model({"hypercall": 1.5}, p)["total"] == 1.5 * p.cycles["hypercall"]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", True])
def test_counts_must_be_non_negative_ints(bad):
    with pytest.raises(ValueError):
        model({"trap": bad}, _profile())
    with pytest.raises(ValueError):
        model({"hypercall": 5}, _profile(), {"null": bad})


def test_per_hypercall_overrides_and_the_unnamed_remainder():
    p = _profile(hypercall_overrides={"console_write": 1000},
                 sources={**{k: "s" for k in KINDS}, "hypercall:console_write": "override source"})
    base = p.cycles["hypercall"]
    counts = {"hypercall": 10, "trap": 1}
    m = model(counts, p, {"console_write": 3, "null": 4})  # 3 remain unnamed
    assert m["hypercalls"] == {"console_write": 3000, "null": 4 * base}
    assert m["by_kind"]["hypercall"] == 3000 + 4 * base + 3 * base
    assert m["total"] == m["by_kind"]["hypercall"] + p.cycles["trap"]
    # Without names every hypercall costs the base.
    assert model(counts, p)["by_kind"]["hypercall"] == 10 * base
    assert p.hypercall_cost("console_write") == 1000 and p.hypercall_cost("#99") == base


def test_named_hypercalls_cannot_outnumber_the_total():
    with pytest.raises(ValueError, match="named hypercalls"):
        model({"hypercall": 2}, _profile(), {"null": 3})


def test_kvm_console_io_costs_an_exit_to_user_space():
    p = PROFILES["kvm-vmx"]
    m = model({"hypercall": 2}, p, {"console_write": 1, "null": 1})
    assert m["by_kind"]["hypercall"] == p.hypercall_overrides["console_write"] + p.cycles["hypercall"]
    assert p.hypercall_overrides["console_write"] > p.cycles["hypercall"]


def test_model_all_and_accounting_counters():
    acct = Accounting()
    acct.add_env(1)
    for _ in range(3):
        acct.hypercall(1, "console_write")
    acct.hypercall(1, "null")
    acct.count("trap", 1)
    acct.count("context_switch", 1)
    every = model_all(acct.transitions, acct.hypercalls)
    assert list(every) == list(PROFILES)
    for name, m in every.items():
        p = PROFILES[name]
        hc = 3 * p.hypercall_cost("console_write") + p.hypercall_cost("null")
        assert m["total"] == hc + p.cycles["trap"] + p.cycles["context_switch"]


def test_report_always_carries_the_measured_time():
    counts = {"hypercall": 3_000_000}
    r = report(counts, 2.5)
    assert r["measured_host_seconds"] == 2.5
    assert set(r["profiles"]) == set(PROFILES)
    native = r["profiles"]["native-syscall"]
    assert native["total_cycles"] == 3_000_000 * PROFILES["native-syscall"].cycles["hypercall"]
    assert native["modelled_seconds"] == pytest.approx(native["total_cycles"] / costmodel.REFERENCE_CLOCK_HZ)
    virtual = report(counts, None)
    assert "measured_host_seconds" in virtual and virtual["measured_host_seconds"] is None


# ------------------------------------------------------------------ profiles and sources
def test_profile_validation():
    with pytest.raises(ValueError, match="cover exactly"):
        _profile(cycles={"hypercall": 1})
    with pytest.raises(ValueError, match="empty source"):
        _profile(sources={**{k: "s" for k in KINDS}, "trap": "  "})
    with pytest.raises(ValueError, match="sources must cover"):
        _profile(hypercall_overrides={"null": 5})  # override without a source
    with pytest.raises(ValueError, match="non-negative int"):
        _profile(cycles={**{k: 1 for k in KINDS}, "trap": -1})


def test_profiles_required_by_the_issue_exist():
    for name in ("native-syscall", "native-syscall-kpti", "int80", "kvm-vmx", "xen-pv"):
        assert name in PROFILES
    assert all(p.name == name for name, p in PROFILES.items())


def test_every_constant_has_a_source():
    for p in PROFILES.values():
        assert set(p.cycles) == set(KINDS)
        for k in KINDS:
            assert isinstance(p.cycles[k], int) and p.cycles[k] >= 0
            assert len(p.sources[k].strip()) > 20, (p.name, k)
        for name in p.hypercall_overrides:
            assert len(p.sources[f"hypercall:{name}"].strip()) > 20, (p.name, name)
    for c in costmodel.CONSTANTS:
        assert c.name and c.cycles >= 0 and len(c.source.strip()) > 20, c


def test_profiles_use_only_listed_constants():
    listed = {id(c) for c in costmodel.CONSTANTS}
    for spec in costmodel._SPECS:
        for c in (*spec.kinds.values(), *spec.overrides.values()):
            assert id(c) in listed, c.name


def test_mechanisms_order_as_the_sources_say():
    n, kpti, nopcid = (PROFILES[x] for x in ("native-syscall", "native-syscall-kpti", "native-syscall-kpti-nopcid"))
    # Page-table isolation adds a CR3 write at entry and exit; without PCID each also flushes the TLB.
    assert kpti.cycles["hypercall"] == n.cycles["hypercall"] + 2 * costmodel._CR3_WRITE_CYCLES
    assert nopcid.cycles["hypercall"] == kpti.cycles["hypercall"] + costmodel.TLB_REFILL.cycles
    # A context switch with a TLB flush costs the tagged switch plus a refill.
    assert costmodel.CTX_FLUSH.cycles == costmodel.CTX_TAGGED.cycles + costmodel.TLB_REFILL.cycles
    assert n.cycles["context_switch"] == costmodel.CTX_TAGGED.cycles
    assert PROFILES["int80"].cycles["context_switch"] == costmodel.CTX_FLUSH.cycles
    # The KVM null hypercall of DESIGN.md, far above a native syscall; a library call far below.
    assert PROFILES["kvm-vmx"].cycles["hypercall"] == 1300
    assert PROFILES["kvm-vmx"].cycles["hypercall"] > 5 * n.cycles["hypercall"]
    assert PROFILES["int80"].cycles["hypercall"] > n.cycles["hypercall"]
    for p in PROFILES.values():
        assert p.cycles["libcall"] < p.cycles["hypercall"] / 10


def test_estimates_say_so():
    for c in costmodel.CONSTANTS:
        if c in (costmodel.INT80, costmodel.INTERRUPT, costmodel.KVM_EXIT, costmodel.KVM_UPCALL,
                 costmodel.KVM_CTX, costmodel.XEN_CTX):
            assert c.source.startswith("Estimate:"), c.name


# ------------------------------------------------------------------ docs
def test_docs_match_the_code():
    assert costmodel.DOC_PATH.read_text() == render_markdown(), "run `python -m exo gen`"


def test_docs_carry_every_profile_and_source():
    text = render_markdown()
    assert text.startswith("<!-- generated by `python -m exo gen`")
    for p in PROFILES.values():
        assert f"### `{p.name}`" in text
    for c in costmodel.CONSTANTS:
        assert f"| {c.name} | {c.cycles:,} |" in text
    assert "Modelled, not measured" in text and "never instead of it" in text
