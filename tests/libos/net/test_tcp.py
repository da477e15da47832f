"""libos/net/tcp.py: the pure TCP engine, driven over a simulated link with a discrete-event clock."""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libos.net.tcp import (
    ACK,
    CLOSED,
    DELACK_NS,
    ECONNREFUSED,
    ECONNRESET,
    ETIMEDOUT,
    FIN,
    MS,
    RST,
    SEC,
    SYN,
    Segment,
    Tcb,
    seq_delta,
)

A_PORT, B_PORT = 40000, 7
# The RFC 9293 engine without the RFC 7323 / RFC 2018 options and delayed ACKs, and with a
# 64 KiB buffer, as most tests here were written for (the options: the tests at the end).
CLASSIC = {"options": False, "delayed_ack": False, "rcvbuf": 64 * 1024}


class Sim:
    """Two endpoints, "a" (active opener) and "b" (a listener that accepts the first SYN), joined
    by a link with a fixed one-way delay and seeded loss / duplication / reordering / corruption
    (a corrupted segment fails its checksum in the stack: the engine never sees it). The sim plays
    the stack's part too: output() after every event, RST for segments to a closed endpoint."""

    def __init__(self, *, delay: int = 5 * MS, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 corrupt: float = 0.0, seed: int = 0, a_iss: int = 1000, b_iss: int = 900000,
                 a_opts: dict | None = None, b_opts: dict | None = None, listen: bool = True,
                 drop: Callable[[str, Segment], bool] | None = None) -> None:
        self.now = 0
        self.delay = delay
        self.loss, self.dup, self.reorder, self.corrupt = loss, dup, reorder, corrupt
        self.rng = random.Random(seed)
        self.b_iss = b_iss
        self.b_opts = {"msl_ns": 100 * MS, **CLASSIC, **(b_opts or {})}
        self.listen = listen
        self.drop = drop
        self.q: list[tuple[int, int, str, Segment]] = []
        self.n = 0
        self.log: list[tuple[int, str, Segment]] = []        # every transmitted segment
        self.delivered: list[tuple[int, str, Segment]] = []  # every segment handed to an endpoint
        self.on_deliver: Callable[[str, Segment], None] | None = None
        self.a: Tcb = Tcb.connect(A_PORT, B_PORT, iss=a_iss, now=0,
                                  **{"msl_ns": 100 * MS, **CLASSIC, **(a_opts or {})})
        self.b: Tcb | None = None
        self.states: dict[str, list[str]] = {"a": [self.a.state], "b": []}

    def tcb(self, name: str) -> Tcb | None:
        return self.a if name == "a" else self.b

    def transmit(self, src: str, seg: Segment) -> None:
        self.log.append((self.now, src, seg))
        if self.drop is not None and self.drop(src, seg):
            return
        rng = self.rng
        if rng.random() < self.loss or rng.random() < self.corrupt:
            return
        for _ in range(2 if rng.random() < self.dup else 1):
            d = self.delay
            if rng.random() < self.reorder:
                d += rng.randrange(1, 3 * self.delay)  # held back: later segments overtake it
            self.n += 1
            heapq.heappush(self.q, (self.now + d, self.n, "b" if src == "a" else "a", seg))

    def flush(self) -> None:
        for name in ("a", "b"):
            tcb = self.tcb(name)
            if tcb is not None:
                for seg in tcb.output(self.now):
                    self.transmit(name, seg)
                st_list = self.states[name]
                if not st_list or st_list[-1] != tcb.state:
                    st_list.append(tcb.state)

    def deliver(self, dst: str, seg: Segment) -> None:
        self.delivered.append((self.now, dst, seg))
        if self.on_deliver is not None:
            self.on_deliver(dst, seg)
        tcb = self.tcb(dst)
        if dst == "b" and tcb is None and self.listen and seg.flags & (SYN | ACK | RST) == SYN:
            self.b = Tcb.accept_syn(seg, iss=self.b_iss, now=self.now, **self.b_opts)
            return
        if tcb is None or tcb.state == CLOSED:
            self.reset_reply(dst, seg)
            return
        tcb.input(seg, self.now)

    def reset_reply(self, src: str, seg: Segment) -> None:
        """RFC 9293 3.10.7.1: a segment for no connection gets an RST (the stack's job)."""
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            rst = Segment(seg.dport, seg.sport, seg.ack, 0, RST, 0)
        else:
            rst = Segment(seg.dport, seg.sport, 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF, RST | ACK, 0)
        self.transmit(src, rst)

    def run(self, done: Callable[[], bool], *, app: Callable[[Sim], None] | None = None,
            tick: int | None = None, limit: int = 3600 * SEC) -> None:
        """Run events until done() (or nothing is left to happen); app runs after every event,
        and every tick ns if tick is given (a reader on a clock)."""
        next_tick = 0 if tick else None
        for _ in range(2_000_000):
            if app is not None:
                app(self)
            self.flush()
            if done():
                return
            times = [t for t in (self.q[0][0] if self.q else None, self.a.next_timer(),
                                 self.b.next_timer() if self.b else None, next_tick) if t is not None]
            if not times:
                return  # nothing more can happen
            t = max(min(times), self.now)
            assert t <= limit, f"still running at {t / SEC:.1f} s: {self.a} {self.b}"
            self.now = t
            if next_tick is not None and t >= next_tick:
                next_tick = t + tick
            elif self.q and self.q[0][0] <= t:
                _, _, dst, seg = heapq.heappop(self.q)
                self.deliver(dst, seg)
        raise AssertionError("too many events")


