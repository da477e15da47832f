"""The layer rules of docs/architecture.md, checked on every import in the tree."""

from __future__ import annotations

import ast
import shutil
import subprocess

from conftest import ROOT, need_tool

# package -> packages it must never import
FORBIDDEN = {
    "hw": {"exo", "libos"},
    "exo": {"libos"},
}
ALLOWED = {("exo", "cli.py"), ("exo", "api.py")}  # the shell and the embedding API compose everything
# libos may use the ABI constants and nothing else of exo (nor the machine).
LIBOS_MAY_IMPORT = {"exo.abi"}


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
            if (pkg, path.name) in ALLOWED:
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


def test_import_linter_contracts():
    exe = shutil.which("lint-imports")
    need_tool(exe is not None, "import-linter (lint-imports) is not installed")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom exo.kernel import Exokernel\n")
    assert ("exo" in {m for _, m in _imports(bad)})
