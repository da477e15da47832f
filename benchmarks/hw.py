"""Benchmarks of the machine layer (``hw``), each beside a bare-Unicorn baseline.

What is measured (every baseline in the same process and run as its subject):

* **trap round trip**: guest ``syscall`` -> Python handler -> guest, per round
  trip. Baseline: a raw ``Uc`` (no paging, CPL 0) with an *empty* Python
  syscall hook. Also shown: the same raw ``Uc`` whose hook does the handler's
  register work with direct library calls (the floor for that work), and a
  ``hw.Machine`` at CPL 3 with paging whose handler reads RAX, RDI, RSI, RDX
  (one prepared batch read) and writes RAX, in virtual- and wall-clock mode.
  Target: within 4x the empty bare hook.
* **context switch**: ``cpu.save(a); cpu.restore(b)`` between two contexts
  whose page tables differ (the CR3 write flushes the TLB), compared with the
  bare syscall hook and with the same four library calls made directly.
* **guest MIPS**: an ALU loop and a load/store loop (data page NX, code page
  not writable) with paging on: a raw ``Uc`` with no hooks and the same page
  layout (``emu_start(count=0)``) vs ``VCpu.run`` in virtual mode (exact
  instruction budget, 1M-instruction slices) and in wall mode (``run`` returns
  "preempted" every ``slice_seconds``; it is called again until the guest's
  exit ``syscall``). Instructions are counted from the known trip count.
  Target: wall mode >= 90% of bare MIPS.

Run: ``python -m benchmarks.hw [--repeat N] [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from rich.console import Console
from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from benchmarks.harness import (
    Bench,
    Result,
    Stats,
    calibrate,
    git_state,
    machine_facts,
    measure,
    measure_interleaved,
    print_results,
    report_console,
    result,
    to_json,
)
from hw import regs as hw_regs
from hw.cpu import (
    CR0_PE,
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    EFER_SCE,
    MSR_EFER,
    RESERVED_BYTES,
    CpuContext,
    VCpu,
)
from hw.machine import Machine
from hw.memory import PAGE_SIZE, PhysicalMemory
from hw.paging import PTE_NX, PTE_U, PTE_W, map_page
from hw.regs import Reg
from hw.traps import Trap

CODE_VA = 0x40_0000  # user, read + execute (not writable)
DATA_VA = 0x60_0000  # user, read + write, NX
EXIT = 60  # RAX of the guest's final syscall: the handler stops the CPU
RAM = 16 << 20
VIRTUAL_SLICE = 1_000_000  # instructions per VCpu.run in virtual mode (1 ms of virtual time)


@dataclass(frozen=True)
class Program:
    """A guest loop: RBX = trip count on entry; ends with ``mov eax, EXIT; syscall``."""

    name: str
    source: str
    per_trip: int  # instructions per loop trip
    tail: int = 2  # instructions after the loop (mov eax; syscall)

    def instructions(self, trips: int) -> int:
        return trips * self.per_trip + self.tail


_TAIL = f"mov eax, {EXIT}; syscall; nop"
SYSCALL_LOOP = Program("syscall", f"top: syscall; dec rbx; jnz top; {_TAIL}", 3)
ALU_LOOP = Program(
    "ALU",
    f"top: add rax, rcx; xor rdx, rax; add rsi, rdx; sub rcx, 7; add r8, rsi; dec rbx; jnz top; {_TAIL}",
    7,
)
MEM_LOOP = Program(
    "load/store",
    "top: mov rax, [rdi]; add rax, rcx; mov [rdi+8], rax; mov rdx, [rdi+16]; add rdx, rax; "
    f"mov [rdi+24], rdx; dec rbx; jnz top; {_TAIL}",
    8,
)

_ks = Ks(KS_ARCH_X86, KS_MODE_64)


def assemble(program: Program) -> tuple[bytes, int]:
    """Machine code at CODE_VA and the ``until`` address (the final ``nop``) for bare runs."""
    encoding, _ = _ks.asm(program.source, CODE_VA)
    code = bytes(encoding)
    return code, CODE_VA + len(code) - 1


# ---------------------------------------------------------------- address spaces
class Frames:
    """Bump allocator of zeroed physical frames above ``start``."""

    def __init__(self, mem: PhysicalMemory, start: int = RESERVED_BYTES) -> None:
        self.mem = mem
        self.next = start

    def __call__(self) -> int:
        pa = self.next
        self.next += PAGE_SIZE
        self.mem.zero(pa, PAGE_SIZE)
        return pa


def build_space(mem: PhysicalMemory, frames: Frames, code: bytes) -> int:
    """Page tables mapping ``code`` at CODE_VA (U, RX) and one data page at DATA_VA (U, RW, NX)."""
    root = frames()
    code_pa, data_pa = frames(), frames()
    mem.write(code_pa, code)
    map_page(mem, root, CODE_VA, code_pa, PTE_U, frames)
    map_page(mem, root, DATA_VA, data_pa, PTE_U | PTE_W | PTE_NX, frames)
    return root


# ------------------------------------------------------------------- bare Unicorn
def _empty_hook(uc: Uc, _ud: object) -> None:
    pass


def bare_syscall_uc(code: bytes, hook: Callable[[Uc, object], None] | None) -> Uc:
    """The simplest setup: long mode, paging off, CPL 0, one code page, a syscall hook if given."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE_VA, PAGE_SIZE, UC_PROT_ALL)
    uc.mem_write(CODE_VA, code)
    if hook is not None:
        uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, X.UC_X86_INS_SYSCALL)
    return uc


RawSyscallCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)  # uc_cb_insn_syscall_t


def raw_syscall_hook(uc: Uc, fn: Callable[[int, int], None]) -> object:
    """Register ``fn(handle, user_data)`` with ``uc_hook_add`` itself, bypassing the binding's wrapper.

    Returns the ctypes callback, which the caller must keep alive while ``uc`` runs.
    """
    cb = RawSyscallCallback(fn)
    hh = ctypes.c_size_t()
    err = uclib.uc_hook_add(
        uc._uch,
        ctypes.byref(hh),
        UC_HOOK_INSN,
        ctypes.cast(cb, ctypes.c_void_p),
        None,
        ctypes.c_uint64(1),
        ctypes.c_uint64(0),
        ctypes.c_int(X.UC_X86_INS_SYSCALL),
    )
    if err:
        raise RuntimeError(f"uc_hook_add failed (unicorn error {err})")
    return cb


@dataclass
class BareMachine:
    uc: Uc
    mem: PhysicalMemory  # must outlive uc: it is uc's RAM (mem_map_ptr)
    roots: list[int]


def bare_paged_uc(code: bytes, spaces: int = 1) -> BareMachine:
    """A raw ``Uc`` with no hooks, paging on and the same layout as the hw guests (CPL 0)."""
    mem = PhysicalMemory(4 << 20)
    frames = Frames(mem)
    roots = [build_space(mem, frames, code) for _ in range(spaces)]
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, mem.size, UC_PROT_ALL, mem.address)
    uc.reg_write(X.UC_X86_REG_CR3, roots[0])
    uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE)
    uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
    uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_WP | CR0_PG)
    uc.ctl_flush_tb()
    return BareMachine(uc, mem, roots)


def bare_runner(uc: Uc, until: int) -> Callable[[int], None]:
    def run(trips: int) -> None:
        uc.reg_write(X.UC_X86_REG_RBX, trips)
        uc.reg_write(X.UC_X86_REG_RDI, DATA_VA)
        uc.emu_start(CODE_VA, until)
        if uc.reg_read(X.UC_X86_REG_RBX) != 0:
            raise RuntimeError("bare guest did not finish its loop")

    return run


# ---------------------------------------------------------------------- hw guests
class LoopHandler:
    """The benchmark's OS: reads 4 registers and writes 1 per syscall; EXIT stops the CPU."""

    def __init__(self, cpu: VCpu) -> None:
        self._read = cpu.regs.reader((Reg.RAX, Reg.RDI, Reg.RSI, Reg.RDX))
        self._write = cpu.regs.write
        self.traps: list[Trap] = []

    def syscall(self, cpu: VCpu) -> None:
        rax, _rdi, _rsi, _rdx = self._read()
        if rax == EXIT:
            cpu.stop("exit")
        else:
            self._write(Reg.RAX, 0)

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        self.traps.append(trap)
        cpu.stop("trap")


