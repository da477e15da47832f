"""``python -m exo``: boot guest apps, inspect images, run benchmarks, generate docs.

stdout carries only guest console output; everything exo says goes to stderr.
Exit status of ``boot``: the first app's exit status, 1 if a guest was stopped
by a fault (or blocked forever), 2 for bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exo.errors import ExoUserError

EXIT_FAULT = 1
EXIT_USAGE = 2


def _err(msg: str) -> None:
    sys.stderr.write(f"exo: error: {msg}\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m exo", description="exo: an exokernel and library OS on an emulated x86-64 machine")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("boot", help="boot one or more guest apps (guest arguments after --)")
    b.add_argument("apps", nargs="+", metavar="APP", help="guest app directory (with app.toml)")
    b.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                   help="virtual: deterministic instruction-count time (default); wall: host time, fastest")
    b.add_argument("--stats", action="store_true", help="print transition counts at exit (stderr)")
    b.add_argument("--stats-json", metavar="FILE", help="write transition counts as JSON (docs/stats.md)")
    b.add_argument("--slice", type=int, default=None, metavar="N",
                   help="time slice: instructions (virtual clock) or microseconds (wall clock)")
    b.add_argument("--ram", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    b.add_argument("--max-instructions", type=int, default=None, metavar="N",
                   help="stop after N guest instructions in all (a watchdog for autograders)")
    b.add_argument("--no-cache", action="store_true", help="reassemble even if a cached image exists")
    i = sub.add_parser("image", help="describe a guest app's image")
    i.add_argument("app", metavar="APP")
    bench = sub.add_parser("bench", help="run a benchmark suite (hw, exo)")
    bench.add_argument("suite", choices=("hw", "exo"))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options for the suite (--repeat, --quick, --json)")
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
        if args.command == "gen":
            from exo.guest_iface import generate

            for path in generate():
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
    from exo.image import build_image
    from exo.manifest import load_manifest

    manifests = [load_manifest(a) for a in args.apps]
    images = [build_image(m, use_cache=not args.no_cache) for m in manifests]
    if args.ram <= 0 or args.ram > 4096:
        raise ExoUserError("--ram", f"{args.ram} MiB is not between 1 and 4096")
    if args.slice is not None and args.slice <= 0:
        raise ExoUserError("--slice", f"must be positive, got {args.slice}")

    from exo.kernel import DEFAULT_SLICE, Exokernel
    from exo.loader import spawn
    from hw import Machine

    slice_seconds = (args.slice or 10_000) / 1e6
    machine = Machine(args.ram << 20, clock=args.clock, stdin=0, stdout=1, slice_seconds=slice_seconds)
    kernel = Exokernel(machine, slice_instructions=args.slice or DEFAULT_SLICE)
    envs = []
    for m, image in zip(manifests, images):
        envs.append(spawn(kernel, image, [*m.args, *guest_args], frame_quota=m.memory_pages))
    kernel.run(max_instructions=args.max_instructions)
    stats = collect_stats(kernel)
    if args.stats_json:
        try:
            Path(args.stats_json).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise ExoUserError(args.stats_json, f"cannot write: {e.strerror}") from None
    if args.stats:
        print_stats(stats)
    first = envs[0]
    stuck = [e for e in kernel.envs.values() if e.alive]
    for e in stuck:
        reason = e.fault or "still running when the watchdog stopped the machine"
        sys.stderr.write(f"exo: environment {e.id} ({e.name}): {reason}\n")
    if kernel.reports or stuck:
        return EXIT_FAULT
    return (first.exit_status or 0) & 0xFF


def collect_stats(kernel) -> dict:
    acct = kernel.acct
    by_env = acct.by_env
    kinds = acct.transitions
    envs = []
    for e in kernel.envs.values():
        envs.append({
            "id": e.id, "name": e.name, "parent": e.parent,
            "exit": e.exit_summary() if not e.alive else None,
            "fault": e.fault,
            "instructions": e.instructions if kernel.machine.clock.mode == "virtual" else None,
            "transitions": {k: by_env.get(e.id, {}).get(k, 0) for k in kinds},
        })  # fmt: skip
    virtual = kernel.machine.clock.mode == "virtual"
    return {
        "clock": kernel.machine.clock.mode,
        "transitions": dict(kinds),
        "hypercalls": dict(sorted(acct.hypercalls.items())),
        "guest_instructions": kernel.cpu.retired_total if virtual else None,
        "envs": envs,
    }


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


def cmd_image(args: argparse.Namespace) -> int:
    from exo.image import build_image
    from exo.manifest import load_manifest

    m = load_manifest(args.app)
    image = build_image(m)
    out = sys.stderr
    out.write(f"{image.name}: entry {image.entry:#x}, {image.size} bytes in {len(image.segments)} segments\n")
    for s in image.segments:
        perm = ("r" if s.perm & 1 else "-") + ("w" if s.perm & 2 else "-") + ("x" if s.perm & 8 else "-")
        out.write(f"  {s.name:8} {s.va:#010x}  {s.memsz:8} bytes  {perm}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    rest = [a for a in args.rest if a != "--"]
    if args.suite == "hw":
        from benchmarks import hw as suite
    else:
        from benchmarks import exo as suite
    return suite.main(rest)
