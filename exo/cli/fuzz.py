"""``exo fuzz``: random hypercalls from several apps, with the kernel's invariants checked after each
(exo/fuzz/, docs/security.md). Exit 0 clean, 1 on a violation."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (same seed, same calls)")
    p.add_argument("--apps", type=int, default=3, help="booted apps (default 3)")
    p.add_argument("--calls", type=int, default=None, metavar="N", help="stop after N hypercalls")
    p.add_argument("--progress", action="store_true", help="a progress line on stderr every 30 s")


def run(args: argparse.Namespace) -> int:
    from exo.fuzz.runner import cmd_fuzz

    return cmd_fuzz(args)