def established(sim: Sim) -> bool:
    return sim.a.state == "ESTABLISHED" and sim.b is not None and sim.b.state == "ESTABLISHED"


def handshake(**kw) -> Sim:
    sim = Sim(**kw)
    sim.run(lambda: established(sim))
    assert established(sim)
    return sim


class Bulk:
    """Application: each side sends its data and then closes; both read everything."""

    def __init__(self, a_data: bytes, b_data: bytes, *, read_chunk: int = 1 << 20) -> None:
        self.data = {"a": a_data, "b": b_data}
        self.sent = {"a": 0, "b": 0}
        self.got = {"a": bytearray(), "b": bytearray()}
        self.closed = {"a": False, "b": False}
        self.read_chunk = read_chunk

    def __call__(self, sim: Sim) -> None:
        for name in ("a", "b"):
            tcb = sim.tcb(name)
            if tcb is None or tcb.error is not None:
                continue
            data = self.data[name]
            while self.sent[name] < len(data) and tcb.writable:
                n = tcb.send(data[self.sent[name]:self.sent[name] + 65536], sim.now)
                if n == 0:
                    break
                self.sent[name] += n
            if self.sent[name] == len(data) and not self.closed[name] and tcb.established:
                tcb.close(sim.now)
                self.closed[name] = True
            while True:
                chunk = tcb.recv(self.read_chunk)
                if not chunk:
                    break
                self.got[name] += chunk

    def intact(self) -> bool:
        return self.got["b"] == self.data["a"] and self.got["a"] == self.data["b"]


def both_finished(sim: Sim) -> bool:
    return sim.a.finished and sim.b is not None and sim.b.finished


# --- handshake and sequence numbers ----------------------------------------------------------

def test_handshake_states_and_mss_option():
    sim = handshake(a_opts={"mss": 1200}, b_opts={"mss": 1460})
    syn = sim.log[0][2]
    assert syn.flags == SYN and syn.mss == 1200 and syn.seq == 1000
    synack = sim.log[1][2]
    assert synack.flags == SYN | ACK and synack.mss == 1460 and synack.ack == 1001 and synack.seq == 900000
    third = sim.log[2][2]
    assert third.flags == ACK and third.seq == 1001 and third.ack == 900001
    assert len(sim.log) == 3
    assert sim.a.established and sim.b.established
    assert sim.a.eff_mss == 1200 and sim.b.eff_mss == 1200  # never more than the peer's MSS
    assert sim.states["b"] == ["SYN_RECEIVED", "ESTABLISHED"]


def test_segments_never_exceed_peer_mss_and_missing_option_means_536():
    sim = Sim(b_opts={"mss": 1000})
    app = Bulk(bytes(50_000), b"")
    sim.run(lambda: both_finished(sim), app=app)
    assert app.intact()
    assert max(len(s.payload) for _, src, s in sim.log if src == "a") == 1000
    tcb = Tcb.accept_syn(Segment(1, 2, 5, 0, SYN, 8192), iss=7, now=0)
    assert tcb.peer_mss == 536 and tcb.eff_mss == 536


def test_lost_syn_ack_and_lost_third_ack():
    lost = []

    def drop(src: str, seg: Segment) -> bool:
        # the first SYN-ACK, and then the first pure ACK from a (the handshake's third segment)
        kind = "synack" if seg.flags == SYN | ACK else "ack" if src == "a" and seg.flags == ACK else None
        if kind and kind not in lost:
            lost.append(kind)
            return True
        return False

    sim = Sim(delay=10 * MS, drop=drop)
    sim.run(lambda: sim.b is not None and sim.b.established)
    assert lost == ["synack", "ack"]
    kinds = [(t, src, s.flags) for t, src, s in sim.log]
    # a's SYN times out after 1 s; b's SYN-ACK timer expires as that duplicate SYN arrives: one
    # SYN-ACK answers both. a's ACK of it is lost, so b retransmits after its backed-off RTO (2 s).
    assert kinds == [(0, "a", SYN), (10 * MS, "b", SYN | ACK), (1 * SEC, "a", SYN),
                     (1 * SEC + 10 * MS, "b", SYN | ACK), (1 * SEC + 20 * MS, "a", ACK),
                     (3 * SEC + 10 * MS, "b", SYN | ACK), (3 * SEC + 20 * MS, "a", ACK)]
    assert sim.b.srtt is None and sim.b.rto == 4 * SEC  # Karn: no sample, the backed-off RTO stays
    assert sim.a.srtt is None and sim.a.rto == 3 * SEC  # RFC 6298 5.7 after a SYN timeout


def test_duplicate_syn_in_syn_received_is_answered_at_once():
    syn = Segment(B_PORT, A_PORT, 5000, 0, SYN, 65535, mss=1460)
    tcb = Tcb.accept_syn(syn, iss=77, now=0)
    first = tcb.output(0)
    assert [(s.flags, s.seq, s.ack, s.mss) for s in first] == [(SYN | ACK, 77, 5001, 1460)]
    assert tcb.output(10 * MS) == []
    tcb.input(syn, 20 * MS)
    assert [(s.flags, s.seq, s.ack) for s in tcb.output(20 * MS)] == [(SYN | ACK, 77, 5001)]
    assert tcb.state == "SYN_RECEIVED" and tcb.next_timer() == 1 * SEC  # timer not restarted


