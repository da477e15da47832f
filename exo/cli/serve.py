"""``exo serve APP --net user,hostfwd=...``: serve an app's network flows from instances of its snapshot.

The app boots once; where it is ready (``sched_op(READY)``, or its first wait for the network with a
port open) it is snapshotted, and each new TCP connection or UDP flow on its forwarded ports is
handed to a fresh instance (``--per-request``) or to one of ``--instances N`` long-lived ones
(exo/serve.py). The app's arguments come after ``--``. Runs until Ctrl-C or SIGTERM, ``--requests N`` finished flows or ``--duration S``.

Exit status: 0, 2 for bad usage or input (or an app that never gets ready), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from exo.errors import ExoUserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="APP", help="guest app directory (with app.toml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--per-request", action="store_true",
                      help="a fresh instance from the snapshot for each new flow, destroyed when it ends (default)")
    mode.add_argument("--instances", type=int, default=None, metavar="N",
                      help="instead: N long-lived instances share the flows (for comparison)")
    p.add_argument("--balance", choices=("rr", "least"), default="rr",
                   help="with --instances: round robin (default) or the instance with the fewest flows")
    p.add_argument("--net", metavar="SPEC", required=True,
                   help="user,hostfwd=tcp::8080-:80[,hostfwd=...] (unprivileged, QEMU-like) or tap:IFNAME")
    p.add_argument("--max-instances", type=int, default=64, metavar="N",
                   help="instances live at once at most (default 64); new flows beyond wait in the backlog")
    p.add_argument("--backlog", type=int, default=128, metavar="N",
                   help="new flows that may wait for an instance (default 128); beyond, they are refused (a TCP reset)")
    p.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                   help="a flow with no frame for S seconds of guest time ends (default 10)")
    p.add_argument("--tenant", action="append", default=[], metavar="NAME:MATCH,QUOTA...",
                   help="flows matching hostport=N (the forward's host port), port=N (the guest port) or "
                        "src=CIDR get instances in tenant NAME with these quotas (envs=N, frames=N, ...); repeatable")
    p.add_argument("--quota", default=None, metavar="KEY=V,...",
                   help="the app's quotas, as exo boot --quota takes them (envs=N bounds its instances)")
    p.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                   help="virtual (default: guest time counts instructions, and waiting for the network) or wall")
    p.add_argument("--ram", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    p.add_argument("--disk", metavar="IMAGE[:ro]", help="attach a raw disk image, granted to the app")
    p.add_argument("--requests", type=int, default=None, metavar="N", help="stop after N flows have ended")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (host time)")
    p.add_argument("--stats-json", metavar="FILE", help="write the front end's counts as JSON at the end")


def run(args: argparse.Namespace) -> int:
    from exo.api import System, build
    from exo.cli.boot import print_forwards
    from exo.instances import Snapshot
    from exo.kernel import Exokernel
    from exo.serve import FrontEnd, parse_tenant, wait_until_ready
    from exo.tenants import QuotaError, parse_quota_option

    if not args.net.startswith(("user", "tap:")):
        raise ExoUserError("--net", f"{args.net!r}: exo serve takes flows from outside: user,hostfwd=... or tap:IFNAME")
    for name, value in (("--requests", args.requests), ("--duration", args.duration)):
        if value is not None and value <= 0:
            raise ExoUserError(name, f"must be positive, got {value}")
    tenants = [parse_tenant(spec) for spec in args.tenant]
    app = build(args.app)
    quotas = None
    if args.quota:  # as exo run takes its one program's: applied when the app is booted
        try:
            quotas = dict([parse_quota_option(f"{app.name}:{args.quota}")])
        except QuotaError as e:
            raise ExoUserError("--quota", str(e)) from None
    system = System([app], net=args.net, clock=args.clock, ram_mib=args.ram, disk=args.disk, quotas=quotas,
                    args=args.guest_args, stdin=b"", stdout=1, stderr=2, on_fault=Exokernel._print_report)
    try:
        k, env = system.kernel, system.envs[0]
        print_forwards(system)
        interrupted = 0

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal interrupted
            interrupted = 128 + signum
            k.halt()  # a flag: run() returns at its next scheduling decision, the machine intact

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            t0 = time.perf_counter()
            try:
                wait_until_ready(k, env)
            except ExoUserError:
                if interrupted:
                    sys.stderr.write("exo: interrupted\n")
                    return interrupted
                raise
            snap = Snapshot(k, env)
            fe = FrontEnd(k, snap, per_request=args.instances is None,
                          instances=1 if args.instances is None else args.instances,
                          balance=args.balance, max_instances=args.max_instances, idle_timeout=args.idle_timeout,
                          backlog=args.backlog, tenants=tenants)
            fe.on_refusal = lambda why: sys.stderr.write(f"exo serve: {why}\n")
            sys.stderr.write(f"exo serve: {env.name} ready after {(time.perf_counter() - t0) * 1e3:.1f} ms "
                             f"({env.instructions:,} instructions); snapshot of {len(snap.pages)} pages, "
                             f"{snap.private_pages} copy-on-write; {fe.summary()['mode']}\n")
            sys.stderr.flush()
            end = time.monotonic() + args.duration if args.duration else None

            def stop_when_done() -> None:
                done = fe.stats["flows"] - len(fe.flows)
                if (args.requests is not None and done >= args.requests) or (end is not None and time.monotonic() >= end):
                    k.halt()

            k.net.tickers.append(stop_when_done)
            if not interrupted:
                k.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        summary = fe.summary()
        sys.stderr.write("exo serve: " + ", ".join(f"{key} {summary[key]}" for key in
                         ("flows", "started", "ended", "faulted", "queued", "refused", "peak_live")) + "\n")
        if args.stats_json:
            try:
                with open(args.stats_json, "w") as out:
                    json.dump(summary, out, indent=2, sort_keys=True)
            except OSError as e:
                raise ExoUserError(args.stats_json, e.strerror or str(e)) from None
        return interrupted
    finally:
        system.close()
