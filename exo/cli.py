"""``python -m exo``: boot guest apps, inspect images, run benchmarks, generate docs.

stdout carries only guest console output; everything exo says goes to stderr.
Exit status of ``boot``: the first app's exit status, 1 if a guest was stopped
by a fault (or blocked forever), 2 for bad usage or input.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from exo.errors import ExoUserError

EXIT_FAULT = 1
EXIT_USAGE = 2


def _err(msg: str) -> None:
    sys.stderr.write(f"exo: error: {msg}\n")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = message.replace("the following arguments are required: ", "missing ")
        message = message.replace(", rest", "").replace(" rest", "")
        self.exit(EXIT_USAGE, f"exo: error: {message} (see {self.prog} --help)\n")


BENCH_SUITES = ("hw", "exo", "libos", "fs", "net")  # modules of benchmarks/


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m exo", description="exo: an exokernel and library OS on an emulated x86-64 machine")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    b = sub.add_parser("boot", help="boot one or more guest apps (guest arguments after --)")
    b.add_argument("apps", nargs="+", metavar="APP", help="guest app directory (with app.toml)")
    b.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                   help="virtual: deterministic instruction-count time (default); wall: host time, fastest")
    b.add_argument("--structure", choices=("exokernel", "monolithic", "xen-pv", "microkernel"), default="exokernel",
                   help="how service calls reach the libOS services (docs/experiments.md); default exokernel")
    b.add_argument("--stats", action="store_true", help="print transition counts at exit (stderr)")
    b.add_argument("--stats-json", metavar="FILE", help="write transition counts as JSON (docs/stats.md)")
    b.add_argument("--slice", type=int, default=None, metavar="N",
                   help="time slice: instructions (virtual clock) or microseconds (wall clock)")
    b.add_argument("--ram", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    b.add_argument("--quota", action="append", default=[], metavar="APP:KEY=V,...",
                   help="an app's tenant quotas (repeatable; over its app.toml [quota]): frames=N, envs=N, "
                        "cpu=WEIGHT, disk=BYTES/s[:BURST], disk_ops=N/s, net=BYTES/s[:BURST], net_ops=N/s "
                        "(K/M/G suffixes). Default: free frames split evenly, 1024 envs, equal CPU, no rate limit")
    b.add_argument("--max-instructions", type=int, default=None, metavar="N",
                   help="stop after N guest instructions in all (a watchdog for autograders)")
    b.add_argument("--no-cache", action="store_true", help="reassemble even if a cached image exists")
    b.add_argument("--trace", metavar="FILE", help="record every transition: FILE.json (Perfetto) or FILE.jsonl")
    b.add_argument("--trace-capacity", type=int, default=1_000_000, metavar="N",
                   help="keep the newest N trace events (default 1,000,000)")
    b.add_argument("--disk", metavar="IMAGE[:ro]",
                   help="attach a raw disk image (512-byte sectors), granted whole to every app; never flushed "
                        "implicitly (docs/disk.md)")
    b.add_argument("--disk-fail-after", type=int, default=None, metavar="N",
                   help="fault injection: drop every disk write after the Nth unflushed one (power loss)")
    b.add_argument("--net", metavar="SPEC",
                   help="attach a NIC: tap:IFNAME (needs root or CAP_NET_ADMIN), user[,hostfwd=tcp:127.0.0.1:5556-:7,"
                        "...] (unprivileged, QEMU-like forwarding) or switch (guests of this run only); app i is "
                        "10.0.2.(15+i)/24, gateway 10.0.2.2 (docs/net.md)")
    b.add_argument("--pcap", metavar="FILE", help="capture every frame on the wire to FILE (pcap, for tshark/tcpdump)")
    b.add_argument("--net-faults", metavar="SPEC",
                   help="wire fault injection, seeded and deterministic: loss=0.1,dup=0.01,reorder=0.05,"
                        "corrupt=0.01,seed=1")
    i = sub.add_parser("image", help="describe a guest app's image: modules, library calls, hypercalls, size")
    i.add_argument("app", metavar="APP")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    bench = sub.add_parser("bench", help="run a benchmark suite (hw, exo, libos, fs, net)")
    bench.add_argument("suite", choices=BENCH_SUITES)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options for the suite (--repeat, --quick, --json)")
    ex = sub.add_parser("experiment", help="run an experiment (ring-transitions)")
    ex.add_argument("name", choices=("ring-transitions",))
    ex.add_argument("rest", nargs=argparse.REMAINDER, help="options (--structures, --workloads, --json, --csv, --plot)")
    mk = sub.add_parser("mkfs", help="make an ext2 disk image in pure Python (no e2fsprogs needed)")
    mk.add_argument("rest", nargs=argparse.REMAINDER, help="IMAGE --size N[K|M|G] [--from DIR] [--block-size N]")
    fz = sub.add_parser("fuzz", help="fuzz the hypercall ABI with several apps, checking invariants (docs/security.md)")
    fz.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    fz.add_argument("--seed", type=int, default=0, help="the generator's seed (same seed, same calls)")
    fz.add_argument("--apps", type=int, default=3, help="booted apps (default 3)")
    fz.add_argument("--calls", type=int, default=None, metavar="N", help="stop after N hypercalls")
    fz.add_argument("--progress", action="store_true", help="a progress line on stderr every 30 s")
    sub.add_parser("gen", help="regenerate docs/abi.md and guest_apps/include/exo.{inc,h} from the ABI table")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    guest_args: list[str] = []
    if "--" in argv and argv and argv[0] == "boot":
        cut = argv.index("--")
        argv, guest_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    try:
        if args.command == "boot":
            return cmd_boot(args, guest_args)
        if args.command == "image":
            return cmd_image(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "mkfs":
            from libos.fs.mkfs import main as mkfs_main

            return mkfs_main([a for a in args.rest if a != "--"])
        if args.command == "experiment":
            from benchmarks import ring_transitions

            return ring_transitions.main([a for a in args.rest if a != "--"])
        if args.command == "fuzz":
            from exo.fuzz.runner import cmd_fuzz

            return cmd_fuzz(args)
        if args.command == "gen":
            from exo.guest_iface import generate
            from libos.registry import write_outputs

            for path in [*generate(), *write_outputs()]:
                sys.stderr.write(f"exo: wrote {path}\n")
            return 0
    except ExoUserError as e:
        _err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("exo: interrupted\n")
        return 130
    return EXIT_USAGE


def cmd_boot(args: argparse.Namespace, guest_args: list[str]) -> int:
    from exo.api import System, build_manifest
    from exo.manifest import load_manifest

    manifests = [load_manifest(a) for a in args.apps]
    quotas = _quota_options(args.quota, manifests)
    apps = [build_manifest(m, use_cache=not args.no_cache) for m in manifests]
    if args.max_instructions is not None:
        if args.max_instructions <= 0:
            raise ExoUserError("--max-instructions", f"must be positive, got {args.max_instructions}")
        if args.clock == "wall":
            raise ExoUserError("--max-instructions", "counts guest instructions: it needs --clock virtual")
    for opt, path in (("--stats-json", args.stats_json), ("--trace", args.trace), ("--pcap", args.pcap)):
        if path and not (Path(path).resolve().parent.is_dir() and os.access(Path(path).resolve().parent, os.W_OK)):
            raise ExoUserError(path, f"{opt}: the directory does not exist or is not writable")

    system = System(apps, clock=args.clock, structure=args.structure, ram_mib=args.ram, slice=args.slice,
                    stdin=0, stdout=1, args=guest_args, quotas=quotas, disk=args.disk,
                    disk_fail_after=args.disk_fail_after, net=args.net, net_faults=args.net_faults,
                    pcap=args.pcap, trace=args.trace, trace_capacity=args.trace_capacity,
                    on_fault=_print_report)
    machine, kernel, envs = system.machine, system.kernel, system.envs
    for f in getattr(getattr(system.nic, "backend", None), "forwards", ()):
        # Where the host reaches the guest (a HOSTPORT of 0 took any free port: say which).
        sys.stderr.write(f"exo: net: {f.proto} {f.host_addr}:{f.host_port} -> {f.guest_addr}:{f.guest_port}\n")
    interrupted: str | None = None
    previous = signal.signal(signal.SIGTERM, _terminate)  # a server stopped with kill: as with Ctrl-C
    try:
        system.run(args.max_instructions)
    except _Terminated:
        interrupted = "terminated"
    except KeyboardInterrupt:
        interrupted = "interrupted"  # still write what was counted and traced so far
    finally:
        signal.signal(signal.SIGTERM, previous)
        system.close()  # no implicit flush: unflushed disk writes are lost (docs/disk.md); writes the trace
    stats = system.stats()
    if args.stats_json:
        try:
            import json

            Path(args.stats_json).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise ExoUserError(args.stats_json, f"cannot write: {e.strerror}") from None
    if args.stats:
        print_stats(stats)
    if interrupted:
        for e in kernel.alive():  # where each was, so a guest that never ends has a location
            sys.stderr.write(f"exo: environment {e.id} ({e.name}) was at {_locate(kernel, e)}\n")
        sys.stderr.write(f"exo: {interrupted}\n")
        return 143 if interrupted == "terminated" else 130
    if machine.console.output_error:
        sys.stderr.write(f"exo: error: writing the guests' output: {machine.console.output_error}\n")
        return EXIT_FAULT
    first = envs[0]
    stuck = [e for e in kernel.envs.values() if e.alive and not e.is_server]
    from exo.report import watchdog_reason

    for e in stuck:
        reason = e.fault or watchdog_reason(e)
        sys.stderr.write(f"exo: environment {e.id} ({e.name}): {reason}\n  at {_locate(kernel, e)}\n")
    if kernel.reports or stuck:
        return EXIT_FAULT
    status = first.exit_status or 0
    if status and not status & 0xFF:  # POSIX passes 8 bits: say when that turns a failure into 0
        sys.stderr.write(f"exo: environment {first.id} ({first.name}) exited with status {status}; "
                         f"the process exit status is its low 8 bits: 0\n")
    return status & 0xFF


def _locate(kernel, env) -> str:
    """Where a live environment is: its RIP (in the vCPU if its state is loaded there, else in its
    saved context), symbol+offset and the instruction there."""
    from exo.report import location
    from hw.regs import Reg

    cpu = kernel.cpu
    rip = cpu.regs.read(Reg.RIP) if env is kernel._live else cpu.context_read(env.ctx, Reg.RIP)
    return location(rip, env.space.fetch_code(rip), kernel.symbol(env, rip))


def _print_report(report) -> None:
    sys.stderr.write(report.render() + "\n")
    sys.stderr.flush()


class _Terminated(KeyboardInterrupt):
    """SIGTERM while guests run (``kill``, a test stopping a server)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _quota_options(specs: list[str], manifests: list) -> dict[str, dict]:
    """``--quota APP:KEY=V,...`` options -> {app name: parsed quota} (one-line errors, exit 2)."""
    from exo.tenants import QuotaError, parse_quota_option

    names = [m.name for m in manifests]
    out: dict[str, dict] = {}
    for spec in specs:
        try:
            name, quota = parse_quota_option(spec)
        except QuotaError as e:
            raise ExoUserError("--quota", str(e)) from None
        if name not in names:
            raise ExoUserError("--quota", f"no booted app is named '{name}' (booted: {', '.join(names)})")
        out.setdefault(name, {}).update(quota)
    return out