def test_simultaneous_open():
    a = Tcb.connect(1, 2, iss=100, now=0)
    b = Tcb.connect(2, 1, iss=2**32 - 1, now=0)
    (syn_a,), (syn_b,) = a.output(0), b.output(0)
    a.input(syn_b, 5 * MS)
    b.input(syn_a, 5 * MS)
    assert a.state == b.state == "SYN_RECEIVED"
    (sa_a,), (sa_b,) = a.output(5 * MS), b.output(5 * MS)
    assert (sa_a.flags, sa_a.seq, sa_a.ack) == (SYN | ACK, 100, 0)
    assert (sa_b.flags, sa_b.seq, sa_b.ack) == (SYN | ACK, 2**32 - 1, 101)
    a.input(sa_b, 10 * MS)
    b.input(sa_a, 10 * MS)
    assert a.state == b.state == "ESTABLISHED" and a.established and b.established
    assert a.send(b"hi", 10 * MS) == 2
    (data,) = a.output(10 * MS)
    assert b.output(10 * MS) == []
    b.input(data, 15 * MS)
    assert b.recv(10) == b"hi"


def test_delta_wraps():
    assert seq_delta(5, 2**32 - 5) == 10
    assert seq_delta(2**32 - 5, 5) == -10
    assert seq_delta(0x7FFFFFFF, 0) == 0x7FFFFFFF
    assert seq_delta(0x80000000, 0) == -0x80000000


def test_sequence_wraparound():
    data_a = random.Random(1).randbytes(300_000)
    data_b = random.Random(2).randbytes(200_000)
    sim = Sim(a_iss=2**32 - 3000, b_iss=2**32 - 1, loss=0.05, reorder=0.05, seed=3)
    app = Bulk(data_a, data_b)
    sim.run(lambda: both_finished(sim), app=app)
    assert app.intact()
    assert all(0 <= s.seq < 2**32 and 0 <= s.ack < 2**32 for _, _, s in sim.log)
    assert any(s.seq < 100_000 for _, src, s in sim.log if src == "a" and s.payload)  # it wrapped
    assert sim.b.error is None and sim.a.error is None


# --- bulk transfer ---------------------------------------------------------------------------

@pytest.mark.parametrize("faults", [dict(), dict(loss=0.10, dup=0.02, reorder=0.05, corrupt=0.0)],
                         ids=["clean", "lossy"])
def test_4mib_both_directions(faults):
    size = 4 * 1024 * 1024
    data_a = random.Random(10).randbytes(size)
    data_b = random.Random(11).randbytes(size)
    sim = Sim(seed=42, **faults)
    app = Bulk(data_a, data_b)
    sim.run(lambda: both_finished(sim), app=app)
    assert hashlib.sha256(app.got["b"]).digest() == hashlib.sha256(data_a).digest()
    assert hashlib.sha256(app.got["a"]).digest() == hashlib.sha256(data_b).digest()
    assert sim.a.error is None and sim.b.error is None
    assert both_finished(sim)
    if faults:
        assert sim.a.retransmits > 0 and sim.a.fast_retransmits > 0
    else:
        assert sim.a.retransmits == 0 and sim.b.retransmits == 0


# --- flow control ----------------------------------------------------------------------------

def test_small_receive_buffer_zero_window_and_persist_probes():
    data = random.Random(5).randbytes(100_000)
    sim = Sim(delay=2 * MS, b_opts={"rcvbuf": 4096})
    app = Bulk(data, b"")
    edge = {"a": 0}

    def watch(dst: str, seg: Segment) -> None:
        if dst == "a" and seg.flags & ACK:  # the right edge b advertised
            edge["a"] = max(edge["a"], seg.ack + seg.window)

    sim.on_deliver = watch
    checked = {"n": 0}

    def reader(s: Sim) -> None:
        # The slow reader: 1000 bytes every 20 ms, and nothing at all between 0.5 s and 3.5 s.
        if s.b is not None and not (500 * MS <= s.now < 3500 * MS):
            app.got["b"] += s.b.recv(1000)

    def apps(s: Sim) -> None:
        app(s)  # sends and closes; reads nothing (read_chunk 0): reader() reads
        # b never receives data beyond the window it advertised (bar one-byte probes)
        for _, src, seg in s.log[checked["n"]:]:
            if src == "a" and len(seg.payload) > 1 and edge["a"]:
                assert seg.seq + len(seg.payload) <= edge["a"]
        checked["n"] = len(s.log)
        if s.now >= s.tick_at:
            reader(s)
            s.tick_at = s.now + 20 * MS

    app.read_chunk = 0
    sim.tick_at = 0
    sim.run(lambda: both_finished(sim), app=apps, tick=20 * MS)
    assert bytes(app.got["b"]) == data
    assert max(s.window for _, src, s in sim.log if src == "b") <= 4096
    zero_windows = [t for t, src, s in sim.log if src == "b" and s.window == 0 and s.flags & ACK]
    assert zero_windows
    probes = [t for t, src, s in sim.log if src == "a" and len(s.payload) == 1]
    assert sim.a.probes_sent == len(probes) >= 3
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:3]))  # the persist timer backs off
    assert sim.a.error is None


