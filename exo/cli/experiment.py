"""``exo experiment NAME``: an experiment of benchmarks/ (docs/experiments.md), loaded by name."""

from __future__ import annotations

import argparse
import importlib

EXPERIMENTS = {"ring-transitions": "benchmarks.ring_transitions"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=tuple(EXPERIMENTS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options (--structures, --workloads, --json, --csv, --plot)")


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(EXPERIMENTS[args.name]).main([a for a in args.rest if a != "--"])
