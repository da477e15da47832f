"""Project trees and the labs cut from them: find the marked files, count a lab's points, write a
student tree (``python -m exo lab new``).

The reference tree is the project itself (the directory that holds exo/, libos/, hw/ and
guest_apps/). A student tree for lab N is every project file with every marked file cut for lab N
(`regions.cut`: regions of lab N and later stubbed, earlier ones keeping the reference solution),
without the instructor's hidden tests (exo/labs/hidden/), the handouts of later labs, .git or any
build output. It records its lab in `META` so that the next lab's tree can be made from it
(``--from``): see `write_tree` and docs/labs/README.md.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exo.errors import ExoUserError
from exo.labs import catalog, regions

# What makes a directory a project tree (a reference tree or a student tree cut from one).
ROOT_DIRS = ("exo", "libos", "hw", "guest_apps")
# Never part of a tree, at any depth: version control, caches and virtual environments.
SKIP_NAMES = frozenset({".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis",
                        ".exo-cache", ".venv", "venv", ".tox", ".eggs", "node_modules"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
# Build outputs at the top of the tree only (exo/build/ is source: issue 12 moves modules there).
SKIP_TOP = frozenset({"build", "dist"})
HIDDEN = "exo/labs/hidden"  # the instructor's hidden tests: never in a student tree
META = ".exo-lab.json"  # in a student tree: {"lab": N}; what `lab new --from` reads


def project_root() -> Path:
    """The tree this exo runs from (``python -m exo`` in a student tree: that tree)."""
    return Path(__file__).resolve().parent.parent.parent


def check_root(root: Path) -> Path:
    root = Path(root)
    missing = [d for d in ROOT_DIRS if not (root / d).is_dir()]
    if missing:
        raise ExoUserError(str(root), f"not an exo project tree (no {', '.join(d + '/' for d in missing)})")
    return root


# ----------------------------------------------------------------------------------- the files

def _skipped(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in SKIP_TOP and len(parts) > 1:
        return True
    if any(p in SKIP_NAMES or p.endswith(SKIP_SUFFIXES) for p in parts):
        return True
    return rel == HIDDEN or rel.startswith(HIDDEN + "/")


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files, as git sees them; None if root is not the top of
    a git work tree (then .gitignore files are read by `_walk`)."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    r = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True)
    if r.returncode != 0:
        return None
    return [p for p in r.stdout.decode().split("\0") if p and (root / p).is_file()]


def _ignore_patterns(d: Path, rel_dir: str) -> list[tuple[str, str, bool, bool]]:
    """The patterns of d/.gitignore as (directory they apply under, pattern, directories only,
    negated). The subset git users write: globs, a leading / anchors, a trailing / means
    directories, ! re-includes; the last pattern that matches decides, as in git."""
    f = d / ".gitignore"
    if not f.is_file():
        return []
    out = []
    for line in f.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!")
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        out.append((rel_dir, line, dir_only, negated))
    return out


def _ignored(rel: str, name: str, is_dir: bool, patterns: list[tuple[str, str, bool, bool]]) -> bool:
    ignored = False
    for base, pat, dir_only, negated in patterns:
        if dir_only and not is_dir:
            continue
        sub = rel[len(base) + 1:] if base else rel
        if fnmatch.fnmatchcase(sub, pat.lstrip("/")) if "/" in pat else fnmatch.fnmatchcase(name, pat):
            ignored = not negated
    return ignored


def _walk(root: Path) -> list[str]:
    out: list[str] = []

    def visit(d: Path, rel_dir: str, patterns: list[tuple[str, str, bool, bool]]) -> None:
        patterns = patterns + _ignore_patterns(d, rel_dir)
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _skipped(rel) or _ignored(rel, entry.name, is_dir, patterns):
                continue
            if is_dir:
                visit(Path(entry.path), rel, patterns)
            elif entry.is_file():
                out.append(rel)

    visit(root, "", [])
    return out


def files(root: Path) -> list[str]:
    """Every file of the tree (paths relative to root, with /), sorted: what git tracks or would
    track, or, outside git, what the .gitignore files leave; never .git, caches, top-level build
    outputs or the hidden tests."""
    listed = _git_files(root)
    if listed is None:
        listed = _walk(root)
    return sorted(p for p in listed if not _skipped(p))


def marked_files(root: Path) -> Iterator[tuple[str, str]]:
    """(path, text) of every file whose language can hold markers and whose text mentions LAB."""
    for rel in files(root):
        if Path(rel).suffix not in regions.COMMENT:
            continue
        try:
            text = (root / rel).read_text()
        except UnicodeDecodeError:
            continue  # not source text
        if "LAB" in text:
            yield rel, text


def discover(root: Path) -> list[regions.Region]:
    """Every solution region of the tree, in file order; a malformed marker, or one of a lab the
    catalogue does not have, is an ExoUserError naming file:line."""
    found: list[regions.Region] = []
    for rel, text in marked_files(root):
        for r in regions.find(text, rel):
            if r.lab not in catalog.BY_N:
                raise ExoUserError(f"{rel}:{r.begin + 1}",
                                   f"LAB {r.lab} is not a lab of the catalogue (exo/labs/catalog.py: "
                                   f"{', '.join(str(n) for n in catalog.BY_N)})")
            found.append(r)
    return found


# ----------------------------------------------------------------------------------- points

def _lab_marker(node: ast.expr) -> ast.Call | None:
    """The call node of a ``pytest.mark.lab(...)`` / ``mark.lab(...)`` decorator, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lab":
        v = node.func.value
        if (isinstance(v, ast.Attribute) and v.attr == "mark") or (isinstance(v, ast.Name) and v.id == "mark"):
            return node
    return None


