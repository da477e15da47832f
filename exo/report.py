"""Fault reports: what a student needs to see when a guest is stopped.

Fault kind, address, decoded error code, the faulting instruction disassembled
with capstone, the registers, a backtrace, and which environment it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from exo.record import Record
from hw.cpu import GDT_DESCRIPTORS, SEL_UCODE, SEL_UDATA
from hw.paging import is_canonical as canonical
from hw.traps import Trap, TrapKind, Vector

_cs = None
_csd = None  # a second decoder with operand details, for #GP causes only

# Why a floating-point fault stops a guest: the condition was unmasked, by the guest itself
# (every context starts with all of them masked: FCW 0x37f, MXCSR 0x1f80, hw/cpu.py).
_FP_REASONS = {
    Vector.MF: "an x87 floating-point exception the guest unmasked in its control word (FCW)",
    Vector.XM: "a SIMD floating-point exception the guest unmasked in MXCSR",
}


def disassemble_one(code: bytes, address: int) -> tuple[str, int]:
    """The first instruction in ``code`` as text, and its length in bytes."""
    global _cs
    if _cs is None:  # imported on the first fault: capstone costs ~25 ms at start-up
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs

        _cs = Cs(CS_ARCH_X86, CS_MODE_64)
    for insn in _cs.disasm(code, address, 1):
        return f"{insn.mnemonic} {insn.op_str}".strip(), insn.size
    if not code:
        return "(no instruction: the address is not mapped)", 0
    return f"(undecodable bytes {code[:8].hex(' ')})", min(len(code), 8)


# ------------------------------------------------------------ #GP causes
# Each cause a report can tell apart: (short form for the summary, explanation). The
# error code, the faulting RIP and the decoded instruction (operands evaluated with the
# registers at the fault) choose the cause; SDM Vol. 3A 6.15, "Interrupt 13".
GP_CAUSES = {
    "idt": ("int {vector:#x} through a DPL-0 gate",
            "int {vector:#x} names an IDT gate with DPL 0, which ring 3 may not use (SDM Vol. 3A 6.12.1.1); "
            "ring 3 may raise only int3, into and int 0x80"),
    "selector-limit": ("selector {selector:#x} past the GDT",
                       "segment load of selector {selector:#x}: index {index} is past the end of the GDT "
                       "({entries} descriptors) (SDM Vol. 3A 5.5: #GP(selector))"),
    "selector-ldt": ("LDT selector {selector:#x}",
                     "segment load of selector {selector:#x}: it names the LDT, and this machine has none "
                     "(SDM Vol. 3A 5.5: #GP(selector))"),
    "selector-null": ("null descriptor selector {selector:#x}",
                      "segment load of selector {selector:#x}: index 0 is the null descriptor"),
    "selector-privilege": ("kernel selector {selector:#x}",
                           "segment load of selector {selector:#x}: descriptor {index} has DPL {dpl}, and ring 3 "
                           "may load only descriptors of DPL 3 (user data {udata:#x}, user code {ucode:#x}) "
                           "(SDM Vol. 3A 5.5, 5.8: #GP(selector))"),
    "selector-user": ("selector {selector:#x}: RPL or type",
                      "segment load of a selector of descriptor {index}: its RPL must be 3 and the descriptor's "
                      "type must fit the segment register (user data {udata:#x}, user code {ucode:#x}) "
                      "(SDM Vol. 3A 5.5, 5.4.1: #GP(selector))"),
    "null-ss": ("null selector into SS",
                "a null selector cannot be loaded into SS at CPL 3 (SDM Vol. 2B, MOV and POP: #GP(0))"),
    "sysenter": ("sysenter",
                 "sysenter needs IA32_SYSENTER_CS, which this machine leaves 0 (SDM Vol. 2B, SYSENTER: "
                 "#GP(0)); hypercalls use syscall"),
    "privileged": ("privileged instruction {mnemonic}",
                   "{mnemonic} is a privileged instruction: a ring-3 guest may not execute it "
                   "(SDM Vol. 3A 5.9)"),
    "rip-non-canonical": ("jump to non-canonical {address:#x}",
                          "execution went to {address:#x}, which is not a canonical address (bits 63:47 "
                          "must all be equal, SDM Vol. 1 3.3.7.1): a jump, call or return went there"),
    "operand-non-canonical": ("non-canonical address {address:#x}",
                              "the memory operand of {mnemonic} is at {address:#x}, which is not a canonical "
                              "address (bits 63:47 must all be equal, SDM Vol. 1 3.3.7.1)"),
    "stack-non-canonical": ("non-canonical stack pointer {address:#x}",
                            "{mnemonic} uses the stack, and RSP {address:#x} is not a canonical address "
                            "(SDM Vol. 1 3.3.7.1; a CPU raises #SS(0) for this, Unicorn raises #GP(0))"),
    "misaligned": ("misaligned {mnemonic} operand {address:#x}",
                   "{mnemonic} needs a 16-byte aligned memory operand, and {address:#x} is not "
                   "(SDM Vol. 1 10.4.1.1)"),
    "unknown": ("cause not determined",
                "a general-protection fault at CPL 3 whose cause the report cannot tell from the instruction "
                "{mnemonic} (SDM Vol. 3A 6.15 lists them)"),
}

# Instructions that need CPL 0 (SDM Vol. 3A 5.9), as capstone spells them; `mov` to or
# from a control or debug register is found by its operands.
PRIVILEGED = frozenset({
    "hlt", "cli", "sti", "lgdt", "lidt", "lldt", "ltr", "lmsw", "clts", "invd", "wbinvd", "invlpg",
    "invpcid", "rdmsr", "wrmsr", "swapgs", "sysret", "sysretq", "sysexit", "sysexitq", "xsetbv", "rdpmc",
    "wrfsbase", "wrgsbase", "rdfsbase", "rdgsbase",  # CR4.FSGSBASE is 0 here: #UD on a CPU, #GP in Unicorn
})
# Instructions that push or pop (RSP is an implicit operand capstone does not list).
STACK_USERS = frozenset({"push", "pop", "call", "ret", "pushfq", "popfq", "enter", "leave", "iretq", "retf",
                         "retfq", "lcall", "ljmp"})
# Legacy-SSE instructions whose 16-byte memory operand must be aligned (SDM Vol. 1 10.4.1.1).
ALIGNED_16 = frozenset({"movaps", "movapd", "movdqa", "movntps", "movntpd", "movntdq", "movntdqa",
                        "addps", "addpd", "mulps", "mulpd", "subps", "subpd", "divps", "divpd", "andps",
                        "andpd", "orps", "orpd", "xorps", "xorpd", "pxor", "por", "pand", "paddd", "paddq",
                        "pcmpeqb", "pshufd", "cmpps", "cmppd", "minps", "maxps", "sqrtps", "unpcklps"})
SEGMENT_REGS = frozenset({"cs", "ds", "es", "fs", "gs", "ss"})


def _selector_cause(error: int) -> tuple[str, dict]:
    # The error code is the selector's index and TI bit; bits 0-1 are EXT and IDT, not the RPL
    # (SDM Vol. 3A 6.13), so the RPL the guest used is not known here.
    selector = error & 0xFFFC
    index = selector >> 3
    facts = {"selector": selector, "index": index, "entries": len(GDT_DESCRIPTORS),
             "udata": SEL_UDATA, "ucode": SEL_UCODE}
    if selector & 4:
        return "selector-ldt", facts
    if index >= len(GDT_DESCRIPTORS):
        return "selector-limit", facts
    if index == 0:
        return "selector-null", facts
    dpl = (GDT_DESCRIPTORS[index] >> 45) & 3
    if dpl != 3:
        return "selector-privilege", {**facts, "dpl": dpl}
    return "selector-user", facts


def _decode_detail(code: bytes, address: int):
    global _csd
    if _csd is None:  # imported on the first #GP report only (start-up cost)
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs

        _csd = Cs(CS_ARCH_X86, CS_MODE_64)
        _csd.detail = True
    for insn in _csd.disasm(code, address, 1):
        return insn
    return None


def _operand_address(insn, op, registers: dict[str, int]) -> int | None:
    """The linear address of a memory operand (segment bases are 0 here), or None if unknown."""
    mem = op.mem
    total = mem.disp
    for reg, scale in ((mem.base, 1), (mem.index, mem.scale)):
        if reg:
            name = insn.reg_name(reg)
            if name == "rip":
                total += insn.address + insn.size
            elif name.upper() in registers:
                total += registers[name.upper()] * scale
            else:
                return None  # a 32-bit or segment register: not evaluated
    return total & 0xFFFF_FFFF_FFFF_FFFF


def gp_cause(trap: Trap, code: bytes, registers: dict[str, int]) -> tuple[str, dict]:
    """Which row of GP_CAUSES a #GP is, and the facts its text needs."""
    err = trap.error_code or 0
    if err & 2:
        return "idt", {"vector": err >> 3}
    if err:
        return _selector_cause(err)
    rip = trap.insn_address
    if not canonical(rip):
        return "rip-non-canonical", {"address": rip}
    insn = _decode_detail(code, rip)
    if insn is None:
        return "unknown", {"mnemonic": "(undecodable)"}
    from capstone import x86

    m = insn.mnemonic
    facts = {"mnemonic": m}
    if m == "sysenter":
        return "sysenter", facts
    ops = insn.operands
    regs = [insn.reg_name(o.reg) for o in ops if o.type == x86.X86_OP_REG]
    if m in PRIVILEGED or (m == "mov" and any(r.startswith(("cr", "dr")) for r in regs)):
        return "privileged", facts
    if m in ("mov", "pop") and ops and ops[0].type == x86.X86_OP_REG and insn.reg_name(ops[0].reg) == "ss":
        return "null-ss", facts
    for op in ops:
        if op.type == x86.X86_OP_MEM and m not in ("lea", "nop"):
            va = _operand_address(insn, op, registers)
            if va is None:
                continue
            if not canonical(va):
                base = insn.reg_name(op.mem.base) if op.mem.base else ""
                kind = "stack-non-canonical" if base in ("rsp", "rbp") else "operand-non-canonical"
                return kind, {**facts, "address": va}
            if m in ALIGNED_16 and va % 16:
                return "misaligned", {**facts, "address": va}
    rsp = registers.get("RSP", 0)
    if m in STACK_USERS and not canonical(rsp):
        return "stack-non-canonical", {**facts, "address": rsp}
    return "unknown", facts