class CountdownHandler(LoopHandler):
    """No register access at all: stops the CPU at the ``left``-th syscall (hw dispatch cost only)."""

    def __init__(self, cpu: VCpu) -> None:
        super().__init__(cpu)
        self.left = 0

    def syscall(self, cpu: VCpu) -> None:
        self.left -= 1
        if not self.left:
            cpu.stop("exit")


class BatchHandler(LoopHandler):
    """The same register work through ``regs.batch`` and ``regs.setter`` (no list built, ids prepared)."""

    def __init__(self, cpu: VCpu) -> None:
        super().__init__(cpu)
        self._refresh, self._vals = cpu.regs.batch((Reg.RAX, Reg.RDI, Reg.RSI, Reg.RDX))
        self._set_rax = cpu.regs.setter(Reg.RAX)

    def syscall(self, cpu: VCpu) -> None:
        self._refresh()
        v = self._vals
        rax, _rdi, _rsi, _rdx = v[0], v[1], v[2], v[3]
        if rax == EXIT:
            cpu.stop("exit")
        else:
            self._set_rax(0)


def has_batch_api(cpu: VCpu) -> bool:
    return hasattr(cpu.regs, "batch") and hasattr(cpu.regs, "setter")


class GprHandler(LoopHandler):
    """The same register work through ``cpu.gpr``, the live register file as memory (no library call)."""

    def __init__(self, cpu: VCpu) -> None:
        super().__init__(cpu)
        self._gpr = cpu.gpr
        ix = hw_regs.GPR_INDEX
        self._ix = (ix[Reg.RAX], ix[Reg.RDI], ix[Reg.RSI], ix[Reg.RDX])

    def syscall(self, cpu: VCpu) -> None:
        g = self._gpr
        a, b, c, d = self._ix
        rax, _rdi, _rsi, _rdx = g[a], g[b], g[c], g[d]
        if rax == EXIT:
            cpu.stop("exit")
        else:
            g[a] = 0


def has_gpr_view(cpu: VCpu) -> bool:
    """Whether this hw exposes the live registers as memory (``cpu.gpr``, ``hw.regs.GPR_INDEX``)."""
    return hasattr(cpu, "gpr") and hasattr(hw_regs, "GPR_INDEX")


def hw_machine(
    clock: str, code: bytes, spaces: int = 1, handler_class: type[LoopHandler] = LoopHandler
) -> tuple[Machine, list[CpuContext], LoopHandler]:
    """A Machine with ``spaces`` address spaces holding ``code``; the first one loaded."""
    m = Machine(ram_size=RAM, clock=clock, stdin=b"", stdout=io.BytesIO())
    frames = Frames(m.memory)
    contexts = []
    for _ in range(spaces):
        ctx = m.cpu.new_context()
        ctx.cr3 = build_space(m.memory, frames, code)
        contexts.append(ctx)
    m.cpu.flush_code()
    m.cpu.restore(contexts[0])
    handler = handler_class(m.cpu)
    m.cpu.handler = handler
    return m, contexts, handler


def hw_runner(m: Machine, handler: LoopHandler, program: Program) -> Callable[[int], None]:
    cpu = m.cpu
    setup = cpu.regs.writer((Reg.RIP, Reg.RBX, Reg.RAX, Reg.RDI))
    virtual = m.cpu.clock_mode == "virtual"

    def run(trips: int) -> None:
        setup(CODE_VA, trips, 0, DATA_VA)
        if isinstance(handler, CountdownHandler):
            handler.left = trips + 1  # every loop syscall and the final one
        retired = 0
        while True:
            ex = cpu.run(VIRTUAL_SLICE)
            retired += ex.retired or 0
            if ex.reason == "stopped":
                break
        if handler.traps or ex.stop_reason != "exit":
            raise RuntimeError(f"hw guest ended with {ex} (traps: {handler.traps})")
        if virtual and retired != program.instructions(trips):
            raise RuntimeError(f"retired {retired} instructions, expected {program.instructions(trips)}")

    return run


# ---------------------------------------------------------------------- helpers
def loop_bench(fn: Callable[[int], None], trips: int, ops: int) -> Bench:
    """One call of ``fn(trips)`` per sample, counted as ``ops`` operations."""
    return Bench(lambda: fn(trips), inner=1, per_call=ops)


