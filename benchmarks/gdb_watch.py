"""What one watchpoint costs: guest speed with gdb attached and one write watchpoint set, against
gdb attached with none (benchmarks/gdb_attached.py measures attached against not attached); and,
for comparison, one hardware breakpoint on code that never runs (a ranged code hook).

``python -m benchmarks.gdb_watch [RUNS]`` (default 5 runs of each, interleaved). Two guests:

* ``primes`` (guest_apps/primes): a real workload, 15 environments passing numbers over IPC,
  most of its time in hypercalls and the libOS; the watchpoint is on a byte of its ``.rodata``
  (``fmt``), which it never writes, so no stop is ever taken and only the hook's presence is timed.
* ``storeloop``: the worst case, a loop of loads and stores over a 4 KiB buffer (one load, one
  store, two ALU instructions and a branch per iteration), with the watchpoint on a variable on
  another data page that the loop never touches.

While any Unicorn memory hook exists, every load and store of newly translated code takes the
slow path through ``load_helper``/``store_helper`` (tcg_uc_has_hookmem in Unicorn's i386 code
generator), whatever the hook's range: that, not the hook's callback, is what is measured.
The runs are driven by a raw RSP client (``Z2`` when watching, ``c``, wait for the exit reply),
timed from the ``c`` to the exit reply. Figures in docs/debugging.md and docs/performance.md.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from exo.api import System, build
from exo.gdb.rsp import frame
from exo.gdb.server import GdbServer

STORELOOP = """
section .text
_start:
    mov rcx, 2000000
    lea rdi, [rip + buf]
again:
    mov rax, rcx
    and rax, 511
    mov rdx, qword ptr [rdi + rax*8]
    add rdx, rcx
    mov qword ptr [rdi + rax*8], rdx
    dec rcx
    jnz again
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
never:
    ud2
section .data
watched: dq 0
    times 4096 db 0
buf: times 4096 db 0
"""


def _rsp(c: socket.socket, data: bytes) -> bytes:
    c.sendall(frame(data))
    buf = b""
    while not (buf.count(b"#") and len(buf) >= buf.index(b"#", buf.index(b"$")) + 3):
        chunk = c.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def timed_run(app: str, watch: int | None, hbreak: int | None = None) -> tuple[float, int]:
    """Seconds from ``c`` to the exit reply, and the instructions the guests retired."""
    with System([app]) as s:
        server = GdbServer(s.kernel, "127.0.0.1", 0, log=lambda _: None)
        times: list[float] = []

        def client() -> None:
            with socket.create_connection(server.address, timeout=600) as c:
                _rsp(c, b"?")
                if watch is not None:
                    assert b"OK" in _rsp(c, b"Z2,%x,1" % watch)
                if hbreak is not None:
                    assert b"OK" in _rsp(c, b"Z1,%x,1" % hbreak)
                times.append(time.perf_counter())
                reply = _rsp(c, b"c")
                times.append(time.perf_counter())
                assert b"$W" in reply, reply

        t = threading.Thread(target=client)
        t.start()
        server.run(True)
        t.join()
        return times[1] - times[0], s.kernel.cpu.retired_total


def _line(name: str, xs: list[float]) -> str:
    return f"{name:24s} median {statistics.median(xs):6.3f} s  (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        loop = Path(tmp) / "storeloop"
        loop.mkdir()
        (loop / "main.s").write_text(STORELOOP)
        (loop / "app.toml").write_text('name = "storeloop"\nsources = ["main.s"]\n')
        # (name, app, label to watch, label of code that never runs)
        apps = [("primes", "guest_apps/primes", "fmt", "failed"), ("storeloop", str(loop), "watched", "never")]
        for name, app, label, cold in apps:
            symbols = build(app).image.symbols
            times: dict[str, list[float]] = {"none": [], "watch": [], "hbreak": []}
            counts = set()
            for _ in range(runs):
                for kind, args in (("none", (None,)), ("watch", (symbols[label],)), ("hbreak", (None, symbols[cold]))):
                    dt, n = timed_run(app, *args)
                    times[kind].append(dt)
                    counts.add(n)
            print(f"{name}: {counts.pop() if len(counts) == 1 else sorted(counts)} guest instructions, {runs} runs each")
            base = statistics.median(times["none"])
            print(_line("  attached, nothing set", times["none"]))
            for kind, what in (("watch", "one watch"), ("hbreak", "one hbreak, unhit")):
                xs = times[kind]
                print(_line(f"  {what}", xs) + f"  ratio {statistics.median(xs) / base:.2f}")


if __name__ == "__main__":
    main()
