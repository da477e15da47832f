"""Cost models: named profiles that turn transition counts into modelled cycles.

exo counts every ring transition (exo/accounting.py). Those counts say nothing
about what the same run would cost on real hardware, because the emulator's own
time (a Python hook per transition) dwarfs and distorts it. A cost profile
answers "if each event of this kind cost what mechanism X costs on real x86-64,
how many cycles would the run spend crossing boundaries?" Every constant names
its source (publication or measurement, the exact quantity measured, and how we
derived cycles from it); a number we could not source says "Estimate" and why.

Modelled cycles are reported beside measured emulator time, never instead of
it (``report``). They include only the direct cost of each transition, not the
cache and TLB pollution it leaves behind, except where a constant says it
charges a TLB refill. docs/cost-models.md is generated from these tables by
``python -m exo gen`` (``render_markdown``); a test fails when it drifts.

Pure data and arithmetic: nothing here touches the emulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from exo.accounting import KINDS

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "cost-models.md"

# Cycles per second used only to show modelled cycles as modelled time beside
# measured time. A round nominal clock, not a measurement.
REFERENCE_CLOCK_HZ = 3.0e9


@dataclass(frozen=True)
class Constant:
    """One modelled cost in cycles, its name, and where it comes from."""

    name: str
    cycles: int
    source: str


@dataclass(frozen=True)
class CostProfile:
    """Cycles charged per event kind (a hypercall or syscall is a full round trip).

    ``cycles`` and ``sources`` have one entry per kind in accounting.KINDS.
    ``hypercall_overrides`` replaces the hypercall cost for the named
    hypercalls; ``sources`` then also has a ``"hypercall:<name>"`` entry.
    """

    name: str
    description: str
    cycles: Mapping[str, int]
    sources: Mapping[str, str]
    hypercall_overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.cycles) != set(KINDS):
            raise ValueError(f"{self.name}: cycles must cover exactly the kinds of exo/accounting.py "
                             f"{KINDS} (a new kind needs a cost and a source), got {sorted(self.cycles)}")
        wanted = set(KINDS) | {f"hypercall:{n}" for n in self.hypercall_overrides}
        if set(self.sources) != wanted:
            raise ValueError(f"{self.name}: sources must cover exactly {sorted(wanted)}, got {sorted(self.sources)}")
        for key, text in self.sources.items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{self.name}: empty source for {key}")
        for key, value in (*self.cycles.items(), *self.hypercall_overrides.items()):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: {key} must be a non-negative int, got {value!r}")
        object.__setattr__(self, "cycles", MappingProxyType({k: self.cycles[k] for k in KINDS}))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        object.__setattr__(self, "hypercall_overrides", MappingProxyType(dict(self.hypercall_overrides)))

    def hypercall_cost(self, name: str) -> int:
        return self.hypercall_overrides.get(name, self.cycles["hypercall"])


# --------------------------------------------------------------------------- constants
# Published numbers are kept as published, so each derivation can be redone by
# hand. Where a constant is built on another, its source names that constant;
# the docs list every constant once with its full source.

_CR3_WRITE_CYCLES = 100
_PTI_RST = ("Linux kernel documentation, Documentation/x86/pti.rst ('Page Table Isolation'), Overhead, "
            "Runtime Cost a: 'Moves to CR3 are on the order of a hundred cycles, and are required at every "
            "entry and exit.'")

SYSCALL = Constant("syscall/sysret round trip", 200, (
    "mode-switch-stat (github.com/eecheng87/mode-switch-stat, issue #1 'Result list', April 2021): round "
    "trip of an empty system call (number 401 hooked to an empty kernel function, called through glibc "
    "syscall() 120 times between two rdtsc reads), in TSC ticks per call on Linux: Intel Core i7-9700 "
    "@ 3.00 GHz (not affected by Meltdown, so no page-table isolation) 210.45, AMD Ryzen 5 3600 248.74, "
    "AMD Ryzen Threadripper 2990WX 240.76. The repository asks that results posted before its fix b939863 "
    "be scaled by 0.83, giving 175-207. We take 200. TSC ticks count at the nominal clock (3.0 GHz for "
    "the i7-9700), not core cycles at turbo."))

# Kontain, kontainapp/km docs/kkm-performance-stats.md (2020), physical host;
# seconds per call (the table gives seconds per 1 million).
_KM_CITE = ("Kontain (github.com/kontainapp/km, docs/kkm-performance-stats.md, 2020), physical host Intel "
            "Core i5-6400 @ 2.70 GHz, Fedora 32, Linux 5.7.7")
_KM_SYSCALL_S = 0.495e-6
_KM_READ_FAULT_S = 0.937e-6
_KM_KVM_EXIT_TO_USER_S = 3.183e-6
_KM_CLOCK_HZ = 2.70e9

TRAP = Constant("exception delivery", round(SYSCALL.cycles * _KM_READ_FAULT_S / _KM_SYSCALL_S), (
    f"Derived: on one machine a read page fault costs {_KM_READ_FAULT_S / _KM_SYSCALL_S:.2f} times a dummy "
    f"system call ({_KM_CITE}: 1 million read page faults, after which the page is readable, 0.937 s; "
    "1 million dummy system calls, 0.495 s). Applied to the syscall/sysret round trip: 200 x 0.937 / "
    "0.495. The fault includes Linux's minor-fault handling, so this bounds bare exception delivery (IDT "
    "gate, error code, IRET) from above. That the ratio carries over from a 2020 kernel with "
    "Meltdown/Spectre mitigations to an unmitigated one is an assumption."))

# Xen changeset 'Implement faster int 0x80 handling for compat mode guests'
# (Ian Campbell, XenSource): lmbench lat_syscall in a 32-bit PV guest.
_XEN_DIRECT_S = 0.3270e-6
_XEN_BOUNCED_S = 0.5497e-6
_BOUNCE_RATIO = (_XEN_BOUNCED_S - _XEN_DIRECT_S) / _XEN_DIRECT_S

UPCALL = Constant("upcall (bounce to a user-level handler)", round(TRAP.cycles * _BOUNCE_RATIO), (
    "Derived: Xen measured what bouncing a trap through the hypervisor to a guest's handler adds "
    "(changeset 'Implement faster int 0x80 handling for compat mode guests', Ian Campbell, XenSource; "
    "lmbench lat_syscall in a 32-bit PV guest: int 0x80 trapping directly to the ring-1 guest kernel "
    "0.3270 us, through a dedicated ring-0 Xen handler that bounces it to the guest 0.5497 us). The "
    "bounce (enter the hypervisor, build the guest's exception frame, return to the guest's handler) is "
    f"what an exokernel upcall does; we charge (0.5497 - 0.3270) / 0.3270 = {_BOUNCE_RATIO:.2f} of "
    "exception delivery."))

INT80 = Constant("int 0x80 round trip", TRAP.cycles, (
    "Estimate: no like-for-like measurement of int 0x80 against syscall on one modern machine was found. "
    "int 0x80 enters through an IDT gate (descriptor fetch, privilege check, stack switch through the "
    "TSS, five-word frame) and returns with IRET, the path of exception delivery, so it is charged as "
    "exception delivery. SYSCALL/SYSRET were added to avoid that path (AMD64 Architecture Programmer's "
    "Manual vol. 1, 3.7.7 System Calls: 'low-latency system-call and system-return control-transfer "
    "instructions'); int 0x80's cost is why Linux adopted sysenter (A. Brouwer, 'The Linux kernel', 4.6, "
    "2003: 'the very large overhead of the traditional int 0x80 interrupt on a Pentium 4')."))

INTERRUPT = Constant("interrupt delivery", TRAP.cycles, (
    "Estimate: a timer interrupt taken in user mode uses the same IDT-gate delivery and IRET return as an "
    "exception, plus a write to the local APIC's end-of-interrupt register, which is ignored; charged as "
    "exception delivery."))

CTX_TAGGED = Constant("context switch, TLB kept (PCID/VPID)", _CR3_WRITE_CYCLES + 100, (
    f"Derived: one CR3 write ({_CR3_WRITE_CYCLES} cycles: {_PTI_RST}) plus an estimated 100 cycles to "
    "save one environment's general registers, RIP, RFLAGS and FS/GS bases and load another's. With PCID "
    "(or VPID) tags the CR3 write keeps the TLB (pti.rst, Runtime Cost d), so nothing is refilled."))

# Brendan Gregg, 'Linux Performance 2018' (slides, October 2018): tlbstat on
# an AWS c5.9xlarge (Skylake-SP), Linux 4.14.12, over one second.
_DTLB_WALK_KCYCLES = 1_507_279
_DTLB_WALKS = 86_588_626
_PAGE_WALK_CYCLES = _DTLB_WALK_KCYCLES * 1000 / _DTLB_WALKS
_TLB_REFILL_PAGES = 64

TLB_REFILL = Constant("TLB refill after a full flush", round(_TLB_REFILL_PAGES * _PAGE_WALK_CYCLES), (
    f"Derived: {_TLB_REFILL_PAGES} page walks x {_PAGE_WALK_CYCLES:.1f} cycles per walk. The number of walks "
    "is an estimate: refilling one first-level data TLB (64 entries) after a full flush. Cycles per walk = "
    "cycles spent in data-TLB page walks / data-TLB walks, measured with tlbstat on an AWS c5.9xlarge "
    "(Skylake-SP), Linux 4.14.12: 1,507,279 K cycles / 86,588,626 walks in one second (Brendan Gregg, "
    "'Linux Performance 2018', slides, October 2018, "
    "slideshare.net/slideshow/ato-linux-performance-2018/120351117). Walks that miss the caches cost "
    "more; instruction-TLB refills are not charged."))

CTX_FLUSH = Constant("context switch with TLB flush", CTX_TAGGED.cycles + TLB_REFILL.cycles, (
    f"Derived: context switch, TLB kept ({CTX_TAGGED.cycles}) + TLB refill after a full flush "
    f"({TLB_REFILL.cycles:,}): without PCID the CR3 write flushes every non-global TLB entry, which the "
    "next environment walks the page tables to refill."))

LIBCALL = Constant("library call", 12, (
    "Linux Journal article 6516, 'Kernel Mode Linux' (T. Maeda), Table 2 'System call latency (CPU "
    "cycles)': getpid costs 432 cycles on original Linux using sysenter and 12 cycles when the process "
    "runs in kernel mode and the system call becomes a plain call "
    "(linuxjournal.com/files/linuxjournal.com/linuxjournal/articles/065/6516/6516t2.html). Those 12 "
    "cycles are a call, getpid's body and a return: a library call in place of a ring transition."))

KCALL = Constant("kernel-internal call", LIBCALL.cycles, (
    "A service's call into the kernel from inside the kernel is a plain call and return, no ring "
    f"transition; charged as a library call ({LIBCALL.cycles})."))

KPTI_SYSCALL = Constant("syscall/sysret round trip with PTI", SYSCALL.cycles + 2 * _CR3_WRITE_CYCLES, (
    f"Derived: syscall/sysret round trip ({SYSCALL.cycles}) + a CR3 write at entry and one at exit "
    f"(2 x {_CR3_WRITE_CYCLES}: {_PTI_RST}). With PCID the writes do not flush the TLB. Cross-checks: "
    "D. Gruss (KAISER's author), github.com/isec-tugraz/KAISER issue #3, 13 May 2017: 'in our micro "
    "benchmarks we observed an overhead for a simple syscall of less than 300 cycles (to switch cr3)'; "
    "FreeBSD review D13985 (January 2018, Haswell with PCID and INVPCID): getppid 339 ns per call "
    "without page-table isolation, 478 ns with it."))


def _plus(name: str, base: Constant, extra: int, why: str) -> Constant:
    return Constant(name, base.cycles + extra, f"Derived: {base.name} ({base.cycles:,}) + {extra:,}: {why}.")


_CR3_PAIR = f"a CR3 write at entry and one at exit, {_CR3_WRITE_CYCLES} cycles each (Documentation/x86/pti.rst)"
KPTI_TRAP = _plus("exception delivery with PTI", TRAP, 2 * _CR3_WRITE_CYCLES, _CR3_PAIR)
KPTI_INTERRUPT = _plus("interrupt delivery with PTI", INTERRUPT, 2 * _CR3_WRITE_CYCLES, _CR3_PAIR)
KPTI_UPCALL = _plus("upcall with PTI", UPCALL, _CR3_WRITE_CYCLES,
                    f"one more CR3 write, on the exit to the user-level handler, {_CR3_WRITE_CYCLES} cycles "
                    "(Documentation/x86/pti.rst)")
_NOPCID = ("without PCID 'each CR3 write flushes the entire TLB. That means that each syscall, interrupt or "
           "exception flushes the TLB' (Documentation/x86/pti.rst, Runtime Cost g); one TLB refill after a "
           f"full flush ({TLB_REFILL.cycles:,}) is charged per round trip")
NOPCID_SYSCALL = _plus("syscall/sysret round trip with PTI, no PCID", KPTI_SYSCALL, TLB_REFILL.cycles, _NOPCID)
NOPCID_TRAP = _plus("exception delivery with PTI, no PCID", KPTI_TRAP, TLB_REFILL.cycles, _NOPCID)
NOPCID_INTERRUPT = _plus("interrupt delivery with PTI, no PCID", KPTI_INTERRUPT, TLB_REFILL.cycles, _NOPCID)

KVM_HYPERCALL = Constant("VMX exit/entry round trip (KVM null hypercall)", 1300, (
    "C. Dall, S.-W. Li, J. T. Lim, J. Nieh, G. Koloventzos, 'ARM Virtualization: Performance and "
    "Architectural Implications', ISCA 2016, microbenchmark table, Hypercall on x86 KVM: 1,300 cycles for "
    "a null hypercall from the VM to the hypervisor and back (one VMX exit, KVM's dispatch, one VM entry). "
    "Cross-check: A. Landau, M. Ben-Yehuda, A. Gordon, 'SplitX: Split Guest/Hypervisor Execution on "
    "Multi-Core', USENIX WIOV 2011: the direct cost of an exit (world switch out and back) is about 2,000 "
    "cycles on a Xeon X5570 @ 2.93 GHz with KVM in Linux 2.6.34."))

KVM_EXIT = Constant("VM exit for an exception or interrupt", KVM_HYPERCALL.cycles, (
    "Estimate: with each environment a VM, an exception or interrupt the exokernel must see is a VM exit "
    "(exception bitmap, external-interrupt exiting); charged as the VMX exit/entry round trip "
    f"({KVM_HYPERCALL.cycles:,}), which Dall et al. measured only for hypercalls."))

KVM_UPCALL = Constant("upcall injected into a VM", UPCALL.cycles, (
    "Estimate: the hypervisor injects the exception on the VM entry already charged to the exit; its "
    f"delivery through the guest's IDT to the handler is charged as the native upcall ({UPCALL.cycles})."))

KVM_CTX = Constant("VM switch, TLB kept (VPID/PCID)", CTX_TAGGED.cycles, (
    "Estimate: switching environments loads another VMCS and EPT root; VPID and PCID tags keep the TLB, "
    f"so it is charged as the tagged context switch ({CTX_TAGGED.cycles}). The cost of VMPTRLD itself is "
    "not separately sourced."))

KVM_GUEST_SYSCALL = Constant("syscall inside a VM", SYSCALL.cycles, (
    "Derived: a system call from a guest application to its guest kernel stays inside the VM (SYSCALL is "
    f"not a VM-exiting instruction), so it costs the syscall/sysret round trip ({SYSCALL.cycles})."))

KVM_EXIT_TO_USER = Constant("exit to the user-space VMM", round(_KM_KVM_EXIT_TO_USER_S * _KM_CLOCK_HZ), (
    f"A hypercall that KVM hands to the user-space monitor and back ('kvm hcall', 1 million in 3.183 s; "
    f"{_KM_CITE}): 3.183 us x 2.70 GHz (the stated base clock; turbo not accounted). Charged for console "
    "I/O, which a KVM-based exokernel would leave to its user-space device model, as QEMU and Firecracker "
    "do for the serial console."))

XEN_HYPERCALL = Constant("Xen PV hypercall (SYSCALL into Xen)", SYSCALL.cycles, (
    "Derived: a 64-bit PV hypercall is a SYSCALL into Xen through the hypercall page (Xen, "
    "hypercall_page_initialise_ring3_kernel writes 'push %rcx; push %r11; mov $<i>,%eax; syscall; pop "
    "%r11; pop %rcx; ret' in each 32-byte slot) and, made from the guest kernel, switches no page tables "
    "(before XPTI, Xen's 2018 Meltdown mitigation for PV guests). Charged as the syscall/sysret round "
    f"trip ({SYSCALL.cycles}); Xen's dispatch is not measured separately."))

XEN_GUEST_SYSCALL = Constant("Xen PV guest application's syscall",
                             TRAP.cycles + UPCALL.cycles + XEN_HYPERCALL.cycles, (
    f"Derived: a 64-bit PV guest application's system call enters Xen (exception delivery, {TRAP.cycles}), "
    f"is bounced to the guest kernel's registered entry (upcall, {UPCALL.cycles}), and the guest kernel "
    f"returns to the application with the HYPERVISOR_iret hypercall ({XEN_HYPERCALL.cycles}), as "
    "exo/structures.py models the xen-pv structure."))

XEN_CTX = Constant("Xen PV domain switch", CTX_FLUSH.cycles, (
    "Estimate: assumes a CPU or Xen version without PCID use, so switching domains' page-table roots "
    f"flushes the non-global TLB entries; charged as a context switch with TLB flush ({CTX_FLUSH.cycles:,})."))

LEGACY_CTX = Constant("context switch, legacy kernel", CTX_FLUSH.cycles, (
    "Kernels of the int 0x80 era did not use PCID (Linux began to in 4.14, 2017), so every switch flushes "
    f"the TLB; charged as a context switch with TLB flush ({CTX_FLUSH.cycles:,})."))


# Every constant, in the order the docs list them.
CONSTANTS: tuple[Constant, ...] = (
    SYSCALL, TRAP, UPCALL, INTERRUPT, INT80, CTX_TAGGED, TLB_REFILL, CTX_FLUSH, LEGACY_CTX, LIBCALL, KCALL,
    KPTI_SYSCALL, KPTI_TRAP, KPTI_UPCALL, KPTI_INTERRUPT, NOPCID_SYSCALL, NOPCID_TRAP, NOPCID_INTERRUPT,
    KVM_HYPERCALL, KVM_EXIT, KVM_UPCALL, KVM_CTX, KVM_GUEST_SYSCALL, KVM_EXIT_TO_USER,
    XEN_HYPERCALL, XEN_GUEST_SYSCALL, XEN_CTX,
)


# --------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class _Spec:
    name: str
    description: str
    kinds: Mapping[str, Constant]
    overrides: Mapping[str, Constant] = field(default_factory=dict)

    def profile(self) -> CostProfile:
        return CostProfile(
            name=self.name,
            description=self.description,
            cycles={k: c.cycles for k, c in self.kinds.items()},
            sources={**{k: c.source for k, c in self.kinds.items()},
                     **{f"hypercall:{n}": c.source for n, c in self.overrides.items()}},
            hypercall_overrides={n: c.cycles for n, c in self.overrides.items()},
        )


def _spec(name: str, description: str, *, overrides: Mapping[str, Constant] | None = None,
          **kinds: Constant) -> _Spec:
    return _Spec(name, description, kinds, overrides or {})


# `reflect` (a Linux program's `syscall` redirected to its libOS, issue 15) is the same
# hardware transition as the profile's `syscall` (trap in, return out), so it is charged that
# constant, with that constant's cited source.
_SPECS = (
    _spec("native-syscall",
          "Hypercalls cost a native syscall/sysret round trip without page-table isolation; context "
          "switches keep the TLB (PCID).",
          hypercall=SYSCALL, syscall=SYSCALL, reflect=SYSCALL, trap=TRAP, upcall=UPCALL, interrupt=INTERRUPT,
          context_switch=CTX_TAGGED, libcall=LIBCALL, kcall=KCALL),
    _spec("native-syscall-kpti",
          "Native syscall/sysret with kernel page-table isolation (the Meltdown mitigation) on a CPU with "
          "PCID: every kernel entry and exit writes CR3; nothing is flushed.",
          hypercall=KPTI_SYSCALL, syscall=KPTI_SYSCALL, reflect=KPTI_SYSCALL, trap=KPTI_TRAP, upcall=KPTI_UPCALL,
          interrupt=KPTI_INTERRUPT, context_switch=CTX_TAGGED, libcall=LIBCALL, kcall=KCALL),
    _spec("native-syscall-kpti-nopcid",
          "Page-table isolation on a CPU without PCID: every CR3 write flushes the TLB, so every round "
          "trip into the kernel pays a TLB refill, and so does every context switch.",
          hypercall=NOPCID_SYSCALL, syscall=NOPCID_SYSCALL, reflect=NOPCID_SYSCALL, trap=NOPCID_TRAP, upcall=KPTI_UPCALL,
          interrupt=NOPCID_INTERRUPT, context_switch=CTX_FLUSH, libcall=LIBCALL, kcall=KCALL),
    _spec("int80",
          "Hypercalls enter through the legacy int 0x80 software interrupt and return with IRET; a kernel "
          "of that era flushes the TLB on every context switch.",
          hypercall=INT80, syscall=INT80, reflect=INT80, trap=TRAP, upcall=UPCALL, interrupt=INTERRUPT,
          context_switch=LEGACY_CTX, libcall=LIBCALL, kcall=KCALL),
    _spec("kvm-vmx",
          "Each environment is a VM: a hypercall is a VMX exit/entry round trip (a KVM null hypercall), and "
          "so is every trap and interrupt the exokernel must see; console I/O exits to the user-space VMM.",
          hypercall=KVM_HYPERCALL, syscall=KVM_GUEST_SYSCALL, reflect=KVM_GUEST_SYSCALL, trap=KVM_EXIT, upcall=KVM_UPCALL,
          interrupt=KVM_EXIT, context_switch=KVM_CTX, libcall=LIBCALL, kcall=KCALL,
          overrides={"console_write": KVM_EXIT_TO_USER, "console_read": KVM_EXIT_TO_USER}),
    _spec("xen-pv",
          "Each environment is a Xen PV guest kernel: a hypercall is a SYSCALL into Xen, a trap is bounced "
          "to the guest's handler (the upcall), and a domain switch flushes the TLB.",
          hypercall=XEN_HYPERCALL, syscall=XEN_GUEST_SYSCALL, reflect=XEN_GUEST_SYSCALL, trap=TRAP, upcall=UPCALL, interrupt=INTERRUPT,
          context_switch=XEN_CTX, libcall=LIBCALL, kcall=KCALL),
)

PROFILES: dict[str, CostProfile] = {s.name: s.profile() for s in _SPECS}


# --------------------------------------------------------------------------- arithmetic
def _check_counts(counts: Mapping[str, float], what: str) -> None:
    """Counts are non-negative numbers: whole runs, or per-operation averages (experiments)."""
    for key, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not n >= 0 or n == float("inf"):
            raise ValueError(f"{what}[{key!r}] must be a non-negative number, got {n!r}")


def model(counts: Mapping[str, int], profile: CostProfile,
          hypercalls: Mapping[str, int] | None = None) -> dict:
    """Modelled cycles for one run under one profile.

    ``counts`` maps transition kinds (accounting.KINDS) to counts, e.g.
    ``Accounting.transitions``; a kind left out counts zero, a kind not in
    KINDS is rejected (ValueError) rather than silently costed at zero.
    ``hypercalls`` (optional) maps hypercall names to counts, e.g.
    ``Accounting.hypercalls``; named calls use the profile's per-hypercall
    override where it has one, the rest of ``counts["hypercall"]`` the base
    hypercall cost. Named calls may not outnumber ``counts["hypercall"]``.

    Returns ``{"profile", "by_kind", "hypercalls", "total"}``: cycles per kind
    (every kind present), cycles per named hypercall, and their sum.
    """
    unknown = sorted(set(counts) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown transition kinds {unknown}; expected some of {KINDS}")
    _check_counts(counts, "counts")
    by_kind = {k: counts.get(k, 0) * profile.cycles[k] for k in KINDS}
    per_name: dict[str, int] = {}
    if hypercalls:
        _check_counts(hypercalls, "hypercalls")
        named = sum(hypercalls.values())
        total_hc = counts.get("hypercall", 0)
        if named > total_hc + 1e-9:
            raise ValueError(f"{named} named hypercalls but counts['hypercall'] is {total_hc}")
        per_name = {name: n * profile.hypercall_cost(name) for name, n in hypercalls.items()}
        by_kind["hypercall"] = sum(per_name.values()) + (total_hc - named) * profile.cycles["hypercall"]
    return {"profile": profile.name, "by_kind": by_kind, "hypercalls": per_name,
            "total": sum(by_kind.values())}


def model_all(counts: Mapping[str, int], hypercalls: Mapping[str, int] | None = None) -> dict[str, dict]:
    """``model`` under every profile in PROFILES, keyed by profile name."""
    return {name: model(counts, p, hypercalls) for name, p in PROFILES.items()}


def report(counts: Mapping[str, int], measured_host_seconds: float | None,
           hypercalls: Mapping[str, int] | None = None,
           clock_hz: float = REFERENCE_CLOCK_HZ) -> dict:
    """Modelled cycles for every profile beside the measured emulator time.

    ``measured_host_seconds`` is the host time the emulator took (None when the
    run used the virtual clock and measured none); it is always part of the
    result, so a consumer cannot show the model without it. ``modelled_seconds``
    is the modelled cycles at ``clock_hz``, a stated nominal clock.
    """
    return {
        "measured_host_seconds": measured_host_seconds,
        "clock_hz": clock_hz,
        "profiles": {name: {"by_kind": m["by_kind"], "total_cycles": m["total"],
                            "modelled_seconds": m["total"] / clock_hz}
                     for name, m in model_all(counts, hypercalls).items()},
    }


# --------------------------------------------------------------------------- docs
_HEADER = "generated by `python -m exo gen` from exo/costmodel.py: do not edit"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """docs/cost-models.md, generated from the profiles so docs and code cannot drift."""
    out = [
        f"<!-- {_HEADER} -->",
        "# Cost models",
        "",
        "exo counts every ring transition (see [stats.md](stats.md)). A *cost profile* turns those counts "
        "into **modelled** cycles: what the run's boundary crossings would cost if each event of a kind "
        "cost what a named hardware/OS mechanism costs on real x86-64. `exo/costmodel.py` holds the "
        "profiles and constants; this page is generated from it.",
        "",
        "## Method",
        "",
        "- **Modelled, not measured.** Cycles = count of each kind x the profile's constant for that kind, "
        "summed over the kinds of `exo/accounting.py` (`costmodel.model`). A hypercall is one full round "
        "trip (guest to exokernel and back), and so is a syscall (an application's trap into an OS "
        "service, `exo/structures.py`); a library call and a kernel-internal call cross no ring. "
        "Hypercalls named in a profile's overrides cost the override instead. A kind the model does not "
        "know is rejected, not costed at zero.",
        "- **Included:** the direct cost of each transition: the privilege switch and the entry and exit "
        "path of the mechanism, with page-table switches where the profile has them.",
        "- **Not included:** the work done inside the call, and the cache, TLB and branch-predictor "
        "pollution a transition leaves behind (FlexSC, Soares and Stumm, OSDI 2010, found this indirect "
        "cost larger than the direct one), except where a constant says it charges a TLB refill.",
        "- **Sources.** Every constant names its source and the exact quantity measured. Constants come "
        "from different machines and years; where a source gives time, the clock used to get cycles is "
        "stated; a constant derived from a ratio or from other constants says so; one we could not "
        "source says *Estimate* and why. The numbers compare mechanisms on the same counts; they do not "
        "predict one machine.",
        "",
        "## Reading it beside measured time",
        "",
        "The emulator's measured host time is the real cost of a run here (a Python hook per transition, "
        "about 1 us). Modelled cycles are reported beside it, never instead of it: "
        "`costmodel.report(counts, measured_host_seconds)` returns both, with modelled cycles also shown "
        f"as time at a nominal {REFERENCE_CLOCK_HZ / 1e9:g} GHz. Under the virtual clock no host time is "
        "measured and `measured_host_seconds` is null. Compare profiles with each other on the same "
        "counts (for example, what a run's hypercalls would cost under `kvm-vmx` against "
        "`native-syscall`); do not read a modelled total as a prediction of the emulator's time.",
        "",
        "## Profiles",
        "",
        "Cycles per event.",
        "",
        "| profile | " + " | ".join(KINDS) + " |",
        "|---|" + "---:|" * len(KINDS),
    ]
    for p in PROFILES.values():
        out.append(f"| `{p.name}` | " + " | ".join(f"{p.cycles[k]:,}" for k in KINDS) + " |")
    for s in _SPECS:
        out += ["", f"### `{s.name}`", "", s.description, "", "| kind | cycles | constant |", "|---|---:|---|"]
        for k in KINDS:
            c = s.kinds[k]
            out.append(f"| {k} | {c.cycles:,} | {_cell(c.name)} |")
        for name, c in s.overrides.items():
            out.append(f"| hypercall `{name}` | {c.cycles:,} | {_cell(c.name)} |")
    out += ["", "## Constants and their sources", "", "| constant | cycles | source |", "|---|---:|---|"]
    for c in CONSTANTS:
        out.append(f"| {_cell(c.name)} | {c.cycles:,} | {_cell(c.source)} |")
    out += [
        "",
        "## For scale",
        "",
        "Measurements of fully mitigated kernels, not used as constants: the Kontain table above gives a "
        f"dummy system call at 0.495 us ({round(_KM_SYSCALL_S * _KM_CLOCK_HZ):,} cycles at 2.70 GHz) on a "
        "Skylake running Linux 5.7.7, which enables page-table isolation and the other Meltdown/Spectre "
        "mitigations by default on that CPU; mode-switch-stat reports 1,617 and "
        "2,162 TSC ticks per empty system call on an i3-9100 and a Xeon E5-2650 v4 with PTI (before its "
        "0.83 correction). Those kernels add more than page-table isolation (speculation barriers, buffer "
        "clearing on exit), which no profile here models. A Linux process switch through the scheduler is "
        "far heavier than an exokernel's register-and-CR3 switch: C. Li, C. Ding, K. Shen ('Quantifying "
        "the Cost of Context Switch', ExpCS 2007) measured a direct cost of 3.8 us on Linux 2.6.17.",
        "",
    ]
    return "\n".join(out)


OUTPUTS = {DOC_PATH: render_markdown}


def generate() -> list[Path]:
    """Write docs/cost-models.md if it differs; return the paths written."""
    written = []
    for path, render in OUTPUTS.items():
        text = render()
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
