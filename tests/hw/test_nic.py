"""The NIC over the in-process switch: round trip, faults, pcap, stats, bad specs."""

from __future__ import annotations

import time

import pytest

from hw.device import Device
from hw.net.faults import Faults
from hw.net.pcap import read_pcap
from hw.net.switch import SwitchBackend
from hw.nic import Nic, open_nic


def frame(i: int, size: int = 60) -> bytes:
    head = bytes.fromhex("525400123457525400123456") + b"\x08\x00"
    return head + i.to_bytes(4, "big") + bytes(size - 18)


def test_switch_is_a_hub_round_trip() -> None:
    nic = open_nic("switch")
    assert isinstance(nic, Nic) and nic.name == "nic" and not nic.external
    dev: Device = nic  # the Device protocol
    assert dev.poll() is False and nic.receive() == []
    sent = [frame(i, 60 + i) for i in range(5)]
    for f in sent:
        nic.transmit(f)
    assert nic.poll() is True
    t = time.monotonic()
    nic.wait(5.0)  # frames are there: returns at once
    assert time.monotonic() - t < 1.0
    assert nic.receive() == sent and nic.receive() == []
    assert nic.stats == {"tx": 5, "rx": 5, "lost": 0, "duplicated": 0, "reordered": 0, "corrupted": 0}
    nic.close()
    nic.close()  # twice is fine


def test_wait_times_out_when_nothing_comes() -> None:
    nic = open_nic("switch")
    t = time.monotonic()
    nic.wait(0.05)
    assert 0.04 <= time.monotonic() - t < 2.0
    nic.close()


def test_faults_apply_once_on_the_switch_and_pcap_records_the_wire(tmp_path) -> None:
    p = tmp_path / "w.pcap"
    nic = open_nic("switch", faults="loss=0.2,dup=0.1,reorder=0.1,corrupt=0.1,seed=3", pcap=str(p))
    sent = [frame(i) for i in range(400)]
    got: list[bytes] = []
    for f in sent:
        nic.transmit(f)
        got += nic.receive()
    nic.idle()
    got += nic.receive()
    s = nic.stats
    assert s["tx"] == 400 and s["rx"] == len(got)
    assert all(s[k] > 10 for k in ("lost", "duplicated", "reordered", "corrupted")), s
    assert len(got) == 400 - s["lost"] + s["duplicated"]  # faults applied on transmit only
    nic.close()
    wire = [f for _, f in read_pcap(p)]
    assert wire == got  # each frame recorded once, as it crossed the wire


def test_same_seed_same_run() -> None:
    def one() -> list[bytes]:
        nic = open_nic("switch", faults="loss=0.3,reorder=0.3,corrupt=0.3,seed=9")
        out: list[bytes] = []
        for i in range(200):
            nic.transmit(frame(i))
            out += nic.receive()
        nic.close()
        return out

    assert one() == one()


def test_reordered_frame_waits_for_idle() -> None:
    nic = open_nic("switch", faults="reorder=1")
    nic.transmit(frame(1))
    assert nic.receive() == [] and not nic.poll()
    nic.idle()
    assert nic.receive() == [frame(1)]
    nic.close()


class FakeExternal(SwitchBackend):
    """A backend with peers outside the process: rx faults and rx pcap apply."""

    external = True

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)


def test_external_backend_faults_and_pcap_on_receive(tmp_path) -> None:
    from hw.net.faults import Faults
    from hw.net.pcap import PcapWriter

    be = FakeExternal()
    p = tmp_path / "e.pcap"
    nic = Nic(be, faults=Faults(reorder=1.0), pcap=PcapWriter(p))
    assert nic.external
    nic.transmit(frame(1))
    assert be.sent == []
    nic.transmit(frame(2))
    assert be.sent == [frame(2), frame(1)]
    be._inbox.put(frame(3))
    assert nic.poll() and nic.receive() == []  # held back on the way in
    nic.idle()
    assert nic.poll() and nic.receive() == [frame(3)]
    nic.close()
    assert [f for _, f in read_pcap(p)] == [frame(2), frame(1), frame(3)]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ethernet", "nic: unknown network 'ethernet'"),
        ("", "unknown network ''"),
        ("tap", "unknown network 'tap'"),
        ("switch:x", "unknown network 'switch:x'"),
    ],
)
def test_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        open_nic(spec)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_faults_open_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="faults: unknown key"):
        open_nic("switch", faults="lose=0.1", pcap=str(tmp_path / "no.pcap"))
    assert not (tmp_path / "no.pcap").exists()


def test_bad_frame_sizes() -> None:
    nic = open_nic("switch")
    with pytest.raises(ValueError, match="13-byte frame"):
        nic.transmit(bytes(13))
    with pytest.raises(ValueError, match="1515-byte frame"):
        nic.transmit(bytes(1515))
    nic.transmit(bytes(1514))
    nic.transmit(bytes(14))
    assert len(nic.receive()) == 2
    nic.close()


def test_a_frame_held_for_reordering_goes_out_at_close() -> None:
    # Nothing the guest sent may be lost at exit: the held frame is put on the wire by close().
    backend = FakeExternal()
    nic = Nic(backend, faults=Faults.parse("reorder=1"))
    nic.transmit(frame(1))
    assert backend.sent == []
    nic.close()
    assert backend.sent == [frame(1)]
