"""``exo run [options] PROGRAM [ARGS...]``: run an unmodified static x86-64 Linux program on the posix libOS.

The program's system calls are reflected by the exokernel to the posix module (docs/posix.md).
Exit status: the program's exit status, 1 if it was stopped by a fault or left blocked, 2 for bad
usage or input (a dynamic binary, not an ELF file...), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from exo.abi import LINUX_STRACE
from exo.cli import EXIT_FAULT
from exo.errors import ExoUserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("program", metavar="PROGRAM", help="a static x86-64 Linux executable (a path, or a name on PATH)")
    p.add_argument("program_args", nargs=argparse.REMAINDER, metavar="ARGS", help="its arguments (no -- needed)")
    p.add_argument("--clock", choices=("virtual", "wall"), default=None,
                   help="virtual: deterministic instruction-count time (the default, unless stdin and stdout "
                        "are a terminal: then wall, so an interactive `sleep 5` takes 5 s); wall: host time")
    p.add_argument("--structure", choices=("exokernel", "monolithic", "xen-pv", "microkernel"), default="exokernel",
                   help="the OS structure a Linux call's path takes (docs/posix.md, OS structures)")
    p.add_argument("--seed", type=int, default=0, help="seed of AT_RANDOM and getrandom (default 0)")
    p.add_argument("--disk", metavar="IMAGE[:ro]",
                   help="an ext2 image as the root file system (PROGRAM may be a path inside it); "
                        "default: a fresh scratch root holding /tmp, /etc and the program")
    p.add_argument("--cwd", default="/", metavar="DIR", help="the initial working directory (default /)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=value",
                   help="add to the program's environment (after PATH, HOME, TERM, LANG)")
    p.add_argument("--strace", action="store_true",
                   help="print every system call with its arguments and result on stderr (strace's format)")
    p.add_argument("--stats", action="store_true", help="print transition counts at exit (stderr)")
    p.add_argument("--stats-json", metavar="FILE", help="write transition counts as JSON (docs/stats.md)")
    p.add_argument("--slice", type=int, default=None, metavar="N",
                   help="time slice: instructions (virtual clock) or microseconds (wall clock)")
    p.add_argument("--ram", type=int, default=256, metavar="MIB", help="guest RAM in MiB (default 256; up to the host's RAM)")
    p.add_argument("--quota", metavar="KEY=V,...",
                   help="the program's quotas (exo boot --quota without APP:): frames=N, envs=N (processes), "
                        "fds=N (descriptors per process: RLIMIT_NOFILE), cpu, disk, net")
    p.add_argument("--max-instructions", type=int, default=None, metavar="N",
                   help="stop after N guest instructions (a watchdog)")
    p.add_argument("--net", metavar="SPEC",
                   help="attach a NIC for the program's sockets: user[,hostfwd=tcp:127.0.0.1:HOSTPORT-:PORT] "
                        "(unprivileged), switch, or tap:IFNAME; the program is 10.0.2.15/24 (docs/net.md)")
    p.add_argument("--pcap", metavar="FILE", help="capture every frame on the wire to FILE (pcap)")
    p.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (then: gdb PROGRAM -ex 'target remote :PORT'); processes are "
                        "threads (docs/debugging.md)")
    p.add_argument("--gdb-wait", action="store_true", help="with --gdb: wait for gdb before the first instruction")
    p.add_argument("--trace", metavar="FILE", help="record every transition: FILE.json (Perfetto) or FILE.jsonl")


def run(args: argparse.Namespace) -> int:
    from exo.api import App, System, resolve_libos
    from exo.build.linux_app import DEFAULT_ENV, linux_app
    from exo.cli.boot import _print_report, report_stats, report_stuck, start_gdb, stuck_envs

    for e in args.env:
        if "=" not in e:
            raise ExoUserError("--env", f"{e!r}: give NAME=value")
    if not args.cwd.startswith("/"):
        raise ExoUserError("--cwd", f"{args.cwd!r}: give an absolute path")
    if args.gdb_wait and not args.gdb:
        raise ExoUserError("--gdb-wait", "needs --gdb [HOST:]PORT")
    if args.stats_json and not Path(args.stats_json).resolve().parent.is_dir():
        raise ExoUserError(args.stats_json, "--stats-json: the directory does not exist")
    scratch = None
    program, blob = _program(args)
    if args.disk:
        disk = args.disk
    else:
        scratch = tempfile.TemporaryDirectory(prefix="exo-root-")
        disk = str(scratch_root(Path(scratch.name) / "root.img", program, blob))
    env = tuple(DEFAULT_ENV) + tuple(os.fsencode(e) for e in args.env)
    manifest, image = linux_app(program, list(args.program_args), seed=args.seed, env=env, blob=blob,
                                flags=LINUX_STRACE if args.strace else 0, cwd=os.fsencode(args.cwd))
    app = App(manifest, image, resolve_libos(manifest))
    quotas = None
    if args.quota:
        from exo.tenants import QuotaError, parse_quota_option

        try:
            quotas = dict([parse_quota_option(f"{manifest.name}:{args.quota}")])
        except QuotaError as e:
            raise ExoUserError("--quota", str(e)) from None
    if args.clock is None:  # an interactive session is timed by its user: the host's clock
        args.clock = "wall" if os.isatty(0) and os.isatty(1) else "virtual"
    system = System([app], clock=args.clock, structure=args.structure, ram_mib=args.ram, slice=args.slice,
                    stdin=0, stdout=1, stderr=2, trace=args.trace, on_fault=_print_report, disk=disk,
                    net=args.net, pcap=args.pcap, quotas=quotas,
                    # On a terminal the posix libOS is the tty driver (libos/posix/tty.py): Ctrl-C reaches
                    # it as a byte it turns into SIGINT for the foreground group, not exo's KeyboardInterrupt.
                    raw_terminal=True)
    kernel = system.kernel
    gdb = start_gdb(system, args.gdb) if args.gdb else None
    interrupted = False
    try:
        if gdb is not None:
            gdb.run(args.gdb_wait, args.max_instructions)
        else:
            system.run(args.max_instructions)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        system.close()
        if scratch is not None:
            scratch.cleanup()
    report_stats(args, system.stats())
    if gdb is not None and gdb.killed:
        sys.stderr.write("exo: killed by gdb\n")
        return 137  # as a shell reports a process ended by SIGKILL
    if interrupted:
        sys.stderr.write("exo: interrupted\n")
        return 130
    # A fault in a child is the parent's business (wait4 sees its signal): only the first process's
    # fault, or a process left blocked at the end, fails the run.
    first = system.envs[0]
    stuck = stuck_envs(kernel)
    if stuck:
        report_stuck(kernel)
    if stuck or first.fault is not None:
        return EXIT_FAULT
    return (first.exit_status or 0) & 0xFF


def _program(args: argparse.Namespace) -> tuple[str, bytes]:
    """PROGRAM's path as the program sees it, and its bytes: a path inside --disk's image if it is
    one there, else a host file (a name without / is looked up on PATH)."""
    program = args.program
    if args.disk and program.startswith("/"):
        data = _read_from_image(args.disk.removesuffix(":ro"), program)
        if data is not None:
            return program, data
    if "/" not in program:
        found = shutil.which(program)
        if found is None:
            raise ExoUserError(program, "not found on PATH (give a path)")
        program = found
    try:
        return program, Path(program).read_bytes()
    except OSError as e:
        raise ExoUserError(program, f"cannot read: {e.strerror}") from None


def _read_from_image(image: str, path: str) -> bytes | None:
    """The file at ``path`` in the ext2 image (symlinks followed), or None if it has none there."""
    from libos.fs.blockio import FileBlockIO
    from libos.fs.ext2 import Ext2, Ext2Error

    try:
        dev = FileBlockIO(image, readonly=True)
    except OSError as e:
        raise ExoUserError(image, f"cannot open the disk image: {e.strerror}") from None
    try:
        fs = Ext2.open(dev, readonly=True)
        ino = fs.lookup(path, follow=True)
        return fs.read(ino, 0, fs.stat(ino).size)
    except Ext2Error:
        return None
    finally:
        dev.close()


# The scratch root of a run without --disk: what a Linux program expects to find (docs/posix.md).
ROOT_FILES = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "etc/group": b"root:x:0:\n"}
ROOT_DIRS = ("bin", "dev", "etc", "proc", "root", "tmp")
ROOT_SIZE = 16 << 20
ROOT_TIME = 1_767_225_600  # 2026-01-01, exo's guest epoch: the same image every run


def scratch_root(image: Path, program: str, blob: bytes) -> Path:
    """A fresh ext2 image holding ROOT_DIRS, ROOT_FILES and the program at its own path.

    The image is the same for the same program and path (fixed times, UUID, label), so it is made
    once and copied from ``$EXO_CACHE_DIR/roots`` afterwards: copying 16 MiB is milliseconds,
    writing a 2 MiB busybox through the ext2 library is about 100 ms (`exo bench posix`)."""
    import hashlib

    import libos.fs.mkfs

    h = hashlib.sha256(b"exo-root-v1|%s|%r|" % (program.encode("utf-8", "surrogateescape"), ROOT_FILES))
    h.update(Path(libos.fs.mkfs.__file__).read_bytes())  # a changed mkfs makes the image again
    h.update(blob)
    cache = Path(os.environ.get("EXO_CACHE_DIR") or Path.home() / ".cache" / "exo") / "roots"
    cached = cache / f"{h.hexdigest()}.img"
    try:
        shutil.copyfile(cached, image)
        return image
    except OSError:
        pass
    _make_root(image, program, blob)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(image, tmp)
        os.replace(tmp, cached)  # atomic: a concurrent run sees the whole image or none
    except OSError:
        pass  # no cache (read-only home): the next run makes it again
    return image


def stage_root(stage: Path) -> None:
    """Fill ``stage`` with what a Linux program expects of a root: ROOT_DIRS (a world-writable
    /tmp) and ROOT_FILES. The scratch root and `exo mkfs --busybox` both start from it."""
    for d in ROOT_DIRS:
        (stage / d).mkdir(parents=True, exist_ok=True)
    for name, data in ROOT_FILES.items():
        (stage / name).write_bytes(data)
    (stage / "tmp").chmod(0o1777)


def _make_root(image: Path, program: str, blob: bytes) -> None:
    from libos.fs.mkfs import mkfs

    stage = image.parent / "stage"
    stage_root(stage)
    where = stage / program.lstrip("/")
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_bytes(blob)
    where.chmod(0o755)
    for f in sorted(stage.rglob("*"), reverse=True):
        os.utime(f, (ROOT_TIME, ROOT_TIME), follow_symlinks=False)
    mkfs(image, ROOT_SIZE, from_dir=stage, clock=lambda: ROOT_TIME, uuid=bytes(16), label="exo-root")