def test_zero_window_probe_recovers_a_lost_window_update():
    data = bytes(range(256)) * 64  # 16 KiB
    lost = {"n": 0}

    def drop(src: str, seg: Segment) -> bool:
        # lose every window update from b while it has read less than all of it
        if src == "b" and not seg.payload and seg.window > 0 and lost["n"] < 2 and reading["on"]:
            lost["n"] += 1
            return True
        return False

    reading = {"on": False}
    sim = Sim(delay=1 * MS, b_opts={"rcvbuf": 4096}, drop=drop)
    app = Bulk(data, b"", read_chunk=0)
    sim.run(lambda: sim.a.established and sim.a.snd_wnd == 0, app=app)
    reading["on"] = True
    app.read_chunk = 1 << 20
    sim.run(lambda: both_finished(sim), app=app)
    assert lost["n"] == 2 and sim.a.probes_sent >= 1
    assert bytes(app.got["b"]) == data


def test_timeout_into_a_window_smaller_than_a_segment():
    # A receive buffer under one MSS: after a timeout the retransmission must fit the window, or
    # snd_nxt jumps past the window's edge and only (backed-off) timeouts would move data again.
    first = {"dropped": False}

    def drop(src: str, seg: Segment) -> bool:
        if src == "a" and seg.payload and not first["dropped"]:
            first["dropped"] = True
            return True
        return False

    data = random.Random(4).randbytes(20_000)
    sim = Sim(b_opts={"rcvbuf": 100}, drop=drop)
    app = Bulk(data, b"")
    sim.run(lambda: both_finished(sim), app=app)
    assert bytes(app.got["b"]) == data
    assert sim.a.timeouts == 1 and sim.now < 5 * SEC
    assert max(len(s.payload) for _, src, s in sim.log if src == "a") == 100


# --- retransmission timer --------------------------------------------------------------------

def test_rto_estimator_follows_rfc6298():
    tcb = Tcb.connect(1, 2, iss=0, now=0)
    assert tcb.rto == 1 * SEC and tcb.srtt is None  # 2.1
    samples = [100 * MS, 120 * MS, 80 * MS, 300 * MS, 50 * MS]
    srtt = rttvar = None
    for r in samples:
        tcb.rtt_sample(r)
        if srtt is None:
            srtt, rttvar = r, r / 2  # 2.2
        else:
            rttvar = (1 - 1 / 4) * rttvar + 1 / 4 * abs(srtt - r)  # 2.3
            srtt = (1 - 1 / 8) * srtt + 1 / 8 * r
        rto = srtt + max(1 * MS, 4 * rttvar)
        assert tcb.srtt == pytest.approx(srtt)
        assert tcb.rttvar == pytest.approx(rttvar)
        assert tcb.rto == pytest.approx(min(max(rto, 200 * MS), 60 * SEC), abs=1)
    assert tcb.rto == pytest.approx(srtt + 4 * rttvar, abs=1)
    assert 200 * MS < tcb.rto < 1 * SEC
    fast = Tcb.connect(1, 2, iss=0, now=0)
    fast.rtt_sample(1 * MS)
    assert fast.rto == 200 * MS  # the 200 ms floor
    slow = Tcb.connect(1, 2, iss=0, now=0)
    slow.rtt_sample(50 * SEC)
    assert slow.rto == 60 * SEC  # 2.5 ceiling


def test_handshake_rtt_sample():
    sim = handshake(delay=50 * MS)
    assert sim.a.srtt == 100 * MS and sim.a.rttvar == 50 * MS and sim.a.rto == 300 * MS
    assert sim.b.srtt == 100 * MS


def test_karn_no_sample_from_a_retransmitted_segment():
    first = {"dropped": False}

    def drop(src: str, seg: Segment) -> bool:
        if src == "a" and seg.payload and not first["dropped"]:
            first["dropped"] = True
            return True
        return False

    sim = handshake(delay=50 * MS, drop=drop)
    srtt, rto = sim.a.srtt, sim.a.rto
    sim.a.send(b"x" * 500, sim.now)
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    assert sim.a.timeouts == 1 and sim.a.retransmits == 1
    # The ACK of the retransmission came 100 ms after it but 100 ms + RTO after the original:
    # neither is a valid sample (Karn), so SRTT stays and the backed-off RTO is kept (RFC 6298 5.7).
    assert sim.a.srtt == srtt and sim.a.rto == 2 * rto
    sim.a.send(b"y" * 500, sim.now)
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    assert sim.a.srtt == srtt  # same RTT again: SRTT unchanged ...
    assert sim.a.rto < 2 * rto  # ... but a fresh sample collapses the backed-off RTO


def test_backoff_and_etimedout_when_peer_vanishes():
    gone = {"on": False}
    sim = handshake(delay=1 * MS, drop=lambda src, seg: gone["on"])
    assert sim.a.rto == 200 * MS
    gone["on"] = True
    start = len(sim.log)
    sim.a.send(b"hello", sim.now)
    sim.run(lambda: sim.a.state == CLOSED)
    sends = [t for t, src, s in sim.log[start:] if src == "a" and s.payload == b"hello"]
    assert len(sends) == 16  # the original and 15 retransmissions
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    expected = [min(200 * MS * 2**i, 60 * SEC) for i in range(15)]
    assert gaps == expected
    assert sim.a.error == ETIMEDOUT and sim.a.state == CLOSED and sim.a.readable
    assert sim.now - sends[-1] == 60 * SEC  # gives up one (maximal) RTO after the last one


