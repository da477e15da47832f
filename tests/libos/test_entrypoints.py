"""libOS modules found through the exo.libos entry points (libos/registry.py), not listed in exo.

A package "installed" here is a directory on sys.path holding the package and a
``<name>-<version>.dist-info/entry_points.txt``: what pip writes, and what both
importlib.metadata and libos/registry.py read. One test installs the worked example
(examples/exo-hello-module) with pip for real and runs its own tests.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, boot, make_app, need_tool
from test_linking import PRINTF

EXAMPLE = ROOT / "examples" / "exo-hello-module"


def _install(site: Path, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> None:
    """Lay out an installed distribution in ``site`` as pip does (the parts exo reads)."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = ["[exo.libos]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(textwrap.dedent(text))


@pytest.fixture
def site(tmp_path):
    """A directory on sys.path, rediscovered after each install; everything undone afterwards."""
    from libos import registry

    d = tmp_path / "site"
    d.mkdir()
    before = set(sys.modules)
    sys.path.insert(0, str(d))

    class Site:
        path = d

        def install(self, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> None:
            _install(d, dist, entry_points, files)
            registry.discover()

    yield Site()
    sys.path.remove(str(d))
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(d) in sys.modules[name].__file__:
            del sys.modules[name]
    registry.discover()


def _example_entry_points() -> dict[str, str]:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["exo.libos"])


def test_a_module_from_an_installed_package_is_linked_by_manifest(site):
    files = {"exo_hello/__init__.py": (EXAMPLE / "exo_hello" / "__init__.py").read_text()}
    site.install("exo-hello-module", _example_entry_points(), files)
    b = boot(EXAMPLE / "guest" / "hello")
    assert b.stdout == b"hello, exo\nhello, again\n" and b.envs[0].exit_status == 0


def test_a_package_adds_an_implementation_of_an_existing_module(site, app):
    site.install("exo-fifo", {"sched.fifo": "exo_fifo:Fifo"}, {"exo_fifo.py": """
        from libos.sched import RoundRobin

        class Fifo(RoundRobin):
            IMPL = "fifo"
    """})
    from libos.link import resolve

    assert [c.__name__ for c in resolve({"sched": "fifo"})] == ["Core", "Fifo"]
    b = boot(app("p", PRINTF, libos={"console": "buffered", "sched": "fifo"}))
    assert b.stdout == b"n=42 who=exo\n"


def test_an_implementation_may_not_change_its_modules_guest_abi(site):
    site.install("exo-bad", {"sched.moved": "exo_bad:Moved", "sched.renamed": "exo_bad:Renamed",
                             "sched.extra": "exo_bad:Extra"}, {"exo_bad.py": """
        from libos.sched import RoundRobin

        class Moved(RoundRobin):
            IMPL = "moved"
            INDEX = 9

        class Renamed(RoundRobin):
            NAME = "schedx"

        class Extra(RoundRobin):
            ENTRIES = (*RoundRobin.ENTRIES, "extra")
    """})
    from libos.link import LinkError, resolve

    with pytest.raises(LinkError, match=r"sched\.moved = \"exo_bad:Moved\" \(registered by exo-bad\) changes "
                                        r"the module's guest ABI: INDEX 9 .* sched\.rr has INDEX 3"):
        resolve({"sched": "moved"})
    with pytest.raises(LinkError, match=r"says NAME = 'schedx'; it must be 'sched'"):
        resolve({"sched": "renamed"})
    with pytest.raises(LinkError, match=r"changes the module's guest ABI: .* 'extra'\)"):
        resolve({"sched": "extra"})


def test_a_package_that_cannot_be_loaded_is_a_clear_build_error(site, tmp_path, capsys):
    site.install("exo-broken", {"broken.x": "exo_broken:Missing", "notapair": "exo_broken:X"},
                 {"exo_broken.py": "raise RuntimeError('half installed')\n"})
    from exo.cli import main

    d = make_app(tmp_path, "b", PRINTF, libos={"broken": "x"})
    r = subprocess.run([sys.executable, "-m", "exo", "boot", str(d)], capture_output=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site.path}"}, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert 'cannot load libOS module broken.x = "exo_broken:Missing" (registered by exo-broken): ' \
           "RuntimeError: half installed" in err
    d2 = make_app(tmp_path, "u", PRINTF, libos={"nosuch": "x"})
    assert main(["boot", str(d2)]) == 2
    err = capsys.readouterr().err
    assert "unknown libOS module 'nosuch' (known: broken, console," in err
    assert "ignored: exo-broken registers 'notapair' in exo.libos: the name must be <module>.<implementation>" in err
    assert main(["image", str(ROOT / "guest_apps" / "echo")]) == 0  # apps that do not link it still build