def print_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title="ring transitions", show_lines=False)
    t.add_column("kind")
    t.add_column("count", justify="right")
    for k, v in stats["transitions"].items():
        t.add_row(k, str(v))
    console.print(t)
    if stats["hypercalls"]:
        h = Table(title="hypercalls")
        h.add_column("name")
        h.add_column("count", justify="right")
        for k, v in stats["hypercalls"].items():
            h.add_row(k, str(v))
        console.print(h)
    e = Table(title="environments")
    for col in ("id", "name", "exit", "instructions", "hypercalls", "traps"):
        e.add_column(col)
    for env in stats["envs"]:
        e.add_row(str(env["id"]), env["name"], str(env["exit"]), str(env["instructions"]),
                  str(env["transitions"]["hypercall"]), str(env["transitions"]["trap"]))
    console.print(e)
    if stats["guest_instructions"] is not None:
        console.print(f"guest instructions: {stats['guest_instructions']}")
    q = Table(title="tenants: use against quota")
    for col in ("app", "frames (peak) / quota", "envs / quota", "cpu weight", "instructions", "disk", "net"):
        q.add_column(col)
    for t in stats["tenants"]:
        fr, en = t["frames"], t["envs"]
        refused = lambda d: f", {d['refused']} refused" if d["refused"] else ""  # noqa: E731
        rate = lambda d: "-" if d is None else f"{d['limit']}, {d['delays']} delays"  # noqa: E731
        q.add_row(t["name"] + (" (system)" if t["system"] else ""),
                  f"{fr['used']} ({fr['peak']}) / {fr['limit']}{refused(fr)}", f"{en['used']} / {en['limit']}{refused(en)}",
                  str(t["cpu"]["weight"]), str(t["cpu"]["instructions"]), rate(t["disk"]), rate(t["net"]))
    console.print(q)
    if "net" in stats:
        n = Table(title="network frames")
        n.add_column("where")
        n.add_column("counter")
        n.add_column("frames", justify="right")
        for where, counters in stats["net"].items():
            for k, v in counters.items():
                n.add_row(where, k, str(v))
        console.print(n)


