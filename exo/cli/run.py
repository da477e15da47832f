"""``exo run [options] PROGRAM [ARGS...]``: run an unmodified static x86-64 Linux program on the posix libOS.

The program's system calls are reflected by the exokernel to the posix module (docs/posix.md).
Exit status: the program's exit status, 1 if it was stopped by a fault or left blocked, 2 for bad
usage or input (a dynamic binary, not an ELF file...), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from exo.abi import LINUX_STRACE
from exo.cli import EXIT_FAULT
from exo.errors import ExoUserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("program", metavar="PROGRAM", help="a static x86-64 Linux executable (a path, or a name on PATH)")
    p.add_argument("program_args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments (no -- needed)")
    p.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                   help="virtual: deterministic instruction-count time (default); wall: host time")
    p.add_argument("--structure", choices=("exokernel", "monolithic", "xen-pv", "microkernel"), default="exokernel",
                   help="only exokernel runs Linux programs so far (docs/posix.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of AT_RANDOM and getrandom (default 0)")
    p.add_argument("--strace", action="store_true",
                   help="print every system call with its arguments and result on stderr (strace's format)")
    p.add_argument("--stats", action="store_true", help="print transition counts at exit (stderr)")
    p.add_argument("--stats-json", metavar="FILE", help="write transition counts as JSON (docs/stats.md)")
    p.add_argument("--slice", type=int, default=None, metavar="N",
                   help="time slice: instructions (virtual clock) or microseconds (wall clock)")
    p.add_argument("--ram", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256)")
    p.add_argument("--max-instructions", type=int, default=None, metavar="N",
                   help="stop after N guest instructions (a watchdog)")
    p.add_argument("--trace", metavar="FILE", help="record every transition: FILE.json (Perfetto) or FILE.jsonl")


def run(args: argparse.Namespace) -> int:
    from exo.api import App, System, resolve_libos
    from exo.build.linux_app import linux_app
    from exo.cli.boot import _print_report, report_stats, report_stuck

    if args.structure != "exokernel":
        raise ExoUserError("--structure", f"{args.structure}: Linux programs run under the exokernel structure "
                                          "only so far (docs/posix.md)")
    program = args.program
    if "/" not in program:
        found = shutil.which(program)
        if found is None:
            raise ExoUserError(program, "not found on PATH (give a path)")
        program = found
    if args.stats_json and not Path(args.stats_json).resolve().parent.is_dir():
        raise ExoUserError(args.stats_json, "--stats-json: the directory does not exist")
    manifest, image = linux_app(program, list(args.program_args), seed=args.seed,
                                flags=LINUX_STRACE if args.strace else 0)
    app = App(manifest, image, resolve_libos(manifest))
    system = System([app], clock=args.clock, structure=args.structure, ram_mib=args.ram, slice=args.slice,
                    stdin=0, stdout=1, stderr=2, trace=args.trace, on_fault=_print_report)
    kernel = system.kernel
    interrupted = False
    try:
        system.run(args.max_instructions)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        system.close()
    report_stats(args, system.stats())
    if interrupted:
        sys.stderr.write("exo: interrupted\n")
        return 130
    if report_stuck(kernel):
        return EXIT_FAULT
    return (system.envs[0].exit_status or 0) & 0xFF
