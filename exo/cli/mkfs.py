"""``exo mkfs IMAGE --size N``: an ext2 image made in pure Python (libos/fs/mkfs.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rest", nargs=argparse.REMAINDER, help="IMAGE --size N[K|M|G] [--from DIR] [--block-size N]")


def run(args: argparse.Namespace) -> int:
    from libos.fs.mkfs import main

    return main([a for a in args.rest if a != "--"])
