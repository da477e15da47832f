"""The public embedding API (exo/api.py, docs/embedding.md): what the CLI, tests and benchmarks boot through."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from exo.errors import ExoUserError

ECHO = ROOT / "guest_apps" / "echo"
PRIMES = ROOT / "guest_apps" / "primes"

# A guest that writes to address 0: stopped with a fault report.
NULL_WRITE = """
section .text
_start:
    xor eax, eax
    mov qword ptr [rax], 1
"""


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_embedding_doc_examples_run(monkeypatch, capsys):
    # Run docs/embedding.md's code blocks as they stand, so the doc cannot drift from the API.
    blocks = _python_blocks((ROOT / "docs" / "embedding.md").read_text())
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/embedding.md block {i + 1}", "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "hypercalls;" in out and "101 exited" in out  # primes: 100 primes and echo's line


def test_run_gives_output_status_and_stats_as_data():
    from exo.api import run

    r = run(ECHO, stdin=b"one\ntwo\n")
    assert r.stdout == b"one\ntwo\n" and r.exit_status == 0 and r.ok
    assert r.reports == [] and r.stuck == {} and not r.watchdog_fired
    assert r.stats["clock"] == "virtual" and r.stats["transitions"]["hypercall"] > 0
    assert [e["name"] for e in r.stats["envs"]] == ["echo"]
    assert run(ECHO, stdin=b"one\ntwo\n").stats == r.stats  # deterministic under the virtual clock


def test_a_faulting_guest_is_a_report_and_the_others_finish(app):
    from exo.api import System, build
    from exo.report import FaultReport

    bad = build(app("nullwrite", NULL_WRITE))
    with System([bad, ECHO], stdin=b"hi\n") as s:
        r = s.run()
    assert len(r.reports) == 1 and isinstance(r.reports[0], FaultReport)
    assert r.reports[0].env_name == "nullwrite" and "user write" in r.reports[0].summary
    assert b"hi\n" in r.stdout and s.env("echo").exit_status == 0  # the other app ran to its end
    assert not r.ok


def test_a_budget_stops_and_the_next_run_goes_on():
    from exo.api import System

    with System([PRIMES], ram_mib=64) as s:
        first = s.run(max_instructions=5_000)
        assert first.watchdog_fired and first.exit_status is None and first.stuck
        assert first.stats["guest_instructions"] == 5_000
        done = s.run()
    assert done.ok and done.stdout.count(b"\n") == 100
    from exo.api import run

    whole = run(PRIMES, ram_mib=64)
    # Same output and outcomes; the stop at the budget counts as one timer preemption (docs/embedding.md).
    assert (done.stdout, done.exit_status) == (whole.stdout, whole.exit_status)
    assert [e["exit"] for e in done.stats["envs"]] == [e["exit"] for e in whole.stats["envs"]]
    assert done.stats["transitions"]["interrupt"] == whole.stats["transitions"]["interrupt"] + 1


@pytest.mark.parametrize("apps, options, what", [
    (["no/such/app"], {}, "no/such/app"),
    ([ECHO], {"ram_mib": 0}, "--ram"),
    ([ECHO], {"clock": "sundial"}, "clock"),
    ([ECHO], {"structure": "monolith"}, "structure"),
    ([ECHO], {"pcap": "x.pcap"}, "--pcap"),
    ([ECHO], {"disk_fail_after": 3}, "--disk-fail-after"),
    ([ECHO], {"disk": "/no/such/disk.img"}, "--disk"),
    ([], {}, "apps"),
])  # fmt: skip
def test_bad_input_is_a_one_line_user_error(apps, options, what):
    from exo.api import System

    with pytest.raises(ExoUserError) as e:
        System(apps, **options)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_a_closed_system_does_not_run():
    from exo.api import System

    s = System([ECHO])
    s.close()
    with pytest.raises(ExoUserError, match="closed"):
        s.run()


def test_a_budget_needs_the_virtual_clock():
    from exo.api import System

    with System([ECHO], clock="wall") as s, pytest.raises(ExoUserError, match="--clock virtual"):
        s.run(max_instructions=10)


def test_importing_the_api_loads_no_emulator_or_libos():
    # Start-up matters (issue 12): the API is imported by every embedder; what it needs is loaded on first use.
    code = ("import sys, exo, exo.api; assert exo.run is exo.api.run and exo.System is exo.api.System; heavy = [m for m in ('unicorn', 'keystone', 'capstone', 'libos', 'hw', 'rich') "
            "if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# ---------------------------------------------------------------- the API is the interface
PACKAGES = {"hw", "exo", "libos", "benchmarks", "guest_apps", "tests", "examples"}


def _py_files():
    for pkg in sorted(PACKAGES):
        yield from sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else ()


def _private_imports(path, own: str):
    """``from PKG.x import _name`` where PKG is another in-tree package than ``own`` (the file's)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in PACKAGES and top != own:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        yield node.lineno, f"from {node.module} import {a.name}"


def test_no_module_imports_a_private_name_of_another_package():
    bad = [f"{p.relative_to(ROOT)}:{line} {what}" for p in _py_files()
           for line, what in _private_imports(p, p.relative_to(ROOT).parts[0])]
    assert not bad, "private names used as an interface (make them public, or use exo.api):\n" + "\n".join(bad)


def test_the_private_import_check_catches_one(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("from exo.cli import _build\nfrom benchmarks.harness import _own\nfrom exo import __version__\n")
    assert [w for _, w in _private_imports(f, "benchmarks")] == ["from exo.cli import _build"]


def test_the_benchmarks_never_import_the_cli_nor_the_cli_the_benchmarks():
    for p in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not any(n == "exo.cli" or n.startswith("exo.cli.") for n in names), f"{p}:{node.lineno}"
    # The CLI loads a suite by name when a command runs one, never at import.
    code = "import sys, exo.cli; print([m for m in sys.modules if m.split('.')[0] == 'benchmarks'])"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
