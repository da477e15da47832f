"""The cost of going back one instruction (gdb's reverse-stepi) after a million, against one stepi forward.

``python -m benchmarks.gdb_reverse [REPEATS [INSTRUCTIONS]]`` (default 15, 1000000). A generated
guest spins until it has retired INSTRUCTIONS instructions and reaches a breakpoint; a raw RSP
client (gdb's own start-up is not timed) then alternates ``bs`` (back one instruction: a runner
forked from the checkpoint at instruction 0 re-executes to INSTRUCTIONS - 1 and takes over the
connection) and ``s`` (forward again), timing each round trip from the packet to the stop reply.
It also reports the private memory of every process of the run (/proc/PID/smaps_rollup: the
supervisor, the runner, the checkpoints). Figures in docs/performance.md and docs/debugging.md.

``python -m benchmarks.gdb_reverse overhead [ROUNDS [INSTRUCTIONS]]`` (default 4, 100000000): what
taking checkpoints costs a run that only goes forward: an endless loop run to INSTRUCTIONS
(``--max-instructions``) with gdb attached, ``c`` timed to the exit reply, with
``--gdb-history 0`` and with the default, in alternating rounds.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exo.gdb.rsp import frame

GUEST = """
section .text
_start:
    nop
    mov rcx, {loops}
spin:
    dec rcx
    jnz spin
stop:
    nop
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
"""


def _rsp(s: socket.socket, data: bytes) -> bytes:
    s.sendall(frame(data))
    buf = b""
    while not re.search(rb"\$[^#]*#..", buf):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        buf += chunk
    return re.search(rb"\$([^#]*)#", buf).group(1)


def _private_kib(marker: str) -> list[tuple[int, int]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        kib = sum(int(m) for m in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+)", text, re.M))
        out.append((int(pid), kib))
    return sorted(out)


def _ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:7.2f} ms  (min {min(xs) * 1e3:.2f}, max {max(xs) * 1e3:.2f})"


def _boot(app: Path, *args: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, "-m", "exo", "boot", str(app), "--gdb", "127.0.0.1:0", "--gdb-wait", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    while b"listening" not in err or not err.endswith(b"\n"):
        err += os.read(p.stderr.fileno(), 4096)
    return p, int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", err).group(1))


def overhead() -> None:
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    instructions = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000_000
    times: dict[str, list[float]] = {"--gdb-history 0": [], "default": []}
    with tempfile.TemporaryDirectory(prefix="exo-bench-reverse-") as d:
        app = Path(d) / "forever"
        app.mkdir()
        (app / "main.s").write_text("section .text\n_start:\n    inc rax\n    jmp _start\n")
        (app / "app.toml").write_text('name = "forever"\nsources = ["main.s"]\n')
        for _ in range(rounds):
            for key, args in (("--gdb-history 0", ["--gdb-history", "0"]), ("default", [])):
                p, port = _boot(app, "--max-instructions", str(instructions), *args)
                with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
                    _rsp(s, b"?")
                    t0 = time.perf_counter()
                    _rsp(s, b"c")
                    times[key].append(time.perf_counter() - t0)
                p.wait(timeout=600)
    print(f"{instructions} instructions, gdb attached, {rounds} rounds (s):")
    for key, xs in times.items():
        print(f"  {key:16s} median {statistics.median(xs):.2f}  (min {min(xs):.2f}, max {max(xs):.2f})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "overhead":
        overhead()
        return
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    instructions = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    loops = (instructions - 2) // 2  # nop, mov, then dec/jnz pairs: `stop` after `instructions`
    with tempfile.TemporaryDirectory(prefix="exo-bench-reverse-") as d:
        app = Path(d) / "spin"
        app.mkdir()
        (app / "main.s").write_text(GUEST.format(loops=loops))
        (app / "app.toml").write_text('name = "spin"\nsources = ["main.s"]\n')
        from exo.api import build

        stop = build(app).image.symbols["stop"]
        p, port = _boot(app)
        back: list[float] = []
        forward: list[float] = []
        with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
            _rsp(s, b"?")
            _rsp(s, b"Z0,%x,1" % stop)
            assert _rsp(s, b"c").startswith(b"T05"), "no breakpoint stop"
            _rsp(s, b"z0,%x,1" % stop)
            for _ in range(repeats):
                t0 = time.perf_counter()
                reply = _rsp(s, b"bs")
                back.append(time.perf_counter() - t0)
                assert reply.startswith(b"T05"), reply
                t0 = time.perf_counter()
                reply = _rsp(s, b"s")
                forward.append(time.perf_counter() - t0)
                assert reply.startswith(b"T05"), reply
            memory = _private_kib(str(app))
            assert _rsp(s, b"c").startswith(b"W")
        p.wait(timeout=600)
    print(f"after {instructions} instructions, {repeats} repeats:")
    print(f"  reverse-stepi (bs) {_ms(back)}")
    print(f"  stepi (s)          {_ms(forward)}")
    print(f"  ratio of medians   {statistics.median(back) / statistics.median(forward):.0f}x")
    print("  private memory of the run's processes (KiB): " + ", ".join(f"{pid}: {k}" for pid, k in memory))


if __name__ == "__main__":
    main()
