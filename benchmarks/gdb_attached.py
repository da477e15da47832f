"""Guest speed with gdb attached and no breakpoints, against the same run without it.

``python -m benchmarks.gdb_attached [APP [MAX_INSTRUCTIONS]]`` (default: guest_apps/primes). The
"gdb" run is driven by a raw client over TCP (``?``, then ``c`` and wait for the exit reply), so
gdb's own start-up is not timed; both times are from the first guest instruction to the end.
Figures in docs/debugging.md ("Attaching gdb").
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from exo.api import System
from exo.gdb.rsp import frame
from exo.gdb.server import GdbServer


def _plain(app: str, budget: int | None) -> tuple[float, int]:
    with System([app]) as s:
        t0 = time.perf_counter()
        s.run(budget)
        return time.perf_counter() - t0, s.kernel.cpu.retired_total


def _attached(app: str, budget: int | None) -> tuple[float, int]:
    with System([app]) as s:
        server = GdbServer(s.kernel, "127.0.0.1", 0, log=lambda _: None)
        times: list[float] = []

        def client() -> None:
            with socket.create_connection(server.address, timeout=600) as c:
                c.sendall(frame(b"?"))
                buf = b""
                while b"#" not in buf:  # the stop reply: the machine is stopped, the session ready
                    buf += c.recv(4096)
                times.append(time.perf_counter())
                c.sendall(frame(b"c"))
                buf = b""
                while b"$W" not in buf and b"$X" not in buf:
                    data = c.recv(4096)
                    if not data:
                        break
                    buf += data
                times.append(time.perf_counter())

        t = threading.Thread(target=client)
        t.start()
        server.run(True, budget)
        t.join()
        return times[1] - times[0], s.kernel.cpu.retired_total


def main() -> None:
    app = sys.argv[1] if len(sys.argv) > 1 else "guest_apps/primes"
    budget = int(sys.argv[2]) if len(sys.argv) > 2 else None
    for run in (_plain, _attached, _plain, _attached):
        dt, n = run(app, budget)
        print(f"{run.__name__[1:]:9s} {dt:6.2f} s  {n} guest instructions")


if __name__ == "__main__":
    main()
