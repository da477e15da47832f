"""Student trees (``python -m exo lab list / new``): discovery of the solution regions, points, the
tree of every lab, ``--from``, and the no-leak guarantees (docs/labs/README.md).

The synthetic trees below spell markers ``%% LAB ...``: `_write` puts the file's comment syntax in
place of ``%%``, so this file holds no line a scan of the project would take for a marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from exo.errors import ExoUserError
from exo.labs import catalog, cmd_lab, regions, stubs, tree

MARKER = re.compile(r"^[ \t]*(?:#|;|//)[ \t]*LAB[ \t]+(\d+)[ \t]+(?:BEGIN|STUB|END)\b", re.M)


def _write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text.replace("%%", regions.COMMENT.get(p.suffix, "#")))
    return p


SCHED = """\
import os


class Sched:
    def pick(self):
        %% LAB 1 BEGIN pick: pick the next runnable thread
        ready = [t for t in self.threads if t.runnable]
        return min(ready, key=lambda t: t.pass_value)
        %% LAB 1 END

    def charge(self, t, ns):
        %% LAB 2 BEGIN charge: charge the thread for the time it ran
        t.pass_value += t.stride_length * ns
        %% LAB 2 STUB
        %% return None  # LAB 2: charge t for ns here
        %% LAB 2 END
        return os.getpid()
"""

ASM = """\
_start:
%% LAB 2 BEGIN app.count: count the bytes of the input
    lea rdi, [rip + counted_bytes_total]
    add qword [rdi], rax
%% LAB 2 END
    ret
"""

C = """\
int main(void) {
    %% LAB 1 BEGIN c.sum: add up the arguments
    long total_of_everything = argc_sum_helper(1, 2);
    %% LAB 1 END
    return 0;
}
"""

GRADED = """\
import pytest


@pytest.mark.lab(2, points=10)
def test_charge(boot):
    pass


@pytest.mark.lab(2, points=5)
@pytest.mark.parametrize("x", [1, 2, 3])
def test_many(boot, x):
    pass


@pytest.mark.lab(2, points=7)
class TestGroup:
    def test_a(self):
        pass

    def test_b(self):
        pass


def test_not_graded():
    pass