def test_an_orphaned_connection_gives_up_after_orphan_retries():
    # The application closed it and let go (Linux's orphan): its tail is retransmitted
    # ORPHAN_RETRIES times, not MAX_RETRIES, and it gives up one more timeout later.
    gone = {"on": False}
    sim = handshake(delay=1 * MS, drop=lambda src, seg: gone["on"])
    assert sim.a.rto == 200 * MS
    gone["on"] = True
    start = len(sim.log)
    sim.a.send(b"tail", sim.now)
    sim.a.close(sim.now)
    sim.a.orphan()
    sim.run(lambda: sim.a.state == CLOSED)
    sends = [t for t, src, s in sim.log[start:] if src == "a" and s.payload == b"tail"]
    assert len(sends) == 1 + Tcb.ORPHAN_RETRIES == 9
    assert all(s.flags & FIN for _, src, s in sim.log[start:] if src == "a")  # the FIN rides along
    assert sim.a.error == ETIMEDOUT
    # 0.2 s * (2**9 - 1) = 102.2 s: Linux's "> 100 s with a 200 ms RTO" for tcp_orphan_retries 8
    assert sim.now - sends[0] == 200 * MS * (2**9 - 1) <= Tcb.orphan_lifetime_ns()


def test_an_orphan_stops_probing_a_zero_window_after_orphan_retries():
    # b never reads: its window closes. a closes and lets go; from then on its window probes
    # are lost, so it gives up after ORPHAN_RETRIES of them (an answered probe would restart the
    # count: the peer is alive).
    gone = {"on": False}
    sim = Sim(delay=1 * MS, b_opts={"rcvbuf": 4096}, drop=lambda src, seg: gone["on"] and src == "a")
    sim.run(lambda: established(sim))
    sim.a.send(b"z" * 10_000, sim.now)
    sim.run(lambda: sim.a.snd_wnd == 0 and sim.a.snd_una == sim.a.snd_max)
    sim.a.close(sim.now)
    sim.a.orphan()
    gone["on"] = True
    probes = sim.a.probes_sent
    sim.run(lambda: sim.a.state == CLOSED)
    assert sim.a.error == ETIMEDOUT
    assert sim.a.probes_sent - probes == Tcb.ORPHAN_RETRIES


def test_syn_retries_then_etimedout():
    sim = Sim(listen=False, drop=lambda src, seg: True)
    sim.run(lambda: sim.a.state == CLOSED)
    syns = [t for t, src, s in sim.log if s.flags == SYN]
    assert [b - a for a, b in zip(syns, syns[1:])] == [SEC * 2**i for i in range(6)]
    assert sim.a.retransmits == 6
    # 1 + 2 + ... + 32 s, then one more RTO (64 s, capped at 60 s by RFC 6298 2.5)
    assert sim.a.error == ETIMEDOUT and sim.now == 123 * SEC


def test_fast_retransmit_after_exactly_three_dupacks():
    hole = {"seq": None}

    def drop(src: str, seg: Segment) -> bool:
        # lose the second data segment, once
        if src == "a" and seg.payload and hole["seq"] is None and seg.seq != sim.a.iss + 1:
            hole["seq"] = seg.seq
            return True
        return False

    sim = Sim(delay=10 * MS, drop=drop)
    sim.run(lambda: established(sim))
    dupacks = {"n": 0}
    at_retransmit: list[int] = []

    def watch(dst: str, seg: Segment) -> None:
        if (dst == "a" and hole["seq"] is not None and seg.ack == hole["seq"] and not seg.payload
                and (sim.a.snd_una & 0xFFFFFFFF) == hole["seq"]):
            dupacks["n"] += 1  # a duplicate: the ACK for segment 1 (also ack == hole) came first

    sim.on_deliver = watch
    orig_transmit = sim.transmit

    def transmit(src: str, seg: Segment) -> None:
        if src == "a" and seg.payload and seg.seq == hole["seq"] and any(
                s.seq == hole["seq"] for _, x, s in sim.log if x == "a" and s.payload):
            at_retransmit.append(dupacks["n"])
        orig_transmit(src, seg)

    sim.transmit = transmit
    sim.a.send(bytes(10 * 1460), sim.now)  # the initial window: 10 segments in one flight
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    # The first ACK (for segment 1) is new; segments 3..10 give 8 dupacks. The retransmission
    # went out when the third arrived, not before.
    assert at_retransmit == [3]
    assert dupacks["n"] == 8
    assert sim.a.fast_retransmits == 1 and sim.a.timeouts == 0 and sim.a.retransmits == 1
    assert sim.now < 200 * MS  # well before any RTO


def test_newreno_partial_acks_recover_several_losses_without_timeout():
    lost: set[int] = set()

    def drop(src: str, seg: Segment) -> bool:
        k = (seg.seq - 1001) // 1460
        if src == "a" and seg.payload and k in (2, 5, 7) and k not in lost:
            lost.add(k)
            return True
        return False

    sim = handshake(delay=10 * MS, drop=drop)
    data = random.Random(9).randbytes(10 * 1460)
    sim.a.send(data, sim.now)
    got = bytearray()
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max, app=lambda s: got.extend(s.b.recv(1 << 20)))
    assert bytes(got) == data
    assert sim.a.fast_retransmits == 1 and sim.a.timeouts == 0 and sim.a.retransmits == 3


# --- resets ----------------------------------------------------------------------------------

def test_rst_gives_econnreset():
    sim = handshake()
    sim.b.send(b"bye", sim.now)
    sim.flush()
    sim.b.abort(sim.now)
    sim.run(lambda: sim.a.state == CLOSED)
    assert sim.a.error == ECONNRESET and sim.a.readable and sim.a.finished
    assert sim.a.recv(10) == b"bye"  # what arrived before the reset is still there
    assert sim.b.error is None and sim.b.finished