def _cases(decorators: list[ast.expr]) -> int:
    """How many tests a function is: the product of its literal parametrize lists."""
    n = 1
    for d in decorators:
        if (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "parametrize"
                and len(d.args) >= 2 and isinstance(d.args[1], (ast.List, ast.Tuple))):
            n *= len(d.args[1].elts)
    return n


def _param_marks(decorators: list[ast.expr], rel: str, lab: int) -> list[int | None] | None:
    """The points of each case of a literal parametrize list whose cases carry their own lab
    markers (``pytest.param(..., marks=pytest.mark.lab(N, points=P))``; None for an unmarked
    case), or None if no case does."""
    for d in decorators:
        if not (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "parametrize"
                and len(d.args) >= 2 and isinstance(d.args[1], (ast.List, ast.Tuple))):
            continue
        cases: list[int | None] = []
        for e in d.args[1].elts:
            marks = next((k.value for k in getattr(e, "keywords", []) if k.arg == "marks"), None)
            if isinstance(e, ast.Call) and isinstance(e.func, ast.Attribute) and e.func.attr == "param" and marks:
                elts = marks.elts if isinstance(marks, (ast.List, ast.Tuple)) else [marks]
                cases.append(_marks(elts, rel, lab))
            else:
                cases.append(None)
        if any(c is not None for c in cases):
            return cases
    return None


def _is_extra(decorators: list[ast.expr]) -> bool:
    """``@pytest.mark.lab(N, points=P, extra=True)``: extra credit."""
    for c in filter(None, map(_lab_marker, decorators)):
        for k in c.keywords:
            if k.arg == "extra" and isinstance(k.value, ast.Constant) and k.value.value is True:
                return True
    return False


def _marker_points(call: ast.Call, where: str, lab: int) -> int:
    try:
        n = ast.literal_eval(call.args[0]) if call.args else None
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        raise ExoUserError(where, "lab(N, points=P) takes literal numbers (the points are read without "
                                  "running the tests)") from None
    if n != lab:
        raise ExoUserError(where, f"a test of lab {lab} is marked lab({n!r})")
    points = kw.get("points", 1)
    if not isinstance(points, int) or points < 0:
        raise ExoUserError(where, f"points must be a non-negative whole number, got {points!r}")
    return points


@dataclass
class Points:
    total: int = 0
    tests: int = 0
    extra: int = 0  # points of extra-credit tests, beyond total
    files: list[str] = field(default_factory=list)


def _marks(decorators: list[ast.expr], rel: str, lab: int) -> int | None:
    """The points of a node's lab markers, None if it has none."""
    calls = [c for c in map(_lab_marker, decorators) if c is not None]
    return sum(_marker_points(c, f"{rel}:{c.lineno}", lab) for c in calls) if calls else None


