"""``exo bench SUITE``: a benchmark suite of benchmarks/ (docs/performance.md), loaded by name."""

from __future__ import annotations

import argparse
import importlib

SUITES = ("hw", "exo", "libos", "fs", "net", "posix", "density")  # modules of benchmarks/


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=SUITES)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options for the suite (--repeat, --quick, --json)")


def run(args: argparse.Namespace) -> int:
    rest = [a for a in args.rest if a != "--"]
    return importlib.import_module(f"benchmarks.{args.suite}").main(rest)  # benchmarks/SUITE.py