def cmd_image(args: argparse.Namespace) -> int:
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    from exo.abi import HYPERCALL_PAGE, HYPERCALL_STUB_SIZE, LIBOS_END, LIBOS_PAGE, PERM_X
    from exo.api import build_manifest
    from exo.hypercalls import BY_NR
    from exo.libcall import BASE_HYPERCALLS
    from exo.manifest import load_manifest
    from libos.registry import symbols

    image, classes = build_manifest(load_manifest(args.app))[1:]
    by_addr = {v: k for k, v in symbols().items()}
    hypercalls, libcalls, raw = set(), set(), 0
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    for seg in image.segments:
        if not seg.perm & PERM_X:
            continue
        last_eax = None
        for insn in cs.disasm(seg.data, seg.va):
            if insn.mnemonic == "mov" and insn.op_str.startswith(("eax, ", "rax, ")):
                try:
                    last_eax = int(insn.op_str.split(", ")[1], 0)
                except ValueError:
                    last_eax = None
            elif insn.mnemonic == "syscall":
                h = BY_NR.get(last_eax) if last_eax is not None else None
                if h:
                    hypercalls.add(h.name)
                else:
                    raw += 1
            elif insn.mnemonic in ("call", "jmp") and insn.op_str.startswith("0x"):
                target = int(insn.op_str, 16)
                if HYPERCALL_PAGE <= target < HYPERCALL_PAGE + 4096:
                    h = BY_NR.get((target - HYPERCALL_PAGE) // HYPERCALL_STUB_SIZE)
                    hypercalls.add(h.name if h else f"#{(target - HYPERCALL_PAGE) // HYPERCALL_STUB_SIZE}")
                elif LIBOS_PAGE <= target < LIBOS_END:
                    libcalls.add(by_addr.get(target, f"{target:#x}").removeprefix("LIB_").lower())
    allowed = None
    if classes:
        allowed = set(BASE_HYPERCALLS)
        for c in classes:
            allowed |= c.HYPERCALLS
    report = {
        "name": image.name, "entry": image.entry, "size": image.size,
        "segments": [{"name": s.name, "va": s.va, "size": s.memsz,
                      "perm": ("r" if s.perm & 1 else "-") + ("w" if s.perm & 2 else "-")
                      + ("x" if s.perm & 8 else "-")} for s in image.segments],
        "libos": {c.NAME: c.IMPL for c in classes},
        "library_calls": sorted(libcalls),
        "hypercalls_called": sorted(hypercalls),
        "unresolved_syscalls": raw,
        "hypercalls_allowed": sorted(allowed) if allowed is not None else "all (no libOS module linked)",
        "denied_but_called": sorted(hypercalls - allowed) if allowed is not None else [],
    }  # fmt: skip
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    print(f"{image.name}: entry {image.entry:#x}, {image.size} bytes in {len(image.segments)} segments")
    for seg in report["segments"]:
        print(f"  {seg['name']:8} {seg['va']:#010x} {seg['size']:9} bytes  {seg['perm']}")
    linked = ", ".join(f"{k} = {v}" for k, v in report["libos"].items()) or "none (the app is its own libOS)"
    print(f"libOS modules: {linked}")
    print(f"library calls: {', '.join(report['library_calls']) or 'none'}")
    print(f"hypercalls called directly: {', '.join(report['hypercalls_called']) or 'none'}"
          + (f" (+{raw} syscall(s) with a computed number)" if raw else ""))
    allowed_text = report["hypercalls_allowed"]
    print(f"hypercalls allowed: {allowed_text if isinstance(allowed_text, str) else ', '.join(allowed_text)}")
    if report["denied_but_called"]:
        print(f"warning: called but not allowed (will get -EPERM): {', '.join(report['denied_but_called'])}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    rest = [a for a in args.rest if a != "--"]
    return importlib.import_module(f"benchmarks.{args.suite}").main(rest)  # benchmarks/SUITE.py
