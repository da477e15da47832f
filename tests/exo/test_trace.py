"""--trace: every transition recorded, bounded, valid Chrome trace JSON or JSON lines, deterministic."""

from __future__ import annotations

import json

from conftest import ROOT, WITNESS, make_app
from test_echo import run_exo

ECHO = str(ROOT / "guest_apps" / "echo")


def _boot_traced(tmp_path, name: str, *extra: str, stdin: bytes = b"hi\nthere\n"):
    out = tmp_path / name
    r = run_exo("boot", ECHO, "--trace", str(out), "--stats-json", str(tmp_path / f"{name}.stats"), *extra,
                stdin=stdin, cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    return out, json.loads((tmp_path / f"{name}.stats").read_text())


def test_chrome_trace_is_valid_and_complete(tmp_path):
    path, stats = _boot_traced(tmp_path, "t.json")
    doc = json.loads(path.read_text())
    assert json.loads(json.dumps(doc)) == doc  # round-trips
    events = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert len(events) == sum(stats["transitions"].values())
    for e in events:
        assert {"ph", "s", "pid", "tid", "cat", "name", "ts", "args"} <= set(e)
        assert e["cat"] in stats["transitions"]
    names = [e["name"] for e in events if e["cat"] == "hypercall"]
    assert names.count("console_read") == stats["hypercalls"]["console_read"]
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)  # guest time never runs backwards
    assert sum(e["args"]["insns"] for e in events) <= stats["guest_instructions"]
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"]
    assert meta == [{"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "1 echo"}}]
    assert doc["otherData"]["dropped"] == 0


def test_jsonl_trace_is_deterministic_but_for_host_time(tmp_path):
    a, _ = _boot_traced(tmp_path, "a.jsonl")
    b, _ = _boot_traced(tmp_path, "b.jsonl")
    ra = [json.loads(line) for line in a.read_text().splitlines()]
    rb = [json.loads(line) for line in b.read_text().splitlines()]
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        x.pop("host_ns")
        y.pop("host_ns")
    assert ra == rb
    assert ra[0] == {"kind": "context_switch", "env": 1, "name": "echo", "insns": 0, "guest_ns": 0}


def test_ring_buffer_keeps_the_newest_events(tmp_path):
    path, stats = _boot_traced(tmp_path, "small.json", "--trace-capacity", "3")
    doc = json.loads(path.read_text())
    events = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    total = sum(stats["transitions"].values())
    assert len(events) == 3 and doc["otherData"]["dropped"] == total - 3
    assert events[-1]["name"] == "sched_op"  # the exit is the newest


def test_trace_of_two_environments(tmp_path):
    a = make_app(tmp_path, "w1", WITNESS)
    b = make_app(tmp_path, "w2", WITNESS)
    out = tmp_path / "two.json"
    r = run_exo("boot", str(a), str(b), "--trace", str(out), cache=str(tmp_path / "c"))
    assert r.returncode == 0 and r.stdout == b"ok\nok\n"
    events = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "i"]
    assert {e["tid"] for e in events} == {1, 2}
    switches = [e for e in events if e["cat"] == "context_switch"]
    assert len(switches) >= 10  # they yield to each other


def test_bad_trace_file_name(tmp_path):
    r = run_exo("boot", ECHO, "--trace", str(tmp_path / "t.txt"), cache=str(tmp_path / "c"))
    assert r.returncode == 2 and b"must end in .json" in r.stderr
