"""exo serve (issue 17, part 3): flows handed to instances of a snapshot, through user forwarding.

The server runs in a thread of the test (the emulator in it alone); clients are real host sockets.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import ROOT, make_app

from exo.errors import ExoUserError
from hw.paging import walk_tables

HTTPD = str(ROOT / "guest_apps" / "httpd")
TCP_ECHO = str(ROOT / "guest_apps" / "tcp_echo")
UDP_ECHO = str(ROOT / "guest_apps" / "udp_echo")


@contextmanager
def serving(app: str, net: str, args: tuple[str, ...] = (), **options):
    """Boot ``app``, snapshot it where it is ready, serve in a thread; yield (system, front end, host ports)."""
    from exo.api import System
    from exo.instances import Snapshot
    from exo.serve import FrontEnd, wait_until_ready

    system = System([app], net=net, args=list(args), ram_mib=128)
    try:
        k, env = system.kernel, system.envs[0]
        wait_until_ready(k, env)
        fe = FrontEnd(k, Snapshot(k, env), **options)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                k.run()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield system, fe, [f.host_port for f in system.nic.backend.forwards]
        finally:
            k.halt()
            thread.join(10)
        assert not thread.is_alive() and not errors, errors
        fe.close()
        assert not system.kernel.net.front_ends and fe.tick not in system.kernel.net.tickers
    finally:
        system.close()


def until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_many_concurrent_clients_are_each_served_by_a_fresh_instance():
    with serving(HTTPD, "user,hostfwd=tcp:127.0.0.1:0-:80") as (system, fe, (port,)):
        k, template = system.kernel, fe.template
        base = template.tenant.frames_used
        answers: list[bytes] = []
        lock = threading.Lock()

        def client() -> None:
            body = http_get(port)
            with lock:
                answers.append(body)

        clients = [threading.Thread(target=client) for _ in range(16)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(30)
        assert len(answers) == 16 and all(a.startswith(b"HTTP/1.0 200 OK") for a in answers)
        until(lambda: fe.stats["ended"] == 16)
        served = [eid for _, eid in fe.served]
        # every connection its own environment, none of them the template, all of them gone now
        assert len(served) == 16 and len(set(served)) == 16 and template.id not in served
        assert fe.stats["started"] == 16 and fe.stats["faulted"] == 0 and not fe.live and not fe.flows
        assert all(eid not in k.live_envs for eid in served)
        until(lambda: template.tenant.frames_used == base)  # every frame an instance had is back
        assert template.status.name == "NOT_RUNNABLE"  # the template never ran again


def _user_pages(k, env) -> bytes:
    mem = k.machine.memory
    return b"".join(mem.read(pa, 4096) for va, pa, _, _ in walk_tables(mem, env.space.root))


def _python_bytes(roots) -> bytes:
    """Every bytes/bytearray/str reachable from ``roots`` (a libOS module's state), joined."""
    seen, stack, out = set(), list(roots), []
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        if isinstance(o, (bytes, bytearray, memoryview)):
            out.append(bytes(o))
        elif isinstance(o, str):
            out.append(o.encode("utf-8", "replace"))
        else:
            stack.extend(gc.get_referents(o))
    return b"".join(out)


def test_no_byte_of_one_request_reaches_the_next_instance():
    secret = os.urandom(24).hex().encode()
    with serving(TCP_ECHO, "user,hostfwd=tcp:127.0.0.1:0-:7") as (system, fe, (port,)):
        k = system.kernel
        assert echo(port, b"A:" + secret) == b"A:" + secret  # request A, served and closed
        until(lambda: fe.stats["ended"] == 1)
        mine = b"B:" + os.urandom(8).hex().encode()
        c = socket.create_connection(("127.0.0.1", port), timeout=10)  # request B stays open
        try:
            c.sendall(mine)
            assert c.recv(100) == mine
            until(lambda: len(fe.live) == 1)
            k.halt()  # stop the machine to look inside instance B while its connection is open
            until(lambda: k.current is None and k.halted)
            (b,) = fe.live.values()
            memory = _user_pages(k, b)
            assert mine in memory  # the scan sees what B received (its receive ring, its buffers)...
            assert secret not in memory  # ...and nothing of A: not in its memory, nor in its ring
            state = _python_bytes(list(b.modules.values()))
            assert secret not in state  # nor in its libOS modules' state (socket buffers, TCP)
            assert secret not in _user_pages(k, fe.template)  # the template never saw A either
        finally:
            c.close()


FAULTY_UDP_ECHO = open(ROOT / "guest_apps" / "udp_echo" / "udp_echo.s").read().replace(
    "    js failed\n    mov rdi, r13\n    lea rsi, [rip + buf]\n    mov rdx, rax",
    "    js failed\n    cmp byte ptr [rip + buf], '!'\n    jne fine\n    mov qword ptr [0], 1   ; a request that crashes it\n"
    "fine:\n    mov rdi, r13\n    lea rsi, [rip + buf]\n    mov rdx, rax", 1)


def test_an_instance_that_faults_is_stopped_alone_and_the_next_request_gets_a_fresh_one(tmp_path):
    assert "a request that crashes it" in FAULTY_UDP_ECHO
    app = make_app(tmp_path, "crashy", FAULTY_UDP_ECHO, entry="_start", libos={"net": "tcpip", "console": "buffered"})
    with serving(str(app), "user,hostfwd=udp:127.0.0.1:0-:7") as (system, fe, (port,)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad:
            bad.sendto(b"!boom", ("127.0.0.1", port))
            until(lambda: fe.stats["faulted"] == 1)
        (report,) = system.kernel.reports
        assert "#PF" in report.kind and "crashy" in report.env_name and report.fault_address == 0
        for i in range(3):  # every later request from a fresh instance, the server still serving
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good:
                good.settimeout(10)
                good.sendto(b"ok %d" % i, ("127.0.0.1", port))
                assert good.recv(100) == b"ok %d" % i
        assert fe.stats["started"] == 4 and fe.template.alive


def test_a_flood_beyond_max_instances_waits_in_the_backlog_or_is_dropped_and_the_server_goes_on():
    with serving(TCP_ECHO, "user,hostfwd=tcp:127.0.0.1:0-:7", max_instances=2, backlog=2) as (system, fe, (port,)):
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
        try:
            until(lambda: fe.stats["queued"] == 2 and fe.stats["refused"] >= 2)
            assert len(fe.live) == 2 and fe.stats["peak_live"] == 2  # never more than allowed
            for c in held[:2]:  # the two being served answer
                c.sendall(b"x")
                assert c.recv(10) == b"x"
            for c in held[:2]:
                c.close()
            # their instances end, and the two queued connections get instances in their turn
            until(lambda: fe.stats["started"] == 4)
        finally:
            for c in held:
                c.close()
        until(lambda: not fe.live)
        assert echo(port, b"still here") == b"still here"
        assert fe.stats["peak_live"] == 2 and fe.stats["faulted"] == 0


def test_long_lived_instances_share_the_flows_round_robin_or_least_loaded():
    with serving(TCP_ECHO, "user,hostfwd=tcp:127.0.0.1:0-:7", per_request=False, instances=2) as (_, fe, (port,)):
        for i in range(4):
            assert echo(port, b"rr %d" % i) == b"rr %d" % i
        ids = [eid for _, eid in fe.served]
        assert len(set(ids)) == 2 and ids[0] != ids[1] and ids[0] == ids[2] and ids[1] == ids[3]
        assert fe.stats["started"] == 2 and len(fe.live) == 2  # they outlive their connections
    with serving(TCP_ECHO, "user,hostfwd=tcp:127.0.0.1:0-:7", per_request=False, instances=2,
                 balance="least") as (_, fe, (port,)):
        first = socket.create_connection(("127.0.0.1", port), timeout=10)  # one instance busy
        try:
            first.sendall(b"a")
            assert first.recv(10) == b"a"
            for i in range(3):  # the other one, with no flow, gets each of these
                assert echo(port, b"least %d" % i) == b"least %d" % i
                until(lambda: len(fe.flows) == 1)  # that connection seen closed (both FINs acknowledged)
        finally:
            first.close()
        ids = [eid for _, eid in fe.served]
        assert ids[1] == ids[2] == ids[3] != ids[0]


def test_a_tenant_gets_its_own_instances_and_quota():
    from exo.serve import parse_tenant

    with socket.socket() as probe:  # a free host port, to name the tenant's forward
        probe.bind(("127.0.0.1", 0))
        gold_port = probe.getsockname()[1]
    rule = parse_tenant(f"gold:hostport={gold_port},envs=1")
    with serving(TCP_ECHO, f"user,hostfwd=tcp:127.0.0.1:0-:7,hostfwd=tcp:127.0.0.1:{gold_port}-:7",
                 tenants=[rule]) as (system, fe, (port, gport)):
        g1 = socket.create_connection(("127.0.0.1", gport), timeout=10)
        g2 = None
        try:
            g1.sendall(b"g")
            assert g1.recv(10) == b"g"
            gold = system.kernel.tenants["gold"]
            assert gold.envs_used == 1 and [e.tenant for e in fe.live.values()] == [gold]
            g2 = socket.create_connection(("127.0.0.1", gport), timeout=10)  # over gold's quota: waits
            until(lambda: fe.stats["queued"] == 1)
            assert echo(port, b"others go on") == b"others go on"  # the app's own tenant is not held up
            g1.close()
            g2.sendall(b"h")
            assert g2.recv(10) == b"h"  # its turn came when g1's instance ended
        finally:
            g1.close()
            if g2 is not None:
                g2.close()
        assert fe.summary()["tenants"]["gold"]["envs"]["refused"] >= 1
        assert fe.stats["started"] == 3


def test_parse_tenant_errors_name_the_option():
    from exo.serve import parse_tenant

    for bad in ("gold", "gold:envs=2", "gold:hostport=99999", "gold:src=300.1.1.0/24", "gold:port=80,envs=x"):
        with pytest.raises(ExoUserError, match="--tenant"):
            parse_tenant(bad)
    r = parse_tenant("silver:src=127.0.0.0/8,port=80,envs=3,frames=500")
    assert r.matches(None, 80, "127.0.0.1") and not r.matches(None, 80, "10.1.1.1") and r.quota["envs"] == 3


def test_sched_op_ready_is_the_snapshot_point_and_returns_at_once_when_nobody_serves():
    from exo.api import System
    from exo.serve import ready_env, wait_until_ready

    with System([HTTPD], net="user,hostfwd=tcp:127.0.0.1:0-:80") as s:
        wait_until_ready(s.kernel, s.envs[0])
        assert s.envs[0].blocked_on == "ready" and ready_env(s.kernel, s.envs[0])
    # booted as usual, httpd passes its READY and serves (tests/libos/test_httpd*.py serve through it)
    with System([HTTPD], net="user,hostfwd=tcp:127.0.0.1:0-:80", args=["1"], clock="wall") as s:
        port = s.nic.backend.forwards[0].host_port
        t = threading.Thread(target=s.run, daemon=True)
        t.start()
        assert http_get(port).startswith(b"HTTP/1.0 200 OK")
        t.join(20)
        assert s.result().exit_status == 0


def _serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exo", "serve", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_cli_serves_n_requests_and_writes_its_counts(tmp_path):
    stats = tmp_path / "serve.json"
    p = _serve(TCP_ECHO, "--net", "user,hostfwd=tcp:127.0.0.1:0-:7", "--requests", "3", "--stats-json", str(stats))
    try:
        line = p.stderr.readline()
        assert line.startswith("exo: net: tcp 127.0.0.1:"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        assert "ready after" in p.stderr.readline()
        for i in range(3):
            assert echo(port, b"cli %d" % i) == b"cli %d" % i
        assert p.wait(30) == 0
    finally:
        p.kill()
    out = json.loads(stats.read_text())
    assert out["flows"] == 3 and out["started"] == 3 and out["mode"] == "per-request"
    assert "flows 3, started 3" in p.stderr.read()


@pytest.mark.parametrize("args, message", [
    ((str(ROOT / "guest_apps" / "echo"), "--net", "user"), "cannot be served: it ended"),
    ((TCP_ECHO, "--net", "switch"), "--net"),
    ((TCP_ECHO, "--net", "user", "--tenant", "gold"), "--tenant"),
    ((TCP_ECHO, "--net", "user", "--instances", "2", "--tenant", "g:port=7"), "needs --per-request"),
])
def test_the_cli_refuses_what_it_cannot_serve_in_one_line(args, message):
    p = _serve(*args)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_an_instance_over_its_tenants_frame_quota_is_stopped_its_client_reset_and_others_served():
    from exo.serve import parse_tenant

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tiny_port = probe.getsockname()[1]
    # enough frames to start an instance, not to copy the receive-ring pages a large request fills
    rule = parse_tenant(f"tiny:hostport={tiny_port},frames=32")
    with serving(TCP_ECHO, f"user,hostfwd=tcp:127.0.0.1:0-:7,hostfwd=tcp:127.0.0.1:{tiny_port}-:7",
                 tenants=[rule]) as (system, fe, (port, tport)):
        for i in range(2):  # each try a fresh instance, each stopped by the quota, never the server
            with socket.create_connection(("127.0.0.1", tport), timeout=10) as c:
                got = b""
                try:
                    c.sendall(bytes(256 << 10))
                    while chunk := c.recv(65536):
                        got += chunk
                except (ConnectionResetError, BrokenPipeError):
                    pass
                assert len(got) < 256 << 10  # reset (or closed) before the end: its instance was stopped
            until(lambda i=i: fe.stats["faulted"] == i + 1)
        assert len(system.kernel.reports) == 2 and all("frame quota of app 'tiny' exhausted" in r.reason
                   for r in system.kernel.reports), [r.reason for r in system.kernel.reports]
        assert fe.stats["resets_sent"] >= 1
        assert echo(port, b"the others are served") == b"the others are served"
        assert system.kernel.tenants["tiny"].frames_used == 0  # what its instances had is back


def test_a_flow_no_instance_could_ever_take_is_refused_at_once_with_the_reason():
    from exo.serve import parse_tenant

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        none_port = probe.getsockname()[1]
    rule = parse_tenant(f"none:hostport={none_port},frames=8")  # not even an instance's page tables
    said: list[str] = []
    with serving(TCP_ECHO, f"user,hostfwd=tcp:127.0.0.1:0-:7,hostfwd=tcp:127.0.0.1:{none_port}-:7",
                 tenants=[rule]) as (system, fe, (port, nport)):
        fe.on_refusal = said.append
        try:  # a reset or an end, at once (the connect itself may see it): not a wait for a turn
            with socket.create_connection(("127.0.0.1", nport), timeout=5) as c:
                c.sendall(b"anyone?")
                got = c.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        assert got == b"" and fe.stats["refused"] == 1 and not fe.queue
        assert said == ["flow refused: cannot start an instance: no frame for a page table: frame quota of app 'none' exhausted: 8 of 8 frames"], said
        assert echo(port, b"others") == b"others"


def test_ctrl_c_stops_the_server_with_its_counts_and_status_130():
    import signal

    p = _serve(TCP_ECHO, "--net", "user,hostfwd=tcp:127.0.0.1:0-:7")
    try:
        port = int(p.stderr.readline().split()[3].rsplit(":", 1)[1])
        assert "ready after" in p.stderr.readline()
        assert echo(port, b"one") == b"one"
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 130
    finally:
        p.kill()
    err = p.stderr.read()
    assert "exo serve: flows 1, started 1" in err and "Traceback" not in err, err


def test_malformed_and_random_frames_never_break_the_front_end():
    # What a hostile peer (steer) or a hostile instance (sent) may put on the wire, straight to the
    # front end: short frames, bad header lengths, TCP flags in every combination.
    import random

    from exo.api import System
    from exo.instances import Snapshot
    from exo.serve import FrontEnd, wait_until_ready

    rnd = random.Random(17)
    with System([TCP_ECHO], net="user,hostfwd=tcp:127.0.0.1:0-:7", ram_mib=128) as s:
        k, env = s.kernel, s.envs[0]
        wait_until_ready(k, env)
        fe = FrontEnd(k, Snapshot(k, env), max_instances=4, backlog=4)
        f = next(iter(k.net.filters.values()))
        ours = k.net.address(env)
        for _ in range(3000):
            n = rnd.choice((0, 13, 14, 33, 34, 41, 42, 53, 54, 60, 100, 1514))
            frame = bytearray(rnd.randbytes(n))
            if n >= 34 and rnd.random() < 0.7:  # mostly IPv4 TCP/UDP to the app, to reach the flow code
                frame[12:14] = b"\x08\x00"
                frame[23] = rnd.choice((6, 17, 1))
                frame[20:22] = b"\x00\x00" if rnd.random() < 0.8 else frame[20:22]
                frame[30:34] = ours.ip
                if n >= 48 and rnd.random() < 0.5:
                    frame[14] = 0x45
                    frame[47] = rnd.choice((0x02, 0x10, 0x11, 0x04, 0x12, 0x01, 0xFF))
            elif n >= 42 and rnd.random() < 0.5:
                frame[12:14] = b"\x08\x06"
            for target in fe.steer(f, bytes(frame)):
                assert target.alive
            for inst in list(fe.live.values()):
                fe.sent(inst, bytes(frame))
            fe.tick()
        assert len(fe.live) <= 4 and len(fe.queue) <= 4
        assert all(flow.env.alive for flow in fe.flows.values())


def _syn(addr, sport: int, seq: int = 1000) -> bytes:
    from hw.net import packets as pk

    gw, gw_mac = bytes([10, 0, 2, 2]), bytes.fromhex("52550a000202")
    seg = pk.tcp(gw, addr.ip, sport, 7, seq, 0, 0x02, 65535)
    return pk.ethernet(addr.mac, gw_mac, 0x0800, pk.ipv4(gw, addr.ip, 6, seg))


@contextmanager
def front_end(**options):
    """A front end over tcp_echo's snapshot, driven frame by frame (no thread, no client)."""
    from exo.api import System
    from exo.instances import Snapshot
    from exo.serve import FrontEnd, wait_until_ready

    with System([TCP_ECHO], net="user,hostfwd=tcp:127.0.0.1:0-:7", ram_mib=64) as s:
        k, env = s.kernel, s.envs[0]
        wait_until_ready(k, env)
        fe = FrontEnd(k, Snapshot(k, env), **options)
        listening = next(f for f in k.net.filters.values() if f.dst_port == 7)
        sent: list[bytes] = []
        k.net.nic.transmit = lambda frame, gso=0: sent.append(frame)  # what the front end puts on the wire
        yield k, fe, listening, sent


def test_a_connection_whose_instance_dies_before_the_handshake_ends_is_reset():
    with front_end() as (k, fe, listening, sent):
        (inst,) = fe.steer(listening, _syn(fe.addr, 40000, seq=5000))
        inst.fault = "stopped for the test"
        k.destroy(inst, exit_status=None)
        assert fe.stats["faulted"] == 1 and fe.stats["resets_sent"] == 1 and not fe.flows
        rst = sent[-1]
        assert rst[47] == 0x14 and int.from_bytes(rst[42:46], "big") == 5001  # RST|ACK of the SYN


def test_long_lived_instances_that_cannot_be_replaced_refuse_new_flows_instead_of_queueing_them():
    with front_end(per_request=False, instances=1) as (k, fe, listening, sent):
        (inst,) = fe.pool
        fe.template.tenant.env_limit = 1  # the template alone: no replacement can start
        inst.fault = "stopped for the test"
        k.destroy(inst, exit_status=None)
        fe.tick()
        assert not any(e.alive for e in fe.pool)
        assert fe.steer(listening, _syn(fe.addr, 40001)) == []
        assert fe.stats["refused"] == 1 and not fe.queue and sent[-1][47] == 0x14  # reset, not a hang
        fe.template.tenant.env_limit = 8  # room again: the next check starts a replacement
        fe._next_check = 0
        fe.tick()
        assert any(e.alive for e in fe.pool)
        assert len(fe.steer(listening, _syn(fe.addr, 40002))) == 1
