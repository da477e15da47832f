"""Tracing every ring transition and every call, with durations, into a bounded ring buffer.

Three shapes of event, all in guest time (the virtual clock: hw/clock.py):

* **Spans** (Chrome ``ph: "X"``, a start and a duration): a hypercall (``kcall``
  when a service inside the monolithic kernel makes it), a library call, and a
  service call (a Linux system call reflected to the libOS, or a module call
  through a structure's trampoline), each with its arguments and its result.
  A call that has to wait keeps its span open until it completes, so a
  ``console_read`` or ``ipc_recv`` that blocked lasts as long as its wait; a
  service call under xen-pv or the microkernel lasts until the guest kernel's
  ``svc_return`` or the server's reply. Work done in Python by the exokernel or a
  libOS module retires no guest instruction: such a call takes no guest time,
  and its span has duration 0 (its modelled cost is the cost profiles' business:
  docs/cost-models.md).
* **Instants** (``ph: "i"``): the transitions that are points, not calls (a
  trap, an interrupt, an upcall, the transitions a service call counts).
* **Running slices** on a ``vCPU`` track: which environment the CPU ran, from one
  context switch to the next.

Tracks: one process per environment, one thread track per user-level thread
(libOS schedulers name the thread they switch to with ``LibPort.trace_thread``;
thread 0 is the environment's own context). IPC is drawn as flow arrows:
``ipc_try_send`` to the ``ipc_recv`` that takes the message, and, under the
microkernel structure, a client's call to the server and the server's reply
back to the client.

Every span lists the transitions it counted (``args.transitions``), so the
events of a run add up to its counts (exo/accounting.py). Every field except
host time is deterministic under the virtual clock. The buffer keeps the newest
``capacity`` events (older ones are counted as dropped). With tracing off the
accounting path pays one attribute test per event.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from exo.abi import Errno
from exo.errors import ExoUserError

FORMATS = (".json", ".jsonl")
VCPU_PID = 0  # the vCPU's own track: which environment runs
RUN_TRACK = 999_998  # per environment, which of its user-level threads runs (thread ids stay below)
_SAFE_INT = 1 << 53  # larger integers are written in hex: JSON readers keep doubles (RFC 8259 section 6)
_ERRNO = {e.value: e.name for e in Errno}
_IPC = ("ipc_try_send", "ipc_recv")

# One recorded event: (ph, kind, env, thread, name, guest_ns, dur_ns, insns, host_ns, args, seq); seq orders
# events that start at the same guest time by when they began (an enclosing call first)
Event = tuple


def _value(v: object) -> object:
    t = type(v)
    if t is int:
        return v if -_SAFE_INT < v < _SAFE_INT else hex(v & ((1 << 64) - 1))
    if t is tuple or t is list:
        return [x if type(x) is str else _value(x) for x in v]
    return v


def _out(args: dict | None) -> dict:
    """An event's arguments as written: a result by its errno name, big integers in hex.
    (Done when the trace is written, not on the hot path.)"""
    out = {}
    if args:
        for k, v in args.items():
            t = type(v)
            if k == "result":
                out[k] = _result(v)
            elif t is int and -_SAFE_INT < v < _SAFE_INT or t is str or t is bool:
                out[k] = v  # the common case, without a call
            elif k == "transitions":
                out[k] = list(v)
            else:
                out[k] = _value(v)
    return out


def _result(result: object) -> object:
    if isinstance(result, int) and not isinstance(result, bool):
        if result >= 1 << 63:  # a register's bits: the signed value the ABI means
            result -= 1 << 64
        if -4096 < result < 0 and -result in _ERRNO:
            return f"-{_ERRNO[-result]}"
        return _value(result)
    return result  # None (the call loaded another context) or a word such as "waits"


class Span:
    """An open call: closed by Tracer.end."""

    __slots__ = ("kind", "env", "thread", "name", "start", "insns", "host", "args", "seq", "runs")

    def __init__(self, kind: str, env: int, thread: int, name: str, start: int, insns: int, host: int,
                 args: dict, seq: int) -> None:
        self.kind, self.env, self.thread, self.name = kind, env, thread, name
        self.start, self.insns, self.host, self.args, self.seq = start, insns, host, args, seq
        self.runs = 1  # a library call that waited is run (and counted) again


class Tracer:
    def __init__(self, instructions: Callable[[], int], at: Callable[[int], int], capacity: int = 1_000_000):
        """``instructions``: guest instructions retired so far; ``at``: guest time in ns from that
        count (hw Clock.at), so that an event reads the instruction counter once for both."""
        if capacity <= 0:
            raise ValueError(f"trace capacity must be positive, got {capacity}")
        self.events: deque[Event] = deque(maxlen=capacity)
        self.capacity = capacity
        self.total = 0
        self._instructions = instructions
        self._last = 0
        self._seq = 0
        self._host = time.perf_counter_ns
        self._at = at
        self.thread: dict[int, int] = {}  # env id -> the user-level thread running in it
        self.thread_names: dict[tuple[int, int], str] = {}
        # A call that has to wait: (env id, name) -> (span, guest ns and instructions when it began to
        # wait). Its retry continues the span if it is the environment's next call; otherwise the
        # span ends where the wait began (the retry is a new, uncounted span), so that no span
        # outlasts what happened inside it.
        self.waiting: dict[int, dict[str, tuple[Span, int, int]]] = {}  # env id -> name -> ...
        self.service: dict[int, Span] = {}  # env id -> its open service call
        self._running: tuple | None = None  # (env, name, since ns, insns, host, seq) on the vCPU
        self._thread_runs: dict[int, tuple] = {}  # env id -> (thread, since ns, insns, host, seq): running
        self._flows = 0
        self._pending: dict[tuple[str, int], tuple] = {}  # (what, destination env) -> (flow id, its start)

    def _now(self) -> tuple[int, int]:
        """(guest ns, instructions retired) now."""
        insns = self._instructions()
        return self._at(insns), insns

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _add(self, event: Event) -> None:
        self.events.append(event)
        self.total += 1

    # --------------------------------------------------------------- instants
    def __call__(self, kind: str, env_id: int, name: str) -> None:
        """A transition counted by exo/accounting.py that is not a call's span."""
        if kind == "context_switch":
            self._switch(env_id, name)
            return
        now_ns, now = self._now()
        self._add(("i", kind, env_id, self.thread.get(env_id, 0), name, now_ns, 0, now - self._last,
                   self._host(), None, self._next()))
        self._last = now

    def _switch(self, env_id: int, name: str) -> None:
        """The vCPU now runs ``env_id``: the previous environment's running slice ends."""
        now_ns, insns = self._now()
        if self._running is not None:
            self._close_thread_run(self._running[0], now_ns, insns)
        self._close_running(now_ns, insns)
        self._running = (env_id, name, now_ns, insns, self._host(), self._next())
        if env_id in self.thread:
            self._open_thread_run(env_id, now_ns, insns)
        self._last = insns

    def _close_running(self, now_ns: int, insns: int) -> None:
        if self._running is not None:
            env, name, since, i0, host, seq = self._running
            self._add(("X", "context_switch", env, -1, name, since, now_ns - since, insns - i0, host,
                       {"transitions": ["context_switch"]}, seq))
            self._running = None

    # ------------------------------------------------------------------ spans
    def begin(self, kind: str, env_id: int, name: str, args: dict | None = None) -> Span:
        if env_id in self.waiting:
            self._settle(env_id)
        insns = self._instructions()
        self._last = insns
        self._seq += 1
        return Span(kind, env_id, self.thread.get(env_id, 0), name,
                    self._at(insns), insns, self._host(),
                    args if args is not None else {}, self._seq)

    def end(self, span: Span, result: object, transitions: Sequence[str] = (),
            at: tuple[int, int] | None = None) -> None:
        if at is None:
            insns = self._instructions()
            now_ns = self._at(insns)
        else:
            now_ns, insns = at
        args = span.args  # the span is done with: its arguments become the event's
        args["result"] = result
        args["transitions"] = transitions
        self.events.append(("X", span.kind, span.env, span.thread, span.name, span.start, now_ns - span.start,
                            insns - span.insns, span.host, args, span.seq))
        self.total += 1
        if insns > self._last:
            self._last = insns

    def _wait(self, span: Span, key: str) -> None:
        self.waiting.setdefault(span.env, {})[key] = (span, *self._now())

    def _take(self, env_id: int, key: str) -> tuple[Span, int, int] | None:
        mine = self.waiting.get(env_id)
        if mine is None:
            return None
        waited = mine.pop(key, None)
        if not mine:
            del self.waiting[env_id]
        return waited

    def _settle(self, env_id: int) -> None:
        """``env_id`` makes a call that continues none of its waiting ones: those end where they waited."""
        self._close_all(env_id, "waits")

    def _close_all(self, env_id: int, result: str, after: int = 0) -> None:
        """End ``env_id``'s waiting calls (those begun after seq ``after``) where each waited."""
        mine = self.waiting.get(env_id, {})
        for key, (span, t, i) in sorted(mine.items(), key=lambda kv: -kv[1][0].seq):  # inner calls first
            if span.seq > after:
                del mine[key]
                self._close(span, result, (t, i))
        if not mine:
            self.waiting.pop(env_id, None)

    def _close(self, span: Span, result: object, at: tuple[int, int]) -> None:
        if span.kind == "libcall":
            self.end(span, result, ("libcall",) * span.runs, at)
        else:
            self.end(span, result, (span.kind,) if span.args.pop("counted", True) else (), at)

    def hypercall(self, kind: str, env_id: int, name: str, names: Sequence[str], values: Sequence[int],
                  rerun: bool) -> Span:
        """A hypercall begins; a retried call that waited continues its span."""
        if rerun:
            waited = self._take(env_id, name)
            if waited is not None:
                waited[0].args["waited"] = True
                return waited[0]
        return self.begin(kind, env_id, name, dict(zip(names, values)))

    def hypercall_done(self, span: Span, result: object, waits: bool, counted: bool, keep: bool) -> None:
        """The call answered (or waits: kept open when ``keep``, and its retry completes it)."""
        if waits and keep:
            span.args.setdefault("counted", counted)
            self._wait(span, span.name)
            return
        if result == 0 and not waits and span.name in _IPC:
            if span.name == "ipc_try_send":
                self.flow_out(span.env, span.args.get("envid", -1), "ipc", span.thread)
            else:
                self.flow_in(span.env, "ipc", span.thread)
        if "counted" in span.args:
            counted = span.args.pop("counted")
        self.end(span, "waits" if waits else result, (span.kind,) if counted else ())

    # ------------------------------------------------------- library calls
    def resume_libcall(self, env_id: int, name: str) -> Span | None:
        """A library call that waited runs again: its span goes on."""
        waited = self._take(env_id, "libcall " + name)
        if waited is None:
            return None
        span = waited[0]
        span.args["waited"] = True
        span.runs += 1
        return span

    def libcall_waits(self, span: Span) -> None:
        self._wait(span, "libcall " + span.name)

    def libcall_done(self, span: Span, result: object) -> None:
        """The call answered (or loaded another context): hypercalls it left waiting (a scheduler
        parked the thread instead of retrying the call) end with it."""
        if span.env in self.waiting:
            self._close_all(span.env, "waits", after=span.seq)
        self.end(span, result, ("libcall",) * span.runs)

    # ------------------------------------------------------ service calls
    def service_begin(self, env_id: int, name: str, values: Sequence[int]) -> None:
        """A Linux system call or a module call through a structure's trampoline; one open per
        environment (a call re-executed after a wait continues it)."""
        if env_id not in self.service:
            self.service[env_id] = self.begin("service", env_id, name, {"args": values})

    def service_end(self, env_id: int, result: object) -> None:
        span = self.service.pop(env_id, None)
        if span is not None:
            self.end(span, result)

    # ------------------------------------------------------------------ flows
    def flow_out(self, src: int, dst: int, what: str, thread: int | None = None) -> None:
        """A message (``what``: ipc, call, reply) leaves ``src`` for ``dst``; its arrow is drawn when
        it arrives (``flow_in``), so that a trace holds only arrows with both ends."""
        self._flows += 1
        self._pending[(what, dst)] = (self._flows, self._flow_point(src, what, self._flows, "out", thread))

    def flow_in(self, env_id: int, what: str, thread: int | None = None) -> None:
        """The message on its way to ``env_id`` arrives: the arrow ends here."""
        sent = self._pending.pop((what, env_id), None)
        if sent is not None:
            flow, start = sent
            self._add(start)
            self._add(self._flow_point(env_id, what, flow, "in", thread))

    def _flow_point(self, env_id: int, what: str, flow: int, direction: str, thread: int | None) -> Event:
        # A zero-length slice carrying one end of the arrow (flow events v2: bind_id with flow_in
        # or flow_out), so that it binds to this point and not to whichever call encloses it.
        return ("X", "flow", env_id, self.thread.get(env_id, 0) if thread is None else thread,
                f"{what} {direction}", self._now()[0], 0, 0, self._host(),
                {"flow": flow, "direction": direction}, self._next())

    # -------------------------------------------------------------- threads
    def set_thread(self, env_id: int, thread: int, name: str) -> None:
        """A libOS scheduler switched ``env_id`` to ``thread``: its calls go on that thread's track,
        and the environment's ``threads`` track shows which thread ran when (while the environment
        had the vCPU)."""
        if self.thread.get(env_id) == thread:
            return
        now_ns, insns = self._now()
        self._close_thread_run(env_id, now_ns, insns)
        self.thread[env_id] = thread
        self.thread_names.setdefault((env_id, thread), name)
        self._open_thread_run(env_id, now_ns, insns)

    def _open_thread_run(self, env_id: int, now_ns: int, insns: int) -> None:
        self._thread_runs[env_id] = (self.thread[env_id], now_ns, insns, self._host(), self._next())

    def _close_thread_run(self, env_id: int, now_ns: int, insns: int) -> None:
        run = self._thread_runs.pop(env_id, None)
        if run is not None:
            thread, since, i0, host, seq = run
            name = self.thread_names.get((env_id, thread), f"thread {thread}")
            self._add(("X", "thread", env_id, RUN_TRACK, name, since, now_ns - since, insns - i0, host,
                       {"thread": thread, "transitions": []}, seq))

    # --------------------------------------------------------------- output
    @property
    def dropped(self) -> int:
        return self.total - len(self.events)

    def env_ended(self, env_id: int) -> None:
        """``env_id`` exits or is destroyed: its open calls end now (a call that waited, where it waited)."""
        self._close_all(env_id, "unfinished")
        self.service_end(env_id, "exited")
        now_ns, insns = self._now()
        self._close_thread_run(env_id, now_ns, insns)

    def finish(self) -> None:
        """At the end of a run: close the running slice and every call still open (as unfinished)."""
        now_ns, insns = self._now()
        for env_id in list(self._thread_runs):
            self._close_thread_run(env_id, now_ns, insns)
        self._close_running(now_ns, insns)
        for env_id in list(self.waiting):
            self._close_all(env_id, "unfinished")
        for span in self.service.values():
            self.end(span, "unfinished")
        self.waiting.clear()
        self.service.clear()

    def records(self) -> list[dict]:
        out = []
        for ph, kind, env, thread, name, guest_ns, dur, insns, host, args, _seq in self.events:
            r = {"ph": ph, "kind": kind, "env": env, "thread": thread, "name": name, "insns": insns,
                 "guest_ns": guest_ns, "host_ns": host}
            if ph == "X":
                r["dur_ns"] = dur
            if args:
                r["args"] = _out(args)
            out.append(r)
        return out

    def write(self, path: str | Path, env_names: dict[int, str]) -> None:
        path = Path(path)
        if path.suffix not in FORMATS:
            raise ExoUserError(str(path), "trace file must end in .json (Chrome/Perfetto) or .jsonl (JSON lines)")
        self.finish()
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records())
        else:
            text = json.dumps(self.chrome(env_names))
        try:
            path.write_text(text)
        except OSError as e:
            raise ExoUserError(str(path), f"cannot write: {e.strerror}") from None

    @staticmethod
    def track(env: int, thread: int) -> int:
        """The Chrome thread id of an environment's user-level thread (unique in the trace)."""
        return VCPU_PID if thread < 0 else env * 1_000_000 + thread

    def chrome(self, env_names: dict[int, str]) -> dict:
        """The Chrome trace-event format (docs/trace.md): opens in Perfetto and chrome://tracing."""
        meta: list[dict] = [{"ph": "M", "pid": VCPU_PID, "tid": VCPU_PID, "name": "process_name",
                             "args": {"name": "vCPU"}},
                            {"ph": "M", "pid": VCPU_PID, "tid": VCPU_PID, "name": "thread_name",
                             "args": {"name": "running"}}]
        threads = {(e, 0) for e in env_names}
        threads |= {(ev[2], ev[3]) for ev in self.events if ev[3] >= 0}
        for eid in sorted({e for e, _ in threads}):
            meta.append({"ph": "M", "pid": eid, "tid": self.track(eid, 0), "name": "process_name",
                         "args": {"name": f"{eid} {env_names.get(eid, '')}".rstrip()}})
        for eid, t in sorted(threads):
            label = "threads" if t == RUN_TRACK else self.thread_names.get((eid, t), "main" if t == 0 else f"thread {t}")
            meta.append({"ph": "M", "pid": eid, "tid": self.track(eid, t), "name": "thread_name",
                         "args": {"name": label}})
            meta.append({"ph": "M", "pid": eid, "tid": self.track(eid, t), "name": "thread_sort_index",
                         "args": {"sort_index": -1 if t == RUN_TRACK else t}})
        host0 = min((ev[8] for ev in self.events), default=0)
        body: list[tuple] = []
        for ph, kind, env, thread, name, guest_ns, dur, insns, host, args, seq in self.events:
            e: dict = {"ph": ph, "pid": VCPU_PID if thread < 0 else env, "tid": self.track(env, thread),
                       "cat": kind, "name": name or kind, "ts": guest_ns / 1000,
                       "args": {**_out(args), "insns": insns, "host_us": (host - host0) / 1000}}
            if ph == "X":
                e["dur"] = dur / 1000
                if thread < 0:
                    e["args"]["env"] = env
                if kind == "flow":
                    e["bind_id"] = args["flow"]
                    e["flow_out" if args["direction"] == "out" else "flow_in"] = True
            else:
                e["s"] = "t"  # an instant on its thread's track
            body.append((e["ts"], -dur, seq, e))
        # Calls that start together: the enclosing one first (it began first), the order in which
        # trace viewers nest them.
        body.sort()  # (ts, -dur, seq): seq is unique, so the events themselves are never compared
        return {"traceEvents": meta + [e for *_, e in body], "displayTimeUnit": "ns",
                "otherData": {"dropped": self.dropped, "capacity": self.capacity, "timestamps": "guest time",
                              "version": 2}}
