"""`python -m exo grade N`: the grader's command line (exo/labs/grade.py does the work).

Exit status: 0 full marks, 1 points lost, 2 bad usage (one line, no traceback), 3 the lab's test set
itself is broken (a test of another lab, a test file that cannot be collected).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exo.errors import ExoUserError

EXIT_LOST, EXIT_USAGE, EXIT_TEST_SET = 1, 2, 3


HELP = "grade this tree for lab N: its graded tests, a table and the score (docs/labs/grading.md)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """The ``grade`` subcommand on an argparse subparsers object."""
    add_arguments(subparsers.add_parser("grade", help=HELP, description=HELP))


def add_arguments(g: argparse.ArgumentParser) -> None:
    """The command's arguments (exo/cli's convention: COMMANDS names this module)."""
    g.add_argument("lab", type=int, metavar="N", help="the lab (python -m exo lab list)")
    g.add_argument("--hidden", metavar="DIR", help="also run the instructor's tests in DIR (not shipped to students)")
    g.add_argument("--tests", metavar="DIR", help="run the graded tests in DIR instead of the lab's own")
    g.add_argument("--json", metavar="FILE", help="write Gradescope's results.json format to FILE")
    g.add_argument("--results", metavar="DIR", help="where each test's output goes (default: grade-results/labN)")
    g.add_argument("--from-installed", action="store_true",
                   help="take the grader and the tests from the installed exo, never from this tree "
                        "(run it as `python -P -m exo grade ...`)")
    g.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="wall-clock limit per test for hangs in Python (default 300; guests have instruction budgets)")
    g.add_argument("--submissions", metavar="DIR", help="batch: grade every student tree in DIR (one folder each)")
    g.add_argument("--json-dir", metavar="OUT", help="batch: OUT/<student>.json, OUT/<student>/ and OUT/summary.csv")
    g.add_argument("--jobs", type=int, default=None, metavar="K", help="batch: trees graded at once (default: the cores)")
    g.add_argument("--executor", default=None, metavar="KIND",
                   help="batch: where trees are graded: thread[:N] (default), local[:N] processes, or "
                        "ray[:ADDRESS] (pip install 'exo[ray]'; nodes must see the same paths)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ExoUserError as e:
        sys.stderr.write(f"exo: error: {e}\n")
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from exo.labs import grade as G

    timeout = G.WALL_TIMEOUT if args.timeout is None else args.timeout
    if args.submissions or args.json_dir or args.jobs is not None or args.executor:
        if not (args.submissions and args.json_dir):
            raise ExoUserError("--submissions", "batch grading needs both --submissions DIR and --json-dir OUT")
        for opt, v in (("--json", args.json), ("--results", args.results)):
            if v:
                raise ExoUserError(opt, "not with --submissions: each student's results go to --json-dir")
        if args.executor and args.jobs is not None:
            raise ExoUserError("--jobs", "not with --executor: give the workers there (thread:N, local:N)")
        grades = G.grade_batch(args.lab, Path(args.submissions), Path(args.json_dir), jobs=args.jobs,
                               hidden=_dir(args.hidden), tests=_dir(args.tests), wall_timeout=timeout,
                               executor=args.executor)
        for student, g in grades.items():
            note = f"  ({g.note})" if g.note else ""
            print(f"{student}: {G._num(g.score)}/{G._num(g.max_score)}{note}")
        print(f"wrote {args.json_dir}/summary.csv")
        return EXIT_TEST_SET if any(g.errors for g in grades.values()) else 0
    if args.from_installed:
        _check_installed(Path.cwd().resolve(), G.grader_labs())
    why = G.check_tree(Path.cwd(), compile_python=False)
    if why.startswith("is not"):
        raise ExoUserError(str(Path.cwd()), f"{why}: run the grader at the root of an exo tree")
    g = G.grade(args.lab, Path.cwd(), hidden=_dir(args.hidden), tests=_dir(args.tests),
                from_installed=args.from_installed, wall_timeout=timeout)
    results = Path(args.results or f"grade-results/lab{args.lab}")
    G.save_results(g, results)
    if args.json:
        G.write_json(G.gradescope(g), Path(args.json))
    sys.stdout.write(G.table(g, results))
    if g.errors:
        return EXIT_TEST_SET
    return 0 if all(t.score == t.max_score for t in g.tests) and not g.note else EXIT_LOST


def _dir(d: str | None) -> Path | None:
    return Path(d) if d else None


def _check_installed(tree: Path, labs: Path) -> None:
    """``--from-installed`` means the grader is not the tree's: refuse when this very process imported
    exo from the working directory (``python -m`` puts it first on the import path)."""
    if labs.is_relative_to(tree) and not sys.flags.safe_path:
        raise ExoUserError("--from-installed", "this grader is the tree's own exo/labs: run it as "
                                               "`python -P -m exo grade ...` so that the installed exo grades")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m exo.labs.cmd_grade N ...``), the same as ``python -m exo grade``."""
    p = argparse.ArgumentParser(prog="exo")
    add_parser(p.add_subparsers(dest="command", required=True))
    return run(p.parse_args(["grade", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
