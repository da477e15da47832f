"""The user backend's own small TCP: the gateway's end of one forwarded connection.

For each host connection accepted on a ``hostfwd=tcp:...`` port, the gateway
opens a TCP connection to the guest (it is the active opener) and copies bytes
both ways. This is a deliberately small TCP (RFC 793/9293), pure like the
libOS engine: no sockets, no clock of its own (``now`` is passed in, seconds);
user.py owns the host socket and the frames.

What it does:
* three-way handshake with the MSS option (RFC 9293 3.7.1); SYN retransmitted;
* in-order delivery with out-of-order segments buffered until the gap fills;
  duplicates and old data trimmed; one cumulative ACK per batch of input;
* retransmission timeout from the RFC 6298 estimator (SRTT, RTTVAR, Karn's rule,
  exponential backoff), go-back-N from SND.UNA on a timeout, fast retransmit of
  one segment on the third duplicate ACK (RFC 5681 3.2);
* the guest's advertised window respected (RFC 9293 3.8.6.2.1 window update rule
  with SND.WL1/WL2), zero-window probes of one byte on the persist timer;
* our receive window is the room left in the buffer toward the host socket, up to
  256 KiB with RFC 7323 window scaling when the guest's SYN-ACK takes the option
  (the guest's windows are scaled as its option says);
* FIN both ways, RST both ways (an RST in the window aborts; RFC 5961 is not
  implemented), a lingering state after close that re-ACKs a retransmitted FIN.

What it does not: SACK, timestamps, congestion control
(the wire is a local link), urgent data, simultaneous open, keep-alives.

Sequence numbers are kept as unbounded integers relative to our ISS and the
guest's IRS, unwrapped from the 32-bit wire values around the expected value,
so comparisons never need modular arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MOD = 1 << 32
RCV_BUF = 256 * 1024  # toward the host socket; above 65,535 only with window scaling
WSCALE = 2  # our RFC 7323 shift: 65,535 << 2 covers RCV_BUF
SND_BUF = 256 * 1024
DEFAULT_MSS = 536  # RFC 9293 3.7.1: when the SYN carries no MSS option
OUR_MSS = 1460
RTO_INITIAL = 1.0  # RFC 6298 2.1
RTO_MIN = 0.2  # RFC 6298 says 1 s; like Linux we take 200 ms on a local link
RTO_MAX = 30.0
MAX_RETRIES = 8  # then give up: RST to the guest, reset the host socket
LINGER = 2.0  # after both FINs: how long we stay to re-ACK a retransmitted FIN


@dataclass(slots=True)
class Out:
    """A segment to send: wire values (already wrapped to 32 bits)."""

    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int | None = None
    wscale: int | None = None  # on the SYN: the window scale option (RFC 7323 2)


def _unwrap(wire: int, near: int) -> int:
    """The unbounded value congruent to ``wire`` mod 2**32 closest to ``near``."""
    d = (wire - near) % MOD
    if d >= MOD // 2:
        d -= MOD
    return near + d


class GatewayTcp:
    def __init__(self, *, iss: int, now: float, mss: int = OUR_MSS) -> None:
        self.iss = iss % MOD
        self.state = "SYN_SENT"
        self.error: str | None = None  # "refused", "reset", "timeout" once it failed
        self.our_mss = mss
        self.peer_mss = DEFAULT_MSS
        # send side, relative to the ISS: the SYN is 0, data byte k is 1 + k
        self.snd_una = 0
        self.snd_nxt = 1  # the SYN goes out at once
        self.snd_max = 1  # the highest sequence number sent so far (snd_nxt rewinds on a timeout)
        self.snd_wnd = 1
        self.wl1 = 0
        self.wl2 = 0
        self.sndbuf = bytearray()  # unacknowledged and unsent data, from sequence number sndbuf_seq
        self.sndbuf_seq = 1
        self.fin_queued = False  # the host closed its side: FIN after the data
        self.fin_acked = False
        # receive side, relative to the IRS (unknown until the SYN-ACK)
        self.irs = 0
        self.rcv_nxt = 0
        self.ooo: dict[int, bytes] = {}  # out-of-order data by relative sequence number
        self.ooo_fin: int | None = None  # where the guest's FIN is, once seen out of order
        self.to_host = bytearray()  # in-order data not yet written to the host socket
        self.peer_fin = False  # the guest's FIN was received in order
        self.last_adv = 0
        self.need_ack = False
        self.snd_shift = 0  # RFC 7323: the guest's window field is shifted by this
        self.rcv_shift = 0  # and ours, once the guest's SYN-ACK carried the option
        # timers (absolute seconds): retransmission/persist, linger
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto_base = RTO_INITIAL  # from the estimator; the timer uses it doubled per backoff
        self.retries = 0  # consecutive timeouts: the backoff exponent
        self.recover: int | None = None  # in fast recovery until this is acknowledged (RFC 6582)
        self.rtx_at: float | None = now + self.rto
        self.rtt_seq: int | None = 0  # the segment being timed (Karn: never a retransmitted one)
        self.rtt_start = now
        self.dupacks = 0
        self.linger_until: float | None = None
        self._syn_pending = True
        # counters
        self.retransmits = 0
        self.segments_in = 0
        self.segments_out = 0

    # ------------------------------------------------------------ host side
    @property
    def send_space(self) -> int:
        return 0 if self.fin_queued or self.state in ("CLOSED", "LINGER") else SND_BUF - len(self.sndbuf)

    def send(self, data: bytes) -> int:
        """Queue bytes read from the host socket; the count taken."""
        n = min(len(data), self.send_space)
        self.sndbuf += data[:n]
        return n

    def shutdown(self) -> None:
        """The host closed its side: send FIN after the queued data."""
        self.fin_queued = True

    def consumed(self, n: int) -> None:
        """``n`` bytes of ``to_host`` were written to the host socket: the window reopens."""
        del self.to_host[:n]
        win = self._window()
        if win - self.last_adv >= min(self.our_mss, self._window_cap() // 2) or (self.last_adv == 0 and win > 0):
            self.need_ack = True  # a window update (RFC 9293 3.8.6.2.2, receiver SWS avoidance)

    def abort(self) -> None:
        """The host connection failed: RST the guest."""
        if self.state not in ("CLOSED", "LINGER"):
            self._rst_pending = True
            self._close("reset")

    @property
    def finished(self) -> bool:
        return self.state == "CLOSED"

    def _close(self, error: str | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.state = "CLOSED"
        self.rtx_at = None
        self.linger_until = None

    def _window_cap(self) -> int:
        return min(RCV_BUF, 0xFFFF << self.rcv_shift)

    def _window(self) -> int:
        # out-of-order data sits inside the window already advertised: only delivered bytes shrink it
        return max(0, self._window_cap() - len(self.to_host))

    # ----------------------------------------------------------------- input
    def input(self, seq: int, ack: int, flags: int, window: int, payload: bytes, mss: int | None,
              now: float, wscale: int | None = None) -> None:  # fmt: skip
        self.segments_in += 1
        if self.state == "CLOSED":
            return
        if self.state == "SYN_SENT":
            self._input_syn_sent(seq, ack, flags, window, mss, now, wscale)
            return
        window <<= self.snd_shift  # never a SYN here (RFC 7323 2.2)
        seg_seq = _unwrap(seq, self.irs + self.rcv_nxt) - self.irs
        seg_ack = _unwrap(ack, self.iss + self.snd_una) - self.iss
        if flags & RST:
            # RFC 9293 3.10.7.4: an RST is acceptable if its sequence number is in the window
            if self.rcv_nxt <= seg_seq <= self.rcv_nxt + max(self._window(), 1):
                self._close(None if self.state == "LINGER" else "reset")
            return
        if flags & SYN:  # our ACK of the SYN-ACK was lost: the guest repeats it; ACK again
            self.need_ack = True
            return
        if not flags & ACK:
            return
        self._input_ack(seg_seq, seg_ack, window, bool(payload) or bool(flags & FIN), now)
        if payload or flags & FIN:
            self._input_data(seg_seq, payload, bool(flags & FIN))
        if self.state == "LINGER" and not (payload or flags & FIN):
            return
        self._check_done(now)

    def _input_syn_sent(self, seq: int, ack: int, flags: int, window: int, mss: int | None, now: float,
                        wscale: int | None = None) -> None:
        ack_ok = flags & ACK and (ack - self.iss) % MOD == 1
        if flags & RST:
            if ack_ok:
                self._close("refused")  # nobody listens on the guest port
            return
        if not (flags & SYN) or not ack_ok:
            return  # RFC 9293 3.10.7.3 would RST a bad ACK; dropping is enough: we retransmit
        self.irs = seq
        self.rcv_nxt = 1
        self.snd_una = 1
        self.peer_mss = max(64, min(mss if mss is not None else DEFAULT_MSS, self.our_mss))
        if wscale is not None:  # RFC 7323 2.2: both SYNs carried the option
            self.snd_shift, self.rcv_shift = min(wscale, 14), WSCALE
        self.snd_wnd = window
        self.wl1, self.wl2 = 0, 1
        self.state = "ESTABLISHED"
        self._syn_pending = False
        if self.retries == 0:
            self._rtt_sample(now)
        self.retries = 0
        self.rtx_at = None
        self.need_ack = True

    def _rtt_sample(self, now: float) -> None:
        r = now - self.rtt_start
        if self.srtt is None:  # RFC 6298 2.2
            self.srtt, self.rttvar = r, r / 2
        else:  # RFC 6298 2.3
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto_base = min(RTO_MAX, max(RTO_MIN, self.srtt + max(0.001, 4 * self.rttvar)))
        self.rtt_seq = None

    @property
    def rto(self) -> float:
        """RFC 6298 5.5: doubled on each timeout; the backoff ends when new data is acknowledged."""
        return min(RTO_MAX, self.rto_base * (1 << min(self.retries, 16)))

    def _input_ack(self, seg_seq: int, seg_ack: int, window: int, has_data: bool, now: float) -> None:
        if seg_ack > self.snd_max:  # acknowledges something never sent: ACK and drop (RFC 9293 3.10.7.4)
            self.need_ack = True
            return
        if seg_ack > self.snd_una:
            data_end = self.sndbuf_seq + len(self.sndbuf)
            drop = min(seg_ack, data_end) - self.sndbuf_seq
            if drop > 0:
                del self.sndbuf[:drop]
                self.sndbuf_seq += drop
            if self.fin_queued and seg_ack == data_end + 1:
                self.fin_acked = True
            self.snd_una = seg_ack
            if self.snd_nxt < self.snd_una:
                self.snd_nxt = self.snd_una
            if self.rtt_seq is not None and seg_ack > self.rtt_seq:
                self._rtt_sample(now)
            self.retries = 0
            self.dupacks = 0
            if self.recover is not None:
                if seg_ack < self.recover:  # RFC 6582 3.2 step 5: a partial ACK, resend the next hole now
                    self._fast_retransmit = True
                else:
                    self.recover = None
            # RFC 6298 5.3: restart the timer when new data is acknowledged
            self.rtx_at = now + self.rto if self.snd_max > self.snd_una else None
        elif seg_ack == self.snd_una and self.snd_max > self.snd_una and not has_data and window == self.snd_wnd:
            self.dupacks += 1  # RFC 5681 2: a duplicate ACK
            if self.dupacks == 3 and self.recover is None:
                self._fast_retransmit = True
                self.recover = self.snd_max
        # RFC 9293 3.10.7.4: update the send window from the freshest segment only
        if seg_seq > self.wl1 or (seg_seq == self.wl1 and seg_ack >= self.wl2):
            self.snd_wnd = window
            self.wl1, self.wl2 = seg_seq, seg_ack

    def _input_data(self, seg_seq: int, payload: bytes, fin: bool) -> None:
        self.need_ack = True  # every segment with data or FIN is acknowledged (duplicates too)
        if self.peer_fin:
            return
        end = seg_seq + len(payload)
        if fin:
            self.ooo_fin = end
        # keep only the part inside [RCV.NXT, RCV.NXT + RCV.WND) (RFC 9293 3.10.7.4)
        lo = max(seg_seq, self.rcv_nxt)
        hi = min(end, self.rcv_nxt + self._window())
        payload = payload[lo - seg_seq : hi - seg_seq] if hi > lo else b""
        seg_seq = lo
        if payload:
            if seg_seq == self.rcv_nxt:
                self.to_host += payload
                self.rcv_nxt += len(payload)
                self._drain_ooo()
            else:
                old = self.ooo.get(seg_seq)
                if old is None or len(old) < len(payload):
                    self.ooo[seg_seq] = payload
        if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt:
            self.rcv_nxt += 1
            self.peer_fin = True
            self.ooo.clear()

    def _drain_ooo(self) -> None:
        while self.ooo:
            progressed = False
            for s in sorted(self.ooo):
                if s > self.rcv_nxt:
                    break
                data = self.ooo.pop(s)
                if s + len(data) > self.rcv_nxt:
                    self.to_host += data[self.rcv_nxt - s :]
                    self.rcv_nxt = s + len(data)
                progressed = True
            if not progressed:
                return

    def _check_done(self, now: float) -> None:
        if self.state == "ESTABLISHED" and (self.peer_fin or self.fin_queued):
            self.state = "CLOSING" if self.peer_fin and self.fin_queued else "HALF_CLOSED"
        if self.peer_fin and self.fin_acked and not self.to_host and self.state not in ("LINGER", "CLOSED"):
            self.state = "LINGER"  # TIME_WAIT's job: re-ACK a retransmitted FIN for a while
            self.linger_until = now + LINGER
            self.rtx_at = None

    # ---------------------------------------------------------------- output
    _fast_retransmit = False
    _rst_pending = False

    def next_timer(self) -> float | None:
        ts = [t for t in (self.rtx_at, self.linger_until) if t is not None]
        return min(ts) if ts else None

    def _seg(self, seq: int, flags: int, payload: bytes = b"", mss: int | None = None) -> Out:
        win = self._window()
        shift = 0 if flags & SYN else self.rcv_shift
        field = min(0xFFFF, win >> shift)
        self.last_adv = field << shift
        self.segments_out += 1
        ack = (self.irs + self.rcv_nxt) % MOD if flags & ACK else 0
        return Out((self.iss + seq) % MOD, ack, flags, field, payload, mss, WSCALE if flags & SYN else None)

    def _data_seg(self, seq: int, n: int) -> Out:
        data_end = self.sndbuf_seq + len(self.sndbuf)
        off = seq - self.sndbuf_seq
        payload = bytes(self.sndbuf[off : off + n])
        # PSH on the segment that empties what the host gave us (RFC 9293 3.9.1.2), not on every
        # one: the guest's NIC merges a run of segments only up to a PSH (hw/net/offload.py)
        flags = ACK | (PSH if payload and seq + len(payload) == data_end else 0)
        if self.fin_queued and seq + len(payload) == data_end:
            flags |= FIN
        return self._seg(seq, flags, payload)

    def output(self, now: float) -> list[Out]:
        """Every segment due now: retransmissions on expired timers, new data, ACKs."""
        out: list[Out] = []
        if self._rst_pending:
            self._rst_pending = False
            out.append(Out((self.iss + self.snd_nxt) % MOD, 0, RST, 0))
            return out
        if self.state == "CLOSED":
            return out
        if self.linger_until is not None and now >= self.linger_until:
            self._close(None)
            return out
        if self.rtx_at is not None and now >= self.rtx_at:
            self._on_timeout(now, out)
            if self.state == "CLOSED":
                return out
        if self.state == "SYN_SENT":
            if self._syn_pending:
                self._syn_pending = False
                out.append(self._seg(0, SYN, mss=self.our_mss))
                self.rtt_start = now
            return out
        if self._fast_retransmit:
            self._fast_retransmit = False
            n = min(self.peer_mss, max(1, self.sndbuf_seq + len(self.sndbuf) - self.snd_una))
            out.append(self._data_seg(self.snd_una, n))
            self.retransmits += 1
            self.rtt_seq = None  # Karn
        self._send_new(now, out)
        if self.need_ack and not out:
            out.append(self._seg(self.snd_nxt, ACK))
        self.need_ack = False
        if self.snd_max > self.snd_una and self.rtx_at is None:
            self.rtx_at = now + self.rto
        self._check_done(now)
        return out

    def _send_new(self, now: float, out: list[Out]) -> None:
        if self.state in ("LINGER", "CLOSED"):
            return
        data_end = self.sndbuf_seq + len(self.sndbuf)
        while True:
            wnd_end = self.snd_una + self.snd_wnd
            if self.snd_nxt < data_end:
                n = min(self.peer_mss, data_end - self.snd_nxt, wnd_end - self.snd_nxt)
                if n <= 0:
                    if self.snd_max <= self.snd_una and self.rtx_at is None:
                        self.rtx_at = now + self.rto  # the persist timer: probe the zero window
                    return
                seg = self._data_seg(self.snd_nxt, n)
            elif self.fin_queued and self.snd_nxt == data_end:
                seg = self._seg(self.snd_nxt, ACK | FIN)  # a FIN takes no window
            else:
                return
            out.append(seg)
            if self.snd_nxt < self.snd_max:
                self.retransmits += 1
            elif self.rtt_seq is None and self.snd_nxt >= self.snd_max:
                self.rtt_seq, self.rtt_start = self.snd_nxt, now
            self.snd_nxt += len(seg.payload) + (1 if seg.flags & FIN else 0)
            self.snd_max = max(self.snd_max, self.snd_nxt)

    def _on_timeout(self, now: float, out: list[Out]) -> None:
        self.retries += 1
        if self.retries > MAX_RETRIES:
            if self.state != "SYN_SENT":
                out.append(Out((self.iss + self.snd_nxt) % MOD, 0, RST, 0))
            self._close("timeout")
            return
        self.rtx_at = now + self.rto  # RFC 6298 5.5: backed off (retries counts the doublings)
        self.recover = None
        self.rtt_seq = None  # Karn: no sample from a retransmitted segment
        self.dupacks = 0
        if self.state == "SYN_SENT":
            self._syn_pending = True
            self.retransmits += 1
            return
        data_end = self.sndbuf_seq + len(self.sndbuf)
        if self.snd_max == self.snd_una and self.snd_una < data_end and self.snd_wnd == 0:
            # the persist timer: a one-byte probe beyond the zero window (RFC 9293 3.8.6.1)
            out.append(self._data_seg(self.snd_una, 1))
            self.snd_nxt = self.snd_max = self.snd_una + 1
            return
        self.snd_nxt = self.snd_una  # go back N: resend from the oldest unacknowledged byte
        self.retransmits += 1 if self.snd_max > self.snd_una else 0
        # send at least one segment even if the window shrank to zero under us
        if self.snd_una < data_end and self.snd_wnd == 0:
            out.append(self._data_seg(self.snd_una, 1))
            self.snd_nxt = self.snd_una + 1
        elif self.snd_una == data_end and self.fin_queued and not self.fin_acked:
            out.append(self._seg(self.snd_una, ACK | FIN))
            self.snd_nxt = self.snd_una + 1
