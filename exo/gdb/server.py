"""The gdb session: one TCP connection, the command table, and the run loop under it.

All-stop model on one vCPU. The exokernel's own run loop runs the guests, unchanged (same
scheduling, same output as without gdb); before it picks each slice the server looks at
the socket (a connection, Ctrl-C) at most every ``POLL_SECONDS`` of host time, which
touches no guest-visible state. A stop inside a slice, a
breakpoint's int3, a single step's #DB (the trap flag, RFLAGS.TF: the CPU's own
single-step, SDM Vol. 3B 17.3.1.4) or a fault about to kill an environment, reaches the
server from the trap path, and the session runs right there, inside the vCPU's hook, with
the stopped environment's registers live; ``c``/``s`` return from it and the guest goes on.
Nothing is added to the hypercall path: ``Exokernel.trap``, ``Exokernel.kill``,
``Exokernel.code`` (library calls) and ``Exokernel._pick`` are wrapped on the instance, and
only when ``--gdb`` is given.

Watchpoints stop the vCPU from a memory hook (``Target._on_mem``); the slice then ends after
the accessing instruction, the session runs outside emulation (``_run_slice``, wrapping
``VCpu.run`` on the instance), and the rest of the same slice runs on: the slice boundaries,
and so the guest's preemption points and instruction counts, are those of a run without gdb.
Hardware breakpoints stop from a ranged code hook, before the instruction, like ``int3``.
While every guest waits for console input the kernel sleeps in ``console.wait_input``; that
is wrapped too (``_idle_wait``) so that Ctrl-C or a new connection is served within
``POLL_SECONDS`` then as well.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exo.env import EnvStatus
from exo.errors import ExoUserError
from exo.gdb.history import History, HistoryError
from exo.gdb.rsp import PACKET_SIZE, Decoder, escape, frame, unescape
from exo.gdb.target import REG_INDEX, RFLAGS_TF, TARGET_XML, WATCH_KINDS, WATCH_STOP, Target, TargetError
from hw.cpu import RunExit
from hw.regs import Reg
from hw.traps import TrapKind, Vector

if TYPE_CHECKING:
    from exo.env import Env

POLL_SECONDS = 0.02  # host time between two looks at the socket while the guests run
SIGINT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV = 2, 4, 5, 6, 7, 8, 11
# The signal a Linux process gets for each exception (arch/x86/kernel/traps.c), which is
# what gdb users read in "Program received signal ...".
SIGNAL_OF_VECTOR = {
    Vector.DE: SIGFPE, Vector.DB: SIGTRAP, Vector.BP: SIGTRAP, Vector.OF: SIGSEGV, Vector.BR: SIGSEGV,
    Vector.UD: SIGILL, Vector.NM: SIGFPE, Vector.TS: SIGSEGV, Vector.NP: SIGBUS, Vector.SS: SIGBUS,
    Vector.GP: SIGSEGV, Vector.PF: SIGSEGV, Vector.MF: SIGFPE, Vector.AC: SIGBUS, Vector.MC: SIGBUS,
    Vector.XM: SIGFPE,
}
SIGNAL_OF_KIND = {TrapKind.IO: SIGSEGV, TrapKind.MACHINE_CHECK: SIGBUS}
IO_TIMEOUT = 0.5  # seconds between checks for input while stopped (none is a reason to stop waiting)


def escape_xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def parse_address(spec: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host defaults to loopback (a debugger can rewrite guests)."""
    host, _, port = spec.rpartition(":")
    try:
        n = int(port)
    except ValueError:
        raise ExoUserError("--gdb", f"{spec!r}: PORT must be a number ([HOST:]PORT)") from None
    if not 0 <= n <= 65535:
        raise ExoUserError("--gdb", f"{spec!r}: port {n} is not between 0 and 65535")
    return host or "127.0.0.1", n


class Killed(Exception):
    """gdb sent ``k``: the run ends now."""


class _Resume(Exception):
    pass