def _count(body: list[ast.stmt], inherited: int | None, rel: str, lab: int, out: Points) -> None:
    """Add the graded tests of a module or class body (a class's marker applies to its tests)."""
    for node in body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            p = _marks(node.decorator_list, rel, lab)
            _count(node.body, inherited if p is None else p, rel, lab, out)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            p = _marks(node.decorator_list, rel, lab)
            if p is None:
                p = inherited
            cases = _param_marks(node.decorator_list, rel, lab)
            if cases is not None:  # pytest.param(..., marks=pytest.mark.lab(N, points=P)) per case
                graded = [c if c is not None else p for c in cases]
                out.total += sum(c for c in graded if c is not None)
                out.tests += sum(c is not None for c in graded)
                continue
            if p is None:
                continue  # not a graded test (a check of the lab's own)
            k = _cases(node.decorator_list)
            if _is_extra(node.decorator_list):
                out.extra += p * k  # extra credit: beyond the lab's total
            else:
                out.total += p * k
            out.tests += k


def points(root: Path, lab: catalog.Lab) -> Points:
    """The points of a lab's graded tests (``@pytest.mark.lab(N, points=P)`` on a test function, or
    on a class for each of its tests), read with ast: nothing is imported or run."""
    out = Points()
    d = root / lab.tests
    if not d.is_dir():
        return out
    for f in sorted(d.rglob("test_*.py")):
        rel = f.relative_to(root).as_posix()
        if _skipped(rel):
            continue
        try:
            tree = ast.parse(f.read_text(), rel)
        except SyntaxError as e:
            raise ExoUserError(f"{rel}:{e.lineno}", f"syntax error: {e.msg}") from None
        out.files.append(rel)

        module_mark = None
        for node in tree.body:  # pytestmark = pytest.mark.lab(N, points=P): every test of the module
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                     for t in node.targets)):
                c = _lab_marker(node.value)
                if c is not None:
                    module_mark = _marker_points(c, f"{rel}:{c.lineno}", lab.n)
        _count(tree.body, module_mark, rel, lab.n, out)
    return out


# ----------------------------------------------------------------------------------- lab new

def read_meta(tree: Path) -> dict:
    f = tree / META
    if not f.is_file():
        raise ExoUserError(str(tree), f"not a student tree: no {META} (trees are made by 'python -m exo lab new')")
    try:
        meta = json.loads(f.read_text())
        lab = meta["lab"]
    except (ValueError, KeyError, TypeError):
        raise ExoUserError(str(f), 'expected {"lab": N}') from None
    if not isinstance(lab, int) or lab not in catalog.BY_N:
        raise ExoUserError(str(f), f"lab {lab!r} is not a lab of the catalogue")
    return meta


def carry(ref_text: str, path: str, lab: int, prev_lab: int, prev_text: str) -> tuple[str, list[regions.Region]]:
    """The file for lab ``lab`` with the student's own code for every region of an earlier lab, taken
    from their lab ``prev_lab`` file: that file is lined up (difflib) with the reference cut for
    ``prev_lab``, and a region's text is what lies between the lines just outside the region,
    which the student did not change. Regions of ``lab`` and later get their stub. Returns the text
    and the regions whose surroundings the student changed: they keep the reference solution."""
    base = regions.pieces(ref_text, path, prev_lab)
    target = regions.pieces(ref_text, path, lab)
    base_lines = [line for p in base for line in p.lines]
    prev_lines = prev_text.splitlines(keepends=True)
    if prev_lines and not prev_lines[-1].endswith("\n"):
        prev_lines[-1] += "\n"
    sm = difflib.SequenceMatcher(None, base_lines, prev_lines, autojunk=False)
    same: dict[int, int] = {}
    for a, b, size in sm.get_matching_blocks():
        for i in range(size):
            same[a + i] = b + i
    same[-1] = -1
    same[len(base_lines)] = len(prev_lines)
    out: list[str] = []
    lost: list[regions.Region] = []
    pos = 0
    for b, t in zip(base, target, strict=True):
        start, pos = pos, pos + len(b.lines)
        r = t.region
        if r is None or r.lab >= lab:
            out += t.lines
            continue
        before, after = same.get(start - 1), same.get(pos)
        if before is None or after is None or after <= before:
            out += t.lines
            lost.append(r)
            continue
        out += prev_lines[before + 1:after]
    return "".join(out), lost