def test_rst_must_match_rcv_nxt_exactly():
    sim = handshake()
    a = sim.a
    nxt = a.rcv_nxt
    a.input(Segment(B_PORT, A_PORT, (nxt + 100) & 0xFFFFFFFF, 0, RST, 0), sim.now)  # in window
    assert a.state == "ESTABLISHED"
    out = a.output(sim.now)
    assert len(out) == 1 and out[0].flags == ACK and out[0].ack == nxt  # challenge ACK
    a.input(Segment(B_PORT, A_PORT, (nxt + 200000) & 0xFFFFFFFF, 0, RST, 0), sim.now)  # outside
    assert a.state == "ESTABLISHED" and a.output(sim.now) == []
    a.input(Segment(B_PORT, A_PORT, nxt, 0, RST, 0), sim.now)
    assert a.state == CLOSED and a.error == ECONNRESET


def test_rst_to_syn_gives_econnrefused():
    sim = Sim(listen=False)
    sim.run(lambda: sim.a.state == CLOSED)
    assert sim.a.error == ECONNREFUSED and sim.a.readable and sim.a.writable
    rst = sim.log[-1][2]
    assert rst.flags == RST | ACK and rst.ack == 1001


def test_rst_without_ack_in_syn_sent_is_ignored_and_bad_ack_gets_rst():
    tcb = Tcb.connect(1, 2, iss=500, now=0)
    tcb.output(0)
    tcb.input(Segment(2, 1, 0, 0, RST, 0), 0)
    assert tcb.state == "SYN_SENT"
    tcb.input(Segment(2, 1, 77, 9999, SYN | ACK, 1000, mss=1460), 0)  # ACK of something unsent
    assert tcb.state == "SYN_SENT"
    out = tcb.output(0)
    assert [(s.flags, s.seq) for s in out] == [(RST, 9999)]


# --- closing ---------------------------------------------------------------------------------

def test_simultaneous_close():
    sim = handshake(a_opts={"msl_ns": 1 * SEC}, b_opts={"msl_ns": 1 * SEC})
    sim.a.send(b"from a", sim.now)
    sim.b.send(b"from b", sim.now)
    sim.a.close(sim.now)
    sim.b.close(sim.now)
    sim.run(lambda: both_finished(sim))
    for name in ("a", "b"):
        tcb = sim.tcb(name)
        assert sim.states[name][-4:] == ["FIN_WAIT_1", "CLOSING", "TIME_WAIT", CLOSED]
        assert tcb.error is None and not tcb.eof and tcb.readable
        assert tcb.recv(100) == (b"from b" if name == "a" else b"from a") and tcb.eof
    fins = [s for _, _, s in sim.log if s.flags & FIN]
    assert len(fins) == 2


def test_time_wait_lasts_two_msl():
    sim = handshake(a_opts={"msl_ns": 1 * SEC})
    sim.a.close(sim.now)
    sim.run(lambda: sim.b.state == "CLOSE_WAIT" and sim.a.state == "FIN_WAIT_2")
    sim.b.close(sim.now)
    sim.run(lambda: sim.a.state == "TIME_WAIT" and sim.b.finished)
    assert sim.states["a"][-3:] == ["FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"]
    entered = max(t for t, dst, s in sim.delivered if dst == "a" and s.flags & FIN)
    assert sim.a.next_timer() == entered + 2 * SEC
    assert sim.a.output(entered + 2 * SEC - 1) == [] and sim.a.state == "TIME_WAIT" and not sim.a.finished
    assert sim.a.output(entered + 2 * SEC) == [] and sim.a.finished
    assert Tcb.MSL_NS == 30 * SEC
    assert Tcb.connect(1, 2, iss=0, now=0).msl_ns == 30 * SEC


def test_time_wait_acks_a_retransmitted_fin_and_restarts():
    sim = handshake(a_opts={"msl_ns": 1 * SEC})
    sim.a.close(sim.now)
    sim.run(lambda: sim.b.state == "CLOSE_WAIT")
    sim.b.close(sim.now)
    sim.run(lambda: sim.a.state == "TIME_WAIT")
    fin = [s for t, dst, s in sim.delivered if dst == "a" and s.flags & FIN][-1]
    later = sim.now + 500 * MS
    sim.a.input(fin, later)
    out = sim.a.output(later)
    assert len(out) == 1 and out[0].flags == ACK and out[0].ack == (fin.seq + 1) & 0xFFFFFFFF
    assert sim.a.next_timer() == later + 2 * SEC


def test_passive_close_and_half_close_data_flow():
    sim = handshake()
    sim.a.close(sim.now)  # a stops sending; b may still send
    sim.run(lambda: sim.b.state == "CLOSE_WAIT" and sim.a.state == "FIN_WAIT_2")
    assert sim.b.eof and sim.b.readable and sim.b.recv(10) == b""
    sim.b.send(b"late reply", sim.now)
    sim.b.close(sim.now)
    assert sim.b.state == "LAST_ACK"
    sim.run(lambda: both_finished(sim))
    assert sim.a.recv(100) == b"late reply" and sim.a.eof


# --- receiving -------------------------------------------------------------------------------

