"""The net module's linger at exit: a guest that closes and exits at once still gets its data and
FIN delivered, however long TCP's backed-off retransmission timer takes, and still exits in
bounded guest time when the peer has vanished or never opens its window.

Two guests on the in-process switch under the virtual clock (deterministic); the wire is made
to drop chosen frames of the sender (10.0.2.16) by wrapping the NIC's transmit.
"""

from __future__ import annotations

import pytest
from conftest import boot
from netkit import ACCEPT_ON_9, LOCAL_9, SINK, sender

from hw.net import offload
from hw.nic import Nic
from libos.net import LINGER_MAX_NS
from libos.net.tcp import SEC, Tcb

SENDER_IP = bytes([10, 0, 2, 16])
TCP_FIN = 0x01

SENDER = sender(200_000)


# Accepts, then never reads (its window closes and stays shut): waits in a second accept.
DEAF = ACCEPT_ON_9 + """    mov rdi, r13
    xor esi, esi
    xor edx, edx
    call LIB_NET_ACCEPT
    xor edi, edi
    call LIB_CORE_EXIT
""" + LOCAL_9


class Wire:
    """Wraps Nic.transmit: records (guest ns, TCP flags, payload length) of the sender's TCP
    segments and drops those ``drop(record, history)`` picks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, drop) -> None:
        self.sent: list[tuple[int, int, int]] = []
        self.dropped = 0
        real = Nic.transmit
        wire = self

        def transmit(nic: Nic, frame: bytes, gso: int = 0) -> None:
            for piece in (offload.segment(frame, gso) if gso else [frame]):  # what the wire carries (TSO)
                ip = piece[14:]
                if piece[12:14] == b"\x08\x00" and ip[9] == 6 and ip[12:16] == SENDER_IP:
                    tcp = ip[(ip[0] & 0xF) * 4:]
                    payload = len(ip[:int.from_bytes(ip[2:4], "big")]) - (ip[0] & 0xF) * 4 - (tcp[12] >> 4) * 4
                    rec = (nic.clock_ns(), tcp[13], payload)
                    wire.sent.append(rec)
                    if drop(rec, wire.sent):
                        wire.dropped += 1
                        continue
                real(nic, piece)

        monkeypatch.setattr(Nic, "transmit", transmit)

    def fins(self) -> list[int]:
        return [t for t, flags, _ in self.sent if flags & TCP_FIN]


def run(app, wire_drop, monkeypatch, receiver: str = SINK):
    sink = app("sink", receiver, libos={"net": "tcpip", "console": "buffered"})
    sender = app("sender", SENDER, libos={"net": "tcpip"})
    wire = Wire(monkeypatch, wire_drop)
    b = boot(sink, sender, net="switch", max_instructions=400_000_000)
    return b, wire, b.env("sender")


def test_a_tail_whose_retransmission_backs_off_past_5_s_is_still_delivered(app, monkeypatch):
    # The last segment (data + FIN) is lost five times: with the 200 ms RTO of a fast link the
    # sixth try leaves 0.2 + 0.4 + 0.8 + 1.6 + 3.2 = 6.2 s after the first, past the old fixed
    # 5 s linger (the flaky TAP test's failure: the guest exited with its echo tail unsent).
    def drop(rec, sent):
        return bool(rec[1] & TCP_FIN) and sum(1 for r in sent if r[1] & TCP_FIN) <= 5

    b, wire, sender = run(app, drop, monkeypatch)
    assert b.stdout == b"200000\n"  # every byte and the FIN arrived
    fins = wire.fins()
    assert len(fins) == 6 and wire.dropped == 5
    assert fins[-1] - fins[0] > 5 * SEC  # the retransmission came after the old limit
    assert [e.exit_status for e in b.envs] == [0, 0], [e.fault for e in b.envs]
    assert b.reports == []


def test_a_vanished_peer_ends_the_linger_after_the_orphan_retry_limit(app, monkeypatch):
    # From the first FIN on nothing the sender sends arrives: TCP retransmits the tail
    # ORPHAN_RETRIES times, times out once more and gives up (ETIMEDOUT); the guest then exits.
    def drop(rec, sent):
        return any(r[1] & TCP_FIN for r in sent)

    b, wire, sender = run(app, drop, monkeypatch)
    fins = wire.fins()
    assert len(fins) == 1 + Tcb.ORPHAN_RETRIES  # the first FIN and every retransmission of it
    gaps = [y - x for x, y in zip(fins, fins[1:])]
    ms = SEC // 1000  # (the virtual clock also counts the instructions around each timeout)
    # RFC 6298 5.5: each timeout doubles the next (from the second: the first RTO may still be
    # the one set before the sink's delayed ACK of the last data arrived and re-timed it)
    assert all(abs(y - min(2 * x, Tcb.RTO_MAX_NS)) < ms for x, y in zip(gaps[1:], gaps[2:])), gaps
    assert sender.exit_status == 0
    ended = b.kernel.machine.clock.now_ns()  # the sink waits for ever: time stopped at the exit
    assert fins[-1] < ended <= fins[0] + Tcb.orphan_lifetime_ns()
    # One more (doubled) timeout after the last retransmission, then TCP gave up and the guest
    # exited.
    assert abs(ended - fins[-1] - min(2 * gaps[-1], Tcb.RTO_MAX_NS)) < 2 * ms
    # The sink never got the FIN: it is reported as blocked for ever, not the sender.
    sink = b.env("sink")
    assert sink.exit_status is None and sink.fault


def test_a_peer_that_never_opens_its_window_is_reset_after_the_linger_limit(app, monkeypatch, capsys):
    # The receiver accepts and never reads: its window closes, and it answers every window probe
    # (it is alive), so TCP never gives up; the linger limit ends it with a reset.
    sink = app("sink", DEAF, libos={"net": "tcpip", "console": "buffered"})
    more = app("sender", sender(2 * Tcb.RCVBUF), libos={"net": "tcpip"})  # more than its window takes
    wire = Wire(monkeypatch, lambda rec, sent: False)
    b = boot(sink, more, net="switch", max_instructions=400_000_000)
    sender_env = b.env("sender")
    assert sender_env.exit_status == 0
    syn, rst = wire.sent[0], wire.sent[-1]
    assert syn[1] & 0x02 and rst[1] & 0x04  # from its SYN to a RST at the end
    # It exited (and began to linger) right after its sends, a moment after the handshake.
    assert LINGER_MAX_NS <= rst[0] - syn[0] <= LINGER_MAX_NS + SEC
    probes = [t for t, flags, n in wire.sent if n == 1]
    assert len(probes) > Tcb.ORPHAN_RETRIES  # answered probes do not count towards the limit
    assert "1 connection(s) still unfinished after 540 s of lingering: reset" in capsys.readouterr().err
