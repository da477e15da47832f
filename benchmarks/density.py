"""``python -m exo bench density``: how many instances of an app exo starts, holds and tears down.

Issue 17 (dust clouds). Instances are environments loaded from one built image with its
read-only pages shared (exo/images.py; ``exo.loader.spawn(..., share=True)``):

* **churn**: spawn an instance of a small app and destroy it, per instance; beside a bare
  environment create + destroy (no image) and a copying spawn (every page its own), measured in
  the same run; spawn, run to its exit (it writes one byte) and reclaim, an instance per
  request without the network; and start an instance from a snapshot of the app waiting for
  input (exo/instances.py) and destroy it;
* **resident**: N instances (1,000 and 10,000; ``--full`` adds 50,000) started from the snapshot,
  each blocked in ``ipc_recv`` waiting for input, each N in a fresh process: the process's
  resident set (RSS, /proc/self/statm) and guest frames per instance, and the slope of RSS
  against N.

* **serving**: requests per second and p50/p99 latency of an HTTP GET and a UDP echo served by
  ``exo serve`` with a fresh instance per request, by one long-lived instance, and by a host-native
  Python server, in the same run (benchmarks/serving.py says how; ``--no-serving`` leaves it out).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Bench, Result, Stats, measure_interleaved, result, suite_main

IDLE = """
section .text
_start:
    cmp rdi, 1
    jne answer                      ; with an argument: answer at once (an instance per request)
    xor edi, edi
    lea rsi, [rsp - 64]
    xor edx, edx
    call HC_IPC_RECV                ; wait for input (a message) that never comes
answer:
    lea rdi, [rip + reply]
    mov rsi, 1
    call HC_CONSOLE_WRITE
    mov rdi, SCHED_EXIT
    xor esi, esi
    call HC_SCHED_OP