def test_out_of_window_segments_are_acked_and_not_delivered():
    sim = handshake()
    b = sim.b
    nxt = b.rcv_nxt
    for seq in (nxt + 70000, nxt - 5000):  # beyond the window; entirely old
        b.input(Segment(A_PORT, B_PORT, seq & 0xFFFFFFFF, sim.a.snd_nxt, ACK, 65535, b"junk" * 10), sim.now)
        out = b.output(sim.now)
        assert len(out) == 1 and out[0].flags == ACK and out[0].ack == nxt and not out[0].payload
        assert b.recv(1000) == b"" and b.rcv_nxt == nxt
    # a duplicate SYN in ESTABLISHED: challenge ACK, nothing changes
    b.input(Segment(A_PORT, B_PORT, nxt + 10, 0, SYN, 65535), sim.now)
    out = b.output(sim.now)
    assert [(s.flags, s.ack) for s in out] == [(ACK, nxt)] and b.state == "ESTABLISHED"


def test_reassembly_keeps_out_of_order_data_and_trims_overlaps():
    sim = handshake()
    b, base = sim.b, sim.b.rcv_nxt
    data = bytes(range(256)) * 40  # 10240 bytes
    ack = sim.a.snd_nxt

    def put(lo: int, hi: int, fin: bool = False) -> list[Segment]:
        flags = ACK | (FIN if fin else 0)
        b.input(Segment(A_PORT, B_PORT, base + lo, ack, flags, 65535, data[lo:hi]), sim.now)
        return b.output(sim.now)

    assert put(8000, 10240, fin=True)[0].ack == base       # ahead: kept, dupack
    assert put(3000, 5000)[0].ack == base
    assert put(2500, 6000)[0].ack == base                  # overlaps both sides
    assert put(3000, 5000)[0].ack == base                  # pure duplicate
    held = sorted((s - base, s - base + len(d)) for s, d in b._ooo)
    assert held[0][0] == 2500 and held[-1][1] == 10240
    assert sum(hi - lo for lo, hi in held) == 3500 + 2240  # each byte kept once
    assert b.recv(100) == b""
    assert put(0, 1000)[0].ack == base + 1000
    assert put(500, 2600)[0].ack == base + 6000            # fills the gap: 2500..6000 follow
    assert b.state == "ESTABLISHED"
    out = put(5500, 8100)
    assert out[0].ack == base + 10241 and b.state == "CLOSE_WAIT"  # ... and the early FIN
    assert b.recv(1 << 20) == data and b.eof


def test_send_buffer_limit_and_writable():
    sim = handshake(a_opts={"sndbuf": 10000})
    assert sim.a.writable
    assert sim.a.send(bytes(25000), sim.now) == 10000
    assert not sim.a.writable and sim.a.send(b"x", sim.now) == 0
    sim.flush()
    assert not sim.a.writable  # in flight is still buffered until ACKed
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    assert sim.a.writable
    sim.a.close(sim.now)
    assert sim.a.send(b"x", sim.now) == 0


# --- property: data arrive intact or the connection fails, never corrupted --------------------

@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0, 0.5), dup=st.floats(0, 0.1),
       reorder=st.floats(0, 0.3), size=st.integers(0, 100_000), iss=st.integers(0, 2**32 - 1))