@dataclass
class Written:
    files: int = 0
    stubbed: list[regions.Region] = field(default_factory=list)  # regions of this lab and later
    kept: list[regions.Region] = field(default_factory=list)  # earlier labs' regions: the reference's
    carried: list[regions.Region] = field(default_factory=list)  # earlier labs' regions: the student's
    lost: list[regions.Region] = field(default_factory=list)  # the student's could not be found
    own_files: list[str] = field(default_factory=list)  # files only the previous tree has
    warnings: list[str] = field(default_factory=list)


def _check_dest(dest: Path, root: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExoUserError(str(dest), "exists and is not an empty directory (a lab tree is written to a new one)")
    d, r = dest.resolve(), root.resolve()
    if d == r or r in d.parents:
        raise ExoUserError(str(dest), f"is inside the project tree {root}: write the lab tree outside it")


def _own_file(rel: str) -> bool:
    """A file a student may bring from an earlier tree: not the labs' machinery or handouts."""
    return not (rel == META or rel.startswith(("exo/labs/", "docs/labs/")))


def write_tree(n: int, dest: Path, root: Path | None = None, prev: Path | None = None) -> Written:
    """Write the student tree of lab ``n`` to ``dest`` (a new or empty directory).

    With ``prev`` (the student's tree of an earlier lab, made by this function): the regions of
    the labs before ``n`` hold the student's own code from ``prev`` (`carry`), and the files the
    student added to ``prev`` come along (not under exo/labs/ or docs/labs/); everything else,
    outside regions too, comes from the reference, so the instructor's fixes reach every lab.
    """
    root = check_root(project_root() if root is None else Path(root))
    lab = catalog.BY_N.get(n)
    if lab is None:
        raise ExoUserError(f"lab {n}", f"no such lab (the labs are {', '.join(str(k) for k in catalog.BY_N)})")
    dest = Path(dest)
    _check_dest(dest, root)
    prev_lab = None
    prev_files: set[str] = set()
    if prev is not None:
        prev = Path(prev)
        if not prev.is_dir():
            raise ExoUserError(str(prev), "--from: no such directory")
        prev_lab = read_meta(prev)["lab"]
        if prev_lab >= n:
            raise ExoUserError(str(prev), f"--from: that is the tree of lab {prev_lab}; lab {n} must come after it")
        prev_files = set(files(prev))
    later_handouts = {lb.handout for lb in catalog.LABS if lb.n > n}
    ref_files = [p for p in files(root) if p not in later_handouts and p != META]
    discovered = {r.path for r in discover(root)}  # validates every marker before anything is written
    if not (root / lab.handout).is_file():
        w = f"{lab.handout}: lab {n} has no handout yet: the tree goes without one"
    else:
        w = None
    out = Written(warnings=[w] if w else [])
    dest.mkdir(parents=True, exist_ok=True)
    for rel in ref_files:
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel not in discovered:
            shutil.copy2(src, dst)
            out.files += 1
            continue
        text = src.read_text()
        found = regions.find(text, rel)
        if prev_lab is not None and rel in prev_files:
            cut, lost = carry(text, rel, n, prev_lab, (prev / rel).read_text(errors="replace"))
            out.lost += lost
            out.carried += [r for r in found if r.lab < n and r not in lost]
        else:
            cut = regions.cut(text, rel, n)
            out.kept += [r for r in found if r.lab < n]
            if prev_lab is not None and any(r.lab < n for r in found):
                out.warnings.append(f"{rel}: not in {prev}: the reference solution stands in for its regions "
                                    f"of labs before {n}")
        out.stubbed += [r for r in found if r.lab >= n]
        dst.write_text(cut)
        shutil.copymode(src, dst)
        out.files += 1
    if prev is not None:
        for rel in sorted(prev_files - set(ref_files)):
            if _own_file(rel) and not _skipped(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(prev / rel, dest / rel)
                out.own_files.append(rel)
                out.files += 1
    (dest / META).write_text(json.dumps({"lab": n}) + "\n")
    for r in out.lost:
        out.warnings.append(f"{r.path}:{r.begin + 1}: LAB {r.lab} ({r.id}): the lines around your code changed in "
                            f"{prev}; the reference solution stands in for it")
    return out