def time_loop(fn: Callable[[int], None], trips: int, ops: int, repeat: int) -> Stats:
    """Microseconds per operation of ``fn(trips)``, which performs ``ops`` operations, alone."""
    return measure(lambda: fn(trips), inner=1, repeat=repeat, per_call=ops)


_time_loop = time_loop  # the name benchmarks/exo.py imports


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda r: r <= limit


def _at_least(limit: float) -> Callable[[float], bool]:
    return lambda r: r >= limit


# ------------------------------------------------------------------- the suites
Log = Callable[[str], None]


def bench_traps(repeat: int, seconds: float, log: Log) -> list[Result]:
    """syscall round trips: bare hooks (binding, raw callback, raw + register work) vs hw handlers."""
    code, until = assemble(SYSCALL_LOOP)
    log("trap round trip: setting up")
    bare_run = bare_runner(bare_syscall_uc(code, _empty_hook), until)

    raw_uc = bare_syscall_uc(code, None)
    raw_cb = raw_syscall_hook(raw_uc, lambda _h, _ud: None)
    raw_run = bare_runner(raw_uc, until)

    # The cheapest library path known: argtype-less functions, every argument a ready ctypes object.
    lib = ctypes.CDLL(uclib._name)
    read_batch, write1 = lib.uc_reg_read_batch, lib.uc_reg_write
    read_batch.restype = write1.restype = ctypes.c_int
    ids = (ctypes.c_int32 * 4)(X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX)
    vals = (ctypes.c_uint64 * 4)()
    ptrs = (ctypes.c_void_p * 4)(*(ctypes.addressof(vals) + 8 * i for i in range(4)))
    count, rax_id = ctypes.c_int(4), ctypes.c_int(X.UC_X86_REG_RAX)
    zero = ctypes.c_uint64(0)
    zero_p = ctypes.c_void_p(ctypes.addressof(zero))
    direct_uc = bare_syscall_uc(code, None)
    h = ctypes.c_void_p(direct_uc._uch.value)

    def direct_hook(_handle: int, _ud: int) -> None:
        read_batch(h, ids, ptrs, count)
        vals[:]  # noqa: B018 - the values reach Python, as in a real handler
        write1(h, rax_id, zero_p)

    direct_cb = raw_syscall_hook(direct_uc, direct_hook)
    direct_run = bare_runner(direct_uc, until)

    machines = []
    hw_runs = []
    variants: list[tuple[str, type[LoopHandler]]] = [
        ("virtual", CountdownHandler),
        ("virtual", LoopHandler),
        ("wall", LoopHandler),
    ]
    for clock, handler_class in variants:
        m, _, handler = hw_machine(clock, code, handler_class=handler_class)
        machines.append(m)
        hw_runs.append(hw_runner(m, handler, SYSCALL_LOOP))
    extra: list[tuple[str, str]] = []  # optional faster register paths this hw offers
    if has_batch_api(machines[0].cpu):
        extra.append(("batch", "hw syscall, regs.batch + regs.setter"))
    if has_gpr_view(machines[0].cpu):
        extra.append(("gpr", "hw syscall, registers via cpu.gpr"))
    for kind, _ in extra:
        m, _, handler = hw_machine(
            "virtual", code, handler_class=BatchHandler if kind == "batch" else GprHandler
        )
        machines.append(m)
        hw_runs.append(hw_runner(m, handler, SYSCALL_LOOP))

    runs = [bare_run, raw_run, direct_run, *hw_runs]
    benches = []
    for fn in runs:
        log(f"trap round trip: calibrating {len(benches) + 1}/{len(runs)}")
        trips = calibrate(fn, seconds)
        benches.append(loop_bench(fn, trips, trips + 1))  # +1: the final syscall
    log(f"trap round trip: {repeat} rounds")
    st = measure_interleaved(benches, repeat=repeat)
    for m in machines:
        m.close()
    del raw_cb, direct_cb  # the callbacks had to outlive the runs

    bare = result(
        "bare syscall, empty hook",
        st[0],
        note="raw Uc, paging off, CPL 0; uc.hook_add(UC_HOOK_INSN, `def hook(uc, ud): pass`, ...)",
    )
    handler_note = "handler: regs.reader((RAX, RDI, RSI, RDX))() + regs.write(RAX, 0)"
    target = dict(baseline=bare, target="<= 4x bare", check=_at_most(4.0), note=handler_note)
    out = [
        bare,
        result(
            "bare syscall, empty raw callback",
            st[1],
            baseline=bare,
            note="as above, but the callback is registered with uc_hook_add directly (no binding wrapper)",
        ),
        result(
            "bare raw callback, 4 reads + 1 write",
            st[2],
            baseline=bare,
            note="raw callback making the handler's two library calls itself (argtype-less functions, "
            "prepared ctypes arguments): the floor for that work through the library",
        ),
        result(
            "hw syscall, empty handler",
            st[3],
            baseline=bare,
            note="virtual clock, CPL 3, paging; the handler touches no register (counts down to the exit)",
        ),
        result("hw syscall (virtual clock)", st[4], **target),
        result("hw syscall (wall clock)", st[5], **target),
    ]
    notes = {
        "batch": "virtual clock; same register work: regs.batch(...) refreshes a ctypes array read in "
        "place, regs.setter(RAX) writes (argument objects prepared once)",
        "gpr": "virtual clock; same register work on the live register file (ctypes array over "
        "Unicorn's CPU state), no library call",
    }
    for (kind, name), stats in zip(extra, st[6:]):
        out.append(result(name, stats, baseline=bare, note=notes[kind]))
    return out


