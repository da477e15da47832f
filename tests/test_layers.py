"""The layer rules of docs/architecture.md, checked on every import in the tree."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest
from conftest import ROOT, need_tool

# package -> packages it must never import
FORBIDDEN = {
    "hw": {"exo", "libos"},
    "exo": {"libos"},
}
# The commands (exo/cli/) and the embedding API (exo/api.py) compose everything.
ALLOWED_DIRS = {"exo/cli"}
ALLOWED_FILES = {"exo/api.py"}
# libos may use the ABI constants and nothing else of exo (nor the machine); exo/linux.py is the
# Linux process ABI as pure data (the initial stack, an ELF load plan) for the loader and execve.
LIBOS_MAY_IMPORT = {"exo.abi", "exo.linux"}


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def test_no_layer_is_imported_from_below():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.as_posix() in ALLOWED_FILES or rel.parent.as_posix() in ALLOWED_DIRS:
                continue
            for lineno, mod in _imports(path):
                if mod in forbidden:
                    bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {mod}")
    for path in sorted((ROOT / "libos").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "hw" or (top == "exo" and name not in LIBOS_MAY_IMPORT):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def _kernel_contract() -> set[str]:
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return set(next(c for c in contracts if c["name"].startswith("the kernel never imports"))["source_modules"])


def test_every_module_at_the_top_of_exo_is_a_kernel_module_the_contracts_name():
    # What is left at the top of exo/ is the kernel (README: the hypercall path in three files);
    # a new file there must be placed in a layer (or moved to exo/build/, exo/cli/, ...).
    top = {f"exo.{p.stem}" for p in (ROOT / "exo").glob("*.py")} - {"exo.__init__", "exo.__main__", "exo.api"}
    assert top == _kernel_contract()


def test_import_linter_contracts():
    exe = shutil.which("lint-imports")
    need_tool(exe is not None, "import-linter (lint-imports) is not installed")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom exo.kernel import Exokernel\n")
    assert ("exo" in {m for _, m in _imports(bad)})


def _group(module: str) -> str:
    """The package or layer a module belongs to: hw, libos, benchmarks, exo's kernel (the modules at
    the top of exo/), exo.build, exo.api, exo.cli, exo.labs, exo.fuzz, exo.gdb, exo.replay, exo.jobs, the package's __init__, its
    __main__."""
    parts = module.split(".")
    if parts[0] != "exo":
        return parts[0]
    if module in ("exo", "exo.__main__"):
        return module
    return f"exo.{parts[1]}" if parts[1] in ("build", "api", "cli", "labs", "fuzz", "gdb", "replay", "jobs") else "exo (kernel)"


def test_no_import_cycle_between_packages_or_layers():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter")
    graph = grimp.build_graph("hw", "exo", "libos", "benchmarks", include_external_packages=False,
                              exclude_type_checking_imports=True)
    edges: dict[str, set[str]] = {}
    for m in graph.modules:  # every import, function-level ones included
        for imported in graph.find_modules_directly_imported_by(m):
            if _group(m) != _group(imported):
                edges.setdefault(_group(m), set()).add(_group(imported))

    def reaches(a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    assert edges.get("exo.cli") and edges.get("exo.api")  # the check sees the graph
    assert [g for g in edges if g in reaches(g)] == []