def test_property_intact_or_error(seed, loss, dup, reorder, size, iss):
    rng = random.Random(seed)
    data_a, data_b = rng.randbytes(size), rng.randbytes(size // 3)
    sim = Sim(seed=seed, loss=loss, dup=dup, reorder=reorder, a_iss=iss, b_iss=(iss * 7 + 3) & 0xFFFFFFFF,
              a_opts={"rcvbuf": 8192})
    app = Bulk(data_a, data_b)
    sim.run(lambda: both_finished(sim) or sim.a.error is not None
            or (sim.b is not None and sim.b.error is not None), app=app, limit=30_000 * SEC)
    assert bytes(app.got["b"]) == data_a[:len(app.got["b"])]
    assert bytes(app.got["a"]) == data_b[:len(app.got["a"])]
    if sim.a.error is None and sim.b is not None and sim.b.error is None:
        assert app.intact() and both_finished(sim)


# --- RFC 7323 and RFC 2018 options, delayed ACK, Nagle -----------------------------------------

MODERN = {"options": True, "delayed_ack": True, "rcvbuf": 256 * 1024}


def modern(**kw) -> Sim:
    return handshake(a_opts={**MODERN, **kw.pop("a_opts", {})}, b_opts={**MODERN, **kw.pop("b_opts", {})}, **kw)


def test_options_are_offered_and_used_only_when_both_syns_carry_them():
    sim = modern()
    syn, synack = sim.log[0][2], sim.log[1][2]
    assert syn.wscale == 2 and syn.sack_ok and syn.ts == (0, 0)  # 256 KiB needs a shift of 2
    assert synack.wscale == 2 and synack.sack_ok and synack.ts is not None and synack.ts[1] == 0
    for t in (sim.a, sim.b):
        assert t.ws_ok and t.ts_ok and t.sack_ok and t.snd_wscale == 2 and t.rcv_wscale == 2
        assert t.eff_mss == 1460 - 12  # the timestamps option's 12 bytes come out of every segment
    # A peer that offers nothing (an old stack): the SYN-ACK answers with nothing, nothing is used.
    old = modern(a_opts={"options": False})
    synack = old.log[1][2]
    assert synack.wscale is None and not synack.sack_ok and synack.ts is None
    assert not (old.b.ws_ok or old.b.ts_ok or old.b.sack_ok) and old.b.rcv_wscale == 0
    assert old.b._adv_window() <= 65535


def test_window_scaling_keeps_more_than_64_kib_in_flight():
    sim = modern(delay=20 * MS)
    data = random.Random(3).randbytes(600_000)
    sim.a.send(data[:256 * 1024], sim.now)
    sent = 256 * 1024
    peak = 0
    got = bytearray()

    def app(s: Sim) -> None:
        nonlocal sent, peak
        got.extend(s.b.recv(1 << 20))
        if sent < len(data):
            sent += s.a.send(data[sent:], s.now)
        peak = max(peak, s.a.in_flight)

    sim.run(lambda: len(got) == len(data), app=app)
    assert bytes(got) == data
    assert peak > 65535, peak
    assert max(seg.window for _t, src, seg in sim.log if src == "b") <= 65535  # the field, scaled


def test_timestamps_echo_time_rtt_and_paws_drops_an_old_duplicate():
    sim = modern(delay=7 * MS)
    got = bytearray()
    for _ in range(20):  # two segments at a time: the second is ACKed at once
        sim.a.send(b"x" * 2 * 1448, sim.now)
        sim.run(lambda: sim.a.snd_una == sim.a.snd_max, app=lambda s: got.extend(s.b.recv(1 << 20)))
    data_segs = [seg for _t, src, seg in sim.log if src == "a" and seg.payload]
    acks = [seg for _t, src, seg in sim.log if src == "b" and not seg.payload and seg.ts]
    assert all(seg.ts is not None for seg in data_segs) and acks
    assert any(ack.ts[1] == data_segs[0].ts[0] for ack in acks)  # TSecr echoes TSval
    assert abs(sim.a.srtt - 14 * MS) < MS, sim.a.srtt  # two 7 ms hops, timed by the echoed stamps
    b = sim.b
    nxt = b.rcv_nxt
    old = Segment(A_PORT, B_PORT, nxt & 0xFFFFFFFF, sim.a.rcv_nxt & 0xFFFFFFFF, ACK, 1000, b"stale",
                  ts=((b.ts_recent - 5) & 0xFFFFFFFF, 0))
    b.input(old, sim.now)
    assert b.rcv_nxt == nxt and b.recv(10) == b""  # dropped (RFC 7323 5.3 R1)
    out = b.output(sim.now)
    assert len(out) == 1 and out[0].flags == ACK and not out[0].payload  # and acknowledged


def test_sack_retransmits_each_hole_once_without_a_timeout():
    lost: set[int] = set()

    def drop(src: str, seg: Segment) -> bool:
        k = (seg.seq - 1001) // 1448
        if src == "a" and seg.payload and k in (2, 5, 7, 11) and k not in lost:
            lost.add(k)
            return True
        return False

    sim = modern(delay=10 * MS, drop=drop)
    data = random.Random(9).randbytes(20 * 1448)
    sim.a.send(data, sim.now)
    got = bytearray()
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max, app=lambda s: got.extend(s.b.recv(1 << 20)))
    assert bytes(got) == data
    assert sim.a.timeouts == 0 and sim.a.retransmits == 4 and sim.a.fast_retransmits == 1
    blocks = [seg.sacks for _t, src, seg in sim.log if src == "b" and seg.sacks]
    assert blocks and max(len(b) for b in blocks) >= 2  # several holes reported at once
    # The receiver names the most recent block first (RFC 2018 4).
    assert all(len(set(b)) == len(b) for b in blocks)


def test_delayed_ack_every_second_segment_and_after_40_ms():
    sim = modern(delay=1 * MS)
    data = bytes(40 * 1448)
    sim.a.send(data, sim.now)
    got = bytearray()
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max, app=lambda s: got.extend(s.b.recv(1 << 20)))
    segs = sum(1 for _t, src, seg in sim.log[3:] if src == "a" and seg.payload)
    acks = sum(1 for _t, src, seg in sim.log[3:] if src == "b" and not seg.payload)
    assert segs == 40 and acks <= segs // 2 + 3, (segs, acks)  # (window updates after reads)
    # One small segment alone is acknowledged DELACK_NS after it arrived.
    start = len(sim.log)
    sim.a.send(b"hi", sim.now)
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    (t_data, _s, _d), (t_ack, src, ack) = sim.log[start], sim.log[start + 1]
    assert src == "b" and not ack.payload and t_ack - t_data == 1 * MS + DELACK_NS


@pytest.mark.parametrize("nodelay,want", [(False, 2), (True, 10)])
def test_nagle_coalesces_small_writes_while_data_is_in_flight(nodelay, want):
    sim = modern(delay=5 * MS, a_opts={"nodelay": nodelay})
    for _ in range(10):
        sim.a.send(b"0123456789", sim.now)
        sim.flush()
    sim.run(lambda: sim.a.snd_una == sim.a.snd_max)
    segs = [seg for _t, src, seg in sim.log if src == "a" and seg.payload]
    assert len(segs) == want, (nodelay, [len(s.payload) for s in segs])
    assert b"".join(s.payload for s in segs) == b"0123456789" * 10


@pytest.mark.parametrize("seed", range(4))
def test_bulk_with_options_survives_loss_duplication_and_reordering(seed):
    sim = Sim(delay=5 * MS, loss=0.08, dup=0.05, reorder=0.1, seed=seed, a_iss=2**32 - 3000,
              a_opts=MODERN, b_opts=MODERN)
    app = Bulk(random.Random(seed).randbytes(300_000), random.Random(seed + 1).randbytes(200_000))
    sim.run(lambda: both_finished(sim), app=app)
    assert app.intact() and sim.a.error is None and sim.b.error is None
    assert sim.a.sack_ok and any(seg.sacks for _t, _src, seg in sim.log)
