"""The fuzzing harness: a real machine with several apps, and one hypercall per step through `syscall`.

Why a real `syscall` and not ``Exokernel.dispatch``: the path a hostile guest
takes is the vCPU's syscall hook -> ``Exokernel.syscall`` (the inlined hot path,
not ``dispatch``), with the environment's registers really loaded in Unicorn,
its page tables in CR3, and the scheduler's bookkeeping (the live context, a
``DYING`` environment reclaimed after its slice, a blocked call re-run when the
environment is woken) exactly as ``Exokernel.run`` does it. Calling ``dispatch``
would skip the inlined path, the RETRY rewind and the context switches, which
are where a mistake would hide. So each environment the fuzzer drives has a code
page at ``CODE_VA`` holding one `syscall`; a step loads the caller's context,
writes the chosen registers (RAX = number, RDI, RSI, RDX, R10, R8), sets RIP to
the stub and runs exactly one instruction (virtual clock, budget 1). A step
costs one ``emu_start``, so about a thousand calls a second fit.

The apps need no library OS (exo must not import libos): each is an image with
that code page and a few scratch data pages, loaded by ``exo.loader.spawn`` as
``exo boot`` loads any app, with the whole (small, temporary) disk granted and
the app's network address on the in-process switch, as ``spawn_apps`` does.

The harness keeps a little shadow state that the invariants need and the kernel
does not hold: the hypercalls each environment really made (seen by a thin
wrapper of the vCPU's trap handler, so it is independent of exo's accounting)
and the IPC page grants the fuzzer's calls made (which app received which frame,
with or without write access).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from exo.abi import (
    IMAGE_BASE,
    PERM_R,
    PERM_W,
    PERM_X,
    SECTOR_SIZE,
    EnvStatus,
)
from exo.build.image import Image, Segment
from exo.env import Env
from exo.errors import HypercallError
from exo.hypercalls import BY_NR
from exo.kernel import Exokernel
from exo.loader import spawn
from exo.report import FaultReport
from hw.cpu import VCpu
from hw.machine import Machine
from hw.memory import PAGE_SIZE
from hw.regs import GPR_INDEX, Reg
from hw.traps import Trap

CODE_VA = IMAGE_BASE  # one `syscall`, then int3 padding
SCRATCH_VA = IMAGE_BASE + 0x10_0000  # the fuzzer's data pages: request arrays, out-buffers, rings
SCRATCH_PAGES = 4
FUZZ_VA = 0x1000_0000  # the window where the fuzzer maps, unmaps and shares pages
FUZZ_PAGES = 32
DISK_SECTORS = 64
SMALL_QUOTA = 36  # app 1's frame quota, page tables included (exo/tenants.py)
STUB = b"\x0f\x05" + b"\xcc" * (PAGE_SIZE - 2)  # syscall; int3...

_MASK = (1 << 64) - 1
_ARG_REGS = (Reg.RDI, Reg.RSI, Reg.RDX, Reg.R10, Reg.R8)
_ARG_IDX = tuple(GPR_INDEX[r] for r in _ARG_REGS)
_RAX = GPR_INDEX[Reg.RAX]


def fuzz_image() -> Image:
    """The app every fuzzed environment runs: a `syscall` stub and scratch pages (no assembler needed)."""
    return Image(
        name="fuzz",
        entry=CODE_VA,
        segments=[
            Segment("text", CODE_VA, STUB, PAGE_SIZE, PERM_R | PERM_X),
            Segment("data", SCRATCH_VA, b"", SCRATCH_PAGES * PAGE_SIZE, PERM_R | PERM_W),
        ],
        symbols={"stub": CODE_VA},
    )


def _spawn(k: Exokernel, image: Image, name: str, frames: int | None) -> Env:
    """Load an app as `exo boot` does, with an app frame quota (None: the default, exo/tenants.py)."""
    return spawn(k, image, [], name=name, quota={"frames": frames} if frames else None)


@dataclass
class Call:
    """One hypercall a fuzzer step makes: who, which number, the argument registers, and memory it filled first."""

    env: int
    nr: int
    args: tuple[int, ...]
    mem: tuple[tuple[int, bytes], ...] = ()  # (va, bytes) written into the caller's memory before the call
    rule: str = ""
    resume: bool = False  # re-run a call the environment blocked in (no new registers)

    def render(self) -> str:
        h = BY_NR.get(self.nr)
        name = h.name if h else f"#{self.nr}"
        if self.resume:
            return f"env {self.env}: (woken: re-run its blocked {name})"
        args = ", ".join(f"{a:#x}" for a in self.args)
        mem = "".join(f" [{len(d)} bytes at {va:#x}: {d[:48].hex()}{'...' if len(d) > 48 else ''}]"
                      for va, d in self.mem)
        return f"env {self.env}: {name}({args}){mem}"


class _Sink(io.RawIOBase):
    """The console's output: counted and dropped (a million calls would fill memory)."""

    def __init__(self) -> None:
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


