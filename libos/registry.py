"""Every libOS module and implementation, found through Python entry points, and the guest ABI for them.

A module registers in the entry-point group ``exo.libos`` (PyPA entry points
specification): the name is ``<module>.<implementation>``, the value the class,
``"libos.sched:Stride"``. The in-tree modules are declared the same way in
pyproject.toml ``[project.entry-points."exo.libos"]``; a package installed beside
exo adds modules, or implementations of existing ones, in its own metadata,
without touching exo or libos (docs/libos.md, "Writing a module";
examples/exo-hello-module).

Discovery reads names only: a module's Python code is imported when an app
links it (``load``, called by libos/link.py ``resolve``), so booting echo
imports console and core and nothing else.

A module keeps its page index and entry order across implementations (its guest
ABI), so the same binary runs with any implementation linked (``[libos] sched =
"stride"`` or ``"mlfq"``); ``load`` refuses an implementation that changes them.
``python -m exo gen`` writes guest_apps/include/libos.inc and libos.h for the
in-tree modules; a module from a package ships its own header.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from exo.abi import LIBCALL_SLOT, LIBOS_PAGE, PAGE_SIZE
from libos.core import Core
from libos.module import LibModule

GROUP = "exo.libos"
CORE = Core

# The checkout this libos comes from: its pyproject.toml is the truth for the in-tree modules
# (an editable install's metadata can be older than the checkout; a wheel has no pyproject.toml).
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^([a-z][a-z0-9_]*)\.([A-Za-z0-9][A-Za-z0-9_.-]*)$")


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()  # PEP 503, as importlib.metadata compares names


def _parse_entry_points(text: str, group: str) -> Iterator[tuple[str, str]]:
    """(name, value) of ``group`` in an entry_points.txt (INI-like: ``[group]``, ``name = value``)."""
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, value = line.split("=", 1)
            yield name.strip(), value.strip()


def installed_entry_points(group: str = GROUP, path: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(distribution, name, value) for ``group`` from every ``*.dist-info`` / ``*.egg-info`` in the
    directories of ``path`` (sys.path), the first distribution of a name winning: what
    ``importlib.metadata.entry_points(group=...)`` returns (tests/libos/test_entrypoints.py compares
    them), without importing importlib.metadata: its import alone took 14-20 ms of start-up on the
    2-core dev machine, this whole scan 1.2 ms (median; up to 7 ms the first time, 122 distributions on sys.path)."""
    seen: set[str] = set()
    out = []
    for entry in sys.path if path is None else path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # not a directory (a zip, a missing folder): nothing installed there
            continue
        for d in names:
            if not d.endswith((".dist-info", ".egg-info")):
                continue
            dist = _normalize(d.rsplit(".", 1)[0].split("-", 1)[0])
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", d, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            out += [(dist, name, value) for name, value in _parse_entry_points(text, group)]
    return out


_TABLE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_PAIR = re.compile(r'^"?([A-Za-z0-9_.\-]+)"?\s*=\s*"([^"\\]*)"\s*(#.*)?$')