def bench_context_switch(repeat: int, seconds: float, baseline: Result, log: Log) -> list[Result]:
    """cpu.save(a); cpu.restore(b) vs the same four library calls on a raw Uc."""
    code, _ = assemble(SYSCALL_LOOP)
    log("context switch: setting up")
    bm = bare_paged_uc(code, spaces=2)
    h, roots = bm.uc._uch, bm.roots
    save, restore = uclib.uc_context_save, uclib.uc_context_restore
    read1, write1 = uclib.uc_reg_read, uclib.uc_reg_write
    ctxs = []
    for _ in range(2):
        p = ctypes.c_void_p()
        if uclib.uc_context_alloc(h, ctypes.byref(p)) != 0:
            raise MemoryError("uc_context_alloc failed")
        ctxs.append(p)
    ca, cb = ctxs
    cr3 = [ctypes.c_uint64(r) for r in roots]
    scratch = ctypes.c_uint64()
    pa, pb, ps = (ctypes.addressof(v) for v in (*cr3, scratch))
    cr3_id = X.UC_X86_REG_CR3

    def bare_switch() -> None:  # two switches: a -> b -> a
        save(h, ca)
        read1(h, cr3_id, ps)
        restore(h, cb)
        write1(h, cr3_id, pb)
        save(h, cb)
        read1(h, cr3_id, ps)
        restore(h, ca)
        write1(h, cr3_id, pa)

    m, (a, b), _ = hw_machine("virtual", code, spaces=2)
    cpu = m.cpu
    cpu_save, cpu_restore = cpu.save, cpu.restore

    def hw_switch() -> None:  # two switches: a -> b -> a
        cpu_save(a)
        cpu_restore(b)
        cpu_save(b)
        cpu_restore(a)

    def calls(fn: Callable[[], None]) -> Callable[[int], None]:
        def many(n: int) -> None:
            for _ in range(n):
                fn()

        return many

    log("context switch: calibrating")
    benches = [Bench(fn, inner=calibrate(calls(fn), seconds), per_call=2) for fn in (bare_switch, hw_switch)]
    log(f"context switch: {repeat} rounds")
    bare_st, hw_st = measure_interleaved(benches, repeat=repeat)
    if a.cr3 == b.cr3 or cpu.regs.read(Reg.CR3) != a.cr3:
        raise RuntimeError(f"context switch lost the address spaces (a {a.cr3:#x}, b {b.cr3:#x})")
    m.close()
    for p in ctxs:
        uclib.uc_context_free(p)
    bare = result(
        "bare context switch",
        bare_st,
        baseline=baseline,
        note="raw Uc: uc_context_save + CR3 read, uc_context_restore + CR3 write (direct library calls)",
    )
    return [
        bare,
        result(
            "hw context switch",
            hw_st,
            baseline=baseline,
            note=f"cpu.save(a); cpu.restore(b), different page tables: "
            f"{hw_st.median / bare_st.median:.2f}x the bare context switch",
        ),
    ]


