"""Tracing every ring transition into a bounded ring buffer.

Each event: kind (hypercall, reflect, libcall, trap, upcall, interrupt, context_switch),
environment, name (hypercall, Linux system call or library entry, trap name), guest instructions
retired since the previous event, guest time, and host nanoseconds. The buffer
keeps the newest ``capacity`` events (older ones are counted as dropped), so
memory stays bounded on long runs.

Written as Chrome trace-event JSON (``.json``: opens in Perfetto and
chrome://tracing; one track per environment, timestamps in guest time) or as
JSON lines (``.jsonl``). Every field except ``host_ns`` is deterministic under
the virtual clock. With tracing off the accounting path pays one attribute test
per event (exo/accounting.py).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from exo.errors import ExoUserError

FORMATS = (".json", ".jsonl")


class Tracer:
    def __init__(self, instructions: Callable[[], int], clock_ns: Callable[[], int], capacity: int = 1_000_000):
        if capacity <= 0:
            raise ValueError(f"trace capacity must be positive, got {capacity}")
        self.events: deque[tuple] = deque(maxlen=capacity)
        self.capacity = capacity
        self.total = 0
        self._instructions = instructions
        self._clock_ns = clock_ns
        self._last = 0
        self._host = time.perf_counter_ns

    def __call__(self, kind: str, env_id: int, name: str) -> None:
        now = self._instructions()
        self.events.append((kind, env_id, name, now - self._last, self._clock_ns(), self._host()))
        self._last = now
        self.total += 1

    @property
    def dropped(self) -> int:
        return self.total - len(self.events)

    def records(self) -> list[dict]:
        return [{"kind": k, "env": e, "name": n, "insns": d, "guest_ns": g, "host_ns": h}
                for k, e, n, d, g, h in self.events]

    def write(self, path: str | Path, env_names: dict[int, str]) -> None:
        path = Path(path)
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records())
        elif path.suffix == ".json":
            text = json.dumps(self.chrome(env_names))
        else:
            raise ExoUserError(str(path), "trace file must end in .json (Chrome/Perfetto) or .jsonl (JSON lines)")
        try:
            path.write_text(text)
        except OSError as e:
            raise ExoUserError(str(path), f"cannot write: {e.strerror}") from None

    def chrome(self, env_names: dict[int, str]) -> dict:
        """Chrome trace-event format: instant events on one thread track per environment."""
        events: list[dict] = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "exo"}}]
        for eid, name in sorted(env_names.items()):
            events.append({"ph": "M", "pid": 1, "tid": eid, "name": "thread_name", "args": {"name": f"{eid} {name}"}})
        host0 = self.events[0][5] if self.events else 0
        for kind, env, name, insns, guest_ns, host in self.events:
            events.append({"ph": "i", "s": "t", "pid": 1, "tid": env, "cat": kind, "name": name or kind,
                           "ts": guest_ns / 1000,
                           "args": {"kind": kind, "insns": insns, "host_us": (host - host0) / 1000}})
        return {"traceEvents": events, "displayTimeUnit": "ns",
                "otherData": {"dropped": self.dropped, "capacity": self.capacity, "timestamps": "guest time"}}