def _scan_pyproject(text: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    """(project name, the ``exo.libos`` entry points) read line by line from exo's own pyproject.toml,
    whose two tables hold only ``key = "value"`` lines: importing tomllib costs a few ms of every
    start-up. None when a line there is anything else (then tomllib reads the file: `_in_tree`);
    tests/libos/test_entrypoints.py checks both readings agree."""
    table, name, found = None, None, []
    want = f'project.entry-points."{GROUP}"'
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _TABLE.match(line)
        if m:
            table = m[1].replace(" ", "")
            continue
        if table not in ("project", want):
            continue
        pair = _PAIR.match(line)
        if table == want:
            if pair is None:
                return None
            found.append((pair[1], pair[2]))
        elif pair is not None and pair[1] == "name":
            name = pair[2]
    return name, found


def _in_tree() -> list[tuple[str, str]] | None:
    """The checkout's own ``exo.libos`` entry points (None when libos is not run from a checkout)."""
    if not _PYPROJECT.is_file():
        return None
    text = _PYPROJECT.read_text()
    scanned = _scan_pyproject(text)
    if scanned is None:
        import tomllib

        project = tomllib.loads(text).get("project", {})
        scanned = project.get("name"), list(project.get("entry-points", {}).get(GROUP, {}).items())
    name, entries = scanned
    return entries if name == "exo" else None


# module -> implementation -> the entry point's value ("libos.sched:Stride"), replaced by the
# class once loaded. Tests may put a class in directly.
MODULES: dict[str, dict[str, type[LibModule] | str]] = {}
ORIGIN: dict[tuple[str, str], str] = {}  # (module, implementation) -> the distribution registering it
BUILTIN: set[str] = set()  # exo's own modules (whoever adds implementations): in guest_apps/include
PROBLEMS: list[str] = []  # entry points that cannot name a module (reported by resolve)


def _register(dist: str, name: str, value: str) -> None:
    m = _NAME.match(name)
    if not m:
        PROBLEMS.append(f"{dist} registers '{name}' in {GROUP}: the name must be <module>.<implementation>")
        return
    module, impl = m.groups()
    known = MODULES.setdefault(module, {}).get(impl)
    if known is None:
        MODULES[module][impl] = value
        ORIGIN[module, impl] = dist
    elif known != value:
        PROBLEMS.append(f"{ORIGIN[module, impl]} and {dist} both register {module}.{impl} "
                        f"({known} and {value})")


def discover(path: list[str] | None = None) -> None:
    """(Re)build MODULES from the checkout's pyproject.toml and the installed distributions."""
    MODULES.clear()
    ORIGIN.clear()
    BUILTIN.clear()
    PROBLEMS.clear()
    installed = installed_entry_points(GROUP, path)
    in_tree = _in_tree()  # this checkout's pyproject.toml wins over exo's installed metadata
    own = in_tree if in_tree is not None else [(name, value) for dist, name, value in installed if dist == "exo"]
    # exo's own first: an in-tree module's first implementation (its ABI reference) stays exo's,
    # whatever packages sort before exo on sys.path.
    for name, value in own:
        _register("exo", name, value)
    for dist, name, value in installed:
        if dist != "exo":
            _register(dist, name, value)
    BUILTIN.update(module for (module, _), dist in ORIGIN.items() if dist == "exo")


discover()


class LoadError(ValueError):
    """A registered module that cannot be used (libos/link.py turns it into a LinkError)."""


def _import(value: str) -> object:
    import importlib

    target = value.split("[", 1)[0].strip()  # "pkg.mod:Attr [extra]": extras do not matter here
    modname, _, attr = target.partition(":")
    obj: object = importlib.import_module(modname.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def load(module: str, impl: str) -> type[LibModule]:
    """The class registered as ``module.impl``, imported now; checked to be a LibModule of that
    name with the module's guest ABI (INDEX and ENTRIES of the module's first implementation)."""
    ref = MODULES[module][impl]
    if isinstance(ref, type):
        return ref
    where = f"{module}.{impl} = \"{ref}\" (registered by {ORIGIN.get((module, impl), '?')})"
    try:
        cls = _import(ref)
    except Exception as e:  # noqa: BLE001 - any failure of someone else's package is a load error
        raise LoadError(f"cannot load libOS module {where}: {type(e).__name__}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, LibModule)):
        raise LoadError(f"libOS module {where} is not a LibModule subclass")
    if getattr(cls, "NAME", None) != module:
        raise LoadError(f"libOS module {where} says NAME = {getattr(cls, 'NAME', None)!r}; "
                        f"it must be {module!r}")
    first = next(iter(MODULES[module]))
    if impl != first:
        ref_cls = load(module, first)
        if (cls.INDEX, tuple(cls.ENTRIES)) != (ref_cls.INDEX, tuple(ref_cls.ENTRIES)):
            raise LoadError(f"libOS module {where} changes the module's guest ABI: INDEX {cls.INDEX} and "
                            f"ENTRIES {tuple(cls.ENTRIES)}, but {module}.{first} has INDEX {ref_cls.INDEX} "
                            f"and ENTRIES {tuple(ref_cls.ENTRIES)} (every implementation keeps them)")
    MODULES[module][impl] = cls
    return cls


def module_class(module: str) -> type[LibModule]:
    """The module's first implementation: all of them share its index and entries."""
    return load(module, next(iter(MODULES[module])))


def module_classes(names: set[str] | None = None) -> list[type[LibModule]]:
    """Core and one class per module of ``names``, imported (a LoadError if one cannot be); if None,
    every registered module that loads (a broken package must not break `exo image` for others)."""
    if names is not None:
        return [CORE] + [module_class(m) for m in MODULES if m in names]
    out = [CORE]
    for m in list(MODULES):
        try:
            out.append(module_class(m))
        except LoadError:
            continue
    return out


def entry_address(cls: type[LibModule], slot: int) -> int:
    return LIBOS_PAGE + cls.INDEX * PAGE_SIZE + slot * LIBCALL_SLOT


def symbols(linked: set[str] | None = None) -> dict[str, int]:
    """LIB_<MODULE>_<ENTRY> addresses, for the linked modules (all if None) and core."""
    out = {}
    for cls in module_classes(linked):
        for slot, name in enumerate(cls.ENTRIES):
            out[f"LIB_{cls.NAME.upper()}_{name.upper()}"] = entry_address(cls, slot)
    return out


class _Hints(Mapping):
    """What to tell an app that calls a module it does not link, by symbol. Looked up only when the
    assembler meets an undefined symbol, so an app that builds imports no unlinked module."""

    def __init__(self, linked: set[str]) -> None:
        self.linked = set(linked)

    def _module(self, symbol: str) -> str | None:
        # The longest registered name wins: a module "net" must not take "LIB_NETX_..." calls.
        for module in sorted(MODULES, key=len, reverse=True):
            if symbol.startswith(f"LIB_{module.upper()}_") and module not in self.linked:
                return module
        return None

    def __getitem__(self, symbol: str) -> str:
        module = self._module(symbol)
        if module is None:
            raise KeyError(symbol)
        try:
            cls = module_class(module)
        except LoadError as e:
            return str(e)
        entry = symbol[len(module) + 5 :].lower()
        if entry not in cls.ENTRIES:
            raise KeyError(symbol)
        impls = ", ".join(f'"{i}"' for i in MODULES[module])
        return (f"calls {module}.{entry}, but the app does not link the {module} module "
                f"(add [libos] {module} = one of {impls} to app.toml)")

    def __iter__(self) -> Iterator[str]:  # every hint: imports every unlinked module
        for cls in module_classes(set(MODULES) - self.linked)[1:]:
            yield from (f"LIB_{cls.NAME.upper()}_{name.upper()}" for name in cls.ENTRIES)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def hints(linked: set[str]) -> Mapping[str, str]:
    """What to tell an app that calls a module it does not link (computed on lookup)."""
    return _Hints(linked)


_HEADER = "generated by `python -m exo gen` from libos/registry.py: do not edit"


def render_inc() -> str:
    lines = [f"; {_HEADER}", "; library calls: plain `call` (SysV: rdi, rsi, rdx, rcx, r8, r9; result in rax)"]
    lines += [f"{k} equ {v:#x}" for k, v in symbols(BUILTIN).items()]
    return "\n".join(lines) + "\n"


def render_h() -> str:
    out = [f"/* {_HEADER} */", "#ifndef LIBOS_H", "#define LIBOS_H", ""]
    for cls in module_classes(BUILTIN):
        for slot, name in enumerate(cls.ENTRIES):
            fn = getattr(cls, name)
            import inspect

            params = [p for p in inspect.signature(fn).parameters if p != "self"]
            proto = ", ".join("long" for _ in params) or "void"
            out.append(f"#define lib_{cls.NAME}_{name} ((long (*)({proto})){entry_address(cls, slot):#x})")
    out += ["", "#endif", ""]
    return "\n".join(out)


def outputs() -> dict:
    from pathlib import Path

    inc = Path(__file__).resolve().parent.parent / "guest_apps" / "include"
    return {inc / "libos.inc": render_inc, inc / "libos.h": render_h}


def write_outputs() -> list:
    written = []
    for path, render in outputs().items():
        text = render()
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