def explain_gp(trap: Trap, code: bytes, registers: dict[str, int]) -> tuple[str, str]:
    """(short cause, explanation) of a #GP, from GP_CAUSES."""
    cause, facts = gp_cause(trap, code, registers)
    short, long = GP_CAUSES[cause]
    return short.format(**facts), long.format(**facts)


class FaultReport(Record):
    _FIELDS = ('env_id', 'env_name', 'kind', 'rip', 'instruction', 'code_bytes', 'error', 'error_code', 'fault_address', 'registers', 'reason', 'symbol', 'backtrace')

    def __init__(self, env_id: int, env_name: str, kind: str, rip: int, instruction: str, code_bytes: bytes,
                 error: str, error_code: int | None, fault_address: int | None, registers: dict[str, int],
                 reason: str = "", symbol: str | None = None) -> None:
        self.env_id = env_id
        self.env_name = env_name
        self.kind = kind  # e.g. "page fault (#PF)"
        self.rip = rip
        self.instruction = instruction
        self.code_bytes = code_bytes
        self.error = error  # decoded error code or reason
        self.error_code = error_code
        self.fault_address = fault_address
        self.registers = registers
        self.reason = reason
        self.symbol = symbol  # e.g. "_start+0x7", from the image's labels
        self.line: str | None = None  # e.g. "echo.s:12", from the image's line table (set by the exokernel)
        self.backtrace: Backtrace | None = None  # the callers (`backtrace`), set by the exokernel

    @property
    def summary(self) -> str:
        where = f" at {self.fault_address:#x}" if self.fault_address is not None else ""
        err = f" ({self.error})" if self.error else ""
        return f"{self.kind}{where}{err}, rip {self.rip:#x}: {self.instruction}"

    def render(self) -> str:
        lines = [f"exo: environment {self.env_id} ({self.env_name}) stopped: {self.kind}"]
        if self.reason:
            lines.append(f"  reason      {self.reason}")
        if self.fault_address is not None:
            lines.append(f"  address     {self.fault_address:#018x}")
        if self.error_code is not None:
            lines.append(f"  error code  {self.error_code:#x}{'  ' + self.error if self.error else ''}")
        elif self.error:
            lines.append(f"  detail      {self.error}")
        at = (f"  in {self.symbol}" if self.symbol else "") + (f" at {self.line}" if self.line else "")
        lines.append(f"  instruction {self.rip:#018x}: {self.instruction}   [{self.code_bytes.hex(' ')}]{at}")
        regs = list(self.registers.items())
        for i in range(0, len(regs), 4):
            lines.append("  " + "  ".join(f"{k.lower():>6} {v:#018x}" for k, v in regs[i : i + 4]))
        if self.backtrace is not None:
            lines += self.backtrace.render(self.rip, self.symbol, self.line)
        return "\n".join(lines)


