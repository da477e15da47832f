"""What gdb sees of the machine: environments as threads, their registers, their memory
through their own page tables, and software breakpoints.

Registers are the environment's live vCPU state when it is the one loaded in the vCPU
(``Exokernel._live``: always the case inside a trap), else its saved context; both are
read with Unicorn's own register calls (``uc_reg_read``/``uc_context_reg_read``), so a
thread that is not running costs no context switch to inspect.

Breakpoints are ``int3`` (0xCC) written into the physical frame behind the address, as
gdbserver does on Linux: the guest runs at full speed until it reaches one (a code hook
over every instruction would cost 1-1.6 MIPS: shared/UNICORN_NOTES.md). A frame shared by
several environments (a forked child's code) breaks in each of them, as a breakpoint in
a multi-threaded process does. The original byte is shown to memory reads and kept when
gdb writes over it; the exokernel's own frames (hypercall page, libOS pages, shared by
every app on the machine) refuse breakpoints and writes.

Hardware breakpoints (``Z1``) and watchpoints (``Z2``-``Z4``) are Unicorn hooks, in as many
slots as x86 has debug address registers (DR0-DR3, SDM Vol. 3B 17.2.1): a ranged code hook
at the breakpoint's address (free until it is reached), and memory hooks over the watched
bytes. Unicorn matches memory hooks against *physical* addresses (``store_helper`` and
``load_helper`` in its cputlb.c check the hook range against the page's physical address),
so a watchpoint watches the memory behind the address in the selected environment, and
fires in whichever environment touches that memory (a frame shared after fork, a shared
page), as a ``Z0`` breakpoint does for code. A hardware breakpoint is checked the same way
(the frame behind RIP must be the one it was set on). While any memory hook exists, every
guest load and store in newly translated code takes Unicorn's slow path (its i386 code
generator drops the inline TLB fast path when ``tcg_uc_has_hookmem``): see docs/debugging.md
for the measured cost. Hooks are deleted only outside emulation (``apply_deferred``): a
deletion inside a hook frees a callback that may still run (UNICORN_NOTES trap 6).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_READ, UC_MEM_WRITE
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from exo.frames import EXO
from hw.memory import PAGE_SIZE
from hw.paging import translate

if TYPE_CHECKING:
    from exo.env import Env
    from exo.kernel import Exokernel

INT3 = 0xCC
RFLAGS_TF = 1 << 8  # trap flag: #DB after the next instruction (SDM Vol. 3B 17.3.1.4)

# The register file gdb is told about (target description below), in 'g' packet order:
# (name, size in bytes, Unicorn register, gdb type, may gdb write it). The names and the
# features are gdb's own (gdb/features/i386/64bit-core.xml, 64bit-sse.xml, 64bit-segments.xml):
# gdb checks them by name. x87 registers are part of gdb's amd64 core feature; SSE is its own
# (C guests at -O2 keep values in xmm registers: docs/guests.md).
_CORE = [(n, 8, getattr(X, f"UC_X86_REG_{n.upper()}"), t, True) for n, t in (
    ("rax", "int64"), ("rbx", "int64"), ("rcx", "int64"), ("rdx", "int64"), ("rsi", "int64"),
    ("rdi", "int64"), ("rbp", "data_ptr"), ("rsp", "data_ptr"), *((f"r{i}", "int64") for i in range(8, 16)),
    ("rip", "code_ptr"))]
_CORE += [("eflags", 4, X.UC_X86_REG_EFLAGS, "i386_eflags", True)]
# Segment selectors: ring 3's code and stack selectors fix its privilege level; gdb may not change them.
_CORE += [(s, 4, getattr(X, f"UC_X86_REG_{s.upper()}"), "int32", False) for s in ("cs", "ss", "ds", "es", "fs", "gs")]
_CORE += [(f"st{i}", 10, None, "i387_ext", True) for i in range(8)]  # stack order: read through TOP (below)
_CORE += [(n, 4, r, "int", True) for n, r in (
    ("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
    ("fiseg", None), ("fioff", X.UC_X86_REG_FIP), ("foseg", None), ("fooff", X.UC_X86_REG_FDP),
    ("fop", X.UC_X86_REG_FOP))]
_SSE = [(f"xmm{i}", 16, getattr(X, f"UC_X86_REG_XMM{i}"), "vec128", True) for i in range(16)]
_SSE += [("mxcsr", 4, X.UC_X86_REG_MXCSR, "i386_mxcsr", True)]
_SEGMENTS = [(n, 8, r, "int", True) for n, r in (("fs_base", X.UC_X86_REG_FS_BASE), ("gs_base", X.UC_X86_REG_GS_BASE))]
REGISTERS = _CORE + _SSE + _SEGMENTS
REG_INDEX = {r[0]: i for i, r in enumerate(REGISTERS)}
_FP_FIRST = REG_INDEX["st0"]


def _xml_regs(regs: list) -> str:
    out = []
    for name, size, _, typ, _ in regs:
        group = ' group="float"' if name.startswith(("st", "f")) and not name.endswith("_base") else ""
        group = ' group="vector"' if name.startswith(("xmm", "mxcsr")) else group
        out.append(f'<reg name="{name}" bitsize="{size * 8}" type="{typ}"{group}/>')
    return "".join(out)


_EFLAGS_FLAGS = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in (
    ("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9), ("DF", 10), ("OF", 11),
    ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21)))

# The vec128 union and the MXCSR flags, as gdb/features/i386/64bit-sse.xml declares them (the
# bfloat16 and half views of newer gdbs left out: every gdb since 7 reads this one).
_SSE_TYPES = "".join(f'<vector id="{i}" type="{t}" count="{n}"/>' for i, t, n in (
    ("v4f", "ieee_single", 4), ("v2d", "ieee_double", 2), ("v16i8", "int8", 16), ("v8i16", "int16", 8),
    ("v4i32", "int32", 4), ("v2i64", "int64", 2)))
_SSE_TYPES += ('<union id="vec128">' + "".join(f'<field name="{n}" type="{t}"/>' for n, t in (
    ("v4_float", "v4f"), ("v2_double", "v2d"), ("v16_int8", "v16i8"), ("v8_int16", "v8i16"),
    ("v4_int32", "v4i32"), ("v2_int64", "v2i64"), ("uint128", "uint128"))) + "</union>")
_SSE_TYPES += ('<flags id="i386_mxcsr" size="4">' + "".join(
    f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in (
        ("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7), ("DM", 8),
        ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))) + "</flags>")

TARGET_XML = (
    '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
    "<target><architecture>i386:x86-64</architecture>"
    '<feature name="org.gnu.gdb.i386.core">'
    f'<flags id="i386_eflags" size="4">{_EFLAGS_FLAGS}</flags>'
    f"{_xml_regs(_CORE)}</feature>"
    '<feature name="org.gnu.gdb.i386.sse">'
    f"{_SSE_TYPES}{_xml_regs(_SSE)}</feature>"
    f'<feature name="org.gnu.gdb.i386.segments">{_xml_regs(_SEGMENTS)}</feature>'
    "</target>"
)

DEBUG_SLOTS = 4  # DR0-DR3: hardware breakpoints and watchpoints together (SDM Vol. 3B 17.2.1)
MAX_WATCH = 4096  # bytes one watchpoint may cover: more than a debug register's 8 (one hook range per page)
WATCH_STOP = "gdb-watch"  # the vCPU stop reason of a watchpoint hit (the slice goes on after it)
# Z type -> (stop reply word, the accesses that hit, the hooks that see them)
WATCH_KINDS = {
    2: (b"watch", frozenset({UC_MEM_WRITE}), (UC_HOOK_MEM_WRITE,)),
    3: (b"rwatch", frozenset({UC_MEM_READ}), (UC_HOOK_MEM_READ,)),
    4: (b"awatch", frozenset({UC_MEM_READ, UC_MEM_WRITE}), (UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE)),
}
_MEM_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
                           ctypes.c_void_p)  # uc_cb_hookmem_t
_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)  # uc_cb_hookcode_t


@dataclass
class DebugSlot:
    """One hardware breakpoint (kind 1) or watchpoint (2-4): what gdb asked for and its hooks."""

    kind: int
    va: int
    length: int
    pieces: list[tuple[int, int, int]]  # (physical address, length, offset from va): one per page
    env_id: int  # the environment it was set in: its mapping of va is followed (``follow``)
    hooks: list[int] = field(default_factory=list)
    active: bool = True


_reg_read = uclib.uc_reg_read
_reg_write = uclib.uc_reg_write
_ctx_reg_read = uclib.uc_context_reg_read
_ctx_reg_write = uclib.uc_context_reg_write


class TargetError(Exception):
    """A request gdb made that cannot be done (answered with an E reply, never a crash)."""


class Target:
    """The exokernel's environments as gdb threads."""

    def __init__(self, kernel: Exokernel) -> None:
        self.kernel = kernel
        self.cpu = kernel.cpu
        self.memory = kernel.machine.memory
        self.breakpoints: dict[int, tuple[int, int]] = {}  # physical address -> (virtual address, original byte)
        self._buf = ctypes.create_string_buffer(16)
        self.slots: dict[tuple[int, int, int], DebugSlot] = {}  # (kind, va, length) -> slot (at most DEBUG_SLOTS active)
        self._dead_hooks: list[int] = []  # to delete outside emulation
        self.hit: tuple[DebugSlot, int] | None = None  # a watchpoint hit waiting for its instruction to end
        self.on_hbreak: Callable[[DebugSlot, int], None] | None = None  # the server's stop, from the code hook
        self._mem_cb = _MEM_CB(self._on_mem)  # kept alive as long as the engine (never freed under it)
        self._code_cb = _CODE_CB(self._on_code)

    # ------------------------------------------------------------- threads
    def threads(self) -> list[Env]:
        return [e for e in self.kernel.envs.values() if e.alive and not e.is_server]

    def thread(self, tid: int) -> Env:
        env = self.kernel.envs.get(tid)
        if env is None or not env.alive:
            raise TargetError(f"no environment {tid}")
        return env

    def extra_info(self, env: Env) -> str:
        status = env.status.name.lower() + (f" on {env.blocked_on}" if env.blocked_on else "")
        return f"{env.name}, env {env.id}, {status}"

    # ------------------------------------------------------------ registers
    def _live(self, env: Env) -> bool:
        return env is self.kernel._live

    def _raw(self, env: Env, ucreg: int) -> int:
        buf = self._buf
        ctypes.memset(buf, 0, 16)
        if self._live(env):
            _reg_read(self.cpu._h, ucreg, buf)
        else:
            _ctx_reg_read(env.ctx.ptr, ucreg, buf)
        return int.from_bytes(buf.raw, "little")

    def _set_raw(self, env: Env, ucreg: int, value: int) -> None:
        buf = self._buf
        buf.raw = (value & (1 << 128) - 1).to_bytes(16, "little")
        if self._live(env):
            _reg_write(self.cpu._h, ucreg, buf)
        else:
            _ctx_reg_write(env.ctx.ptr, ucreg, buf)

    def read_register(self, env: Env, index: int) -> bytes:
        if not 0 <= index < len(REGISTERS):
            raise TargetError(f"no register {index}")
        name, size, ucreg, _, _ = REGISTERS[index]
        if ucreg is None and name.startswith("st"):
            ucreg = self._physical_fp(env, index - _FP_FIRST)
        value = 0 if ucreg is None else self._raw(env, ucreg)
        return (value & (1 << size * 8) - 1).to_bytes(size, "little")

    def _physical_fp(self, env: Env, i: int) -> int:
        """ST(i) is the physical register R[(TOP + i) mod 8] (SDM Vol. 1 8.1.2); Unicorn's FPn are the R's."""
        top = (self._raw(env, X.UC_X86_REG_FPSW) >> 11) & 7
        return X.UC_X86_REG_FP0 + (top + i) % 8

    def write_register(self, env: Env, index: int, data: bytes) -> None:
        if not 0 <= index < len(REGISTERS):
            raise TargetError(f"no register {index}")
        name, size, ucreg, _, writable = REGISTERS[index]
        if len(data) != size:
            raise TargetError(f"register {name} is {size} bytes, got {len(data)}")
        value = int.from_bytes(data, "little")
        if ucreg is None and name.startswith("st"):
            ucreg = self._physical_fp(env, index - _FP_FIRST)
        if not writable or ucreg is None:
            if int.from_bytes(self.read_register(env, index), "little") != value:
                raise TargetError(f"register {name} cannot be changed")
            return
        if name == "rip":
            self.cpu.flush_code()  # resume where gdb says, never in a block translated for the old RIP
        self._set_raw(env, ucreg, value)

    def registers(self, env: Env) -> bytes:
        return b"".join(self.read_register(env, i) for i in range(len(REGISTERS)))

    def write_registers(self, env: Env, data: bytes) -> None:
        pos = 0
        for i, (_, size, *_rest) in enumerate(REGISTERS):
            if pos + size > len(data):
                break  # gdb may send fewer registers than it was told of
            self.write_register(env, i, data[pos:pos + size])
            pos += size

    def rflags(self, env: Env) -> int:
        return self._raw(env, X.UC_X86_REG_RFLAGS)

    def set_rflags(self, env: Env, value: int) -> None:
        self._set_raw(env, X.UC_X86_REG_RFLAGS, value)

    def rip(self, env: Env) -> int:
        return self._raw(env, X.UC_X86_REG_RIP)

    # --------------------------------------------------------------- memory
    def _pages(self, env: Env, va: int, length: int, write: bool):
        """(physical address, length) pieces of [va, va+length) as the environment's page tables
        map them for ring 3 (a debugger gets the environment's own rights: user pages only, and
        for writes its writable pages)."""
        if length < 0 or va < 0 or va + length > 1 << 64:
            raise TargetError("bad range")
        out = []
        root = env.space.root
        while length > 0:
            t = translate(self.memory, root, va)
            if t is None or not t.user or (write and not t.writable):
                raise TargetError(f"{va:#x} is not mapped{' writable' if write else ''} in environment {env.id}")
            n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out.append((t.pa, n))
            va += n
            length -= n
        return out

    def read_memory(self, env: Env, va: int, length: int) -> bytes:
        data = bytearray()
        for pa, n in self._pages(env, va, length, write=False):
            data += self.memory.read(pa, n)
            for bp_pa, (_, orig) in self.breakpoints.items():  # a handful: gdb sets few
                if pa <= bp_pa < pa + n:
                    data[len(data) - n + bp_pa - pa] = orig
        return bytes(data)

    def write_memory(self, env: Env, va: int, data: bytes) -> None:
        pieces = self._pages(env, va, len(data), write=True)
        off = 0
        for pa, n in pieces:
            chunk = bytearray(data[off:off + n])
            for bp_pa, (bva, _) in list(self.breakpoints.items()):
                if pa <= bp_pa < pa + n:  # keep the int3, remember the new byte under it
                    self.breakpoints[bp_pa] = (bva, chunk[bp_pa - pa])
                    chunk[bp_pa - pa] = INT3
            self.memory.write(pa, bytes(chunk))
            off += n
        self.cpu.flush_code()  # host writes do not invalidate translated code (UNICORN_NOTES trap 4)

    # ----------------------------------------------------------- breakpoints
    def _code_pa(self, env: Env, va: int) -> int:
        t = translate(self.memory, env.space.root, va)
        if t is None or not t.user:
            raise TargetError(f"{va:#x} is not mapped in environment {env.id}")
        if self.kernel.frames.owner[t.pa // PAGE_SIZE] == EXO:
            raise TargetError(f"{va:#x} is on an exokernel page shared by every app")
        return t.pa

    def insert_breakpoint(self, env: Env, va: int) -> None:
        pa = self._code_pa(env, va)
        if pa in self.breakpoints:
            return
        self.breakpoints[pa] = (va, self.memory.read(pa, 1)[0])
        self.memory.write(pa, bytes((INT3,)))
        self.cpu.flush_code()

    def remove_breakpoint(self, env: Env, va: int) -> None:
        t = translate(self.memory, env.space.root, va)
        if t is None or t.pa not in self.breakpoints:
            return  # already gone (its frame freed with the environment, or never set)
        self._restore(t.pa)
        self.cpu.flush_code()

    def _restore(self, pa: int) -> None:
        _, orig = self.breakpoints.pop(pa)
        if self.memory.read(pa, 1)[0] == INT3:
            self.memory.write(pa, bytes((orig,)))

    def remove_all(self) -> None:
        for pa in list(self.breakpoints):
            self._restore(pa)
        self.cpu.flush_code()

    def breakpoint_at(self, env: Env, va: int) -> bool:
        """Is the int3 at ``va`` in ``env`` one of ours (not the guest's own)?"""
        t = translate(self.memory, env.space.root, va)
        return t is not None and t.pa in self.breakpoints

    def forget_frames(self, env: Any) -> None:
        """An environment is being destroyed: a breakpoint on a frame only it used would be
        written back into a frame that may be reused; restore those now."""
        for pa, (va, _) in list(self.breakpoints.items()):
            t = translate(self.memory, env.space.root, va)
            if t is not None and t.pa == pa and self.kernel.frames.refs[pa // PAGE_SIZE] <= 1:
                self._restore(pa)

    # ------------------------------------------ hardware breakpoints, watchpoints
    def _phys_pieces(self, env: Env, va: int, length: int) -> list[tuple[int, int, int]]:
        out = []
        off = 0
        while off < length:
            t = translate(self.memory, env.space.root, va + off)
            if t is None or not t.user:
                raise TargetError(f"{va + off:#x} is not mapped in environment {env.id}")
            n = min(length - off, PAGE_SIZE - ((va + off) & (PAGE_SIZE - 1)))
            out.append((t.pa, n, off))
            off += n
        return out

    def insert_slot(self, env: Env, kind: int, va: int, length: int) -> None:
        """``Z1``-``Z4``: a hardware breakpoint (kind 1) or a watchpoint on [va, va+length)."""
        if kind == 1:
            length = 1  # gdb sends the instruction-set "kind" (1 on x86), not a length
        elif not 1 <= length <= MAX_WATCH:
            raise TargetError(f"watchpoint length {length} is not between 1 and {MAX_WATCH}")
        elif self.kernel.machine.clock.mode != "virtual":
            # Only the instruction counter stops the CPU right after an access (VCpu.stop_after_instruction).
            raise TargetError("watchpoints need the virtual clock (--clock virtual, the default)")
        key = (kind, va, length)
        old = self.slots.get(key)
        if old is not None and old.active:
            return  # gdb inserts again what is already there: nothing to do
        if sum(s.active for s in self.slots.values()) >= DEBUG_SLOTS:
            raise TargetError(f"all {DEBUG_SLOTS} debug slots are in use (x86 has DR0-DR3)")
        pieces = self._phys_pieces(env, va, length)
        if old is not None and old.pieces == pieces:
            old.active = True  # removed and put back in one stop (gdb steps over it): hooks still there
            return
        if old is not None:
            self._drop(old)
        slot = DebugSlot(kind, va, length, pieces, env.id)
        if kind == 1:
            slot.hooks.append(self._hook(UC_HOOK_CODE, self._code_cb, va, va))
        else:
            self._hook_pieces(slot)
        self.slots[key] = slot
        # Hooks are looked up when code is translated: drop what was translated without them.
        self.cpu.flush_code()

    def _hook_pieces(self, slot: DebugSlot) -> None:
        for pa, n, _ in slot.pieces:
            for hook_type in WATCH_KINDS[slot.kind][2]:
                slot.hooks.append(self._hook(hook_type, self._mem_cb, pa, pa + n - 1))

    def follow(self, env: Env) -> None:
        """``env`` may have been given other frames (a copy-on-write copy, a new mapping): move
        its watchpoints to the memory now behind their addresses, so that ``watch x`` follows
        x. New hooks are added now (adding is safe inside a hook); old ones die between slices."""
        for slot in self.slots.values():
            if slot.env_id != env.id or slot.kind == 1 or not slot.active:
                continue
            try:
                pieces = self._phys_pieces(env, slot.va, slot.length)
            except TargetError:
                continue  # unmapped for now: keep watching the old memory until it is mapped again
            if pieces != slot.pieces:
                self._dead_hooks += slot.hooks
                slot.hooks, slot.pieces = [], pieces
                self._hook_pieces(slot)

    def remove_slot(self, kind: int, va: int, length: int) -> None:
        slot = self.slots.get((kind, va, 1 if kind == 1 else length))
        if slot is not None:
            slot.active = False  # its hooks ignore hits from now on; deleted between slices

    def _drop(self, slot: DebugSlot) -> None:
        self._dead_hooks += slot.hooks
        slot.hooks = []
        slot.active = False

    def remove_all_slots(self) -> None:
        for slot in self.slots.values():
            slot.active = False
        self.hit = None

    def forget_slots(self, env: Any) -> None:
        """An environment is being destroyed: a slot on a frame only it used would watch whatever
        the frame is reused for (another environment's memory); drop those now."""
        refs = self.kernel.frames.refs
        for slot in self.slots.values():
            for pa, _, off in slot.pieces:
                t = translate(self.memory, env.space.root, slot.va + off)
                if slot.active and t is not None and t.pa == pa and refs[pa // PAGE_SIZE] <= 1:
                    slot.active = False

    def apply_deferred(self) -> None:
        """Outside emulation only: delete the hooks of removed slots (then code translated while
        a memory hook existed, which takes the slow path for every access, is dropped)."""
        for key, slot in list(self.slots.items()):
            if not slot.active:
                self._drop(slot)
                del self.slots[key]
        if not self._dead_hooks:
            return
        for hh in self._dead_hooks:
            uclib.uc_hook_del(self.cpu._h, ctypes.c_size_t(hh))
        self._dead_hooks.clear()
        self.cpu.flush_code()

    def uncount(self) -> None:
        """Take back one instruction from Unicorn's count (virtual clock, inside a slice): a
        debugger's int3 retires nothing of the guest's (measured: a breakpoint hit adds exactly one
        to the count), and the code hook counted the instruction at a hardware breakpoint that a
        restart there (a step from it) counts again. The count hook compares the same counter with
        the slice's budget, so the slice gets the instruction back too: counts stay those of a run
        without gdb."""
        cpu = self.cpu
        if cpu._running and cpu._counter_addr and cpu._timer is None:
            c = ctypes.c_uint64.from_address(cpu._counter_addr)
            if c.value:
                c.value -= 1

    def _hook(self, hook_type: int, cb: Any, begin: int, end: int) -> int:
        hh = ctypes.c_size_t()
        err = uclib.uc_hook_add(self.cpu._h, ctypes.byref(hh), hook_type, ctypes.cast(cb, ctypes.c_void_p), None,
                                ctypes.c_uint64(begin), ctypes.c_uint64(end))
        if err:
            raise TargetError(f"the emulator refused the hook (unicorn error {err})")
        return hh.value

    def _on_mem(self, _uc: int, access: int, pa: int, size: int, _value: int, _ud: int) -> None:
        # Called before the access: note it and stop the vCPU, which (virtual clock) ends the
        # slice before the next instruction, so the accessing one completes first, as a data
        # breakpoint is a trap (SDM Vol. 3B 17.2.5). An access that then faults never gets here
        # (Unicorn fills the TLB before calling memory hooks).
        if self.hit is not None:
            return
        for slot in self.slots.values():
            if not slot.active or slot.kind == 1 or access not in WATCH_KINDS[slot.kind][1]:
                continue
            for piece_pa, n, off in slot.pieces:
                if pa < piece_pa + n and piece_pa < pa + size:
                    if self.cpu.stop_after_instruction(WATCH_STOP):
                        self.hit = (slot, slot.va + off + max(0, pa - piece_pa))
                    return

    def _on_code(self, _uc: int, address: int, _size: int, _ud: int) -> None:
        try:
            env = self.kernel.current
            for slot in self.slots.values():
                if slot.kind == 1 and slot.active and slot.va == address and env is not None:
                    t = translate(self.memory, env.space.root, address)
                    if t is not None and t.pa == slot.pieces[0][0] and self.on_hbreak is not None:
                        self.on_hbreak(slot, address)
                    return
        except BaseException as e:  # noqa: BLE001 - as the vCPU's own hooks: raised again after emu_start
            if self.cpu._hook_error is None:
                self.cpu._hook_error = e
            self.cpu.uc.emu_stop()