TRAP_LIMIT = 1000  # traps in one step (budget: one instruction) beyond which the slice would never end


class TrapStorm(Exception):
    pass


class _Watch:
    """The vCPU's trap handler is the kernel; this wrapper notes that a `syscall` arrived, and stops
    a step in which traps follow one another without end (nothing retires, so no slice would ever
    end and the exokernel would hang: the bug test_fuzz_abi.py's upcall-storm test pins)."""

    def __init__(self, k: Exokernel) -> None:
        self.k = k
        self.syscalls = 0
        self.traps = 0  # in the current step

    def syscall(self, cpu: VCpu) -> None:
        self.syscalls += 1
        self.k.syscall(cpu)

    def trap(self, cpu: VCpu, trap: Trap) -> None:
        self.traps += 1
        if self.traps > TRAP_LIMIT:
            raise TrapStorm(f"{self.traps} traps in one step without an instruction retired: this slice "
                            f"would never end (last: {trap.name} at {trap.rip:#x})")
        self.k.trap(cpu, trap)

    def code(self, cpu: VCpu, address: int) -> None:
        self.k.code(cpu, address)


@dataclass
class Outcome:
    result: int | None  # RAX as a signed value, None if the `syscall` never ran
    reached: bool
    error: BaseException | None = None


@dataclass
class Harness:
    """A booted machine with ``apps`` fuzz apps, a small disk and the switch network."""

    apps: int = 3
    ram_mib: int = 4  # small: running out of frames is one of the paths fuzzed
    disk: bool = True
    net: bool = True
    k: Exokernel = field(init=False)
    roots: list[int] = field(init=False)

    def __post_init__(self) -> None:
        from exo.disk import grant
        from exo.net import app_address
        from hw.blockdev import BlockDevice
        from hw.nic import open_nic

        self.reports: list[FaultReport] = []
        self.logs = 0
        self._tmp: str | None = None
        blockdev = None
        if self.disk:
            fd, self._tmp = tempfile.mkstemp(prefix="exo-fuzz-", suffix=".img")
            os.write(fd, bytes(DISK_SECTORS * SECTOR_SIZE))
            os.close(fd)
            blockdev = BlockDevice(self._tmp)
        nic = open_nic("switch") if self.net else None
        self.machine = Machine(self.ram_mib << 20, clock="virtual", stdin=b"", stdout=_Sink(), stderr=_Sink(),
                               disk=blockdev, nic=nic)
        k = self.k = Exokernel(self.machine, on_fault=self.reports.append)
        k.on_log = self._on_log
        self.watch = _Watch(k)
        k.cpu.handler = self.watch
        image = fuzz_image()
        self.roots = []
        for i in range(self.apps):
            # App 1 runs under a small frame quota (its image and stack take about 30): running
            # out of quota is fuzzed beside running out of RAM (the 4 MiB machine).
            env = _spawn(k, image, f"app{i}", SMALL_QUOTA if i == 1 else None)
            if blockdev is not None:
                grant(env, blockdev)
            if k.net is not None:
                k.net.assign(env, app_address(i))
            self.roots.append(env.id)
        # Shadow state (see the module docstring).
        self.expected: Counter[tuple[int, str]] = Counter()  # (env, hypercall) -> calls that reached the kernel
        self.mail: dict[int, tuple[int, int]] = {}  # receiver -> (frame, writable) of a page in flight
        self.grants: dict[int, dict[int, bool]] = {}  # frame -> {app: writable} received through IPC
        self.grant_owner: dict[int, int] = {}  # frame -> its owner when granted (a freed frame's grants go)
        self.frames_seen: list[int] = []  # frame numbers frame_of returned (to any app: attackers share)
        self.blocked: dict[int, Call] = {}  # env -> the call it blocked in
        self.exceptions: list[str] = []  # Python exceptions out of the exokernel
        self.calls = 0  # syscalls that reached the kernel
        self.steps = 0
        self.check_cache: dict = {}  # exo/fuzz/invariants.py check(): the last walk and clean state
        self.live: list[Env] = []  # set by check(): the live environments now
        self.new_dead: list[Env] = []  # set by check(): the ones that died since the last check

    def close(self) -> None:
        self.machine.close()
        if self._tmp is not None:
            os.unlink(self._tmp)
            self._tmp = None

    def _on_log(self, env: Env, text: str) -> None:
        self.logs += 1

    # ---------------------------------------------------------------- queries
    def tenant(self, env_id: int) -> int:
        """The booted app (tree root) an environment belongs to; frames of dead owners still have one."""
        env = self.k.envs.get(env_id)
        if env is None:
            return env_id
        return env.tenant.id

    def runnable(self) -> list[Env]:
        """Environments that would be on a CPU now: the ones a step may make a call from."""
        return [e for e in self.k.envs.values() if e.status == EnvStatus.RUNNABLE]

    # ------------------------------------------------------------------ a step
    def call(self, c: Call) -> Outcome:
        """Make ``c`` from its environment through the real `syscall` path (module docstring)."""
        k = self.k
        cpu = k.cpu
        env = k.envs.get(c.env)
        if env is None or env.status != EnvStatus.RUNNABLE:
            return Outcome(None, False)  # it is not on a CPU (a rule's earlier call stopped it): no call
        self.steps += 1
        pre_mail = None
        h = BY_NR.get(c.nr)
        name = h.name if h else None
        if c.resume:
            c = self.blocked.get(env.id, c)
        else:
            self.blocked.pop(env.id, None)
        if name == "ipc_try_send" and len(c.args) >= 3 and c.args[2]:
            target = k.envs.get(c.args[0])
            found = env.space.lookup(c.args[2] & ~0xFFF) if target is not None else None
            if found is not None:
                pre_mail = (c.args[0], found[0], bool(c.args[3] & PERM_W) if len(c.args) > 3 else False)
        retrying = env.retrying
        try:
            if env is not k._live:
                if k._live is not None and k._live.alive:
                    cpu.save(k._live.ctx)
                cpu.restore(env.ctx)
                k._live = env
            if not c.resume:
                for va, data in c.mem:
                    try:
                        env.space.write(va, data)  # what the guest itself would have stored there
                    except HypercallError:  # not writable by the guest either: it stays as it is
                        pass
                g = cpu.gpr
                g[_RAX] = c.nr & _MASK
                for i, a in zip(_ARG_IDX, c.args):
                    g[i] = a & _MASK
                cpu.regs.write(Reg.RIP, CODE_VA)
            before = self.watch.syscalls
            self.watch.traps = 0
            k.current = env
            cpu.run(1)
            k.current = None
            reached = self.watch.syscalls != before
            if env.status == EnvStatus.DYING:
                k._reclaim(env)
            if k.net is not None:  # what the scheduler's idle loop does between slices (Exokernel._pick)
                k.net.pump()
                waiting = k.net.waiters()
                if waiting:
                    k.net.wake_expired(waiting, k.machine.clock.now_ns())
        except Exception as e:  # noqa: BLE001 - any exception out of the exokernel is a violation
            k.current = None
            self.exceptions.append(f"{type(e).__name__}: {e} (in {c.render()})")
            return Outcome(None, False, e)
        if not reached:
            return Outcome(None, False)
        self.calls += 1
        if h is None:
            self.expected[(env.id, f"#{c.nr & _MASK}")] += 1
        elif h.counted and not retrying:
            self.expected[(env.id, h.name)] += 1
        result = None
        if env.alive and env.ctx is not None:
            raw = cpu.gpr[_RAX]
            result = raw - (1 << 64) if raw >> 63 else raw
        if env.retrying:  # it blocked: RAX still holds the number, the result comes when it is woken
            self.blocked[env.id] = c
            result = None
        self._note(env, c, name, result, pre_mail)
        return Outcome(result, True)

    def _note(self, env: Env, c: Call, name: str | None, result: int | None, pre_mail) -> None:
        """Shadow bookkeeping after a call: IPC pages in flight and received, frame numbers learnt."""
        if result is None or result < 0:
            return
        if name == "frame_of":
            self.frames_seen.append(result)
            del self.frames_seen[:-64]
        elif name == "ipc_try_send" and result == 0 and pre_mail is not None:
            self.mail[pre_mail[0]] = (pre_mail[1], pre_mail[2])
        elif name == "ipc_recv" and result == 0 and not env.retrying:
            sent = self.mail.pop(env.id, None)
            if sent is not None and c.args and c.args[0]:
                frame, writable = sent
                app = self.tenant(env.id)
                g = self.grants.setdefault(frame, {})
                g[app] = g.get(app, False) or writable
                self.grant_owner.setdefault(frame, self.k.frames.owner[frame])

    def forget_stale_grants(self) -> None:
        """A granted frame that was freed (and maybe handed to someone else) is no longer granted."""
        ft = self.k.frames
        for f in [f for f, owner in self.grant_owner.items() if ft.owner[f] != owner or ft.type[f] != 1]:
            del self.grant_owner[f]
            self.grants.pop(f, None)

