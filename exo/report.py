"""Fault reports: what a student needs to see when a guest is stopped.

Fault kind, address, decoded error code, the faulting instruction disassembled
with capstone, the registers, and which environment it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw.traps import Trap, TrapKind, Vector

_cs = None

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


@dataclass
class FaultReport:
    env_id: int
    env_name: str
    kind: str  # e.g. "page fault (#PF)"
    rip: int
    instruction: str
    code_bytes: bytes
    error: str  # decoded error code or reason
    error_code: int | None
    fault_address: int | None
    registers: dict[str, int]
    reason: str = ""
    symbol: str | None = None  # e.g. "_start+0x7", from the image's labels

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
        at = f"  in {self.symbol}" if self.symbol else ""
        lines.append(f"  instruction {self.rip:#018x}: {self.instruction}   [{self.code_bytes.hex(' ')}]{at}")
        regs = list(self.registers.items())
        for i in range(0, len(regs), 4):
            lines.append("  " + "  ".join(f"{k.lower():>6} {v:#018x}" for k, v in regs[i : i + 4]))
        return "\n".join(lines)


def build_report(env_id: int, env_name: str, trap: Trap, code: bytes, registers: dict[str, int],
                 reason: str = "", symbol: str | None = None) -> FaultReport:
    error = trap.describe_error()
    fault_address = trap.cr2 if trap.vector == Vector.PF and trap.kind is TrapKind.EXCEPTION else None
    if trap.kind is TrapKind.IO:
        error = f"{'out to' if trap.write else 'in from'} port {trap.port:#x}: guests may not do port I/O"
    elif trap.kind is TrapKind.MACHINE_CHECK or trap.detail and not error:
        error = trap.detail
    if trap.vector == Vector.GP and trap.error_code == 0 and trap.kind is TrapKind.EXCEPTION:
        error = "privileged instruction or bad operand at CPL 3"
    if not reason and trap.kind is TrapKind.EXCEPTION:
        reason = _FP_REASONS.get(trap.vector, "")
    text, size = disassemble_one(code, trap.insn_address)
    return FaultReport(env_id, env_name, trap.name, trap.insn_address, text, code[:size],
                       error, trap.error_code, fault_address, registers, reason, symbol)