def build_report(env_id: int, env_name: str, trap: Trap, code: bytes, registers: dict[str, int],
                 reason: str = "", symbol: str | None = None) -> FaultReport:
    error = trap.describe_error()
    fault_address = trap.cr2 if trap.vector == Vector.PF and trap.kind is TrapKind.EXCEPTION else None
    if trap.kind is TrapKind.IO:
        error = f"{'out to' if trap.write else 'in from'} port {trap.port:#x}: guests may not do port I/O"
    elif trap.kind is TrapKind.MACHINE_CHECK or trap.detail and not error:
        error = trap.detail
    if trap.vector == Vector.GP and trap.kind is TrapKind.EXCEPTION:
        short, explanation = explain_gp(trap, code, registers)
        if not trap.error_code:
            error = short  # a selector or IDT index says more than the cause's short form
        reason = reason or explanation
    if not reason and trap.kind is TrapKind.EXCEPTION:
        reason = _FP_REASONS.get(trap.vector, "")
    text, size = disassemble_one(code, trap.insn_address)
    return FaultReport(env_id, env_name, trap.name, trap.insn_address, text, code[:size],
                       error, trap.error_code, fault_address, registers, reason, symbol)


# ------------------------------------------------------------------ backtraces
MAX_FRAMES = 16  # frames in a report's backtrace, the faulting one included
SCAN_BYTES = 4096  # how far above RSP a stack scan looks for return addresses
# Encodings of `call` end 2 to 7 bytes before the return address: E8 rel32 (5), FF /2 with a
# register (2, 3 with REX), [reg+disp8] (3-5), [rip+disp32] or [reg+disp32] (6-7) (SDM Vol. 2A, CALL).
_CALL_LENGTHS = (5, 2, 3, 6, 4, 7)


