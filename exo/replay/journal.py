"""The journal: what a run consumed from outside, in order, and the file it is kept in.

File format (version 1), all integers little-endian::

    magic    b"EXOREPLAY\\n"                      10 bytes
    u32      length of the header
    header   JSON, UTF-8: {"format": 1, "exo": version, "apps": [{"name", "sha256"}],
             "options": {...}, "disk": {"sha256", "sectors"} or null}
    events   each: u8 kind, u64 seq, u64 instructions, u64 idle_ns, u32 length, payload
    the last event is END (its payload: why the run ended, "exit" or "interrupted")

``seq`` numbers the calls the kernel made to the recorded devices (every console read,
poll and write, every receive from the network backend, every idle clock advance), so an
event is consumed by exactly the call that consumed it when recording; ``instructions`` and
``idle_ns`` (guest instructions retired and virtual idle time at that call) say where a
replay diverged. Payloads by kind: READ the bytes a console read returned (empty: end of
input), POLL nothing (a poll found input), WRITE_CLOSED nothing (the console's reader had
gone), NET_RX the frames the backend gave, each as u16 length + bytes, ADVANCE the u64 ns the
virtual clock advanced while idle. A file that stops before END is truncated and refused.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import NamedTuple

from exo.errors import ExoUserError

MAGIC = b"EXOREPLAY\n"
FORMAT = 1
_LEN = struct.Struct("<I")
_EVENT = struct.Struct("<BQQQI")
_FRAME_LEN = struct.Struct("<H")

READ, POLL, WRITE_CLOSED, NET_RX, ADVANCE, END = 1, 2, 3, 4, 5, 255
# What each event is, for a divergence message ("..., the recording has a network frame").
KIND_TEXT = {READ: "console input", POLL: "console input arriving", WRITE_CLOSED: "console output closed",
             NET_RX: "a network frame", ADVANCE: "an idle clock advance", END: "the end of the run"}


class Event(NamedTuple):
    kind: int
    seq: int
    instructions: int
    idle_ns: int
    data: bytes = b""


class Journal:
    """A header (dict) and the ordered events; ``to_bytes``/``from_bytes``, ``save``/``load``."""

    def __init__(self, header: dict, events: list[Event] | None = None) -> None:
        self.header = header
        self.events: list[Event] = [] if events is None else events

    @property
    def end(self) -> Event | None:
        """The END event, if the run's end was recorded."""
        return self.events[-1] if self.events and self.events[-1].kind == END else None

    def to_bytes(self) -> bytes:
        head = json.dumps({"format": FORMAT, **self.header}, sort_keys=True).encode()
        out = [MAGIC, _LEN.pack(len(head)), head]
        for e in self.events:
            out.append(_EVENT.pack(e.kind, e.seq, e.instructions, e.idle_ns, len(e.data)))
            out.append(e.data)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, raw: bytes, where: str = "recording") -> Journal:
        """Parse a journal; a foreign, newer or truncated file is one ExoUserError line naming ``where``."""
        if not raw.startswith(MAGIC):
            raise ExoUserError(where, "not an exo recording (it does not start with EXOREPLAY)")
        pos = len(MAGIC)
        if len(raw) < pos + _LEN.size:
            raise ExoUserError(where, "the recording is truncated (in its header)")
        (n,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        if len(raw) < pos + n:
            raise ExoUserError(where, "the recording is truncated (in its header)")
        try:
            header = json.loads(raw[pos : pos + n])
        except ValueError:
            raise ExoUserError(where, "the recording's header is not valid JSON") from None
        if not isinstance(header, dict) or not isinstance(header.get("format"), int):
            raise ExoUserError(where, "the recording's header has no format number")
        if header["format"] != FORMAT:
            raise ExoUserError(where, f"recording format {header['format']}; this exo reads format {FORMAT}")
        pos += n
        events = []
        while pos < len(raw):
            if len(raw) < pos + _EVENT.size:
                raise ExoUserError(where, f"the recording is truncated (after {len(events)} events)")
            kind, seq, instr, idle, size = _EVENT.unpack_from(raw, pos)
            pos += _EVENT.size
            if kind not in KIND_TEXT:
                raise ExoUserError(where, f"event {len(events)} has unknown kind {kind}: a damaged recording")
            if len(raw) < pos + size:
                raise ExoUserError(where, f"the recording is truncated (in event {len(events)})")
            events.append(Event(kind, seq, instr, idle, bytes(raw[pos : pos + size])))
            pos += size
            if kind == END and pos != len(raw):
                raise ExoUserError(where, "the recording has data after its end: a damaged recording")
        if not events or events[-1].kind != END:
            raise ExoUserError(where, f"the recording is truncated (no end record after {len(events)} events): "
                                      "the recorded run did not finish writing it")
        del header["format"]
        return cls(header, events)

    def save(self, path: str | Path) -> None:
        try:
            Path(path).write_bytes(self.to_bytes())
        except OSError as e:
            raise ExoUserError(str(path), f"--record: cannot write: {e.strerror}") from None

    @classmethod
    def load(cls, path: str | Path) -> Journal:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ExoUserError(str(path), f"--replay: cannot read: {e.strerror}") from None
        return cls.from_bytes(raw, str(path))


def pack_frames(frames: list[bytes]) -> bytes:
    return b"".join(_FRAME_LEN.pack(len(f)) + f for f in frames)


def unpack_frames(data: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(data):
        (n,) = _FRAME_LEN.unpack_from(data, pos)
        frames.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return frames
