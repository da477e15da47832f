"""Reverse execution for gdb (``bs``, ``bc``): forked checkpoints and deterministic re-execution.

Under the virtual clock a run is a pure function of its input: the same guests, the same
console input at the same points, give the same instructions, counts and output. Going
back to an earlier point P is then going forward to P from a copy of the machine taken
before it. The copies are **forked processes** (as gdb's own ``checkpoint`` and rr do):
fork's copy-on-write captures everything at once (guest RAM, the Unicorn vCPU, the exokernel
and every libOS's Python state) and costs only the pages that change afterwards.

Processes (``docs/debugging.md``, "Reverse execution"):

* the **supervisor** is the process the user started. At the start of the run it forks the
  first runner and then only waits: it exits with the exit status of the last runner, and
  kills every checkpoint (also on gdb ``k`` and on SIGTERM, which it passes to the runner).
  It is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so every orphaned checkpoint
  and runner becomes its child and none is left behind;
* the **runner** runs the guests and serves gdb. Every ``INTERVAL`` instructions, at a slice
  boundary (outside ``emu_start``), it forks a **checkpoint**, which parks on a listening
  Unix socket (abstract name ``exo-gdb-<supervisor>-<count>``);
* to go back to P the runner connects to the newest checkpoint at or before P and sends it
  the gdb connection (``SCM_RIGHTS``) and the session (breakpoints, no-ack mode, the console
  input log, how much output gdb's user has seen). The checkpoint forks twice (the new
  runner is the supervisor's child), the new runner re-executes to P, splitting the slice
  that contains P so that the scheduler still sees one slice, and serves gdb there; the old
  runner exits. Checkpoints after P stay valid: re-execution makes the same future.

A point is a machine instruction count (``VCpu.instructions()``): one environment runs per
slice, so the count says which environment was at which instruction. reverse-stepi of
environment E goes to just before E's last retired instruction, found in the runner's list
of slices. reverse-continue re-executes each interval between checkpoints backwards (a
"scan": a throwaway runner with a code hook on each breakpoint address, no int3) until one
has a breakpoint hit before the current point, then goes to the last hit; with none, to the
start of history, reported with gdb's ``replaylog:begin`` stop reason.

What re-execution must see as the first run saw it: console input (``read``/``poll`` results
are logged in order and replayed; a new runner goes live when it passes the end of the log,
taking over the old runner's unread input), console output (muted up to the number of bytes
already written, so nothing shows twice). What it refuses: the wall clock, a network with
an outside peer. A writable disk image is one file shared by every process: its flushes are
held in memory (``BlockDevice.hold_flushes``) and written by the last runner at the end. A gdb write to memory or registers changes history: the checkpoints after the
current point are dropped and output from there on is shown again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_CODE

from hw.paging import translate

INTERVAL = 1_000_000  # instructions at least between checkpoints (about 17 ms of re-execution at 60 MIPS)
# Host seconds at least between checkpoints. A checkpoint costs the runner about 1.5 ms of fork
# and then the copy-on-write faults of every page it writes afterwards: at a checkpoint per 1M
# instructions a 100M-instruction loop ran 2.8x slower (benchmarks/gdb_reverse.py). Spaced by
# time, the cost is a bounded share of the run and going back re-executes at most about this long.
MIN_SECONDS = 0.2
MEASURE_SECONDS = 1.0  # host seconds between two measurements of the checkpoints' memory
DEFAULT_MIB = 256  # --gdb-history default: private memory of all checkpoints together
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_PR_SET_PDEATHSIG = 1
_SUPERVISOR_CHECK = 1.0  # seconds: a parked checkpoint looks whether the supervisor still lives


class HistoryError(Exception):
    """Reverse execution cannot be done here (answered with an E reply and one log line)."""


def refusal(kernel: Any) -> str | None:
    """Why this machine's runs cannot be re-executed exactly (None: they can)."""
    machine = kernel.machine
    if machine.clock.mode != "virtual":
        return "the wall clock is not reproducible (use --clock virtual)"
    nic = getattr(machine, "nic", None)
    if nic is not None and type(nic.backend).__name__ != "SwitchBackend":
        return "the network has an outside peer whose frames are not logged (only --net switch can be re-executed)"
    if nic is not None and getattr(nic, "pcap", None) is not None:
        return "--pcap would capture re-executed frames a second time"
    return None