class Backtrace(Record):
    """The callers of a faulting instruction, innermost first: (return address, symbol) each.
    ``guessed``: found by scanning the stack, not by following the frame-pointer chain."""

    _FIELDS = ('frames', 'guessed')

    def __init__(self, frames: list[tuple[int, str | None]], guessed: bool) -> None:
        self.frames = frames
        self.guessed = guessed
        self.lines: list[str | None] = [None] * len(frames)  # each frame's "file:line" (set by the exokernel)

    def render(self, rip: int, symbol: str | None, line: str | None = None) -> list[str]:
        how = "guess: stack scan, no usable rbp chain" if self.guessed else "rbp chain"
        lines = [f"  backtrace ({how})", f"    #0  {rip:#018x}  {symbol or '?'}{_at(line)}"]
        mark = "  (guess: stack scan)" if self.guessed else ""
        lines += [f"    #{i:<2} {a:#018x}  {s or '?'}{_at(ln)}{mark}"
                  for i, ((a, s), ln) in enumerate(zip(self.frames, self.lines), 1)]
        if not self.frames:
            lines.append("    (no caller found)")
        return lines


def _at(line: str | None) -> str:
    return f" at {line}" if line else ""


def _read_u64(space: Any, va: int) -> int | None:
    """The user-readable quadword at ``va`` (8-aligned: it is on one page), or None."""
    t = space.translate(va) if va % 8 == 0 else None
    if t is None or not t.user:
        return None
    return int.from_bytes(space.mem.read(t.pa, 8), "little")


def _after_call(space: Any, addr: int) -> bool:
    """Whether ``addr`` is a return address: user-executable code right after a `call`."""
    if not canonical(addr) or addr < 8:
        return False
    t = space.translate(addr - 1)
    if t is None or not t.user or not t.executable:
        return False
    for n in _CALL_LENGTHS:
        code = space.fetch_code(addr - n, n)
        if len(code) == n:
            text, size = disassemble_one(code, addr - n)
            if size == n and text.startswith("call"):
                return True
    return False