def bench_mips(repeat: int, seconds: float, log: Log) -> list[Result]:
    """Guest speed: bare Unicorn (no hooks) vs hw wall clock vs hw virtual clock, two loops."""
    out: list[Result] = []
    for program in (ALU_LOOP, MEM_LOOP):
        code, until = assemble(program)
        log(f"guest MIPS, {program.name} loop: setting up")
        bm = bare_paged_uc(code)
        bare_run = bare_runner(bm.uc, until)
        wall_m, _, handler = hw_machine("wall", code)
        wall_run = hw_runner(wall_m, handler, program)
        virt_m, _, handler = hw_machine("virtual", code)
        virt_run = hw_runner(virt_m, handler, program)
        log(f"guest MIPS, {program.name} loop: calibrating")
        trips = calibrate(bare_run, seconds, n=10_000)  # the wall-clock guest runs the same count
        vtrips = calibrate(virt_run, seconds, n=10_000)
        n, vn = program.instructions(trips), program.instructions(vtrips)
        benches = [
            loop_bench(bare_run, trips, n),
            loop_bench(wall_run, trips, n),
            loop_bench(virt_run, vtrips, vn),
        ]
        log(f"guest MIPS, {program.name} loop: {repeat} rounds")
        bare_st, wall_st, virt_st = (s.inverted() for s in measure_interleaved(benches, repeat=repeat))
        slice_ms = wall_m.cpu.slice_seconds * 1000
        wall_m.close()
        virt_m.close()
        bare = result(
            f"bare {program.name} loop",
            bare_st,
            "MIPS",
            note=f"raw Uc, paging on, no hooks, emu_start(count=0); {n:,} instructions a sample",
        )
        out += [
            bare,
            result(
                f"hw {program.name}, wall clock",
                wall_st,
                "MIPS",
                baseline=bare,
                target=">= 0.90x bare",
                check=_at_least(0.9),
                note=f"VCpu.run until the exit syscall, {slice_ms:g} ms slices; {n:,} instructions a sample",
            ),
            result(
                f"hw {program.name}, virtual clock",
                virt_st,
                "MIPS",
                baseline=bare,
                note=f"VCpu.run with {VIRTUAL_SLICE:,}-instruction budgets; {vn:,} instructions a sample",
            ),
        ]
    return out


def run(repeat: int = 7, quick: bool = False, log: Callable[[str], None] | None = None) -> list[Result]:
    """Every hw benchmark; ``quick`` uses short samples (and at most 3 of them)."""
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    say = log or (lambda _msg: None)
    seconds = 0.3
    if quick:
        seconds, repeat = 0.02, min(repeat, 3)
    traps = bench_traps(repeat, seconds, say)
    switch = bench_context_switch(repeat, seconds, traps[0], say)
    return traps + switch + bench_mips(repeat, seconds, say)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="benchmarks.hw", description="Benchmarks of the hw layer vs bare Unicorn."
    )
    ap.add_argument("--repeat", type=int, default=7, help="samples per benchmark (default 7)")
    ap.add_argument("--quick", action="store_true", help="short samples, at most 3 (a smoke run)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    err = Console(stderr=True)
    git_at_start = git_state()  # the code measured is the code at start-up (imports happened already)
    t0 = time.perf_counter()
    with err.status("benchmarking hw...") as status:
        results = run(args.repeat, args.quick, log=lambda msg: status.update(msg))
    elapsed = time.perf_counter() - t0
    facts = machine_facts()
    samples = min(args.repeat, 3) if args.quick else args.repeat
    title = (
        f"hw benchmarks: {samples} samples each{' (quick)' if args.quick else ''}, {elapsed:.0f} s; "
        f"python {facts['python']}, unicorn {facts['unicorn']}, {facts['nproc']} CPUs, "
        f"load {facts['loadavg'][0] if facts['loadavg'] else '?'}"
    )
    print_results(results, report_console(stderr=args.json == "-"), title=title)
    if args.json:
        facts.update(
            suite="hw",
            repeat=args.repeat,
            quick=args.quick,
            elapsed_s=round(elapsed, 1),
            git_at_start=git_at_start,
        )
        text = to_json(results, facts)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
