"""Fault injection on the wire: parsing, determinism, rates, reordering, corruption."""

from __future__ import annotations

import pytest

from hw.net.faults import Faults


def frame(i: int, size: int = 60) -> bytes:
    head = bytes([0xFF] * 6 + [0x52, 0x54, 0, 0x12, 0x34, 0x56]) + b"\x08\x00"
    body = i.to_bytes(4, "big")
    return head + body + bytes(size - len(head) - len(body))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("loss=2", "loss='2' is not a rate between 0 and 1"),
        ("loss=-0.1", "not a rate"),
        ("dup=x", "dup='x' is not a rate"),
        ("reorder=nan", "not a rate"),
        ("jitter=0.1", "unknown key 'jitter'"),
        ("loss", "'loss' is not KEY=VALUE"),
        ("seed=abc", "seed='abc' is not an integer"),
        ("loss=0.1,loss=0.2", "loss is given twice"),
    ],
)
def test_bad_specs_are_one_clear_line(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        Faults.parse(spec)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith("faults: ")


def test_parse_reads_every_key() -> None:
    f = Faults.parse("loss=0.1, dup=0.01,reorder=0.05,corrupt=0.01,seed=7")
    assert (f.loss, f.dup, f.reorder, f.corrupt, f.seed) == (0.1, 0.01, 0.05, 0.01, 7)
    assert f.active and not Faults.parse("seed=3").active


def run(spec: str, n: int) -> list[bytes]:
    f = Faults.parse(spec)
    out: list[bytes] = []
    for i in range(n):
        out += f.apply(frame(i))
    return out + f.idle()


def test_same_seed_same_faults_other_seed_other_faults() -> None:
    spec = "loss=0.2,dup=0.1,reorder=0.1,corrupt=0.1,seed="
    assert run(spec + "7", 500) == run(spec + "7", 500)
    assert run(spec + "7", 500) != run(spec + "8", 500)


@pytest.mark.parametrize("key", ["loss", "dup", "reorder", "corrupt"])
def test_rates_within_tolerance_over_10000_frames(key: str) -> None:
    f = Faults.parse(f"{key}=0.1,seed=1")
    n = 10_000
    out: list[bytes] = []
    for i in range(n):
        out += f.apply(frame(i))
    out += f.idle()
    counted = {"loss": f.lost, "dup": f.duplicated, "reorder": f.reordered, "corrupt": f.corrupted}[key]
    assert 850 <= counted <= 1150, counted  # 10% of 10,000 give or take 5 sigma (sigma = 30)
    others = {k: v for k, v in f.counters().items() if v}
    assert len(others) == 1  # only the fault asked for
    expect_len = {"loss": n - f.lost, "dup": n + f.duplicated}.get(key, n)
    assert len(out) == expect_len


def test_no_faults_is_the_identity() -> None:
    assert run("seed=5", 200) == [frame(i) for i in range(200)]


def test_reorder_releases_after_the_next_frame_or_at_idle() -> None:
    f = Faults.parse("reorder=1,seed=0")
    a, b, c = frame(1), frame(2), frame(3)
    assert f.apply(a) == [] and f.held()  # held back
    assert f.apply(b) == [b, a]  # b overtakes a (one frame held at a time: b is not held)
    assert f.apply(c) == []
    assert f.idle() == [c] and f.idle() == [] and not f.held()
    assert f.reordered == 2
    # directions are independent
    assert f.apply(a, "rx") == [] and f.apply(b, "tx") == [] and f.held("rx") and f.held("tx")
    assert f.idle("rx") == [a] and f.idle("tx") == [b]


def test_a_lost_frame_still_releases_the_held_one() -> None:
    f = Faults(reorder=1.0)
    assert f.apply(frame(1)) == []
    f.loss = 1.0
    assert f.apply(frame(2)) == [frame(1)] and f.lost == 1


def test_dup_delivers_twice() -> None:
    f = Faults(dup=1.0)
    assert f.apply(frame(9)) == [frame(9), frame(9)] and f.duplicated == 1


def test_corruption_flips_one_byte_after_the_ethernet_header() -> None:
    f = Faults.parse("corrupt=1,seed=11")
    positions = set()
    for i in range(2000):
        orig = frame(i, 60 + i % 40)
        (got,) = f.apply(orig)
        assert got[:14] == orig[:14] and len(got) == len(orig)
        diff = [j for j in range(len(orig)) if got[j] != orig[j]]
        assert len(diff) == 1
        positions.add(diff[0])
    assert min(positions) == 14 and max(positions) >= 95  # every byte past the header can be hit
    assert f.corrupted == 2000
    # a header-only frame has nothing to corrupt
    assert f.apply(frame(0)[:14]) == [frame(0)[:14]] and f.corrupted == 2000
