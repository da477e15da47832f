"""``python -m exo experiment ring-transitions``: the same workloads under four OS structures.

Each workload is a small guest program that performs an operation ``n`` times.
It is booted twice per structure (``n`` and ``2n`` operations) and the counts
are differenced, so that start-up and exit drop out and what remains is the
cost of one operation (lmbench's method of differencing loop lengths). For each
workload and structure the table gives transitions per operation by kind, ring
crossings (exo/structures.py CROSSINGS), guest instructions, modelled cycles
under each cost profile (exo/costmodel.py) and measured host microseconds
(median and spread over ``--repeat`` runs), never one instead of the other.

Workloads:
  null      a service call that does nothing (core.null; lmbench "null call")
  write     a 1-byte console write through the console service (direct)
  read      a 1-byte console read through the console service (direct)
  fault     a page fault on an untouched heap page (demand-zero): the library's
            handler under exokernel, the kernel's pager under monolithic, the
            guest kernel's under xen-pv, a pager server's under microkernel (page_grant)
  file      reading a 64 KiB file: open, one 64 KiB read, close (fs = ext2; the
            file stays in the library's block cache after the first pass)
  ctxsw     a context switch between two environments that yield to each other
  create    environment create + destroy (exofork-style: a kernel primitive
            under every structure)
  udp       a 1-byte UDP round trip between two apps over the switch backend (lmbench lat_udp):
            socket calls take each structure's path (library, kernel stack, guest kernel,
            network server)
  tcp       one 64 KiB send on a TCP stream between two apps that link the thread library
            (lmbench bw_tcp): a receive that waits parks its thread
  pipeline  one two-process shell pipeline run by Debian's busybox-static, unmodified
            (`echo x | cat >/dev/null` in a `sh -c` loop): fork, pipe2, execve, wait4 and
            their Linux calls through the posix libOS (docs/posix.md), under all four structures
            (microkernel: the POSIX server). Needs busybox on PATH (apt-get install busybox-static).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STRUCTURES = ("exokernel", "monolithic", "xen-pv", "microkernel")
TIMING_OPS = 1000  # operations in the shorter of the two timed runs

_EXIT = "    xor edi, edi\n    call LIB_CORE_EXIT\n"
_LOOP = "    mov r12, {n}\nagain:\n{body}    dec r12\n    jnz again\n"

# Socket workloads (libos/net): fd in r13; `bad` exits 1, so a failed call fails the run.
_SOCKET = "    mov rdi, {type}\n    call LIB_NET_SOCKET\n    test rax, rax\n    js bad\n    mov r13, rax\n"
_BIND = "    mov rdi, r13\n    lea rsi, [rip + local]\n    mov rdx, 16\n    call LIB_NET_BIND\n    test rax, rax\n    jnz bad\n"
_CALL6 = ("    mov rdi, r13\n    lea rsi, [rip + {buf}]\n    mov rdx, {len}\n    xor ecx, ecx\n    {sa}\n    {salen}\n"
          "    call LIB_NET_{fn}\n")
_BAD = "bad:\n    mov edi, 1\n    call LIB_CORE_EXIT\n"
# sockaddr_in: AF_INET, port 7 (network order); local 0.0.0.0, server 10.0.2.15 (the first app)
_ADDRS = ("section .data\nlocal: dw 2\n    db 0, 7\n    dd 0\n    dq 0\n"
          "server: dw 2\n    db 0, 7\n    db 10, 0, 2, 15\n    dq 0\n")

WORKLOADS: dict[str, dict] = {
    "null": {
        "doc": "null service call (core.null)",
        "libos": {"console": "direct"},
        "source": "section .text\n_start:\n" + _LOOP.format(n="{n}", body="    call LIB_CORE_NULL\n") + _EXIT,
    },
    "write": {
        "doc": "1-byte console write",
        "libos": {"console": "direct"},
        "source": "section .text\n_start:\n"
        + _LOOP.format(n="{n}", body="    lea rdi, [rip + byte1]\n    mov rsi, 1\n    call LIB_CONSOLE_WRITE\n")
        + _EXIT + "section .rodata\nbyte1: db 0x2e\n",
    },
    "read": {
        "doc": "1-byte console read",
        "libos": {"console": "direct"},
        "stdin": lambda n: b"x" * (n + 16),
        "source": "section .text\n_start:\n"
        + _LOOP.format(n="{n}", body="    lea rdi, [rip + buf]\n    mov rsi, 1\n    call LIB_CONSOLE_READ\n")
        + _EXIT + "section .bss\nbuf: resb 16\n",
    },
    "fault": {
        "doc": "page fault on an untouched page (user-level handler)",
        "libos": {"console": "direct", "memory": "cow"},
        "source": "section .text\n_start:\n    mov rdi, {n} * 4096 + 4096\n    call LIB_MEMORY_MALLOC\n"
        "    add rax, 4095\n    and rax, -4096\n    mov rbx, rax\n"
        + _LOOP.format(n="{n}", body="    mov byte ptr [rbx], 1\n    add rbx, 4096\n") + _EXIT,
    },
    "file": {
        "doc": "read a 64 KiB file (open, read, close)",
        "libos": {"fs": "ext2"},
        "disk": {"f64k": bytes(range(256)) * 256},
        "source": "section .text\n_start:\n"
        + _LOOP.format(n="{n}", body="    lea rdi, [rip + path]\n    xor esi, esi\n    xor edx, edx\n"
                       "    call LIB_FS_OPEN\n    mov r13, rax\n    mov rdi, rax\n    lea rsi, [rip + buf]\n"
                       "    mov rdx, 0x10000\n    call LIB_FS_READ\n    cmp rax, 0x10000\n    jne bad\n"
                       "    mov rdi, r13\n    call LIB_FS_CLOSE\n")
        + _EXIT + "bad:\n    mov edi, 1\n    call LIB_CORE_EXIT\n"
        "section .rodata\npath: db \"/f64k\", 0\nsection .bss\nbuf: resb 0x10000\n",
    },
    "ctxsw": {
        "doc": "context switch between two environments (yield)",
        "libos": {"console": "direct"},
        "envs": 2,
        "per_op": 2,  # each loop trip in each env is one switch
        "source": "section .text\n_start:\n" + _LOOP.format(n="{n}", body="    call LIB_CORE_YIELD_CPU\n") + _EXIT,
    },
    "create": {
        "doc": "environment create + destroy",
        "source": "section .text\n_start:\n"
        + _LOOP.format(n="{n}", body="    call HC_ENV_CREATE\n    mov rdi, rax\n    call HC_ENV_DESTROY\n")
        + "    mov rdi, SCHED_EXIT\n    xor esi, esi\n    call HC_SCHED_OP\n",
    },
    "udp": {
        "doc": "UDP round trip between two apps over the switch (lmbench lat_udp)",
        "net": "switch",
        "apps": [
            # app 1 (10.0.2.15): echo n 1-byte datagrams on port 7, then exit
            {"name": "udpserver", "libos": {"net": "tcpip"}, "source": "section .text\n_start:\n"
             + _SOCKET.format(type=2) + _BIND
             + _LOOP.format(n="{n}", body="    mov qword ptr [rip + peerlen], 16\n" + _CALL6.format(
                 fn="RECVFROM", buf="buf", len=64, sa="lea r8, [rip + peer]", salen="lea r9, [rip + peerlen]")
                 + "    cmp rax, 1\n    jne bad\n" + _CALL6.format(
                 fn="SENDTO", buf="buf", len=1, sa="lea r8, [rip + peer]", salen="mov r9, 16")
                 + "    cmp rax, 1\n    jne bad\n")
             + _EXIT + _BAD + _ADDRS + "peerlen: dq 16\nsection .bss\npeer: resb 16\nbuf: resb 64\n"},
            # app 2 (10.0.2.16): n round trips of one byte to 10.0.2.15:7
            {"name": "udpclient", "libos": {"net": "tcpip"}, "source": "section .text\n_start:\n"
             + _SOCKET.format(type=2)
             + _LOOP.format(n="{n}", body=_CALL6.format(
                 fn="SENDTO", buf="byte1", len=1, sa="lea r8, [rip + server]", salen="mov r9, 16")
                 + "    cmp rax, 1\n    jne bad\n" + _CALL6.format(
                 fn="RECVFROM", buf="buf", len=64, sa="xor r8d, r8d", salen="xor r9d, r9d")
                 + "    cmp rax, 1\n    jne bad\n")
             + _EXIT + _BAD + _ADDRS + "byte1: db 0x2e\nsection .bss\nbuf: resb 64\n"},
        ],
    },
    "tcp": {
        "doc": "TCP stream of 64 KiB sends between two apps over the switch, with threads (lmbench bw_tcp)",
        "net": "switch",
        "n": 8,  # 64 KiB sends: 512 KiB and 1 MiB
        "timing_ops": 32,
        "apps": [
            # app 1 (10.0.2.15): accept one connection, read to its end, check the byte count
            {"name": "tcpsink", "libos": {"net": "tcpip", "sched": "rr"}, "source": "section .text\n_start:\n"
             + _SOCKET.format(type=1) + _BIND
             + "    mov rdi, r13\n    mov rsi, 1\n    call LIB_NET_LISTEN\n    test rax, rax\n    jnz bad\n"
             "    mov rdi, r13\n    xor esi, esi\n    xor edx, edx\n    call LIB_NET_ACCEPT\n    test rax, rax\n"
             "    js bad\n    mov r14, rax\n    xor r15d, r15d\n"
             "more:\n    mov rdi, r14\n    lea rsi, [rip + buf]\n    mov rdx, 0x10000\n    xor ecx, ecx\n"
             "    call LIB_NET_RECV\n    test rax, rax\n    js bad\n    jz eof\n    add r15, rax\n    jmp more\n"
             "eof:\n    cmp r15, {n} * 0x10000\n    jne bad\n    mov rdi, r14\n    call LIB_NET_CLOSE\n"
             + _EXIT + _BAD + _ADDRS + "section .bss\nbuf: resb 0x10000\n"},
            # app 2 (10.0.2.16): connect to 10.0.2.15:7, send n x 64 KiB (each send may take part), close
            {"name": "tcpsource", "libos": {"net": "tcpip", "sched": "rr"}, "source": "section .text\n_start:\n"
             + _SOCKET.format(type=1)
             + "    mov rdi, r13\n    lea rsi, [rip + server]\n    mov rdx, 16\n    call LIB_NET_CONNECT\n"
             "    test rax, rax\n    jnz bad\n"
             + _LOOP.format(n="{n}", body="    lea rbx, [rip + buf]\n    mov r15, 0x10000\npart:\n"
                            "    mov rdi, r13\n    mov rsi, rbx\n    mov rdx, r15\n    xor ecx, ecx\n"
                            "    call LIB_NET_SEND\n    test rax, rax\n    jle bad\n    add rbx, rax\n"
                            "    sub r15, rax\n    jnz part\n")
             + "    mov rdi, r13\n    call LIB_NET_CLOSE\n" + _EXIT + _BAD + _ADDRS
             + "section .bss\nbuf: resb 0x10000\n"},
        ],
    },
    "pipeline": {
        "doc": "busybox sh: one `echo x | cat` pipeline (fork, pipe, execve, wait)",
        "linux": ["sh", "-c", "i=0; while [ $i -lt {n} ]; do echo x | cat >/dev/null; i=$((i+1)); done"],
        "n": 10,  # pipelines, not hundreds: each is four processes' worth of Linux calls
        "timing_ops": 20,
    },
}


@dataclass
class Row:
    workload: str
    structure: str
    per_op: dict[str, float]  # transitions per operation by kind
    crossings: float
    instructions: float
    hypercalls: dict[str, float]
    host_us: list[float] = field(default_factory=list)
    modelled: dict[str, float] = field(default_factory=dict)  # profile -> cycles per op
    note: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # input -> sha256 (inputs_of)

    @property
    def host_median(self) -> float:
        return statistics.median(self.host_us) if self.host_us else float("nan")

    @property
    def host_spread(self) -> tuple[float, float]:
        return (min(self.host_us), max(self.host_us)) if self.host_us else (float("nan"),) * 2


def _disk_image(d: Path, files: dict[str, bytes]):
    """A small ext2 image holding ``files`` (made by exo's own mkfs: no outside tool needed)."""
    from hw.blockdev import BlockDevice
    from libos.fs.mkfs import mkfs

    src = d / "disk-files"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    img = d / "disk.img"
    mkfs(img, 4 << 20, block_size=1024, from_dir=src, timestamp=1_767_225_600, uuid=bytes(16))  # reproducible
    return BlockDevice(str(img))


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def inputs_of(workload: str, tmp: Path) -> dict[str, str]:
    """SHA-256 of everything a workload's runs take in besides exo itself: the guest program
    (its source and library OS modules), its disk image (made reproducibly: fixed clock and
    UUID), the Linux binary it runs. Results carry them, so that two results can be told to
    come from the same inputs, or not."""
    w = WORKLOADS[workload]
    if "linux" in w:
        import shutil

        busybox = shutil.which("busybox")
        out = {"argv": _sha256(json.dumps(w["linux"]).encode())}
        if busybox is not None:
            out["busybox"] = _sha256(Path(busybox).read_bytes())
        return out
    if "apps" in w:
        return {a["name"]: _sha256(json.dumps([a["source"], a["libos"], w.get("net")], sort_keys=True).encode())
                for a in w["apps"]}
    out = {"source": _sha256(w["source"].encode()), "libos": _sha256(json.dumps(w.get("libos", {}),
                                                                                 sort_keys=True).encode())}
    if "disk" in w:
        d = tmp / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        _disk_image(d, w["disk"])
        out["disk"] = _sha256((d / "disk.img").read_bytes())
    return out


def boot(workload: str, structure: str, n: int, tmp: Path, slice: int | None = None, seed: int = 0,
          trace: str | None = None):
    """Boot one workload with ``n`` operations; (stats dict, host seconds of the run).

    ``slice``: the time slice in guest instructions (None: exo's default); ``seed``: the seed of the
    guest's randomness (a Linux program's AT_RANDOM bytes; the assembly workloads have none);
    ``trace``: write the run's trace there (.json or .jsonl: exo/trace.py)."""
    from benchmarks.guest import boot_source

    w = WORKLOADS[workload]
    if "linux" in w:
        return _boot_linux(w, structure, n, slice, seed, trace)
    if "apps" in w:
        return _boot_apps(workload, w, structure, n, tmp, slice, trace)
    d = tmp / f"{workload}-{n}"
    d.mkdir(exist_ok=True)
    disk = _disk_image(d, w["disk"]) if "disk" in w else None
    dt, stats = boot_source(w["source"].replace("{n}", str(n)), w.get("libos", {}), name=workload,
                            stdin=w.get("stdin", lambda n: b"")(n), envs=w.get("envs", 1), disk=disk,
                            structure=structure, ram_mib=64, max_instructions=500_000_000, slice=slice,
                            trace=trace)
    return stats, dt


def _boot_apps(workload: str, w: dict, structure: str, n: int, tmp: Path, slice: int | None = None,
               trace: str | None = None):
    """A workload of several apps (a server and its client) on one machine, with the NIC backend
    ``w["net"]`` (app i is 10.0.2.(15+i)); every app must exit 0."""
    import time

    from exo.api import run

    dirs = []
    for app in w["apps"]:
        d = tmp / f"{workload}-{n}-{app['name']}"
        d.mkdir(exist_ok=True)
        (d / "main.s").write_text(app["source"].replace("{n}", str(n)))
        table = "".join(f'{k} = "{v}"\n' for k, v in app["libos"].items())
        (d / "app.toml").write_text(f'name = "{app["name"]}"\nsources = ["main.s"]\n[libos]\n{table}')
        dirs.append(d)
    t0 = time.perf_counter()
    r = run(*dirs, structure=structure, net=w.get("net"), ram_mib=64, slice=slice, max_instructions=2_000_000_000,
            use_cache=False, trace=trace)
    dt = time.perf_counter() - t0
    bad = {f"{e['id']} {e['name']}": e["exit"] for e in r.stats["envs"] if e["exit"] not in (0, None)}
    if not r.ok or bad:
        why = r.reports[0].summary if r.reports else r.stuck or bad or "watchdog"
        raise RuntimeError(f"{workload} under {structure}: {why}")
    return r.stats, dt


def _boot_linux(w: dict, structure: str, n: int, slice: int | None = None, seed: int = 0,
                trace: str | None = None):
    """A Linux workload: busybox run unmodified under `structure` (exo.api.run_linux)."""
    import shutil
    import time

    from exo.api import run_linux

    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("exo experiment: the pipeline workload needs busybox (apt-get install busybox-static)")
    argv = [a.replace("{n}", str(n)) for a in w["linux"]]
    t0 = time.perf_counter()
    r = run_linux(busybox, *argv, structure=structure, max_instructions=2_000_000_000, slice=slice, seed=seed,
                  trace=trace)
    dt = time.perf_counter() - t0
    if not r.ok:
        raise RuntimeError(f"pipeline workload failed under {structure}: {r.stderr.decode()[-300:]}")
    return r.stats, dt


def measure(workload: str, structure: str, n: int, repeat: int, trace_dir: str | None = None) -> Row:
    from exo.structures import crossings

    w = WORKLOADS[workload]
    n = w.get("n", n)
    ops = n * w.get("per_op", 1)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        trace = str(Path(trace_dir) / f"{workload}-{structure}.json") if trace_dir else None
        small, _ = boot(workload, structure, n, tmp, trace=trace)  # (traced: counts are the same)
        big, _ = boot(workload, structure, 2 * n, tmp)
        per_op = {k: (big["transitions"][k] - small["transitions"][k]) / ops for k in big["transitions"]}
        names = set(big["hypercalls"]) | set(small["hypercalls"])
        hcs = {h: (big["hypercalls"].get(h, 0) - small["hypercalls"].get(h, 0)) / ops for h in names}
        hcs = {h: v for h, v in hcs.items() if v}
        insns = (big["guest_instructions"] - small["guest_instructions"]) / ops
        host = []
        tn = max(n, w.get("timing_ops", TIMING_OPS))  # longer runs for host time: short ones are all noise
        for _ in range(repeat):
            _, t_small = boot(workload, structure, tn, tmp)
            _, t_big = boot(workload, structure, 2 * tn, tmp)
            host.append((t_big - t_small) / (tn * w.get("per_op", 1)) * 1e6)
        inputs = inputs_of(workload, tmp)
    row = Row(workload, structure, per_op, crossings(per_op), insns, hcs, host, inputs=inputs)
    from exo.costmodel import PROFILES

    row.modelled = modelled(small, big, ops, PROFILES)
    return row


def modelled(small: dict, big: dict, ops: float, profiles: dict) -> dict[str, float]:
    """Modelled cycles per operation under each profile: the difference of the two runs' modelled
    totals. The model is linear in the counts, so this is the model of the per-operation counts;
    but one kind or hypercall may occur less often in the longer run (a timer interrupt that
    lands elsewhere, a wait the other app's timing spared), which the model refuses as a
    negative count, while each run's own counts are whole."""
    from exo.costmodel import model

    return {name: (model(big["transitions"], p, big["hypercalls"])["total"]
                   - model(small["transitions"], p, small["hypercalls"])["total"]) / ops
            for name, p in profiles.items()}


def run(structures=STRUCTURES, workloads=tuple(WORKLOADS), n: int = 200, repeat: int = 3, progress=None,
        trace_dir: str | None = None) -> list[Row]:
    rows = []
    plan = [(w, s) for w in workloads for s in structures if s in WORKLOADS[w].get("structures", STRUCTURES)]
    for i, (w, s) in enumerate(plan):
        if progress:
            progress(i, len(plan), f"{w} under {s}")
        rows.append(measure(w, s, n, repeat, trace_dir))
    if progress:
        progress(len(plan), len(plan), "done")
    return rows


DEFAULT_PROFILES = ("native-syscall", "native-syscall-kpti", "kvm-vmx", "xen-pv")


def _table(rows: list[Row], console, profiles=DEFAULT_PROFILES) -> None:
    from rich.table import Table

    profiles = [p for p in profiles if any(p in r.modelled for r in rows)]
    for workload in dict.fromkeys(r.workload for r in rows):
        t = Table(title=f"{workload}: {WORKLOADS[workload]['doc']} (per operation)")
        t.add_column("structure")
        t.add_column("transitions", overflow="fold")
        t.add_column("crossings", justify="right")
        t.add_column("context\nswitches", justify="right")
        t.add_column("guest\ninsns", justify="right")
        for p in profiles:
            t.add_column(f"cycles\n{p}", justify="right")
        t.add_column("host us\nmedian (min-max)", justify="right")
        for r in rows:
            if r.workload != workload:
                continue
            lo, hi = r.host_spread
            kinds = ", ".join(f"{k} {v:g}" for k, v in r.per_op.items() if v and k != "context_switch")
            t.add_row(r.structure, kinds or "-", f"{r.crossings:g}", f"{r.per_op.get('context_switch', 0):g}",
                      f"{r.instructions:.0f}", *(f"{r.modelled.get(p, float('nan')):,.0f}" for p in profiles),
                      f"{r.host_median:.1f} ({lo:.1f}-{hi:.1f})")
        console.print(t)


def _as_dict(r: Row) -> dict:
    return {"workload": r.workload, "structure": r.structure, "per_op": r.per_op, "crossings": r.crossings,
            "guest_instructions": r.instructions, "hypercalls": r.hypercalls,
            "host_us": {"median": r.host_median, "min": r.host_spread[0], "max": r.host_spread[1],
                        "samples": r.host_us},
            "modelled_cycles": r.modelled, "note": r.note, "inputs": r.inputs}


def _plot(rows: list[Row], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write(f"exo: error: {path}: --plot needs matplotlib (pip install 'exo[plot]')\n")
        return False
    workloads = list(dict.fromkeys(r.workload for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads)), 4))
    width = 0.8 / len(STRUCTURES)
    for i, s in enumerate(STRUCTURES):
        vals = [next((r.crossings for r in rows if r.workload == w and r.structure == s), 0) for w in workloads]
        ax.bar([x + i * width for x in range(len(workloads))], vals, width, label=s)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(workloads))], workloads)
    ax.set_ylabel("ring crossings per operation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exo experiment ring-transitions", description=__doc__.split("\n\n")[0])
    p.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated (default: all four)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: all)")
    p.add_argument("--ops", type=int, default=200, help="operations per run (the second run does twice as many)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions for host time (median, min-max)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--csv", metavar="FILE")
    p.add_argument("--plot", metavar="FILE", help="grouped bar chart of crossings (needs matplotlib); with "
                   "--sweep, one chart per workload: FILE-<workload>.png")
    p.add_argument("--trace", metavar="DIR", help="write a trace of each workload's counted run under each "
                   "structure: DIR/<workload>-<structure>.json (opens in Perfetto; docs/trace.md)")
    p.add_argument("--sweep", metavar="SPEC", help="a grid of runs (a TOML/JSON file or 'key=a,b;key=c'; "
                   "benchmarks/sweep.py), each an independent job on --executor")
    p.add_argument("--executor", default="local", metavar="KIND",
                   help="with --sweep: local[:N] processes (default: one per core), or ray[:ADDRESS] "
                        "(pip install 'exo[ray]'; a local Ray when no ADDRESS)")
    args = p.parse_args(argv)
    structures = [s for s in args.structures.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [s for s in structures if s not in STRUCTURES] + [w for w in workloads if w not in WORKLOADS]
    if bad or args.ops <= 0 or args.repeat <= 0:
        what = f"unknown {bad[0]!r}" if bad else "--ops and --repeat must be positive"
        sys.stderr.write(f"exo: error: {what} (structures: {', '.join(STRUCTURES)}; workloads: {', '.join(WORKLOADS)})\n")
        return 2
    if args.sweep and args.trace:
        sys.stderr.write("exo: error: --trace traces the runs of one experiment, not of a --sweep\n")
        return 2
    if args.sweep:
        return _sweep(args, structures, workloads)
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("measuring", total=1)

        def progress(i, total, what):
            bar.update(task, total=total, completed=i, description=what)

        if args.trace:
            Path(args.trace).mkdir(parents=True, exist_ok=True)
        rows = run(structures, workloads, args.ops, args.repeat, progress, args.trace)
    out = Console()
    _table(rows, out if out.is_terminal else Console(width=160))
    if args.json:
        Path(args.json).write_text(json.dumps([_as_dict(r) for r in rows], indent=2))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["workload", "structure", "crossings", "guest_instructions", "host_us_median",
                        *(f"per_op_{k}" for k in rows[0].per_op)])
            for r in rows:
                w.writerow([r.workload, r.structure, r.crossings, r.instructions, r.host_median,
                            *(r.per_op[k] for k in rows[0].per_op)])
    if args.plot and not _plot(rows, args.plot):
        return 2
    return 0


def _sweep(args: argparse.Namespace, structures: list[str], workloads: list[str]) -> int:
    """--sweep: every run of the grid on the executor; a summary table, the tidy rows as JSON/CSV."""
    from rich.console import Console
    from rich.progress import Progress

    from benchmarks import sweep as S
    from exo import jobs
    from exo.errors import ExoUserError

    try:
        grid = S.parse(args.sweep, {"structures": structures, "workloads": workloads, "repeats": args.repeat,
                                    "ops": args.ops})
        executor = jobs.parse(args.executor)
        if args.plot:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                raise ExoUserError(args.plot, "--plot needs matplotlib (pip install 'exo[plot]')")
        console = Console(stderr=True)
        console.print(f"sweep: {len(grid.points())} runs on {executor}", highlight=False)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"runs on {executor}", total=len(grid.points()))
            rows = S.run(grid, str(executor), lambda done, total: bar.update(task, completed=done))
        out = Console()
        S.summary(rows, out if out.is_terminal else Console(width=160))
        S.write(rows, args.json, args.csv)
        if args.plot:
            for f in S.plot(rows, args.plot):
                console.print(f"wrote {f}", highlight=False)
    except ExoUserError as e:
        sys.stderr.write(f"exo: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
