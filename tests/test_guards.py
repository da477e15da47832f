"""Tests skip only for what lies outside the tree (a tool, a privilege), never for a part of exo.

A guard such as ``importorskip("libos.memory")`` or ``skipif(find_spec("libos.net.tcp") is None)``
was right while that part had not landed. Once it has, the test can never skip, and the guard would
only turn a later ImportError into a quiet skip. Outside tools go through ``conftest.need_tool``,
which CI turns into a failure (EXO_REQUIRE_TOOLS=1).
"""

from __future__ import annotations

import ast
import re

from conftest import ROOT

IN_TREE = {"hw", "exo", "libos", "benchmarks", "guest_apps"}
SKIPS = ("skip", "skipif", "importorskip")
# reasons that only ever described a part of this tree that was still missing
STALE_REASON = re.compile(r"not landed|has not landed|not there yet|not in this tree|not in MODULES", re.I)


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _in_tree_module(node: ast.Call) -> str | None:
    """The in-tree module a find_spec/importorskip call asks for, if it is one."""
    if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        mod = node.args[0].value
        if mod.split(".")[0] in IN_TREE:
            return mod
    return None


def _guards(path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in ("find_spec", "importorskip") and (mod := _in_tree_module(node)):
            bad.append(f"{node.lineno}: {name}({mod!r})")
        if name in SKIPS:
            texts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            names = {n.attr if isinstance(n, ast.Attribute) else n.id
                     for n in ast.walk(node) if isinstance(n, (ast.Attribute, ast.Name))}
            if any(STALE_REASON.search(t) for t in texts):
                bad.append(f"{node.lineno}: {name} for a missing part: {next(t for t in texts if STALE_REASON.search(t))!r}")
            elif name == "skipif" and ("MODULES" in names or "guest_apps" in texts):
                bad.append(f"{node.lineno}: skipif on the tree's own modules or guests")
    return [f"{path.relative_to(ROOT)}:{b}" for b in bad]


def test_no_test_skips_for_a_part_of_the_tree():
    bad = [b for path in sorted((ROOT / "tests").rglob("*.py")) for b in _guards(path)]
    assert not bad, "tests guarded against parts that are in the tree (drop the guard):\n" + "\n".join(bad)
