"""What recording and replaying cost: echo copying 1 MiB of console input, plain, recorded, replayed.

``python -m benchmarks.replay [ROUNDS [KIB]]`` (default 21 rounds of 1024 KiB). Each round runs the
three in turn (interleaved, so a noisy machine's slow spells hit all alike); a time is from the
first guest instruction to the end of the run (boot and image build not included), the recorded
run's includes serialising its journal (not writing the file). Prints median, min and max per mode and the ratios of the
medians. Figures in docs/performance.md (Record and replay).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from exo.api import System, build
from exo.replay import Journal, install


def _run(app, data: bytes, mode: str, journal: Journal | None) -> tuple[float, Journal | None, bytes]:
    with System([app], stdin=b"" if mode == "replay" else data) as s:
        tape = None
        if mode == "record":
            tape = install(s, Journal({}))
        elif mode == "replay":
            install(s, journal, replay=True)
        t0 = time.perf_counter()
        s.run()
        raw = None
        if tape is not None:
            tape.finish("exit")
            raw = tape.journal.to_bytes()  # what --record writes to its file
        dt = time.perf_counter() - t0
        return dt, None if raw is None else Journal.from_bytes(raw), s.stdout


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    kib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    app = build("guest_apps/echo")
    data = os.urandom(kib << 10)
    times: dict[str, list[float]] = {"plain": [], "record": [], "replay": []}
    journal = None
    for _ in range(rounds):
        for mode in times:
            dt, recorded, out = _run(app, data, mode, journal)
            assert out == data, f"{mode}: the output differs from the input"
            journal = recorded or journal
            times[mode].append(dt)
    size = len(journal.to_bytes())
    print(f"echo, {kib} KiB piped, {rounds} rounds; the journal: {len(journal.events)} events, {size} bytes")
    for mode, ts in times.items():
        print(f"{mode:7s} median {statistics.median(ts) * 1e3:8.1f} ms  min {min(ts) * 1e3:8.1f}  max {max(ts) * 1e3:8.1f}")
    base = statistics.median(times["plain"])
    for mode in ("record", "replay"):
        print(f"{mode} / plain: {statistics.median(times[mode]) / base:.2f}")


if __name__ == "__main__":
    main()
