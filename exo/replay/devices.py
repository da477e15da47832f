"""The tape and the journaled devices: what is installed on one kernel to record or replay a run.

Nothing here touches the hypercall path of a kernel that is not recorded: ``install`` replaces
``machine.console`` (the console hypercalls and the scheduler's poll look it up there on every
use), the NIC's ``backend`` and, with a backend outside the process, the clock's ``advance``,
on that one machine only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from exo.errors import ExoUserError
from exo.replay.journal import (
    ADVANCE,
    END,
    KIND_TEXT,
    NET_RX,
    POLL,
    READ,
    WRITE_CLOSED,
    Event,
    Journal,
    pack_frames,
    unpack_frames,
)

_NS = struct.Struct("<Q")
# The call a replay was making when it found the recording elsewhere (a divergence message).
CALL_TEXT = {"read": "the guest read the console", "poll": "the kernel polled the console for input",
             "write": "the guest wrote to the console", "recv": "the kernel took frames from the network",
             "advance": "the kernel advanced the idle clock", "wait": "every guest waited for console input"}


class Diverged(ExoUserError):
    """The replayed run did something the recorded run did not (one line, exit 2)."""


class ReplayEnded(Exception):
    """The replay needs input past the end of the recording (the recorded run was interrupted)."""


class Tape:
    """Numbers the recorded devices' calls and stamps them; records events, or hands them back.

    ``stamp()`` is (guest instructions retired, virtual idle ns). In replay mode ``take`` returns the
    event recorded for the current call (``seq``), or None when that call consumed nothing; a
    recorded event that the replay has passed, or one of another kind, raises `Diverged`.
    """

    def __init__(self, journal: Journal, stamp: Callable[[], tuple[int, int]], *, replay: bool = False,
                 go_live: bool = False, instructions: Callable[[], int] | None = None) -> None:
        self.journal = journal
        self.stamp = stamp
        self._instructions = instructions or (lambda: stamp()[0])
        self.seq = 0
        self.pos = 0
        self.go_live = go_live
        self.replaying = replay
        self.went_live_at: int | None = None  # the instruction count where a replay went live
        self.reached = 0  # recording: the instruction count at the latest call
        events = journal.events
        self._end = len(events) - 1 if events and events[-1].kind == END else len(events)
        end = journal.end
        # An interrupted recording: once its last call is replayed, the next call is past its end.
        self._last_call = end.seq if replay and not go_live and end is not None and end.data == b"interrupted" else None
        if not replay:
            del events[self._end:]  # an END is written again by `finish`

    @property
    def exhausted(self) -> bool:
        return self.pos >= self._end

    def replay_mode(self) -> bool:
        """True while replaying; at the end of the recording a ``go_live`` replay turns into a recording."""
        if self.replaying and self.pos >= self._end and self.go_live:
            self.replaying = False
            del self.journal.events[self._end:]  # the old END: this run goes on past it
            self.went_live_at = self.stamp()[0]
        return self.replaying

    def call(self) -> bool:
        """Count a device call; True if the journal answers it (replaying), False if the device does."""
        self.seq += 1
        if self.replay_mode():
            if self._last_call is not None and self.seq > self._last_call:
                raise ReplayEnded
            return True
        self.reached = self._instructions()
        return False

    def note(self, kind: int, data: bytes = b"") -> None:
        instr, idle = self.stamp()
        self.journal.events.append(Event(kind, self.seq, instr, idle, data))

    def take(self, call: str, kind: int) -> Event | None:
        if self.pos >= self._end:
            end = self.journal.end
            if end is not None and self.stamp()[0] > end.instructions:
                raise self.diverged(call, end)  # the recorded run had ended by now
            return None
        ev = self.journal.events[self.pos]
        if ev.seq == self.seq:
            if ev.kind != kind or self.stamp() != (ev.instructions, ev.idle_ns):
                raise self.diverged(call, ev)
            self.pos += 1
            return ev
        if ev.seq < self.seq:
            raise self.diverged(call, ev)
        instr, idle = self.stamp()
        if instr > ev.instructions or idle > ev.idle_ns:
            raise self.diverged(call, ev)  # it has gone past where the recording consumed the event
        return None

    def diverged(self, call: str, ev: Event) -> Diverged:
        instr, idle = self.stamp()
        where = f"instruction {instr}" + (f" (idle {idle} ns)" if idle else "")
        theirs = f"instruction {ev.instructions}" + (f" (idle {ev.idle_ns} ns)" if ev.idle_ns else "")
        return Diverged("--replay", f"replay diverged at {where}, call {self.seq}: {CALL_TEXT[call]}, the "
                                    f"recording has {KIND_TEXT[ev.kind]} at {theirs}, call {ev.seq}")

    def finish(self, reason: str) -> None:
        """Append the END event (recording, or a replay that went live)."""
        if not self.replaying:
            # The vCPU's count misses the instructions of a slice an interrupt (Ctrl-C) cut short.
            instr, idle = self.stamp()
            self.journal.events.append(Event(END, self.seq, max(instr, self.reached), idle, reason.encode()))


class JournaledConsole:
    """The console as the kernel sees it, through the tape. Anything else is the real console's."""

    def __init__(self, real: Any, tape: Tape, mute_bytes: int = 0) -> None:
        self._real = real
        self._tape = tape
        self._mute = mute_bytes  # output already shown once (reverse execution): not written again
        self._written = 0

    def __getattr__(self, name: str) -> Any:  # release_terminal, output_error, interactive, ...
        return getattr(self._real, name)

    def read(self, n: int) -> bytes | None:
        t = self._tape
        if t.call():
            ev = t.take("read", READ)
            if ev is None:
                return None  # nothing typed yet, as when recording
            if len(ev.data) > n:
                raise t.diverged("read", ev)
            return ev.data
        data = self._real.read(n)
        if data is not None:
            t.note(READ, data)
        return data

    def poll(self) -> bool:
        t = self._tape
        if t.call():
            return t.take("poll", POLL) is not None
        ready = self._real.poll()
        if ready:
            t.note(POLL)
        return ready

    def wait_input(self, timeout: float) -> bool:
        t = self._tape
        if t.replay_mode():
            if t.exhausted:
                end = t.journal.end
                if end is not None and end.data == b"exit":
                    raise t.diverged("wait", end)  # the recorded run ended; this one waits for more
                raise ReplayEnded
            return False  # no host time passes in a replay: the next poll says what the recording saw
        return self._real.wait_input(timeout)

    def write(self, data: bytes) -> int:
        t = self._tape
        if t.call():
            if t.take("write", WRITE_CLOSED) is not None:
                return -1
            self._show(data)
            return len(data)  # what the recorded run's write returned, whatever happens to this output
        n = self._show(data)
        if n < 0:
            t.note(WRITE_CLOSED)
        return n

    def _show(self, data: bytes) -> int:
        skip = min(max(self._mute - self._written, 0), len(data))
        self._written += len(data)
        if skip == len(data):
            return len(data)
        n = self._real.write(data[skip:])
        return n if n < 0 else len(data)


