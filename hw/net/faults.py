"""Fault injection on a network link: loss, duplication, reordering, corruption.

A spec like ``"loss=0.1,dup=0.01,reorder=0.05,corrupt=0.01,seed=7"`` gives
rates between 0 and 1 and the seed of a private ``random.Random``, so the same
frames meet the same faults on every run. Every frame draws the same four
random numbers whatever happens to it, so one fault never shifts the draws of
the frames after it.

* loss: the frame is dropped;
* dup: the frame is delivered twice;
* reorder: the frame is held back and delivered after the next frame on the
  same direction, or when ``idle()`` releases it (the link goes quiet);
* corrupt: one byte after the 14-byte Ethernet header is flipped, so the
  frame still reaches its destination and the IPv4/UDP/TCP checksums
  (RFC 791 section 3.1, RFC 768, RFC 793 section 3.1) must catch it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hw.errors import MachineConfigError

ETH_HEADER = 14
RATES = ("loss", "dup", "reorder", "corrupt")


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    seed: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _held: dict[str, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in RATES:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise MachineConfigError(f"faults: {name}={v} is not a rate between 0 and 1")
        self._rng = random.Random(self.seed)
        self._held = {}

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``"loss=0.1,dup=0.01,reorder=0.05,corrupt=0.01,seed=7"`` (any subset, any order)."""
        values: dict[str, float | int] = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, val = item.partition("=")
            key, val = key.strip(), val.strip()
            if not eq:
                raise MachineConfigError(f"faults: {item!r} is not KEY=VALUE (keys: {', '.join(RATES)}, seed)")
            if key in values:
                raise MachineConfigError(f"faults: {key} is given twice")
            if key == "seed":
                try:
                    values[key] = int(val, 0)
                except ValueError:
                    raise MachineConfigError(f"faults: seed={val!r} is not an integer") from None
            elif key in RATES:
                try:
                    rate = float(val)
                except ValueError:
                    rate = -1.0
                if not 0.0 <= rate <= 1.0:  # also rejects nan
                    raise MachineConfigError(f"faults: {key}={val!r} is not a rate between 0 and 1")
                values[key] = rate
            else:
                raise MachineConfigError(f"faults: unknown key {key!r} (keys: {', '.join(RATES)}, seed)")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return any(getattr(self, name) for name in RATES)

    def apply(self, frame: bytes, direction: str = "tx") -> list[bytes]:
        """The frames to deliver now, in order, in place of ``frame`` (0, 1, 2 or 3 of them).

        ``direction`` names an independent link direction: each holds at most
        one frame back for reordering.
        """
        rng = self._rng
        r_loss, r_corrupt, r_reorder, r_dup = rng.random(), rng.random(), rng.random(), rng.random()
        out: list[bytes] = []
        held = self._held.pop(direction, None)
        if r_loss < self.loss:
            self.lost += 1
        else:
            if r_corrupt < self.corrupt and len(frame) > ETH_HEADER:
                b = bytearray(frame)
                pos = rng.randrange(ETH_HEADER, len(b))
                b[pos] ^= rng.randrange(1, 256)
                frame = bytes(b)
                self.corrupted += 1
            if r_reorder < self.reorder and held is None:
                self._held[direction] = frame  # released after the next frame, or by idle()
                self.reordered += 1
            else:
                out.append(frame)
                if r_dup < self.dup:
                    out.append(frame)
                    self.duplicated += 1
        if held is not None:
            out.append(held)
        return out

    def held(self, direction: str = "tx") -> bool:
        return direction in self._held

    def idle(self, direction: str = "tx") -> list[bytes]:
        """Release the frame held back on ``direction`` (the link went quiet)."""
        f = self._held.pop(direction, None)
        return [] if f is None else [f]

    def counters(self) -> dict[str, int]:
        return {"lost": self.lost, "duplicated": self.duplicated, "reordered": self.reordered,
                "corrupted": self.corrupted}  # fmt: skip
