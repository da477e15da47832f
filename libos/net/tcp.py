"""tcp: a pure TCP engine (one connection's TCB), no I/O, time in ns passed in.

The stack (libos/net/) owns the connection table, listeners, checksums and IP;
it feeds each arriving segment to ``Tcb.input``, moves bytes with ``send`` /
``recv``, and transmits whatever ``output(now)`` returns, after every call and
whenever ``next_timer()`` passes. Nothing here reads a clock or a socket, so a
test can drive two TCBs over a simulated link with a discrete-event clock.

What it implements:

* RFC 9293 (which obsoletes RFC 793) 3.3.2 state machine and 3.10.7 "SEGMENT
  ARRIVES" processing, including simultaneous close, RST handling (SYN-SENT:
  ECONNREFUSED; synchronized states: ECONNRESET), the acceptability test of
  3.10.7.4, duplicate SYN/FIN, and an ACK for every unacceptable segment.
* Sliding window and flow control: receive buffer (default 256 KiB; the window
  advertised is its free space, all of it with RFC 7323 window scaling, else
  capped at 65535), send buffer (default 256 KiB), zero-window persist probes
  (RFC 9293 3.8.6.1), silly-window avoidance on both sides (3.8.6.2),
  reassembly of out-of-order segments (kept, delivered in order, duplicates
  dropped, overlaps trimmed).
* RFC 6298 retransmission timer (SRTT/RTTVAR, alpha 1/8, beta 1/4, K 4,
  initial RTO 1 s, Karn's algorithm, exponential backoff up to 60 s); gives up
  with ETIMEDOUT after ``MAX_RETRIES`` (15) retransmissions of the same segment,
  ``SYN_RETRIES`` (6, Linux's tcp_syn_retries, ~2 minutes) for SYN / SYN-ACK, and
  ``ORPHAN_RETRIES`` (8, Linux's tcp_orphan_retries) once the application has closed the
  connection and let go of it (``orphan``); window probes have the same limits.
* RFC 5681 slow start / congestion avoidance with an RFC 6928 initial window,
  RFC 3042 limited transmit, fast retransmit on the third duplicate ACK and
  RFC 6582 NewReno recovery.
* MSS option on SYN and SYN-ACK (RFC 9293 3.7.1); no segment exceeds the
  peer's MSS (536 when the option is absent, RFC 9293 3.7.1 / RFC 1122 4.2.2.6).
* RFC 7323 window scaling (our shift the smallest that covers the buffer) and
  timestamps (a 1 ms clock; RTT measured from the echoed TSecr, PAWS drops old
  duplicates, TS.Recent kept by 4.3's rule), and RFC 2018 SACK (the receiver
  reports up to 3 blocks, the most recent first; the sender keeps a scoreboard
  and in recovery retransmits the next hole below the highest SACKed byte for
  each duplicate ACK or newly SACKed segment, RFC 6675's idea in a simple form;
  recovery also starts once more than two segments' worth is SACKed, its
  DupThresh). Each is offered on our
  SYN and used only when the peer's SYN carries it too (``options``).
* Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2): in-order data is ACKed once two
  full segments' worth of bytes is in (as Linux counts: a run the NIC merged is
  ACKed at once) or after 40 ms (Linux's minimum delayed-ACK timer); out-of-order
  data, duplicates and data that fills a gap are ACKed at once. A read sends a
  window update only when the window would at least double (Linux's rule).
* Nagle (RFC 1122 4.2.3.4, RFC 896): while data is unacknowledged a short
  segment waits for a full one or the ACK, unless ``nodelay`` (TCP_NODELAY).

Deliberate deviations and simplifications:

* Minimum RTO 200 ms (Linux's TCP_RTO_MIN) where RFC 6298 2.4 says the RTO
  SHOULD be rounded up to 1 s: links here (in-process switch, QEMU user mode)
  have sub-millisecond RTTs, and a 1 s floor turns every tail loss into a
  one-second stall. 2.4 is a SHOULD, and Linux has used 200 ms for decades.
* The SYN is timed for an RTT sample too (as Linux does), unless it was
  retransmitted (Karn). After a timeout the SACK scoreboard is dropped (RFC
  2018 8) and go-back-N resends from SND.UNA.
* No restart of slow start after idle (RFC 5681 4.1) and no FIN_WAIT_2 timeout
  (Linux's tcp_fin_timeout for orphaned sockets): the stack may ``abort``.
* URG is ignored (RFC 6093 deprecates it); no D-SACK (RFC 2883): a block
  below SND.UNA is ignored. An RST is accepted only with exactly the
  expected sequence number; an in-window one gets a challenge ACK, and so does
  a SYN in a synchronized state (RFC 5961 3.2 and 4.2 as adopted by RFC 9293
  3.10.7.4): the real peer answers a challenge ACK with an exact RST.
* A data segment arriving in SYN-SENT with the SYN is not kept (the peer
  retransmits it).

Sequence numbers: on the wire they are 32-bit and wrap; inside, every sequence
number is an unbounded integer (ISS + offset), and a wire value is mapped to the
unbounded one nearest the reference it must be near (``seq_delta``: RFC 9293 3.4
modular comparison, RFC 1982 serial arithmetic). Comparisons are then plain
integer comparisons, which reads closer to the RFC text than ``SEQ_LT`` macros.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Linux errno values (the guest ABI's, exo/abi.py; this module imports nothing of exo).
ECONNRESET = 104
ETIMEDOUT = 110
ECONNREFUSED = 111

SYN_SENT = "SYN_SENT"
SYN_RECEIVED = "SYN_RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN_WAIT_1"
FIN_WAIT_2 = "FIN_WAIT_2"
CLOSING = "CLOSING"
TIME_WAIT = "TIME_WAIT"
CLOSE_WAIT = "CLOSE_WAIT"
LAST_ACK = "LAST_ACK"
CLOSED = "CLOSED"

MS = 1_000_000
SEC = 1_000_000_000
MAX_WINDOW = 65535  # the header field; RFC 7323 window scaling shifts it
MAX_WSCALE = 14  # RFC 7323 2.3
DELACK_NS = 40 * MS  # delayed ACK timer: Linux's TCP_DELACK_MIN (RFC 1122 4.2.3.2: at most 0.5 s)
_MASK = 0xFFFFFFFF
_SYNCHRONIZED = frozenset({SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING,
                           LAST_ACK, TIME_WAIT})
_DATA_IN = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})  # RFC 9293 3.10.7.4 seventh


def seq_delta(a: int, b: int) -> int:
    """a - b for 32-bit sequence numbers, in [-2**31, 2**31) (RFC 9293 3.4, RFC 1982)."""
    return ((a - b + 0x80000000) & _MASK) - 0x80000000


@dataclass(slots=True)
class Segment:
    """One TCP segment as the engine sees it (the stack does ports' header bytes and checksums)."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None  # MSS option (SYN segments only)
    wscale: int | None = None  # window scale option (SYN segments only; RFC 7323 2)
    sack_ok: bool = False  # SACK-permitted option (SYN segments only; RFC 2018 2)
    ts: tuple[int, int] | None = None  # timestamps option (TSval, TSecr; RFC 7323 3)
    sacks: tuple[tuple[int, int], ...] = ()  # SACK blocks, wire values (RFC 2018 3)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: data plus one for SYN and one for FIN (RFC 9293 3.4)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


class Tcb:
    """One connection. Build it with ``connect`` (active open) or ``accept_syn`` (passive open)."""

    MSL_NS = 30 * SEC           # RFC 9293 3.4.2 says 2 minutes; Linux's TIME_WAIT is 60 s = 2 * 30 s
    RTO_INIT_NS = 1 * SEC       # RFC 6298 2.1
    RTO_MIN_NS = 200 * MS       # Linux TCP_RTO_MIN (RFC 6298 2.4 says 1 s: see the module docstring)
    RTO_MAX_NS = 60 * SEC       # RFC 6298 2.5
    RTO_SYN_DATA_NS = 3 * SEC   # RFC 6298 5.7
    CLOCK_G_NS = 1 * MS         # RFC 6298 2: clock granularity G
    MAX_RETRIES = 15            # Linux tcp_retries2
    ORPHAN_RETRIES = 8          # Linux tcp_orphan_retries: its default 0 means 8 (">100 s with a 200 ms RTO")
    SYN_RETRIES = 6             # Linux tcp_syn_retries
    RCVBUF = 256 * 1024         # advertised whole when the peer takes window scaling, else 65535 of it
    SNDBUF = 256 * 1024
    DEFAULT_PEER_MSS = 536      # RFC 9293 3.7.1: no MSS option means 536

    def __init__(self, lport: int, rport: int, *, iss: int, now: int, mss: int = 1460,
                 rcvbuf: int | None = None, sndbuf: int | None = None, msl_ns: int | None = None,
                 options: bool = True, nodelay: bool = False, delayed_ack: bool = True) -> None:
        self.lport = lport
        self.rport = rport
        self.mss = mss
        self.msl_ns = self.MSL_NS if msl_ns is None else msl_ns
        self.rcvbuf_size = self.RCVBUF if rcvbuf is None else rcvbuf
        self.sndbuf_size = self.SNDBUF if sndbuf is None else sndbuf
        self.state = CLOSED
        self.error: int | None = None
        self.established = False
        # RFC 7323 and RFC 2018 options: offered on our SYN when ``options``, in use when both
        # SYNs carried them. Window shifts: snd_wscale for the windows the peer sends, rcv_wscale
        # for ours (the smallest that fits the whole receive buffer).
        self.offer_options = options
        self.ws_ok = self.ts_ok = self.sack_ok = False
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self._want_wscale = max(0, min(MAX_WSCALE, (self.rcvbuf_size - 1).bit_length() - 16))
        self.ts_recent = 0              # RFC 7323 4.3: the peer's TSval to echo
        self._last_ack_sent = 0         # RCV.NXT in the last segment sent (RFC 7323 4.3 Last.ACK.sent)
        self._sacked: list[list[int]] = []  # RFC 2018 scoreboard: [start, end) the peer holds beyond snd_una
        self._sack_rexmit = 0           # holes to retransmit now (one per duplicate ACK in recovery)
        self._hole_hint = 0             # retransmitted up to here in this recovery
        self._ooo_last = 0              # start of the out-of-order data received last (first SACK block)
        self.nodelay = nodelay          # no Nagle (TCP_NODELAY)
        self.delayed_ack = delayed_ack
        self._delack_at: int | None = None  # a delayed ACK is due (RFC 1122 4.2.3.2)
        self._unacked = 0               # bytes received in order since the last ACK sent
        self._tsecr = 0                 # TSecr of the segment being processed (0: none)
        self._active = False
        self._now = now
        # Send sequence space (RFC 9293 3.3.1), unbounded integers. snd_max is the highest
        # sequence number sent so far: snd_nxt goes back to snd_una after a timeout (go-back-N).
        self.iss = iss & _MASK
        self.snd_una = self.snd_nxt = self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.max_sndwnd = 0
        self.peer_mss = self.DEFAULT_PEER_MSS
        self._sbuf = bytearray()        # unacknowledged + unsent data; _sbuf[0] is sequence _sbase
        self._sbase = self.iss + 1
        self._fin_queued = False        # close() was called: FIN follows the data
        self._probe_end = self.iss      # a zero-window probe may be ACKed up to here
        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self._rcv_adv = 0               # right edge of the window last advertised
        self._rbuf = bytearray()        # in-order data the application has not read
        self._ooo: list[tuple[int, bytes]] = []  # out-of-order data: sorted, non-overlapping
        self._ooo_fin: int | None = None  # sequence number of a FIN that arrived ahead of data
        self._fin_rcvd = False
        # Congestion control (RFC 5681, RFC 6582).
        self.cwnd = 0
        self.ssthresh = 1 << 30         # RFC 5681 3.1: "arbitrarily high"
        self._dupacks = 0
        self._limited = 0               # RFC 3042 limited transmit: extra bytes allowed past cwnd
        self._in_recovery = False
        self._recover = self.iss
        self._partial_seen = False
        # Round-trip time (RFC 6298).
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.rto = self.RTO_INIT_NS
        self._rtt_seq: int | None = None  # timed segment's first sequence number (one at a time)
        self._rtt_time = 0
        self._syn_timed_out = False
        # Timers: absolute ns or None.
        self._rto_at: int | None = None
        self._persist_at: int | None = None
        self._tw_at: int | None = None
        self._retries = 0
        self.orphaned = False           # the application closed it and will never look again
        self._persist_backoff = 0
        self._probes = 0
        # Pending output.
        self._ctl: list[Segment] = []   # RSTs, sent before anything else
        self._ack_now = False
        self._rexmit_first = False      # retransmit the segment at snd_una
        self._probe_now = False
        # Counters for the stack's statistics and for tests.
        self.retransmits = 0
        self.fast_retransmits = 0
        self.timeouts = 0
        self.probes_sent = 0

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def connect(cls, lport: int, rport: int, *, iss: int, now: int, mss: int = 1460, **opts: int) -> Tcb:
        """Active open (RFC 9293 3.10.1): SYN_SENT; the SYN leaves with the next ``output``."""
        tcb = cls(lport, rport, iss=iss, now=now, mss=mss, **opts)
        tcb.state = SYN_SENT
        tcb._active = True
        return tcb

    @classmethod
    def accept_syn(cls, syn: Segment, *, iss: int, now: int, mss: int = 1460, **opts: int) -> Tcb:
        """Passive open from a listener's SYN (RFC 9293 3.10.7.2): SYN_RECEIVED, SYN-ACK pending."""
        tcb = cls(syn.dport, syn.sport, iss=iss, now=now, mss=mss, **opts)
        tcb.state = SYN_RECEIVED
        tcb._take_syn(syn)
        return tcb

    def _take_syn(self, syn: Segment) -> None:
        self.irs = syn.seq & _MASK
        self.rcv_nxt = self.irs + 1
        self._rcv_adv = self.rcv_nxt
        self.peer_mss = syn.mss if syn.mss else self.DEFAULT_PEER_MSS
        # RFC 7323 2.2 / RFC 2018 2: an option is in use only if both SYNs carry it (our
        # SYN-ACK answers with exactly the options the SYN offered). The SYN's window is unscaled.
        if self.offer_options:
            self.ws_ok = syn.wscale is not None
            self.snd_wscale = syn.wscale if self.ws_ok else 0
            self.rcv_wscale = self._want_wscale if self.ws_ok else 0
            self.sack_ok = syn.sack_ok
            self.ts_ok = syn.ts is not None
            if self.ts_ok:
                self.ts_recent = syn.ts[0]
        self.snd_wnd = syn.window
        self.max_sndwnd = max(self.max_sndwnd, syn.window)
        self.snd_wl1 = self.irs
        self.snd_wl2 = self.snd_una

    @property
    def eff_mss(self) -> int:
        """Largest payload to send: the peer's MSS, and never more than our own (same MTU), less
        the 12 bytes the timestamps option takes in every segment (RFC 7323 / Linux tcp_current_mss)."""
        return max(1, min(self.peer_mss, self.mss) - (12 if self.ts_ok else 0))

    def _enter_established(self) -> None:
        self.established = True
        self.state = FIN_WAIT_1 if self._fin_queued else ESTABLISHED
        smss = self.eff_mss
        self.cwnd = min(10 * smss, max(2 * smss, 14600))  # RFC 6928 2 initial window
        if self._syn_timed_out and self.srtt is None and self.rto < self.RTO_SYN_DATA_NS:
            self.rto = self.RTO_SYN_DATA_NS  # RFC 6298 5.7

    # --- application side ------------------------------------------------------------------

    def send(self, data: bytes, now: int) -> int:
        """Queue data for sending; returns how many bytes were taken (0: buffer full or closed)."""
        self._now = now
        if (self.error is not None or self._fin_queued
                or self.state not in (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT)):
            return 0
        n = min(self.sndbuf_size - len(self._sbuf), len(data))
        if n > 0:
            self._sbuf += memoryview(data)[:n]
        return max(n, 0)

    def recv(self, n: int) -> bytes:
        """Up to n bytes of in-order data (b"" when none: see ``eof`` and ``error``)."""
        if n <= 0 or not self._rbuf:
            return b""
        with memoryview(self._rbuf) as mv:
            out = bytes(mv[:n])
        del self._rbuf[:n]
        # Window update once the right edge can move by enough (RFC 9293 3.8.6.2.2) and the
        # window would at least double (Linux's __tcp_cleanup_rbuf: a reader keeping up must not
        # turn every read into an ACK, which would undo delayed ACKs); none once the peer's FIN
        # is in: it sends nothing more (and may be gone: its reply would be a RST).
        if self.state in _SYNCHRONIZED and not self._fin_rcvd:
            old = max(self._rcv_adv - self.rcv_nxt, 0)
            new = self._rcv_wnd()
            if new - old >= self._sws_threshold() and (new >= 2 * old or not self.delayed_ack):
                self._ack_now = True
        return out

    @property
    def readable(self) -> bool:
        return bool(self._rbuf) or self._fin_rcvd or self.error is not None

    @property
    def writable(self) -> bool:
        if self.error is not None:
            return True
        return (self.state in (ESTABLISHED, CLOSE_WAIT) and not self._fin_queued
                and len(self._sbuf) < self.sndbuf_size)

    @property
    def eof(self) -> bool:
        """The peer's FIN has arrived and every byte before it has been read."""
        return self._fin_rcvd and not self._rbuf

    @property
    def finished(self) -> bool:
        """CLOSED with nothing left to send (TIME_WAIT over): the stack may forget this TCB."""
        return self.state == CLOSED and not self._ctl

    @property
    def unsent(self) -> int:
        return self._sbase + len(self._sbuf) - max(self.snd_nxt, self._sbase)

    @property
    def in_flight(self) -> int:
        return self.snd_max - self.snd_una

    def close(self, now: int) -> None:
        """CLOSE (RFC 9293 3.10.4): FIN after the queued data."""
        self._now = now
        st = self.state
        if st == SYN_SENT:
            self._to_closed()
        elif st in (SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT) and not self._fin_queued:
            self._fin_queued = True
            if st == ESTABLISHED:
                self.state = FIN_WAIT_1
            elif st == CLOSE_WAIT:
                self.state = LAST_ACK
            # SYN_RECEIVED: FIN_WAIT_1 once the handshake completes (_enter_established).

    def orphan(self) -> None:
        """The application has closed the connection and let go of it (Linux's SOCK_DEAD): the
        data and FIN still go out, but retransmissions and window probes give up after
        ORPHAN_RETRIES (as Linux's tcp_orphan_retries), so a vanished peer is not retried for
        the whole MAX_RETRIES budget (about 15 minutes) on behalf of nobody."""
        self.orphaned = True

    def retry_limit(self) -> int:
        """Timeouts of the same segment (or window probes) before ETIMEDOUT, as things stand."""
        limit = self.SYN_RETRIES if self.state in (SYN_SENT, SYN_RECEIVED) else self.MAX_RETRIES
        return min(limit, self.ORPHAN_RETRIES) if self.orphaned else limit

    @classmethod
    def orphan_lifetime_ns(cls) -> int:
        """Longest an orphaned connection can go without progress before the engine gives up:
        ORPHAN_RETRIES + 1 timeouts (the last one fails), each at most RTO_MAX_NS (RFC 6298 2.5;
        the persist interval has the same cap). Any ACK that moves SND.UNA starts it again."""
        return (cls.ORPHAN_RETRIES + 1) * cls.RTO_MAX_NS

    def abort(self, now: int) -> None:
        """ABORT (RFC 9293 3.10.5): RST in a synchronized state, then CLOSED."""
        self._now = now
        if self.state in _SYNCHRONIZED and self.state != TIME_WAIT:
            self._ctl.append(self._rst(self.snd_max))
        self._to_closed()

    # --- segment arrival (RFC 9293 3.10.7) -------------------------------------------------

    def input(self, seg: Segment, now: int) -> None:
        self._now = now
        st = self.state
        if st == CLOSED:
            return  # the stack answers segments for closed connections (RFC 9293 3.10.7.1)
        if st == SYN_SENT:
            self._input_syn_sent(seg, now)
            return
        flags = seg.flags
        nxt = self.rcv_nxt
        seq = nxt + seq_delta(seg.seq, nxt)
        plen = len(seg.payload)
        seglen = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)

        if (st == SYN_RECEIVED and flags & (SYN | ACK) == SYN | ACK and seq + 1 == nxt
                and self.snd_una < self._unwrap_ack(seg.ack) <= self.snd_max):
            # Simultaneous open: the peer's SYN-ACK repeats the SYN we have; take its ACK
            # (as Linux does; the RFC acceptability test alone would refuse the segment).
            flags &= ~SYN
            seq += 1
            seglen -= 1
            seg = Segment(seg.sport, seg.dport, seg.seq, seg.ack, flags, seg.window, seg.payload)

        ts = seg.ts if self.ts_ok else None
        self._tsecr = ts[1] if ts is not None else 0
        if ts is not None and not flags & RST and seq_delta(ts[0], self.ts_recent) < 0:
            self._ack_now = True  # RFC 7323 5.3 R1 (PAWS): an old duplicate; ACK it and drop it
            return

        # First: the acceptability test (RFC 9293 3.10.7.4, the four cases).
        wnd = self._rcv_wnd()
        if seglen == 0:
            ok = seq == nxt if wnd == 0 else nxt <= seq < nxt + wnd
        elif wnd == 0:
            # "special allowance should be made to accept valid ACKs, URGs, and RSTs": a
            # segment at exactly RCV.NXT (a window probe) has its ACK processed, its data dropped.
            ok = seq == nxt
        else:
            ok = nxt <= seq < nxt + wnd or nxt <= seq + seglen - 1 < nxt + wnd
        if not ok:
            if not flags & RST:
                self._ack_now = True  # "send an acknowledgment ... drop the unacceptable segment"
                if st == TIME_WAIT and flags & FIN and seq + seglen == nxt:
                    self._tw_at = now + 2 * self.msl_ns  # retransmitted FIN: restart 2 MSL
            return
        if ts is not None and seq <= self._last_ack_sent:
            self.ts_recent = ts[0]  # RFC 7323 4.3 (2); PAWS above made sure it is not older

        # Second: RST (RFC 9293 3.10.7.4 with RFC 5961 3.2).
        if flags & RST:
            if seq != nxt:
                self._ack_now = True  # challenge ACK
                return
            if st == SYN_RECEIVED:
                # Active open (simultaneous): "connection refused"; passive: back to the
                # listener, which is the stack's; this embryonic TCB just goes away.
                self._fail(ECONNREFUSED if self._active else ECONNRESET)
            elif st in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
                self._fail(ECONNRESET)
            else:  # CLOSING, LAST_ACK, TIME_WAIT
                self._to_closed()
            return

        # Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 9293, RFC 5961 4.2).
        if flags & SYN:
            self._ack_now = True
            return

        # Fifth: the ACK field.
        if not flags & ACK:
            return
        ack = self._unwrap_ack(seg.ack)
        if st == SYN_RECEIVED:
            if not self.snd_una < ack <= self.snd_max:
                self._ctl.append(self._rst(ack))
                return
            self._enter_established()
        if ack > max(self.snd_max, self._probe_end):
            self._ack_now = True  # ACKs something not yet sent
            return
        self._process_ack(seg, seq, ack, plen, flags, now)
        if self._fin_queued and self.snd_una > self._sbase + len(self._sbuf):  # our FIN is ACKed
            st = self.state
            if st == FIN_WAIT_1:
                self.state = FIN_WAIT_2
            elif st == CLOSING:
                self._enter_time_wait(now)
                return
            elif st == LAST_ACK:
                self._to_closed()
                return
        if self.state == TIME_WAIT:
            return

        # Seventh: segment text.
        fin = bool(flags & FIN)
        if self.state in _DATA_IN:
            if plen:
                fin = self._take_data(seg.payload, seq, fin)
            if fin:
                fin_seq = seq + plen
                if fin_seq > self.rcv_nxt:
                    self._ooo_fin = fin_seq  # FIN ahead of missing data: use it once they arrive
                    self._ack_now = True
                    fin = False
                elif fin_seq < self.rcv_nxt:
                    fin = False
        else:
            fin = False  # RFC 9293: ignore text and FIN once the peer's FIN has been received
        # Eighth: FIN.
        if fin:
            self._on_fin(now)

    def _unwrap_ack(self, ack: int) -> int:
        return self.snd_una + seq_delta(ack, self.snd_una)

    def _input_syn_sent(self, seg: Segment, now: int) -> None:
        """RFC 9293 3.10.7.3: SEGMENT ARRIVES in SYN-SENT."""
        flags = seg.flags
        ack: int | None = None
        if flags & ACK:
            ack = self._unwrap_ack(seg.ack)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._ctl.append(self._rst(ack))
                return
        if flags & RST:
            if ack is not None:
                self._fail(ECONNREFUSED)
            return
        if not flags & SYN:
            return
        self._take_syn(seg)
        if ack is not None:
            self.snd_wl2 = ack
            self._enter_established()
            self._ack_advanced(ack, now)
            self._ack_now = True
        else:
            # Simultaneous open: SYN_RECEIVED, and our SYN goes again as a SYN-ACK.
            self.state = SYN_RECEIVED
            self.snd_nxt = self.iss
            self._rtt_seq = None
            self._rto_at = None

    def _process_ack(self, seg: Segment, seq: int, ack: int, plen: int, flags: int, now: int) -> None:
        """RFC 9293 3.10.7.4 fifth (ESTABLISHED processing), RFC 5681 / RFC 6582 on each ACK."""
        self._probes = 0  # the peer is alive: persist probing goes on (RFC 9293 3.8.6.1)
        una = self.snd_una
        window = seg.window << self.snd_wscale  # RFC 7323 2.3 (never on a SYN: _take_syn)
        if self.sack_ok and seg.sacks:
            newly = self._take_sacks(seg.sacks)
            if self._in_recovery and newly >= 2 * self.eff_mss:
                # Every segment the peer reports received has left the network: that many
                # holes may go (RFC 6675's pipe, simply; one ACK may report a merged run).
                self._sack_rexmit += newly // self.eff_mss - 1
            # RFC 6675 5 (DupThresh): more than 2 segments' worth SACKed above SND.UNA means a
            # loss, however few ACKs said so (a receiver's NIC that merges segments sends one ACK
            # for what were many duplicates).
            if (not self._in_recovery and ack == una and una >= self._recover
                    and sum(b - a for a, b in self._sacked) > 2 * self.eff_mss and self._dupacks < 3):
                self._dupacks = 3
                self._enter_recovery()
        if ack > una:
            self._ack_advanced(ack, now)
        elif (ack == una and plen == 0 and not flags & (SYN | FIN) and self.snd_max > una
              and window == self.snd_wnd):
            self._dupack()  # RFC 5681 2 "DUPLICATE ACKNOWLEDGMENT", all five conditions
        # Window update (RFC 9293 3.10.7.4: SND.UNA =< SEG.ACK, and only from a newer segment
        # by SND.WL1/WL2, so a reordered old segment cannot shrink or reopen the window).
        if ack >= self.snd_una and (self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack)):
            self.snd_wnd = window
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if window > self.max_sndwnd:
                self.max_sndwnd = window
            if window > 0:
                self._persist_at = None
                self._persist_backoff = 0

    def _ack_advanced(self, ack: int, now: int) -> None:
        una = self.snd_una
        acked = ack - una
        if self.ts_ok and self._tsecr:
            # RFC 7323 4.1: the echoed timestamp times the segment being acknowledged, whether
            # or not it was retransmitted (no Karn ambiguity); the clock ticks in ms.
            rtt_ms = (now // MS - self._tsecr) & _MASK
            if rtt_ms < 1 << 31:
                self.rtt_sample(rtt_ms * MS)
            self._rtt_seq = None
        # RFC 6298 3 / Karn: a sample only from a segment that was never retransmitted.
        elif self._rtt_seq is not None and ack > self._rtt_seq:
            self.rtt_sample(now - self._rtt_time)
            self._rtt_seq = None
        if self._sacked:
            self._sacked = [[max(a, ack), b] for a, b in self._sacked if b > ack]
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.snd_max < ack:
            self.snd_max = ack  # a zero-window probe byte was taken
        data_acked = min(ack, self._sbase + len(self._sbuf)) - self._sbase
        if data_acked > 0:
            del self._sbuf[:data_acked]
            self._sbase += data_acked
        self._retries = 0
        self._limited = 0
        smss = self.eff_mss
        if una == self.iss:
            acked -= 1  # the SYN does not count for congestion control
        if self._in_recovery:
            if ack >= self._recover:
                # RFC 6582 3.2 step 6, full acknowledgment: deflate and leave recovery.
                self._in_recovery = False
                self._dupacks = 0
                self.cwnd = min(self.ssthresh, max(self.snd_max - ack, smss) + smss)
            else:
                # RFC 6582 3.2 step 5, partial acknowledgment: retransmit the next hole,
                # deflate by the amount acknowledged, add back one SMSS if that was >= SMSS.
                if not (self.sack_ok and ack < self._hole_hint):  # (not if the holes went already)
                    self._rexmit_first = True
                    self._hole_hint = max(self._hole_hint, ack + smss)
                self.cwnd = max(self.cwnd - acked + (smss if acked >= smss else 0), smss)
                if not self._partial_seen:
                    self._partial_seen = True
                    self._rto_at = now + self.rto
                return
        else:
            self._dupacks = 0
            if acked > 0:
                if self.cwnd < self.ssthresh:
                    self.cwnd += min(acked, smss)  # RFC 5681 3.1 (2), slow start
                else:
                    self.cwnd += max(1, smss * smss // self.cwnd)  # RFC 5681 3.1 (3)
        # RFC 6298 5.2 / 5.3.
        self._rto_at = None if self.snd_una >= self.snd_max else now + self.rto

    def _dupack(self) -> None:
        smss = self.eff_mss
        self._dupacks += 1
        if self._in_recovery:
            self.cwnd += smss  # RFC 5681 3.2 step 4 / RFC 6582 3.2 step 4: inflate
            if self.sack_ok:
                self._sack_rexmit += 1  # and the next hole the SACK blocks show (RFC 6675 5 (C))
        elif self._dupacks < 3:
            # RFC 3042 limited transmit: each of the first two duplicate ACKs lets one new
            # segment out past cwnd, so a small window still gets its three duplicates.
            self._limited = self._dupacks * smss
        elif self._dupacks == 3 and self.snd_una >= self._recover:
            self._enter_recovery()

    def _enter_recovery(self) -> None:
        """Fast retransmit and recovery: RFC 5681 3.2 steps 2-3, RFC 6582 3.2 steps 2-3 (only when
        the ACK covers more than "recover", so the duplicates of a go-back-N do not start it again)."""
        smss = self.eff_mss
        flight = self.snd_max - self.snd_una
        self.ssthresh = max(flight // 2, 2 * smss)
        self._recover = self.snd_max
        self._in_recovery = True
        self._partial_seen = False
        self._rexmit_first = True
        self._limited = 0
        self.cwnd = self.ssthresh + 3 * smss
        self.fast_retransmits += 1
        self._hole_hint = self.snd_una + smss  # _rexmit_first resends the first hole

    def _take_data(self, payload: bytes, seq: int, fin: bool) -> bool:
        """Keep the part of payload inside the window; returns fin, cleared if the tail was cut.
        In-order data is ACKed after two full segments' worth or DELACK_NS (RFC 1122 4.2.3.2, RFC
        5681 4.2); out-of-order data, a duplicate, and data that fills a gap at once (RFC 5681 4.2)."""
        nxt = self.rcv_nxt
        data = memoryview(payload)
        if seq < nxt:  # duplicate head: trim (RFC 9293 3.10.7.4 "trimmed")
            data = data[nxt - seq:]
            seq = nxt
        limit = nxt + self._rcv_wnd()
        if seq + len(data) > limit:  # beyond the window: trim the tail, and with it the FIN
            data = data[:max(limit - seq, 0)]
            fin = False
        if not data:
            self._ack_now = True
            return fin
        if seq == nxt:
            if self._ooo:
                self._ack_now = True  # it fills (part of) a gap
            # Counted in bytes, as Linux does: two full segments' worth, so that a merged run
            # (the NIC's receive coalescing) is acknowledged at once, not as one segment.
            self._unacked += len(data)
            if self._unacked >= 2 * (self.mss - 40) or not self.delayed_ack:
                self._ack_now = True
            elif self._delack_at is None:
                self._delack_at = self._now + DELACK_NS
            self._rbuf += data
            self.rcv_nxt = nxt = seq + len(data)
            ooo = self._ooo
            while ooo and ooo[0][0] <= nxt:
                s, d = ooo.pop(0)
                end = s + len(d)
                if end > nxt:
                    self._rbuf += memoryview(d)[nxt - s:]
                    nxt = end
            self.rcv_nxt = nxt
            if self._ooo_fin is not None and self._ooo_fin == nxt:
                self._ooo_fin = None
                self._on_fin(self._now)
        else:
            self._ack_now = True
            self._ooo_last = seq
            self._ooo_insert(seq, data)
        return fin

    def _ooo_insert(self, start: int, data: memoryview) -> None:
        """Store the parts of [start, start+len) not already held (duplicates dropped, overlaps trimmed)."""
        end = start + len(data)
        pos = start
        pieces: list[tuple[int, bytes]] = []
        for s, d in self._ooo:
            e = s + len(d)
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                pieces.append((pos, bytes(data[pos - start:s - start])))
            pos = e
            if pos >= end:
                break
        if pos < end:
            pieces.append((pos, bytes(data[pos - start:])))
        if pieces:
            self._ooo.extend(pieces)
            self._ooo.sort(key=itemgetter(0))

    def _on_fin(self, now: int) -> None:
        """RFC 9293 3.10.7.4 eighth: the FIN is in order."""
        if self._fin_rcvd:
            return
        self._fin_rcvd = True
        self.rcv_nxt += 1
        self._ack_now = True
        st = self.state
        if st == ESTABLISHED:
            self.state = CLOSE_WAIT
        elif st == FIN_WAIT_1:
            self.state = CLOSING  # our FIN is not ACKed yet (else we would be in FIN_WAIT_2)
        elif st == FIN_WAIT_2:
            self._enter_time_wait(now)

    # --- windows ---------------------------------------------------------------------------

    def _rcv_wnd(self) -> int:
        return max(0, min(self.rcvbuf_size - len(self._rbuf), MAX_WINDOW << self.rcv_wscale))

    def _sws_threshold(self) -> int:
        return max(1, min(self.rcvbuf_size // 2, self.mss))

    def _adv_window(self, syn: bool = False) -> int:
        """The window field to send, with receiver SWS avoidance (RFC 9293 3.8.6.2.2): the right
        edge moves only by at least min(RCV.BUFF/2, MSS), and never moves left (3.8.6). Scaled
        by rcv_wscale (rounded up, as Linux does, so the edge cannot move left by the rounding),
        except on a SYN (RFC 7323 2.2)."""
        wnd = self._rcv_wnd()
        old = max(self._rcv_adv - self.rcv_nxt, 0)
        if old < wnd < old + self._sws_threshold():
            wnd = old
        shift = 0 if syn else self.rcv_wscale
        field = min((wnd + (1 << shift) - 1) >> shift, MAX_WINDOW)
        self._rcv_adv = self.rcv_nxt + (field << shift)
        return field

    # --- round-trip time (RFC 6298) --------------------------------------------------------

    def rtt_sample(self, r: int) -> None:
        """Feed one RTT measurement R (ns): RFC 6298 2.2 / 2.3, then RTO clamped (2.4, 2.5)."""
        if self.srtt is None or self.rttvar is None:
            self.srtt = float(r)
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)  # beta = 1/4
            self.srtt = 0.875 * self.srtt + 0.125 * r                      # alpha = 1/8
        rto = self.srtt + max(self.CLOCK_G_NS, 4 * self.rttvar)           # K = 4
        self.rto = int(min(max(rto, self.RTO_MIN_NS), self.RTO_MAX_NS))

    # --- timers ----------------------------------------------------------------------------

    def next_timer(self) -> int | None:
        """Absolute ns of the earliest deadline; the last time seen if output is already due."""
        if self._ctl or self._ack_now or self._rexmit_first or self._probe_now or self._sack_rexmit:
            return self._now
        best: int | None = None
        for t in (self._rto_at, self._persist_at, self._tw_at, self._delack_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def _run_timers(self, now: int) -> None:
        if self._tw_at is not None and now >= self._tw_at:
            self._to_closed()
            return
        if self._rto_at is not None and now >= self._rto_at:
            self._on_rto()
            self._sacked.clear()  # RFC 2018 8: after a timeout, SACK information is ignored
            self._sack_rexmit = 0
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
        if self._persist_at is not None and now >= self._persist_at:
            self._on_persist(now)

    def _on_rto(self) -> None:
        """RFC 6298 5.4-5.6 and RFC 5681 3.1 (4): retransmission timeout."""
        # LAB 6 BEGIN tcp-rto: on a retransmission timeout back off, shrink the window and resend from snd_una (extra credit)
        self._rto_at = None
        if self.snd_una >= self.snd_max:
            return
        self._retries += 1
        handshake = self.state in (SYN_SENT, SYN_RECEIVED)
        if self._retries > self.retry_limit():
            self._fail(ETIMEDOUT)
            return
        self.timeouts += 1
        smss = self.eff_mss
        if handshake:
            self._syn_timed_out = True
        else:
            self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * smss)
            self.cwnd = smss  # loss window
        self._in_recovery = False
        self._dupacks = 0
        self._limited = 0
        self._recover = self.snd_max  # RFC 6582 3.2 step 1 ("recover" here is one past the highest sent)
        self.rto = min(self.rto * 2, self.RTO_MAX_NS)  # 5.5: back off
        self._rtt_seq = None  # Karn
        self.snd_nxt = self.snd_una  # go back: slow start resends what followed
        self._rexmit_first = True
        # LAB 6 END

    def _on_persist(self, now: int) -> None:
        """RFC 9293 3.8.6.1: probe a zero window with one byte, backing off like the RTO."""
        self._persist_at = None
        self._probes += 1
        if self._probes > self.retry_limit():
            self._fail(ETIMEDOUT)
            return
        self._probe_now = True
        self._persist_backoff += 1

    def _persist_interval(self) -> int:
        base = max(self.rto, self.RTO_MIN_NS)
        return min(base << min(self._persist_backoff, 16), self.RTO_MAX_NS)

    def _enter_time_wait(self, now: int) -> None:
        self.state = TIME_WAIT
        self._rto_at = self._persist_at = None
        self._rexmit_first = self._probe_now = False
        self._tw_at = now + 2 * self.msl_ns

    def _to_closed(self) -> None:
        self.state = CLOSED
        self._rto_at = self._persist_at = self._tw_at = None
        self._ack_now = self._rexmit_first = self._probe_now = False
        self._sbuf.clear()
        self._ooo.clear()
        self._delack_at = None

    def _fail(self, errno: int) -> None:
        self.error = errno
        self._ctl.clear()
        self._to_closed()

    # --- output ----------------------------------------------------------------------------

    def _rst(self, seq: int) -> Segment:
        return Segment(self.lport, self.rport, seq & _MASK, 0, RST, 0)

    def _segment_at(self, seq: int, limit: int) -> tuple[Segment, int]:
        """The segment that starts at seq: the SYN, or data up to limit, FIN if it ends the stream.
        Returns it and the sequence space it covers."""
        if seq == self.iss:
            if self.state == SYN_SENT:
                return Segment(self.lport, self.rport, seq & _MASK, 0, SYN, self._adv_window(syn=True),
                               mss=self.mss), 1
            return Segment(self.lport, self.rport, seq & _MASK, self.rcv_nxt & _MASK, SYN | ACK,
                           self._adv_window(syn=True), mss=self.mss), 1
        data_end = self._sbase + len(self._sbuf)
        end = min(limit, data_end)
        n = max(end - seq, 0)
        flags = ACK
        if n:
            off = seq - self._sbase
            with memoryview(self._sbuf) as mv:
                payload = bytes(mv[off:off + n])
            if seq + n == data_end:
                flags |= PSH
        else:
            payload = b""
        if self._fin_queued and seq + n == data_end:
            flags |= FIN
        return Segment(self.lport, self.rport, seq & _MASK, self.rcv_nxt & _MASK, flags,
                       self._adv_window(), payload), n + (1 if flags & FIN else 0)

    def _emit(self, out: list[Segment], seg: Segment, seq: int, length: int, now: int) -> None:
        end = seq + length
        if seq < self.snd_max:
            self.retransmits += 1
            self._rtt_seq = None  # Karn: nothing in flight is timed across a retransmission
        elif self._rtt_seq is None and length:
            self._rtt_seq = seq
            self._rtt_time = now
        if end > self.snd_max:
            self.snd_max = end
        if end > self.snd_nxt:
            self.snd_nxt = end
        if length and self._rto_at is None:
            self._rto_at = now + self.rto  # RFC 6298 5.1
        self._ack_now = False
        out.append(seg)

    def output(self, now: int) -> list[Segment]:
        """Segments to transmit now: runs expired timers, then RSTs, retransmissions, new data,
        FIN, window probes and ACKs, in that order."""
        self._now = now
        self._run_timers(now)
        out = self._ctl
        self._ctl = []
        st = self.state
        if st == CLOSED:
            return out
        if st == TIME_WAIT:
            if self._ack_now:
                out.append(self._pure_ack())
                self._ack_now = False
            return out
        smss = self.eff_mss
        ack_due = self._ack_now
        if self._rexmit_first:
            self._rexmit_first = False
            if self.snd_una < self.snd_max:
                # At most what the peer's window takes (one byte into a zero window, as a
                # probe would): a full segment into a tiny window would push snd_nxt past the
                # window's edge, and only timeouts would move the data after it.
                size = min(smss, max(self.snd_wnd, 1))
                seg, n = self._segment_at(self.snd_una, self.snd_una + size)
                self._emit(out, seg, self.snd_una, n, now)
        if self._sack_rexmit:
            self._send_holes(out, now)
        if self.snd_nxt == self.iss and st in (SYN_SENT, SYN_RECEIVED):
            seg, n = self._segment_at(self.iss, self.iss + 1)
            self._emit(out, seg, self.iss, n, now)
        elif st == SYN_RECEIVED and self._ack_now:
            seg, n = self._segment_at(self.iss, self.iss + 1)  # answer a duplicate SYN
            self._emit(out, seg, self.iss, n, now)
        if self.snd_una > self.iss:  # synchronized and our SYN ACKed: data and FIN may go
            self._send_new(out, now)
        if st != SYN_SENT and (self._ack_now or (ack_due and self._ooo and self.sack_ok)):
            out.append(self._pure_ack())  # (data segments carry no SACK blocks: an ACK does)
        self._ack_now = False
        self._stamp(out, now)
        return out

    def _stamp(self, out: list[Segment], now: int) -> None:
        """Options on the segments leaving: timestamps on all once in use, and on a SYN the ones
        offered (SYN) or agreed (SYN-ACK); every segment but a RST carries our ACK, so the
        delayed ACK is done."""
        for seg in out:
            flags = seg.flags
            if flags & RST:
                continue
            if flags & SYN:
                offer = flags & ACK == 0 and self.offer_options
                if offer or self.ws_ok:
                    seg.wscale = self._want_wscale
                seg.sack_ok = offer or self.sack_ok
                if offer or self.ts_ok:
                    seg.ts = ((now // MS) & _MASK, self.ts_recent if self.ts_ok else 0)
            elif self.ts_ok:
                seg.ts = ((now // MS) & _MASK, self.ts_recent)
            if flags & ACK:
                self._last_ack_sent = self.rcv_nxt
                self._delack_at = None
                self._unacked = 0

    # --- SACK (RFC 2018) -------------------------------------------------------------------

    def _take_sacks(self, blocks: tuple[tuple[int, int], ...]) -> int:
        """Add the peer's SACK blocks to the scoreboard: [start, end) ranges above SND.UNA,
        merged; a block outside (SND.UNA, SND.MAX] (a D-SACK, or nonsense) is ignored.
        Returns how many bytes are newly SACKed."""
        una = self.snd_una
        before = sum(b - a for a, b in self._sacked)
        for left, right in blocks:
            a, b = una + seq_delta(left, una), una + seq_delta(right, una)
            if not una < a < b <= self.snd_max:
                continue
            merged = []
            for s, e in self._sacked:
                if e < a or s > b:
                    merged.append([s, e])
                else:
                    a, b = min(a, s), max(b, e)
            merged.append([a, b])
            merged.sort()
            self._sacked = merged
        return sum(b - a for a, b in self._sacked) - before

    def _send_holes(self, out: list[Segment], now: int) -> None:
        """In recovery, retransmit the next holes below the highest SACKed byte, one segment per
        duplicate ACK (RFC 6675 5 (C) in a simple form: the scoreboard says what is missing)."""
        n, self._sack_rexmit = self._sack_rexmit, 0
        if not self._in_recovery or not self._sacked:
            return
        smss = self.eff_mss
        while n > 0:
            start = max(self._hole_hint, self.snd_una)
            hole = None
            for a, b in self._sacked:
                if start < a:
                    hole = (start, min(a, start + smss))
                    break
                start = max(start, b)
            if hole is None:
                return
            seg, length = self._segment_at(hole[0], hole[1])
            self._emit(out, seg, hole[0], length, now)
            self._hole_hint = hole[0] + length
            n -= 1

    def _sack_blocks(self) -> tuple[tuple[int, int], ...]:
        """The out-of-order data held, as SACK blocks: the one holding the segment that came
        last first, then the others (RFC 2018 4); 3 fit beside timestamps, 4 without."""
        if not self.sack_ok or not self._ooo:
            return ()
        ranges: list[list[int]] = []
        for s, d in self._ooo:
            if ranges and ranges[-1][1] >= s:
                ranges[-1][1] = max(ranges[-1][1], s + len(d))
            else:
                ranges.append([s, s + len(d)])
        first = [r for r in ranges if r[0] <= self._ooo_last < r[1]]
        rest = [r for r in reversed(ranges) if r not in first]
        return tuple((a & _MASK, b & _MASK) for a, b in (first + rest)[:3 if self.ts_ok else 4])

    def _send_new(self, out: list[Segment], now: int) -> None:
        smss = self.eff_mss
        data_end = self._sbase + len(self._sbuf)
        while True:
            nxt = self.snd_nxt
            left = data_end - nxt
            if left > 0:
                edge = self.snd_una + min(self.snd_wnd, self.cwnd + self._limited)
                n = min(smss, left, edge - nxt)
                if n <= 0:
                    break
                # Nagle (RFC 1122 4.2.3.4, RFC 896): while data is in flight, a short segment waits
                # for a full one or for the ACK, unless TCP_NODELAY; the stream's end goes with its FIN.
                if (n < smss and not self.nodelay and self.snd_max > self.snd_una
                        and not (self._fin_queued and nxt + n == data_end)):
                    break
                # Sender SWS avoidance (RFC 9293 3.8.6.2.1): a short segment only if it is all
                # there is, or half the largest window seen, or nothing is in flight.
                if (n < smss and n < left and n < self.max_sndwnd // 2
                        and self.snd_max > self.snd_una):
                    break
                seg, length = self._segment_at(nxt, nxt + n)
            elif self._fin_queued and nxt == data_end:
                seg, length = self._segment_at(nxt, nxt)  # FIN alone (needs no window)
            else:
                break
            self._emit(out, seg, nxt, length, now)
        if self._probe_now:
            self._probe_now = False
            nxt = self.snd_nxt
            if nxt < data_end and self.snd_wnd == 0:
                # One byte beyond the window; not counted as sent (snd_nxt stays), so an
                # ACK of it is allowed up to _probe_end (RFC 9293 3.8.6.1).
                with memoryview(self._sbuf) as mv:
                    payload = bytes(mv[nxt - self._sbase:nxt - self._sbase + 1])
                self._probe_end = max(self._probe_end, nxt + 1)
                out.append(Segment(self.lport, self.rport, nxt & _MASK, self.rcv_nxt & _MASK, ACK,
                                   self._adv_window(), payload))
                self._ack_now = False
                self.probes_sent += 1
        # Zero window with data waiting and nothing in flight to bring an ACK: persist.
        if (self.snd_wnd == 0 and self.snd_nxt < data_end and self._rto_at is None
                and self._persist_at is None):
            self._persist_at = now + self._persist_interval()

    def _pure_ack(self) -> Segment:
        # seq = the highest sent (Linux's snd_nxt): after a go-back-N, SND.NXT may be below
        # the peer's RCV.NXT, which would make the ACK unacceptable there. But never beyond the
        # right edge of the peer's window (Linux's tcp_acceptable_seq): sent into a closed window,
        # the peer's acceptability test drops a zero-length segment past RCV.NXT with its ACK
        # (RFC 9293 3.10.7.4), so the peer would never learn its data arrived and both sides
        # could sit in backed-off timers (a 4 MiB echo once stalled 120 s that way).
        seq = min(self.snd_max, self.snd_una + self.snd_wnd)
        return Segment(self.lport, self.rport, seq & _MASK, self.rcv_nxt & _MASK, ACK, self._adv_window(),
                       sacks=self._sack_blocks())

    def __repr__(self) -> str:
        return (f"Tcb({self.lport}->{self.rport} {self.state} una={self.snd_una & _MASK} "
                f"nxt={self.snd_nxt & _MASK} rcv_nxt={self.rcv_nxt & _MASK} err={self.error})")