def test_two_packages_registering_one_implementation_is_an_error_naming_both(site):
    site.install("exo-one", {"sched.twin": "exo_one:Twin"}, {})
    site.install("exo-two", {"sched.twin": "exo_two:Twin"}, {})
    from libos.link import LinkError, resolve

    with pytest.raises(LinkError, match=r"exo-one and exo-two both register sched\.twin"):
        resolve({"sched": "twin"})


def test_the_scan_finds_what_importlib_metadata_finds(site):
    # registry.installed_entry_points stands in for importlib.metadata.entry_points (15 ms of start-up):
    # over the real sys.path, for a group with many entries, and for a package installed here.
    from importlib.metadata import entry_points

    from libos.registry import installed_entry_points

    site.install("exo-fifo", {"sched.fifo": "exo_fifo:Fifo"}, {})
    for group in ("console_scripts", "exo.libos", "pytest11"):
        ours = {(n, v) for _, n, v in installed_entry_points(group)}
        theirs = {(e.name, e.value) for e in entry_points(group=group)}
        assert ours == theirs, group
    assert ("sched.fifo", "exo_fifo:Fifo") in ours | {(n, v) for _, n, v in installed_entry_points("exo.libos")}


def test_the_in_tree_modules_are_declared_as_entry_points_with_their_fixed_pages():
    from libos.registry import BUILTIN, MODULES, module_class

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["exo.libos"]
    assert {k.split(".")[0] for k in declared} == BUILTIN == {"console", "memory", "sched", "ipc", "fs", "net", "posix"}
    assert {m: module_class(m).INDEX for m in MODULES if m in BUILTIN} == {
        "console": 1, "memory": 2, "sched": 3, "ipc": 4, "fs": 5, "net": 6, "posix": 8}


# Start-up (issue 12): what booting echo must not import. capstone only disassembles a fault,
# keystone only assembles (the image is cached after the first boot), construct parses only the
# formats in use (ELF, disk and network headers), rich prints only tables (--stats, benchmarks);
# exo.net only serves a machine with a NIC, json only writes --stats-json (the image cache is marshal);
# tomllib parses a manifest only the first time (exo/build/manifest.py parse_toml remembers it);
# pdb only when a libOS module calls breakpoint() (exo/cli/breakpoint.py).
LAZY = ("capstone", "keystone", "construct", "rich", "exo.fuzz", "benchmarks", "exo.build.asm", "exo.build.elf", "exo.net",
        "json", "tomllib", "pdb")


def test_booting_echo_imports_no_module_it_does_not_link(tmp_path):
    # Only what exo imports counts (a site .pth file may import json, say, before exo starts).
    code = ("import sys; before = set(sys.modules); from exo.cli import main; rc = main(['boot', 'guest_apps/echo']); "
            "print(rc, sorted(m for m in sys.modules if m.startswith('libos'))); "
            f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {LAZY!r} or m.startswith({LAZY!r})))")
    env = {**os.environ, "EXO_CACHE_DIR": str(tmp_path)}
    for run in ("assembles", "cached"):  # the first boot assembles and caches; the second must not need keystone
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, input=b"hi\n", timeout=120,
                           env=env)
        assert r.returncode == 0, r.stderr.decode()
        libos_mods, lazy = r.stdout.decode().splitlines()[-2:]
        assert libos_mods == (
            "0 ['libos', 'libos.console', 'libos.core', 'libos.link', 'libos.module', 'libos.registry']")
        first = ("exo.build.asm", "keystone", "tomllib") if run == "assembles" else ()
        assert [m for m in ast.literal_eval(lazy) if m not in first and m.split(".")[0] not in first] == [], lazy
        assert run == "assembles" or ast.literal_eval(lazy) == [], lazy


def test_the_example_package_installs_with_pip_and_passes_its_own_tests(tmp_path):
    target = tmp_path / "target"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(EXAMPLE)], capture_output=True, timeout=300)
    need_tool(pip.returncode == 0, f"pip cannot build {EXAMPLE.name} here: {pip.stderr.decode()[-300:]}")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{target}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                        str(EXAMPLE / "tests")], capture_output=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    assert b"4 passed" in r.stdout
    shutil.rmtree(target)


