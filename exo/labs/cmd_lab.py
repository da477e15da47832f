"""``python -m exo lab``: list the labs, write a student tree for one (docs/labs/README.md).

    python -m exo lab list [--json]
    python -m exo lab new N DIR [--from PREVIOUS_DIR]

Everything exo says goes to stderr, except what was asked for (the table, the JSON) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from exo.errors import ExoUserError
from exo.labs import catalog, tree

HELP = "the coursework labs: list them, write a student tree (docs/labs/README.md)"


def add_parser(subparsers: Any) -> None:
    """Add ``lab`` (with ``list`` and ``new``) to the CLI's subcommands."""
    add_arguments(subparsers.add_parser("lab", help=HELP, description=HELP))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``lab`` on its own parser (exo/cli's per-command convention)."""
    p.add_argument("--root", metavar="DIR", default=None,
                   help="the reference tree to read (default: the tree this exo runs from)")
    sub = p.add_subparsers(dest="lab_command", required=True, metavar="ACTION", parser_class=type(p))
    ls = sub.add_parser("list", help="the labs: number, title, the code each removes, points, handout")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    new = sub.add_parser("new", help="write the student tree of lab N to DIR (regions of lab N and later stubbed)")
    new.add_argument("n", type=int, metavar="N", help="the lab")
    new.add_argument("dir", metavar="DIR", help="a new or empty directory")
    new.add_argument("--from", dest="prev", metavar="PREVIOUS_DIR", default=None,
                     help="the student's tree of an earlier lab: its code for the earlier labs' regions, and "
                          "the files the student added, come along")


def run(args: argparse.Namespace) -> int:
    """Run ``lab list`` or ``lab new``: the exit status (ExoUserError propagates to the CLI: exit 2)."""
    root = tree.check_root(Path(args.root) if args.root else tree.project_root())
    if args.lab_command == "list":
        labs = describe(root)
        if args.json:
            sys.stdout.write(json.dumps(labs, indent=2) + "\n")
        else:
            _print_table(labs)
        return 0
    if args.lab_command == "new":
        prev = Path(args.prev) if args.prev else None
        w = tree.write_tree(args.n, Path(args.dir), root=root, prev=prev)
        for line in w.warnings:
            sys.stderr.write(f"exo: warning: {line}\n")
        msg = (f"exo: wrote lab {args.n} to {args.dir}: {w.files} files, {len(w.stubbed)} regions stubbed "
               f"(lab {args.n} and later)")
        if prev is not None:
            msg += (f", {len(w.carried)} of your earlier regions carried from {prev}, "
                    f"{len(w.kept) + len(w.lost)} with the reference solution, {len(w.own_files)} files of yours")
        else:
            msg += f", {len(w.kept)} earlier regions with the reference solution"
        sys.stderr.write(msg + f"\nexo: next: cd {args.dir} && python -m exo boot guest_apps/echo\n")
        return 0
    raise ExoUserError("lab", f"unknown action {args.lab_command!r}")


def describe(root: Path) -> list[dict[str, Any]]:
    """What ``lab list`` shows: per lab, its title, handout, points and the regions it removes."""
    by_lab: dict[int, list] = defaultdict(list)
    for r in tree.discover(root):
        by_lab[r.lab].append(r)
    out = []
    for lab in catalog.LABS:
        pts = tree.points(root, lab)
        out.append({
            "lab": lab.n, "title": lab.title, "summary": lab.summary,
            "handout": lab.handout, "handout_exists": (root / lab.handout).is_file(),
            "tests": lab.tests, "points": pts.total, "extra_points": pts.extra,
            "graded_tests": pts.tests,
            "regions": [{"file": r.path, "line": r.begin + 1, "id": r.id, "what": r.what} for r in by_lab[lab.n]],
        })
    return out


def _removes(lab: dict[str, Any]) -> list[str]:
    """One line per file: ``path: id, id``."""
    per_file: dict[str, list[str]] = defaultdict(list)
    for r in lab["regions"]:
        if r["id"] not in per_file[r["file"]]:
            per_file[r["file"]].append(r["id"])
    return [f"{f}: {', '.join(ids)}" for f, ids in per_file.items()] or ["(nothing marked yet)"]


def _print_table(labs: list[dict[str, Any]]) -> None:
    rows = [(str(lb["lab"]), lb["title"], _removes(lb),
             str(lb["points"]) + (f" +{lb['extra_points']} extra" if lb["extra_points"] else ""),
             lb["handout"] + ("" if lb["handout_exists"] else " (missing)")) for lb in labs]
    head = ("LAB", "TITLE", "REMOVES", "POINTS", "HANDOUT")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table(*head)
        for n, title, removes, pts, handout in rows:
            t.add_row(n, title, "\n".join(removes), pts, handout)
        Console().print(t)
        return
    # Plain text for pipes and files: a file per line under REMOVES.
    w = [max(len(h), *(len(x) for x in col)) for h, col in
         zip(head, ([r[0] for r in rows], [r[1] for r in rows], [s for r in rows for s in r[2]],
                    [r[3] for r in rows], [r[4] for r in rows]))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(k) for c, k in zip(cells, w)).rstrip() + "\n"

    sys.stdout.write(line(head))
    for n, title, removes, pts, handout in rows:
        sys.stdout.write(line((n, title, removes[0], pts, handout)))
        for more in removes[1:]:
            sys.stdout.write(line(("", "", more, "", "")))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, exit status 2 (as the CLI's parser does)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"exo: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m exo.labs.cmd_lab ACTION ...``: the command on its own (the CLI runs it as
    ``python -m exo lab``); bad input is one line on stderr and exit status 2."""
    p = _Parser(prog="python -m exo lab", description=HELP)
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except ExoUserError as e:
        sys.stderr.write(f"exo: error: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
