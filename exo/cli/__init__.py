"""``python -m exo COMMAND``: the shell over the public API, one module per command.

stdout carries only guest console output; everything exo says goes to stderr. Exit status: 2 for
bad usage or input (one line, no traceback), 130/143 when interrupted; each command documents the
rest (``boot``: the first app's exit status, 1 if a guest was stopped by a fault).

A command is a module of this package named in `COMMANDS`, with ``add_arguments(parser)`` and
``run(args) -> int``. Only the command being run is imported, so that a command's dependencies
(rich, capstone, the benchmarks, the library OS) cost nothing to the others' start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from exo.errors import ExoUserError

EXIT_FAULT = 1
EXIT_USAGE = 2

# name -> (module, one-line help). `python -m exo --help` lists them without importing any.
COMMANDS: dict[str, tuple[str, str]] = {
    "boot": ("exo.cli.boot", "boot one or more guest apps (guest arguments after --)"),
    "run": ("exo.cli.run", "run a static x86-64 Linux program on the posix libOS (docs/posix.md)"),
    "serve": ("exo.cli.serve", "serve an app's network flows, a fresh instance of its snapshot per request"),
    "image": ("exo.cli.image", "describe a guest app's image: modules, library calls, hypercalls, size"),
    "bench": ("exo.cli.bench", "run a benchmark suite (hw, exo, libos, fs, net)"),
    "experiment": ("exo.cli.experiment", "run an experiment (ring-transitions)"),
    "mkfs": ("exo.cli.mkfs", "make an ext2 disk image in pure Python (no e2fsprogs needed)"),
    "fuzz": ("exo.cli.fuzz", "fuzz the hypercall ABI with several apps, checking invariants (docs/security.md)"),
    "gen": ("exo.cli.gen", "regenerate docs/abi.md and guest_apps/include/exo.{inc,h} from the ABI table"),
    "lab": ("exo.labs.cmd_lab", "the coursework labs: list them, write a student tree (docs/labs/)"),
    "grade": ("exo.labs.cmd_grade", "grade this tree for lab N: its graded tests, a table and the score "
              "(docs/labs/grading.md)"),
}


def err(msg: str) -> None:
    sys.stderr.write(f"exo: error: {msg}\n")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (exit 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = message.replace("the following arguments are required: ", "missing ")
        message = message.replace(", rest", "").replace(" rest", "")
        self.exit(EXIT_USAGE, f"exo: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The CLI's parser: every command, named with its help (no command module imported)."""
    p = Parser(prog="python -m exo", description="exo: an exokernel and library OS on an emulated x86-64 machine")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return p


def command_parser(command: str) -> argparse.ArgumentParser:
    """One command's parser, on its own: what ``python -m exo COMMAND ...`` parses with. Building
    only it keeps start-up lean (argparse looks up translations for every parser it makes)."""
    module, help_ = COMMANDS[command]
    p = Parser(prog=f"python -m exo {command}", description=help_)
    importlib.import_module(module).add_arguments(p)
    p.set_defaults(command=command)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    guest_args: list[str] = []
    if argv and argv[0] in ("boot", "serve") and "--" in argv:
        cut = argv.index("--")
        argv, guest_args = argv[:cut], argv[cut + 1:]
    if argv and argv[0] in COMMANDS:
        args = command_parser(argv[0]).parse_args(argv[1:])
    else:
        args = parser().parse_args(argv)  # no command, --help, or a wrong one: says which exist
    args.guest_args = guest_args
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except ExoUserError as e:
        err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("exo: interrupted\n")
        return 130
    except Exception as e:  # a lab's stub reached in the exokernel (docs/labs/): say which, not a traceback
        from exo.labs.stubs import EXIT_STUB, explain

        line = explain(e)
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        return EXIT_STUB


# Commands after which nothing is left to do at exit: every file they wrote is closed and every
# device of their machine is closed (exo/cli/boot.py closes the System in a `finally`).
QUICK_EXIT = frozenset({"boot"})


def run_process() -> None:
    """The process's entry point (``python -m exo``, the ``exo`` script): `main`, then, after a
    command of `QUICK_EXIT`, exit without the interpreter's teardown. Tearing down the modules
    and the emulator took 14 ms of `boot guest_apps/echo`'s 86 (median of 15 alternating runs,
    docs/performance.md): a third of all exo adds to ``import unicorn``. Only the standard
    streams still hold buffered output then; they are flushed first, and if that fails the
    normal exit reports it."""
    status = main()
    argv = sys.argv[1:]
    if argv and argv[0] in QUICK_EXIT:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            raise SystemExit(status) from None
        os._exit(status & 0xFF)
    raise SystemExit(status)