"""


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    """A small reference tree: two labs' regions in Python, assembly and C, graded and hidden tests,
    handouts, and things that are never part of a tree."""
    r = tmp_path / "ref"
    for d in tree.ROOT_DIRS:
        (r / d).mkdir(parents=True)
    _write(r, "pyproject.toml", "[project]\nname = 'exo'\n")
    _write(r, "README.md", "# exo\n")
    _write(r, ".ci/run", "#!/bin/sh\npython -m pytest\n").chmod(0o755)
    _write(r, "libos/sched.py", SCHED)
    _write(r, "guest_apps/app/main.s", ASM)
    _write(r, "guest_apps/app/sum.c", C)
    _write(r, "exo/labs/tests/lab2/__init__.py", "")
    _write(r, "exo/labs/tests/lab2/test_lab2_charge.py", GRADED)
    _write(r, "exo/labs/hidden/lab2/test_lab2_hidden_charge.py", "SECRET_HIDDEN_TEST = 1\n")
    _write(r, "docs/labs/lab1.md", "# Lab 1\n")
    _write(r, "docs/labs/lab2.md", "# Lab 2\n")
    _write(r, ".git/config", "[core]\n")
    _write(r, "libos/__pycache__/sched.cpython-311.pyc", "junk")
    _write(r, "build/lib/sched.py", "t.pass_value += t.stride_length * ns\n")
    _write(r, "guest_apps/app/.gitignore", "*.o\n/app.bin\n")
    _write(r, "guest_apps/app/main.o", "object code: t.pass_value += t.stride_length * ns\n")
    _write(r, "guest_apps/app/app.bin", "binary")
    _write(r, ".gitignore", "build/\n!/exo/build/\n")
    _write(r, "exo/build/asm.py", "ASSEMBLER = 1\n")
    _write(r, "guest_apps/app/build/out.txt", "built\n")
    return r


def _text_files(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out[p.relative_to(d).as_posix()] = p.read_bytes().decode(errors="replace")
    return out


def _distinctive(ref: Path, n: int) -> dict[str, set[str]]:
    """For each marked file: the solution lines of its regions of lab ``n`` and later (stripped, 12+
    characters) that occur nowhere in the reference outside those regions nor in their stubs."""
    outside: set[str] = set()
    solutions: dict[str, set[str]] = {}
    for rel, text in tree.marked_files(ref):
        lines = text.splitlines()
        inside = [False] * len(lines)
        for r in regions.find(text, rel):
            if r.lab < n:
                continue
            for i in range(r.begin, r.end + 1):
                inside[i] = True
            body = lines[r.begin + 1:r.stub if r.stub is not None else r.end]
            solutions.setdefault(rel, set()).update(s.strip() for s in body if len(s.strip()) >= 12)
            stub = lines[r.stub + 1:r.end] if r.stub is not None else regions.default_stub(r)
            outside.update(s.strip().lstrip("#;/").strip() for s in stub)
        outside.update(s.strip() for s, ins in zip(lines, inside) if not ins)
    for rel in tree.files(ref):
        if rel not in solutions:
            outside.update(s.strip() for s in (ref / rel).read_bytes().decode(errors="replace").splitlines())
    return {rel: lines - outside for rel, lines in solutions.items()}


def assert_no_leak(ref: Path, dest: Path, n: int) -> None:
    """The guarantees of a lab N tree cut from the reference ``ref`` (docs/labs/README.md)."""
    files = _text_files(dest)
    for rel, text in files.items():
        m = MARKER.search(text)  # none at all: earlier labs' markers go too
        assert m is None, f"{rel}: a marker is left: {m[0].strip()!r}"
        assert not rel.startswith(("exo/labs/hidden/", ".git/")), rel
        assert "hidden" not in Path(rel).name and "__pycache__" not in rel, rel
    for rel, lines in _distinctive(ref, n).items():
        for frel, text in files.items():
            leaked = lines & {s.strip() for s in text.splitlines()}
            assert not leaked, f"{frel} holds solution lines of {rel}: {sorted(leaked)}"
    # Earlier labs keep the reference solution, whole.
    for rel, text in tree.marked_files(ref):
        lines = text.splitlines(keepends=True)
        for r in regions.find(text, rel):
            if r.lab < n:
                body = "".join(lines[r.begin + 1:r.stub if r.stub is not None else r.end])
                assert body in files[rel], f"{rel}: the solution of LAB {r.lab} ({r.id}) is missing"
    handout = catalog.BY_N[n].handout
    assert (handout in files) == (ref / handout).is_file()
    assert not any(lb.handout in files for lb in catalog.LABS if lb.n > n)
    assert json.loads(files[tree.META]) == {"lab": n}


# ------------------------------------------------------------------------------ discovery, list

def test_discover_finds_every_region_in_every_language(ref):
    found = [(r.path, r.lab, r.id) for r in tree.discover(ref)]
    assert found == [("guest_apps/app/main.s", 2, "app.count"), ("guest_apps/app/sum.c", 1, "c.sum"),
                     ("libos/sched.py", 1, "pick"), ("libos/sched.py", 2, "charge")]


def test_files_skip_git_caches_build_outputs_ignored_and_hidden(ref):
    got = tree.files(ref)
    assert "libos/sched.py" in got and ".ci/run" in got and "guest_apps/app/.gitignore" in got
    assert "exo/build/asm.py" in got  # re-included by a ! pattern
    for never in (".git/config", "libos/__pycache__/sched.cpython-311.pyc", "build/lib/sched.py",
                  "guest_apps/app/main.o", "guest_apps/app/app.bin", "guest_apps/app/build/out.txt",
                  "exo/labs/hidden/lab2/test_lab2_hidden_charge.py"):
        assert never not in got


def test_points_are_read_from_the_lab_markers(ref):
    pts = tree.points(ref, catalog.BY_N[2])
    assert (pts.total, pts.tests) == (10 + 3 * 5 + 2 * 7, 1 + 3 + 2)
    assert tree.points(ref, catalog.BY_N[1]).total == 0


def test_points_of_parametrized_cases_that_carry_their_own_markers(ref):
    _write(ref, "exo/labs/tests/lab2/test_lab2_cases.py",
           "import pytest\n\n\n@pytest.mark.parametrize('name', [\n"
           "    pytest.param('a', marks=pytest.mark.lab(2, points=5)),\n"
           "    pytest.param('b', marks=[pytest.mark.lab(2, points=4)]),\n"
           "    'ungraded',\n])\ndef test_case(name):\n    pass\n")
    pts = tree.points(ref, catalog.BY_N[2])
    assert (pts.total, pts.tests) == (10 + 3 * 5 + 2 * 7 + 5 + 4, 1 + 3 + 2 + 2)


def test_points_marker_of_another_lab_is_an_error(ref):
    _write(ref, "exo/labs/tests/lab2/test_lab2_wrong.py",
           "import pytest\n\n\n@pytest.mark.lab(3, points=1)\ndef test_x():\n    pass\n")
    with pytest.raises(ExoUserError, match=r"test_lab2_wrong.py:4: a test of lab 2 is marked lab\(3\)"):
        tree.points(ref, catalog.BY_N[2])


@pytest.mark.parametrize("text, where, problem", [
    ("x = 1\n%% LAB 1 BEGIN pick: do it\n", "libos/bad.py:2", "BEGIN without an END"),
    ("%% LAB 1 BEGIN pick\n%% LAB 1 END\n", "libos/bad.py:1", "expected 'LAB N BEGIN id: what"),
    ("%% LAB 1 END\n", "libos/bad.py:1", "END without a BEGIN"),
    ("%% LAB 1 BEGIN a: b\n%% LAB 2 END\n", "libos/bad.py:2", "closes the LAB 1 region"),
    ("%% LAB 8 BEGIN a: b\n%% LAB 8 END\n", "libos/bad.py:1", "LAB 8 is not a lab of the catalogue"),
    ("// LAB 1 BEGIN a: b\n// LAB 1 END\n", "libos/bad.py:1", "this file's comment syntax"),
])
def test_malformed_marker_is_one_line_naming_file_and_line(ref, text, where, problem):
    _write(ref, "libos/bad.py", text)
    with pytest.raises(ExoUserError) as e:
        tree.discover(ref)
    assert e.value.where == where and problem in e.value.problem
    r = subprocess.run([sys.executable, "-m", "exo.labs.cmd_lab", "--root", str(ref), "list"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"exo: error: {where}: ") and r.stderr.count("\n") == 1, r.stderr


def test_lab_list_json_and_table(ref, capsys):
    assert cmd_lab.main(["--root", str(ref), "list", "--json"]) == 0
    labs = {lb["lab"]: lb for lb in json.loads(capsys.readouterr().out)}
    assert [lb["lab"] for lb in labs.values()] == [lb.n for lb in catalog.LABS]
    assert labs[2]["points"] == 39 and labs[2]["graded_tests"] == 6 and labs[2]["handout_exists"]
    assert [(r["file"], r["line"], r["id"]) for r in labs[1]["regions"]] == [
        ("guest_apps/app/sum.c", 2, "c.sum"), ("libos/sched.py", 6, "pick")]
    assert not labs[3]["handout_exists"] and labs[3]["regions"] == []
    assert cmd_lab.main(["--root", str(ref), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["LAB", "TITLE", "REMOVES", "POINTS", "HANDOUT"]
    row2 = next(i for i, line in enumerate(out) if line.startswith("2 "))
    assert "guest_apps/app/main.s: app.count" in out[row2] and " 39 " in out[row2]
    assert out[row2 + 1].strip().startswith("libos/sched.py: charge")
    assert "docs/labs/lab3.md (missing)" in "\n".join(out)


# ------------------------------------------------------------------------------ lab new

@pytest.mark.parametrize("n", [1, 2, 3])
def test_new_tree_has_no_leak(ref, tmp_path, n):
    dest = tmp_path / f"lab{n}"
    w = tree.write_tree(n, dest, root=ref)
    assert_no_leak(ref, dest, n)
    assert sorted(_text_files(dest)) == sorted([*(p for p in tree.files(ref) if p != "docs/labs/lab2.md" or n >= 2),
                                                tree.META])
    assert os.access(dest / ".ci/run", os.X_OK)  # modes come along
    assert {r.id for r in w.stubbed} == {r.id for r in tree.discover(ref) if r.lab >= n}
    sched = (dest / "libos/sched.py").read_text()
    if n == 1:
        assert "raise NotImplementedError('LAB 1 (pick): pick the next runnable thread -- libos/sched.py')" in sched
    if n <= 2:  # the region's own stub, uncommented
        assert "        return None  # LAB 2: charge t for ns here\n" in sched


def test_the_leak_check_can_fail(ref, tmp_path):
    """assert_no_leak catches a marker, a solution line or a hidden test left in a tree."""
    dest = tmp_path / "lab1"
    tree.write_tree(1, dest, root=ref)
    sched = dest / "libos/sched.py"
    good = sched.read_text()
    for bad, why in [(good + "        ready = [t for t in self.threads if t.runnable]\n", "solution lines"),
                     (good + "# LAB 2 END\n", "marker")]:
        sched.write_text(bad)
        with pytest.raises(AssertionError, match=why):
            assert_no_leak(ref, dest, 1)
    sched.write_text(good)
    _write(dest, "exo/labs/hidden/lab2/test_lab2_hidden_charge.py", "x = 1\n")
    with pytest.raises(AssertionError, match="hidden"):
        assert_no_leak(ref, dest, 1)


def test_new_refuses_a_non_empty_or_inner_dir_and_unknown_lab(ref, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ExoUserError, match="exists and is not an empty directory"):
        tree.write_tree(1, tmp_path / "full", root=ref)
    with pytest.raises(ExoUserError, match="inside the project tree"):
        tree.write_tree(1, ref / "students" / "a", root=ref)
    assert not (ref / "students").exists()
    assert cmd_lab.main(["--root", str(ref), "new", "9", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "exo: error: lab 9: no such lab (the labs are 1, 2, 3, 4, 5, 6)\n"
    (tmp_path / "empty").mkdir()
    assert cmd_lab.main(["--root", str(ref), "new", "1", str(tmp_path / "empty")]) == 0


# ------------------------------------------------------------------------------ --from

def test_from_carries_the_students_own_earlier_code(ref, tmp_path):
    lab1 = tmp_path / "lab1"
    tree.write_tree(1, lab1, root=ref)
    # The student's lab 1: their own pick and sum, and a guest of their own.
    s = lab1 / "libos/sched.py"
    s.write_text(s.read_text().replace(
        "        raise NotImplementedError('LAB 1 (pick): pick the next runnable thread -- libos/sched.py')\n",
        "        # my pick: the first runnable one\n        return next(t for t in self.threads if t.runnable)\n"))
    c = lab1 / "guest_apps/app/sum.c"
    c.write_text(re.sub(r"    \{ static const char.*\n", "    long mine = 3;\n", c.read_text()))
    _write(lab1, "guest_apps/mine/main.s", "; mine\n")
    _write(lab1, "exo/labs/tests/lab2/test_lab2_cheat.py", "def test_x(): pass\n")
    lab2 = tmp_path / "lab2"
    w = tree.write_tree(2, lab2, root=ref, prev=lab1)
    sched = (lab2 / "libos/sched.py").read_text()
    assert "        return next(t for t in self.threads if t.runnable)\n" in sched
    assert "return min(ready" not in sched  # not the reference's
    assert "        return None  # LAB 2: charge t for ns here\n" in sched  # lab 2 is stubbed
    assert "    long mine = 3;\n" in (lab2 / "guest_apps/app/sum.c").read_text()
    assert (lab2 / "guest_apps/mine/main.s").read_text() == "; mine\n"
    assert not (lab2 / "exo/labs/tests/lab2/test_lab2_cheat.py").exists()  # the labs' machinery is the reference's
    assert w.own_files == ["guest_apps/mine/main.s"] and not w.lost
    assert {r.id for r in w.carried} == {"pick", "c.sum"}
    assert not MARKER.search("".join(_text_files(lab2).values()))


def test_from_keeps_the_reference_where_the_student_changed_the_surroundings(ref, tmp_path):
    lab1 = tmp_path / "lab1"
    tree.write_tree(1, lab1, root=ref)
    s = lab1 / "libos/sched.py"
    s.write_text(s.read_text().replace("    def pick(self):\n", "    def pick(self, now):\n"))
    w = tree.write_tree(2, tmp_path / "lab2", root=ref, prev=lab1)
    assert [r.id for r in w.lost] == ["pick"]
    assert "libos/sched.py:6: LAB 1 (pick): the lines around your code changed" in w.warnings[-1]
    assert "return min(ready, key=lambda t: t.pass_value)" in (tmp_path / "lab2/libos/sched.py").read_text()
    (lab1 / "guest_apps/app/sum.c").unlink()
    w = tree.write_tree(2, tmp_path / "lab2b", root=ref, prev=lab1)
    assert "guest_apps/app/sum.c: not in " in w.warnings[0] and [r.id for r in w.kept] == ["c.sum"]
    assert "argc_sum_helper(1, 2)" in (tmp_path / "lab2b/guest_apps/app/sum.c").read_text()


def test_from_needs_an_earlier_student_tree(ref, tmp_path):
    with pytest.raises(ExoUserError, match="not a student tree"):
        tree.write_tree(2, tmp_path / "b", root=ref, prev=ref)
    tree.write_tree(2, tmp_path / "lab2", root=ref)
    with pytest.raises(ExoUserError, match="that is the tree of lab 2; lab 2 must come after it"):
        tree.write_tree(2, tmp_path / "c", root=ref, prev=tmp_path / "lab2")


# ------------------------------------------------------------------------------ stubs explained

def test_explain_a_python_stub(ref, tmp_path):
    tree.write_tree(1, tmp_path / "lab1", root=ref)
    ns: dict = {}
    exec(compile((tmp_path / "lab1/libos/sched.py").read_text(), "sched.py", "exec"), ns)
    with pytest.raises(NotImplementedError) as e:
        ns["Sched"]().pick()
    line = "exo: LAB 1 (pick): pick the next runnable thread -- libos/sched.py: not implemented yet (docs/labs/lab1.md)"
    assert stubs.explain(e.value) == line
    try:  # found below the exception the CLI sees
        try:
            raise e.value
        except NotImplementedError as inner:
            raise RuntimeError("the run failed") from inner
    except RuntimeError as outer:
        assert stubs.explain(outer) == line
    assert stubs.explain(NotImplementedError("not a lab")) is None
    assert stubs.explain(ValueError("LAB 1 (pick): x -- y.py")) is None
    report = "  detail      NotImplementedError: LAB 1 (pick): pick the next runnable thread -- libos/sched.py, raised at"
    assert stubs.explain_text(report) == line
    assert stubs.explain_text("no stub here") is None


# ------------------------------------------------------------------------------ the real tree

@pytest.mark.parametrize("n", [lab.n for lab in catalog.LABS])
def test_real_tree_of_every_lab_has_no_leak(tmp_path, n):
    dest = tmp_path / f"lab{n}"
    tree.write_tree(n, dest, root=ROOT)
    assert_no_leak(ROOT, dest, n)
    assert (dest / "pyproject.toml").is_file() and (dest / "README.md").is_file() and (dest / ".ci/run").is_file()


def test_real_tree_runs_in_place(tmp_path):
    """``cd DIR && python -m exo ...`` runs DIR's exo, libOS and machine, and DIR's guests, stubs too."""
    ref = tmp_path / "ref"
    for rel in tree.files(ROOT):  # the reference, with a region of our own in echo (lab 1)
        (ref / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ref / rel)
    echo = ref / "guest_apps/echo/echo.s"
    text = echo.read_text()
    assert "done:\n" in text
    echo.write_text(text.replace("done:\n", "done:\n; LAB 1 BEGIN echo.exit: exit with status 0 at end of input\n"
                                 "    mov rdi, SCHED_EXIT\n    xor esi, esi\n    call HC_SCHED_OP\n; LAB 1 END\n", 1))
    dest = tmp_path / "lab1"
    tree.write_tree(1, dest, root=ref)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", "import exo, libos, hw; print(exo.__file__, libos.__file__, hw.__file__)"],
                       capture_output=True, text=True, cwd=dest, env=env)
    assert r.returncode == 0 and all(Path(p).is_relative_to(dest) for p in r.stdout.split()), r
    r = subprocess.run([sys.executable, "-m", "exo", "boot", "guest_apps/echo"], input=b"hi\n",
                       capture_output=True, cwd=dest, env=env)
    msg = b"LAB 1 (echo.exit): exit with status 0 at end of input -- guest_apps/echo/echo.s\n"
    assert (r.returncode, r.stdout) == (regions.STUB_EXIT, b"hi\n" + msg), r.stderr
    assert stubs.explain_text(r.stdout.decode()) == ("exo: LAB 1 (echo.exit): exit with status 0 at end of input -- "
                                                     "guest_apps/echo/echo.s: not implemented yet (docs/labs/lab1.md)")
    tree.write_tree(2, tmp_path / "lab2", root=ref)  # lab 1 solved: echo works again
    r = subprocess.run([sys.executable, "-m", "exo", "boot", "guest_apps/echo"], input=b"hi\n",
                       capture_output=True, cwd=tmp_path / "lab2", env=env)
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr


def test_usage_errors_are_one_line_and_the_cli_can_wire_the_command(ref, tmp_path):
    for argv in (["new"], ["new", "x", "y"], ["bogus"]):
        r = subprocess.run([sys.executable, "-m", "exo.labs.cmd_lab", *argv], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stderr.startswith("exo: error: ") and r.stderr.count("\n") == 1, r.stderr
    import argparse

    p = argparse.ArgumentParser()
    cmd_lab.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["lab", "--root", str(ref), "new", "2", str(tmp_path / "t"), "--from", str(tmp_path / "no")])
    with pytest.raises(ExoUserError, match="--from: no such directory"):
        cmd_lab.run(args)
    args = p.parse_args(["lab", "--root", str(ref), "new", "2", str(tmp_path / "t")])
    assert cmd_lab.run(args) == 0 and (tmp_path / "t" / tree.META).is_file()