class JournaledBackend:
    """A network backend seen through the tape: received frames are recorded, or handed back.

    Replaying, nothing leaves the process (the frames the guests send go nowhere: the recording
    already has what the peers answered) and no host time is waited for.
    """

    def __init__(self, real: Any, tape: Tape) -> None:
        self._real = real
        self._tape = tape
        self.external = real.external
        if tape.replaying and not tape.go_live:
            # Nothing will go through it: give back its ports (hostfwd), its TAP, at once. Its
            # forwards are not announced: there is nothing to connect to.
            real.close()
            self.forwards = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send(self, frame: bytes) -> None:
        if not self._tape.replaying:
            self._real.send(frame)

    def recv(self) -> list[bytes]:
        t = self._tape
        if t.call():
            ev = t.take("recv", NET_RX)
            return [] if ev is None else unpack_frames(ev.data)
        frames = self._real.recv()
        if frames:
            t.note(NET_RX, pack_frames(frames))
        return frames

    def pending(self) -> bool:
        if self._tape.replay_mode():
            return False
        return self._real.pending()

    def wait(self, timeout: float) -> None:
        if not self._tape.replay_mode():
            self._real.wait(timeout)


def journal_advance(clock: Any, tape: Tape) -> None:
    """Record (or hand back) every idle advance of ``clock``: with peers outside the process the
    virtual clock advances by the host time spent waiting for them (exo/net.py ``idle``)."""
    advance = clock.advance

    def journaled(ns: int) -> None:
        if tape.call():
            ev = tape.take("advance", ADVANCE)
            if ev is None:
                raise tape.diverged("advance", tape.journal.events[tape.pos]) if not tape.exhausted else ReplayEnded
            ns = _NS.unpack(ev.data)[0]
        else:
            tape.note(ADVANCE, _NS.pack(max(ns, 0)))
        advance(ns)

    clock.advance = journaled
