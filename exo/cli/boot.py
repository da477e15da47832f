"""``exo boot APP... [-- ARGS]``: boot guest apps on one machine and run them to the end.

Exit status: the first app's exit status (its low 8 bits, as POSIX exit() passes), 1 if a guest was
stopped by a fault or left blocked, 2 for bad usage or input, 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from exo.cli import EXIT_FAULT
from exo.errors import ExoUserError

if TYPE_CHECKING:
    from exo.replay import Journal


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("apps", nargs="+", metavar="APP", help="guest app directory (with app.toml)")
    p.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                   help="virtual: deterministic instruction-count time (default); wall: host time, fastest")
    p.add_argument("--structure", choices=("exokernel", "monolithic", "xen-pv", "microkernel"), default="exokernel",
                   help="how service calls reach the libOS services (docs/experiments.md); default exokernel")
    p.add_argument("--stats", action="store_true", help="print transition counts at exit (stderr)")
    p.add_argument("--stats-json", metavar="FILE", help="write transition counts as JSON (docs/stats.md)")
    p.add_argument("--slice", type=int, default=None, metavar="N",
                   help="time slice: instructions (virtual clock) or microseconds (wall clock)")
    p.add_argument("--ram", type=int, default=256, metavar="MIB",
                   help="guest RAM in MiB (default 256; up to the host's RAM, above 4 GiB too)")
    p.add_argument("--quota", action="append", default=[], metavar="APP:KEY=V,...",
                   help="an app's tenant quotas (repeatable; over its app.toml [quota]): frames=N, envs=N, "
                        "fds=N (descriptors per environment), cpu=WEIGHT, disk=BYTES/s[:BURST], disk_ops=N/s, net=BYTES/s[:BURST], net_ops=N/s "
                        "(K/M/G suffixes). Default: free frames split evenly, 1024 envs, 1024 fds, equal CPU, no rate limit")
    p.add_argument("--args", action="append", default=[], metavar="APP=ARGS", dest="app_args",
                   help="one app's arguments, split as a shell would (repeatable; instead of those after --, "
                        "which go to every other app): --args 'nettest=tcp 10.0.2.15 7 4096'")
    p.add_argument("--max-instructions", type=int, default=None, metavar="N",
                   help="stop after N guest instructions in all (a watchdog for autograders)")
    p.add_argument("--no-cache", action="store_true", help="reassemble even if a cached image exists")
    p.add_argument("--trace", metavar="FILE", help="record every transition: FILE.json (Perfetto) or FILE.jsonl")
    p.add_argument("--trace-capacity", type=int, default=1_000_000, metavar="N",
                   help="keep the newest N trace events (default 1,000,000)")
    p.add_argument("--disk", metavar="IMAGE[:ro]",
                   help="attach a raw disk image (512-byte sectors), granted whole to every app; never flushed "
                        "implicitly (docs/disk.md)")
    p.add_argument("--disk-fail-at", type=int, default=None, metavar="N",
                   help="fault injection: the power fails at the disk's N-th write of the run (0-based), whatever "
                        "the flushes; run it for every N to reach every crash point (docs/fs.md)")
    p.add_argument("--disk-fail-after", type=int, default=None, metavar="N",
                   help="fault injection: drop every disk write after the Nth unflushed one (power loss)")
    p.add_argument("--net", metavar="SPEC",
                   help="attach a NIC: tap:IFNAME (needs root or CAP_NET_ADMIN), user[,hostfwd=tcp:127.0.0.1:5556-:7,"
                        "...] (unprivileged, QEMU-like forwarding) or switch (guests of this run only); app i is "
                        "10.0.2.(15+i)/24, gateway 10.0.2.2 (docs/net.md)")
    p.add_argument("--pcap", metavar="FILE", help="capture every frame on the wire to FILE (pcap, for tshark/tcpdump)")
    p.add_argument("--net-faults", metavar="SPEC",
                   help="wire fault injection, seeded and deterministic: loss=0.1,dup=0.01,reorder=0.05,"
                        "corrupt=0.01,seed=1")
    p.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol on HOST:PORT (default host 127.0.0.1): environments are "
                        "threads (docs/debugging.md, Attaching gdb)")
    p.add_argument("--gdb-wait", action="store_true", help="with --gdb: wait for gdb before the first instruction")
    p.add_argument("--gdb-history", type=int, default=None, metavar="MIB",
                   help="with --gdb: memory for reverse execution's checkpoints (default 256; 0: reverse off) "
                        "(docs/debugging.md, Reverse execution)")
    p.add_argument("--record", metavar="FILE",
                   help="record what the run consumes from outside (console input, network frames) to FILE, "
                        "with the options, image and disk hashes (docs/debugging.md, Record and replay)")
    p.add_argument("--replay", metavar="FILE",
                   help="replay a recording made with the same apps and options: same output, stats and trace; "
                        "the disk is not written")


def run(args: argparse.Namespace) -> int:
    guest_args = args.guest_args
    from exo.api import System, build_manifest
    from exo.build.manifest import load_manifest

    manifests = [load_manifest(a) for a in args.apps]
    quotas = _quota_options(args.quota, manifests)
    app_args = _app_args(args.app_args, manifests)
    apps = [build_manifest(m, use_cache=not args.no_cache) for m in manifests]
    if args.max_instructions is not None:
        if args.max_instructions <= 0:
            raise ExoUserError("--max-instructions", f"must be positive, got {args.max_instructions}")
        if args.clock == "wall":
            raise ExoUserError("--max-instructions", "counts guest instructions: it needs --clock virtual")
    if args.gdb_wait and not args.gdb:
        raise ExoUserError("--gdb-wait", "needs --gdb [HOST:]PORT")
    if args.gdb_history is not None and not args.gdb:
        raise ExoUserError("--gdb-history", "needs --gdb [HOST:]PORT")
    if args.gdb_history is not None and args.gdb_history < 0:
        raise ExoUserError("--gdb-history", f"must be >= 0 MiB, got {args.gdb_history}")
    for opt, path in (("--stats-json", args.stats_json), ("--trace", args.trace), ("--pcap", args.pcap),
                      ("--record", args.record)):
        if path and not (Path(path).resolve().parent.is_dir() and os.access(Path(path).resolve().parent, os.W_OK)):
            raise ExoUserError(path, f"{opt}: the directory does not exist or is not writable")

    journal = _journal(args, apps)  # --record / --replay: checked before anything runs
    disk = args.disk
    if args.replay and disk:
        disk = _private_copy(disk)  # a replay never writes the image: it may be replayed again
    try:
        system = System(apps, clock=args.clock, structure=args.structure, ram_mib=args.ram, slice=args.slice,
                        stdin=None if args.replay else 0, stdout=1, stderr=2, args=guest_args, quotas=quotas, disk=disk,
                        app_args=app_args,
                        disk_fail_after=args.disk_fail_after, disk_fail_at=args.disk_fail_at, net=args.net,
                        net_faults=args.net_faults,
                        pcap=args.pcap, trace=args.trace, trace_capacity=args.trace_capacity,
                        on_fault=_print_report)
    except BaseException:
        if disk is not args.disk:
            os.unlink(disk.removesuffix(":ro"))
        raise
    machine, kernel, envs = system.machine, system.kernel, system.envs
    tape = None
    budget = args.max_instructions
    replay_ended: tuple = ()  # what a replay raises when it needs input past the end of the recording
    if journal is not None:
        from exo.replay import ReplayEnded, install

        replay_ended = (ReplayEnded,)
        try:
            tape = install(system, journal, replay=bool(args.replay))
        except BaseException:
            system.close()
            raise
        end = journal.end
        if args.replay and end is not None and end.data == b"interrupted":
            budget = max(1, min(budget or end.instructions, end.instructions))  # up to where the recording stopped
    print_forwards(system)
    gdb = start_gdb(system, args.gdb, args.gdb_history) if args.gdb else None
    interrupted: str | None = None
    from exo.cli.breakpoint import install as install_breakpoint

    # breakpoint() in a libOS module: pdb gets the terminal, the guest keeps its input (docs/debugging.md)
    uninstall_breakpoint = install_breakpoint(machine.console)
    # A server stopped with kill ends as with Ctrl-C; both are raised where the vCPU can take them
    # (VCpu.raise_from_signal: not inside one of Unicorn's callbacks, where they would be lost).
    cpu = kernel.cpu
    previous = signal.signal(signal.SIGTERM, lambda _s, _f: cpu.raise_from_signal(_Terminated()))
    previous_int = signal.signal(signal.SIGINT, lambda _s, _f: cpu.raise_from_signal(KeyboardInterrupt()))
    try:
        if gdb is not None:
            gdb.run(args.gdb_wait, budget)
        else:
            system.run(budget)
        if budget is not None and budget != args.max_instructions and kernel.watchdog_fired:
            interrupted = "replay ended"
    except _Terminated:
        interrupted = "terminated"
    except KeyboardInterrupt:
        interrupted = "interrupted"  # still write what was counted and traced so far
    except replay_ended:
        interrupted = "replay ended"
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        uninstall_breakpoint()
        if args.record and tape is not None:
            tape.finish("interrupted" if interrupted else "exit")  # stamped while the vCPU's count is there
        system.close()  # no implicit flush: unflushed disk writes are lost (docs/disk.md); writes the trace
        if disk is not args.disk:
            os.unlink(disk.removesuffix(":ro"))
    if args.record and tape is not None:
        journal.save(args.record)
    report_stats(args, system.stats())
    if gdb is not None and gdb.killed:
        sys.stderr.write("exo: killed by gdb\n")
        return 137  # as a shell reports a process ended by SIGKILL
    if interrupted:
        for e in kernel.alive():  # where each was, so a guest that never ends has a location
            sys.stderr.write(f"exo: environment {e.id} ({e.name}) was at {_locate(kernel, e)}\n")
        if interrupted == "replay ended":
            interrupted = (f"replay: the recording ends at instruction {journal.end.instructions} "
                           "(the recorded run was interrupted there)")
        sys.stderr.write(f"exo: {interrupted}\n")
        return 143 if interrupted == "terminated" else 130
    if machine.console.output_error:
        sys.stderr.write(f"exo: error: writing the guests' output: {machine.console.output_error}\n")
        return EXIT_FAULT
    first = envs[0]
    if report_stuck(kernel):
        return EXIT_FAULT
    status = first.exit_status or 0
    if status and not status & 0xFF:  # POSIX passes 8 bits: say when that turns a failure into 0
        sys.stderr.write(f"exo: environment {first.id} ({first.name}) exited with status {status}; "
                         f"the process exit status is its low 8 bits: 0\n")
    return status & 0xFF


def _journal(args: argparse.Namespace, apps: list) -> Journal | None:
    """The journal to record into (a new one) or to replay (loaded and checked against this run); None."""
    if not (args.record or args.replay):
        return None
    if args.record and args.replay:
        raise ExoUserError("--replay", "record or replay, not both in one run")
    opt = "--replay" if args.replay else "--record"
    if args.clock != "virtual":
        raise ExoUserError(opt, "needs --clock virtual: under the wall clock guest time is the host's and a run "
                                "cannot be replayed")
    from exo.replay import Journal, check_header, make_header

    disk = args.disk.removesuffix(":ro").removesuffix(":rw") if args.disk else None
    if disk is not None and not os.path.isfile(disk):
        raise ExoUserError("--disk", f"{disk}: no such disk image")
    options = {"apps": [a.name for a in apps], "args": list(args.guest_args), "clock": args.clock,
               **({"app_args": sorted(args.app_args)} if args.app_args else {}),
               "structure": args.structure, "slice": args.slice, "ram": args.ram, "quota": sorted(args.quota),
               "max_instructions": args.max_instructions,
               # The disk by its contents (the header's hash) and mode: a copy elsewhere replays too.
               "disk": None if disk is None else ("ro" if args.disk.endswith(":ro") else "rw"),
               "disk_fail_after": args.disk_fail_after, "net": args.net, "net_faults": args.net_faults,
               # (only when given: recordings made before the option existed still replay)
               **({"disk_fail_at": args.disk_fail_at} if args.disk_fail_at is not None else {})}
    header = make_header(apps, options, disk)
    if args.record:
        return Journal(header)
    journal = Journal.load(args.replay)
    check_header(journal.header, header)
    return journal


def _private_copy(spec: str) -> str:
    """A temporary copy of a disk image (``IMAGE[:ro|:rw]``) for a replay to write; its spec."""
    import shutil
    import tempfile

    path, suffix = spec, ""
    for s in (":ro", ":rw"):
        if spec.endswith(s):
            path, suffix = spec[: -len(s)], s
    fd, copy = tempfile.mkstemp(prefix="exo-replay-", suffix=".img")
    os.close(fd)
    shutil.copyfile(path, copy)
    return copy + (":ro" if suffix == ":ro" else "")


def report_stats(args: argparse.Namespace, stats: dict) -> None:
    """``--stats-json FILE`` and ``--stats`` of a finished run (exo boot, exo run)."""
    if args.stats_json:
        try:
            import json

            Path(args.stats_json).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise ExoUserError(args.stats_json, f"cannot write: {e.strerror}") from None
    if args.stats:
        print_stats(stats)


def print_forwards(system) -> None:
    """Where the host reaches the guest, one line per hostfwd (a HOSTPORT of 0 took any free port:
    say which), on stderr."""
    for f in getattr(getattr(system.nic, "backend", None), "forwards", ()):
        sys.stderr.write(f"exo: net: {f.proto} {f.host_addr}:{f.host_port} -> {f.guest_addr}:{f.guest_port}\n")


def stuck_envs(kernel) -> list:
    """The guests still alive at the end of a run (servers wait for ever by design)."""
    return [e for e in kernel.envs.values() if e.alive and not e.is_server]


def start_gdb(system, address: str, history_mib: int | None = None):
    """A GdbServer on ``address`` for ``system`` (reverse execution with ``history_mib`` MiB of
    checkpoints, default DEFAULT_MIB); the system is closed if it cannot start."""
    from exo.gdb.history import DEFAULT_MIB
    from exo.gdb.server import GdbServer, parse_address

    try:
        return GdbServer(system.kernel, *parse_address(address),
                         history_mib=DEFAULT_MIB if history_mib is None else history_mib)
    except BaseException:
        system.close()
        raise


def report_stuck(kernel) -> bool:
    """Say why and where each guest still alive at the end was (blocked forever, the watchdog);
    True if the run failed (those, or a fault report)."""
    from exo.report import watchdog_reason

    stuck = stuck_envs(kernel)
    for e in stuck:
        reason = e.fault or watchdog_reason(e)
        sys.stderr.write(f"exo: environment {e.id} ({e.name}): {reason}\n  at {_locate(kernel, e)}\n")
    return bool(kernel.reports or stuck)


def _locate(kernel, env) -> str:
    """Where a live environment is: its RIP (in the vCPU if its state is loaded there, else in its
    saved context), symbol+offset and the instruction there."""
    from exo.report import location
    from hw.regs import Reg

    cpu = kernel.cpu
    rip = cpu.regs.read(Reg.RIP) if env is kernel._live else cpu.context_read(env.ctx, Reg.RIP)
    return location(rip, env.space.fetch_code(rip), kernel.symbol(env, rip), kernel.source_line(env, rip))


def _print_report(report) -> None:
    text = report.render()
    sys.stderr.write(text + "\n")
    if "LAB " in text:  # a lab's stub reached in the library OS: where to work (docs/labs/)
        from exo.labs.stubs import explain_text

        line = explain_text(text)
        if line:
            sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _Terminated(KeyboardInterrupt):
    """SIGTERM while guests run (``kill``, a test stopping a server)."""


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


def _app_args(specs: list[str], manifests: list) -> dict[str, list[str]]:
    """``--args APP=ARGS`` options -> {app name: its arguments, split by shlex} (one-line errors)."""
    import shlex

    names = [m.name for m in manifests]
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, eq, text = spec.partition("=")
        if not eq or not name:
            raise ExoUserError("--args", f"{spec!r} is not APP=ARGS")
        if name not in names:
            raise ExoUserError("--args", f"no booted app is named '{name}' (booted: {', '.join(names)})")
        if name in out:
            raise ExoUserError("--args", f"'{name}' is given twice")
        try:
            out[name] = shlex.split(text)
        except ValueError as e:
            raise ExoUserError("--args", f"{name}: {e}") from None
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
