"""--trace: calls as spans with durations, arguments and results, one track per user-level thread,
IPC flow arrows, every transition accounted for, valid Chrome trace JSON (exo/trace_format.py),
bounded, deterministic; and the format checker itself."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import ROOT, WITNESS, make_app
from test_echo import run_exo

from exo.trace_format import problems

ECHO = str(ROOT / "guest_apps" / "echo")


def _boot_traced(tmp_path, app: str, name: str, *extra: str, stdin: bytes = b"hi\nthere\n"):
    out = tmp_path / name
    r = run_exo("boot", app, "--trace", str(out), "--stats-json", str(tmp_path / f"{name}.stats"), *extra,
                stdin=stdin, cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    return out, json.loads((tmp_path / f"{name}.stats").read_text())


def transitions_of(doc: dict) -> dict[str, int]:
    """The transitions a Chrome trace accounts for: instants, and those each span lists."""
    c: Counter[str] = Counter()
    for e in doc["traceEvents"]:
        if e["ph"] == "i":
            c[e["cat"]] += 1
        elif e["ph"] == "X":
            c.update(e["args"].get("transitions", []))
    return dict(c)


def counted(stats: dict) -> dict[str, int]:
    return {k: v for k, v in stats["transitions"].items() if v}


def spans(doc: dict, **match) -> list[dict]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and all(e.get(k) == v for k, v in match.items())]


def test_chrome_trace_is_valid_and_accounts_for_every_transition(tmp_path):
    path, stats = _boot_traced(tmp_path, ECHO, "t.json")
    doc = json.loads(path.read_text())
    assert problems(doc) == []
    assert transitions_of(doc) == counted(stats)
    writes = spans(doc, name="console_write")
    assert len(writes) == stats["hypercalls"]["console_write"] > 0
    for e in writes:  # the call's arguments by their ABI names, and its result
        assert e["cat"] == "hypercall" and {"buf", "len", "result"} <= set(e["args"])
        assert e["args"]["result"] == e["args"]["len"] and e["args"]["transitions"] == ["hypercall"]
    running = spans(doc, cat="context_switch")
    assert [(e["pid"], e["args"]["env"]) for e in running] == [(0, 1)]  # the vCPU ran echo from start to end
    assert running[0]["dur"] * 1000 == pytest.approx(stats["guest_instructions"], abs=1)
    names = {(e["pid"], e["tid"], e["args"]["name"]) for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert names == {(0, 0, "running"), (1, 1_000_000, "main")}
    assert doc["otherData"]["dropped"] == 0


def test_a_call_that_waits_lasts_as_long_as_its_wait(tmp_path):
    # primes: a pipeline of environments passing numbers by IPC, each waiting in ipc_recv
    path, stats = _boot_traced(tmp_path, str(ROOT / "guest_apps" / "primes"), "p.json", stdin=b"")
    doc = json.loads(path.read_text())
    assert problems(doc) == []
    assert transitions_of(doc) == counted(stats)
    waited = [e for e in spans(doc, name="ipc.recv") if e["args"].get("waited")]
    assert waited and all(e["dur"] > 0 for e in waited)
    # IPC arrows: each message sent by ipc_try_send ends at the ipc_recv that took it, in another environment
    ends = {}
    for e in spans(doc, cat="flow"):
        ends.setdefault(e["bind_id"], []).append(e)
    assert len(ends) == stats["hypercalls"]["ipc_try_send"] - sum(
        1 for e in spans(doc, name="ipc_try_send") if e["args"]["result"] != 0)
    for out, into in (sorted(v, key=lambda e: not e.get("flow_out")) for v in ends.values()):
        assert out["flow_out"] and into["flow_in"] and out["pid"] != into["pid"] and out["ts"] <= into["ts"]


def test_threads_get_their_own_tracks_and_the_scheduler_track_shows_who_ran(tmp_path):
    path, stats = _boot_traced(tmp_path, str(ROOT / "guest_apps" / "threads"), "th.json", stdin=b"")
    doc = json.loads(path.read_text())
    assert problems(doc) == []
    assert transitions_of(doc) == counted(stats)
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name" and e["pid"] == 1}
    assert set(names.values()) >= {"main", "thread 1", "thread 2", "thread 3", "thread 4", "threads"}
    by_track = Counter(names[e["tid"]] for e in spans(doc, cat="libcall"))
    assert all(by_track[f"thread {t}"] > 0 for t in (1, 2, 3, 4))  # each thread's own calls on its track
    ran = spans(doc, cat="thread")
    assert {e["name"] for e in ran} >= {"main", "thread 1", "thread 4"} and all(e["dur"] > 0 for e in ran)
    assert {names[e["tid"]] for e in ran} == {"threads"}
    ends = sorted((e["ts"], e["ts"] + e["dur"]) for e in ran)
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(ends, ends[1:]))  # one thread at a time


def test_jsonl_trace_is_deterministic_but_for_host_time(tmp_path):
    a, _ = _boot_traced(tmp_path, ECHO, "a.jsonl")
    b, _ = _boot_traced(tmp_path, ECHO, "b.jsonl")
    ra = [json.loads(line) for line in a.read_text().splitlines()]
    rb = [json.loads(line) for line in b.read_text().splitlines()]
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        x.pop("host_ns")
        y.pop("host_ns")
    assert ra == rb
    first = ra[0]
    assert (first["ph"], first["kind"], first["env"], first["thread"], first["name"], first["args"]["result"]) == \
        ("X", "hypercall", 1, 0, "console_read", len(b"hi\nthere\n"))
    assert ra[-1]["kind"] == "context_switch" and ra[-1]["guest_ns"] == 0  # the vCPU's slice closes last


def test_ring_buffer_keeps_the_newest_events(tmp_path):
    path, stats = _boot_traced(tmp_path, ECHO, "small.json", "--trace-capacity", "3")
    doc = json.loads(path.read_text())
    events = [e for e in doc["traceEvents"] if e["ph"] != "M"]
    assert len(events) == 3 and doc["otherData"]["dropped"] > 0
    assert problems(doc) == []
    assert {e["name"] for e in events} >= {"sched_op"}  # the exit is among the newest


def test_trace_of_two_environments(tmp_path):
    a = make_app(tmp_path, "w1", WITNESS)
    b = make_app(tmp_path, "w2", WITNESS)
    out = tmp_path / "two.json"
    r = run_exo("boot", str(a), str(b), "--trace", str(out), cache=str(tmp_path / "c"))
    assert r.returncode == 0 and r.stdout == b"ok\nok\n"
    doc = json.loads(out.read_text())
    assert problems(doc) == []
    calls = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["pid"] != 0]
    assert {e["pid"] for e in calls} == {1, 2} and {e["tid"] for e in calls} == {1_000_000, 2_000_000}
    switches = spans(doc, cat="context_switch")
    assert len(switches) >= 10 and {e["args"]["env"] for e in switches} == {1, 2}  # they yield to each other
    ends = sorted((e["ts"], e["ts"] + e["dur"]) for e in switches)
    assert all(x[1] <= y[0] + 1e-9 for x, y in zip(ends, ends[1:]))  # one environment at a time


def test_bad_trace_file_name(tmp_path):
    r = run_exo("boot", ECHO, "--trace", str(tmp_path / "t.txt"), cache=str(tmp_path / "c"))
    assert r.returncode == 2 and b"must end in .json" in r.stderr


# ------------------------------------------------------------- the format checker
def _doc(*events, dropped=0):
    meta = [{"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "t"}},
            {"ph": "M", "pid": 1, "tid": 2, "name": "thread_name", "args": {"name": "u"}}]
    return {"traceEvents": meta + list(events), "otherData": {"dropped": dropped}}


def _x(ts, dur, tid=1, **kw):
    return {"ph": "X", "pid": 1, "tid": tid, "name": "c", "ts": ts, "dur": dur, **kw}


@pytest.mark.parametrize("doc, problem", [
    ([], "not an object"),
    (_doc(_x(0, 10), _x(5, 10)), "without nesting"),
    (_doc(_x(0, -1)), "dur -1"),
    (_doc({"ph": "Q", "pid": 1, "tid": 1, "name": "c", "ts": 0}), "unknown ph"),
    (_doc({"ph": "i", "pid": 1, "tid": 1, "name": "c", "ts": 0, "s": "x"}), "instant scope"),
    (_doc(_x(0, 1, tid=3)), "no thread_name"),
    (_doc(_x(0, 1), {"ph": "X", "pid": 2, "tid": 1, "name": "c", "ts": 2, "dur": 0}), "tid 1 is in pid 1 and pid 2"),
    (_doc(_x(0, 1, args={"v": 1 << 60})), "exactly representable"),
    (_doc(_x(0, 0, bind_id=1, flow_out=True)), "1 start(s) and 0 end(s)"),
    (_doc(_x(5, 0, bind_id=1, flow_out=True), _x(1, 0, tid=2, bind_id=1, flow_in=True)), "before it leaves"),
    (_doc(_x(0, 0, bind_id=1)), "without flow_in or flow_out"),
])
def test_the_checker_finds_what_breaks_the_format(doc, problem):
    found = problems(doc)
    assert any(problem in p for p in found), found


def test_the_checker_accepts_nesting_zero_length_calls_and_dropped_ends():
    doc = _doc(_x(0, 10), _x(0, 10), _x(2, 3), _x(5, 0), _x(10, 0), _x(10, 4),
               _x(3, 0, tid=2, bind_id=7, flow_out=True), _x(4, 0, bind_id=7, flow_in=True))
    assert problems(doc) == []
    assert problems(_doc(_x(3, 0, tid=2, bind_id=8, flow_in=True), dropped=5)) == []


# ------------------------------------------------------- under the OS structures
STRUCTURES = ("exokernel", "monolithic", "xen-pv", "microkernel")


def _workload(tmp_path, workload: str, structure: str, trace=None) -> dict:
    from benchmarks.ring_transitions import boot

    stats, _ = boot(workload, structure, 3, tmp_path, trace=str(trace) if trace else None)
    return stats


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("workload", ["udp", "fault", "pipeline"])
def test_tracing_changes_no_count_and_each_structure_traces_validly(tmp_path, workload, structure):
    import shutil

    from conftest import need_tool

    if workload == "pipeline":
        need_tool(shutil.which("busybox") is not None, "busybox is not installed (apt-get install busybox-static)")
    plain = _workload(tmp_path, workload, structure)
    path = tmp_path / "t.json"
    traced = _workload(tmp_path, workload, structure, path)
    assert (traced["transitions"], traced["hypercalls"]) == (plain["transitions"], plain["hypercalls"])
    doc = json.loads(path.read_text())
    assert problems(doc) == []
    assert transitions_of(doc) == counted(traced)
    services = spans(doc, cat="service")
    if structure in ("xen-pv", "microkernel") and workload != "fault":
        # the guest kernel's or the server's instructions run inside the call: it takes guest time
        assert services and all(e["dur"] > 0 and e["args"]["result"] != "unfinished" for e in services)
    flows = Counter(e["name"] for e in spans(doc, cat="flow"))
    if structure == "microkernel":
        # each call reaches its server; a reply comes back to all but the calls that wait (the
        # client is parked and calls again when woken)
        assert flows["call out"] == flows["call in"] >= flows["reply out"] == flows["reply in"] > 0
    else:
        assert not flows