section .rodata
reply: db "!"
"""
RESIDENT = (1_000, 10_000)
RESIDENT_FULL = (*RESIDENT, 50_000)
FRAMES_PER_INSTANCE_MAX = 32  # guest RAM sized for N instances (25 each now: docs/performance.md)


def _image():
    from exo.api import build

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "main.s").write_text(IDLE)
        (Path(d) / "app.toml").write_text('name = "idle"\nsources = ["main.s"]\n')
        return build(Path(d))[1]


def _kernel(ram_mib: int):
    from exo.kernel import Exokernel
    from hw import Machine

    return Exokernel(Machine(ram_mib << 20, stdin=b"", stdout=io.BytesIO()), on_fault=lambda r: None)


def bench_churn(repeat: int, quick: bool, log: Callable[[str], None]) -> list[Result]:
    from exo.loader import spawn

    image = _image()
    k = _kernel(256)
    inner = 200 if quick else 1000

    def bare() -> None:
        k.destroy(k.create_env("bare"), exit_status=0)

    def shared() -> None:
        k.destroy(spawn(k, image, share=True), exit_status=0)

    def copied() -> None:
        k.destroy(spawn(k, image), exit_status=0)

    def request() -> None:
        spawn(k, image, ["go"], share=True)
        k.run(max_instructions=100_000)  # it writes its byte and exits; the exit reclaims it

    snap = _snapshot(k, image)

    def from_snapshot() -> None:
        k.destroy(snap.start(), exit_status=0)

    log("instance churn: bare env, shared spawn, copying spawn, spawn+run+exit")
    free0 = k.frames.free_count
    stats = measure_interleaved([Bench(bare, inner), Bench(shared, inner), Bench(copied, inner),
                                 Bench(request, inner), Bench(from_snapshot, inner)], repeat=repeat)
    if k.frames.free_count != free0:
        raise RuntimeError(f"instances leaked {free0 - k.frames.free_count} frames")
    base = result("environment create + destroy (no image)", stats[0])
    rate = f"{1e6 / stats[1].median:,.0f} instances/s"
    return [
        base,
        result("instance spawn + destroy, image pages shared", stats[1], baseline=base,
               target=">= 10,000 instances/s (issue 17)", check=lambda r: stats[1].median <= 100,
               note=f"{rate}; page tables, 16 stack pages, info page, data copied; code and rodata mapped"),
        result("spawn + destroy, every page copied", stats[2], baseline=base,
               note="what exo boot does for one app: each page its own"),
        result("instance spawn, run to exit (1 byte out), reclaim", stats[3], baseline=base,
               note="a fresh instance per request, without the network: its whole life"),
        result("instance start from a snapshot + destroy", stats[4], baseline=base,
               target="<= 50 us (issue 17)", check=lambda r: stats[4].median <= 50,
               note=f"{1e6 / stats[4].median:,.0f} instances/s; the app snapshotted waiting in ipc_recv "
               f"(exo/instances.py): {snap.shared_pages} pages shared, {snap.private_pages} copy-on-write"),
    ]


def _snapshot(k, image, envs: int = 1024):
    """The idle app run to its ipc_recv and frozen there; its app may have ``envs`` environments
    (the template and its instances: `--quota idle:envs=N`)."""
    from exo.instances import Snapshot
    from exo.loader import spawn

    t = spawn(k, image, share=True, quota={"envs": envs})
    k.run(max_instructions=100_000)
    return Snapshot(k, t)


def resident(n: int, from_snapshot: bool = True) -> dict:
    """In this process: N idle instances (started from a snapshot, or spawned from the image);
    RSS and frames (the figures of one row)."""
    from exo.loader import spawn

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    image = _image()
    k = _kernel(max(64, n * FRAMES_PER_INSTANCE_MAX * 4096 >> 20) + 64)
    snap = _snapshot(k, image, envs=n + 1) if from_snapshot else None
    r0, f0 = rss(), k.frames.free_count
    envs = [snap.start() if snap else spawn(k, image, share=True) for _ in range(n)]  # (spawn: an app each)
    k.run(max_instructions=200 * n)  # each runs to its ipc_recv and blocks there
    blocked = sum(e.blocked_on == "ipc" for e in envs)
    if blocked != n:
        raise RuntimeError(f"{n - blocked} of {n} instances are not waiting")
    shared = k.images.frames_held + (len(snap.pages) if snap else 0)  # the template's pages, once
    return {"instances": n, "rss_bytes": rss() - r0, "frames": f0 - k.frames.free_count,
            "shared_frames": shared}


def bench_resident(quick: bool, full: bool, log: Callable[[str], None]) -> list[Result]:
    sizes = (100, 1_000) if quick else RESIDENT_FULL if full else RESIDENT
    rows = []
    for n in sizes:
        log(f"{n:,} resident idle instances (a fresh process)")
        r = subprocess.run([sys.executable, "-m", "benchmarks.density", "--resident", str(n)],
                           capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout))
    out = []
    for r in rows:
        n = r["instances"]
        out.append(result(f"{n:,} idle instances: RSS per instance", Stats.of([r["rss_bytes"] / n / 1024], n),
                          unit="KiB", note=f"RSS +{r['rss_bytes'] / 2**20:,.0f} MiB; {r['frames'] / n:.2f} guest "
                          f"frames per instance of its own; {r['shared_frames']} the template's, shared"))
    a, b = rows[0], rows[-1]
    slope = (b["rss_bytes"] - a["rss_bytes"]) / (b["instances"] - a["instances"]) / 1024
    out.append(Result(f"RSS slope, {a['instances']:,} to {b['instances']:,} instances", Stats.of([slope], 1),
                      "KiB", None, None, "10,000 in <= 512 MiB (issue 17)", slope * 10_000 <= 512 * 1024,
                      "(RSS(N2) - RSS(N1)) / (N2 - N1): the cost of one more idle instance"))
    return out


def bench_serving(quick: bool, log: Callable[[str], None]) -> list[Result]:
    from benchmarks.serving import run_all

    rows = run_all(1.0 if quick else 5.0, log)
    out = []
    for workload in ("http", "udp"):
        mine = {r["mode"]: r for r in rows if r["workload"] == workload}
        host = mine["host"]
        base = result(f"serve {workload}: host-native Python server", Stats.of([host["rps"]], host["requests"]),
                      unit="req/s", note=f"p50 {host['p50_ms']} ms, p99 {host['p99_ms']} ms")
        for mode in ("per-request", "long-lived"):
            r = mine[mode]
            goal = mode == "per-request" and workload == "http"
            out.append(result(
                f"serve {workload}: exo serve, {'a fresh instance per request' if mode == 'per-request' else 'one long-lived instance'}",
                Stats.of([r["rps"]], r["requests"]), unit="req/s", baseline=base,
                target=">= 1,000 req/s, p99 <= 5 ms (issue 17)" if goal else None,
                check=(lambda _ratio, r=r: r["rps"] >= 1000 and r["p99_ms"] <= 5) if goal else None,
                note=f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; {r['requests']:,} requests, "
                     f"{r['failures']} failed, {r['concurrency']} clients"))
        out.append(base)
    return out


def run(repeat: int = 5, quick: bool = False, log: Callable[[str], None] | None = None,
        full: bool = False, serving: bool = True) -> list[Result]:
    log = log or (lambda s: None)
    out = bench_churn(repeat, quick, log) + bench_resident(quick, full, log)
    return out + bench_serving(quick, log) if serving else out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--resident"]:  # one row, in this (fresh) process
        print(json.dumps(resident(int(argv[1]))))
        return 0
    full, serving = "--full" in argv, "--no-serving" not in argv
    argv = [a for a in argv if a not in ("--full", "--no-serving")]
    return suite_main(argv, "python -m exo bench density [--full] [--no-serving]", __doc__,
                      lambda repeat, quick, log: run(repeat, quick, log, full, serving), "instance density", repeat=5)


if __name__ == "__main__":
    raise SystemExit(main())