def _private_kib(pid: int) -> int:
    """Private memory of a process (copy-on-write pages it no longer shares), /proc/PID/smaps_rollup."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def _insert_in_first(envs: list, insert: Callable[[Any], None]) -> None:
    """Insert a breakpoint or watchpoint through the first environment where its address is
    mapped (the session's, set at another moment, may not be mapped in every one)."""
    for e in envs:
        try:
            insert(e)
            return
        except Exception:  # noqa: BLE001 - not mapped in that environment (yet): try the next
            continue


def _send_msg(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj)
    head = len(data).to_bytes(8, "little")
    if fds:
        socket.send_fds(sock, [head], fds)
    else:
        sock.sendall(head)
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _recv_msg(sock: socket.socket, with_fds: bool = False) -> tuple[Any, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 8, 1)
        if len(head) < 8:
            head += _recv_exact(sock, 8 - len(head))
    else:
        head = _recv_exact(sock, 8)
    return pickle.loads(_recv_exact(sock, int.from_bytes(head, "little"))), fds


def _same_user(conn: socket.socket) -> bool:
    """Is the peer our own user (SO_PEERCRED, socket(7))? The request is unpickled: code runs."""
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return False
    return uid == os.getuid()


class History:
    """The checkpoints, the console log and the re-execution machinery of one gdb server."""

    def __init__(self, server: Any, budget_mib: int, interval: int = INTERVAL) -> None:
        self.server = server
        self.kernel = server.kernel
        self.cpu = server.kernel.cpu
        console = server.kernel.machine.console
        while getattr(console, "_real", None) is not None:
            console = console._real  # a device wrapped by another (a journal): log and mute the real one
        self.console = console
        self.budget_kib = budget_mib * 1024
        self.interval = interval
        self._last_time = 0.0  # host time of the last checkpoint
        self._last_measure = 0.0
        self.refused = refusal(self.kernel)
        self.started = False
        self.supervisor = 0
        self._ctrl_w = -1
        self.checkpoints: list[tuple[int, int]] = []  # (instruction count, pid), oldest first
        self.slices: list[tuple[int, int]] = []  # (count at its start, environment id) of every slice
        # Console input log: the result of every read/poll, in order; pos: the next to replay.
        self.log: list[Any] = []
        self.pos = 0
        self._pending_console: tuple[bytes, bool] | None = None  # the old runner's unread input
        self.out_total = 0  # console bytes written in this history
        self.shown = 0  # console bytes the user has seen (re-executed output up to here is muted)
        # Re-execution: the point to stop at, and what to do there.
        self.target: int | None = None
        self.mode = "run"  # "run", "goto", "scan"
        self.reason = "step"
        self._breakpoints: list[int] = []  # virtual addresses to insert on landing
        self._reply: socket.socket | None = None  # scan: where the hits go
        self.hits: list[tuple[int, bytes]] = []  # scan: (point, stop reason) of each hit
        self._why = b""  # the stop reason the landing reports (a watchpoint's, say)
        self._had_reader = False
        self._stderr = -1  # the real stderr while re-execution mutes it
        self._hook_pas: set[int] = set()

    @property
    def busy(self) -> bool:
        """Re-executing towards a point: gdb is not served and the socket is not read."""
        return self.target is not None

    # ----------------------------------------------------------------- start-up
    def start(self) -> None:
        """Split into the supervisor (this process: waits, never returns) and the first runner."""
        if self.refused is not None:
            self.server.log(f"reverse execution off: {self.refused}")
            return
        self.supervisor = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        ctrl_r, self._ctrl_w = os.pipe()
        interactive = self.console._reader_thread is not None
        if interactive:
            self.console.close()  # threads do not survive fork: the runner starts its own reader
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(self._ctrl_w)
            self._supervise(pid, ctrl_r)  # never returns
        os.close(ctrl_r)
        self._tie_to_supervisor()
        self.started = True
        disk = getattr(self.kernel.machine, "disk", None)
        if disk is not None and not disk.readonly:
            # The image is one file shared by every checkpoint: flushes stay in memory (copied
            # with each fork) and the last runner writes them when the machine closes.
            disk.hold_flushes()
        if interactive:
            self._restart_reader()
        self._wrap()

    def _tie_to_supervisor(self) -> None:
        """A runner dies with the supervisor (killed with SIGKILL, it cannot kill us): the kernel
        sends SIGKILL when our parent dies, once the supervisor is our parent (a runner forked by
        a checkpoint is reparented to it, the subreaper, when the process between them exits)."""
        while os.getppid() != self.supervisor:
            try:
                os.kill(self.supervisor, 0)
            except OSError:
                os._exit(1)  # the supervisor is gone already
            time.sleep(0.001)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.supervisor:
            os._exit(1)  # it died between the look and the prctl

    def _supervise(self, runner: int, ctrl_r: int) -> None:
        """The supervisor: wait for the runner of the moment; exit as it exited; leave no process."""
        self.server.listener.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner, in the same process group, gets Ctrl-C
        current = [runner]
        signal.signal(signal.SIGTERM, lambda *_: os.kill(current[0], signal.SIGTERM))
        os.set_blocking(ctrl_r, False)
        pending = b""
        code = 1
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(ctrl_r, 4096):
                    pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                current[0] = int(line)
            if pid == current[0]:
                code = os.waitstatus_to_exitcode(status)
                code = code if code >= 0 else 128 - code
                break
        self._kill_children()
        os._exit(code)

    @staticmethod
    def _kill_children() -> None:
        """SIGKILL every child left (parked checkpoints, reparented to the subreaper) and reap it."""
        me = os.getpid()
        while True:
            kids = []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    with open(f"/proc/{name}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == me:
                    kids.append(int(name))
            if not kids:
                return
            for pid in kids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for pid in kids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    def _restart_reader(self) -> None:
        """A terminal reader thread for this process (the forked one does not exist here)."""
        c = self.console
        c._cv = threading.Condition()
        c._stopping = c._ended = False
        c._released = c._asked = c._acked = 0
        c._wake = os.pipe()
        c._reader_thread = threading.Thread(target=c._reader, name="exo-console", daemon=True)
        c._reader_thread.start()

    def _after_fork_child(self) -> None:
        """In a forked child: the console's lock and reader thread were the parent's."""
        c = self.console
        c._cv = threading.Condition()
        if c._reader_thread is not None:
            c._reader_thread = None
            if c._wake is not None:
                for fd in c._wake:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                c._wake = None

    def _fork(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        with self.console._cv:  # the reader thread may hold it: fork with it held, fresh one in the child
            pid = os.fork()
        if pid == 0:
            self._after_fork_child()
        return pid

    # ------------------------------------------------------------ instrumentation
    def _wrap(self) -> None:
        """Instance attributes (the classes are untouched): slices, console log, muted output."""
        cpu, console = self.cpu, self.console
        real_run = cpu.run
        real_read, real_poll, real_wait, real_write = console.read, console.poll, console.wait_input, console.write

        def run(budget: int) -> Any:
            start = cpu.retired_total
            env = self.kernel.current
            self.slices.append((start, env.id if env is not None else 0))
            t = self.target
            if t is None or not start <= t < start + budget:
                return real_run(budget)
            if t > start:
                first = real_run(t - start)
                if first.reason != "preempted" or cpu.retired_total != t:
                    return first  # the slice ended before the point (a yield, a block, a fault)
            self._land(env)
            rest = real_run(budget - (t - start))
            rest.retired = (rest.retired or 0) + (t - start)
            return rest

        def read(n: int) -> Any:
            if self.pos < len(self.log):
                r = self.log[self.pos]
                self.pos += 1
                if r:
                    console.bytes_in += len(r)
                return r
            self._go_live()
            r = real_read(n)
            self.log.append(r)
            self.pos += 1
            return r

        def poll() -> bool:
            if self.pos < len(self.log):
                self.pos += 1
                return bool(self.log[self.pos - 1])
            self._go_live()
            r = real_poll()
            self.log.append(r)
            self.pos += 1
            return r

        def wait_input(timeout: float) -> bool:
            if self.pos < len(self.log):
                return True  # a replayed poll follows: no host time to wait for
            self._go_live()
            return real_wait(timeout)

        def write(data: bytes) -> int:
            n = len(data)
            begin, self.out_total = self.out_total, self.out_total + n
            if self.out_total <= self.shown:
                console.bytes_out += n
                return n  # shown before: re-executed output is not written twice
            if begin < self.shown:
                console.bytes_out += self.shown - begin
                data = data[self.shown - begin:]
            r = real_write(data)
            if r < 0:
                return r
            self.shown = self.out_total
            return n

        cpu.run = run
        console.read, console.poll, console.wait_input, console.write = read, poll, wait_input, write
        target = self.server.target
        real_wmem, real_wreg = target.write_memory, target.write_register

        def write_memory(env: Any, va: int, data: bytes) -> None:
            real_wmem(env, va, data)
            self.diverge()

        def write_register(env: Any, index: int, data: bytes) -> None:
            before = target.read_register(env, index)
            real_wreg(env, index, data)
            if target.read_register(env, index) != before:
                self.diverge()

        target.write_memory, target.write_register = write_memory, write_register

    def _go_live(self) -> None:
        """Past the end of the input log: the old runner's unread input is now this runner's."""
        if self._pending_console is None:
            return
        data, eof = self._pending_console
        self._pending_console = None
        c = self.console
        c._data[:] = data
        c._eof = eof
        if c._interactive and not eof and c._reader_thread is None:
            self._restart_reader()

    # --------------------------------------------------------------- checkpoints
    def _name(self, count: int) -> bytes:
        return b"\0exo-gdb-%d-%d" % (self.supervisor, count)

    def between_slices(self) -> None:
        """At a slice boundary (outside emu_start): fork a checkpoint if one is due."""
        if not self.started or self.mode == "scan" or time.monotonic() - self._last_time < MIN_SECONDS:
            return
        now = self.cpu.instructions()
        counts = [c for c, _ in self.checkpoints]
        i = bisect_right(counts, now)
        if i and now - counts[i - 1] < self.interval:
            return
        self._checkpoint(now)
        self._last_time = time.monotonic()

    def _checkpoint(self, now: int) -> None:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(self._name(now))
        except OSError:
            lsock.close()  # one exists (made by an earlier runner and no longer listed): keep going
            return
        lsock.listen(4)
        pid = self._fork()
        if pid == 0:
            self._park(lsock)  # returns only in a new runner
            return
        lsock.close()
        self.checkpoints.append((now, pid))
        self.checkpoints.sort()
        if time.monotonic() - self._last_measure >= MEASURE_SECONDS:
            self._enforce_budget()  # reading smaps_rollup costs about 0.5 ms a process
            self._last_measure = time.monotonic()

    def _park(self, lsock: socket.socket) -> None:
        """A checkpoint: wait for requests; fork a runner for each (it returns from here)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.server.conn is not None:
            self.server.conn.close()  # the runners keep gdb's connection, not the checkpoints
            self.server.conn = None
        while True:
            if not select.select([lsock], [], [], _SUPERVISOR_CHECK)[0]:
                try:
                    os.kill(self.supervisor, 0)
                except OSError:
                    os._exit(0)  # the supervisor is gone (killed): nobody will ask any more
                continue
            conn, _ = lsock.accept()
            if not _same_user(conn):
                conn.close()  # an abstract socket has no file permissions: only our own user may ask
                continue
            try:
                state, fds = _recv_msg(conn, with_fds=True)
            except (OSError, ConnectionError, pickle.PickleError, EOFError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                if os.fork():
                    os._exit(0)  # the runner is orphaned at once: the supervisor (subreaper) adopts it
                lsock.close()
                self._tie_to_supervisor()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self._become(state, fds, conn)
                return
            os.waitpid(pid, 0)
            for fd in fds:
                os.close(fd)
            conn.close()

    def _enforce_budget(self) -> None:
        """Keep the checkpoints' private memory within --gdb-history: thin them out, oldest last."""
        sizes = {pid: _private_kib(pid) for _, pid in self.checkpoints}
        total = sum(sizes.values())
        while total > self.budget_kib and len(self.checkpoints) > 1:
            cps = self.checkpoints
            if len(cps) > 2:
                # drop the one whose neighbours are closest: spacing stays as even as it can
                i = min(range(1, len(cps) - 1), key=lambda j: cps[j + 1][0] - cps[j - 1][0])
            else:
                i = 0  # history now begins later
                self.server.log(f"history memory over {self.budget_kib // 1024} MiB: it now begins at "
                                f"instruction {cps[1][0]}")
            total -= sizes.get(cps[i][1], 0)
            self._drop(i)

    def _drop(self, i: int) -> None:
        _, pid = self.checkpoints.pop(i)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # ours if this runner made it, else the supervisor reaps it

    def diverge(self) -> None:
        """gdb changed the state: the future the later checkpoints hold is not this one's."""
        if not self.started:
            return
        now = self.cpu.instructions()
        while self.checkpoints and self.checkpoints[-1][0] > now:
            self._drop(len(self.checkpoints) - 1)
        self.shown = self.out_total  # output from here on is new
        # Input the old future consumed is not its own any more: the new future reads it, in order.
        lost = b"".join(r for r in self.log[self.pos:] if isinstance(r, bytes))
        del self.log[self.pos:]
        if lost and self._pending_console is not None:
            data, eof = self._pending_console
            self._pending_console = (lost + data, eof)

    # ---------------------------------------------------------------- going back
    def _previous_point(self, env: Any) -> int | None:
        """The count just before ``env``'s last retired instruction (None: not in history)."""
        now = self.cpu.instructions()
        end = now
        for start, eid in reversed(self.slices):
            if start > end:
                continue
            if eid == env.id and end > start:
                return end - 1
            end = start
        return None

    def _session(self, mode: str, target: int, reason: str, why: bytes = b"") -> dict:
        srv = self.server
        bps = sorted({va for va, _ in srv.target.breakpoints.values()})
        slots = [(sl.kind, sl.va, sl.length, sl.env_id) for sl in srv.target.slots.values() if sl.active]
        c = self.console
        if mode == "goto" and c._reader_thread is not None:
            self._had_reader = True
            c.close()  # its buffer is handed over whole: nothing may be read into it meanwhile
        return {"mode": mode, "target": target, "reason": reason, "breakpoints": bps, "slots": slots,
                "why": why, "features": srv.features,
                "ack": srv.dec.ack, "log": self.log, "console": self._unread(),
                "shown": self.shown, "checkpoints": self.checkpoints, "ctrl": self._ctrl_w}

    def _unread(self) -> tuple[bytes, bool]:
        """Console input read from the host and not yet by a guest (a runner that never went live
        still holds the one it was handed)."""
        if self._pending_console is not None:
            return self._pending_console
        return bytes(self.console._data), self.console._eof

    def resume_console(self) -> None:
        """Going back failed after the terminal reader was stopped for the hand-over: restart it."""
        if self._had_reader and self.console._reader_thread is None:
            self._had_reader = False
            self._restart_reader()

    def _connect(self, count: int) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self._name(count))
        except OSError as e:
            s.close()
            raise HistoryError(f"checkpoint at instruction {count} is gone ({e.strerror})") from None
        return s

    def _checkpoint_before(self, point: int) -> int:
        counts = [c for c, _ in self.checkpoints]
        i = bisect_right(counts, point)
        if not i:
            raise HistoryError("no checkpoint before that point")
        return counts[i - 1]

    def goto(self, point: int, reason: str, why: bytes = b"") -> None:
        """Hand the session to a runner re-executed to ``point``; this process ends. Raises
        HistoryError (and stays the runner) if that cannot be done."""
        self._check()
        start = self._checkpoint_before(point)
        conn = self.server.conn
        s = self._connect(start)
        try:
            _send_msg(s, self._session("goto", point, reason, why), [conn.fileno()])
            if _recv_exact(s, 1) != b"K":
                raise HistoryError("the new runner did not start")
        except (OSError, ConnectionError) as e:
            raise HistoryError(f"re-execution failed: {e}") from None
        finally:
            s.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the new runner has gdb's connection; the supervisor now waits for it

    def _scan(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Breakpoint and watchpoint hits in [start, end), by re-execution: (the point reverse
        execution stops at, the stop reason gdb is told)."""
        s = self._connect(start)
        try:
            _send_msg(s, self._session("scan", end, "scan"))
            if _recv_exact(s, 1) != b"K":
                raise HistoryError("the scan did not start")
            hits, _ = _recv_msg(s)
        except (OSError, ConnectionError, EOFError) as e:
            raise HistoryError(f"re-execution failed: {e}") from None
        finally:
            s.close()
        return hits

    def _check(self) -> None:
        if self.refused is not None:
            raise HistoryError(f"reverse execution is off: {self.refused}")
        if not self.started:
            raise HistoryError("reverse execution is off (--gdb-history 0)")
        if self.server.conn is None:
            raise HistoryError("no gdb connection")

    def reverse_step(self, env: Any) -> None:
        self._check()
        point = self._previous_point(env)
        first = self.checkpoints[0][0] if self.checkpoints else None
        if point is None or first is None or point < first:
            self.goto(first if first is not None else 0, "begin")
        self.goto(point, "step")

    def reverse_continue(self) -> None:
        self._check()
        end = self.cpu.instructions()
        target = self.server.target
        if target.breakpoints or any(sl.active for sl in target.slots.values()):
            for count, _ in reversed(self.checkpoints):
                if count >= end:
                    continue
                hits = [h for h in self._scan(count, end) if h[0] < end]
                if hits:
                    point, why = max(hits)
                    self.goto(point, "breakpoint", why)
                end = count
        self.goto(self.checkpoints[0][0], "begin")

    # ------------------------------------------------------------------ new runner
    def _become(self, state: dict, fds: list[int], conn: socket.socket) -> None:
        """This process (forked from a checkpoint) takes over: re-execute to the point."""
        srv = self.server
        self.mode, self.target, self.reason = state["mode"], state["target"], state["reason"]
        self._breakpoints = state["breakpoints"]
        self._why = state["why"]
        self.server.features = state["features"]
        self._sync_slots(state["slots"])
        self.log = state["log"]
        self.shown = state["shown"]
        self._pending_console = state["console"]
        self._ctrl_w = state["ctrl"]
        srv.target.remove_all()  # the int3s of the checkpoint's moment; the session's go in on landing
        srv.stepping.clear()
        # What the exokernel reports on stderr while re-executing (a fault report, a log line) was
        # reported when it first happened: muted until the point.
        sys.stderr.flush()
        self._stderr = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        if self.mode == "scan":
            self.shown = 1 << 62  # a scan shows nothing
            self._reply = conn
            self._hook_breakpoints()
            conn.sendall(b"K")
            return
        self.checkpoints = [cp for cp in state["checkpoints"]]
        from exo.gdb.rsp import Decoder

        srv.conn = socket.socket(fileno=fds[0])
        srv.dec = Decoder()
        srv.dec.ack = state["ack"]
        os.write(self._ctrl_w, b"%d\n" % os.getpid())  # before the old runner ends: the supervisor's runner now
        conn.sendall(b"K")
        conn.close()

    def _hook_breakpoints(self) -> None:
        """A scan counts breakpoint hits with code hooks (no int3: nothing to step over)."""
        cpu, memory = self.cpu, self.kernel.machine.memory
        counter = cpu._counter_addr

        def on_code(_uc: Any, address: int, _size: int, _ud: Any) -> None:
            if ctypes.c_uint64.from_address(counter).value > cpu._budget:
                return  # the instruction after the slice's last: it does not run in this slice
            env = self.kernel.current
            t = translate(memory, env.space.root, address) if env is not None else None
            if t is not None and (address, t.pa) in self._hook_pas:
                self.hits.append((cpu.instructions() - 1, b"swbreak:;"))

        for va in self._breakpoints:
            for env in self.server.target.threads():
                t = translate(memory, env.space.root, va)
                if t is not None and t.user:
                    self._hook_pas.add((va, t.pa))
            cpu.uc.hook_add(UC_HOOK_CODE, on_code, begin=va, end=va)
        cpu.flush_code()

    def _sync_slots(self, slots: list[tuple[int, int, int, int]]) -> None:
        """The session's hardware breakpoints and watchpoints, in place of the checkpoint's (its
        moment's): between slices, where hooks may be deleted (exo/gdb/target.py)."""
        target = self.server.target
        target.remove_all_slots()
        target.apply_deferred()
        for kind, va, length, env_id in slots:
            envs = [e for e in target.threads() if e.id == env_id] or target.threads()
            _insert_in_first(envs, lambda e, k=kind, v=va, n=length: target.insert_slot(e, k, v, n))

    def busy_stop(self, why: bytes) -> None:
        """A hardware breakpoint or watchpoint hit while re-executing. A scan notes where
        reverse-continue would stop: before the instruction at a hardware breakpoint (its code
        hook counted it already); for a watchpoint, before the accessing instruction (reported
        after it completes), which is where going backwards meets the access, as rr stops."""
        if self.mode == "scan":
            self.hits.append((self.cpu.instructions() - 1, why))

    def _land(self, env: Any) -> None:
        """At the point (inside the slice that runs it, its environment loaded)."""
        self.target = None
        srv = self.server
        sys.stderr.flush()
        if self._stderr >= 0:
            os.dup2(self._stderr, 2)
            os.close(self._stderr)
            self._stderr = -1
        if self.mode == "scan":
            _send_msg(self._reply, self.hits)
            self._reply.close()
            os._exit(0)
        self.mode = "run"
        for va in self._breakpoints:
            _insert_in_first([env, *srv.target.threads()], lambda e, v=va: srv.target.insert_breakpoint(e, v))
        if self.reason == "begin":
            srv.stop(env, 5, b"replaylog:begin;")
        else:
            why = self._why
            if why.endswith(b"break:;") and why[:-2] + b"+" not in srv.features:
                why = b""  # swbreak/hwbreak reasons only to a gdb that asked for them
            srv.stop(env, 5, why)
