"""The machine's network card: one promiscuous Ethernet NIC in front of a backend.

``open_nic(spec, faults=..., pcap=...)`` builds it from a command-line spec:

* ``switch``: an in-process hub (hw/net/switch.py); what is sent comes back;
* ``tap:IFNAME``: a Linux TAP interface (hw/net/tap.py); needs CAP_NET_ADMIN
  unless the interface was made persistent for this user beforehand;
* ``user[,hostfwd=tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT]...``: an
  unprivileged gateway at 10.0.2.2 with QEMU's port forwarding (hw/net/user.py).

Fault injection (hw/net/faults.py) applies to every transmitted frame, and to
received frames when the backend is external: a switch frame has already
crossed the faulty wire once, on its way out. The pcap file records what
actually crossed the wire, after faults: each transmitted frame, and each
frame received from an external backend (a switch frame is recorded once, when
sent).

The NIC follows the Device protocol (hw/device.py): ``name``, ``poll()``, ``close()``.
It is driven by the machine's thread; the backends' own threads only fill
thread-safe inboxes. Counters in ``stats``: tx (frames the guest handed to
``transmit``), rx (frames ``receive`` returned), and the fault counters lost,
duplicated, reordered, corrupted.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from hw.errors import MachineConfigError
from hw.net import offload
from hw.net.backend import Backend
from hw.net.faults import Faults
from hw.net.pcap import PcapWriter

FRAME_MIN = 14  # an Ethernet II header and nothing else
FRAME_MAX = 1514  # header + 1500-byte MTU, no FCS
GSO_FRAME_MAX = 65_535  # a TSO frame (offload.py): one TCP segment to be cut at the MTU


class Nic:
    name = "nic"

    def __init__(self, backend: Backend, *, faults: Faults | None = None, pcap: PcapWriter | None = None,
                 spec: str = "") -> None:  # fmt: skip
        self.backend = backend
        self.spec = spec
        self.external: bool = backend.external
        self.faults = faults if faults is not None and faults.active else None
        self.pcap = pcap
        self._ready: list[bytes] = []  # received frames released by idle(), not yet returned
        self._tx = 0
        self._rx = 0
        self._closed = False
        # Capture timestamps: host time unless the machine gives its clock (Machine does under
        # the virtual clock: guest time, so a deterministic run writes the same capture).
        self.clock_ns: Callable[[], int] | None = None

    def _stamp(self) -> float | None:
        return self.clock_ns() / 1e9 if self.clock_ns is not None else None

    # ----------------------------------------------------------------- transmit
    def transmit(self, frame: bytes, gso: int = 0) -> None:
        """Guest -> wire: faults, then the pcap, then the backend. With ``gso``, a large TCP
        frame is cut into segments of ``gso`` payload bytes first (TSO, offload.py), unless
        the backend is the peer itself and takes it whole (the user backend's gateway)."""
        if self._closed:
            raise MachineConfigError("nic: transmit on a closed NIC")
        most = GSO_FRAME_MAX if gso else FRAME_MAX
        if not FRAME_MIN <= len(frame) <= most:
            raise MachineConfigError(f"nic: a {len(frame)}-byte frame is outside {FRAME_MIN}..{most} bytes")
        frame = bytes(frame)
        if len(frame) > FRAME_MAX and not getattr(self.backend, "takes_large_frames", False):
            frames = offload.segment(frame, gso)
        else:
            frames = [frame]
        for f in frames:
            self._tx += 1
            self._put_on_wire(self.faults.apply(f, "tx") if self.faults else [f])

    def _put_on_wire(self, frames: list[bytes]) -> None:
        for f in frames:
            if self.pcap is not None:
                self.pcap.write(f, self._stamp())
            self.backend.send(f)

    # ------------------------------------------------------------------ receive
    def receive(self) -> list[bytes]:
        """Wire -> guest: every frame that has arrived, in arrival order; never blocks."""
        if self._closed:
            return []
        frames = self._ready
        self._ready = []
        arrived = self.backend.recv()
        if self.external:
            for f in arrived:
                got = self.faults.apply(f, "rx") if self.faults else [f]
                if self.pcap is not None:
                    for g in got:
                        self.pcap.write(g, self._stamp())
                frames += got
        else:
            frames += arrived
        self._rx += len(frames)
        return frames

    def wait(self, timeout: float) -> None:
        """Sleep until ``receive()`` may return frames, or ``timeout`` seconds pass."""
        if self._closed or self.poll():
            return
        self.backend.wait(timeout)

    def idle(self) -> None:
        """The OS has nothing to run: release the frames held back for reordering."""
        if self.faults is None or self._closed:
            return
        self._put_on_wire(self.faults.idle("tx"))
        if self.external:
            for f in self.faults.idle("rx"):
                if self.pcap is not None:
                    self.pcap.write(f, self._stamp())
                self._ready.append(f)

    # ------------------------------------------------------------------- device
    def poll(self) -> bool:
        return not self._closed and (bool(self._ready) or self.backend.pending())

    @property
    def stats(self) -> dict[str, int]:
        s = {"tx": self._tx, "rx": self._rx, "lost": 0, "duplicated": 0, "reordered": 0, "corrupted": 0}
        if self.faults is not None:
            s.update(self.faults.counters())
        return s

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.faults is not None:
                # A frame held back to be reordered was sent by the guest: it goes on the wire
                # before the backend closes (nothing the guest sent is lost at exit).
                self._put_on_wire(self.faults.idle("tx"))
            self.backend.close()
        finally:
            if self.pcap is not None:
                self.pcap.close()

    def __repr__(self) -> str:
        return f"<Nic {self.spec or self.backend!r}>"


def open_backend(spec: str) -> Backend:
    """The backend a spec names; MachineConfigError (a ValueError) with one line if it is bad."""
    kind, _, rest = spec.partition(":")
    if spec == "switch":
        from hw.net.switch import SwitchBackend

        return SwitchBackend()
    if kind == "tap" and ":" in spec:
        from hw.net.tap import TapBackend

        return TapBackend(rest)
    if spec == "user" or spec.startswith("user,"):
        from hw.net.user import UserBackend

        return UserBackend.from_spec(spec)
    raise MachineConfigError(f"nic: unknown network {spec!r} (expected switch, tap:IFNAME or user[,hostfwd=...])")


def open_nic(spec: str, *, faults: str | None = None, pcap: str | os.PathLike[str] | None = None) -> Nic:
    """The NIC for ``spec`` with optional fault injection and capture; ValueError with one line if bad."""
    f = Faults.parse(faults) if faults else None  # parse everything before opening anything
    backend = open_backend(spec.strip())
    try:
        writer = PcapWriter(pcap) if pcap is not None else None
    except BaseException:
        backend.close()
        raise
    return Nic(backend, faults=f, pcap=writer, spec=spec)
