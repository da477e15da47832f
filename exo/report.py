"""Fault reports: what a student needs to see when a guest is stopped.

Fault kind, address, decoded error code, the faulting instruction disassembled
with capstone, the registers, and which environment it was.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hw.traps import Trap, TrapKind, Vector

_cs = None


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
    text, size = disassemble_one(code, trap.insn_address)
    return FaultReport(env_id, env_name, trap.name, trap.insn_address, text, code[:size],
                       error, trap.error_code, fault_address, registers, reason, symbol)


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


def location(rip: int, code: bytes, symbol: str | None) -> str:
    """``rip 0x401007 (spin+0x2): add rax, 1``: where an environment was, for an infinite loop's
    report (capstone is imported here, on first use only)."""
    text, _ = disassemble_one(code, rip)
    at = f" ({symbol})" if symbol else ""
    return f"rip {rip:#x}{at}: {text}"


# ------------------------------------------------------- a libOS module's Python exception
_ROOT = Path(__file__).resolve().parent.parent


def raised_at(exc: BaseException, skip: int = 1, depth: int = 3) -> str:
    """Where ``exc`` was raised, innermost frame first: ``raised at libos/x.py:88 in _fmt, called
    from libos/x.py:61 in printf``. ``skip`` drops the outer frames of the code that caught it (the
    exokernel's own), so what is left is the module's (and what it called); at most ``depth``."""
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