class GdbServer:
    """Serve gdb for the guests of ``kernel`` on ``host:port``."""

    def __init__(self, kernel: Any, host: str, port: int, log: Callable[[str], None] | None = None,
                 history_mib: int = 0) -> None:
        self.kernel = kernel
        self.target = Target(kernel)
        self.log = log or (lambda s: (sys.stderr.write(f"exo: gdb: {s}\n"), sys.stderr.flush()))
        try:
            self.listener = socket.create_server((host, port))
        except OSError as e:
            raise ExoUserError("--gdb", f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.address = self.listener.getsockname()[:2]
        self.conn: socket.socket | None = None
        self.dec = Decoder()
        self.interrupted = False
        self.stepping: set[int] = set()  # environments with TF set by us
        self.traced: set[int] = set()  # environments we ever set TF for
        self.g_thread = 0  # Hg: registers and memory (0: the stopped one)
        self.c_thread = 0  # Hc: what s steps
        self.stopped: Env | None = None
        self.stop_signal = SIGTRAP
        self.stop_why = b""  # the stop reply's reason (watch:ADDR;, swbreak:;, hwbreak:;)
        self.features: set[bytes] = set()  # what gdb said it supports in qSupported (swbreak+, hwbreak+)
        self._skip_hbreak: tuple[int, int] | None = None  # (env, address): resumed there, do not stop again
        self.killed = False
        self._next_poll = 0.0
        self._wrap(kernel)
        # Reverse execution (exo/gdb/history.py): checkpoints while the guests run, when asked for.
        self.history: History | None = History(self, history_mib) if history_mib > 0 else None

    # ---------------------------------------------------------------- wiring
    def _wrap(self, kernel: Any) -> None:
        trap, kill, pick, code = kernel.trap, kernel.kill, kernel._pick, kernel.code
        run_slice, wait_input = kernel.cpu.run, kernel.machine.console.wait_input

        def on_trap(cpu: Any, t: Any) -> None:
            if self.target.hit is not None and t.vector != Vector.DB:
                # The instruction that touched watched memory faulted in a later access: it did
                # not complete, so, as on x86, the fault is reported and not the watchpoint.
                # (A #DB is a trap after the instruction: a single step that also hit a
                # watchpoint reports both, as DR6 would, below.)
                self.target.hit = None
            if self.conn is not None and t.kind is TrapKind.EXCEPTION and self._debug_trap(t):
                return
            env = kernel.current
            if env.id not in self.stepping:
                trap(cpu, t)
                if self.target.slots and env.alive:
                    self.target.follow(env)  # a page-fault handler may have mapped a new frame
                return
            # A fault in the middle of a single step. A CPU clears TF when it delivers an
            # exception (SDM Vol. 3A 6.12.1.2); clear it before the exokernel pushes an upcall
            # frame, or the frame carries it and the handler's return steps on with nobody
            # asking. If the exokernel sent the environment to a handler, the step stops
            # at the handler's entry, as gdb steps into a signal handler on Linux.
            self.target.set_rflags(env, self.target.rflags(env) & ~RFLAGS_TF)
            trap(cpu, t)
            if env.alive and not cpu.stop_requested:
                self.target.set_rflags(env, self.target.rflags(env) | RFLAGS_TF)

        def on_code(cpu: Any, address: int) -> None:
            # A library call: the trampoline's instruction never executes (Python does the call
            # and writes RIP), so the CPU raises no #DB for it. A step over it ends after the call.
            env = kernel.current
            code(cpu, address)
            if self.target.slots and env.alive:
                self.target.follow(env)  # a libOS call (fork's copy-on-write copy) may have remapped it
            if env.id in self.stepping and env.alive and not cpu.stop_requested:
                self._clear_step(env)
                self.stop(env, SIGTRAP)

        def on_kill(env: Any, t: Any, reason: str = "", kind: str | None = None) -> None:
            if self.conn is not None and env is kernel._live:  # its registers are live: show them
                self.stepping.discard(env.id)
                sig = SIGABRT if kind is not None else SIGNAL_OF_KIND.get(t.kind, SIGNAL_OF_VECTOR.get(t.vector, SIGSEGV))
                self.stop(env, sig)
            kill(env, t, reason, kind)

        def on_pick() -> Any:
            self._between_slices()
            return pick()

        def on_run(budget: int) -> Any:
            return self._run_slice(run_slice, budget)

        def on_wait_input(timeout: float) -> bool:
            return self._idle_wait(wait_input, timeout)

        # Instance attributes: the vCPU and the run loop call these; the class is untouched.
        kernel.trap, kernel.kill, kernel._pick, kernel.code = on_trap, on_kill, on_pick, on_code
        kernel.cpu.run, kernel.machine.console.wait_input = on_run, on_wait_input
        kernel.env_reclaim_hooks.append(self._reclaimed)
        self.target.on_hbreak = self._hbreak

    def _run_slice(self, run: Callable[[int], Any], budget: int) -> Any:
        """``VCpu.run`` with watchpoint stops served inside the slice: a hit ends ``run`` after the
        accessing instruction; gdb gets the machine there, then the slice goes on with what is
        left of its budget, so the run is cut where it would be without gdb."""
        target = self.target
        target.apply_deferred()  # outside emulation: the only safe place to delete hooks
        if target.slots and self.kernel.current is not None:
            target.follow(self.kernel.current)  # mappings its hypercalls changed in the last slice
        virtual = self.kernel.machine.clock.mode == "virtual"
        ex = run(budget)
        retired = ex.retired or 0
        while ex.stop_reason == WATCH_STOP:
            env = self.kernel.current
            hit, target.hit = target.hit, None
            if env is None or env is not self.kernel._live or not env.alive or env.status != EnvStatus.RUNNABLE:
                break  # the accessing instruction faulted and the fault stopped the environment
            if hit is not None:
                slot, addr = hit
                self.stop(env, SIGTRAP, WATCH_KINDS[slot.kind][0] + b":%x;" % addr)
                target.apply_deferred()
            left = budget - retired
            if virtual and left <= 0:
                return RunExit("preempted", retired)  # the hit was the slice's last instruction
            ex = run(left if virtual else budget)
            retired += ex.retired or 0
            ex = RunExit(ex.reason, retired if virtual else None, ex.stop_reason)
        return ex

    def _hbreak(self, slot: Any, address: int) -> None:
        """A hardware breakpoint's code hook: the instruction at ``address`` is about to run."""
        env = self.kernel.current
        if self._skip_hbreak == (env.id, address):
            self._skip_hbreak = None  # the restart below reaches it again: it already stopped here
            return
        if self.history is not None and self.history.busy:
            self.history.busy_stop(b"hwbreak:;")  # re-executing: a scan notes the hit, a run goes on
            return
        if self.conn is None:
            return
        self._clear_step(env)
        self.stop(env, SIGTRAP, b"hwbreak:;" if b"hwbreak+" in self.features else b"")
        if env.alive and (env.id in self.stepping or self.target.rip(env) != address):
            # A step (TF) or a new RIP takes effect in a freshly translated block: writing RIP from
            # a hook makes Unicorn leave this one and start again there.
            rip = self.target.rip(env)
            self.kernel.cpu.regs.write(Reg.RIP, rip)
            self.target.uncount()  # the instruction here was counted, and will be again on the restart
            if rip == address and slot.active:
                self._skip_hbreak = (env.id, address)

    def _idle_wait(self, wait: Callable[[float], bool], timeout: float) -> bool:
        """``console.wait_input`` while every guest waits for input: wait in POLL_SECONDS pieces
        and look at the socket between them, so Ctrl-C (or a connection) stops the machine now."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if wait(max(0.0, min(left, POLL_SECONDS))):
                return True
            self._next_poll = 0.0
            self._between_slices()
            if time.monotonic() >= deadline:
                return False

    def _reclaimed(self, env: Any) -> None:
        self.stepping.discard(env.id)
        if self.target.breakpoints:
            self.target.forget_frames(env)
        if self.target.slots:
            self.target.forget_slots(env)

    def _debug_trap(self, t: Any) -> bool:
        """A trap that is the debugger's (our int3, our single step): stop for gdb; True if so."""
        env = self.kernel.current
        if t.vector == Vector.BP and self.target.breakpoint_at(env, t.address):
            self.kernel.cpu.regs.write(Reg.RIP, t.address)  # report (and resume) at the int3, as gdb expects
            self.target.uncount()  # the int3 is the debugger's: it retires nothing of the guest's
            self._clear_step(env)
            self.stop(env, SIGTRAP, b"swbreak:;" if b"swbreak+" in self.features else b"")
            return True
        if t.vector == Vector.DB and env.id in self.stepping:
            self._clear_step(env)
            hit, self.target.hit = self.target.hit, None
            self.stop(env, SIGTRAP, WATCH_KINDS[hit[0].kind][0] + b":%x;" % hit[1] if hit else b"")
            return True
        if t.vector == Vector.DB and env.id in self.traced:
            # A trap flag we set that outlived its step (saved in a frame the libOS restored):
            # not the guest's doing, so not the guest's fault. Drop it and run on.
            self.target.set_rflags(env, self.target.rflags(env) & ~RFLAGS_TF)
            return True
        return False

    def _clear_step(self, env: Any) -> None:
        if env.id in self.stepping:
            self.stepping.discard(env.id)
            self.target.set_rflags(env, self.target.rflags(env) & ~RFLAGS_TF)

    # ------------------------------------------------------------------ run
    def run(self, wait: bool, max_instructions: int | None = None) -> None:
        """Run the guests to the end (or the budget) with gdb attached when it comes."""
        try:
            self._run(wait, max_instructions)
        except Killed:
            pass
        finally:
            self._finish()

    def _run(self, wait: bool, max_instructions: int | None) -> None:
        self.log(f"listening on {self.address[0]}:{self.address[1]}" + (" (waiting for gdb)" if wait else ""))
        if self.history is not None:
            self.history.start()  # from here on this process is the first runner (the caller's waits)
        if wait:
            self._accept(block=True)
        self.kernel.run(max_instructions=max_instructions)

    def _between_slices(self) -> None:
        """Before the scheduler picks the next slice: at most every POLL_SECONDS, look at the
        socket. A new connection, or Ctrl-C from gdb, stops the machine here (no guest runs)."""
        if self.history is not None:
            self.history.between_slices()  # a checkpoint when one is due
            if self.history.busy:
                return  # re-executing to a point: gdb waits for that stop
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + POLL_SECONDS
        if self.conn is None:
            self._accept(block=False)
            return
        self._poll()
        if self.interrupted and self.conn is not None:
            self.interrupted = False
            self.stop(self._default_thread(), SIGINT)

    def _default_thread(self) -> Any:
        live = self.kernel._live
        if live is not None and live.alive:
            return live
        threads = self.target.threads()
        return threads[0] if threads else None

    def _finish(self) -> None:
        if self.conn is not None and not self.killed:
            envs = [e for e in self.kernel.envs.values() if e.parent is None and not e.is_server]
            first = envs[0] if envs else None
            if first is not None and first.fault is not None:
                self._send(b"X%02x" % SIGSEGV)
            elif first is not None and not first.alive:
                self._send(b"W%02x" % ((first.exit_status or 0) & 0xFF))
            else:
                self._send(b"X%02x" % SIGINT)  # stopped by the budget: gdb hears the process end
        self._close()
        self.listener.close()

    # --------------------------------------------------------------- socket
    def _accept(self, block: bool) -> None:
        if not block and not select.select([self.listener], [], [], 0)[0]:
            return
        conn, peer = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn, self.dec = conn, Decoder()
        self.log(f"connection from {peer[0]}:{peer[1]}")
        self.stop(self._default_thread(), SIGTRAP, announce=False)  # gdb asks why with '?'


    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None
        self.stepping.clear()
        self.target.remove_all()
        self.target.remove_all_slots()

    def _detach(self, why: str) -> None:
        self.log(why)
        for env in self.kernel.envs.values():
            if env.id in self.stepping and env.alive:
                self._clear_step(env)
        self._close()

    def _poll(self) -> None:
        """While running: read what is there (Ctrl-C, or a packet gdb sent early)."""
        if self.conn is not None and select.select([self.conn], [], [], 0)[0]:
            self._read()
            while self.dec.events:
                kind, _ = self.dec.events.popleft()
                if kind == "interrupt":
                    self.interrupted = True

    def _read(self) -> None:
        try:
            data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._detach("gdb disconnected" + (" in the middle of a packet" if self.dec.mid_packet else ""))
            return
        self.dec.feed(data)
        if self.dec.replies:
            self._write(bytes(self.dec.replies))
            self.dec.replies.clear()

    def _write(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except OSError:
            self._detach("gdb connection lost")

    def _send(self, data: bytes) -> None:
        if self.conn is not None:
            self._write(frame(escape(data)))

    # ------------------------------------------------------------- stopped
    def stop(self, env: Any, sig: int, why: bytes = b"", announce: bool = True) -> None:
        """The machine is stopped at ``env``: serve gdb until it resumes (or goes away).

        ``why``: the stop reply's reason field (``watch:ADDR;``...). ``announce``: send the stop
        reply now (gdb waits for one after ``c``, ``s`` or Ctrl-C; on a fresh connection it asks
        with ``?`` instead)."""
        if self.history is not None and self.history.busy:
            # Re-executing towards a point: gdb waits for that stop (exo/gdb/history.py). A scan
            # for reverse-continue notes a watchpoint's hit here.
            self.history.busy_stop(why)
            return
        if self.conn is None or env is None:
            return
        self.stopped = env
        self.g_thread = self.c_thread = 0
        self.stop_signal, self.stop_why = sig, why
        if announce:
            self._send(self._stop_reply(env, sig))
        while self.conn is not None:
            while not self.dec.events and self.conn is not None:
                if select.select([self.conn], [], [], IO_TIMEOUT)[0]:
                    self._read()
            if self.conn is None:
                break
            kind, data = self.dec.events.popleft()
            if kind != "packet":
                continue  # acks, and Ctrl-C while already stopped
            try:
                reply = self.handle(data)
            except _Resume:
                break
            except Killed:
                self.killed = True
                self._close()
                raise
            if reply is not None:
                self._send(reply)
        self.stopped = None

    def _stop_reply(self, env: Any, sig: int) -> bytes:
        return b"T%02x%sthread:%x;" % (sig, self.stop_why, env.id)

    def _env(self, tid: int) -> Any:
        if tid in (0, -1):
            return self.stopped
        return self.target.thread(tid)

    # --------------------------------------------------------------- packets
    def handle(self, data: bytes) -> bytes | None:
        """One packet -> its reply (None: none, the machine resumes). Never raises but for resume/kill."""
        if not data:
            return b""
        try:
            for prefix, fn in self._TABLE:
                if data.startswith(prefix):
                    return fn(self, data[len(prefix):])
            return b""  # unknown packet: the empty reply says "not supported"
        except (TargetError, ValueError, IndexError, UnicodeDecodeError) as e:
            self.log(f"bad request {data[:40]!r}: {e}")
            return b"E01"

    def _q_supported(self, rest: bytes) -> bytes:
        # qSupported:gdbfeature;...: remember what gdb takes in stop replies (swbreak/hwbreak reasons).
        self.features = set(rest.lstrip(b":").split(b";"))
        reverse = b";ReverseStep+;ReverseContinue+" if self.history is not None else b""
        return (b"PacketSize=%x;qXfer:features:read+;qXfer:threads:read+;QStartNoAckMode+;"
                b"swbreak+;hwbreak+;vContSupported+" % PACKET_SIZE) + reverse

    def _no_ack(self, _: bytes) -> bytes:
        self._send(b"OK")  # acknowledged (by gdb) in ack mode; then no more acks
        self.dec.ack = False
        return None  # already answered

    def _xfer(self, rest: bytes) -> bytes:
        annex, _, span = rest.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        return self._xfer_chunk(TARGET_XML.encode(), span)

    def _xfer_threads(self, rest: bytes) -> bytes:
        # qXfer:threads:read::OFF,LEN (gdb manual E.4 "Thread List Format"): every environment, its
        # name (shown by "info threads" in quotes) and the extra information as the text.
        annex, _, span = rest.partition(b":")
        if annex:
            return b"E00"
        doc = '<?xml version="1.0"?><threads>' + "".join(
            f'<thread id="{e.id:x}" name="{escape_xml(e.name)}">{escape_xml(self.target.extra_info(e))}</thread>'
            for e in self.target.threads()) + "</threads>"
        return self._xfer_chunk(doc.encode(), span)

    @staticmethod
    def _xfer_chunk(doc: bytes, span: bytes) -> bytes:
        off, length = (int(x, 16) for x in span.split(b","))
        chunk = doc[off:off + length]
        return (b"l" if off + len(chunk) >= len(doc) else b"m") + chunk

    def _why(self, _: bytes) -> bytes:
        return self._stop_reply(self.stopped, self.stop_signal)

    def _g(self, _: bytes) -> bytes:
        return self.target.registers(self._env(self.g_thread)).hex().encode()

    def _G(self, rest: bytes) -> bytes:
        self.target.write_registers(self._env(self.g_thread), bytes.fromhex(rest.decode()))
        return b"OK"

    def _p(self, rest: bytes) -> bytes:
        return self.target.read_register(self._env(self.g_thread), int(rest, 16)).hex().encode()

    def _P(self, rest: bytes) -> bytes:
        n, _, value = rest.partition(b"=")
        self.target.write_register(self._env(self.g_thread), int(n, 16), bytes.fromhex(value.decode()))
        return b"OK"

    def _m(self, rest: bytes) -> bytes:
        addr, length = (int(x, 16) for x in rest.split(b","))
        return self.target.read_memory(self._env(self.g_thread), addr, min(length, PACKET_SIZE // 2)).hex().encode()

    def _M(self, rest: bytes) -> bytes:
        head, _, hexdata = rest.partition(b":")
        addr, length = (int(x, 16) for x in head.split(b","))
        data = bytes.fromhex(hexdata.decode())
        if len(data) != length:
            raise ValueError("length does not match the data")
        self.target.write_memory(self._env(self.g_thread), addr, data)
        return b"OK"

    def _X(self, rest: bytes) -> bytes:
        head, _, raw = rest.partition(b":")
        addr, length = (int(x, 16) for x in head.split(b","))
        data = unescape(raw)
        if len(data) != length:
            raise ValueError("length does not match the data")
        if length:
            self.target.write_memory(self._env(self.g_thread), addr, data)
        return b"OK"

    def _H(self, rest: bytes) -> bytes:
        op, tid = rest[:1], int(rest[1:], 16) if rest[1:] not in (b"-1",) else -1
        if tid not in (0, -1):
            self.target.thread(tid)
        if op == b"g":
            self.g_thread = tid
        elif op == b"c":
            self.c_thread = tid
        else:
            return b"E01"
        return b"OK"

    def _T(self, rest: bytes) -> bytes:
        self.target.thread(int(rest, 16))
        return b"OK"

    def _thread_info(self, _: bytes) -> bytes:
        return b"m" + b",".join(b"%x" % e.id for e in self.target.threads())

    def _thread_info_more(self, _: bytes) -> bytes:
        return b"l"

    def _current(self, _: bytes) -> bytes:
        return b"QC%x" % self.stopped.id

    def _extra(self, rest: bytes) -> bytes:
        return self.target.extra_info(self.target.thread(int(rest, 16))).encode().hex().encode()

    def _attached(self, _: bytes) -> bytes:
        return b"1"  # "attached to an existing process": gdb's kill/detach questions are the right ones

    def _continue(self, rest: bytes) -> bytes:
        if rest:
            self._set_rip(rest)
        raise _Resume

    def _step(self, rest: bytes) -> bytes:
        if rest:
            self._set_rip(rest)
        env = self._env(self.c_thread)
        self.target.set_rflags(env, self.target.rflags(env) | RFLAGS_TF)
        self.stepping.add(env.id)
        self.traced.add(env.id)
        raise _Resume

    def _continue_signal(self, rest: bytes) -> bytes:
        # C sig[;addr]: the signal is what the environment gets. A fault's signal is delivered as
        # the exokernel delivers faults (the fault report, the environment destroyed); ours
        # (SIGTRAP, SIGINT) are the debugger's and are dropped, as gdb drops them by default.
        _, _, addr = rest.partition(b";")
        return self._continue(addr)

    def _step_signal(self, rest: bytes) -> bytes:
        _, _, addr = rest.partition(b";")
        return self._step(addr)

    def _set_rip(self, rest: bytes) -> None:
        env = self._env(self.c_thread)
        self.target.write_register(env, REG_INDEX["rip"], int(rest, 16).to_bytes(8, "little"))

    def _z(self, rest: bytes, insert: bool) -> bytes:
        # Z/z TYPE,ADDR,KIND[;cond...]: 0 int3, 1 hardware breakpoint, 2/3/4 write/read/access watchpoint.
        kind_s, addr_s, length_s = rest.split(b",", 2)
        kind, addr, length = int(kind_s, 16), int(addr_s, 16), int(length_s.partition(b";")[0], 16)
        if kind not in (0, 1, 2, 3, 4):
            return b""  # not a type the protocol has: "unsupported"
        if kind == 0:
            env = self._env(self.g_thread)
            (self.target.insert_breakpoint if insert else self.target.remove_breakpoint)(env, addr)
        elif insert:
            self.target.insert_slot(self._env(self.g_thread), kind, addr, length)
        else:
            self.target.remove_slot(kind, addr, length)
        return b"OK"

    def _vcont_query(self, _: bytes) -> bytes:
        return b"vCont;c;C;s;S"

    def _vcont(self, rest: bytes) -> bytes:
        """vCont;ACTION[:TID];...: all-stop on one vCPU. The action of each thread is the first one
        naming it, else the first without a thread. A thread whose action is a step gets the trap
        flag (it steps when the scheduler next runs it: at once if it is the stopped one); every
        other environment runs as the scheduler runs it, which is "continue"."""
        actions: list[tuple[bytes, int | None]] = []
        for part in rest.split(b";"):
            act, _, tid = part.partition(b":")
            if act[:1] not in (b"c", b"C", b"s", b"S") or (act[:1] in (b"c", b"s") and len(act) != 1):
                raise ValueError(f"vCont action {act!r} is not one of c, Cxx, s, Sxx")
            if len(act) > 1:
                int(act[1:], 16)  # the signal: must be hex; dropped as in C/S
            actions.append((act[:1].lower(), None if not tid or tid == b"-1" else int(tid, 16)))
        if not actions:
            raise ValueError("vCont without an action")
        steps = [tid for act, tid in actions if act == b"s"]
        if None in steps and self.stopped is None:
            raise ValueError("no stopped thread to step")
        envs = [self.stopped if tid is None else self.target.thread(tid) for tid in steps]
        for env in envs:
            self.target.set_rflags(env, self.target.rflags(env) | RFLAGS_TF)
            self.stepping.add(env.id)
            self.traced.add(env.id)
        raise _Resume

    def _detach_cmd(self, _: bytes) -> bytes:
        self._send(b"OK")
        self._detach("gdb detached")
        raise _Resume

    def _kill(self, _: bytes) -> bytes:
        self.log("killed by gdb")
        raise Killed

    def _reverse(self, rest: bytes, step: bool) -> bytes:
        # bs / bc: on success this process hands gdb to a re-executed runner and ends here.
        if self.history is None:
            return b""
        try:
            if step:
                self.history.reverse_step(self._env(self.c_thread))
            else:
                self.history.reverse_continue()
        except HistoryError as e:
            self.log(f"cannot go back: {e}")
            self.history.resume_console()
            return b"E01"
        return b"E01"

    _TABLE: list[tuple[bytes, Callable[[GdbServer, bytes], bytes | None]]] = [
        (b"qSupported", _q_supported),
        (b"QStartNoAckMode", _no_ack),
        (b"qXfer:features:read:", _xfer),
        (b"qXfer:threads:read:", _xfer_threads),
        (b"qfThreadInfo", _thread_info),
        (b"qsThreadInfo", _thread_info_more),
        (b"qThreadExtraInfo,", _extra),
        (b"qAttached", _attached),
        (b"qC", _current),
        (b"?", _why),
        (b"g", _g),
        (b"G", _G),
        (b"p", _p),
        (b"P", _P),
        (b"m", _m),
        (b"M", _M),
        (b"X", _X),
        (b"H", _H),
        (b"vCont?", _vcont_query),
        (b"vCont;", _vcont),
        (b"T", _T),
        (b"bs", lambda self, r: self._reverse(r, True)),
        (b"bc", lambda self, r: self._reverse(r, False)),
        (b"c", _continue),
        (b"s", _step),
        (b"C", _continue_signal),
        (b"S", _step_signal),
        (b"Z", lambda self, r: self._z(r, True)),
        (b"z", lambda self, r: self._z(r, False)),
        (b"D", _detach_cmd),
        (b"k", _kill),
    ]

