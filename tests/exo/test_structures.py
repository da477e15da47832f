"""OS structures: the same binary, the documented transitions per service call, identical output."""

from __future__ import annotations

import json

import pytest
from conftest import make_app
from test_echo import run_exo

from benchmarks.ring_transitions import measure
from exo.structures import CROSSINGS, STRUCTURES, crossings

PRINT = """
section .text
_start:
    lea rdi, [rip + fmt]
    mov rsi, 7
    call LIB_CONSOLE_PRINTF
    call LIB_CORE_NULL
    mov rdi, rax
    call LIB_CORE_EXIT
section .rodata
fmt: db "seven=%d", 10, 0
"""

# Per null service call: the table in docs/experiments.md.
EXPECTED_NULL = {
    "exokernel": ({"libcall": 1}, 0, 0),
    "monolithic": ({"syscall": 1}, 2, 0),
    "xen-pv": ({"trap": 1, "upcall": 1, "hypercall": 1}, 4, 0),
    "microkernel": ({"hypercall": 2, "context_switch": 2}, 4, 2),
}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_same_binary_same_output(tmp_path, structure):
    d = make_app(tmp_path, "p", PRINT, libos={"console": "buffered"})
    r = run_exo("boot", str(d), "--structure", structure, "--stats-json", str(tmp_path / "s.json"),
                cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"seven=7\n"
    stats = json.loads((tmp_path / "s.json").read_text())
    assert [e["name"] for e in stats["envs"]][:1] == ["p"]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_null_call_transitions_are_exact(structure):
    row = measure("null", structure, n=20, repeat=1)
    kinds, cross, switches = EXPECTED_NULL[structure]
    got = {k: v for k, v in row.per_op.items() if v}
    assert got == kinds
    assert row.crossings == cross
    assert row.per_op["context_switch"] == switches


def test_write_makes_the_console_hypercall_where_the_structure_says():
    rows = {s: measure("write", s, n=20, repeat=1) for s in STRUCTURES}
    assert rows["exokernel"].hypercalls == {"console_write": 1.0}  # the library's own hypercall
    assert rows["monolithic"].hypercalls == {} and rows["monolithic"].per_op["kcall"] == 1  # inside the kernel
    assert rows["xen-pv"].hypercalls == {"console_write": 1.0, "svc_return": 1.0}
    assert rows["microkernel"].hypercalls == {"console_write": 1.0, "ipc_call": 1.0, "svc_reply_wait": 1.0}
    assert [rows[s].crossings for s in STRUCTURES] == [2, 2, 6, 6]


def test_crossings_weights():
    assert crossings({"hypercall": 3, "trap": 2, "libcall": 9}) == 3 * CROSSINGS["hypercall"] + 2
    assert CROSSINGS["libcall"] == CROSSINGS["kcall"] == CROSSINGS["context_switch"] == 0


def test_experiment_command_runs_a_small_configuration(tmp_path):
    out = tmp_path / "r.json"
    r = run_exo("experiment", "ring-transitions", "--workloads", "null,write", "--structures",
                "exokernel,microkernel", "--ops", "10", "--repeat", "1", "--json", str(out), "--csv",
                str(tmp_path / "r.csv"), cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    rows = json.loads(out.read_text())
    assert [(x["workload"], x["structure"]) for x in rows] == [
        ("null", "exokernel"), ("null", "microkernel"), ("write", "exokernel"), ("write", "microkernel")]
    assert all(isinstance(x["host_us"]["median"], float) and len(x["host_us"]["samples"]) == 1 for x in rows)
    assert (tmp_path / "r.csv").read_text().startswith("workload,structure,crossings")
    assert b"null" in r.stdout
    # Every input's hash is recorded (issue 18 part 5): the same workload, the same hashes.
    assert all(set(x["inputs"]) == {"source", "libos"} and len(x["inputs"]["source"]) == 64 for x in rows)
    assert rows[0]["inputs"] == rows[1]["inputs"] != rows[2]["inputs"]


def test_a_disk_workload_records_its_reproducible_image_hash(tmp_path):
    import time

    from benchmarks.ring_transitions import inputs_of

    a = inputs_of("file", tmp_path / "a")
    time.sleep(1.1)  # the files are written again, a second later: their times must not matter
    b = inputs_of("file", tmp_path / "b")
    assert a["disk"] == b["disk"] and len(a["disk"]) == 64


def test_experiment_rejects_unknown_names(tmp_path):
    r = run_exo("experiment", "ring-transitions", "--structures", "bsd", cache=str(tmp_path / "c"))
    assert r.returncode == 2 and b"unknown 'bsd'" in r.stderr


def test_page_fault_paths_per_structure():
    rows = {s: measure("fault", s, n=10, repeat=1) for s in STRUCTURES}
    # microkernel: the fault is an IPC to the pager server, which allocates a page in its own space
    # and grants it to the client (page_grant), then replies: 7 crossings, 2 context switches
    assert {k: v for k, v in rows["microkernel"].per_op.items() if v} == {
        "trap": 1.0, "hypercall": 3.0, "context_switch": 2.0}
    assert rows["microkernel"].hypercalls == {"page_alloc": 1.0, "page_grant": 1.0, "svc_reply_wait": 1.0}
    assert rows["microkernel"].crossings == 7
    # exokernel: trap, upcall into the library's handler, its page_alloc hypercall
    assert rows["exokernel"].hypercalls == {"page_alloc": 1.0}
    assert rows["exokernel"].crossings == 4
    # monolithic: a round trip into the kernel's pager, which maps the page in ring 0
    assert {k: v for k, v in rows["monolithic"].per_op.items() if v} == {"syscall": 1.0, "kcall": 1.0}
    assert rows["monolithic"].crossings == 2
    # xen-pv: trap to the hypervisor, bounce to the guest kernel, page_alloc, svc_return
    assert rows["xen-pv"].hypercalls == {"page_alloc": 1.0, "svc_return": 1.0}
    assert rows["xen-pv"].crossings == 6


# One UDP round trip between two apps over the switch (lat_udp): the client's sendto and recvfrom,
# the server's recvfrom and sendto, and the two receives that waited and ran again when woken.
EXPECTED_UDP = {
    "exokernel": ({"libcall": 6, "hypercall": 14, "context_switch": 2},
                  {"time_now": 8, "net_send": 2, "net_wait": 4}, 28),
    "monolithic": ({"syscall": 6, "kcall": 14, "context_switch": 2}, {}, 12),  # the stack in ring 0
    "xen-pv": ({"trap": 4, "upcall": 4, "hypercall": 18, "context_switch": 2},
               {"time_now": 8, "net_send": 2, "net_wait": 4, "svc_return": 4}, 44),
    # the network server: each call an ipc_call and its reply, a wait parks the client, not the server
    "microkernel": ({"hypercall": 24, "context_switch": 12},
                    {"ipc_call": 6, "svc_reply_wait": 6, "time_now": 8, "net_send": 2, "net_wait": 2}, 48),
}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_udp_round_trip_takes_each_structures_service_path(structure):
    row = measure("udp", structure, n=10, repeat=1)
    kinds, hypercalls, cross = EXPECTED_UDP[structure]
    assert {k: v for k, v in row.per_op.items() if v} == kinds
    assert row.hypercalls == hypercalls
    assert row.crossings == cross


def test_tcp_stream_with_threads_under_every_structure():
    """64 KiB sends (bw_tcp) between two apps that link the thread library: a receive that waits
    parks the calling thread (sched.block_restart) in the library, in the kernel, in the guest
    kernel, or by the network server's reply; the receiver checks every byte arrived."""
    rows = {s: measure("tcp", s, n=8, repeat=1) for s in STRUCTURES}
    assert [rows[s].crossings for s in STRUCTURES] == [85.5, 79.75, 112.5, 112.5]
    ex, mono, xen, micro = (rows[s].per_op for s in STRUCTURES)
    assert ex["syscall"] == ex["trap"] == 0 and ex["libcall"] == 15  # socket calls are library calls
    assert mono["syscall"] == 6.75 and mono["kcall"] > 0  # socket calls trap into the kernel's stack
    assert xen["trap"] == 6.75 and rows["xen-pv"].hypercalls["svc_return"] == 6.75
    assert rows["microkernel"].hypercalls["ipc_call"] == rows["microkernel"].hypercalls["svc_reply_wait"] == 6.75
    assert micro["context_switch"] == ex["context_switch"] + 2 * 6.75


@pytest.mark.parametrize("structure", STRUCTURES)
def test_threaded_tcp_server_serves_under_every_structure(tmp_path, structure):
    """tcp_echo (a user-level thread per connection) and nettest over the switch: the socket calls
    reach the stack the structure's way (counted below), and the threads still take turns."""
    from conftest import ROOT

    r = run_exo("boot", str(ROOT / "guest_apps" / "tcp_echo"), str(ROOT / "guest_apps" / "nettest"),
                "--net", "switch", "--structure", structure, "--args", "nettest=tcp 10.0.2.15 7 100000",
                "--stats-json", str(tmp_path / "s.json"), "--", "1", cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    assert b"100000 bytes echoed intact" in r.stdout
    t = json.loads((tmp_path / "s.json").read_text())["transitions"]
    path = {"exokernel": "libcall", "monolithic": "syscall", "xen-pv": "trap", "microkernel": "hypercall"}[structure]
    assert t[path] > 0
    if structure == "microkernel":
        hcs = json.loads((tmp_path / "s.json").read_text())["hypercalls"]
        assert hcs["ipc_call"] > 20 and "net_send" in hcs


@pytest.mark.parametrize("structure", ["monolithic", "xen-pv", "microkernel"])
def test_cow_fork_works_under_other_structures(tmp_path, structure):
    from conftest import ROOT

    r = run_exo("boot", str(ROOT / "guest_apps" / "cowtest"), "--structure", structure, cache=str(tmp_path))
    ref = run_exo("boot", str(ROOT / "guest_apps" / "cowtest"), cache=str(tmp_path))
    assert r.returncode == ref.returncode == 0
    assert r.stdout == ref.stdout and b"private" in r.stdout


def test_experiment_plot(tmp_path):
    import importlib.util

    from conftest import need_tool

    need_tool(importlib.util.find_spec("matplotlib") is not None, "matplotlib is not installed")
    out = tmp_path / "crossings.png"
    r = run_exo("experiment", "ring-transitions", "--workloads", "null", "--ops", "5", "--repeat", "1",
                "--plot", str(out), cache=str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_grant_moves_a_frame_with_its_ownership_only_from_the_pager():
    """L4's grant (page_grant): only the client's pager may, only a frame it owns and maps once,
    with no more rights; the frame changes owner (and app quota) and leaves the pager."""
    from exo.abi import PERM_R, PERM_W, Errno
    from exo.hypercalls import BY_NAME
    from exo.kernel import Exokernel
    from hw import Machine

    k = Exokernel(Machine(16 << 20), on_fault=lambda r: None)
    free0 = k.frames.free_count
    pager, client, other = k.create_env("pager", system=True), k.create_env("client"), k.create_env("other")

    def hc(env, name, *args):
        return k.dispatch(env, BY_NAME[name], args)

    va, va2 = 0x60_0000, 0x61_0000
    assert hc(pager, "page_alloc", 0, va, PERM_R | PERM_W) == 0
    frame = pager.space.lookup(va)[0]
    assert hc(pager, "page_grant", client.id, va, va, PERM_R | PERM_W) == -Errno.EPERM  # not its pager
    client.pager = pager.id
    assert hc(other, "page_grant", client.id, va, va, PERM_R | PERM_W) == -Errno.EPERM
    assert hc(pager, "page_grant", 999, va, va, PERM_R) == -Errno.ESRCH
    assert hc(pager, "page_grant", client.id, va2, va, PERM_R) == -Errno.EINVAL  # nothing there
    assert hc(pager, "page_map", 0, va, 0, va2, PERM_R) == 0  # shared: the pager would keep it
    assert hc(pager, "page_grant", client.id, va, va, PERM_R) == -Errno.EPERM
    assert hc(pager, "page_unmap", 0, va2) == 0
    assert hc(pager, "page_alloc", 0, va2, PERM_R) == 0  # a read-only page cannot be granted writable
    assert hc(pager, "page_grant", client.id, va2, va2, PERM_R | PERM_W) == -Errno.EPERM
    quota = client.tenant.frame_limit
    client.tenant.frame_limit = client.tenant.frames_used  # the client's app is at its frame quota
    assert hc(pager, "page_grant", client.id, va, va, PERM_R | PERM_W) == -Errno.ENOMEM
    assert k.frames.owner[frame] == pager.id and pager.space.lookup(va)[0] == frame
    client.tenant.frame_limit = quota

    def owned(env):
        return sum(1 for o in k.frames.owner if o == env.id)

    assert client.tenant.frames_used == owned(client)
    assert hc(pager, "page_grant", client.id, va, va, PERM_R | PERM_W) == 0
    assert pager.space.lookup(va) is None and client.space.lookup(va)[0] == frame
    assert k.frames.owner[frame] == client.id and k.frames.refs[frame] == 1
    assert client.tenant.frames_used == owned(client)  # charged to the client's app, page tables too
    for env in (client, pager, other):
        k.destroy(env, exit_status=0)
    assert k.frames.free_count == free0  # every frame given back, the granted one with its client
