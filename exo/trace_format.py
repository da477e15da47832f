"""Checking a Chrome trace-event JSON document against the format's rules.

The rules are those of the Trace Event Format document (Google, "Trace Event
Format", 2016, the format chrome://tracing and Perfetto's JSON importer read)
that exo's traces use, plus what Perfetto needs to draw them as written:

* a document is an object with a ``traceEvents`` list (``displayTimeUnit``, if
  present, is "ms" or "ns");
* every event has a known ``ph``, a string ``name``, integer ``pid`` and
  ``tid``; every event but metadata has a number ``ts`` (microseconds) >= 0;
* complete events (``X``) have ``dur`` >= 0; instants (``i``) have scope
  ``s`` in g, p, t; metadata (``M``) names a process or thread
  (``process_name``/``thread_name`` with ``args.name``, or a sort index);
* ``args`` is an object, and every integer in it is exactly representable as
  a double (|n| < 2**53: JSON readers, Perfetto's included, keep doubles);
* the complete events of one thread nest: one that starts inside another ends
  inside it (Perfetto drops an improperly nested slice);
* flow events v2 (``bind_id`` with ``flow_out``/``flow_in`` on a complete
  event): every flow id leaves once and arrives once, not before it left
  (one end may be missing when ``otherData.dropped`` says events were dropped);
* a ``tid`` belongs to one ``pid``, and every thread with events is named.

``problems(doc)`` lists what breaks a rule (empty: the document is valid).
Pure data: nothing here runs a guest.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

PHASES = {"X", "B", "E", "i", "I", "M", "C", "s", "t", "f", "b", "e", "n"}
METADATA = {"process_name", "thread_name", "process_sort_index", "thread_sort_index", "process_labels"}
_LIMIT = 1 << 53


def _ints_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_LIMIT < value < _LIMIT
    if isinstance(value, dict):
        return all(_ints_ok(v) for v in value.values())
    if isinstance(value, list):
        return all(_ints_ok(v) for v in value)
    return True


def problems(doc: Any, limit: int = 20) -> list[str]:
    """What in ``doc`` breaks the format's rules, at most ``limit`` lines."""
    out: list[str] = []

    def bad(i: int, what: str) -> None:
        if len(out) < limit:
            out.append(f"event {i}: {what}")

    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not an object with a traceEvents list"]
    if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        out.append(f"displayTimeUnit {doc['displayTimeUnit']!r} is not ms or ns")
    owner: dict[int, int] = {}
    named: set[tuple[int, int]] = set()
    used: set[tuple[int, int]] = set()
    slices: dict[tuple[int, int], list[tuple[float, float, int]]] = defaultdict(list)
    flows_out: dict[Any, list[float]] = defaultdict(list)
    flows_in: dict[Any, list[float]] = defaultdict(list)
    for i, e in enumerate(doc["traceEvents"]):
        if not isinstance(e, dict):
            bad(i, "not an object")
            continue
        ph = e.get("ph")
        if ph not in PHASES:
            bad(i, f"unknown ph {ph!r}")
            continue
        if not isinstance(e.get("name"), str):
            bad(i, "name is not a string")
        pid, tid = e.get("pid"), e.get("tid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            bad(i, "pid is not an integer")
            continue
        if tid is not None and (not isinstance(tid, int) or isinstance(tid, bool)):
            bad(i, "tid is not an integer")
            continue
        if tid is not None and owner.setdefault(tid, pid) != pid:
            bad(i, f"tid {tid} is in pid {owner[tid]} and pid {pid}")
        if "args" in e and not isinstance(e["args"], dict):
            bad(i, "args is not an object")
        elif not _ints_ok(e.get("args", {})):
            bad(i, "an integer in args is not exactly representable as a double")
        if ph == "M":
            if e.get("name") not in METADATA:
                bad(i, f"unknown metadata {e.get('name')!r}")
            elif e["name"].endswith("_name") and not isinstance(e.get("args", {}).get("name"), str):
                bad(i, "a name record without args.name")
            elif e["name"] == "thread_name":
                named.add((pid, tid))
            continue
        ts = e.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts < 0:
            bad(i, f"ts {ts!r} is not a number >= 0")
            continue
        if tid is None:
            bad(i, "no tid")
            continue
        used.add((pid, tid))
        if ph == "X":
            dur = e.get("dur")
            if not isinstance(dur, (int, float)) or isinstance(dur, bool) or dur < 0:
                bad(i, f"dur {dur!r} is not a number >= 0")
                continue
            # Perfetto keeps times as integer nanoseconds: compare them so, not as sums of doubles
            slices[(pid, tid)].append((round(ts * 1000), round((ts + dur) * 1000), i))
            if "bind_id" in e:
                if e.get("flow_out"):
                    flows_out[e["bind_id"]].append(ts)
                if e.get("flow_in"):
                    flows_in[e["bind_id"]].append(ts)
                if not e.get("flow_out") and not e.get("flow_in"):
                    bad(i, "bind_id without flow_in or flow_out")
        elif ph in ("i", "I") and e.get("s", "t") not in ("g", "p", "t"):
            bad(i, f"instant scope {e.get('s')!r} is not g, p or t")
    for track, spans in slices.items():
        stack: list[tuple[float, int]] = []  # (end, event index) of the open enclosing slices
        for start, end, i in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]), s[2])):
            while stack and start >= stack[-1][0] and not (start == end == stack[-1][0]):
                stack.pop()
            if stack and end > stack[-1][0]:
                bad(i, f"slice [{start}, {end}] ns on pid/tid {track} overlaps event {stack[-1][1]} "
                       f"ending at {stack[-1][0]} ns without nesting in it")
                continue
            stack.append((end, i))
    truncated = bool(doc.get("otherData", {}).get("dropped")) if isinstance(doc.get("otherData"), dict) else False
    for fid in sorted(set(flows_out) | set(flows_in), key=str):
        o, n = flows_out.get(fid, []), flows_in.get(fid, [])
        if truncated and len(o) + len(n) == 1:
            continue  # the other end was among the events a bounded buffer dropped
        if len(o) != 1 or len(n) != 1:
            out.append(f"flow {fid}: {len(o)} start(s) and {len(n)} end(s), not one of each")
        elif n[0] < o[0]:
            out.append(f"flow {fid}: arrives at {n[0]} before it leaves at {o[0]}")
    for pid, tid in sorted(used - named):
        out.append(f"thread pid {pid} tid {tid} has events but no thread_name")
    return out[:limit]
