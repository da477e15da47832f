"""``exo gen``: rewrite the generated files (docs/abi.md, guest_apps/include/exo.{inc,h} and the libOS
headers libos.{inc,h}) from the tables in the code, and docs/experiments.md's tables from the code
and the committed experiment results; tests/test_generated.py checks them."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from benchmarks import experiment_doc
    from exo.build.guest_iface import generate
    from libos.registry import write_outputs

    for path in [*generate(), *write_outputs(), experiment_doc.write()]:
        sys.stderr.write(f"exo: wrote {path}\n")
    return 0