def test_two_apps_on_one_machine_may_not_put_two_modules_on_one_page(site, tmp_path, monkeypatch, capsys):
    # Each app alone links fine; together they would share trampoline page 7 (LibraryTable keeps one
    # frame per index), so booting them on one machine is refused, naming both modules.
    from exo.cli import main
    from libos import registry
    from libos.module import LibModule

    files = {"exo_hello/__init__.py": (EXAMPLE / "exo_hello" / "__init__.py").read_text()}
    site.install("exo-hello-module", _example_entry_points(), files)

    class Other(LibModule):
        NAME, IMPL, INDEX, ENTRIES = "other", "x", 7, ("ping",)

        def ping(self) -> int:
            return 0

    monkeypatch.setitem(registry.MODULES, "other", {"x": Other})
    b = make_app(tmp_path, "b", PRINTF, libos={"console": "buffered", "other": "x"})
    assert main(["boot", str(EXAMPLE / "guest" / "hello")]) == 0
    assert main(["boot", str(b)]) == 3  # PRINTF exits 3
    capsys.readouterr()
    assert main(["boot", str(EXAMPLE / "guest" / "hello"), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert 'b/app.toml' in err and 'other = "x"' in err and "INDEX 7" in err and "the hello module of another app" in err


def test_every_in_tree_implementation_is_registered():
    # pyproject.toml is the only list: a LibModule subclass in libos/ with an IMPL of its own and no
    # entry point would be an implementation no app can link.
    import importlib
    import pkgutil

    import libos
    from libos.module import LibModule
    from libos.registry import BUILTIN, CORE, MODULES, load

    for info in pkgutil.walk_packages(libos.__path__, "libos."):
        importlib.import_module(info.name)
    registered = {load(m, i) for m in BUILTIN for i in MODULES[m]}

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    in_tree = {c for c in subclasses(LibModule) if c.__module__.startswith("libos.") and "IMPL" in vars(c)}
    assert in_tree - {CORE} == registered


def test_a_package_adding_an_implementation_changes_neither_the_reference_nor_the_headers(site):
    # A package that sorts before exo on sys.path adds sched.aaa: sched's ABI reference stays exo's
    # rr, and `exo gen` still writes exo's headers (sched included, nothing of the package).
    site.install("aaa-sched", {"sched.aaa": "aaa_sched:Aaa"}, {"aaa_sched.py": """
        from libos.sched import RoundRobin

        class Aaa(RoundRobin):
            IMPL = "aaa"
    """})
    from libos.registry import BUILTIN, MODULES, outputs

    assert list(MODULES["sched"])[0] == "rr" and list(MODULES["sched"])[-1] == "aaa" and "sched" in BUILTIN
    for path, render in outputs().items():
        assert render() == path.read_text(), path


def test_an_installed_exo_without_a_checkout_reads_its_own_metadata_first(site, tmp_path):
    # As from a wheel: no pyproject.toml beside libos/, exo's modules come from exo's dist-info, and
    # they stay first (ABI references) although aaa-sched's dist-info sorts before exo's.
    from libos import registry

    checkout = registry._PYPROJECT
    registry._PYPROJECT = tmp_path / "no-checkout" / "pyproject.toml"
    try:
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["exo.libos"]
        _install(site.path, "exo", declared, {})
        site.install("aaa-sched", {"sched.aaa": "aaa_sched:Aaa", "sched.rr": "aaa_sched:Rr"}, {})
        assert {m: list(i) for m, i in registry.MODULES.items()} == {
            "console": ["buffered", "direct"], "memory": ["cow", "eager"], "sched": ["rr", "stride", "mlfq", "aaa"],
            "ipc": ["jos", "poll"], "fs": ["ext2", "ext2-unbatched"], "net": ["tcpip"], "posix": ["linux"]}
        assert registry.ORIGIN["sched", "rr"] == "exo" and registry.ORIGIN["sched", "aaa"] == "aaa-sched"
        assert registry.PROBLEMS == ["exo and aaa-sched both register sched.rr "
                                     "(libos.sched:RoundRobin and aaa_sched:Rr)"]
    finally:
        registry._PYPROJECT = checkout  # (the fixture rediscovers once the site is gone)


def test_the_line_scan_of_pyproject_reads_what_tomllib_reads():
    import tomllib

    from libos import registry

    text = registry._PYPROJECT.read_text()
    project = tomllib.loads(text)["project"]
    assert registry._scan_pyproject(text) == (project["name"], list(project["entry-points"]["exo.libos"].items()))
    # Anything but key = "value" in the table: the scan declines, and tomllib reads it.
    odd = text.replace('"console.direct" = "libos.console:DirectConsole"', '"console.direct" = \'libos.console:DirectConsole\'')
    assert odd != text and registry._scan_pyproject(odd) is None