def backtrace(space: Any, rbp: int, rsp: int, symbol: Callable[[int], str | None]) -> Backtrace:
    """Who called the faulting code: the rbp chain (``push rbp; mov rbp, rsp`` frames: [rbp] is
    the caller's rbp, [rbp+8] the return address; System V x86-64 psABI, "The Stack Frame"),
    followed while each rbp is canonical, mapped, aligned and higher than the last and each return
    address follows a `call`. With no such chain (code that keeps no frame pointer, or a smashed rbp) it scans up
    to SCAN_BYTES above RSP for words that follow a `call` instead: a guess, marked as one (a
    stale return address left on the stack looks the same). Made only for a fault report."""
    frames: list[int] = []
    fp = rbp
    while len(frames) < MAX_FRAMES - 1 and fp and canonical(fp):
        saved, ret = _read_u64(space, fp), _read_u64(space, fp + 8)
        if saved is None or ret is None or not _after_call(space, ret):
            break
        frames.append(ret)
        if saved <= fp:  # the chain must climb the stack: 0 ends it, anything else is a loop or garbage
            break
        fp = saved
    guessed = not frames
    if guessed:
        va = (rsp + 7) & ~7
        end = va + SCAN_BYTES
        checked: dict[int, bool] = {}  # a word seen twice is decoded once (at worst 512 distinct: ~21 ms)
        while va < end and len(frames) < MAX_FRAMES - 1:
            word = _read_u64(space, va)
            if word is None:
                break
            if word not in checked:
                checked[word] = _after_call(space, word)
            if checked[word]:
                frames.append(word)
            va += 8
    return Backtrace([(a, symbol(a)) for a in frames], guessed)


# ------------------------------------------------- environments left when the machine stopped
def stuck_reason(env: Any) -> str | None:
    """Why an environment still alive when no environment could run (and no watchdog fired) will
    never run again; None if its status does not say."""
    why = _STUCK.get(env.status.name)
    return why(env) if why else None


def _not_runnable(env: Any) -> str:
    # Only an environment itself or its parent may set its status (env_for, exo/kernel.py); a
    # booted app has no parent. A never-started child of a dead parent was reclaimed as orphaned.
    if env.parent is None:
        return "not runnable: it set itself NOT_RUNNABLE and no environment is left to make it runnable"
    return ("not runnable: NOT_RUNNABLE (never started by its parent, or paused by it or by itself) "
            "and no environment is left to make it runnable")


_STUCK: dict[str, Callable[[Any], str]] = {  # by EnvStatus name (exo/abi.py)
    "BLOCKED": lambda e: f"blocked forever (waiting for {e.blocked_on}): no environment can wake it",
    "NOT_RUNNABLE": _not_runnable,
}

# What a live environment was doing when the watchdog (--max-instructions) stopped the machine.
_AT_WATCHDOG: dict[str, Callable[[Any], str]] = {
    "RUNNABLE": lambda e: "still running when the watchdog stopped the machine",
    "BLOCKED": lambda e: f"blocked (waiting for {e.blocked_on}) when the watchdog stopped the machine",
    "NOT_RUNNABLE": lambda e: "not runnable (NOT_RUNNABLE) when the watchdog stopped the machine",
}


def watchdog_reason(env: Any) -> str:
    why = _AT_WATCHDOG.get(env.status.name)
    return why(env) if why else f"{env.status.name.lower()} when the watchdog stopped the machine"


def location(rip: int, code: bytes, symbol: str | None, line: str | None = None) -> str:
    """``rip 0x401007 (spin+0x2 at spin.s:9): add rax, 1``: where an environment was, for an infinite
    loop's report (capstone is imported here, on first use only)."""
    text, _ = disassemble_one(code, rip)
    where = " at ".join(w for w in (symbol, line) if w)
    at = f" ({where})" if where else ""
    return f"rip {rip:#x}{at}: {text}"


# ------------------------------------------------------- a libOS module's Python exception
_ROOT = Path(__file__).resolve().parent.parent


def raised_at(exc: BaseException, skip: int = 1, depth: int = 3) -> str:
    """Where ``exc`` was raised, innermost frame first (``raised at libos/x.py:88 in _fmt,
    called from libos/x.py:61 in printf``). ``skip`` drops the outer frames of the code that caught it (the
    exokernel's own), so what is left is the module's (and what it called); at most ``depth``."""
    import traceback  # only when a module raised: not on every boot's import path

    frames = traceback.extract_tb(exc.__traceback__)[skip:]
    if not frames:
        return ""
    parts = [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in reversed(frames[-depth:])]
    return "raised at " + ", called from ".join(parts)


def _short(filename: str) -> str:
    """A path relative to the working directory or the source tree when it is under one."""
    path = Path(filename)
    for base in (Path.cwd(), _ROOT):
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            continue
    return filename
